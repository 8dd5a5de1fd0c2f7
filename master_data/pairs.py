"""Candidate pairs and their scores: blocking, comparison, the model and the rules.

:func:`candidates` finds the pairs to compare — every candidate pair of the night's records, or,
given the base night's block keys, only those touching tonight's rows (blocked against the
cached keys, so the cost grows with the changes rather than with the city) — and :func:`edges`
scores them and keeps the ones worth storing: a deterministic rule holds, or the match
probability is at least the ``keep`` threshold.

>>> found = candidates(records, tonight_rows, removed, None, settings.person)
>>> scored = edges(found.compared, found.pairs, levels, model, "person", keep=0.5)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from master_data.blocking import candidate_pairs, delta_candidates
from master_data.compare import pair_positions
from master_data.deterministic import corroborated, filed_under_another, rule_links_at
from master_data.model import FellegiSunter
from master_data.records import RECORD, Records, distinct, is_in, records_frame
from master_data.settings import EntityMatch
from master_data.tf import pair_u, u_column


@dataclass
class Found:
    """The candidate pairs of a night and what finding them left behind."""

    pairs: pd.MultiIndex
    compared: pd.DataFrame  # the records at either end of a pair (and tonight's), by record ID
    # the block keys blocking made: every record's (the next night blocks against them), or on
    # a delta night tonight's rows' (the others' are the base night's)
    keys: pa.Table
    report: dict[str, Any]  # the blocking report (:class:`master_data.blocking.BlockingReport`)


CachedKeys = Callable[[pa.Array], pa.Table]
"""The base night's block-key rows (:data:`master_data.blocking.KEY_SCHEMA`) of the given
keys: those of the blocks tonight's rows fall into."""


def candidates(
    records: Records,
    tonight: pa.Table,
    removed: pd.Index,
    cached: CachedKeys | None,
    match: EntityMatch,
) -> Found:
    """The candidate pairs among ``records``: with the base night's block keys ``cached``, the
    pairs that touch one of ``tonight``'s rows (``removed``: the record IDs whose cached keys
    are stale); without, every pair."""
    if cached is None:
        compared = records_frame(records)
        found = candidate_pairs(compared, match.blocking, max_block=match.max_block, keep_keys=True)
        assert found.keys is not None
        return Found(found.pairs, _blocked(compared), found.keys, found.report.as_dict())
    changed = pd.Index(tonight[RECORD].to_pandas())
    mine = candidate_pairs(
        records_frame(tonight), match.blocking, max_block=match.max_block, keep_keys=True
    ).keys
    assert mine is not None
    # only the blocks tonight's rows fall into can hold a pair touching one of them
    near = cached(pc.unique(mine["key"]))
    keys = pa.concat_tables([near.filter(pc.invert(is_in(near[RECORD], removed))), mine])
    found = delta_candidates(
        keys, set(changed), match.blocking, records=records.num_rows, max_block=match.max_block
    )
    pairs = found.pairs
    ends = distinct(pairs.get_level_values(0), pairs.get_level_values(1), changed)
    compared = records_frame(records, ends)
    return Found(pairs, _blocked(compared), mine, found.report.as_dict())


def _blocked(records: pd.DataFrame) -> pd.DataFrame:
    """``records`` without their reject reasons: only blocking reads them (a value with a
    reject reason is no block key), and each row's list of them is a Python object."""
    if "reasons" in records.columns:
        del records["reasons"]
    return records


def edges(
    records: pd.DataFrame,
    pairs: pd.MultiIndex,
    levels: pd.DataFrame,
    model: FellegiSunter,
    entity: str,
    keep: float,
) -> pd.DataFrame:
    """The scored pairs worth keeping: a rule holds, or the probability is at least ``keep``.
    One row per pair: ``left``, ``right``, each feature's comparison level, the u_v of each
    term-frequency-adjusted feature (``name_tf``: :mod:`master_data.tf`), ``probability`` and
    ``rule``."""
    left, right = pair_positions(records.index, pairs)
    tf_u = pair_u(records, left, right, levels, model.levels, model.tf, entity)
    probability = (
        model.probability(levels[model.features], tf_u).to_numpy() if len(pairs) else np.empty(0)
    )
    rule = rule_links_at(records, left, right, entity)
    kept = np.flatnonzero(pd.notna(rule) | (probability >= keep))
    ids = records.index.to_numpy(dtype=object)
    frame = pd.DataFrame({"left": ids[left[kept]], "right": ids[right[kept]]})
    for feature in levels.columns:
        frame[feature] = levels[feature].to_numpy(dtype=np.int8)[kept]
    for feature, u in tf_u.items():
        frame[u_column(feature)] = u[kept]
    frame["probability"] = probability[kept]
    frame["rule"] = rule[kept]
    filed = filed_under_another(records, left, right, entity)
    agree = corroborated(levels, entity, filed) if len(pairs) else np.ones(0, bool)
    frame["corroborated"] = np.asarray(agree, dtype=bool)[kept]
    return frame


def usable(edges: pd.DataFrame, auto_link: float) -> pd.Series:
    """The edges clustering may follow: a rule holds, or the probability reaches ``auto_link``
    and the pair is corroborated (:func:`master_data.deterministic.corroborated`; edges of a
    night stored before that was kept count as corroborated)."""
    return edges["rule"].notna() | ((edges["probability"] >= auto_link) & confirmed(edges))


def confirmed(edges: pd.DataFrame) -> pd.Series:
    """Each edge's ``corroborated`` flag (True where the edges predate it)."""
    if "corroborated" not in edges.columns:
        return pd.Series(True, index=edges.index)
    return edges["corroborated"].fillna(True).astype(bool)
