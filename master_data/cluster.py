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
from typing import Any

import numpy as np
import numpy.typing as npt
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
    listed = list(edges)
    columns: list[Any] = list(zip(*listed, strict=True)) if listed else [(), (), (), ()]
    graph = EdgeArrays(
        np.asarray(columns[0], dtype=np.int64),
        np.asarray(columns[1], dtype=np.int64),
        np.asarray(columns[2], dtype=np.int64),
        np.asarray(columns[3], dtype=np.float64),
    )
    done = cluster_arrays(
        n, graph, hard_codes(pd.Series(list(hard_keys), dtype=object)), list(apart)
    )
    out = Clusters(done.labels)
    for i in done.order:
        a, b, t, s = (int(graph.left[i]), int(graph.right[i]), int(graph.tier[i]), graph.score[i])
        if done.refused[i]:
            out.refused.append(Refusal(a, b, t, float(s), done.refused[i]))
        elif done.merged[i]:
            out.merged_by[(min(a, b), max(a, b))] = (t, float(s))
    return out


@dataclass
class EdgeArrays:
    """Edges as arrays: positions ``left``/``right``, ``tier`` and ``score`` per edge."""

    left: npt.NDArray[np.int64]
    right: npt.NDArray[np.int64]
    tier: npt.NDArray[np.int64]
    score: npt.NDArray[np.float64]


@dataclass
class ClusteredArrays:
    """What :func:`cluster_arrays` found: labels, and per edge whether it merged two clusters
    or was refused (the reason, else "")."""

    labels: npt.NDArray[np.int64]
    merged: npt.NDArray[np.bool_]
    refused: npt.NDArray[np.object_]
    order: npt.NDArray[np.int64]  # the edges in the order they are taken


def cluster_arrays(
    n: int, edges: EdgeArrays, hard: npt.NDArray[np.int64], apart: list[tuple[int, int]]
) -> ClusteredArrays:
    """:func:`cluster` on arrays: ``hard`` holds each record's hard-key code (-1: none).

    The greedy merge only ever refuses inside a connected component holding two different
    hard keys or a kept-apart pair; every other component takes exactly the edges of its
    minimum spanning tree under the merge order (Kruskal's algorithm is that greedy merge), so
    only the constrained components run the merge edge by edge, in Python."""
    m = len(edges.left)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return ClusteredArrays(empty, np.zeros(m, dtype=bool), np.full(m, "", object), empty)
    lo, hi = np.minimum(edges.left, edges.right), np.maximum(edges.left, edges.right)
    order = np.lexsort((hi, lo, -edges.score, edges.tier)).astype(np.int64)
    merged = np.zeros(m, dtype=bool)
    refused = np.full(m, "", dtype=object)
    comp = _component_of(n, lo, hi)
    tight = np.zeros(comp.max(initial=-1) + 1, dtype=bool)
    keyed = np.flatnonzero(hard >= 0)
    if len(keyed):
        # each (component, hard key) once, as one integer: np.unique over columns is slow
        width = int(hard.max()) + 1
        held = np.sort(comp[keyed].astype(np.int64) * width + hard[keyed])
        held = held[np.concatenate(([True], held[1:] != held[:-1]))] // width
        tight[held[1:][held[1:] == held[:-1]]] = True
    for a, b in apart:
        if comp[a] == comp[b]:
            tight[comp[a]] = True
    slow = tight[comp[lo]] if m else np.zeros(0, dtype=bool)
    fast = order[~slow[order]]
    merged[_spanning(n, lo, hi, fast)] = True
    _greedy(n, edges, order[slow[order]], hard, apart, merged, refused)
    taken = np.flatnonzero(merged)
    labels = _smallest_member(n, lo[taken], hi[taken])
    return ClusteredArrays(labels, merged, refused, order)


def _component_of(n: int, a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> Any:
    graph = sparse.coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n)).tocsr()
    return csgraph.connected_components(graph, directed=False)[1]


def _smallest_member(
    n: int, a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Each record's label: the smallest record index of its component along ``a``–``b``."""
    comp = _component_of(n, a, b)
    smallest = np.full(comp.max(initial=-1) + 1, n, dtype=np.int64)
    np.minimum.at(smallest, comp, np.arange(n))
    return smallest[comp]


def _spanning(
    n: int, lo: npt.NDArray[np.int64], hi: npt.NDArray[np.int64], ordered: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """The edges (of ``ordered``, taken in that order) that Kruskal's greedy merge accepts:
    the minimum spanning forest with each edge weighted by its place in the order."""
    rank = np.arange(1, len(ordered) + 1, dtype=np.float64)
    a, b = lo[ordered], hi[ordered]
    pair = a * max(n, 1) + b
    # of several edges on one pair only the first can merge; self-loops never do
    first = np.unique(pair, return_index=True)[1]
    first = first[a[first] != b[first]]
    weights = sparse.csr_matrix((rank[first], (a[first], b[first])), shape=(n, n))
    tree = csgraph.minimum_spanning_tree(weights).tocoo()
    return ordered[tree.data.astype(np.int64) - 1]


def _greedy(
    n: int,
    edges: EdgeArrays,
    ordered: npt.NDArray[np.int64],
    hard: npt.NDArray[np.int64],
    apart: list[tuple[int, int]],
    merged: npt.NDArray[np.bool_],
    refused: npt.NDArray[np.object_],
) -> None:
    """The merge edge by edge (union-find) along ``ordered``, refusing a merge that joins two
    hard keys or two records kept apart; marks ``merged`` and ``refused`` per edge."""
    parent: dict[int, int] = {}
    size: dict[int, int] = {}
    key: dict[int, int] = {}
    kept_apart: dict[int, set[int]] = {}
    for a, b in apart:
        kept_apart.setdefault(a, set()).add(b)
        kept_apart.setdefault(b, set()).add(a)
    # record → its root's members that have an "apart" partner (only those need checking)
    flagged: dict[int, set[int]] = {r: {r} for r in kept_apart}

    def find(i: int) -> int:
        root = i
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(i, i) != root:  # path compression
            parent[i], i = root, parent[i]
        return root

    for e, left, right in zip(
        ordered.tolist(), edges.left[ordered].tolist(), edges.right[ordered].tolist(), strict=True
    ):
        ra, rb = find(left), find(right)
        if ra == rb:
            continue
        ka, kb = key.get(ra, int(hard[ra])), key.get(rb, int(hard[rb]))
        if ka >= 0 and kb >= 0 and ka != kb:
            refused[e] = "hard_key"
            continue
        if _kept_apart(flagged.get(ra, set()), flagged.get(rb, set()), kept_apart):
            refused[e] = "kept_apart"
            continue
        if size.get(ra, 1) < size.get(rb, 1):
            ra, rb, ka, kb = rb, ra, kb, ka
        parent[rb] = ra
        size[ra] = size.get(ra, 1) + size.get(rb, 1)
        key[ra] = ka if ka >= 0 else kb
        if rb in flagged:
            flagged.setdefault(ra, set()).update(flagged.pop(rb))
        merged[e] = True


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
    links = np.array(_decided(decided, position, "link"), dtype=np.int64).reshape(-1, 2)
    graph = EdgeArrays(
        np.concatenate([li_used, links[:, 0]]),
        np.concatenate([ri_used, links[:, 1]]),
        np.concatenate(
            [
                np.where(rule[usable], TIER_RULE, TIER_MODEL),
                np.full(len(links), TIER_REVIEW_LINK, dtype=np.int64),
            ]
        ),
        np.concatenate(
            [edges["probability"].to_numpy(dtype=np.float64)[usable], np.ones(len(links))]
        ),
    )
    clusters = cluster_arrays(
        len(records),
        graph,
        hard_codes(records[HARD_KEY[entity]]),
        _decided(decided, position, "apart"),
    )
    # an edge is taken when clustering merged along its pair (a reviewer's link on the same
    # pair merges first)
    n = max(len(records), 1)
    lo, hi = np.minimum(graph.left, graph.right), np.maximum(graph.left, graph.right)
    taken = lo[clusters.merged] * n + hi[clusters.merged]
    accepted = np.zeros(len(edges), dtype=bool)
    accepted[np.flatnonzero(usable)] = np.isin(lo[: len(li_used)] * n + hi[: len(li_used)], taken)
    component = record_components(records.index, graph.left, graph.right)
    return RecordClusters(clusters.labels, component, accepted, _counts(graph, clusters))


def _decided(decided: pd.DataFrame, position: pd.Series, decision: str) -> list[tuple[int, int]]:
    """The positions of the record pairs a reviewer decided ``decision`` on, both ends present."""
    mine = decided[decided["decision"] == decision]
    # the index's own lookup (built once): isin hashed every record ID again on each call
    a = position.index.get_indexer(mine["left_record"])
    b = position.index.get_indexer(mine["right_record"])
    both = (a >= 0) & (b >= 0)
    at = position.to_numpy()
    return [(int(at[i]), int(at[j])) for i, j in zip(a[both], b[both], strict=True)]


def hard_codes(keys: pd.Series) -> npt.NDArray[np.int64]:
    """Each record's hard key as an integer code; -1 where it has none (missing or empty)."""
    values = keys.to_numpy(dtype=object, copy=True)
    values[~pd.notna(values) | (values == "")] = None
    return pd.factorize(values, use_na_sentinel=True)[0].astype(np.int64)


def _counts(graph: EdgeArrays, clusters: ClusteredArrays) -> dict[str, int]:
    """Links taken by kind (rule, model, reviewer), and refused by reason."""
    tiers = graph.tier[clusters.merged]
    return {
        "rule_links": int((tiers == TIER_RULE).sum()),
        "model_links": int((tiers == TIER_MODEL).sum()),
        "review_links": int(((tiers != TIER_RULE) & (tiers != TIER_MODEL)).sum()),
        "refused_hard_key": int((clusters.refused == "hard_key").sum()),
        "refused_kept_apart": int((clusters.refused == "kept_apart").sum()),
    }


def record_components(ids: pd.Index, a: np.ndarray, b: np.ndarray) -> pd.Series:
    """Each of the (sorted) ``ids``' connected component along the links between positions
    ``a`` and ``b``, labelled by its smallest ID (both engines label components so).

    >>> record_components(pd.Index(["a", "b", "c"]), np.array([1]), np.array([2])).tolist()
    ['a', 'b', 'b']
    """
    n = len(ids)
    graph = sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, comp_of = csgraph.connected_components(graph, directed=False)
    # a component's label: its smallest record ID (records are sorted: the lowest position)
    lowest = np.full(comp_of.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(lowest, comp_of, np.arange(n))
    return pd.Series(ids.to_numpy(dtype=object)[lowest[comp_of]], index=ids, name="component")
