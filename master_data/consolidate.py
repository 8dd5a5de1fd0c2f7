"""One night's consolidation: link canonical rows into master entities, then publish.

:func:`link` brings the master state of the last published night up to tonight — member rows
replaced by their new versions, deleted and newly rejected rows removed — and links, for persons
and then enterprises:

1. **Candidates.** The blocking passes of ``config/matching.yaml``; on a delta night only the
   pairs touching a new or changed row (all others keep last night's comparison).
2. **Comparison and score.** Chinese-aware comparison levels (:mod:`master_data.compare`), scored
   by a Fellegi–Sunter model trained by EM on full nights and reused on delta nights, so a delta
   night and a full rebuild on the same data score every pair alike.
3. **Rules.** The same valid ID number is the same person; the same credit code, or a legacy
   registration number or organization code that crosswalks to it, the same enterprise.
4. **Clusters** (:mod:`master_data.cluster`): reviewers' links, rules, then model links at or
   above ``auto_link``; never two different valid IDs (credit codes) in one cluster, never two
   rows a reviewer kept apart. Pairs between ``review`` and ``auto_link`` that stay apart go to
   the review queue.
5. **Master IDs** carried forward by overlap (:mod:`master_data.identity`), **golden records**,
   provenance and conflicts (:mod:`master_data.survivorship`), and the person↔enterprise
   relationships.

Everything is written under ``<var>/master/run=<run_id>/`` and nothing in the warehouse changes;
:func:`publish` then replaces the master tables in one transaction and moves the extraction
watermarks. Rerunning a night starts again from the last night published before it.

>>> result = link(city, "2026-07-01")
>>> publish(city, "2026-07-01")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from etl.config import CityConfig
from etl.extract import ROW_KEY, deleted_path
from etl.standardize import SCHEMAS, canonical_dir
from etl.state import commit_watermarks, warehouse_url
from etl.warehouse import Night, engine_for, latest_run, read, review_decision_table
from etl.warehouse import publish as publish_night
from master_data import compare as cmp
from master_data.blocking import candidate_pairs
from master_data.cluster import TIER_MODEL, TIER_REVIEW_LINK, TIER_RULE, cluster
from master_data.identity import IdEvent, assign_ids
from master_data.model import DegenerateModelError, FellegiSunter, u_from_random_pairs
from master_data.settings import ENTITIES, EntityMatch, MatchSettings, load_match_settings
from master_data.survivorship import ATTRIBUTES, survive

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
RECORD = "record_id"
HARD_KEY = {"person": "id_number", "enterprise": "uscc"}
# the deterministic rules, with what each means for `explain`
RULES = {
    "same_id_number": "同一有效公民身份号码",
    "same_uscc": "同一有效统一社会信用代码",
    "same_reg_no": "同一工商注册号（旧代码）",
    "same_org_code": "同一组织机构代码（旧代码，或信用代码中内嵌的组织机构代码）",
}
_META = ["department", "source_table", "source_key"]


def top_levels(entity: str) -> dict[str, int]:
    """Each comparison feature's top agreement level (the model's ``levels``)."""
    return {f.label: len(f.levels) - 1 for f in cmp.features_for(entity)}


def record_id(department: str, table: str, key: str) -> str:
    """The record ID of a source row: ``department/table/key``.

    >>> record_id("gongan", "t_rk_jbxx", "RK3501000204182001")
    'gongan/t_rk_jbxx/RK3501000204182001'
    """
    return f"{department}/{table}/{key}"


def master_dir(var_dir: Path, run_id: str) -> Path:
    """Where one night's master state lives."""
    return var_dir / "master" / f"run={run_id}"


@dataclass
class EntityLinked:
    """What linking did for one entity type."""

    entity: str
    records: int = 0
    changed: int = 0
    removed: int = 0
    candidate_pairs: int = 0
    pairs_compared: int = 0
    rule_links: int = 0
    model_links: int = 0
    review_links: int = 0
    refused_hard_key: int = 0
    refused_kept_apart: int = 0
    masters: int = 0
    singletons: int = 0
    review_queue: int = 0
    conflicts: int = 0
    events: dict[str, int] = field(default_factory=dict)
    model_trained: bool = False
    blocking: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Linked:
    """One night's linking: per entity, plus where its state was written."""

    run_id: str
    mode: str  # full | delta
    base_run: str | None
    state_dir: Path
    entities: dict[str, EntityLinked]
    relationships: int = 0
    unresolved: int = 0

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts, stored with the published night."""
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "base_run": self.base_run,
            "relationships": self.relationships,
            "unresolved_references": self.unresolved,
            "entities": {e: asdict(r) for e, r in self.entities.items()},
        }


# --- link ----------------------------------------------------------------------------------------


def link(
    city: CityConfig,
    run_id: str,
    *,
    full: bool = False,
    retrain: bool = False,
    settings: MatchSettings | None = None,
    progress: Progress | None = None,
) -> Linked:
    """Link tonight's canonical rows into master entities under ``master/run=<run_id>``.

    ``full`` compares every candidate pair again (a rebuild); ``retrain`` also fits the model
    afresh (the first night always does both).
    """
    settings = settings or load_match_settings(
        city.root / "config", {d.code for d in city.departments}
    )
    say = progress or (lambda _msg: None)
    engine = engine_for(warehouse_url(city))
    try:
        base = latest_run(engine, before=run_id)
        decisions = _decisions(engine)
    finally:
        engine.dispose()
    base_dir = Path(base["state_dir"]) if base else None
    if base_dir is not None and not base_dir.is_dir():
        raise FileNotFoundError(
            f"the last published night {base['run_id']!r} kept its master state in {base_dir}, "  # type: ignore[index]
            "which is gone. Fix: restore it, or run `govmdm consolidate --full --retrain`"
        )
    mode = "full" if full or base_dir is None else "delta"
    out = master_dir(city.var_dir, run_id)
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base_summary = json.loads(base["summary"]) if base else {}
    results: dict[str, EntityLinked] = {}
    members: dict[str, pd.DataFrame] = {}
    next_seq: dict[str, int] = {}
    for entity in ENTITIES:
        say(f"{entity}: linking")
        results[entity], members[entity], next_seq[entity] = _link_entity(
            city,
            run_id,
            entity,
            settings.entity(entity),
            settings,
            base_dir / entity if base_dir else None,
            work / entity,
            full=mode == "full",
            retrain=retrain or base_dir is None,
            next_seq=base_summary.get("next_seq", {}).get(entity, 1),
            decisions=decisions[decisions["entity"] == entity],
            say=say,
        )
    say("relationships")
    linked = Linked(run_id, mode, base["run_id"] if base else None, out, results)
    linked.relationships, linked.unresolved = _relationships(work, members, run_id)
    summary = linked.summary()
    summary["next_seq"] = next_seq
    (work / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return linked


def _link_entity(
    city: CityConfig,
    run_id: str,
    entity: str,
    match: EntityMatch,
    settings: MatchSettings,
    base: Path | None,
    out: Path,
    *,
    full: bool,
    retrain: bool,
    next_seq: int,
    decisions: pd.DataFrame,
    say: Progress,
) -> tuple[EntityLinked, pd.DataFrame, int]:
    """Link one entity type into ``out``; its result, member rows and next free ID number."""
    start = time.perf_counter()
    out.mkdir(parents=True)
    result = EntityLinked(entity)

    # 1. tonight's member rows
    previous = _read_parquet(base / "records.parquet") if base else None
    tonight, gone = _tonight(city, run_id, entity)
    if previous is not None and len(previous):
        replaced = previous.index.isin(tonight.index)
        left = previous.index.isin(gone) & ~replaced
        keep = ~replaced & ~left
        result.removed = int(left.sum())
        records = pd.concat([previous[keep], tonight])
    else:
        records = tonight
    records = records.sort_index()
    result.records, result.changed = len(records), len(tonight)
    records.reset_index().to_parquet(out / "records.parquet", index=False)

    # 2. candidate pairs, comparisons and scores
    changed = tonight.index
    removed = pd.Index(gone).union(changed)
    model = None if retrain or base is None else _load_model(base / "model.json")
    if full or model is None or base is None:
        found = candidate_pairs(records, match.blocking, max_block=match.max_block)
        kept_edges = None
    else:
        found = candidate_pairs(records, match.blocking, among=changed, max_block=match.max_block)
        kept_edges = _read_parquet(base / "edges.parquet", index=False)
        if kept_edges is not None and len(kept_edges):
            touched = kept_edges["left"].isin(removed) | kept_edges["right"].isin(removed)
            kept_edges = kept_edges[~touched]
    result.blocking = found.report.as_dict()
    pairs = found.pairs
    result.candidate_pairs = result.pairs_compared = len(pairs)
    say(f"{entity}: comparing {len(pairs):,} pairs")
    levels = cmp.compare(records, pairs, entity)
    if model is None:
        say(f"{entity}: training the model (EM)")
        model = _train(records, levels, entity, settings)
        result.model_trained = True
    (out / "model.json").write_text(model.to_json())
    fresh = _edges(records, pairs, levels, model, entity, match.thresholds.keep)
    edges = fresh if kept_edges is None else pd.concat([kept_edges, fresh], ignore_index=True)
    edges = edges.sort_values(["left", "right"], kind="mergesort").reset_index(drop=True)

    # 3. clusters
    say(f"{entity}: clustering")
    position = pd.Series(np.arange(len(records)), index=records.index)
    li, ri = position.reindex(edges["left"]).to_numpy(), position.reindex(edges["right"]).to_numpy()
    auto = match.thresholds.auto_link
    tier = np.where(edges["rule"].notna(), TIER_RULE, TIER_MODEL)
    use = edges["rule"].notna().to_numpy() | (edges["probability"].to_numpy() >= auto)
    graph = list(
        zip(
            li[use].tolist(),
            ri[use].tolist(),
            tier[use].tolist(),
            edges["probability"].to_numpy()[use].tolist(),
            strict=True,
        )
    )
    decided = decisions[
        decisions["left_record"].isin(position.index)
        & decisions["right_record"].isin(position.index)
    ]
    links = decided[decided["decision"] == "link"]
    graph += [
        (int(position[a]), int(position[b]), TIER_REVIEW_LINK, 1.0)
        for a, b in zip(links["left_record"], links["right_record"], strict=True)
    ]
    aparts = decided[decided["decision"] == "apart"]
    apart = [
        (int(position[a]), int(position[b]))
        for a, b in zip(aparts["left_record"], aparts["right_record"], strict=True)
    ]
    hard = records[HARD_KEY[entity]].where(records[HARD_KEY[entity]].notna(), None).tolist()
    clusters = cluster(len(records), graph, hard_keys=hard, apart=apart)
    for t, _score in clusters.merged_by.values():
        if t == TIER_RULE:
            result.rule_links += 1
        elif t == TIER_MODEL:
            result.model_links += 1
        else:
            result.review_links += 1
    result.refused_hard_key = sum(r.reason == "hard_key" for r in clusters.refused)
    result.refused_kept_apart = sum(r.reason == "kept_apart" for r in clusters.refused)
    accepted = {(int(a), int(b)) for a, b in clusters.merged_by}
    lo, hi = np.minimum(li, ri), np.maximum(li, ri)
    edges["accepted"] = [(int(a), int(b)) in accepted for a, b in zip(lo, hi, strict=True)]
    edges.to_parquet(out / "edges.parquet", index=False)

    # 4. master IDs
    say(f"{entity}: master IDs and golden records")
    labels = pd.DataFrame({RECORD: records.index, "cluster": clusters.labels})
    base_crosswalk = _read_parquet(base / "crosswalk.parquet", index=False) if base else None
    prev = (
        base_crosswalk[[RECORD, "master_id"]]
        if base_crosswalk is not None
        else pd.DataFrame({RECORD: pd.Series(dtype=str), "master_id": pd.Series(dtype=str)})
    )
    ids = assign_ids(labels, prev, entity=entity, next_seq=next_seq)
    master_of = pd.Series(ids.assignment["master_id"].to_numpy(), index=records.index)
    _events(ids.events, entity).to_parquet(out / "events.parquet", index=False)
    result.events = {
        k: int(v) for k, v in pd.Series([e.event for e in ids.events]).value_counts().items()
    }

    # 5. crosswalk: how each record joined its entity
    crosswalk = _crosswalk(records, edges, master_of, base_crosswalk, run_id)
    crosswalk.to_parquet(out / "crosswalk.parquet", index=False)

    # 6. golden records, provenance, conflicts
    member_rows = records.assign(master_id=master_of)
    if entity == "enterprise":  # a valid credit code carries the organization code (chars 9–17)
        member_rows["org_code"] = member_rows["org_code"].fillna(member_rows["uscc"].str[8:17])
    authority = {
        a: d.code for a in ATTRIBUTES[entity] if (d := city.authority(entity, a)) is not None
    }
    golden, provenance, conflicts = survive(member_rows, entity, authority, match.survivorship_rank)
    extra = member_rows.groupby("master_id").agg(
        member_count=("department", "size"),
        departments=("department", lambda s: ",".join(sorted(set(s)))),
        updated_at=("updated_at", "max"),
    )
    golden = golden.merge(extra, left_on="master_id", right_index=True).assign(run_id=run_id)
    golden.to_parquet(out / "golden.parquet", index=False)
    provenance.assign(entity=entity).to_parquet(out / "provenance.parquet", index=False)
    conflicts.assign(entity=entity, run_id=run_id).to_parquet(
        out / "conflicts.parquet", index=False
    )

    # 7. review queue: undecided pairs in the review band that ended in different entities
    band = edges[
        edges["rule"].isna()
        & (edges["probability"] >= match.thresholds.review)
        & (edges["probability"] < auto)
    ]
    apart_now = (
        master_of.reindex(band["left"]).to_numpy() != master_of.reindex(band["right"]).to_numpy()
    )
    # two different valid IDs (credit codes) can never be linked: no use asking a reviewer
    key = records[HARD_KEY[entity]]
    ka, kb = key.reindex(band["left"]).to_numpy(), key.reindex(band["right"]).to_numpy()
    linkable = ~(pd.notna(ka) & pd.notna(kb) & (ka != kb))
    band = band[apart_now & linkable]
    done = set(zip(decisions["left_record"], decisions["right_record"], strict=True))
    open_pair = [
        (a, b) not in done and (b, a) not in done
        for a, b in zip(band["left"], band["right"], strict=True)
    ]
    band = band[np.asarray(open_pair, dtype=bool)]
    review = _review(band, model, master_of, entity, run_id)
    review.to_parquet(out / "review.parquet", index=False)

    result.masters = int(golden.shape[0])
    result.singletons = int((golden["member_count"] == 1).sum())
    result.review_queue = len(review)
    result.conflicts = len(conflicts)
    result.seconds = round(time.perf_counter() - start, 2)
    return result, member_rows, ids.next_seq


def _tonight(city: CityConfig, run_id: str, entity: str) -> tuple[pd.DataFrame, list[str]]:
    """Tonight's canonical rows of ``entity`` (indexed by record ID), and the record IDs that
    left: deleted at the source, or rejected tonight."""
    frames, gone = [], []
    for dept in city.departments:
        folder = canonical_dir(city.var_dir, run_id, dept.code)
        path = folder / f"{entity}.parquet"
        if path.is_file():
            frames.append(pq.read_table(path).to_pandas())
        rejects = folder / "rejects.parquet"
        if rejects.is_file():
            r = pq.read_table(rejects, columns=["entity", *_META]).to_pandas()
            r = r[r["entity"] == entity]
            gone += [record_id(*row) for row in r[_META].itertuples(index=False, name=None)]
        for table in dept.tables:
            if table.entity != entity:
                continue
            deleted = deleted_path(city.var_dir, run_id, dept.code, table.name)
            if deleted.is_file():
                keys = pq.read_table(deleted).column(ROW_KEY).to_pylist()
                gone += [record_id(dept.code, table.name, k) for k in keys]
    if frames:
        rows = pd.concat(frames, ignore_index=True)
    else:
        rows = SCHEMAS[entity].empty_table().to_pandas()
    rows.index = pd.Index(
        [record_id(*r) for r in rows[_META].itertuples(index=False, name=None)], name=RECORD
    )
    return rows, gone


RANDOM_PAIRS = 200_000
_SEED = 20260630  # fixed: the same rows give the same model


def _train(
    records: pd.DataFrame, levels: pd.DataFrame, entity: str, settings: MatchSettings
) -> FellegiSunter:
    """Fit the model: u from random record pairs, then m and the prior by EM on the candidates.

    Blocking makes the candidates mostly true matches, so EM alone cannot tell which of its two
    classes is the non-matches; random pairs are almost all non-matches and pin u down."""
    tops = top_levels(entity)
    u = u_from_random_pairs(cmp.compare(records, _random_pairs(records), entity), levels=tops)
    try:
        fitted = FellegiSunter.fit(
            levels, levels=tops, max_iter=settings.em.max_iter, tol=settings.em.tol, fixed_u=u
        )
    except DegenerateModelError as exc:
        if "λ =" not in str(exc):
            raise
        # Blocking found (almost) nothing but matches: then the candidates' level frequencies
        # are m itself, which is where EM was heading.
        log.warning("%s: EM put every candidate in one class; m from candidate frequencies", entity)
        fitted = FellegiSunter(_frequencies(levels, tops), u, 1 - 1 / (len(levels) + 2))
    # EM's prior is the share of matches among the *candidates*; u describes random pairs. The
    # prior that goes with u is the share among *all* pairs: λ · candidates / all pairs.
    n = len(records)
    everyone = max(n * (n - 1) / 2, 1.0)
    prior = min(fitted.prior * len(levels) / everyone, 0.5)
    return dataclasses.replace(fitted, prior=prior)


def _frequencies(levels: pd.DataFrame, tops: dict[str, int]) -> dict[str, list[float]]:
    """Each feature's level frequencies among ``levels`` (missing ignored), half-count smoothed."""
    out = {}
    for f, top in tops.items():
        values = levels[f].to_numpy()
        counts = np.bincount(values[values >= 0], minlength=top + 1)[: top + 1] + 0.5
        out[f] = (counts / counts.sum()).tolist()
    return out


def _random_pairs(records: pd.DataFrame, n: int = RANDOM_PAIRS) -> pd.MultiIndex:
    """Up to ``n`` distinct random pairs of different records, deterministic for the same rows."""
    size = len(records)
    rng = np.random.default_rng(_SEED)
    a = rng.integers(0, size, n)
    b = rng.integers(0, size, n)
    keep = a != b
    a, b = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    coded = np.unique(a.astype(np.int64) * size + b)
    ids = records.index.to_numpy()
    return pd.MultiIndex.from_arrays([ids[coded // size], ids[coded % size]])


def _edges(
    records: pd.DataFrame,
    pairs: pd.MultiIndex,
    levels: pd.DataFrame,
    model: FellegiSunter,
    entity: str,
    keep: float,
) -> pd.DataFrame:
    """The scored pairs worth keeping: a rule holds, or the probability is at least ``keep``."""
    left = pairs.get_level_values(0)
    right = pairs.get_level_values(1)
    probability = model.probability(levels).to_numpy() if len(pairs) else np.empty(0)
    rule = _rules(records, left, right, entity)
    frame = pd.DataFrame(
        {"left": np.asarray(left, dtype=object), "right": np.asarray(right, dtype=object)}
    )
    for feature in levels.columns:
        frame[feature] = levels[feature].to_numpy(dtype=np.int8)
    frame["probability"] = probability
    frame["rule"] = rule
    return frame[frame["rule"].notna() | (frame["probability"] >= keep)].reset_index(drop=True)


def _rules(records: pd.DataFrame, left: pd.Index, right: pd.Index, entity: str) -> pd.Series:
    """The deterministic rule that links each pair, or None."""
    out = pd.Series([None] * len(left), dtype=object)
    if not len(left):
        return out
    used = ["id_number"] if entity == "person" else ["uscc", "reg_no", "org_code"]
    a, b = records.loc[left, used], records.loc[right, used]  # only the compared columns

    def same(column: str) -> np.ndarray:
        x, y = a[column].to_numpy(), b[column].to_numpy()
        return pd.notna(x) & pd.notna(y) & (x == y)

    if entity == "person":
        out[same("id_number")] = "same_id_number"
        return out
    org_a = a["org_code"].fillna(a["uscc"].str[8:17]).to_numpy()
    org_b = b["org_code"].fillna(b["uscc"].str[8:17]).to_numpy()
    same_org = pd.notna(org_a) & pd.notna(org_b) & (org_a == org_b)
    out[same_org] = "same_org_code"
    out[same("reg_no")] = "same_reg_no"
    out[same("uscc")] = "same_uscc"
    return out


def _crosswalk(
    records: pd.DataFrame,
    edges: pd.DataFrame,
    master_of: pd.Series,
    base: pd.DataFrame | None,
    run_id: str,
) -> pd.DataFrame:
    """Each record's master ID and the strongest accepted link that joined it."""
    accepted = edges[edges["accepted"]]
    ends = pd.concat(
        [
            accepted[["left", "rule", "probability"]].rename(columns={"left": RECORD}),
            accepted[["right", "rule", "probability"]].rename(columns={"right": RECORD}),
        ]
    )
    ends = ends.assign(
        _rank=ends["rule"].notna().astype(int),
        link_rule=ends["rule"].fillna("model"),
    ).sort_values([RECORD, "_rank", "probability"], ascending=[True, False, False])
    best = ends.drop_duplicates(RECORD).set_index(RECORD)
    out = records[_META].copy()
    out["master_id"] = master_of
    out["link_rule"] = best["link_rule"].reindex(out.index).fillna("singleton")
    out["link_probability"] = best["probability"].reindex(out.index)
    # a record linked only by a reviewer's decision has no stored edge of its own
    linked = out["master_id"].map(out["master_id"].value_counts()) > 1
    out.loc[linked & (out["link_rule"] == "singleton"), "link_rule"] = "review_decision"
    first = base.set_index(RECORD)["first_run_id"] if base is not None else pd.Series(dtype=str)
    out["first_run_id"] = first.reindex(out.index).fillna(run_id)
    return out.reset_index()


def _events(events: list[IdEvent], entity: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "entity": entity,
            "seq": range(len(events)),
            "event": [e.event for e in events],
            "master_id": [e.master_id for e in events],
            "old_ids": [",".join(e.old_ids) for e in events],
            "reason": [e.reason for e in events],
        }
    )


def _review(
    band: pd.DataFrame, model: FellegiSunter, master_of: pd.Series, entity: str, run_id: str
) -> pd.DataFrame:
    features = model.features
    weights = [
        json.dumps(
            {f: {"level": int(lv), "weight": round(w, 3)} for f, lv, _, w in model.explain(row)},
            ensure_ascii=False,
        )
        for row in band[features].to_dict("records")
    ]
    return pd.DataFrame(
        {
            "entity": entity,
            "left_record": band["left"].to_numpy(),
            "right_record": band["right"].to_numpy(),
            "left_master_id": master_of.reindex(band["left"]).to_numpy(),
            "right_master_id": master_of.reindex(band["right"]).to_numpy(),
            "probability": band["probability"].to_numpy(),
            "weights": weights,
            "run_id": run_id,
        }
    )


def _relationships(work: Path, members: dict[str, pd.DataFrame], run_id: str) -> tuple[int, int]:
    """Legal representatives and employers resolved to master IDs; golden tables updated."""
    persons, firms = members["person"], members["enterprise"]
    person_of_id = (
        persons.dropna(subset=["id_number"])
        .drop_duplicates("id_number")
        .set_index("id_number")["master_id"]
    )
    firm_of_uscc = (
        firms.dropna(subset=["uscc"]).drop_duplicates("uscc").set_index("uscc")["master_id"]
    )
    gp = pd.read_parquet(work / "person" / "golden.parquet")
    ge = pd.read_parquet(work / "enterprise" / "golden.parquet")
    gp["employer_master_id"] = gp["employer_uscc"].map(firm_of_uscc)
    ge["legal_rep_master_id"] = ge["legal_rep_id"].map(person_of_id)
    gp.to_parquet(work / "person" / "golden.parquet", index=False)
    ge.to_parquet(work / "enterprise" / "golden.parquet", index=False)
    employer = gp.dropna(subset=["employer_master_id"])
    rep = ge.dropna(subset=["legal_rep_master_id"])
    rel = pd.concat(
        [
            pd.DataFrame(
                {
                    "kind": "employer",
                    "person_master_id": employer["master_id"].to_numpy(),
                    "enterprise_master_id": employer["employer_master_id"].to_numpy(),
                    "evidence": employer["employer_uscc"].to_numpy(),
                }
            ),
            pd.DataFrame(
                {
                    "kind": "legal_representative",
                    "person_master_id": rep["legal_rep_master_id"].to_numpy(),
                    "enterprise_master_id": rep["master_id"].to_numpy(),
                    "evidence": rep["legal_rep_id"].to_numpy(),
                }
            ),
        ],
        ignore_index=True,
    ).drop_duplicates(["kind", "person_master_id", "enterprise_master_id"])
    rel.to_parquet(work / "relationships.parquet", index=False)
    no_employer = gp[gp["employer_uscc"].notna() & gp["employer_master_id"].isna()]
    no_rep = ge[ge["legal_rep_id"].notna() & ge["legal_rep_master_id"].isna()]
    unresolved = pd.concat(
        [
            pd.DataFrame(
                {"kind": "employer", "master_id": no_employer["master_id"].to_numpy(),
                 "evidence": no_employer["employer_uscc"].to_numpy()}
            ),
            pd.DataFrame(
                {"kind": "legal_representative", "master_id": no_rep["master_id"].to_numpy(),
                 "evidence": no_rep["legal_rep_id"].to_numpy()}
            ),
        ],
        ignore_index=True,
    )  # fmt: skip
    unresolved.to_parquet(work / "unresolved.parquet", index=False)
    return len(rel), len(unresolved)


# --- publish -------------------------------------------------------------------------------------


def publish(city: CityConfig, run_id: str) -> dict[str, Any]:
    """Publish the night :func:`link` prepared, atomically, then move the watermarks."""
    state = master_dir(city.var_dir, run_id)
    summary_path = state / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(
            f"no linked night {run_id!r} under {state}. Fix: run `govmdm link --run-id {run_id}`"
        )
    summary = _read_json(summary_path)
    frames: dict[str, pd.DataFrame] = {
        "mdm_person": pd.read_parquet(state / "person" / "golden.parquet"),
        "mdm_enterprise": pd.read_parquet(state / "enterprise" / "golden.parquet"),
        "mdm_relationship": pd.read_parquet(state / "relationships.parquet"),
        "mdm_unresolved_reference": pd.read_parquet(state / "unresolved.parquet"),
    }
    for name, file in (
        ("mdm_provenance", "provenance"),
        ("mdm_crosswalk", "crosswalk"),
        ("mdm_conflict", "conflicts"),
        ("mdm_id_event", "events"),
        ("mdm_review_queue", "review"),
    ):
        parts = []
        for entity in ENTITIES:
            part = pd.read_parquet(state / entity / f"{file}.parquet")
            if name == "mdm_crosswalk":
                part = part.assign(entity=entity)
            if name == "mdm_id_event":
                part = part.assign(run_id=run_id)
            parts.append(part)
        frames[name] = pd.concat(parts, ignore_index=True)
    engine = engine_for(warehouse_url(city))
    try:
        publish_night(engine, Night(run_id, summary["mode"], str(state), summary, frames))
    finally:
        engine.dispose()
    summary["watermarks_committed"] = commit_watermarks(city, run_id)
    return summary


def consolidate(
    city: CityConfig,
    run_id: str,
    *,
    full: bool = False,
    retrain: bool = False,
    progress: Progress | None = None,
) -> Linked:
    """:func:`link` then :func:`publish`."""
    linked = link(city, run_id, full=full, retrain=retrain, progress=progress)
    publish(city, run_id)
    return linked


# --- helpers -------------------------------------------------------------------------------------


def _decisions(engine: Any) -> pd.DataFrame:
    return read(engine, review_decision_table)


def _load_model(path: Path) -> FellegiSunter | None:
    return FellegiSunter.from_json(path.read_text()) if path.is_file() else None


def _read_parquet(path: Path, index: bool = True) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    frame = pq.read_table(path).to_pandas()
    return frame.set_index(RECORD) if index and RECORD in frame.columns else frame


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data
