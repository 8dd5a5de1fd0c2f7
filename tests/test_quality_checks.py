"""quality.checks: rules as data → a GX 1.x suite → exact plain results.

One small frame with planted dirt, whose failing rows are known by construction; the GX context
is started once for the module (GX takes seconds to import).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fields import normalize
from fields.identifiers import id_check_digit
from quality.checks import (
    GX_SEVERITY,
    Check,
    CheckResult,
    phone_valid,
    run_checks,
    validate,
)


def _id(first17: str) -> str:
    return first17 + id_check_digit(first17)


ID_1 = _id("11010519491231002")  # 11010519491231002X
ID_2 = _id("35010219850601123")
ID_3 = _id("35011119700101456")
ID_7 = _id("35010319880808789")
BAD_CHECK = ID_2[:17] + ("0" if ID_2[17] != "0" else "1")

# rkbh P05 appears twice (duplicate key); P01 and P07 share an ID number. Laid out by hand (fmt:
# skip): each column's seven values stay in line with the rows P01…P07.
FRAME = pd.DataFrame(
    {
        "rkbh": ["P01", "P02", "P03", "P04", "P05", "P05", "P07"],
        "xm": ["王伟", "李娜", "张3", "陈静", "刘洋", "赵敏", "欧阳·明"],
        "sfzh": [ID_1, BAD_CHECK, "110105491231002", None, ID_3, ID_7, ID_1],
        "xb": ["男", "女", "未知", "男", "女", "男", None],
        "csrq": ["1949-12-31", "1990-02-30", "2001-01-01", None, "1985-06-01", "20240627",
                 "1988-08-08"],
        "lxdh": ["13812345678", "0591-87654321", None, "138 1234 5678", "13812345678",
                 "4008001234", "12345"],
        "xzqh": ["110105", "350111", "350102", "999999", "350102", None, "350103"],
    }
)  # fmt: skip

META = {
    "department": "gongan",
    "dimension": "规范性",
    "severity": "error",
    "description_zh": "身份证号码应符合GB 11643",
}

CHECKS = [
    Check("GA-PER-001", "not_null", "sfzh", meta={**META, "dimension": "完整性"}),
    Check("GA-PER-002", "valid", "sfzh", {"validator": "id_number"}, meta=META),
    Check("GA-PER-003", "unique", "sfzh", meta={**META, "dimension": "一致性"}),
    Check("GA-PER-004", "unique", "rkbh", meta={**META, "severity": "blocking"}),
    Check("GA-PER-005", "in_set", "xb", {"value_set": ["男", "女"]}, meta=META),
    Check("GA-PER-006", "valid", "csrq", {"validator": "date"}, meta=META),
    Check(
        "GA-PER-007", "valid", "lxdh", {"validator": "phone"}, meta={**META, "severity": "warning"}
    ),
    Check("GA-PER-008", "valid", "xzqh", {"validator": "division_code"}, meta=META),
    Check("GA-PER-009", "regex", "xm", {"regex": r"[\u4e00-\u9fff·]{2,30}"}, meta=META),
]

# rule → (success, rows_checked, rows_failed, failed_keys)
TRUTH = {
    "GA-PER-001": (False, 7, 1, ("P04",)),
    "GA-PER-002": (False, 6, 2, ("P02", "P03")),
    "GA-PER-003": (False, 6, 2, ("P01", "P07")),
    "GA-PER-004": (False, 7, 2, ("P05", "P05")),
    "GA-PER-005": (False, 6, 1, ("P03",)),
    "GA-PER-006": (False, 6, 2, ("P02", "P05")),
    "GA-PER-007": (False, 6, 2, ("P04", "P07")),
    "GA-PER-008": (False, 6, 1, ("P04",)),
    "GA-PER-009": (False, 7, 1, ("P03",)),
}


@pytest.fixture(scope="module")
def run() -> dict[str, CheckResult]:
    results = run_checks(FRAME, CHECKS, key_column="rkbh", suite_name="gongan.t_rk_jbxx")
    assert [r.rule_id for r in results] == [c.rule_id for c in CHECKS]
    return {r.rule_id: r for r in results}


@pytest.mark.parametrize("rule_id", sorted(TRUTH))
def test_exact_counts_and_keys(run: dict[str, CheckResult], rule_id: str) -> None:
    r = run[rule_id]
    assert r.error is None
    assert (r.success, r.rows_checked, r.rows_failed, r.failed_keys) == TRUTH[rule_id]


def test_gx_prints_no_progress_bars(capfd: pytest.CaptureFixture[str]) -> None:
    run_checks(FRAME, CHECKS, key_column="rkbh", suite_name="quiet")
    out, err = capfd.readouterr()
    assert "Calculating Metrics" not in out + err
    assert err == ""


def test_observed_has_numbers_not_row_values(run: dict[str, CheckResult]) -> None:
    observed = run["GA-PER-002"].observed
    assert observed["element_count"] == 7 and observed["missing_count"] == 1
    assert not any(isinstance(v, list | dict) for v in observed.values())
    assert ID_1 not in json.dumps(dict(observed), default=str)


def test_threshold_is_gx_mostly_over_non_null_rows() -> None:
    # xb: 5 of 6 non-null values pass (0.833); sfzh: 6 of 7 rows are not null (0.857)
    checks = [
        Check("T-1", "in_set", "xb", {"value_set": ["男", "女"]}, threshold=0.8),
        Check("T-2", "in_set", "xb", {"value_set": ["男", "女"]}, threshold=0.9),
        Check("T-3", "not_null", "sfzh", threshold=0.85),
        Check("T-4", "not_null", "sfzh", threshold=0.86),
    ]
    results = run_checks(FRAME, checks, key_column="rkbh", suite_name="thresholds")
    assert [r.success for r in results] == [True, False, True, False]
    assert [r.rows_failed for r in results] == [1, 1, 1, 1]
    assert results[0].failed_keys == ("P03",)  # a passing check still lists its failures


def test_meta_and_severity_round_trip_through_gx_json() -> None:
    suite_run = validate(FRAME, CHECKS, key_column="rkbh", suite_name="gongan.t_rk_jbxx")
    document = json.loads(json.dumps(suite_run.gx_result.to_json_dict(), ensure_ascii=False))
    assert document["suite_name"] == "gongan.t_rk_jbxx"
    configs = {
        r["expectation_config"]["meta"]["rule_id"]: r["expectation_config"]
        for r in document["results"]
    }
    assert set(configs) == set(TRUTH)
    for check in CHECKS:
        config = configs[check.rule_id]
        assert config["meta"]["department"] == "gongan"
        assert config["meta"]["dimension"] == check.meta["dimension"]
        assert config["meta"]["severity"] == check.meta["severity"]
        assert config["meta"]["description_zh"] == META["description_zh"]
        assert config["severity"] == GX_SEVERITY[check.meta["severity"]]
    assert configs["GA-PER-004"]["severity"] == "critical"
    assert configs["GA-PER-007"]["severity"] == "info"
    assert configs["GA-PER-002"]["type"] == "expect_column_values_to_pass_govmdm_validator"
    assert configs["GA-PER-002"]["kwargs"]["validator"] == "id_number"


def test_a_check_gx_cannot_run_gives_an_error_and_the_others_run() -> None:
    checks = [
        Check("E-1", "not_null", "hjdz", meta=META),
        Check("E-3", "in_set", "xb", {"value_set": ["男", "女"]}),
    ]
    missing, fine = run_checks(FRAME, checks, key_column="rkbh", suite_name="errors")
    assert missing.error is not None and not missing.success
    assert "E-1" in missing.error and "'hjdz'" in missing.error and "Fix:" in missing.error
    assert "set `column`" in missing.error
    assert (missing.rows_checked, missing.rows_failed, missing.failed_keys) == (0, 0, ())
    assert (fine.error, fine.rows_failed, fine.failed_keys) == (None, 1, ("P03",))


def test_a_rule_gx_refuses_to_build_gives_an_error() -> None:
    checks = [Check("G-1", "in_set", "xb", {"value_set": 7}), Check("G-2", "not_null", "xb")]
    refused, fine = run_checks(FRAME, checks, key_column="rkbh", suite_name="refused")
    assert refused.error is not None and "G-1" in refused.error and "GX rejected" in refused.error
    assert (fine.error, fine.failed_keys) == (None, ("P07",))


def test_all_failing_keys_beyond_gx_partial_lists() -> None:
    n = 1500  # GX's partial lists stop at 20, its value lists at 200
    frame = pd.DataFrame(
        {
            "key": [f"K{i:05d}" for i in range(n)],
            "code": ["bad" if i % 3 else "ok" for i in range(n)],
        },
        index=pd.Index([f"row{i}" for i in range(n)]),  # not 0..n-1: must not matter
    )
    [r] = run_checks(
        frame,
        [Check("B-1", "in_set", "code", {"value_set": ["ok"]})],
        key_column="key",
        suite_name="big",
    )
    expected = tuple(f"K{i:05d}" for i in range(n) if i % 3)
    assert r.rows_failed == len(expected) == 1000
    assert r.failed_keys == expected


def test_nulls_are_ignored_by_validity_and_null_keys_reported_empty() -> None:
    frame = pd.DataFrame({"k": ["A", None, "C"], "v": [None, "x", float("nan")]})
    [valid, nn] = run_checks(
        frame,
        [Check("N-1", "valid", "v", {"validator": "uscc"}), Check("N-2", "not_null", "v")],
        key_column="k",
        suite_name="nulls",
    )
    assert (valid.rows_checked, valid.rows_failed, valid.failed_keys) == (1, 1, ("",))
    assert (nn.rows_checked, nn.rows_failed, nn.failed_keys) == (3, 2, ("A", "C"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "no_such"}, "unknown kind"),
        ({"kind": "in_set", "column": "xb"}, "needs params ['value_set']"),
        ({"kind": "in_set", "column": "xb", "params": {"valueset": []}}, "needs params"),
        ({"kind": "regex", "column": "xm", "params": {"regex": "("}}, "does not compile"),
        ({"kind": "valid", "column": "x", "params": {"validator": "iban"}}, "unknown validator"),
        ({"kind": "not_null", "column": "x", "threshold": 0.0}, "threshold"),
        ({"kind": "not_null"}, "needs `column`"),
        ({"kind": "unique", "column": "x", "params": {"value_set": []}}, "unknown params"),
        ({"kind": "not_null", "column": "x", "meta": {"severity": "fatal"}}, "severity"),
        ({"kind": "not_null", "column": "x", "meta": {"dimension": "唯一性"}}, "GB/T 36344"),
    ],
)
def test_malformed_checks_name_the_rule_and_the_fix(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match="'R-9'") as e:
        Check("R-9", **kwargs)
    assert message in str(e.value)


def test_duplicate_rule_ids_and_missing_key_column_are_refused() -> None:
    check = Check("X-1", "not_null", "xb")
    with pytest.raises(ValueError, match="used twice"):
        run_checks(FRAME, [check, check], key_column="rkbh", suite_name="dup")
    with pytest.raises(ValueError, match="key column 'id'"):
        run_checks(FRAME, [check], key_column="id", suite_name="nokey")


PHONE_INPUTS = [
    "13812345678",
    "+86 138 1234 5678",
    "+8613812345678",
    "(0591)8765-4321转123",
    "0591-87654321",
    "010-12345678",
    "01012345678",
    "05918-7654321",
    "0591 87654321",
    "4008001234",
    "400-800-1234",
    "95588",
    "12345",
    "0591-8765432",
    "14012345678",
    "13812345678,13912345678",
    "87654321",
    "+1 650 253 0000",
    "+16502530000",
    "138****5678",
    "0591-87654321-123",
    "021-1234567",
]


@pytest.mark.parametrize("raw", PHONE_INPUTS)
def test_phone_validator_agrees_with_the_normalizer(raw: str) -> None:
    """Valid exactly when standardization would keep the value as it is."""
    normalized = normalize.phones(raw)
    assert all(phone_valid(p) for p in normalized.extra.get("all", []))
    if phone_valid(raw):
        assert normalized.value == raw and normalized.reasons == ()
