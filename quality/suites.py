"""Run one night's quality rules and store the results and scorecards.

:func:`run_quality` judges every department's rules (``config/quality``, see
:mod:`quality.rules`) in four stages:

- **batch** — completeness, validity and uniqueness on the department's standardized batch of the
  night (``var/canonical/run=<id>/department=<code>``: accepted rows *and* rejected rows, since
  the department sent both), through GX (:func:`quality.checks.run_checks`), one suite per
  source table;
- **ledger** — freshness, volume and delivery from the extraction ledger (``etl_ledger``);
- **linked** — consistency with the authority (``mdm_conflict`` of the night against the
  department's rows in ``mdm_crosswalk``) and referential rules (a cleaned value looked up in a
  golden table), once the night is published;
- **golden** — rules on the published golden tables, owned by each attribute's authority.

A department whose extraction failed gets ``not_run`` for its batch, freshness, volume and
referential rules and a failed delivery rule; the others are scored as usual. Results go to
``dq_result`` (at most :data:`SAMPLE_KEYS` masked sample keys per rule) and scorecards to
``dq_scorecard`` (:mod:`quality.scorecard`), replacing the night's rows in one transaction, so a
rerun gives the same tables.

A failed ``error`` rule flags its department; a failed ``blocking`` rule also holds its batch
back from the golden tables. :func:`held_departments` answers that question *before*
consolidation, from the blocking batch and ledger rules alone.

>>> night = run_quality(city, "2026-06-30")
>>> night.departments["renshe"].grade, night.departments["renshe"].held_back
('B', False)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import statistics
import zoneinfo
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from etl.config import CityConfig, DepartmentConfig, TableConfig
from etl.standardize import canonical_dir
from etl.state import RunState, warehouse_url
from fields import normalize
from fields.masking import mask_key
from quality.checks import Check, CheckResult, run_checks
from quality.results import DimensionScore, RuleResult, result_table, scorecard_table
from quality.rules import KEY_FIELD, QualityRules, Rule, load_quality_rules
from quality.scorecard import score_department
from store.warehouse import conflict_table, crosswalk_table, engine_for, latest_run

__all__ = [
    "SAMPLE_KEYS",
    "DepartmentQuality",
    "QualityRun",
    "batch_frame",
    "held_departments",
    "run_quality",
]

log = logging.getLogger(__name__)

SAMPLE_KEYS: Final = 20
_KEY = "__key__"
_BEIJING_EPOCH = dt.datetime(1970, 1, 1, 8)  # epoch change stamps are Beijing wall time
_EXTRACTION_STATUS = {
    "unreachable": "数据库不可达",
    "drift": "表结构发生变更",
    "failed": "读取失败",
}
_FREQUENCY = {"daily": "每日", "weekly": "每周", "monthly": "每月"}


@dataclass(frozen=True)
class DepartmentQuality:
    """One department's night in one line: score, grade and what needs attention."""

    department: str
    score: float | None
    grade: str | None
    change: float | None
    failed: Mapping[str, int]
    """Failed rules by severity (warning, error, blocking)."""
    not_run: int
    errors: int
    """Rules that could not run (a configuration or data problem: see their message)."""
    delivered: bool
    """Every table of the department was extracted tonight."""
    flagged: bool
    """An error-level or blocking rule failed."""
    held_back: bool
    """A blocking rule failed: the batch stays out of the golden tables."""


@dataclass(frozen=True)
class QualityRun:
    """A night's quality results, scorecards and per-department summary."""

    run_id: str
    as_of: dt.date
    results: tuple[RuleResult, ...]
    scorecard: tuple[DimensionScore, ...]
    departments: Mapping[str, DepartmentQuality]

    def result(self, rule_id: str) -> RuleResult:
        """The result of one rule."""
        for r in self.results:
            if r.rule_id == rule_id:
                return r
        raise KeyError(rule_id)

    def scores(self, department: str) -> dict[str, float | None]:
        """Dimension (and ``overall``) → score of one department."""
        return {s.dimension: s.score for s in self.scorecard if s.department == department}


# --- the night's inputs ---------------------------------------------------------------------------


@dataclass
class _Night:
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
    def open(cls, city: CityConfig, run_id: str, as_of: dt.date | None) -> _Night:
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
            table = sa.Table(name, sa.MetaData(), autoload_with=self.engine)
            with self.engine.connect() as conn:
                result = conn.execute(sa.select(table))
                self.golden[name] = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        return self.golden[name]


def night_date(city: CityConfig, run_id: str) -> dt.date:
    """The day a night's data describes: the ``YYYY-MM-DD`` in its run ID (the default run IDs
    and Airflow's ``scheduled__<date>…`` carry one), else today in the city's time zone.

    >>> night_date(city, "2026-07-01")
    datetime.date(2026, 7, 1)
    """
    if m := re.search(r"\d{4}-\d{2}-\d{2}", run_id):
        try:
            return dt.date.fromisoformat(m.group(0))
        except ValueError:
            pass
    return dt.datetime.now(zoneinfo.ZoneInfo(city.timezone)).date()


def batch_frame(
    city: CityConfig, run_id: str, dept: DepartmentConfig, table: TableConfig
) -> pd.DataFrame | None:
    """Tonight's standardized rows of one source table, its rejected rows included.

    Columns: ``source_key``, ``reasons``, ``updated_at``, every clean field and ``raw_<field>``
    (the department's own text). A rejected row has its raw values (from the rejects file) and
    no clean ones. None when the night has no standardized output for the department.
    """
    folder = canonical_dir(city.var_dir, run_id, dept.code)
    accepted, rejects = folder / f"{table.entity}.parquet", folder / "rejects.parquet"
    if not accepted.is_file() and not rejects.is_file():
        return None
    parts: list[pd.DataFrame] = []
    if accepted.is_file():
        data = pq.read_table(accepted)
        data = data.filter(pc.equal(data["source_table"], table.name))
        parts.append(data.to_pandas())
    if rejects.is_file():
        data = pq.read_table(rejects)
        mask = pc.and_(
            pc.equal(data["entity"], table.entity), pc.equal(data["source_table"], table.name)
        )
        bad = data.filter(mask)
        if bad.num_rows:
            extra = {
                f"raw_{f}": pc.map_lookup(bad["raw"], col, "first").to_pylist()
                for f, col in table.field_columns.items()
            }
            parts.append(bad.select(["source_key", "reasons"]).to_pandas().assign(**extra))
    if not parts:
        return pd.DataFrame({"source_key": pd.Series(dtype=object)})
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return frame.reset_index(drop=True)


# --- public entry points ----------------------------------------------------------------------


def run_quality(
    city: CityConfig,
    run_id: str,
    *,
    departments: Iterable[str] | None = None,
    as_of: dt.date | None = None,
    rules: QualityRules | None = None,
) -> QualityRun:
    """Judge the night's rules for every department (or those named) and store the results.

    ``as_of`` is the day the night's data describes (freshness is measured at its end; default
    :func:`night_date`). ``rules`` defaults to ``config/quality``. Replaces the night's
    ``dq_result`` and ``dq_scorecard`` rows of these departments in one transaction.

    >>> run = run_quality(city, "2026-06-30", departments=["weijian"])
    >>> run.result("WJ-V01").rows_failed
    20
    """
    rules = rules if rules is not None else load_quality_rules(city)
    known = [d.code for d in city.departments]
    chosen = list(departments) if departments is not None else known
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise ValueError(f"unknown department(s) {unknown}; configured: {', '.join(known)}")
    # by department in config order; each department's own rules, then its golden rules
    order = {code: i for i, code in enumerate(known)}
    selected = sorted(
        (r for r in rules if r.department in chosen),
        key=lambda r: (order[r.department], r.golden),
    )
    night = _Night.open(city, run_id, as_of)
    try:
        tonight = [r for r in night.ledger if r["run_id"] == run_id]
        if (why := platform_failure(tonight)) is not None:
            log.warning("night %s: %s", run_id, why)
            judged = {r.id: _not_run(night, r, why) for r in selected}
        else:
            judged = _judge(night, selected)
        results = tuple(judged[r.id] for r in selected)
        scorecard, summary = _store(night, chosen, results, whole=departments is None)
    finally:
        night.engine.dispose()
    return QualityRun(run_id, night.as_of, results, tuple(scorecard), summary)


PLATFORM_FAILURE: Final = (
    "平台故障：今晚没有任何部门的数据被抽取（数据中心网络、调度或仓库故障），本晚不评分，"
    "不计入任何部门"
)


def platform_failure(ledger: Sequence[Mapping[str, Any]]) -> str | None:
    """Why a night is the platform's failure and nobody's score (every table it tried to
    extract failed), or None. ``ledger``: the night's ledger rows (none: a replay, or rules
    judged without extraction — not a failure)."""
    if not ledger or any(r["status"] == "ok" for r in ledger):
        return None
    failed = sorted({r["department"] for r in ledger})
    return PLATFORM_FAILURE + f"（抽取记录：{'、'.join(failed)} 均失败）"


def held_departments(
    city: CityConfig, run_id: str, *, rules: QualityRules | None = None
) -> set[str]:
    """The departments whose batch of night ``run_id`` a blocking rule holds back.

    Call it after standardization and *before* consolidation: it judges only the blocking
    batch and ledger rules (nothing is stored; :func:`run_quality` judges them again, with the
    same verdict, and records it). A department whose extraction failed has no batch to hold.

    >>> held_departments(city, "2026-07-01")
    set()
    """
    rules = rules if rules is not None else load_quality_rules(city, every_department=False)
    blocking = [r for r in rules if r.blocking and r.stage in ("batch", "ledger")]
    night = _Night.open(city, run_id, None)
    try:
        judged = _judge(night, blocking)
    finally:
        night.engine.dispose()
    return {str(r.table_department) for r in blocking if judged[r.id].held_back}


# --- judging -----------------------------------------------------------------------------------


def _judge(night: _Night, rules: Sequence[Rule]) -> dict[str, RuleResult]:
    out: dict[str, RuleResult] = {}
    groups: dict[tuple[str, str], list[Rule]] = {}
    for r in rules:
        key = ("", r.target) if r.golden else (str(r.table_department), r.target)
        groups.setdefault(key, []).append(r)
    for (code, target), group in groups.items():
        if not code:
            out.update(_golden(night, target, group))
        else:
            dept = night.city.department(code)
            table = next(t for t in dept.tables if t.name == target)
            out.update(_source_table(night, dept, table, group))
    return out


def _source_table(
    night: _Night, dept: DepartmentConfig, table: TableConfig, rules: Sequence[Rule]
) -> dict[str, RuleResult]:
    """Every rule on one department table: batch, ledger and linked stages."""
    out: dict[str, RuleResult] = {}
    entry = night.entry(dept.code, table.name)
    extracted = entry is not None and entry["status"] == "ok"
    frame = night.frame(dept, table) if extracted else None
    if not extracted:
        missing = f"{_not_extracted(entry)}，本规则未运行"
    elif frame is None:
        missing = UNSTANDARDIZED
    elif len(frame) == 0:
        missing = "今晚没有新增或变更的数据行，本规则未运行"
    else:
        missing = ""
    batch = [r for r in rules if r.stage == "batch"]
    referential = [r for r in rules if r.kind == "referential"]
    if missing:
        out.update({r.id: _not_run(night, r, missing) for r in (*batch, *referential)})
    else:
        assert frame is not None
        suite = f"{dept.code}.{table.name}"
        out.update(_checked(night, batch, frame, frame["source_key"], suite))
        if referential and not night.published:
            out.update({r.id: _not_run(night, r, _UNPUBLISHED) for r in referential})
        elif referential:
            linked = f"{suite}.linked"
            out.update(_checked(night, referential, frame, frame["source_key"], linked))
    for r in rules:
        if r.check == "encoding":
            out[r.id] = _encoding(night, r, frame) if not missing else _not_run(night, r, missing)
        elif r.kind == "delivery":
            out[r.id] = _delivery(night, r, entry)
        elif r.kind == "freshness":
            out[r.id] = _freshness(night, r, table, dept, entry, frame)
        elif r.kind == "volume":
            out[r.id] = _volume(night, r, entry)
        elif r.kind == "consistency":
            out[r.id] = (
                _consistency(night, r) if night.published else _not_run(night, r, _UNPUBLISHED)
            )
    return out


def _not_extracted(entry: Mapping[str, Any] | None) -> str:
    """Why tonight has no batch of a table, from its ledger row."""
    if entry is None:
        return "今晚没有该表的抽取记录（抽取未运行）"
    return f"今晚未能抽取本部门数据（{_EXTRACTION_STATUS.get(entry['status'], entry['status'])}）"


UNSTANDARDIZED: Final = "今晚没有标准化结果（标准化失败或未运行），本规则未运行"
_UNPUBLISHED = "今晚的主数据尚未发布（或仓库中是其他夜间的数据），本规则未运行"


def _golden(night: _Night, target: str, rules: Sequence[Rule]) -> dict[str, RuleResult]:
    if not night.published:
        return {r.id: _not_run(night, r, _UNPUBLISHED) for r in rules}
    frame = night.golden_table(target)
    return _checked(night, rules, frame, frame["master_id"], f"golden.{target}")


# --- row rules through GX ----------------------------------------------------------------------


def _checked(
    night: _Night,
    rules: Sequence[Rule],
    frame: pd.DataFrame,
    keys: pd.Series,
    suite: str,
) -> dict[str, RuleResult]:
    """Row rules on one frame, as one GX suite: each rule checks its own derived column."""
    columns: dict[str, Any] = {_KEY: keys.to_numpy(dtype=object)}
    checks: list[Check] = []
    for r in rules:
        values, check = _as_check(night, r, frame)
        columns[r.id] = values.to_numpy(dtype=object)
        checks.append(check)
    data = pd.DataFrame(columns)
    outcome = run_checks(data, checks, key_column=_KEY, suite_name=suite)
    return {r.id: _from_check(night, r, c) for r, c in zip(rules, outcome, strict=True)}


def _as_check(night: _Night, rule: Rule, frame: pd.DataFrame) -> tuple[pd.Series, Check]:
    """The column a rule judges, and its GX check.

    Completeness and validity read the department's raw text (surrounding whitespace ignored:
    CHAR columns pad with it); uniqueness and referential rules the cleaned value; golden rules
    the golden column.
    """
    meta = {
        "department": rule.department,
        "dimension": rule.dimension,
        "severity": rule.severity,
        "description_zh": rule.description,
        "target": rule.target,
    }

    def check(kind: str, **params: Any) -> Check:
        return Check(rule.id, kind, rule.id, params, rule.threshold, meta)

    fld = str(rule.field)
    if rule.golden:
        value = _column(frame, fld)
    elif rule.kind in ("completeness", "validity"):
        value = _column(frame, f"raw_{fld}").map(_strip)
    elif rule.field == KEY_FIELD:
        value = frame["source_key"]
    else:
        value = _column(frame, fld)

    if rule.kind == "completeness":
        filled = value if rule.golden else _map_distinct(value, _filled)
        return filled, check("not_null")
    if rule.kind == "uniqueness":
        return value, check("unique")
    if rule.kind == "referential":
        assert rule.references is not None
        ref_table, ref_column = rule.references
        known = set(night.golden_table(ref_table)[ref_column].dropna())
        found = value.map(lambda v: None if _empty(v) else v in known)
        return found, check("in_set", value_set=[True])
    # validity
    if rule.reasons is not None:
        codes = {f"{fld}:{code}" for code in rule.reasons}
        filled = _map_distinct(value, _filled)
        flags = [
            None if v is None else bool(codes.intersection(rs if rs is not None else ()))
            for v, rs in zip(filled, frame["reasons"], strict=True)
        ]
        return pd.Series(flags, dtype=object), check("in_set", value_set=[False])
    if rule.chars is not None:
        start, end = rule.chars
        value = value.map(lambda v: v[start:end] if isinstance(v, str) else v)
    if rule.validator is not None:
        return value, check("valid", validator=rule.validator)
    if rule.values is not None:
        return value, check("in_set", value_set=list(rule.values))
    assert rule.pattern is not None
    return value, check("regex", regex=rule.pattern)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name in frame.columns:
        return frame[name]
    return pd.Series([None] * len(frame), dtype=object)


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def _empty(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT


def _filled(value: object) -> object:
    """The value if the department filled it, None when blank or a placeholder (NULL, 无, -)."""
    return value if not _empty(value) and normalize.text(value).ok else None


def _map_distinct(series: pd.Series, fn: Callable[[object], object]) -> pd.Series:
    """``series.map(fn)``, calling ``fn`` once per distinct value."""
    cache: dict[object, object] = {}

    def once(v: object) -> object:
        if _empty(v):
            return None
        if v not in cache:
            cache[v] = fn(v)
        return cache[v]

    return pd.Series([once(v) for v in series], dtype=object)


def _from_check(night: _Night, rule: Rule, c: CheckResult) -> RuleResult:
    if c.error:
        return _result(night, rule, "error", 0, 0, (), c.error)
    status = "passed" if c.success else "failed"
    if c.rows_checked:
        share = 1 - c.rows_failed / c.rows_checked
        message = (
            f"检查 {c.rows_checked:,} 行，{c.rows_failed:,} 行不通过"
            f"（通过率 {share:.2%}，要求不低于 {rule.threshold:.0%}）"
        )
    else:
        message = "没有可检查的值（该字段今晚全部为空）"
    return _result(night, rule, status, c.rows_checked, c.rows_failed, c.failed_keys, message)


# --- ledger rules ------------------------------------------------------------------------------


def _delivery(night: _Night, rule: Rule, entry: Mapping[str, Any] | None) -> RuleResult:
    if rule.check == "deletions":
        return _deletions(night, rule, entry)
    if rule.check == "schema":
        if entry is None:
            return _not_run(night, rule, "今晚没有该表的抽取记录，表结构未能检查")
        if entry["status"] == "drift":
            return _result(night, rule, "failed", 1, 1, (), f"表结构发生变更：{entry['message']}")
        if entry["status"] != "ok":
            why = _EXTRACTION_STATUS.get(entry["status"], entry["status"])
            return _not_run(night, rule, f"{why}，表结构未能检查")
        return _result(night, rule, "passed", 1, 0, (), "表结构与约定一致")
    if entry is None or entry["status"] != "ok":
        first = (entry["message"] or "").splitlines()[0] if entry and entry["message"] else ""
        message = f"{_not_extracted(entry)}：{first}" if first else _not_extracted(entry)
        return _result(night, rule, "failed", 1, 1, (), message)
    return _result(
        night, rule, "passed", 1, 0, (), f"今晚已抽取 {entry['rows_read']:,} 行（{entry['mode']}）"
    )


def _encoding(night: _Night, rule: Rule, frame: pd.DataFrame | None) -> RuleResult:
    """The built-in rule on values that are not UTF-8: which rows, which columns."""
    assert frame is not None
    columns: Counter[str] = Counter()
    keys = []
    for key, reasons in zip(frame["source_key"], frame["reasons"], strict=True):
        bad = [
            c.rpartition(":")[0]
            for c in (reasons if reasons is not None else ())
            if c.endswith(":invalid_encoding")
        ]
        if bad:
            keys.append(str(key))
            columns.update(bad)
    if not keys:
        return _result(
            night, rule, "passed", len(frame), 0, (), f"检查 {len(frame):,} 行，未发现乱码"
        )
    where = "，".join(f"列 {c} {n} 行" for c, n in columns.most_common())
    message = (
        f"检查 {len(frame):,} 行，{len(keys):,} 行含乱码（{where}），这些行已拒收，其余数据照常处理"
    )
    return _result(night, rule, "failed", len(frame), len(keys), tuple(keys), message)


def _deletions(night: _Night, rule: Rule, entry: Mapping[str, Any] | None) -> RuleResult:
    """The built-in mass-deletion rule (:func:`quality.rules.deletion_rules`)."""
    if entry is None or entry["status"] != "ok":
        return _not_run(night, rule, f"{_not_extracted(entry)}，无法判断删除量")
    gone, before = entry.get("rows_deleted"), entry.get("keys_before")
    if gone is None or not before:
        return _result(night, rule, "passed", 1, 0, (), "今晚未核对删除（未做主键比对或首次抽取）")
    share = gone / before
    scale = "整表被清空" if gone == before else f"占 {share:.1%}"
    said = f"今晚发现 {gone:,} 行在源表中被删除（此前共 {before:,} 行，{scale}"
    guard = entry.get("deletion_guard")
    if guard == "held":
        message = (
            f"{said}，超过允许的 {rule.threshold:.0%}）。本批数据已暂扣，基础库保留上一晚的"
            "数据；数据工程团队已收到提醒，核实后方可放行"
        )
        return _result(night, rule, "failed", 1, 1, (), message)
    if guard == "accepted":
        return _result(night, rule, "passed", 1, 0, (), f"{said}），已由数据工程团队确认放行")
    return _result(
        night, rule, "passed", 1, 0, (), f"{said}），未超过允许的 {rule.threshold:.0%}）"
    )


def _freshness(
    night: _Night,
    rule: Rule,
    table: TableConfig,
    dept: DepartmentConfig,
    entry: Mapping[str, Any] | None,
    frame: pd.DataFrame | None,
) -> RuleResult:
    if entry is None or entry["status"] != "ok":
        return _not_run(night, rule, f"{_not_extracted(entry)}，无法判断数据时效")
    stamps = [_change_stamp(entry["watermark_after"], table, night.city.timezone)]
    if frame is not None and "updated_at" in frame.columns and frame["updated_at"].notna().any():
        stamps.append(pd.Timestamp(frame["updated_at"].max()).to_pydatetime())
    newest = max((s for s in stamps if s is not None), default=None)
    promise = f"承诺{_FREQUENCY[dept.update_frequency]}更新，允许 {rule.threshold:g} 天"
    if newest is None:
        return _result(night, rule, "failed", 1, 1, (), f"没有可用的变更时间（{promise}）")
    end_of_day = dt.datetime.combine(night.as_of + dt.timedelta(days=1), dt.time())
    age = (end_of_day - newest).total_seconds() / 86400
    ok = age <= rule.threshold
    message = (
        f"最新变更时间 {newest:%Y-%m-%d %H:%M}，距 {night.as_of} 日终 {age:.1f} 天（{promise}）"
    )
    return _result(night, rule, "passed" if ok else "failed", 1, 0 if ok else 1, (), message)


def _change_stamp(text: str | None, table: TableConfig, timezone: str) -> dt.datetime | None:
    """A ledger watermark as naive local time, read the way the table's change column is."""
    if not text:
        return None
    try:
        if table.change_kind == "epoch_seconds":
            return _BEIJING_EPOCH + dt.timedelta(seconds=float(text))
        if table.change_kind == "string" and table.change_format:
            return dt.datetime.strptime(text, table.change_format)
        stamp = dt.datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        return None
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(zoneinfo.ZoneInfo(timezone)).replace(tzinfo=None)
    return stamp


def _volume(night: _Night, rule: Rule, entry: Mapping[str, Any] | None) -> RuleResult:
    if entry is None or entry["status"] != "ok":
        return _not_run(night, rule, f"{_not_extracted(entry)}，无法比较数据量")
    earlier = sorted(
        (
            r
            for r in night.ledger
            if r["department"] == entry["department"]
            and r["table_name"] == entry["table_name"]
            and r["status"] == "ok"
            and r["mode"] == entry["mode"]
            and r["run_id"] < night.run_id
        ),
        key=lambda r: r["run_id"],
    )[-rule.window :]
    if not earlier:
        return _not_run(
            night, rule, f"没有可比较的历史批次（此前没有{_MODE[entry['mode']]}的夜间）"
        )
    tonight = int(entry["rows_read"])
    baseline = statistics.median(int(r["rows_read"]) for r in earlier)
    change = abs(tonight - baseline) / baseline if baseline else (0.0 if tonight == 0 else math.inf)
    ok = change <= rule.threshold
    message = (
        f"今晚{_MODE[entry['mode']]}读取 {tonight:,} 行，此前 {len(earlier)} 晚中位数 "
        f"{baseline:,.0f} 行，变化 {change:.0%}（允许不超过 {rule.threshold:.0%}）"
    )
    return _result(night, rule, "passed" if ok else "failed", 1, 0 if ok else 1, (), message)


_MODE = {"full": "全量抽取", "incremental": "增量抽取"}


# --- linked rules ------------------------------------------------------------------------------


def _consistency(night: _Night, rule: Rule) -> RuleResult:
    """The department's linked rows whose value contradicts the authority's golden value."""
    dept = str(rule.table_department)
    x, c = crosswalk_table.c, conflict_table.c
    where = [c.run_id == night.run_id, c.department == dept, c.source_table == rule.target]
    if rule.attributes:
        where.append(c.attribute.in_(rule.attributes))
    with night.engine.connect() as conn:
        checked = conn.execute(
            sa.select(sa.func.count()).where(x.department == dept, x.source_table == rule.target)
        ).scalar_one()
        rows = conn.execute(sa.select(c.source_key, c.attribute).where(*where)).all()
    keys = sorted({r.source_key for r in rows})
    by_attribute = Counter(r.attribute for r in rows)
    status = "passed" if not checked or 1 - len(keys) / checked >= rule.threshold else "failed"
    detail = "，".join(f"{a} {n}" for a, n in by_attribute.most_common()) or "无"
    message = (
        f"{checked:,} 条已关联记录中 {len(keys):,} 条与权威部门不一致（按属性：{detail}）"
        f"；要求一致率不低于 {rule.threshold:.0%}"
    )
    return _result(night, rule, status, int(checked), len(keys), tuple(keys), message)


# --- results -----------------------------------------------------------------------------------


def _not_run(night: _Night, rule: Rule, message: str) -> RuleResult:
    return _result(night, rule, "not_run", 0, 0, (), message)


def _result(
    night: _Night,
    rule: Rule,
    status: str,
    checked: int,
    failed: int,
    keys: Sequence[str],
    message: str | None,
) -> RuleResult:
    return RuleResult(
        run_id=night.run_id,
        department=rule.department,
        rule_id=rule.id,
        target=rule.target,
        column_name=rule.column,
        kind=rule.kind,
        dimension=rule.dimension,
        severity=rule.severity,
        description=rule.description,
        fix=rule.fix,
        threshold=rule.threshold,
        rows_checked=checked,
        rows_failed=failed,
        sample_keys=tuple(mask_key(k) for k in keys[:SAMPLE_KEYS]),
        status=status,
        held_back=status == "failed" and rule.blocking and rule.stage in ("batch", "ledger"),
        message=message,
    )


def _store(
    night: _Night, chosen: Sequence[str], results: Sequence[RuleResult], *, whole: bool
) -> tuple[list[DimensionScore], dict[str, DepartmentQuality]]:
    """Score each department and replace the night's rows of them, in one transaction."""
    r, s = result_table.c, scorecard_table.c
    scorecard: list[DimensionScore] = []
    summary: dict[str, DepartmentQuality] = {}
    with night.engine.begin() as conn:
        for code in chosen:
            previous = _previous_scores(conn, night.run_id, code)
            rows = score_department(night.run_id, code, results, previous)
            scorecard += rows
            summary[code] = _summary(night, code, results, rows[-1])
        scope = [] if whole else [r.department.in_(chosen)]
        conn.execute(result_table.delete().where(r.run_id == night.run_id, *scope))
        scope = [] if whole else [s.department.in_(chosen)]
        conn.execute(scorecard_table.delete().where(s.run_id == night.run_id, *scope))
        if results:
            conn.execute(result_table.insert(), [_row(x) for x in results])
        if scorecard:
            conn.execute(scorecard_table.insert(), [vars(x) for x in scorecard])
    return scorecard, summary


def _row(result: RuleResult) -> dict[str, Any]:
    row = dict(vars(result))
    row["sample_keys"] = json.dumps(list(result.sample_keys), ensure_ascii=False)
    return row


def _previous_scores(conn: sa.Connection, run_id: str, department: str) -> dict[str, float | None]:
    """The scores of the department's latest scored night before ``run_id`` (by run ID)."""
    s = scorecard_table.c
    before = conn.execute(
        sa.select(sa.func.max(s.run_id)).where(s.department == department, s.run_id < run_id)
    ).scalar()
    if before is None:
        return {}
    rows = conn.execute(
        sa.select(s.dimension, s.score).where(s.department == department, s.run_id == before)
    ).all()
    return {row.dimension: row.score for row in rows}


def _summary(
    night: _Night, code: str, results: Sequence[RuleResult], overall: DimensionScore
) -> DepartmentQuality:
    mine = [x for x in results if x.department == code]
    failed = Counter(x.severity for x in mine if x.status == "failed")
    dept = night.city.department(code)
    delivered = all(
        (e := night.entry(code, t.name)) is not None and e["status"] == "ok" for t in dept.tables
    )
    return DepartmentQuality(
        department=code,
        score=overall.score,
        grade=overall.grade,
        change=overall.change,
        failed={sev: failed.get(sev, 0) for sev in ("warning", "error", "blocking")},
        not_run=sum(x.status == "not_run" for x in mine),
        errors=sum(x.status == "error" for x in mine),
        delivered=delivered,
        flagged=failed.get("error", 0) + failed.get("blocking", 0) > 0,
        held_back=any(x.held_back for x in mine),
    )
