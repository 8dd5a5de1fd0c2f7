"""What a night's quality rules read: the extraction ledger, each department table's
standardized batch, the published golden tables and the warehouse.

:class:`Tonight` loads each input once, on first use. :class:`Batch` is one target's share of
it (a department table with its ledger row and batch, or a golden table) and why its rows
cannot be judged tonight, if they cannot; the row rules of one target are validated as one
Great Expectations suite, run when the first of them asks for its result.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from etl.config import CityConfig, DepartmentConfig, TableConfig, night_date
from etl.state import RunState, warehouse_url
from quality.checks import Check, CheckResult, run_checks
from store import layout
from store.tables import metadata
from store.warehouse import engine_for, latest_run

__all__ = [
    "NO_NEW_ROWS",
    "UNPUBLISHED",
    "UNSTANDARDIZED",
    "Batch",
    "Tonight",
    "batch_frame",
    "night_date",
    "not_extracted",
]

EXTRACTION_STATUS: Final = {
    "unreachable": "数据库不可达",
    "drift": "表结构发生变更",
    "failed": "读取失败",
}
UNSTANDARDIZED: Final = "今晚没有标准化结果（标准化失败或未运行），本规则未运行"
UNPUBLISHED: Final = "今晚的主数据尚未发布（或仓库中是其他夜间的数据），本规则未运行"
NO_NEW_ROWS: Final = "今晚没有新增或变更的数据行，本规则未运行"
_KEY: Final = "__key__"


@dataclass
class Tonight:
    """What the rules read: the ledger, tonight's batches (loaded once each) and the warehouse."""

    city: CityConfig
    run_id: str
    as_of: dt.date
    ledger: list[dict[str, Any]]
    engine: sa.Engine
    frames: dict[tuple[str, str], pd.DataFrame | None] = field(default_factory=dict)
    golden: dict[str, pd.DataFrame] = field(default_factory=dict)
    _published: bool | None = None

    @classmethod
    def open(cls, city: CityConfig, run_id: str, as_of: dt.date | None) -> Tonight:
        url = warehouse_url(city)
        with RunState(url, city.var_dir) as state:
            ledger = state.ledger()
        return cls(city, run_id, as_of or night_date(city, run_id), ledger, engine_for(url))

    def entry(self, department: str, table: str) -> dict[str, Any] | None:
        """Tonight's ledger row of one table."""
        for row in self.ledger:
            if (row["run_id"], row["department"], row["table_name"]) == (
                self.run_id,
                department,
                table,
            ):
                return row
        return None

    def frame(self, dept: DepartmentConfig, table: TableConfig) -> pd.DataFrame | None:
        key = (dept.code, table.name)
        if key not in self.frames:
            self.frames[key] = batch_frame(self.city, self.run_id, dept, table)
        return self.frames[key]

    @property
    def published(self) -> bool:
        """The warehouse holds this night (the golden tables are tonight's)."""
        if self._published is None:
            latest = latest_run(self.engine)
            self._published = latest is not None and latest["run_id"] == self.run_id
        return self._published

    def golden_table(self, name: str) -> pd.DataFrame:
        if name not in self.golden:
            table = metadata.tables[name]
            with self.engine.connect() as conn:
                result = conn.execute(sa.select(table))
                self.golden[name] = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        return self.golden[name]


class RowRule(Protocol):
    """A rule Great Expectations judges: it names the column it derives and the check on it."""

    @property
    def id(self) -> str: ...

    def expectation(self, batch: Batch) -> tuple[pd.Series, Check] | None:
        """The values the rule judges and its GX check; None for a rule judged without GX."""


@dataclass
class Batch:
    """One target's inputs tonight: a department table (its ledger row and standardized batch)
    or a golden table. ``missing`` says why its rows cannot be judged ("" when they can)."""

    night: Tonight
    target: str
    rules: Sequence[RowRule]
    department: DepartmentConfig | None = None
    table: TableConfig | None = None
    entry: Mapping[str, Any] | None = None
    frame: pd.DataFrame | None = None
    missing: str = ""
    _results: dict[str, CheckResult] | None = None

    @classmethod
    def of_table(
        cls, night: Tonight, dept: DepartmentConfig, table: TableConfig, rules: Sequence[RowRule]
    ) -> Batch:
        entry = night.entry(dept.code, table.name)
        extracted = entry is not None and entry["status"] == "ok"
        frame = night.frame(dept, table) if extracted else None
        if not extracted:
            missing = f"{not_extracted(entry)}，本规则未运行"
        elif frame is None:
            missing = UNSTANDARDIZED
        elif len(frame) == 0:
            missing = NO_NEW_ROWS
        else:
            missing = ""
        return cls(night, table.name, rules, dept, table, entry, frame, missing)

    @classmethod
    def of_golden(cls, night: Tonight, target: str, rules: Sequence[RowRule]) -> Batch:
        if not night.published:
            return cls(night, target, rules, missing=UNPUBLISHED)
        return cls(night, target, rules, frame=night.golden_table(target))

    @property
    def golden(self) -> bool:
        return self.department is None

    @property
    def keys(self) -> pd.Series:
        """What identifies a row in results: the source key, or a golden table's master ID."""
        assert self.frame is not None
        return self.frame["master_id" if self.golden else "source_key"]

    @property
    def suite(self) -> str:
        return (
            f"golden.{self.target}"
            if self.department is None
            else f"{self.department.code}.{self.target}"
        )

    def checked(self, rule: RowRule) -> CheckResult:
        """``rule``'s result in the target's GX suite (run once, for every row rule of it)."""
        if self._results is None:
            self._results = self._validate()
        return self._results[rule.id]

    def _validate(self) -> dict[str, CheckResult]:
        """The row rules on the frame, as one GX suite: each checks its own derived column."""
        columns: dict[str, Any] = {_KEY: self.keys.to_numpy(dtype=object)}
        checks: list[Check] = []
        for rule in self.rules:
            if (expected := rule.expectation(self)) is not None:
                values, check = expected
                columns[rule.id] = values.to_numpy(dtype=object)
                checks.append(check)
        data = pd.DataFrame(columns)
        outcome = run_checks(data, checks, key_column=_KEY, suite_name=self.suite)
        return {c.rule_id: c for c in outcome}


def not_extracted(entry: Mapping[str, Any] | None) -> str:
    """Why tonight has no batch of a table, from its ledger row."""
    if entry is None:
        return "今晚没有该表的抽取记录（抽取未运行）"
    return f"今晚未能抽取本部门数据（{EXTRACTION_STATUS.get(entry['status'], entry['status'])}）"


def batch_frame(
    city: CityConfig, run_id: str, dept: DepartmentConfig, table: TableConfig
) -> pd.DataFrame | None:
    """Tonight's standardized rows of one source table, its rejected rows included.

    Columns: ``source_key``, ``reasons``, ``updated_at``, every clean field and ``raw_<field>``
    (the department's own text). A rejected row has its raw values (from the rejects file) and
    no clean ones. None when the night has no standardized output for the department.
    """
    folder = layout.canonical_dir(city.var_dir, run_id, dept.code)
    accepted, rejects = folder / f"{table.entity}.parquet", folder / "rejects.parquet"
    if not accepted.exists() and not rejects.exists():  # a file, or the Spark engine's folder
        return None
    parts: list[pd.DataFrame] = []
    if accepted.exists():
        data = pq.read_table(accepted)
        data = data.filter(pc.equal(data["source_table"], table.name))
        parts.append(data.to_pandas())
    if rejects.exists() and (bad := _rejected(rejects, table)).num_rows:
        extra = {
            f"raw_{f}": pc.map_lookup(bad["raw"], col, "first").to_pylist()
            for f, col in table.field_columns.items()
        }
        parts.append(bad.select(["source_key", "reasons"]).to_pandas().assign(**extra))
    if not parts:
        return pd.DataFrame({"source_key": pd.Series(dtype=object)})
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return frame.reset_index(drop=True)


def _rejected(path: Path, table: TableConfig) -> pa.Table:
    data = pq.read_table(path)
    mask = pc.and_(
        pc.equal(data["entity"], table.entity), pc.equal(data["source_table"], table.name)
    )
    return data.filter(mask)
