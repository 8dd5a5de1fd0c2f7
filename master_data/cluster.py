"""Clustering of linked records that resists chaining.

Edges are merged greedily in a fixed order — a reviewer's "link" decisions, then the
deterministic rules (the same valid ID number or credit code), then model links by score — into
a union-find forest. A merge is refused when it would put two different *hard keys* (valid ID
numbers, or credit codes) in one cluster, or join two records a reviewer kept apart. So a chain
of fuzzy links can never glue twins, or a head office and its branch, into one entity, and the
result depends only on the edges, not on the order records arrived in: a delta night and a full
rebuild over the same edges give the same clusters.

>>> result = cluster(4, [(0, 1, 0, 9.0), (1, 2, 2, 5.0)], hard_keys=["A", None, "B", None])
>>> result.labels.tolist(), len(result.refused)
([0, 0, 2, 3], 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse import csgraph

from master_data.deterministic import HARD_KEY

# Edge tiers: lower tiers merge first.
TIER_REVIEW_LINK = 0
TIER_RULE = 1
TIER_MODEL = 2


@dataclass(frozen=True)
class Refusal:
    """An edge that was not merged, and why (``hard_key`` or ``kept_apart``)."""

    left: int
    right: int
    tier: int
    score: float
    reason: str


@dataclass
class Clusters:
    """Each record's cluster label (the smallest record index in its cluster) and the refusals."""

    labels: np.ndarray
    refused: list[Refusal] = field(default_factory=list)
    merged_by: dict[tuple[int, int], tuple[int, float]] = field(default_factory=dict)


def cluster(
    n: int,
    edges: Iterable[tuple[int, int, int, float]],
    *,
    hard_keys: Sequence[str | None],
    apart: Iterable[tuple[int, int]] = (),
) -> Clusters:
    """Cluster ``n`` records along ``edges`` of ``(left, right, tier, score)``.

    ``hard_keys[i]`` is record ``i``'s valid identifier (or None): no cluster may hold two
    different ones. ``apart`` holds record pairs a reviewer decided are different entities.
    Edges are taken by tier, then by score (highest first), then by ``(left, right)``.
    ``merged_by`` maps each accepted edge ``(left, right)`` to its ``(tier, score)``.
    """
    ordered = sorted(edges, key=lambda e: (e[2], -e[3], min(e[0], e[1]), max(e[0], e[1])))
    parent = np.arange(n)
    key: dict[int, str] = {i: k for i, k in enumerate(hard_keys) if k}
    size = np.ones(n, dtype=np.int64)
    kept_apart: dict[int, set[int]] = {}
    for a, b in apart:
        kept_apart.setdefault(a, set()).add(b)
        kept_apart.setdefault(b, set()).add(a)
    # record → its root's members that have an "apart" partner (only those need checking)
    flagged: dict[int, set[int]] = {r: {r} for r in kept_apart}

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = int(parent[root])
        while parent[i] != root:  # path compression
            parent[i], i = root, int(parent[i])
        return root

    out = Clusters(np.empty(n, dtype=np.int64))
    for left, right, tier, score in ordered:
        ra, rb = find(left), find(right)
        if ra == rb:
            continue
        ka, kb = key.get(ra), key.get(rb)
        if ka is not None and kb is not None and ka != kb:
            out.refused.append(Refusal(left, right, tier, score, "hard_key"))
            continue
        if _kept_apart(flagged.get(ra, set()), flagged.get(rb, set()), kept_apart):
            out.refused.append(Refusal(left, right, tier, score, "kept_apart"))
            continue
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] += size[rb]
        merged_key = ka if ka is not None else kb
        if merged_key is not None:
            key[ra] = merged_key
        if rb in flagged:
            flagged.setdefault(ra, set()).update(flagged.pop(rb))
        out.merged_by[(min(left, right), max(left, right))] = (tier, score)
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    # label = smallest member index: independent of merge order
    smallest = np.full(n, n, dtype=np.int64)
    np.minimum.at(smallest, roots, np.arange(n))
    out.labels = smallest[roots]
    return out


def _kept_apart(a: set[int], b: set[int], kept_apart: dict[int, set[int]]) -> bool:
    """Whether a member of ``a`` was kept apart from a member of ``b`` (both: flagged members)."""
    return bool(b) and any(not kept_apart[x].isdisjoint(b) for x in a)


# --- records: the kernel on a night's records, scored edges and reviewers' decisions ----------


@dataclass
class RecordClusters:
    """How a night's records cluster (:func:`cluster_records`)."""

    labels: np.ndarray  # each record's cluster label
    component: pd.Series  # each record's component: its links' reach, taken or refused
    accepted: np.ndarray  # which edges clustering took
    counts: dict[str, int]  # links taken by kind, and refused by reason


def cluster_records(
    records: pd.DataFrame,
    edges: pd.DataFrame,
    decided: pd.DataFrame,
    entity: str,
    auto_link: float,
) -> RecordClusters:
    """Cluster ``records`` (indexed by record ID, sorted) along the usable ``edges`` (a rule
    holds, or the probability reaches ``auto_link``) and reviewers' ``decided`` pairs.

    A record's component is the smallest record ID of the records joined to it by usable links
    and reviewers' links, whether clustering took them or not: a delta night relinks whole
    components."""
    position = pd.Series(np.arange(len(records)), index=records.index)
    li = position.reindex(edges["left"]).to_numpy(dtype=float)
    ri = position.reindex(edges["right"]).to_numpy(dtype=float)
    inside = ~np.isnan(li) & ~np.isnan(ri)
    rule = edges["rule"].notna().to_numpy()
    sure = edges["corroborated"].fillna(True).to_numpy(bool) if "corroborated" in edges else True
    usable = rule | ((edges["probability"].to_numpy() >= auto_link) & sure)
    if (usable & ~inside).any():
        raise RuntimeError(  # the relinked records are closed under usable links by construction
            f"{entity}: a usable link leaves the records being relinked; "
            "run `govmdm consolidate --full` and report this as a bug"
        )
    li_used, ri_used = li[usable].astype(np.int64), ri[usable].astype(np.int64)
    tier = np.where(rule[usable], TIER_RULE, TIER_MODEL)
    scores = edges["probability"].to_numpy()[usable]
    graph = list(
        zip(li_used.tolist(), ri_used.tolist(), tier.tolist(), scores.tolist(), strict=True)
    )
    links = _decided(decided, position, "link")
    graph += [(a, b, TIER_REVIEW_LINK, 1.0) for a, b in links]
    hard = records[HARD_KEY[entity]].where(records[HARD_KEY[entity]].notna(), None).tolist()
    clusters = cluster(
        len(records), graph, hard_keys=hard, apart=_decided(decided, position, "apart")
    )
    taken = {(int(a), int(b)) for a, b in clusters.merged_by}
    accepted = np.zeros(len(edges), dtype=bool)
    lo, hi = np.minimum(li_used, ri_used), np.maximum(li_used, ri_used)
    accepted[np.flatnonzero(usable)] = [
        (int(a), int(b)) in taken for a, b in zip(lo, hi, strict=True)
    ]
    a = np.concatenate([li_used, np.array([p[0] for p in links], dtype=np.int64)])
    b = np.concatenate([ri_used, np.array([p[1] for p in links], dtype=np.int64)])
    component = _components(records.index, a, b)
    return RecordClusters(clusters.labels, component, accepted, _counts(clusters))


def _decided(decided: pd.DataFrame, position: pd.Series, decision: str) -> list[tuple[int, int]]:
    """The positions of the record pairs a reviewer decided ``decision`` on, both ends present."""
    mine = decided[
        decided["left_record"].isin(position.index)
        & decided["right_record"].isin(position.index)
        & (decided["decision"] == decision)
    ]
    return [
        (int(position[a]), int(position[b]))
        for a, b in zip(mine["left_record"], mine["right_record"], strict=True)
    ]


def _counts(clusters: Clusters) -> dict[str, int]:
    """Links taken by kind (rule, model, reviewer), and refused by reason."""
    counts = {"rule_links": 0, "model_links": 0, "review_links": 0}
    for t, _score in clusters.merged_by.values():
        counts[{TIER_RULE: "rule_links", TIER_MODEL: "model_links"}.get(t, "review_links")] += 1
    counts["refused_hard_key"] = sum(r.reason == "hard_key" for r in clusters.refused)
    counts["refused_kept_apart"] = sum(r.reason == "kept_apart" for r in clusters.refused)
    return counts


def _components(ids: pd.Index, a: np.ndarray, b: np.ndarray) -> pd.Series:
    """Each of the (sorted) ``ids``' connected component along the links between positions
    ``a`` and ``b``, labelled by its smallest ID."""
    n = len(ids)
    graph = sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, comp_of = csgraph.connected_components(graph, directed=False)
    # a component's label: its smallest record ID (records are sorted: the lowest position)
    lowest = np.full(comp_of.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(lowest, comp_of, np.arange(n))
    return pd.Series(ids.to_numpy(dtype=object)[lowest[comp_of]], index=ids, name="component")
