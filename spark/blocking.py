"""Blocking on Spark: one self-join on the block keys of every pass, record IDs only.

Each record's block keys come from the local engine's own code
(:func:`master_data.blocking.block_key_table`: the same validity checks and derived keys), run
by ``mapInArrow`` over batches of canonical records. Then a window count gives each block's
size, blocks with fewer than 2 or more than their pass's ``max_block`` rows are dropped, and the
blocks of every pass join themselves at once on ``pass, key`` and ``l.record_id < r.record_id``;
each pair is kept once. Payload columns are joined to the pairs afterwards, by whoever compares
them. The blocks left out are reported once per pass (:func:`pass_reports`): how many, and the
biggest few, masked.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from master_data.blocking import DEFAULT_MAX_BLOCK, BlockingPass, block_key_table, masked_key
from master_data.records import RECORD, records_frame

__all__ = [
    "SKIPPED_SHOWN",
    "block_keys",
    "candidate_pairs_on_spark",
    "key_pairs",
    "pair_frame",
    "pass_reports",
]

log = logging.getLogger(__name__)

SKIPPED_SHOWN = 5
"""How many of a pass's skipped blocks (the biggest) its report names."""
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
        yield from block_key_table(frame, passes).to_batches()


def _limit(passes: Sequence[BlockingPass], max_block: int) -> Column:
    """Each key row's largest block size: its pass's ``max_block``, else ``max_block``."""
    limit: Any = F
    for p in passes:
        limit = limit.when(F.col("pass") == p.name, F.lit(p.max_block or max_block))
    return limit.otherwise(F.lit(max_block)) if passes else F.lit(max_block)


def _sized(keys: DataFrame, passes: Sequence[BlockingPass], max_block: int) -> DataFrame:
    """The key rows with their block's ``size`` and their pass's ``limit``."""
    size = F.count("*").over(Window.partitionBy("pass", "key"))
    return keys.withColumn("size", size).withColumn("limit", _limit(passes, max_block))


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
    return key_pairs(keys, plist, max_block=max_block)


def key_pairs(
    keys: DataFrame,
    passes: Sequence[BlockingPass],
    *,
    max_block: int = DEFAULT_MAX_BLOCK,
    column: str = RECORD,
) -> DataFrame:
    """The pairs of ``keys`` rows (``pass, key, <column>``) in one block of a pass that is
    neither a single row nor larger than its ``max_block``: ``left < right`` of ``column``
    (a record ID, or a record's position), each pair once."""
    if not passes:  # nothing blocks: no pair
        kind = keys.schema[column].dataType.simpleString()
        return keys.sparkSession.createDataFrame([], f"left {kind}, right {kind}")
    sized = _sized(keys, passes, max_block)
    kept = sized.where((F.col("size") >= 2) & (F.col("size") <= F.col("limit")))
    kept = kept.select("pass", "key", column)
    left, right = kept.alias("l"), kept.alias("r")
    pairs = left.join(
        right,
        (F.col("l.pass") == F.col("r.pass"))
        & (F.col("l.key") == F.col("r.key"))
        & (F.col(f"l.{column}") < F.col(f"r.{column}")),
    ).select(F.col(f"l.{column}").alias("left"), F.col(f"r.{column}").alias("right"))
    return pairs.distinct()


def pass_reports(
    keys: DataFrame,
    passes: Sequence[BlockingPass],
    *,
    max_block: int = DEFAULT_MAX_BLOCK,
    shown: int = SKIPPED_SHOWN,
) -> list[dict[str, Any]]:
    """Per pass: its blocks kept, and the blocks skipped for holding more than ``max_block``
    rows: how many, their rows, and the ``shown`` biggest (masked keys). Each pass with skipped
    blocks is logged in one line. Only these counts reach the driver."""
    blocks = keys.groupBy("pass", "key").agg(F.count("*").alias("size"))
    blocks = blocks.withColumn("limit", _limit(passes, max_block))
    over = F.col("size") > F.col("limit")
    # one job: the totals and the skipped blocks (few: each holds more than max_block rows),
    # biggest first, then by key
    biggest = F.when(over, F.struct((-F.col("size")).alias("minus"), F.col("key")))
    totals = {
        r["pass"]: r
        for r in blocks.groupBy("pass")
        .agg(
            F.sum(F.when((F.col("size") >= 2) & ~over, 1).otherwise(0)).alias("blocks"),
            F.sum(F.when(over, 1).otherwise(0)).alias("skipped"),
            F.sum(F.when(over, F.col("size")).otherwise(0)).alias("skipped_rows"),
            F.slice(F.sort_array(F.collect_list(biggest)), 1, max(shown, 1)).alias("top"),
        )
        .collect()
    }
    top = {
        name: [(t["key"], -int(t["minus"])) for t in row["top"][:shown]]
        for name, row in totals.items()
    }
    out = []
    for p in passes:
        row = totals.get(p.name)
        blocks_kept, skipped_blocks, skipped_rows = (
            (int(row["blocks"]), int(row["skipped"]), int(row["skipped_rows"]))
            if row
            else (0, 0, 0)
        )
        skipped = [{"key": masked_key(p, k), "size": n} for k, n in top.get(p.name, [])]
        if skipped_blocks:
            log.warning(
                "blocking pass %r: skipped %d block(s) (%d rows) larger than max_block=%d; "
                "the biggest: %s%s",
                p.name,
                skipped_blocks,
                skipped_rows,
                p.max_block or max_block,
                ", ".join(f"{s['key']} ({s['size']} rows)" for s in skipped),
                ", …" if skipped_blocks > len(skipped) else "",
            )
        out.append(
            {
                "name": p.name,
                "keys": list(p.keys),
                "blocks": blocks_kept,
                "skipped_blocks": skipped_blocks,
                "skipped_rows": skipped_rows,
                "skipped": skipped,
            }
        )
    return out


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
