"""Reading what the last night published: the warehouse tables and the night's master state.

>>> night = published_night(city)
>>> night.run_id, night.state_dir.name
('2026-07-01', 'run=2026-07-01')
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from etl.config import CityConfig
from etl.state import warehouse_url
from master_data.evaluate import Evaluation, evaluate
from master_data.night_state import DamagedState, read_state
from master_data.settings import EntityMatch
from store.layout import state_dir_of
from store.tables import crosswalk_table, enterprise_table, person_table
from store.warehouse import engine_for, latest_run
from store.warehouse import read as read_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedNight:
    """The last published night: its ID, mode, summary and master state folder."""

    run_id: str
    mode: str
    state_dir: Path
    summary: dict[str, Any]


@contextlib.contextmanager
def warehouse(city: CityConfig) -> Iterator[sa.Engine]:
    """An engine on the city's warehouse, disposed afterwards."""
    engine = engine_for(warehouse_url(city))
    try:
        yield engine
    finally:
        engine.dispose()


def published_night(city: CityConfig) -> PublishedNight:
    """The last published night; LookupError if none was published yet."""
    with warehouse(city) as engine:
        run = latest_run(engine)
    if run is None:
        raise LookupError(
            "nothing is published yet. Fix: run `govmdm consolidate` (or `make demo`) first"
        )
    return PublishedNight(
        run["run_id"], run["mode"], state_dir_of(city.var_dir, run), json.loads(run["summary"])
    )


def evaluate_published(city: CityConfig, truth_dir: Path) -> Evaluation:
    """Score the published crosswalk and golden tables against a sample city's truth."""
    with warehouse(city) as engine:
        if latest_run(engine) is None:
            raise LookupError("nothing is published yet. Fix: run `govmdm consolidate` first")
        crosswalk = read_table(engine, crosswalk_table)
        persons = read_table(engine, person_table)
        firms = read_table(engine, enterprise_table)
        night = published_night(city)
    records, edges = _state(night.state_dir, "records"), _state(night.state_dir, "edges")
    review = {
        e: (match.thresholds.review, match.thresholds.auto_link)
        for e in ("person", "enterprise")
        if (match := _match(night.state_dir / e)) is not None
    }
    return evaluate(
        truth_dir, crosswalk, persons, firms, records=records, edges=edges, review=review
    )


def _state(state_dir: Path, name: str) -> dict[str, pd.DataFrame]:
    """One state table of the published night per entity, where its state is still kept."""
    out: dict[str, pd.DataFrame] = {}
    for entity in ("person", "enterprise"):
        try:
            out[entity] = read_state(state_dir / entity, name).to_pandas()
        except DamagedState:
            log.warning("no %s in %s: evaluated without them", name, state_dir / entity)
    return out


def _match(folder: Path) -> EntityMatch | None:
    """The match settings the night ran with (``match.json`` beside its state)."""
    try:
        return EntityMatch.model_validate_json((folder / "match.json").read_text())
    except (OSError, ValueError):
        return None
