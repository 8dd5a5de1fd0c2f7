"""Term-frequency adjustment: an exact agreement on a common name says less than on a rare one.

The Fellegi–Sunter model gives every exact name agreement one weight, log2(m/u), where u is
the chance that two different people's names agree — on average over all names. Two 王伟 agree
far more often by chance than two 郑予涵. As Splink does (``term_frequency_adjustments``), the
u of an exact agreement on value v is taken as v's share among tonight's records, u_v, never
below a configured floor (``term_frequency: {name: {floor: …}}`` in ``config/matching.yaml``);
the pair's weight for that feature is log2(m/u_v) instead of log2(m/u). EM still learns m and u
without it; the adjustment applies when pairs are scored.

The table (:func:`term_frequencies`) is built once from the records when the model is trained
and travels with the model (:attr:`master_data.model.FellegiSunter.tf`), so a delta night, a
full rebuild with the same model and the Spark engine score every pair alike. A value the
table does not know (first seen after training) gets the level's average u.

>>> import pandas as pd
>>> rows = pd.DataFrame({"name": ["王伟"] * 3 + ["郑予涵"]})
>>> term_frequencies(rows, "person", {"name": 0.1})
{'name': {'王伟': 0.75, '郑予涵': 0.25}}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from master_data.model import FellegiSunter, TfU

__all__ = ["TF_COLUMNS", "attach", "edge_u", "pair_u", "term_frequencies", "u_column"]

TF_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "person": {"name": ("name", "former_name")},
    "enterprise": {"name": ("name",)},
}
"""Per entity, the features that can be adjusted: the column whose values are counted, then
the columns an exact agreement may also come from (a former name, 曾用名)."""

Frequencies = dict[str, dict[str, float]]


def _column(records: pd.DataFrame | pa.Table, column: str) -> pd.Series:
    if isinstance(records, pa.Table):
        if column not in records.column_names:
            return pd.Series([], dtype=object)
        return records[column].to_pandas()
    return records[column] if column in records.columns else pd.Series([], dtype=object)


def term_frequencies(
    records: pd.DataFrame | pa.Table, entity: str, floors: Mapping[str, float]
) -> Frequencies:
    """Per feature of ``floors`` (feature → floor), each value's u_v: its share among the
    records holding a value, at least the floor; sorted by value, so the same records give
    the same table whatever their order.

    >>> import pandas as pd
    >>> rows = pd.DataFrame({"name": ["林海", None, "林海", "", "陈静"]})
    >>> term_frequencies(rows, "person", {"name": 0.5})  # 陈静: 1/3, floored
    {'name': {'林海': 0.6666666666666666, '陈静': 0.5}}
    """
    out: Frequencies = {}
    for feature, floor in sorted(floors.items()):
        column = TF_COLUMNS[entity][feature][0]
        values = _column(records, column).dropna().astype(str)
        values = values[values != ""]
        counts = values.value_counts(sort=False).sort_index()
        total = int(counts.sum())
        out[feature] = {
            str(v): max(int(n) / total, float(floor)) for v, n in counts.items() if total
        }
    return out


def pair_u(
    records: pd.DataFrame,
    left: npt.NDArray[np.intp],
    right: npt.NDArray[np.intp],
    levels: pd.DataFrame,
    tops: Mapping[str, int],
    table: Frequencies,
    entity: str,
) -> dict[str, npt.NDArray[np.float64]]:
    """Per adjusted feature, each pair's u_v: the share of the value both records agree on
    where the pair's level is the feature's exact one (``tops``), NaN elsewhere (or where the
    table does not know the value). ``left``/``right``: the pairs' positions in ``records``.

    An exact person-name agreement may come from a former name (曾用名): the agreeing value
    is the one both records hold, whichever column holds it.
    """
    out: dict[str, npt.NDArray[np.float64]] = {}
    for feature, shares in sorted(table.items()):
        u = np.full(len(left), np.nan)
        if feature not in levels.columns or not len(left):
            out[feature] = u
            continue
        exact = np.flatnonzero(levels[feature].to_numpy() == tops[feature])
        main, *others = TF_COLUMNS[entity][feature]
        lookup = pd.Series(shares, dtype=np.float64)

        def at(column: str, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.object_]:
            if column not in records.columns:
                return np.full(len(rows), None, dtype=object)
            return records[column].to_numpy(dtype=object)[rows]

        a, b = at(main, left[exact]), at(main, right[exact])
        has_a, has_b = pd.notna(a).astype(bool), pd.notna(b).astype(bool)
        value = np.full(len(exact), None, dtype=object)
        found = has_a & (a == b)
        value[found] = a[found]
        for other in others:  # the agreement came through a former name
            fa, fb = at(other, left[exact]), at(other, right[exact])
            via = ~found & has_a & (a == fb)
            value[via] = a[via]
            found |= via
            via = ~found & has_b & (fa == b)
            value[via] = b[via]
            found |= via
        u[exact] = pd.Series(value, dtype=object).map(lookup).to_numpy(dtype=np.float64)
        out[feature] = u
    return out


def u_column(feature: str) -> str:
    """The edges' column holding each pair's u_v of ``feature`` (``name_tf``)."""
    return f"{feature}_tf"


def edge_u(edges: pd.DataFrame) -> TfU:
    """The u_v columns of scored ``edges`` as :meth:`FellegiSunter.probability` takes them
    (edges stored before the adjustment have none)."""
    return {
        str(c)[: -len("_tf")]: edges[c].to_numpy(dtype=np.float64)
        for c in edges.columns
        if str(c).endswith("_tf")
    }


def attach(
    model: FellegiSunter, table: Frequencies, correlated: Sequence[Sequence[str]] = ()
) -> FellegiSunter:
    """``model`` with the term-frequency ``table`` of the features it holds, and the groups
    of ``correlated`` features (:attr:`FellegiSunter.correlated`) among them; a model that
    learnt nothing (only the rules link) stays without: its m says nothing to weigh by."""
    if model.m == model.u:  # master_data.train.rules_only
        return model
    kept = {f: v for f, v in table.items() if f in model.m}
    groups = [list(g) for g in correlated if sum(f in model.m for f in g) >= 2]
    if kept == model.tf and groups == model.correlated:
        return model
    return dataclasses.replace(model, tf=kept, correlated=groups)
