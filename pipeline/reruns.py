"""Running a night again: which departments are replayed from the raw data the night kept,
and which reruns are refused because they would lose what later nights read."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from etl.extract import raw_dir, raw_path
from pipeline.context import Night, NightRefused
from store import layout
from store.tables import run_table
from store.warehouse import engine_for, latest_run, published_run

_NEW_NIGHT = (
    "read every source in full as a new night: `govmdm extract --full --run-id NEW` (or "
    "trigger govmdm_full_rebuild with a new run_id), then standardize and consolidate it"
)


def rerun_plan(night: Night, departments: Iterable[str], *, full: bool = False) -> dict[str, str]:
    """How each department's extraction of the night runs: ``extract`` (read the source from
    the committed watermark) or ``replay`` (reuse the raw data the night kept).

    A night not yet published is extracted. A published night, rerun, is replayed for every
    department whose rows it published — their watermarks moved past those rows, so reading
    the source again would read only what changed since and publish less — and extracted for
    the others (flagged or held back that night: their watermarks did not move). Refused with
    :class:`NightRefused`, naming what works: a night older than the latest published one,
    ``full`` for a department it published, and a department whose raw data is gone.

    >>> rerun_plan(Night.open("config", "2026-07-01"), ["gongan", "renshe"])  # doctest: +SKIP
    {'gongan': 'replay', 'renshe': 'extract'}
    """
    chosen = list(departments)
    engine = engine_for(night.warehouse_url)
    try:
        own = published_run(engine, night.run_id)
        latest = latest_run(engine)
    finally:
        engine.dispose()
    if own is None or latest is None:
        return {c: "extract" for c in chosen}
    if latest["run_id"] != night.run_id:
        raise NightRefused(
            f"night {night.run_id} was published before night {latest['run_id']}: running it "
            f"again would put the golden tables back to {night.run_id} while the watermarks "
            f"stay at {latest['run_id']}'s, losing what was read since. Fix: rerun night "
            f"{latest['run_id']} (it is replayed from its raw data), or {_NEW_NIGHT}"
        )
    published = _published_departments(night, json.loads(own["summary"]))
    out = {}
    for code in chosen:
        if code in published:
            _check_replayable(night, code, full)
        out[code] = "replay" if code in published else "extract"
    return out


def _published_departments(night: Night, summary: dict[str, Any]) -> list[str]:
    """The departments whose rows the night published, from its ``mdm_run`` summary."""
    published = summary.get("departments")
    if published is not None:
        return list(published)
    # published by an older govmdm: who had raw data and was not held
    held = set(summary.get("held_back", []))
    return [
        d.code
        for d in night.city.departments
        if d.code not in held and raw_dir(night.var_dir, night.run_id, d.code).is_dir()
    ]


def _check_replayable(night: Night, code: str, full: bool) -> None:
    """Refuse to rerun department ``code``, published by the night, in full or without the
    raw data it was published from."""
    run_id = night.run_id
    if full:
        raise NightRefused(
            f"{code}: night {run_id} is published with its rows; reading it in full again "
            "under the same night would replace the raw data the night was published from. "
            f"Fix: rerun the night without --full (it is replayed), or {_NEW_NIGHT}"
        )
    tables = night.city.department(code).tables
    gone = [t.name for t in tables if not raw_path(night.var_dir, run_id, code, t.name).is_file()]
    if gone:
        raise NightRefused(
            f"{code}: night {run_id} is published with its rows, but the raw data they came "
            f"from is gone ({', '.join(gone)} under {raw_dir(night.var_dir, run_id, code)}): "
            "it cannot be replayed, and reading the source again would read only what "
            f"changed since. Fix: {_NEW_NIGHT}"
        )


def check_replay(night: Night) -> None:
    """Only the latest night can be replayed (or a later one that never published).

    Watermarks have moved on with every night published since: putting the golden tables back
    to an older night would lose the changes the later nights read, until a full rebuild.
    """
    run_id, raw_root = night.run_id, night.raw_root
    if not raw_root.is_dir():
        kept = sorted(
            p.name.removeprefix("run=") for p in layout.raw_root(night.var_dir).glob("run=*")
        )
        raise ValueError(
            f"night {run_id} has no raw data under {raw_root.parent} to replay; nights kept: "
            f"{', '.join(kept) or 'none'}"
        )
    engine = engine_for(night.warehouse_url)
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
