"""The context of one night: which city, which night, where its files go, which engine runs it.

A :class:`Night` is built once — by a ``govmdm`` command from its options, by the DAG's tasks
from the plan — and handed to every stage function of :mod:`pipeline.night`.

>>> night = Night.at("config", dt.datetime(2026, 7, 1, 18, 0, tzinfo=dt.UTC))
>>> night.run_id, night.record_dir
('2026-07-02', PosixPath('var/nights/run=2026-07-02'))
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import zoneinfo
from pathlib import Path
from typing import get_args

from etl.config import CityConfig, ConfigError, Engine, load_city_config
from etl.state import warehouse_url
from store import layout

__all__ = [
    "CONFIG_ENV",
    "ENGINES",
    "ConfigError",
    "DepartmentFlagged",
    "Engine",
    "Night",
    "NightRefused",
    "check_run_id",
    "config_dir",
    "load_city",
    "run_id_for",
]

CONFIG_ENV = "GOVMDM_CONFIG"
"""Environment variable naming the configuration folder (default: the project's ``config/``)."""
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")  # the run IDs extraction accepts

ENGINES: tuple[Engine, ...] = get_args(Engine)
"""The engines that can run the stages: ``local`` (pandas, numpy and Arrow in this process) and
``spark`` (the same kernels inside Apache Spark, :mod:`spark`)."""


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


def config_dir(default: str | Path = "config") -> Path:
    """The configuration folder: ``$GOVMDM_CONFIG`` if set, else ``default``.

    >>> config_dir("/opt/govmdm/config")
    PosixPath('/opt/govmdm/config')
    """
    return Path(os.environ.get(CONFIG_ENV, "").strip() or default)


def load_city(config: str | Path) -> CityConfig:
    """The city configured in ``config``, loaded the way a night loads it: a broken department
    file flags that department (:attr:`CityConfig.broken`); a broken city file raises
    :class:`ConfigError`."""
    return load_city_config(config, tolerant=True)


def run_id_for(when: dt.datetime, timezone: str) -> str:
    """The night's run ID: the date of ``when`` in the city's time zone.

    >>> run_id_for(dt.datetime(2026, 7, 1, 18, 0, tzinfo=dt.UTC), "Asia/Shanghai")
    '2026-07-02'
    """
    if when.tzinfo is None:
        raise ValueError(f"{when!r} has no time zone: pass an aware datetime")
    return when.astimezone(zoneinfo.ZoneInfo(timezone)).date().isoformat()


def check_run_id(run_id: str) -> str:
    """``run_id`` if it can name the night's folders, else :class:`ValueError`."""
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise ValueError(
            f"run ID {run_id!r} is not allowed: use letters, digits and _ . : + - (e.g. 2026-07-01)"
        )
    return run_id


@dataclasses.dataclass(frozen=True)
class Night:
    """One night of one city: its configuration, run ID, paths and engine (``city.yaml``'s
    ``engine`` unless the night was opened with another)."""

    city: CityConfig
    config: Path
    run_id: str
    engine: Engine = "local"

    @classmethod
    def open(cls, config: str | Path, run_id: str, engine: Engine | None = None) -> Night:
        """Night ``run_id`` of the city configured in ``config`` (loaded tolerantly: a broken
        department file flags that department, :attr:`CityConfig.broken`)."""
        return cls.of(load_city(config), config, run_id, engine)

    @classmethod
    def at(cls, config: str | Path, when: dt.datetime) -> Night:
        """The night that runs at ``when``: its run ID is that date in the city's time zone."""
        city = load_city(config)
        return cls.of(city, config, run_id_for(when, city.timezone))

    @classmethod
    def of(
        cls,
        city: CityConfig,
        config: str | Path,
        run_id: str | None = None,
        engine: Engine | None = None,
    ) -> Night:
        """Night ``run_id`` (default: today in the city's time zone) of a city already loaded,
        run by ``engine`` (default: the city's ``engine``)."""
        if run_id is None:
            run_id = run_id_for(dt.datetime.now(dt.UTC), city.timezone)
        engine = engine or city.engine
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} is not known: use one of {', '.join(ENGINES)}")
        return cls(city=city, config=Path(config), run_id=check_run_id(run_id), engine=engine)

    @property
    def var_dir(self) -> Path:
        """The city's data folder (``var/``)."""
        return self.city.var_dir

    @property
    def record_dir(self) -> Path:
        """Where the night's record lives: ``<var>/nights/run=<id>/``."""
        return layout.night_dir(self.var_dir, self.run_id)

    @property
    def raw_root(self) -> Path:
        """The night's raw Parquet: ``<var>/raw/run=<id>/``."""
        return layout.raw_run_dir(self.var_dir, self.run_id)

    @property
    def warehouse_url(self) -> str:
        """The warehouse the night publishes to."""
        return warehouse_url(self.city)
