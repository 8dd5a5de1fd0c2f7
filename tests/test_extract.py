"""Extraction: raw Parquet per department, watermarks, deletions, drift and unreachable sources."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sample_cities import CityFactory, isolate

import etl.extract as ex
from etl.config import CityConfig, DepartmentConfig, TableConfig, load_city_config
from etl.extract import DepartmentExtract, ParquetSink, extract_all, extract_department
from etl.sample_city.generate import drop_database, generate_city, next_night, target_url
from etl.standardize import ParquetParts
from etl.state import RunState, commit_watermarks
from store import failpoints, layout

ROOT = Path(__file__).resolve().parents[1]
CODES = ("gongan", "renshe", "minzheng", "weijian", "shichang", "shuiwu")


@pytest.fixture
def out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty var folder for a sample city at ``<tmp>/city``, with no connections set."""
    isolate(monkeypatch, tmp_path)
    return tmp_path / "city"


@pytest.fixture
def city(out: Path, make_city: CityFactory, monkeypatch: pytest.MonkeyPatch) -> CityConfig:
    """The generated city at ``out``, a copy (extraction writes beside it, tests change it)."""
    return make_city(monkeypatch, persons=600, enterprises=60, seed=1, copy=out.parent)


def _by_code(results: list[DepartmentExtract]) -> dict[str, DepartmentExtract]:
    return {r.department: r for r in results}


def _raw(city: CityConfig, run_id: str, code: str) -> pa.Table:
    table = city.department(code).tables[0].name
    path = layout.raw_path(city.var_dir, run_id, code, table)
    return pq.read_table(path).replace_schema_metadata(None).sort_by(ex.ROW_KEY)


def _source_keys(out: Path, dept: DepartmentConfig) -> list[str]:
    table = dept.tables[0]
    key = table.primary_key[0]
    with sqlite3.connect(out / "sources" / f"{dept.connection}.sqlite") as conn:
        return [str(k) for (k,) in conn.execute(f'SELECT "{key}" FROM "{table.name}"')]


def _truth_keys(out: Path, code: str, column: str, night: int) -> set[str]:
    rows = pq.read_table(out / "truth" / "source_rows.parquet")
    mask = pc.and_(pc.equal(rows["department"], code), pc.equal(rows[column], night))
    return set(rows.filter(mask)["source_key"].to_pylist())


def _point_at(monkeypatch: pytest.MonkeyPatch, city: CityConfig, base: str) -> None:
    for dept in city.departments:
        monkeypatch.setenv(f"GOVMDM_CONN_{dept.connection.upper()}", target_url(base, dept.code))


def _server_base(server_url: str) -> str:
    name = f"govmdm_test_{uuid.uuid4().hex[:10]}"
    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def servers() -> Iterator[list[str]]:
    """Bases handed to generate_city(targets=...); their six databases are dropped afterwards."""
    bases: list[str] = []
    yield bases
    for base in bases:
        for code in CODES:
            drop_database(target_url(base, code))


# --- SQLite: the embedded default -----------------------------------------------------------


def test_full_extraction_matches_the_source_tables(city: CityConfig, out: Path) -> None:
    results = _by_code(extract_all(city, "night-0"))
    assert set(results) == set(CODES)
    for dept in city.departments:
        r = results[dept.code]
        assert r.status == "ok", r.message
        t = r.tables[0]
        keys = _source_keys(out, dept)
        raw = _raw(city, "night-0", dept.code)
        assert t.mode == "full" and t.rows_read == len(keys) == raw.num_rows
        assert sorted(raw[ex.ROW_KEY].to_pylist()) == sorted(keys)
        assert raw.column_names == [ex.ROW_KEY, *dept.tables[0].source_columns]
        assert all(f.type == pa.string() for f in raw.schema)
        assert t.watermark_before is None and t.watermark_after is not None
    assert layout.raw_settings_path(city.var_dir, "night-0").is_file()
    with RunState.for_city(city) as state:
        ledger = state.ledger("night-0")
        assert {(r["department"], r["status"], r["mode"]) for r in ledger} == {
            (code, "ok", "full") for code in CODES
        }
        # proposed, not committed: the night has not published yet
        assert state.watermark("renshe", "insured_person") is None


def test_values_are_kept_as_text_the_way_the_source_wrote_them(city: CityConfig) -> None:
    extract_all(city, "night-0", departments=["renshe", "shichang", "weijian"])
    renshe = _raw(city, "night-0", "renshe").to_pylist()[0]
    assert dt.date.fromisoformat(renshe["birth_date"])
    assert len(renshe["last_modified"]) == 19  # 'YYYY-MM-DD HH:MM:SS', no microseconds
    capital = _raw(city, "night-0", "shichang")["zczb"].to_pylist()
    assert all(c is None or Decimal(c).as_tuple().exponent == -4 for c in capital)
    assert all(v.isdigit() for v in _raw(city, "night-0", "weijian")["UPDATE_TIME"].to_pylist())


def test_second_night_reads_exactly_the_changed_rows_and_finds_deletions(
    city: CityConfig, out: Path
) -> None:
    extract_all(city, "night-0")
    assert commit_watermarks(city, "night-0") == len(CODES)
    manifest = next_night(out)
    results = _by_code(extract_all(city, "night-1"))
    assert manifest["last_changes"]["minzheng"]["deleted"] > 0
    for code, changes in manifest["last_changes"].items():
        r = results[code]
        t = r.tables[0]
        assert r.status == "ok" and t.mode == "incremental", r.message
        assert t.rows_read == changes["inserted"] + changes["updated"], code
        read = set(_raw(city, "night-1", code)[ex.ROW_KEY].to_pylist())
        assert _truth_keys(out, code, "created_night", 1) <= read
        gone = set(pq.read_table(t.deleted_path)[ex.ROW_KEY].to_pylist())
        assert gone == _truth_keys(out, code, "deleted_night", 1)
        assert t.rows_deleted == len(gone) == changes["deleted"]
    gone = ex._deleted_keys(city.var_dir, "night-1", "minzheng", "社会救助对象")
    assert gone is not None and set(gone) == _truth_keys(out, "minzheng", "deleted_night", 1)


def test_an_uncommitted_night_reads_the_same_rows_again(city: CityConfig, out: Path) -> None:
    extract_all(city, "night-0")
    commit_watermarks(city, "night-0")
    next_night(out)
    first = _by_code(extract_all(city, "night-1"))
    # the night failed before publishing: nothing committed, so a rerun starts from night 0
    again = _by_code(extract_all(city, "night-1"))
    other = _by_code(extract_all(city, "night-1-retry"))
    assert sum(r.rows_read for r in first.values()) > 0
    for code in CODES:
        assert again[code].tables[0].rows_read == first[code].tables[0].rows_read
        assert _raw(city, "night-1", code).equals(_raw(city, "night-1-retry", code))
        assert other[code].tables[0].rows_deleted == first[code].tables[0].rows_deleted
    commit_watermarks(city, "night-1-retry")
    quiet = _by_code(extract_all(city, "night-1-after"))
    for code in CODES:
        t = quiet[code].tables[0]
        assert (t.rows_read, t.rows_deleted) == (0, 0), code
        assert t.watermark_after == t.watermark_before == other[code].tables[0].watermark_after


def _renshe(out: Path) -> sqlite3.Connection:
    return sqlite3.connect(out / "sources" / "renshe.sqlite")


def test_rows_written_in_the_watermarks_own_second_are_not_missed(
    city: CityConfig, out: Path
) -> None:
    """A row updated, or inserted, after last night's read but stamped with the same second as
    the watermark is read the next night; the rows at that second that did not change are not."""
    night0 = _by_code(extract_all(city, "night-0"))["renshe"].tables[0]
    commit_watermarks(city, "night-0")
    with contextlib.closing(_renshe(out)) as conn, conn:
        # the stamp as the source stores it (SQLAlchemy writes microseconds in SQLite)
        (mark,) = conn.execute("SELECT max(last_modified) FROM insured_person").fetchone()
        at_mark = conn.execute(
            "SELECT count(*) FROM insured_person WHERE last_modified = ?", (mark,)
        ).fetchone()[0]
        (victim,) = conn.execute(
            "SELECT person_id FROM insured_person WHERE last_modified < ? LIMIT 1", (mark,)
        ).fetchone()
        conn.execute(
            "UPDATE insured_person SET mobile = '13900000000', last_modified = ? "
            "WHERE person_id = ?",
            (mark, victim),
        )
        conn.execute(
            "INSERT INTO insured_person SELECT 990000001, full_name, id_no, gender, "
            "birth_date, mobile, employer_uscc, insurance_type, ?"
            " FROM insured_person WHERE person_id = ?",
            (mark, victim),
        )
    night1 = _by_code(extract_all(city, "night-1"))["renshe"].tables[0]
    keys = set(_raw(city, "night-1", "renshe")[ex.ROW_KEY].to_pylist())
    assert keys == {str(victim), "990000001"}
    assert (night1.rows_read, night1.rows_unchanged) == (2, at_mark)
    assert night1.watermark_after == night0.watermark_after
    commit_watermarks(city, "night-1")
    quiet = _by_code(extract_all(city, "night-2"))["renshe"].tables[0]
    assert (quiet.rows_read, quiet.rows_unchanged) == (0, at_mark + 2)
    row = RunState.for_city(city).ledger("night-1")
    assert {(r["department"], r["rows_unchanged"]) for r in row} >= {("renshe", at_mark)}


def test_rows_without_a_change_stamp_are_read_when_they_change(city: CityConfig, out: Path) -> None:
    with contextlib.closing(_renshe(out)) as conn, conn:
        conn.execute(
            "UPDATE insured_person SET last_modified = NULL WHERE person_id IN "
            "(SELECT person_id FROM insured_person ORDER BY person_id LIMIT 3)"
        )
        nulls = [
            k
            for (k,) in conn.execute(
                "SELECT person_id FROM insured_person WHERE last_modified IS NULL ORDER BY 1"
            )
        ]
    assert len(nulls) == 3
    night0 = _by_code(extract_all(city, "night-0"))["renshe"].tables[0]
    assert night0.rows_read == len(_source_keys(out, city.department("renshe")))
    commit_watermarks(city, "night-0")
    quiet = _by_code(extract_all(city, "night-1"))["renshe"].tables[0]
    assert (quiet.rows_read, quiet.rows_unchanged) == (0, 3 + _at_watermark(out))
    with contextlib.closing(_renshe(out)) as conn, conn:
        conn.execute(
            "UPDATE insured_person SET mobile = '13900000001' WHERE person_id = ?", (nulls[1],)
        )
    changed = _by_code(extract_all(city, "night-1b"))["renshe"].tables[0]
    assert _raw(city, "night-1b", "renshe")[ex.ROW_KEY].to_pylist() == [str(nulls[1])]
    assert changed.rows_read == 1


def test_stamps_with_mixed_utc_offsets_move_the_watermark_by_instant(
    city: CityConfig, out: Path
) -> None:
    """A text change column whose stamps carry different UTC offsets: '08:00:00+08:00' is
    before '01:00:00+00:00' though it sorts after it as text. The watermark is the latest
    instant, and the next night reads a row written after it whose text sorts below it."""
    minzheng = city.department("minzheng")
    table = minzheng.tables[0].model_copy(update={"change_format": "%Y-%m-%d %H:%M:%S%z"})
    dept = minzheng.model_copy(update={"tables": [table]})
    source = out / "sources" / "minzheng.sqlite"
    with contextlib.closing(sqlite3.connect(source)) as conn, conn:
        conn.execute("UPDATE 社会救助对象 SET 更新时间 = 更新时间 || '+08:00'")  # all before 07-01
        keys = [k for (k,) in conn.execute("SELECT 对象编号 FROM 社会救助对象 ORDER BY 1 LIMIT 3")]
        stamps = {keys[0]: "2026-07-01 08:00:00+08:00", keys[1]: "2026-07-01 01:00:00+00:00"}
        for key, stamp in stamps.items():  # 00:00 UTC, then 01:00 UTC: the latest
            conn.execute("UPDATE 社会救助对象 SET 更新时间 = ? WHERE 对象编号 = ?", (stamp, key))
    night0 = extract_department(city, dept, "night-0").tables[0]
    assert night0.watermark_after == "2026-07-01 01:00:00+00:00"
    commit_watermarks(city, "night-0")
    quiet = extract_department(city, dept, "night-1").tables[0]
    # read again from a day before the watermark's instant, and dropped: nothing changed
    assert (quiet.rows_read, quiet.rows_unchanged) == (0, 2)
    assert quiet.watermark_after == night0.watermark_after
    with contextlib.closing(sqlite3.connect(source)) as conn, conn:
        conn.execute(
            "UPDATE 社会救助对象 SET 联系电话 = '13900000000', 更新时间 = ? WHERE 对象编号 = ?",
            ("2026-07-01 02:00:00+00:00", keys[2]),  # after the watermark, below it as text
        )
    night2 = extract_department(city, dept, "night-2").tables[0]
    assert _raw(city, "night-2", "minzheng")[ex.ROW_KEY].to_pylist() == [keys[2]]
    assert night2.rows_read == 1 and night2.watermark_after == "2026-07-01 02:00:00+00:00"


def _at_watermark(out: Path) -> int:
    with contextlib.closing(_renshe(out)) as conn:
        query = "SELECT count(*) FROM insured_person WHERE last_modified = "
        return int(
            conn.execute(query + "(SELECT max(last_modified) FROM insured_person)").fetchone()[0]
        )


def test_back_dated_rows_are_found_by_the_key_scan(city: CityConfig, out: Path) -> None:
    extract_all(city, "night-0")
    commit_watermarks(city, "night-0")
    with contextlib.closing(_renshe(out)) as conn, conn:
        conn.execute(
            "INSERT INTO insured_person SELECT 990000002, full_name, id_no, gender, "
            "birth_date, mobile, employer_uscc, insurance_type, '2001-01-01 00:00:00'"
            " FROM insured_person LIMIT 1"
        )
    skipped = _by_code(extract_all(city, "night-1", deletion_scan_every_nights=3))
    assert skipped["renshe"].tables[0].rows_read == 0  # no key scan tonight: not seen yet
    scanned = _by_code(extract_all(city, "night-1", deletion_scan_every_nights=1))
    t = scanned["renshe"].tables[0]
    assert (t.rows_read, t.rows_late, t.rows_deleted) == (1, 1, 0)
    assert _raw(city, "night-1", "renshe")[ex.ROW_KEY].to_pylist() == ["990000002"]
    assert t.message and "below the watermark" in t.message
    assert scanned["gongan"].tables[0].rows_late == 0


def test_full_rerun_and_less_frequent_deletion_scans(city: CityConfig, out: Path) -> None:
    extract_all(city, "night-0")
    commit_watermarks(city, "night-0")
    again = _by_code(extract_all(city, "night-0-full", full=True))
    assert {r.tables[0].mode for r in again.values()} == {"full"}
    next_night(out)
    one = _by_code(extract_all(city, "night-1", deletion_scan_every_nights=2))
    assert one["minzheng"].tables[0].rows_deleted is None  # no key scan tonight
    commit_watermarks(city, "night-1")
    next_night(out)
    two = _by_code(extract_all(city, "night-2", deletion_scan_every_nights=2))
    gone = pq.read_table(two["minzheng"].tables[0].deleted_path)[ex.ROW_KEY].to_pylist()
    expected = _truth_keys(out, "minzheng", "deleted_night", 1) | _truth_keys(
        out, "minzheng", "deleted_night", 2
    )
    assert set(gone) == expected and expected


def test_a_renamed_column_is_drift_for_that_department_only(city: CityConfig, out: Path) -> None:
    with sqlite3.connect(out / "sources" / "renshe.sqlite") as conn:
        conn.execute("ALTER TABLE insured_person RENAME COLUMN id_no TO id_card")
    results = _by_code(extract_all(city, "night-0"))
    renshe = results.pop("renshe")
    assert renshe.status == "drift"
    assert renshe.message is not None
    for needle in (
        "insured_person",
        "'id_no'",
        "tables[0].columns.id_no",
        "renshe.yaml",
        "id_card",
    ):
        assert needle in renshe.message, needle
    assert all(r.status == "ok" for r in results.values())
    assert not layout.raw_dir(city.var_dir, "night-0", "renshe").exists()
    with RunState.for_city(city) as state:
        ledger = {r["department"]: r for r in state.ledger("night-0")}
        assert ledger["renshe"]["status"] == "drift" and "id_no" in ledger["renshe"]["message"]
        assert set(ledger) == set(CODES)


def test_a_changed_column_type_is_drift_until_accepted(city: CityConfig, out: Path) -> None:
    extract_all(city, "night-0")
    commit_watermarks(city, "night-0")
    with sqlite3.connect(out / "sources" / "shuiwu.sqlite") as conn:
        for statement in (
            'ALTER TABLE "纳税人登记信息" ADD COLUMN tmp INTEGER',
            'UPDATE "纳税人登记信息" SET tmp = CAST("登记序号" AS INTEGER)',
            'ALTER TABLE "纳税人登记信息" DROP COLUMN "登记日期"',
            'ALTER TABLE "纳税人登记信息" RENAME COLUMN tmp TO "登记日期"',
        ):
            conn.execute(statement)
    shuiwu = city.department("shuiwu")
    result = extract_department(city, shuiwu, "night-1")
    assert result.status == "drift"
    assert result.message is not None
    assert "'登记日期'" in result.message and "tables[0].columns.登记日期" in result.message
    assert "VARCHAR(10) (string)" in result.message and "INTEGER (integer)" in result.message
    with RunState.for_city(city) as state:
        state.forget_schema_snapshot("shuiwu", "纳税人登记信息")
    assert extract_department(city, shuiwu, "night-1").status == "ok"


def test_a_wrong_change_kind_is_drift(city: CityConfig) -> None:
    weijian = city.department("weijian")
    table = weijian.tables[0].model_copy(update={"change_kind": "string"})
    dept = weijian.model_copy(update={"tables": [table]})
    result = extract_department(city, dept, "night-0")
    assert result.status == "drift"
    assert result.message is not None and "tables[0].change_kind" in result.message


def test_an_unreachable_source_is_retried_then_flagged(
    city: CityConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOVMDM_CONN_GONGAN", "postgresql+psycopg://reader:s3cret@127.0.0.1:1/rk")
    waits: list[float] = []
    monkeypatch.setattr(ex.time, "sleep", waits.append)
    results = _by_code(extract_all(city, "night-0", retries=2, backoff_s=0.01))
    gongan = results.pop("gongan")
    assert gongan.status == "unreachable" and gongan.attempts == 3
    assert waits == [0.01, 0.02]
    assert gongan.message is not None
    assert "GOVMDM_CONN_GONGAN" in gongan.message and "127.0.0.1:1" in gongan.message
    assert "s3cret" not in gongan.message
    assert all(r.status == "ok" for r in results.values())
    with RunState.for_city(city) as state:
        statuses = {(r["department"], r["table_name"]): r["status"] for r in state.ledger()}
    assert statuses[("gongan", "t_rk_jbxx")] == "unreachable"
    assert len(statuses) == len(CODES)


def test_an_unconfigured_connection_fails_that_department(city: CityConfig, out: Path) -> None:
    (out / "sources" / "weijian.sqlite").unlink()
    result = extract_department(city, city.department("weijian"), "night-0")
    assert result.status == "failed"
    assert result.message is not None and "GOVMDM_CONN_WEIJIAN" in result.message


def test_a_missing_driver_fails_that_department(
    city: CityConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOVMDM_CONN_SHUIWU", "postgresql+nosuchdriver://reader@db/tax")
    result = extract_department(city, city.department("shuiwu"), "night-0")
    assert result.status == "failed"
    assert result.message is not None and "postgresql+psycopg" in result.message


@pytest.mark.parametrize("multiline", [False, True])
def test_copy_csv_blocks_keep_empty_strings_nulls_and_line_breaks(multiline: bool) -> None:
    note = '"two\r\nlines, ""quoted"""' if multiline else "one line"
    block = bytearray(f'1,"",{note},t\n2,,"x",\n3,a,,f\n'.encode())
    rows = ex._parse_csv(block, 3, columns=["id", "a", "b", "flag"], booleans={"flag"},
                         encoding="utf8")  # fmt: skip
    assert rows.to_pydict() == {
        "id": ["1", "2", "3"],
        "a": ["", None, "a"],
        "b": ['two\r\nlines, "quoted"' if multiline else "one line", "x", None],
        "flag": ["true", None, "false"],
    }


def test_sqlite_sources_are_opened_read_only(tmp_path: Path) -> None:
    path = tmp_path / "源 数据.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE t (x INTEGER)").connection.close()
    engine = sa.create_engine(ex._read_only_url(f"sqlite:///{path}"))
    with engine.connect() as conn, pytest.raises(sa.exc.OperationalError, match="readonly"):
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    engine.dispose()


def test_composite_keys_are_joined() -> None:
    rows = pa.table({"k1": ["a", "b"], "k2": ["1", "2"]})
    keyed = ex._with_row_key(rows, ["k1", "k2"])
    assert keyed.column_names == [ex.ROW_KEY, "k1", "k2"]
    assert keyed[ex.ROW_KEY].to_pylist() == ["a|1", "b|2"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (dt.datetime(2026, 7, 1, 12, 0), "2026-07-01 12:00:00"),
        (dt.datetime(2026, 7, 1, 12, 0, 0, 500000), "2026-07-01 12:00:00.5"),
        (dt.datetime(2026, 7, 1, 20, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))),
         "2026-07-01 12:00:00+00"),
        (dt.date(1985, 3, 7), "1985-03-07"),
        (Decimal("0E-4"), "0.0000"),
        (Decimal("100.0000"), "100.0000"),
        (100.0, "100"),
        (1e15, "1e+15"),
        (1.5e-7, "1.5e-07"),
        (float("-inf"), "-Infinity"),
        (True, "true"),
        (b"\x00\xff", "\\x00ff"),
        (None, None),
        ("", ""),
    ],
)  # fmt: skip
def test_values_render_as_postgresql_prints_them(value: Any, text: str | None) -> None:
    assert ex._text(value) == text


def test_row_hashes_carried_forward_take_tonights_versions_of_their_keys(tmp_path: Path) -> None:
    def versions(*rows: tuple[str, str]) -> pa.Array:
        table = pa.table({"_row_key": [k for k, _ in rows], "xm": [v for _, v in rows]})
        return ex._versions(table)

    committed, out = tmp_path / "hashes.parquet", tmp_path / "pending.parquet"
    ex._write_versions(committed, [versions(("RK1", "王芳"), ("RK2", "李明"), ("RK3", "张伟"))], 0)
    tonight = versions(("RK2", "李敏"), ("RK4", "陈静"), ("RK4", "陈静"))  # a key read twice
    ex._carry_versions(committed, [tonight], out, 3)
    carried = pq.read_table(out).column("_row_version").to_pylist()
    keys = [v.split("\x1f")[0] for v in carried]
    assert keys == ["RK1", "RK3", "RK2", "RK4"]
    assert carried[2:] == tonight.to_pylist()[:2]
    assert ex._nights_since_scan(out, "nights_since_check") == 3


@pytest.mark.parametrize(
    "column",
    [
        ["RK01", None, "王芳"],
        [7, None, -3, 2**63 - 1],
        [2**64, 1],  # beyond int64
        [1, True],  # a bool is no number here
        [True, False],
        ["a", 1],  # SQLite keeps whatever type each value came in
        [1, "a"],
        ["x", b"\x00\xff"],
        [1.0, 2],
        [Decimal("0E-4"), None],
        [dt.date(1985, 3, 7)],
        [None, None],
        [],
    ],
)
def test_a_column_renders_as_each_of_its_values_does(column: list[Any]) -> None:
    expected = [ex._text(v) for v in column]
    assert ex._texts(column).to_pylist() == expected
    assert ex._texts(column).type == pa.string()


# --- real servers -------------------------------------------------------------------------------


def test_postgres_copy_and_sqlalchemy_paths_match_sqlite(
    out: Path, pg_server_url: str, servers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _server_base(pg_server_url)
    servers.append(base)
    generate_city(out, persons=500, enterprises=60, seed=4, targets=[base])
    city = load_city_config(ROOT / "config")
    extract_all(city, "sqlite")
    _point_at(monkeypatch, city, base)
    read_only: list[str] = []
    begin = ex._begin_read_only

    def spy(conn: sa.Connection) -> None:
        begin(conn)
        read_only.append(conn.exec_driver_sql("SHOW transaction_read_only").scalar_one())

    monkeypatch.setattr(ex, "_begin_read_only", spy)
    copied = _by_code(extract_all(city, "pg-copy"))
    assert read_only == ["on"] * len(CODES)
    for dept in city.departments:
        generic = extract_department(city, dept, "pg-sqlalchemy", fast_path=False)
        assert copied[dept.code].status == generic.status == "ok"
        assert copied[dept.code].tables[0].watermark_after == generic.tables[0].watermark_after
        expected = _raw(city, "sqlite", dept.code)
        assert _raw(city, "pg-copy", dept.code).equals(expected), dept.code
        assert _raw(city, "pg-sqlalchemy", dept.code).equals(expected), dept.code
    # the incremental night through COPY: watermarks bound as timestamp, text and integer
    commit_watermarks(city, "pg-copy")
    manifest = next_night(out, targets=[base])
    night = _by_code(extract_all(city, "pg-night-1"))
    for code, changes in manifest["last_changes"].items():
        t = night[code].tables[0]
        assert (t.mode, t.rows_read) == ("incremental", changes["inserted"] + changes["updated"])
        assert t.rows_deleted == changes["deleted"]


def test_mariadb_gives_the_same_raw_parquet_as_sqlite(
    out: Path, mariadb_server_url: str, servers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _server_base(mariadb_server_url)
    servers.append(base)
    generate_city(out, persons=500, enterprises=60, seed=4, targets=[base])
    city = load_city_config(ROOT / "config")
    extract_all(city, "sqlite")
    _point_at(monkeypatch, city, base)
    results = _by_code(extract_all(city, "mariadb"))
    for dept in city.departments:
        assert results[dept.code].status == "ok", results[dept.code].message
        assert _raw(city, "mariadb", dept.code).equals(_raw(city, "sqlite", dept.code)), dept.code
    commit_watermarks(city, "mariadb")
    manifest = next_night(out, targets=[base])
    night = _by_code(extract_all(city, "mariadb-night-1"))
    for code, changes in manifest["last_changes"].items():
        assert night[code].tables[0].rows_read == changes["inserted"] + changes["updated"]


def test_postgres_edge_values_survive_copy(
    out: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = sa.create_engine(pg_database)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            'CREATE TABLE "Edge 表" (id integer, part text, changed timestamptz, amount numeric,'
            " ratio float8, flag boolean, born date, note text, blob bytea,"
            " PRIMARY KEY (id, part))"
        )
        conn.exec_driver_sql(
            """INSERT INTO "Edge 表" VALUES
            (1, 'a', '2026-07-01 20:00:00.25+08', 0.00001, 100.0, true, '2000-02-29',
             'line one' || chr(10) || 'line "two", three', '\\x00ff'),
            (2, 'b', '2026-07-01 12:00:00+00', 12345678901234.5678, 1e20, false, NULL, '', NULL),
            (3, 'c', NULL, NULL, NULL, NULL, NULL, NULL, NULL)"""
        )
    engine.dispose()
    monkeypatch.setenv("GOVMDM_CONN_EDGE", pg_database)
    extras = ("amount", "ratio", "flag", "born", "note", "blob")
    dept = DepartmentConfig.model_validate(
        {
            "code": "edge", "name": "测试局", "connection": "edge", "update_frequency": "daily",
            "contact": {"name": "测试", "email": "test@example.gov.cn"},
            "tables": [{
                "name": "Edge 表", "entity": "person", "primary_key": ["id", "part"],
                "change_column": "changed", "change_kind": "timestamp",
                "columns": {c: {"extra": c} for c in extras},
            }],
        }
    )  # fmt: skip
    city = load_city_config(ROOT / "config")
    fast = extract_department(city, dept, "copy")
    slow = extract_department(city, dept, "sqlalchemy", fast_path=False)
    assert fast.status == slow.status == "ok", (fast.message, slow.message)
    a, b = _raw_edge(city, "copy"), _raw_edge(city, "sqlalchemy")
    assert a.equals(b), (a.to_pylist(), b.to_pylist())
    rows = {r["_row_key"]: r for r in a.to_pylist()}
    assert rows["1|a"]["note"] == 'line one\nline "two", three'
    assert rows["1|a"]["changed"] == "2026-07-01 12:00:00.25+00"
    assert (rows["1|a"]["amount"], rows["1|a"]["ratio"]) == ("0.00001", "100")
    assert (rows["1|a"]["flag"], rows["1|a"]["blob"]) == ("true", "\\x00ff")
    assert rows["2|b"]["note"] == "" and rows["3|c"]["note"] is None
    assert rows["2|b"]["amount"] == "12345678901234.5678" and rows["2|b"]["ratio"] == "1e+20"
    assert fast.tables[0].watermark_after == "2026-07-01 12:00:00.25+00"


def _raw_edge(city: CityConfig, run_id: str) -> pa.Table:
    path = layout.raw_path(city.var_dir, run_id, "edge", "Edge 表")
    return pq.read_table(path).replace_schema_metadata(None).sort_by(ex.ROW_KEY)


def test_ledger_rows_carry_what_the_night_did(city: CityConfig) -> None:
    extract_all(city, "night-0", departments=["minzheng"])
    with RunState.for_city(city) as state:
        (row,) = state.ledger("night-0")
    assert row["rows_read"] > 0 and row["rows_deleted"] == 0 and row["duration_s"] >= 0
    assert row["parquet_path"].endswith("社会救助对象.parquet")
    assert json.loads(pq.read_schema(row["parquet_path"]).metadata[b"govmdm"])["mode"] == "full"


def test_copy_reader_raises_server_errors_and_leaves_the_connection_usable(
    pg_database: str,
) -> None:
    """The libpq-level COPY loop: rows arrive whole; a query that fails before or during the
    copy raises psycopg's own error; a reader stopped early cancels the query. Each time the
    connection can roll back and run the next statement."""
    import psycopg
    from psycopg import errors

    from etl.extract import _copy_rows

    engine = sa.create_engine(pg_database)
    try:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            rows = list(
                _copy_rows(
                    raw,
                    b"COPY (SELECT g, 'a,b' FROM generate_series(1, 3) g) TO STDOUT (FORMAT csv)",
                )
            )
            assert [bytes(r) for r in rows] == [b'1,"a,b"\n', b'2,"a,b"\n', b'3,"a,b"\n']

            with pytest.raises(errors.UndefinedTable):
                list(_copy_rows(raw, b"COPY (SELECT * FROM no_such_table) TO STDOUT"))
            conn.rollback()
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1

            failing = b"COPY (SELECT 1 / (g - 50000) FROM generate_series(1, 60000) g) TO STDOUT"
            with pytest.raises(errors.DivisionByZero):
                for _ in _copy_rows(raw, failing):
                    pass
            conn.rollback()
            assert conn.execute(sa.text("SELECT 2")).scalar() == 2

            stream = _copy_rows(
                raw, b"COPY (SELECT g FROM generate_series(1, 1000000) g) TO STDOUT"
            )
            assert bytes(next(stream)) == b"1\n"
            stream.close()  # the consumer gave up: the query is cancelled, the rest drained
            conn.rollback()
            assert conn.execute(sa.text("SELECT 3")).scalar() == 3
            assert isinstance(raw, psycopg.Connection) and not raw.broken
    finally:
        engine.dispose()


# --- an output takes its place only when whole ----------------------------------------------------

N = pa.schema([("n", pa.int64())])


def _write(path: Path, kind: str, n: int) -> None:
    """An output holding the one row ``n``: a Parquet file, or a folder of parts (Spark's)."""
    rows = pa.table({"n": [n]}, schema=N)
    if kind == "file":
        pq.write_table(rows, path)
    else:
        path.mkdir()
        pq.write_table(rows, path / "part-00000-000000000000.parquet")


def _read(path: Path) -> list[int]:
    return pq.read_table(path)["n"].to_pylist()


def _no_swap(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a file system that cannot swap two names (no ``RENAME_EXCHANGE``)."""
    monkeypatch.setattr(ex, "_exchange", lambda a, b: False)


KINDS = [("file", "file"), ("file", "folder"), ("folder", "file"), ("folder", "folder")]


@pytest.mark.parametrize("swap", [True, False], ids=["swap", "no-swap"])
@pytest.mark.parametrize(("old", "new"), [*KINDS, (None, "file"), (None, "folder")])
def test_an_output_replaces_a_file_or_folder(
    tmp_path: Path, old: str | None, new: str, swap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not swap:
        _no_swap(monkeypatch)
    path, tmp = tmp_path / "out.parquet", tmp_path / ".out.parquet.1.tmp"
    if old:
        _write(path, old, 1)
    _write(tmp, new, 2)
    ex.replace_output(tmp, path)
    assert _read(path) == [2] and path.is_dir() == (new == "folder")
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


# A writer of the same output, as the next night runs it: ParquetSink writes a file, the Spark
# engine's ParquetParts a folder. It is killed (SIGKILL) between the steps of putting it in place.
_KILLED_WRITER = """
import sys
from pathlib import Path
import pyarrow as pa
import etl.extract
from etl.extract import ParquetSink
from etl.standardize import ParquetParts
if sys.argv[3] == "no-swap":
    etl.extract._exchange = lambda a, b: False
sink = ParquetParts if sys.argv[2] == "folder" else ParquetSink
with sink(Path(sys.argv[1]), pa.schema([("n", pa.int64())]), 10, {}) as out:
    out.write(pa.table({"n": [2]}))
"""


@pytest.mark.parametrize("swap", [True, False], ids=["swap", "no-swap"])
@pytest.mark.parametrize(("old", "new"), KINDS)
def test_a_writer_killed_while_replacing_leaves_a_whole_output(
    tmp_path: Path, old: str, new: str, swap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.parquet"
    _write(path, old, 1)
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(path), new, "swap" if swap else "no-swap"],
        env={**os.environ, failpoints.ENV: "extract:replacing"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    if old == new == "file":  # one rename, not yet made: the old output
        assert _read(path) == [1]
    elif swap:  # swapped in one step: the new output, the old one left at the temp name
        assert _read(path) == [2]
    else:  # the old one moved aside: nothing to read (loudly), until the next writer
        with pytest.raises(FileNotFoundError):
            pq.read_table(path)
    assert len(list(tmp_path.iterdir())) > 1  # what the killed writer left
    whole = _read(path) if path.exists() else [1]

    if not swap:
        _no_swap(monkeypatch)
    sink = ParquetParts if old == "folder" else ParquetSink
    with sink(path, N, 10, {}) as out:  # the next night's writer
        assert _read(path) == whole  # stands while it writes: the last whole output
        out.write(pa.table({"n": [3]}))
    assert _read(path) == [3]
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


_KEY_ROWS_CASES = {
    "text and integers": ([("甲", 1), ("b", 22), ("", 3), ("d|e", 4)], True),
    "bytes that are not UTF-8": ([(b"\xe4\xb8", 1), ("ok", 2)], True),
    "a line break in a key": ([("a\nb", 1), ("c", 2)], False),
    "a NULL key column": ([(None, 1), ("c", 2)], False),
    "a real number": ([("a", 1.5), ("c", 2)], False),
}


@pytest.mark.parametrize("case", list(_KEY_ROWS_CASES))
def test_sqlite_key_scan_joins_keys_in_the_source_as_the_rows_give_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    rows, joined = _KEY_ROWS_CASES[case]
    path = tmp_path / "src.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:  # no primary key: NULLs possible
        db.execute("CREATE TABLE t (a VARCHAR(10), b INTEGER, c VARCHAR(14), x VARCHAR(10))")
        for a, b in rows:
            value = "CAST(? AS TEXT)" if isinstance(a, bytes) else "?"
            db.execute(f"INSERT INTO t VALUES ({value}, ?, '20260701', 'x')", (a, b))
        db.commit()
    table = TableConfig(
        name="t",
        entity="person",
        primary_key=["a", "b"],
        change_column="c",
        change_kind="string",
        change_format="%Y%m%d",
        columns={"x": "name"},
    )
    engine = ex._engine(ex._read_only_url(f"sqlite:///{path}"))
    with engine.connect() as conn:
        ex._begin_read_only(conn)
        types = {c["name"]: c["type"] for c in sa.inspect(conn).get_columns("t")}
        source = ex._TableSource(
            conn, False, table, types, {c: "string" for c in types}, chunk_rows=2
        )
        by_rows = pa.concat_arrays([r[ex.ROW_KEY].combine_chunks() for r in source.rows()])
        read_row_by_row = ex._read_sqlite
        if joined:  # then the scan makes no Python object per key

            def refuse(*args: Any) -> Any:
                raise AssertionError("the keys were read row by row")

            monkeypatch.setattr(ex, "_read_sqlite", refuse)
        scanned = pa.chunked_array(list(source.keys()), pa.string())
        monkeypatch.setattr(ex, "_read_sqlite", read_row_by_row)
    engine.dispose()
    assert scanned.to_pylist() == by_rows.to_pylist()
    assert len(scanned) == len(rows)
