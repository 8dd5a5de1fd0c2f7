"""Where a night's data-quality results live: the warehouse tables the suites write and the
reports read.

``dq_result`` holds one row per night, department, rule: what was checked, how many rows failed,
masked sample keys and the status (``passed``, ``failed``, ``error``: the check could not run, a
config or data problem the message names; ``not_run``: its input was missing tonight, e.g. the
department's extraction failed). A rule's severity is ``warning`` (reported), ``error`` (flags
the department) or ``blocking`` (also holds its batch out of the golden tables).
``dq_scorecard`` holds one row per night, department and
GB/T 36344 dimension (plus ``overall``). Both are per-night tables: rerunning a night replaces
that night's rows only, in one transaction, so the trend over nights stays intact.

The tables are defined with every other warehouse table in :mod:`store.tables`;
:func:`store.warehouse.engine_for` creates them with the master tables.
"""

from __future__ import annotations

from dataclasses import dataclass

DIMENSIONS = ("规范性", "完整性", "准确性", "一致性", "时效性", "可访问性")
"""GB/T 36344-2018 data-quality dimensions, in the standard's order."""
OVERALL = "overall"
SEVERITIES = ("warning", "error", "blocking")
"""A rule's severity, mildest first."""


@dataclass(frozen=True)
class RuleResult:
    """One row of ``dq_result`` (see the table's column comments)."""

    run_id: str
    department: str
    rule_id: str
    target: str
    column_name: str | None
    kind: str
    dimension: str
    severity: str
    description: str
    fix: str | None
    threshold: float
    rows_checked: int
    rows_failed: int
    sample_keys: tuple[str, ...]  # already masked
    status: str
    held_back: bool
    message: str | None


@dataclass(frozen=True)
class DimensionScore:
    """One row of ``dq_scorecard``."""

    run_id: str
    department: str
    dimension: str
    score: float | None
    rules: int
    grade: str | None
    change: float | None
