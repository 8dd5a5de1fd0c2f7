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

The review page (``govmdm review serve``) reads the same queue (:func:`queue`), one pair with
its fields side by side and the two clusters it would join (:func:`pair`), and decides through
:func:`decide` like ``govmdm review decide``; it names a pair by a short reference
(:func:`pair_ref`), never by its record IDs, so no key appears in an address or a log.

>>> decide(city, "weijian/PATIENT_INFO/42", "gongan/t_rk_jbxx/RK1", "link")
'person'
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from access import audit
from access.policy import DECIDE_FUNCTION
from access.session import session
from etl.config import CityConfig
from fields.masking import describe_difference, mask_field, mask_record, mask_text
from master_data.compare import features_for, level_label
from master_data.explain import explain
from master_data.settings import load_match_settings
from store.tables import crosswalk_table, review_decision_table, review_queue_table
from store.warehouse import read

DECISIONS = ("link", "apart")
_REF_KEY = secrets.token_bytes(32)


class ReviewError(ValueError):
    """A decision that cannot be recorded, with what to do instead."""


def pair_ref(left: str, right: str) -> str:
    """A short reference to a pair (either row order) that names none of its keys: keyed by a
    secret of this process, so it is stable while the review page runs and cannot be turned
    back into an ID number by trying them all."""
    a, b = sorted((left, right))
    return hmac.new(_REF_KEY, f"{a}\x1f{b}".encode(), hashlib.sha256).hexdigest()[:16]


def queue(
    city: CityConfig,
    *,
    entity: str | None = None,
    limit: int = 50,
    privileged: bool = False,
) -> list[dict[str, Any]]:
    """The open queue of the last published night, most probable first (stewards only), as a
    steward is shown it: record IDs whose keys are ID or mobile numbers masked
    (:func:`fields.masking.mask_record`) unless ``privileged`` (refused, and audited, if the
    caller is not). Audited: who listed which queue, and how many pairs they were shown. Each
    row also carries its :func:`pair_ref`."""
    with session(city) as s:
        s.require("steward", action="review_list", target="review queue")
        if privileged:
            s.role(True, action="review_list")
        rows = read(s.engine, review_queue_table, **({"entity": entity} if entity else {}))
        rows = rows.sort_values(["probability", "left_record"], ascending=[False, True])
        rows = rows.head(limit)
        audit.record(
            s.engine,
            "review_list",
            f"review queue {entity or 'person, enterprise'}",
            role="steward",
            row_count=len(rows),
            detail={"limit": limit, **({"privileged": True} if privileged else {})},
        )
    out = []
    for r in rows.to_dict("records"):
        weights = json.loads(r["weights"])
        r["weights_text"] = ", ".join(f"{f} {w['weight']:+.1f}" for f, w in sorted(weights.items()))
        r["ref"] = pair_ref(str(r["left_record"]), str(r["right_record"]))
        r["reason"] = _text(r.get("reason"))
        if not privileged:
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


@dataclass
class PairView:
    """One queued pair as the review page shows it: masked unless ``privileged``."""

    ref: str
    entity: str
    probability: float
    run_id: str
    left: str  # record IDs, as shown
    right: str
    masters: tuple[str, str]
    prior: float  # log2 prior odds: the probability's log2 odds less the field weights
    weights: list[dict[str, Any]]  # feature, level, label (中文), weight
    fields: list[dict[str, Any]]  # field, left, right, difference (中文, reveals no character)
    member_columns: list[str] = field(default_factory=list)
    clusters: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    privileged: bool = False
    bands: tuple[float, float] = (0.5, 0.99)  # the night's review and auto_link thresholds
    reason: str = ""  # why the pair is queued (中文); empty for a night queued before it was kept


def pair(city: CityConfig, ref: str, *, privileged: bool = False) -> PairView:
    """The queued pair ``ref`` (:func:`pair_ref`) with both rows' fields side by side, the
    per-field match weights and the two clusters it would join (stewards only; clear values
    only for a privileged caller). Audited as a listing of the pair. The rows' values and the
    clusters come from :func:`master_data.explain.explain`, read as ``govmdm explain`` reads
    them (the warehouse URL and the published night's state), not on the steward's login."""
    with session(city) as s:
        s.require("steward", action="review_list", target="review queue")
        if privileged:
            s.role(True, action="review_list")
        row = _queued(s.engine, ref)
        audit.record(
            s.engine,
            "review_list",
            f"review pair {row['entity']} {row['left_record']} ~ {row['right_record']}",
            role="steward",
            row_count=1,
            detail={"pair": ref, **({"privileged": True} if privileged else {})},
        )
    return _pair_view(city, row, privileged)


def decide_pair(
    city: CityConfig, ref: str, decision: str, *, note: str | None = None
) -> tuple[str, str, str]:
    """:func:`decide` on the queued pair ``ref``; returns (entity, left, right) with the record
    IDs masked as :func:`queue` shows them."""
    with session(city) as s:
        s.require("steward", action="review_decide", target=f"review pair {ref}")
        row = _queued(s.engine, ref)
    left, right = str(row["left_record"]), str(row["right_record"])
    entity = decide(city, left, right, decision, note=(note or "").strip() or None)
    return entity, mask_record(left), mask_record(right)


def _queued(engine: sa.Engine, ref: str) -> dict[str, Any]:
    for r in read(engine, review_queue_table).to_dict("records"):
        if pair_ref(str(r["left_record"]), str(r["right_record"])) == ref:
            return dict(r)
    raise ReviewError(
        f"no pair {ref!r} in the review queue: it was decided and a later night published, "
        "or the address is wrong. Fix: open the queue again"
    )


def _pair_view(city: CityConfig, row: dict[str, Any], privileged: bool) -> PairView:
    entity, p = str(row["entity"]), float(row["probability"])
    features = {f.label: f for f in features_for(entity)}
    weights = [
        {
            "feature": name,
            "level": int(w["level"]),
            "label": level_label(features[name], int(w["level"]), "zh")
            if name in features
            else str(w["level"]),
            "weight": float(w["weight"]),
        }
        for name, w in json.loads(row["weights"]).items()
    ]
    p = min(max(p, 1e-12), 1 - 1e-12)
    prior = math.log2(p / (1 - p)) - sum(w["weight"] for w in weights)
    left, right = str(row["left_record"]), str(row["right_record"])
    sides = [explain(city, str(row[f"{side}_master_id"])) for side in ("left", "right")]
    shown = [_shown(entity, ex.members, privileged) for ex in sides]
    columns = [c for c in sides[0].member_columns if c not in ("record", "link_rule")]
    mine = [
        next((m for m in ex.members if m["record"] == rec), {})
        for ex, rec in zip(sides, (left, right), strict=True)
    ]
    fields = [
        {
            "field": c,
            "left": _show(entity, c, mine[0].get(c), privileged),
            "right": _show(entity, c, mine[1].get(c), privileged),
            "difference": describe_difference(entity, c, mine[0].get(c), mine[1].get(c))
            or ("相同" if mine[0].get(c) == mine[1].get(c) else "不同"),
        }
        for c in columns
        if c != "updated_at"
    ]
    return PairView(
        ref=pair_ref(left, right),
        entity=entity,
        probability=float(row["probability"]),
        run_id=str(row["run_id"]),
        left=left if privileged else mask_record(left),
        right=right if privileged else mask_record(right),
        masters=(str(row["left_master_id"]), str(row["right_master_id"])),
        prior=prior,
        weights=weights,
        fields=fields,
        member_columns=sides[0].member_columns,
        clusters=(shown[0], shown[1]),
        privileged=privileged,
        bands=_bands(city, entity),
        reason=_text(row.get("reason")),
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _bands(city: CityConfig, entity: str) -> tuple[float, float]:
    t = getattr(load_match_settings(city.config_dir), entity).thresholds
    return float(t.review), float(t.auto_link)


def _show(entity: str, column: str, value: Any, privileged: bool) -> str | None:
    if value is None or value == "":
        return None
    if column == "record":
        return str(value) if privileged else mask_record(str(value))
    if privileged or column in ("link_rule", "updated_at"):
        return str(value)
    return mask_field(entity, column, value)


def _shown(entity: str, members: list[dict[str, Any]], privileged: bool) -> list[dict[str, Any]]:
    return [{c: _show(entity, c, v, privileged) for c, v in m.items()} for m in members]


def recent_decisions(city: CityConfig, *, limit: int = 10) -> list[dict[str, Any]]:
    """The caller's own latest ``review_decide`` audit rows, newest first (stewards only)."""
    with session(city) as s:
        s.require("steward", action="review_list", target="review queue")
        return audit.entries(s.engine, action="review_decide", limit=limit, own=True)


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
