"""Shared fixtures: throwaway PostgreSQL and MariaDB databases per test (without a reachable
server these skip the test, or fail it when CI=true), sample cities built once per session,
one local[2] SparkSession for the whole session (started only if a test asks for it), one
migrated Airflow metadata database for the tests that run Airflow, and Ctrl-C stopping the run
inside a command invoked through typer's ``CliRunner`` too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from dbservers import require_server, temporary_database

if TYPE_CHECKING:
    from sample_cities import CityFactory

# Fixture -> marker, so `-m postgres` / `-m "not mariadb"` select tests by what they need.
_FIXTURE_MARKERS = {
    "pg_server_url": "postgres",
    "pg_database": "postgres",
    "mariadb_server_url": "mariadb",
    "mariadb_database": "mariadb",
    "spark": "spark",
}


@pytest.hookimpl(tryfirst=True)  # markers must exist before -m deselection runs
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests with the database servers their fixtures need."""
    for item in items:
        fixturenames = getattr(item, "fixturenames", ())
        for marker in sorted({m for f, m in _FIXTURE_MARKERS.items() if f in fixturenames}):
            item.add_marker(marker)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``make test`` runs the suite on two pytest-xdist workers, a test file at a time on one
    (``--dist loadfile``: a module's fixtures are built once), and every ``test_spark_*`` file
    on one worker, which then starts one SparkSession (a JVM, 10-20 s) for them all. A
    ``xdist_group`` mark would say so, but xdist's ``loadgroup`` does not see it under pytest
    9.2 (pytest-dev/pytest-xdist#1386)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class OneSparkWorker(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "spark session" if Path(path).name.startswith("test_spark_") else path

    return OneSparkWorker(config, log)


@pytest.fixture(scope="session", autouse=True)
def _ctrl_c_stops_cli_runs() -> Iterator[None]:
    """``CliRunner.invoke`` raises the KeyboardInterrupt of a Ctrl-C that reached the command.
    Typer turns it into exit status 130 (as a shell expects of the real command) and the runner
    returns that as a result: a test saw a failed command, a fixture building a night failed,
    and the run went on with the next test."""
    from typer.testing import CliRunner

    invoke = CliRunner.invoke

    def interruptible(self: CliRunner, *args: Any, **kwargs: Any) -> Any:
        result = invoke(self, *args, **kwargs)
        cause = result.exception
        while cause is not None:
            if isinstance(cause, KeyboardInterrupt):
                raise cause
            cause = cause.__cause__ or cause.__context__
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CliRunner, "invoke", interruptible)
        yield


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """Admin URL of a reachable PostgreSQL server."""
    return require_server("postgres")


@pytest.fixture(scope="session")
def mariadb_server_url() -> str:
    """Admin URL of a reachable MariaDB server."""
    return require_server("mariadb")


@pytest.fixture
def pg_database(pg_server_url: str) -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database, dropped after the test."""
    with temporary_database("postgres") as url:
        yield url


@pytest.fixture
def mariadb_database(mariadb_server_url: str) -> Iterator[str]:
    """URL of a fresh, empty utf8mb4 MariaDB database, dropped after the test."""
    with temporary_database("mariadb") as url:
        yield url


@pytest.fixture(scope="session")
def make_city(tmp_path_factory: pytest.TempPathFactory) -> CityFactory:
    """Sample cities, each built once per session and shared or copied (``sample_cities``)."""
    from sample_cities import CityFactory  # the pipeline's imports, only for tests that use it

    return CityFactory(tmp_path_factory)


@pytest.fixture(scope="session")
def airflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow metadata database (SQLite) fresh from ``airflow db migrate``, made once per
    session (the migration takes some 17 s): a test running Airflow copies it into its own
    ``AIRFLOW_HOME``, so each still starts from an empty database of its own."""
    home = tmp_path_factory.mktemp("airflow-db")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GOVMDM_"))},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parents[1] / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return home / "airflow.db"


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One ``local[2]`` SparkSession for every Spark test (starting one takes 10-20 s), its
    scratch files under a temporary var/. Tests that do not ask for it never import PySpark."""
    from spark.session import session

    spark = session(tmp_path_factory.mktemp("spark-var"), master="local[2]")
    yield spark
    spark.stop()
