"""The deterministic rules: hard keys that make two records one entity whatever the model says.

The same valid ID number is the same person; the same credit code, or a legacy registration
number or organization code that crosswalks to it, the same enterprise. A valid credit code
carries the organization code in its characters 9–17, so a record with only the one and a
record with only the other still meet. Clustering never puts two different hard keys (ID numbers,
credit codes) in one entity (:mod:`master_data.cluster`).

>>> rule_links(records, pd.Index(["a"]), pd.Index(["b"]), "person").tolist()
['same_id_number']
"""

from __future__ import annotations

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


def org_codes(rows: pd.DataFrame) -> pd.Series:
    """Each enterprise record's organization code: its own, else the one in its credit code."""
    return rows["org_code"].fillna(rows["uscc"].str[8:17])


def rule_links(records: pd.DataFrame, left: pd.Index, right: pd.Index, entity: str) -> pd.Series:
    """The rule that links each pair (``left[i]``, ``right[i]``) of ``records``, or None; the
    strongest where several hold (credit code, then registration number, then organization
    code)."""
    out = pd.Series([None] * len(left), dtype=object)
    if not len(left):
        return out
    used = ["id_number"] if entity == "person" else ["uscc", "reg_no", "org_code"]
    a, b = records.loc[left, used], records.loc[right, used]  # only the compared columns

    def same(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return pd.notna(x) & pd.notna(y) & (x == y)

    if entity == "person":
        out[same(a["id_number"].to_numpy(), b["id_number"].to_numpy())] = "same_id_number"
        return out
    out[same(org_codes(a).to_numpy(), org_codes(b).to_numpy())] = "same_org_code"
    out[same(a["reg_no"].to_numpy(), b["reg_no"].to_numpy())] = "same_reg_no"
    out[same(a["uscc"].to_numpy(), b["uscc"].to_numpy())] = "same_uscc"
    return out
