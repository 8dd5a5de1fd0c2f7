"""The sample city standardized by both engines gives the same canonical tables, table by
table: Spark runs the local engine's kernel (``mapInArrow``), so nothing can drift."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl.config import CityConfig
from etl.standardize import standardize_all
from master_data.engine import RecordFiles
from master_data.records import RECORD, canonical_files, tonight
from pipeline import night as nightly
from pipeline.context import Night
from quality.tonight import batch_frame
from store.layout import STANDARDIZED, canonical_dir

if TYPE_CHECKING:
    from sample_cities import CityFactory

pytestmark = [pytest.mark.spark, pytest.mark.slow]
CONFIG = Path(__file__).resolve().parents[1] / "config"
RUN = "2026-06-30"  # the sample city's first night: standardize judges dates by it


@pytest.fixture(scope="module")
def extracted(make_city: CityFactory) -> Iterator[CityConfig]:
    """The sample city, extracted; a copy (both engines write its canonical folder)."""
    with pytest.MonkeyPatch.context() as mp:
        yield make_city(mp, persons=800, enterprises=150, seed=5, until="extracted", copy=True)


def _outputs(city: CityConfig) -> dict[str, dict[str, Any]]:
    """Each department's canonical files (as tables, metadata included) and its marker, and
    what the later stages read of them: the night's records of each entity as linking reads
    them, and each source table's rows as the quality checks read them."""
    out: dict[str, dict[str, Any]] = {}
    for dept in city.departments:
        folder = canonical_dir(city.var_dir, RUN, dept.code)
        out[dept.code] = {p.name: pq.read_table(p) for p in sorted(folder.glob("*.parquet"))} | {
            STANDARDIZED: json.loads((folder / STANDARDIZED).read_text(encoding="utf-8"))
        }
        for table in dept.tables:
            frame = batch_frame(city, RUN, dept, table)
            assert frame is not None and len(frame), (dept.code, table.name)
            out[dept.code][f"quality:{table.name}"] = pa.Table.from_pandas(frame)
    for entity in ("person", "enterprise"):
        rows, gone, unkeyed = tonight(city, RUN, entity, frozenset())
        out[f"records:{entity}"] = {"rows": rows, "gone": gone, "unkeyed": unkeyed}
    return out


def test_spark_standardizes_the_sample_city_exactly_as_the_local_engine(
    extracted: CityConfig, spark: Any
) -> None:
    from spark.records import canonical_records

    city = extracted
    local = {r.department: r for r in standardize_all(city, RUN)}
    assert all(r.status == "ok" and r.reconciled for r in local.values()), local
    expected = _outputs(city)
    for folder in (canonical_dir(city.var_dir, RUN, d.code) for d in city.departments):
        for path in folder.iterdir():
            path.unlink()  # nothing of the local engine's output can stand in for Spark's

    night = Night.of(city, CONFIG, RUN, "spark")
    counted: dict[str, Any] = {}
    for dept in city.departments:
        nightly.standardize(night, dept.code, on_result=lambda r: counted.update({r.department: r}))
    got = _outputs(city)

    assert got.keys() == expected.keys()
    for entity in ("person", "enterprise"):
        mine, theirs = got.pop(f"records:{entity}"), expected.pop(f"records:{entity}")
        assert mine["rows"].num_rows and mine["rows"].equals(theirs["rows"]), entity
        assert (mine["gone"], mine["unkeyed"]) == (theirs["gone"], theirs["unkeyed"]), entity
        files = RecordFiles(tuple(canonical_files(city, RUN, entity, frozenset())), 0)
        assert all(p.is_dir() for p in files.paths), files  # the executors' folders of parts
        read = canonical_records(spark, files, entity).select(RECORD).toArrow()
        assert sorted(read[RECORD].to_pylist()) == mine["rows"][RECORD].to_pylist(), entity
    for code, files in expected.items():
        assert got[code].keys() == files.keys(), code
        for name, table in files.items():
            if isinstance(table, pa.Table):
                assert got[code][name].num_rows == table.num_rows, (code, name)
                assert got[code][name].equals(table, check_metadata=True), (code, name)
            else:
                assert got[code][name] == table, (code, name)
        mine, theirs = counted[code], local[code]
        assert (mine.rows_read, mine.standardized, mine.rejected) == (
            theirs.rows_read,
            theirs.standardized,
            theirs.rejected,
        ), code
        assert mine.field_reasons == theirs.field_reasons, code
        assert list(mine.reject_reasons.most_common()) == list(
            theirs.reject_reasons.most_common()
        ), code
    assert sum(t.num_rows for f in got.values() for t in f.values() if isinstance(t, pa.Table))


_STANDARDIZE_ONE = """
import json, sys
from master_data.engine import RecordFiles
from master_data.records import RECORD, canonical_files, tonight
from pipeline import night as nightly
from quality.tonight import batch_frame
from pipeline.context import Night
from spark.session import session

night = Night.open(sys.argv[1], sys.argv[2], "spark")
out = nightly.standardize(night, sys.argv[3])
jvm = session(night.var_dir, conf=night.city.spark).sparkContext._jvm
print(json.dumps({**out, "heap": jvm.java.lang.Runtime.getRuntime().maxMemory()}))
"""


@pytest.fixture(scope="module")
def larger(make_city: CityFactory) -> Iterator[CityConfig]:
    """A sample city whose person register's rows are some MiB, extracted."""
    with pytest.MonkeyPatch.context() as mp:
        yield make_city(mp, persons=6000, enterprises=100, seed=5, until="extracted", copy=True)


def test_a_department_larger_than_the_driver_takes_standardizes(
    larger: CityConfig, tmp_path: Path
) -> None:
    """The executors write the department's rows; the driver receives each batch's counts
    only. A Spark of its own, sized by ``spark:`` in city.yaml as a night is, whose driver
    takes at most 1 MiB of task results: a department whose rows are several times that
    standardizes (the driver used to receive every row, and the night flagged it)."""
    city, code = larger, "gongan"
    config = tmp_path / "config"
    shutil.copytree(CONFIG, config)
    with (config / "city.yaml").open("a", encoding="utf-8") as f:
        f.write("spark:\n  spark.driver.memory: 640m\n  spark.driver.maxResultSize: 1m\n")
    env = {**os.environ, "GOVMDM_VAR": str(city.var_dir)}
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    done = subprocess.run(
        [sys.executable, "-c", _STANDARDIZE_ONE, str(config), RUN, code],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["heap"] < 700 * 2**20  # city.yaml's driver memory reached the JVM (default 1g)
    folder = canonical_dir(city.var_dir, RUN, code)
    rows = pq.read_table(folder / "person.parquet")
    rejects = pq.read_table(folder / "rejects.parquet")
    assert (folder / "person.parquet").is_dir() and (folder / STANDARDIZED).is_file()
    assert (out["standardized"], out["rejected"]) == (rows.num_rows, rejects.num_rows)
    assert out["read"] == rows.num_rows + rejects.num_rows
    assert rows.nbytes > 2 * 2**20  # more than twice what the driver would take
