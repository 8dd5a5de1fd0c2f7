"""The audit log: who did what to the golden data, and when.

Every publish, export, lookup, query, views install, review decision and accepted mass
deletion writes a row of ``audit_log`` in the warehouse: who, when, the action, its target, the
role it ran as (analyst | privileged | steward | platform), how many rows it returned or wrote,
its outcome (ok | refused | failed, or running while it has not finished) and details as JSON.
Targets and details never hold an ID number or a mobile number in clear: they are masked
(:func:`fields.masking.mask_text`) before they are written.

**Who** is never taken from a variable the user sets. On PostgreSQL it is the connection's
login (``session_user``), written by the database itself; on SQLite it is the OS account of the
process's user ID (not ``LOGNAME`` / ``USER``).

**Before and after.** :func:`begin` writes a ``running`` row and commits it *before* the work
starts; :func:`finish` completes it (outcome, rows, when it ended). A command killed halfway
leaves its ``running`` row behind.

**Append-only.** On PostgreSQL analysts, privileged users and stewards hold no privilege on the
table: they write through two ``SECURITY DEFINER`` functions (:func:`functions_sql`) that
insert a row as ``session_user`` and complete only the caller's own running row, and read their
own rows through the view ``v_audit_log``; only the owner may change or delete rows. On SQLite
triggers refuse a DELETE, and an UPDATE of anything but a running row's completion; whoever can
write the file can drop them (file permissions are SQLite's only boundary).

>>> entry = begin(engine, "query", "SELECT count(*) FROM v_person", role="analyst")
>>> finish(engine, entry, outcome="ok", row_count=1)
>>> entries(engine, action="query")[0]["outcome"]
'ok'
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from fields.masking import mask_text
from store.tables import audit_table, metadata

ACTIONS = (
    "publish",
    "views_install",
    "export",
    "lookup",
    "query",
    "explain",
    "review_decide",
    "review_list",
    "accept_deletions",
)
OUTCOMES = ("ok", "refused", "failed")
RUNNING = "running"
ROLES = ("analyst", "privileged", "steward", "platform")
OWN_VIEW = "v_audit_log"
BEGIN_FUNCTION = "govmdm_audit_begin"
FINISH_FUNCTION = "govmdm_audit_finish"

_COLUMNS = [c.name for c in audit_table.columns]

Bind = sa.Engine | sa.Connection | str


def os_user() -> str:
    """The OS account of this process's effective user ID (``LOGNAME``, ``USER`` and the like
    are ignored: anyone can set them)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry (some containers): still say something true
        return f"uid:{uid}"


def who(bind: sa.Engine | sa.Connection | None = None) -> str:
    """Who is acting: the login of a PostgreSQL ``bind`` (``session_user``), else the OS account.

    >>> who()
    'wangfang'
    """
    if bind is not None and bind.dialect.name == "postgresql":
        with _connection(bind) as conn:
            return str(conn.exec_driver_sql("SELECT session_user").scalar())
    return os_user()


# --- the table, its guards and (PostgreSQL) its functions ---------------------------------------

_SQLITE_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log BEGIN "
    "SELECT RAISE(ABORT, 'audit_log is append-only: entries cannot be deleted'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_log_complete_once BEFORE UPDATE ON audit_log "
    "WHEN OLD.outcome <> 'running' OR NEW.id IS NOT OLD.id OR NEW.at IS NOT OLD.at "
    "OR NEW.who IS NOT OLD.who OR NEW.action IS NOT OLD.action OR NEW.target IS NOT OLD.target "
    "OR NEW.role IS NOT OLD.role BEGIN "
    "SELECT RAISE(ABORT, 'audit_log is append-only: only a running entry is completed, once'); "
    "END",
)


def ensure_table(bind: sa.Engine | sa.Connection) -> None:
    """Create ``audit_log`` if it is missing, add columns a newer govmdm needs, and on SQLite
    the append-only triggers. A login that may not create them (an analyst's) changes nothing."""
    with _connection(bind, write=True) as conn:
        inspector = sa.inspect(conn)
        if not inspector.has_table(audit_table.name):
            metadata.create_all(conn, tables=[audit_table])
        elif "finished_at" not in {c["name"] for c in inspector.get_columns(audit_table.name)}:
            kind = "timestamptz" if conn.dialect.name == "postgresql" else "TIMESTAMP"
            conn.exec_driver_sql(f"ALTER TABLE audit_log ADD COLUMN finished_at {kind}")
        if conn.dialect.name == "sqlite":
            for stmt in _SQLITE_TRIGGERS:
                conn.exec_driver_sql(stmt)


def functions_sql(schema: str, grantees: list[str]) -> list[str]:
    """PostgreSQL: the ``SECURITY DEFINER`` functions through which everyone but the owner
    writes the log, the view of one's own rows, and their grants to ``grantees`` (roles).

    The functions take ``who`` from ``session_user`` and complete only the caller's own running
    row; ``search_path`` is pinned so that no object a caller creates can stand in for ours.
    """
    s = _quote(schema)
    t = f"{s}.audit_log"
    actions = ", ".join(f"'{a}'" for a in ACTIONS)
    roles = ", ".join(f"'{r}'" for r in ROLES)
    outcomes = ", ".join(f"'{o}'" for o in OUTCOMES)
    fixed = "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
    begin = (
        f"CREATE OR REPLACE FUNCTION {s}.{BEGIN_FUNCTION}(p_action text, p_target text, "
        f"p_role text, p_detail text) RETURNS bigint {fixed} AS $fn$\n"
        "DECLARE new_id bigint;\n"
        "BEGIN\n"
        f"  IF p_action IS NULL OR p_action NOT IN ({actions}) THEN\n"
        "    RAISE EXCEPTION 'unknown audit action %', p_action;\n"
        "  END IF;\n"
        f"  IF p_role IS NOT NULL AND p_role NOT IN ({roles}) THEN\n"
        "    RAISE EXCEPTION 'unknown audit role %', p_role;\n"
        "  END IF;\n"
        f"  INSERT INTO {t} (at, who, action, target, role, outcome, detail)\n"
        "  VALUES (clock_timestamp(), session_user, p_action, left(coalesce(p_target, ''), 4000),\n"
        "          p_role, 'running', coalesce(p_detail::jsonb, '{}'::jsonb)::text)\n"
        "  RETURNING id INTO new_id;\n"
        "  RETURN new_id;\n"
        "END $fn$"
    )
    finish = (
        f"CREATE OR REPLACE FUNCTION {s}.{FINISH_FUNCTION}(p_id bigint, p_outcome text, "
        f"p_row_count bigint, p_detail text) RETURNS void {fixed} AS $fn$\n"
        "BEGIN\n"
        f"  IF p_outcome IS NULL OR p_outcome NOT IN ({outcomes}) THEN\n"
        "    RAISE EXCEPTION 'unknown audit outcome %', p_outcome;\n"
        "  END IF;\n"
        f"  UPDATE {t} SET outcome = p_outcome, row_count = p_row_count,\n"
        "    finished_at = clock_timestamp(),\n"
        "    detail = (coalesce(p_detail::jsonb, '{}'::jsonb) || detail::jsonb)::text\n"
        "  WHERE id = p_id AND who = session_user AND outcome = 'running';\n"
        "  IF NOT FOUND THEN\n"
        "    RAISE EXCEPTION 'audit entry % is not a running entry of %', p_id, session_user;\n"
        "  END IF;\n"
        "END $fn$"
    )
    columns = ", ".join(_COLUMNS)
    own = (
        f"CREATE OR REPLACE VIEW {s}.{OWN_VIEW} WITH (security_barrier) AS "
        f"SELECT {columns} FROM {t} WHERE who = session_user"
    )
    out = [begin, finish, own]
    functions = (
        f"{s}.{BEGIN_FUNCTION}(text, text, text, text)",
        f"{s}.{FINISH_FUNCTION}(bigint, text, bigint, text)",
    )
    for fn in functions:
        out.append(f"REVOKE ALL ON FUNCTION {fn} FROM PUBLIC")
    out.append(f"REVOKE ALL ON TABLE {t}, {s}.{OWN_VIEW} FROM PUBLIC")
    if grantees:
        who_list = ", ".join(_quote(g) for g in grantees)
        for fn in functions:
            out.append(f"GRANT EXECUTE ON FUNCTION {fn} TO {who_list}")
        out.append(f"GRANT SELECT ON TABLE {s}.{OWN_VIEW} TO {who_list}")
    return out


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- writing -----------------------------------------------------------------------------------


def begin(
    bind: Bind,
    action: str,
    target: str,
    *,
    role: str | None = None,
    detail: dict[str, Any] | None = None,
) -> int:
    """Write a ``running`` row before the work starts and return its ID. With an engine or a
    URL the row is committed at once; with a connection it joins the caller's transaction."""
    _check(action, RUNNING, role)
    with _connection(bind, write=True) as conn:
        return _begin(conn, action, target, role, _detail(detail))


def finish(
    bind: Bind,
    entry: int,
    *,
    outcome: str = "ok",
    row_count: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Complete the running row ``entry`` of :func:`begin`. Details add to the row's; what it
    was begun with is never overwritten."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}; known: {', '.join(OUTCOMES)}")
    with _connection(bind, write=True) as conn:
        _finish(conn, entry, outcome, row_count, detail or {})


def record(
    bind: Bind,
    action: str,
    target: str,
    *,
    role: str | None = None,
    row_count: int | None = None,
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one completed row. ``bind``: an engine, a connection (the row then commits with the
    caller's transaction, e.g. a review decision) or a database URL.

    >>> record("sqlite:///var/warehouse/govmdm.sqlite", "export", "var/exports/x", row_count=9)
    """
    _check(action, outcome, role)
    with _connection(bind, write=True) as conn:
        entry = _begin(conn, action, target, role, _detail(detail))
        _finish(conn, entry, outcome, row_count, {})


def _check(action: str, outcome: str, role: str | None) -> None:
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; known: {', '.join(ACTIONS)}")
    if outcome not in (*OUTCOMES, RUNNING):
        raise ValueError(f"unknown audit outcome {outcome!r}; known: {', '.join(OUTCOMES)}")
    if role is not None and role not in ROLES:
        raise ValueError(f"unknown audit role {role!r}; known: {', '.join(ROLES)}")


def _detail(detail: dict[str, Any] | None) -> dict[str, Any]:
    return {"os_user": os_user(), **(detail or {})}


def _json(detail: dict[str, Any]) -> str:
    return mask_text(json.dumps(detail, ensure_ascii=False, sort_keys=True, default=str))


def _has_functions(conn: sa.Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    found = conn.exec_driver_sql(
        f"SELECT to_regprocedure('{BEGIN_FUNCTION}(text, text, text, text)') IS NOT NULL"
    ).scalar()
    return bool(found)


def _begin(
    conn: sa.Connection, action: str, target: str, role: str | None, detail: dict[str, Any]
) -> int:
    if _has_functions(conn):
        entry = conn.execute(
            sa.text(f"SELECT {BEGIN_FUNCTION}(:action, :target, :role, :detail)"),
            {"action": action, "target": mask_text(target), "role": role, "detail": _json(detail)},
        ).scalar_one()
        return int(entry)
    ensure_table(conn)
    person: Any = (
        sa.literal_column("session_user")
        if conn.dialect.name == "postgresql"
        else sa.literal(os_user()[:128])
    )
    row = conn.execute(
        audit_table.insert()
        .values(
            at=dt.datetime.now(dt.UTC),
            who=person,
            action=action,
            target=mask_text(target),
            role=role,
            outcome=RUNNING,
            detail=_json(detail),
        )
        .returning(audit_table.c.id)
    ).scalar()
    return int(row)  # type: ignore[arg-type]  # RETURNING always gives the new row's ID


def _finish(
    conn: sa.Connection, entry: int, outcome: str, row_count: int | None, detail: dict[str, Any]
) -> None:
    if _has_functions(conn):
        conn.execute(
            sa.text(f"SELECT {FINISH_FUNCTION}(:id, :outcome, :rows, :detail)"),
            {"id": entry, "outcome": outcome, "rows": row_count, "detail": _json(detail)},
        )
        return
    t = audit_table.c
    begun = conn.execute(
        sa.select(t.detail).where(t.id == entry, t.outcome == RUNNING)
    ).scalar_one_or_none()
    if begun is None:
        raise ValueError(f"audit entry {entry} is not a running entry")
    merged = {**detail, **json.loads(begun)}  # what the row was begun with wins
    conn.execute(
        audit_table.update()
        .where(t.id == entry, t.outcome == RUNNING)
        .values(
            outcome=outcome,
            row_count=row_count,
            finished_at=dt.datetime.now(dt.UTC),
            detail=_json(merged),
        )
    )


@contextmanager
def _connection(bind: Bind, *, write: bool = False) -> Iterator[sa.Connection]:
    """A connection on ``bind``: the caller's own, or a new one that commits when done."""
    if isinstance(bind, sa.Connection):
        yield bind
        return
    engine = sa.create_engine(bind) if isinstance(bind, str) else bind
    try:
        with engine.begin() if write else engine.connect() as conn:
            yield conn
    finally:
        if isinstance(bind, str):
            engine.dispose()


# --- reading -----------------------------------------------------------------------------------


def entries(
    bind: sa.Engine | sa.Connection,
    *,
    action: str | None = None,
    user: str | None = None,
    since: dt.datetime | None = None,
    limit: int = 100,
    own: bool = False,
) -> list[dict[str, Any]]:
    """Audit rows, newest first, optionally filtered; ``detail`` decoded from JSON. ``own``:
    only the caller's rows (on PostgreSQL through ``v_audit_log``, the only way an analyst may
    read the log)."""
    with _connection(bind) as conn:
        source: Any = audit_table
        if own and conn.dialect.name == "postgresql":
            source = sa.table(OWN_VIEW, *(sa.column(c) for c in _COLUMNS))
        t = source.c
        query = sa.select(*(t[c] for c in _COLUMNS)).order_by(t.id.desc()).limit(limit)
        if own and conn.dialect.name != "postgresql":
            query = query.where(t.who == os_user())
        if action:
            query = query.where(t.action == action)
        if user:
            query = query.where(t.who == user)
        if since:
            query = query.where(t.at >= since)
        rows = conn.execute(query).all()
    return [dict(r._mapping) | {"detail": json.loads(r.detail)} for r in rows]
