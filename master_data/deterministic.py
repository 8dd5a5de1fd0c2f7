"""The deterministic rules: hard keys that make two records one entity whatever the model says.

The same valid ID number is the same person; the same credit code, or a legacy registration
number or organization code that crosswalks to it, the same enterprise. A valid credit code
carries the organization code in its characters 9–17, so a record with only the one and a
record with only the other still meet. Clustering never puts two different hard keys (ID numbers,
credit codes) in one entity (:mod:`master_data.cluster`), and a model link of two persons
links automatically only when more than name, birth date and sex agree; on a row filed under
a guardian's ID number, the household's phone or address counts only beside a name that agrees
(:func:`corroborated`).

>>> rule_links(records, pd.Index(["a"]), pd.Index(["b"]), "person").tolist()
['same_id_number']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

HARD_KEY = {"person": "id_number", "enterprise": "uscc"}
RULES = {
    "same_id_number": "同一有效公民身份号码",
    "same_uscc": "同一有效统一社会信用代码",
    "same_reg_no": "同一工商注册号（旧代码）",
    "same_org_code": "同一组织机构代码（旧代码，或信用代码中内嵌的组织机构代码）",
}
"""Each rule, with what it means for ``govmdm explain``."""


@dataclass(frozen=True)
class Corroboration:
    """What a model link must also agree on to link automatically (:func:`corroborated`):
    one of the ``own`` levels (evidence of the person alone), or one of the ``shared`` levels
    (evidence a household may share). On a pair with a row filed under another person's ID
    number (``filed_under``), shared evidence counts only with the name at ``name`` at least."""

    own: Mapping[str, int]
    shared: Mapping[str, int]
    name: int
    filed_under: str


CORROBORATION = {
    "person": Corroboration(
        own={"id_number": 1},
        shared={"phone": 1, "address": 2},
        name=2,
        filed_under="guardian_id",
    )
}
"""Per entity, what a model link must agree on beyond the model's demographics.

Name, birth date and sex alone are not enough, however rare the name: a namesake born on the
same day, known without ID number in another district, is another person as often as not, and
a row without phone or address cannot tell them apart (measured on the sample city: 48 of 50
such namesakes merged without this, none with it).

A row that hospitals file under a parent's ID number (``guardian_id``: a minor's) carries that
parent's phone and home: on a pair with such a row, phone and district say "same household",
not "same person" — twins and siblings share them with each other and with the parent. There
they count only beside a name that agrees: the same, the same pinyin, or a listed look-alike
(形近字). Twin sisters 林晓萍 and 林晓玲 of the demo city, both filed under their mother's number
and phone, were merged on their pinyin-similar names plus that phone and address. Such a pair
waits in the review band instead; a child's row with a misheard name still links through the
child's other rows. Elsewhere a mobile number is a person's own and a one-character typo the
name comparison does not know (黄斌 / 黄赋) still links on phone, birth date and district."""


def filed_under_another(
    records: pd.DataFrame, left: np.ndarray, right: np.ndarray, entity: str
) -> np.ndarray:
    """Which pairs of ``records`` (positions ``left[i]``, ``right[i]``) have a row filed under
    another person's ID number (:data:`CORROBORATION`); none for an entity without such rows.

    >>> rows = pd.DataFrame({"guardian_id": [None, "35010219860214551X", None]})
    >>> filed_under_another(rows, np.array([0, 0]), np.array([1, 2]), "person").tolist()
    [True, False]
    """
    need = CORROBORATION.get(entity)
    if need is None or need.filed_under not in records.columns:
        return np.zeros(len(left), dtype=bool)
    filed = records[need.filed_under].notna().to_numpy()
    return filed[left] | filed[right]


def corroborated(levels: pd.DataFrame, entity: str, filed: np.ndarray | None = None) -> np.ndarray:
    """Which pairs (rows of comparison ``levels``) agree on more than the model's demographics
    (:data:`CORROBORATION`); every pair of an entity without such a requirement. ``filed``:
    which pairs have a row filed under another person's ID number (:func:`filed_under_another`;
    None: none).

    >>> levels = pd.DataFrame(
    ...     {"name": [4, 1, 1, 1], "id_number": [-1, -1, -1, 2], "phone": [2, 2, 2, -1],
    ...      "address": [3, 3, 3, -1]}
    ... )
    >>> corroborated(levels, "person", np.array([True, False, True, True])).tolist()
    [True, True, False, True]
    """
    need = CORROBORATION.get(entity)
    if need is None:
        return np.ones(len(levels), dtype=bool)

    def any_of(wanted: Mapping[str, int]) -> np.ndarray:
        ok = np.zeros(len(levels), dtype=bool)
        for feature, level in wanted.items():
            if feature in levels.columns:
                ok |= levels[feature].to_numpy() >= level
        return ok

    shared = any_of(need.shared)
    if filed is not None and "name" in levels.columns:
        shared &= ~np.asarray(filed, dtype=bool) | (levels["name"].to_numpy() >= need.name)
    return any_of(need.own) | shared


def org_codes(rows: pd.DataFrame) -> pd.Series:
    """Each enterprise record's organization code: its own, else the one in its credit code."""
    return rows["org_code"].fillna(rows["uscc"].str[8:17])


def rule_links(records: pd.DataFrame, left: pd.Index, right: pd.Index, entity: str) -> pd.Series:
    """The rule that links each pair (``left[i]``, ``right[i]``) of ``records``, or None; the
    strongest where several hold (credit code, then registration number, then organization
    code)."""
    at = records.index.get_indexer
    return pd.Series(rule_links_at(records, at(left), at(right), entity), dtype=object)


def rule_links_at(
    records: pd.DataFrame, left: np.ndarray, right: np.ndarray, entity: str
) -> np.ndarray:
    """:func:`rule_links` for the pairs of records at positions ``left[i]``, ``right[i]``:
    each column is coded once per record, and the pairs compare integer codes."""
    out = np.full(len(left), None, dtype=object)
    if not len(left):
        return out

    def same(values: pd.Series) -> np.ndarray:
        codes = pd.factorize(values.to_numpy(dtype=object), use_na_sentinel=True)[0]
        a, b = codes[left], codes[right]
        return (a >= 0) & (a == b)

    if entity == "person":
        out[same(records["id_number"])] = "same_id_number"
        return out
    out[same(org_codes(records))] = "same_org_code"
    out[same(records["reg_no"])] = "same_reg_no"
    out[same(records["uscc"])] = "same_uscc"
    return out
