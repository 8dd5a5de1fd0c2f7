"""Whose connection: analysts' commands (query, export, lookup, audit list, review) run on the
caller's *own* login, never on the pipeline's owner login.

On PostgreSQL that is the login of ``GOVMDM_ANALYST_URL`` (else ``GOVMDM_WAREHOUSE_URL``); it
is refused if it could become a superuser, the tables' owner or any role that may write them
(:func:`session`), so a query that escapes ``SET ROLE`` by any trick finds nothing above the
login. ``statement_timeout`` bounds every statement and the backend of a client that dies is
cancelled. On SQLite the file's permissions are the only boundary, and the tool says so: the
file's owner (by OS user ID) is privileged and steward, everyone else an analyst.

**Privilege** comes from the database (membership of the privileged role) or the OS user ID,
never from an environment variable or a config file the caller can point elsewhere.

>>> with session(city) as s:
...     s.caller.who, sorted(s.caller.may)
('wang', ['analyst'])
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sqlalchemy as sa

from access import audit
from access.errors import AccessDenied, AccessSetupError
from access.policy import (
    ANALYST_URL_ENV,
    DECIDE_FUNCTION,
    DbRoles,
    Role,
    SharePolicy,
    ident,
    load_share_policy,
    login_sql,
)
from access.release import VIEWS, protected
from access.viewsql import Dialect, dialect_of
from etl.config import CityConfig
from etl.state import WAREHOUSE_ENV, warehouse_url
from store.warehouse import engine_for

Capability = Literal["analyst", "privileged", "steward"]

# Whoever can become one of these (or a superuser, or a role that may create roles or bypass
# row security) is above every govmdm role: analysts' commands refuse such a login.
_ABOVE = (
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_write_all_data",
)


@dataclass(frozen=True)
class Caller:
    """The person at the keyboard as the warehouse knows them: their login (PostgreSQL) or OS
    account (SQLite), what they may do, and what really protects the data."""

    who: str
    backend: Dialect
    may: frozenset[Capability]
    boundary: str


@dataclass
class Session:
    """A caller's own connection to the warehouse (see :func:`session`)."""

    engine: sa.Engine
    caller: Caller
    policy: SharePolicy

    def role(self, privileged: bool, *, action: str) -> Role:
        """``privileged`` if asked for and the caller holds it, else ``analyst``; a refusal is
        audited and raised as :class:`AccessDenied`."""
        c, roles = self.caller, self.policy.roles
        if not privileged:
            if c.may & {"analyst", "privileged"}:
                return "analyst"
            raise AccessDenied(
                f"the login {c.who!r} may not read the analyst views. Fix: a DBA runs "
                f"GRANT {ident(roles.analyst)} TO {ident(c.who)}"
            )
        if "privileged" in c.may:
            return "privileged"
        if c.backend == "postgresql":
            why = (
                f"--privileged: the login {c.who!r} is not in the {roles.privileged} role; "
                "personal data in clear is granted by the database, not by govmdm. Fix: if "
                f"your duties need it, a DBA runs GRANT {ident(roles.privileged)} TO "
                f"{ident(c.who)}; without --privileged you see the masked views"
            )
        else:
            why = (
                f"--privileged: {c.who!r} does not own the warehouse file. {c.boundary}. Fix: "
                "run as the file's owner, or leave out --privileged for the masked views"
            )
        self.refuse(action, "--privileged", why, role="privileged")
        raise AssertionError  # refuse() raised

    def require(self, capability: Capability, *, action: str, target: str) -> None:
        """Raise :class:`AccessDenied` (audited) unless the caller holds ``capability``."""
        c, roles = self.caller, self.policy.roles
        if capability in c.may:
            return
        if c.backend == "postgresql":
            role = getattr(roles, capability)
            why = (
                f"{action.replace('_', ' ')}: the login {c.who!r} is not in the {role} role. "
                f"Fix: a DBA runs GRANT {ident(role)} TO {ident(c.who)}"
            )
        else:
            why = (
                f"{action.replace('_', ' ')}: {c.who!r} does not own the warehouse file. "
                f"{c.boundary}. Fix: run as the file's owner"
            )
        self.refuse(action, target, why, role=capability)

    def refuse(self, action: str, target: str, why: str, *, role: str) -> None:
        """Audit a refusal (best effort) and raise it."""
        with contextlib.suppress(Exception):
            audit.record(
                self.engine, action, target, role=role, outcome="refused", detail={"reason": why}
            )
        raise AccessDenied(why)


@contextlib.contextmanager
def session(city: CityConfig, *, export: bool = False) -> Iterator[Session]:
    """The caller's own connection: on PostgreSQL the login of ``GOVMDM_ANALYST_URL`` (else of
    ``GOVMDM_WAREHOUSE_URL``), refused unless it is no more than an analyst, privileged user or
    steward — never the warehouse owner or a superuser —, with ``statement_timeout`` set and a
    dead client's backend cancelled; on SQLite the warehouse file, the OS user ID deciding.

    >>> with session(city) as s:
    ...     s.caller.who, sorted(s.caller.may)
    ('wang', ['analyst'])
    """
    policy = load_share_policy(city)
    if export:  # whole views: a longer limit than an ad-hoc query's
        policy = policy.model_copy(update={"query_timeout_s": policy.export_timeout_s})
    url, source = os.environ.get(ANALYST_URL_ENV, "").strip(), ANALYST_URL_ENV
    if not url:
        url, source = warehouse_url(city), WAREHOUSE_ENV
    if sa.make_url(url).get_backend_name() == "sqlite" and source == WAREHOUSE_ENV:
        base = engine_for(url)
    else:
        base = _personal_engine(url, policy, source)
    try:
        engine = base.execution_options(
            govmdm_roles=policy.roles,
            govmdm_timeout_s=policy.query_timeout_s,
            govmdm_source=source,
        )
        caller = caller_of(engine)
        yield Session(engine.execution_options(govmdm_caller=caller), caller, policy)
    finally:
        base.dispose()


def _personal_engine(url: str, policy: SharePolicy, source: str) -> sa.Engine:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise AccessSetupError(
            f"{source} is not a database URL. Fix: postgresql+psycopg://<you>@<host>/<warehouse>"
        ) from None
    if parsed.get_backend_name() != "postgresql":
        return sa.create_engine(parsed)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    ms = max(1, int(policy.query_timeout_s * 1000))
    # Session defaults; each read sets its own again inside its transaction. A client that dies
    # mid-query is noticed within a second and its backend cancelled.
    options = (
        f"-c statement_timeout={ms} -c lock_timeout={ms} "
        f"-c idle_in_transaction_session_timeout={max(ms, 60_000)} "
        "-c client_connection_check_interval=1000"
    )
    given = parsed.query.get("options")
    if given:
        options = f"{given if isinstance(given, str) else ' '.join(given)} {options}"
    parsed = parsed.difference_update_query(["options"])
    return sa.create_engine(parsed, connect_args={"options": options, "application_name": "govmdm"})


def caller_of(engine: sa.Engine) -> Caller:
    """Who ``engine`` logs in as; :class:`AccessDenied` for a login above every govmdm role."""
    cached = engine.get_execution_options().get("govmdm_caller")
    if isinstance(cached, Caller):
        return cached
    if dialect_of(engine) == "sqlite":
        return _sqlite_caller(engine)
    return _postgres_caller(engine)


def _postgres_caller(engine: sa.Engine) -> Caller:
    roles: DbRoles = engine.get_execution_options().get("govmdm_roles") or DbRoles()
    tables = [*protected(), *(v.name for v in VIEWS)]
    query = sa.text(
        "WITH reach AS (SELECT r.oid, r.rolname, r.rolsuper, r.rolcreaterole, r.rolbypassrls "
        "  FROM pg_roles r WHERE pg_has_role(session_user, r.oid, 'MEMBER')), "
        "rel AS (SELECT c.oid, c.relname, c.relowner FROM pg_class c "
        "  WHERE c.oid IN (SELECT to_regclass(x) FROM unnest(CAST(:tables AS text[])) AS x)) "
        "SELECT session_user::text AS login, "
        " ARRAY(SELECT rolname::text FROM reach WHERE rolsuper ORDER BY 1) AS supers, "
        " ARRAY(SELECT rolname::text FROM reach WHERE rolcreaterole OR rolbypassrls"
        "       OR rolname = ANY(CAST(:above AS text[])) ORDER BY 1) AS powers, "
        " ARRAY(SELECT relname::text FROM rel WHERE pg_has_role(session_user, relowner, 'MEMBER')"
        "       OR EXISTS (SELECT FROM reach WHERE has_table_privilege(reach.oid, rel.oid,"
        "                  'INSERT, UPDATE, DELETE, TRUNCATE')) ORDER BY 1) AS writes, "
        " to_regclass(:masked) IS NOT NULL AS installed, "
        " EXISTS (SELECT FROM reach WHERE has_table_privilege(reach.oid,"
        "         to_regclass(:masked), 'SELECT')) AS analyst, "
        " EXISTS (SELECT FROM reach WHERE has_table_privilege(reach.oid,"
        "         to_regclass(:full), 'SELECT')) AS privileged, "
        " EXISTS (SELECT FROM reach WHERE has_function_privilege(reach.oid,"
        "         to_regprocedure(:decide), 'EXECUTE')) AS steward"
    )
    with engine.connect() as conn:
        row = conn.execute(
            query,
            {
                "tables": tables,
                "above": list(_ABOVE),
                "masked": VIEWS[0].name,
                "full": VIEWS[0].full_name,
                "decide": f"{DECIDE_FUNCTION}(text, text, text, text)",
            },
        ).one()
    login = str(row.login)
    if row.supers or row.powers or row.writes:
        if row.supers:
            what = f"is or can become the superuser {row.supers[0]}"
        elif row.powers:
            what = (
                f"can become {', '.join(row.powers)} (CREATEROLE, BYPASSRLS, server files or "
                "writing all data)"
            )
        else:
            what = f"owns or may write {', '.join(row.writes)}"
        source = engine.get_execution_options().get("govmdm_source", "the connection")
        raise AccessDenied(
            f"{source} logs in as {login!r}, which {what}: a query could escape to that, so "
            "analysts' commands refuse it (the warehouse owner's login is for the pipeline). "
            f"Fix: set {ANALYST_URL_ENV} to your own login, a member of {roles.analyst} (or "
            f"{roles.privileged} / {roles.steward}) only; a DBA creates it once: "
            f"{login_sql('<you>', roles.analyst)}"
        )
    if not row.installed:
        raise AccessSetupError(
            "the analyst views are not installed in this warehouse. Fix: the warehouse owner "
            "runs `govmdm views install` (every publish does), or a DBA the SQL of "
            "`govmdm views install --sql`"
        )
    may: set[Capability] = set()
    if row.analyst:
        may.add("analyst")
    if row.privileged:
        may.add("privileged")
    if row.steward:
        may.add("steward")
    boundary = f"PostgreSQL login {login}: the database's grants decide what it may read"
    return Caller(login, "postgresql", frozenset(may), boundary)


def _sqlite_caller(engine: sa.Engine) -> Caller:
    import stat

    path = Path(sqlite_path(engine))
    st = path.stat()
    uid = os.geteuid()
    owner = _account(st.st_uid)
    boundary = (
        f"On SQLite the file's permissions are the only boundary ({path}: owner {owner}, "
        f"{stat.filemode(st.st_mode)}): whoever can read it reads every table in clear, "
        "whatever govmdm shows; govmdm treats its owner as privileged and steward and everyone "
        "else as an analyst. Roles the database enforces need PostgreSQL"
    )
    full = uid in (st.st_uid, 0)
    may: frozenset[Capability] = frozenset(
        ("analyst", "privileged", "steward") if full else ("analyst",)
    )
    return Caller(audit.os_user(), "sqlite", may, boundary)


def _account(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


def resolve_role(city: CityConfig, privileged: bool, *, action: str = "query") -> Role:
    """``privileged`` if asked for and the caller holds it (PostgreSQL: their login is in the
    privileged role; SQLite: they own the warehouse file), else ``analyst``; a refusal is
    audited. Nothing the caller sets in the environment or a config file counts."""
    if not privileged:
        return "analyst"
    with session(city) as s:
        return s.role(True, action=action)


def boundary_note(city: CityConfig) -> str | None:
    """On SQLite, the plain sentence that file permissions are the only boundary; else None."""
    if os.environ.get(ANALYST_URL_ENV, "").strip():
        return None
    if sa.make_url(warehouse_url(city)).get_backend_name() != "sqlite":
        return None
    with session(city) as s:
        return s.caller.boundary


def sqlite_path(engine: sa.Engine) -> str:
    """The resolved path of a SQLite warehouse file (not ``:memory:``)."""
    path = engine.url.database
    if not path or path == ":memory:":
        raise AccessSetupError("govmdm query needs a SQLite warehouse file, not :memory:")
    return str(Path(path).resolve())
