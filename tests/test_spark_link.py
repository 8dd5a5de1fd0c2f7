"""The link stage on Spark gives the local engine's night, table by table: on a sample city
with a published night before it, with reviewers' decisions, a full relink through both engines
writes the same model, edges, components, crosswalk and master IDs, ID events, golden rows,
provenance, conflicts and review queue; scoring by record position and scoring with the pairs
joined to their records in Spark SQL give the same pairs, model and edges."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pytest

from access.review import decide
from etl.config import CityConfig
from etl.extract import extract_all
from etl.sample_city.generate import next_night
from etl.standardize import standardize_all
from master_data.link import link
from master_data.night_state import SORT, read_state
from store.layout import master_dir

if TYPE_CHECKING:
    from sample_cities import CityFactory

pytestmark = [pytest.mark.spark, pytest.mark.slow]
NIGHT1 = "2026-07-01"
NIGHT0 = "2026-06-30"  # the sample city's first night
CONFIG = Path(__file__).resolve().parents[1] / "config"
TABLES = ("edges", "components", "crosswalk", "golden", "provenance", "conflicts", "review")


@pytest.fixture(scope="module")
def city(make_city: CityFactory) -> Any:
    """A small city, night 0 published by the local engine, night 1 extracted and standardized."""
    with pytest.MonkeyPatch.context() as mp:
        city = make_city(
            mp, persons=400, enterprises=60, seed=11, until="published", copy=True, hard_cases=True
        )
        next_night(city.var_dir / "city")
        assert all(r.ok for r in extract_all(city, NIGHT1))
        standardize_all(city, NIGHT1)
        yield city


def _state(city: CityConfig, entity: str) -> dict[str, Any]:
    return _state_of(city, NIGHT1, entity)


def _state_of(city: CityConfig, run: str, entity: str) -> dict[str, Any]:
    folder = master_dir(city.var_dir, run) / entity
    out: dict[str, Any] = {
        name: read_state(folder, name)
        .to_pandas()
        .sort_values(SORT[name], kind="mergesort")
        .reset_index(drop=True)
        for name in TABLES
    }
    out["events"] = read_state(folder, "events").to_pandas()
    out["model"] = (folder / "model.json").read_text()
    out["blockkeys"] = read_state(folder, "blockkeys").to_pandas()
    return out


def _review_decisions(city: CityConfig) -> None:
    """A reviewer keeps apart the two records of one accepted link and links two others."""
    folder = master_dir(city.var_dir, "2026-06-30") / "person"
    edges = read_state(folder, "edges").to_pandas()
    taken = edges[edges["accepted"] & edges["rule"].isna()].iloc[0]
    assert decide(city, taken["left"], taken["right"], "apart", note="不是同一人") == "person"
    review = read_state(folder, "review").to_pandas()
    if len(review):
        first = review.iloc[0]
        decide(city, first["left_record"], first["right_record"], "link")


def test_spark_links_the_night_the_local_engine_links(
    city: CityConfig, spark: Any, tmp_path: Path
) -> None:
    from spark.link import SparkLink

    _review_decisions(city)
    local = link(city, NIGHT1, full=True, retrain=True)
    assert local.mode == "full"
    expected = {e: _state(city, e) for e in ("person", "enterprise")}
    shutil.rmtree(master_dir(city.var_dir, NIGHT1))

    ran: list[str] = []

    class Seen(SparkLink):  # every heavy step of both entities went to Spark
        def score(self, *args: Any) -> Any:
            ran.append("score")
            mine = super().score(*args)
            # the records fit payload_bytes: scored by position; scored with the pairs joined
            # to their records in Spark SQL instead (a larger entity), the same
            theirs = SparkLink.score(replace(self, payload_bytes=0), *args)
            assert mine.pairs == theirs.pairs > 0 and mine.report == theirs.report
            assert mine.model.to_json() == theirs.model.to_json() and mine.keys.equals(theirs.keys)
            pd.testing.assert_frame_equal(mine.edges, theirs.edges)
            pd.testing.assert_frame_equal(mine.compared, theirs.compared)
            return mine

        def _by_position(self, *args: Any) -> Any:
            ran.append("by position")
            return super()._by_position(*args)

        def _joined(self, *args: Any) -> Any:
            ran.append("joined")
            return super()._joined(*args)

        def cluster(self, *args: Any) -> Any:
            ran.append("cluster")
            return super().cluster(*args)

        def golden(self, *args: Any) -> Any:
            ran.append("golden")
            return super().golden(*args)

    engine = Seen(spark, tmp_path / "scratch", buckets=3, bucket_rows=1)  # 3 buckets however small
    on_spark = link(city, NIGHT1, full=True, retrain=True, engine=engine)
    assert ran == ["score", "by position", "joined", "cluster", "golden"] * 2
    for entity, mine in on_spark.entities.items():
        theirs = local.entities[entity]
        assert mine.blocking["engine"] == "spark" and mine.model_trained
        # the delta extraction's canonical rows are not all the records: they come from here
        assert mine.records > mine.changed and mine.blocking["read"] == "driver"
        for count in ("records", "candidate_pairs", "masters", "singletons", "review_queue"):
            assert getattr(mine, count) == getattr(theirs, count), (entity, count)
        assert mine.events == theirs.events and mine.events.get("issued", 0) > 0
        for count in ("rule_links", "model_links", "review_links", "refused_kept_apart"):
            assert getattr(mine, count) == getattr(theirs, count), (entity, count)
    assert (
        on_spark.entities["person"].review_links + on_spark.entities["person"].refused_kept_apart
        >= 1
    )  # the reviewers' decisions were honoured
    for entity in ("person", "enterprise"):
        got = _state(city, entity)
        assert got["model"] == expected[entity]["model"], entity
        for name in (*TABLES, "events"):
            assert len(got[name]) == len(expected[entity][name]), (entity, name)
            pd.testing.assert_frame_equal(got[name], expected[entity][name], obj=f"{entity} {name}")
        keys = ["pass", "key", "record_id"]
        pd.testing.assert_frame_equal(
            got["blockkeys"].sort_values(keys).reset_index(drop=True),
            expected[entity]["blockkeys"].sort_values(keys).reset_index(drop=True),
        )
    # master IDs carried over from night 0 by overlap, the same on both engines
    xw = expected["person"]["crosswalk"]
    assert (xw["first_run_id"] == "2026-06-30").mean() > 0.9


def test_a_spark_night_hands_its_link_to_spark(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``engine: spark`` (city.yaml or ``--engine``): the pipeline's link stage gives
    :func:`master_data.link.link` the Spark engine, on the running session; local gives none."""
    from etl.config import load_city_config
    from pipeline.context import Night
    from pipeline.night import _link_engine
    from spark.link import SparkLink

    monkeypatch.setenv("GOVMDM_VAR", str(tmp_path / "var"))
    config = Path(__file__).resolve().parents[1] / "config"
    city = load_city_config(config)
    assert _link_engine(Night.of(city, config, NIGHT1, "local")) is None
    engine = _link_engine(Night.of(city, config, NIGHT1, "spark"))
    assert isinstance(engine, SparkLink) and engine.spark is spark
    assert engine.scratch == tmp_path / "var" / "spark" / "link"


def test_shuffles_keep_four_partitions_per_core(spark: Any) -> None:
    """Adaptive execution would merge the shuffle partitions, small in bytes, down to one a
    core: a skewed one then keeps a core idle while the other has finished."""
    from pyspark.sql import functions as F

    assert spark.conf.get("spark.sql.shuffle.partitions") == "8"
    counted = spark.range(10_000).groupBy((F.col("id") % 100).alias("k")).count()
    read_by = counted.select(F.spark_partition_id().alias("p")).distinct()
    assert read_by.count() == 8  # a few kB shuffled, still a task for each partition


def test_each_hash_bucket_is_a_task_of_its_own(spark: Any, tmp_path: Path) -> None:
    """Clustering and survivorship run a Spark task per hash bucket, four buckets per core:
    nothing merges buckets into fewer tasks than cores, and a bucket's rows arrive whole, in
    their order."""
    from spark.link import SparkLink, _each_bucket, _hash_buckets, _split

    assert SparkLink(spark, tmp_path).tasks == 4 * spark.sparkContext.defaultParallelism == 8
    assert SparkLink(spark, tmp_path, buckets=3).tasks == 3
    # a small entity gets fewer buckets, each of 1,000 rows at least, and never none
    small = SparkLink(spark, tmp_path)
    assert [small.buckets_for(n) for n in (0, 999, 3_887, 20_000)] == [1, 1, 3, 8]
    table = pa.table({"component": [f"c{i % 7}" for i in range(100)], "n": list(range(100))})
    bucket = _hash_buckets(table["component"].to_numpy(zero_copy_only=False), 4)
    parts = list(_split(table, bucket))
    assert [b for b, _ in parts] == sorted(set(bucket.tolist())) and len(parts) > 1
    seen = []
    for b, part in parts:
        got = part.to_pandas()
        assert got["n"].is_monotonic_increasing  # in their order in the table
        assert set(bucket[got["n"]]) == {b}  # a component's rows in one bucket
        seen += got["n"].tolist()
    assert sorted(seen) == list(range(100))

    def where(bucket: tuple[pa.Table | None, ...]) -> tuple[pa.Table, ...]:
        from pyspark import TaskContext

        rows, base = bucket  # a first night has no base night's rows
        assert rows is not None
        task = pa.table({"task": [TaskContext.get().partitionId()]})
        return task, rows, pa.table({"base": ["none" if base is None else "some"]})

    sent: list[tuple[pa.Table | None, ...]] = [(p, None) for _, p in parts]
    folder = tmp_path / "buckets"
    folder.mkdir()
    tasks, rows, bases = _each_bucket(small, folder, sent, where, 3)
    assert tasks["task"].to_pylist() == list(range(len(sent)))  # a task each, in bucket order
    assert rows.equals(pa.concat_tables(p for p, _ in sent))  # each bucket's rows whole
    assert bases["base"].to_pylist() == ["none"] * len(sent)


def test_python_workers_are_readied_once_a_link_and_a_failure_is_only_logged(
    spark: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The link readies a Python worker per task slot in a job of its own, once, beside the
    driver's own work; if that job fails, the link goes on (its own jobs say what is wrong)."""
    from spark.link import SparkLink

    link = SparkLink(spark, tmp_path)
    link._ready_workers()
    first = link._readying
    link._ready_workers()
    assert first is not None and link._readying is first  # once a link
    first.join(120)
    assert not first.is_alive()

    class Gone:
        class sparkContext:  # stands for the session's attribute
            defaultParallelism = 2

            @staticmethod
            def setJobDescription(_text: str) -> None:
                raise ConnectionError("the JVM is gone")

    broken = SparkLink(Gone(), tmp_path)  # type: ignore[arg-type]
    with caplog.at_level("DEBUG", logger="spark.link"):
        broken._ready_workers()
        assert broken._readying is not None
        broken._readying.join(10)
    assert "readying the Python workers failed" in caplog.text
    assert "the JVM is gone" in caplog.text


_LINK_ON_SPARK = """
import json, sys
from master_data.link import link
from pipeline.context import Night
from pipeline.night import _link_engine

night = Night.open(sys.argv[1], sys.argv[2], "spark")
engine = _link_engine(night)
done = link(night.city, night.run_id, full=True, retrain=True, engine=engine)
conf = engine.spark.sparkContext.getConf()
left = sorted(str(p) for p in engine.scratch.rglob("*") if p.is_file())
print(json.dumps({"result_size": conf.get("spark.driver.maxResultSize"), "left": left}))
"""


@pytest.fixture(scope="module")
def larger(make_city: CityFactory) -> Iterator[CityConfig]:
    """A sample city whose records, pairs and golden rows are some MiB, standardized."""
    with pytest.MonkeyPatch.context() as mp:
        yield make_city(mp, persons=3000, enterprises=100, seed=7, until="standardized", copy=True)


def test_an_entity_larger_than_the_driver_takes_links_on_spark(
    larger: CityConfig, tmp_path: Path
) -> None:
    """The rows of the link's steps travel as files in its scratch folder, never through the
    driver's JVM: a Spark of its own, sized by ``spark:`` in city.yaml as a night is, whose
    driver takes at most 1 MiB of task results, links a city whose block keys, kept pairs and
    golden rows are each larger than that (they used to come back as task results, and the
    buckets went out inside the tasks), and gives the local engine's tables."""
    city = larger
    run = NIGHT0
    link(city, run, full=True, retrain=True)
    expected = {e: _state_of(city, run, e) for e in ("person", "enterprise")}
    shutil.rmtree(master_dir(city.var_dir, run))
    config = tmp_path / "config"
    shutil.copytree(CONFIG, config)
    with (config / "city.yaml").open("a", encoding="utf-8") as f:
        f.write("spark:\n  spark.driver.memory: 640m\n  spark.driver.maxResultSize: 1m\n")
        # a broadcast join's small side goes through the driver by design, bounded by its own
        # threshold (10 MiB, far under the default result size): off here, under 1 MiB
        f.write("  spark.sql.autoBroadcastJoinThreshold: -1\n")
    env = {**os.environ, "GOVMDM_VAR": str(city.var_dir)}
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    done = subprocess.run(
        [sys.executable, "-c", _LINK_ON_SPARK, str(config), run],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out == {"result_size": "1m", "left": []}  # city.yaml's limit; no file left behind
    person = expected["person"]
    for name in ("blockkeys", "edges", "provenance"):  # each more than the driver would take
        assert pa.Table.from_pandas(person[name]).nbytes > 2**20, name
    keys = ["pass", "key", "record_id"]
    for entity in ("person", "enterprise"):
        got = _state_of(city, run, entity)
        assert got["model"] == expected[entity]["model"], entity
        for name in (*TABLES, "events"):
            pd.testing.assert_frame_equal(got[name], expected[entity][name], obj=f"{entity} {name}")
        pd.testing.assert_frame_equal(
            got["blockkeys"].sort_values(keys).reset_index(drop=True),
            expected[entity]["blockkeys"].sort_values(keys).reset_index(drop=True),
        )


def test_a_failed_buckets_files_are_removed(spark: Any, tmp_path: Path) -> None:
    """A bucket's task that fails fails the step, and the step's files go with it: the link's
    scratch holds personal data only while a step runs."""
    from pyspark.errors import PythonException

    from spark.link import SparkLink, _each_bucket, _scratch_folder

    link = SparkLink(spark, tmp_path / "scratch")

    def broken(bucket: tuple[pa.Table | None, ...]) -> tuple[pa.Table, ...]:
        raise ValueError("no such column")

    table = pa.table({"id": ["a", "b"]})
    with (
        pytest.raises(PythonException, match="no such column"),
        _scratch_folder(link, "person", "golden") as folder,
    ):
        assert oct(folder.stat().st_mode & 0o777) == oct(0o700)
        _each_bucket(link, folder, [(table,), (table,)], broken, 1)
    assert list((tmp_path / "scratch").rglob("*")) == [tmp_path / "scratch" / "person"]
