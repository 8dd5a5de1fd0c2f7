"""Evaluation against ground truth: exact numbers on hand-built tables, then a generated city."""

from __future__ import annotations

import datetime as dt
import doctest
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sample_cities import CityFactory

from cli import master
from master_data import evaluate as ev
from master_data.evaluate import (
    GroundTruth,
    cluster_metrics,
    error_examples,
    evaluate,
    golden_accuracy,
    load_truth,
    pairwise_metrics,
)


def truth_rows(owners: dict[str, str], entity: str = "person", dept: str = "d") -> pd.DataFrame:
    """Truth source rows: source key -> true entity id."""
    return pd.DataFrame(
        {
            "department": dept,
            "table": f"{dept}_t",
            "source_key": list(owners),
            "entity_type": entity,
            "entity_id": list(owners.values()),
            "created_night": 0,
            "deleted_night": pd.array([None] * len(owners), dtype="Int32"),
        }
    )


def crosswalk(rows: pd.DataFrame, masters: dict[str, str]) -> pd.DataFrame:
    """A crosswalk putting source key -> master for the keys named in ``masters``."""
    cw = rows[rows["source_key"].isin(list(masters))].rename(
        columns={"table": "source_table", "entity_type": "entity"}
    )
    return cw.assign(master_id=cw["source_key"].map(masters))[list(ev.CROSSWALK_COLUMNS)]


def write_city(
    out: Path,
    rows: pd.DataFrame,
    persons: pd.DataFrame | None = None,
    enterprises: pd.DataFrame | None = None,
    night: int = 0,
    dirt: pd.DataFrame | None = None,
) -> Path:
    tdir = out / "truth"
    tdir.mkdir(parents=True)
    empty_p = pd.DataFrame({"person_id": pd.Series(dtype=str), "id_number": pd.Series(dtype=str)})
    (persons if persons is not None else empty_p).to_parquet(tdir / "persons.parquet")
    empty_e = pd.DataFrame({"enterprise_id": pd.Series(dtype=str)})
    (enterprises if enterprises is not None else empty_e).to_parquet(tdir / "enterprises.parquet")
    rows.to_parquet(tdir / "source_rows.parquet")
    if dirt is not None:
        dirt.to_parquet(tdir / "dirt.parquet")
    (out / "city.json").write_text(json.dumps({"night": night}))
    return out


TWO_PAIRS = {"a": "P1", "b": "P1", "c": "P2", "d": "P2"}


# --- linkage metrics ---------------------------------------------------------------------------


def test_perfect_clustering_scores_one_everywhere() -> None:
    rows = truth_rows({**TWO_PAIRS, "e": "P3"})
    cw = crosswalk(rows, {"a": "M1", "b": "M1", "c": "M2", "d": "M2", "e": "M3"})
    p = pairwise_metrics(cw, rows)["person"]
    c = cluster_metrics(cw, rows)["person"]
    assert (p.true_positives, p.predicted_pairs, p.true_pairs) == (2, 2, 2)
    assert (p.precision, p.recall, p.f1) == (1.0, 1.0, 1.0)
    assert (c.predicted_clusters, c.true_entities, c.exact) == (3, 3, 3)
    assert (c.precision, c.recall, c.f1) == (1.0, 1.0, 1.0)
    assert (c.bcubed_precision, c.bcubed_recall, c.bcubed_f1) == (1.0, 1.0, 1.0)


def test_false_merge_of_two_pairs() -> None:
    rows = truth_rows(TWO_PAIRS)
    cw = crosswalk(rows, dict.fromkeys("abcd", "M1"))
    p = pairwise_metrics(cw, rows)["person"]
    assert (p.true_positives, p.predicted_pairs, p.true_pairs) == (2, 6, 2)
    assert p.precision == pytest.approx(2 / 6)
    assert p.recall == 1.0
    assert p.f1 == pytest.approx(0.5)
    c = cluster_metrics(cw, rows)["person"]
    assert (c.predicted_clusters, c.true_entities, c.exact) == (1, 2, 0)
    assert (c.precision, c.recall, c.f1) == (0.0, 0.0, 0.0)
    assert c.bcubed_precision == pytest.approx(0.5)
    assert c.bcubed_recall == 1.0


def test_false_split_of_a_triple() -> None:
    rows = truth_rows({"a": "P1", "b": "P1", "c": "P1"})
    cw = crosswalk(rows, {"a": "M1", "b": "M1", "c": "M2"})
    p = pairwise_metrics(cw, rows)["person"]
    assert (p.true_positives, p.predicted_pairs, p.true_pairs) == (1, 1, 3)
    assert (p.precision, p.recall) == (1.0, pytest.approx(1 / 3))
    c = cluster_metrics(cw, rows)["person"]
    assert (c.predicted_clusters, c.true_entities, c.exact) == (2, 1, 0)
    assert c.bcubed_precision == 1.0
    assert c.bcubed_recall == pytest.approx((2 * 2 / 3 + 1 / 1 * 1 / 3) / 3)


def test_mixed_errors_count_exact_clusters() -> None:
    # P1 right, P2+P3 merged, P4 split
    rows = truth_rows({"a": "P1", "b": "P1", "c": "P2", "d": "P3", "e": "P4", "f": "P4"})
    cw = crosswalk(rows, {"a": "M1", "b": "M1", "c": "M2", "d": "M2", "e": "M3", "f": "M4"})
    c = cluster_metrics(cw, rows)["person"]
    assert (c.predicted_clusters, c.true_entities, c.exact) == (4, 4, 1)
    assert (c.precision, c.recall) == (0.25, 0.25)
    p = pairwise_metrics(cw, rows)["person"]
    assert (p.true_positives, p.predicted_pairs, p.true_pairs) == (1, 2, 2)


def test_entity_types_are_scored_apart_even_with_equal_master_ids() -> None:
    rows = pd.concat(
        [truth_rows({"a": "P1", "b": "P1"}), truth_rows({"x": "E1"}, "enterprise", dept="s")]
    )
    cw = crosswalk(rows, {"a": "M1", "b": "M1", "x": "M1"})
    p = pairwise_metrics(cw, rows)
    assert set(p) == {"person", "enterprise"}
    assert (p["person"].predicted_pairs, p["person"].precision) == (1, 1.0)
    assert (p["enterprise"].predicted_pairs, p["enterprise"].true_pairs) == (0, 0)
    c = cluster_metrics(cw, rows)
    assert c["enterprise"].exact == 1 and c["person"].exact == 1


def test_deleted_rows_are_excluded_on_the_nights_after() -> None:
    rows = truth_rows({"a": "P1", "b": "P1", "c": "P1", "z": "P9"})
    rows["deleted_night"] = pd.array([None, None, 2, None], dtype="Int32")
    rows["created_night"] = [0, 0, 0, 3]
    wrong = crosswalk(rows, {"a": "M1", "b": "M1", "c": "M2", "z": "M1"})
    # night 1: c is live (split off), z does not exist yet
    p1 = pairwise_metrics(wrong, rows, night=1)["person"]
    assert (p1.true_positives, p1.predicted_pairs, p1.true_pairs) == (1, 1, 3)
    # night 2: c is gone, so the split no longer exists
    p2 = pairwise_metrics(wrong, rows, night=2)["person"]
    assert (p2.true_positives, p2.predicted_pairs, p2.true_pairs) == (1, 1, 1)
    # no night: every deleted row is out, every created row is in (z wrongly merged)
    p = pairwise_metrics(wrong, rows)["person"]
    assert (p.true_positives, p.predicted_pairs, p.true_pairs) == (1, 3, 1)


def test_rows_missing_from_the_crosswalk_lower_pairwise_recall_only() -> None:
    rows = truth_rows({"a": "P1", "b": "P1", "c": "P1", "d": "P2"})
    cw = crosswalk(rows, {"a": "M1", "b": "M1", "d": "M2"})  # c was rejected
    p = pairwise_metrics(cw, rows)["person"]
    assert (p.true_positives, p.predicted_pairs, p.true_pairs) == (1, 1, 3)
    assert (p.precision, p.recall) == (1.0, pytest.approx(1 / 3))
    c = cluster_metrics(cw, rows)["person"]
    assert (c.precision, c.recall, c.bcubed_f1) == (1.0, 1.0, 1.0)
    [missing] = error_examples(cw, rows)
    assert (missing.kind, missing.master_ids, missing.entity_ids) == ("missing", ("M1",), ("P1",))
    assert [(r.source_key, r.master_id) for r in missing.rows] == [("c", None)]


def test_crosswalk_contract_is_checked() -> None:
    rows = truth_rows(TWO_PAIRS)
    cw = crosswalk(rows, dict.fromkeys("abcd", "M1"))
    with pytest.raises(ValueError, match="more than once"):
        pairwise_metrics(pd.concat([cw, cw.head(1)]), rows)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['master_id'\]"):
        pairwise_metrics(cw.drop(columns="master_id"), rows)
    with pytest.raises(ValueError, match=r"crosswalk\.entity"):
        pairwise_metrics(cw.assign(entity="org"), rows)


def test_error_examples_name_masters_entities_and_source_keys() -> None:
    rows = truth_rows({"a": "P1", "b": "P1", "c": "P2", "d": "P3", "e": "P3", "f": "P3"})
    cw = crosswalk(rows, {"a": "M1", "b": "M1", "c": "M1", "d": "M2", "e": "M3", "f": "M4"})
    found = error_examples(cw, rows, n=1)
    assert [(x.kind, x.master_ids, x.entity_ids) for x in found] == [
        ("false_merge", ("M1",), ("P1", "P2")),
        ("false_split", ("M2", "M3", "M4"), ("P3",)),
    ]
    assert [(r.source_key, r.entity_id, r.master_id) for r in found[0].rows] == [
        ("a", "P1", "M1"),
        ("b", "P1", "M1"),
        ("c", "P2", "M1"),
    ]
    assert found[1].rows[0].department == "d" and found[1].rows[0].source_table == "d_t"
    assert error_examples(cw, rows, n=0) == []


# --- golden records ------------------------------------------------------------------------------

PERSONS = pd.DataFrame(
    {
        "person_id": ["P1", "P2", "P3"],
        "name": ["高建旭", "郑月怡", "林 强"],
        "id_number": ["14222319501227871X", "350121195709127886", "350102198001010011"],
        "sex": ["男", "女", "男"],
        "birth_date": [dt.date(1950, 12, 27), dt.date(1957, 9, 12), dt.date(1980, 1, 1)],
        "phone": ["15261975346", None, None],
        "landline": ["0591-73393464", "0591-81209617", None],
        "ethnicity_code": ["01", "01", "22"],
        "ethnicity": ["汉族", "汉族", "畲族"],
        "division_code": ["350104", "350181", "350102"],
        "address_detail": ["盘屿路312号", "融城路123号", "五一路1号"],
        "status": ["正常", "正常", "死亡"],
    }
)


def test_golden_person_accuracy_normalises_formats() -> None:
    rows = truth_rows({"a": "P1", "b": "P1", "c": "P2", "d": "P3", "e": "P3"})
    truth = GroundTruth(PERSONS, pd.DataFrame(), rows, night=0)
    # M1 holds P1's rows; M2 one row each of P2 and P3 (a tie: the lowest id, P2, wins)
    cw = crosswalk(rows, {"a": "M1", "b": "M1", "c": "M2", "d": "M2", "e": "M3"})
    golden = pd.DataFrame(
        {
            "master_id": ["M1", "M2", "M3", "M_orphan"],
            "name": ["高建旭", "郑月怡", "林强", "x"],  # whitespace is format
            "id_number": ["14222319501227871x", "350121195709127886", "350102198001010011", "x"],
            "sex": ["男", "女", "女", "x"],  # M3 wrong
            "birth_date": ["1950-12-27", pd.Timestamp("1957-09-12"), "19800101", None],
            "phone": ["+86 152 6197 5346", "0591-81209617", None, None],
            "ethnicity": ["汉族", "01", "汉族", None],  # a code counts; M3 wrong
            "division_code": ["350104000000", "350181", "350102", None],
            "status": ["正常", "正常", "正常", None],  # M3 wrong
        }
    )
    acc = golden_accuracy(golden, cw, truth, "person")
    assert (acc.masters, acc.evaluated, acc.unmatched) == (4, 3, 1)
    assert acc.skipped == ("address_detail",)
    got = {a: (v.correct, v.evaluated) for a, v in acc.attributes.items()}
    assert got == {
        "name": (3, 3),
        "id_number": (3, 3),
        "sex": (2, 3),
        "birth_date": (3, 3),
        "phone": (3, 3),
        "division_code": (3, 3),
        "ethnicity": (2, 3),
        "status": (2, 3),
    }
    assert acc.fully_correct == pytest.approx(2 / 3)


def test_golden_phone_must_be_one_of_the_true_numbers() -> None:
    rows = truth_rows({"a": "P1", "b": "P2", "c": "P3"})
    truth = GroundTruth(PERSONS, pd.DataFrame(), rows)
    cw = crosswalk(rows, {"a": "M1", "b": "M2", "c": "M3"})
    golden = pd.DataFrame(
        {
            "master_id": ["M1", "M2", "M3"],
            # landline of P1 counts; a blank where P2 has a landline does not; P3 has none
            "phone": ["(0591)7339-3464", None, "13800000000"],
        }
    )
    acc = golden_accuracy(golden, cw, truth, "person")
    assert acc.attributes["phone"].correct == 1  # only M1
    golden.loc[1, "phone"] = "059181209617"
    golden.loc[2, "phone"] = None
    assert golden_accuracy(golden, cw, truth, "person").attributes["phone"].accuracy == 1.0


def test_golden_accuracy_where_some_source_holds_the_true_value() -> None:
    rows = truth_rows({"a": "P1", "b": "P1", "c": "P2", "d": "P3"})
    truth = GroundTruth(PERSONS, pd.DataFrame(), rows)
    cw = crosswalk(rows, {"a": "M1", "b": "M1", "c": "M2", "d": "M3"})
    records = rows.rename(columns={"table": "source_table"})[["department", "source_table",
                                                              "source_key"]]  # fmt: skip
    # M1: the true mobile is held by row b but the stale a won; M2: nobody holds P2's landline;
    # M3: P3 has no phone and no row has one (a blank is the truth)
    records = records.assign(phone=["13900000000", "152-6197-5346", "13800000000", None])
    golden = pd.DataFrame({"master_id": ["M1", "M2", "M3"],
                           "phone": ["13900000000", "13800000000", None]})  # fmt: skip
    acc = golden_accuracy(golden, cw, truth, "person", records=records).attributes["phone"]
    assert (acc.correct, acc.evaluated) == (1, 3)
    assert (acc.held, acc.held_correct, acc.held_accuracy) == (1, 0, 0.0)
    golden.loc[0, "phone"] = "15261975346"
    acc = golden_accuracy(golden, cw, truth, "person", records=records).attributes["phone"]
    assert (acc.held, acc.held_correct, acc.held_accuracy) == (1, 1, 1.0)
    assert golden_accuracy(golden, cw, truth, "person").attributes["phone"].held is None


def test_headline_golden_accuracy_scores_only_what_some_source_holds() -> None:
    rows = truth_rows({"a": "P1", "b": "P1", "c": "P2", "d": "P3"})
    truth = GroundTruth(PERSONS, pd.DataFrame(), rows)
    cw = crosswalk(rows, {"a": "M1", "b": "M1", "c": "M2", "d": "M3"})
    records = rows.rename(columns={"table": "source_table"})[["department", "source_table",
                                                              "source_key"]]  # fmt: skip
    # M1: row b holds the true mobile, the stale a won (a miss survivorship answers for);
    # M2: no row holds P2's landline, its phone is wrong and its name right (not held against
    # it); M3: no row holds anything true (no name; P3 has no phone): not scored in the headline
    records = records.assign(
        name=["高建旭", "高建旭", "郑月怡", None],
        phone=["13900000000", "152-6197-5346", "13800000000", None],
    )
    golden = pd.DataFrame({"master_id": ["M1", "M2", "M3"], "name": ["高建旭", "郑月怡", "林强"],
                           "phone": ["13900000000", "13800000000", None]})  # fmt: skip
    acc = golden_accuracy(golden, cw, truth, "person", records=records)
    assert acc.fully_correct == pytest.approx(1 / 3)  # M3 only: M2's phone is wrong
    assert (acc.held_masters, acc.held_fully_correct) == (2, 0.5)  # M2 right where held
    golden.loc[0, "phone"] = "15261975346"
    acc = golden_accuracy(golden, cw, truth, "person", records=records)
    assert (acc.held_masters, acc.held_fully_correct) == (2, 1.0)
    assert acc.fully_correct == pytest.approx(2 / 3)
    bare = golden_accuracy(golden, cw, truth, "person")
    assert (bare.held_masters, bare.held_fully_correct) == (None, None)


def test_calibration_bands_count_true_matches_by_predicted_probability() -> None:
    rows = truth_rows({"a": "P1", "b": "P1", "c": "P2", "d": "P3", "e": "P3"})
    records = rows.rename(columns={"table": "source_table"})[["department", "source_table",
                                                              "source_key"]]  # fmt: skip
    records = records.assign(record_id="r" + records["source_key"])
    edges = pd.DataFrame(
        {
            "left": ["ra", "ra", "rc", "rd", "ra"],
            "right": ["rb", "rc", "rd", "re", "rzz"],  # rzz: unknown to the truth, left out
            "probability": [0.995, 0.6, 0.7, 0.3, 0.9],
        }
    )
    bands, review = ev.calibration(edges, records, rows, bands=(0.0, 0.5, 0.99, 1.0),
                                   review=(0.5, 0.99))  # fmt: skip
    assert [(b.pairs, b.true_matches) for b in bands] == [(1, 1), (2, 0), (1, 1)]
    assert bands[1].mean_probability == pytest.approx(0.65) and bands[1].true_share == 0.0
    assert review is not None and (review.pairs, review.true_matches) == (2, 0)


def test_golden_master_takes_the_true_entity_with_most_rows() -> None:
    rows = truth_rows({"a": "P2", "b": "P1", "c": "P1"})
    truth = GroundTruth(PERSONS, pd.DataFrame(), rows)
    cw = crosswalk(rows, dict.fromkeys("abc", "M1"))
    golden = pd.DataFrame({"master_id": ["M1"], "name": ["高建旭"]})
    assert golden_accuracy(golden, cw, truth, "person").attributes["name"].accuracy == 1.0
    assert ev.master_entities(cw.assign(entity_id=["P2", "P1", "P1"])).to_dict() == {"M1": "P1"}


def test_golden_enterprise_accuracy() -> None:
    enterprises = pd.DataFrame(
        {
            "enterprise_id": ["E1", "E2"],
            "name": ["华隆（福州）物流有限公司仓山分公司", "福州盛榕食品有限公司"],
            "uscc": ["913501111540462633", "91350121882023211B"],
            "reg_no": ["350111582618458", None],
            "org_code": ["154046263", "882023211"],
            "legal_rep_person_id": ["P1", "P2"],
            "legal_rep_id": ["14222319501227871X", "350121195709127886"],
            "registered_capital": [1000.0, 12.5],
            "established_date": [dt.date(1991, 6, 23), dt.date(2010, 7, 6)],
            "status": ["存续", "注销"],
        }
    )
    rows = truth_rows({"s1": "E1", "s2": "E2"}, "enterprise", dept="shichang")
    truth = GroundTruth(PERSONS, enterprises, rows)
    cw = crosswalk(rows, {"s1": "X1", "s2": "X2"})
    golden = pd.DataFrame(
        {
            "master_id": ["X1", "X2"],
            "name": ["华隆(福州)物流有限公司仓山分公司", "福州盛榕食品有限公司"],
            "uscc": ["913501111540462633", "91350121882023211b"],
            "reg_no": ["350111582618458", "350121783227125"],  # X2 wrong: E2 has none
            "org_code": ["15404626-3", "882023211"],
            "legal_rep_id": ["14222319501227871x", "350121195709127886"],
            "registered_capital": [Decimal("1000.0000"), Decimal("12.50")],
            "established_date": [dt.date(1991, 6, 23), "2010-07-06"],
            "status": ["存续", "存续"],  # X2 wrong
        }
    )
    acc = golden_accuracy(golden, cw, truth, "enterprise")
    got = {a: v.correct for a, v in acc.attributes.items()}
    assert got == {
        "name": 2,
        "uscc": 2,
        "reg_no": 1,
        "org_code": 2,
        "legal_rep_id": 2,
        "registered_capital": 2,
        "established_date": 2,
        "status": 1,
    }
    assert set(acc.skipped) == {"legal_rep_name", "division_code", "address_detail"}
    # a truth whose legal_rep_id still holds person ids is compared through the persons
    by_pid = GroundTruth(PERSONS, enterprises.assign(legal_rep_id=["P1", "P2"]), rows)
    assert golden_accuracy(golden, cw, by_pid, "enterprise").attributes["legal_rep_id"].correct == 2


# --- evaluate ----------------------------------------------------------------------------------


def test_evaluate_counts_rows_and_serialises(tmp_path: Path) -> None:
    rows = truth_rows({**TWO_PAIRS, "e": "P3", "f": "P3"})
    rows["deleted_night"] = pd.array([None, None, None, None, None, 1], dtype="Int32")
    city = write_city(tmp_path, rows, PERSONS, night=1)
    cw = crosswalk(rows, {"a": "M1", "b": "M1", "c": "M1", "f": "M3"})  # d missing, f stale
    unknown = pd.DataFrame([["d", "d_t", "zz", "person", "M9"]], columns=list(ev.CROSSWALK_COLUMNS))
    golden = pd.DataFrame({"master_id": ["M1"], "name": ["高建旭"]})
    result = evaluate(city, pd.concat([cw, unknown]), golden, None)
    assert result.night == 1 and list(result.entities) == ["person"]
    person = result.entities["person"]
    assert person.counts == ev.RowCounts(
        truth_rows=5,
        linked=3,
        missing=2,  # d (rejected) and e
        stale=1,
        unknown=1,
        entity_mismatch=0,
        clusters=1,
        true_entities=3,
        true_entities_linked=2,
    )
    assert (person.pairwise.true_positives, person.pairwise.predicted_pairs) == (1, 3)
    assert person.pairwise.true_pairs == 2
    assert person.golden is not None and person.golden.attributes["name"].accuracy == 1.0
    assert {x.kind for x in person.examples} == {"false_merge", "missing"}
    as_json = json.loads(json.dumps(result.to_dict(), ensure_ascii=False))
    assert as_json["entities"]["person"]["pairwise"]["predicted_pairs"] == 3
    assert as_json["entities"]["person"]["examples"][0]["rows"][0]["source_key"] == "a"
    assert "person: 3/5 rows linked (2 missing)" in result.summary()
    with pytest.raises(ValueError, match="describes night 1"):
        evaluate(city, cw, night=2)


# P1: a, b and the walk-in row w1 (split off); P2: c, d; P3: e and two walk-in rows (linked)
WALK_IN_OWNERS = {"a": "P1", "b": "P1", "w1": "P1", "c": "P2", "d": "P2"}
WALK_IN_OWNERS |= {"e": "P3", "w2": "P3", "w3": "P3"}
WALK_IN_MASTERS = {"a": "M1", "b": "M1", "w1": "M9", "c": "M2", "d": "M2"}
WALK_IN_MASTERS |= {"e": "M3", "w2": "M3", "w3": "M3"}


def walk_in_dirt(keys: list[str], marked: bool = True) -> pd.DataFrame:
    """The labels the sample city gives a walk-in's 卫健 row; ``marked=False``: as a truth
    written before walk-ins were marked has them."""
    labels = [("ID_CARD_NO", "missing"), ("SEX_CODE", "missing"), ("TEL", "stale_value")]
    labels += [("BIRTH_DAY", "day_month_swapped")] + [("ID_CARD_NO", "walk_in")] * marked
    return pd.DataFrame(
        [("weijian", k, c, kind) for k in keys for c, kind in labels],
        columns=["department", "source_key", "column", "kind"],
    )


def test_walk_in_rows_are_a_kind_of_their_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = truth_rows(WALK_IN_OWNERS, dept="weijian")
    city = write_city(tmp_path, rows, PERSONS, dirt=walk_in_dirt(["w1", "w2", "w3"]))
    cw = crosswalk(rows, WALK_IN_MASTERS)
    records = rows.rename(columns={"table": "source_table"})[["department", "source_table",
                                                              "source_key"]]  # fmt: skip
    records = records.assign(record_id="r" + records["source_key"])
    edges = pd.DataFrame(
        {
            "left": ["rw1", "rw1", "rc", "rw2", "ra", "rw2", "rw1"],
            "right": ["ra", "rb", "rw1", "re", "rb", "rzz", "rd"],
            # in the band: w1-a, w1-b (true), c-w1 (false); above it: w2-e; no walk-in: a-b;
            # unknown to the truth: w2-zz; below the band: w1-d
            "probability": [0.6, 0.7, 0.8, 0.995, 0.6, 0.7, 0.2],
        }
    )
    result = evaluate(
        city,
        cw,
        records={"person": records},
        edges={"person": edges},
        review={"person": (0.5, 0.99)},
    )
    person = result.entities["person"]
    # w1-a, w1-b apart; e-w2, e-w3, w2-w3 together (w2-w3 counted once); a-b, c-d, the
    # other pairs, together
    assert person.walk_ins == ev.WalkIns(
        rows=3,
        linked=3,
        true_pairs=5,
        linked_pairs=3,
        recall=0.6,
        other_pairs=2,
        other_linked=2,
        other_recall=1.0,
        review_pairs=3,
        review_true=2,
        review_rows=1,
    )
    [walk] = [c for c in person.cases if c.kind == "walk_in"]
    assert (walk.must, walk.pairs, walk.wrong) == ("link", 5, 2)
    assert walk.label == ev.CASE_LABELS["walk_in"]
    assert (
        "walk-in rows: 2 of 5 pairs of 3 walk-in rows not linked (recall 0.6000; every other "
        "pair 1.0000); the review band holds 1 of the 3 rows, in 3 pairs (2 true)"
    ) in result.summary()
    as_json = json.loads(json.dumps(result.to_dict(), ensure_ascii=False))
    assert as_json["entities"]["person"]["walk_ins"]["review_rows"] == 1
    master._print_cases(result)  # what `govmdm evaluate` prints after the calibration table
    shown = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "person walk-in rows: 2 of 5 pairs of 3 walk-in rows not linked" in shown
    assert "walk_in link 5 2 0.6000 recall" in shown
    # the per-kind table of the linkage page: the pairs touching a walk-in row
    [kind] = [c for c in ev.case_metrics(city, cw)["person"] if c.kind == "walk_in"]
    assert (kind.rows, kind.true_pairs, kind.true_positives, kind.predicted_pairs) == (3, 5, 3, 3)
    # without the night's scored pairs the review band is not known
    bare = evaluate(city, cw).entities["person"].walk_ins
    assert bare is not None and (bare.recall, bare.review_pairs, bare.review_rows) == (
        0.6,
        None,
        None,
    )


def test_a_truth_that_does_not_mark_walk_ins_reports_none(tmp_path: Path) -> None:
    rows = truth_rows(WALK_IN_OWNERS, dept="weijian")
    city = write_city(tmp_path, rows, PERSONS, dirt=walk_in_dirt(["w1", "w2", "w3"], marked=False))
    cw = crosswalk(rows, WALK_IN_MASTERS)
    result = evaluate(city, cw)
    person = result.entities["person"]
    assert person.walk_ins is None and "walk_in" not in {c.kind for c in person.cases}
    assert "walk-in" not in result.summary()
    assert "walk_in" not in {c.kind for c in ev.case_metrics(city, cw)["person"]}
    assert ev.walk_in_keys(None).empty


def test_load_truth_explains_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"persons\.parquet"):
        load_truth(tmp_path)


def test_docstring_examples() -> None:
    assert doctest.testmod(ev).failed == 0


# --- a generated city ------------------------------------------------------------------------


def _perfect_outputs(truth: GroundTruth) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    live = ev.live_rows(truth.rows, truth.night)
    cw = live.rename(columns={"table": "source_table", "entity_type": "entity"}).assign(
        master_id="M-" + live["entity_id"]
    )[list(ev.CROSSWALK_COLUMNS)]
    p = truth.persons
    golden_p = p.assign(
        master_id="M-" + p["person_id"], phone=p["phone"].fillna(p["landline"])
    ).drop(columns=["person_id", "landline"])
    e = truth.enterprises
    golden_e = e.assign(
        master_id="M-" + e["enterprise_id"],
        registered_capital=[Decimal(str(x)) for x in e["registered_capital"]],
    ).drop(columns=["enterprise_id"])
    return cw, golden_p, golden_e


@pytest.fixture(scope="module")
def small_city(make_city: CityFactory) -> Path:
    """A city generated with its next night (births, new firms and a deleted row); shared."""
    return make_city.path(persons=200, enterprises=30, seed=7, nights=1) / "city"


def test_generated_city_with_perfect_outputs_scores_one(small_city: Path) -> None:
    truth = load_truth(small_city)
    assert truth.night == 1 and truth.rows["deleted_night"].notna().any()
    cw, golden_p, golden_e = _perfect_outputs(truth)
    result = evaluate(small_city, cw, golden_p, golden_e)
    assert list(result.entities) == ["person", "enterprise"]
    for e in result.entities.values():
        c = e.counts
        assert (c.missing, c.stale, c.unknown, c.entity_mismatch) == (0, 0, 0, 0)
        assert c.clusters == c.true_entities == c.true_entities_linked
        assert c.linked == c.truth_rows > 0
        ones: list[Any] = [e.pairwise.precision, e.pairwise.recall, e.pairwise.f1]
        ones += [e.clusters.precision, e.clusters.recall, e.clusters.bcubed_f1]
        assert ones == [1.0] * 6
        assert e.golden is not None and e.golden.fully_correct == 1.0
        assert e.golden.skipped == ()
        assert all(a.accuracy == 1.0 for a in e.golden.attributes.values())
        assert e.examples == ()
    # the deleted rows, left in the crosswalk, are counted as stale and change no score
    stale = truth.rows[truth.rows["deleted_night"].notna()]
    cw_stale = pd.concat(
        [
            cw,
            stale.rename(columns={"table": "source_table", "entity_type": "entity"}).assign(
                master_id="M-stale"
            )[list(ev.CROSSWALK_COLUMNS)],
        ]
    )
    again = evaluate(small_city, cw_stale, golden_p, golden_e)
    assert sum(e.counts.stale for e in again.entities.values()) == len(stale)
    assert all(e.pairwise.f1 == e.clusters.f1 == 1.0 for e in again.entities.values())


def test_generated_city_with_one_false_merge(small_city: Path) -> None:
    truth = load_truth(small_city)
    cw, _, _ = _perfect_outputs(truth)
    firms = cw[cw["entity"] == "enterprise"]
    sizes = firms.groupby("master_id").size()
    a, b = sizes.sort_index().index[:2]
    cw.loc[cw["master_id"] == b, "master_id"] = a
    result = evaluate(small_city, cw)
    firm = result.entities["enterprise"]
    merged = int(sizes[a] * sizes[b])
    assert firm.pairwise.predicted_pairs - firm.pairwise.true_positives == merged
    assert firm.clusters.exact == firm.counts.true_entities - 2
    assert result.entities["person"].pairwise.f1 == 1.0
    [merge] = [x for x in firm.examples if x.kind == "false_merge"]
    assert merge.master_ids == (a,) and len(merge.entity_ids) == 2
