"""One night, one function per stage: what a ``govmdm`` command runs and what a task of the
nightly DAG runs are the same function, taking the night's :class:`~pipeline.context.Night`.

Each stage runs for one department (extract, standardize, validate) or for the whole city
(link, publish, quality, build_reports, send_reports), notes its outcome in the night's record
(:mod:`pipeline.record`, ``<var>/nights/run=<id>/``) and returns a small JSON-ready summary
(the DAG's XCom). Callers that show more — the command line's tables — pass ``on_result``,
which receives the stage's full result. A department's own problem raises
:class:`DepartmentFlagged`, which says whether trying again later can help (an unreachable
source) or not (schema drift, a count that does not reconcile), so the DAG retries the first
with backoff and fails the second at once while the other departments go on; a command shows
it and goes on with the next department. :func:`summarize` writes the whole night — every
department, the golden tables, where the reports are — to ``night.json``.

>>> p = plan(Night.at("config", dt.datetime(2026, 7, 1, 18, 0, tzinfo=dt.UTC)))
>>> p["run_id"], p["departments"][:2]
('2026-07-02', ['gongan', 'minzheng'])
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pyarrow.parquet as pq

from etl.config import CityConfig, DepartmentConfig, save_settings_snapshot
from etl.extract import DepartmentExtract, extract_department, raw_dir, raw_path
from etl.standardize import DepartmentStandardized, canonical_dir, standardize_department
from etl.state import warehouse_url
from pipeline.airflow_local import pool_name
from pipeline.context import DepartmentFlagged, Night, NightRefused
from pipeline.record import (
    golden_counts,
    night_summary,
    note,
    note_night,
    read_json,
    summary_path,
    write_json,
)
from pipeline.reruns import check_replay, rerun_plan
from store import layout

log = logging.getLogger(__name__)

__all__ = [
    "DeliveryFailed",
    "DepartmentFlagged",
    "Night",
    "NightRefused",
    "NothingToLink",
    "build_reports",
    "extract",
    "last_judged_night",
    "link",
    "lock",
    "plan",
    "publish",
    "quality",
    "send_reports",
    "standardize",
    "summarize",
    "validate",
]


class NothingToLink(RuntimeError):
    """No department made it through tonight: nothing is linked or published."""


def plan(
    night: Night,
    *,
    departments: Iterable[str] | None = None,
    replay: bool = False,
    full: bool = False,
) -> dict[str, Any]:
    """Tonight's departments, checked before any department starts.

    ``replay`` recomputes a past night from the raw data it extracted, so that night must
    exist. A night that was published already is run again as a replay of the departments it
    published (:func:`pipeline.reruns.rerun_plan`, listed under ``rerun``), or refused with the
    way that works (an older night, or ``full``: :class:`NightRefused`). Departments whose
    configuration is broken are noted as flagged in the night's record.
    """
    city = night.city
    known = [d.code for d in city.departments]
    chosen = list(departments) if departments else [*known, *city.broken]
    unknown = [c for c in chosen if c not in known and c not in city.broken]
    if unknown:
        raise ValueError(f"unknown department(s) {', '.join(unknown)}; configured: {known}")
    rerun: dict[str, str] = {}
    if replay:
        check_replay(night)
    else:
        rerun = rerun_plan(night, [c for c in chosen if c in known], full=full)
        if "replay" not in rerun.values():  # a rerun keeps the settings it was extracted with
            save_settings_snapshot(city, layout.raw_settings_path(night.var_dir, night.run_id))
    broken = {c: city.broken_message(c) for c in chosen if c in city.broken}
    for code, message in broken.items():  # flagged tonight, in the night's record
        note(night, code, "extract", {"status": "config", "message": message})
    runnable = [c for c in known if c in chosen]
    return {
        "run_id": night.run_id,
        "city": city.name,
        "timezone": city.timezone,
        "broken": broken,
        "departments": runnable,
        "pools": [pool_name(city.department(c)) for c in runnable],
        "connections": {c: city.department(c).connection for c in runnable},
        "replay": replay,
        "rerun": sorted(c for c, how in rerun.items() if how == "replay"),
    }


# --- per department -----------------------------------------------------------------------------


def extract(
    night: Night,
    department: str,
    *,
    full: bool = False,
    replay: bool = False,
    retries: int = 1,
    backoff_s: float = 5.0,
    on_result: Callable[[DepartmentExtract], None] | None = None,
) -> dict[str, Any]:
    """Extract one department into raw Parquet (see :func:`etl.extract.extract_department`).

    ``retries`` and ``backoff_s`` cover a brief network blip inside the task; longer outages are
    the scheduler's retries. ``replay`` reads nothing from the source: it checks that the night
    kept every table's raw Parquet and reuses it. A night that published this department's rows
    already is replayed that way too (:func:`pipeline.reruns.rerun_plan`). ``on_result`` sees
    the extraction's result (not a replay's) before a failure flags the department.
    """
    dept = _department(night, department, "extract")
    if not replay:
        try:
            replay = rerun_plan(night, [department], full=full)[department] == "replay"
        except NightRefused as exc:
            note(night, department, "extract", {"status": "failed", "message": str(exc)})
            raise DepartmentFlagged(department, "extract", "failed", str(exc)) from exc
    if replay:
        return _reuse_raw(night, dept)
    result = extract_department(
        night.city, dept, night.run_id, full=full, retries=retries, backoff_s=backoff_s
    )
    if on_result is not None:
        on_result(result)
    if not result.ok:
        _flag(night, department, "extract", result.status, result.message or result.status)
    tables = {
        t.table: {
            "mode": t.mode,
            "rows": t.rows_read,
            "deleted": t.rows_deleted,
            "late": t.rows_late,
            "watermark": t.watermark_after,
        }
        for t in result.tables
    }
    outcome = {"status": "ok", "rows": result.rows_read, "attempts": result.attempts}
    drifted = [f"{t.table}: {t.message}" for t in result.tables if t.message]
    if drifted:
        outcome["notes"] = drifted
    return note(night, department, "extract", {**outcome, "tables": tables})


def _department(night: Night, code: str, stage: str) -> DepartmentConfig:
    """The department ``code``; flags it (not retryable) when its configuration is broken."""
    if code in night.city.broken:
        _flag(night, code, stage, "config", night.city.broken_message(code))
    return night.city.department(code)


def _reuse_raw(night: Night, dept: DepartmentConfig) -> dict[str, Any]:
    """A replay's extraction: the raw Parquet the night kept, or the department is flagged."""
    var_dir, run_id = night.var_dir, night.run_id
    paths = {t.name: raw_path(var_dir, run_id, dept.code, t.name) for t in dept.tables}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        message = (
            f"{dept.code}: night {run_id} kept no raw data for {', '.join(missing)} under "
            f"{raw_dir(var_dir, run_id, dept.code)} (its extraction failed that night); "
            "nothing to replay. Fix: run govmdm_full_rebuild to read the source again"
        )
        _flag(night, dept.code, "extract", "failed", message)
    tables = {name: {"mode": "replay", "rows": _rows(path)} for name, path in paths.items()}
    return note(night, dept.code, "extract", {"status": "reused", "tables": tables})


def standardize(
    night: Night,
    department: str,
    *,
    progress: Callable[[str, int], None] | None = None,
    on_result: Callable[[DepartmentStandardized], None] | None = None,
) -> dict[str, Any]:
    """Standardize one department's raw rows (see :func:`etl.standardize.standardize_department`);
    flags it unless every row read is either standardized or rejected with a reason.
    ``progress`` is told (department, rows) as rows are standardized. With the Spark engine
    the same kernel runs inside Spark (:mod:`spark.standardize`)."""
    dept = _department(night, department, "standardize")
    batches = None
    if night.engine == "spark":
        from spark.session import session
        from spark.standardize import spark_batches

        batches = spark_batches(session(night.var_dir, conf=night.city.spark))
    result = standardize_department(
        night.city, dept, night.run_id, progress=progress, batches=batches
    )
    if on_result is not None:
        on_result(result)
    if result.status != "ok":
        _flag(night, department, "standardize", result.status, result.message)
    outcome = {
        "status": "ok",
        "read": result.rows_read,
        "standardized": result.standardized,
        "rejected": result.rejected,
        "reject_reasons": dict(result.reject_reasons.most_common(5)),
    }
    return note(night, department, "standardize", outcome)


def validate(night: Night, department: str) -> dict[str, Any]:
    """Judge the department's blocking batch and ledger rules (``config/quality``) on tonight's
    batch, before linking; flags it when one fails, so its batch is held back from the golden
    tables (:func:`quality.suites.held_departments`). Every rule is judged and stored later, by
    :func:`quality`."""
    from quality.rules import QualityRules, load_quality_rules
    from quality.suites import held_departments

    city, run_id = night.city, night.run_id
    _department(night, department, "validate")
    rules = load_quality_rules(city, every_department=False)
    own = QualityRules(tuple(r for r in rules if r.table_department == department))
    blocking = [r.id for r in own if r.blocking and r.stage in ("batch", "ledger")]
    if department in held_departments(city, run_id, rules=own):
        message = (
            f"{department}: a blocking quality rule ({', '.join(blocking)}) failed on night "
            f"{run_id}'s batch; it is held back from the golden tables and its watermark stays. "
            f"Fix: see its report, or `govmdm quality --run-id {run_id} -d {department}`"
        )
        _flag(night, department, "validate", "held", message)
    return note(night, department, "validate", {"status": "ok", "blocking_rules": blocking})


def _flag(night: Night, department: str, stage: str, status: str, message: str) -> NoReturn:
    """Record the failure, then raise :class:`DepartmentFlagged`. A department whose extraction
    or standardization failed keeps no canonical rows of tonight (an earlier attempt's would
    otherwise reach linking)."""
    if stage in ("extract", "standardize"):
        shutil.rmtree(canonical_dir(night.var_dir, night.run_id, department), ignore_errors=True)
    note(night, department, stage, {"status": status, "message": message})
    raise DepartmentFlagged(department, stage, status, message)


def _rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows if path.is_file() else 0


# --- the whole city -----------------------------------------------------------------------------


@contextlib.contextmanager
def lock(night: Night, what: str) -> Iterator[None]:
    """Hold the warehouse's night lock while ``what`` (e.g. ``consolidate``: link, then
    publish) runs, so that no other night links or publishes in between."""
    from store.warehouse import night_lock

    with night_lock(
        night.warehouse_url, night.run_id, what, lock_dir=layout.warehouse_dir(night.var_dir)
    ):
        yield


def _link_engine(night: Night) -> Any:
    """The :class:`master_data.engine.LinkEngine` of ``engine: spark`` (None: local). It runs
    the nights that link every record again; a delta night links its few records here."""
    if night.engine != "spark":
        return None
    from spark.link import SparkLink
    from spark.session import session

    log.info("engine spark: full relinks run on Spark; a delta night's closure links locally")
    spark = session(night.var_dir, conf=night.city.spark)
    return SparkLink(spark, layout.spark_dir(night.var_dir) / "link")


def link(
    night: Night,
    *,
    departments: Iterable[str] | None = None,
    held: Iterable[str] | None = None,
    full: bool = False,
    retrain: bool = False,
    progress: Callable[[str], None] | None = None,
    on_result: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Link tonight's canonical rows into master entities (:func:`master_data.link.link`).

    ``held`` are the departments held back tonight (default: those a blocking quality rule
    holds back, :func:`quality.suites.held_departments`): none of their rows of tonight is
    linked, and publishing leaves their watermarks where they were, so the next night reads
    them again. ``departments`` are those that made it through tonight (default: every other
    one); with none, there is nothing to link and the night stops here (:class:`NothingToLink`;
    last night's golden tables stay published). ``on_result`` sees the full linking result.
    """
    from master_data.link import link as link_night
    from quality.suites import held_departments

    city, run_id = night.city, night.run_id
    held = set(held_departments(city, run_id) if held is None else held)
    known = [d.code for d in city.departments]
    delivered = sorted(departments if departments is not None else set(known) - held)
    if not delivered:
        raise NothingToLink(
            f"night {run_id}: no department delivered data; nothing is linked or published and "
            "last night's golden tables stay in place. Fix: see each department's failed task"
        )
    held_back = sorted(held - set(delivered))
    linked = link_night(
        city,
        run_id,
        full=full,
        retrain=retrain,
        held=held_back,
        progress=progress,
        engine=_link_engine(night),
    )
    if on_result is not None:
        on_result(linked)
    outcome = {
        "run_id": run_id,
        "mode": linked.mode,
        "base_run": linked.base_run,
        "departments": delivered,
        "held_back": held_back,
        "entities": {
            e: {"records": r.records, "changed": r.changed, "masters": r.masters}
            for e, r in linked.entities.items()
        },
    }
    return note_night(night, "link", outcome)


def publish(
    night: Night, *, on_result: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Publish the linked night atomically and move the watermarks
    (:func:`master_data.publish.publish`); returns the golden tables' row counts.
    ``on_result`` sees the publish summary (entities, held back, unfinished)."""
    from access.views import after_publish
    from master_data.publish import publish as publish_night

    summary = publish_night(night.city, night.run_id, after_publish)
    if on_result is not None:
        on_result(summary)
    outcome = {
        "run_id": night.run_id,
        "mode": summary["mode"],
        "published": summary["published"],
        "watermarks_committed": summary["watermarks_committed"],
        **golden_counts(night),
    }
    return note_night(night, "publish", outcome)


def quality(
    night: Night,
    *,
    departments: list[str] | None = None,
    rules: Any = None,
    on_result: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Judge every quality rule of the night on the published night — each department's batch,
    ledger and consistency rules and the golden-table rules — and store results and scorecards
    (:func:`quality.suites.run_quality`; ``departments`` and ``rules`` narrow it). Returns each
    department's score and grade and the night's mean score; ``on_result`` sees every result."""
    from quality.suites import run_quality

    scored = run_quality(night.city, night.run_id, departments=departments, rules=rules)
    if on_result is not None:
        on_result(scored)
    per_department = {
        code: {
            "score": q.score,
            "grade": q.grade,
            "change": q.change,
            "failed": dict(q.failed),
            "flagged": q.flagged,
            "held_back": q.held_back,
            "delivered": q.delivered,
        }
        for code, q in scored.departments.items()
    }
    scores = [q.score for q in scored.departments.values() if q.score is not None]
    outcome = {
        "run_id": night.run_id,
        "score": round(sum(scores) / len(scores), 2) if scores else None,
        "departments": per_department,
    }
    return note_night(night, "quality", outcome)


def build_reports(
    night: Night,
    department: str | None = None,
    *,
    nights: int | None = None,
    on_result: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Write each department's report and the overview under ``var/reports/run=<id>/``
    (:func:`quality.report.build_reports`); with ``department``, only that one's report (noted
    in the night's record only when the whole night's reports are built). ``nights``: nights in
    the trend chart. ``on_result`` sees the reports."""
    from quality.report import DEFAULT_NIGHTS
    from quality.report import build_reports as build

    trend = DEFAULT_NIGHTS if nights is None else nights
    linkage = _linkage_page(night) if department is None else None
    reports = build(night.city, night.run_id, department, nights=trend)
    if on_result is not None:
        on_result(reports)
    outcome = {
        "run_id": night.run_id,
        "directory": str(reports.directory),
        "reports": {
            r.name: {"html": str(r.html_path), "headline": r.headline} for r in reports.all()
        },
    }
    if department is not None:
        return outcome
    return note_night(night, "reports", outcome | {"linkage": linkage})


def _linkage_page(night: Night) -> dict[str, str | None]:
    """The night's linkage summary page (:mod:`quality.linkage`), written before the reports
    so that their index links it. A night that published nothing has none, and a page that
    cannot be built says why in the night's record; neither stops the reports."""
    from quality.linkage import write_linkage_page

    try:
        return {"html": str(write_linkage_page(night.city, night.run_id)), "why_not": None}
    except LookupError as exc:
        return {"html": None, "why_not": str(exc)}
    except (OSError, ValueError, KeyError) as exc:  # a damaged state file: the reports go on
        log.warning("night %s: no linkage summary page: %s", night.run_id, exc)
        return {"html": None, "why_not": f"{type(exc).__name__}: {exc}"}


class DeliveryFailed(RuntimeError):
    """A report e-mail of the night failed (every other one was tried)."""


def send_reports(
    night: Night,
    department: str | None = None,
    *,
    smtp: Mapping[str, Any] | None = None,
    nights: int | None = None,
    on_result: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """E-mail each department its report and the data-engineering contact the overview
    (:func:`quality.report.render_reports`, :func:`quality.deliver.deliver_reports`); with
    ``department``, only that one's report.

    ``smtp`` holds :class:`quality.deliver.SmtpSettings` fields (the DAG takes them from the
    ``smtp_default`` connection); without, ``GOVMDM_SMTP_*`` or nothing is sent. Reports already
    sent for this night are not sent again, so a retry after a mail-server outage sends only
    the rest. ``on_result`` sees this attempt's deliveries. Raises :class:`DeliveryFailed` if
    any e-mail failed, after trying every one.
    """
    from quality.deliver import SmtpSettings, deliver_reports
    from quality.report import DEFAULT_NIGHTS, render_reports

    path = layout.delivery_path(night.var_dir, night.run_id)
    sent = {d["report"]: d for d in read_json(path).get("deliveries", []) if d["status"] == "sent"}
    trend = DEFAULT_NIGHTS if nights is None else nights
    reports = render_reports(night.city, night.run_id, department, nights=trend)
    todo = dataclasses.replace(
        reports,
        departments={k: v for k, v in reports.departments.items() if k not in sent},
        overview=reports.overview if "overview" not in sent else None,
    )
    result = deliver_reports(night.city, todo, SmtpSettings(**smtp) if smtp else None)
    if on_result is not None:
        on_result(result)
    deliveries = [*sent.values(), *(dataclasses.asdict(d) for d in result.deliveries)]
    outcome = {"run_id": night.run_id, "note": result.note, "deliveries": deliveries}
    note_night(night, "delivery", outcome)
    failed = [d for d in deliveries if d["status"] == "failed"]
    if failed:
        raise DeliveryFailed(
            f"night {night.run_id}: {len(failed)} report e-mail(s) failed: "
            + "; ".join(f"{d['report']} → {d['recipient']}: {d['reason']}" for d in failed)
        )
    return outcome


def summarize(
    night: Night,
    *,
    task_states: Mapping[str, Mapping[str, str]] | None = None,
    golden: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Put the night together — per department its stages, the ledger and the counts; the
    golden tables; anything in ``extra`` (quality, reports) — and write it to
    :func:`pipeline.record.summary_path`.

    ``task_states`` (department → stage → scheduler state) marks a department flagged even when
    its task died before it could note anything (killed, timed out). ``flagged`` lists the
    departments that did not make it through every stage.
    """
    summary = night_summary(night, task_states, golden, extra)
    write_json(summary_path(night.var_dir, night.run_id), summary)
    return summary


def last_judged_night(city: CityConfig) -> str | None:
    """The latest night with quality results in the warehouse (None before the first)."""
    import sqlalchemy as sa

    from quality.report import night_key
    from store.tables import result_table
    from store.warehouse import engine_for

    engine = engine_for(warehouse_url(city))
    try:
        with engine.connect() as conn:
            runs = list(conn.execute(sa.select(result_table.c.run_id).distinct()).scalars())
    finally:
        engine.dispose()
    return max(runs, key=night_key) if runs else None
