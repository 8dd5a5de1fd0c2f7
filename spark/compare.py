"""Comparisons and scoring on Spark: ``mapInArrow`` over batches of candidate pairs.

The pairs (record IDs only) are joined to the columns the comparisons read, once for each
side; each batch of pairs then goes through the local engine's own code in a Python worker:
:func:`master_data.compare.compare` for the comparison levels and
:meth:`master_data.model.FellegiSunter.probability` for the match probability, with the
model's term frequencies (:func:`master_data.tf.pair_u`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from master_data.compare import compare, features_for
from master_data.model import FellegiSunter
from master_data.records import RECORD
from master_data.tf import pair_u

__all__ = ["batch_levels", "batch_records", "compared_columns", "join_sides", "score_pairs"]


def compared_columns(entity: str) -> list[str]:
    """The canonical columns the comparisons of ``entity`` read."""
    return sorted({c for f in features_for(entity) for c in f.labels_left})


def join_sides(pairs: DataFrame, records: DataFrame, columns: list[str]) -> DataFrame:
    """Each pair (``left``, ``right``) with ``columns`` of both records, as ``l_<column>`` and
    ``r_<column>`` (``columns`` starts with the record ID)."""
    sides = [
        records.select(*[F.col(c).alias(f"{side}_{c}") for c in columns]) for side in ("l", "r")
    ]
    joined = pairs.join(sides[0], pairs["left"] == sides[0][f"l_{RECORD}"]).join(
        sides[1], pairs["right"] == sides[1][f"r_{RECORD}"]
    )
    return joined.select("left", "right", *[f"{s}_{c}" for s in ("l", "r") for c in columns])


def batch_records(table: pa.Table, columns: list[str]) -> tuple[pd.DataFrame, pd.Index, pd.Index]:
    """In a Spark worker: a batch of :func:`join_sides` as the local code takes it — the records
    of both sides once each (by record ID, sorted) and the pairs' left and right IDs."""
    sides = [
        table.select([f"{s}_{c}" for c in columns]).rename_columns(columns).to_pandas()
        for s in ("l", "r")
    ]
    both = pd.concat(sides, ignore_index=True).set_index(RECORD)
    frame = both[~both.index.duplicated()].sort_index()
    return frame, pd.Index(table["left"].to_pylist()), pd.Index(table["right"].to_pylist())


def batch_levels(
    table: pa.Table, frame: pd.DataFrame, left: pd.Index, right: pd.Index, entity: str
) -> tuple[pd.DataFrame, dict[str, pa.Array]]:
    """In a Spark worker: a batch's pairs compared by the local code, and the output columns
    so far (``left``, ``right``, one int8 level column per feature)."""
    levels = compare(frame, pd.MultiIndex.from_arrays([left, right]), entity)
    out = {side: table[side].cast(pa.string()) for side in ("left", "right")}
    for label in levels.columns:
        out[label] = pa.array(levels[label].to_numpy(), pa.int8())
    return levels, out


def score_pairs(
    pairs: DataFrame, records: DataFrame, entity: str, model: FellegiSunter
) -> DataFrame:
    """Each pair (``left``, ``right``) with one comparison level per feature and its
    ``probability``, as :func:`master_data.compare.compare` and ``model`` give them locally."""
    columns = [RECORD, *compared_columns(entity)]
    joined = join_sides(pairs, records, columns)
    labels = [f.label for f in features_for(entity)]
    ddl = ", ".join(["left STRING", "right STRING", *[f"`{x}` TINYINT" for x in labels]])
    kernel = functools.partial(_score, entity, model.to_json(), columns)
    return joined.mapInArrow(kernel, f"{ddl}, probability DOUBLE")


def _score(
    entity: str, model_json: str, columns: list[str], batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """In a Spark worker: each batch of pairs compared and scored by the local code."""
    model = FellegiSunter.from_json(model_json)
    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        frame, left, right = batch_records(table, columns)
        levels, out = batch_levels(table, frame, left, right, entity)
        at = frame.index.get_indexer
        tf_u = pair_u(frame, at(left), at(right), levels, model.levels, model.tf, entity)
        out["probability"] = pa.array(
            model.probability(levels[model.features], tf_u).to_numpy(), pa.float64()
        )
        yield from pa.table(out).to_batches()
