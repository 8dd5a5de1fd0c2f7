"""The engine seam, without Spark: ``engine`` in city.yaml, ``--engine`` on the CLI, the
night's engine, and standardize's batch runner (the function boundary the Spark engine uses)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli.main import app
from etl.config import ConfigError, TableConfig, load_city_config
from etl.extract import ParquetSink
from etl.standardize import (
    BatchCounts,
    BatchRunner,
    Kernel,
    ParquetParts,
    local_batches,
    standardize_department,
)
from pipeline.context import Night

CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.fixture(autouse=True)
def _own_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Loading a configuration creates its var/: this test's own, never the project's."""
    monkeypatch.setenv("GOVMDM_VAR", str(tmp_path / "var"))
    monkeypatch.delenv("GOVMDM_CONFIG", raising=False)


def _config_with(tmp_path: Path, line: str) -> Path:
    cfg = tmp_path / "config"
    shutil.copytree(CONFIG, cfg)
    city = cfg / "city.yaml"
    city.write_text(city.read_text(encoding="utf-8") + line + "\n", encoding="utf-8")
    return cfg


def test_engine_is_local_unless_city_yaml_says_spark(tmp_path: Path) -> None:
    assert load_city_config(CONFIG).engine == "local"
    city = load_city_config(_config_with(tmp_path, "engine: spark"))
    assert city.engine == "spark"
    assert Night.of(city, CONFIG, "2026-07-01").engine == "spark"
    assert Night.of(city, CONFIG, "2026-07-01", "local").engine == "local"


def test_an_unknown_engine_names_the_key_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_city_config(_config_with(tmp_path, "engine: dask"))
    message = str(caught.value)
    assert "city.yaml: engine" in message and "'dask' is not allowed" in message, message
    assert "Fix: use one of 'local' or 'spark'" in message, message


def test_night_refuses_an_unknown_engine() -> None:
    city = load_city_config(CONFIG)
    with pytest.raises(ValueError, match="engine 'dask' is not known: use one of local, spark"):
        Night.of(city, CONFIG, "2026-07-01", "dask")  # type: ignore[arg-type]  # on purpose


@pytest.mark.parametrize("command", ["standardize", "link", "consolidate"])
def test_cli_stages_take_engine_and_refuse_an_unknown_one(command: str) -> None:
    done = CliRunner().invoke(app, [command, "--config", str(CONFIG), "--engine", "dask"])
    assert done.exit_code == 2, done.output
    assert "engine 'dask' is not known" in done.output


def test_standardize_runs_its_kernel_through_the_runner_it_is_given() -> None:
    """Another engine supplies only the runner: the kernel, the files, the counts and the
    checks stay the local engine's."""
    from etl.extract import extract_department
    from etl.sample_city.generate import generate_city

    city = load_city_config(CONFIG)
    generate_city(city.var_dir / "city", persons=60, enterprises=10, seed=3)
    dept = city.department("gongan")
    assert extract_department(city, dept, "2026-07-01").ok
    seen: list[int] = []

    def counting(
        table: TableConfig,
        path: Path,
        kernel: Kernel,
        batch_rows: int,
        good: ParquetSink,
        bad: ParquetSink,
    ) -> Iterator[BatchCounts]:
        for batch in local_batches(table, path, kernel, batch_rows, good, bad):
            seen.append(batch.rows)
            yield batch

    result = standardize_department(
        city, dept, "2026-07-01", batch_rows=25, batches=BatchRunner(counting, ParquetSink)
    )
    assert result.status == "ok" and result.reconciled
    assert sum(seen) == result.rows_read and len(seen) >= 3 and max(seen) <= 25


def test_spark_settings_in_city_yaml_are_kept_as_spark_reads_them(tmp_path: Path) -> None:
    assert load_city_config(CONFIG).spark == {}
    settings = "spark:\n  spark.driver.memory: 4g\n  spark.sql.adaptive.enabled: true\n"
    city = load_city_config(_config_with(tmp_path, settings + "  spark.executor.cores: 2"))
    assert city.spark == {
        "spark.driver.memory": "4g",
        "spark.sql.adaptive.enabled": "true",
        "spark.executor.cores": "2",
    }


# --- an output written as a folder of parts (the Spark engine's) --------------------------------

SCHEMA = pa.schema([("n", pa.int64())])


def _parts(path: Path) -> ParquetParts:
    return ParquetParts(path, SCHEMA, 10, {"run_id": "2026-07-01"})


def test_parts_are_read_as_one_table_in_section_and_row_order(tmp_path: Path) -> None:
    path = tmp_path / "person.parquet"
    with _parts(path) as sink:
        first, second = sink.section(), sink.section()
        second.write(0, pa.table({"n": [5, 6]}))  # written first, read after the first section
        first.write(12, pa.table({"n": [3, 4]}))
        first.write(2, pa.table({"n": [1, 2]}))
        sink.write(pa.table({"n": [7]}))
    table = pq.read_table(path)
    assert table["n"].to_pylist() == [1, 2, 3, 4, 5, 6, 7]
    assert json.loads(table.schema.metadata[b"govmdm"]) == {"run_id": "2026-07-01"}
    assert [p.name for p in tmp_path.iterdir()] == ["person.parquet"]  # no temp folder left


def test_parts_replace_the_previous_output_only_on_success(tmp_path: Path) -> None:
    path = tmp_path / "person.parquet"
    pq.write_table(pa.table({"n": [1]}, schema=SCHEMA), path)  # the local engine's file
    with pytest.raises(RuntimeError), _parts(path) as sink:
        sink.write(pa.table({"n": [2]}))
        raise RuntimeError("killed part way")
    assert pq.read_table(path)["n"].to_pylist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["person.parquet"]
    with _parts(path) as sink:
        sink.write(pa.table({"n": [3]}))
    assert path.is_dir() and pq.read_table(path)["n"].to_pylist() == [3]
    with _parts(path):  # no rows: still a table with its schema
        pass
    assert pq.read_table(path).schema.equals(SCHEMA) and pq.read_table(path).num_rows == 0
    with ParquetSink(path, SCHEMA, 10, {}) as sink:  # the same night on the local engine
        sink.write(pa.table({"n": [4]}))
    assert path.is_file() and pq.read_table(path)["n"].to_pylist() == [4]


def test_a_killed_writers_temp_folder_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "rejects.parquet"
    stale = tmp_path / ".rejects.parquet.999999999.tmp"  # no such process
    stale.mkdir()
    (stale / "part-00000-000000000000.parquet").write_bytes(b"half")
    with _parts(path) as sink:
        sink.write(pa.table({"n": [1]}))
    assert not stale.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["rejects.parquet"]
