"""Standardization of the sample city: counts reconcile and planted dirt is found exactly."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sample_cities import CityFactory

from etl.config import CityConfig, load_city_config
from etl.extract import extract_all
from etl.sample_city.generate import generate_city
from etl.standardize import standardize_all, standardize_row
from store.layout import STANDARDIZED, canonical_dir, raw_run_dir

ROOT = Path(__file__).resolve().parents[1]
RUN = "2026-07-01"
AS_OF = dt.date(2026, 7, 1)


@pytest.fixture(scope="module")
def night(make_city: CityFactory) -> Iterator[tuple[CityConfig, Path]]:
    """A 1500-person city, extracted and standardized; a copy (a test standardizes again)."""
    with pytest.MonkeyPatch.context() as mp:
        city = make_city(
            mp,
            persons=1500,
            enterprises=250,
            seed=21,
            until="standardized",
            run_id=RUN,
            as_of=AS_OF,
            copy=True,
        )
        yield city, city.var_dir / "city"


def canonical(city: CityConfig, dept: str, entity: str) -> pd.DataFrame:
    return pd.read_parquet(canonical_dir(city.var_dir, RUN, dept) / f"{entity}.parquet")


def truth(out: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(out / "truth" / f"{name}.parquet")


def with_truth(df: pd.DataFrame, out: Path, dept: str) -> pd.DataFrame:
    rows = truth(out, "source_rows")
    rows = rows[rows.department == dept][["source_key", "entity_id"]]
    return df.merge(rows, on="source_key", how="left", validate="one_to_one")


def dirt_keys(out: Path, dept: str, kind: str) -> set[str]:
    d = truth(out, "dirt")
    return set(d[(d.department == dept) & (d.kind == kind)].source_key)


def keys_with(df: pd.DataFrame, code: str) -> set[str]:
    return set(df[df.reasons.map(lambda r: code in list(r))].source_key)


def test_every_source_row_is_accounted_for(night: tuple[CityConfig, Path]) -> None:
    city, out = night
    rows = truth(out, "source_rows")
    for dept in city.departments:
        entity = dept.tables[0].entity
        got = canonical(city, dept.code, entity)
        rejects = pd.read_parquet(canonical_dir(city.var_dir, RUN, dept.code) / "rejects.parquet")
        keys = set(got.source_key) | set(rejects.source_key)
        assert keys == set(rows[rows.department == dept.code].source_key), dept.code
        assert got.source_key.is_unique


def test_bad_check_digits_found_exactly(night: tuple[CityConfig, Path]) -> None:
    city, out = night
    df = canonical(city, "weijian", "person")
    assert keys_with(df, "id_number:id_bad_check_digit") == dirt_keys(
        out, "weijian", "bad_check_digit"
    )
    assert (
        df[df.source_key.isin(dirt_keys(out, "weijian", "bad_check_digit"))].id_number.isna().all()
    )


def test_legacy_ids_upgraded_to_the_true_number(night: tuple[CityConfig, Path]) -> None:
    city, out = night
    df = with_truth(canonical(city, "renshe", "person"), out, "renshe")
    legacy = dirt_keys(out, "renshe", "legacy_15_digit_id")
    assert keys_with(df, "id_number:id_upgraded_15_to_18") == legacy and legacy
    persons = truth(out, "persons").set_index("person_id")
    assert (df.id_number.values == persons.loc[df.entity_id, "id_number"].values).all()


def test_names_back_to_simplified_and_true(night: tuple[CityConfig, Path]) -> None:
    city, out = night
    persons = truth(out, "persons").set_index("person_id")
    df = with_truth(canonical(city, "minzheng", "person"), out, "minzheng")
    trad = df[df.source_key.isin(dirt_keys(out, "minzheng", "traditional_chinese"))]
    assert len(trad) > 0
    assert (trad.name.values == persons.loc[trad.entity_id, "name"].values).all()
    assert trad.raw_name.ne(trad.name).all()


def test_dates_in_every_form_parse_to_the_truth(night: tuple[CityConfig, Path]) -> None:
    city, out = night
    persons = truth(out, "persons").set_index("person_id")
    swapped = dirt_keys(out, "weijian", "day_month_swapped")
    for dept in ("gongan", "renshe", "minzheng", "weijian"):
        df = with_truth(canonical(city, dept, "person"), out, dept)
        df = df[~df.source_key.isin(swapped)]
        true = pd.to_datetime(persons.loc[df.entity_id, "birth_date"]).dt.date.values
        assert (df.birth_date.values == true).all(), dept
    df = canonical(city, "weijian", "person")
    serial = df[df.source_key.isin(dirt_keys(out, "weijian", "excel_serial_date"))]
    assert len(serial) > 0 and serial.birth_date.notna().all()


def test_enterprise_codes_and_name_keys(night: tuple[CityConfig, Path]) -> None:
    city, out = night
    firms = truth(out, "enterprises").set_index("enterprise_id")
    sc = with_truth(canonical(city, "shichang", "enterprise"), out, "shichang")
    assert (sc.uscc.values == firms.loc[sc.entity_id, "uscc"].values).all()
    sw = with_truth(canonical(city, "shuiwu", "enterprise"), out, "shuiwu")
    key_of = dict(zip(sc.entity_id, sc.name_key, strict=True))
    branch_of = dict(zip(sc.entity_id, sc.branch, strict=True))
    # every name variant of the tax office gets the registry's comparison key and branch
    assert (sw.name_key.values == [key_of[e] for e in sw.entity_id]).all()
    assert (sw.branch.fillna("").values == [branch_of[e] or "" for e in sw.entity_id]).all()
    legacy = sw[sw.source_key.isin(dirt_keys(out, "shuiwu", "legacy_registration_number"))]
    assert (
        len(legacy) > 0
        and (legacy.reg_no.values == firms.loc[legacy.entity_id, "reg_no"].values).all()
    )
    damaged = dirt_keys(out, "shuiwu", "excel_damaged_code")
    assert keys_with(sw, "uscc:uscc_excel_damaged") == damaged


def test_unusable_row_is_rejected_with_reasons(night: tuple[CityConfig, Path]) -> None:
    city, _ = night
    table = city.department("weijian").tables[0]
    row = {"PATIENT_ID": "X1", "PATIENT_NAME": "１２３", "ID_CARD_NO": "350102199001011235",
           "SEX_CODE": "M", "BIRTH_DAY": None, "TEL": None, "HOME_ADDR": None,
           "ORG_NAME": "福州市第一医院", "UPDATE_TIME": "1750000000"}  # fmt: skip
    from etl.standardize import _Context

    out, reasons, usable = standardize_row("person", table, row, _Context("350100", AS_OF))
    assert not usable
    assert "id_number:id_bad_check_digit" in reasons and "name:name_invalid_chars" in reasons
    assert out["raw_id_number"] == "350102199001011235" and out["id_number"] is None
    assert out["updated_at"] == dt.datetime(2025, 6, 15, 23, 6, 40)


def _sorted_without_run(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path).drop(columns="run_id")
    return df.sort_values("source_key").reset_index(drop=True)


@pytest.mark.slow
@pytest.mark.parametrize("server", ["pg_server_url", "mariadb_server_url"])
def test_same_canonical_rows_from_sqlite_postgres_and_mariadb(
    server: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.engine import make_url

    from etl.sample_city.generate import drop_database, target_url

    base = (
        make_url(request.getfixturevalue(server))
        .set(database=f"govmdm_test_{uuid.uuid4().hex[:10]}")
        .render_as_string(hide_password=False)
    )
    monkeypatch.setenv("GOVMDM_VAR", str(tmp_path))
    monkeypatch.delenv("GOVMDM_WAREHOUSE_URL", raising=False)
    try:
        generate_city(tmp_path / "city", persons=400, enterprises=50, seed=8, targets=[base])
        city = load_city_config(ROOT / "config")
        for d in city.departments:
            monkeypatch.delenv(f"AIRFLOW_CONN_{d.connection.upper()}", raising=False)
            monkeypatch.delenv(f"GOVMDM_CONN_{d.connection.upper()}", raising=False)
        assert all(r.ok for r in extract_all(city, "embedded"))
        for d in city.departments:
            monkeypatch.setenv(f"GOVMDM_CONN_{d.connection.upper()}", target_url(base, d.code))
        assert all(r.ok for r in extract_all(city, "server"))
        for run in ("embedded", "server"):
            assert all(r.status == "ok" for r in standardize_all(city, run, as_of=AS_OF))
        for d in city.departments:
            folder = {
                run: canonical_dir(city.var_dir, run, d.code) for run in ("embedded", "server")
            }
            for name in (f"{d.tables[0].entity}.parquet", "rejects.parquet"):
                local, remote = (_sorted_without_run(folder[run] / name) for run in folder)
                pd.testing.assert_frame_equal(local, remote, obj=f"{d.code}/{name}")
                assert name == "rejects.parquet" or len(local) > 0
    finally:
        for code in ("gongan", "renshe", "minzheng", "weijian", "shichang", "shuiwu"):
            drop_database(target_url(base, code))


def test_a_failing_department_publishes_nothing_and_others_go_on(
    night: tuple[CityConfig, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import etl.standardize as std

    city, _ = night
    real = std.standardize_rows

    def broken(entity: str, table: Any, *args: Any) -> Any:
        if table.name == "社会救助对象":
            raise ValueError("boom")
        return real(entity, table, *args)

    monkeypatch.setattr(std, "standardize_rows", broken)
    folder = canonical_dir(city.var_dir, RUN, "minzheng")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    results = {r.department: r for r in standardize_all(city, RUN, as_of=AS_OF)}
    assert results["minzheng"].status == "failed" and "boom" in results["minzheng"].message
    # the previous output of the failed department is intact, and no temporary file is left
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert all(r.status == "ok" for code, r in results.items() if code != "minzheng")
    gongan = canonical_dir(city.var_dir, RUN, "gongan")
    assert sorted(p.name for p in gongan.iterdir()) == [
        STANDARDIZED,
        "person.parquet",
        "rejects.parquet",
    ]


def test_a_replayed_night_judges_dates_by_its_own_day(night: tuple[CityConfig, Path]) -> None:
    """Standardize without an explicit date judges "in the future" against the night's date (its
    run ID), not the day it happens to run: a night replayed months later gives the same rows."""
    city, _ = night
    old = "2021-01-01"
    shutil.copytree(raw_run_dir(city.var_dir, RUN), raw_run_dir(city.var_dir, old))
    assert all(r.status == "ok" for r in standardize_all(city, old))  # no as_of: the night's day
    replayed = canonical_frames(city, old)
    future = replayed[replayed.reasons.map(lambda r: "birth_date:date_in_future" in list(r))]
    assert len(future) > 0  # born after 2021-01-01: in the future for that night, not today
    assert all(r.status == "ok" for r in standardize_all(city, old, as_of=dt.date(2021, 1, 1)))
    pd.testing.assert_frame_equal(canonical_frames(city, old), replayed)


def canonical_frames(city: CityConfig, run_id: str) -> pd.DataFrame:
    """Every department's canonical person rows and rejects of a night, in one frame."""
    frames = []
    for dept in city.departments:
        folder = canonical_dir(city.var_dir, run_id, dept.code)
        for name in ("person.parquet", "rejects.parquet"):
            if (folder / name).is_file():
                frame = pd.read_parquet(folder / name)
                frames.append(frame[["source_table", "source_key", "reasons"]].assign(file=name))
    return pd.concat(frames, ignore_index=True).sort_values(["file", "source_key"])
