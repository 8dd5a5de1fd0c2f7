"""Standardize on Spark: ``mapInArrow`` over the raw Parquet batches, calling the local kernel.

Spark reads each raw table and runs :func:`etl.standardize.standardize_batch` on its Arrow
batches in parallel Python workers. Each batch comes back as one row (its canonical and
rejected rows as Arrow IPC, its counts as JSON), in the raw file's row order, and the driver
hands it to the local engine's writer (:func:`etl.standardize.standardize_department`): the
same files, counts, reconciliation and checks as the local engine, from the same kernel.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from etl.config import TableConfig
from etl.standardize import BatchRunner, Kernel, StandardizedBatch

__all__ = ["spark_batches"]

_ROW_INDEX = "__govmdm_row_index"
_OUT = pa.schema(
    [
        ("first", pa.int64()),  # the batch's first row in the raw file: puts batches in order
        ("rows", pa.int64()),
        ("good", pa.binary()),
        ("bad", pa.binary()),
        ("counts", pa.string()),
    ]
)
_OUT_DDL = "first BIGINT, rows BIGINT, good BINARY, bad BINARY, counts STRING"
_COUNTS = ("reject_reasons", "field_reasons", "filled", "unreadable", "examples")


def spark_batches(spark: SparkSession) -> BatchRunner:
    """A :data:`etl.standardize.BatchRunner` that runs the kernel on ``spark``.

    >>> standardize_department(city, dept, run_id, batches=spark_batches(spark))  # doctest: +SKIP
    """
    return functools.partial(_run, spark)


def _run(
    spark: SparkSession, table: TableConfig, path: Path, kernel: Kernel, batch_rows: int
) -> Iterator[StandardizedBatch]:
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
    raw = spark.read.parquet(str(path.resolve()))
    raw = raw.select("*", F.col("_metadata.row_index").alias(_ROW_INDEX))
    done = raw.mapInArrow(functools.partial(_standardize, kernel), _OUT_DDL)
    # kept once: the sort samples its input in a job of its own, which would run the kernel on
    # every batch a second time
    done = done.localCheckpoint()
    for row in done.orderBy("first").toLocalIterator(prefetchPartitions=True):
        yield _decode(row.asDict())


def _standardize(kernel: Kernel, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """In a Spark worker: each raw batch through the kernel, encoded as one row."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        first = batch.column(_ROW_INDEX)[0].as_py()
        rows = batch.drop_columns([_ROW_INDEX]).to_pydict()
        out = kernel(rows)
        counts = {name: dict(getattr(out, name)) for name in _COUNTS}
        yield pa.RecordBatch.from_pylist(
            [
                {
                    "first": first,
                    "rows": out.rows,
                    "good": _ipc(out.good),
                    "bad": _ipc(out.bad),
                    "counts": json.dumps(counts, ensure_ascii=False),
                }
            ],
            schema=_OUT,
        )


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def _decode(row: dict[str, Any]) -> StandardizedBatch:
    counts = json.loads(row["counts"])
    return StandardizedBatch(
        rows=row["rows"],
        good=pa.ipc.open_stream(bytes(row["good"])).read_all(),
        bad=pa.ipc.open_stream(bytes(row["bad"])).read_all(),
        reject_reasons=Counter(counts["reject_reasons"]),
        field_reasons=Counter(counts["field_reasons"]),
        filled=Counter(counts["filled"]),
        unreadable=Counter(counts["unreadable"]),
        examples=counts["examples"],
    )
