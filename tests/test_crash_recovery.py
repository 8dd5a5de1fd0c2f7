"""A night killed with SIGKILL anywhere: the warehouse holds last night or tonight, the watermarks
never pass what is published, and running the night again gives exactly the uninterrupted night.

Night 0 of a small sample city is published, then the city's next night is applied to its
sources. Night 1 runs uninterrupted once (the reference). Then, for each fail point of
:mod:`store.failpoints` — spread over extract, standardize, link and publish, including between
publish's transaction and the watermark commit — a fresh copy of night 0 runs night 1 in a child
process (``govmdm extract``, ``standardize``, ``consolidate``) that kills itself with SIGKILL at
that point: no ``finally``, no atexit, no cleanup. Afterwards:

* ``mdm_person``, ``mdm_enterprise``, ``mdm_crosswalk`` and ``mdm_provenance`` (row counts and a
  hash of every row, ordered by key) are night 0's or the reference night 1's, nothing between;
* every committed watermark is night 0's while the warehouse holds night 0, and night 0's or
  night 1's once it holds night 1 (never beyond what is published);
* the night run again by hand gives the reference's tables and watermarks, and every source row
  is in the crosswalk or a reject table, once.

On the embedded SQLite warehouse at every point, and on PostgreSQL (a database copied from a
template per attempt) at the points where the night writes to the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from dbservers import make_url_for, server_url
from test_night_safety import cli, source_keys

import store.warehouse as wh
from etl.config import CityConfig, load_city_config
from etl.sample_city.generate import generate_city, next_night
from etl.state import RunState, warehouse_url
from store import failpoints

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"  # replaced by a copy whose tables allow any deletion (see below)
PERSONS, ENTERPRISES, SEED = 200, 60, 5

# Where the child dies: every stage, early and late, several departments and both entities.
KILL_POINTS = (
    "extract:start",
    "extract:replacing#2",
    "extract:table-written",
    "extract:keys-written#2",
    "extract:proposed#3",
    "extract:recorded#6",
    "standardize:batch",
    "standardize:closing#2",
    "standardize:written#4",
    "standardize:marked#6",
    "link:start",
    "link:records",
    "link:scored#2",
    "link:clustered",
    "link:entity-done",
    "link:before-rename",
    "link:swapping",
    "link:renamed",
    "publish:start",
    "publish:inserting#2",
    "publish:before-commit",
    "publish:committed",
    "publish:watermarks-db",
    "publish:keysets-moving#3",
    "publish:watermarks-committed",
    "publish:done",
)
# The same points on PostgreSQL: every stage writes to the server (the ledger, proposed
# watermarks and the key-set bookkeeping, the night lock, the publish transaction).
PG_KILL_POINTS = KILL_POINTS
DIGESTED = {
    "mdm_person": ("master_id",),
    "mdm_enterprise": ("master_id",),
    "mdm_crosswalk": ("entity", "department", "source_table", "source_key"),
    "mdm_provenance": ("entity", "master_id", "attribute"),
}

# The night in one child process: the three commands as typed by hand.
_NIGHT = """
import sys
from cli.main import app
for command in ("extract", "standardize", "consolidate"):
    code = app([command, "--run-id", sys.argv[1], "--config", sys.argv[2]], standalone_mode=False)
    if code:
        sys.exit(f"{command} ended with {code}")
"""


def test_the_points_cover_every_stage() -> None:
    stages = {p.split(":")[0] for p in KILL_POINTS}
    assert stages == {"extract", "standardize", "link", "publish"} and len(KILL_POINTS) >= 20
    assert {p.partition("#")[0] for p in KILL_POINTS} == set(failpoints.POINTS)
    assert set(PG_KILL_POINTS) <= set(KILL_POINTS)


# --- the warehouse: a fresh one per point ------------------------------------------------------


class _Warehouse:
    """Night 0's warehouse, copied fresh for every attempt."""

    def url(self, var: Path) -> str | None:  # None: the embedded SQLite under var/
        return None

    def fresh(self, name: str) -> str | None:
        return None

    def snapshot(self, url: str | None) -> None:
        pass

    def close(self) -> None:
        pass


class _Postgres(_Warehouse):
    """A database per attempt, copied from a template of night 0 (CREATE DATABASE … TEMPLATE)."""

    def __init__(self) -> None:
        self.prefix = f"govmdm_test_crash_{uuid.uuid4().hex[:8]}"
        self.admin = sa.create_engine(
            server_url("postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
        )
        self.created: list[str] = []
        self.template = self._create(f"{self.prefix}_night0")

    def _create(self, name: str, template: str | None = None) -> str:
        with self.admin.connect() as conn:
            if template is not None:
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": template},
                )
            copy = f" TEMPLATE {template}" if template else ""
            conn.execute(sa.text(f"CREATE DATABASE {name}{copy}"))
        self.created.append(name)
        return name

    def url(self, var: Path) -> str:
        return make_url_for("postgres", self.template)

    def fresh(self, name: str) -> str:
        return make_url_for("postgres", self._create(f"{self.prefix}_{name}", self.template))

    def close(self) -> None:
        with self.admin.connect() as conn:
            for name in reversed(self.created):
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        self.admin.dispose()


# --- what a night leaves -----------------------------------------------------------------------


@dataclass(frozen=True)
class Left:
    """The golden tables' digest and the committed watermarks."""

    digest: dict[str, tuple[int, str]]
    watermarks: dict[tuple[str, str], str | None]


def _left(city: CityConfig) -> Left:
    engine = wh.engine_for(warehouse_url(city))
    digest = {}
    try:
        with engine.connect() as conn:
            for name, key in DIGESTED.items():
                table = wh.metadata.tables[name]
                rows = conn.execute(sa.select(table).order_by(*[table.c[k] for k in key])).all()
                text = json.dumps([list(r) for r in rows], default=str, ensure_ascii=False)
                digest[name] = (len(rows), hashlib.blake2b(text.encode()).hexdigest())
    finally:
        engine.dispose()
    with RunState.for_city(city) as state:
        marks = {
            (d.code, t.name): (state.watermark(d.code, t.name) or (None, None))[1]
            for d in city.departments
            for t in d.tables
        }
    return Left(digest, marks)


def _unaccounted(city: CityConfig) -> tuple[set[Any], set[Any], int]:
    """Source rows in neither the crosswalk nor a reject table, crosswalk rows whose source row
    is gone, and crosswalk rows listed twice."""
    import pyarrow.parquet as pq

    live = set(source_keys(city).itertuples(index=False, name=None))
    engine = wh.engine_for(warehouse_url(city))
    try:
        xw = wh.read(engine, wh.crosswalk_table)
    finally:
        engine.dispose()
    keys = list(xw[["department", "source_table", "source_key"]].itertuples(index=False, name=None))
    rejected: set[Any] = set()
    for path in (city.var_dir / "canonical").glob("run=*/department=*/rejects.parquet"):
        r = pq.read_table(path, columns=["department", "source_table", "source_key"])
        rejected |= set(r.to_pandas().itertuples(index=False, name=None))
    return live - set(keys) - rejected, set(keys) - live, len(keys) - len(set(keys))


@contextlib.contextmanager
def _env(var: Path, url: str | None) -> Iterator[CityConfig]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GOVMDM_VAR", str(var))
        mp.delenv("GOVMDM_KILL_AT", raising=False)
        if url:
            mp.setenv("GOVMDM_WAREHOUSE_URL", url)
        else:
            mp.delenv("GOVMDM_WAREHOUSE_URL", raising=False)
        yield load_city_config(CONFIG)


def _run_night_here(run_id: str) -> None:
    for command in ("extract", "standardize", "consolidate"):
        done = cli(command, "--run-id", run_id, "--config", str(CONFIG))
        assert done.exit_code == 0, f"{command}: {done.output}"


# --- the harness -------------------------------------------------------------------------------


@dataclass
class _Attempt:
    var: Path
    url: str | None
    process: subprocess.Popen[str]


@dataclass
class _Nights:
    """Night 0 and the reference night 1 of one warehouse, and the killed attempts.

    The killed children run ahead of the tests, two at a time, each on its own copy of night 0:
    while one test runs its night again here, the next children die on the other core."""

    root: Path
    warehouse: _Warehouse
    night1: str
    night0_left: Left
    night1_left: Left
    points: tuple[str, ...] = ()
    ahead: int = 2
    started: dict[str, _Attempt] = field(default_factory=dict)

    def killed(self, point: str) -> tuple[Path, str | None, int, str]:
        """Night 1 killed at ``point`` on a copy of night 0: where, and how the child ended."""
        order = list(self.points)
        for later in order[order.index(point) : order.index(point) + self.ahead]:
            if later not in self.started:
                self.started[later] = self._start(later)
        attempt = self.started.pop(point)
        _, stderr = attempt.process.communicate(timeout=300)
        return attempt.var, attempt.url, attempt.process.returncode, stderr

    def _start(self, point: str) -> _Attempt:
        name = point.replace(":", "_").replace("#", "_").replace("-", "_")
        var = self.root / name
        shutil.copytree(self.root / "night0", var)
        url = self.warehouse.fresh(name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOVMDM_")}
        env |= {"GOVMDM_VAR": str(var), "GOVMDM_KILL_AT": point}
        if url:
            env["GOVMDM_WAREHOUSE_URL"] = url
        process = subprocess.Popen(
            [sys.executable, "-c", _NIGHT, self.night1, str(CONFIG)], cwd=ROOT, env=env, text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        return _Attempt(var, url, process)

    def close(self) -> None:
        for attempt in self.started.values():
            attempt.process.kill()
            attempt.process.wait()
        self.warehouse.close()


def _prepare(root: Path, warehouse: _Warehouse, points: tuple[str, ...]) -> _Nights:
    """Night 0 published, night 1 in the sources, and night 1 run uninterrupted once."""
    base = root / "night0"
    manifest = generate_city(base / "city", persons=PERSONS, enterprises=ENTERPRISES, seed=SEED)
    with _env(base, warehouse.url(base)) as city:
        _run_night_here(manifest["as_of"])
        night0 = _left(city)
    night1 = next_night(base / "city")["as_of"]
    reference, url = root / "reference", warehouse.fresh("reference")
    shutil.copytree(base, reference)
    with _env(reference, url) as city:
        _run_night_here(night1)
        assert _unaccounted(city) == (set(), set(), 0)
        night1_left = _left(city)
    assert night1_left.digest != night0.digest
    return _Nights(root, warehouse, night1, night0, night1_left, points)


@pytest.fixture(scope="module", autouse=True)
def harness_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The project's configuration with every table allowed to lose any share of its keys: a
    200-person city's next night deletes more than the default 5 % of some small tables, which
    holds that department back (tested in test_mass_deletion.py) and would hide what this
    harness checks."""
    global CONFIG
    copy = tmp_path_factory.mktemp("harness") / "config"
    shutil.copytree(ROOT / "config", copy)
    for path in (copy / "departments").glob("*.yaml"):
        dept = yaml.safe_load(path.read_text(encoding="utf-8"))
        for table in dept["tables"]:
            table["max_deleted_share"] = 1.0
        path.write_text(yaml.safe_dump(dept, allow_unicode=True, sort_keys=False), "utf-8")
    before, CONFIG = CONFIG, copy
    yield copy
    CONFIG = before


@pytest.fixture(scope="module")
def sqlite_nights(
    harness_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_Nights]:
    """The nights on the embedded SQLite warehouse."""
    nights = _prepare(tmp_path_factory.mktemp("crash_sqlite"), _Warehouse(), KILL_POINTS)
    try:
        yield nights
    finally:
        nights.close()


@pytest.fixture(scope="module")
def pg_nights(
    harness_config: Path, pg_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_Nights]:
    """The nights on a PostgreSQL warehouse."""
    warehouse = _Postgres()
    try:
        nights = _prepare(tmp_path_factory.mktemp("crash_postgres"), warehouse, PG_KILL_POINTS)
    except BaseException:
        warehouse.close()
        raise
    try:
        yield nights
    finally:
        nights.close()


@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_anywhere_on_sqlite_a_whole_night_stays_and_the_rerun_equals_it(
    sqlite_nights: _Nights, point: str
) -> None:
    _kill_and_rerun(sqlite_nights, point)


@pytest.mark.parametrize("point", PG_KILL_POINTS)
def test_killed_anywhere_on_postgresql_a_whole_night_stays_and_the_rerun_equals_it(
    pg_nights: _Nights, point: str
) -> None:
    _kill_and_rerun(pg_nights, point)


def _kill_and_rerun(nights: _Nights, point: str) -> None:
    var, url, returncode, stderr = nights.killed(point)
    assert returncode == -signal.SIGKILL, f"{point} was never reached:\n{stderr}"

    with _env(var, url) as city:
        after = _left(city)
        if after.digest == nights.night0_left.digest:  # tonight is not published: nothing moved
            assert after.watermarks == nights.night0_left.watermarks
        else:
            assert after.digest == nights.night1_left.digest, "neither night 0 nor night 1"
            for table, mark in after.watermarks.items():
                assert mark in (
                    nights.night0_left.watermarks[table],
                    nights.night1_left.watermarks[table],
                ), table

        _run_night_here(nights.night1)  # the night again, by hand
        again = _left(city)
        assert again.digest == nights.night1_left.digest
        assert again.watermarks == nights.night1_left.watermarks
        assert _unaccounted(city) == (set(), set(), 0)
