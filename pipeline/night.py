"""One night as the scheduler runs it: the glue between the Airflow DAGs in ``dags/`` and the
stages, with no Airflow in it.

Each public function is what one task of the nightly DAG calls. It loads the configuration, runs
one stage for one department (or for the whole city), notes the outcome in the night's record
(``<var>/nights/run=<id>/department=<code>.json``) and returns a small JSON-ready summary for
XCom. A department's own problem raises :class:`DepartmentFlagged`, which says whether trying
again later can help (an unreachable source) or not (schema drift, a count that does not
reconcile), so the DAG retries the first with backoff and fails the second at once while the
other departments go on. :func:`summarize` writes the whole night — every department, the
golden tables, where the reports are — to ``<var>/nights/run=<id>/night.json``.

>>> p = plan("config", when=dt.datetime(2026, 7, 1, 18, 0, tzinfo=dt.UTC))
>>> p["run_id"], p["departments"][:2]
('2026-07-02', ['gongan', 'minzheng'])
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pyarrow.parquet as pq
import sqlalchemy as sa

from etl.config import CityConfig, DepartmentConfig, load_city_config, save_settings_snapshot
from etl.extract import extract_department, raw_dir, raw_path
from etl.standardize import canonical_dir, standardize_department
from etl.state import RunState, warehouse_url
from store.tables import enterprise_table, person_table, run_table
from store.warehouse import engine_for, latest_run, published_run

CONFIG_ENV = "GOVMDM_CONFIG"
"""Environment variable naming the configuration folder (default: the project's ``config/``)."""
POOL_PREFIX = "govmdm_source_"
POLICY = "airflow_local_settings.py"
SOURCES_POOL = "govmdm_sources"
"""The pool every extraction holds a slot of (``dags/govmdm_wiring.py`` names it too)."""
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")  # the run IDs extraction accepts

STAGES = ("extract", "standardize", "validate")
"""The per-department stages of a night, in order."""
CITY_STAGES = ("link", "publish", "quality", "reports", "delivery")
"""The stages of a night over the whole city, each noted in ``<stage>.json``."""


class NightRefused(ValueError):
    """A night cannot be extracted again as asked; the message names the way that can."""


class DepartmentFlagged(RuntimeError):
    """A department's stage failed tonight; the other departments go on.

    ``retryable`` is true when trying again later can help (the source database could not be
    reached), false when it cannot (schema drift, a failed reconciliation, bad configuration).
    """

    def __init__(self, department: str, stage: str, status: str, message: str) -> None:
        self.department = department
        self.stage = stage
        self.status = status
        self.retryable = status == "unreachable"
        super().__init__(message)


# --- configuration and identity -----------------------------------------------------------------


def config_dir(default: str | Path = "config") -> Path:
    """The configuration folder: ``$GOVMDM_CONFIG`` if set, else ``default``.

    >>> config_dir("/opt/govmdm/config")
    PosixPath('/opt/govmdm/config')
    """
    return Path(os.environ.get(CONFIG_ENV, "").strip() or default)


def run_id_for(when: dt.datetime, timezone: str) -> str:
    """The night's run ID: the date of ``when`` in the city's time zone.

    >>> run_id_for(dt.datetime(2026, 7, 1, 18, 0, tzinfo=dt.UTC), "Asia/Shanghai")
    '2026-07-02'
    """
    if when.tzinfo is None:
        raise ValueError(f"{when!r} has no time zone: pass an aware datetime")
    return when.astimezone(zoneinfo.ZoneInfo(timezone)).date().isoformat()


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


def plan(
    config: str | Path,
    *,
    when: dt.datetime | None = None,
    run_id: str | None = None,
    departments: Iterable[str] | None = None,
    replay: bool = False,
    full: bool = False,
) -> dict[str, Any]:
    """Tonight's run ID and departments, checked before any department starts.

    ``run_id`` defaults to the date of ``when`` in the city's time zone. ``replay`` recomputes
    a past night from the raw data it extracted, so that night must exist. A night that was
    published already is run again as a replay of the departments it published
    (:func:`rerun_plan`, listed under ``rerun``), or refused with the way that works (an older
    night, or ``full``: :class:`NightRefused`).
    """
    city = load_city_config(config, tolerant=True)
    if run_id is None:
        if when is None:
            raise ValueError("give the night's run_id or the time it runs (when)")
        run_id = run_id_for(when, city.timezone)
    if not _RUN_ID.match(run_id):
        raise ValueError(
            f"run ID {run_id!r} is not allowed: use letters, digits and _ . : + - (e.g. 2026-07-01)"
        )
    known = [d.code for d in city.departments]
    chosen = list(departments) if departments else [*known, *city.broken]
    unknown = [c for c in chosen if c not in known and c not in city.broken]
    if unknown:
        raise ValueError(f"unknown department(s) {', '.join(unknown)}; configured: {known}")
    raw_root = city.var_dir / "raw" / f"run={run_id}"
    rerun: dict[str, str] = {}
    if replay:
        _check_replay(city, run_id, raw_root)
    else:
        rerun = rerun_plan(city, run_id, [c for c in chosen if c in known], full=full)
        if "replay" not in rerun.values():  # a rerun keeps the settings it was extracted with
            save_settings_snapshot(city, raw_root / "settings.json")
    broken = {c: city.broken_message(c) for c in chosen if c in city.broken}
    for code, message in broken.items():  # flagged tonight, in the night's record
        _note(city, run_id, code, "extract", {"status": "config", "message": message})
    return {
        "run_id": run_id,
        "city": city.name,
        "timezone": city.timezone,
        "broken": broken,
        "departments": [c for c in known if c in chosen],
        "pools": [pool_name(city.department(c)) for c in known if c in chosen],
        "connections": {c: city.department(c).connection for c in known if c in chosen},
        "replay": replay,
        "rerun": sorted(c for c, how in rerun.items() if how == "replay"),
    }


def rerun_plan(
    city: CityConfig, run_id: str, departments: Iterable[str], *, full: bool = False
) -> dict[str, str]:
    """How each department's extraction of night ``run_id`` runs: ``extract`` (read the source
    from the committed watermark) or ``replay`` (reuse the raw data the night kept).

    A night not yet published is extracted. A published night, rerun, is replayed for every
    department whose rows it published — their watermarks moved past those rows, so reading
    the source again would read only what changed since and publish less — and extracted for
    the others (flagged or held back that night: their watermarks did not move). Refused with
    :class:`NightRefused`, naming what works: a night older than the latest published one,
    ``full`` for a department it published, and a department whose raw data is gone.

    >>> rerun_plan(city, "2026-07-01", ["gongan", "renshe"])  # doctest: +SKIP
    {'gongan': 'replay', 'renshe': 'extract'}
    """
    chosen = list(departments)
    engine = engine_for(warehouse_url(city))
    try:
        own = published_run(engine, run_id)
        latest = latest_run(engine)
    finally:
        engine.dispose()
    if own is None or latest is None:
        return {c: "extract" for c in chosen}
    new_night = (
        "read every source in full as a new night: `govmdm extract --full --run-id NEW` (or "
        "trigger govmdm_full_rebuild with a new run_id), then standardize and consolidate it"
    )
    if latest["run_id"] != run_id:
        raise NightRefused(
            f"night {run_id} was published before night {latest['run_id']}: running it again "
            f"would put the golden tables back to {run_id} while the watermarks stay at "
            f"{latest['run_id']}'s, losing what was read since. Fix: rerun night "
            f"{latest['run_id']} (it is replayed from its raw data), or {new_night}"
        )
    summary = json.loads(own["summary"])
    published = summary.get("departments")
    if published is None:  # published by an older govmdm: who had raw data and was not held
        held = set(summary.get("held_back", []))
        published = [
            d.code
            for d in city.departments
            if d.code not in held and raw_dir(city.var_dir, run_id, d.code).is_dir()
        ]
    out = {}
    for code in chosen:
        if code not in published:
            out[code] = "extract"
            continue
        if full:
            raise NightRefused(
                f"{code}: night {run_id} is published with its rows; reading it in full again "
                "under the same night would replace the raw data the night was published from. "
                f"Fix: rerun the night without --full (it is replayed), or {new_night}"
            )
        tables = city.department(code).tables
        gone = [
            t.name for t in tables if not raw_path(city.var_dir, run_id, code, t.name).is_file()
        ]
        if gone:
            raise NightRefused(
                f"{code}: night {run_id} is published with its rows, but the raw data they came "
                f"from is gone ({', '.join(gone)} under {raw_dir(city.var_dir, run_id, code)}): "
                "it cannot be replayed, and reading the source again would read only what "
                f"changed since. Fix: {new_night}"
            )
        out[code] = "replay"
    return out


def _check_replay(city: CityConfig, run_id: str, raw_root: Path) -> None:
    """Only the latest night can be replayed (or a later one that never published).

    Watermarks have moved on with every night published since: putting the golden tables back
    to an older night would lose the changes the later nights read, until a full rebuild.
    """
    if not raw_root.is_dir():
        kept = sorted(p.name.removeprefix("run=") for p in raw_root.parent.glob("run=*"))
        raise ValueError(
            f"night {run_id} has no raw data under {raw_root.parent} to replay; nights kept: "
            f"{', '.join(kept) or 'none'}"
        )
    engine = engine_for(warehouse_url(city))
    try:
        latest = latest_run(engine)
        with engine.connect() as conn:
            published = conn.execute(
                sa.select(run_table.c.run_id).where(run_table.c.run_id == run_id)
            ).scalar()
    finally:
        engine.dispose()
    if latest is None or latest["run_id"] == run_id:
        return
    if published is not None or run_id < latest["run_id"]:
        raise ValueError(
            f"night {latest['run_id']} was published after night {run_id}; replaying {run_id} "
            f"would put the golden tables back to it while the watermarks stay at "
            f"{latest['run_id']}, losing the changes read since. Fix: replay {latest['run_id']}, "
            "or run govmdm_full_rebuild"
        )


# --- per department -----------------------------------------------------------------------------


def extract(
    config: str | Path,
    department: str,
    run_id: str,
    *,
    full: bool = False,
    replay: bool = False,
    retries: int = 1,
    backoff_s: float = 5.0,
) -> dict[str, Any]:
    """Extract one department into raw Parquet (see :func:`etl.extract.extract_department`).

    ``retries`` and ``backoff_s`` cover a brief network blip inside the task; longer outages are
    the scheduler's retries. ``replay`` reads nothing from the source: it checks that the night
    kept every table's raw Parquet and reuses it. A night that published this department's rows
    already is replayed that way too (:func:`rerun_plan`).
    """
    city = load_city_config(config, tolerant=True)
    dept = _department(city, run_id, department, "extract")
    if not replay:
        try:
            replay = rerun_plan(city, run_id, [department], full=full)[department] == "replay"
        except NightRefused as exc:
            _note(city, run_id, department, "extract", {"status": "failed", "message": str(exc)})
            raise DepartmentFlagged(department, "extract", "failed", str(exc)) from exc
    if replay:
        return _reuse_raw(city, dept, run_id)
    result = extract_department(city, dept, run_id, full=full, retries=retries, backoff_s=backoff_s)
    if not result.ok:
        _flag(city, run_id, department, "extract", result.status, result.message or result.status)
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
    return _note(city, run_id, department, "extract", {**outcome, "tables": tables})


def _department(city: CityConfig, run_id: str, code: str, stage: str) -> DepartmentConfig:
    """The department ``code``; flags it (not retryable) when its configuration is broken."""
    if code in city.broken:
        _flag(city, run_id, code, stage, "config", city.broken_message(code))
    return city.department(code)


def _reuse_raw(city: CityConfig, dept: DepartmentConfig, run_id: str) -> dict[str, Any]:
    """A replay's extraction: the raw Parquet the night kept, or the department is flagged."""
    paths = {t.name: raw_path(city.var_dir, run_id, dept.code, t.name) for t in dept.tables}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        _flag(
            city, run_id, dept.code, "extract", "failed",
            f"{dept.code}: night {run_id} kept no raw data for {', '.join(missing)} under "
            f"{raw_dir(city.var_dir, run_id, dept.code)} (its extraction failed that night); "
            "nothing to replay. Fix: run govmdm_full_rebuild to read the source again",
        )  # fmt: skip
    tables = {name: {"mode": "replay", "rows": _rows(path)} for name, path in paths.items()}
    return _note(city, run_id, dept.code, "extract", {"status": "reused", "tables": tables})


def standardize(config: str | Path, department: str, run_id: str) -> dict[str, Any]:
    """Standardize one department's raw rows (see :func:`etl.standardize.standardize_department`);
    flags it unless every row read is either standardized or rejected with a reason."""
    city = load_city_config(config, tolerant=True)
    result = standardize_department(
        city, _department(city, run_id, department, "standardize"), run_id
    )
    if result.status != "ok":
        _flag(city, run_id, department, "standardize", result.status, result.message)
    return _note(
        city,
        run_id,
        department,
        "standardize",
        {
            "status": "ok",
            "read": result.rows_read,
            "standardized": result.standardized,
            "rejected": result.rejected,
            "reject_reasons": dict(result.reject_reasons.most_common(5)),
        },
    )


def validate(config: str | Path, department: str, run_id: str) -> dict[str, Any]:
    """Judge the department's blocking batch and ledger rules (``config/quality``) on tonight's
    batch, before linking; flags it when one fails, so its batch is held back from the golden
    tables (:func:`quality.suites.held_departments`). Every rule is judged and stored later, by
    :func:`quality`."""
    from quality.rules import QualityRules, load_quality_rules
    from quality.suites import held_departments

    city = load_city_config(config, tolerant=True)
    _department(city, run_id, department, "validate")
    own = QualityRules(
        tuple(
            r
            for r in load_quality_rules(city, every_department=False)
            if r.table_department == department
        )
    )
    blocking = [r.id for r in own if r.blocking and r.stage in ("batch", "ledger")]
    if department in held_departments(city, run_id, rules=own):
        _flag(
            city, run_id, department, "validate", "held",
            f"{department}: a blocking quality rule ({', '.join(blocking)}) failed on night "
            f"{run_id}'s batch; it is held back from the golden tables and its watermark stays. "
            f"Fix: see its report, or `govmdm quality --run-id {run_id} -d {department}`",
        )  # fmt: skip
    return _note(city, run_id, department, "validate", {"status": "ok", "blocking_rules": blocking})


# --- the whole city -----------------------------------------------------------------------------


def link(
    config: str | Path,
    run_id: str,
    *,
    departments: Iterable[str],
    held: Iterable[str] = (),
    full: bool = False,
    retrain: bool = False,
) -> dict[str, Any]:
    """Link tonight's canonical rows into master entities (:func:`master_data.link.link`).

    ``departments`` are those that made it through tonight; with none, there is nothing to link
    and the night stops here (last night's golden tables stay published). ``held`` are the
    others: none of their rows of tonight is linked, and publishing leaves their watermarks
    where they were, so the next night reads them again.
    """
    from master_data.link import link as link_night

    delivered = sorted(departments)
    if not delivered:
        raise RuntimeError(
            f"night {run_id}: no department delivered data; nothing is linked or published and "
            "last night's golden tables stay in place. Fix: see each department's failed task"
        )
    city = load_city_config(config, tolerant=True)
    held_back = sorted(set(held) - set(delivered))
    linked = link_night(city, run_id, full=full, retrain=retrain, held=held_back)
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
    return _note_night(city, run_id, "link", outcome)


def publish(config: str | Path, run_id: str) -> dict[str, Any]:
    """Publish the linked night atomically and move the watermarks
    (:func:`master_data.publish.publish`); returns the golden tables' row counts."""
    from access.views import after_publish
    from master_data.publish import publish as publish_night

    city = load_city_config(config, tolerant=True)
    summary = publish_night(city, run_id, after_publish)
    outcome = {
        "run_id": run_id,
        "mode": summary["mode"],
        "published": summary["published"],
        "watermarks_committed": summary["watermarks_committed"],
        **golden_counts(city),
    }
    return _note_night(city, run_id, "publish", outcome)


def quality(config: str | Path, run_id: str) -> dict[str, Any]:
    """Judge every quality rule of the night on the published night — each department's batch,
    ledger and consistency rules and the golden-table rules — and store results and scorecards
    (:func:`quality.suites.run_quality`). Returns each department's score and grade and the
    night's mean score."""
    from quality.suites import run_quality

    city = load_city_config(config, tolerant=True)
    night = run_quality(city, run_id)
    departments = {
        code: {
            "score": q.score,
            "grade": q.grade,
            "change": q.change,
            "failed": dict(q.failed),
            "flagged": q.flagged,
            "held_back": q.held_back,
            "delivered": q.delivered,
        }
        for code, q in night.departments.items()
    }
    scores = [q.score for q in night.departments.values() if q.score is not None]
    outcome = {
        "run_id": run_id,
        "score": round(sum(scores) / len(scores), 2) if scores else None,
        "departments": departments,
    }
    return _note_night(city, run_id, "quality", outcome)


def build_reports(config: str | Path, run_id: str) -> dict[str, Any]:
    """Write each department's report and the overview under ``var/reports/run=<id>/``
    (:func:`quality.report.build_reports`)."""
    from quality.report import build_reports as build

    city = load_city_config(config, tolerant=True)
    reports = build(city, run_id)
    outcome = {
        "run_id": run_id,
        "directory": str(reports.directory),
        "reports": {
            r.name: {"html": str(r.html_path), "headline": r.headline} for r in reports.all()
        },
    }
    return _note_night(city, run_id, "reports", outcome)


def send_reports(
    config: str | Path, run_id: str, *, smtp: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """E-mail each department its report and the data-engineering contact the overview
    (:func:`quality.report.render_reports`, :func:`quality.deliver.deliver_reports`).

    ``smtp`` holds :class:`quality.deliver.SmtpSettings` fields (the DAG takes them from the
    ``smtp_default`` connection); without, ``GOVMDM_SMTP_*`` or nothing is sent. Reports already
    sent for this night are not sent again, so a retry after a mail-server outage sends only
    the rest. Raises if any e-mail failed, after trying every one.
    """
    import dataclasses

    from quality.deliver import SmtpSettings, deliver_reports
    from quality.report import render_reports

    city = load_city_config(config, tolerant=True)
    path = night_dir(city.var_dir, run_id) / "delivery.json"
    sent = {d["report"]: d for d in _read_json(path).get("deliveries", []) if d["status"] == "sent"}
    reports = render_reports(city, run_id)
    todo = dataclasses.replace(
        reports,
        departments={k: v for k, v in reports.departments.items() if k not in sent},
        overview=reports.overview if "overview" not in sent else None,
    )
    result = deliver_reports(city, todo, SmtpSettings(**smtp) if smtp else None)
    deliveries = [*sent.values(), *(dataclasses.asdict(d) for d in result.deliveries)]
    outcome = {"run_id": run_id, "note": result.note, "deliveries": deliveries}
    _note_night(city, run_id, "delivery", outcome)
    failed = [d for d in deliveries if d["status"] == "failed"]
    if failed:
        raise RuntimeError(
            f"night {run_id}: {len(failed)} report e-mail(s) failed: "
            + "; ".join(f"{d['report']} → {d['recipient']}: {d['reason']}" for d in failed)
        )
    return outcome


def golden_counts(city: CityConfig) -> dict[str, Any]:
    """Rows in the golden tables and the night they hold, read from the warehouse."""
    engine = engine_for(warehouse_url(city))
    try:
        with engine.connect() as conn:
            count = {
                t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for t in (person_table, enterprise_table)
            }
            r = run_table.c
            held = conn.execute(
                sa.select(r.run_id).order_by(r.published_at.desc()).limit(1)
            ).scalar()
    finally:
        engine.dispose()
    return {**count, "published_run": held}


# --- the night's record -------------------------------------------------------------------------


def night_dir(var_dir: Path, run_id: str) -> Path:
    """Where the record of one night lives.

    >>> night_dir(Path("var"), "2026-07-01")
    PosixPath('var/nights/run=2026-07-01')
    """
    return var_dir / "nights" / f"run={run_id}"


def summary_path(var_dir: Path, run_id: str) -> Path:
    """The night's summary, written by :func:`summarize`."""
    return night_dir(var_dir, run_id) / "night.json"


def summarize(
    config: str | Path,
    run_id: str,
    *,
    task_states: Mapping[str, Mapping[str, str]] | None = None,
    golden: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Put the night together — per department its stages, the ledger and the counts; the
    golden tables; anything in ``extra`` (quality, reports) — and write it to
    :func:`summary_path`.

    ``task_states`` (department → stage → scheduler state) marks a department flagged even when
    its task died before it could note anything (killed, timed out). ``flagged`` lists the
    departments that did not make it through every stage.
    """
    city = load_city_config(config, tolerant=True)
    with RunState.for_city(city) as state:
        ledger = state.ledger(run_id)
    out_dir = night_dir(city.var_dir, run_id)
    departments: dict[str, Any] = {}
    names = {d.code: d.name for d in city.departments}
    for code in [*names, *city.broken]:
        noted = _read_json(out_dir / f"department={code}.json")
        states = dict((task_states or {}).get(code, {}))
        if code in city.broken:  # flagged whatever an earlier attempt noted
            noted["extract"] = {"status": "config", "message": city.broken_message(code)}
        if not noted and not states:
            continue
        entry: dict[str, Any] = {"name": names.get(code, code), **noted}
        for stage, st in states.items():
            entry.setdefault(stage, {})["task_state"] = st
        failed = next(
            (
                s
                for s in STAGES
                if entry.get(s, {}).get("status")
                in ("failed", "drift", "unreachable", "skipped", "held", "config")
                or entry.get(s, {}).get("task_state") in ("failed", "upstream_failed")
            ),
            None,
        )
        entry["status"] = "flagged" if failed else "ok"
        if failed:
            entry["failed_stage"] = failed
            entry["message"] = entry.get(failed, {}).get("message") or (
                f"the {failed} task ended {entry[failed].get('task_state')}; see its log"
            )
        entry["ledger"] = [
            {k: row[k] for k in ("table_name", "mode", "rows_read", "rows_deleted", "status")}
            for row in ledger
            if row["department"] == code
        ]
        departments[code] = entry
    summary = {
        "run_id": run_id,
        "city": city.name,
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "departments": departments,
        "flagged": sorted(c for c, e in departments.items() if e["status"] == "flagged"),
        **{stage: _read_json(out_dir / f"{stage}.json") for stage in CITY_STAGES},
        "golden": dict(golden) if golden is not None else golden_counts(city),
        **dict(extra or {}),
    }
    _write_json(summary_path(city.var_dir, run_id), summary)
    return summary


def read_summary(var_dir: Path, run_id: str) -> dict[str, Any]:
    """The summary :func:`summarize` wrote for a night (empty if none)."""
    return _read_json(summary_path(var_dir, run_id))


def _note(
    city: CityConfig, run_id: str, department: str, stage: str, outcome: dict[str, Any]
) -> dict[str, Any]:
    """Record ``outcome`` as ``department``'s ``stage`` tonight; returns it with the department."""
    path = night_dir(city.var_dir, run_id) / f"department={department}.json"
    record = _read_json(path)
    record[stage] = outcome
    for later in STAGES[STAGES.index(stage) + 1 :] if stage in STAGES else ():
        record.pop(later, None)  # a rerun of an earlier stage makes the later ones stale
    _write_json(path, record)
    return {"department": department, "stage": stage, **outcome}


def _note_night(
    city: CityConfig, run_id: str, stage: str, outcome: dict[str, Any]
) -> dict[str, Any]:
    """Record a city-wide stage's outcome as ``<stage>.json`` of the night; returns it."""
    _write_json(night_dir(city.var_dir, run_id) / f"{stage}.json", outcome)
    return outcome


def _flag(
    city: CityConfig, run_id: str, department: str, stage: str, status: str, message: str
) -> NoReturn:
    """Record the failure, then raise :class:`DepartmentFlagged`. A department whose extraction
    or standardization failed keeps no canonical rows of tonight (an earlier attempt's would
    otherwise reach linking)."""
    if stage in ("extract", "standardize"):
        shutil.rmtree(canonical_dir(city.var_dir, run_id, department), ignore_errors=True)
    _note(city, run_id, department, stage, {"status": status, "message": message})
    raise DepartmentFlagged(department, stage, status, message)


def _rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows if path.is_file() else 0


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


# --- a project-local Airflow, for the demo ------------------------------------------------------


def local_airflow_env(
    city: CityConfig, config: str | Path, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for running the DAGs with a project-local Airflow: ``AIRFLOW_HOME`` under
    ``var/airflow``, a SQLite metadata database, LocalExecutor, parallelism for two cores, the
    project's ``dags/``. Department connections (``AIRFLOW_CONN_*``, ``GOVMDM_CONN_*``) pass
    through; any other Airflow setting of the calling shell does not.
    """
    home = city.var_dir / "airflow"
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
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            CONFIG_ENV: str(Path(config).resolve()),
            "GOVMDM_VAR": str(city.var_dir),
        }
    )
    return env


def logical_date(city: CityConfig, run_id: str) -> str:
    """The logical date whose night is ``run_id``: 02:00 that day in the city's time zone.

    >>> logical_date(load_city_config("config"), "2026-07-01")
    '2026-07-01T02:00:00+08:00'
    """
    day = dt.date.fromisoformat(run_id)
    when = dt.datetime.combine(day, dt.time(2), tzinfo=zoneinfo.ZoneInfo(city.timezone))
    return when.isoformat()


def run_local_night(
    city: CityConfig,
    config: str | Path,
    run_id: str,
    *,
    dag_id: str = "govmdm_nightly",
    log: Path,
    on_line: Callable[[str], None] | None = None,
) -> tuple[int, list[str]]:
    """Run one night through Airflow with ``airflow dags test`` on the project-local Airflow:
    migrate its metadata database, import the pools, run the DAG. Airflow's output goes to
    ``log``; returns the DAG run's exit code (non-zero when a department was flagged) and the
    commands run.
    """
    env = local_airflow_env(city, config)
    home = Path(env["AIRFLOW_HOME"])
    (home / "config").mkdir(parents=True, exist_ok=True)
    # the cluster policy that puts each extraction in its source database's pool
    shutil.copyfile(city.root / "dags" / POLICY, home / "config" / POLICY)
    pool_file = home / "pools.json"
    _write_json(pool_file, pools(city))
    airflow = [sys.executable, "-m", "airflow"]
    steps = [
        ["db", "migrate"],
        ["pools", "import", str(pool_file)],
        ["dags", "test", dag_id, logical_date(city, run_id)],
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as out:
        for step in steps:
            out.write(f"$ airflow {' '.join(step)}\n")
            out.flush()
            proc = subprocess.Popen(
                [*airflow, *step],
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
            code = proc.wait()
            if code != 0 and step[0] != "dags":
                raise RuntimeError(f"`airflow {' '.join(step)}` failed (exit {code}); see {log}")
    return code, [f"airflow {' '.join(s)}" for s in steps]
