"""Department scorecards: a 0–100 score per GB/T 36344 dimension and overall, a grade, a trend.

How a night is scored
---------------------
**Rule score.** Each rule that ran and judged at least one row scores 0–100::

    pass rate   p = 1 − rows_failed / rows_checked
    rule score    = 100 × min(1, p / threshold)

A rule that meets its threshold scores 100. Below it, the score falls in proportion to the
shortfall: ``p / threshold`` is the share of the promised pass rate actually delivered, so a
rule promising 99 % that delivers 89.1 % scores 90, and a rule promising 100 % scores its pass
rate. Rules judged once per table (freshness, volume, delivery) score 100 when they pass and 0
when they fail (their threshold is days or a relative change, not a share of rows).

Rules that could not run (``error``: a configuration or data problem the message names), whose
input was missing tonight (``not_run``: the extraction failed, the night is not published) or
that judged no row at all (every value empty) are listed in the results but not scored.

**Dimension score** = the severity-weighted mean of the scores of the dimension's rules, with
weights ``warning`` 1, ``error`` 2, ``blocking`` 4: a department's most important rules move
its score most. A dimension no scored rule covers is ``None`` ("not covered") — never 100,
because no evidence is not good evidence.

**Overall score** = the plain mean of the covered dimensions: each dimension counts once however
many rules cover it, so many easy rules in one dimension cannot hide a poor one elsewhere.
``None`` when no dimension is covered (nothing of the department could be checked tonight).

**Grade** (overall only): A ≥ 95, B ≥ 85, C ≥ 70, D below; an error-level rule that failed caps
the grade at B (an A means no open error), and a batch held back by a failed blocking rule is
graded D whatever its score.

**Change** = tonight's score minus the previous night's, per dimension and overall (the previous
night is the latest earlier run ID with a scorecard for the department); ``None`` when either
score is ``None``.

>>> scores = score_department("2026-07-01", "renshe", results)
>>> [(s.dimension, s.score) for s in scores][-1]
('overall', 91.2)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from quality.results import DIMENSIONS, OVERALL, DimensionScore, RuleResult
from quality.rules import TABLE_LEVEL

__all__ = [
    "GRADES",
    "SEVERITY_WEIGHTS",
    "grade",
    "rule_score",
    "score_department",
]

SEVERITY_WEIGHTS: Final[Mapping[str, float]] = {"warning": 1.0, "error": 2.0, "blocking": 4.0}
GRADES: Final[tuple[tuple[float, str], ...]] = ((95.0, "A"), (85.0, "B"), (70.0, "C"))
_SCORED = ("passed", "failed")


def rule_score(result: RuleResult) -> float | None:
    """A rule's score tonight, or None when it does not score (see the module doc).

    >>> rule_score(replace(r, threshold=0.99, rows_checked=1000, rows_failed=109))
    90.0
    """
    if result.status not in _SCORED or result.rows_checked <= 0:
        return None
    if result.kind in TABLE_LEVEL:
        return 100.0 if result.status == "passed" else 0.0
    passed = 1.0 - result.rows_failed / result.rows_checked
    if result.threshold <= 0:
        return 100.0
    return 100.0 * min(1.0, max(0.0, passed) / result.threshold)


def grade(
    score: float | None, *, error_failed: bool = False, held_back: bool = False
) -> str | None:
    """The overall grade: A/B/C/D by score, at most B with a failed error-level rule, D when
    the batch was held back; None without a score.

    >>> grade(97.0), grade(97.0, error_failed=True), grade(97.0, held_back=True)
    ('A', 'B', 'D')
    """
    if held_back:
        return "D"
    if score is None:
        return None
    letter = next((g for bound, g in GRADES if score >= bound), "D")
    return "B" if error_failed and letter == "A" else letter


def score_department(
    run_id: str,
    department: str,
    results: Iterable[RuleResult],
    previous: Mapping[str, float | None] | None = None,
) -> list[DimensionScore]:
    """One scorecard row per dimension (in :data:`DIMENSIONS` order) plus ``overall``.

    ``results`` are the department's rule results of the night; ``previous`` maps a dimension
    (or ``overall``) to the previous night's score, for the change.
    """
    mine = [r for r in results if r.department == department]
    previous = previous or {}
    rows: list[DimensionScore] = []
    covered: list[float] = []
    for dimension in DIMENSIONS:
        scored = [
            (r, s) for r in mine if r.dimension == dimension if (s := rule_score(r)) is not None
        ]
        score = _weighted([(s, SEVERITY_WEIGHTS[r.severity]) for r, s in scored])
        if score is not None:
            covered.append(score)
        rows.append(
            DimensionScore(
                run_id,
                department,
                dimension,
                score,
                len(scored),
                None,
                _change(score, previous.get(dimension)),
            )
        )
    overall = _round(sum(covered) / len(covered)) if covered else None
    error_failed = any(r.status == "failed" and r.severity == "error" for r in mine)
    held = any(r.held_back for r in mine)
    rows.append(
        DimensionScore(
            run_id,
            department,
            OVERALL,
            overall,
            sum(d.rules for d in rows),
            grade(overall, error_failed=error_failed, held_back=held),
            _change(overall, previous.get(OVERALL)),
        )
    )
    return rows


def _weighted(pairs: Sequence[tuple[float, float]]) -> float | None:
    total = sum(w for _, w in pairs)
    return _round(sum(s * w for s, w in pairs) / total) if total else None


def _change(score: float | None, before: float | None) -> float | None:
    return None if score is None or before is None else _round(score - before)


def _round(value: float) -> float:
    return round(value, 2)
