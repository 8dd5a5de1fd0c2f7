"""Linkage of the hard cases, scored per kind against the sample city's truth.

Two sorts of case. **Kept apart**: pairs of true persons that must never share a master —
twins, namesakes, a minor and the guardian whose ID number hospitals filed it under, siblings
under one guardian's number; the score is how many pairs were merged. **Linked**: source rows
that carry a planted defect the linker must see through — a guardian's ID number, a lunar birth
date, day and month swapped on a row without ID number, a former name; the score is the recall
of the true pairs those rows are in. Both come from the truth only: ``persons.parquet``
(``twin_of``, ``namesake_group``, ``guardian_id``) and the dirt labels of ``dirt.parquet``.

>>> scores = case_scores(linked, persons, dirt)  # doctest: +SKIP
>>> scores[0].kind, scores[0].wrong  # doctest: +SKIP
('twins', 0)
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

APART = {
    "twins": "双胞胎（不得合并）",
    "namesakes": "同名同出生年（不得合并）",
    "namesakes_same_birth": "同名同出生日期同性别、一方无身份证号、不同区（不得合并）",
    "minor_guardian": "未成年人与其监护人（以监护人身份证号登记，不得合并）",
    "siblings_guardian_id": "同一监护人号码下的兄弟姐妹（不得合并）",
}
LINKED = {
    "guardian_id": "以监护人身份证号登记的未成年人记录",
    "minor_to_registry": "上述记录与本人户籍（公安）记录",
    "lunar_birth_date": "农历出生日期的记录",
    "day_month_swapped_no_id": "无身份证号且日月颠倒的记录",
    "former_name": "使用曾用名的记录",
}
REGISTRY = "gongan"
ID_COLUMNS = ("sfzh", "id_no", "身份证号", "ID_CARD_NO")
"""The sample city's ID number columns, as its dirt labels name them."""


@dataclass(frozen=True)
class CaseScore:
    """One kind: ``pairs`` true pairs, ``wrong`` of them merged (apart) or not linked (linked)."""

    kind: str
    label: str
    must: str  # apart | link
    pairs: int
    wrong: int

    @property
    def rate(self) -> float:
        """Merged share (apart) or recall (link); 0.0 / 1.0 when there is nothing to count."""
        if self.must == "apart":
            return self.wrong / self.pairs if self.pairs else 0.0
        return 1 - self.wrong / self.pairs if self.pairs else 1.0


def _merged(linked: pd.DataFrame, pairs: list[tuple[str, str]]) -> int:
    """How many entity pairs share at least one master."""
    clusters = linked.groupby("entity_id")["cluster"].agg(frozenset).to_dict()
    empty: frozenset[int] = frozenset()
    return sum(bool(clusters.get(a, empty) & clusters.get(b, empty)) for a, b in pairs)


def _pairs_within(groups: pd.Series) -> list[tuple[str, str]]:
    """Every pair of the person IDs that share a group (``groups``: person ID → group)."""
    out = []
    for _, members in groups.dropna().groupby(groups.dropna()):
        ids = sorted(members.index)
        out += [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]]
    return out


def _apart_pairs(persons: pd.DataFrame) -> dict[str, list[tuple[str, str]]]:
    p = persons.set_index("person_id")
    none = pd.Series(None, index=p.index, dtype=object)
    twin_of, group, guardian = (
        p.get(c, none) for c in ("twin_of", "namesake_group", "guardian_id")
    )
    same_birth = group.str.startswith("same-birth-", na=False)
    minors = guardian.dropna()
    return {
        "twins": list(zip(twin_of.dropna().index, twin_of.dropna(), strict=True)),
        "namesakes": _pairs_within(group[~same_birth]),
        "namesakes_same_birth": _pairs_within(group[same_birth]),
        "minor_guardian": list(zip(minors.index, minors, strict=True)),
        "siblings_guardian_id": _pairs_within(minors),
    }


def _labelled(linked: pd.DataFrame, dirt: pd.DataFrame) -> dict[str, pd.Series]:
    """Per linked kind, which linked rows carry it (a boolean mask over ``linked``). Swapped
    dates count on rows without ID number, except the walk-in patients planted for the review
    band (no sex either, a relative's phone): those are meant to wait for a steward."""
    key = ["department", "source_key"]
    tagged = dirt.assign(tag=dirt["column"] + ":" + dirt["kind"])
    labels = pd.concat(
        [dirt[[*key, "kind"]], tagged[[*key, "tag"]].set_axis([*key, "kind"], axis=1)]
    )
    sets = labels.groupby(key)["kind"].agg(frozenset)
    found = pd.Series(
        sets.reindex(pd.MultiIndex.from_frame(linked[key])).to_numpy(), index=linked.index
    )

    def has(*kinds: str) -> pd.Series:
        return found.map(lambda s: isinstance(s, frozenset) and any(k in s for k in kinds))

    no_id = has(*(f"{c}:missing" for c in ID_COLUMNS))
    walk_in = has("SEX_CODE:missing") & has("TEL:stale_value")
    return {
        "guardian_id": has("guardian_id"),
        "lunar_birth_date": has("lunar_birth_date"),
        "day_month_swapped_no_id": has("day_month_swapped") & no_id & ~walk_in,
        "former_name": has("former_name"),
    }


def _recall(linked: pd.DataFrame, rows: pd.Series) -> tuple[int, int]:
    """True pairs of the ``rows`` with the other rows of their entity, and how many of them
    are not in one master (a pair of two such rows counted from each side)."""
    per_entity = linked.groupby("entity_id").size()
    per_cluster = linked.groupby(["entity_id", "cluster"]).size()
    mine = linked[rows]
    true = per_entity.reindex(mine["entity_id"]).to_numpy() - 1
    idx = pd.MultiIndex.from_frame(mine[["entity_id", "cluster"]])
    found = per_cluster.reindex(idx).to_numpy() - 1
    return int(true.sum()), int((true - found).sum())


def _to_registry(linked: pd.DataFrame, rows: pd.Series) -> tuple[int, int]:
    """Rows of ``rows`` whose entity has a registry row, and how many are not with it."""
    registry = linked[linked["department"] == REGISTRY].groupby("entity_id")["cluster"]
    own = registry.agg(frozenset)
    mine = linked[rows & linked["entity_id"].isin(own.index)]
    apart = sum(c not in own[e] for e, c in zip(mine["entity_id"], mine["cluster"], strict=True))
    return len(mine), apart


def case_scores(
    linked: pd.DataFrame, persons: pd.DataFrame, dirt: pd.DataFrame | None
) -> tuple[CaseScore, ...]:
    """Every kind of :data:`APART` and :data:`LINKED` the truth has, for the person rows
    ``linked`` (``department, source_key, entity_id, cluster``: one row per linked source row).
    """
    out = []
    for kind, pairs in _apart_pairs(persons).items():
        if pairs:
            out.append(CaseScore(kind, APART[kind], "apart", len(pairs), _merged(linked, pairs)))
    if dirt is None or dirt.empty:
        return tuple(out)
    masks = _labelled(linked.reset_index(drop=True), dirt)
    base = linked.reset_index(drop=True)
    for kind, mask in masks.items():
        if mask.any():
            out.append(CaseScore(kind, LINKED[kind], "link", *_recall(base, mask)))
        if kind == "guardian_id" and mask.any():
            total, apart = _to_registry(base, mask)
            out.append(
                CaseScore("minor_to_registry", LINKED["minor_to_registry"], "link", total, apart)
            )
    return tuple(out)
