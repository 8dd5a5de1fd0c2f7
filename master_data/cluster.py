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

    def groups(self) -> dict[int, list[int]]:
        """Label → record indexes, in index order."""
        out: dict[int, list[int]] = {}
        for i, label in enumerate(self.labels.tolist()):
            out.setdefault(label, []).append(i)
        return out


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
