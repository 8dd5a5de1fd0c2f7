"""``govmdm query``: one read-only SELECT on the caller's own connection, against what their
role may read, with a time limit; analyst output scrubbed, errors masked, every query audited.

What holds is the connection (:mod:`access.session`): on PostgreSQL the caller's own login in
a READ ONLY transaction under ``SET LOCAL ROLE``; on SQLite a ``mode=ro`` connection with an
authorizer and a progress handler. The text check (:func:`check_sql`) is a first line only.

>>> run_query(city, "SELECT name, id_number, birth_date FROM v_person").frame.iloc[0].tolist()
['****', '****', '1985-1989']
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from access import audit
from access.errors import AccessDenied, AccessError, AccessSetupError, QueryRefused, first_line
from access.policy import DbRoles, Role, SharePolicy, ident
from access.release import ANALYST_RELATIONS, CATALOG_TABLE, VIEWS, protected, view_for
from access.session import caller_of, session, sqlite_path
from access.viewsql import Dialect, dialect_of
from etl.config import CityConfig
from fields.masking import mask_text, scrub


def scrub_frame(frame: pd.DataFrame, skip: Sequence[str] = ()) -> tuple[pd.DataFrame, int]:
    """A copy of ``frame`` with :func:`fields.masking.scrub` applied to every text cell but
    those of ``skip`` (keyed pseudonyms: hex that may hold 11 digits in a row); and how many
    changed."""
    out = frame.copy()
    changed = 0
    for column in out.columns:
        if out[column].dtype != object or column in skip:
            continue
        values = out[column].tolist()
        for i, v in enumerate(values):
            values[i], hit = scrub(v)
            changed += hit
        out[column] = pd.Series(values, index=out.index, dtype=object)
    return out, changed


# Writes, session changes, and server-side file or network access. (Word lists: laid out one
# word a line they would run to seventy lines, so the formatter leaves them packed.)
# fmt: off
_FORBIDDEN_WORDS = frozenset({
    "insert", "update", "delete", "merge", "upsert", "create", "drop", "alter", "grant", "revoke",
    "truncate", "copy", "call", "do", "set", "reset", "attach", "detach", "pragma", "vacuum",
    "reindex", "analyze", "lock", "listen", "notify", "unlisten", "prepare", "execute",
    "deallocate", "discard", "load", "into", "set_config", "lo_import", "lo_export",
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_terminate_backend",
    "pg_cancel_backend", "pg_reload_conf", "pg_sleep", "load_extension", "dblink", "dblink_exec",
    "query_to_xml", "cursor_to_xml", "table_to_xml", "ts_stat", "ts_rewrite",
})
# Families of the above: functions that run SQL given as text, read server files, sleep or hold
# locks. The words are a first line only; the caller's own login is what holds.
_FORBIDDEN_PREFIXES = (
    "query_to_xml", "cursor_to_xml", "table_to_xml", "schema_to_xml", "database_to_xml",
    "pg_sleep", "pg_advisory", "pg_try_advisory", "pg_read_", "pg_ls_", "pg_file", "dblink",
    "lo_", "pg_terminate", "pg_cancel", "pg_reload", "pg_rotate", "pg_promote",
)
# fmt: on
_STARTERS = frozenset({"select", "with", "values"})
_WORD = re.compile(r"[^\W\d][\w$]*")  # identifiers may be Chinese


def _tokens(sql: str, dialect: Dialect) -> tuple[list[str], list[str]]:
    """(bare words lower-cased, quoted identifiers) of ``sql`` outside strings and comments.

    Refuses what the scan cannot read safely: several statements, PostgreSQL dollar-quoted,
    E'' and U& strings.
    """
    words: list[str] = []
    quoted: list[str] = []
    i, n = 0, len(sql)
    ended = False
    while i < n:
        ch = sql[i]
        if ended and not ch.isspace() and not sql.startswith(("--", "/*"), i):
            raise QueryRefused("one statement at a time: remove everything after the ';'")
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            if j < 0:
                raise QueryRefused("unterminated /* comment")
            i = j + 2
        elif ch == "'":
            j = i + 1
            while True:
                j = sql.find("'", j)
                if j < 0:
                    raise QueryRefused("unterminated string literal")
                if sql.startswith("''", j):
                    j += 2
                    continue
                break
            i = j + 1
        elif ch in '"`[':
            close = {'"': '"', "`": "`", "[": "]"}[ch]
            if ch != '"' and dialect == "postgresql":
                i += 1
                continue
            j = sql.find(close, i + 1)
            if j < 0:
                raise QueryRefused(f"unterminated quoted identifier {ch}")
            quoted.append(sql[i + 1 : j].replace(close * 2, close).lower())
            i = j + 1
        elif ch == ";":
            ended = True
            i += 1
        elif ch == "$" and dialect == "postgresql":
            raise QueryRefused("dollar-quoted text ($$ … $$) is not accepted here")
        elif ch.isalpha() or ch == "_":
            m = _WORD.match(sql, i)
            assert m is not None
            word = m.group(0).lower()
            if (
                dialect == "postgresql"
                and word in ("e", "u")
                and sql.startswith(("'", "&"), m.end())
            ):
                raise QueryRefused("E'' and U& strings are not accepted here; write plain '…'")
            words.append(word)
            i = m.end()
        else:
            i += 1
    return words, quoted


def check_sql(
    sql: str, *, dialect: Dialect, allowed: frozenset[str] | None, known: frozenset[str]
) -> set[str]:
    """The relations ``sql`` names, after checking it is one read-only SELECT that names no
    relation outside ``allowed`` (None: any). Raises :class:`QueryRefused` with the reason."""
    if not sql.strip():
        raise QueryRefused("empty statement: write a SELECT")
    words, quoted = _tokens(sql, dialect)
    first = next((w for w in words), "")
    if first not in _STARTERS:
        raise QueryRefused(
            f"only SELECT statements run here, not {first.upper() or 'that'}: govmdm query is "
            "read-only (write SELECT … or WITH … SELECT …)"
        )
    bad = sorted(
        {w for w in (*words, *quoted) if w in _FORBIDDEN_WORDS or w.startswith(_FORBIDDEN_PREFIXES)}
    )
    if bad:
        raise QueryRefused(
            f"{', '.join(w.upper() for w in bad)} cannot be used here: govmdm query runs one "
            "read-only SELECT"
        )
    named = {w for w in (*words, *quoted) if w in known}
    if allowed is not None and (denied := sorted(named - allowed)):
        raise QueryRefused(_denied_message(denied))
    return named


def _denied_message(denied: Sequence[str]) -> str:
    hints = []
    for name in denied:
        spec = view_for(name) or next((v for v in VIEWS if v.full_name == name), None)
        if spec is not None:
            hints.append(f"{spec.name} instead of {name}")
    hint = f" (use {', '.join(hints)})" if hints else ""
    return (
        f"the analyst role may not read {', '.join(denied)}{hint}. Analysts read the masked "
        f"views: {', '.join(sorted(ANALYST_RELATIONS))}; personal data in clear needs "
        "--privileged"
    )


def _known_relations(engine: sa.Engine) -> frozenset[str]:
    """Every relation of the warehouse; AccessSetupError if the analyst views are missing."""
    inspector = sa.inspect(engine)
    views = set(inspector.get_view_names())
    missing = sorted({v.name for v in VIEWS} - views)
    if missing:
        raise AccessSetupError(
            f"the analyst views are not installed in this warehouse ({', '.join(missing)}). "
            "Fix: run `govmdm views install` (every publish installs them too)"
        )
    names = {*inspector.get_table_names(), *views, *protected(), CATALOG_TABLE}
    return frozenset(n.lower() for n in names)


def require_views(engine: sa.Engine) -> None:
    """AccessSetupError, saying what to run, unless the analyst views are installed."""
    _known_relations(engine)


@dataclass
class QueryResult:
    """Rows of a guarded read."""

    columns: list[str]
    frame: pd.DataFrame
    role: Role
    relations: set[str] = field(default_factory=set)
    scrubbed: int = 0


def fetch(engine: sa.Engine, sql: str, role: Role) -> QueryResult:
    """Run ``sql`` read-only as ``role`` on a caller's own connection (:func:`session`).

    The text check (:func:`check_sql`) is a first line only. What holds is the connection: on
    PostgreSQL the caller's login, refused if it could become anything above a govmdm role, in
    a READ ONLY transaction under ``SET LOCAL ROLE`` with ``statement_timeout``; on SQLite a
    ``mode=ro`` connection whose authorizer lets the analyst read the masked views only, and a
    progress handler that stops it at the time limit. Analyst output is scrubbed; errors are
    cut to their first line and masked before anyone sees them.
    """
    dialect = dialect_of(engine)
    if dialect == "postgresql":
        caller_of(engine)  # refuses an owner's or superuser's connection
    known = _known_relations(engine)
    allowed = ANALYST_RELATIONS if role == "analyst" else None
    relations = check_sql(sql, dialect=dialect, allowed=allowed, known=known)
    runner = _fetch_postgres if dialect == "postgresql" else _fetch_sqlite
    columns, rows = runner(engine, sql.strip().rstrip(";"), role)
    frame = pd.DataFrame.from_records(rows, columns=_unique(columns))
    scrubbed = 0
    if role == "analyst":
        frame, scrubbed = scrub_frame(frame)
    return QueryResult(columns, frame, role, relations, scrubbed)


def _unique(columns: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for c in columns:
        seen[c] = seen.get(c, 0) + 1
        out.append(c if seen[c] == 1 else f"{c}_{seen[c]}")
    return out


def _settings(engine: sa.Engine) -> tuple[DbRoles, float]:
    options = engine.get_execution_options()
    roles = options.get("govmdm_roles")
    timeout = options.get("govmdm_timeout_s")
    return (
        roles if isinstance(roles, DbRoles) else DbRoles(),
        float(timeout) if timeout else float(SharePolicy.model_fields["query_timeout_s"].default),
    )


def _timed_out(timeout_s: float) -> AccessError:
    return AccessError(
        f"the query ran longer than {timeout_s:g} s and was stopped (query_timeout_s in "
        f"config/catalog.yaml). Fix: narrow it with WHERE or LIMIT, or aggregate in SQL"
    )


def _error_text(exc: BaseException) -> str:
    """An error as it may be shown or logged: its first line, ID and mobile numbers masked."""
    return mask_text(first_line(exc))[:500]


def _fetch_postgres(engine: sa.Engine, sql: str, role: Role) -> tuple[list[str], Sequence[Any]]:
    import psycopg

    roles, timeout_s = _settings(engine)
    ms = max(1, int(timeout_s * 1000))
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SET TRANSACTION READ ONLY")
        cur.execute("SET LOCAL standard_conforming_strings = on")
        cur.execute(f"SET LOCAL statement_timeout = {ms}")
        cur.execute(f"SET LOCAL lock_timeout = {ms}")
        try:
            cur.execute(f"SET LOCAL ROLE {ident(roles.of(role))}")
        except psycopg.Error as exc:
            raise AccessSetupError(
                f"cannot act as the {roles.of(role)} role ({_error_text(exc)}). Fix: a DBA "
                f"runs `govmdm views install --sql` and GRANT {ident(roles.of(role))} TO "
                "your login"
            ) from None
        try:
            # prepared: the extended protocol runs exactly one statement
            cur.execute(sql, prepare=True)  # type: ignore[call-arg]  # psycopg's cursor
        except psycopg.errors.QueryCanceled:
            raise _timed_out(timeout_s) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise QueryRefused(f"PostgreSQL refused it: {_error_text(exc)}") from None
        except psycopg.Error as exc:
            raise AccessError(f"the query failed: {_error_text(exc)}") from None
        if cur.description is None:
            raise QueryRefused("the statement returned no rows: govmdm query runs SELECTs")
        columns = [d[0] for d in cur.description]
        try:
            rows = cur.fetchall()
        except psycopg.errors.QueryCanceled:
            raise _timed_out(timeout_s) from None
        return columns, rows
    finally:
        with contextlib.suppress(Exception):
            raw.rollback()
        raw.close()


def _authorizer(role: Role, denied: list[str]) -> Callable[..., int]:
    masked_views = frozenset(v.name for v in VIEWS)
    system = ("sqlite_master", "sqlite_schema", "sqlite_temp_master")
    pragmas = ("table_info", "table_xinfo", "table_list", "index_list")

    def authorize(
        action: int, arg1: str | None, arg2: str | None, _db: str | None, source: str | None
    ) -> int:
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and arg1 in pragmas and arg2 is not None:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ:
            table = (arg1 or "").lower()
            if (
                role == "privileged"
                or table in ANALYST_RELATIONS
                or table in system
                or table.startswith("pragma_")
                or arg2 == ""  # no column read: count(*) over a flattened view
                # a masked view reading its table (a CTE named like one is refused by check_sql)
                or (source or "").lower() in masked_views
            ):
                return sqlite3.SQLITE_OK
            denied.append(table)
            return sqlite3.SQLITE_DENY
        denied.append(f"action {action} {arg1 or ''}".strip())
        return sqlite3.SQLITE_DENY

    return authorize


_PROGRESS_STEPS = 20_000  # SQLite VM instructions between two looks at the clock (~1 ms)


def _fetch_sqlite(engine: sa.Engine, sql: str, role: Role) -> tuple[list[str], Sequence[Any]]:
    import time

    _, timeout_s = _settings(engine)
    path = sqlite_path(engine)
    conn = sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True, timeout=60)
    denied: list[str] = []
    deadline = time.monotonic() + timeout_s
    # A reader holds its WAL snapshot (and so holds back checkpoints) until it ends: bound it.
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_STEPS)
    try:
        conn.set_authorizer(_authorizer(role, denied))
        try:
            cur = conn.execute(sql)
            columns = None if cur.description is None else [d[0] for d in cur.description]
            rows = cur.fetchall()
        except sqlite3.DatabaseError as exc:
            if denied:
                tables = sorted({d for d in denied if not d.startswith("action")})
                if tables:
                    raise QueryRefused(_denied_message(tables)) from None
                raise QueryRefused(
                    "only reads are allowed: govmdm query runs one read-only SELECT"
                ) from None
            if time.monotonic() > deadline and "interrupt" in str(exc).lower():
                raise _timed_out(timeout_s) from None
            raise AccessError(f"the query failed: {_error_text(exc)}") from None
        if columns is None:
            raise QueryRefused("the statement returned no rows: govmdm query runs SELECTs")
        return columns, rows
    finally:
        conn.close()


def run_query(city: CityConfig, sql: str, *, privileged: bool = False) -> QueryResult:
    """``govmdm query``: run one SELECT on the caller's own connection against what their role
    may read. Audited: the entry is written before the query runs (a killed query leaves it
    ``running``) and completed after, refusals and failures too."""
    with session(city) as s:
        role = s.role(privileged, action="query")
        entry = audit.begin(s.engine, "query", _sql_target(sql), role=role, detail={"sql": sql})
        try:
            result = fetch(s.engine, sql, role)
        except AccessError as exc:
            outcome = "refused" if isinstance(exc, QueryRefused | AccessDenied) else "failed"
            audit.finish(s.engine, entry, outcome=outcome, detail={"reason": str(exc)})
            raise
        except BaseException as exc:  # Ctrl-C, a lost connection: say so, then go on failing
            with contextlib.suppress(Exception):
                audit.finish(
                    s.engine, entry, outcome="failed", detail={"reason": type(exc).__name__}
                )
            raise
        audit.finish(
            s.engine,
            entry,
            row_count=len(result.frame),
            detail={"relations": sorted(result.relations), "scrubbed": result.scrubbed},
        )
    return result


def _sql_target(sql: str) -> str:
    one_line = " ".join(sql.split())
    return one_line if len(one_line) <= 200 else one_line[:199] + "…"
