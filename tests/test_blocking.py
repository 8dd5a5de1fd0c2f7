"""Blocking: exact candidate pair sets, multi-valued and null keys, oversized blocks, deltas."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import recordlinkage
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.standardize import ENTERPRISE_SCHEMA, PERSON_SCHEMA
from fields import normalize
from fields.identifiers import id_check_digit
from master_data.blocking import (
    BlockingPass,
    PassIndex,
    block_key_table,
    candidate_pairs,
    delta_candidates,
    key_values,
    load_passes,
    masked_key,
    valid_id,
    valid_uscc,
)
from master_data.settings import load_match_settings

SETTINGS = load_match_settings(Path(__file__).resolve().parents[1] / "config")
PERSON_PASSES = SETTINGS.person.blocking
ENTERPRISE_PASSES = SETTINGS.enterprise.blocking


def _id(division: str, birth: str, seq: str) -> str:
    first17 = division + birth + seq
    return first17 + id_check_digit(first17)


def people(rows: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Canonical person rows by record id; name_pinyin and reasons filled in."""
    records = []
    for values in rows.values():
        row: dict[str, Any] = dict.fromkeys(PERSON_SCHEMA.names)
        row["reasons"] = []
        row.update(values)
        if row["name"]:
            row["name_pinyin"] = normalize.name_pinyin(row["name"])
        records.append(row)
    return pd.DataFrame(records, index=pd.Index(list(rows), name="record_id"))


def firms(rows: dict[str, dict[str, Any]]) -> pd.DataFrame:
    records = []
    for values in rows.values():
        row: dict[str, Any] = dict.fromkeys(ENTERPRISE_SCHEMA.names)
        row["reasons"] = []
        row.update(values)
        records.append(row)
    return pd.DataFrame(records, index=pd.Index(list(rows), name="record_id"))


def pairs_of(df: pd.DataFrame, passes: list[BlockingPass], **kw: Any) -> list[tuple[str, str]]:
    return list(candidate_pairs(df, passes, **kw).pairs)


ID_LIN = _id("350102", "19850304", "123")
BAD_ID = ID_LIN[:17] + ("0" if ID_LIN[17] != "0" else "1")  # wrong check digit
D85 = dt.date(1985, 3, 4)


def city() -> pd.DataFrame:
    return people(
        {
            "gongan:1": {"name": "林海", "id_number": ID_LIN, "birth_date": D85,
                         "division_code": "350102"},
            "renshe:7": {"name": "林海", "id_number": ID_LIN, "birth_date": D85,
                         "phones_all": ["13812345678", "0591-87654321"]},
            "weijian:3": {"name": "林海", "birth_date": dt.date(1985, 4, 3),
                          "phones_all": ["13812345678"], "division_code": "350103"},
            "minzheng:2": {"name": "凌海", "birth_date": dt.date(1985, 7, 1),
                           "phones_all": ["0591-87654321"], "division_code": "350102"},
            "gongan:9": {"name": "林海", "birth_date": dt.date(1962, 1, 1),
                         "division_code": "350102"},
            "weijian:5": {"name": "王芳", "birth_date": D85},
        }
    )  # fmt: skip


def test_default_person_passes_exact_pairs() -> None:
    found = candidate_pairs(city(), PERSON_PASSES)
    assert list(found.pairs) == [
        ("gongan:1", "gongan:9"),  # name + district
        ("gongan:1", "renshe:7"),  # id_number, pinyin + birth date
        ("gongan:1", "weijian:3"),  # pinyin + birth year
        ("minzheng:2", "renshe:7"),  # the landline
        ("renshe:7", "weijian:3"),  # the mobile, pinyin + birth year
    ]
    assert found.pairs.names == ["left", "right"]
    by_pass = {p.name: (p.pairs, p.new_pairs) for p in found.report.passes}
    assert by_pass == {
        "id_number": (1, 1),
        "pinyin_birth_date": (1, 0),
        "phone": (2, 2),
        "name_district": (1, 1),
        "pinyin_birth_year": (3, 1),
    }
    assert found.report.pairs == 5 and found.report.skipped == []


def test_pairs_sorted_once_left_before_right() -> None:
    found = candidate_pairs(city(), PERSON_PASSES)
    pairs = list(found.pairs)
    assert pairs == sorted(set(pairs))
    assert all(a < b for a, b in pairs)
    shuffled = city().sample(frac=1, random_state=3)
    assert list(candidate_pairs(shuffled, PERSON_PASSES).pairs) == pairs


def test_multi_valued_phone_keys() -> None:
    df = people(
        {
            "a": {"phones_all": ["13812345678", "0591-87654321"]},
            "b": {"phones_all": ["0591-87654321", "13812345678"]},  # both numbers shared: once
            "c": {"phones_all": ["13812345678"]},
            "d": {"phones_all": ["0591-87654321"]},
            "e": {"phones_all": ["13900000000"]},
            "f": {"phones_all": []},
            "g": {"phones_all": None},
        }
    )
    phone = [BlockingPass(name="phone", keys=("phone_any",))]
    assert pairs_of(df, phone) == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")]


def test_null_key_component_makes_no_pairs() -> None:
    df = people(
        {
            "a": {"name": "林海", "division_code": "350102"},
            "b": {"name": "林海", "division_code": None},
            "c": {"name": "林海", "division_code": None},
            "d": {"name": "", "division_code": "350102"},
            "e": {"name": None, "division_code": "350102"},
            "f": {"name": "林海", "division_code": "350102"},
        }
    )
    p = [BlockingPass(name="name_district", keys=("name", "division_code"))]
    assert pairs_of(df, p) == [("a", "f")]


def test_invalid_values_are_no_keys() -> None:
    df = people(
        {
            "a": {"id_number": ID_LIN},
            "b": {"id_number": ID_LIN},
            "c": {"id_number": BAD_ID},
            "d": {"id_number": BAD_ID},
            # kept by a department but flagged invalid upstream
            "e": {"id_number": ID_LIN, "reasons": ["id_number:id_bad_check_digit"]},
            # a warning does not invalidate
            "f": {"id_number": ID_LIN, "reasons": ["id_number:id_upgraded_15_to_18"]},
        }
    )
    assert valid_id(df).tolist() == [True, True, False, False, False, True]
    p = [BlockingPass(name="id", keys=("id_number",))]
    assert pairs_of(df, p) == [("a", "b"), ("a", "f"), ("b", "f")]


def test_valid_uscc() -> None:
    df = firms(
        {
            "a": {"uscc": "91350100M000100Y43"},
            "b": {"uscc": "91350100M000100Y44"},
            "c": {"uscc": None},
            "d": {"uscc": "91350100M000100Y43", "reasons": ["uscc:uscc_excel_damaged"]},
        }
    )
    assert valid_uscc(df).tolist() == [True, False, False, False]


def test_default_enterprise_passes() -> None:
    df = firms(
        {
            "sc:1": {"name_key": "瑞泰医疗器械有限公司", "uscc": "91350100M000100Y43",
                     "division_code": "350104", "legal_rep_id": ID_LIN},
            "sw:1": {"name_key": "瑞泰医疗器械有限公司", "uscc": "91350100M000100Y43"},
            "sw:2": {"name_key": "恒达环保科技有限公司", "org_code": "M000100Y4"},  # inside sc:1's
            "sw:3": {"name_key": "腾润餐饮管理有限公司", "reg_no": "350104425187297"},
            "sc:2": {"name_key": "腾润餐饮管理有限公司分公司", "reg_no": "350104425187297"},
            "sc:3": {"name_key": "闽江贸易有限公司", "legal_rep_id": ID_LIN},
        }
    )  # fmt: skip
    found = candidate_pairs(df, ENTERPRISE_PASSES)
    assert list(found.pairs) == [
        ("sc:1", "sw:1"),  # uscc, name_key
        ("sc:1", "sw:2"),  # org code inside the credit code
        ("sc:2", "sw:3"),  # reg_no
        ("sw:1", "sw:2"),
    ]
    assert {p.name: p.pairs for p in found.report.passes}["org_code"] == 3


def test_operator_name_pairs_an_individual_business_with_its_operator() -> None:
    """A 个体工商户 under its shop name and under its operator's name meet; a company whose
    legal representative shares the name does not (its name names a company, not her)."""
    df = firms(
        {
            "sc:1": {"name": "福州市鼓楼区林秀英小吃店", "legal_rep_name": "林秀英"},
            "sw:1": {"name": "林秀英", "legal_rep_name": "林秀英"},
            "sc:2": {"name": "福州宏丰建设工程有限公司", "legal_rep_name": "林秀英"},
            "sc:3": {"name": "福州市仓山区好味道小吃店", "legal_rep_name": "陈海"},
            "sw:3": {"name": "陈海", "legal_rep_name": "陈海"},
            "sw:4": {"name": "林秀英", "legal_rep_name": None},
        }
    )
    assert key_values(df, "operator_name").tolist() == [
        "林秀英", "林秀英", None, "陈海", "陈海", None,
    ]  # fmt: skip
    found = candidate_pairs(df, ENTERPRISE_PASSES)
    assert {p.name: p.pairs for p in found.report.passes}["operator_name"] == 2
    assert {("sc:1", "sw:1"), ("sc:3", "sw:3")} <= set(found.pairs)
    assert not {pair for pair in found.pairs if "sc:2" in pair}


def test_oversized_blocks_skipped_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    rows = {f"r{i}": {"name": "张伟", "division_code": "350102"} for i in range(5)}
    rows |= {"x1": {"name": "林海", "division_code": "350102", "phones_all": ["13812345678"]}}
    rows |= {"x2": {"name": "林海", "division_code": "350102", "phones_all": ["13812345678"]}}
    rows["r0"]["phones_all"] = ["13900000000"]
    rows["r1"]["phones_all"] = ["13900000000"]
    df = people(rows)
    passes = [
        BlockingPass(name="name_district", keys=("name", "division_code")),
        BlockingPass(name="phone", keys=("phone_any",)),
    ]
    with caplog.at_level(logging.WARNING, logger="master_data.blocking"):
        found = candidate_pairs(df, passes, max_block=4)
    assert list(found.pairs) == [("r0", "r1"), ("x1", "x2")]
    (skip,) = found.report.skipped
    assert (skip.pass_name, skip.size, skip.key) == ("name_district", 5, "张* + 350102")
    assert "name_district" in caplog.text and "5 rows" in caplog.text
    assert "张伟" not in caplog.text  # personal data masked
    assert found.report.as_dict()["passes"][0]["skipped"] == [{"key": "张* + 350102", "size": 5}]
    # a pass's own limit outranks the run's
    roomy = [BlockingPass(name="name_district", keys=("name", "division_code"), max_block=10)]
    assert len(candidate_pairs(df, roomy, max_block=4).pairs) == 10 + 1


def test_among_blocks_delta_against_everything() -> None:
    df = city()
    full = set(candidate_pairs(df, PERSON_PASSES).pairs)
    delta = candidate_pairs(df, PERSON_PASSES, among={"weijian:3"})
    assert set(delta.pairs) == {p for p in full if "weijian:3" in p}
    assert delta.report.among == 1
    assert candidate_pairs(df, PERSON_PASSES, among=[]).pairs.empty
    with pytest.raises(KeyError, match="not in the frame"):
        candidate_pairs(df, PERSON_PASSES, among={"gongan:404"})


# Small alphabets so that blocks collide often; max_block small so that skipping happens.
_value = st.sampled_from(["甲", "乙", "丙", None])
_phones = st.one_of(st.none(), st.lists(st.sampled_from(["1", "2", "3"]), max_size=3))
_row = st.fixed_dictionaries({"name": _value, "division_code": _value, "phones_all": _phones})


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(_row, min_size=1, max_size=14),
    among_bits=st.lists(st.booleans(), min_size=14, max_size=14),
    max_block=st.integers(min_value=2, max_value=6),
)
def test_among_equals_filtered_full_run(
    rows: list[dict[str, Any]], among_bits: list[bool], max_block: int
) -> None:
    df = pd.DataFrame(rows, index=[f"id{i:02d}" for i in range(len(rows))])
    passes = [
        BlockingPass(name="name", keys=("name",)),
        BlockingPass(name="name_district", keys=("name", "division_code")),
        BlockingPass(name="phone", keys=("phone_any",)),
    ]
    among = {i for i, bit in zip(df.index, among_bits, strict=False) if bit}
    full = list(candidate_pairs(df, passes, max_block=max_block).pairs)
    delta = list(candidate_pairs(df, passes, among=among, max_block=max_block).pairs)
    assert delta == [p for p in full if p[0] in among or p[1] in among]


def test_pass_index_is_a_recordlinkage_algorithm() -> None:
    df = city()
    indexer = recordlinkage.Index()
    indexer.add([PassIndex(p) for p in PERSON_PASSES])
    pairs = indexer.index(df)
    assert set(pairs) == set(candidate_pairs(df, PERSON_PASSES).pairs)


def test_derived_keys() -> None:
    df = people(
        {
            "a": {"birth_date": dt.date(1985, 3, 4), "division_code": "350102"},
            "b": {"birth_date": None, "division_code": "350000"},
        }
    )
    assert key_values(df, "birth_year").tolist() == ["1985", None]
    assert key_values(df, "city_code").tolist() == ["3501", None]
    with pytest.raises(KeyError, match="nope"):
        key_values(df, "nope")


def test_load_passes_validates() -> None:
    passes = {"person": PERSON_PASSES, "enterprise": ENTERPRISE_PASSES}
    assert [p.name for p in passes["person"]] == [
        "id_number", "pinyin_birth_date", "phone", "name_district", "pinyin_birth_year",
    ]  # fmt: skip
    assert passes["enterprise"][-2].keys == ("legal_rep_id", "name_key")
    assert (passes["enterprise"][-1].keys, passes["enterprise"][-1].max_block) == (
        ("operator_name",),
        200,
    )
    with pytest.raises(ValueError, match=r"blocking\.person\[0\].*unknown blocking key"):
        load_passes({"person": [{"name": "x", "keys": ["shoe_size"]}]})
    with pytest.raises(ValueError, match=r"blocking\.person\[0\] \(x\).*do not exist for person"):
        load_passes({"person": [{"name": "x", "keys": ["uscc"]}]})
    with pytest.raises(ValueError, match="used twice"):
        load_passes({"person": [{"name": "x", "keys": ["name"]}, {"name": "x", "keys": ["sex"]}]})
    with pytest.raises(ValueError, match="unknown entity"):
        load_passes({"people": []})


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(_row, min_size=1, max_size=14),
    tonight=st.lists(_row, min_size=14, max_size=14),
    among_bits=st.lists(st.booleans(), min_size=14, max_size=14),
    max_block=st.integers(min_value=2, max_value=6),
)
def test_delta_from_cached_keys_equals_blocking_the_whole_frame(
    rows: list[dict[str, Any]],
    tonight: list[dict[str, Any]],
    among_bits: list[bool],
    max_block: int,
) -> None:
    """Last night's block keys, with the changed rows' keys replaced by tonight's, give the same
    pairs and skipped blocks as blocking tonight's whole frame against the changed rows."""
    passes = [
        BlockingPass(name="name", keys=("name",)),
        BlockingPass(name="name_district", keys=("name", "division_code")),
        BlockingPass(name="phone", keys=("phone_any",)),
    ]
    before = pd.DataFrame(rows, index=[f"id{i:02d}" for i in range(len(rows))])
    among = {i for i, bit in zip(before.index, among_bits, strict=False) if bit}
    now = before.copy()
    for i, rid in enumerate(sorted(among)):  # the changed rows' new versions
        now.loc[rid] = pd.Series(tonight[i])
    cached = candidate_pairs(before, passes, max_block=max_block, keep_keys=True).keys
    assert cached is not None
    fresh = candidate_pairs(now.loc[sorted(among)], passes, keep_keys=True).keys
    assert fresh is not None
    old = cached.filter(
        pc.invert(pc.is_in(cached["record_id"], pa.array(sorted(among), pa.string())))
    )
    keys = pa.concat_tables([old, fresh])

    expected = candidate_pairs(now, passes, among=among, max_block=max_block)
    got = delta_candidates(keys, among, passes, records=len(now), max_block=max_block)
    assert list(got.pairs) == list(expected.pairs)
    assert [p.skipped for p in got.report.passes] == [p.skipped for p in expected.report.passes]


def test_block_key_table_keys_rows_as_candidate_pairs_does_without_judging_blocks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What another engine blocks on: the keys ``keep_keys`` gives, but no block is too big
    for it, so nothing is logged as skipped; a key shows masked as the reports show it."""
    df = city()
    passes = list(
        load_match_settings(Path(__file__).parents[1] / "config").entity("person").blocking
    )
    with caplog.at_level(logging.WARNING, logger="master_data.blocking"):
        keys = block_key_table(df, passes)
    assert not caplog.records
    expected = candidate_pairs(df, passes, keep_keys=True).keys
    assert expected is not None and keys.num_rows > 0
    assert keys.equals(expected)
    by_name = next(p for p in passes if p.keys == ("name", "division_code"))
    text = keys.filter(pc.equal(keys["pass"], by_name.name))["key"][0].as_py()
    name, division = text.split("\x1f")
    assert masked_key(by_name, text) == f"{name[0]}{'*' * (len(name) - 1)} + {division}"


def test_key_table_holds_every_keyed_row_and_key_once() -> None:
    """The block keys kept for the next night: one row per pass, keyed row and key (a row with
    two phones twice), keys of several columns joined by the separator, unkeyed rows left out."""
    df = pd.DataFrame(
        {
            "name": ["张伟", "张伟", None, "李娜"],
            "division_code": ["350102", "350103", "350102", None],
            "phones_all": [["13812345678", "0591-87654321"], ["13812345678"], None, []],
        },
        index=["a", "b", "c", "d"],
    )
    passes = [
        BlockingPass(name="phone", keys=("phone_any",)),
        BlockingPass(name="name_district", keys=("name", "division_code")),
    ]
    keys = candidate_pairs(df, passes, keep_keys=True).keys
    assert keys is not None
    assert keys.schema.names == ["pass", "key", "record_id"]
    assert sorted(zip(*keys.to_pydict().values(), strict=True)) == [
        ("name_district", "张伟\x1f350102", "a"),
        ("name_district", "张伟\x1f350103", "b"),
        ("phone", "0591-87654321", "a"),
        ("phone", "13812345678", "a"),
        ("phone", "13812345678", "b"),
    ]
