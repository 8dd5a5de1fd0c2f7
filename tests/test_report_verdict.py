"""What a report's headline says, beside what its score says: the verdict follows the grade;
a night with no new rows is no one's problem; the trend's x axis is spaced by date.

Each test stores a night's rule results and the scorecard :func:`quality.scorecard.score_department`
gives them (as the suites do) in a SQLite warehouse, and reads the report built from them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from etl.config import CityConfig, load_city_config
from quality.report import VERDICTS, night_offsets, render_reports, trend_chart
from quality.results import RuleResult
from quality.scorecard import score_department
from quality.tonight import NO_NEW_ROWS
from store.tables import result_table, scorecard_table
from store.warehouse import engine_for

ROOT = Path(__file__).resolve().parents[1]
NIGHT = "2026-07-01"
BASE = RuleResult(
    run_id=NIGHT,
    department="gongan",
    rule_id="GA-X-001",
    target="t_rk_jbxx",
    column_name="zjhm",
    kind="valid",
    dimension="规范性",
    severity="warning",
    description="说明",
    fix=None,
    threshold=0.99,
    rows_checked=1000,
    rows_failed=0,
    sample_keys=(),
    status="passed",
    held_back=False,
    message=None,
)


@pytest.fixture
def warehouse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[CityConfig, sa.Engine]]:
    monkeypatch.setenv("GOVMDM_VAR", str(tmp_path))
    engine = engine_for(f"sqlite:///{tmp_path / 'warehouse.sqlite'}")
    monkeypatch.setenv("GOVMDM_WAREHOUSE_URL", str(engine.url))
    yield load_city_config(ROOT / "config"), engine
    engine.dispose()


def _report(city: CityConfig, engine: sa.Engine, results: Sequence[RuleResult]) -> dict[str, Any]:
    scores = score_department(NIGHT, "gongan", results)
    rows = [vars(r) | {"sample_keys": json.dumps(list(r.sample_keys))} for r in results]
    with engine.begin() as conn:
        conn.execute(result_table.insert(), rows)
        conn.execute(scorecard_table.insert(), [vars(s) for s in scores])
    return render_reports(city, NIGHT, "gongan", engine=engine).departments["gongan"].data


def _rule(n: int, **changes: Any) -> RuleResult:
    return replace(BASE, rule_id=f"GA-X-{n:03d}", **changes)


def test_a_high_score_with_a_failed_error_rule_reads_as_its_grade(
    warehouse: tuple[CityConfig, sa.Engine],
) -> None:
    # 98 % of rows pass an error-level rule promising 99 %: score ≈ 99.5, capped at grade B
    data = _report(
        *warehouse,
        [
            _rule(1, severity="error", rows_failed=20, sample_keys=("RK1",), status="failed"),
            _rule(2, dimension="完整性"),
        ],
    )
    assert data["score"]["overall"] >= 95 and data["score"]["grade"] == "B"
    assert data["headline"]["status"] == VERDICTS["B"] == "attention"
    assert data["headline"]["label"] == "需关注"
    assert data["headline"]["reasons"][0].startswith("综合等级 B")


@pytest.mark.parametrize(
    ("failed", "severity", "grade", "status"),
    [
        (0, "error", "A", "passed"),
        (5, "warning", "A", "attention"),  # an A with a failed rule is not a clean pass
        (150, "warning", "B", "attention"),
        (300, "error", "C", "failed"),
        (600, "error", "D", "failed"),
    ],
)
def test_the_verdict_derives_from_the_grade(
    warehouse: tuple[CityConfig, sa.Engine], failed: int, severity: str, grade: str, status: str
) -> None:
    judged = "failed" if failed else "passed"
    data = _report(*warehouse, [_rule(1, severity=severity, rows_failed=failed, status=judged)])
    assert (data["score"]["grade"], data["headline"]["status"]) == (grade, status)
    assert data["headline"]["reasons"][0].startswith(f"综合等级 {grade}")


def test_a_batch_held_back_stays_held_back_whatever_its_grade(
    warehouse: tuple[CityConfig, sa.Engine],
) -> None:
    data = _report(
        *warehouse,
        [_rule(1, severity="blocking", rows_failed=1, status="failed", held_back=True)],
    )
    assert data["score"]["grade"] == "D" and data["headline"]["status"] == "held_back"


def test_no_new_rows_tonight_is_no_ones_problem(warehouse: tuple[CityConfig, sa.Engine]) -> None:
    city, engine = warehouse
    idle = _rule(2, status="not_run", rows_checked=0, message=NO_NEW_ROWS)
    data = _report(city, engine, [_rule(1), idle])
    assert data["headline"]["status"] == "passed", data["headline"]
    assert data["rules_not_run"] == [] and data["summary"]["could_not_run"] == 0
    assert [r["rule_id"] for r in data["rules_without_new_rows"]] == ["GA-X-002"]
    assert data["summary"]["no_new_rows"] == 1
    overview = render_reports(city, NIGHT, engine=engine).overview
    assert overview is not None
    assert "GA-X-002" not in overview.html  # not listed for data engineering
    assert overview.data["departments"][0]["rules_not_run"] == []


def test_a_rule_that_could_not_run_is_still_reported(
    warehouse: tuple[CityConfig, sa.Engine],
) -> None:
    city, engine = warehouse
    broken = _rule(2, status="error", rows_checked=0, message="列 zjhm 不存在")
    data = _report(city, engine, [_rule(1), broken])
    assert data["headline"]["status"] == "attention"
    assert [r["rule_id"] for r in data["rules_not_run"]] == ["GA-X-002"]
    overview = render_reports(city, NIGHT, engine=engine).overview
    assert overview is not None and "GA-X-002" in overview.html.split('id="not-run"')[1]


def test_the_trend_axis_is_spaced_by_date() -> None:
    nights = ["2026-06-01", "2026-06-02", "2026-06-08"]
    assert night_offsets(nights) == [0.0, 1 / 7, 1.0]
    chart = trend_chart(
        {"nights": nights, "series": [{"name": "overall", "label": "综合", "scores": [90, 80, 70]}]}
    )
    assert chart is not None
    (a, _, _), (b, _, _), (c, _, _) = chart.series[0].points
    assert (c - b) == pytest.approx(6 * (b - a), abs=0.2)
    # run IDs that are not dates stay evenly spaced; one night sits in the middle
    assert night_offsets(["n1", "n2", "n3"]) == [0.0, 0.5, 1.0]
    assert night_offsets(["2026-06-01"]) == [0.5]
