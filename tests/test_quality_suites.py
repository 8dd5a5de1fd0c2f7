"""Quality suites end to end on a generated city: the planted dirt is found with exact counts,
attributed to the right department and dimension; a stopped department is not run while the
others are scored; a blocking rule holds back only its department; reruns change nothing; plus
the rules loader, the ledger rules on a hand-made ledger and the scorecard formula by hand.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import get_args

import pandas as pd
import pytest
import sqlalchemy as sa
from sample_cities import CityFactory

from etl.config import CityConfig, ConfigError, load_city_config
from etl.extract import extract_all
from etl.sample_city.generate import next_night
from etl.standardize import standardize_all
from etl.state import LedgerEntry, Mode, RunState, Status, warehouse_url
from fields.masking import find_clear, mask_key
from master_data.consolidate import consolidate
from quality.results import DIMENSIONS, OVERALL, RuleResult
from quality.rules import (
    DEFAULT_DIMENSION,
    KINDS,
    Dimension,
    load_quality_rules,
    missing_rule_files,
)
from quality.scorecard import grade, rule_score, score_department
from quality.suites import QualityRun, held_departments, run_quality
from store.tables import conflict_table, crosswalk_table, result_table, scorecard_table
from store.warehouse import engine_for

ROOT = Path(__file__).resolve().parents[1]
NIGHT0, NIGHT1 = "2026-06-30", "2026-07-01"


@pytest.fixture(scope="module")
def city(make_city: CityFactory) -> Iterator[CityConfig]:
    """A 900-person city, night 0 extracted, standardized, linked and published; a copy (the
    tests run quality and the next night on it)."""
    with pytest.MonkeyPatch.context() as mp:
        yield make_city(mp, persons=900, enterprises=90, seed=7, until="published", copy=True)


@pytest.fixture(scope="module")
def night0(city: CityConfig) -> QualityRun:
    return run_quality(city, NIGHT0)


@pytest.fixture(scope="module")
def dirt(city: CityConfig) -> pd.DataFrame:
    return pd.read_parquet(city.var_dir / "city" / "truth" / "dirt.parquet")


def _keys(dirt: pd.DataFrame, department: str, column: str, kinds: set[str]) -> set[str]:
    hit = (dirt["department"] == department) & (dirt["column"] == column)
    return set(dirt.loc[hit & dirt["kind"].isin(kinds), "source_key"])


def _stored(city: CityConfig) -> dict[str, pd.DataFrame]:
    engine = engine_for(warehouse_url(city))
    try:
        out = {}
        for t in (result_table, scorecard_table):
            with engine.connect() as conn:
                frame = pd.read_sql(sa.select(t), conn)
            out[t.name] = frame.sort_values(list(frame.columns[:3])).reset_index(drop=True)
        return out
    finally:
        engine.dispose()


# --- the rules as configured -------------------------------------------------------------------


def test_every_department_has_rules_of_every_kind_it_can_fail() -> None:
    city = load_city_config(ROOT / "config")
    rules = load_quality_rules(city)
    for dept in city.departments:
        kinds = {r.kind for r in rules.owned_by(dept.code) if not r.golden}
        assert {"completeness", "validity", "uniqueness", "freshness", "volume", "delivery"} <= (
            kinds
        ), dept.code
        if dept.code not in ("gongan", "shichang"):  # the authorities conflict with no one
            assert "consistency" in kinds, dept.code
    # golden rules belong to the attribute's authority (一数一源)
    assert rules.rule("GD-P02").department == "gongan"  # person id_number
    assert rules.rule("GD-P07").department == "weijian"  # person phone
    assert rules.rule("GD-E07").department == "shuiwu"  # enterprise org_code
    assert rules.rule("RS-R01").references == ("mdm_enterprise", "uscc")
    assert set(get_args(Dimension)) == set(DIMENSIONS)
    assert set(DEFAULT_DIMENSION) == set(KINDS)


def test_rule_errors_name_the_file_the_rule_the_key_and_the_fix(tmp_path: Path) -> None:
    city = load_city_config(ROOT / "config")
    qdir = tmp_path / "quality"
    shutil.copytree(ROOT / "config" / "quality", qdir)
    renshe = (qdir / "renshe.yaml").read_text()
    renshe = renshe.replace("validator: id_number\n", "validator: idnumber\n", 1)
    (qdir / "renshe.yaml").write_text(renshe)
    minzheng = (qdir / "minzheng.yaml").read_text().replace("severity: blocking", "severity: x", 1)
    (qdir / "minzheng.yaml").write_text(minzheng)
    golden = (
        (qdir / "golden.yaml").read_text().replace("severity: warning", "severity: blocking", 1)
    )
    (qdir / "golden.yaml").write_text(golden)
    (qdir / "weijian.yaml").unlink()
    with pytest.raises(ConfigError) as info:
        load_quality_rules(city, qdir)
    problems = info.value.problems
    assert any(
        p.startswith(f"{qdir / 'renshe.yaml'}: rules[5] (RS-V01).validator (line ")
        and "did you mean `id_number`" in p
        for p in problems
    ), problems
    assert any("(MZ-U01).severity (line " in p and "'blocking'" in p for p in problems), problems
    assert any("(GD-P01).severity" in p and "cannot block" in p for p in problems), problems
    # a department without rules runs with the built-in ones: a warning, not a refusal
    assert not any("weijian.yaml" in p for p in problems)
    assert [w for w in missing_rule_files(city, qdir) if "weijian.yaml: (file)" in w]
    assert all(". Fix: " in p for p in problems)


# --- night 0: the planted dirt -----------------------------------------------------------------


# rule, owner, dimension, dirt labels (column, kinds) whose rows the rule must fail exactly; a
# table laid out by hand (fmt: skip), one rule per line
PLANTED = [
    ("RS-V01", "renshe", "规范性", "id_no", {"legacy_15_digit_id", "fullwidth_digits"}),
    ("RS-V03", "renshe", "规范性", "employer_uscc", {"excel_damaged_code"}),
    ("WJ-V01", "weijian", "规范性", "ID_CARD_NO", {"bad_check_digit"}),
    ("WJ-C02", "weijian", "完整性", "ID_CARD_NO", {"missing"}),
    ("WJ-V02", "weijian", "规范性", "BIRTH_DAY", {"excel_serial_date"}),
    ("MZ-C02", "minzheng", "完整性", "身份证号", {"missing"}),
    ("MZ-V02", "minzheng", "规范性", "姓名", {"traditional_chinese"}),
    ("SW-C01", "shuiwu", "完整性", "社会信用代码",
     {"legacy_registration_number", "legacy_organization_code"}),
    ("SW-V01", "shuiwu", "规范性", "社会信用代码", {"excel_damaged_code"}),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("rule_id", "department", "dimension", "column", "kinds"), PLANTED)
def test_planted_dirt_is_found_exactly_and_attributed(
    night0: QualityRun,
    dirt: pd.DataFrame,
    rule_id: str,
    department: str,
    dimension: str,
    column: str,
    kinds: set[str],
) -> None:
    planted = _keys(dirt, department, column, kinds)
    r = night0.result(rule_id)
    assert (r.department, r.dimension, r.column_name) == (department, dimension, column)
    assert r.rows_failed == len(planted)
    assert r.status == ("failed" if planted else "passed")
    assert set(r.sample_keys) <= {mask_key(k) for k in planted}
    assert len(r.sample_keys) == min(20, len(planted))


@pytest.mark.slow
def test_duplicate_registrations_fail_every_copy(
    city: CityConfig, night0: QualityRun, dirt: pd.DataFrame
) -> None:
    # 公安: a second, older registration of the same person, same ID number
    assert night0.result("GA-U02").rows_failed == 2 * len(
        _keys(dirt, "gongan", "rkbh", {"duplicate_row"})
    )
    # 民政: both copies count where both still carry the ID number
    rows = pd.read_parquet(city.var_dir / "city" / "truth" / "source_rows.parquet")
    mz = rows[rows["department"] == "minzheng"]
    with_id = mz[~mz["source_key"].isin(_keys(dirt, "minzheng", "身份证号", {"missing"}))]
    copies = with_id.groupby("entity_id").size()
    assert night0.result("MZ-U02").rows_failed == int(copies[copies > 1].sum()) > 0
    assert night0.result("GA-U01").status == "passed"  # primary keys are unique


@pytest.mark.slow
def test_day_month_swaps_show_where_the_row_carries_its_id(
    night0: QualityRun, dirt: pd.DataFrame
) -> None:
    swapped = _keys(dirt, "weijian", "BIRTH_DAY", {"day_month_swapped"})
    no_id = _keys(dirt, "weijian", "ID_CARD_NO", {"missing", "bad_check_digit"})
    r = night0.result("WJ-K01")
    assert (r.dimension, r.rows_failed) == ("一致性", len(swapped - no_id))
    assert set(r.sample_keys) <= swapped
    assert night0.result("WJ-V02").rows_failed == len(
        _keys(dirt, "weijian", "BIRTH_DAY", {"excel_serial_date"})
    )  # a swap is a well-formed date: only the ID (or 公安) can tell


@pytest.mark.slow
def test_conflicts_with_the_authority_go_to_the_disagreeing_department(
    city: CityConfig, night0: QualityRun
) -> None:
    engine = engine_for(warehouse_url(city))
    try:
        with engine.connect() as conn:
            conflicts = pd.read_sql(sa.select(conflict_table), conn)
            crosswalk = pd.read_sql(sa.select(crosswalk_table), conn)
    finally:
        engine.dispose()
    for rule_id, dept in (
        ("RS-K02", "renshe"),
        ("MZ-K01", "minzheng"),
        ("WJ-K02", "weijian"),
        ("SW-K01", "shuiwu"),
    ):
        r = night0.result(rule_id)
        mine = conflicts[(conflicts["department"] == dept) & (conflicts["run_id"] == NIGHT0)]
        assert r.rows_failed == mine["source_key"].nunique() > 0, rule_id
        assert r.rows_checked == (crosswalk["department"] == dept).sum()
        assert (r.department, r.dimension) == (dept, "一致性")
    assert "name 54" in str(night0.result("RS-K02").message)  # 人社's homophone typos


@pytest.mark.slow
def test_clean_data_passes(night0: QualityRun) -> None:
    for r in night0.results:
        if r.department == "shichang" and r.kind in ("completeness", "validity", "uniqueness"):
            assert r.status == "passed", r
        if r.rule_id.startswith("GD-"):  # the golden tables hold only valid identifiers
            assert (r.status, r.rows_failed) == ("passed", 0) or r.kind == "completeness", r
    assert night0.result("RS-R01").rows_failed == 0  # every employer is a registered enterprise
    assert night0.result("GA-D01").status == "passed"
    assert night0.result("GA-N01").status == "not_run"  # no earlier full night to compare


@pytest.mark.slow
def test_results_and_scorecards_are_stored_masked(city: CityConfig, night0: QualityRun) -> None:
    stored = _stored(city)
    results, cards = stored["dq_result"], stored["dq_scorecard"]
    assert len(results) == len(night0.results) == len(load_quality_rules(city))
    assert set(results["run_id"]) == {NIGHT0}
    samples = [json.loads(s) for s in results["sample_keys"]]
    assert max(len(s) for s in samples) == 20
    assert find_clear(json.dumps(samples, ensure_ascii=False)) == []
    assert len(cards) == 7 * len(city.departments)
    overall = cards[cards["dimension"] == OVERALL].set_index("department")
    assert overall["grade"].notna().all() and overall["score"].between(0, 100).all()
    assert not night0.departments["gongan"].held_back
    assert night0.departments["renshe"].flagged  # RS-V01 is an error-level failure


@pytest.mark.slow
def test_a_dimension_no_rule_covers_is_not_covered(night0: QualityRun) -> None:
    # 市场监管 is the authority for enterprises: no consistency rule is its to fail
    scores = night0.scores("shichang")
    assert scores["一致性"] is None
    card = next(
        s for s in night0.scorecard if (s.department, s.dimension) == ("shichang", "一致性")
    )
    assert card.rules == 0 and card.change is None
    assert scores[OVERALL] == pytest.approx(
        sum(v for k, v in scores.items() if k != OVERALL and v is not None)
        / sum(v is not None for k, v in scores.items() if k != OVERALL),
        abs=0.01,
    )


@pytest.mark.slow
def test_rerun_is_idempotent(city: CityConfig, night0: QualityRun) -> None:
    before = _stored(city)
    again = run_quality(city, NIGHT0)
    after = _stored(city)
    for name in before:
        pd.testing.assert_frame_equal(before[name], after[name])
    assert again.results == night0.results and again.scorecard == night0.scorecard


@pytest.mark.slow
def test_a_blocking_rule_holds_back_only_its_department(
    city: CityConfig, night0: QualityRun, tmp_path: Path
) -> None:
    qdir = tmp_path / "quality"
    shutil.copytree(ROOT / "config" / "quality", qdir)
    text = (qdir / "renshe.yaml").read_text()
    rs_v01 = "  - id: RS-V01\n    kind: validity\n    field: id_number\n    validator: id_number\n"
    assert rs_v01 + "    severity: error\n" in text
    (qdir / "renshe.yaml").write_text(
        text.replace(rs_v01 + "    severity: error\n", rs_v01 + "    severity: blocking\n")
    )
    strict = load_quality_rules(city, qdir)
    assert held_departments(city, NIGHT0, rules=strict) == {"renshe"}
    assert held_departments(city, NIGHT0) == set()
    try:
        run = run_quality(city, NIGHT0, departments=["renshe"], rules=strict)
        r = run.result("RS-V01")
        assert (r.status, r.severity, r.held_back) == ("failed", "blocking", True)
        assert run.departments["renshe"].held_back and run.departments["renshe"].grade == "D"
        stored = _stored(city)["dq_result"]
        held = stored[stored["held_back"].astype(bool)]
        assert list(held["rule_id"]) == ["RS-V01"]  # the other departments' rows untouched
        assert len(stored) == len(night0.results)
    finally:
        run_quality(city, NIGHT0, departments=["renshe"])


# --- night 1: one department unreachable -------------------------------------------------------


@pytest.fixture(scope="module")
def night1(city: CityConfig, night0: QualityRun) -> tuple[QualityRun, set[str]]:
    """The next night, with 卫健's database unreachable."""
    next_night(city.var_dir / "city")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GOVMDM_CONN_WEIJIAN", f"sqlite:///{city.var_dir / 'nowhere' / 'wj.sqlite'}")
        results = extract_all(city, NIGHT1, retries=0, backoff_s=0)
    assert {r.department for r in results if not r.ok} == {"weijian"}
    standardize_all(city, NIGHT1)
    held = held_departments(city, NIGHT1)
    consolidate(city, NIGHT1)
    return run_quality(city, NIGHT1), held


@pytest.mark.slow
def test_a_stopped_department_is_not_run_while_the_others_are_scored(
    city: CityConfig, night1: tuple[QualityRun, set[str]]
) -> None:
    run, held = night1
    assert held == set()  # nothing extracted, nothing to hold back
    rules = load_quality_rules(city)
    for rule in rules.owned_by("weijian"):
        r = run.result(rule.id)
        if rule.stage == "batch" or rule.kind in ("freshness", "volume"):
            assert r.status == "not_run" and "数据库不可达" in str(r.message), r
    d01 = run.result("WJ-D01")
    assert (d01.status, d01.rows_failed) == ("failed", 1) and "数据库不可达" in str(d01.message)
    assert run.result("WJ-D02").status == "not_run"  # the schema could not be looked at
    wj = run.departments["weijian"]
    assert not wj.delivered and wj.flagged and not wj.held_back
    assert wj.failed["error"] >= 1
    for code in ("gongan", "renshe", "minzheng", "shichang", "shuiwu"):
        q = run.departments[code]
        assert q.delivered and q.score is not None and q.change is not None, code
    for code in ("gongan", "renshe", "shichang"):  # new rows tonight: their batches are judged
        judged = [r for r in run.results if r.department == code and r.kind == "completeness"]
        assert judged and all(r.status in ("passed", "failed") for r in judged), code
    assert run.result("GA-T01").status == "passed"  # tonight's births and moves are fresh
    assert run.result("GA-N01").status == "not_run"  # an incremental night has no peer yet


# --- ledger rules on a hand-made ledger --------------------------------------------------------


def test_freshness_volume_and_delivery_from_the_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOVMDM_VAR", str(tmp_path))
    monkeypatch.delenv("GOVMDM_WAREHOUSE_URL", raising=False)
    c = load_city_config(ROOT / "config")
    started = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)

    def entry(
        run: str,
        dept: str,
        table: str,
        rows: int,
        *,
        mode: Mode = "full",
        watermark: str | None = None,
        status: Status = "ok",
        message: str | None = None,
    ) -> LedgerEntry:
        return LedgerEntry(
            run, dept, table, mode, rows, None, watermark, started, 0.1, status, message
        )

    history = [5000, 100, 110, 90, 95, 105, 100, 100]  # the 5000 falls out of a window of 7
    ledger = [
        entry(f"2026-05-{20 + i}", d, t, n)
        for i, n in enumerate(history)
        for d, t in (("renshe", "insured_person"), ("gongan", "t_rk_jbxx"))
    ]
    ledger += [
        entry(
            "2026-06-08", "renshe", "insured_person", 104, watermark="2026-06-07 12:00:00"
        ),  # 1.5 days old at the end of 06-08
        entry("2026-06-08", "gongan", "t_rk_jbxx", 30, watermark="20260601000000"),
        entry(
            "2026-06-08",
            "minzheng",
            "社会救助对象",
            0,
            status="drift",
            message="column 身份证号 is gone",
        ),
        entry(
            "2026-06-08",
            "weijian",
            "PATIENT_INFO",
            0,
            status="unreachable",
            message="cannot reach the source database",
        ),
        entry(
            "2026-06-08",
            "shichang",
            "t_qy_djxx",
            12,
            mode="incremental",
            watermark="2026-06-08 10:00:00",
        ),
    ]
    with RunState.for_city(c) as state:
        state.record(ledger)
    run = run_quality(c, "2026-06-08")
    status = {r.rule_id: r.status for r in run.results}
    assert status["RS-N01"] == "passed" and "中位数 100 行" in str(run.result("RS-N01").message)
    assert status["GA-N01"] == "failed"  # 30 against a median of 100: −70 %
    assert status["RS-T01"] == "passed" and "1.5 天" in str(run.result("RS-T01").message)
    assert status["GA-T01"] == "failed"  # newest change a week before the night
    assert (status["MZ-D01"], status["MZ-D02"]) == ("failed", "failed")  # drift: both
    assert (status["WJ-D01"], status["WJ-D02"]) == ("failed", "not_run")
    assert status["SC-N01"] == "not_run"  # no earlier incremental night
    assert status["SC-T01"] == "passed"
    assert status["SW-D01"] == "failed"  # no ledger row at all: not extracted
    # no canonical output anywhere: batch rules are not run, golden rules neither
    assert status["RS-V01"] == status["GD-P02"] == "not_run"
    renshe = run.scores("renshe")
    assert renshe["准确性"] is None  # its uniqueness rule had no batch to judge
    assert renshe["时效性"] == renshe["完整性"] == renshe["规范性"] == 100.0  # T01, N01, D02


# --- the scorecard formula by hand -------------------------------------------------------------


def _r(
    rule_id: str,
    dimension: str,
    severity: str,
    status: str,
    checked: int,
    failed: int,
    threshold: float = 1.0,
    kind: str = "completeness",
) -> RuleResult:
    return RuleResult(
        "n",
        "d",
        rule_id,
        "t",
        None,
        kind,
        dimension,
        severity,
        "规则",
        None,
        threshold,
        checked,
        failed,
        (),
        status,
        False,
        None,
    )


def test_the_scorecard_formula_on_hand_made_results() -> None:
    results = [
        _r("A", "完整性", "error", "failed", 100, 10),  # p 0.90 / 1.00 → 90
        _r("B", "完整性", "warning", "failed", 100, 19, 0.9),  # p 0.81 / 0.90 → 90
        _r("C", "完整性", "blocking", "passed", 100, 3, 0.95),  # p 0.97 ≥ 0.95 → 100
        _r("D", "规范性", "error", "passed", 50, 0),  # → 100
        _r("E", "时效性", "error", "failed", 1, 1, 3.0, kind="freshness"),  # table rule → 0
        _r("F", "准确性", "error", "not_run", 0, 0),  # not scored
        _r("G", "准确性", "error", "error", 0, 0),  # not scored
        _r("H", "一致性", "warning", "passed", 0, 0),  # judged no row: not scored
    ]
    assert [rule_score(r) for r in results] == [90.0, 90.0, 100.0, 100.0, 0.0, None, None, None]
    cards = score_department("n", "d", results, {"完整性": 90.0, OVERALL: 70.0})
    by = {c.dimension: c for c in cards}
    assert [c.dimension for c in cards] == [*DIMENSIONS, OVERALL]
    # (90×2 + 90×1 + 100×4) / 7
    assert by["完整性"].score == pytest.approx(95.71, abs=0.01) and by["完整性"].rules == 3
    assert by["完整性"].change == pytest.approx(5.71, abs=0.01)
    assert by["规范性"].score == 100.0 and by["时效性"].score == 0.0
    assert (
        by["准确性"].score is None and by["一致性"].score is None and by["可访问性"].score is None
    )
    assert by["准确性"].rules == 0 and by["准确性"].change is None
    assert by[OVERALL].score == pytest.approx((95.71 + 100 + 0) / 3, abs=0.01)
    assert by[OVERALL].rules == 5 and by[OVERALL].grade == "D"
    assert by[OVERALL].change == pytest.approx(by[OVERALL].score - 70.0, abs=0.01)
    assert {c.grade for c in cards if c.dimension != OVERALL} == {None}


def test_grades_and_their_caps() -> None:
    assert [grade(s) for s in (100, 95, 94.99, 85, 70, 69.9)] == ["A", "A", "B", "B", "C", "D"]
    assert grade(99.0, error_failed=True) == "B" and grade(80.0, error_failed=True) == "C"
    assert grade(99.0, held_back=True) == "D" and grade(None) is None
    clean = [_r("A", "完整性", "warning", "failed", 100, 1, 0.999)]  # a warning does not cap
    assert score_department("n", "d", clean)[-1].grade == "A"
    held = [replace(clean[0], severity="blocking", held_back=True)]
    assert score_department("n", "d", held)[-1].grade == "D"
    nothing = score_department("n", "d", [_r("F", "完整性", "error", "not_run", 0, 0)])
    assert nothing[-1].score is None and nothing[-1].grade is None


def test_the_command_lists_the_rules() -> None:
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(
        app, ["quality", "--config", str(ROOT / "config"), "--rules", "-d", "weijian"]
    )
    assert result.exit_code == 0, result.output
    assert "WJ-V01" in result.output and "GA-V01" not in result.output


@pytest.mark.slow
def test_the_command_scores_a_night(city: CityConfig, night1: tuple[QualityRun, set[str]]) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    args = ["quality", "--config", str(ROOT / "config"), "--run-id", NIGHT1, "-d", "weijian"]
    result = CliRunner().invoke(app, args)
    # its source was down: its batch rules could not run, which the exit code says (--help)
    assert result.exit_code == 1, result.output
    assert "weijian" in result.output and "WJ-D01" in result.output
    assert "could not run: weijian" in " ".join(result.output.split())
    assert run_quality(city, NIGHT1, departments=["weijian"]).results == tuple(
        r for r in night1[0].results if r.department == "weijian"
    )
