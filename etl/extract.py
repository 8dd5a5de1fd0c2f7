"""Extract each department's tables, read-only and chunked, into raw Parquet per run.

For every configured table: check the live schema against the configuration and the last
successful run (drift flags the department and nothing of it is read), then read everything
(first night, ``full=True``) or only the rows changed since the committed watermark (see
:class:`_SeenVersions` for the rows the watermark alone cannot tell apart), and write
``<var_dir>/raw/run=<run_id>/department=<code>/<table>.parquet`` with every column as text plus
``_row_key`` (the primary key as text, composite keys joined with ``|``, a NUL as ``␀``).
Values are rendered the way PostgreSQL prints them, so the same data read from SQLite,
PostgreSQL or MariaDB gives the same Parquet. PostgreSQL sources are read with
``COPY ... TO STDOUT`` (CSV), cut into blocks of whole rows that Arrow parses while the next
block is read.

Watermarks and key sets are only proposed here; :func:`etl.state.commit_watermarks` moves them
once the night has published. A department's own problems never raise: they come back as status
``drift``, ``unreachable`` or ``failed`` with a message that says what to fix, and the ledger
(``etl_ledger``) gets a row per table either way.

>>> results = extract_all(city, "2026-07-01")
>>> [(r.department, r.status) for r in results][:2]
[('gongan', 'ok'), ('renshe', 'ok')]
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import difflib
import errno
import functools
import hashlib
import json
import logging
import math
import os
import queue
import re
import select
import shutil
import threading
import time
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from glob import escape as glob_escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.types import TypeEngine

from etl.config import (
    CityConfig,
    ConfigError,
    DepartmentConfig,
    TableConfig,
    parse_stamp,
    resolve_connection,
)
from etl.config import save_settings_snapshot as _save_settings
from etl.state import LedgerEntry, Mode, RunState, Status
from fields.masking import redact_message
from store import failpoints
from store.layout import (
    deleted_path,
    duplicates_path,
    hash_set_path,
    key_set_path,
    pending_hash_set_path,
    pending_key_set_path,
    pending_seen_set_path,
    raw_dir,
    raw_path,
    raw_settings_path,
    seen_set_path,
)
from store.tables import crosswalk_table

log = logging.getLogger(__name__)

ROW_KEY = "_row_key"
KEY_SEPARATOR = "|"
NUL, KEY_NUL = "\x00", "\u2400"
"""A NUL character, which PostgreSQL text cannot hold, and the symbol (␀) that stands for it
in a row key. The raw values keep it; standardization reports the column (``nul_character``)."""
CONNECT_TIMEOUT_S = 10
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")
_COPY_BLOCK_BYTES = 16 << 20  # a COPY block ends at chunk_rows rows or this size
_KEY_ROWS = 250_000  # keys are small: bigger row groups, still bounded
_WRITE_QUEUE = 3  # chunks waiting for the writer thread: bounds memory

Instant = Callable[[str], dt.datetime | None]
"""A text change stamp as the city's wall time; None for text it cannot read."""

# Which live column types each change_kind can be compared in.
_CHANGE_CLASSES = {
    "timestamp": {"timestamp", "timestamptz", "string"},
    "epoch_seconds": {"integer", "decimal"},
    "string": {"string"},
}


@dataclass
class TableExtract:
    """What happened to one table: rows read, where they went, the watermark before and after."""

    table: str
    mode: Mode
    status: Status = "ok"
    rows_read: int = 0
    parquet_path: Path | None = None
    watermark_before: str | None = None
    watermark_after: str | None = None
    duration_s: float = 0.0
    rows_deleted: int | None = None  # None: no key scan tonight
    rows_unchanged: int = 0  # read again at the watermark or NULL-stamped, same version: dropped
    rows_late: int = 0  # found by the key scan with a stamp below the watermark, read tonight
    rows_backdated: int = 0  # changed with an old stamp: found by the row-hash check, read
    rows_duplicate: int = 0  # rows sharing a key with another row: set apart, rejected
    keys_before: int | None = None  # keys in the committed key set (None: no key scan)
    deletion_guard: str | None = None  # held | accepted: deletions above the table's limit
    deleted_path: Path | None = None
    message: str | None = None
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


@dataclass
class DepartmentExtract:
    """One department's extraction: ``ok``, or why not (``drift``, ``unreachable``, ``failed``)."""

    department: str
    status: Status
    tables: list[TableExtract]
    message: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        """Every table was read."""
        return self.status == "ok"

    @property
    def rows_read(self) -> int:
        """Rows read over all tables."""
        return sum(t.rows_read for t in self.tables)


class _Drift(Exception):
    def __init__(self, problems: dict[str, list[str]]) -> None:
        self.problems = problems  # table -> problem lines
        super().__init__("\n".join(p for lines in problems.values() for p in lines))


class _ConnectionLost(Exception):
    """The source could not be reached, or dropped the connection: worth retrying."""


class _TableFailed(Exception):
    def __init__(self, table: str | None, cause: BaseException) -> None:
        self.table = table  # None: before any table was read
        self.cause = cause
        super().__init__(f"{table or 'schema check'}: {cause}")


# --- public entry points -------------------------------------------------------------------------


def extract_all(
    city: CityConfig,
    run_id: str,
    *,
    departments: Iterable[str] | None = None,
    full: bool = False,
    progress: Callable[[DepartmentExtract], None] | None = None,
    chunk_rows: int = 50_000,
    retries: int = 3,
    backoff_s: float = 2.0,
    deletion_scan_every_nights: int = 1,
    hash_check_every_nights: int = 7,
) -> list[DepartmentExtract]:
    """Extract every department (or those named), one after another; one failing never stops
    the others. Saves the configuration used beside the run's raw output.

    >>> results = extract_all(city, "2026-07-01", departments=["renshe"])
    >>> results[0].status, results[0].tables[0].mode
    ('ok', 'full')
    """
    _check_run_id(run_id)
    wanted = list(departments) if departments is not None else [d.code for d in city.departments]
    known = [d.code for d in city.departments]
    unknown = [code for code in wanted if code not in known]
    if unknown:
        raise ValueError(f"unknown department(s) {unknown}; configured: {', '.join(known)}")
    _save_settings(city, raw_settings_path(city.var_dir, run_id))
    results = []
    with RunState.for_city(city) as state:
        for code in wanted:
            result = extract_department(
                city,
                city.department(code),
                run_id,
                full=full,
                chunk_rows=chunk_rows,
                retries=retries,
                backoff_s=backoff_s,
                deletion_scan_every_nights=deletion_scan_every_nights,
                hash_check_every_nights=hash_check_every_nights,
                state=state,
            )
            results.append(result)
            if progress is not None:
                progress(result)
    return results


def extract_department(
    city: CityConfig,
    dept: DepartmentConfig,
    run_id: str,
    *,
    full: bool = False,
    chunk_rows: int = 50_000,
    retries: int = 3,
    backoff_s: float = 2.0,
    deletion_scan_every_nights: int = 1,
    hash_check_every_nights: int = 7,
    fast_path: bool = True,
    state: RunState | None = None,
) -> DepartmentExtract:
    """Extract one department's tables into raw Parquet and write its ledger rows.

    Never raises for the department's own problems: connection failures are retried
    ``retries`` more times with exponential backoff (``backoff_s``, twice that, ...) and then
    reported as ``unreachable``; schema drift as ``drift``; anything else as ``failed``.
    ``fast_path=False`` reads PostgreSQL through SQLAlchemy instead of COPY (same output).
    Every ``hash_check_every_nights``-th incremental night reads the whole table and compares
    each row's hash with the one kept from earlier nights: a row changed without moving its
    change column (a back-dated stamp) is read then, and counted as ``rows_backdated``.

    >>> r = extract_department(city, city.department("renshe"), "2026-07-01")
    >>> r.status, r.tables[0].rows_read, r.tables[0].parquet_path.name
    ('ok', 596, 'insured_person.parquet')
    """
    _check_run_id(run_id)
    if (
        chunk_rows < 1
        or retries < 0
        or deletion_scan_every_nights < 1
        or hash_check_every_nights < 1
    ):
        raise ValueError("chunk_rows and deletion_scan_every_nights must be ≥ 1, retries ≥ 0")
    own_state = state is None
    st = state if state is not None else RunState.for_city(city)
    try:
        _refuse_published(st, dept, run_id)
        failpoints.reached("extract:start")
        try:
            result = _extract_department(
                city,
                dept,
                run_id,
                st,
                full,
                chunk_rows,
                retries,
                backoff_s,
                deletion_scan_every_nights,
                fast_path,
                hash_check_every_nights,
            )
        except Exception as exc:  # unforeseen: this department is flagged, the city goes on
            log.exception("%s: extraction failed", dept.code)
            result = _unforeseen(city, dept, run_id, st, exc)
        _record(st, run_id, dept, result)
        failpoints.reached("extract:recorded")
        return result
    finally:
        if own_state:
            st.close()


def _unforeseen(
    city: CityConfig, dept: DepartmentConfig, run_id: str, state: RunState, exc: BaseException
) -> DepartmentExtract:
    """A department whose extraction raised something no handler foresaw: nothing of it is
    kept tonight, its ledger rows say why, and its watermarks stay."""
    shutil.rmtree(raw_dir(city.var_dir, run_id, dept.code), ignore_errors=True)
    state.discard_pending(run_id, dept.code)
    message = _failed_message(dept, None, exc)
    tables = []
    for t in dept.tables:
        committed = state.watermark(dept.code, t.name)
        value = committed[1] if committed else None
        mode: Mode = "incremental" if committed else "full"
        tables.append(
            TableExtract(
                t.name,
                mode,
                "failed",
                watermark_before=value,
                watermark_after=value,
                message=f"not extracted: {message}",
            )
        )
    return DepartmentExtract(dept.code, "failed", tables, message)


def _refuse_published(state: RunState, dept: DepartmentConfig, run_id: str) -> None:
    """Night ``run_id`` moved this department's watermarks when it published: reading it again
    would read only what changed since and replace the raw data the night was published from."""
    moved = sorted(t for t, run in state.committed_by(dept.code).items() if run == run_id)
    if moved:
        raise ValueError(
            f"{dept.code}: night {run_id} was published and moved the watermarks of "
            f"{', '.join(moved)}; extracting it again would read only the rows changed since and "
            f"replace the raw data it was published from. Fix: `govmdm extract --run-id {run_id}` "
            "replays the night from that raw data; to read the source again, extract a new night "
            "under a new run ID"
        )


def _deleted_keys(var_dir: Path, run_id: str, department: str, table: str) -> list[str] | None:
    """The row keys of a table in the last committed key set but gone from the key set run
    ``run_id`` proposed (a full snapshot or a key scan); None without a key set tonight, none
    before the table's first committed one."""
    new = pending_key_set_path(var_dir, run_id, department, table)
    if not new.is_file():
        return None
    old = key_set_path(var_dir, department, table)
    if not old.is_file():
        return []
    before = pq.read_table(old, columns=[ROW_KEY]).column(ROW_KEY)
    after = pq.read_table(new, columns=[ROW_KEY]).column(ROW_KEY)
    gone = pc.filter(before, pc.invert(pc.is_in(before, value_set=after)))
    return sorted(gone.to_pylist())


# --- one department ------------------------------------------------------------------------------


@dataclass
class _Plan:
    index: int
    table: TableConfig
    mode: Mode
    watermark: str | None  # committed value, for the ledger
    since: str | None  # the value to read from; None reads everything
    scan_keys: bool
    nights_since_scan: int
    check_hashes: bool = False  # compare every row's hash with the kept ones tonight
    nights_since_check: int = 0
    rebuild: str | None = None  # why the key set is rebuilt by a full read tonight
    published_keys: pa.Array | None = None  # what deletions are found against then


@dataclass(frozen=True)
class _Job:
    """One department's extraction tonight: what it reads, where it writes, in what chunks."""

    city: CityConfig
    dept: DepartmentConfig
    run_id: str
    state: RunState
    chunk_rows: int
    fast_path: bool  # PostgreSQL through COPY


class _Flagged(Exception):
    """The department is flagged tonight: nothing of it is kept, its ledger rows say why."""

    def __init__(
        self,
        status: Status,
        message: str,
        per_table: dict[str, list[str]] | None = None,
        attempts: int = 1,
    ) -> None:
        self.status, self.message = status, message
        self.per_table = per_table or {}  # table -> its own problem lines
        self.attempts = attempts
        super().__init__(message)


def _extract_department(
    city: CityConfig,
    dept: DepartmentConfig,
    run_id: str,
    state: RunState,
    full: bool,
    chunk_rows: int,
    retries: int,
    backoff_s: float,
    scan_every: int,
    fast_path: bool,
    hash_every: int = 7,
) -> DepartmentExtract:
    plans = [
        _plan(city, dept, state, i, t, full, scan_every, hash_every)
        for i, t in enumerate(dept.tables)
    ]
    job = _Job(city, dept, run_id, state, chunk_rows, fast_path)
    try:
        url, engine = _open_source(city, dept)
        try:
            tables, attempts = _read_with_retries(engine, url, job, plans, retries, backoff_s)
        finally:
            engine.dispose()
    except _Flagged as flag:
        return _flagged(job, plans, flag)
    for p, t in zip(plans, tables, strict=True):
        _guard_deletions(state, run_id, dept, p.table, t)
    for p, t in zip(plans, tables, strict=True):
        if t.watermark_after is not None:
            state.propose_watermark(
                run_id, dept.code, p.table.name, p.table.change_column, t.watermark_after
            )
    failpoints.reached("extract:proposed")
    return DepartmentExtract(dept.code, "ok", tables, None, attempts)


def _open_source(city: CityConfig, dept: DepartmentConfig) -> tuple[URL, sa.Engine]:
    """The department's connection URL (read-only) and an engine on it; flagged if neither the
    configuration nor the installed drivers can give one."""
    try:
        url = _read_only_url(resolve_connection(city, dept))
    except ConfigError as exc:
        raise _Flagged("failed", str(exc)) from exc
    try:
        return url, _engine(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise _Flagged("failed", _driver_message(dept, url, exc)) from exc


def _read_with_retries(
    engine: sa.Engine, url: URL, job: _Job, plans: list[_Plan], retries: int, backoff_s: float
) -> tuple[list[TableExtract], int]:
    """Every table read, and the attempts it took: a lost connection is retried ``retries``
    more times with exponential backoff, then flagged ``unreachable``; drift and a table that
    cannot be read are flagged at once."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return _extract_once(engine, job, plans), attempt
        except _ConnectionLost as exc:
            if attempt > retries:
                message = _unreachable_message(job.dept, url, attempt, exc)
                raise _Flagged("unreachable", message, attempts=attempt) from exc
            wait = backoff_s * 2 ** (attempt - 1)
            log.warning(
                "%s: attempt %d failed (%s); retrying in %.1f s",
                job.dept.code,
                attempt,
                redact_message(str(exc)),
                wait,
            )
            time.sleep(wait)
        except _Drift as exc:
            raise _Flagged("drift", str(exc), exc.problems, attempt) from exc
        except _TableFailed as exc:
            message = _failed_message(job.dept, exc.table, exc.cause)
            # no traceback: the driver's exception quotes the source value in clear
            log.error("%s", message)
            per_table = {exc.table: [message]} if exc.table else None
            raise _Flagged("failed", message, per_table, attempt) from exc


def _flagged(job: _Job, plans: list[_Plan], flag: _Flagged) -> DepartmentExtract:
    """A flagged department: nothing half-extracted is left behind, nothing it proposed stays,
    and every table's watermark stays where it was."""
    shutil.rmtree(raw_dir(job.city.var_dir, job.run_id, job.dept.code), ignore_errors=True)
    job.state.discard_pending(job.run_id, job.dept.code)
    tables = []
    for p in plans:
        own = flag.per_table.get(p.table.name)
        note = "\n".join(own) if own else f"not extracted: {flag.message.splitlines()[0]}"
        tables.append(
            TableExtract(
                p.table.name,
                p.mode,
                flag.status,
                watermark_before=p.watermark,
                watermark_after=p.watermark,
                message=note,
            )
        )
    return DepartmentExtract(job.dept.code, flag.status, tables, flag.message, flag.attempts)


def _guard_deletions(
    state: RunState, run_id: str, dept: DepartmentConfig, table: TableConfig, t: TableExtract
) -> None:
    """Mark a deletion above the table's limit (more than ``max_deleted_share`` of its keys and
    at least ``min_deleted_rows`` rows, or every key) ``held``: its department's delivery rule
    then holds the batch back, as a blocking rule does, until data engineering accepts it
    (``govmdm accept-deletions``); an accepted one is ``accepted`` and goes through."""
    gone, before = t.rows_deleted, t.keys_before
    if not gone or not before:
        return
    share = gone / before
    if gone < before and (share <= table.max_deleted_share or gone < table.min_deleted_rows):
        return
    what = (
        f"every one of its {before:,} rows is gone"
        if gone == before
        else f"{gone:,} of its {before:,} rows ({share:.1%}) are gone, above the limit of "
        f"{table.max_deleted_share:.0%} (config key max_deleted_share of {table.name!r})"
    )
    allowance = state.deletion_allowance(run_id, dept.code, table.name)
    limit = int(before * table.max_deleted_share)
    if allowance is not None and gone <= allowance[0] + limit:
        t.deletion_guard = "accepted"
        note = f"{what}; accepted by {allowance[1]} (govmdm accept-deletions), so they go through"
    else:
        t.deletion_guard = "held"
        note = (
            f"{what}. The department's batch is held back and the base libraries keep its rows "
            f"until this is explained. Fix: ask {dept.contact.name} <{dept.contact.email}> "
            f"whether the rows were really deleted; if they were, run `govmdm accept-deletions "
            f"-d {dept.code} --table {table.name} --reason <who confirmed it>` and the next "
            "night lets the deletion through; if not, have the rows restored"
        )
    t.message = f"{t.message}\n{note}" if t.message else note
    log.warning("%s: %s: %s", dept.code, table.name, note)


def _plan(
    city: CityConfig,
    dept: DepartmentConfig,
    state: RunState,
    index: int,
    table: TableConfig,
    full: bool,
    scan_every: int,
    hash_every: int = 7,
) -> _Plan:
    committed = state.watermark(dept.code, table.name)
    value = committed[1] if committed else None
    # A watermark kept for another change column says nothing about this one.
    incremental = not full and committed is not None and committed[0] == table.change_column
    keys = key_set_path(city.var_dir, dept.code, table.name)
    rebuild = None
    if committed is not None:  # a night was published: its key and seen sets must be there
        rebuild = _check_state_file(keys, "key set") or _check_state_file(
            seen_set_path(city.var_dir, dept.code, table.name), "seen set", optional=True
        )
    nights = _nights_since_scan(keys) if keys.is_file() else None
    scan = nights is None or nights + 1 >= scan_every
    if rebuild is not None:
        log.warning("%s: %s: %s", dept.code, table.name, rebuild)
        return _Plan(
            index,
            table,
            "full",
            value,
            None,
            scan_keys=False,
            nights_since_scan=0,
            rebuild=rebuild,
            published_keys=_published_keys(state, dept.code, table.name),
        )
    hashes = hash_set_path(city.var_dir, dept.code, table.name)
    if damaged := _check_state_file(hashes, "row hashes", optional=True):  # rebuilt below
        log.warning(
            "%s: %s: %s; the next row-hash check rebuilds them", dept.code, table.name, damaged
        )
    since_check = _nights_since_scan(hashes, "nights_since_check") if hashes.is_file() else None
    check = since_check is None or since_check + 1 >= hash_every
    return _Plan(
        index,
        table,
        "incremental" if incremental else "full",
        value,
        value if incremental else None,
        scan_keys=incremental and scan,
        nights_since_scan=0 if (not incremental or scan or nights is None) else nights + 1,
        check_hashes=incremental and check,
        nights_since_check=0 if (not incremental or check) else (since_check or 0) + 1,
    )


def _check_state_file(path: Path, what: str, *, optional: bool = False) -> str | None:
    """None if the state file reads whole; else why not (a damaged one is moved aside, named,
    so that tonight rebuilds it and nothing mistakes it for good state again)."""
    if not path.is_file():
        return None if optional else f"its {what} {path} is missing"
    try:
        pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
        os.replace(path, aside)
        return f"its {what} {path} is damaged ({type(exc).__name__}: {exc}); moved to {aside}"
    return None


def _published_keys(state: RunState, department: str, table: str) -> pa.Array:
    """The source keys of a table that the published golden tables hold (its crosswalk)."""
    x = crosswalk_table.c
    if not sa.inspect(state.engine).has_table(crosswalk_table.name):
        return pa.array([], pa.string())
    query = sa.select(x.source_key).where(x.department == department, x.source_table == table)
    with state.engine.connect() as conn:
        return pa.array([k for (k,) in conn.execute(query)], pa.string())


def _extract_once(engine: sa.Engine, job: _Job, plans: list[_Plan]) -> list[TableExtract]:
    """Every table of the department in one read-only transaction, then its schema snapshot."""
    try:
        conn = engine.connect()
    except sa.exc.DBAPIError as exc:
        raise _ConnectionLost(_first_line(exc)) from exc
    try:
        try:
            _begin_read_only(conn)
            live = _check_drift(conn, job.dept, plans, job.state)
            copy = job.fast_path and _is_psycopg(conn)
            out = []
            for p in plans:
                try:
                    source = _TableSource.on(
                        conn, copy, p.table, live[p.table.name], job.chunk_rows, job.city.timezone
                    )
                    out.append(_extract_table(source, job, p))
                except (_Drift, _ConnectionLost):
                    raise
                except Exception as exc:
                    if _connection_broken(conn, exc):
                        raise _ConnectionLost(_first_line(exc)) from exc
                    raise _TableFailed(p.table.name, exc) from exc
            conn.rollback()  # read-only: nothing to commit
        except (_Drift, _ConnectionLost, _TableFailed):
            raise
        except Exception as exc:  # the schema check itself, or the read-only transaction
            if _connection_broken(conn, exc):
                raise _ConnectionLost(_first_line(exc)) from exc
            raise _TableFailed(None, exc) from exc
    finally:
        _close_quietly(conn)
    for p in plans:
        job.state.save_schema_snapshot(
            job.run_id,
            job.dept.code,
            p.table.name,
            {c: live[p.table.name][c][1] for c in p.table.source_columns},
        )
    return out


def _close_quietly(conn: sa.Connection) -> None:
    """Close a source connection that may be dead: a server that terminated the backend makes
    the closing rollback raise, which must not replace the error that says why (and whether a
    retry can help)."""
    try:
        conn.close()
    except Exception as exc:
        log.warning("closing the source connection failed: %s", _first_line(exc))
        with contextlib.suppress(Exception):
            conn.invalidate()


def _begin_read_only(conn: sa.Connection) -> None:
    backend = conn.dialect.name
    if backend == "postgresql":
        # One snapshot for the schema check, the rows and the key scan.
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        # How COPY prints values; the SQLAlchemy path renders the same (see _text).
        conn.exec_driver_sql("SET LOCAL TimeZone = 'UTC'")
        conn.exec_driver_sql("SET LOCAL DateStyle = 'ISO'")
        conn.exec_driver_sql("SET LOCAL extra_float_digits = 1")
    elif backend in ("mysql", "mariadb"):
        conn.exec_driver_sql("START TRANSACTION READ ONLY, WITH CONSISTENT SNAPSHOT")
    elif backend == "sqlite":
        conn.exec_driver_sql("BEGIN")  # the file is opened read-only (mode=ro)
        # SQLite stores whatever bytes it is given: one value that is not UTF-8 must not stop
        # the table. It is read with U+FFFD in place of the bad bytes and standardization
        # rejects its row (`<column>:invalid_encoding`).
        raw = conn.connection.driver_connection
        if raw is not None:
            raw.text_factory = _lenient_text


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _valid_utf8(table: pa.Table) -> pa.Table:
    """``table`` with every value that is not UTF-8 decoded with U+FFFD for the bad bytes
    (COPY from a SQL_ASCII database hands such bytes through untouched)."""
    for i, name in enumerate(table.column_names):
        column = table.column(i)
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            raw = column.cast(pa.binary()).to_pylist()
            fixed = [None if v is None else v.decode("utf-8", "replace") for v in raw]
            table = table.set_column(i, name, pa.array(fixed, pa.string()))
    return table


# --- drift ---------------------------------------------------------------------------------------

_TYPE_CLASSES = (
    ("INTERVAL", "interval"),
    ("TIMESTAMPTZ", "timestamptz"),
    ("WITH TIME ZONE", "timestamptz"),
    ("TIMESTAMP", "timestamp"),
    ("DATETIME", "timestamp"),
    ("DATE", "date"),
    ("TIME", "time"),
    ("BOOL", "boolean"),
    ("INT", "integer"),
    ("CHAR", "string"),
    ("TEXT", "string"),
    ("CLOB", "string"),
    ("STRING", "string"),
    ("ENUM", "string"),
    ("NUMERIC", "decimal"),
    ("DECIMAL", "decimal"),
    ("MONEY", "decimal"),
    ("REAL", "float"),
    ("FLOA", "float"),
    ("DOUB", "float"),
    ("BLOB", "binary"),
    ("BINARY", "binary"),
    ("BYTEA", "binary"),
    ("JSON", "json"),
    ("UUID", "uuid"),
)


def type_class(type_text: str) -> str:
    """The class of a column type, as compared between runs: a longer VARCHAR is no drift,
    VARCHAR becoming INTEGER is.

    >>> type_class("VARCHAR(20)"), type_class("TIMESTAMP WITHOUT TIME ZONE"), type_class("BIGINT")
    ('string', 'timestamp', 'integer')
    """
    upper = type_text.upper()
    for needle, cls in _TYPE_CLASSES:
        if needle in upper:
            return cls
    return upper.split("(")[0].strip().lower() or "unknown"


def _type_text(type_: TypeEngine[Any], dialect: sa.Dialect) -> str:
    try:
        return str(type_.compile(dialect=dialect))
    except sa.exc.CompileError:  # a type the dialect cannot name (NullType)
        return type(type_).__name__.upper()


def _config_keys(table: TableConfig, index: int, column: str) -> str:
    keys = []
    if column in table.primary_key:
        keys.append(f"tables[{index}].primary_key")
    if column == table.change_column:
        keys.append(f"tables[{index}].change_column")
    if column in table.columns:
        keys.append(f"tables[{index}].columns.{column}")
    return " and ".join(keys)


def _check_drift(
    conn: sa.Connection, dept: DepartmentConfig, plans: list[_Plan], state: RunState
) -> dict[str, dict[str, tuple[TypeEngine[Any], str]]]:
    """Live column → (type, type text) per table; raises _Drift listing every problem."""
    inspector = sa.inspect(conn)
    where = dept.source_file or f"department {dept.code}"
    ask = f"ask {dept.contact.name} <{dept.contact.email}> ({dept.name})"
    problems: dict[str, list[str]] = {}
    live: dict[str, dict[str, tuple[TypeEngine[Any], str]]] = {}
    for p in plans:
        t, i = p.table, p.index
        found = problems.setdefault(t.name, [])
        if not inspector.has_table(t.name):
            found.append(
                f"{dept.code}: table {t.name!r} (config key tables[{i}].name in {where}) is not "
                f"in the source database. Fix: correct `tables[{i}].name`, or {ask} whether the "
                "table was renamed or moved"
            )
            continue
        cols = {
            c["name"]: (c["type"], _type_text(c["type"], conn.dialect))
            for c in inspector.get_columns(t.name)
        }
        live[t.name] = cols
        unknown = [c for c in cols if c not in t.source_columns]
        for column in t.source_columns:
            key = _config_keys(t, i, column)
            if column not in cols:
                guess = difflib.get_close_matches(column, unknown, n=1, cutoff=0.4)
                hint = f"was it renamed to {guess[0]!r}? " if guess else ""
                others = (
                    f" (columns the config does not know: {', '.join(unknown)})" if unknown else ""
                )
                found.append(
                    f"{dept.code}: table {t.name!r}: column {column!r} (config key {key} in "
                    f"{where}) is missing from the live table{others}. Fix: {hint}if the "
                    f"department renamed it, change {key} to the new name; otherwise {ask} to "
                    "restore it"
                )
        before = state.schema_snapshot(dept.code, t.name)
        for column in t.source_columns:
            if column not in cols or column not in before:
                continue
            old, new = before[column], cols[column][1]
            if type_class(old) != type_class(new):
                key = _config_keys(t, i, column)
                found.append(
                    f"{dept.code}: table {t.name!r}: column {column!r} (config key {key} in "
                    f"{where}) changed type from {old} ({type_class(old)}) at the last successful "
                    f"run to {new} ({type_class(new)}). Fix: {ask} whether the change is "
                    "intended; if so, check the column's mapping (format, codes) still fits and "
                    f"accept it with RunState.forget_schema_snapshot({dept.code!r}, {t.name!r})"
                )
        change = t.change_column
        if change in cols:
            cls = type_class(cols[change][1])
            if cls not in _CHANGE_CLASSES[t.change_kind]:
                found.append(
                    f"{dept.code}: table {t.name!r}: change column {change!r} is "
                    f"{cols[change][1]} ({cls}), which change_kind {t.change_kind!r} cannot "
                    f"compare (config key tables[{i}].change_kind in {where}). Fix: set "
                    f"`tables[{i}].change_kind` to match the column (timestamp, epoch_seconds or "
                    "string), or choose another change column"
                )
    problems = {name: lines for name, lines in problems.items() if lines}
    if problems:
        raise _Drift(problems)
    return live


# --- one table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TableSource:
    """One configured table on an open source connection, read in chunks of text."""

    conn: sa.Connection
    copy: bool  # PostgreSQL's COPY rather than SQLAlchemy
    table: TableConfig
    types: dict[str, TypeEngine[Any]]  # each source column's live type
    classes: dict[str, str]  # each source column's type class (see type_class)
    chunk_rows: int
    instant: Instant | None = None  # text stamps with UTC offsets

    @classmethod
    def on(
        cls,
        conn: sa.Connection,
        copy: bool,
        table: TableConfig,
        live: dict[str, tuple[TypeEngine[Any], str]],
        chunk_rows: int,
        tz: str = "Asia/Shanghai",
    ) -> _TableSource:
        """``table`` as the live schema (column → type, type text) describes it; ``tz``: the
        city's time zone, which text stamps with an offset are compared in."""
        columns = table.source_columns
        types = {c: live[c][0] for c in columns}
        classes = {c: type_class(live[c][1]) for c in columns}
        instant = _instant_reader(table, classes[table.change_column], tz)
        return cls(conn, copy, table, types, classes, chunk_rows, instant)

    @property
    def columns(self) -> list[str]:
        """The columns read: every source column of the configured table."""
        return list(self.table.source_columns)

    def chunks(self, since: tuple[str, Any] | None = None) -> Iterator[_Chunk]:
        """Every row (or those changed ``since``), as chunks decoded on the writer thread."""
        booleans = {c for c in self.columns if self.classes[c] == "boolean"}
        return _read(
            self.conn,
            self.copy,
            self.table.name,
            self.columns,
            self.types,
            booleans,
            since,
            self.chunk_rows,
        )

    def rows(self) -> Iterator[pa.Table]:
        """Every row with its ``_row_key``, chunk by chunk."""
        for chunk in self.chunks():
            yield _with_row_key(chunk(), self.table.primary_key)

    def keys(self) -> Iterator[pa.Array]:
        """Every row key, read from the primary key columns only: from SQLite, joined in the
        source into one text (:func:`_sqlite_keys`) where its keys allow, else row by row."""
        pk = self.table.primary_key
        types = {c: self.types[c] for c in pk}
        if not self.copy and self.conn.dialect.name == "sqlite":
            joined = _sqlite_keys(self.conn, self.table.name, pk, list(types.values()))
            if joined is not None:
                for start in range(0, len(joined), _KEY_ROWS):
                    yield joined.slice(start, _KEY_ROWS)
                return
        chunks = _read(
            self.conn, self.copy, self.table.name, pk, types, set(), None, self.chunk_rows
        )
        for chunk in chunks:
            yield _with_row_key(chunk(), pk)[ROW_KEY]

    def since(self, watermark: str | None) -> tuple[str, Any] | None:
        """``(change column, watermark in the column's own type)`` to read from, or None."""
        if watermark is None:
            return None
        change = self.table.change_column
        at = self.instant(watermark) if self.instant and _OFFSET.search(watermark) else None
        if at is not None:
            return change, _text_floor(at, self.table)
        return change, _watermark_value(watermark, self.table, self.classes[change])


def _extract_table(source: _TableSource, job: _Job, plan: _Plan) -> TableExtract:
    """Read one table into its raw Parquet, set the rows of duplicated keys apart, and propose
    its key set, seen set and row hashes."""
    t = plan.table
    result = TableExtract(t.name, plan.mode, watermark_before=plan.watermark)
    start = time.perf_counter()
    var, run_id, code = job.city.var_dir, job.run_id, job.dept.code
    path = raw_path(var, run_id, code, t.name)
    meta = {
        "department": code,
        "table": t.name,
        "run_id": run_id,
        "mode": plan.mode,
        "watermark_before": plan.watermark,
        "change_column": t.change_column,
    }
    committed_seen = seen_set_path(var, code, t.name) if plan.since is not None else None
    seen = _SeenVersions(t.change_column, t.change_kind, plan.since, committed_seen, source.instant)
    result.rows_late, result.rows_backdated = _write_raw(source, job, plan, path, meta, seen)
    failpoints.reached("extract:table-written")
    seen.write(pending_seen_set_path(var, run_id, code, t.name), meta)
    dups = _duplicate_keys(source)
    apart = duplicates_path(var, run_id, code, t.name)
    result.rows_duplicate = _set_duplicates_apart(source, dups, path, apart, meta)
    result.rows_read = pq.ParquetFile(path).metadata.num_rows + result.rows_duplicate
    result.rows_unchanged = seen.unchanged
    result.parquet_path = path
    result.watermark_after = _watermark_text(seen.top) if seen.top is not None else plan.watermark
    result.message = _table_notes(job.dept, t, result, dups)
    keys_out = pending_key_set_path(var, run_id, code, t.name)
    if plan.mode == "incremental" and not plan.scan_keys:  # carry the key set forward
        committed = key_set_path(var, code, t.name)
        _carry_key_set(committed, path, keys_out, job.chunk_rows, plan.nights_since_scan)
    if plan.mode == "full" or plan.scan_keys:
        _write_deletions(job, plan, keys_out, meta, result)
    failpoints.reached("extract:keys-written")
    result.duration_s = time.perf_counter() - start
    return result


def _write_raw(
    source: _TableSource,
    job: _Job,
    plan: _Plan,
    path: Path,
    meta: dict[str, Any],
    seen: _SeenVersions,
) -> tuple[int, int]:
    """Write tonight's rows of a table to ``path`` (and, read in full, its key set), scan its
    keys and check its row hashes when the plan says so; how many rows each of those found
    (late, back-dated) and added."""
    t = plan.table
    var, run_id, code = job.city.var_dir, job.run_id, job.dept.code
    keys_out = pending_key_set_path(var, run_id, code, t.name)
    read_keys: list[pa.Array] = []  # incremental nights: every key read, kept or not
    read_versions: list[pa.Array] = []  # every row read tonight: key and content hash
    late = 0
    with contextlib.ExitStack() as stack:
        schema = _schema([ROW_KEY, *source.columns])
        sink = stack.enter_context(ParquetSink(path, schema, job.chunk_rows, meta))
        keys = None
        if plan.mode == "full":  # a full snapshot is also tonight's key set
            keys = stack.enter_context(
                ParquetSink(keys_out, _schema([ROW_KEY]), _KEY_ROWS, {"nights_since_scan": 0})
            )

        def write(chunk: _Chunk) -> None:
            rows = _with_row_key(chunk(), t.primary_key)
            if plan.mode == "incremental":
                read_keys.append(rows[ROW_KEY].combine_chunks())
            read_versions.append(_versions(rows))
            rows = seen.keep_changed(rows)
            sink.write(rows)
            if keys is not None:
                keys.write(rows.select([ROW_KEY]))

        with _in_background(write) as put:
            for chunk in source.chunks(source.since(plan.since)):
                put(chunk)
        if plan.scan_keys:
            _write_key_set(keys_out, source.keys(), 0)
            # Keys the source has that no night has read: rows inserted with a change stamp
            # already below the watermark (back-dated, or a clock behind ours). Read them now.
            late_keys = _late_keys(keys_out, key_set_path(var, code, t.name), read_keys)
            if len(late_keys):
                late = _read_late_rows(source, late_keys, sink.write)
        backdated = _keep_row_hashes(source, job, plan, read_keys, read_versions, sink.write)
    return late, backdated


def _keep_row_hashes(
    source: _TableSource,
    job: _Job,
    plan: _Plan,
    read_keys: list[pa.Array],
    read_versions: list[pa.Array],
    write: Callable[[pa.Table], None],
) -> int:
    """Propose the table's row hashes: tonight's (read in full), a fresh check of every row
    (writing the back-dated changes it finds; how many), or the committed ones carried
    forward with tonight's rows."""
    t = plan.table
    out = pending_hash_set_path(job.city.var_dir, job.run_id, job.dept.code, t.name)
    committed = hash_set_path(job.city.var_dir, job.dept.code, t.name)
    if plan.mode == "full":
        _write_versions(out, read_versions, 0)
    elif plan.check_hashes:
        return _check_hashes(source, committed, read_keys, out, write)
    else:
        _carry_versions(committed, read_versions, out, plan.nights_since_check)
    return 0


def _table_notes(
    dept: DepartmentConfig, t: TableConfig, result: TableExtract, dups: set[str]
) -> str | None:
    """What the ledger says about a table read well: late and back-dated rows, duplicate keys."""
    message = None
    if result.rows_backdated:
        message = (
            f"{result.rows_backdated} row(s) changed at the source without their change column "
            f"({t.change_column}) moving past the watermark; the row-hash check found them and "
            f"they were read tonight. Ask {dept.name} why rows are changed with old change stamps"
        )
    if result.rows_late:
        message = (
            f"{result.rows_late} row(s) were found by the key scan with a change stamp below the "
            f"watermark ({t.change_column}); they were read tonight. Ask {dept.name} why rows "
            "are written with old change stamps"
        )
    if result.rows_duplicate:
        shown = ", ".join(sorted(dups)[:5])
        note = (
            f"{len(dups)} key(s) of {t.name!r} appear more than once in the source table "
            f"(e.g. {shown}): all {result.rows_duplicate} row(s) with them were rejected "
            f"(duplicate_key), and their records leave the base libraries until fixed. Ask "
            f"{dept.name} to remove the duplicates and add a primary key constraint on "
            f"{', '.join(t.primary_key)}"
        )
        log.warning("%s: %s", dept.code, note)
        message = f"{message}\n{note}" if message else note
    return message


def _carry_key_set(
    committed: Path, path: Path, keys_out: Path, chunk_rows: int, nights_since_scan: int
) -> None:
    """Propose the committed key set plus the keys read tonight (no key scan tonight)."""
    union = pa.concat_arrays(
        [
            pq.read_table(committed, columns=[ROW_KEY]).column(ROW_KEY).combine_chunks(),
            *_parquet_keys(path, chunk_rows),
        ]
    )
    _write_key_set(keys_out, [pc.unique(union)], nights_since_scan)


def _write_deletions(
    job: _Job, plan: _Plan, keys_out: Path, meta: dict[str, Any], result: TableExtract
) -> None:
    """Write the keys gone from the source since the committed key set (or, the key set being
    rebuilt, since what the published golden tables hold) and count them."""
    t = plan.table
    var, run_id, code = job.city.var_dir, job.run_id, job.dept.code
    committed = key_set_path(var, code, t.name)
    if plan.published_keys is not None:  # rebuilt: deletions are what the master still has
        after = pq.read_table(keys_out, columns=[ROW_KEY]).column(ROW_KEY)
        before = plan.published_keys
        lost = pc.filter(before, pc.invert(pc.is_in(before, value_set=after)))
        gone = sorted(lost.to_pylist())
        result.keys_before = len(before)
        note = (
            f"{plan.rebuild}. The table was read in full to rebuild it, and {len(gone):,} "
            "row(s) the base libraries still held were found deleted at the source"
        )
        result.message = f"{result.message}\n{note}" if result.message else note
    else:
        gone = _deleted_keys(var, run_id, code, t.name) or []
        result.keys_before = (
            pq.ParquetFile(committed).metadata.num_rows if committed.is_file() else 0
        )
    target = deleted_path(var, run_id, code, t.name)
    with ParquetSink(target, _schema([ROW_KEY]), job.chunk_rows, meta) as sink:
        sink.write(pa.table([pa.array(gone, pa.string())], schema=_schema([ROW_KEY])))
    result.rows_deleted, result.deleted_path = len(gone), target


_VERSION = "_row_version"


class _SeenVersions:
    """Row versions at the edges of what the watermark can tell apart.

    The change column cannot separate two writes in the same tick, and says nothing about a row
    whose stamp is NULL. So an incremental night reads ``change >= watermark OR change IS NULL``
    and drops the rows whose version (key and a hash of every column's text) an earlier night
    already read; a row written in the watermark's own second after last night's read, or a
    NULL-stamped row that changed, has a new version and is kept. Tonight's seen set is built from
    every row read (kept or not): the rows at the highest stamp, and every NULL-stamped row.
    """

    def __init__(
        self,
        change_column: str,
        change_kind: str,
        since: str | None,
        committed: Path | None,
        instant: Instant | None = None,
    ) -> None:
        self.change_column, self.change_kind = change_column, change_kind
        self.since = since
        # text stamps with UTC offsets are compared as instants: '2026-07-01 01:00:00+00:00'
        # is after '2026-07-01 08:00:00+08:00', though it sorts before it as text
        self.instant = instant
        self.since_at = instant(since) if instant is not None and since is not None else None
        self.top_at: dt.datetime | None = None
        self.previous: pa.Array | None = None
        if committed is not None and committed.is_file():
            self.previous = pq.read_table(committed).column(_VERSION).combine_chunks()
        self.top: Any = None
        self.at_top: list[pa.Array] = []
        self.nulls: list[pa.Array] = []
        self.unchanged = 0

    def keep_changed(self, rows: pa.Table) -> pa.Table:
        """``rows`` without the versions an earlier night read; remembers the edge versions."""
        stamp = rows[self.change_column].combine_chunks()
        if self.instant is not None:
            return self._keep_changed_instants(rows, stamp)
        top = _batch_max(stamp, self.change_kind)
        null = pc.is_null(stamp)
        edge = null
        if self.since is not None:
            edge = pc.or_(edge, _text_equal(stamp, self.since))
        at_top = _text_equal(stamp, _watermark_text(top)) if top is not None else None
        if at_top is not None:
            edge = pc.or_(edge, at_top)
        return self._drop_read(rows, edge, null, at_top, top, top)

    def _keep_changed_instants(self, rows: pa.Table, stamp: pa.Array) -> pa.Table:
        """:meth:`keep_changed` for text stamps with UTC offsets: the read began a day before
        the watermark's instant (as text cannot say where it is), so the rows whose instant is
        before it, read on an earlier night, are dropped here."""
        texts = stamp.to_pylist()
        read = self.instant
        assert read is not None
        at = [None if t is None else read(t) for t in texts]
        null = pc.is_null(stamp)
        known = [a for a in at if a is not None]
        top_at = max(known) if known else None
        before = np.array([a is not None and self.since_at is not None and a < self.since_at
                           for a in at], dtype=bool)  # fmt: skip
        edge = np.array([a is not None and a in (self.since_at, top_at) for a in at], dtype=bool)
        on_top = np.array([a is not None and a == top_at for a in at], dtype=bool)
        top = max(t for t, a in zip(texts, at, strict=True) if a == top_at) if known else None
        self.unchanged += int(before.sum())
        kept = rows.filter(pa.array(~before))
        keep = ~before
        return self._drop_read(
            kept,
            pa.array(edge[keep]) if known else pc.fill_null(null.filter(pa.array(keep)), False),
            null.filter(pa.array(keep)),
            pa.array(on_top[keep]) if known else None,
            top,
            top_at,
        )

    def _drop_read(
        self,
        rows: pa.Table,
        edge: Any,
        null: Any,
        at_top: Any,
        top: Any,
        top_key: Any,
    ) -> pa.Table:
        """``rows`` without the ``edge`` rows whose version an earlier night read; remembers
        the NULL-stamped versions and those at the batch's ``top`` (compared by ``top_key``)."""
        if self.instant is not None:
            edge = pc.or_(edge, null)
        where = pc.indices_nonzero(edge)
        if not len(where):
            return rows
        versions = _versions(rows.take(where))
        self.nulls.append(pc.filter(versions, null.take(where)))
        if at_top is not None:
            mine = pc.filter(versions, at_top.take(where))
            best = self.top_at if self.instant is not None else self.top
            if best is None or top_key > best:
                self.top, self.top_at, self.at_top = top, top_key, [mine]
            elif top_key == best:
                self.at_top.append(mine)
                if self.instant is not None and top > self.top:
                    self.top = top  # one text of the instant, the same whatever the chunking
        if self.previous is None:
            return rows
        old = pc.is_in(versions, value_set=self.previous)
        dropped = pc.sum(old).as_py() or 0
        if not dropped:
            return rows
        self.unchanged += dropped
        keep = np.ones(rows.num_rows, dtype=bool)
        keep[pc.filter(where, old).to_numpy()] = False
        return rows.filter(pa.array(keep))

    def write(self, path: Path, meta: dict[str, Any]) -> None:
        parts = [*self.nulls, *self.at_top]
        versions = pc.unique(pa.concat_arrays(parts)) if parts else pa.array([], pa.string())
        schema = _schema([_VERSION])
        with ParquetSink(path, schema, _KEY_ROWS, meta) as sink:
            sink.write(pa.table([versions], schema=schema))


def _text_equal(column: pa.Array | pa.ChunkedArray, text: str) -> pa.Array:
    """``column == text`` with NULL as false."""
    return pc.fill_null(pc.equal(column, pa.scalar(text, pa.string())), False)


def _versions(rows: pa.Table) -> pa.Array:
    """Each row's version: its key and a hash of every column's text (NULL told from empty)."""
    joined = pc.binary_join_element_wise(
        *[rows[c] for c in rows.column_names],
        "\x1f",
        null_handling="replace",
        null_replacement="\x00",
    )
    keys = rows[ROW_KEY].to_pylist()
    return pa.array(
        [
            f"{k}\x1f{hashlib.blake2b(v.encode(), digest_size=16).hexdigest()}"
            for k, v in zip(keys, joined.to_pylist(), strict=True)
        ],
        pa.string(),
    )


def _duplicate_keys(source: _TableSource) -> set[str]:
    """The keys (as row-key text) that more than one source row holds: a table without a
    primary key constraint can have them, and one would re-point a key to another person."""
    pk = source.table.primary_key
    t = sa.table(source.table.name, *[sa.column(c, source.types[c]) for c in pk])
    cols = [t.c[c] for c in pk]
    query = sa.select(*cols).group_by(*cols).having(sa.func.count() > 1)
    rows = source.conn.execute(query).all()
    return {KEY_SEPARATOR.join(_text(v) or "" for v in row).replace(NUL, KEY_NUL) for row in rows}


def _set_duplicates_apart(
    source: _TableSource, dups: set[str], path: Path, target: Path, meta: dict[str, Any]
) -> int:
    """Move every row of a duplicated key out of ``path`` into ``target`` (all its copies,
    read again from the source); how many rows ``target`` holds."""
    target.unlink(missing_ok=True)
    if not dups:
        return 0
    keys = pa.array(sorted(dups), pa.string())
    kept = pq.read_table(path)
    kept = kept.filter(pc.invert(pc.is_in(kept[ROW_KEY], value_set=keys)))
    schema = _schema([ROW_KEY, *source.columns])
    with ParquetSink(path, schema, source.chunk_rows, meta) as sink:
        sink.write(kept.select(schema.names).cast(schema))
    found = 0
    with ParquetSink(target, schema, source.chunk_rows, meta) as sink:
        for rows in source.rows():
            rows = rows.filter(pc.is_in(rows[ROW_KEY], value_set=keys))
            sink.write(rows)
            found += rows.num_rows
    return found


def _write_versions(
    path: Path, parts: Sequence[pa.Array], nights_since_check: int, kept: pa.Array | None = None
) -> None:
    """Write the distinct versions of ``parts``, after ``kept`` ones (distinct already, and
    none of them among ``parts``: only ``parts`` need making distinct)."""
    versions = pc.unique(pa.concat_arrays(list(parts))) if parts else pa.array([], pa.string())
    if kept is not None:
        versions = pa.concat_arrays([kept, versions])
    schema = _schema([_VERSION])
    with ParquetSink(path, schema, _KEY_ROWS, {"nights_since_check": nights_since_check}) as sink:
        sink.write(pa.table([versions], schema=schema))


_HASH_CHARS = 33
"""The end of a version (:func:`_versions`) after its key: the separator and 32 hex digits."""


def _version_keys(versions: pa.Array) -> pa.Array:
    return pc.utf8_slice_codeunits(versions, 0, -_HASH_CHARS)


def _carry_versions(
    committed: Path, tonight: Sequence[pa.Array], out: Path, nights_since_check: int
) -> None:
    """The committed row hashes with tonight's rows' replacing their keys' old ones."""
    if not committed.is_file():
        return  # the next row-hash check builds them
    before = pq.read_table(committed).column(_VERSION).combine_chunks()
    if tonight:
        now = pa.concat_arrays(list(tonight))
        before = pc.filter(before, pc.invert(pc.is_in(_version_keys(before), _version_keys(now))))
    # the committed versions were written distinct, and none of them has a key read tonight
    _write_versions(out, list(tonight), nights_since_check, kept=before)


def _check_hashes(
    source: _TableSource,
    committed: Path,
    read_keys: list[pa.Array],
    out: Path,
    write: Callable[[pa.Table], None],
) -> int:
    """Read the whole table, keep every row's hash (``out``) and write the rows whose hash
    changed although tonight's read by change column did not see them: changes written with
    a back-dated stamp. How many. Without kept hashes (first check), only keeps them."""
    before = (
        pq.read_table(committed).column(_VERSION).combine_chunks() if committed.is_file() else None
    )
    known = _version_keys(before) if before is not None else None
    read = pa.concat_arrays(read_keys) if read_keys else pa.array([], pa.string())
    found, versions = 0, []
    for rows in source.rows():
        mine = _versions(rows)
        versions.append(mine)
        if before is None or known is None:
            continue
        changed = pc.and_(
            pc.and_(
                pc.invert(pc.is_in(mine, value_set=before)),
                pc.is_in(rows[ROW_KEY], value_set=known),
            ),
            pc.invert(pc.is_in(rows[ROW_KEY], value_set=read)),
        )
        hits = rows.filter(changed)
        if hits.num_rows:
            write(hits)
            found += hits.num_rows
    _write_versions(out, versions, 0)
    return found


def _late_keys(scanned: Path, committed: Path, read: list[pa.Array]) -> pa.Array:
    """Keys in tonight's scan that neither the committed key set nor tonight's read has."""
    if not committed.is_file():  # the first scan: every key is new, and was read in full
        return pa.array([], pa.string())
    now = pq.read_table(scanned, columns=[ROW_KEY]).column(ROW_KEY).combine_chunks()
    before = pq.read_table(committed, columns=[ROW_KEY]).column(ROW_KEY).combine_chunks()
    known = pa.concat_arrays([before, *read])
    return pc.filter(now, pc.invert(pc.is_in(now, value_set=known)))


def _read_late_rows(source: _TableSource, late: pa.Array, write: Callable[[pa.Table], None]) -> int:
    """Read the whole table again and write the rows whose key is in ``late``; how many.

    Rare by nature (a source writing old stamps), so one more pass beats building a key list
    into SQL for every key type."""
    found = 0
    for rows in source.rows():
        rows = rows.filter(pc.is_in(rows[ROW_KEY], value_set=late))
        if rows.num_rows:
            write(rows)
            found += rows.num_rows
    return found


_OFFSET = re.compile(r"(?:[+-]\d{2}:?\d{2}|Z)$")
"""A text change stamp that ends in a UTC offset."""
_OFFSET_SLACK = dt.timedelta(hours=28)
"""How far a stamp's wall-clock text can trail its instant in the city's time: offsets run from
UTC−12 to UTC+14, the city's own among them."""


def _instant_reader(table: TableConfig, live_class: str, tz: str) -> Instant | None:
    """For a text change column whose stamps carry a UTC offset (``change_format`` with ``%z``,
    or ISO 8601 text in a ``timestamp`` column), the stamp as the city's wall time; None for
    every other column, compared as before (text that sorts, numbers, database timestamps)."""
    if live_class != "string":
        return None
    if table.change_kind == "string" and table.change_format and "%z" in table.change_format:
        return functools.partial(_format_instant, fmt=table.change_format, tz=tz)
    if table.change_kind == "timestamp":
        return functools.partial(_iso_instant, tz=zoneinfo.ZoneInfo(tz))
    return None


def _format_instant(text: str, fmt: str, tz: str) -> dt.datetime | None:
    try:
        return parse_stamp(text.strip(), fmt, tz)
    except ValueError:  # the standardizer names the row's unreadable stamp
        return None


def _iso_instant(text: str, tz: dt.tzinfo) -> dt.datetime | None:
    """An ISO 8601 stamp as the city's wall time (naive); one without an offset as it is."""
    try:
        stamp = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return stamp.astimezone(tz).replace(tzinfo=None) if stamp.tzinfo is not None else stamp


def _text_floor(at: dt.datetime, table: TableConfig) -> str:
    """Text below every stamp written at or after ``at`` (city wall time), whatever its offset:
    ``column >= floor`` reads them all, and a day more, which the instants then drop."""
    floor = at - _OFFSET_SLACK
    if table.change_kind == "string" and table.change_format:
        return floor.strftime(table.change_format.replace("%z", ""))
    return floor.strftime("%Y-%m-%d")


def _watermark_value(text: str, table: TableConfig, live_class: str) -> Any:
    """The committed watermark in the change column's own type, for ``column >= :watermark``."""
    if live_class == "string":
        return text
    if table.change_kind == "timestamp":
        return dt.datetime.fromisoformat(text)
    if table.change_kind == "epoch_seconds":
        return Decimal(text) if live_class == "decimal" else int(text)
    return text


def _batch_max(column: pa.Array | pa.ChunkedArray, kind: str) -> Any:
    if kind == "epoch_seconds":
        try:
            value = pc.max(pc.cast(column, pa.int64())).as_py()
        except pa.ArrowInvalid:  # decimal text such as 1782878400.0000
            values = [Decimal(v) for v in column.to_pylist() if v is not None]
            value = max(values) if values else None
        return value
    # ISO timestamps and the string kinds' formats sort as text; nulls are skipped.
    return pc.max(column).as_py()


def _watermark_text(value: Any) -> str:
    return format(value, "f") if isinstance(value, Decimal) else str(value)


# --- reading -------------------------------------------------------------------------------------


def _schema(columns: Sequence[str]) -> pa.Schema:
    return pa.schema([pa.field(c, pa.string()) for c in columns])


_Chunk = Callable[[], pa.Table]  # decoded on the writer thread


def _read(
    conn: sa.Connection,
    copy: bool,
    table: str,
    columns: list[str],
    types: dict[str, TypeEngine[Any]],
    booleans: set[str],
    since: tuple[str, Any] | None,
    chunk_rows: int,
) -> Iterator[_Chunk]:
    """The table's ``columns`` as chunks of at most ``chunk_rows`` rows, each decoding to a
    table of strings; only rows with change column >= value, or NULL, if ``since`` is given
    (:class:`_SeenVersions` drops the versions read before)."""
    if copy:
        yield from _read_copy(conn, table, columns, booleans, since, chunk_rows)
        return
    t = sa.table(table, *[sa.column(c, types[c]) for c in columns])
    query = sa.select(*[t.c[c] for c in columns])
    schema = _schema(columns)
    if since is None and conn.dialect.name == "sqlite":
        yield from _read_sqlite(conn, query, [types[c] for c in columns], schema, chunk_rows)
        return
    if since is not None:
        column = t.c[since[0]]
        query = query.where(sa.or_(column >= since[1], column.is_(None)))
    query = query.execution_options(stream_results=True, yield_per=chunk_rows)
    result = conn.execute(query)
    for part in result.partitions():
        arrays = [_texts(col) for col in zip(*part, strict=True)]
        yield functools.partial(pa.Table.from_arrays, arrays, schema=schema)


def _read_sqlite(
    conn: sa.Connection,
    query: sa.Select[Any],
    types: list[TypeEngine[Any]],
    schema: pa.Schema,
    chunk_rows: int,
) -> Iterator[_Chunk]:
    """Every row of ``query`` (no parameters) from a SQLite source, read through the sqlite3
    cursor of the read's own transaction: SQLAlchemy's row objects cost more than SQLite's
    scan of a whole table (the nightly key scan reads every key), and each column's values
    still go through their type's result processor, as SQLAlchemy would pass them."""
    dialect = conn.dialect
    processors = [t.dialect_impl(dialect).result_processor(dialect, None) for t in types]
    raw = conn.connection.driver_connection
    assert raw is not None
    cursor = raw.cursor()
    try:
        cursor.execute(str(query.compile(dialect=dialect)))
        while rows := cursor.fetchmany(chunk_rows):
            arrays = [
                _texts(col if process is None else [process(v) for v in col])
                for col, process in zip(zip(*rows, strict=True), processors, strict=True)
            ]
            yield functools.partial(pa.Table.from_arrays, arrays, schema=schema)
    finally:
        cursor.close()


_KEY_LINE = "\n"  # what _sqlite_keys puts between two keys


def _sqlite_keys(
    conn: sa.Connection, table: str, primary_key: list[str], types: list[TypeEngine[Any]]
) -> pa.Array | None:
    """Every row key of a SQLite table as one query returns them: joined in SQLite
    (``group_concat``, a line per key, the columns of a composite key joined with ``|``) into a
    single text that Arrow splits, so that no key becomes a Python object (the nightly key scan
    reads every key of every table). The key set is held whole afterwards anyway.

    Only where that text is exactly what :meth:`_TableSource.rows` gives (else None, and the
    keys are read row by row): key columns without a result processor, every key value text or
    an integer (SQLite and :func:`_text` write both alike; a NULL, real or blob is left to the
    row path) and no key holding a line break (more lines than rows)."""
    dialect = conn.dialect
    if any(t.dialect_impl(dialect).result_processor(dialect, None) for t in types):
        return None
    quote = dialect.identifier_preparer.quote
    columns = [quote(c) for c in primary_key]
    key = f" || '{KEY_SEPARATOR}' || ".join(columns)
    plain = " AND ".join(f"typeof({c}) IN ('text', 'integer')" for c in columns)
    rows, plain_rows, text = conn.exec_driver_sql(
        f"SELECT count(*), coalesce(sum({plain}), 0), "
        f"group_concat({key}, char({ord(_KEY_LINE)})) FROM {quote(table)}"
    ).one()
    if plain_rows != rows:
        return None
    if not rows:
        return pa.array([], pa.string())
    keys = pc.split_pattern(pa.array([text], pa.large_string()), _KEY_LINE).flatten()
    if len(keys) != rows:  # a key holds a line break
        return None
    return keys.cast(pa.string())


def _texts(values: Sequence[Any]) -> pa.Array:
    """A column of source values as text, each as :func:`_text` renders it: text and whole
    numbers (most columns, every key) converted by Arrow at once, anything else one by one."""
    try:
        array = pa.array(values)
    except (pa.ArrowException, OverflowError, ValueError, TypeError):
        array = None  # mixed or unusual values: each rendered on its own
    if array is not None and (
        pa.types.is_string(array.type)
        or pa.types.is_integer(array.type)
        or pa.types.is_null(array.type)
    ):
        return array.cast(pa.string())
    return pa.array([_text(v) for v in values], pa.string())


def _read_copy(
    conn: sa.Connection,
    table: str,
    columns: list[str],
    booleans: set[str],
    since: tuple[str, Any] | None,
    chunk_rows: int,
) -> Iterator[_Chunk]:
    from psycopg import sql

    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(table)
    )
    if since is not None:
        query = sql.SQL("{} WHERE {} >= {} OR {} IS NULL").format(
            query, sql.Identifier(since[0]), sql.Literal(since[1]), sql.Identifier(since[0])
        )
    # CSV quotes an empty string ("") and leaves NULL unquoted and empty: they stay apart.
    statement = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)
    raw = conn.connection.driver_connection
    assert raw is not None
    encoding = raw.info.encoding
    decode = functools.partial(
        _parse_csv,
        columns=columns,
        booleans=booleans,
        encoding="utf8" if encoding in ("utf-8", "utf8", "ascii", "sql_ascii") else encoding,
    )
    # A SQL_ASCII database holds any bytes, and the server refuses to send the ones that are
    # not UTF-8 as UTF-8: during the COPY take them as they are (_parse_csv marks the bad ones).
    as_is = raw.info.parameter_status("server_encoding") == "SQL_ASCII"
    if as_is:
        conn.exec_driver_sql("SET LOCAL client_encoding = 'SQL_ASCII'")
    try:
        # COPY sends one message per row, so a block of whole messages is a block of whole
        # rows: each block is parsed on its own, off this thread, while the next one is read.
        block, rows = bytearray(), 0
        for row in _copy_rows(raw, statement.as_bytes(raw)):
            block += row
            rows += 1
            if rows >= chunk_rows or len(block) >= _COPY_BLOCK_BYTES:
                yield functools.partial(decode, block, rows)
                block, rows = bytearray(), 0
        if rows:
            yield functools.partial(decode, block, rows)
    finally:
        if as_is and not raw.broken:
            conn.exec_driver_sql("SET LOCAL client_encoding = 'UTF8'")


def _copy_rows(raw: Any, statement: bytes) -> Iterator[memoryview]:
    """The rows of ``COPY ... TO STDOUT`` as libpq hands them over.

    psycopg's ``Copy`` runs a generator and a wait loop for every row, which costs more CPU than
    the server spends producing the row; on two cores that starved the Parquet writer. Calling
    libpq's ``PQgetCopyData`` (psycopg's documented ``pq`` layer) in a tight loop and waiting on
    the socket only when no whole row is buffered reads the same rows at about 60% of the CPU.
    On any failure the query is cancelled and the error raised as psycopg would raise it."""
    from psycopg import OperationalError, errors, pq

    pgconn = raw.pgconn
    encoding = raw.info.encoding

    def wait() -> None:
        select.select([pgconn.socket], [], [])
        pgconn.consume_input()

    def result() -> Any:
        while pgconn.is_busy():
            wait()
        return pgconn.get_result()

    if not pgconn.send_query(statement) and pgconn.status == pq.ConnStatus.BAD:
        raise OperationalError(pgconn.get_error_message(encoding))
    done = False
    try:
        start = result()
        if start is None or start.status != pq.ExecStatus.COPY_OUT:
            error = errors.error_from_result(start, encoding=encoding) if start else None
            while result() is not None:  # drain, so the connection is usable for the rollback
                pass
            done = True
            raise error or OperationalError("COPY did not start")
        get = pgconn.get_copy_data
        while True:
            nbytes, data = get(1)  # non-blocking: 0 means no whole row buffered yet
            if nbytes > 0:
                yield data
            elif nbytes == 0:
                wait()
            elif nbytes == -1:  # the copy is over: its final result tells how it ended
                end = result()
                while result() is not None:
                    pass
                done = True
                if end is not None and end.status != pq.ExecStatus.COMMAND_OK:
                    raise errors.error_from_result(end, encoding=encoding)
                return
            else:
                raise OperationalError(pgconn.get_error_message(encoding))
    finally:
        if not done and pgconn.status == pq.ConnStatus.OK:
            # Stopped early (an error downstream, an interrupt): cancel the query and drain what
            # is left, so that the connection can still roll back and go back to its pool.
            with contextlib.suppress(Exception):
                raw.cancel_safe()
                while pgconn.get_copy_data(0)[0] >= 0:
                    pass
                while result() is not None:
                    pass


_CSV_ONE_LINE_ROWS = pacsv.ParseOptions(newlines_in_values=False)
_CSV_MULTILINE_ROWS = pacsv.ParseOptions(newlines_in_values=True)


def _parse_csv(
    block: bytearray, rows: int, *, columns: list[str], booleans: set[str], encoding: str
) -> pa.Table:
    """One block of COPY CSV rows as strings: unquoted empty is NULL, ``""`` the empty string."""
    # Values holding line breaks need Arrow's much slower parser; most blocks have none.
    one_line = block.count(b"\n") == rows and b"\r" not in block
    table = pacsv.read_csv(
        pa.BufferReader(pa.py_buffer(block)),
        read_options=pacsv.ReadOptions(
            column_names=columns,
            use_threads=False,  # the pipeline already keeps both ends busy
            block_size=max(len(block), 1 << 20),
            encoding=encoding,
        ),
        parse_options=_CSV_ONE_LINE_ROWS if one_line else _CSV_MULTILINE_ROWS,
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in columns},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            check_utf8=False,  # PostgreSQL only sends valid text in the client encoding
        ),
    )
    if table.num_rows != rows:
        raise ValueError(f"COPY sent {rows} rows but {table.num_rows} were parsed")
    table = _valid_utf8(table)
    for c in booleans:  # PostgreSQL prints t/f; the SQLAlchemy path writes true/false
        i = table.schema.get_field_index(c)
        table = table.set_column(i, c, pc.if_else(pc.equal(table[c], "t"), "true", "false"))
    return table


def _is_psycopg(conn: sa.Connection) -> bool:
    return conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"


def _with_row_key(rows: pa.Table, primary_key: list[str]) -> pa.Table:
    if len(primary_key) == 1:
        key = rows[primary_key[0]]
    else:
        key = pc.binary_join_element_wise(*[rows[c] for c in primary_key], KEY_SEPARATOR)
    if pc.any(pc.match_substring(key, NUL)).as_py():  # a key goes to the warehouse's tables
        key = pc.replace_substring(key, NUL, KEY_NUL)
    return rows.add_column(0, ROW_KEY, key)


# --- rendering values as text --------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A value as PostgreSQL prints it, so every backend gives the same raw text.

    >>> _text(dt.datetime(2026, 7, 1, 12, 0)), _text(Decimal("0E-4")), _text(100.0)
    ('2026-07-01 12:00:00', '0.0000', '100')
    """
    if value is None or type(value) is str:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return format(value, "f")  # never the exponent form str() may give (0E-4)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
            return f"{value:%Y-%m-%d %H:%M:%S}{_fraction(value.microsecond)}+00"
        return f"{value:%Y-%m-%d %H:%M:%S}{_fraction(value.microsecond)}"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return f"{value:%H:%M:%S}{_fraction(value.microsecond)}"
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _fraction(microsecond: int) -> str:
    return f".{microsecond:06d}".rstrip("0") if microsecond else ""


def _float_text(value: float) -> str:
    # PostgreSQL's shortest round-trip digits, fixed notation for exponents -4..14.
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    d = Decimal(repr(value))
    exponent = d.adjusted()
    if -4 <= exponent < 15:
        return format(d.normalize(), "f")
    digits = len(d.normalize().as_tuple().digits)
    mantissa, _, power = f"{value:.{digits - 1}e}".partition("e")
    return f"{mantissa}e{power[0]}{int(power[1:]):02d}"


# --- writing -------------------------------------------------------------------------------------


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Delete the temp files and folders of ``path`` (``.<name>.<PID>.tmp``, or
    ``.<name>.<PID>.<what>.tmp``) left by writers that were killed; one whose process still
    runs (a concurrent writer) is left alone. An output a killed :func:`replace_output` had
    moved aside (``.<name>.<PID>.old.tmp``) while ``path`` is empty is put back instead, so the
    last whole output is never lost. Returns what was deleted or put back."""
    removed = []
    for tmp in sorted(path.parent.glob(f".{glob_escape(path.name)}.*.tmp")):
        pid, _, what = tmp.name[len(path.name) + 2 : -len(".tmp")].partition(".")
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            if what == "old" and not _exists(path):
                os.replace(tmp, path)
            else:
                _remove(tmp)
            removed.append(tmp)
    return removed


def replace_output(tmp: Path, path: Path) -> None:
    """Put the whole new output ``tmp`` (a file or a folder) in the place of ``path`` (a file,
    a folder or nothing), so that a process killed at any moment leaves ``path`` holding the
    old output or the new one, never a part of either, and the old one is not given up before
    the new one is in place.

    A file over a file, or anything where there was nothing, is one rename. Where a folder is
    involved (the Spark engine writes an output as a folder of parts) the two are swapped in
    one step (Linux ``renameat2`` ``RENAME_EXCHANGE``) and the old, now at ``tmp``, removed;
    a kill before the removal leaves it at ``tmp`` for :func:`remove_stale_temp_files`. Where
    the file system cannot swap, the old output is moved aside to ``.<name>.<PID>.old.tmp``
    first: a kill between the two renames leaves ``path`` missing (a reader fails loudly, never
    reads half an output), and the next writer of ``path`` puts the old output back.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "out").write_text("old"); (folder / ".out.new").mkdir()
    >>> replace_output(folder / ".out.new", folder / "out")
    >>> (folder / "out").is_dir(), [p.name for p in folder.iterdir()]
    (True, ['out'])
    """
    if not _exists(path) or not (path.is_dir() or tmp.is_dir()):
        failpoints.reached("extract:replacing")
        os.replace(tmp, path)
        return
    if _exchange(tmp, path):
        failpoints.reached("extract:replacing")  # the new output in place, the old at tmp
        _remove(tmp)
        return
    old = path.with_name(f".{path.name}.{os.getpid()}.old.tmp")
    _remove(old)  # of a killed process that had this PID
    os.replace(path, old)
    failpoints.reached("extract:replacing")  # nothing at path: the next writer puts old back
    os.replace(tmp, path)
    _remove(old)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step; False where the system or file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a file system that cannot swap
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@functools.cache
def _renameat2() -> Any:
    """The C library's ``renameat2``; None where there is none (not Linux, or glibc < 2.28)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        c = ctypes
        renameat2.argtypes = [c.c_int, c.c_char_p, c.c_int, c.c_char_p, c.c_uint]
        renameat2.restype = c.c_int
    return renameat2


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    """Remove the file or folder ``path``, if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class StagedOutput:
    """An output written beside ``path``, under this process's temp name
    (``.<name>.<PID>.tmp``, a file or a folder), that takes ``path``'s place only when whole
    (:meth:`put_in_place`, see :func:`replace_output`). Opening one removes what killed writers
    of ``path`` left behind; :attr:`schema` carries ``meta`` as the file's ``govmdm`` metadata."""

    def __init__(self, path: Path, schema: pa.Schema, meta: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        remove_stale_temp_files(path)
        _remove(self.tmp)  # of a killed process that had this PID
        self.schema = schema.with_metadata({"govmdm": json.dumps(meta, ensure_ascii=False)})

    def put_in_place(self) -> None:
        replace_output(self.tmp, self.path)

    def discard(self) -> None:
        """Remove what was written; ``path`` keeps the output it had. Called as a writer
        fails, so a removal that fails too is left to the next writer rather than raised in
        place of the writer's own error."""
        with contextlib.suppress(OSError):
            _remove(self.tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def parquet_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """A Parquet writer with the settings of every file govmdm writes."""
    # Dictionary pages cost more than they save on mostly distinct text (zstd finds the
    # repeats), and raw text has no useful min/max except the row key's.
    return pq.ParquetWriter(
        path,
        schema,
        compression="zstd",
        use_dictionary=False,
        write_statistics=[ROW_KEY] if ROW_KEY in schema.names else False,
    )


class ParquetSink(StagedOutput):
    """Writes tables to ``path`` in row groups of about ``chunk_rows`` rows; the file takes
    ``path``'s place only on success (:class:`StagedOutput`)."""

    def __init__(
        self, path: Path, schema: pa.Schema, chunk_rows: int, meta: dict[str, Any]
    ) -> None:
        super().__init__(path, schema, meta)
        self.chunk_rows = chunk_rows
        self.writer = parquet_writer(self.tmp, self.schema)
        self.pending: list[pa.Table] = []
        self.buffered = 0
        self.rows = 0

    def write(self, rows: pa.Table) -> None:
        self.pending.append(rows)
        self.buffered += rows.num_rows
        self.rows += rows.num_rows
        if self.buffered >= self.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            rows = pa.concat_tables(self.pending)
            self.writer.write_table(rows, row_group_size=max(self.chunk_rows, rows.num_rows))
        self.pending, self.buffered = [], 0

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self._flush()
            self.writer.close()
            self.put_in_place()
        else:
            self.writer.close()
            self.discard()


@contextlib.contextmanager
def _in_background(consume: Callable[[_Chunk], None]) -> Iterator[Callable[[_Chunk], None]]:
    """Hand chunks to ``consume`` on a writer thread, so that decoding and Parquet encoding
    (which release the GIL) overlap reading; the bounded queue keeps memory flat."""
    chunks: queue.Queue[_Chunk | None] = queue.Queue(maxsize=_WRITE_QUEUE)
    errors: list[BaseException] = []

    def run() -> None:
        while (chunk := chunks.get()) is not None:
            if errors:
                continue  # keep draining so the reader never blocks on a dead writer
            try:
                consume(chunk)
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=run, name="govmdm-parquet-writer", daemon=True)
    thread.start()

    def put(chunk: _Chunk) -> None:
        if errors:
            raise errors[0]
        chunks.put(chunk)

    try:
        yield put
    finally:
        chunks.put(None)
        thread.join()
    if errors:
        raise errors[0]


def _parquet_keys(path: Path, chunk_rows: int) -> Iterator[pa.Array]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=[ROW_KEY]):
        yield batch.column(0)


def _write_key_set(
    path: Path, keys: Iterable[pa.Array | pa.ChunkedArray], nights_since_scan: int
) -> None:
    schema = _schema([ROW_KEY])
    with ParquetSink(path, schema, _KEY_ROWS, {"nights_since_scan": nights_since_scan}) as sink:
        for array in keys:
            sink.write(pa.table([array], schema=schema))


def _nights_since_scan(path: Path, key: str = "nights_since_scan") -> int:
    meta = pq.read_schema(path).metadata or {}
    try:
        return int(json.loads(meta.get(b"govmdm", b"{}")).get(key, 0))
    except (ValueError, AttributeError):
        return 0


# --- connections and messages --------------------------------------------------------------------


def _read_only_url(url: str) -> URL:
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        path = u.database or ""
        if path and path != ":memory:" and not path.startswith("file:"):
            return URL.create(
                "sqlite",
                database=f"file:{quote(str(Path(path).resolve()))}",
                query={"mode": "ro", "uri": "true"},
            )
    elif backend in ("mysql", "mariadb") and "charset" not in u.query:
        # Rare surnames lie outside the BMP: MySQL's 3-byte utf8 cannot carry them.
        u = u.update_query_dict({"charset": "utf8mb4"})
    return u


def _engine(url: URL) -> sa.Engine:
    backend = url.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "govmdm-extract",
            "client_encoding": "utf8",  # a SQL_ASCII database would default to bytes
        }
    elif backend in ("mysql", "mariadb"):
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S}
    return sa.create_engine(url, connect_args=connect_args, poolclass=sa.NullPool)


def _connection_broken(conn: sa.Connection, exc: BaseException) -> bool:
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    try:
        raw = conn.connection.driver_connection
    except sa.exc.SQLAlchemyError:
        return True
    return bool(getattr(raw, "broken", False) or getattr(raw, "closed", False) is True)


def _first_line(exc: BaseException) -> str:
    """The driver's one-line reason, without the source value it may quote (personal data goes
    into no ledger, log or e-mail)."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip()
    return redact_message(f"{type(cause).__name__}: {text.splitlines()[0] if text else ''}")


def _where(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return f"SQLite file {url.database}"
    port = f":{url.port}" if url.port else ""
    return f"{url.get_backend_name()} server {url.host}{port}, database {url.database}"


def _unreachable_message(
    dept: DepartmentConfig, url: URL, attempts: int, exc: _ConnectionLost
) -> str:
    name = dept.connection.upper()
    return (
        f"{dept.code}: cannot reach the source database ({_where(url)}) after {attempts} "
        f"attempt(s): {exc}. Fix: check that the server is up and reachable from this worker, "
        f"and that AIRFLOW_CONN_{name} or GOVMDM_CONN_{name} (connection `{dept.connection}` in "
        f"{dept.source_file or dept.code}) names the right host, port, database and read-only "
        "credentials; the other departments are unaffected"
    )


def _failed_message(dept: DepartmentConfig, table: str | None, cause: BaseException) -> str:
    where = f"table {table!r}" if table else "reading the live schema"
    on = repr(table) if table else "the configured tables"
    return (
        f"{dept.code}: {where}: extraction failed ({_first_line(cause)}). Fix: if the source "
        f"refused the query, grant the read-only user of connection `{dept.connection}` SELECT "
        f"on {on}; if a value could not be read as its declared column type, ask "
        f"{dept.contact.name} <{dept.contact.email}> to correct it; rerun the night afterwards"
    )


def _driver_message(dept: DepartmentConfig, url: URL, exc: BaseException) -> str:
    name = dept.connection.upper()
    return (
        f"{dept.code}: no database driver for {url.drivername!r} ({type(exc).__name__}: {exc}). "
        f"Fix: write AIRFLOW_CONN_{name} / GOVMDM_CONN_{name} with an installed driver: "
        "postgresql+psycopg, mysql+pymysql or sqlite"
    )


def _record(
    state: RunState, run_id: str, dept: DepartmentConfig, result: DepartmentExtract
) -> None:
    state.record(
        [
            LedgerEntry(
                run_id=run_id,
                department=dept.code,
                table_name=t.table,
                mode=t.mode,
                rows_read=t.rows_read,
                watermark_before=t.watermark_before,
                watermark_after=t.watermark_after,
                started_at=t.started_at,
                duration_s=t.duration_s,
                status=t.status,
                message=t.message,
                parquet_path=str(t.parquet_path) if t.parquet_path else None,
                rows_deleted=t.rows_deleted,
                rows_unchanged=t.rows_unchanged,
                rows_late=t.rows_late,
                rows_backdated=t.rows_backdated,
                rows_duplicate=t.rows_duplicate,
                keys_before=t.keys_before,
                deletion_guard=t.deletion_guard,
            )
            for t in result.tables
        ]
    )


def _check_run_id(run_id: str) -> None:
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise ValueError(
            f"run_id {run_id!r} cannot name a folder: use letters, digits and . _ : + - "
            "(e.g. 2026-07-01 or an Airflow run id)"
        )
