"""``govmdm lookup``: one person or enterprise, where every attribute came from, and who is
related to it — masked unless the caller is privileged.

Keys: an ID number (15 or 18 digits, normalized the way the pipeline does, so ``x`` and a
15-digit number find the 18-digit golden record), a name with a birth date (namesakes all come
back), or a credit code (a legacy 15-digit 注册号 or 9-character organization code works too).
The key is resolved against the golden tables; what is shown is read from the analyst views
(``v_person``, …) or, for a privileged caller, the full views: an analyst sees what the
de-identified views release (name, ID number and phone suppressed, birth date, residence and
the like generalised), and nothing of a person known only to sources that are not shared.
Every lookup is audited with the master IDs it returned, never the key in clear.

>>> found = lookup(city, id_number="350121197403155015")
>>> found.matches[0].record["name"], found.matches[0].record["birth_date"]
('****', '1970-1974')
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from access import audit
from access.errors import AccessError
from access.policy import Role
from access.query import require_views
from access.release import VIEW_BY_NAME
from access.session import session
from etl.config import CityConfig
from fields import normalize as nz
from fields.masking import mask_field, scrub
from store.tables import person_table


class LookupError_(AccessError):  # the builtin LookupError is a different thing
    """A key that cannot be looked up, with why (in Chinese, as the normalizer says it)."""


@dataclass
class Match:
    """One master entity found: its golden record (as the role sees it), each attribute's
    source, its member source rows and related entities."""

    entity: str
    master_id: str
    record: dict[str, Any]
    provenance: list[dict[str, Any]] = field(default_factory=list)
    members: list[dict[str, Any]] = field(default_factory=list)
    related: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class LookupResult:
    """Everything ``govmdm lookup`` prints, as plain data."""

    key_kind: str
    key_shown: str
    role: Role
    matches: list[Match] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (dates as ISO text)."""
        return _jsonable(
            {
                "key": {"kind": self.key_kind, "value": self.key_shown},
                "role": self.role,
                "matches": [m.__dict__ for m in self.matches],
                "notes": self.notes,
            }
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _refuse(what: str, reasons: Sequence[str]) -> LookupError_:
    why = "；".join(nz.REASONS.get(r, r) for r in reasons) or "无法识别"
    return LookupError_(f"{what}: {why}")


def lookup(
    city: CityConfig,
    *,
    id_number: str | None = None,
    name: str | None = None,
    birth_date: str | None = None,
    credit_code: str | None = None,
    privileged: bool = False,
) -> LookupResult:
    """Look one entity up by exactly one key: ``id_number``, ``name`` + ``birth_date``, or
    ``credit_code``. Audited (refusals too)."""
    keys = [
        k
        for k, v in (
            ("id_number", id_number),
            ("name", name or birth_date),
            ("credit_code", credit_code),
        )
        if v
    ]
    if len(keys) != 1:
        raise LookupError_(
            "give exactly one key: --id-number, --name with --birth-date, or --credit-code"
        )
    target = _key_target(keys[0], id_number, name, credit_code)
    with session(city) as own:
        role = own.role(privileged, action="lookup")
        engine = own.engine
        entry = audit.begin(engine, "lookup", target, role=role)  # before anything is read
        try:
            require_views(engine)
            result, ids = _resolve(engine, entry, id_number, name, birth_date, credit_code, role)
            for entity, master_id in ids:
                match = _match(engine, city, entity, master_id, role)
                if match is not None:
                    result.matches.append(match)
            if ids and not result.matches:
                # known only from sources shared with nobody: to the analyst, not there at all
                result.notes.append("基础库中没有匹配的记录")
        except AccessError as exc:
            audit.finish(engine, entry, outcome="refused", detail={"reason": str(exc)})
            raise
        except BaseException as exc:
            with contextlib.suppress(Exception):
                audit.finish(engine, entry, outcome="failed", detail={"reason": type(exc).__name__})
            raise
        audit.finish(
            engine,
            entry,
            row_count=len(result.matches),
            detail={"master_ids": [m.master_id for m in result.matches]},
        )
    if role == "analyst":
        for m in result.matches:
            _scrub_match(m)
    return result


def _shown_id(value: str) -> str:
    """An ID number as a key is shown to an analyst and in the audit log."""
    return mask_field("person", "id_number", value) or ""


def _shown_name(value: str) -> str:
    """A name as a key is shown to an analyst and in the audit log."""
    return mask_field("person", "name", value) or ""


def _key_target(kind: str, id_number: str | None, name: str | None, code: str | None) -> str:
    if kind == "id_number":
        return f"id_number {_shown_id((id_number or '').strip())}"
    if kind == "name":
        return f"name {_shown_name((name or '').strip())}"
    return f"credit_code {(code or '').strip()}"


def _resolve(
    engine: sa.Engine,
    entry: int,
    id_number: str | None,
    name: str | None,
    birth_date: str | None,
    credit_code: str | None,
    role: Role,
) -> tuple[LookupResult, list[tuple[str, str]]]:
    e = sa.table(VIEW_BY_NAME["v_enterprise"].name, *(sa.column(c) for c in _FIRM_KEYS)).c
    if id_number:
        r = nz.id_number(id_number)
        if r.value is None:
            raise _refuse(f"not a valid ID number ({_shown_id(id_number.strip())})", r.reasons)
        shown = r.value if role == "privileged" else _shown_id(r.value)
        result = LookupResult("id_number", shown, role)
        if "id_upgraded_15_to_18" in r.reasons:
            result.notes.append(f"15位身份证号已升级为18位：{shown}")
        query = _find_person(engine, entry, id_number=r.value)
        entity = "person"
    elif name or birth_date:
        if not (name and birth_date):
            raise LookupError_("a name lookup needs both --name and --birth-date")
        n = nz.person_name(name)
        if n.value is None:
            raise _refuse("not a usable name", n.reasons)
        d = nz.date(birth_date)
        if d.value is None:
            raise _refuse(f"not a date: {birth_date!r}", d.reasons)
        shown_name = n.value if role == "privileged" else _shown_name(n.value)
        result = LookupResult("name_birth_date", f"{shown_name} {d.value.isoformat()}", role)
        query = _find_person(engine, entry, name=n.value, birth_date=d.value)
        entity = "person"
    else:
        code = (credit_code or "").strip()
        u = nz.uscc(code)
        if u.value is not None:
            result = LookupResult("credit_code", u.value, role)
            query = sa.select(e.master_id).where(e.uscc == u.value)  # in clear in the view
        else:
            legacy = nz.legacy_code(code)
            kind = legacy.extra.get("kind")
            if legacy.value is None or kind not in ("reg_no", "org_code"):
                raise _refuse(
                    f"not a credit code, 注册号 or organization code: {code!r}", u.reasons
                )
            result = LookupResult(str(kind), legacy.value, role)
            query = sa.select(e.master_id).where(e[str(kind)] == legacy.value)
        entity = "enterprise"
    with engine.begin() as conn:
        ids = sorted(conn.execute(query).scalars())
    if not ids:
        result.notes.append("基础库中没有匹配的记录")
    return result, [(entity, i) for i in ids]


_FIRM_KEYS = ("master_id", "uscc", "reg_no", "org_code")


def _find_person(
    engine: sa.Engine,
    entry: int,
    *,
    id_number: str | None = None,
    name: str | None = None,
    birth_date: dt.date | None = None,
) -> sa.Executable:
    """The master IDs of a person key. On PostgreSQL through ``govmdm_find_person``, which an
    analyst's login may call once per running lookup entry of their own (the view masks the
    key); on SQLite from the table (the file's permissions are the boundary there)."""
    if engine.dialect.name == "postgresql":
        found = (
            sa.func.govmdm_find_person(entry, id_number, name, birth_date)
            .table_valued("master_id")
            .render_derived()
        )
        return sa.select(found.c.master_id)
    p = person_table.c
    if id_number is not None:
        return sa.select(p.master_id).where(p.id_number == id_number)
    return sa.select(p.master_id).where(p.name == name, p.birth_date == birth_date)


def _rows(conn: sa.Connection, sql: str, **params: Any) -> list[dict[str, Any]]:
    stmt = sa.text(sql)
    for k, v in params.items():
        if isinstance(v, list | tuple):
            stmt = stmt.bindparams(sa.bindparam(k, expanding=True))
    return [dict(r._mapping) for r in conn.execute(stmt, params)]


def _match(
    engine: sa.Engine, city: CityConfig, entity: str, master_id: str, role: Role
) -> Match | None:
    full = "_full" if role == "privileged" else ""
    golden = f"v_{entity}{full}"
    names = {d.code: d.name for d in city.departments}
    with engine.connect() as conn:
        records = _rows(conn, f"SELECT * FROM {golden} WHERE master_id = :m", m=master_id)
        if not records:  # the analyst's view leaves out what no shared source holds
            return None
        record = records[0]
        provenance = _rows(
            conn,
            f"SELECT attribute, department, source_table, source_key, source_updated_at, rule, "
            f"agreeing, candidates FROM v_provenance{full} "
            "WHERE entity = :e AND master_id = :m ORDER BY attribute",
            e=entity,
            m=master_id,
        )
        members = _rows(
            conn,
            f"SELECT department, source_table, source_key, link_rule, link_probability, "
            f"first_run_id FROM v_crosswalk{full} WHERE entity = :e AND master_id = :m "
            "ORDER BY department, source_table, source_key",
            e=entity,
            m=master_id,
        )
        if entity == "person":
            related = _rows(
                conn,
                f"SELECT r.kind, r.enterprise_master_id AS master_id, g.name, g.uscc, g.status "
                f"FROM v_relationship{full} r LEFT JOIN v_enterprise{full} g "
                "ON g.master_id = r.enterprise_master_id WHERE r.person_master_id = :m "
                "ORDER BY r.kind, r.enterprise_master_id",
                m=master_id,
            )
        else:
            related = _rows(
                conn,
                f"SELECT r.kind, r.person_master_id AS master_id, g.name, g.id_number, g.status "
                f"FROM v_relationship{full} r LEFT JOIN v_person{full} g "
                "ON g.master_id = r.person_master_id WHERE r.enterprise_master_id = :m "
                "ORDER BY r.kind, r.person_master_id",
                m=master_id,
            )
    for p in provenance:
        p["department_name"] = names.get(p["department"], p["department"])
    for m in members:
        m["department_name"] = names.get(m["department"], m["department"])
    return Match(entity, master_id, record, provenance, members, related)


def _scrub_match(m: Match) -> None:
    m.record = {k: scrub(v)[0] for k, v in m.record.items()}
    for rows in (m.provenance, m.members, m.related):
        for row in rows:
            for k, v in row.items():
                row[k] = scrub(v)[0]
