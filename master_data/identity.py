"""Stable master IDs: issued once, carried forward by overlap, merges and splits recorded.

Tonight's clusters inherit last night's master IDs by maximum overlap of member records: the
pairs (cluster, old ID) are taken largest overlap first, and each old ID and each cluster is used
once. A cluster left without an old ID gets back an ID retired on an earlier night if it holds a
record that ID last held (a row deleted and inserted again is the same person or enterprise),
else a new one from the sequence. What happened to every old ID is written as an event:

- ``issued``: a new ID for a cluster with no member seen before under any ID;
- ``restored``: a retired ID back in use, for a cluster holding a record it last held;
- ``merged``: an old ID lost to another cluster's ID that absorbed its records;
- ``split``: an old ID kept by one cluster while some of its records went to other clusters;
- ``retired``: an old ID whose records were all deleted or rejected.

Ties break on the IDs and the clusters' smallest record ID, so the same inputs always give the same
IDs.

>>> ids = assign_ids(clusters, previous, entity="person", next_seq=101)
>>> ids.assignment["master_id"].tolist()[:2]
['P0000000001', 'P0000000101']
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from master_data.records import META, RECORD

PREFIX = {"person": "P", "enterprise": "E"}
ID_DIGITS = 10


def format_id(entity: str, seq: int) -> str:
    """The master ID with sequence number ``seq``.

    >>> format_id("enterprise", 42)
    'E0000000042'
    """
    return f"{PREFIX[entity]}{seq:0{ID_DIGITS}d}"


@dataclass(frozen=True)
class IdEvent:
    """What happened to one master ID tonight."""

    event: str  # issued | restored | merged | split | retired
    master_id: str  # the ID that carries the records now (the old ID for retired)
    old_ids: tuple[str, ...]
    reason: str


@dataclass
class Assignment:
    """Each record's master ID, the events, and the next free sequence number."""

    assignment: pd.DataFrame  # record_id, cluster, master_id
    events: list[IdEvent] = field(default_factory=list)
    next_seq: int = 1


def assign_ids(
    clusters: pd.DataFrame,
    previous: pd.DataFrame,
    *,
    entity: str,
    next_seq: int,
    retired: pd.DataFrame | None = None,
) -> Assignment:
    """Give every cluster a master ID.

    ``clusters``: columns ``record_id`` and ``cluster`` (any label). ``previous``: last published
    crosswalk, columns ``record_id`` and ``master_id`` (empty on the first night).
    ``retired``: IDs retired on earlier nights (and not in use since), columns ``master_id``,
    ``record_id`` (the records each last held) and ``run_id`` (the night it was retired).
    """
    # a cluster's smallest record ID: sort once, keep each cluster's first row (no Python per group)
    by_record = clusters.sort_values("record_id", kind="mergesort")
    smallest = by_record.drop_duplicates("cluster").set_index("cluster")["record_id"]
    joined = clusters.merge(previous[["record_id", "master_id"]], on="record_id", how="left")
    overlap = joined.dropna(subset=["master_id"]).groupby(["cluster", "master_id"]).size()
    owner: dict[object, str] = {}  # cluster → inherited ID
    taken: set[str] = set()
    overlap = _inherit(overlap.rename("n").reset_index(), smallest, owner, taken)
    restored: dict[str, str] = {}  # ID → the night it had been retired
    if retired is not None and len(retired):
        back = clusters.merge(retired[["record_id", "master_id", "run_id"]], on="record_id")
        back = back[
            ~back["cluster"].isin(list(owner)) & ~back["master_id"].isin(previous["master_id"])
        ]
        votes = back.groupby(["cluster", "master_id", "run_id"]).size().rename("n").reset_index()
        votes = _inherit(votes, smallest, owner, taken)
        restored = {
            old: str(night)
            for old, night in zip(votes["master_id"], votes["run_id"], strict=True)
            if old in taken
        }
    seq = next_seq
    for c in smallest.sort_values().index:  # new IDs in the order of each cluster's first record
        if c not in owner:
            owner[c] = format_id(entity, seq)
            seq += 1
    ids = pd.Series(owner, name="master_id")
    out = clusters.assign(master_id=clusters["cluster"].map(ids))
    events = _events(overlap, ids, set(previous["master_id"]), taken, restored)
    return Assignment(out[["record_id", "cluster", "master_id"]], events, seq)


def _inherit(
    votes: pd.DataFrame, smallest: pd.Series, owner: dict[object, str], taken: set[str]
) -> pd.DataFrame:
    """Hand old IDs to clusters, largest overlap ``n`` first (ties: the ID, then the cluster's
    smallest record ID), each ID and each cluster once; ``votes`` sorted so."""
    votes = votes.assign(first=votes["cluster"].map(smallest))
    votes = votes.sort_values(["n", "master_id", "first"], ascending=[False, True, True])
    for c, old in zip(votes["cluster"], votes["master_id"], strict=True):
        if c in owner or old in taken:
            continue
        owner[c] = old
        taken.add(old)
    return votes


def _events(
    overlap: pd.DataFrame,
    ids: pd.Series,
    previous: set[str],
    taken: set[str],
    restored: dict[str, str],
) -> list[IdEvent]:
    """What became of each old ID, and where each new one came from (sorted)."""
    events: list[IdEvent] = []
    # only IDs that did not simply carry over need a look
    moves = (
        overlap.assign(new=overlap["cluster"].map(ids))[["master_id", "new"]]
        .drop_duplicates()
        .sort_values(["master_id", "new"])
    )
    for new_id in sorted(set(ids) - set(moves["new"])):
        if new_id in restored:
            why = f"恢复使用：成员记录重新出现，该主体ID曾于 {restored[new_id]} 注销"
            events.append(IdEvent("restored", new_id, (new_id,), why))
        else:
            events.append(IdEvent("issued", new_id, (), "新主体：成员记录此前均未关联任何主体"))
    for old in sorted(previous - set(moves["master_id"])):
        events.append(IdEvent("retired", old, (old,), "全部成员记录已删除或被拒收"))
    targets_of = moves.groupby("master_id")["new"].size()
    moved = moves[
        ~moves["master_id"].isin(taken) | moves["master_id"].map(targets_of).gt(1).to_numpy()
    ]
    for old, group in moved.groupby("master_id", sort=True):
        targets = group["new"].tolist()
        if old in taken:
            others = [t for t in targets if t != old]
            events.append(IdEvent("split", old, (old,), f"部分成员记录拆分至 {'、'.join(others)}"))
            continue
        for target in targets:
            events.append(IdEvent("merged", target, (old,), "成员记录与该主体关联"))
    events.sort(key=lambda e: (e.event, e.master_id, e.old_ids))
    return events


# --- the tables linking writes: ID events, the retired-ID registry, the crosswalk --------------

RETIRED_COLUMNS = ["master_id", RECORD, "run_id"]


def events_table(events: list[IdEvent], entity: str) -> pd.DataFrame:
    """Tonight's ID events as the rows of ``mdm_id_event`` (without the night)."""
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


def retired_after(
    registry: pd.DataFrame, events: list[IdEvent], previous: pd.DataFrame, run_id: str
) -> pd.DataFrame:
    """The retired-ID registry after tonight: less the IDs restored tonight, plus the IDs
    retired tonight with the records they held, so a record that comes back later gets its old
    ID back (:func:`assign_ids`)."""
    restored = {e.master_id for e in events if e.event == "restored"}
    retired = {e.master_id for e in events if e.event == "retired"}
    last = previous[previous["master_id"].isin(retired)][["master_id", RECORD]]
    out = pd.concat(
        [
            registry[~registry["master_id"].isin(restored)][RETIRED_COLUMNS],
            last.assign(run_id=run_id),
        ]
    )
    return out.astype(object).sort_values(["master_id", RECORD]).reset_index(drop=True)


def crosswalk(
    records: pd.DataFrame,
    edges: pd.DataFrame,
    master_of: pd.Series,
    previous: pd.DataFrame,
    run_id: str,
) -> pd.DataFrame:
    """Each record's master ID and the strongest accepted link (of ``edges``) that joined it;
    ``previous``: the base night's crosswalk rows of these records (their first night)."""
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
    out = records[META].copy()
    out["master_id"] = master_of
    out["link_rule"] = best["link_rule"].reindex(out.index).fillna("singleton")
    out["link_probability"] = best["probability"].reindex(out.index)
    # a record linked only by a reviewer's decision has no stored edge of its own
    linked = out["master_id"].map(out["master_id"].value_counts()) > 1
    out.loc[linked & (out["link_rule"] == "singleton"), "link_rule"] = "review_decision"
    first = previous.set_index(RECORD)["first_run_id"]
    out["first_run_id"] = first.reindex(out.index).fillna(run_id)
    return out.reset_index()
