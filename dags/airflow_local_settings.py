"""Cluster policy for govmdm: each department's extraction runs in its source database's pool.

Airflow gives every instance of a mapped task the same pool (apache/airflow#33657), so the
nightly DAG's ``department.extract`` asks for ``govmdm_sources`` (how many source databases are
read at once). Installed as ``$AIRFLOW_HOME/config/airflow_local_settings.py``, this policy moves
each mapped instance into ``govmdm_source_<connection>`` — the pool of the database it reads,
shared by the departments on one connection and by every govmdm DAG — when that pool exists.
The pool names come from the night's ``plan`` task (its ``pools`` list runs parallel to the
departments the extraction is mapped over). Create the pools with ``airflow pools import``
(``govmdm demo`` writes ``var/airflow/pools.json``; see dags/README.md).

Not a DAG file (``.airflowignore``): the scheduler and ``airflow dags test`` import it at start.
"""

from __future__ import annotations

from typing import Any

GOVMDM_DAGS = ("govmdm_nightly", "govmdm_full_rebuild", "govmdm_replay")
EXTRACT = "department.extract"
PLAN = "plan"


def task_instance_mutation_hook(task_instance: Any, dag_run: Any = None) -> None:
    """Route a govmdm extraction to its source database's pool; leave every other task alone."""
    if (
        task_instance.dag_id not in GOVMDM_DAGS
        or task_instance.task_id != EXTRACT
        or task_instance.map_index is None
        or task_instance.map_index < 0
    ):
        return
    pool = _source_pool(task_instance.dag_id, task_instance.run_id, task_instance.map_index)
    if pool is not None:
        task_instance.pool = pool


def _source_pool(dag_id: str, run_id: str, map_index: int) -> str | None:
    """The pool the night's plan names for the ``map_index``-th department, if it exists."""
    from airflow import settings
    from airflow.models.pool import Pool
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    if settings.Session is None:
        return None
    # The caller's own (thread-scoped) session: the scheduler is mid-transaction expanding the
    # mapped task, so read through it and never commit or close it here.
    session = settings.Session()
    with session.no_autoflush:
        row = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == PLAN,
                XComModel.map_index == -1,
                XComModel.key == "return_value",
            )
        ).first()
        if row is None:
            return None
        planned = XComModel.deserialize_value(row)
        pools = planned.get("pools") if isinstance(planned, dict) else None
        if not isinstance(pools, list) or map_index >= len(pools):
            return None
        name = str(pools[map_index])
        exists = session.scalar(select(Pool.id).where(Pool.pool == name))
    return name if exists is not None else None
