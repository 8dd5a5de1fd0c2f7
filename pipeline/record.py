"""The night's record under ``<var>/nights/run=<id>/``: what every stage did, written by the
stage functions whether a ``govmdm`` command or the DAG ran them.

- ``department=<code>.json``: one department's per-department stages (extract, standardize,
  validate), each with its status and counts; rerunning an earlier stage drops the later ones.
- ``<stage>.json``: a city-wide stage (link, publish, quality, reports, delivery).
- ``night.json``: the whole night put together by :func:`pipeline.night.summarize`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from etl.state import RunState
from pipeline.context import Night
from store import layout
from store.layout import summary_path
from store.tables import enterprise_table, person_table, run_table
from store.warehouse import engine_for

STAGES = ("extract", "standardize", "validate")
"""The per-department stages of a night, in order."""
CITY_STAGES = ("link", "publish", "quality", "reports", "delivery")
"""The stages of a night over the whole city, each noted in ``<stage>.json``."""
FLAGGING = ("failed", "drift", "unreachable", "skipped", "held", "config")
"""The statuses of a per-department stage that flag the department."""


def read_summary(var_dir: Path, run_id: str) -> dict[str, Any]:
    """The summary :func:`pipeline.night.summarize` wrote for a night (empty if none)."""
    return read_json(summary_path(var_dir, run_id))


def note(night: Night, department: str, stage: str, outcome: dict[str, Any]) -> dict[str, Any]:
    """Record ``outcome`` as ``department``'s ``stage`` tonight; returns it with the department."""
    path = layout.night_department_path(night.var_dir, night.run_id, department)
    record = read_json(path)
    record[stage] = outcome
    for later in STAGES[STAGES.index(stage) + 1 :] if stage in STAGES else ():
        record.pop(later, None)  # a rerun of an earlier stage makes the later ones stale
    write_json(path, record)
    return {"department": department, "stage": stage, **outcome}


def note_night(night: Night, stage: str, outcome: dict[str, Any]) -> dict[str, Any]:
    """Record a city-wide stage's outcome as ``<stage>.json`` of the night; returns it."""
    write_json(layout.night_stage_path(night.var_dir, night.run_id, stage), outcome)
    return outcome


def noted_night(night: Night, stage: str) -> dict[str, Any]:
    """What ``<stage>.json`` of the night holds (empty if nothing)."""
    return read_json(layout.night_stage_path(night.var_dir, night.run_id, stage))


def golden_counts(night: Night) -> dict[str, Any]:
    """Rows in the golden tables and the night they hold, read from the warehouse."""
    engine = engine_for(night.warehouse_url)
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


def night_summary(
    night: Night,
    task_states: Mapping[str, Mapping[str, str]] | None = None,
    golden: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole night from its record: per department its stages, ledger and status; each
    city-wide stage; the golden tables; anything in ``extra``."""
    city = night.city
    with RunState.for_city(city) as state:
        ledger = state.ledger(night.run_id)
    names = {d.code: d.name for d in city.departments}
    departments: dict[str, Any] = {}
    for code in [*names, *city.broken]:
        noted = read_json(layout.night_department_path(city.var_dir, night.run_id, code))
        states = dict((task_states or {}).get(code, {}))
        if code in city.broken:  # flagged whatever an earlier attempt noted
            noted["extract"] = {"status": "config", "message": city.broken_message(code)}
        if noted or states:
            departments[code] = _department_entry(names.get(code, code), noted, states, ledger)
            departments[code]["ledger"] = [
                {k: row[k] for k in ("table_name", "mode", "rows_read", "rows_deleted", "status")}
                for row in ledger
                if row["department"] == code
            ]
    return {
        "run_id": night.run_id,
        "city": city.name,
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "departments": departments,
        "flagged": sorted(c for c, e in departments.items() if e["status"] == "flagged"),
        **{stage: noted_night(night, stage) for stage in CITY_STAGES},
        "golden": dict(golden) if golden is not None else golden_counts(night),
        **dict(extra or {}),
    }


def _department_entry(
    name: str, noted: dict[str, Any], states: dict[str, str], ledger: Any
) -> dict[str, Any]:
    """One department's night: its noted stages, the scheduler's state of each task (which
    flags it even when a task died before noting anything), ok or flagged and why."""
    entry: dict[str, Any] = {"name": name, **noted}
    for stage, st in states.items():
        entry.setdefault(stage, {})["task_state"] = st
    failed = next(
        (
            s
            for s in STAGES
            if entry.get(s, {}).get("status") in FLAGGING
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
    return entry


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (empty if there is none)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` atomically (a reader sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
