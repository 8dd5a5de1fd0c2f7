"""The sample city: valid identifiers, determinism, truth coverage, the targets, the next night."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from sample_cities import CityFactory
from sqlalchemy.engine import make_url
from stdnum.cn import ric, uscc
from typer.testing import CliRunner

from cli.main import app
from etl.sample_city import departments as depts
from etl.sample_city.generate import (
    drop_database,
    generate_city,
    next_night,
    sqlite_url,
    target_url,
)
from fields import identifiers
from master_data.evaluate import CROSSWALK_COLUMNS, evaluate

SMALL = {"persons": 1500, "enterprises": 200, "seed": 11}


@pytest.fixture(scope="module")
def city(make_city: CityFactory) -> Path:
    """The generated city's folder (the shared build: the tests only read it)."""
    return make_city.path(**SMALL) / "city"


def truth(out: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(out / "truth" / f"{name}.parquet")


def table_rows(url: str, dept: depts.Department) -> list[tuple[str, ...]]:
    """Every row of the department's table, values rendered comparably, sorted by key."""

    def norm(v: Any) -> str:
        if isinstance(v, Decimal):
            return f"{v:.4f}"
        if isinstance(v, dt.datetime):
            return v.strftime("%Y-%m-%d %H:%M:%S")
        return "" if v is None else str(v)

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(dept.table).order_by(dept.table.c[dept.key])).all()
    engine.dispose()
    return [tuple(norm(v) for v in r) for r in rows]


def files_digest(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def test_every_true_identifier_validates_with_python_stdnum(city: Path) -> None:
    persons, firms = truth(city, "persons"), truth(city, "enterprises")
    assert len(persons) == SMALL["persons"] and len(firms) == SMALL["enterprises"]
    assert persons.id_number.map(ric.is_valid).all()
    assert persons.id_number.is_unique
    assert firms.uscc.map(uscc.is_valid).all()
    assert firms.uscc.map(identifiers.uscc_is_valid).all()  # embedded organization code too
    assert firms.uscc.is_unique
    legacy = firms.dropna(subset=["reg_no"])
    assert len(legacy) > 0 and legacy.reg_no.map(identifiers.reg_no_is_valid).all()
    assert (firms.org_code == firms.uscc.str[8:17]).all()
    # 18-digit IDs: sex parity and birth date agree with the person
    parity = persons.id_number.str[16].astype(int) % 2
    assert ((parity == 1) == (persons.sex == "男")).all()
    assert (
        persons.id_number.str[6:14] == pd.to_datetime(persons.birth_date).dt.strftime("%Y%m%d")
    ).all()


def test_same_seed_gives_byte_identical_databases_and_truth(tmp_path: Path) -> None:
    generate_city(tmp_path / "a", **SMALL)
    generate_city(tmp_path / "b", **SMALL)
    a, b = files_digest(tmp_path / "a"), files_digest(tmp_path / "b")
    assert len(a) == 6 + 4 + 1 and a == b
    generate_city(tmp_path / "c", **{**SMALL, "seed": 12})
    assert files_digest(tmp_path / "c") != a


def test_truth_covers_every_source_row(city: Path) -> None:
    rows = truth(city, "source_rows")
    persons = set(truth(city, "persons").person_id)
    firms = set(truth(city, "enterprises").enterprise_id)
    for dept in depts.DEPARTMENTS:
        keys = {r[0] for r in _keys(sqlite_url(city, dept.code), dept)}
        mine = rows[rows.department == dept.code]
        assert keys == set(mine.source_key), dept.code
        assert len(keys) > 0
        assert set(mine.entity_id) <= (persons if dept.entity == "person" else firms)


def _keys(url: str, dept: depts.Department) -> list[tuple[str]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        keys = [(str(k),) for (k,) in conn.execute(sa.select(dept.table.c[dept.key]))]
    engine.dispose()
    return keys


def test_planted_dirt_is_real_and_labelled(city: Path) -> None:
    dirt = truth(city, "dirt")
    rows = truth(city, "source_rows").set_index(["department", "source_key"])
    persons = truth(city, "persons").set_index("person_id")
    kinds = set(zip(dirt.department, dirt.kind, strict=True))
    for expected in [
        ("renshe", "legacy_15_digit_id"), ("renshe", "homophone"), ("renshe", "fullwidth_digits"),
        ("minzheng", "traditional_chinese"), ("minzheng", "missing"), ("weijian", "missing"),
        ("weijian", "bad_check_digit"), ("weijian", "day_month_swapped"),
        ("shuiwu", "legacy_registration_number"), ("shuiwu", "legacy_organization_code"),
        ("gongan", "duplicate_row"), ("weijian", "stale_value"), ("minzheng", "stale_value"),
        ("weijian", "unit_shorthand_address"), ("minzheng", "unit_shorthand_address"),
    ]:  # fmt: skip
        assert expected in kinds, expected
    engine = sa.create_engine(sqlite_url(city, "weijian"))
    with engine.connect() as conn:
        by_key = {r[0]: r for r in conn.execute(sa.select(depts.WEIJIAN.table))}
    bad = dirt[(dirt.department == "weijian") & (dirt.kind == "bad_check_digit")]
    for key in bad.source_key:
        number = by_key[key][2]
        pid = rows.loc[("weijian", key), "entity_id"]
        assert not ric.is_valid(number) and number != persons.loc[pid, "id_number"]
    engine = sa.create_engine(sqlite_url(city, "renshe"))
    with engine.connect() as conn:
        renshe = {str(r[0]): r for r in conn.execute(sa.select(depts.RENSHE.table))}
    legacy = dirt[(dirt.department == "renshe") & (dirt.kind == "legacy_15_digit_id")]
    for key in legacy.source_key:
        raw = renshe[key][2].translate(str.maketrans("０１２３４５６７８９", "0123456789"))
        pid = rows.loc[("renshe", key), "entity_id"]
        assert identifiers.upgrade_id15(raw) == persons.loc[pid, "id_number"]


def test_hard_near_collisions_exist(city: Path) -> None:
    persons = truth(city, "persons").set_index("person_id")
    twins = persons.dropna(subset=["twin_of"])
    assert len(twins) == SMALL["persons"] // 100
    for _pid, t in twins.iterrows():
        other = persons.loc[t.twin_of]
        assert t["name"][0] == other["name"][0] and t["name"] != other["name"]
        assert t.birth_date == other.birth_date and t.address == other.address
        assert t.id_number != other.id_number and t.id_number[:14] == other.id_number[:14]
    namesakes = persons.dropna(subset=["namesake_group"]).groupby("namesake_group").size()
    assert (namesakes >= 1).all() and namesakes.sum() == SMALL["persons"] // 200
    firms = truth(city, "enterprises")
    branches = firms.dropna(subset=["parent_enterprise_id"])
    assert len(branches) == SMALL["enterprises"] // 20
    heads = firms.set_index("enterprise_id").loc[branches.parent_enterprise_id]
    assert all(b.startswith(h) for b, h in zip(branches.name, heads.name, strict=True))


def test_the_truth_marks_each_walk_in_row(tmp_path: Path) -> None:
    """The walk-in patients planted for the review queue are exactly the 卫健 rows without a
    sex code; the truth marks each of them ``walk_in`` (and keeps the mark through a night),
    and evaluation counts their pairs: a perfect linkage links every one of them."""
    out = tmp_path / "city"
    generate_city(out, persons=800, enterprises=40, seed=3, review_band=True)
    next_night(out)
    dirt = truth(out, "dirt")
    marks = dirt[dirt.kind == "walk_in"]
    assert set(marks.department) == {"weijian"} and set(marks.column) == {"ID_CARD_NO"}
    engine = sa.create_engine(sqlite_url(out, "weijian"))
    with engine.connect() as conn:
        wj = pd.read_sql_table(depts.WEIJIAN.table_name, conn)
    engine.dispose()
    no_sex = wj[wj.SEX_CODE.isna()].set_index("PATIENT_ID")
    assert len(no_sex) >= 10 and sorted(marks.source_key) == sorted(no_sex.index)
    rows = truth(out, "source_rows")
    persons = truth(out, "persons").set_index("person_id")
    owner = rows[rows.department == "weijian"].set_index("source_key")["entity_id"]
    for key, r in no_sex.iterrows():
        born = persons.loc[owner[key], "birth_date"]
        swapped = f"{born.year}/{born.day}/{born.month}"
        assert r["ID_CARD_NO"] is None and r["BIRTH_DAY"] == swapped
    # every live pair with a walk-in row at one end, counted from the truth rows themselves
    live = rows[rows.deleted_night.isna()]
    per_person = live.groupby("entity_id").size()
    walk_ins = live[(live.department == "weijian") & live.source_key.isin(marks.source_key)]
    shared = walk_ins.groupby("entity_id").size()
    pairs = sum(
        per_person[p] * (per_person[p] - 1) // 2
        - (per_person[p] - n) * (per_person[p] - n - 1) // 2
        for p, n in shared.items()
    )
    crosswalk = live.rename(columns={"table": "source_table", "entity_type": "entity"}).assign(
        master_id="M-" + live["entity_id"]
    )[list(CROSSWALK_COLUMNS)]
    scored = evaluate(out, crosswalk).entities["person"].walk_ins
    assert scored is not None
    assert (scored.rows, scored.true_pairs, scored.linked_pairs) == (len(walk_ins), pairs, pairs)
    assert pairs > len(walk_ins)  # each walk-in has rows elsewhere to be linked with


def test_next_night_changes_rows_and_keeps_truth_current(tmp_path: Path) -> None:
    out = tmp_path / "city"
    generate_city(out, **SMALL)
    before = {d.code: set(_keys(sqlite_url(out, d.code), d)) for d in depts.DEPARTMENTS}
    manifest = next_night(out)
    assert manifest["night"] == 1 and manifest["as_of"] == "2026-07-01"
    rows = truth(out, "source_rows")
    for dept in depts.DEPARTMENTS:
        live = rows[(rows.department == dept.code) & rows.deleted_night.isna()]
        after = {k for (k,) in _keys(sqlite_url(out, dept.code), dept)}
        assert after == set(live.source_key), dept.code
        gone = {k for (k,) in before[dept.code]} - after
        deleted = rows[(rows.department == dept.code) & (rows.deleted_night == 1)]
        assert gone == set(deleted.source_key)
    assert manifest["last_changes"]["minzheng"]["deleted"] > 0
    assert manifest["last_changes"]["gongan"]["updated"] > 0
    assert manifest["last_changes"]["shichang"]["inserted"] > 0
    # moved people: the registry (authority) has the new address, stamped tonight
    persons = truth(out, "persons").set_index("person_id")
    gongan = pd.DataFrame(table_rows(sqlite_url(out, "gongan"), depts.GONGAN),
                          columns=[c.name for c in depts.GONGAN.table.columns])  # fmt: skip
    tonight = gongan[gongan.gxsj.str.startswith("20260701")]
    assert len(tonight) > 0
    src = rows[rows.department == "gongan"].set_index("source_key")
    for _, r in tonight.iterrows():
        p = persons.loc[src.loc[r.rkbh, "entity_id"]]
        assert r.hjdz == p.address and r.hjzt == ("10" if p.status == "正常" else "20")
    # a second copy of the same city takes the same night byte for byte
    twin = tmp_path / "twin"
    generate_city(twin, **SMALL)
    next_night(twin)
    assert files_digest(twin) == files_digest(out)


@pytest.fixture
def server_city_base(request: pytest.FixtureRequest) -> Iterator[str]:
    kind = request.param
    server = request.getfixturevalue(
        "pg_server_url" if kind == "postgres" else "mariadb_server_url"
    )
    base = make_url(server).set(database=f"govmdm_test_{uuid.uuid4().hex[:8]}")
    url = base.render_as_string(hide_password=False)
    try:
        yield url
    finally:
        for d in depts.DEPARTMENTS:
            drop_database(target_url(url, d.code))


@pytest.mark.slow
@pytest.mark.parametrize("server_city_base", ["postgres", "mariadb"], indirect=True)
def test_server_targets_hold_the_same_rows_as_sqlite(tmp_path: Path, server_city_base: str) -> None:
    out = tmp_path / "city"
    generate_city(out, **SMALL, targets=[server_city_base])
    next_night(out, targets=[server_city_base])
    for dept in depts.DEPARTMENTS:
        local = table_rows(sqlite_url(out, dept.code), dept)
        remote = table_rows(target_url(server_city_base, dept.code), dept)
        assert len(local) > 0
        assert remote == local, dept.code


def test_cli_sample_and_next_night(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "c"
    result = runner.invoke(
        app, ["sample", "--persons", "300", "--enterprises", "40", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "t_rk_jbxx" in result.output and (out / "truth" / "dirt.parquet").exists()
    result = runner.invoke(app, ["sample", "--next-night", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Night 1 (2026-07-01)" in result.output
    result = runner.invoke(app, ["sample", "--next-night", "--out", str(tmp_path / "none")])
    assert result.exit_code == 2 and "generate the city first" in result.output
