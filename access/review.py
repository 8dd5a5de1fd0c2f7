"""The review queue and reviewers' decisions.

A pair whose match probability falls between ``review`` and ``auto_link`` and which ended in two
entities is queued. A reviewer decides ``link`` (the two rows are one entity) or ``apart`` (they
are not); the decision is stored in ``mdm_review_decision`` and overrides the model on every
later night — a ``link`` merges the two rows' entities, an ``apart`` forbids any chain of links
from joining them. Re-deciding a pair replaces the earlier decision.

Only a steward decides, and the decision is recorded under who they *are*, never a name they
type: on PostgreSQL a login in the steward role, through ``govmdm_review_decide`` (which takes
``decided_by`` from ``session_user`` and writes the audit row in the same transaction; the role
holds no write privilege on any table); on SQLite the warehouse file's owner, by OS user ID.

>>> decide(city, "weijian/PATIENT_INFO/42", "gongan/t_rk_jbxx/RK1", "link")
'person'
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from access import audit
from access.policy import DECIDE_FUNCTION
from access.session import session
from etl.config import CityConfig
from fields.masking import mask_record, mask_text
from store.tables import crosswalk_table, review_decision_table, review_queue_table
from store.warehouse import read

DECISIONS = ("link", "apart")


class ReviewError(ValueError):
    """A decision that cannot be recorded, with what to do instead."""


def queue(city: CityConfig, *, entity: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The open queue of the last published night, most probable first (stewards only), as a
    steward is shown it: record IDs whose keys are ID or mobile numbers masked
    (:func:`fields.masking.mask_record`). Audited: who listed which queue, and how many pairs
    they were shown."""
    with session(city) as s:
        s.require("steward", action="review_list", target="review queue")
        rows = read(s.engine, review_queue_table, **({"entity": entity} if entity else {}))
        rows = rows.sort_values(["probability", "left_record"], ascending=[False, True])
        rows = rows.head(limit)
        audit.record(
            s.engine,
            "review_list",
            f"review queue {entity or 'person, enterprise'}",
            role="steward",
            row_count=len(rows),
            detail={"limit": limit},
        )
    out = []
    for r in rows.to_dict("records"):
        weights = json.loads(r["weights"])
        r["weights_text"] = ", ".join(f"{f} {w['weight']:+.1f}" for f, w in sorted(weights.items()))
        r["left_record"] = mask_record(str(r["left_record"]))
        r["right_record"] = mask_record(str(r["right_record"]))
        out.append(r)
    return out


def decide(
    city: CityConfig,
    left: str,
    right: str,
    decision: str,
    *,
    by: str | None = None,
    note: str | None = None,
) -> str:
    """Record ``decision`` on the pair as the authenticated steward; returns its entity type.
    Either row order works. ``by``, if given, must name the caller (it is checked, not used)."""
    if decision not in DECISIONS:
        raise ReviewError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    if left == right:
        raise ReviewError("a row cannot be linked to or kept apart from itself")
    a, b = sorted((left, right))
    with session(city) as s:
        s.require("steward", action="review_decide", target=f"{a} ~ {b}")
        who = s.caller.who
        if by is not None and by.strip() != who:
            s.refuse(
                "review_decide",
                f"{a} ~ {b}",
                f"--by {by.strip()!r} is not you: decisions are recorded under the login that "
                f"makes them ({who!r}). Fix: leave out --by",
                role="steward",
            )
        if s.caller.backend == "postgresql":
            try:
                with s.engine.begin() as conn:
                    entity = conn.execute(
                        sa.text(f"SELECT {DECIDE_FUNCTION}(:a, :b, :decision, :note)"),
                        {"a": a, "b": b, "decision": decision, "note": note},
                    ).scalar()
            except sa.exc.DBAPIError as exc:
                raise ReviewError(_pg_reason(exc)) from None
            return str(entity)
        entity = _entity_of(s.engine, a, b)
        t = review_decision_table.c
        with s.engine.begin() as conn:
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
                    decided_by=who,
                    decided_at=dt.datetime.now(dt.UTC),
                    note=note,
                )
            )
            audit.record(  # commits, or rolls back, with the decision
                conn,
                "review_decide",
                f"{entity} {a} ~ {b}",
                role="steward",
                row_count=1,
                detail={"decision": decision, "decided_by": who, "note": note},
            )
    return entity


def _pg_reason(exc: sa.exc.DBAPIError) -> str:
    text = (str(exc.orig or exc).strip().splitlines() or ["the decision failed"])[0]
    if "no published source row" in text:
        text += ". Fix: write it as department/table/key, as `govmdm review list` shows it"
    return mask_text(text)


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


# Masks ID and mobile numbers in text inside PostgreSQL, as fields.masking.mask_text does.
def _sql_mask_text(c: str) -> str:
    ids = (
        f"regexp_replace({c}, '(?<![0-9A-Za-z])([0-9]{{6}})[0-9]{{8}}([0-9]{{3}}[0-9Xx])"
        "(?![0-9A-Za-z])', '\\1********\\2', 'g')"
    )
    return (
        f"regexp_replace({ids}, '(?<![0-9])(1[3-9][0-9])[0-9]{{4}}([0-9]{{4}})(?![0-9])', "
        "'\\1****\\2', 'g')"
    )


def decide_function_sql(schema: str, steward: str) -> list[str]:
    """PostgreSQL: ``govmdm_review_decide(left, right, decision, note)``, the steward role's
    only way to write a decision: it checks both rows are published and of one entity type,
    replaces the pair's decision with ``decided_by = session_user``, and writes the audit row
    in the same transaction. EXECUTE is granted to ``steward`` alone."""
    s = '"' + schema.replace('"', '""') + '"'
    q = '"' + steward.replace('"', '""') + '"'
    fn = f"{s}.{DECIDE_FUNCTION}(text, text, text, text)"
    decisions = ", ".join(f"'{d}'" for d in DECISIONS)
    target = f"ea || ' ' || {_sql_mask_text('a')} || ' ~ ' || {_sql_mask_text('b')}"
    body = (
        f"CREATE OR REPLACE FUNCTION {s}.{DECIDE_FUNCTION}(p_left text, p_right text, "
        "p_decision text, p_note text) RETURNS text LANGUAGE plpgsql SECURITY DEFINER "
        "SET search_path = pg_catalog, pg_temp AS $fn$\n"
        "DECLARE a text; b text; ea text; eb text; rec text; dept text; rest text; tbl text;\n"
        "  k text; found_entity text;\n"
        "BEGIN\n"
        f"  IF p_decision IS NULL OR p_decision NOT IN ({decisions}) THEN\n"
        "    RAISE EXCEPTION 'decision must be one of link, apart, not %', p_decision;\n"
        "  END IF;\n"
        "  IF p_left IS NULL OR p_right IS NULL OR p_left = p_right THEN\n"
        "    RAISE EXCEPTION 'a row cannot be linked to or kept apart from itself';\n"
        "  END IF;\n"
        '  IF p_left COLLATE "C" < p_right COLLATE "C" THEN a := p_left; b := p_right;\n'
        "  ELSE a := p_right; b := p_left; END IF;\n"
        "  FOREACH rec IN ARRAY ARRAY[a, b] LOOP\n"
        "    dept := split_part(rec, '/', 1);\n"
        "    rest := substr(rec, length(dept) + 2);\n"
        "    tbl := split_part(rest, '/', 1);\n"
        "    k := substr(rest, length(tbl) + 2);\n"
        f"    SELECT entity INTO found_entity FROM {s}.{crosswalk_table.name}\n"
        "      WHERE department = dept AND source_table = tbl AND source_key = k;\n"
        "    IF NOT FOUND THEN\n"
        "      RAISE EXCEPTION 'no published source row %', rec;\n"
        "    END IF;\n"
        "    IF rec = a THEN ea := found_entity; ELSE eb := found_entity; END IF;\n"
        "  END LOOP;\n"
        "  IF ea <> eb THEN\n"
        "    RAISE EXCEPTION '% is a % and % a %: they cannot be linked', a, ea, b, eb;\n"
        "  END IF;\n"
        f"  DELETE FROM {s}.{review_decision_table.name}\n"
        "    WHERE entity = ea AND left_record = a AND right_record = b;\n"
        f"  INSERT INTO {s}.{review_decision_table.name}\n"
        "    (entity, left_record, right_record, decision, decided_by, decided_at, note)\n"
        "    VALUES (ea, a, b, p_decision, session_user, clock_timestamp(), p_note);\n"
        f"  INSERT INTO {s}.audit_log\n"
        "    (at, who, action, target, role, row_count, outcome, detail, finished_at)\n"
        f"    VALUES (clock_timestamp(), session_user, 'review_decide', {target}, 'steward', 1,\n"
        "      'ok', jsonb_build_object('decision', p_decision, 'decided_by', session_user::text,\n"
        f"      'note', {_sql_mask_text('p_note')})::text, clock_timestamp());\n"
        "  RETURN ea;\n"
        "END $fn$"
    )
    return [
        body,
        f"REVOKE ALL ON FUNCTION {fn} FROM PUBLIC",
        f"GRANT EXECUTE ON FUNCTION {fn} TO {q}",
    ]
