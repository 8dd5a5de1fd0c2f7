"""Which records a night links: the departments whose rows go in, and per entity the records
that are linked again and what is carried over from the base night.

A full night relinks every record (:func:`everything`). A delta night — the base night's model,
match settings and caches at hand — relinks only the *affected* records (:func:`closure`):
tonight's rows, and every record of a base component (records joined by usable links) that holds
a changed, removed or reviewed record or gains a usable link to one. Components are closed under
links, so the clusters, IDs, golden records and review band of every other record are the base
night's, carried over as they are (:meth:`Relink.carried`), and the affected part is computed
exactly as a full rebuild would compute it. Either way the same stages run on what is chosen.

>>> scope = closure(records, tonight_ids, removed, fresh, decided, base, "person", 0.99)
>>> len(scope.records) < records.num_rows
True
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl.config import CityConfig
from etl.standardize import unfinished
from etl.state import RunState
from master_data.deterministic import HARD_KEY
from master_data.night_state import BaseState, ConsolidateError
from master_data.pairs import usable
from master_data.records import (
    RECORD,
    DeltaRecords,
    Records,
    distinct,
    is_in,
    pick,
    records_frame,
)
from store.layout import canonical_dir, raw_dir, raw_path

# --- the departments whose rows go in -----------------------------------------------------------


def delivered(
    city: CityConfig, run_id: str, held: Collection[str]
) -> tuple[list[str], dict[str, str]]:
    """The departments whose rows of ``run_id`` can be linked tonight, and those extracted
    tonight whose extraction or standardization did not finish (with why). Departments with
    nothing extracted tonight are in neither: they simply have nothing new."""
    ready, not_done = [], {}
    for dept in city.departments:
        present = raw_dir(city.var_dir, run_id, dept.code).is_dir() or (
            canonical_dir(city.var_dir, run_id, dept.code).is_dir()
        )
        if not present or dept.code in held:
            continue
        why = unfinished(city, dept, run_id)
        if why is None:
            ready.append(dept.code)
        else:
            not_done[dept.code] = why
    return ready, not_done


def nothing_to_link(
    city: CityConfig, run_id: str, held: Collection[str], not_done: dict[str, str]
) -> str:
    """Why no department's rows can be linked tonight, and the fix."""
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


def _raw_meta(city: CityConfig, run_id: str, department: str, table: str) -> dict[str, str]:
    """What extraction noted in a raw file of tonight (mode, the watermark it read from)."""
    meta = pq.read_schema(raw_path(city.var_dir, run_id, department, table)).metadata or {}
    data: dict[str, str] = json.loads(meta.get(b"govmdm", b"{}"))
    return data


def refuse_stale(city: CityConfig, run_id: str, departments: list[str]) -> None:
    """Refuse rows read from a watermark another night has moved since: they may be older than
    what that night published (two nights extracted at once)."""
    with RunState.for_city(city) as state:
        for code in departments:
            moved_by = state.committed_by(code)
            for t in city.department(code).tables:
                if moved_by.get(t.name) in (None, run_id):
                    continue
                read_from = _raw_meta(city, run_id, code, t.name).get("watermark_before")
                now = state.watermark(code, t.name)
                if now is not None and read_from != now[1]:
                    raise ConsolidateError(
                        f"night {run_id} read {code}.{t.name} from watermark {read_from!r}, but "
                        f"night {moved_by[t.name]} has moved it to {now[1]!r} since: its rows may "
                        f"be older than what that night published. Fix: extract the night again "
                        f"(`govmdm extract --run-id {run_id}`, then standardize and consolidate)"
                    )


def read_in_full(city: CityConfig, run_id: str, departments: list[str]) -> bool:
    """Every department and table was read in full tonight: last night's records are not needed
    (every live source row is in tonight's)."""
    if sorted(departments) != sorted(d.code for d in city.departments):
        return False
    return all(
        _raw_meta(city, run_id, code, t.name).get("mode") == "full"
        for code in departments
        for t in city.department(code).tables
    )


# --- the records of one entity ------------------------------------------------------------------


def night_records(
    tonight: pa.Table, gone: list[str], previous: pa.Table | None, carry: bool
) -> tuple[pa.Table, pd.Index, int]:
    """Tonight's records: the base night's ``previous`` ones, less the replaced and the
    removed, plus ``tonight``'s (sorted by record ID, as :func:`master_data.records.tonight`
    gives them); the record IDs replaced or removed; and how many records left. Sorted by
    record ID unless the base night's state is ``carry``-ed over (then tonight's rows
    are appended: order is nobody's business)."""
    changed = pd.Index(tonight[RECORD].to_pandas())
    removed = changed.union(pd.Index(gone))
    left = 0
    records = tonight
    if previous is not None and previous.num_rows:
        out, left = _leaving(previous[RECORD], gone, changed)
        kept = previous.filter(pc.invert(out))
        records = pa.concat_tables([kept, tonight])
    if not carry and records is not tonight:  # tonight's rows come sorted: no copy of them
        records = records.take(pc.sort_indices(records, [(RECORD, "ascending")]))
    return records, removed, left


def _leaving(
    ids: pa.Array | pa.ChunkedArray, gone: list[str], changed: pd.Index
) -> tuple[pa.ChunkedArray | pa.Array, int]:
    """Which of the base night's record ``ids`` are not tonight's (removed, ``gone``, or
    replaced, ``changed``), and how many of them left (removed, not replaced): each base record
    looked up once in each set, not a third time in their union."""
    went = pc.is_in(ids, value_set=pa.array(gone, pa.string()))
    replaced = is_in(ids, changed)
    left = int(pc.sum(pc.and_(went, pc.invert(replaced))).as_py() or 0)
    return pc.or_(went, replaced), left


def delta_records(
    tonight: pa.Table, gone: list[str], base: BaseState
) -> tuple[DeltaRecords, pd.Index, int]:
    """What :func:`night_records` gives a delta night (whose ``base`` night's state is carried
    over), the base night's records left where they are: read memory-mapped in ``tonight``'s
    columns, only their IDs looked at."""
    changed = pd.Index(tonight[RECORD].to_pandas())
    removed = changed.union(pd.Index(gone))
    mapped, dropped, added = base.record_layers(tonight.column_names)
    ids = mapped[RECORD]
    present = ids.filter(pc.invert(pc.is_in(ids, value_set=dropped))) if len(dropped) else ids
    if added is not None:
        present = pa.chunked_array([*present.chunks, *added[RECORD].chunks], pa.string())
        added = added.filter(pc.invert(is_in(added[RECORD], removed)))
        tonight = pa.concat_tables([added, tonight], promote_options="permissive")
    out, left = _leaving(present, gone, changed)
    stay = len(present) - int(pc.sum(out).as_py() or 0)
    records = DeltaRecords(mapped, distinct(dropped, removed), tonight, stay + tonight.num_rows)
    return records, removed, left


@dataclass
class Relink:
    """The records a night links again, and what it knows of the others."""

    records: pd.DataFrame  # the relinked records, by record ID
    edges: pd.DataFrame  # the scored edges that touch them: carried over and tonight's
    previous: pd.DataFrame  # the base crosswalk rows of the records whose entities are redone
    outside: pd.Series  # record → master ID, of the records at an edge's far end not relinked
    hard_keys: pd.Series  # record → hard key, of every record at either end of an edge
    redone: pd.Index | None  # base records whose state rows are replaced (None: all of them)

    def carried(self, name: str, base: BaseState, run_id: str) -> pa.Table | None:
        """The rows of the base night's state table ``name`` carried over as they are: those
        of records (master IDs) not redone tonight. None when nothing is carried over."""
        if self.redone is None:
            return None
        table = base.read(name)
        if name == "edges":
            hit = pc.or_(is_in(table["left"], self.redone), is_in(table["right"], self.redone))
        elif name == "review":
            hit = pc.or_(
                is_in(table["left_record"], self.redone), is_in(table["right_record"], self.redone)
            )
        elif name in ("components", "crosswalk"):
            hit = is_in(table[RECORD], self.redone)
        else:
            old_ids = pa.array(sorted(set(self.previous["master_id"])), pa.string())
            hit = pc.is_in(table["master_id"], value_set=old_ids)
        kept = table.filter(pc.invert(hit))
        if name == "conflicts":  # still standing tonight
            i = kept.schema.get_field_index("run_id")
            kept = kept.set_column(i, "run_id", pa.array([run_id] * kept.num_rows, pa.string()))
        return kept

    def dropped(self, name: str) -> pd.Index | None:
        """The keys by which :meth:`carried` leaves out the base night's rows of a layered
        state table (record IDs, or master IDs); None when nothing is carried over."""
        if self.redone is None:
            return None
        if name in ("components", "crosswalk", "edges"):
            return self.redone
        return pd.Index(sorted(set(self.previous["master_id"])))


def everything(records: pd.DataFrame, fresh: pd.DataFrame, base: BaseState, entity: str) -> Relink:
    """A full night: every one of ``records`` is linked again along tonight's ``fresh`` edges;
    the base night's crosswalk (if any) only hands its master IDs on."""
    previous = (
        base.read("crosswalk").to_pandas()
        if base.folder is not None
        else pd.DataFrame(
            {c: pd.Series(dtype=object) for c in (RECORD, "master_id", "first_run_id")}
        )
    )
    none = pd.Series(dtype=object)
    return Relink(records, fresh, previous, none, records[HARD_KEY[entity]], None)


def closure(
    records: Records,
    changed: pd.Index,
    removed: pd.Index,
    fresh: pd.DataFrame,
    decided: pd.DataFrame,
    base: BaseState,
    entity: str,
    auto_link: float,
) -> Relink:
    """A delta night: the records of every base component that holds a ``changed``,
    ``removed`` or reviewed (``decided``) record or gains a usable ``fresh`` link, plus
    tonight's rows; their base edges carried over beside tonight's."""
    ok = usable(fresh, auto_link)
    ends = [fresh.loc[ok, "left"], fresh.loc[ok, "right"]]
    ends += [decided["left_record"], decided["right_record"], removed]
    seeds = distinct(*ends)
    # only the rows of the records at hand are read from the base night's large tables
    hit = pc.unique(base.read("components", ["component"], where=(RECORD, seeds))[0])
    # the base records of the components hit: relinked (less the removed ones)
    members = pd.Index(
        base.read("components", [RECORD], where=("component", hit))[RECORD].to_pandas()
    )
    affected = members.difference(removed).union(changed)
    carried = base.read("edges", where=(("left", "right"), _ids(members))).to_pandas()
    carried = carried[~(carried["left"].isin(removed) | carried["right"].isin(removed))]
    edges = pd.concat([carried.drop(columns=["accepted"]), fresh], ignore_index=True)
    previous = base.read("crosswalk", where=(RECORD, _ids(members))).to_pandas()
    at_ends = distinct(edges["left"], edges["right"])
    outside_ids = at_ends.filter(pc.invert(is_in(at_ends, affected)))
    outside = pd.Index(outside_ids.to_pandas())
    master_outside = (
        base.read("crosswalk", [RECORD, "master_id"], where=(RECORD, outside_ids))
        .to_pandas()
        .set_index(RECORD)["master_id"]
    )
    relinked = records_frame(records, affected)
    key = HARD_KEY[entity]
    far = pick(records, outside, [RECORD, key]).to_pandas().set_index(RECORD)[key]
    hard_keys = pd.concat([relinked[key], far.sort_index()])
    return Relink(relinked, edges, previous, master_outside, hard_keys, members.union(removed))


def _ids(index: pd.Index) -> pa.Array:
    """Record IDs as the Arrow strings a state table is read by."""
    return pa.array(index.to_numpy(dtype=object), pa.string())
