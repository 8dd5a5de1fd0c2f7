"""Linking a night: canonical rows into master entities, written as the night's master state.

:func:`link` brings the master state of the last published night up to tonight — member rows
replaced by their new versions, deleted and newly rejected rows removed — and links, for persons
and then enterprises, the records :mod:`master_data.scope` chooses (every record on a full
night, the delta closure otherwise), each stage in its own module:

1. **Candidates** (:mod:`master_data.pairs`): the blocking passes of ``config/matching.yaml``;
   on a delta night only the pairs touching a new or changed row (all others keep last night's
   comparison).
2. **Comparison and score**: Chinese-aware comparison levels (:mod:`master_data.compare`),
   scored by a Fellegi–Sunter model trained by EM on full nights (:mod:`master_data.train`)
   and reused on delta nights, and the hard-key rules (:mod:`master_data.deterministic`).
3. **Clusters** (:mod:`master_data.cluster`): reviewers' links, rules, then model links at or
   above ``auto_link``; never two different valid IDs (credit codes) in one cluster, never two
   rows a reviewer kept apart.
4. **Master IDs** carried forward by overlap (:mod:`master_data.identity`), **golden records**,
   provenance and conflicts (:mod:`master_data.golden`), the **review queue**
   (:mod:`master_data.review_queue`), and the person↔enterprise **relationships**
   (:mod:`master_data.relationships`).

Everything is written under ``<var>/master/run=<run_id>/`` (:mod:`master_data.night_state`) and
nothing in the warehouse changes; :func:`master_data.publish.publish` then publishes it.
Rerunning a night starts again from the last night published before it. One night at a time
links or publishes (:func:`store.warehouse.night_lock`).

>>> result = link(city, "2026-07-01")
>>> result.mode
'delta'
"""

from __future__ import annotations

import functools
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

from etl.config import CityConfig
from etl.state import warehouse_url
from master_data import compare as cmp
from master_data.cluster import cluster_records
from master_data.engine import LinkEngine, RecordFiles, Scored
from master_data.golden import golden_records
from master_data.identity import assign_ids, crosswalk, events_table, retired_after
from master_data.model import FellegiSunter
from master_data.night_state import (
    BaseState,
    ConsolidateError,
    DamagedState,
    older_night,
    read_state,
    write_layered,
    write_merged,
    write_state,
)
from master_data.pairs import Found, candidates, edges
from master_data.records import (
    RECORD,
    DeltaRecords,
    Records,
    canonical_files,
    is_in,
    linked_columns,
    pick,
    tonight,
)
from master_data.relationships import relationships
from master_data.review_queue import review_queue, since
from master_data.scope import (
    Relink,
    closure,
    delivered,
    delta_records,
    everything,
    night_records,
    nothing_to_link,
    read_in_full,
    refuse_stale,
)
from master_data.settings import ENTITIES, EntityMatch, MatchSettings, load_match_settings
from master_data.tf import Frequencies, attach, term_frequencies
from master_data.train import features_changed, features_left_out, is_rules_only, train
from store import failpoints
from store.layout import master_dir, state_dir_of, warehouse_dir
from store.tables import review_decision_table
from store.warehouse import engine_for, latest_run, night_lock, published_run, read

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


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
    features_left_out: list[str] = field(default_factory=list)  # no values to learn from
    rules_only: bool = False  # too few records or pairs to train: only the rules linked
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


def link(
    city: CityConfig,
    run_id: str,
    *,
    full: bool = False,
    retrain: bool = False,
    held: Collection[str] = (),
    settings: MatchSettings | None = None,
    progress: Progress | None = None,
    engine: LinkEngine | None = None,
) -> Linked:
    """Link tonight's canonical rows into master entities under ``master/run=<run_id>``.

    ``full`` compares every candidate pair again (a rebuild); ``retrain`` also fits the model
    afresh (the first night always does both). ``held``: departments whose batch a blocking
    quality rule holds back (``quality.suites.held_departments``): their rows, rejects and
    deletions of tonight are left out, so the master keeps what they published before, and
    publishing leaves their watermarks where they were (the next night reads them again).
    A department whose extraction or standardization of tonight did not finish is left out the
    same way (:func:`etl.standardize.unfinished` says why).

    Raises :class:`ConsolidateError` when there is nothing to link, when a department's rows
    were read before another night moved its watermark (extract the night again), or when the
    last night's master state is damaged (:class:`DamagedState`, naming the file and the fix);
    :class:`store.warehouse.WarehouseBusy` while another night links or publishes.

    ``engine`` (:class:`master_data.engine.LinkEngine`, e.g. :class:`spark.link.SparkLink`)
    blocks, compares, fits, scores and clusters an entity whose records are all linked again;
    the rest, and every delta night, runs here.
    """
    with night_lock(warehouse_url(city), run_id, "link", lock_dir=warehouse_dir(city.var_dir)):
        failpoints.reached("link:start")
        settings = settings or load_match_settings(
            city.config_dir, {d.code for d in city.departments} | set(city.broken)
        )
        return _link_night(city, run_id, full, retrain, held, settings, progress, engine)


@dataclass
class _BaseNight:
    """The night tonight builds on: the last one published before it (``run`` None: none)."""

    run: Mapping[str, Any] | None
    folder: Path | None  # its master state
    holds: bool  # the warehouse holds it now
    rerun: bool  # tonight was published before
    decisions: pd.DataFrame  # reviewers' decisions

    @property
    def run_id(self) -> str | None:
        return str(self.run["run_id"]) if self.run else None


def _base_night(city: CityConfig, run_id: str) -> _BaseNight:
    """The base night of ``run_id``; raises when tonight cannot build on it."""
    engine = engine_for(warehouse_url(city))
    try:
        base = latest_run(engine, before=run_id)
        decisions = read(engine, review_decision_table)
        latest = latest_run(engine)
        rerun = published_run(engine, run_id) is not None
    finally:
        engine.dispose()
    if rerun and latest is not None and latest["run_id"] != run_id:
        raise ConsolidateError(older_night(run_id, latest["run_id"]))
    folder = state_dir_of(city.var_dir, base) if base else None
    if base is not None and folder is not None and not folder.is_dir():
        raise ConsolidateError(
            f"the last published night {base['run_id']!r} kept its master state in {folder}, "
            "which is gone: tonight cannot carry its master IDs forward. Fix: restore the folder "
            "from a backup (govmdm reads it wherever var/ is), or rerun that night (extract, "
            "standardize and consolidate it again: it is replayed from its raw data), then run "
            "this again"
        )
    holds = base is not None and latest == base
    return _BaseNight(base, folder, holds, rerun, decisions)


def _departments(
    city: CityConfig, run_id: str, held: Collection[str], rerun: bool
) -> tuple[list[str], dict[str, str]]:
    """The departments linked tonight, and those left out because their extraction or
    standardization did not finish (with why and the fix)."""
    ready, not_done = delivered(city, run_id, held)
    if not ready:
        raise ConsolidateError(nothing_to_link(city, run_id, held, not_done))
    if not rerun:  # a published night's rows were read on the night it was linked on
        refuse_stale(city, run_id, ready)
    for code, why in sorted(not_done.items()):
        not_done[code] = (
            f"{why}. Fix: `govmdm standardize --run-id {run_id} -d {code}` (after `govmdm "
            f"extract --run-id {run_id} -d {code}` if its extraction failed)"
        )
        log.warning("%s; its rows are not linked tonight and its watermarks stay", not_done[code])
    return ready, not_done


@dataclass
class _Night:
    """What every entity's linking shares on one night."""

    city: CityConfig
    run_id: str
    settings: MatchSettings
    work: Path  # the state folder being written
    full: bool
    retrain: bool
    next_seq: dict[str, int]  # entity → the base night's next free ID number
    decisions: pd.DataFrame
    held: frozenset[str]  # departments whose rows of tonight are left out
    say: Progress
    engine: LinkEngine | None = None  # runs a full relink's heavy steps; None: here


def _link_night(
    city: CityConfig,
    run_id: str,
    full: bool,
    retrain: bool,
    held: Collection[str],
    settings: MatchSettings,
    progress: Progress | None,
    engine: LinkEngine | None = None,
) -> Linked:
    base = _base_night(city, run_id)
    ready, not_done = _departments(city, run_id, held, base.rerun)
    mode = "full" if full or base.folder is None else "delta"
    out = master_dir(city.var_dir, run_id)
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    left_out = frozenset(held) | frozenset(not_done)
    summary = json.loads(base.run["summary"]) if base.run else {}
    night = _Night(
        city,
        run_id,
        settings,
        work,
        full=mode == "full",
        retrain=retrain or base.folder is None,
        next_seq=summary.get("next_seq", {}),
        decisions=base.decisions,
        held=left_out,
        say=progress or (lambda _msg: None),
        engine=engine,
    )
    complete = read_in_full(city, run_id, ready) and not left_out
    linked = Linked(run_id, mode, base.run_id, out, {})
    next_seq: dict[str, int] = {}
    for entity in ENTITIES:
        night.say(f"{entity}: linking")
        state = BaseState(
            base.folder / entity if base.folder else None,
            entity,
            fallback=mode == "full",
            warehouse=warehouse_url(city) if base.holds else None,
            records_needed=not complete,
        )
        try:
            linked.entities[entity], next_seq[entity] = _link_entity(night, entity, state)
        except DamagedState as exc:
            shutil.rmtree(work, ignore_errors=True)
            fix = _recovery(run_id, exc.path, full=mode == "full", retrain=retrain)
            raise exc.with_fix(fix) from exc.cause
        linked.recovered += state.recovered
        failpoints.reached("link:entity-done")
    night.say("relationships")
    linked.departments = sorted(ready)
    linked.held_back = sorted(set(held))
    linked.unfinished = dict(sorted(not_done.items()))
    linked.relationships, linked.unresolved = relationships(work, run_id)
    _put_in_place(work, out, {**linked.summary(), "next_seq": next_seq})
    return linked


def _put_in_place(work: Path, out: Path, summary: dict[str, Any]) -> None:
    """Write the night's summary and move its state from ``work`` to ``out``."""
    (work / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2))
    failpoints.reached("link:before-rename")
    # a rerun replaces a published night's folder: until the new one is in place the old one
    # stays readable as run=<id>.old (store.layout.state_dir_of falls back to it)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    failpoints.reached("link:swapping")
    work.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    failpoints.reached("link:renamed")


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


# --- one entity ----------------------------------------------------------------------------------


def _link_entity(night: _Night, entity: str, base: BaseState) -> tuple[EntityLinked, int]:
    """Link one entity type into ``night.work / entity``; its result and next free ID number.

    The base night's state is carried over (a delta closure) unless tonight is a full night,
    the model is fitted afresh, or the match settings changed since; then every record is
    linked again. Either way the same stages run, on the records the scope holds.
    """
    start = time.perf_counter()
    out = night.work / entity
    out.mkdir(parents=True)
    match = night.settings.entity(entity)
    result = EntityLinked(entity)
    rows, gone, result.unkeyed = tonight(night.city, night.run_id, entity, night.held)
    model = None if night.retrain else base.model()
    last_nights = model  # as read from the base night's file
    if model is not None and is_rules_only(model):  # too few rows last night: try again
        model = None
    if model is not None and (changed_features := features_changed(model, entity)):
        log.warning(
            "%s: the base night's model compares %s with other levels than this version "
            "does: the model is fitted afresh tonight",
            entity,
            ", ".join(changed_features),
        )
        model = None
    settings_json = match.model_dump_json()
    carry = not night.full and model is not None and base.text("match.json") == settings_json
    (out / "match.json").write_text(settings_json)

    records: Records
    if carry:  # the base night's records in the columns linking reads, added to in layers
        records, removed, result.removed = delta_records(linked_columns(rows), gone, base)
        whole = functools.partial(_whole_records, rows, gone, base)
        write_layered(out, "records", whole, base=base.folder, removed=removed, added=rows)
        del whole
    else:
        records, removed, result.removed = night_records(rows, gone, base.records(), carry)
        write_layered(out, "records", records)
        records = linked_columns(records)  # raw values are written
    failpoints.reached("link:records")
    result.records, result.changed = records.num_rows, rows.num_rows
    rows = linked_columns(rows)
    if not carry:  # only a delta night's candidates and closure read them: let the IDs go
        removed = pd.Index([], dtype=object)

    night.say(f"{entity}: blocking {(rows if carry else records).num_rows:,} rows")
    # the term frequencies are the model's, built on the night it was trained: a delta night
    # and a full rebuild with the same model score alike (a changed floor waits for --retrain)
    floors = match.tf_floors()
    if model is not None and sorted(model.tf) == sorted(f for f in floors if f in model.m):
        frequencies = model.tf
    else:
        whole = records.whole() if isinstance(records, DeltaRecords) else records
        frequencies = term_frequencies(whole, entity, floors)
        del whole
    if night.engine is not None and not carry:
        night.say(f"{entity}: blocking, comparing and scoring on {night.engine.name}")
        files = None
        if records.num_rows == rows.num_rows:  # tonight's rows alone: the engine reads them
            paths = canonical_files(night.city, night.run_id, entity, night.held)
            files = RecordFiles(tuple(paths), records.num_rows)
        found = night.engine.score(
            records, entity, match, night.settings, model, frequencies, files
        )
        found.keys = _write_block_keys(out, found.keys)
    else:
        blocked = _candidates(night, entity, records, rows, removed, base, carry)
        if isinstance(records, pa.Table):  # not carried over: comparing reads the pandas
            # frame of every record, the Arrow columns go
            records, rows = records.select([RECORD]), rows.select([RECORD])
        found = _scored(night, entity, blocked, model, frequencies)
    changed = pd.Index(rows[RECORD].to_pandas() if carry else [], dtype=object)
    del rows  # tonight's rows are among the records now
    result.blocking = found.report
    result.candidate_pairs = result.pairs_compared = found.pairs
    result.model_trained, model, fresh = found.trained, found.model, found.edges
    result.features_left_out = features_left_out(model, entity)
    result.rules_only = is_rules_only(model)
    if result.features_left_out:
        night.say(f"{entity}: left out of the model (no values): {result.features_left_out}")
    if model is last_nights:  # not fitted, nothing attached: the base night's file as it is
        base.carry("model.json", out)
    else:
        (out / "model.json").write_text(model.to_json())
    failpoints.reached("link:scored")

    decisions = night.decisions[night.decisions["entity"] == entity]
    decided = _between(decisions, records)
    auto = match.thresholds.auto_link
    scope = (
        closure(records, changed, removed, fresh, decided, base, entity, auto)
        if carry
        else everything(found.compared, fresh, base, entity)
    )
    engine = night.engine if not carry else None
    del records, found  # every record in Arrow and pandas: not needed any more
    result.records_relinked = len(scope.records)
    next_seq = _settle(night, entity, base, scope, model, match, decided, decisions, result, engine)
    result.seconds = round(time.perf_counter() - start, 2)
    return result, next_seq


def _whole_records(rows: pa.Table, gone: list[str], base: BaseState) -> pa.Table:
    """A delta night's records in every column (built only when the layers need a new base)."""
    return night_records(rows, gone, base.records(), True)[0]


def _write_block_keys(
    out: Path, keys: pa.Table, base: BaseState | None = None, removed: pd.Index | None = None
) -> pa.Table:
    """Write tonight's block ``keys`` as soon as blocking has them; on a delta night (``base``,
    ``keys`` being tonight's rows') as layers on the base night's: the keys of ``removed``
    records dropped, tonight's added (the base night's are read only if a new base is due).
    The keys emptied: the next night reads them from the file, nothing holds them meanwhile."""
    if base is None or base.folder is None or removed is None:
        write_layered(out, "blockkeys", keys)
    else:
        gone = removed

        def whole() -> pa.Table:
            cached = base.read("blockkeys")
            return pa.concat_tables([cached.filter(pc.invert(is_in(cached[RECORD], gone))), keys])

        write_layered(out, "blockkeys", whole, base=base.folder, removed=removed, added=keys)
    return keys.schema.empty_table()  # a slice would keep every buffer of the keys


def _candidates(
    night: _Night,
    entity: str,
    records: Records,
    rows: pa.Table,
    removed: pd.Index,
    base: BaseState,
    carry: bool,
) -> Found:
    """The candidate pairs (the local engine). The block keys are written as soon as blocking
    has them, and not held while the pairs are compared."""
    match = night.settings.entity(entity)

    def cached(keys: pa.Array) -> pa.Table:
        return base.read("blockkeys", where=("key", keys))

    found = candidates(records, rows, removed, cached if carry else None, match)
    on = base if carry else None  # a delta night adds its layers to the base night's
    found.keys = _write_block_keys(night.work / entity, found.keys, on, removed)
    return found


def _scored(
    night: _Night,
    entity: str,
    found: Found,
    model: FellegiSunter | None,
    frequencies: Frequencies,
) -> Scored:
    """The candidate pairs ``found``, compared and scored here (the local engine)."""
    match = night.settings.entity(entity)
    night.say(f"{entity}: comparing {len(found.pairs):,} pairs")
    levels = cmp.compare(found.compared, found.pairs, entity)
    trained = model is None
    if model is None:
        night.say(f"{entity}: training the model (EM)")
        model = train(found.compared, levels, entity, night.settings)
    model = attach(model, frequencies, match.correlated)
    fresh = edges(found.compared, found.pairs, levels, model, entity, match.thresholds.keep)
    return Scored(found.compared, found.keys, found.report, len(found.pairs), model, trained, fresh)


def _between(decisions: pd.DataFrame, present: Records) -> pd.DataFrame:
    """The reviewers' decisions on pairs of records that are both ``present``."""
    values = {c: pa.array(decisions[c], pa.string()) for c in ("left_record", "right_record")}
    # the records named by a decision, looked up among the present ones: a set of the few
    # decided records, not of every record, is built
    named = pc.unique(pa.chunked_array(list(values.values()), pa.string()))
    found = pick(present, named, [RECORD])[RECORD]

    def among(column: str) -> Any:
        return pc.is_in(values[column], value_set=found).to_numpy(zero_copy_only=False)

    return decisions[among("left_record") & among("right_record")]


def _settle(
    night: _Night,
    entity: str,
    base: BaseState,
    scope: Relink,
    model: FellegiSunter,
    match: EntityMatch,
    decided: pd.DataFrame,
    decisions: pd.DataFrame,
    result: EntityLinked,
    engine: LinkEngine | None = None,
) -> int:
    """Cluster the relinked records, give them master IDs, golden records and a review queue,
    and write tonight's state: theirs, after the base night's carried over. The next free ID."""
    out, run_id = night.work / entity, night.run_id
    night.say(f"{entity}: clustering {len(scope.records):,} records")
    clustering = engine.cluster if engine is not None else cluster_records
    clustered = clustering(scope.records, scope.edges, decided, entity, match.thresholds.auto_link)
    failpoints.reached("link:clustered")
    for k, v in clustered.counts.items():
        setattr(result, k, v)
    linked = scope.edges  # a column more, not a copy of the edges
    linked["accepted"] = clustered.accepted

    night.say(f"{entity}: master IDs and golden records")
    master_of, next_seq = _master_ids(night, entity, base, scope, clustered.labels, result)
    previous = scope.previous
    survive = engine.golden if engine is not None else golden_records
    scope.records["master_id"] = master_of  # the members: a column more, not a copy of them
    tables = dict(
        zip(
            ("golden", "provenance", "conflicts"),
            survive(
                scope.records,
                entity,
                night.city,
                match,
                base.read("golden") if base.folder is not None else None,
                run_id,
            ),
            strict=True,
        )
    )
    night.say(f"{entity}: writing golden records and provenance")
    _write_tables(out, tables, scope, base, run_id)  # before the review queue and crosswalk
    night.say(f"{entity}: review queue and crosswalk")
    everyone = pd.concat([master_of, scope.outside])
    review = review_queue(
        linked, scope.hard_keys, everyone, decisions, model, match, entity, run_id
    )
    if base.folder is not None and len(review):  # a pair keeps the night it was first queued
        review = since(
            review, base.read("review", ["left_record", "right_record", "run_id"]), run_id
        )
    tables = {
        "edges": linked,
        "components": clustered.component.reset_index(),
        "crosswalk": crosswalk(scope.records, linked, master_of, previous, run_id),
        "review": review,
    }
    del review  # handed over with the others
    _write_tables(out, tables, scope, base, run_id)
    touched = set(previous["master_id"]) | set(master_of)
    write_state(pd.DataFrame({"master_id": sorted(touched)}), out, "touched")
    _count_state(out, result)
    return next_seq


def _write_tables(
    out: Path, tables: dict[str, pd.DataFrame], scope: Relink, base: BaseState, run_id: str
) -> None:
    """Write tonight's state ``tables`` (name → frame) after the base night's rows carried
    over, emptying ``tables``: each frame is handed to :func:`write_merged`, which lets it go
    once it is in Arrow."""
    for name in list(tables):
        kept = functools.partial(scope.carried, name, base, run_id)
        write_merged(
            out, name, tables.pop(name), kept, base=base.folder, removed=scope.dropped(name)
        )


def _master_ids(
    night: _Night,
    entity: str,
    base: BaseState,
    scope: Relink,
    labels: np.ndarray,
    result: EntityLinked,
) -> tuple[pd.Series, int]:
    """Each relinked record's master ID (clusters ``labels``), carried forward from the base
    night's crosswalk; the ID events and the retired-ID registry written; the next free ID."""
    out = night.work / entity
    registry = base.retired()
    ids = assign_ids(
        pd.DataFrame({RECORD: scope.records.index, "cluster": labels}),
        scope.previous[[RECORD, "master_id"]],
        entity=entity,
        next_seq=night.next_seq.get(entity, 1),
        retired=registry,
    )
    write_state(events_table(ids.events, entity), out, "events")
    write_state(retired_after(registry, ids.events, scope.previous, night.run_id), out, "retired")
    result.events = {
        k: int(v) for k, v in pd.Series([e.event for e in ids.events]).value_counts().items()
    }
    master_of = pd.Series(ids.assignment["master_id"].to_numpy(), index=scope.records.index)
    return master_of, ids.next_seq


def _count_state(out: Path, result: EntityLinked) -> None:
    """The totals of the entity's state as written: masters, singletons, review, conflicts."""
    totals = read_state(out, "golden", ["member_count"])["member_count"].to_pandas()
    result.masters = len(totals)
    result.singletons = int((totals == 1).sum())
    result.review_queue = read_state(out, "review", ["run_id"]).num_rows
    result.conflicts = read_state(out, "conflicts", ["master_id"]).num_rows
