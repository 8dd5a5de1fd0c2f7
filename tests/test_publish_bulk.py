"""The bulk publish (:func:`store.warehouse.publish`): every column type of every master table
round-trips on SQLite, PostgreSQL (``COPY ... FROM STDIN``) and MariaDB — NULLs, unicode,
decimals, dates, timestamps, and text with tabs, newlines and backslashes — and an incremental
publish leaves the same tables as a whole one. Rows come as DataFrames or, as the night's state
holds them, as Arrow tables."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa

from store import warehouse as wh

TABLES = (*wh.CURRENT_TABLES, *wh.NIGHTLY_TABLES)
RUN = "2026-07-01"
TRICKY = "张\t三\n\\N 李\\四\r\"'|,;𠀀é"  # COPY's delimiters and escapes, a 4-byte character


def _value(column: sa.Column[Any], row: int) -> Any:
    """Row ``row``'s value of ``column``: row 0 every kind of awkward value, row 1 NULL
    wherever the column allows one (else an empty or zero value), row 2 something plain."""
    if column.name == "run_id":
        return RUN
    kind = column.type
    if row == 1 and column.nullable and not column.primary_key:
        return None
    if isinstance(kind, sa.Date):
        return [dt.date(1987, 2, 28), dt.date(1900, 1, 1), dt.date(2026, 12, 31)][row]
    if isinstance(kind, sa.DateTime):
        return dt.datetime(2026, 7, 1, 8, 30, 15, 123456) + dt.timedelta(days=row)
    if isinstance(kind, sa.Integer):
        return [7, 0, -3][row]
    if isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float):
        return [Decimal("12345678.1234"), Decimal("0"), Decimal("-0.5")][row]
    if isinstance(kind, sa.Float):
        return [0.8125, 0.0, 1.0][row]  # exact even in MariaDB FLOAT (single precision)
    length = getattr(kind, "length", None) or 64
    if column.primary_key:
        return f"{row}{TRICKY}"[:length]
    return [TRICKY, "", "plain"][row][:length]


def _frame(table: sa.Table) -> pd.DataFrame:
    return pd.DataFrame({c.name: [_value(c, r) for r in range(3)] for c in table.columns})


def _as_arrow(frame: pd.DataFrame) -> pa.Table:
    """``frame`` as the night's state holds rows: Arrow, strings dictionary-encoded, NaN rather
    than null in float columns, in more than one chunk."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for i, kind in enumerate(table.schema.types):
        if pa.types.is_string(kind):
            table = table.set_column(i, table.field(i).name, table.column(i).dictionary_encode())
        elif pa.types.is_floating(kind):
            table = table.set_column(i, table.field(i).name, table.column(i).fill_null(math.nan))
    return pa.concat_tables([table.slice(0, 1), table.slice(1)])


def _night(frames: dict[str, Any], touched: frozenset[str] | None = None) -> wh.Night:
    return wh.Night(RUN, "full", "master/run=x", {"n": 1}, frames, touched)


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, float | Decimal) and value == int(value):
        return int(value)
    return float(value) if isinstance(value, Decimal) else value


def _rows(frame: pd.DataFrame, table: sa.Table) -> list[tuple[Any, ...]]:
    columns = [c.name for c in table.columns]
    rows = [tuple(_plain(v) for v in r) for r in frame[columns].itertuples(index=False)]
    return sorted(rows, key=repr)


def _tables(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    return {t.name: _rows(wh.read(engine, t), t) for t in TABLES}


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'warehouse.sqlite'}"


@contextlib.contextmanager
def _engine(url: str) -> Iterator[sa.Engine]:
    engine = wh.engine_for(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _round_trip(url: str, seconds: bool = False, arrow: bool = False) -> list[str]:
    """Publish one frame per master table (float64 counts included) twice, as DataFrames or
    as Arrow tables; check every value; return the INSERT statements of the master tables'
    rows that SQLAlchemy saw."""
    frames = {t.name: _frame(t) for t in TABLES}
    frames["mdm_person"]["member_count"] = frames["mdm_person"]["member_count"].astype(float)
    given = {k: _as_arrow(f) for k, f in frames.items()} if arrow else frames
    seen: list[str] = []
    with _engine(url) as engine:
        sa.event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
        wh.publish(engine, _night(given), chunk_rows=2)
        wh.publish(engine, _night(given), chunk_rows=2)  # again: the same rows, once
        got = _tables(engine)
    for table in TABLES:
        want = _rows(frames[table.name], table)
        assert got[table.name] == (_to_seconds(want) if seconds else want), table.name
    names = {t.name for t in TABLES}
    return [s for s in seen if s.startswith("INSERT INTO") and s.split()[2] in names]


def _to_seconds(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """MariaDB's DATETIME (the tables give it no fractional digits) keeps whole seconds."""
    return [
        tuple(v.replace(microsecond=0) if isinstance(v, dt.datetime) else v for v in r)
        for r in rows
    ]


def test_every_column_type_round_trips_on_sqlite(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tuples through prepared statements, each table's first chunk two rows to a statement,
    the last row alone; the bulk pragmas only while it runs."""
    monkeypatch.setattr(wh, "_SQLITE_ROWS_PER_INSERT", 2)
    inserts = _round_trip(sqlite_url)
    per_table = {s.split()[2] for s in inserts}
    assert per_table == {t.name for t in TABLES}
    assert all("?" in s for s in inserts)
    assert {s.split()[2] for s in inserts if s.count("(?") == 2} == per_table
    assert {s.split()[2] for s in inserts if s.count("(?") == 1} == per_table
    with _engine(sqlite_url) as engine, engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA cache_size").scalar() != -262_144


def test_every_column_type_round_trips_on_postgres(pg_database: str) -> None:
    """PostgreSQL takes the rows through COPY: no INSERT of a master row at all."""
    assert _round_trip(pg_database) == []


def test_every_column_type_round_trips_on_mariadb(mariadb_database: str) -> None:
    assert _round_trip(mariadb_database, seconds=True)


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mariadb"])
def test_arrow_tables_round_trip_as_data_frames_do(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Rows as the night's state holds them (dictionary strings, NaN for a missing float,
    chunks) publish the same values: the publish converts Arrow to the driver's values."""
    url = {
        "sqlite": lambda: f"sqlite:///{tmp_path / 'a.sqlite'}",
        "postgres": lambda: request.getfixturevalue("pg_database"),
        "mariadb": lambda: request.getfixturevalue("mariadb_database"),
    }[backend]()
    _round_trip(url, seconds=backend == "mariadb", arrow=True)


def test_a_crash_between_chunks_leaves_last_night(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error after the first chunk rolls the whole publish back."""
    frames = {t.name: _frame(t) for t in TABLES}
    with _engine(sqlite_url) as engine:
        wh.publish(engine, _night(frames))
        before = _tables(engine)
        calls: list[str] = []

        def fail(name: str) -> None:
            calls.append(name)
            if name == "publish:inserting" and len(calls) > 1:
                raise RuntimeError("killed")

        monkeypatch.setattr(wh.failpoints, "reached", fail)
        empty = {t.name: _frame(t).iloc[:0] for t in TABLES}
        with pytest.raises(RuntimeError):
            wh.publish(engine, _night({**empty, "mdm_person": _frame(wh.person_table)}), 1)
        assert _tables(engine) == before
        assert _indexes(engine) == {"ix_mdm_crosswalk_master_id", "ix_mdm_id_event_master_id"}


def _indexes(engine: sa.Engine) -> set[str]:
    inspector = sa.inspect(engine)
    return {str(i["name"]) for t in TABLES for i in inspector.get_indexes(t.name)}


def test_sqlite_builds_a_replaced_tables_index_after_its_rows(sqlite_url: str) -> None:
    """A whole publish drops the crosswalk's index on master_id and builds it again once the
    rows are in, inside its transaction; an incremental one keeps it (it replaces few rows)."""
    frames = {t.name: _frame(t) for t in TABLES}
    seen: list[str] = []
    with _engine(sqlite_url) as engine:
        sa.event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2].strip()))
        wh.publish(engine, _night(frames))
        steps = [
            s.split("(")[0].strip()
            for s in seen
            if "mdm_crosswalk" in s and s.startswith(("DROP INDEX", "CREATE INDEX", "INSERT"))
        ]
        assert steps == [
            "DROP INDEX ix_mdm_crosswalk_master_id",
            "INSERT INTO mdm_crosswalk",
            "CREATE INDEX ix_mdm_crosswalk_master_id ON mdm_crosswalk",
        ]
        assert _indexes(engine) == {"ix_mdm_crosswalk_master_id", "ix_mdm_id_event_master_id"}
        seen.clear()
        wh.publish(engine, _night({k: f.iloc[:0] for k, f in frames.items()}, frozenset({"x"})))
        assert not [s for s in seen if "INDEX" in s]


def _people(ids: list[str], city: str) -> dict[str, pd.DataFrame]:
    person = pd.concat([_frame(wh.person_table).iloc[[2]]] * len(ids), ignore_index=True)
    person["master_id"] = ids
    person["city"] = city
    rel = pd.DataFrame(
        {
            "kind": "employer",
            "person_master_id": ids,
            "enterprise_master_id": [f"E{i[1:]}" for i in ids],
            "evidence": city,
        }
    )
    return {"mdm_person": person, "mdm_relationship": rel}


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mariadb"])
def test_incremental_publish_equals_whole(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Night 2 published on night 1 with only its touched rows == night 2 published whole."""
    url = {
        "sqlite": lambda: f"sqlite:///{tmp_path / 'a.sqlite'}",
        "postgres": lambda: request.getfixturevalue("pg_database"),
        "mariadb": lambda: request.getfixturevalue("mariadb_database"),
    }[backend]()
    kept, changed = _people(["P1", "P3"], "old"), _people(["P2", "P4"], "new")
    whole = {k: pd.concat([kept[k], changed[k]], ignore_index=True) for k in kept}
    with _engine(url) as engine:
        wh.publish(engine, _night(_people(["P1", "P2", "P3"], "old")))
        wh.publish(engine, _night(changed, frozenset({"P2", "P4"})))
        incremental = _tables(engine)
        wh.publish(engine, _night(whole))
        assert _tables(engine) == incremental
        assert len(incremental["mdm_person"]) == 4


def test_a_warehouse_of_an_older_govmdm_gets_the_new_columns(tmp_path: Path) -> None:
    """A golden attribute added since the warehouse was created (曾用名) is added to its table,
    nullable, when govmdm opens it: the next night publishes instead of failing."""
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = wh.engine_for(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE mdm_person DROP COLUMN former_name")
    engine.dispose()
    engine = wh.engine_for(url)
    try:
        columns = {c["name"] for c in sa.inspect(engine).get_columns("mdm_person")}
        assert "former_name" in columns
        assert wh.read(engine, wh.metadata.tables["mdm_person"]).empty
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["s", "ms", "us", "ns", "date32", "date64"])
def test_dates_and_timestamps_bind_as_sqlalchemy_binds_them(kind: str) -> None:
    """SQLite's text for a date or timestamp is written for a whole column at once: it is the
    text SQLAlchemy's bind processor writes value by value (year 987, before 1970, with and
    without microseconds, nulls; a timestamp bound to a date column and the other way round)."""
    from sqlalchemy.dialects import sqlite

    stamps = [
        dt.datetime(987, 1, 2, 3, 4, 5, 6),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999999),
        None,
        dt.datetime(2026, 7, 1),
        dt.datetime(2026, 7, 1),
    ]
    if kind.startswith("date"):
        array = pa.array([s and s.date() for s in stamps], getattr(pa, kind)())
    else:
        wanted = [s for s in stamps if kind != "ns" or s is None or s.year > 1677]
        array = pa.array(wanted, pa.timestamp(kind))  # microseconds cut to the unit
    dialect = sqlite.dialect()
    for column in (sa.Column("at", sa.DateTime), sa.Column("on", sa.Date)):
        process = column.type.dialect_impl(dialect).bind_processor(dialect)
        assert process is not None
        want = [process(v) for v in array.to_pylist()]
        assert wh._converter(column, dialect)(pa.chunked_array([array])) == want


def test_postgres_copy_writes_text_a_chunk_at_a_time(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COPY's text for a chunk is built whole (never a ``write_row`` per row) and reads back
    exactly: floats of every magnitude (single precision ones as the float64 they are, NaN as
    NULL), 32-bit integers, timestamps in seconds, milliseconds and microseconds (year 987,
    before 1970), and text with every control character psycopg would escape, COPY's
    end-of-data marker and its NULL marker."""
    import psycopg

    def one_by_one(*args: Any) -> None:
        raise AssertionError("a row written alone")

    monkeypatch.setattr(psycopg.Copy, "write_row", one_by_one)
    floats = [0.1, 1 / 3, 1e-7, 3e38, -2.5e-310, 1e20, 123456789.123456789, -0.0, math.nan]
    keys = [f"\\.{i}\b\f\v\x7f\\N\r\n\t\\" for i in range(len(floats))]
    stamps = [
        dt.datetime(987, 1, 2, 3, 4, 5, 6000),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999000),
        None,
        dt.datetime(2026, 7, 1),
    ]
    crosswalk = pd.DataFrame(
        {
            "entity": "person",
            "department": "公安局",
            "source_table": ["\\.", "\\N", *["t"] * (len(floats) - 2)],
            "source_key": keys,
            "master_id": [f"P{i:03}" for i in range(len(floats))],
            "link_rule": "exact",
            "link_probability": floats,
            "first_run_id": RUN,
        }
    )
    provenance = _frame(wh.provenance_table).iloc[[2] * len(stamps)]
    provenance["master_id"] = [f"P{i}" for i in range(len(stamps))]
    people = _frame(wh.person_table)
    people["member_count"] = [2**31 - 1, -(2**31), 0]
    for unit, kind in [("us", pa.float64()), ("ms", pa.float32()), ("s", pa.float64())]:
        given = pa.Table.from_pandas(crosswalk, preserve_index=False)
        floated = given.column(6).cast(kind, safe=False)
        given = given.set_column(6, "link_probability", floated)
        timed = pa.Table.from_pandas(provenance, preserve_index=False)
        at = timed.schema.get_field_index("source_updated_at")
        timed = timed.set_column(at, "source_updated_at", pa.array(stamps, pa.timestamp(unit)))
        frames = {"mdm_crosswalk": given, "mdm_provenance": timed, "mdm_person": people}
        with _engine(pg_database) as engine:
            wh.publish(engine, _night(frames), 3)
            got = wh.read(engine, wh.crosswalk_table).sort_values("master_id")
            updated = wh.read(engine, wh.provenance_table).sort_values("master_id")
            person = wh.read(engine, wh.person_table)
        assert got["source_key"].tolist() == keys
        assert got["source_table"].tolist()[:2] == ["\\.", "\\N"]
        want = [_plain(v) for v in floated.to_pylist()]
        assert [_plain(v) for v in got["link_probability"]] == want
        assert [_plain(v) for v in updated["source_updated_at"]] == [
            s and s.replace(microsecond=0 if unit == "s" else s.microsecond) for s in stamps
        ]
        assert sorted(person["member_count"]) == [-(2**31), 0, 2**31 - 1]


def _crosswalk(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    """Crosswalk rows (source key, master ID, link probability) of one department."""
    frame = pd.concat([_frame(wh.crosswalk_table).iloc[[2]]] * len(rows), ignore_index=True)
    frame["source_key"] = [k for k, _, _ in rows]
    frame["master_id"] = [m for _, m, _ in rows]
    frame["link_probability"] = [p for _, _, p in rows]
    return frame


def _provenance(masters: list[str], source_key: str) -> pd.DataFrame:
    frame = pd.concat([_frame(wh.provenance_table).iloc[[2]]] * len(masters), ignore_index=True)
    frame["master_id"] = masters
    frame["source_key"] = source_key
    return frame


def test_an_incremental_sqlite_publish_rewrites_only_what_changed_and_scans_no_large_table(
    sqlite_url: str,
) -> None:
    """A touched master's crosswalk rows that come back unchanged stay where they are (not
    deleted and inserted again), the tables still end as a whole publish leaves them, and the
    touched rows of the large tables are found through an index, never by reading the table."""
    night1 = {
        "mdm_crosswalk": _crosswalk([("k2", "P2", 0.5), ("k3", "P2", 0.5), ("k1", "P1", 0.5)]),
        "mdm_provenance": _provenance(["P2", "P1"], "k2"),
        "mdm_relationship": _people(["P2", "P1"], "old")["mdm_relationship"],
    }
    changed = {  # P2 keeps k2, k3 moves to P3 with a new probability, k4 joins P2
        "mdm_crosswalk": _crosswalk([("k2", "P2", 0.5), ("k3", "P3", 0.9), ("k4", "P2", 0.7)]),
        "mdm_provenance": _provenance(["P2", "P3"], "k4"),
        "mdm_relationship": _people(["P2"], "old")["mdm_relationship"],
    }
    statements: list[str] = []
    with _engine(sqlite_url) as engine:
        sa.event.listen(
            engine, "connect", lambda conn, _: conn.set_trace_callback(statements.append)
        )
        engine.dispose()  # the pooled connection opened before the listener
        wh.publish(engine, _night(night1))
        before = _rowids(engine)
        statements.clear()
        wh.publish(engine, _night(changed, frozenset({"P2", "P3"})))
        incremental, after = _tables(engine), _rowids(engine)
        wh.publish(engine, _night({k: pd.concat([changed[k], _p1(night1[k])]) for k in night1}))
        assert _tables(engine) == incremental
    assert after[("k2", "P2")] == before[("k2", "P2")]  # unchanged: left in place
    assert after[("k1", "P1")] == before[("k1", "P1")]  # untouched
    assert ("k3", "P2") not in after and set(after) == {
        ("k1", "P1"),
        ("k2", "P2"),
        ("k3", "P3"),
        ("k4", "P2"),
    }
    with contextlib.closing(wh.engine_for(sqlite_url).raw_connection()) as raw:
        raw.execute("CREATE TEMPORARY TABLE govmdm_touched (master_id VARCHAR(64) PRIMARY KEY)")
        large = ("mdm_person", "mdm_enterprise", "mdm_provenance", "mdm_crosswalk")
        found = [
            s for s in statements if s.startswith(("DELETE", "SELECT")) and "govmdm_touched" in s
        ]
        assert any("mdm_provenance" in s for s in found)
        for statement in found:
            plan = [r[-1].split() for r in raw.execute(f"EXPLAIN QUERY PLAN {statement}")]
            assert not any(step[:2] == ["SCAN", t] for step in plan for t in large), statement


def _p1(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` that name P1 (the master the second night did not touch)."""
    return frame[(frame == "P1").any(axis=1)]


def _rowids(engine: sa.Engine) -> dict[tuple[str, str], int]:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT source_key, master_id, rowid FROM mdm_crosswalk")
        return {(k, m): r for k, m, r in rows}
