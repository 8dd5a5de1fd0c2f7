"""Linking on Spark gives the local engine's results on the sample city: blocking (one
self-join per pass) the same candidate pairs, oversized blocks skipped alike; comparisons and
scoring (mapInArrow over pair batches) the same levels and probabilities."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import pandas as pd
import pyarrow.parquet as pq
import pytest

from etl.config import CityConfig
from master_data.blocking import candidate_pairs
from master_data.compare import compare
from master_data.engine import RecordFiles
from master_data.model import FellegiSunter
from master_data.records import RECORD, canonical_files, records_frame, tonight
from master_data.settings import load_match_settings

if TYPE_CHECKING:
    from sample_cities import CityFactory

pytestmark = [pytest.mark.spark, pytest.mark.slow]
CONFIG = Path(__file__).resolve().parents[1] / "config"
RUN = "2026-07-01"


@pytest.fixture(scope="module")
def city(make_city: CityFactory) -> Any:
    """The standardized city test_standardize.py builds too (one build when both run); read
    only."""
    with pytest.MonkeyPatch.context() as mp:
        yield make_city(
            mp,
            persons=1500,
            enterprises=250,
            seed=21,
            until="standardized",
            run_id=RUN,
            as_of=dt.date(2026, 7, 1),
        )


@pytest.mark.parametrize("entity", ["person", "enterprise"])
def test_spark_blocking_finds_the_local_pairs(
    city: CityConfig, spark: Any, entity: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Read by Spark from the canonical Parquet, only the payload columns: the local pairs, and
    the skipped blocks reported once per pass, as many and as big as the local engine's, from
    one query."""
    from spark.blocking import SKIPPED_SHOWN, block_keys, candidate_pairs_on_spark, pass_reports
    from spark.records import canonical_records, payload_columns

    match = load_match_settings(CONFIG).entity(entity)
    limit = 3  # small blocks: the window count must skip exactly what the local engine skips
    records, _, _ = tonight(city, RUN, entity, frozenset())
    local = candidate_pairs(records_frame(records), match.blocking, max_block=limit)
    assert len(local.pairs) > 0 and local.report.skipped
    files = RecordFiles(tuple(canonical_files(city, RUN, entity, frozenset())), records.num_rows)
    rows = canonical_records(spark, files, entity).select(*payload_columns(entity, match))
    ids = rows.select(RECORD).orderBy(RECORD).toArrow()[RECORD]
    assert ids.to_pylist() == records[RECORD].to_pylist()
    found = candidate_pairs_on_spark(rows, match.blocking, max_block=limit)
    collected = []
    frames = type(rows)  # PySpark's classic DataFrame, not the class it implements
    collect = frames.collect
    with (
        caplog.at_level(logging.WARNING, logger="spark.blocking"),
        mock.patch.object(frames, "collect", lambda df: collected.append(df) or collect(df)),
    ):
        reports = pass_reports(block_keys(rows, match.blocking), match.blocking, max_block=limit)
    assert len(collected) == 1  # one query: each is planned on the driver while cores wait
    for mine, theirs in zip(reports, local.report.passes, strict=True):
        assert mine["blocks"] == theirs.blocks, theirs.name
        assert mine["skipped_blocks"] == len(theirs.skipped), theirs.name
        assert mine["skipped_rows"] == sum(s.size for s in theirs.skipped), theirs.name
        shown = theirs.skipped[: len(mine["skipped"])]
        assert [s["size"] for s in mine["skipped"]] == [s.size for s in shown], theirs.name
        assert {s["key"] for s in mine["skipped"]} <= {s.key for s in theirs.skipped}
        assert len(mine["skipped"]) == min(len(theirs.skipped), SKIPPED_SHOWN)
    said = [r.getMessage() for r in caplog.records if r.name == "spark.blocking"]
    assert len(said) == sum(1 for p in local.report.passes if p.skipped), said
    assert list(found) == list(local.pairs)


def _model(levels: pd.DataFrame) -> FellegiSunter:
    """A model giving every level its own weight (higher levels, more likely a match)."""
    m, u = {}, {}
    for feature in levels.columns:
        n = max(int(levels[feature].max()), 1) + 1
        m[feature] = [(i + 1) / (n * (n + 1) / 2) for i in range(n)]
        u[feature] = m[feature][::-1]
    return FellegiSunter(m=m, u=u, prior=0.01)


@pytest.mark.parametrize("entity", ["person", "enterprise"])
def test_spark_compares_and_scores_pairs_as_the_local_engine(
    city: CityConfig, spark: Any, entity: str, tmp_path: Path
) -> None:
    from spark.blocking import pair_frame
    from spark.compare import score_pairs

    match = load_match_settings(CONFIG).entity(entity)
    records, _, _ = tonight(city, RUN, entity, frozenset())
    frame = records_frame(records)
    pairs = candidate_pairs(frame, match.blocking, max_block=match.max_block).pairs
    levels = compare(frame, pairs, entity)
    model = _model(levels)
    probability = model.probability(levels).to_numpy()

    pq.write_table(records, tmp_path / "records.parquet")
    on_spark = spark.read.parquet(str(tmp_path / "records.parquet"))
    found = pair_frame(on_spark, match.blocking, max_block=match.max_block)
    scored = score_pairs(found, on_spark, entity, model).orderBy("left", "right").toPandas()

    assert list(zip(scored["left"], scored["right"], strict=True)) == list(pairs)
    for feature in levels.columns:
        assert scored[feature].tolist() == levels[feature].tolist(), feature
    assert scored["probability"].to_numpy().tolist() == probability.tolist()


def test_no_blocking_pass_gives_no_pair_of_either_kind(spark: Any) -> None:
    """Without a blocking pass nothing is compared: no pair of record IDs, nor of positions."""
    from spark.blocking import key_pairs, pair_frame

    records = spark.createDataFrame([("a/t/1",), ("a/t/2",)], "record_id STRING")
    by_id = pair_frame(records, [])
    assert by_id.schema.simpleString() == "struct<left:string,right:string>"
    assert by_id.count() == 0
    keys = spark.createDataFrame(
        [("p", "k", 0), ("p", "k", 1)], "`pass` STRING, key STRING, pos BIGINT"
    )
    by_position = key_pairs(keys, [], column="pos")
    assert by_position.schema.simpleString() == "struct<left:bigint,right:bigint>"
    assert by_position.count() == 0
