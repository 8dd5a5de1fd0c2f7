"""The night on the Spark engine through Airflow: a city whose ``city.yaml`` says
``engine: spark`` has its ``standardize`` and ``link`` tasks submit :mod:`pipeline.spark_submit`
with ``spark-submit`` through the Apache Spark provider (connection ``spark_default``), with the
shuffle and RPC traffic encrypted, and passes only run IDs, codes and paths.

The structure tests need no Spark. The night itself runs through ``dag.test()`` in a child
process (Airflow configures itself once per process) against ``local[2]``, submitted by the
``spark-submit`` the pyspark wheel ships.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml

from store import layout

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "dags"
DEPARTMENTS = ["gongan", "renshe", "shichang", "shuiwu"]
LOCAL_SPARK = {"conn_type": "spark", "host": "local[2]"}
PLANNED = {"run_id": "2026-07-01", "departments": DEPARTMENTS, "full": False, "retrain": False}
# The departments of the night on Spark: one person register and one enterprise register, so the
# mapped standardize tasks and the link of both entities go through spark-submit. Every
# department's standardization on Spark is compared with the local engine's, table by table, in
# test_spark_standardize.py; each further department here would only add a spark-submit (a JVM
# start, some 20 CPU seconds) on the same wiring.
SPARK_NIGHT = ("gongan", "shichang")


@pytest.fixture()
def wiring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The DAG wiring module, imported as the DAG files import it."""
    monkeypatch.syspath_prepend(str(DAGS))
    monkeypatch.setenv("GOVMDM_CONFIG", str(ROOT / "config"))
    monkeypatch.setenv("GOVMDM_VAR", str(tmp_path / "var"))
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps(LOCAL_SPARK))
    import govmdm_wiring

    return govmdm_wiring


def test_standardize_is_submitted_to_spark_default_encrypted(wiring: Any) -> None:
    job = wiring.spark_job(PLANNED, "standardize", ["--department", "gongan"])
    assert job["conn_id"] == "spark_default"
    assert Path(job["application"]) == ROOT / "pipeline" / "spark_submit.py"
    assert job["conf"] == {
        "spark.io.encryption.enabled": "true",
        "spark.authenticate": "true",
        "spark.network.crypto.enabled": "true",
        # a JVM out of memory exits, so that the task fails rather than waits for ever
        "spark.driver.extraJavaOptions": "-XX:+ExitOnOutOfMemoryError",
        "spark.executor.extraJavaOptions": "-XX:+ExitOnOutOfMemoryError",
    }
    config = str((ROOT / "config").resolve())
    assert job["application_args"] == [
        "standardize", "--config", config, "--run-id", "2026-07-01", "--department", "gongan",
    ]  # fmt: skip
    assert job["env_vars"]["GOVMDM_CONFIG"] == config
    assert job["name"] == "govmdm-standardize-2026-07-01"


def test_the_provider_builds_the_spark_submit_command(wiring: Any) -> None:
    """The command line the provider's hook runs (its own builder), for a night's link."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    job = wiring.spark_job(PLANNED, "link", ["--departments", "gongan", "--held", "shichang"])
    application = job.pop("application")
    command = SparkSubmitHook(**job)._build_spark_submit_command(application)
    assert command[:3] == ["spark-submit", "--master", "local[2]"]
    confs = {command[i + 1] for i, part in enumerate(command) if part == "--conf"}
    assert {
        "spark.io.encryption.enabled=true",
        "spark.authenticate=true",
        "spark.network.crypto.enabled=true",
    } <= confs
    assert command[-9:] == [
        application, "link", "--config", str((ROOT / "config").resolve()),
        "--run-id", "2026-07-01", "--departments", "gongan", "--held", "shichang",
    ][-9:]  # fmt: skip


def test_the_citys_spark_settings_are_submitted_under_govmdms_own(wiring: Any) -> None:
    """``spark:`` of city.yaml, in the plan, goes on spark-submit's command line, where
    ``spark.driver.memory`` is read before the driver's JVM starts; it cannot turn encryption
    off (the configuration check refuses that key, and the DAG's own settings win anyway)."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    planned = {
        **PLANNED,
        "spark": {
            "spark.driver.memory": "4g",
            "spark.io.encryption.enabled": "false",
            "spark.executor.extraJavaOptions": "-XX:+UseG1GC",
        },
    }
    job = wiring.spark_job(planned, "standardize", ["--department", "gongan"])
    assert job["conf"]["spark.driver.memory"] == "4g"
    assert job["conf"]["spark.io.encryption.enabled"] == "true"
    application = job.pop("application")
    command = SparkSubmitHook(**job)._build_spark_submit_command(application)
    confs = {command[i + 1] for i, part in enumerate(command) if part == "--conf"}
    assert {
        "spark.driver.memory=4g",
        "spark.io.encryption.enabled=true",
        "spark.driver.extraJavaOptions=-XX:+ExitOnOutOfMemoryError",
        # the city's JVM options kept, after govmdm's
        "spark.executor.extraJavaOptions=-XX:+ExitOnOutOfMemoryError -XX:+UseG1GC",
    } <= confs


def test_no_spark_default_connection_names_it_and_the_fix(
    wiring: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.delenv("AIRFLOW_CONN_SPARK_DEFAULT")
    with pytest.raises(AirflowFailException) as caught:
        wiring._on_spark(PLANNED, "link", ["--departments", "gongan"])
    message = str(caught.value)
    assert "needs the Airflow connection spark_default" in message, message
    assert "AIRFLOW_CONN_SPARK_DEFAULT=" in message and "engine: local" in message, message


def test_a_worker_without_spark_submit_is_told_what_to_install(
    wiring: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("PATH", str(tmp_path))  # no spark-submit here
    with pytest.raises(AirflowFailException, match=r"not on this worker's PATH\. Fix: install"):
        wiring._on_spark(PLANNED, "link", ["--departments", "gongan"])


def test_the_entry_point_refuses_a_standardize_without_department(tmp_path: Path) -> None:
    """Refused before Spark starts: no session, so no Spark scratch folder under var/."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "pipeline" / "spark_submit.py"), "standardize",
         "--config", str(ROOT / "config"), "--run-id", "2026-07-01"],
        capture_output=True, text=True, env={**os.environ, "GOVMDM_VAR": str(tmp_path / "var")},
    )  # fmt: skip
    assert done.returncode == 2
    assert "standardize needs --department" in done.stderr
    assert not layout.spark_dir(tmp_path / "var").exists()


@pytest.mark.spark
@pytest.mark.slow
def test_a_session_under_spark_submit_has_four_shuffle_partitions_per_core(tmp_path: Path) -> None:
    """Submitted with spark-submit's own ``--master`` (as the DAG submits), the session takes
    its cores from the context spark-submit started, not Spark's 200 shuffle partitions, and
    adaptive execution keeps as many; a setting of the city's stays as the city gave it."""
    script = tmp_path / "partitions.py"
    script.write_text(
        "import sys\n"
        "from pathlib import Path\n"
        "from spark.session import session\n"
        "spark = session(Path(sys.argv[1]), conf={'spark.sql.shuffle.partitions': '5'})\n"
        "print('partitions', spark.conf.get('spark.sql.shuffle.partitions'))\n"
        "print('kept', spark.conf.get('spark.sql.adaptive.coalescePartitions.minPartitionNum'))\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GOVMDM_")},
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "PYSPARK_PYTHON": sys.executable,
    }
    done = subprocess.run(
        ["spark-submit", "--master", "local[3]", str(script), str(tmp_path / "var")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {"partitions 5", "kept 12"} <= set(done.stdout.splitlines())


# --- a real night: dag.test() with engine: spark, against local[2] ------------------------------


def _run_night(spec_path: Path) -> None:
    """In the child process: run the nightly DAG once with ``dag.test()``, write the states."""
    spec = json.loads(spec_path.read_text())
    sys.path.insert(0, str(DAGS))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag("govmdm_nightly")
    for t in dag.tasks:
        t.retries = 0  # a failure shows at once, not after a retry
    run = dag.test(
        logical_date=dt.datetime.fromisoformat(spec["logical_date"]),
        run_conf={"run_id": spec["run_id"], "send_reports": False},  # every department
    )
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == run.run_id
            )
        ).all()
        tasks = {f"{ti.task_id}[{ti.rendered_map_index or '-'}]": str(ti.state) for ti in tis}
    Path(spec["out"]).write_text(json.dumps({"state": str(run.state), "tasks": tasks}))


def _keep_departments(config: Path, codes: tuple[str, ...]) -> None:
    """Leave only ``codes`` in the configuration folder ``config``: their department and quality
    files, and the catalog entries and survivorship ranks that name them."""
    for path in (*(config / "departments").glob("*.yaml"), *(config / "quality").glob("*.yaml")):
        if path.stem not in (*codes, "golden"):
            path.unlink()
    matching = yaml.safe_load((config / "matching.yaml").read_text(encoding="utf-8"))
    for entity in ("person", "enterprise"):
        ranked = matching[entity]["survivorship_rank"]
        matching[entity]["survivorship_rank"] = [c for c in ranked if c in codes]
    (config / "matching.yaml").write_text(yaml.safe_dump(matching, allow_unicode=True), "utf-8")
    catalog = yaml.safe_load((config / "catalog.yaml").read_text(encoding="utf-8"))
    catalog["resources"] = {
        name: entry
        for name, entry in catalog["resources"].items()
        if "/" not in name or name.split("/")[0] in codes
    }
    (config / "catalog.yaml").write_text(yaml.safe_dump(catalog, allow_unicode=True), "utf-8")


@pytest.fixture(scope="module")
def spark_night(
    tmp_path_factory: pytest.TempPathFactory, airflow_db: Path
) -> Iterator[dict[str, Any]]:
    from etl.sample_city.generate import generate_city

    root = tmp_path_factory.mktemp("dag_spark")
    var, home, config = root / "var", root / "airflow", root / "config"
    home.mkdir()
    shutil.copy(airflow_db, home / "airflow.db")
    shutil.copytree(ROOT / "config", config)
    city_yaml = config / "city.yaml"
    city_yaml.write_text(city_yaml.read_text(encoding="utf-8") + "engine: spark\n", "utf-8")
    _keep_departments(config, SPARK_NIGHT)
    manifest = generate_city(var / "city", persons=300, enterprises=60, seed=5)
    bin_dir = str(Path(sys.executable).parent)  # the pyspark wheel's spark-submit
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GOVMDM_"))},
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYSPARK_PYTHON": sys.executable,
        "GOVMDM_VAR": str(var),
        "GOVMDM_CONFIG": str(config),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps(LOCAL_SPARK),
    }
    run_id = manifest["as_of"]
    spec = {"logical_date": f"{run_id}T02:00:00+08:00", "run_id": run_id, "out": str(root / "out")}
    (root / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, __file__, str(root / "spec.json")],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    (root / "night.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, f"the night failed; log: {root / 'night.log'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GOVMDM_VAR", str(var))
        from pipeline.context import Night

        night = Night.open(config, run_id)
    yield {**json.loads((root / "out").read_text()), "night": night, "log": root / "night.log"}


@pytest.mark.spark
@pytest.mark.slow
def test_spark_night_runs_standardize_and_link_on_spark(spark_night: dict[str, Any]) -> None:
    from pipeline.spark_submit import noted

    night = spark_night["night"]
    assert night.engine == "spark"
    assert spark_night["state"] == "success", spark_night["log"]
    assert set(spark_night["tasks"].values()) == {"success"} | (
        {"skipped"} if spark_night["tasks"]["send_reports[-]"] == "skipped" else set()
    )
    codes = sorted(d.code for d in night.city.departments)
    assert codes == sorted(SPARK_NIGHT)
    for code in codes:
        assert spark_night["tasks"][f"department.standardize[{code}]"] == "success"
        out = noted(night, "standardize", code)
        files = layout.raw_dir(night.var_dir, night.run_id, code).glob("*.parquet")
        read = [p for p in files if not p.name.endswith(".deleted.parquet")]  # keys, not rows
        raw = sum(pq.ParquetFile(p).metadata.num_rows for p in read)
        assert out["status"] == "ok" and out["read"] == raw > 0
        assert out["read"] == out["standardized"] + out["rejected"]
        spark = out["spark"]
        assert spark["master"] == "local[2]" and spark["application_id"].startswith("local-")
        assert spark["io_encryption"] == spark["network_crypto"] == "true"
    linked = noted(night, "link")
    assert linked["departments"] == codes and linked["held_back"] == []
    assert linked["spark"]["master"] == "local[2]"
    assert linked["spark"]["io_encryption"] == "true"
    engine = sa.create_engine(night.warehouse_url)
    with engine.connect() as conn:
        persons = conn.execute(sa.text("SELECT count(*) FROM mdm_person")).scalar_one()
        enterprises = conn.execute(sa.text("SELECT count(*) FROM mdm_enterprise")).scalar_one()
    engine.dispose()
    assert persons == linked["entities"]["person"]["masters"] > 0
    assert enterprises == linked["entities"]["enterprise"]["masters"] > 0


if __name__ == "__main__":
    _run_night(Path(sys.argv[1]))
