"""The atomic publish of one night into the warehouse's master tables, and the night lock.

Golden tables (人口基础库 ``mdm_person``, 法人基础库 ``mdm_enterprise``), per-attribute provenance,
the crosswalk from every accepted source row to its master ID, person↔enterprise relationships,
the review queue and the night's conflicts and ID events all live in the warehouse database
(SQLite under ``var/warehouse`` by default, PostgreSQL via ``GOVMDM_WAREHOUSE_URL``); their
definitions, with every other table of that database, are in :mod:`store.tables`.

:func:`publish` replaces them in **one transaction**: a reader sees last night or tonight, never
half of either, and a crash leaves last night in place. Current-state tables are replaced whole;
per-night tables (conflicts, ID events) replace only the night's own rows, so republishing a
night changes nothing. Reviewers' decisions (``mdm_review_decision``) are written by
``govmdm review``, never by a publish.

>>> publish(engine, night)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import itertools
import json
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from psycopg import abc as psycopg_abc
from psycopg import sql as psql
from psycopg.adapt import PyFormat, Transformer

from store import failpoints
from store.tables import (
    conflict_table,
    crosswalk_table,
    enterprise_table,
    id_event_table,
    metadata,
    person_relationship_table,
    person_table,
    provenance_table,
    relationship_table,
    review_queue_table,
    run_table,
    unresolved_table,
)

CURRENT_TABLES = (
    person_table,
    enterprise_table,
    provenance_table,
    crosswalk_table,
    relationship_table,
    person_relationship_table,
    unresolved_table,
    review_queue_table,
)
NIGHTLY_TABLES = (conflict_table, id_event_table)
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "mdm_person": ("master_id",),
    "mdm_enterprise": ("master_id",),
    "mdm_provenance": ("master_id",),
    "mdm_crosswalk": ("master_id",),
    "mdm_relationship": ("person_master_id", "enterprise_master_id"),
    "mdm_person_relationship": ("person_master_id", "related_master_id"),
    "mdm_unresolved_reference": ("master_id",),
    "mdm_review_queue": ("left_master_id", "right_master_id"),
}
"""The master-ID columns of each current table: an incremental publish replaces the rows whose
any such column holds a touched master ID."""


Rows: TypeAlias = pa.Table | pd.DataFrame
"""A table's rows to publish: columns by name (those the table lacks are left out)."""


@dataclass
class Night:
    """Everything one night publishes: table name → rows, plus the run record."""

    run_id: str
    mode: str
    state_dir: str
    """Where the night's master state lives: relative to ``var/`` (so that ``var/`` can move)."""
    summary: dict[str, Any]
    frames: dict[str, Rows] = field(default_factory=dict)
    touched: frozenset[str] | None = None
    """Master IDs whose rows changed: the current tables then keep every row that names none of
    them (by :data:`KEY_COLUMNS`) and take ``frames``' rows for the rest. None: replace whole."""


def engine_for(url: str) -> sa.Engine:
    """An engine on the warehouse, with its tables (:mod:`store.tables`) created if missing.

    SQLite runs in WAL mode so readers keep reading the last published night during a publish.
    """
    backend = sa.make_url(url).get_backend_name()
    engine = sa.create_engine(url, connect_args={"timeout": 60} if backend == "sqlite" else {})
    if backend == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

    metadata.create_all(engine, checkfirst=True)
    _add_missing_columns(engine)
    return engine


def _add_missing_columns(engine: sa.Engine) -> None:
    """Add the nullable columns a newer govmdm defines (a new golden attribute, say) to the
    tables an older one created, so an existing warehouse keeps publishing."""
    inspector = sa.inspect(engine)
    quote = engine.dialect.identifier_preparer.quote
    missing = [
        (table, column)
        for table in metadata.sorted_tables
        if inspector.has_table(table.name)
        for have in [{c["name"] for c in inspector.get_columns(table.name)}]
        for column in table.columns
        if column.name not in have and column.nullable
    ]
    if not missing:
        return
    with engine.begin() as conn:
        for table, column in missing:
            type_sql = column.type.compile(dialect=engine.dialect)
            conn.execute(
                sa.text(
                    f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {type_sql}"
                )
            )


def publish(engine: sa.Engine, night: Night, chunk_rows: int = 20_000) -> None:
    """Replace the master tables with ``night`` in one transaction (see the module doc)."""
    tables = {t.name: t for t in (*CURRENT_TABLES, *NIGHTLY_TABLES)}
    unknown = set(night.frames) - set(tables)
    if unknown:
        raise ValueError(f"no warehouse table named {sorted(unknown)}")
    frames = dict(night.frames)
    with engine.begin() as conn:
        if night.touched is None:
            for table in CURRENT_TABLES:
                conn.execute(table.delete())
        elif conn.dialect.name == "sqlite":
            frames = _replace_changed(conn, sorted(night.touched), frames)
        else:
            _delete_touched(conn, sorted(night.touched))
        for table in NIGHTLY_TABLES:
            conn.execute(table.delete().where(table.c.run_id == night.run_id))
        with _bulk_load(conn, CURRENT_TABLES if night.touched is None else ()):
            for name, frame in frames.items():
                _insert(conn, tables[name], frame, chunk_rows)
        conn.execute(run_table.delete().where(run_table.c.run_id == night.run_id))
        conn.execute(
            run_table.insert().values(
                run_id=night.run_id,
                published_at=dt.datetime.now(dt.UTC),
                mode=night.mode,
                state_dir=night.state_dir,
                summary=json.dumps(night.summary, ensure_ascii=False, sort_keys=True),
            )
        )
        failpoints.reached("publish:before-commit")


_TOUCHED = sa.Table(
    "govmdm_touched",
    sa.MetaData(),
    sa.Column("master_id", sa.String(64), primary_key=True),
    prefixes=["TEMPORARY"],
)
"""The master IDs an incremental publish replaces, in a temporary table of the publish's own
connection: each current table is then scanned once (``IN (SELECT ...)``) however many IDs there
are, not once per chunk of IDs written out in the statement."""
_INSERT_CHUNK = 20_000


def _delete_touched(conn: sa.Connection, touched: list[str]) -> None:
    """Delete, inside ``conn``'s transaction, the current tables' rows that name one of
    ``touched`` in any of their :data:`KEY_COLUMNS`."""
    temporary = _fill_touched(conn, touched)
    for table in CURRENT_TABLES:
        _delete_rows_of_touched(conn, table)
    conn.exec_driver_sql(f"DROP {temporary}TABLE {_TOUCHED.name}")


def _fill_touched(conn: sa.Connection, touched: list[str]) -> str:
    """Create :data:`_TOUCHED` on ``conn`` holding ``touched``; the word its ``DROP`` takes."""
    temporary = "TEMPORARY " if conn.dialect.name in ("mysql", "mariadb") else ""
    # one a failed publish on this pooled connection may have left (MariaDB: not transactional)
    conn.exec_driver_sql(f"DROP {temporary}TABLE IF EXISTS {_TOUCHED.name}")
    _TOUCHED.create(conn)
    for start in range(0, len(touched), _INSERT_CHUNK):
        rows = [{"master_id": m} for m in touched[start : start + _INSERT_CHUNK]]
        conn.execute(_TOUCHED.insert(), rows)
    return temporary


def _delete_rows_of_touched(conn: sa.Connection, table: sa.Table) -> None:
    """Delete ``table``'s rows that name a master ID of :data:`_TOUCHED` in any of their
    :data:`KEY_COLUMNS`."""
    ids = sa.select(_TOUCHED.c.master_id)
    for key in KEY_COLUMNS[table.name]:
        lead = _by_primary_key(conn, table, key)
        where = [lead[0].in_(lead[1])] if lead else []
        conn.execute(table.delete().where(*where, table.c[key].in_(ids)))


_COMPARED = frozenset({crosswalk_table.name, relationship_table.name})
"""The current tables whose rows of a touched master mostly come back unchanged (at 200,000
persons 80 % of the crosswalk's, 87 % of the relationships'; a fifth of the provenance's and
none of the golden records'): an incremental publish on SQLite compares them with the night's
and replaces only the rows that changed (:func:`_replace_changed`)."""


def _replace_changed(
    conn: sa.Connection, touched: list[str], frames: dict[str, Rows]
) -> dict[str, Rows]:
    """The incremental publish on SQLite: delete the current tables' rows that name one of
    ``touched`` (by :data:`KEY_COLUMNS`) — of the tables in :data:`_COMPARED`, only those the
    night does not hold again — and return ``frames`` less the rows those tables hold
    already: what is left to insert. The tables end as :func:`_delete_touched` and inserting
    every frame would leave them.

    The crosswalk is in source order, a master's rows far apart: deleting and inserting its
    unchanged rows again dirtied pages all over it and its two indexes, and writing those
    pages to the WAL and back cost more than the rows did. Rows are compared as the driver
    stores them (each frame column through :func:`_converter`, a column the frame lacks as
    NULL)."""
    _fill_touched(conn, touched)
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    quote = conn.dialect.identifier_preparer.quote
    out = dict(frames)
    for table in CURRENT_TABLES:
        if table.name not in _COMPARED:
            _delete_rows_of_touched(conn, table)
            continue
        columns = ", ".join(quote(c.name) for c in table.columns)
        old: dict[int, tuple[Any, ...]] = {}
        for key in KEY_COLUMNS[table.name]:
            lead = _by_primary_key(conn, table, key)
            first = (
                f"{quote(lead[0].name)} IN ({', '.join('?' * len(lead[1]))}) AND " if lead else ""
            )
            found = raw.execute(
                f"SELECT rowid, {columns} FROM {quote(table.name)} WHERE {first}"
                f"{quote(key)} IN (SELECT master_id FROM {_TOUCHED.name})",
                lead[1] if lead else (),
            )
            old.update((row[0], row[1:]) for row in found)
        frame = out.get(table.name)
        data = _arrow(frame, table) if frame is not None else None
        new = _stored_rows(conn, table, data) if data is not None else []
        again = set(new)
        stale = [(rowid,) for rowid, row in old.items() if row not in again]
        if stale:
            raw.executemany(f"DELETE FROM {quote(table.name)} WHERE rowid = ?", stale)
        if data is not None and old:
            held = set(old.values())
            out[table.name] = data.filter(pa.array([row not in held for row in new], pa.bool_()))
    conn.exec_driver_sql(f"DROP TABLE {_TOUCHED.name}")
    return out


def _stored_rows(conn: sa.Connection, table: sa.Table, data: pa.Table) -> list[tuple[Any, ...]]:
    """``data``'s rows as the driver is sent them, one value per column of ``table`` (None
    for a column ``data`` lacks)."""
    none = [None] * data.num_rows
    values = [
        _converter(c, conn.dialect)(data.column(c.name)) if c.name in data.column_names else none
        for c in table.columns
    ]
    return list(zip(*values, strict=True))


def _by_primary_key(
    conn: sa.Connection, table: sa.Table, key: str
) -> tuple[sa.Column[Any], list[Any]] | None:
    """On SQLite, for a master-ID column ``key`` that comes second in ``table``'s primary key
    and leads no index: the key's first column and every value it holds. ``first IN (those
    values)``, true of every row, lets SQLite find the touched rows through the primary key's
    index instead of reading the whole table (the provenance, keyed by entity, master ID
    and attribute, holds 1.8 million rows at 200,000 persons). The values are found by
    walking down that index, a lookup per value. Elsewhere (and for any other column) None:
    PostgreSQL plans a join, and MariaDB refuses a subquery on the table it deletes from."""
    pk = list(table.primary_key.columns)
    if (
        conn.dialect.name != "sqlite"
        or len(pk) < 2
        or pk[1].name != key
        or any(index.columns[0].name == key for index in table.indexes)
    ):
        return None
    quote = conn.dialect.identifier_preparer.quote
    name, first = quote(table.name), quote(pk[0].name)  # NOT NULL: in the primary key
    walk = conn.exec_driver_sql(
        f"WITH RECURSIVE walk(v) AS (SELECT min({first}) FROM {name} UNION ALL "
        f"SELECT (SELECT min({first}) FROM {name} WHERE {first} > v) FROM walk "
        "WHERE v IS NOT NULL) SELECT v FROM walk WHERE v IS NOT NULL"
    )
    return pk[0], [v for (v,) in walk]


def latest_run(engine: sa.Engine, *, before: str | None = None) -> Mapping[str, Any] | None:
    """The last published night, or None.

    With ``before`` (the night about to be linked): if that night was published already, the
    last night published *before* it, so a rerun starts from the same place as the first run;
    otherwise the last night published.
    """
    r = run_table.c
    query = sa.select(run_table).order_by(r.published_at.desc()).limit(1)
    with engine.connect() as conn:
        if before is not None:
            own = conn.execute(sa.select(r.published_at).where(r.run_id == before)).scalar()
            query = query.where(r.run_id != before)
            if own is not None:
                query = query.where(r.published_at < own)
        row = conn.execute(query).first()
    return dict(row._mapping) if row else None


def published_run(engine: sa.Engine, run_id: str) -> Mapping[str, Any] | None:
    """Night ``run_id``'s row of ``mdm_run`` if it was published, else None."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(run_table).where(run_table.c.run_id == run_id)).first()
    return dict(row._mapping) if row else None


# --- one night at a time ------------------------------------------------------------------------


class WarehouseBusy(RuntimeError):
    """Another night is linking or publishing into the same warehouse right now."""


_LOCK_KEY = (1735357037, 1)  # pg_try_advisory_lock(int, int): "govm", the night lock
_LOCK_NAME = "govmdm_night"
_held: dict[tuple[str, int], list[Any]] = {}  # (url, thread) → [release, depth]


@contextlib.contextmanager
def night_lock(
    url: str, run_id: str, stage: str, *, lock_dir: Path | None = None
) -> Iterator[None]:
    """Hold the warehouse's night lock while linking or publishing night ``run_id``; raise
    :class:`WarehouseBusy` at once, naming the holder, if another process holds it.

    PostgreSQL: a session advisory lock; MySQL/MariaDB: ``GET_LOCK``; SQLite: an ``flock`` on a
    file beside the database. The server or the kernel releases each of them when the holder's
    connection or process ends, however it ends (SIGKILL included), so a crash never leaves a
    stale lock behind. Re-entrant within one thread: ``consolidate`` holds it across link and
    publish. Other backends lock a file in ``lock_dir``, which serialises only processes sharing
    that folder.

    >>> with night_lock("sqlite:///var/warehouse/govmdm.sqlite", "2026-07-01", "link"):
    ...     ...
    """
    key = (url, threading.get_ident())
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    what = f"night {run_id} ({stage}), pid {os.getpid()} on {socket.gethostname()}"
    backend = sa.make_url(url).get_backend_name()
    if backend == "postgresql":
        release = _lock_postgres(url, what)
    elif backend in ("mysql", "mariadb"):
        release = _lock_mysql(url, what)
    else:
        database = sa.make_url(url).database if backend == "sqlite" else None
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database).with_name(Path(database).name + ".night-lock")
        elif lock_dir is not None:
            path = lock_dir / "night.lock"
        else:
            raise ValueError(f"no night lock for {backend} without a lock_dir")
        release = _lock_file(path, what)
    _held[key] = [release, 1]
    try:
        yield
    finally:
        del _held[key]
        release()


def _busy(holder: str, where: str) -> WarehouseBusy:
    return WarehouseBusy(
        f"another govmdm night is linking or publishing into the warehouse ({where}): "
        f"{holder}. Only one night at a time may link or publish, so this one did not start. "
        "Fix: wait until that night has finished, then run this one again"
    )


def _lock_postgres(url: str, what: str) -> Any:
    engine = sa.create_engine(
        url, poolclass=sa.pool.NullPool, connect_args={"application_name": f"govmdm {what}"[:63]}
    )
    conn = engine.connect()
    try:
        got = conn.execute(sa.select(sa.func.pg_try_advisory_lock(*_LOCK_KEY))).scalar()
        holder = None
        if not got:
            holder = conn.execute(
                sa.text(
                    "SELECT a.pid, a.application_name, a.backend_start FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.classid = :a AND l.objid = :b "
                    "AND l.objsubid = 2 AND l.granted AND l.database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"a": _LOCK_KEY[0], "b": _LOCK_KEY[1]},
            ).first()
        conn.commit()  # the lock is the session's: no transaction stays open while it is held
    except BaseException:
        conn.close()
        engine.dispose()
        raise
    if not got:
        conn.close()
        engine.dispose()
        who = (
            f"{holder.application_name or 'a session'} (server pid {holder.pid}, since "
            f"{holder.backend_start:%Y-%m-%d %H:%M:%S %Z})"
            if holder is not None
            else "a session that has just finished"
        )
        raise _busy(who, _where(url))

    def release() -> None:
        with contextlib.suppress(Exception):  # closing the session releases it anyway
            conn.execute(sa.select(sa.func.pg_advisory_unlock(*_LOCK_KEY)))
            conn.commit()
        conn.close()
        engine.dispose()

    return release


def _lock_mysql(url: str, what: str) -> Any:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    conn = engine.connect()
    name = sa.func.concat(_LOCK_NAME + ":", sa.func.database())
    try:
        got = conn.execute(sa.select(sa.func.get_lock(name, 0))).scalar()
        holder = None if got == 1 else conn.execute(sa.select(sa.func.is_used_lock(name))).scalar()
        conn.commit()
    except BaseException:
        conn.close()
        engine.dispose()
        raise
    if got != 1:
        conn.close()
        engine.dispose()
        raise _busy(f"connection {holder}" if holder else "another session", _where(url))

    def release() -> None:
        with contextlib.suppress(Exception):
            conn.execute(sa.select(sa.func.release_lock(name)))
            conn.commit()
        conn.close()
        engine.dispose()

    return release


def _lock_file(path: Path, what: str) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        os.close(fd)
        raise _busy(holder or "a process that has just finished", str(path)) from None
    since = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{what}, since {since}\n".encode(), 0)

    def release() -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor releases the flock

    return release


def _where(url: str) -> str:
    u = sa.make_url(url)
    return f"{u.get_backend_name()} database {u.database} on {u.host or 'localhost'}"


def read(engine: sa.Engine, table: sa.Table, **where: Any) -> pd.DataFrame:
    """A table's rows (optionally filtered by column equality) as a DataFrame."""
    query = sa.select(table).where(*[table.c[k] == v for k, v in where.items()])
    with engine.connect() as conn:
        result = conn.execute(query)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


# --- bulk loading: Arrow a chunk at a time, prepared statements, COPY on PostgreSQL -------------

_SQLITE_BULK = {"cache_size": -262_144}
"""Pragmas for the publish's one transaction on SQLite (only those a transaction may change): a
256 MiB page cache, so the transaction rarely spills pages to the WAL before it commits.
Durability (``synchronous``, the journal) is left as it is."""


@contextlib.contextmanager
def _bulk_load(conn: sa.Connection, emptied: tuple[sa.Table, ...]) -> Iterator[None]:
    """Within the publish's transaction, ``conn`` tuned for a bulk load on SQLite (nothing
    elsewhere): :data:`_SQLITE_BULK`, whose settings come back afterwards (it returns to the
    pool); and the secondary indexes of the tables ``emptied`` (replaced whole) dropped for the
    load and built again after it, in the same transaction — one sort instead of keeping each
    index in order row by row (the crosswalk's on master_id costs a third of its load).

    Readers keep reading last night's tables and indexes meanwhile (WAL); a failed load rolls
    the drop back with the rest. Not on PostgreSQL, where ``DROP INDEX`` would lock readers out
    of the table until the commit, nor on MySQL/MariaDB, where DDL commits."""
    if conn.dialect.name != "sqlite":
        yield
        return
    before = {k: conn.exec_driver_sql(f"PRAGMA {k}").scalar() for k in _SQLITE_BULK}
    for k, v in _SQLITE_BULK.items():
        conn.exec_driver_sql(f"PRAGMA {k} = {int(v)}")
    try:
        indexes = [index for table in emptied for index in table.indexes]
        for index in indexes:
            index.drop(conn, checkfirst=True)
        yield
        for index in indexes:
            index.create(conn)
    finally:
        with contextlib.suppress(sa.exc.DBAPIError):
            for k, old in before.items():
                conn.exec_driver_sql(f"PRAGMA {k} = {int(old or 0)}")


def _insert(conn: sa.Connection, table: sa.Table, frame: Rows, chunk_rows: int) -> None:
    """Append ``frame``'s rows to ``table`` inside ``conn``'s transaction, ``chunk_rows`` at a
    time (the crash tests kill the publish between chunks), each column through its type's
    bind processor (what a SQLAlchemy insert would send): by ``COPY ... FROM STDIN`` on
    PostgreSQL (psycopg) and prepared statements through ``executemany`` elsewhere."""
    data = _arrow(frame, table)
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        loader = _copy_in(conn, table, data.column_names)
    else:
        loader = _execute_many(conn, table, data.column_names)
    with loader as (order, write):
        data = data.select(order)
        for start in range(0, data.num_rows, chunk_rows):
            write(data.slice(start, chunk_rows))
            failpoints.reached("publish:inserting")


def _arrow(frame: Rows, table: sa.Table) -> pa.Table:
    """The columns of ``table`` that ``frame`` has, in the table's order, as an Arrow table;
    raise if it lacks a required one."""
    have = set(frame.column_names if isinstance(frame, pa.Table) else frame.columns)
    missing = [c.name for c in table.columns if c.name not in have and not c.nullable]
    if missing:
        raise ValueError(f"{table.name}: rows lack required columns {missing}")
    columns = [c.name for c in table.columns if c.name in have]
    if isinstance(frame, pa.Table):
        return frame.select(columns)
    return pa.Table.from_pandas(frame[columns], preserve_index=False)


Write = Callable[[pa.Table], object]
"""Sends one chunk of rows, its columns in the loader's order."""


@contextlib.contextmanager
def _copy_in(
    conn: sa.Connection, table: sa.Table, columns: list[str]
) -> Iterator[tuple[list[str], Write]]:
    """One ``COPY table (columns) FROM STDIN`` on ``conn``'s own connection, in its
    transaction, each chunk sent as one block of text (:func:`_copy_text`'s columns joined by
    tabs, its rows by newlines): a ``write_row`` per row, a Python call and a dump per value,
    was half the publish's CPU time at 200,000 persons."""
    target = [table.schema, table.name] if table.schema else [table.name]
    statement = psql.SQL("COPY {} ({}) FROM STDIN").format(
        psql.Identifier(*target), psql.SQL(", ").join(map(psql.Identifier, columns))
    )
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    dumpers = Transformer(raw)
    texts = [_copy_text(table.c[c], conn.dialect, dumpers) for c in columns]
    with raw.cursor() as cursor, cursor.copy(statement) as copy:

        def write(chunk: pa.Table) -> None:
            rows = pc.binary_join_element_wise(
                *[text(chunk.column(i)) for i, text in enumerate(texts)], b"\t"
            )
            block = pc.binary_join(pa.ListArray.from_arrays([0, len(rows)], rows), b"\n")
            copy.write(memoryview(block[0].as_buffer()))
            copy.write(b"\n")

        yield columns, write


_COPY_ESCAPES = ((b"\\", b"\\\\"), (b"\t", b"\\t"), (b"\n", b"\\n"), (b"\r", b"\\r"))
"""What COPY's text format escapes in a value (backslash first): its own escape character, its
column and row delimiters, and the carriage return it would take for a line end."""


def _copy_text(
    column: sa.Column[Any], dialect: sa.Dialect, dumpers: psycopg_abc.Transformer
) -> Callable[[pa.ChunkedArray], pa.Array]:
    """How one column's Arrow values become their text in COPY's text format, one binary
    value per row: ``\\N`` for a null, else the text psycopg's ``write_row`` writes for the
    value :func:`_converter` gives (or text the server reads as the same value), escaped
    (:data:`_COPY_ESCAPES`).

    Where :func:`_arrow_writes` says so, Arrow writes the column at once; every other column
    is dumped by psycopg once per distinct value."""
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    integer = isinstance(column.type, sa.Integer)
    iso = _iso_unit(column, process)
    utf8 = dumpers.encoding == "utf-8"

    def text(values: pa.ChunkedArray) -> pa.Array:
        array = _numbers_bound(values.combine_chunks(), integer)
        if process is None and _arrow_writes(column, array.type, utf8):
            return _escaped(_arrow_text(array))
        distinct, at = _distinct(array, process, iso)
        dumped = dumpers.dump_sequence(distinct, [PyFormat.TEXT] * len(distinct))
        return _escaped(pa.array([*dumped, None], pa.binary())).take(at)  # last: for nulls

    return text


def _arrow_writes(column: sa.Column[Any], kind: pa.DataType, utf8: bool) -> bool:
    """Whether Arrow's text for values of ``kind`` is what psycopg writes for them, or what
    the server reads as the same value in ``column``: integers; strings, when the connection
    speaks UTF-8; floats (as float64: the shortest text that reads back as the same number,
    as Python's ``repr``, exponents aside) for a number column; dates for a date or timestamp
    column; timestamps without a zone, at most microseconds, for a timestamp column (with
    trailing zeros in the fraction)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_integer(kind):
        return True
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return utf8
    if pa.types.is_floating(kind):
        return isinstance(column.type, sa.Numeric)
    if pa.types.is_date(kind):
        return isinstance(column.type, sa.Date | sa.DateTime)
    if pa.types.is_timestamp(kind):
        return kind.tz is None and kind.unit != "ns" and isinstance(column.type, sa.DateTime)
    return False


def _arrow_text(array: pa.Array) -> pa.Array:
    """``array``'s values as Arrow writes them, in binary (nulls stay null); a dictionary's
    values written once."""
    if pa.types.is_dictionary(array.type):
        return _arrow_text(array.dictionary).take(array.indices)
    if pa.types.is_floating(array.type):
        array = pc.cast(array, pa.float64())
    return pc.cast(array, pa.string()).cast(pa.binary())


def _escaped(text: pa.Array) -> pa.Array:
    """Binary ``text`` escaped for COPY's text format (:data:`_COPY_ESCAPES`), ``\\N`` for
    a null."""
    for old, new in _COPY_ESCAPES:
        text = pc.replace_substring(text, old, new)
    return text.fill_null(b"\\N")


_SQLITE_ROWS_PER_INSERT = 200
"""Rows one INSERT takes on SQLite (``VALUES (...), (...), ...``): a statement per row spends a
third of SQLite's load in stepping and resetting it; past a few hundred rows nothing more is
saved (and SQLite caps a statement's parameters)."""


@contextlib.contextmanager
def _execute_many(
    conn: sa.Connection, table: sa.Table, columns: list[str]
) -> Iterator[tuple[list[str], Write]]:
    """The table's INSERT compiled once for the dialect's parameter style; each chunk's columns
    (:func:`_converter`) go to the driver's ``executemany`` (the driver keeps the statement
    prepared). On SQLite the statement's VALUES holds :data:`_SQLITE_ROWS_PER_INSERT` rows, a
    chunk's last rows go one by one."""
    compiled = table.insert().compile(dialect=conn.dialect, column_keys=columns)
    sql = str(compiled)
    order = [str(k) for k in compiled.positiontup or ()] if compiled.positional else columns
    convert = [_converter(table.c[c], conn.dialect) for c in order]

    def values(chunk: pa.Table) -> list[list[Any]]:
        return [f(chunk.column(i)) for i, f in enumerate(convert)]

    if not compiled.positional:
        yield (
            order,
            lambda chunk: conn.exec_driver_sql(
                sql, [dict(zip(order, r, strict=True)) for r in zip(*values(chunk), strict=True)]
            ),
        )
        return
    if conn.dialect.name != "sqlite":
        yield order, lambda chunk: conn.exec_driver_sql(sql, list(zip(*values(chunk), strict=True)))
        return
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    most = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // max(len(order), 1)
    per = max(1, min(_SQLITE_ROWS_PER_INSERT, most))
    head, _, row = sql.partition(" VALUES ")  # INSERT INTO t (a, b) VALUES (?, ?)
    many = f"{head} VALUES {', '.join([row] * per)}"
    width = len(order)

    def write(chunk: pa.Table) -> None:
        flat = tuple(itertools.chain.from_iterable(zip(*values(chunk), strict=True)))
        step = per * width
        whole = len(flat) // step * step
        if whole:
            conn.exec_driver_sql(many, [flat[i : i + step] for i in range(0, whole, step)])
        if whole < len(flat):
            conn.exec_driver_sql(sql, [flat[i : i + width] for i in range(whole, len(flat), width)])

    yield order, write


def _converter(column: sa.Column[Any], dialect: sa.Dialect) -> Callable[[Any], list[Any]]:
    """How one column's Arrow values become what the driver is sent: Python values, None for
    every null (and NaN), numbers bound for an integer column rounded to int (half to even, as
    Python's ``round``), then the type's bind processor for ``dialect``.

    Numbers without a bind processor go through numpy; every other column is converted, and
    processed, once per distinct value (the rows then share the objects): most columns repeat
    a few values (attribute, department, rule) or many (timestamps of provenance), and the
    bind processors (SQLite formats each date and timestamp as text) are what costs."""
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    integer = isinstance(column.type, sa.Integer)
    iso = _iso_unit(column, process)

    def convert(values: pa.ChunkedArray) -> list[Any]:
        array = _numbers_bound(values.combine_chunks(), integer)
        if process is None and (
            pa.types.is_integer(array.type) or pa.types.is_floating(array.type)
        ):
            if not array.null_count:
                plain: list[Any] = array.to_numpy(zero_copy_only=False).tolist()
                return plain
            data = array.fill_null(0).to_numpy(zero_copy_only=False).astype(object)
            data[array.is_null().to_numpy(zero_copy_only=False)] = None
            with_nulls: list[Any] = data.tolist()
            return with_nulls
        distinct, at = _distinct(array, process, iso)
        lookup = np.empty(len(distinct) + 1, dtype=object)  # the last one: None, for nulls
        lookup[: len(distinct)] = distinct
        rows: list[Any] = lookup[at].tolist()
        return rows

    return convert


def _numbers_bound(array: pa.Array, integer: bool) -> pa.Array:
    """``array`` with NaN as null and, bound for an ``integer`` column, floats rounded to
    int64."""
    if pa.types.is_floating(array.type):
        array = pc.if_else(pc.is_nan(array), pa.scalar(None, array.type), array)
        if integer:
            array = pc.cast(pc.round(array), pa.int64())
    return array


def _distinct(
    array: pa.Array, process: Callable[[Any], Any] | None, iso: IsoUnit | None
) -> tuple[list[Any], np.ndarray]:
    """``array``'s distinct values as the driver is sent them (through ``process``, or as ISO
    text for ``iso``), and each row's index into them: one past the last for a null."""
    encoded = array if pa.types.is_dictionary(array.type) else array.dictionary_encode()
    if iso is not None and _iso_writes(iso, encoded.dictionary.type):
        distinct = _iso_text(encoded.dictionary, iso)
    elif process is not None:
        distinct = [process(v) for v in encoded.dictionary.to_pylist()]
    else:
        distinct = encoded.dictionary.to_pylist()
    return distinct, encoded.indices.fill_null(len(distinct)).to_numpy(zero_copy_only=False)


_PROBE = dt.datetime(2001, 2, 3, 4, 5, 6, 7)
IsoUnit = Literal["us", "D"]


def _iso_unit(column: sa.Column[Any], process: Callable[[Any], Any] | None) -> IsoUnit | None:
    """``"us"`` if ``process`` binds the column's timestamps as ISO text with microseconds,
    ``"D"`` if it binds its dates as ISO text (SQLite's, as SQLAlchemy stores them by default),
    else None: numpy then writes that text for a whole array at once, a hundred times faster
    than a call per value."""
    if process is None:
        return None
    if isinstance(column.type, sa.DateTime) and process(_PROBE) == _PROBE.isoformat(" "):
        return "us"
    if isinstance(column.type, sa.Date) and process(_PROBE.date()) == _PROBE.date().isoformat():
        return "D"
    return None


def _iso_writes(unit: IsoUnit, kind: pa.DataType) -> bool:
    """Whether :func:`_iso_text` writes Arrow values of ``kind`` exactly as the bind processor
    would: timestamps without a zone to at most microseconds, for a timestamp column; dates,
    for a date column."""
    if unit == "us":
        return pa.types.is_timestamp(kind) and kind.tz is None and kind.unit != "ns"
    return pa.types.is_date(kind)


def _iso_text(values: pa.Array, unit: IsoUnit) -> list[str]:
    """Dates (``unit`` ``"D"``) or timestamps (``"us"``) without nulls as ISO text: ``2001-02-03``,
    ``2001-02-03 04:05:06.000007``."""
    kind = pa.timestamp("us") if unit == "us" else pa.date32()
    text: list[str] = np.datetime_as_string(
        values.cast(kind).to_numpy(zero_copy_only=False), unit=unit
    ).tolist()
    return [t.replace("T", " ") for t in text] if unit == "us" else text
