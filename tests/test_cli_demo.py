"""`govmdm demo` as it runs: a line per Airflow command and task instead of a silent minute, the
local Airflow in the city's time zone, the night on the current logical date, and task return
values short enough to read in Airflow's UI."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cli import night as cli_night
from cli.night import task_event
from etl.config import load_city_config
from pipeline import airflow_local
from pipeline.airflow_local import demo_logical_date, local_airflow_env

ROOT = Path(__file__).resolve().parents[1]
CODES = ["gongan", "minzheng", "renshe"]


def test_task_events_name_the_command_the_task_and_its_department() -> None:
    assert task_event("$ airflow db migrate\n", CODES) == "airflow db migrate"
    start = "2026-12-05 [info] [DAG TEST] starting task_id=department.extract map_index=2 [x]"
    assert task_event(start, CODES) == "department.extract [renshe] started"
    end = "[DAG TEST] end task task_id=link map_index=-1"
    assert task_event(end, CODES) == "link finished"
    assert task_event("[DAG TEST] running task <TaskInstance ...>", CODES) is None
    assert task_event("INFO - Filling up the DagBag from /dags", CODES) is None


def test_the_demo_prints_each_command_and_task_as_it_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lines = [
        "$ airflow db migrate\n",
        "Database migration done!\n",
        "$ airflow dags test govmdm_nightly 2026-12-05T02:00:00+08:00 -c '{}'\n",
        "[DAG TEST] starting task_id=plan map_index=-1\n",
        "[DAG TEST] end task task_id=plan map_index=-1\n",
        "[DAG TEST] starting task_id=department.extract map_index=0\n",
    ]

    def fake(*args: Any, on_line: Callable[[str], None], **kwargs: Any) -> tuple[int, list[str]]:
        for line in lines:
            on_line(line)
        return 0, []

    monkeypatch.setattr(airflow_local, "run_local_night", fake)
    city = load_city_config(ROOT / "config")
    assert cli_night._run_demo_night(city, ROOT / "config", "2026-06-30", tmp_path / "log") == 0
    printed = [line.split("s  ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert printed == [
        "airflow db migrate",
        "airflow dags test govmdm_nightly 2026-12-05T02:00:00+08:00 -c '{}'",
        "plan started",
        "plan finished",
        "department.extract [gongan] started",
    ]


def test_the_local_airflow_runs_in_the_city_time_zone_on_the_current_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOVMDM_VAR", str(tmp_path / "var"))
    city = load_city_config(ROOT / "config")
    env = local_airflow_env(city, ROOT / "config", base={})
    assert env["AIRFLOW__CORE__DEFAULT_TIMEZONE"] == "Asia/Shanghai"
    noon = dt.datetime(2026, 12, 5, 4, 0, 7, 999, tzinfo=dt.UTC)
    assert demo_logical_date(city, noon) == "2026-12-05T12:00:07+08:00"
    today = dt.datetime.fromisoformat(demo_logical_date(city))
    assert abs(today - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)


def test_the_demo_passes_the_sample_night_as_run_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOVMDM_VAR", str(tmp_path / "var"))
    city = load_city_config(ROOT / "config")
    ran: list[list[str]] = []

    def airflow(step: list[str], *args: Any) -> int:
        ran.append(step)
        return 0

    monkeypatch.setattr(airflow_local, "_airflow", airflow)
    noon = dt.datetime(2026, 12, 5, 4, 0, tzinfo=dt.UTC)
    code, commands = airflow_local.run_local_night(
        city, ROOT / "config", "2026-06-30", log=tmp_path / "log", now=noon
    )
    assert code == 0
    test = ran[-1]
    assert test[:4] == ["dags", "test", "govmdm_nightly", "2026-12-05T12:00:00+08:00"]
    assert json.loads(test[test.index("-c") + 1]) == {"run_id": "2026-06-30"}
    assert commands[-1] == (
        "airflow dags test govmdm_nightly 2026-12-05T12:00:00+08:00 -c "
        """'{"run_id": "2026-06-30"}'"""
    )


@pytest.fixture
def wiring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.syspath_prepend(str(ROOT / "dags"))
    import govmdm_wiring

    return govmdm_wiring


def test_the_nightly_dag_takes_a_run_id_and_returns_short_summaries(wiring: Any) -> None:
    params = wiring.nightly_params()
    assert params["run_id"].value == ""
    assert params["run_id"].schema["pattern"].startswith("^")
    tables = {"t_rk_jbxx": {"mode": "incremental", "rows": 1234, "deleted": 0}}
    extracted = {"department": "gongan", "status": "ok", "rows": 1234, "tables": tables}
    assert wiring.said_extracted(extracted) == "gongan: 1,234 rows read (incremental)"
    reused = {"department": "gongan", "status": "reused", "tables": {"t": {"mode": "replay"}}}
    assert wiring.said_extracted(reused) == (
        "gongan: 0 rows reused from the night's raw data (replay)"
    )
