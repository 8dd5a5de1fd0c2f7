"""Standardize on Spark: ``mapInArrow`` over the raw Parquet batches, calling the local kernel.

Spark reads each raw table and runs :func:`etl.standardize.standardize_batch` on its Arrow
batches in parallel Python workers. Each worker writes a batch's canonical and rejected rows
itself, as part files of the department's outputs (:class:`etl.standardize.ParquetParts`, one
per batch, named by the batch's first row in the raw file, so that reading a folder in name
order gives the raw file's row order), and sends the driver only the batch's counts. The driver
plans, adds the counts up, runs the local engine's reconciliation and checks, and commits the
folders: its memory does not grow with the department.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from etl.config import TableConfig
from etl.standardize import BatchCounts, BatchRunner, Kernel, ParquetParts, PartWriter
from spark.session import guarded

__all__ = ["spark_batches"]

_ROW_INDEX = "__govmdm_row_index"
_OUT = pa.schema(
    [
        ("first", pa.int64()),  # the batch's first row in the raw file: puts batches in order
        ("counts", pa.string()),
    ]
)
_OUT_DDL = "first BIGINT, counts STRING"
_COUNTERS = ("reject_reasons", "field_reasons", "filled", "unreadable")


def spark_batches(spark: SparkSession) -> BatchRunner[ParquetParts]:
    """A :class:`etl.standardize.BatchRunner` that runs the kernel on ``spark``, its executors
    writing the rows as part files.

    >>> standardize_department(city, dept, run_id, batches=spark_batches(spark))  # doctest: +SKIP
    """
    return BatchRunner(functools.partial(_run, spark), ParquetParts)


def _run(
    spark: SparkSession,
    table: TableConfig,
    path: Path,
    kernel: Kernel,
    batch_rows: int,
    good: ParquetParts,
    bad: ParquetParts,
) -> Iterator[BatchCounts]:
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
    raw = spark.read.parquet(str(path.resolve()))
    raw = raw.select("*", F.col("_metadata.row_index").alias(_ROW_INDEX))
    work = functools.partial(_standardize, kernel, good.section(), bad.section())
    # one small row per batch comes back: what the driver holds grows with the number of
    # batches, never with the rows
    department = path.parent.name.partition("=")[2] or path.parent.name  # department=<code>
    with guarded(spark, f"standardize {department}, table {table.name}"):
        counted = raw.mapInArrow(work, _OUT_DDL).collect()
    for row in sorted(counted, key=lambda r: int(r["first"])):
        yield _decode(row["counts"])


def _standardize(
    kernel: Kernel, good: PartWriter, bad: PartWriter, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """In a Spark worker: each raw batch through the kernel, its rows written as parts, its
    counts sent back as one row."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        first = batch.column(_ROW_INDEX)[0].as_py()
        out = kernel(batch.drop_columns([_ROW_INDEX]).to_pydict())
        for part, rows in ((good, out.good), (bad, out.bad)):
            if rows.num_rows:
                part.write(first, rows)
        counts = json.dumps(vars(out.counts), ensure_ascii=False)
        yield pa.RecordBatch.from_pylist([{"first": first, "counts": counts}], schema=_OUT)


def _decode(text: str) -> BatchCounts:
    counts = json.loads(text)
    for name in _COUNTERS:
        counts[name] = Counter(counts[name])
    return BatchCounts(**counts)
