"""Installing the analyst views: the masked and full views, the ``catalog`` table and, on
PostgreSQL, the roles and their grants — after every publish (:func:`after_publish`) and by
``govmdm views install``.

**Roles.** On PostgreSQL :func:`install_views` creates the roles ``govmdm_analyst`` (SELECT on
the masked views and ``catalog`` only), ``govmdm_privileged`` (also everything published and the
whole audit log, never a write) and ``govmdm_steward`` (the review queue, and decisions through
one function); names from ``roles:`` in ``config/catalog.yaml``. Nobody is made a member of
them by govmdm: a DBA gives each person a login in one of them (``CREATE ROLE wang LOGIN ... IN
ROLE govmdm_analyst``).

>>> install_views(engine, city).views[:2]
['v_person', 'v_person_full']
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from access import audit
from access.catalog import write_catalog
from access.errors import first_line
from access.policy import (
    FIND_PERSON_FUNCTION,
    DbRoles,
    dba_sql,
    ident,
    load_share_policy,
    roles_sql,
)
from access.release import ANALYST_RELATIONS, VIEWS, protected, release_of
from access.review import decide_function_sql
from access.viewsql import Dialect, SqlMask, dialect_of, view_select
from etl.config import CityConfig
from fields.masking import policy
from store.tables import metadata, person_table, review_queue_table, run_table

log = logging.getLogger(__name__)


def grants_sql(roles: DbRoles | None = None, schema: str = "public") -> list[str]:
    """Privileges. The analyst role reads the masked views and the catalog; the privileged role
    also everything published and the whole audit log, never a write; the steward role reads
    the review queue and decides through ``govmdm_review_decide``. All three write the audit
    log only through its functions and read only their own rows of it (``v_audit_log``)."""
    r = roles or DbRoles()
    a, p, s = (ident(n) for n in r.names)
    never = ", ".join(protected())
    masked = ", ".join(sorted(ANALYST_RELATIONS))
    return [
        f"GRANT USAGE ON SCHEMA {ident(schema)} TO {a}, {p}, {s}",
        f"REVOKE CREATE ON SCHEMA {ident(schema)} FROM PUBLIC",
        f"REVOKE ALL ON TABLE {never} FROM PUBLIC",
        f"REVOKE ALL ON TABLE {never} FROM {a}, {p}, {s}",
        f"REVOKE ALL ON TABLE {masked} FROM {a}, {p}, {s}",
        f"GRANT SELECT ON TABLE {masked} TO {a}, {p}",
        f"GRANT SELECT ON TABLE {never} TO {p}",
        # the export's manifest names the night it read: run IDs and counts, nothing personal
        f"GRANT SELECT ON TABLE {run_table.name} TO {a}",
        f"GRANT SELECT ON TABLE {review_queue_table.name} TO {s}",
        *audit.functions_sql(schema, r.names),
        *find_person_sql(schema, [r.analyst, r.privileged]),
        *decide_function_sql(schema, r.steward),
    ]


def find_person_sql(schema: str, grantees: list[str]) -> list[str]:
    """PostgreSQL: ``govmdm_find_person``, the only way an analyst's login turns an ID number,
    or a name and a birth date, into master IDs. It answers one key per running ``lookup``
    audit entry of the caller, and writes the (masked) key into that entry first."""
    s = ident(schema)
    sql = SqlMask("postgresql")
    # the key as the audit log keeps it, masked as lookup shows it
    shown_id = sql.mask(policy("person", "id_number").mask, "p_id_number")
    shown_name = sql.mask(policy("person", "name").mask, "p_name")
    fixed = "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
    fn = f"{s}.{FIND_PERSON_FUNCTION}(bigint, text, text, date)"
    body = (
        f"CREATE OR REPLACE FUNCTION {s}.{FIND_PERSON_FUNCTION}(p_audit_id bigint, "
        f"p_id_number text, p_name text, p_birth_date date) RETURNS SETOF text {fixed} AS $fn$\n"
        "DECLARE shown text;\n"
        "BEGIN\n"
        "  IF p_id_number IS NOT NULL THEN\n"
        f"    shown := 'id_number ' || {shown_id};\n"
        "  ELSIF p_name IS NOT NULL AND p_birth_date IS NOT NULL THEN\n"
        f"    shown := 'name ' || {shown_name} || ' ' || p_birth_date::text;\n"
        "  ELSE\n"
        "    RAISE EXCEPTION 'give an ID number, or a name with a birth date';\n"
        "  END IF;\n"
        f"  UPDATE {s}.audit_log SET target = shown,\n"
        "    detail = (detail::jsonb || '{\"resolved\": true}'::jsonb)::text\n"
        "  WHERE id = p_audit_id AND who = session_user AND action = 'lookup'\n"
        "    AND outcome = 'running'\n"
        "    AND NOT coalesce((detail::jsonb ->> 'resolved')::boolean, false);\n"
        "  IF NOT FOUND THEN\n"
        "    RAISE EXCEPTION 'a lookup answers one key, under its own running audit entry "
        "(govmdm lookup writes it)' USING ERRCODE = 'insufficient_privilege';\n"
        "  END IF;\n"
        "  IF p_id_number IS NOT NULL THEN\n"
        f"    RETURN QUERY SELECT master_id::text FROM {s}.{person_table.name}\n"
        "      WHERE id_number = p_id_number ORDER BY 1;\n"
        "  ELSE\n"
        f"    RETURN QUERY SELECT master_id::text FROM {s}.{person_table.name}\n"
        "      WHERE name = p_name AND birth_date = p_birth_date ORDER BY 1;\n"
        "  END IF;\n"
        "END $fn$"
    )
    out = [body, f"REVOKE ALL ON FUNCTION {fn} FROM PUBLIC"]
    if grantees:
        out.append(f"GRANT EXECUTE ON FUNCTION {fn} TO {', '.join(map(ident, grantees))}")
    return out


@dataclass
class InstallReport:
    """What :func:`install_views` did."""

    backend: str
    views: list[str] = field(default_factory=list)
    catalog_rows: int = 0
    roles: bool = False
    grants: bool = False
    warnings: list[str] = field(default_factory=list)


def install_views(engine: sa.Engine, city: CityConfig) -> InstallReport:
    """Create or replace the analyst views and the ``catalog`` table; on PostgreSQL also the
    roles and grants. Idempotent: run after every publish and by ``govmdm views install``.

    Without the right to create roles (CREATEROLE), the views and grants are still installed
    when the roles exist already, and a warning says what a DBA must run once.
    """
    dialect = dialect_of(engine)
    report = InstallReport(backend=dialect)
    metadata.create_all(engine, checkfirst=True)
    audit.ensure_table(engine)
    roles = load_share_policy(city).roles
    if dialect == "postgresql":
        report.roles = _install_roles(engine, report, roles)
    release = release_of(city)
    with engine.begin() as conn:
        for spec in VIEWS:
            for name, masked in ((spec.name, True), (spec.full_name, False)):
                select = view_select(spec, dialect, masked=masked, release=release)
                _create_view(conn, dialect, name, select)
                report.views.append(name)
        report.catalog_rows = write_catalog(conn, city)
        if dialect == "postgresql" and report.roles:
            schema = str(conn.exec_driver_sql("SELECT current_schema()").scalar())
            for stmt in grants_sql(roles, schema):
                conn.exec_driver_sql(stmt.replace("%", "%%"))  # the driver's paramstyle
            report.grants = True
    return report


def _install_roles(engine: sa.Engine, report: InstallReport, roles: DbRoles) -> bool:
    """Create the roles; True if all three exist."""
    for stmt in roles_sql(roles):
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(stmt)
        except sa.exc.DBAPIError as exc:
            report.warnings.append(
                f"{first_line(exc.orig or exc)}. Fix: a DBA runs once, as a role with "
                f"CREATEROLE: {dba_sql(roles)}"
            )
    with engine.connect() as conn:
        existing = set(
            conn.execute(
                sa.text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:names)"),
                {"names": roles.names},
            ).scalars()
        )
    return existing == set(roles.names)


def _create_view(conn: sa.Connection, dialect: Dialect, name: str, select: str) -> None:
    if dialect == "sqlite":
        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE VIEW {name} AS {select}")
        return
    savepoint = conn.begin_nested()
    try:
        conn.exec_driver_sql(f"CREATE OR REPLACE VIEW {name} AS {select}")
        savepoint.commit()
    except sa.exc.DBAPIError:  # the columns changed: replace cannot drop or retype a column
        savepoint.rollback()
        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE VIEW {name} AS {select}")


def after_publish(
    engine: sa.Engine, city: CityConfig, run_id: str, summary: Mapping[str, Any]
) -> InstallReport | None:
    """The publish hook: (re)install views, grants and catalog, and audit the night.

    Never raises: the night is published already; a failure here is logged as a warning and
    in the audit row, and ``govmdm views install`` repairs it.
    """
    report: InstallReport | None = None
    error: str | None = None
    try:
        report = install_views(engine, city)
        for warning in report.warnings:
            log.warning("analyst views: %s", warning)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "night %s is published, but the analyst views were not installed: %s. "
            "Fix: `govmdm views install`",
            run_id,
            error,
        )
    entities = summary.get("entities", {})
    masters = {e: s.get("masters") for e, s in entities.items() if isinstance(s, Mapping)}
    with contextlib.suppress(Exception):  # the audit must not fail a published night either
        audit.record(
            engine,
            "publish",
            f"night {run_id}",
            role="platform",
            row_count=sum(v for v in masters.values() if isinstance(v, int)),
            outcome="ok" if error is None else "failed",
            detail={
                "mode": summary.get("mode"),
                "masters": masters,
                "views": None if report is None else len(report.views),
                "grants": None if report is None else report.grants,
                "warnings": [] if report is None else report.warnings,
                "error": error,
            },
        )
    return report
