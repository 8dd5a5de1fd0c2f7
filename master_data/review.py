"""The review queue and reviewers' decisions.

A pair whose match probability falls between ``review`` and ``auto_link`` and which ended in two
entities is queued. A reviewer decides ``link`` (the two rows are one entity) or ``apart`` (they
are not); the decision is stored in ``mdm_review_decision`` and overrides the model on every
later night — a ``link`` merges the two rows' entities, an ``apart`` forbids any chain of links
from joining them. Re-deciding a pair replaces the earlier decision.

>>> decide(city, "weijian/PATIENT_INFO/42", "gongan/t_rk_jbxx/RK1", "link", by="王芳")
'person'
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from etl import audit
from etl.config import CityConfig
from etl.warehouse import crosswalk_table, read, review_decision_table, review_queue_table
from master_data.published import warehouse

DECISIONS = ("link", "apart")


class ReviewError(ValueError):
    """A decision that cannot be recorded, with what to do instead."""


def queue(city: CityConfig, *, entity: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The open queue of the last published night, most probable first."""
    with warehouse(city) as engine:
        rows = read(engine, review_queue_table, **({"entity": entity} if entity else {}))
    rows = rows.sort_values(["probability", "left_record"], ascending=[False, True]).head(limit)
    out = []
    for r in rows.to_dict("records"):
        weights = json.loads(r["weights"])
        r["weights_text"] = ", ".join(f"{f} {w['weight']:+.1f}" for f, w in sorted(weights.items()))
        out.append(r)
    return out


def decide(
    city: CityConfig,
    left: str,
    right: str,
    decision: str,
    *,
    by: str,
    note: str | None = None,
) -> str:
    """Record ``decision`` on the pair; returns its entity type. Either row order works."""
    if decision not in DECISIONS:
        raise ReviewError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    if not by.strip():
        raise ReviewError("say who decides: --by NAME (it is recorded)")
    if left == right:
        raise ReviewError("a row cannot be linked to or kept apart from itself")
    a, b = sorted((left, right))
    with warehouse(city) as engine:
        entity = _entity_of(engine, a, b)
        t = review_decision_table.c
        with engine.begin() as conn:
            conn.execute(
                review_decision_table.delete().where(
                    t.entity == entity, t.left_record == a, t.right_record == b
                )
            )
            conn.execute(
                review_decision_table.insert().values(
                    entity=entity,
                    left_record=a,
                    right_record=b,
                    decision=decision,
                    decided_by=by.strip(),
                    decided_at=dt.datetime.now(dt.UTC),
                    note=note,
                )
            )
            audit.record(  # commits, or rolls back, with the decision
                conn, "review_decide", f"{entity} {a} ~ {b}", role="platform",
                detail={"decision": decision, "decided_by": by.strip(), "note": note},
            )  # fmt: skip
    return entity


def _entity_of(engine: sa.Engine, a: str, b: str) -> str:
    """Both rows' entity type, from the published crosswalk."""
    c = crosswalk_table.c
    found: dict[str, str] = {}
    with engine.connect() as conn:
        for rec in (a, b):
            department, _, rest = rec.partition("/")
            table, _, key = rest.partition("/")
            row = conn.execute(
                sa.select(c.entity).where(
                    c.department == department, c.source_table == table, c.source_key == key
                )
            ).first()
            if row is None:
                raise ReviewError(
                    f"no published source row {rec!r}. Fix: write it as department/table/key, as "
                    "`govmdm review list` shows it"
                )
            found[rec] = row.entity
    if found[a] != found[b]:
        raise ReviewError(f"{a} is a {found[a]} and {b} a {found[b]}: they cannot be linked")
    return found[a]
