"""Publishing a linked night: the master tables replaced in one transaction, then the
extraction watermarks of the departments whose rows it published moved on.

A delta night whose base night is what the warehouse holds publishes incrementally: only the
rows of the master IDs it touched are replaced. Anything else — a full night, or a rerun of the
latest night — replaces the tables whole. Either way it is one transaction
(:func:`store.warehouse.publish`): a crash leaves the last published night intact, and
watermarks move only after the commit. A night is published only on top of the night it was
linked on.

>>> publish(city, "2026-07-01", after_publish)["published"]
'incremental'
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from etl.config import CityConfig
from etl.state import commit_watermarks, warehouse_url
from master_data.night_state import (
    ConsolidateError,
    DamagedState,
    older_night,
    prune_states,
    read_state,
)
from master_data.records import is_in
from master_data.settings import ENTITIES
from store import failpoints, layout
from store.warehouse import KEY_COLUMNS, Night, engine_for, latest_run, night_lock, published_run
from store.warehouse import publish as publish_night

AfterPublish = Callable[[Any, CityConfig, str, dict[str, Any]], object]
"""Called with (engine, city, run ID, summary) once a night is committed; must not raise."""

_ENTITY_TABLES = {  # warehouse table → the state file each entity writes its rows to
    "mdm_provenance": "provenance",
    "mdm_crosswalk": "crosswalk",
    "mdm_conflict": "conflicts",
    "mdm_id_event": "events",
    "mdm_review_queue": "review",
}


def publish(
    city: CityConfig, run_id: str, after_publish: AfterPublish | None = None
) -> dict[str, Any]:
    """Publish the night :func:`master_data.link.link` prepared, atomically, then move the
    watermarks of the departments whose rows it published; the night's summary, with how it
    was published, the watermarks moved and the master states pruned.

    ``after_publish`` runs once the night is committed, before the watermarks move (the
    pipeline passes the analyst access layer's hook: views, grants, catalog, audit row).

    If another night was published since this one was linked, or this night is older than the
    latest published one, it raises :class:`ConsolidateError` (publishing it would undo a newer
    night) and changes nothing.
    """
    with night_lock(
        warehouse_url(city), run_id, "publish", lock_dir=layout.warehouse_dir(city.var_dir)
    ):
        failpoints.reached("publish:start")
        return _publish_night(city, run_id, after_publish)


def _publish_night(
    city: CityConfig, run_id: str, after_publish: AfterPublish | None
) -> dict[str, Any]:
    state = layout.master_dir(city.var_dir, run_id)
    summary = _summary(state, run_id)
    relink = f"link it again: `govmdm consolidate --run-id {run_id}`"
    engine = engine_for(warehouse_url(city))
    try:
        held = latest_run(engine)
        _refuse_to_undo(engine, run_id, summary.get("base_run"), held)
        on_base = held is not None and held["run_id"] == summary["base_run"]
        try:
            touched = _touched(state) if summary["mode"] == "delta" and on_base else None
            frames = _frames(state, run_id, touched)
        except DamagedState as exc:
            raise exc.with_fix(relink) from exc.cause
        stored = layout.master_state_ref(run_id)  # relative to var/: var/ can move
        publish_night(engine, Night(run_id, summary["mode"], stored, summary, frames, touched))
        failpoints.reached("publish:committed")
        if after_publish is not None:
            after_publish(engine, city, run_id, summary)
    finally:
        engine.dispose()
    summary["published"] = "incremental" if touched is not None else "whole"
    summary["watermarks_committed"] = commit_watermarks(city, run_id, summary["departments"])
    failpoints.reached("publish:watermarks-committed")
    summary["states_pruned"] = prune_states(city)
    failpoints.reached("publish:done")
    return summary


def _summary(state: Path, run_id: str) -> dict[str, Any]:
    """The summary of the night linked into ``state``."""
    path = state / "summary.json"
    if not path.is_file():
        raise ConsolidateError(
            f"no linked night {run_id!r} under {state}. Fix: run `govmdm link --run-id {run_id}`"
        )
    try:
        summary: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DamagedState(
            path, exc, f"link it again: `govmdm consolidate --run-id {run_id}`"
        ) from exc
    return summary


def _touched(state: Path) -> frozenset[str]:
    """The master IDs the night in ``state`` touched, of every entity."""
    return frozenset(
        m for e in ENTITIES for m in read_state(state / e, "touched")["master_id"].to_pylist()
    )


def _refuse_to_undo(
    engine: Any, run_id: str, base_run: str | None, held: Mapping[str, Any] | None
) -> None:
    """Raise unless publishing ``run_id`` (linked on ``base_run``) builds on what the warehouse
    holds (``held``): the night it was linked on, or the night itself (a rerun)."""
    current = held["run_id"] if held is not None else None
    if current == run_id:
        before = latest_run(engine, before=run_id)
        if (before["run_id"] if before else None) == base_run:
            return
    elif current == base_run:
        return
    if current is not None and current != run_id and published_run(engine, run_id) is not None:
        raise ConsolidateError(older_night(run_id, current))
    on = f"night {base_run}" if base_run else "an empty warehouse"
    now = f"night {current}" if current else "no night at all"
    raise ConsolidateError(
        f"night {run_id} was linked on {on}, but the warehouse holds {now} now (another night "
        f"was published or rolled back meanwhile); publishing {run_id} would undo it. Nothing "
        f"was published. Fix: link it again: `govmdm consolidate --run-id {run_id}`"
    )


def _frames(state: Path, run_id: str, touched: frozenset[str] | None) -> dict[str, pa.Table]:
    """The warehouse rows of the night in ``state``: every row, or (``touched`` given) those of
    the current tables that name a touched master ID, plus the nightly tables' rows. They stay
    Arrow tables, as the state holds them: the publish converts each chunk as it inserts it.
    A table with one master-ID column has its rows picked as it is read (a large state table
    read memory-mapped copies only those)."""
    ids = pd.Index(sorted(touched)) if touched is not None else None
    picked = pa.array(ids.to_numpy(dtype=object), pa.string()) if ids is not None else None

    def rows(folder: Path, name: str, table: str, **extra: str) -> pa.Table:
        keys = KEY_COLUMNS.get(table)
        if picked is not None and keys and len(keys) == 1:
            data = read_state(folder, name, where=(keys[0], picked))
        else:
            data = read_state(folder, name)
        if ids is not None and keys and len(keys) > 1:
            hit = is_in(data[keys[0]], ids)
            for k in keys[1:]:
                hit = pc.or_(hit, is_in(data[k], ids))
            data = data.filter(hit)
        for column, value in extra.items():
            filled = pa.repeat(pa.scalar(value, pa.string()), data.num_rows)
            at = data.schema.get_field_index(column)
            data = (
                data.set_column(at, column, filled)
                if at >= 0
                else data.append_column(column, filled)
            )
        return data

    frames = {
        "mdm_person": rows(state / "person", "golden", "mdm_person"),
        "mdm_enterprise": rows(state / "enterprise", "golden", "mdm_enterprise"),
        "mdm_relationship": rows(state, "relationships", "mdm_relationship"),
        "mdm_person_relationship": rows(state, "guardians", "mdm_person_relationship"),
        "mdm_unresolved_reference": rows(state, "unresolved", "mdm_unresolved_reference"),
    }
    for table, file in _ENTITY_TABLES.items():
        parts = []
        for e in ENTITIES:
            extra: dict[str, str] = {"entity": e} if table == "mdm_crosswalk" else {}
            if table == "mdm_id_event":
                extra["run_id"] = run_id
            parts.append(rows(state / e, file, table, **extra))
        # an entity without rows may have written its columns with other types (from an
        # empty frame): it adds nothing, so it is left out rather than merged
        kept = [part for part in parts if part.num_rows] or parts[:1]
        frames[table] = pa.concat_tables(kept, promote_options="permissive")
    return frames
