"""The link stage on Spark: a full night's heavy steps, each the local engine's own kernel.

:class:`SparkLink` is the :class:`master_data.engine.LinkEngine` :func:`master_data.link.link`
hands an entity to when all its records are linked again:

1. **Blocking** (:mod:`spark.blocking`): the columns the link reads of every record, written
   by the driver (which holds them) to one Arrow file in the scratch that every Python worker
   maps; each record known by its position in it. Block keys worked out by the workers over
   slices of it, one self-join on every pass's keys (``l.pos < r.pos``), the skipped blocks
   reported once per pass.
2. **Comparison and rules**: ``mapInArrow`` over the pairs of positions, calling
   :func:`master_data.compare.compare` and :func:`master_data.deterministic.rule_links_at`;
   each task keeps its pairs' levels in a file of its own and sends back only its count of
   each comparison pattern.
3. **EM** on the driver from those counts, of every candidate pair and of the random pairs
   that pin u down (:func:`master_data.train.fit_counted`): exact, the same numbers the local
   engine fits.
4. **Scores** by :meth:`master_data.model.FellegiSunter.probability`, a Spark task per file of
   levels; the edges worth keeping (``keep``) come back to the driver as files.

An entity whose columns exceed :attr:`SparkLink.payload_bytes` is read by the executors from
tonight's canonical Parquet when they are all there (:mod:`spark.records`) and its pairs of
record IDs joined to both records' columns in Spark SQL; the levels are then counted by a
``GROUP BY`` and the kept pairs written as Parquet by the executors.

5. **Clusters**: connected components of the usable links (on the driver, which holds them,
   up to :attr:`SparkLink.driver_edges` links; else :mod:`spark.components`), then
   :func:`master_data.cluster.cluster_records` over hash buckets of components (a bucket
   holds many components, never one group per component), a Spark task per bucket.

Master IDs are then issued on the driver in one deterministic step
(:func:`master_data.identity.assign_ids`), as the local engine issues them, so both engines
give the same IDs.

6. **Golden records**, provenance and conflicts: :func:`master_data.golden.golden_records` by
   hash buckets of master IDs, a Spark task per bucket.

Rows go between the driver and the executors as files in :attr:`SparkLink.scratch` (which the
executors read, as they read the canonical Parquet), never through the driver's JVM: each
bucket's rows as Arrow IPC files its task reads and answers with files of its own, the kept
pairs and block keys as Parquet the executors write. Each step's files are removed when it ends,
and a JVM out of memory stops the link with :class:`spark.session.SparkStopped` naming the step.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession

from etl.config import CityConfig
from master_data.blocking import KEY_SCHEMA, block_key_rows
from master_data.cluster import RecordClusters, cluster_records, record_components
from master_data.compare import compare, features_for
from master_data.deterministic import (
    CORROBORATION,
    HARD_KEY,
    corroborated,
    filed_under_another,
    rule_links,
    rule_links_at,
)
from master_data.engine import RecordFiles, Scored
from master_data.golden import golden_records
from master_data.model import FellegiSunter
from master_data.pairs import confirmed
from master_data.pairs import usable as usable_edges
from master_data.records import RECORD, records_frame
from master_data.settings import EntityMatch, MatchSettings
from master_data.tf import TF_COLUMNS, Frequencies, attach, edge_u, pair_u, u_column
from master_data.train import fit_counted, random_pairs, random_positions, top_levels
from spark.blocking import block_keys, key_pairs, pair_frame, pass_reports
from spark.compare import batch_levels, batch_records, compared_columns, join_sides
from spark.components import components
from spark.records import RULE_COLUMNS, canonical_records, payload_columns, position_columns
from spark.session import TASKS_PER_CORE, guarded

__all__ = ["SparkLink"]

log = logging.getLogger(__name__)

BUCKET_ROWS = 1_000
"""The fewest rows a hash bucket is given (:attr:`SparkLink.bucket_rows`): a bucket's task,
its Arrow IPC both ways and its kernel's setup cost the same for a handful of rows as for
thousands, so a small entity runs in fewer buckets than :attr:`SparkLink.tasks`."""

DRIVER_EDGES = 5_000_000
"""Links whose components the driver works out itself (:attr:`SparkLink.driver_edges`): about
200 MB of scipy's graph."""


PAYLOAD_BYTES = 2 * 2**30
"""Records whose columns the link reads take at most this many bytes (about 13 million
person records: 158 bytes each in the sample city) are scored by position
(:attr:`SparkLink.payload_bytes`): the driver, which holds them, writes them to one Arrow file
in the link's scratch that every Python worker maps (on a cluster the scratch is shared: each
machine reads the file once, as a broadcast join would send it), and the pairs are pairs of
positions in it. More are read by the executors from the canonical Parquet and joined to the
pairs in Spark SQL, a shuffle of every pair with both records' columns."""

PAIR_BATCH = 50_000
"""Pairs a Python worker compares at once: Spark hands them over 10,000 a batch, and each call
of the comparisons costs about as much to set up for a few pairs as for many."""


def _quiet(_message: str) -> None:
    """No progress lines."""


@dataclass
class SparkLink:
    """The link stage's heavy steps on ``spark``; ``scratch`` (under var/spark/) holds the
    records Spark reads while an entity links. ``buckets``: the hash buckets clustering and
    survivorship run in, and the partitions the records are spread over (default:
    :data:`TASKS_PER_CORE` per core of Spark's default parallelism); ``bucket_rows``: the
    fewest rows a bucket is given (:data:`BUCKET_ROWS`). ``driver_edges``: up to
    this many links, their connected components are worked out on the driver, which holds them
    already (as :func:`master_data.cluster.cluster_records` does: milliseconds, where Spark
    SQL's rounds are dozens of jobs, each planned on the driver while the executors wait); more
    go through :mod:`spark.components`. ``say``: where each step's progress line goes (the night's
    progress: a step's wall and CPU seconds are read between two lines)."""

    spark: SparkSession
    scratch: Path
    buckets: int = 0
    bucket_rows: int = BUCKET_ROWS
    driver_edges: int = DRIVER_EDGES
    payload_bytes: int = PAYLOAD_BYTES
    say: Callable[[str], None] = _quiet
    name: str = field(default="Spark", init=False)
    step: str = field(default="", init=False)
    """The step running (or last run): what a failure is reported against."""
    _readying: threading.Thread | None = field(default=None, init=False, repr=False)

    def _ready_workers(self) -> None:
        """Once per link: start a Python worker in every task slot and import the link's
        kernels there, in a job of its own while the driver prepares the first entity's records.
        A worker's first task otherwise pays for it (seconds: pandas, scipy, recordlinkage,
        pypinyin) before any record is keyed. A failure here is only logged: the link's own
        jobs report whatever is wrong."""
        if self._readying is not None:
            return
        spark = self.spark
        slots = spark.sparkContext.defaultParallelism

        def run() -> None:
            try:
                spark.sparkContext.setJobDescription("govmdm link: Python workers readied")
                ready = spark.range(slots, numPartitions=slots).mapInArrow(_ready, "ready LONG")
                ready.collect()
            except Exception:  # the link's own jobs report any failure
                log.debug("readying the Python workers failed", exc_info=True)

        self._readying = threading.Thread(target=run, name="govmdm-ready-workers", daemon=True)
        self._readying.start()

    def _at(self, step: str) -> None:
        """``step`` starts: said, and named by any failure of a JVM until the next one."""
        self.step = step
        self.spark.sparkContext.setJobDescription(f"govmdm link: {step}")  # Spark's UI
        self.say(step)

    def _guarded(self) -> contextlib.AbstractContextManager[None]:
        """A JVM out of memory or gone stops the link with :class:`spark.session.SparkStopped`
        naming the step, instead of whatever the driver's next call to it raised."""
        return guarded(self.spark, lambda: f"link {self.step}")

    @property
    def tasks(self) -> int:
        """The buckets (tasks) a step running a Python kernel is cut into."""
        return self.buckets or TASKS_PER_CORE * self.spark.sparkContext.defaultParallelism

    def buckets_for(self, rows: int) -> int:
        """The hash buckets ``rows`` rows are cut into: :attr:`tasks`, fewer for a small
        entity, so that each holds about :attr:`bucket_rows` at least."""
        return max(1, min(self.tasks, rows // self.bucket_rows))

    def score(
        self,
        records: pa.Table,
        entity: str,
        match: EntityMatch,
        settings: MatchSettings,
        model: FellegiSunter | None,
        frequencies: Frequencies,
        files: RecordFiles | None = None,
    ) -> Scored:
        """Block, compare, fit (unless ``model``), attach the term ``frequencies``, score and
        keep, as the local engine does: by position in a file of the records' columns when
        they fit :attr:`payload_bytes`, else joined to the pairs in Spark SQL."""
        self._ready_workers()
        compared = records_frame(records)
        folder = self.scratch / entity
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, mode=0o700)
        how = _Scoring(entity, match, settings, model, frequencies, compared, folder)
        try:
            with self._guarded():
                payload = records.select(position_columns(entity, match))
                if payload.nbytes <= self.payload_bytes:
                    return self._by_position(payload, how)
                return self._joined(records, files, how)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _by_position(self, payload: pa.Table, how: _Scoring) -> Scored:
        """:meth:`score` with the records' columns in one Arrow file the Python workers map
        (:data:`PAYLOAD_BYTES`): block keys of slices of it, pairs of positions in it, each
        worker's levels kept in a file of its own and counted there, scored from those files.
        Only record positions and pattern counts pass through the JVMs."""
        entity, match, compared, folder = how.entity, how.match, how.compared, how.folder
        payload = payload.take(pc.sort_indices(payload[RECORD]))
        ids = compared.index.to_numpy(dtype=object)
        if not payload[RECORD].equals(pa.chunked_array([pa.array(ids, pa.string())])):
            raise RuntimeError(f"{entity}: the records' file is not in record ID order")
        path = _write_ipc(payload, folder / f"records-{uuid.uuid4().hex}")
        self._at(f"{entity}: block keys")
        keys, slices = _position_keys(self, path, payload.num_rows, match, folder)
        keys = keys.localCheckpoint(eager=False)
        self._at(f"{entity}: blocks counted")
        passes = pass_reports(keys, match.blocking, max_block=match.max_block)
        self._at(f"{entity}: pairs compared")
        pairs = key_pairs(keys, match.blocking, max_block=match.max_block, column="pos")
        counts, level_files = _position_levels(pairs, path, entity, how.wanted, folder)

        def random_counts() -> pd.DataFrame:
            picked = random_positions(len(compared))
            drawn = pa.table({s: pa.array(picked[i], pa.int64()) for i, s in _SIDES})
            drawn_frame = _handed(self.spark, drawn, folder, "random-pairs", self.tasks)
            return _position_levels(drawn_frame, path, entity, {}, None)[0]

        model, trained = self._fitted(counts, random_counts, how)
        self._at(f"{entity}: scores kept")
        labels = [f.label for f in features_for(entity)]
        extra = [u_column(f) for f in sorted(model.tf)]
        kernel = functools.partial(
            _score_levels, model.to_json(), labels, extra, match.thresholds.keep, entity
        )
        sent: list[tuple[str | None, ...]] = [
            (str(folder / f"kept-{i}"), p) for i, p in enumerate(level_files)
        ]
        done = _run_buckets(self, sent, kernel, 1)
        kept = _kept_by_position(done[0] if done else None, labels, extra, ids)
        self._at(f"{entity}: block keys collected")
        found = [_read_ipc_file(folder / f"keys-{i:05d}") for i in range(slices)]
        block = _in_pass_order(
            pa.concat_tables(found) if found else KEY_SCHEMA.empty_table(),
            [p.name for p in match.blocking],
        )
        return how.scored(block, "driver", passes, int(counts["count"].sum()), model, trained, kept)

    def _joined(self, records: pa.Table, files: RecordFiles | None, how: _Scoring) -> Scored:
        """:meth:`score` with the records read by the executors (the canonical Parquet when
        they are all there), the pairs of record IDs joined to their columns in Spark SQL."""
        entity, match, compared, folder = how.entity, how.match, how.compared, how.folder
        self._at(f"{entity}: block keys")
        rows, read = self._records(records, entity, match, files, folder)
        # checkpoints kept lazily: the first job that reads them keeps them, no job of
        # their own (a Spark job's planning is the driver's, uncut by more cores)
        keys = block_keys(rows, match.blocking).localCheckpoint(eager=False)
        self._at(f"{entity}: blocks counted")
        passes = pass_reports(keys, match.blocking, max_block=match.max_block)
        self._at(f"{entity}: pairs compared")
        levels = _levels(
            pair_frame(rows, match.blocking, max_block=match.max_block, keys=keys),
            rows,
            entity,
            how.wanted,
        ).localCheckpoint(eager=False)
        labels = [f.label for f in features_for(entity)]
        counts = _counts(levels, labels) if how.model is None else None

        def random_counts() -> pd.DataFrame:
            picked = random_pairs(compared.index.to_numpy())
            sides = {s: picked.get_level_values(i) for i, s in _SIDES}
            drawn = _handed(
                self.spark,
                pa.table({k: pa.array(v.astype(str), pa.string()) for k, v in sides.items()}),
                folder,
                "random-pairs",
                self.tasks,
            )
            return _counts(_levels(drawn, rows, entity, {}), labels)

        model, trained = self._fitted(counts, random_counts, how)
        pairs = int(counts["count"].sum()) if counts is not None else levels.count()
        self._at(f"{entity}: scores kept")
        kept = _kept(levels, labels, model, match.thresholds.keep, entity, compared, folder)
        self._at(f"{entity}: block keys collected")
        block = _key_table(keys, [p.name for p in match.blocking], folder)
        return how.scored(block, read, passes, pairs, model, trained, kept)

    def _fitted(
        self,
        counts: pd.DataFrame | None,
        random_counts: Callable[[], pd.DataFrame],
        how: _Scoring,
    ) -> tuple[FellegiSunter, bool]:
        """The model (fitted from the candidate pairs' pattern ``counts`` and
        ``random_counts`` of the random pairs, unless one was given) with the term frequencies
        attached, and whether it was fitted tonight."""
        model = how.model
        if model is None:
            assert counts is not None  # counted when there is a model to fit
            self._at(f"{how.entity}: EM counts")
            random = random_counts()
            model = fit_counted(counts, random, len(how.compared), how.entity, how.settings)
        return attach(model, how.frequencies, how.match.correlated), how.model is None

    def _records(
        self,
        records: pa.Table,
        entity: str,
        match: EntityMatch,
        files: RecordFiles | None,
        folder: Path,
    ) -> tuple[DataFrame, str]:
        """The columns blocking and comparing read of every record, as a Spark DataFrame spread
        evenly over the executors and kept there (``localCheckpoint``), and where it was read:
        the night's canonical Parquet files when the records are exactly those (``files``),
        else the records handed over, written under ``folder`` first."""
        columns = payload_columns(entity, match)
        parts = max(self.tasks, 2)
        if files is not None and files.paths:
            read = canonical_records(self.spark, files, entity).select(*columns)
            rows = read.repartition(parts).localCheckpoint(eager=False)
            found = rows.count()  # the job that reads the files once and keeps the rows
            if found == files.rows:
                return rows, "canonical parquet"
            log.warning(
                "%s: %d records in the canonical Parquet files, %d handed to the link; "
                "blocking the records handed over",
                entity,
                found,
                files.rows,
            )
        pq.write_table(records.select(columns), folder / "records.parquet")
        rows = self.spark.read.parquet(str(folder / "records.parquet"))
        return rows.repartition(parts).localCheckpoint(eager=False), "driver"

    def cluster(
        self,
        records: pd.DataFrame,
        edges: pd.DataFrame,
        decided: pd.DataFrame,
        entity: str,
        auto_link: float,
    ) -> RecordClusters:
        """:func:`master_data.cluster.cluster_records`, per hash bucket of components."""
        self._at(f"{entity}: components")
        with self._guarded():
            return _cluster(self, records, edges, decided, entity, auto_link)

    def golden(
        self,
        members: pd.DataFrame,
        entity: str,
        city: CityConfig,
        match: EntityMatch,
        base_golden: pa.Table | None,
        run_id: str,
    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """:func:`master_data.golden.golden_records` per hash bucket of master IDs."""
        self._at(f"{entity}: golden records")
        with self._guarded():
            return _golden(self, members, entity, city, match, base_golden, run_id)


@dataclass
class _Scoring:
    """What scoring one entity works with, whichever way it is scored."""

    entity: str
    match: EntityMatch
    settings: MatchSettings
    model: FellegiSunter | None
    frequencies: Frequencies
    compared: pd.DataFrame
    folder: Path

    @property
    def wanted(self) -> Frequencies:
        """The term frequencies each pair's u_v is worked out for: every one when the model
        is fitted tonight, else those of its features."""
        return {
            f: v for f, v in self.frequencies.items() if self.model is None or f in self.model.m
        }

    def scored(
        self,
        block: pa.Table,
        read: str,
        passes: list[dict[str, Any]],
        pairs: int,
        model: FellegiSunter,
        trained: bool,
        kept: pd.DataFrame,
    ) -> Scored:
        """The entity's :class:`master_data.engine.Scored`."""
        report = {
            "engine": "spark",
            "read": read,
            "records": len(self.compared),
            "pairs": pairs,
            "passes": passes,
        }
        return Scored(self.compared, block, report, pairs, model, trained, kept)


# --- comparing and scoring -----------------------------------------------------------------------


def _levels(
    pairs: DataFrame, records: DataFrame, entity: str, frequencies: Frequencies
) -> DataFrame:
    """Each pair's comparison levels, the u_v of each term-frequency-adjusted feature
    (:func:`master_data.tf.pair_u`) and the rule that links it, if any."""
    columns = _kernel_columns(entity, frequencies)
    joined = join_sides(pairs, records, columns)
    labels = [f.label for f in features_for(entity)]
    ddl = ", ".join(
        [
            "left STRING",
            "right STRING",
            *[f"`{x}` TINYINT" for x in labels],
            *[f"`{u_column(f)}` DOUBLE" for f in sorted(frequencies)],
        ]
    )
    kernel = functools.partial(_compare, entity, columns, frequencies)
    return joined.mapInArrow(kernel, f"{ddl}, rule STRING")


def _kernel_columns(entity: str, frequencies: Frequencies, *also: str) -> list[str]:
    """The record ID, then the columns the comparison kernel reads of each record (compared,
    the rules', the term frequencies') and ``also``, sorted."""
    tf_columns = {c for f in frequencies for c in TF_COLUMNS[entity][f]}
    wanted = {*compared_columns(entity), *RULE_COLUMNS[entity], *tf_columns, *also}
    return [RECORD, *sorted(wanted)]


def _compare(
    entity: str, columns: list[str], frequencies: Frequencies, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """In a Spark worker: each batch of pairs compared, its term frequencies and its rules,
    by the local code."""
    tops = top_levels(entity)
    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        frame, left, right = batch_records(table, columns)
        levels, out = batch_levels(table, frame, left, right, entity)
        at = frame.index.get_indexer
        tf_u = pair_u(frame, at(left), at(right), levels, tops, frequencies, entity)
        for feature, u in tf_u.items():
            out[u_column(feature)] = pa.array(u, pa.float64())
        out["rule"] = pa.array(rule_links(frame, left, right, entity).tolist(), pa.string())
        yield from pa.table(out).to_batches()


def _counts(levels: DataFrame, labels: list[str]) -> pd.DataFrame:
    """How many pairs show each comparison pattern: a GROUP BY, collected on the driver."""
    counted = levels.groupBy(*labels).count().toArrow().to_pandas()
    return counted.astype({"count": np.int64})


def _kept(
    levels: DataFrame,
    labels: list[str],
    model: FellegiSunter,
    keep: float,
    entity: str,
    records: pd.DataFrame,
    folder: Path,
) -> pd.DataFrame:
    """The pairs worth keeping, scored, as :func:`master_data.pairs.edges` gives them
    (``records``: every record, by record ID), through files under ``folder``."""
    extra = [u_column(f) for f in sorted(model.tf)]
    kernel = functools.partial(_probability, model.to_json(), labels, extra, keep)
    ddl = ", ".join(
        [
            "left STRING",
            "right STRING",
            *[f"`{x}` TINYINT" for x in labels],
            *[f"`{x}` DOUBLE" for x in extra],
        ]
    )
    table = _collected(
        levels.mapInArrow(kernel, f"{ddl}, probability DOUBLE, rule STRING"), folder, "kept"
    )
    table = table.take(pc.sort_indices(table, [("left", "ascending"), ("right", "ascending")]))
    frame = _edge_frame(
        table,
        labels,
        extra,
        *(table[side].to_numpy(zero_copy_only=False) for side in ("left", "right")),
    )
    at = records.index.get_indexer
    filed = filed_under_another(records, at(frame["left"]), at(frame["right"]), entity)
    frame["corroborated"] = (
        corroborated(frame[labels], entity, filed) if len(frame) else np.ones(0, bool)
    )
    return frame


def _edge_frame(
    table: pa.Table, labels: list[str], extra: list[str], left: np.ndarray, right: np.ndarray
) -> pd.DataFrame:
    """Scored pairs (``table``, in their order, ``left`` and ``right`` their record IDs) as
    :func:`master_data.pairs.edges` gives them, but for ``corroborated``."""
    frame = pd.DataFrame({"left": left, "right": right})
    for label in labels:
        frame[label] = table[label].to_numpy().astype(np.int8)
    for column in extra:
        frame[column] = table[column].to_numpy(zero_copy_only=False).astype(np.float64)
    frame["probability"] = table["probability"].to_numpy().astype(np.float64)
    frame["rule"] = pd.Series(table["rule"].to_numpy(zero_copy_only=False), dtype=object)
    return frame


def _probability(
    model_json: str,
    labels: list[str],
    extra: list[str],
    keep: float,
    batches: Iterator[pa.RecordBatch],
) -> Iterator[pa.RecordBatch]:
    """In a Spark worker: each batch's match probabilities; only the pairs worth keeping."""
    model = FellegiSunter.from_json(model_json)
    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        levels = table.select(labels).to_pandas()
        tf_u = edge_u(table.select(extra).to_pandas())
        scored = model.probability(levels[model.features], tf_u).to_numpy()
        probability = pa.array(scored, pa.float64())
        wanted = pc.or_(pc.is_valid(table["rule"]), pc.greater_equal(probability, keep))
        table = table.append_column("probability", probability).filter(wanted)
        columns = ["left", "right", *labels, *extra, "probability", "rule"]
        yield from table.select(columns).to_batches()


def _key_table(keys: DataFrame, passes: list[str], folder: Path) -> pa.Table:
    """Every record's block keys, in pass order, then by record and key (through files under
    ``folder``)."""
    return _in_pass_order(_collected(keys, folder, "keys"), passes)


def _in_pass_order(table: pa.Table, passes: list[str]) -> pa.Table:
    """Block key rows (:data:`KEY_SCHEMA`) in the order of ``passes``, then by record and key."""
    table = table.select(KEY_SCHEMA.names).cast(KEY_SCHEMA)
    order = pc.index_in(table["pass"], value_set=pa.array(passes, pa.string()))
    table = table.append_column("order", order)
    table = table.take(
        pc.sort_indices(
            table, [("order", "ascending"), (RECORD, "ascending"), ("key", "ascending")]
        )
    )
    return table.drop_columns(["order"])


# --- scoring by position ----------------------------------------------------------------------

_SIDES = ((0, "left"), (1, "right"))
_POSITION_KEYS = "`pass` STRING, key STRING, pos BIGINT"
_MAPPED: dict[str, pa.Table] = {}
"""In a Python worker: the records' file of the link running, mapped once (a worker runs many
tasks); the one before is let go when another link's comes."""


def _ready(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """In a Python worker: nothing but being there, this module (the link's kernels) imported
    to unpickle it (:meth:`SparkLink._ready_workers`)."""
    for batch in batches:
        yield batch.rename_columns(["ready"])


def _mapped(path: str) -> pa.Table:
    """In a Python worker: the records' file at ``path``, memory-mapped, its pages shared by
    every worker on the machine."""
    table = _MAPPED.get(path)
    if table is None:
        _MAPPED.clear()
        table = _MAPPED[path] = _read_ipc_file(Path(path))
    return table


def _rebatched(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """``batches`` as tables of at least ``rows`` rows (the last may be fewer), none empty."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        held.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(held)
            held, count = [], 0
    if held:
        yield pa.Table.from_batches(held)


def _position_keys(
    link: SparkLink, path: str, rows: int, match: EntityMatch, folder: Path
) -> tuple[DataFrame, int]:
    """Every record's block keys by its position in the records' file (``pass, key, pos``),
    worked out by the Python workers over slices of it, and how many slices: each slice's keys
    by record ID (:data:`KEY_SCHEMA`) are also written to ``keys-<slice>`` under ``folder``,
    for the driver to read."""
    step = max(1, -(-rows // max(link.tasks, 2)))
    slices = [(i, at, min(rows, at + step)) for i, at in enumerate(range(0, rows, step))]
    spark = link.spark
    given = spark.createDataFrame(
        spark.sparkContext.parallelize(slices, max(1, len(slices))),
        "slice INT, start BIGINT, stop BIGINT",
    )
    kernel = functools.partial(_slice_keys, path, tuple(match.blocking), str(folder))
    return given.mapInArrow(kernel, _POSITION_KEYS), len(slices)


def _slice_keys(
    path: str, passes: tuple[Any, ...], folder: str, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """In a Spark worker: the block keys of each slice of the records' file."""
    records = _mapped(path)
    for batch in batches:
        for i, start, stop in zip(*(c.to_pylist() for c in batch.columns), strict=True):
            frame = records_frame(records.slice(start, stop - start))  # in file order: sorted
            table, at = block_key_rows(frame, passes)
            _write_ipc(table, Path(folder) / f"keys-{i:05d}")
            positions = pa.array(at + start, pa.int64())
            keyed = pa.table({"pass": table["pass"], "key": table["key"], "pos": positions})
            yield from keyed.to_batches()


def _position_levels(
    pairs: DataFrame,
    path: str,
    entity: str,
    frequencies: Frequencies,
    folder: Path | None,
) -> tuple[pd.DataFrame, list[str]]:
    """How many of ``pairs`` (``left, right``: positions in the records' file at ``path``)
    show each comparison pattern, and the files their levels were kept in: one a task,
    ``levels-<partition>`` under ``folder`` (None: counted only, as the random pairs are)."""
    labels = [f.label for f in features_for(entity)]
    ddl = ", ".join(["file STRING", *[f"`{x}` TINYINT" for x in labels], "count BIGINT"])
    out = None if folder is None else str(folder)
    kernel = functools.partial(_compare_positions, entity, path, frequencies, out)
    table = pairs.mapInArrow(kernel, ddl).toArrow()
    files = sorted({f for f in table["file"].to_pylist() if f is not None})
    counted = table.drop_columns(["file"]).to_pandas()
    counts = counted.groupby(labels, as_index=False, sort=True)["count"].sum()
    return counts.astype({"count": np.int64}), files


def _compare_positions(
    entity: str,
    path: str,
    frequencies: Frequencies,
    folder: str | None,
    batches: Iterator[pa.RecordBatch],
) -> Iterator[pa.RecordBatch]:
    """In a Spark worker: a task's pairs compared, each pair's term frequencies, rule and
    whether a row is filed under another's ID number kept in one file (``folder``), and its
    pattern counts (the file named in the first row)."""
    out = None
    task = TaskContext.get()
    if folder is not None:
        assert task is not None  # in a Spark task
        out = Path(folder) / f"levels-{task.partitionId():05d}"
    labels = [f.label for f in features_for(entity)]
    counted = _compared_to_file(entity, _mapped(path), frequencies, batches, out)
    if not counted:
        return
    counts = pd.concat(counted).groupby(level=list(range(len(labels)))).sum()
    frame = counts.rename("count").reset_index()
    names = [str(out) if out is not None else None] + [None] * (len(frame) - 1)
    columns = {"file": pa.array(names, pa.string())}
    for label in labels:
        columns[label] = pa.array(frame[label].to_numpy(), pa.int8())
    columns["count"] = pa.array(frame["count"].to_numpy(), pa.int64())
    yield from pa.table(columns).to_batches()


def _compared_to_file(
    entity: str,
    records: pa.Table,
    frequencies: Frequencies,
    batches: Iterator[pa.RecordBatch],
    out: Path | None,
) -> list[pd.Series]:
    """In a Spark worker: :func:`_compare_positions`'s work; each batch's pattern counts. The
    file is written whole or not at all (a task run again writes it again)."""
    tops = top_levels(entity)
    need = CORROBORATION.get(entity)
    filed_column = [need.filed_under] if need is not None else []
    columns = [
        c for c in _kernel_columns(entity, frequencies, *filed_column) if c in records.column_names
    ]
    counted: list[pd.Series] = []
    part = None if out is None else out.with_name(f".{out.name}.{uuid.uuid4().hex}")
    writer = None
    try:
        for table in _rebatched(batches, PAIR_BATCH):
            left = table["left"].to_numpy()
            right = table["right"].to_numpy()
            used, inverse = np.unique(np.concatenate([left, right]), return_inverse=True)
            frame = records.take(pa.array(used)).select(columns).to_pandas().set_index(RECORD)
            inverse = inverse.astype(np.intp)
            lpos, rpos = inverse[: len(left)], inverse[len(left) :]
            ids = frame.index
            levels = compare(frame, pd.MultiIndex.from_arrays([ids[lpos], ids[rpos]]), entity)
            counted.append(levels.value_counts(sort=False))
            if part is None:
                continue
            kept = {"left": pa.array(left, pa.int64()), "right": pa.array(right, pa.int64())}
            for label in levels.columns:
                kept[label] = pa.array(levels[label].to_numpy(), pa.int8())
            tf_u = pair_u(frame, lpos, rpos, levels, tops, frequencies, entity)
            for feature in sorted(tf_u):
                kept[u_column(feature)] = pa.array(tf_u[feature], pa.float64())
            kept["rule"] = pa.array(rule_links_at(frame, lpos, rpos, entity).tolist(), pa.string())
            filed = filed_under_another(frame, lpos, rpos, entity)
            kept["filed"] = pa.array(filed, pa.bool_())
            written = pa.table(kept)
            if writer is None:
                writer = pa.ipc.new_file(str(part), written.schema)
            writer.write_table(written)
        if writer is not None:
            writer.close()
            writer = None
            assert part is not None and out is not None
            part.replace(out)
    finally:
        if writer is not None:  # failed half way: no half file left behind
            writer.close()
        if part is not None:
            part.unlink(missing_ok=True)
    return counted


def _score_levels(
    model_json: str,
    labels: list[str],
    extra: list[str],
    keep: float,
    entity: str,
    bucket: tuple[pa.Table | None, ...],
) -> tuple[pa.Table, ...]:
    """In a Spark worker: one file of compared pairs scored; those worth keeping, with
    whether each is corroborated (:func:`master_data.deterministic.corroborated`)."""
    (levels,) = bucket
    assert levels is not None  # every file has pairs
    model = FellegiSunter.from_json(model_json)
    frame = levels.select(labels).to_pandas()
    scored = model.probability(frame[model.features], edge_u(levels.select(extra).to_pandas()))
    probability = pa.array(scored.to_numpy(), pa.float64())
    filed = levels["filed"].to_numpy().astype(bool)
    agree = pa.array(corroborated(frame, entity, filed), pa.bool_())
    wanted = pc.or_(pc.is_valid(levels["rule"]), pc.greater_equal(probability, keep))
    table = levels.select(["left", "right", *labels, *extra]).append_column(
        "probability", probability
    )
    table = table.append_column("rule", levels["rule"]).append_column("corroborated", agree)
    return (table.filter(wanted),)


def _kept_by_position(
    table: pa.Table | None, labels: list[str], extra: list[str], ids: np.ndarray
) -> pd.DataFrame:
    """The pairs :func:`_score_levels` kept as :func:`master_data.pairs.edges` gives them
    (``ids``: each position's record ID)."""
    if table is None:  # no pair compared
        fields = [("left", pa.int64()), ("right", pa.int64())]
        fields += [(x, pa.int8()) for x in labels] + [(x, pa.float64()) for x in extra]
        fields += [("probability", pa.float64()), ("rule", pa.string())]
        table = pa.schema([*fields, ("corroborated", pa.bool_())]).empty_table()
    table = table.take(pc.sort_indices(table, [("left", "ascending"), ("right", "ascending")]))
    left, right = (ids[table[side].to_numpy().astype(np.int64)] for side in ("left", "right"))
    frame = _edge_frame(table, labels, extra, left, right)
    frame["corroborated"] = table["corroborated"].to_numpy().astype(bool)
    return frame


# --- clustering ----------------------------------------------------------------------------------

_CLUSTER_ROWS = pa.schema(
    [
        ("kind", pa.string()),
        ("id", pa.string()),
        ("other", pa.string()),
        ("hard", pa.string()),
        ("probability", pa.float64()),
        ("rule", pa.string()),
        ("sure", pa.bool_()),
        ("decision", pa.string()),
        ("pos", pa.int64()),
        ("bucket", pa.string()),
    ]
)
_CLUSTERED = pa.schema(
    [
        ("kind", pa.string()),
        ("id", pa.string()),
        ("label", pa.string()),
        ("pos", pa.int64()),
        ("accepted", pa.bool_()),
        ("counts", pa.string()),
    ]
)


def _cluster(
    link: SparkLink,
    records: pd.DataFrame,
    edges: pd.DataFrame,
    decided: pd.DataFrame,
    entity: str,
    auto_link: float,
) -> RecordClusters:
    """Components of the usable and reviewers' links in Spark SQL; each hash bucket of
    components clustered by the local kernel; singletons stay on the driver."""
    usable = usable_edges(edges, auto_link)
    links = decided[decided["decision"] == "link"]
    ends = pd.DataFrame(
        {
            "left": pd.concat([edges.loc[usable, "left"], links["left_record"]]),
            "right": pd.concat([edges.loc[usable, "right"], links["right_record"]]),
        }
    ).astype(str)
    if not len(ends):
        return cluster_records(records, edges, decided, entity, auto_link)
    with _scratch_folder(link, entity, "clusters") as folder:
        return _clustered(link, folder, records, edges, decided, entity, auto_link, ends)


def _clustered(
    link: SparkLink,
    folder: Path,
    records: pd.DataFrame,
    edges: pd.DataFrame,
    decided: pd.DataFrame,
    entity: str,
    auto_link: float,
    ends: pd.DataFrame,
) -> RecordClusters:
    """:func:`_cluster` of the links ``ends``, its files under ``folder``."""
    comp_of = _linked_components(link, folder, records.index, ends)
    mapped = comp_of.reindex(records.index)
    itself = records.index.to_numpy(dtype=object)
    component = pd.Series(
        np.where(mapped.isna(), itself, mapped.to_numpy(dtype=object)),
        index=records.index,
        dtype=object,
    )
    link._at(f"{entity}: clusters")
    rows = _bucket_rows(records, edges, decided, comp_of, HARD_KEY[entity])
    bucket = _hash_buckets(
        rows["bucket"].to_numpy(zero_copy_only=False), link.buckets_for(len(rows))
    )
    kernel = functools.partial(_cluster_bucket_tables, entity, auto_link)
    sent: list[tuple[pa.Table | None, ...]] = [(part,) for _, part in _split(rows, bucket)]
    (done,) = _each_bucket(link, folder, sent, kernel, 1)
    return _assemble(records, edges, component.rename("component"), done.to_pandas())


def _hash_buckets(values: np.ndarray, buckets: int) -> np.ndarray:
    """Each value's hash bucket (``0 … buckets - 1``), the same in every process."""
    return (pd.util.hash_array(values.astype(object)) % np.uint64(buckets)).astype(np.int64)


def _split(table: pa.Table, bucket: np.ndarray) -> Iterator[tuple[int, pa.Table]]:
    """The rows of ``table`` in each non-empty bucket (``bucket``: each row's), in bucket
    order, each bucket's rows in their order in ``table``."""
    order = np.argsort(bucket, kind="stable")
    sorted_buckets = bucket[order]
    table = table.take(pa.array(order))
    starts = np.flatnonzero(np.r_[True, sorted_buckets[1:] != sorted_buckets[:-1]])
    ends = np.r_[starts[1:], len(order)]
    for start, end in zip(starts, ends, strict=True):
        yield int(sorted_buckets[start]), table.slice(start, end - start)


def _each_bucket(
    link: SparkLink,
    folder: Path,
    buckets: list[tuple[pa.Table | None, ...]],
    kernel: Callable[[tuple[pa.Table | None, ...]], tuple[pa.Table, ...]],
    outputs: int,
) -> list[pa.Table]:
    """``kernel`` of each of ``buckets`` (a tuple of tables each) in Spark, a bucket a task;
    its ``outputs`` tables, each the buckets' concatenated in bucket order.

    The tables travel as Arrow IPC files under ``folder`` (the link's scratch, which the
    executors read as they read the records): each bucket's written there by the driver, its
    outputs by its task, read back memory-mapped. Only their paths go through Spark, so neither
    the driver's JVM heap, nor each task's binary, nor ``spark.driver.maxResultSize`` holds the
    rows. The caller removes ``folder``.

    ``parallelize`` asked for as many slices as there are buckets puts each in a partition of
    its own, and ``mapInArrow`` runs the kernel in the Python workers that compared the pairs,
    whose imports are done. A DataFrame grouped by bucket would gather them by a shuffle, whose
    partitions adaptive execution merges when they are small in bytes: the Python work of
    several buckets then runs in one task while a core waits, as bytes do not measure it."""
    if not buckets:
        return []
    sent: list[tuple[str | None, ...]] = []
    for i, tables in enumerate(buckets):
        paths: list[str | None] = [str(folder / f"out-{i}")]
        for j, table in enumerate(tables):
            paths.append(None if table is None else _write_ipc(table, folder / f"in-{i}-{j}"))
        sent.append(tuple(paths))
    return _run_buckets(link, sent, kernel, outputs)


def _run_buckets(
    link: SparkLink,
    sent: list[tuple[str | None, ...]],
    kernel: Callable[[tuple[pa.Table | None, ...]], tuple[pa.Table, ...]],
    outputs: int,
) -> list[pa.Table]:
    """:func:`_each_bucket` of buckets whose tables are files already: each of ``sent`` is
    where its outputs go (``<it>-<k>``), then where its tables are (None: no table)."""
    if not sent:
        return []
    fields = ", ".join(["out STRING", *(f"in{j} STRING" for j in range(len(sent[0]) - 1))])
    spark = link.spark
    given = spark.createDataFrame(spark.sparkContext.parallelize(sent, len(sent)), fields)
    work = functools.partial(_bucket_files, kernel, outputs)
    done = sorted(given.mapInArrow(work, "out STRING").toArrow()["out"].to_pylist())
    if done != sorted(str(p[0]) for p in sent):  # every bucket's task reports once
        raise RuntimeError(f"{len(done)} of {len(sent)} buckets came back from Spark")
    return [
        pa.concat_tables(
            [_read_ipc_file(Path(f"{p[0]}-{k}")) for p in sent], promote_options="permissive"
        )
        for k in range(outputs)
    ]


def _bucket_files(
    kernel: Callable[[tuple[pa.Table | None, ...]], tuple[pa.Table, ...]],
    outputs: int,
    batches: Iterator[pa.RecordBatch],
) -> Iterator[pa.RecordBatch]:
    """In a Spark worker: ``kernel`` of each bucket (a row: where its outputs go, then where
    its tables are) of each batch; the outputs written as files, their stem sent back."""
    for batch in batches:
        for out, *paths in zip(*(c.to_pylist() for c in batch.columns), strict=True):
            tables = tuple(None if p is None else _read_ipc_file(Path(p)) for p in paths)
            done = kernel(tables)
            assert len(done) == outputs, (len(done), outputs)
            for k, table in enumerate(done):
                _write_ipc(table, Path(f"{out}-{k}"))
            yield pa.RecordBatch.from_arrays([pa.array([out], pa.string())], ["out"])


def _cluster_bucket_tables(
    entity: str, auto_link: float, bucket: tuple[pa.Table | None, ...]
) -> tuple[pa.Table, ...]:
    """In a Spark worker: :func:`_cluster_bucket` of a bucket's rows, as Arrow tables."""
    (rows,) = bucket
    assert rows is not None  # every bucket has rows
    done = _cluster_bucket(entity, auto_link, rows.to_pandas())
    return (pa.Table.from_pandas(done, schema=_CLUSTERED, preserve_index=False),)


def _linked_components(
    link: SparkLink, folder: Path, ids: pd.Index, ends: pd.DataFrame
) -> pd.Series:
    """The component of each record at an end of a link (``ends``: ``left``, ``right``), by
    record ID: its smallest record ID. On the driver up to ``link.driver_edges`` links (``ids``:
    every record, sorted), else in Spark SQL (its files under ``folder``)."""
    if len(ends) > link.driver_edges:
        table = pa.Table.from_pandas(ends, preserve_index=False)
        given = _handed(link.spark, table, folder, "ends", link.tasks)
        comps = _collected(components(given), folder, "components").to_pandas()
        return pd.Series(comps["component"].to_numpy(dtype=object), index=comps["node"])
    a, b = ids.get_indexer(ends["left"]), ids.get_indexer(ends["right"])
    linked = np.unique(np.concatenate([a, b]))
    return record_components(ids, a, b).iloc[linked]


def _bucket_rows(
    records: pd.DataFrame,
    edges: pd.DataFrame,
    decided: pd.DataFrame,
    comp_of: pd.Series,
    hard_key: str,
) -> pa.Table:
    """The records in a component, the edges and decisions starting at one, as rows of one
    table (:data:`_CLUSTER_ROWS`); ``bucket`` holds the component (hashed into buckets).
    Built column by column in Arrow: a pandas frame of objects would cost the driver seconds."""
    component = comp_of.to_numpy(dtype=object)

    def component_of(ids: pd.Series | pd.Index) -> np.ndarray:
        return component[comp_of.index.get_indexer(ids)]

    linked = comp_of.index.intersection(records.index)
    at = edges["left"].isin(comp_of.index).to_numpy()
    seen = decided["left_record"].isin(comp_of.index).to_numpy()
    e, d = edges[at], decided[seen]
    sizes = {"r": len(linked), "e": len(e), "d": len(d)}
    given: dict[str, dict[str, Any]] = {
        "r": {
            "id": linked.astype(str),
            "hard": records[hard_key].reindex(linked),
            "bucket": component_of(linked),
        },
        "e": {
            "id": e["left"],
            "other": e["right"],
            "probability": e["probability"],
            "rule": e["rule"],
            "sure": confirmed(edges).to_numpy()[at],
            "pos": np.flatnonzero(at),
            "bucket": component_of(e["left"]),
        },
        "d": {
            "id": d["left_record"],
            "other": d["right_record"],
            "decision": d["decision"],
            "bucket": component_of(d["left_record"]),
        },
    }
    columns = {}
    for f in _CLUSTER_ROWS:
        parts = []
        for kind, values in given.items():
            if f.name == "kind":
                parts.append(pa.array([kind] * sizes[kind], f.type))
            elif f.name in values:
                parts.append(pa.array(values[f.name], f.type, from_pandas=True))
            else:
                parts.append(pa.nulls(sizes[kind], f.type))
        columns[f.name] = pa.chunked_array(parts, f.type)
    return pa.table(columns, schema=_CLUSTER_ROWS)


def _cluster_bucket(entity: str, auto_link: float, rows: pd.DataFrame) -> pd.DataFrame:
    """In a Spark worker: one bucket's components clustered by the local kernel."""
    kind = rows["kind"]
    rec = rows[kind == "r"].set_index("id").sort_index()
    records = pd.DataFrame({HARD_KEY[entity]: rec["hard"].astype(object)}, index=rec.index)
    records.index.name = RECORD
    e = rows[kind == "e"].reset_index(drop=True)
    edges = pd.DataFrame(
        {
            "left": e["id"].astype(object),
            "right": e["other"].astype(object),
            "probability": e["probability"].astype(np.float64),
            "rule": e["rule"].astype(object).where(e["rule"].notna(), None),
            "corroborated": e["sure"].astype(bool),
        }
    )
    d = rows[kind == "d"]
    decided = pd.DataFrame(
        {
            "left_record": d["id"].astype(object),
            "right_record": d["other"].astype(object),
            "decision": d["decision"].astype(object),
        }
    )
    done = cluster_records(records, edges, decided, entity, auto_link)
    ids = records.index.to_numpy(dtype=object)
    out = [
        pd.DataFrame({"kind": "r", "id": ids, "label": ids[done.labels]}),
        pd.DataFrame({"kind": "e", "pos": e["pos"].astype(np.int64), "accepted": done.accepted}),
        pd.DataFrame({"kind": ["c"], "counts": [json.dumps(done.counts)]}),
    ]
    frame = pd.concat(out, ignore_index=True).reindex(
        columns=["kind", "id", "label", "pos", "accepted", "counts"]
    )
    return frame.astype({"pos": "Int64", "accepted": "boolean"})


def _assemble(
    records: pd.DataFrame, edges: pd.DataFrame, component: pd.Series, done: pd.DataFrame
) -> RecordClusters:
    """The buckets' results as one :class:`master_data.cluster.RecordClusters` over every
    record, singletons included: labels as positions of each cluster's smallest record."""
    labels = np.arange(len(records), dtype=np.int64)
    rec = done[done["kind"] == "r"]
    where = records.index.get_indexer(rec["id"])
    labels[where] = records.index.get_indexer(rec["label"])
    accepted = np.zeros(len(edges), dtype=bool)
    e = done[done["kind"] == "e"]
    accepted[e["pos"].to_numpy(dtype=np.int64)] = e["accepted"].to_numpy(dtype=bool)
    counts: Counter[str] = Counter()
    for text in done.loc[done["kind"] == "c", "counts"]:
        counts.update(json.loads(text))
    keys = ("rule_links", "model_links", "review_links", "refused_hard_key", "refused_kept_apart")
    totals: dict[str, Any] = {k: int(counts.get(k, 0)) for k in keys}
    return RecordClusters(labels, component, accepted, totals)


# --- survivorship --------------------------------------------------------------------------------

_GOLDEN = ("golden", "provenance", "conflicts")


def _golden(
    link: SparkLink,
    members: pd.DataFrame,
    entity: str,
    city: CityConfig,
    match: EntityMatch,
    base_golden: pa.Table | None,
    run_id: str,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Golden records, provenance and conflicts over hash buckets of master IDs, a Spark task
    per bucket. A master's members travel as Arrow IPC (their pandas types intact:
    the survivorship kernel compares them as the local engine does); every bucket's tables
    come back the same way and are joined in Arrow."""
    ids = members["master_id"].astype(str)
    bucket_of = _hash_buckets(ids.to_numpy(dtype=object), link.buckets_for(len(ids)))
    buckets: list[tuple[pa.Table | None, ...]] = []
    for _, part in members.groupby(bucket_of, sort=True):
        base = None
        if base_golden is not None:
            wanted = pa.array(sorted(set(part["master_id"])), pa.string())
            base = base_golden.filter(pc.is_in(base_golden["master_id"], value_set=wanted))
        buckets.append((pa.Table.from_pandas(part, preserve_index=True), base))
    if not buckets:
        return golden_records(members, entity, city, match, base_golden, run_id)
    kernel = functools.partial(_golden_bucket, entity, city, match, run_id)
    with _scratch_folder(link, entity, "golden") as folder:
        done = _each_bucket(link, folder, buckets, kernel, len(_GOLDEN))
        golden, provenance, conflicts = (t.to_pandas() for t in done)
    return golden, provenance, conflicts


def _golden_bucket(
    entity: str,
    city: CityConfig,
    match: EntityMatch,
    run_id: str,
    bucket: tuple[pa.Table | None, ...],
) -> tuple[pa.Table, ...]:
    """In a Spark worker: one bucket's masters (and their base golden rows) through the local
    survivorship kernel, as Arrow tables."""
    members, base = bucket
    assert members is not None  # every bucket has members
    tables = golden_records(members.to_pandas(), entity, city, match, base, run_id)
    return tuple(pa.Table.from_pandas(t, preserve_index=False) for t in tables)


def _collected(frame: DataFrame, folder: Path, name: str) -> pa.Table:
    """``frame``'s rows on the driver: written by the executors as Parquet under ``folder``
    and read from there, not sent through the driver's JVM (whose heap and
    ``spark.driver.maxResultSize`` would bound them)."""
    path = folder / name
    frame.write.parquet(str(path))
    return pq.read_table(path)


def _handed(spark: SparkSession, table: pa.Table, folder: Path, name: str, parts: int) -> DataFrame:
    """``table`` as a Spark DataFrame the executors read from Parquet files under ``folder``,
    ``parts`` files, each a task's: a DataFrame made of the driver's rows would sit in its JVM
    heap and in each task."""
    path = folder / name
    path.mkdir()
    step = max(1, -(-table.num_rows // parts))
    for i, start in enumerate(range(0, max(table.num_rows, 1), step)):
        pq.write_table(table.slice(start, step), path / f"part-{i:05d}.parquet")
    return spark.read.parquet(str(path))


def _write_ipc(table: pa.Table, path: Path) -> str:
    """``table`` as an Arrow IPC file at ``path``, whole or not at all (a task run twice
    writes the same file again); the path, as a string."""
    part = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with pa.OSFile(str(part), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    part.replace(path)
    return str(path)


def _read_ipc_file(path: Path) -> pa.Table:
    """An Arrow IPC file, memory-mapped: its rows are paged in as they are read, not copied."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


@contextlib.contextmanager
def _scratch_folder(link: SparkLink, entity: str, step: str) -> Iterator[Path]:
    """A folder of the link's scratch for one step of one entity, its owner's alone, removed
    when the step ends, whether it succeeded or not."""
    parent = link.scratch / entity
    parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    folder = parent / f"{step}-{uuid.uuid4().hex}"
    folder.mkdir(mode=0o700)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
