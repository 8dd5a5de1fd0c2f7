"""``govmdm explain``: why a master entity is what it is.

For a master ID, or any of its source rows, it shows the golden record with each attribute's
source (department, source key, updated at, and the survivorship rule that chose it), the member
rows, and every link that holds them together: the deterministic rule, or the match probability
with the per-field match weights behind it. ID history, conflicts and open review pairs follow.

>>> ex = explain(city, "gongan:RK3501000204182001")
>>> ex.master_id, ex.entity
('P0000000001', 'person')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from etl.config import CityConfig
from master_data.compare import features_for
from master_data.deterministic import RULES
from master_data.model import FellegiSunter
from master_data.night_state import read_state, state_file
from master_data.published import published_night, warehouse
from master_data.records import RECORD, record_id
from master_data.survivorship import ATTRIBUTES
from master_data.tf import u_column
from store.tables import (
    conflict_table,
    crosswalk_table,
    enterprise_table,
    id_event_table,
    person_table,
    provenance_table,
    review_queue_table,
)

_MASTER_ID = re.compile(r"^[PE]\d{10}$")
_IDENTIFYING = {  # the member columns between the name and the address
    "person": ["id_number", "sex", "birth_date", "phone"],
    "enterprise": ["uscc", "reg_no", "org_code", "legal_rep_name"],
}
MEMBER_COLUMNS = {
    entity: ["record", "link_rule", "name", *columns, "address", "updated_at"]
    for entity, columns in _IDENTIFYING.items()
}


class ExplainError(LookupError):
    """The reference names nothing published, or names several things."""


@dataclass
class Explanation:
    """Everything ``govmdm explain`` prints, as plain data."""

    master_id: str
    entity: str
    run_id: str
    attributes: list[dict[str, str | None]] = field(default_factory=list)
    member_columns: list[str] = field(default_factory=list)
    members: list[dict[str, str | None]] = field(default_factory=list)
    links: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def explain(city: CityConfig, ref: str) -> Explanation:
    """Explain a master ID, or the master entity of a source row (``department:key`` or
    ``department/table/key``)."""
    night = published_night(city)
    with warehouse(city) as engine, engine.connect() as conn:
        master_id, entity = _resolve(conn, ref.strip())
        golden_table = person_table if entity == "person" else enterprise_table
        golden = conn.execute(
            sa.select(golden_table).where(golden_table.c.master_id == master_id)
        ).first()
        if golden is None:
            raise ExplainError(f"{master_id} is not in the published {golden_table.name}")
        prov = _rows(conn, provenance_table, entity=entity, master_id=master_id)
        members = _rows(conn, crosswalk_table, entity=entity, master_id=master_id)
        events = _rows(conn, id_event_table, entity=entity, master_id=master_id)
        old = conn.execute(
            sa.select(id_event_table).where(
                id_event_table.c.entity == entity,
                id_event_table.c.old_ids.contains(master_id),
                id_event_table.c.master_id != master_id,
            )
        ).all()
        conflicts = _rows(
            conn, conflict_table, entity=entity, master_id=master_id, run_id=night.run_id
        )
        reviews = conn.execute(
            sa.select(review_queue_table).where(
                review_queue_table.c.entity == entity,
                sa.or_(
                    review_queue_table.c.left_master_id == master_id,
                    review_queue_table.c.right_master_id == master_id,
                ),
            )
        ).all()
    out = Explanation(master_id, entity, night.run_id)
    g = golden._mapping
    by_attr = {r["attribute"]: r for r in prov}
    for attribute, columns in ATTRIBUTES[entity].items():
        p = by_attr.get(attribute)
        shown = g["address"] if attribute == "address" else g[columns[0]]
        out.attributes.append(
            {
                "attribute": attribute,
                "value": _text(shown),
                "department": p["department"] if p else None,
                "source_key": p["source_key"] if p else None,
                "updated": _text(p["source_updated_at"]) if p else None,
                "rule": p["rule"] if p else None,
                "agree": f"{p['agreeing']}/{p['candidates']}" if p else None,
            }
        )
    ids = [record_id(m["department"], m["source_table"], m["source_key"]) for m in members]
    rule_of = {i: m["link_rule"] for i, m in zip(ids, members, strict=True)}
    state = night.state_dir / entity
    records = _state_rows(state, ids)
    out.member_columns = MEMBER_COLUMNS[entity]
    for rid in ids:
        row = records.get(rid, {})
        out.members.append(
            {c: _text(row.get(c)) for c in out.member_columns if c not in ("record", "link_rule")}
            | {"record": rid, "link_rule": rule_of[rid]}
        )
    out.links = _links(state, entity, set(ids))
    for e in events:
        out.notes.append(f"ID {e['event']} in night {e['run_id']}: {e['reason']} ({e['old_ids']})")
    for o in old:
        out.notes.append(f"night {o.run_id}: {o.old_ids} {o.event} → {o.master_id}: {o.reason}")
    for c in conflicts:
        out.notes.append(
            f"conflict: {c['department']} says {c['attribute']} = {c['value']!r}, authority "
            f"{c['authority_department']} says {c['authority_value']!r} ({c['source_key']})"
        )
    for r in reviews:
        out.notes.append(
            f"open review: {r.left_record} ~ {r.right_record} (p = {r.probability:.3f}): "
            f"`govmdm review decide {r.left_record} {r.right_record} link|apart`"
        )
    return out


def _resolve(conn: sa.Connection, ref: str) -> tuple[str, str]:
    c = crosswalk_table.c
    if _MASTER_ID.match(ref):
        entity = "person" if ref.startswith("P") else "enterprise"
        return ref, entity
    if "/" in ref:
        department, _, rest = ref.partition("/")
        table, _, key = rest.partition("/")
        where = [c.department == department, c.source_table == table, c.source_key == key]
    elif ":" in ref:
        department, _, key = ref.partition(":")
        where = [c.department == department, c.source_key == key]
    else:
        raise ExplainError(
            f"{ref!r} is neither a master ID (P0000000001, E0000000001) nor a source row "
            "(department:key or department/table/key)"
        )
    rows = conn.execute(sa.select(c.master_id, c.entity, c.source_table).where(*where)).all()
    if not rows:
        raise ExplainError(f"no published source row {ref!r}")
    if len(rows) > 1:
        tables = ", ".join(sorted(r.source_table for r in rows))
        raise ExplainError(
            f"{ref!r} is a key in several tables ({tables}): use department/table/key"
        )
    return rows[0].master_id, rows[0].entity


def _rows(conn: sa.Connection, table: sa.Table, **where: Any) -> list[dict[str, Any]]:
    query = sa.select(table).where(*[table.c[k] == v for k, v in where.items()])
    return [dict(r._mapping) for r in conn.execute(query)]


def _state_rows(state: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    if not state_file(state, "records").is_file():
        return {}
    table = read_state(state, "records")
    table = table.filter(pc.is_in(table[RECORD], value_set=_arr(set(ids))))
    return {r[RECORD]: r for r in table.to_pylist()}


def _links(state: Any, entity: str, members: set[str]) -> list[dict[str, str]]:
    """The accepted links among ``members``: rule, or probability and field weights."""
    if not state_file(state, "edges").is_file() or len(members) < 2:
        return []
    edges = read_state(state, "edges")
    keep = pc.and_(
        pc.is_in(edges["left"], value_set=_arr(members)),
        pc.is_in(edges["right"], value_set=_arr(members)),
    )
    frame = edges.filter(keep).to_pandas()
    model = FellegiSunter.from_json((state / "model.json").read_text())
    labels = {f.label: list(f.levels) for f in features_for(entity)}
    out = []
    for row in frame.sort_values(["accepted", "probability"], ascending=False).to_dict("records"):
        vector = {f: int(row[f]) for f in model.features}
        tf_u = {f: float(row[u_column(f)]) for f in model.tf if u_column(f) in row}
        weights = ", ".join(
            f"{f}={label or level} {w:+.1f}"
            for f, level, label, w in model.explain(vector, labels, tf_u)
        )
        rule = row["rule"]
        why = f"rule: {RULES.get(rule, rule)}" if isinstance(rule, str) else ""
        why += f"{'; ' if why else ''}p = {row['probability']:.4f}"
        if not row["accepted"]:
            why += " (not used: a stronger link joined them, or below the auto-link threshold)"
        out.append({"left": row["left"], "right": row["right"], "why": why, "weights": weights})
    return out


def _arr(values: set[str]) -> pa.Array:
    return pa.array(sorted(values), pa.string())


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return str(value)
