"""The engine seam, without Spark: ``engine`` in city.yaml, ``--engine`` on the CLI, the
night's engine, and standardize's batch runner (the function boundary the Spark engine uses)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from etl.config import ConfigError, TableConfig, load_city_config
from etl.extract import ParquetSink
from etl.standardize import (
    BatchCounts,
    BatchRunner,
    Kernel,
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
