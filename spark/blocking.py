"""Blocking on Spark: one self-join per pass, record IDs only.

Each record's block keys come from the local engine's own code
(:func:`master_data.blocking.candidate_pairs` with ``keep_keys``: the same validity checks and
derived keys), run by ``mapInArrow`` over batches of canonical records. Then, per pass, a window
count gives each block's size, blocks with fewer than 2 or more than ``max_block`` rows are
dropped, and the block joins itself on ``l.record_id < r.record_id``. The passes' pairs are
unioned; payload columns are joined to the pairs afterwards, by whoever compares them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence

import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from master_data.blocking import DEFAULT_MAX_BLOCK, BlockingPass, candidate_pairs
from master_data.records import RECORD, records_frame

__all__ = ["block_keys", "candidate_pairs_on_spark", "pair_frame"]

_KEYS_DDL = "`pass` STRING, key STRING, record_id STRING"


def block_keys(records: DataFrame, passes: Sequence[BlockingPass]) -> DataFrame:
    """Every record's block key per pass (``pass, key, record_id``), as the local engine keys it.

    ``records`` holds canonical rows of one entity with their ``record_id``."""
    return records.mapInArrow(functools.partial(_keys, tuple(passes)), _KEYS_DDL)


def _keys(
    passes: tuple[BlockingPass, ...], batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """In a Spark worker: the block keys of each batch of records."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        frame = records_frame(pa.Table.from_batches([batch]))
        # max_block=2: the pairs inside one batch are not wanted, only the keys
        found = candidate_pairs(frame, passes, max_block=2, keep_keys=True)
        assert found.keys is not None
        yield from found.keys.to_batches()


def pair_frame(
    records: DataFrame,
    passes: Iterable[BlockingPass],
    *,
    max_block: int = DEFAULT_MAX_BLOCK,
    keys: DataFrame | None = None,
) -> DataFrame:
    """The candidate pairs of ``records`` as a Spark DataFrame (``left < right`` record IDs,
    each pair once, unordered), for the comparisons to join their columns to. ``keys``: the
    records' :func:`block_keys`, if they were worked out already."""
    plist = list(passes)
    keys = block_keys(records, plist) if keys is None else keys
    found: DataFrame | None = None
    for p in plist:
        mine = keys.where(F.col("pass") == p.name).select("key", RECORD)
        sized = mine.withColumn("size", F.count("*").over(Window.partitionBy("key")))
        kept = sized.where((F.col("size") >= 2) & (F.col("size") <= (p.max_block or max_block)))
        left, right = kept.alias("l"), kept.alias("r")
        pairs = left.join(
            right,
            (F.col("l.key") == F.col("r.key")) & (F.col(f"l.{RECORD}") < F.col(f"r.{RECORD}")),
        ).select(F.col(f"l.{RECORD}").alias("left"), F.col(f"r.{RECORD}").alias("right"))
        found = pairs if found is None else found.unionAll(pairs)
    if found is None:
        return records.sparkSession.createDataFrame([], "left STRING, right STRING")
    return found.distinct()


def candidate_pairs_on_spark(
    records: DataFrame,
    passes: Iterable[BlockingPass],
    *,
    max_block: int = DEFAULT_MAX_BLOCK,
) -> pd.MultiIndex:
    """The candidate pairs of ``records`` (``left < right`` record IDs, sorted): the pairs of
    :func:`master_data.blocking.candidate_pairs` on the same rows and passes."""
    table = pair_frame(records, passes, max_block=max_block).orderBy("left", "right").toArrow()
    return pd.MultiIndex.from_arrays(
        [table["left"].to_pylist(), table["right"].to_pylist()], names=["left", "right"]
    )
