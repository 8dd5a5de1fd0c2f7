"""Airflow's side of a night that is no DAG: the pools the govmdm DAGs use, and a project-local
Airflow that runs a night for ``govmdm demo``."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import zoneinfo
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from etl.config import CityConfig, DepartmentConfig
from pipeline.context import CONFIG_ENV
from pipeline.record import write_json
from store import layout

POOL_PREFIX = "govmdm_source_"
POLICY = "airflow_local_settings.py"
SOURCES_POOL = "govmdm_sources"
"""The pool every extraction holds a slot of (``dags/govmdm_wiring.py`` names it too)."""


def pool_name(dept: DepartmentConfig) -> str:
    """The Airflow pool that limits connections to ``dept``'s source database; departments
    sharing a connection share the pool.

    >>> pool_name(load_city_config("config").department("gongan"))
    'govmdm_source_gongan'
    """
    return f"{POOL_PREFIX}{dept.connection}"


def pools(city: CityConfig, *, per_source: int = 1, shared: int = 4) -> dict[str, dict[str, Any]]:
    """The pools of the govmdm DAGs, in the format of ``airflow pools import``: ``govmdm_sources``
    (how many source databases are read at once) and one pool per source database.

    >>> sorted(pools(load_city_config("config")))[:2]
    ['govmdm_source_gongan', 'govmdm_source_minzheng']
    """
    out: dict[str, dict[str, Any]] = {
        SOURCES_POOL: {
            "slots": shared,
            "description": f"source databases of {city.name} read at once by the govmdm DAGs",
            "include_deferred": False,
        }
    }
    for d in city.departments:
        out.setdefault(
            pool_name(d),
            {
                "slots": per_source,
                "description": f"connections to the source database `{d.connection}` "
                f"({d.name}); one slot per concurrent extraction",
                "include_deferred": False,
            },
        )
    return out


def local_airflow_env(
    city: CityConfig, config: str | Path, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for running the DAGs with a project-local Airflow: ``AIRFLOW_HOME`` under
    ``var/airflow``, a SQLite metadata database, LocalExecutor, parallelism for two cores, the
    project's ``dags/``, the city's time zone for dates given without one. Department
    connections (``AIRFLOW_CONN_*``, ``GOVMDM_CONN_*``) pass through; any other Airflow setting
    of the calling shell does not.
    """
    home = layout.airflow_home(city.var_dir)
    inherited = os.environ if base is None else base
    own = ("AIRFLOW__", "AIRFLOW_HOME", "AIRFLOW_CONFIG")
    env = {k: v for k, v in inherited.items() if not k.startswith(own)}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(city.root / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__DEFAULT_TIMEZONE": city.timezone,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            CONFIG_ENV: str(Path(config).resolve()),
            "GOVMDM_VAR": str(city.var_dir),
        }
    )
    return env


def demo_logical_date(city: CityConfig, now: dt.datetime | None = None) -> str:
    """A demo night's logical date: ``now`` (default: the current time) to the second, in the
    city's time zone.

    >>> demo_logical_date(
    ...     load_city_config("config"), dt.datetime(2026, 12, 4, 18, 30, 5, 123, tzinfo=dt.UTC)
    ... )
    '2026-12-05T02:30:05+08:00'
    """
    zone = zoneinfo.ZoneInfo(city.timezone)
    when = (now or dt.datetime.now(dt.UTC)).astimezone(zone).replace(microsecond=0)
    return when.isoformat()


def run_local_night(
    city: CityConfig,
    config: str | Path,
    run_id: str,
    *,
    dag_id: str = "govmdm_nightly",
    log: Path,
    on_line: Callable[[str], None] | None = None,
    now: dt.datetime | None = None,
) -> tuple[int, list[str]]:
    """Run one night through Airflow with ``airflow dags test`` on the project-local Airflow:
    migrate its metadata database, import the pools, run the DAG. Airflow's output goes to
    ``log``; returns the DAG run's exit code (non-zero when a department was flagged) and the
    commands run.

    The DAG run's logical date is ``now`` (default: the current time, in the city's time zone)
    and night ``run_id`` is passed as its ``run_id`` parameter, so a sample city's night, dated
    months back, shows in Airflow's UI as the run it is: started at its logical date, lasting
    minutes.
    """
    env = local_airflow_env(city, config)
    conf = {"run_id": run_id}
    home = Path(env["AIRFLOW_HOME"])
    (home / "config").mkdir(parents=True, exist_ok=True)
    # the cluster policy that puts each extraction in its source database's pool
    shutil.copyfile(city.root / "dags" / POLICY, home / "config" / POLICY)
    pool_file = home / "pools.json"
    write_json(pool_file, pools(city))
    steps = [
        ["db", "migrate"],
        ["pools", "import", str(pool_file)],
        ["dags", "test", dag_id, demo_logical_date(city, now), "-c", json.dumps(conf)],
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as out:
        for step in steps:
            code = _airflow(step, env, out, on_line)
            if code != 0 and step[0] != "dags":
                raise RuntimeError(f"`airflow {' '.join(step)}` failed (exit {code}); see {log}")
    return code, [f"airflow {shlex.join(s)}" for s in steps]


def _airflow(
    step: list[str], env: dict[str, str], out: Any, on_line: Callable[[str], None] | None
) -> int:
    """Run ``airflow <step>``, its output to ``out`` and each line (the command first, as
    ``$ airflow …``) to ``on_line``; its exit code."""
    command = f"$ airflow {shlex.join(step)}\n"
    out.write(command)
    out.flush()
    if on_line is not None:
        on_line(command)
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow", *step],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        out.write(line)
        if on_line is not None:
            on_line(line)
    return proc.wait()
