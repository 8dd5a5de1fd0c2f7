"""Run one night's quality rules and store the results and scorecards.

:func:`run_quality` judges every department's rules (``config/quality``, see
:mod:`quality.rules`; each rule's class judges it) on the night's inputs
(:mod:`quality.tonight`), in four stages:

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
``dq_result`` (at most :data:`quality.rules.SAMPLE_KEYS` masked sample keys per rule) and
scorecards to ``dq_scorecard`` (:mod:`quality.scorecard`), replacing the night's rows in one
transaction, so a rerun gives the same tables.

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
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa

from etl.config import CityConfig
from quality.results import DimensionScore, RuleResult
from quality.rules import QualityRules, Rule, load_quality_rules
from quality.scorecard import score_department
from quality.tonight import Batch, Tonight
from store.tables import result_table, scorecard_table

__all__ = [
    "PLATFORM_FAILURE",
    "DepartmentQuality",
    "QualityRun",
    "held_departments",
    "platform_failure",
    "run_quality",
]

log = logging.getLogger(__name__)


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
    :func:`quality.tonight.night_date`). ``rules`` defaults to ``config/quality``. Replaces the
    night's ``dq_result`` and ``dq_scorecard`` rows of these departments in one transaction.

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
    night = Tonight.open(city, run_id, as_of)
    try:
        tonight = [r for r in night.ledger if r["run_id"] == run_id]
        if (why := platform_failure(tonight)) is not None:
            log.warning("night %s: %s", run_id, why)
            judged = {r.id: r.not_run(night, why) for r in selected}
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
    night = Tonight.open(city, run_id, None)
    try:
        judged = _judge(night, blocking)
    finally:
        night.engine.dispose()
    return {str(r.table_department) for r in blocking if judged[r.id].held_back}


# --- judging -----------------------------------------------------------------------------------


def _judge(night: Tonight, rules: Sequence[Rule]) -> dict[str, RuleResult]:
    """Each rule's result, judged on its target's inputs (one :class:`Batch` per target)."""
    groups: dict[tuple[str, str], list[Rule]] = {}
    for r in rules:
        key = ("", r.target) if r.golden else (str(r.table_department), r.target)
        groups.setdefault(key, []).append(r)
    out: dict[str, RuleResult] = {}
    for (code, target), group in groups.items():
        if not code:
            batch = Batch.of_golden(night, target, group)
        else:
            dept = night.city.department(code)
            table = next(t for t in dept.tables if t.name == target)
            batch = Batch.of_table(night, dept, table, group)
        out.update({r.id: r.judge(batch) for r in group})
    return out


def _store(
    night: Tonight, chosen: Sequence[str], results: Sequence[RuleResult], *, whole: bool
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
    night: Tonight, code: str, results: Sequence[RuleResult], overall: DimensionScore
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
