"""Comparison levels, table-driven on real-looking canonical values: must agree / must disagree."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import recordlinkage

from etl.standardize import ENTERPRISE_SCHEMA, PERSON_SCHEMA
from fields import normalize
from fields.identifiers import id_check_digit, make_uscc, upgrade_id15
from master_data.compare import (
    MISSING,
    Address,
    BirthDate,
    CodeTypo,
    DateLevel,
    EnterpriseAddress,
    EnterpriseName,
    Exact,
    LegalRepName,
    LevelFeature,
    OrgCode,
    PersonName,
    PersonNames,
    Phones,
    compare,
    describe,
    features_for,
    level_label,
    load_shape_similar,
)


def _id(division: str, birth: str, seq: str) -> str:
    first17 = division + birth + seq
    return first17 + id_check_digit(first17)


def _swap(s: str, i: int) -> str:
    return s[:i] + s[i + 1] + s[i] + s[i + 2 :]


def person(**values: Any) -> dict[str, Any]:
    """A canonical person row; name_pinyin derived as standardization does."""
    row: dict[str, Any] = dict.fromkeys(PERSON_SCHEMA.names)
    row.update(values)
    if row["name"] is not None and "name_pinyin" not in values:
        row["name_pinyin"] = normalize.name_pinyin(row["name"])
    return row


def enterprise(name: str | None = None, **values: Any) -> dict[str, Any]:
    """A canonical enterprise row; name_key and branch derived as standardization does."""
    row: dict[str, Any] = dict.fromkeys(ENTERPRISE_SCHEMA.names)
    if name is not None:
        result = normalize.enterprise_name(name)
        row.update(name=result.value, name_key=result.extra["key"], branch=result.extra["branch"])
    row.update(values)
    return row


def level(feature: LevelFeature, left: dict[str, Any], right: dict[str, Any]) -> int:
    df = pd.DataFrame([left, right], index=["a", "b"])
    pairs = pd.MultiIndex.from_tuples([("a", "b")])
    return int(compare(df, pairs, [feature]).iloc[0, 0])


ID_A = _id("350102", "19850304", "123")
ID_TWIN = _id("350102", "19850304", "125")
USCC = "91350100M000100Y43"


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ("陈伟", "陈伟", 4),
        ("阿依古丽·买买提", "阿依古丽·买买提", 4),
        ("张伟", "章伟", 3),  # homophone surname
        ("单雄信", "单雄信", 4),
        ("李明", "季明", 2),  # 形近字 李/季
        ("余娟", "佘娟", 2),
        ("徐丽华", "涂丽华", 2),
        ("林海", "凌海", 1),  # lin/ling taken down by ear
        ("陈伟", "程伟", 1),
        ("李伟", "李强", 0),  # one character apart, not similar: another person
        ("王芳", "刘洋", 0),
        ("李明", "季明明", 0),  # shape pair but not the same length
        ("李伟", None, MISSING),
    ],
)
def test_person_name(left: str | None, right: str | None, expected: int) -> None:
    assert level(PersonName(), person(name=left), person(name=right)) == expected


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        (ID_A, ID_A, 2),
        (upgrade_id15("110105491231002"), "11010519491231002X", 2),  # 15→18 done upstream
        (ID_A, ID_A[:10] + "9" + ID_A[11:], 1),  # one digit mistyped
        (ID_A, _swap(ID_A, 12), 1),  # two adjacent digits swapped
        (ID_A, ID_TWIN, 0),  # twins: sequence and check digit differ
        (ID_A, _id("350103", "19900101", "456"), 0),
        (ID_A, None, MISSING),
    ],
)
def test_id_number(left: str | None, right: str | None, expected: int) -> None:
    feature = CodeTypo("id_number")
    assert level(feature, person(id_number=left), person(id_number=right)) == expected


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        (dt.date(1985, 3, 4), dt.date(1985, 3, 4), 3),
        (dt.date(1985, 3, 4), dt.date(1985, 4, 3), 2),  # day and month swapped
        (dt.date(1985, 3, 4), dt.date(1985, 3, 20), 1),  # same year and month
        (dt.date(1985, 3, 4), dt.date(1995, 3, 4), 1),  # year one digit off
        (dt.date(1985, 3, 4), dt.date(1986, 3, 4), 1),
        (dt.date(1985, 3, 4), dt.date(1958, 3, 4), 0),  # two digits of the year differ
        (dt.date(1985, 3, 4), dt.date(1985, 5, 4), 0),
        (dt.date(1985, 3, 4), dt.date(1986, 7, 1), 0),
        ("1985-03-04", "1985-03-04", 3),  # ISO strings work too
        (dt.date(1985, 3, 4), None, MISSING),
    ],
)
def test_birth_date(left: Any, right: Any, expected: int) -> None:
    assert level(DateLevel("birth_date"), person(birth_date=left), person(birth_date=right)) == (
        expected
    )


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [("男", "男", 1), ("女", "女", 1), ("男", "女", 0), ("男", None, MISSING)],
)
def test_sex(left: str | None, right: str | None, expected: int) -> None:
    assert level(Exact("sex"), person(sex=left), person(sex=right)) == expected


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        (["13812345678"], ["13812345678"], 2),
        (["13812345678"], ["0591-87654321", "13812345678"], 2),  # any number in common
        (np.array(["0591-87654321"]), np.array(["0591-87654321"]), 2),  # as read from Parquet
        (["13812345678"], ["15912345678"], 1),  # same last 8 digits of a mobile
        (["0591-87654321"], ["0592-87654321"], 1),  # same landline, other area code
        (["0591-87654321-123"], ["0591-87654321"], 1),  # extension
        (["13812345678"], ["13987654321"], 0),
        (["13812345678"], ["0591-12345678"], 0),  # mobile tail is not a landline
        (["13812345678"], None, MISSING),
        (["13812345678"], [], MISSING),
    ],
)
def test_phone(left: Any, right: Any, expected: int) -> None:
    assert level(Phones(), person(phones_all=left), person(phones_all=right)) == expected


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        (("350102", "五一中路100号"), ("350102", "五一中路100号"), 3),
        (("350112", "首占路342号榕城花园29座105室"), ("350112", "首占路342号榕城花园29座105"), 3),
        (
            ("350112", "首占路342号榕城花园29座105室"),
            ("350112", "吴航路121号万科金域20座2306室"),
            2,
        ),
        (("350102", "五一中路100号"), ("350102", None), 2),
        # the same flat as a clerk writes it, street dropped; with building and unit
        (("350105", "江滨东大道144号融侨锦江21座906室"), ("350105", "融侨锦江21-906"), 3),
        (("350105", "君竹路8号金辉花园3号楼2单元502室"), ("350105", "金辉花园3-2-502"), 3),
        (("350105", "江滨东大道144号融侨锦江21座906室"), ("350105", "融侨锦江21-907"), 2),
        (("350105", "金辉花园3号楼2单元502室"), ("350105", "金辉花园3-502"), 2),  # unit unknown
        # one estate name on two streets, both written out: two places
        (
            ("350105", "江滨东大道144号融侨锦江21座906室"),
            ("350105", "君竹路9号融侨锦江21座906室"),
            2,
        ),
        (("350105", "江滨东大道144号融侨锦江21座906室"), ("350104", "融侨锦江21-906"), 1),
        (("350102", "五一中路100号"), ("350103", "五一中路100号"), 1),  # same city 福州
        (("350100", "五一中路100号"), ("350100", "五一中路100号"), 1),  # city-level codes only
        (("350102", "五一中路100号"), ("350203", "五一中路100号"), 0),  # 福州 vs 厦门
        (("350102", "五一中路100号"), (None, "五一中路100号"), MISSING),
    ],
)
def test_address(left: tuple[Any, Any], right: tuple[Any, Any], expected: int) -> None:
    a = person(division_code=left[0], address_detail=left[1])
    b = person(division_code=right[0], address_detail=right[1])
    assert level(Address(), a, b) == expected


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ("福州瑞泰医疗器械有限公司", "福州瑞泰医疗器械有限公司", 5),
        ("福州瑞泰医疗器械有限公司", "瑞泰（福州）医疗器械有限责任公司", 4),  # same name_key
        ("福建恒达环保科技股份有限公司", "恒达环保科技有限公司", 3),  # key similarity ≥ 0.9
        ("福州宏丰建设工程有限公司", "福州宏丰建设工程有限公司福清分公司", 0),  # head vs branch
        ("福州宏丰建设工程有限公司福清分公司", "福州宏丰建设工程有限公司鼓楼分公司", 0),
        ("福州宏丰建设工程有限公司福清分公司", "宏丰（福州）建设工程有限公司福清分公司", 4),
        ("福州瑞泰医疗器械有限公司", "福州腾润餐饮管理有限公司", 0),
        ("福州瑞泰医疗器械有限公司", None, MISSING),
    ],
)
def test_enterprise_name(left: str | None, right: str | None, expected: int) -> None:
    assert level(EnterpriseName(), enterprise(left), enterprise(right)) == expected


def test_enterprise_name_weak_level() -> None:
    feature = EnterpriseName()
    a = {**enterprise(), "name": "甲", "name_key": "闽江医疗器械有限公司"}
    b = {**enterprise(), "name": "乙", "name_key": "闽江医疗设备有限公司"}  # similarity 0.8
    assert level(feature, a, b) == 2


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        # a 个体工商户 filed by tax under its operator's name, a legal rep of the pair
        (("福州市鼓楼区林秀英小吃店", "林秀英"), ("林秀英", "林秀英"), 1),
        (("福州市鼓楼区林秀英小吃店", "林秀英"), ("林秀英", None), 1),
        (("福州市鼓楼区林秀英小吃店", None), ("林秀英", "林秀英"), 1),
        (("林秀英", "林秀英"), ("福州市鼓楼区林秀英小吃店", "林秀英"), 1),
        # the name is nobody's of the pair, or the other name does not hold it
        (("福州市鼓楼区林秀英小吃店", "林秀英"), ("林秀", "林秀英"), 0),
        (("福州市鼓楼区林秀英小吃店", "陈海"), ("林秀英", "陈海"), 0),
        (("福州市鼓楼区好味道小吃店", "林秀英"), ("林秀英", "林秀英"), 0),
    ],
)
def test_enterprise_name_filed_under_the_operator(
    left: tuple[str, str | None], right: tuple[str, str | None], expected: int
) -> None:
    a = enterprise(left[0], legal_rep_name=left[1])
    b = enterprise(right[0], legal_rep_name=right[1])
    assert level(EnterpriseName(), a, b) == expected


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ("吴建明", "吴建明", 4),
        ("吴建明", "吴剑明", 3),  # same pinyin
        ("吴建明", "吴建民", 1),  # pinyin close (-n/-ng)
        ("吴建明", "陈海生", 0),
        ("吴建明", None, MISSING),
    ],
)
def test_legal_rep_name(left: str | None, right: str | None, expected: int) -> None:
    a, b = enterprise(legal_rep_name=left), enterprise(legal_rep_name=right)
    assert level(LegalRepName(), a, b) == expected


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        (("350102", "五一中路100号"), ("350102", "五一中路100号"), 2),
        (("350102", "五一中路100号"), ("350102", "八一七中路3号"), 1),
        # domicile in one district, operating premises in another: no evidence either way
        (("350102", "五一中路100号"), ("350104", "上渡路37号"), MISSING),
        (("350100", "五一中路100号"), ("350102", "五一中路100号"), MISSING),
        (("350102", "五一中路100号"), ("350203", "五一中路100号"), 0),  # 福州 vs 厦门
        (("350102", "五一中路100号"), (None, "五一中路100号"), MISSING),
    ],
)
def test_enterprise_address(
    left: tuple[str | None, str], right: tuple[str | None, str], expected: int
) -> None:
    a = enterprise(division_code=left[0], address_detail=left[1])
    b = enterprise(division_code=right[0], address_detail=right[1])
    assert level(EnterpriseAddress(), a, b) == expected


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        (USCC, USCC, 2),
        (USCC, USCC[:9] + "1" + USCC[10:], 1),
        (USCC, _swap(USCC, 3), 1),
        (USCC, make_uscc("9", "1", "350100", "MA2BXJ19"), 0),
        (USCC, None, MISSING),
    ],
)
def test_uscc(left: str | None, right: str | None, expected: int) -> None:
    assert level(CodeTypo("uscc"), enterprise(uscc=left), enterprise(uscc=right)) == expected


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ({"org_code": "M000100Y4"}, {"org_code": "M000100Y4"}, 1),
        ({"org_code": "M000100Y4"}, {"uscc": USCC}, 1),  # cross-walk through the credit code
        ({"org_code": "MA2BXJ192"}, {"uscc": USCC}, 0),
        ({"uscc": USCC}, {"uscc": USCC}, MISSING),  # left to the uscc feature
        ({"org_code": "M000100Y4"}, {}, MISSING),
    ],
)
def test_org_code(left: dict[str, str], right: dict[str, str], expected: int) -> None:
    assert level(OrgCode(), enterprise(**left), enterprise(**right)) == expected


@pytest.mark.parametrize("column", ["reg_no", "legal_rep_id"])
def test_equal_or_not(column: str) -> None:
    a, b, c = "350104425187297", "350121402078487", None
    assert level(Exact(column), enterprise(**{column: a}), enterprise(**{column: a})) == 1
    assert level(Exact(column), enterprise(**{column: a}), enterprise(**{column: b})) == 0
    assert level(Exact(column), enterprise(**{column: a}), enterprise(**{column: c})) == MISSING


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        (dt.date(1950, 2, 17), dt.date(1950, 2, 17), 4),
        (dt.date(1950, 2, 17), dt.date(1950, 1, 1), 2),  # 正月初一 of 1950 written as 1950-01-01
        (dt.date(1950, 1, 1), dt.date(1950, 2, 17), 2),  # either side may hold the lunar date
        (dt.date(1960, 10, 5), dt.date(1960, 8, 15), 2),  # 中秋 1960
        (dt.date(1955, 4, 22), dt.date(1955, 3, 1), 2),  # 闰三月初一: the leap flag is lost
        (dt.date(1955, 3, 4), dt.date(1955, 4, 3), 3),  # day and month swapped
        (dt.date(1950, 2, 17), dt.date(1950, 1, 2), 0),  # a day off the lunar date
        (dt.date(1950, 2, 17), dt.date(1950, 2, 3), 1),
        (dt.date(1950, 2, 17), None, MISSING),
    ],
)
def test_birth_date_knows_the_lunar_calendar(left: Any, right: Any, expected: int) -> None:
    got = level(BirthDate("birth_date"), person(birth_date=left), person(birth_date=right))
    assert got == expected
    assert level_label(BirthDate("birth_date"), 2, "zh") == "农历公历之差"


def test_person_names_also_meet_the_former_name() -> None:
    registry = person(name="林海涛", former_name="张伟")
    old = person(name="张伟")
    assert level(PersonNames(), registry, old) == 4
    assert level(PersonNames(), old, registry) == 4
    assert level(PersonNames(), person(name="林海涛"), old) == 0  # no 曾用名: different
    assert level(PersonNames(), registry, person(name="章伟")) == 3  # homophone of the former


def test_twins_and_namesakes() -> None:
    """Twins share surname, birth date and address; namesakes share only the name."""
    common = {"birth_date": dt.date(2001, 5, 6), "division_code": "350104", "sex": "女"}
    df = pd.DataFrame(
        [
            person(name="林晓雯", id_number=_id("350104", "20010506", "042"), **common),
            person(name="林晓霞", id_number=_id("350104", "20010506", "064"), **common),
            person(name="林晓雯", id_number=_id("350111", "19790823", "042"),
                   birth_date=dt.date(1979, 8, 23), division_code="350111", sex="女"),
        ],
        index=["twin1", "twin2", "namesake"],
    )  # fmt: skip
    pairs = pd.MultiIndex.from_tuples([("twin1", "twin2"), ("twin1", "namesake")])
    levels = compare(df, pairs, "person")
    assert levels.loc[("twin1", "twin2"), "id_number"] == 0
    assert levels.loc[("twin1", "twin2"), "birth_date"] == 4  # BirthDate: exact
    assert levels.loc[("twin1", "namesake"), "name"] == 4
    assert levels.loc[("twin1", "namesake"), "birth_date"] == 0
    assert levels.loc[("twin1", "namesake"), "id_number"] == 0


def _people() -> pd.DataFrame:
    return pd.DataFrame(
        [
            person(name="张伟", id_number=ID_A, sex="男", birth_date=dt.date(1985, 3, 4),
                   phones_all=["13812345678"], division_code="350102", address_detail="湖东路1号"),
            person(name="章伟", id_number=None, sex="男", birth_date=dt.date(1985, 4, 3),
                   phones_all=["15912345678"], division_code="350103", address_detail=None),
            person(name="李明", id_number=ID_TWIN, sex=None, birth_date=None,
                   phones_all=None, division_code=None, address_detail=None),
        ],
        index=["r1", "r2", "r3"],
    )  # fmt: skip


def test_compare_shape_and_index() -> None:
    df = _people()
    pairs = pd.MultiIndex.from_tuples([("r1", "r2"), ("r1", "r3"), ("r2", "r3")])
    levels = compare(df, pairs, "person")
    assert list(levels.columns) == ["name", "id_number", "birth_date", "sex", "phone", "address"]
    assert levels.index.equals(pairs)
    assert all(dtype == np.int8 for dtype in levels.dtypes)
    assert levels.loc[("r1", "r2")].tolist() == [3, MISSING, 3, 1, 1, 1]  # dates swapped
    assert levels.loc[("r1", "r3")].tolist() == [0, 0, MISSING, MISSING, MISSING, MISSING]


def test_same_levels_through_recordlinkage_compare() -> None:
    df = _people()
    pairs = pd.MultiIndex.from_tuples([("r1", "r2"), ("r1", "r3"), ("r2", "r3")])
    ours = compare(df, pairs, "person")
    theirs = recordlinkage.Compare(features_for("person")).compute(pairs, df)
    assert list(theirs.columns) == list(ours.columns)
    assert (theirs.to_numpy() == ours.to_numpy()).all()


def test_enterprise_features_run_on_canonical_rows() -> None:
    df = pd.DataFrame(
        [
            enterprise("福州宏丰建设工程有限公司", uscc=USCC, division_code="350102",
                       established_date=dt.date(2010, 2, 21)),
            enterprise("福州宏丰建设工程有限公司福清分公司", uscc=USCC, division_code="350181",
                       established_date=dt.date(2012, 2, 10)),
        ],
        index=["head", "branch"],
    )  # fmt: skip
    levels = compare(df, pd.MultiIndex.from_tuples([("branch", "head")]), "enterprise")
    assert levels.iloc[0].to_dict() == {
        "name": 0, "uscc": 2, "reg_no": MISSING, "org_code": MISSING, "legal_rep_id": MISSING,
        "legal_rep_name": MISSING, "address": MISSING, "established_date": 0,
    }  # fmt: skip


def test_labels() -> None:
    assert level_label(PersonName(), 3) == "same_pinyin"
    assert level_label(PersonName(), 2, "zh") == "形近字"
    assert level_label(Phones(), MISSING) == "missing"
    with pytest.raises(ValueError, match="no level 5"):
        level_label(Exact("sex"), 5)
    assert describe({"name": 3, "phone": -1}, "person") == ["name: same_pinyin", "phone: missing"]
    for entity in ("person", "enterprise"):
        for feature in features_for(entity):
            assert len(feature.levels) == len(feature.levels_zh) >= 2, feature


def test_unknown_ids_and_columns() -> None:
    df = _people()
    with pytest.raises(KeyError, match="not in the frame"):
        compare(df, pd.MultiIndex.from_tuples([("r1", "nope")]), "person")
    with pytest.raises(KeyError, match="needs column"):
        compare(df.drop(columns="phones_all"), pd.MultiIndex.from_tuples([("r1", "r2")]), "person")


def test_empty_pairs() -> None:
    levels = compare(_people(), pd.MultiIndex.from_tuples([], names=["l", "r"]), "person")
    assert levels.empty and levels.columns[0] == "name"


def test_shape_similar_list(tmp_path: Path) -> None:
    pairs = load_shape_similar()
    assert {"季李", "佘余", "梁粱"} <= pairs
    assert all(len(p) == 2 and p[0] < p[1] for p in pairs)
    bad = tmp_path / "bad.txt"
    bad.write_text("# ok\n李季\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.txt:2"):
        load_shape_similar(bad)


def test_compare_copies_only_the_columns_its_features_read() -> None:
    """On a full night the records at the ends of the pairs are nearly all of them: compare
    copies the columns its features read, not every column the records frame carries."""
    import tracemalloc

    n = 20_000
    ids = [f"r{i:06d}" for i in range(n)]
    narrow = pd.DataFrame({"birth_date": ["1985-03-04"] * n}, index=ids)
    wide = narrow.assign(**{f"raw_{i}": ids for i in range(40)})
    pairs = pd.MultiIndex.from_arrays([ids[:-1], ids[1:]])

    def peak(frame: pd.DataFrame) -> int:
        tracemalloc.start()
        try:
            compare(frame, pairs, [DateLevel("birth_date")])
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # 40 object columns of 20,000 rows are 6.4 MB a copy
    assert peak(wide) - peak(narrow) < 3_000_000
