"""Sample cities for tests, built once per session: generated, then taken as far through the
night as a test needs (extracted, standardized, linked, published), on the embedded SQLite
sources and warehouse.

``make_city`` (the session fixture in conftest.py) is a :class:`CityFactory`. Two test modules
asking for the same city share one build. A test that only reads the city may use that build
itself; one that writes anything into it — a next night, a rerun, a review decision, an audit
row, a changed source row — asks for a copy (``copy=True``, or ``copy=<var folder>``).
:func:`copy_warehouse` publishes a city's night into a server warehouse (PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

import store.warehouse as wh
from access.views import after_publish
from etl.config import CityConfig, load_city_config
from etl.extract import extract_all
from etl.sample_city.departments import DEPARTMENTS
from etl.sample_city.generate import generate_city, next_night
from etl.standardize import standardize_all
from etl.state import warehouse_url
from master_data.link import link
from master_data.publish import publish

CONFIG = Path(__file__).resolve().parents[1] / "config"
NIGHT0 = "2026-06-30"  # the sample city's first night (its manifest's ``as_of``)

Stage = Literal["generated", "extracted", "standardized", "linked", "published"]
STAGES: tuple[Stage, ...] = ("generated", "extracted", "standardized", "linked", "published")

# What a sample city is built and used without: whatever the developer's shell points at, the
# city reads its own SQLite sources and writes its own warehouse.
CITY_ENV = (
    "GOVMDM_CONFIG",
    "GOVMDM_WAREHOUSE_URL",
    "GOVMDM_USER",
    "GOVMDM_PRIVILEGED_USERS",
    "GOVMDM_ANALYST_URL",
    "GOVMDM_PSEUDONYM_KEY",
    "GOVMDM_KILL_AT",
    *(f"{kind}_CONN_{d.code.upper()}" for d in DEPARTMENTS for kind in ("AIRFLOW", "GOVMDM")),
)


@dataclass(frozen=True)
class CitySpec:
    """One sample city: what ``generate_city`` draws, and how far its night ``run_id`` goes.

    ``nights`` next nights are drawn into the sources before the pipeline runs; ``as_of`` is
    standardization's reference date; ``views`` also runs the analyst access layer's
    after-publish hook (views, grants, catalog, audit row); ``hard_cases`` plants the
    hard cases (:mod:`etl.sample_city.hard_cases`).
    """

    persons: int
    enterprises: int
    seed: int
    nights: int = 0
    until: Stage = "generated"
    run_id: str = NIGHT0
    as_of: dt.date | None = None
    views: bool = False
    hard_cases: bool = False

    def __post_init__(self) -> None:
        assert self.until in STAGES, self.until
        assert not self.views or self.until == "published", "views need a published night"

    def reaches(self, stage: Stage) -> bool:
        return STAGES.index(self.until) >= STAGES.index(stage)


def isolate(mp: pytest.MonkeyPatch, var: Path) -> None:
    """Point govmdm at ``var`` and at nothing the shell may have configured."""
    mp.setenv("GOVMDM_VAR", str(var))
    for name in CITY_ENV:
        mp.delenv(name, raising=False)


def build(spec: CitySpec, var: Path) -> None:
    """Generate the city under ``var/city`` and run its night as far as ``spec.until``."""
    generate_city(
        var / "city",
        persons=spec.persons,
        enterprises=spec.enterprises,
        seed=spec.seed,
        hard_cases=spec.hard_cases,
    )
    for _ in range(spec.nights):
        next_night(var / "city")
    if not spec.reaches("extracted"):
        return
    city = load_city_config(CONFIG)
    extracted = extract_all(city, spec.run_id)
    assert all(r.ok for r in extracted), extracted
    if spec.reaches("standardized"):
        standardized = standardize_all(city, spec.run_id, as_of=spec.as_of)
        assert all(r.status == "ok" and r.reconciled for r in standardized), standardized
    if spec.reaches("linked"):
        link(city, spec.run_id)
    if spec.reaches("published"):
        summary = publish(city, spec.run_id)
        if spec.views:
            _after_publish(city, spec.run_id, summary)


def _after_publish(city: CityConfig, run_id: str, summary: dict[str, Any]) -> None:
    """What the nightly pipeline passes ``publish`` as its hook."""
    engine = wh.engine_for(warehouse_url(city))
    try:
        report = after_publish(engine, city, run_id, summary)
    finally:
        engine.dispose()
    assert report is not None and report.warnings == [], report


def copy_warehouse(city: CityConfig, target_url: str) -> None:
    """Publish the night in ``city``'s SQLite warehouse into the (empty) warehouse at
    ``target_url``, e.g. a PostgreSQL database, then run the after-publish hook there: views,
    roles, grants."""
    source = wh.engine_for(warehouse_url(city))
    target = wh.engine_for(target_url)
    try:
        frames = {t.name: wh.read(source, t) for t in (*wh.CURRENT_TABLES, *wh.NIGHTLY_TABLES)}
        run = wh.latest_run(source)
        assert run is not None
        summary = json.loads(run["summary"])
        wh.publish(target, wh.Night(run["run_id"], run["mode"], run["state_dir"], summary, frames))
        report = after_publish(target, city, run["run_id"], summary)
        assert report is not None and report.grants, report
    finally:
        source.dispose()
        target.dispose()


class CityFactory:
    """Sample cities of this session, each built once (see the module's docstring)."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._built: dict[CitySpec, Path] = {}

    def path(self, **spec: Any) -> Path:
        """The ``var/`` folder of the shared build of ``CitySpec(**spec)``: read it, never
        write to it. The city's sources and truth are in ``var/city``."""
        key = CitySpec(**spec)
        if key not in self._built:
            var = self._tmp.mktemp("var")
            with pytest.MonkeyPatch.context() as mp:
                isolate(mp, var)
                build(key, var)
            self._built[key] = var
        return self._built[key]

    def __call__(
        self, mp: pytest.MonkeyPatch, *, copy: bool | Path = False, **spec: Any
    ) -> CityConfig:
        """The city's configuration, with ``mp`` pointing govmdm at its ``var/``.

        ``copy=False`` gives the shared build (read-only users only); ``copy=True`` a copy of
        it in a new folder; ``copy=<path>`` a copy in that ``var/`` folder.
        """
        var = self.path(**spec)
        if copy is not False:
            target = self._tmp.mktemp("var") if copy is True else copy
            var = Path(shutil.copytree(var, target, dirs_exist_ok=True))
        isolate(mp, var)
        return load_city_config(CONFIG)
