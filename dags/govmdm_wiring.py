"""The tasks of a govmdm night and the builder that the three DAG files share.

Thin wiring only: every task calls one stage function of :mod:`pipeline.night` (which calls the
stage in ``etl/``, ``master_data/`` or ``quality/``) with the night's context
(:class:`pipeline.context.Night`) and department codes, never data. Nothing here reads a file,
a connection or a Variable at import time.

This module holds no DAG itself (``.airflowignore`` keeps the DAG processor from parsing it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import os
import re
from collections.abc import Iterator
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Literal

from airflow.sdk import (
    DAG,
    Asset,
    Connection,
    Context,
    Metadata,
    Param,
    TriggerRule,
    conf,
    dag,
    get_current_context,
    task,
    task_group,
)
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowNotFoundException,
    AirflowSkipException,
)

Mode = Literal["nightly", "rebuild", "replay"]

PROJECT = Path(__file__).resolve().parents[1]
OWNER = "data-engineering"
SOURCES_POOL = "govmdm_sources"
"""The pool every extraction asks for: how many source databases are read at once, across all
govmdm DAGs. With ``airflow_local_settings.py`` installed, each extraction runs in its own
database's pool ``govmdm_source_<connection>`` instead (see dags/README.md)."""
START = dt.datetime(2026, 6, 1, tzinfo=dt.timezone(dt.timedelta(hours=8)))

MDM_PERSON = Asset(
    name="mdm_person",
    uri="govmdm://warehouse/mdm_person",
    group="govmdm",
    extra={"title": "人口基础库", "key": "master_id"},
)
MDM_ENTERPRISE = Asset(
    name="mdm_enterprise",
    uri="govmdm://warehouse/mdm_enterprise",
    group="govmdm",
    extra={"title": "法人基础库", "key": "master_id"},
)
GOLDEN = {"mdm_person": MDM_PERSON, "mdm_enterprise": MDM_ENTERPRISE}

SPARK_CONN_ID = "spark_default"
"""The Airflow connection of the Spark cluster a night on the Spark engine is submitted to (its
host is the master: ``yarn``, ``k8s://https://…``, ``local[2]``; its extra the deploy mode and
YARN queue). See dags/README.md, *The Spark engine*."""
SPARK_CONF = {
    "spark.io.encryption.enabled": "true",  # shuffle and spill files hold personal data
    "spark.authenticate": "true",  # a shared secret between the driver and its executors …
    "spark.network.crypto.enabled": "true",  # … and the rows they exchange encrypted with it
}
"""Spark settings every govmdm application is submitted with, whatever the cluster's
``spark-defaults.conf`` says (sizing, archives and the Python to run belong there)."""
SPARK_APP_ENV = "GOVMDM_SPARK_APP"
"""Where ``spark-submit`` finds :mod:`pipeline.spark_submit` when the installed file's path is
not right for the cluster (e.g. ``local:///opt/govmdm/…/spark_submit.py`` inside the image)."""

DEPARTMENT = "{{ task.op_kwargs['department'] }}"  # the map name of a department's tasks
_MAPPED = re.compile(r"^department\.(?P<stage>\w+?)_(?P<index>\d+)$")


def _config() -> Path:
    """The configuration folder: ``$GOVMDM_CONFIG``, else the project's ``config/``."""
    from pipeline.context import config_dir

    return config_dir(PROJECT / "config")


def _flagged(exc: Exception) -> Exception:
    """A department's own failure: retried by the scheduler only when that can help."""
    from pipeline.context import DepartmentFlagged

    if isinstance(exc, DepartmentFlagged) and not exc.retryable:
        return AirflowFailException(str(exc))
    return exc


@contextlib.contextmanager
def _source_connection(name: str | None) -> Iterator[None]:
    """Hand the Airflow connection ``name`` — from the secrets backend, the metadata database or
    the environment — to govmdm's resolver, which reads ``AIRFLOW_CONN_<NAME>`` (etl never
    imports Airflow). Without such a connection, ``GOVMDM_CONN_<NAME>`` or the embedded demo
    database is used, as on the command line."""
    var = f"AIRFLOW_CONN_{(name or '').upper()}"
    if name is None or os.environ.get(var, "").strip():
        yield
        return
    try:
        conn = Connection.get(name)
    except AirflowNotFoundException:
        yield
        return
    os.environ[var] = conn.as_json()
    try:
        yield
    finally:
        os.environ.pop(var, None)


def _smtp_settings() -> dict[str, Any] | None:
    """The ``smtp_default`` Airflow connection as :class:`quality.deliver.SmtpSettings` fields,
    so reports go out the way failure mail does; None when ``GOVMDM_SMTP_HOST`` is set (it
    wins) or there is no such connection (then nothing is sent, and the reports say so)."""
    if os.environ.get("GOVMDM_SMTP_HOST", "").strip():
        return None
    try:
        conn = Connection.get("smtp_default")
    except AirflowNotFoundException:
        return None
    extra = conn.extra_dejson
    sender = parseaddr(extra.get("from_email") or conf.get("email", "from_email", fallback=""))[1]
    port = int(conn.port or (465 if not extra.get("disable_ssl", False) else 25))
    return {
        "host": conn.host,
        "sender": sender,
        "port": port,
        "user": conn.login or None,
        "password": conn.password or None,
        "starttls": port != 465 and not extra.get("disable_tls", False),
        "timeout": float(extra.get("timeout", 30)),
    }


# --- notification -------------------------------------------------------------------------------


def notify_data_engineering(context: Context) -> None:
    """E-mail the city's data-engineering contact (``data_engineering_contact`` in
    ``config/city.yaml``) through the ``smtp_default`` Airflow connection.

    As a task's callback it names the task, the department and the error; as the DAG's callback
    it lists the night's flagged departments from the night summary. A plain function rather
    than a ``BaseNotifier``: ``dag.test()`` hands DAG callbacks a serialized DAG that notifiers
    cannot render templates with.
    """
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    from pipeline.record import read_summary

    city, recipient, contact, config_problem = _alert_recipient()
    ti = context.get("ti")
    dag_run = context.get("dag_run")
    dag_id = str(getattr(context.get("dag"), "dag_id", None) or getattr(ti, "dag_id", "?"))
    night = _night_id(context)
    where = ""
    if ti is not None and context.get("reason") is None:  # a task's own callback
        index = ti.map_index if ti.map_index is not None else -1
        label = ti.rendered_map_index or (str(index) if index >= 0 else "")
        where = f"{ti.task_id} [{label}]" if label else ti.task_id
    subject = f"[govmdm] {dag_id} 夜间任务失败 night {night}" + (f": {where}" if where else "")
    what = f"的任务 <b>{html.escape(where)}</b> 失败。" if where else "未能全部完成。"
    lines = [
        f"<p>{html.escape(contact)}，您好：</p>",
        f"<p>govmdm 夜间任务 <b>{html.escape(dag_id)}</b>（night {html.escape(night)}）{what}</p>",
    ]
    if exc := context.get("exception"):
        lines.append(f"<pre>{html.escape(str(exc))[:4000]}</pre>")
    if config_problem:
        lines.append(
            f"<p>配置错误 / configuration error:</p><pre>{html.escape(config_problem)}</pre>"
        )
    if not where and city is not None:
        summary = read_summary(city.var_dir, night) if night != "?" else {}
        for code in summary.get("flagged", []):
            entry = summary["departments"][code]
            lines.append(
                f"<p><b>{html.escape(code)}</b>（{html.escape(entry.get('name', ''))}）"
                f"{html.escape(str(entry.get('failed_stage')))}: "
                f"{html.escape(str(entry.get('message', '')))}</p>"
            )
    if ti is not None and getattr(ti, "log_url", None):
        lines.append(f'<p>日志 / log: <a href="{ti.log_url}">{html.escape(ti.log_url)}</a></p>')
    if dag_run is not None:
        lines.append(f"<p>Airflow run: {html.escape(str(dag_run.run_id))}</p>")
    with SmtpHook() as smtp:
        smtp.send_email_smtp(
            to=[recipient],
            from_email=smtp.from_email or conf.get("email", "from_email", fallback=None),
            subject=subject,
            html_content="\n".join(lines),
        )


def _alert_recipient() -> tuple[Any, str, str, str | None]:
    """(city or None, address, name, configuration problem) for a failure e-mail.

    A callback must send its e-mail even when the configuration is what failed: the contact
    then comes from ``city.yaml`` read as plain YAML, else ``GOVMDM_ALERT_EMAIL``, else the
    sender address of ``[email] from_email``."""
    import yaml

    from pipeline.context import ConfigError, load_city

    try:
        city = load_city(_config())
        contact = city.data_engineering_contact
        return city, str(contact.email), contact.name, None
    except ConfigError as exc:
        problem = str(exc)
    try:
        data = yaml.safe_load((_config() / "city.yaml").read_text(encoding="utf-8"))
        contact = data["data_engineering_contact"]
        return None, str(contact["email"]), str(contact.get("name", "")), problem
    except Exception:  # the city file itself is what is broken: use the fallbacks below
        pass
    fallback = (
        os.environ.get("GOVMDM_ALERT_EMAIL", "").strip()
        or parseaddr(conf.get("email", "from_email", fallback="") or "")[1]
    )
    return None, fallback, "data engineering", problem


def _night_id(context: Context) -> str:
    """The night's run ID, from the plan task's XCom or, failing that, the DAG run."""
    ti = context.get("ti")
    try:
        planned = ti.xcom_pull(task_ids="plan") if ti is not None else None
        if isinstance(planned, dict) and planned.get("run_id"):
            return str(planned["run_id"])
    except Exception:  # a DAG callback may run where XCom is out of reach: fall back
        pass
    params = context.get("params") or {}
    if params.get("run_id"):
        return str(params["run_id"])
    dag_run = context.get("dag_run")
    when = getattr(dag_run, "logical_date", None) or getattr(dag_run, "run_after", None)
    if when is None:
        return "?"
    from pipeline.context import ConfigError, Night

    try:
        return str(Night.at(_config(), when).run_id)
    except ConfigError:
        return when.date().isoformat()


# --- the Spark engine ---------------------------------------------------------------------------


def spark_job(planned: dict[str, Any], stage: str, args: list[str]) -> dict[str, Any]:
    """What a night on the Spark engine submits for ``stage``: the provider's
    :class:`~airflow.providers.apache.spark.hooks.spark_submit.SparkSubmitHook` arguments and the
    application (:mod:`pipeline.spark_submit`), with the city's Spark settings (``spark:`` of
    city.yaml, read by ``plan``) under govmdm's own. Only the run ID, department codes and paths
    go on the command line. Every JVM exits when out of memory (:func:`etl.config.spark_settings`),
    so the stage fails rather than stalls."""
    import pipeline.spark_submit
    from etl.config import spark_settings

    config = _config().resolve()
    env = {"GOVMDM_CONFIG": str(config)}
    if os.environ.get("GOVMDM_VAR", "").strip():
        env["GOVMDM_VAR"] = os.environ["GOVMDM_VAR"]
    return {
        "application": os.environ.get(SPARK_APP_ENV, "").strip() or pipeline.spark_submit.__file__,
        "conn_id": SPARK_CONN_ID,
        "conf": {**spark_settings(planned.get("spark", {})), **SPARK_CONF},
        "name": f"govmdm-{stage}-{planned['run_id']}",
        "application_args": [stage, "--config", str(config), "--run-id", planned["run_id"], *args],
        "env_vars": env,
    }


def _on_spark(planned: dict[str, Any], stage: str, args: list[str]) -> None:
    """Run ``stage`` of the planned night with ``spark-submit`` through the Apache Spark
    provider; the Spark application is killed with the task (timeout, or marked failed)."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    try:
        Connection.get(SPARK_CONN_ID)
    except AirflowNotFoundException as exc:  # the hook would quietly fall back to YARN
        raise AirflowFailException(
            f"engine: spark (config/city.yaml) needs the Airflow connection {SPARK_CONN_ID}, "
            "the Spark cluster to submit to; there is none. Fix: create it, e.g. "
            f"""AIRFLOW_CONN_{SPARK_CONN_ID.upper()}='{{"conn_type": "spark", "host": "yarn"}}' """
            "(dags/README.md, The Spark engine), or set engine: local"
        ) from exc
    job = spark_job(planned, stage, args)
    application = job.pop("application")
    hook = SparkSubmitHook(**job)
    try:
        hook.submit(application)
    except FileNotFoundError as exc:
        raise AirflowFailException(
            f"engine: spark: {exc.filename or 'spark-submit'} is not on this worker's PATH. "
            "Fix: install govmdm[spark] (its pyspark brings spark-submit) or the cluster's "
            "Spark client on every Airflow worker"
        ) from exc
    except Exception:  # spark-submit ran and failed: nothing is left running
        raise
    except BaseException:  # the task was stopped (timeout, marked failed): stop Spark too
        hook.on_kill()
        raise


def _standardize_on_spark(planned: dict[str, Any], department: str) -> dict[str, Any]:
    """The department's standardization on Spark; its outcome from the night's record, or the
    department flagged the way the local engine flags it."""
    from pipeline import night as glue
    from pipeline.spark_submit import noted

    _on_spark(planned, "standardize", ["--department", department])
    out = noted(_night(planned), "standardize", department)
    if out.get("status") != "ok":
        status = str(out.get("status", "failed"))
        message = str(out.get("message", f"{department}: standardize noted no outcome"))
        raise _flagged(glue.DepartmentFlagged(department, "standardize", status, message))
    return out


def _link_on_spark(planned: dict[str, Any], made_it: list[str]) -> dict[str, Any]:
    """Link on Spark; its outcome (the link task's XCom) from the night's record."""
    from pipeline.spark_submit import noted

    held = [c for c in planned["departments"] if c not in made_it]
    args = ["--departments", ",".join(made_it), "--held", ",".join(held)]
    args += ["--full"] * bool(planned["full"]) + ["--retrain"] * bool(planned["retrain"])
    _on_spark(planned, "link", args)
    return {k: v for k, v in noted(_night(planned), "link").items() if k != "spark"}


# --- the tasks of a night ------------------------------------------------------------------------


def _night(planned: dict[str, Any]) -> Any:
    """The planned night's context (:class:`pipeline.context.Night`)."""
    from pipeline.context import Night

    return Night.open(_config(), planned["run_id"])


def _plan(mode: Mode) -> Any:
    """The ``plan`` task of a ``mode`` night."""

    @task
    def plan() -> dict[str, Any]:
        """Work out the night's run ID (the logical date in the city's time zone, or the
        ``run_id`` parameter) and the departments to run, and check them."""
        from pipeline import night as glue
        from pipeline.context import ConfigError, Night

        ctx = get_current_context()
        p, run = ctx["params"], ctx["dag_run"]
        if mode == "replay" and not p.get("run_id"):
            raise AirflowFailException(
                "govmdm_replay needs the run ID of the night to replay: "
                """trigger it with -c '{"run_id": "2026-07-01"}'"""
            )
        full = mode == "rebuild" or bool(p.get("full"))
        try:
            if p.get("run_id"):
                night = Night.open(_config(), p["run_id"])
            else:
                night = Night.at(_config(), run.logical_date or run.run_after)
            out = glue.plan(
                night, departments=p.get("departments") or None, replay=mode == "replay", full=full
            )
        except (ConfigError, ValueError) as exc:  # a retry cannot fix configuration
            raise AirflowFailException(f"the night cannot start:\n{exc}") from exc
        return {
            **out,
            "mode": mode,
            "engine": night.engine,
            "spark": dict(night.city.spark),
            "full": full,
            "retrain": bool(p.get("retrain")),
            "send_reports": bool(p.get("send_reports", True)),
        }

    return plan


@task
def departments(planned: dict[str, Any]) -> list[str]:
    """The department codes to map over."""
    return list(planned["departments"])


@task(
    map_index_template=DEPARTMENT,
    pool=SOURCES_POOL,
    retries=3,
    retry_delay=dt.timedelta(minutes=5),
    retry_exponential_backoff=2.0,
    max_retry_delay=dt.timedelta(minutes=40),
)
def extract(department: str, planned: dict[str, Any]) -> str:
    """Read one department's source database, read-only, into raw Parquet (incremental
    by watermark; in full on a rebuild; not at all on a replay). An unreachable source
    is retried with exponential backoff; schema drift fails at once."""
    from pipeline import night as glue

    replay = planned["mode"] == "replay"
    try:
        with _source_connection(None if replay else planned["connections"][department]):
            out = glue.extract(_night(planned), department, full=planned["full"], replay=replay)
    except glue.DepartmentFlagged as exc:
        raise _flagged(exc) from exc
    return said_extracted(out)


@task(map_index_template=DEPARTMENT)
def standardize(department: str, planned: dict[str, Any]) -> str:
    """Canonical person and enterprise rows, raw kept beside clean; rows that identify
    no one go to rejects with reasons. Fails the department if counts do not reconcile."""
    from pipeline import night as glue

    if planned.get("engine") == "spark":
        out = _standardize_on_spark(planned, department)
        return f"{department} on Spark: {out['read']:,} read, " + (
            f"{out['standardized']:,} standardized, {out['rejected']:,} rejected"
        )
    try:
        out = glue.standardize(_night(planned), department)
    except glue.DepartmentFlagged as exc:
        raise _flagged(exc) from exc
    return f"{department}: {out['read']:,} read, {out['standardized']:,} standardized, " + (
        f"{out['rejected']:,} rejected"
    )


@task(map_index_template=DEPARTMENT)
def validate(department: str, planned: dict[str, Any]) -> dict[str, Any]:
    """The department's blocking quality rules on tonight's batch: a failure holds its
    batch back from the golden tables (this task fails, the night goes on)."""
    from pipeline import night as glue

    try:
        return glue.validate(_night(planned), department)
    except glue.DepartmentFlagged as exc:
        raise _flagged(exc) from exc


@task_group(group_id="department")
def department(code: str, planned: dict[str, Any]) -> Any:
    """One department's night, mapped over the departments: extract → standardize →
    validate."""
    extracted = extract(department=code, planned=planned)
    standardized = standardize(department=code, planned=planned)
    validated = validate(department=code, planned=planned)
    extracted >> standardized >> validated
    return validated


@task(
    trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS,
    execution_timeout=dt.timedelta(hours=2),
)
def link(planned: dict[str, Any], delivered: Any) -> dict[str, Any]:
    """Link the canonical rows of every department that made it through tonight into
    master entities: candidates, Fellegi–Sunter scores, rules, clusters, stable master
    IDs, golden records. Runs whatever the other departments did; the rest are held
    back (their watermarks stay, the next night reads them again)."""
    from pipeline import night as glue

    made_it = [d["department"] for d in delivered]
    if planned.get("engine") == "spark":
        return _link_on_spark(planned, made_it)
    return glue.link(
        _night(planned),
        departments=made_it,
        held=[c for c in planned["departments"] if c not in made_it],
        full=planned["full"],
        retrain=planned["retrain"],
    )


@task
def publish(planned: dict[str, Any], linked: dict[str, Any]) -> dict[str, Any]:
    """Replace the golden tables in one transaction and move the watermarks (not those
    of departments held back tonight)."""
    from pipeline import night as glue

    return glue.publish(_night(planned))


@task(outlets=[MDM_PERSON, MDM_ENTERPRISE], execution_timeout=dt.timedelta(hours=1))
def validate_golden(
    planned: dict[str, Any], linked: dict[str, Any], published: dict[str, Any]
) -> Any:
    """Judge every quality rule on the published night — each department's batch,
    ledger and consistency-with-the-authority rules, and the golden-table rules — store
    results and scorecards, then emit the ``mdm_person`` / ``mdm_enterprise`` Asset
    events with the night's counts and quality scores, for downstream DAGs."""
    from pipeline import night as glue

    scored = glue.quality(_night(planned))
    scores = {c: q["score"] for c, q in scored["departments"].items()}
    for table, asset in GOLDEN.items():
        yield Metadata(
            asset,
            {
                "run_id": planned["run_id"],
                "mode": published["mode"],
                "rows": published[table],
                "departments": linked["departments"],
                "held_back": linked["held_back"],
                "quality_score": scored["score"],
                "department_scores": scores,
            },
        )
    return {"score": scored["score"], "departments": scores}


@task
def build_reports(planned: dict[str, Any], scored: dict[str, Any]) -> str:
    """Each department's data-quality report (Chinese HTML + JSON twin), the
    overview and the night's linkage summary, under ``var/reports/run=<id>/``;
    personal data masked."""
    from pipeline import night as glue

    out = glue.build_reports(_night(planned))
    return f"{len(out['reports'])} reports in {out['directory']}"


@task(retries=2, retry_delay=dt.timedelta(minutes=10))
def send_reports(planned: dict[str, Any], reports: str) -> str:
    """E-mail each department its report and the overview to the data-engineering
    contact through the ``smtp_default`` connection (or ``GOVMDM_SMTP_*``). A retry
    sends only what has not gone out yet."""
    from pipeline import night as glue

    if not planned["send_reports"]:
        raise AirflowSkipException("send_reports is off for this run")
    out = glue.send_reports(_night(planned), smtp=_smtp_settings())
    sent = sum(d["status"] == "sent" for d in out["deliveries"])
    return f"{sent} of {len(out['deliveries'])} reports e-mailed: {out['note']}"


@task(trigger_rule=TriggerRule.ALL_DONE, on_failure_callback=None, retries=0)
def summary(planned: dict[str, Any]) -> dict[str, Any]:
    """Write the night's summary (per department, golden tables) to
    ``var/nights/run=<id>/night.json``; fail the DAG run if a department was flagged or
    a stage failed, after everything else is done."""
    from pipeline import night as glue

    ti = get_current_context()["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]).get(ti.run_id, {})
    per_department, failed_stages = _task_states(states, planned["departments"], ti.task_id)
    result = glue.summarize(
        _night(planned), task_states=per_department, extra={"mode": planned["mode"]}
    )
    problems = [
        f"{c}: {result['departments'][c]['message']}" for c in result["flagged"]
    ] + failed_stages
    if problems:
        raise AirflowFailException(
            f"night {planned['run_id']} finished with problems:\n" + "\n".join(problems)
        )
    return {k: result[k] for k in ("run_id", "flagged", "golden")}


def said_extracted(out: dict[str, Any]) -> str:
    """An extraction's outcome as one line, for the task's return value in Airflow's UI.

    >>> said_extracted({"department": "gongan", "status": "ok", "rows": 12,
    ...                 "tables": {"t": {"mode": "incremental", "rows": 12}}})
    'gongan: 12 rows read (incremental)'
    """
    tables = out.get("tables", {}).values()
    rows = sum(t.get("rows") or 0 for t in tables)
    modes = "/".join(sorted({str(t.get("mode", "?")) for t in tables})) or "no tables"
    verb = "reused from the night's raw data" if out["status"] == "reused" else "read"
    return f"{out['department']}: {rows:,} rows {verb} ({modes})"


def _task_states(
    states: dict[str, str], codes: list[str], own: str
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The scheduler's task states of the night: per department (code → stage → state) from
    the mapped tasks, and the other tasks that failed."""
    per_department: dict[str, dict[str, str]] = {}
    failed_stages = []
    for key, state in states.items():
        if m := _MAPPED.match(key):
            per_department.setdefault(codes[int(m["index"])], {})[m["stage"]] = state
        elif key != own and state in ("failed", "upstream_failed"):
            failed_stages.append(f"{key} {state}")
    return per_department, failed_stages


# --- the night ----------------------------------------------------------------------------------


def night_dag(
    *,
    dag_id: str,
    doc_md: str | None,
    mode: Mode,
    schedule: Any,
    params: dict[str, Param],
    tags: list[str],
    description: str,
) -> DAG:
    """Build one govmdm night: plan → per department (mapped) extract → standardize → validate
    → link → publish → validate_golden (golden-table Assets) → build_reports → send_reports →
    summary.

    ``mode``: ``nightly`` reads what changed since the last published night; ``rebuild`` reads
    every source in full and compares every pair again; ``replay`` recomputes a past night from
    the raw data it extracted, touching no source.
    """

    @dag(
        dag_id=dag_id,
        description=description,
        doc_md=doc_md,
        schedule=schedule,
        start_date=START,
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=dt.timedelta(hours=5),
        default_args={
            "owner": OWNER,
            "retries": 1,
            "retry_delay": dt.timedelta(minutes=2),
            "execution_timeout": dt.timedelta(hours=1),
            "on_failure_callback": notify_data_engineering,
        },
        on_failure_callback=notify_data_engineering,
        params=params,
        tags=tags,
    )
    def night() -> None:
        _wire_night(mode)

    return night()


def _wire_night(mode: Mode) -> None:
    """The night's tasks and their order, inside the DAG being built."""
    planned = _plan(mode)()
    delivered = department.partial(planned=planned).expand(code=departments(planned))
    linked = link(planned, delivered)
    published = publish(planned, linked)
    scored = validate_golden(planned, linked, published)
    sent = send_reports(planned, build_reports(planned, scored))
    sent >> summary(planned)


def _params(send_reports: bool = True, **extra: Param) -> dict[str, Param]:
    return {
        "departments": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Departments",
            description="Only these department codes (e.g. gongan); empty: every department.",
        ),
        **extra,
        "send_reports": Param(
            send_reports,
            type="boolean",
            title="E-mail the reports",
            description="Send each department its quality report, and the overview.",
        ),
    }


def nightly_params() -> dict[str, Param]:
    """Parameters of the nightly DAG (for manual runs): ``run_id`` runs a given night on any
    logical date (``govmdm demo`` runs the sample city's night on the current date)."""
    return _params(
        run_id=Param(
            "",
            type="string",
            pattern=r"^([A-Za-z0-9][A-Za-z0-9_.:+-]*)?$",
            title="Run ID",
            description="The night's run ID; empty: the logical date in the city's time zone.",
        )
    )


def rebuild_params() -> dict[str, Param]:
    """Parameters of the full rebuild."""
    return _params(
        run_id=Param(
            "",
            type="string",
            title="Run ID",
            description="The night's run ID; empty: the logical date in the city's time zone.",
        ),
        retrain=Param(
            False,
            type="boolean",
            title="Retrain the match model",
            description="Fit the Fellegi–Sunter model afresh (after changing matching.yaml).",
        ),
    )


def replay_params() -> dict[str, Param]:
    """Parameters of the replay DAG: the reports of a replayed night are not re-sent unless
    asked (the departments had them the first time)."""
    return _params(
        send_reports=False,
        # Required, but with an empty default: under dag.test() Airflow validates the params
        # of a failed run's DAG callback without the run's conf, and a param with no default
        # crashes it there. `plan` refuses an empty run ID instead.
        run_id=Param(
            "",
            type="string",
            pattern=r"^([A-Za-z0-9][A-Za-z0-9_.:+-]*)?$",
            title="Run ID",
            description="The past night to recompute, e.g. 2026-07-01 (required).",
        ),
        full=Param(False, type="boolean", title="Compare every pair again"),
        retrain=Param(False, type="boolean", title="Retrain the match model"),
    )
