"""DAG integrity: every DAG in dags/ loads, and follows the house rules (STYLE.md, point 6).

Owner and tags set, retries and failure callbacks on every task, a run timeout, docs from the
module docstring, readable map names on the per-department tasks, trigger rules that let the
night go on without a failed department, the golden-table Assets, and nothing read from
config/ or var/ while the DAG files are parsed.
"""

from __future__ import annotations

import copy
import itertools
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "dags"
DAG_IDS = {"govmdm_nightly", "govmdm_full_rebuild", "govmdm_replay"}
NO_RETRY = {"summary"}  # reports the night after everything else; a retry would change nothing
NO_TASK_CALLBACK = {"summary"}  # its failure is the DAG run's failure: the DAG callback mails it


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Every DAG file parsed the way the DAG processor does, with a throwaway AIRFLOW_HOME, and
    GOVMDM_CONFIG / GOVMDM_VAR pointing nowhere: parsing must not need them."""
    home = tmp_path_factory.mktemp("airflow_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_HOME", str(home))
        mp.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS))
        mp.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        mp.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home / 'airflow.db'}")
        mp.setenv("GOVMDM_CONFIG", str(home / "no-config-here"))
        mp.setenv("GOVMDM_VAR", str(home / "no-var-here"))
        mp.syspath_prepend(str(DAGS))  # as the DAG bundle does
        from airflow.dag_processing.dagbag import DagBag

        yield DagBag(dag_folder=str(DAGS))
    assert not (home / "no-var-here").exists(), "parsing the DAGs wrote under GOVMDM_VAR"


def _dags(dagbag: Any) -> list[Any]:
    return [dagbag.dags[d] for d in sorted(DAG_IDS)]


def test_every_dag_loads_without_import_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == DAG_IDS
    assert {Path(f).name for f in dagbag.file_last_changed} == {f"{d}.py" for d in DAG_IDS}


def test_owner_tags_docs_and_limits(dagbag: Any) -> None:
    for dag in _dags(dagbag):
        assert dag.owner == "data-engineering", dag.dag_id
        assert "govmdm" in dag.tags and len(dag.tags) >= 2, dag.dag_id
        assert dag.doc_md and dag.doc_md.strip().startswith(f"# {dag.dag_id}"), dag.dag_id
        assert dag.dagrun_timeout is not None and dag.dagrun_timeout.total_seconds() <= 6 * 3600
        assert dag.max_active_runs == 1 and dag.catchup is False, dag.dag_id
        assert dag.on_failure_callback, f"{dag.dag_id}: no failure callback"
        for t in dag.tasks:
            assert t.owner == "data-engineering", f"{dag.dag_id}.{t.task_id}"
            assert t.doc_md, f"{dag.dag_id}.{t.task_id} has no docstring"
            assert t.execution_timeout is not None, f"{dag.dag_id}.{t.task_id}"


def test_retries_and_callbacks_on_every_task(dagbag: Any) -> None:
    for dag in _dags(dagbag):
        for t in dag.tasks:
            where = f"{dag.dag_id}.{t.task_id}"
            if t.task_id in NO_RETRY:
                assert t.retries == 0, where
            else:
                assert t.retries >= 1, f"{where} has no retries"
            if t.task_id not in NO_TASK_CALLBACK:
                assert t.on_failure_callback, f"{where} has no failure callback"
        extract = dag.get_task("department.extract")
        assert extract.retries >= 3 and extract.retry_exponential_backoff >= 2
        assert extract.max_retry_delay is not None


def test_nightly_schedule_is_two_in_the_morning_in_shanghai(dagbag: Any) -> None:
    nightly = dagbag.dags["govmdm_nightly"].timetable
    assert (nightly.expression, str(nightly.timezone)) == ("0 2 * * *", "Asia/Shanghai")
    assert dagbag.dags["govmdm_full_rebuild"].schedule is None  # manual only
    assert dagbag.dags["govmdm_replay"].schedule is None


def test_departments_are_mapped_with_readable_names(dagbag: Any) -> None:
    from airflow.sdk.definitions.taskgroup import MappedTaskGroup

    # the pool the demo and `airflow pools import` create
    from pipeline.airflow_local import SOURCES_POOL

    for dag in _dags(dagbag):
        group = dag.task_group_dict["department"]
        assert isinstance(group, MappedTaskGroup)  # one per department, known at run time
        for task_id in ("department.extract", "department.standardize", "department.validate"):
            t = dag.get_task(task_id)
            assert t.task_group is group, f"{dag.dag_id}.{task_id}"
            assert "department" in (t.map_index_template or ""), f"{dag.dag_id}.{task_id}"
        assert dag.get_task("department.extract").pool == SOURCES_POOL


def test_one_department_failing_does_not_stop_the_night(dagbag: Any) -> None:
    for dag in _dags(dagbag):
        link, summary = dag.get_task("link"), dag.get_task("summary")
        assert link.trigger_rule == "all_done_min_one_success"
        assert link.upstream_task_ids == {"department.validate", "plan"}
        assert summary.trigger_rule == "all_done"
        chain = ["link", "publish", "validate_golden", "build_reports", "send_reports", "summary"]
        for before, after in itertools.pairwise(chain):
            assert before in dag.get_task(after).upstream_task_ids, f"{before} >> {after}"
        for task_id in chain[1:-1]:  # the city-wide stages need everything before them
            assert dag.get_task(task_id).trigger_rule == "all_success", task_id


def test_scored_golden_tables_are_assets(dagbag: Any) -> None:
    """The golden tables' Asset events come once the published night is scored, so downstream
    DAGs get the night's counts and quality scores with them."""
    for dag in _dags(dagbag):
        outlets = {a.name for a in dag.get_task("validate_golden").outlets}
        assert outlets == {"mdm_person", "mdm_enterprise"}
        others = [t.task_id for t in dag.tasks if t.outlets and t.task_id != "validate_golden"]
        assert others == [], f"{dag.dag_id}: only validate_golden updates the golden tables"


def test_replay_takes_a_checked_run_id(dagbag: Any) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags["govmdm_replay"].params)
    # empty by default (see replay_params), refused by `plan`, which says how to pass it
    assert params.validate()["run_id"] == ""
    params["run_id"] = "2026-07-01"
    assert params.validate()["departments"] == []
    assert params.validate()["send_reports"] is False  # a replayed night's reports went out
    with pytest.raises(ParamValidationError):
        params["run_id"] = "../etc"


def test_library_packages_never_pull_in_airflow() -> None:
    """tests/test_layout.py forbids ``import airflow`` outside dags/; this also catches a library
    that drags it in indirectly."""
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        for package in ("etl", "master_data", "quality"):
            root = importlib.import_module(package)
            for info in pkgutil.walk_packages(root.__path__, package + "."):
                importlib.import_module(info.name)
        loaded = sorted(m for m in sys.modules if m == "airflow" or m.startswith("airflow."))
        assert not loaded, loaded
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
