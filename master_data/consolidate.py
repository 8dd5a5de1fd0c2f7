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
watermarks of the departments whose rows it published. Rerunning a night starts again from the
last night published before it. One night at a time links or publishes
(:func:`store.warehouse.night_lock`), and a night is published only on the night it was linked on.

>>> result = link(city, "2026-07-01")
>>> publish(city, "2026-07-01")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import pyarrow.parquet as pq
from scipy import sparse
from scipy.sparse import csgraph

from etl.config import CityConfig
from etl.extract import ROW_KEY, deleted_path, raw_dir, raw_path
from etl.standardize import SCHEMAS, canonical_dir, unfinished
from etl.state import RunState, commit_watermarks, warehouse_url
from master_data import compare as cmp
from master_data.blocking import candidate_pairs, delta_candidates
from master_data.cluster import TIER_MODEL, TIER_REVIEW_LINK, TIER_RULE, cluster
from master_data.identity import IdEvent, assign_ids
from master_data.model import DegenerateModelError, FellegiSunter, u_from_random_pairs
from master_data.settings import ENTITIES, EntityMatch, MatchSettings, load_match_settings
from master_data.survivorship import ATTRIBUTES, survive
from store import failpoints
from store.layout import state_dir_of
from store.tables import (
    crosswalk_table,
    enterprise_table,
    person_table,
    review_decision_table,
    review_queue_table,
    run_table,
)
from store.warehouse import (
    KEY_COLUMNS,
    Night,
    engine_for,
    latest_run,
    night_lock,
    published_run,
    read,
)
from store.warehouse import publish as publish_night

log = logging.getLogger(__name__)

# Called with (engine, city, run ID, summary) once a night is committed; must not raise.
AfterPublish = Callable[[Any, CityConfig, str, dict[str, Any]], object]

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


class ConsolidateError(RuntimeError):
    """A night cannot be linked or published as asked; the message says why and how to fix it."""


class DamagedState(ConsolidateError):
    """A master-state file is there but cannot be read (truncated, overwritten, not Arrow)."""

    def __init__(self, path: Path, cause: BaseException, fix: str | None = None) -> None:
        self.path, self.cause = path, cause
        what = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
        super().__init__(
            f"the master-state file {path} is damaged ({what})" + (f". Fix: {fix}" if fix else "")
        )

    def with_fix(self, fix: str) -> DamagedState:
        """The same damage, with the command that recovers from it."""
        return DamagedState(self.path, self.cause, fix)


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
    unkeyed: int = 0  # canonical rows with no source key: left out, they belong in rejects
    masters: int = 0
    singletons: int = 0
    review_queue: int = 0
    conflicts: int = 0
    records_relinked: int = 0
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
    departments: list[str] = field(default_factory=list)  # whose rows of tonight were linked
    held_back: list[str] = field(default_factory=list)  # by a blocking quality rule
    unfinished: dict[str, str] = field(default_factory=dict)  # department → why not linked
    recovered: list[str] = field(default_factory=list)  # damaged base files, and how recovered

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts, stored with the published night."""
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "base_run": self.base_run,
            "departments": self.departments,
            "held_back": self.held_back,
            "unfinished": self.unfinished,
            "recovered": self.recovered,
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
    held: Collection[str] = (),
    settings: MatchSettings | None = None,
    progress: Progress | None = None,
) -> Linked:
    """Link tonight's canonical rows into master entities under ``master/run=<run_id>``.

    ``full`` compares every candidate pair again (a rebuild); ``retrain`` also fits the model
    afresh (the first night always does both). ``held``: departments whose batch a blocking
    quality rule holds back (``quality.suites.held_departments``): their rows, rejects and
    deletions of tonight are left out, so the master keeps what they published before, and
    :func:`publish` leaves their watermarks where they were (the next night reads them again).
    A department whose extraction or standardization of tonight did not finish is left out the
    same way (:func:`etl.standardize.unfinished` says why).

    Raises :class:`ConsolidateError` when there is nothing to link, when a department's rows
    were read before another night moved its watermark (extract the night again), or when the
    last night's master state is damaged (:class:`DamagedState`, naming the file and the fix);
    :class:`store.warehouse.WarehouseBusy` while another night links or publishes.
    """
    with night_lock(warehouse_url(city), run_id, "link", lock_dir=city.var_dir / "warehouse"):
        failpoints.reached("link:start")
        return _link_night(city, run_id, full, retrain, held, settings, progress)


def _link_night(
    city: CityConfig,
    run_id: str,
    full: bool,
    retrain: bool,
    held: Collection[str],
    settings: MatchSettings | None,
    progress: Progress | None,
) -> Linked:
    settings = settings or load_match_settings(
        city.root / "config", {d.code for d in city.departments} | set(city.broken)
    )
    say = progress or (lambda _msg: None)
    engine = engine_for(warehouse_url(city))
    try:
        base = latest_run(engine, before=run_id)
        decisions = _decisions(engine)
        latest = latest_run(engine)
        holds_base = base is not None and latest == base
        rerun = published_run(engine, run_id) is not None
    finally:
        engine.dispose()
    if rerun and latest is not None and latest["run_id"] != run_id:
        raise ConsolidateError(_older_night(run_id, latest["run_id"]))
    base_dir = state_dir_of(city.var_dir, base) if base else None
    if base_dir is not None and not base_dir.is_dir():
        raise ConsolidateError(
            f"the last published night {base['run_id']!r} kept its master state in {base_dir}, "  # type: ignore[index]
            "which is gone: tonight cannot carry its master IDs forward. Fix: restore the folder "
            "from a backup (govmdm reads it wherever var/ is), or rerun that night (extract, "
            "standardize and consolidate it again: it is replayed from its raw data), then run "
            "this again"
        )
    delivered, not_done = _delivered(city, run_id, held)
    if not delivered:
        raise ConsolidateError(_nothing_to_link(city, run_id, held, not_done))
    if not rerun:  # a published night's rows were read on the night it was linked on
        _refuse_stale(city, run_id, delivered)
    for code, why in sorted(not_done.items()):
        not_done[code] = (
            f"{why}. Fix: `govmdm standardize --run-id {run_id} -d {code}` (after `govmdm "
            f"extract --run-id {run_id} -d {code}` if its extraction failed)"
        )
        log.warning("%s; its rows are not linked tonight and its watermarks stay", not_done[code])
    mode = "full" if full or base_dir is None else "delta"
    out = master_dir(city.var_dir, run_id)
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base_summary = json.loads(base["summary"]) if base else {}
    results: dict[str, EntityLinked] = {}
    next_seq: dict[str, int] = {}
    left_out = frozenset(held) | frozenset(not_done)
    complete = _read_in_full(city, run_id, delivered) and not left_out
    recovered: list[str] = []
    for entity in ENTITIES:
        say(f"{entity}: linking")
        base_state = _BaseState(
            base_dir / entity if base_dir else None,
            entity,
            fallback=mode == "full",
            warehouse=warehouse_url(city) if holds_base else None,
            records_needed=not complete,
        )
        try:
            results[entity], next_seq[entity] = _link_entity(
                city,
                run_id,
                entity,
                settings.entity(entity),
                settings,
                base_state,
                work / entity,
                full=mode == "full",
                retrain=retrain or base_dir is None,
                next_seq=base_summary.get("next_seq", {}).get(entity, 1),
                decisions=decisions[decisions["entity"] == entity],
                held=left_out,
                say=say,
            )
        except DamagedState as exc:
            shutil.rmtree(work, ignore_errors=True)
            fix = _recovery(run_id, exc.path, full=mode == "full", retrain=retrain)
            raise exc.with_fix(fix) from exc.cause
        recovered += base_state.recovered
        failpoints.reached("link:entity-done")
    say("relationships")
    linked = Linked(run_id, mode, base["run_id"] if base else None, out, results)
    linked.departments = sorted(delivered)
    linked.held_back = sorted(set(held))
    linked.unfinished = dict(sorted(not_done.items()))
    linked.recovered = recovered
    linked.relationships, linked.unresolved = _relationships(work, run_id)
    summary = linked.summary()
    summary["next_seq"] = next_seq
    (work / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2))
    failpoints.reached("link:before-rename")
    # a rerun replaces a published night's folder: until the new one is in place the old one
    # stays readable as run=<id>.old (store.warehouse.state_dir_of falls back to it)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    failpoints.reached("link:swapping")
    work.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    failpoints.reached("link:renamed")
    return linked


def _delivered(
    city: CityConfig, run_id: str, held: Collection[str]
) -> tuple[list[str], dict[str, str]]:
    """The departments whose rows of ``run_id`` can be linked tonight, and those extracted
    tonight whose extraction or standardization did not finish (with why). Departments with
    nothing extracted tonight are in neither: they simply have nothing new."""
    delivered, not_done = [], {}
    for dept in city.departments:
        present = raw_dir(city.var_dir, run_id, dept.code).is_dir() or (
            canonical_dir(city.var_dir, run_id, dept.code).is_dir()
        )
        if not present or dept.code in held:
            continue
        why = unfinished(city, dept, run_id)
        if why is None:
            delivered.append(dept.code)
        else:
            not_done[dept.code] = why
    return delivered, not_done


def _nothing_to_link(
    city: CityConfig, run_id: str, held: Collection[str], not_done: dict[str, str]
) -> str:
    if not_done or held:
        reasons = [*not_done.values(), *(f"{c}: held back by a blocking rule" for c in held)]
        return (
            f"night {run_id}: no department's rows can be linked ({'; '.join(reasons)}). Fix: "
            f"`govmdm standardize --run-id {run_id}` (after `govmdm extract --run-id {run_id}` "
            "for a department whose extraction failed), then consolidate"
        )
    return (
        f"night {run_id} has nothing to link: no department was extracted and standardized for "
        f"it under {city.var_dir}. Fix: `govmdm extract --run-id {run_id}`, then `govmdm "
        f"standardize --run-id {run_id}`, then consolidate"
    )


def _refuse_stale(city: CityConfig, run_id: str, delivered: list[str]) -> None:
    """Refuse rows read from a watermark another night has moved since: they may be older than
    what that night published (two nights extracted at once)."""
    with RunState.for_city(city) as state:
        for code in delivered:
            dept = city.department(code)
            moved_by = state.committed_by(code)
            for t in dept.tables:
                if moved_by.get(t.name) in (None, run_id):
                    continue
                meta = pq.read_schema(raw_path(city.var_dir, run_id, code, t.name)).metadata or {}
                read_from = json.loads(meta.get(b"govmdm", b"{}")).get("watermark_before")
                now = state.watermark(code, t.name)
                if now is not None and read_from != now[1]:
                    raise ConsolidateError(
                        f"night {run_id} read {code}.{t.name} from watermark {read_from!r}, but "
                        f"night {moved_by[t.name]} has moved it to {now[1]!r} since: its rows may "
                        f"be older than what that night published. Fix: extract the night again "
                        f"(`govmdm extract --run-id {run_id}`, then standardize and consolidate)"
                    )


def _read_in_full(city: CityConfig, run_id: str, delivered: list[str]) -> bool:
    """Every department and table was read in full tonight: last night's records are not needed
    (every live source row is in tonight's)."""
    if sorted(delivered) != sorted(d.code for d in city.departments):
        return False
    for code in delivered:
        for t in city.department(code).tables:
            meta = pq.read_schema(raw_path(city.var_dir, run_id, code, t.name)).metadata or {}
            if json.loads(meta.get(b"govmdm", b"{}")).get("mode") != "full":
                return False
    return True


def _recovery(run_id: str, path: Path, *, full: bool, retrain: bool) -> str:
    """The command that recovers from a damaged base-night file ``path``."""
    rebuild = f"`govmdm consolidate --run-id {run_id} --full{' --retrain' if retrain else ''}`"
    if path.name.startswith("records."):
        return (
            "last night's records can only be read again from the sources: extract every "
            f"department in full (`govmdm extract --full --run-id {run_id}`, or under a new run "
            f"ID if {run_id} is published), standardize it, then {rebuild}"
        )
    if path.name.startswith("model."):
        return f"fit the model afresh: `govmdm consolidate --run-id {run_id} --retrain`"
    if not full:
        return (
            f"{rebuild} rebuilds tonight without last night's caches, reading what the "
            "warehouse holds of that night instead"
        )
    return (
        "the warehouse no longer holds the night this file belongs to, so it cannot stand in: "
        "restore the file from a backup, or extract every department in full and run " + rebuild
    )


def _link_entity(
    city: CityConfig,
    run_id: str,
    entity: str,
    match: EntityMatch,
    settings: MatchSettings,
    base_state: _BaseState,
    out: Path,
    *,
    full: bool,
    retrain: bool,
    next_seq: int,
    decisions: pd.DataFrame,
    held: frozenset[str],
    say: Progress,
) -> tuple[EntityLinked, int]:
    """Link one entity type into ``out``; its result and next free ID number.

    A full night links every record. A delta night (the base night's model, match settings and
    caches at hand) works on the *affected* records only: the changed rows, and every record of
    a base component (records joined by usable links) that holds a changed, removed or reviewed
    record or gains a usable link to one. Components are closed under links, so clustering,
    IDs, golden records and the review band of every other record are last night's, and the
    affected part is computed exactly as a full rebuild would compute it.
    """
    start = time.perf_counter()
    out.mkdir(parents=True)
    result = EntityLinked(entity)
    tonight, gone, result.unkeyed = _tonight(city, run_id, entity, held)
    settings_json = match.model_dump_json()
    base = base_state.folder
    model = None if retrain or base is None else base_state.model()
    delta = (
        not full
        and model is not None
        and base is not None
        and all((base / f).is_file() for f in _DELTA_CACHES)  # else: made by an older govmdm
        and base_state.text("match.json") == settings_json
    )
    (out / "match.json").write_text(settings_json)

    # 1. tonight's records: last night's, less the replaced and the removed, plus tonight's
    changed = pd.Index(tonight[RECORD].to_pandas())
    removed = changed.union(pd.Index(gone))
    previous = base_state.records()
    if previous is not None and previous.num_rows:
        left_over = pc.is_in(previous[RECORD], value_set=pa.array(gone, pa.string()))
        result.removed = int(
            pc.sum(pc.and_(left_over, pc.invert(_is_in(previous[RECORD], changed)))).as_py() or 0
        )
        kept = previous.filter(pc.invert(_is_in(previous[RECORD], removed)))
        if not kept.schema.equals(tonight.schema):  # state written by an older govmdm
            kept = kept.select(tonight.schema.names).cast(tonight.schema)
        all_records = pa.concat_tables([kept, tonight])
    else:
        all_records = tonight
    if previous is None or not delta:  # a delta night appends: order is nobody's business
        all_records = all_records.take(pc.sort_indices(all_records, [(RECORD, "ascending")]))
    write_state(all_records, out, "records")
    failpoints.reached("link:records")
    result.records, result.changed = all_records.num_rows, tonight.num_rows

    # 2. candidate pairs, comparisons and scores
    auto = match.thresholds.auto_link
    if delta:
        assert base is not None and model is not None
        say(f"{entity}: blocking {len(changed):,} changed rows against the cached keys")
        old_keys = base_state.read("blockkeys")
        mine = candidate_pairs(
            _records_frame(tonight, None),
            match.blocking,
            max_block=match.max_block,
            keep_keys=True,
        ).keys
        assert mine is not None
        keys = pa.concat_tables(
            [old_keys.filter(pc.invert(_is_in(old_keys[RECORD], removed))), mine]
        )
        found = delta_candidates(
            keys, set(changed), match.blocking, records=all_records.num_rows,
            max_block=match.max_block,
        )  # fmt: skip
        pairs = found.pairs
        ends = pd.Index(pairs.get_level_values(0)).union(pd.Index(pairs.get_level_values(1)))
        compared = _records_frame(all_records, ends.union(changed))
    else:
        say(f"{entity}: blocking {all_records.num_rows:,} rows")
        compared = _records_frame(all_records, None)
        found = candidate_pairs(compared, match.blocking, max_block=match.max_block, keep_keys=True)
        keys = found.keys
        pairs = found.pairs
    assert keys is not None
    write_state(keys, out, "blockkeys")
    result.blocking = found.report.as_dict()
    result.candidate_pairs = result.pairs_compared = len(pairs)
    say(f"{entity}: comparing {len(pairs):,} pairs")
    levels = cmp.compare(compared, pairs, entity)
    if model is None:
        say(f"{entity}: training the model (EM)")
        model = _train(compared, levels, entity, settings)
        result.model_trained = True
    (out / "model.json").write_text(model.to_json())
    fresh = _edges(compared, pairs, levels, model, entity, match.thresholds.keep)
    failpoints.reached("link:scored")

    # 3. the affected records and their edges
    present = all_records[RECORD]
    decided = decisions[
        pc.is_in(pa.array(decisions["left_record"], pa.string()), value_set=present).to_numpy(
            zero_copy_only=False
        )
        & pc.is_in(pa.array(decisions["right_record"], pa.string()), value_set=present).to_numpy(
            zero_copy_only=False
        )
    ]
    if delta:
        assert base is not None
        usable = fresh["rule"].notna() | (fresh["probability"] >= auto)
        seeds = removed.union(
            pd.Index(pd.concat([fresh.loc[usable, "left"], fresh.loc[usable, "right"],
                                decided["left_record"], decided["right_record"]]))
        )  # fmt: skip
        components = base_state.read("components")
        hit = pc.unique(components.filter(_is_in(components[RECORD], seeds))["component"])
        in_old = pc.is_in(components["component"], value_set=hit)
        affected_old = pd.Index(components.filter(in_old)[RECORD].to_pandas())
        affected = affected_old.difference(removed).union(changed)
        base_edges = base_state.read("edges")
        touching = pc.or_(
            _is_in(base_edges["left"], affected_old), _is_in(base_edges["right"], affected_old)
        )
        carried = base_edges.filter(touching).to_pandas()
        carried = carried[~(carried["left"].isin(removed) | carried["right"].isin(removed))]
        edges = pd.concat([carried.drop(columns=["accepted"]), fresh], ignore_index=True)
        base_xw = base_state.read("crosswalk")
        base_xw_affected = base_xw.filter(_is_in(base_xw[RECORD], affected_old)).to_pandas()
        outside = pd.Index(edges["left"]).union(pd.Index(edges["right"])).difference(affected)
        outside_master = (
            base_xw.filter(_is_in(base_xw[RECORD], outside))
            .select([RECORD, "master_id"])
            .to_pandas()
            .set_index(RECORD)["master_id"]
        )
        records = _records_frame(all_records, affected)
        hard_keys = pd.concat(
            [records[HARD_KEY[entity]], _records_frame(all_records, outside)[HARD_KEY[entity]]]
        )
    else:
        affected_old = pd.Index([], dtype=object)  # only a delta night carries rows over
        edges = fresh
        base_xw_affected = base_state.read("crosswalk").to_pandas() if base else None
        outside_master = pd.Series(dtype=object)
        records = compared
        hard_keys = records[HARD_KEY[entity]]
    result.records_relinked = len(records)
    del all_records, present  # the Arrow copy of every record: not needed any more

    # 4. clusters and components of the affected records
    say(f"{entity}: clustering {len(records):,} records")
    labels, comp, accepted, counts = _cluster(records, edges, decided, entity, auto)
    failpoints.reached("link:clustered")
    for k, v in counts.items():
        setattr(result, k, v)
    edges = edges.assign(accepted=accepted)

    # 5. master IDs
    say(f"{entity}: master IDs and golden records")
    prev = (
        base_xw_affected[[RECORD, "master_id"]]
        if base_xw_affected is not None
        else pd.DataFrame({RECORD: pd.Series(dtype=str), "master_id": pd.Series(dtype=str)})
    )
    registry = base_state.retired()
    ids = assign_ids(
        pd.DataFrame({RECORD: records.index, "cluster": labels}), prev, entity=entity,
        next_seq=next_seq, retired=registry,
    )  # fmt: skip
    master_of = pd.Series(ids.assignment["master_id"].to_numpy(), index=records.index)
    write_state(_events(ids.events, entity), out, "events")
    write_state(_retired(registry, ids.events, prev, run_id), out, "retired")
    result.events = {
        k: int(v) for k, v in pd.Series([e.event for e in ids.events]).value_counts().items()
    }
    touched = set(prev["master_id"]) | set(master_of)

    # 6. crosswalk: how each record joined its entity
    crosswalk = _crosswalk(records, edges[edges["accepted"]], master_of, base_xw_affected, run_id)

    # 7. golden records, provenance, conflicts
    member_rows = records.assign(master_id=master_of)
    if entity == "enterprise":  # a valid credit code carries the organization code (chars 9–17)
        member_rows["org_code"] = member_rows["org_code"].fillna(member_rows["uscc"].str[8:17])
    authority = {
        a: d.code for a in ATTRIBUTES[entity] if (d := city.authority(entity, a)) is not None
    }
    golden, provenance, conflicts = survive(member_rows, entity, authority, match.survivorship_rank)
    extra = member_rows.groupby("master_id").agg(
        member_count=("department", "size"), updated_at=("updated_at", "max")
    )
    extra["departments"] = _departments(member_rows)
    golden["master_id"] = golden["master_id"].astype(object)  # also when nothing was relinked
    extra.index = extra.index.astype(object)
    golden = golden.merge(extra, left_on="master_id", right_index=True)
    golden["run_id"] = _changed_by(golden, base_state, run_id)
    provenance = provenance.assign(entity=entity)
    conflicts = conflicts.assign(entity=entity, run_id=run_id)

    # 8. review queue: undecided pairs in the review band that ended in different entities
    everyone = pd.concat([master_of, outside_master])
    review = _review_band(edges, hard_keys, everyone, decisions, model, match, entity, run_id)
    if base is not None and state_file(base, "review").is_file() and len(review):
        # a pair keeps the night it was first queued
        queued = base_state.read("review", ["left_record", "right_record", "run_id"]).to_pandas()
        since = review[["left_record", "right_record"]].merge(
            queued, on=["left_record", "right_record"], how="left"
        )["run_id"]
        review["run_id"] = since.fillna(run_id).to_numpy()

    # 9. tonight's state: the affected part, plus the rest of last night's
    tail = {
        "edges": edges, "components": comp.reset_index(), "crosswalk": crosswalk,
        "golden": golden, "provenance": provenance, "conflicts": conflicts, "review": review,
    }  # fmt: skip
    for name, frame in tail.items():
        kept_rows = None
        if delta:
            assert base is not None
            kept_rows = _kept(name, base_state.read(name), affected_old, removed,
                              set(prev["master_id"]), run_id)  # fmt: skip
        _write_merged(out, name, frame, kept_rows)
    if not delta:
        touched |= set(golden["master_id"])
    write_state(pd.DataFrame({"master_id": sorted(touched)}), out, "touched")

    totals = read_state(out, "golden", ["member_count"])["member_count"].to_pandas()
    result.masters = len(totals)
    result.singletons = int((totals == 1).sum())
    result.review_queue = read_state(out, "review", ["run_id"]).num_rows
    result.conflicts = read_state(out, "conflicts", ["master_id"]).num_rows
    result.seconds = round(time.perf_counter() - start, 2)
    return result, ids.next_seq


def _tonight(
    city: CityConfig, run_id: str, entity: str, held: frozenset[str]
) -> tuple[pa.Table, list[str], int]:
    """Tonight's canonical rows of ``entity`` (the record ID first, sorted by it), the record
    IDs that left (deleted at the source, or rejected tonight), and how many rows had no source
    key. Held departments give none of them.

    A row without a source key cannot be tracked from night to night; standardization rejects
    it (``row:key_missing``). One that reaches this point anyway (canonical rows written by an
    older govmdm) is left out and counted, and the night goes on."""
    tables, gone = [], []
    schema = SCHEMAS[entity]
    for dept in city.departments:
        if dept.code in held:
            continue
        folder = canonical_dir(city.var_dir, run_id, dept.code)
        path = folder / f"{entity}.parquet"
        if path.is_file():
            tables.append(pq.read_table(path).select(schema.names).cast(schema))
        rejects = folder / "rejects.parquet"
        if rejects.is_file():
            r = pq.read_table(rejects, columns=["entity", *_META]).to_pandas()
            r = r[(r["entity"] == entity) & r["source_key"].notna()]
            gone += [record_id(*row) for row in r[_META].itertuples(index=False, name=None)]
        for table in dept.tables:
            if table.entity != entity:
                continue
            deleted = deleted_path(city.var_dir, run_id, dept.code, table.name)
            if deleted.is_file():
                keys = pq.read_table(deleted).column(ROW_KEY).to_pylist()
                gone += [record_id(dept.code, table.name, k) for k in keys]
    rows = pa.concat_tables(tables) if tables else schema.empty_table()
    key = rows["source_key"]
    keyless = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(key), ""), True)
    unkeyed = pc.sum(keyless).as_py() or 0
    if unkeyed:
        lost = rows.filter(keyless).group_by(["department", "source_table"]).aggregate([])
        log.warning(
            "night %s: %d %s row(s) without a source key left out (%s). Fix: standardize the "
            "night again: such rows go to rejects with row:key_missing",
            run_id, unkeyed, entity,
            ", ".join(f"{d}.{t}" for d, t in zip(*lost.to_pydict().values(), strict=True)),
        )  # fmt: skip
        rows = rows.filter(pc.invert(keyless))
    ids = pc.binary_join_element_wise(*[rows[c] for c in _META], "/")  # = record_id()
    rows = rows.add_column(0, RECORD, ids)
    return rows.take(pc.sort_indices(rows, [(RECORD, "ascending")])), gone, unkeyed


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


_DELTA_CACHES = ("records.arrow", "blockkeys.arrow", "components.arrow", "edges.arrow",
                 "crosswalk.arrow", "match.json")  # fmt: skip
_NOT_LINKED = ("extras",)  # columns linking never reads (raw_* neither): left in Arrow


def _is_in(values: pa.ChunkedArray | pa.Array, ids: pd.Index) -> pa.ChunkedArray | pa.Array:
    if pa.types.is_null(values.type):  # an all-NULL column written from an empty frame
        values = values.cast(pa.string())
    return pc.is_in(values, value_set=pa.array(ids.to_numpy(dtype=object), pa.string()))


def _records_frame(records: pa.Table, ids: pd.Index | None) -> pd.DataFrame:
    """The records with ``ids`` (all if None) as pandas, indexed by record ID, sorted, without
    the columns linking never reads."""
    if ids is not None:
        records = records.filter(_is_in(records[RECORD], ids))
    columns = [c for c in records.column_names if c not in _NOT_LINKED and not c.startswith("raw_")]
    return records.select(columns).to_pandas().set_index(RECORD).sort_index()


def _cluster(
    records: pd.DataFrame,
    edges: pd.DataFrame,
    decided: pd.DataFrame,
    entity: str,
    auto: float,
) -> tuple[np.ndarray, pd.Series, np.ndarray, dict[str, int]]:
    """Cluster ``records`` along the usable ``edges`` and reviewers' decisions.

    Returns each record's cluster label, its component (the smallest record ID of the records
    joined by usable links and reviewers' links, refused or not), which edges were accepted,
    and the link counts."""
    position = pd.Series(np.arange(len(records)), index=records.index)
    li = position.reindex(edges["left"]).to_numpy(dtype=float)
    ri = position.reindex(edges["right"]).to_numpy(dtype=float)
    inside = ~np.isnan(li) & ~np.isnan(ri)
    rule = edges["rule"].notna().to_numpy()
    use = (rule | (edges["probability"].to_numpy() >= auto)) & inside
    if ((rule | (edges["probability"].to_numpy() >= auto)) & ~inside).any():
        raise RuntimeError(  # the affected set is closed under usable links by construction
            f"{entity}: a usable link leaves the records being relinked; "
            "run `govmdm consolidate --full` and report this as a bug"
        )
    li_used, ri_used = li[use].astype(np.int64), ri[use].astype(np.int64)
    tier = np.where(rule[use], TIER_RULE, TIER_MODEL)
    graph = list(
        zip(li_used.tolist(), ri_used.tolist(), tier.tolist(),
            edges["probability"].to_numpy()[use].tolist(), strict=True)
    )  # fmt: skip
    mine = decided[
        decided["left_record"].isin(records.index) & decided["right_record"].isin(records.index)
    ]
    links = mine[mine["decision"] == "link"]
    link_pairs = [
        (int(position[a]), int(position[b]))
        for a, b in zip(links["left_record"], links["right_record"], strict=True)
    ]
    graph += [(a, b, TIER_REVIEW_LINK, 1.0) for a, b in link_pairs]
    aparts = mine[mine["decision"] == "apart"]
    apart = [
        (int(position[a]), int(position[b]))
        for a, b in zip(aparts["left_record"], aparts["right_record"], strict=True)
    ]
    hard = records[HARD_KEY[entity]].where(records[HARD_KEY[entity]].notna(), None).tolist()
    clusters = cluster(len(records), graph, hard_keys=hard, apart=apart)
    counts = {"rule_links": 0, "model_links": 0, "review_links": 0}
    for t, _score in clusters.merged_by.values():
        name = {TIER_RULE: "rule_links", TIER_MODEL: "model_links"}.get(t, "review_links")
        counts[name] += 1
    counts["refused_hard_key"] = sum(r.reason == "hard_key" for r in clusters.refused)
    counts["refused_kept_apart"] = sum(r.reason == "kept_apart" for r in clusters.refused)
    accepted_pairs = {(int(a), int(b)) for a, b in clusters.merged_by}
    accepted = np.zeros(len(edges), dtype=bool)
    at = np.flatnonzero(use)
    lo, hi = np.minimum(li_used, ri_used), np.maximum(li_used, ri_used)
    accepted[at] = [(int(a), int(b)) in accepted_pairs for a, b in zip(lo, hi, strict=True)]
    # components: usable links and reviewers' links, whether the clustering took them or not
    n = len(records)
    a = np.concatenate([li_used, np.array([p[0] for p in link_pairs], dtype=np.int64)])
    b = np.concatenate([ri_used, np.array([p[1] for p in link_pairs], dtype=np.int64)])
    graph_matrix = sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, comp_of = csgraph.connected_components(graph_matrix, directed=False)
    # a component's label: its smallest record ID (records are sorted: the lowest position)
    lowest = np.full(comp_of.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(lowest, comp_of, np.arange(n))
    ids = records.index.to_numpy(dtype=object)
    component = pd.Series(ids[lowest[comp_of]], index=records.index, name="component")
    return clusters.labels, component, accepted, counts


def _departments(members: pd.DataFrame) -> pd.Series:
    """Each master ID's member departments, sorted and comma-joined (one vectorised string
    operation per department, not one Python call per master)."""
    masters = pd.Index(pd.unique(members["master_id"])).sort_values()
    joined = pd.Series("", index=masters)
    for dept, ids in members.groupby("department", sort=True)["master_id"]:
        joined = joined + np.where(masters.isin(ids), f"{dept},", "")
    return joined.str[:-1]


def _review_band(
    edges: pd.DataFrame,
    hard_keys: pd.Series,
    master_of: pd.Series,
    decisions: pd.DataFrame,
    model: FellegiSunter,
    match: EntityMatch,
    entity: str,
    run_id: str,
) -> pd.DataFrame:
    """Undecided pairs in the review band that ended in different entities."""
    t = match.thresholds
    band = edges[
        edges["rule"].isna()
        & (edges["probability"] >= t.review)
        & (edges["probability"] < t.auto_link)
    ]
    apart_now = (
        master_of.reindex(band["left"]).to_numpy() != master_of.reindex(band["right"]).to_numpy()
    )
    # two different valid IDs (credit codes) can never be linked: no use asking a reviewer
    ka, kb = hard_keys.reindex(band["left"]).to_numpy(), hard_keys.reindex(band["right"]).to_numpy()
    linkable = ~(pd.notna(ka) & pd.notna(kb) & (ka != kb))
    band = band[apart_now & linkable]
    done = set(zip(decisions["left_record"], decisions["right_record"], strict=True))
    open_pair = [
        (a, b) not in done and (b, a) not in done
        for a, b in zip(band["left"], band["right"], strict=True)
    ]
    band = band[np.asarray(open_pair, dtype=bool)]
    return _review(band, model, master_of, entity, run_id)


_SORT = {
    "edges": ["left", "right"],
    "components": [RECORD],
    "crosswalk": [RECORD],
    "golden": ["master_id"],
    "provenance": ["master_id", "attribute"],
    "conflicts": ["master_id", "attribute", "department", "source_table", "source_key"],
    "review": ["left_record", "right_record"],
}


def _kept(
    name: str,
    table: pa.Table,
    affected_old: pd.Index,
    removed: pd.Index,
    old_ids: set[str],
    run_id: str,
) -> pa.Table:
    """The rows of last night's state file ``name`` that a delta night carries over as they are:
    those of records (master IDs) it did not relink."""
    redone = affected_old.union(removed)
    if name == "edges":
        hit = pc.or_(_is_in(table["left"], redone), _is_in(table["right"], redone))
    elif name == "review":
        hit = pc.or_(_is_in(table["left_record"], redone), _is_in(table["right_record"], redone))
    elif name in ("components", "crosswalk"):
        hit = _is_in(table[RECORD], redone)
    else:
        hit = pc.is_in(table["master_id"], value_set=pa.array(sorted(old_ids), pa.string()))
    kept = table.filter(pc.invert(hit))
    if name == "conflicts":  # still standing tonight
        i = kept.schema.get_field_index("run_id")
        kept = kept.set_column(i, "run_id", pa.array([run_id] * kept.num_rows, pa.string()))
    return kept


def _changed_by(golden: pd.DataFrame, base: _BaseState, run_id: str) -> pd.Series:
    """Each golden record's ``run_id``: the night that last changed it — last night's value
    where the record is exactly as last night published it, else tonight."""
    if base.folder is None or not state_file(base.folder, "golden").is_file() or not len(golden):
        return pd.Series(run_id, index=golden.index)
    old_table = base.read("golden")
    ids = pa.array(golden["master_id"].to_numpy(dtype=object), pa.string())
    old = old_table.filter(pc.is_in(old_table["master_id"], value_set=ids)).to_pandas()
    same = [c for c in golden.columns if c in old.columns and c != "run_id"]
    if "master_id" not in same:
        return pd.Series(run_id, index=golden.index)
    try:
        found = golden[same].merge(old[[*same, "run_id"]], on=same, how="left")["run_id"]
    except (ValueError, TypeError):  # a column changed type (an upgrade): all of it is new
        return pd.Series(run_id, index=golden.index)
    return pd.Series(found.fillna(run_id).to_numpy(), index=golden.index)


def _write_merged(folder: Path, name: str, new: pd.DataFrame, kept: pa.Table | None) -> None:
    """Tonight's rows after last night's ``kept`` ones (a delta night), or sorted by
    :data:`_SORT` (a full night)."""
    fresh = pa.Table.from_pandas(new, preserve_index=False)
    if kept is not None:
        for f in kept.schema:
            if f.name not in fresh.column_names:
                fresh = fresh.append_column(f.name, pa.nulls(fresh.num_rows, f.type))
        fresh = fresh.select(kept.schema.names)
        if not fresh.num_rows:  # an empty frame's columns have no real types: kept's stand
            fresh = kept
        elif kept.num_rows:  # an all-NULL column is typed null: the other side's type wins
            schema = pa.unify_schemas([kept.schema, fresh.schema], promote_options="permissive")
            fresh = pa.concat_tables([kept.cast(schema), fresh.cast(schema)])
    if kept is None:  # a full night writes sorted files; a delta night appends its rows
        fresh = fresh.take(pc.sort_indices(fresh, [(c, "ascending") for c in _SORT[name]]))
    write_state(fresh, folder, name)


# --- state files ---------------------------------------------------------------------------------
# A night's master state is Arrow IPC (LZ4): a delta night reads and rewrites it whole, and IPC
# reads ~8x and writes ~3x faster than Parquet for these tables (bench/link_bench.py).


def state_file(folder: Path, name: str) -> Path:
    """The file of state table ``name`` (``records``, ``edges``, ``crosswalk``, …)."""
    return folder / f"{name}.arrow"


def read_state(folder: Path, name: str, columns: list[str] | None = None) -> pa.Table:
    """A state table (optionally only ``columns``); a night linked by an older govmdm has it as
    Parquet, which is read as well. A file that is there but cannot be read raises
    :class:`DamagedState` naming it."""
    path = state_file(folder, name)
    if not path.is_file() and (old := folder / f"{name}.parquet").is_file():
        path = old
    if not path.is_file():
        raise FileNotFoundError(f"no master-state file {path}")
    try:
        if path.suffix == ".parquet":
            return pq.read_table(path, columns=columns)
        return feather.read_table(path, columns=columns)
    except (OSError, pa.ArrowException, ValueError, KeyError) as exc:
        raise DamagedState(path, exc) from exc


class _BaseState:
    """Last night's master state of one entity, as linking reads it.

    A damaged file raises :class:`DamagedState`. On a full night, the files whose content the
    warehouse also holds (the crosswalk, golden records and review queue) are read from the
    warehouse instead when it holds that very night, and last night's records are not needed
    when every department was read in full tonight; each file recovered so is noted."""

    _FROM_WAREHOUSE = frozenset({"crosswalk", "golden", "review"})

    def __init__(
        self,
        folder: Path | None,
        entity: str,
        *,
        fallback: bool,
        warehouse: str | None,
        records_needed: bool,
    ) -> None:
        self.folder, self.entity = folder, entity
        self.fallback, self.warehouse, self.records_needed = fallback, warehouse, records_needed
        self.recovered: list[str] = []

    def read(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """State table ``name`` (optionally only ``columns``)."""
        assert self.folder is not None
        try:
            return read_state(self.folder, name, columns)
        except DamagedState as exc:
            if not (self.fallback and self.warehouse and name in self._FROM_WAREHOUSE):
                raise
            table = self._from_warehouse(name)
            log.warning("%s; read from the warehouse instead", exc)
            self.recovered.append(f"{exc.path} (read from the warehouse instead)")
            return table.select(columns) if columns else table

    def records(self) -> pa.Table | None:
        """Last night's records (None on a first night, or when tonight read everything)."""
        if self.folder is None:
            return None
        try:
            return read_state(self.folder, "records")
        except DamagedState as exc:
            if self.fallback and not self.records_needed:
                log.warning("%s; every source was read in full tonight: not needed", exc)
                self.recovered.append(f"{exc.path} (not needed: every source was read in full)")
                return None
            raise

    def model(self) -> FellegiSunter | None:
        """Last night's fitted model, or None if it has none."""
        assert self.folder is not None
        path = self.folder / "model.json"
        if not path.is_file():
            return None
        try:
            return FellegiSunter.from_json(path.read_text())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DamagedState(path, exc) from exc

    def text(self, name: str) -> str | None:
        """A small text file of last night's state (None if missing or unreadable: a cache)."""
        assert self.folder is not None
        try:
            return (self.folder / name).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def retired(self) -> pd.DataFrame:
        """IDs retired on earlier nights with the records they last held (empty if none)."""
        if self.folder is None or not state_file(self.folder, "retired").is_file():
            return pd.DataFrame({c: pd.Series(dtype=object) for c in _RETIRED})
        return self.read("retired").to_pandas()

    def _from_warehouse(self, name: str) -> pa.Table:
        assert self.warehouse is not None
        engine = engine_for(self.warehouse)
        try:
            if name == "golden":
                table = person_table if self.entity == "person" else enterprise_table
                frame = read(engine, table)
            elif name == "crosswalk":
                frame = read(engine, crosswalk_table, entity=self.entity).drop(columns="entity")
                keys = frame[_META].astype(str).agg("/".join, axis=1) if len(frame) else []
                frame.insert(0, RECORD, keys)
            else:
                frame = read(engine, review_queue_table, entity=self.entity)
        finally:
            engine.dispose()
        return pa.Table.from_pandas(frame, preserve_index=False)


_RETIRED = ["master_id", RECORD, "run_id"]


def _retired(
    registry: pd.DataFrame, events: list[IdEvent], prev: pd.DataFrame, run_id: str
) -> pd.DataFrame:
    """The retired-ID registry after tonight: less the IDs restored tonight, plus the IDs
    retired tonight with the records they held, so a record that comes back later gets its old
    ID back (:func:`master_data.identity.assign_ids`)."""
    restored = {e.master_id for e in events if e.event == "restored"}
    retired = {e.master_id for e in events if e.event == "retired"}
    last = prev[prev["master_id"].isin(retired)][["master_id", RECORD]].assign(run_id=run_id)
    out = pd.concat([registry[~registry["master_id"].isin(restored)][_RETIRED], last])
    return out.astype(object).sort_values(["master_id", RECORD]).reset_index(drop=True)


def write_state(rows: pa.Table | pd.DataFrame, folder: Path, name: str) -> None:
    """Write a state table (a DataFrame without its index)."""
    table = (
        pa.Table.from_pandas(rows, preserve_index=False) if isinstance(rows, pd.DataFrame) else rows
    )
    feather.write_feather(table, state_file(folder, name), compression="lz4")


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
            "weights": pd.Series(weights, dtype=object),
            "run_id": run_id,
        }
    )


def _relationships(work: Path, run_id: str) -> tuple[int, int]:
    """Legal representatives and employers resolved to master IDs, over every golden record;
    a golden record whose resolved reference changed tonight joins its entity's touched IDs."""

    def owner(entity: str, column: str) -> pd.Series:
        """``column`` value → master ID of the first record (by record ID) that has it."""
        records = read_state(work / entity, "records", [RECORD, column])
        records = records.filter(pc.is_valid(records[column]))
        xw = read_state(work / entity, "crosswalk", [RECORD, "master_id"])
        both = records.join(xw, RECORD)
        both = both.take(pc.sort_indices(both, [(RECORD, "ascending")])).to_pandas()
        return both.drop_duplicates(column).set_index(column)["master_id"]

    def resolve(entity: str, target: str, evidence: str, of: pd.Series) -> pd.DataFrame:
        golden = read_state(work / entity, "golden").to_pandas()
        before = golden[target] if target in golden.columns else pd.Series(None, index=golden.index)
        golden[target] = golden[evidence].map(of)
        differs = ~(before.eq(golden[target]) | (before.isna() & golden[target].isna()))
        moved = golden.loc[differs, "master_id"]
        golden.loc[differs & golden[target].notna() & before.notna(), "run_id"] = run_id
        touched = read_state(work / entity, "touched")["master_id"].to_pandas()
        write_state(
            pd.DataFrame({"master_id": sorted(set(touched) | set(moved))}), work / entity, "touched"
        )
        write_state(golden, work / entity, "golden")
        return golden

    gp = resolve("person", "employer_master_id", "employer_uscc", owner("enterprise", "uscc"))
    ge = resolve("enterprise", "legal_rep_master_id", "legal_rep_id", owner("person", "id_number"))
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
    write_state(rel, work, "relationships")
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
    write_state(unresolved, work, "unresolved")
    return len(rel), len(unresolved)


# --- publish -------------------------------------------------------------------------------------


def publish(
    city: CityConfig, run_id: str, after_publish: AfterPublish | None = None
) -> dict[str, Any]:
    """Publish the night :func:`link` prepared, atomically, then move the watermarks of the
    departments whose rows it published.

    ``after_publish`` runs once the night is committed, before the watermarks move (the
    pipeline passes the analyst access layer's hook: views, grants, catalog, audit row).

    A delta night whose base night is what the warehouse holds publishes incrementally: only
    the rows of the master IDs it touched are replaced (in the same single transaction).
    Anything else — a full night, or a rerun of the latest night — replaces the tables whole.
    A night is published only on top of the night it was linked on: if another night was
    published since, or this night is older than the latest published one, it raises
    :class:`ConsolidateError` (publishing it would undo a newer night) and changes nothing.
    """
    with night_lock(warehouse_url(city), run_id, "publish", lock_dir=city.var_dir / "warehouse"):
        failpoints.reached("publish:start")
        return _publish_night(city, run_id, after_publish)


def _publish_night(
    city: CityConfig, run_id: str, after_publish: AfterPublish | None
) -> dict[str, Any]:
    state = master_dir(city.var_dir, run_id)
    summary_path = state / "summary.json"
    if not summary_path.is_file():
        raise ConsolidateError(
            f"no linked night {run_id!r} under {state}. Fix: run `govmdm link --run-id {run_id}`"
        )
    relink = f"link it again: `govmdm consolidate --run-id {run_id}`"
    try:
        summary = _read_json(summary_path)
    except (OSError, ValueError) as exc:
        raise DamagedState(summary_path, exc, relink) from exc
    engine = engine_for(warehouse_url(city))
    try:
        held = latest_run(engine)
        _refuse_to_undo(engine, run_id, summary.get("base_run"), held)
        touched: frozenset[str] | None = None
        try:
            if (
                summary["mode"] == "delta"
                and held is not None
                and held["run_id"] == summary["base_run"]
            ):
                touched = frozenset(
                    m for e in ENTITIES
                    for m in read_state(state / e, "touched")["master_id"].to_pylist()
                )  # fmt: skip
            frames = _publish_frames(state, run_id, touched)
        except DamagedState as exc:
            raise exc.with_fix(relink) from exc.cause
        stored = (Path("master") / state.name).as_posix()  # relative to var/: var/ can move
        night = Night(run_id, summary["mode"], stored, summary, frames, touched)
        publish_night(engine, night)
        failpoints.reached("publish:committed")
        if after_publish is not None:
            after_publish(engine, city, run_id, summary)
    finally:
        engine.dispose()
    summary["published"] = "incremental" if touched is not None else "whole"
    departments = summary.get("departments")
    if departments is None:  # linked by an older govmdm: everyone but the held-back
        with RunState.for_city(city) as state_db:
            for code in summary.get("held_back", []):
                state_db.discard_pending(run_id, code)
    summary["watermarks_committed"] = commit_watermarks(city, run_id, departments)
    failpoints.reached("publish:watermarks-committed")
    summary["states_pruned"] = prune_states(city)
    failpoints.reached("publish:done")
    return summary


def _refuse_to_undo(
    engine: Any, run_id: str, base_run: str | None, held: Mapping[str, Any] | None
) -> None:
    """Raise unless publishing ``run_id`` (linked on ``base_run``) builds on what the warehouse
    holds (``held``): the night it was linked on, or the night itself (a rerun)."""
    current = held["run_id"] if held is not None else None
    if current == run_id:
        before = latest_run(engine, before=run_id)
        if (before["run_id"] if before else None) == base_run:
            return
    elif current == base_run:
        return
    if current is not None and current != run_id and published_run(engine, run_id) is not None:
        raise ConsolidateError(_older_night(run_id, current))
    on = f"night {base_run}" if base_run else "an empty warehouse"
    now = f"night {current}" if current else "no night at all"
    raise ConsolidateError(
        f"night {run_id} was linked on {on}, but the warehouse holds {now} now (another night "
        f"was published or rolled back meanwhile); publishing {run_id} would undo it. Nothing "
        f"was published. Fix: link it again: `govmdm consolidate --run-id {run_id}`"
    )


def _older_night(run_id: str, latest: str) -> str:
    return (
        f"night {run_id} was published before night {latest}; linking and publishing it again "
        f"would put the golden tables back to {run_id} while the watermarks stay at {latest}'s, "
        f"losing what was read since. Fix: rerun night {latest} instead (it is replayed from "
        "its raw data), or read every source in full as a new night "
        "(`govmdm extract --full --run-id NEW`, then standardize and consolidate NEW)"
    )


def prune_states(city: CityConfig, keep: int | None = None) -> list[str]:
    """Remove the master state of every night but the ``keep`` newest published ones
    (``state_nights_kept`` in config/matching.yaml) and any night being linked now; which."""
    if keep is None:
        keep = load_match_settings(city.root / "config").state_nights_kept
    engine = engine_for(warehouse_url(city))
    try:
        runs = read(engine, run_table).sort_values("published_at", ascending=False)
    finally:
        engine.dispose()
    folders = [state_dir_of(city.var_dir, r).resolve() for r in runs.to_dict("records")]
    kept = set(folders[:keep])
    published = set(folders)
    removed = []
    for folder in sorted((city.var_dir / "master").glob("run=*")):
        # unpublished folders are a night in progress (or a link not yet published): left alone
        if folder.resolve() in published and folder.resolve() not in kept:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name.removeprefix("run="))
    return removed


def _publish_frames(
    state: Path, run_id: str, touched: frozenset[str] | None
) -> dict[str, pd.DataFrame]:
    """The warehouse rows of the night in ``state``: every row, or (``touched`` given) those of
    the current tables that name a touched master ID, plus the nightly tables' rows."""
    ids = pd.Index(sorted(touched)) if touched is not None else None

    def rows(folder: Path, name: str, table: str, **extra: str) -> pd.DataFrame:
        data = read_state(folder, name)
        keys = KEY_COLUMNS.get(table)
        if ids is not None and keys:
            hit = _is_in(data[keys[0]], ids)
            for k in keys[1:]:
                hit = pc.or_(hit, _is_in(data[k], ids))
            data = data.filter(hit)
        return data.to_pandas().assign(**extra)

    frames = {
        "mdm_person": rows(state / "person", "golden", "mdm_person"),
        "mdm_enterprise": rows(state / "enterprise", "golden", "mdm_enterprise"),
        "mdm_relationship": rows(state, "relationships", "mdm_relationship"),
        "mdm_unresolved_reference": rows(state, "unresolved", "mdm_unresolved_reference"),
    }
    for name, file in (
        ("mdm_provenance", "provenance"),
        ("mdm_crosswalk", "crosswalk"),
        ("mdm_conflict", "conflicts"),
        ("mdm_id_event", "events"),
        ("mdm_review_queue", "review"),
    ):
        parts = []
        for e in ENTITIES:
            extra: dict[str, str] = {"entity": e} if name == "mdm_crosswalk" else {}
            if name == "mdm_id_event":
                extra["run_id"] = run_id
            parts.append(rows(state / e, file, name, **extra))
        frames[name] = pd.concat(parts, ignore_index=True)
    return frames


def consolidate(
    city: CityConfig,
    run_id: str,
    *,
    full: bool = False,
    retrain: bool = False,
    held: Collection[str] = (),
    progress: Progress | None = None,
) -> Linked:
    """:func:`link` then :func:`publish`, holding the night lock across both."""
    with night_lock(
        warehouse_url(city), run_id, "consolidate", lock_dir=city.var_dir / "warehouse"
    ):
        linked = link(city, run_id, full=full, retrain=retrain, held=held, progress=progress)
        publish(city, run_id)
    return linked


# --- helpers -------------------------------------------------------------------------------------


def _decisions(engine: Any) -> pd.DataFrame:
    return read(engine, review_decision_table)


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data
