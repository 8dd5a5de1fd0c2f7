"""Where a night's data-quality results live: the warehouse tables the suites write and the
reports read.

``dq_result`` holds one row per night, department, rule: what was checked, how many rows failed,
masked sample keys and the status. ``dq_scorecard`` holds one row per night, department and
GB/T 36344 dimension (plus ``overall``). Both are per-night tables: rerunning a night replaces
that night's rows only, in one transaction, so the trend over nights stays intact.

The tables share the warehouse's SQLAlchemy metadata, so :func:`store.warehouse.engine_for`
creates them with the master tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from store.warehouse import metadata

DIMENSIONS = ("规范性", "完整性", "准确性", "一致性", "时效性", "可访问性")
"""GB/T 36344-2018 data-quality dimensions, in the standard's order."""
SEVERITIES = ("warning", "error", "blocking")
"""``warning``: reported; ``error``: flags the department; ``blocking``: also holds its batch
out of the golden tables."""
STATUSES = ("passed", "failed", "error", "not_run")
"""``error``: the check could not run (config or data problem, message says which);
``not_run``: its input was missing tonight (e.g. the department's extraction failed)."""
OVERALL = "overall"

_run = sa.String(64)
_name = sa.String(128)

result_table = sa.Table(
    "dq_result",
    metadata,
    sa.Column("run_id", _run, primary_key=True),
    sa.Column("department", _name, primary_key=True, comment="the department that owns the rule"),
    sa.Column("rule_id", sa.String(64), primary_key=True),
    sa.Column("target", _name, nullable=False, comment="source table, or golden table"),
    sa.Column("column_name", _name, comment="the checked column, if any"),
    sa.Column("kind", sa.String(32), nullable=False, comment="completeness, validity, ..."),
    sa.Column("dimension", sa.String(8), nullable=False, comment="GB/T 36344 dimension"),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("description", sa.Text, nullable=False, comment="the rule, in Chinese"),
    sa.Column("fix", sa.Text, comment="how the department fixes it, in Chinese"),
    sa.Column("threshold", sa.Float, nullable=False, comment="minimum share of rows passing"),
    sa.Column("rows_checked", sa.Integer, nullable=False),
    sa.Column("rows_failed", sa.Integer, nullable=False),
    sa.Column("sample_keys", sa.Text, nullable=False, comment="JSON list of masked source keys"),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("held_back", sa.Boolean, nullable=False, comment="blocking failure: batch held"),
    sa.Column("message", sa.Text, comment="why it could not run, or what was observed"),
    comment="one night's data-quality results, per department and rule",
)

scorecard_table = sa.Table(
    "dq_scorecard",
    metadata,
    sa.Column("run_id", _run, primary_key=True),
    sa.Column("department", _name, primary_key=True),
    sa.Column("dimension", sa.String(8), primary_key=True, comment="a dimension, or 'overall'"),
    sa.Column("score", sa.Float, comment="0-100; NULL: no rule covers this dimension"),
    sa.Column("rules", sa.Integer, nullable=False, comment="rules that scored it"),
    sa.Column("grade", sa.String(2), comment="A/B/C/D (overall row only)"),
    sa.Column("change", sa.Float, comment="score minus the previous night's, if any"),
    comment="per department and night: a score per GB/T 36344 dimension and overall",
)


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
