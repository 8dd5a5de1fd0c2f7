"""Table-driven cases for fields.normalize: worked identifiers from COMPAT.md and the real-world
forms departments write (full-width digits, traditional characters, Excel serials, …)."""

from __future__ import annotations

import datetime as dt
import doctest
from decimal import Decimal
from typing import Any

import pytest

from fields import divisions, identifiers, normalize
from fields.normalize import SEVERITY

AS_OF = dt.date(2026, 11, 1)


def _id(first17: str) -> str:
    return first17 + identifiers.id_check_digit(first17)


def _uscc_with_bad_org_code() -> str:
    first17 = "91350100M000100Y" + "5"  # the organization code's check is 4
    return first17 + identifiers.uscc_check_char(first17)


def rejected(r: normalize.Normalized[Any]) -> bool:
    return any(SEVERITY[c] == "reject_field" for c in r.reasons)


# ------------------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("  ＡＢＣ　１２３ ", "ABC 123"),
        ("福州\t市\n鼓楼区", "福州 市 鼓楼区"),
        ("\u200b陈伟\ufeff", "陈伟"),
        (12345, "12345"),
        (12.0, "12"),
        (Decimal("100.500"), "100.5"),
        (dt.date(2024, 6, 27), "2024-06-27"),
        ("存续（在营、开业、在册）", "存续(在营、开业、在册)"),
    ],
)
def test_text_cleans(raw: object, value: str) -> None:
    assert normalize.text(raw).value == value


@pytest.mark.parametrize("raw", [None, "", "   ", "NULL", "null", "无", "-", "N/A", float("nan")])
def test_text_missing(raw: object) -> None:
    assert normalize.text(raw).reasons == ("missing",)


# ------------------------------------------------------------------ person names


@pytest.mark.parametrize(
    ("raw", "value", "reasons"),
    [
        ("陈伟", "陈伟", ()),
        ("陳偉", "陈伟", ("traditional_converted",)),
        ("於麗", "於丽", ("traditional_converted",)),  # 於 is a surname of its own, not 于
        ("於丽", "於丽", ()),
        ("蕭偉", "萧伟", ("traditional_converted",)),  # 萧, never 肖
        ("鍾明", "钟明", ("traditional_converted",)),
        ("锺明", "钟明", ("traditional_converted",)),
        ("张乾", "张乾", ()),  # OpenCC alone would write 张干
        ("歐陽修", "欧阳修", ("traditional_converted",)),
        (" 陈  伟 ", "陈伟", ()),
        ("ＬＩ", None, ("name_invalid_chars",)),
        ("阿依古丽•买买提", "阿依古丽·买买提", ()),
        ("阿依古丽・买买提", "阿依古丽·买买提", ()),
        ("阿依古丽‧买买提", "阿依古丽·买买提", ()),
        ("阿依古丽.买买提", "阿依古丽·买买提", ()),
        ("张三（户主）", "张三", ("name_remark_removed",)),
        ("陈伟2", None, ("name_invalid_chars",)),
        ("chen wei", None, ("name_invalid_chars",)),
        ("王", None, ("name_bad_length",)),
        ("NULL", None, ("missing",)),
    ],
)
def test_person_name(raw: str, value: str | None, reasons: tuple[str, ...]) -> None:
    r = normalize.person_name(raw)
    assert (r.value, r.reasons) == (value, reasons)


def test_latin_names_only_when_allowed() -> None:
    assert normalize.person_name("John  Smith", allow_latin=True).value == "JOHN SMITH"
    assert normalize.person_name("John Smith").value is None


@pytest.mark.parametrize(
    ("name", "pinyin"),
    [
        ("陈伟", "chenwei"),
        ("单雄信", "shanxiongxin"),  # 单 as a surname is shan, not dan
        ("曾伟", "zengwei"),
        ("区丽", "ouli"),
        ("仇明", "qiuming"),
        ("欧阳修", "ouyangxiu"),
        ("尉迟恭", "yuchigong"),
        ("吕伟", "lvwei"),
        ("阿依古丽·买买提", "ayigulimaimaiti"),
        ("", ""),
    ],
)
def test_name_pinyin(name: str, pinyin: str) -> None:
    assert normalize.name_pinyin(name) == pinyin


def test_a_given_name_of_two_characters_reads_as_pypinyin_reads_it() -> None:
    """Two characters that are no word of pypinyin's are read one by one, the same as pypinyin
    reads the pair: every pair of 300 common given-name characters, and words (重庆, 长大)."""
    from pypinyin import Style, lazy_pinyin

    chars = (
        "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉萍红娥玲芬燕兰凤洁梅琳素云莲真"
        "环雪荣爱妹香月莺媛瑞凡佳嘉琼勤珍贞莉桂娣叶璧璐娅琦晶妍茜秋珊莎锦黛青倩婷姣婉娴瑾"
        "颖露瑶怡婵雁蓓纨仪荷丹蓉眉君琴蕊薇菁梦岚苑婕馨瑗琰韵融园艺咏卿聪澜纯毓悦昭冰爽琬"
        "茗羽希宁欣飘育滢馥筠柔竹霭凝晓欢霄枫芸菲寒伊亚宜可姬舒影荔枝思丽重长乐行朝和曾单"
        "解朴"
    )
    pairs = [a + b for a in chars[:150] for b in chars[150:]] + ["重庆", "长大", "银行", "音乐"]
    normalize._reading.cache_clear()
    got = [normalize._reading(p) for p in pairs]
    assert got == ["".join(lazy_pinyin(p, style=Style.NORMAL)) for p in pairs]


# ----------------------------------------------------------------- ID numbers

_HK_PERMIT = _id("81000019900101001")
_FOREIGNER = _id("91184019850615002")
_BAD_DATE = _id("11010519490231002")  # 31 February, with a correct check digit
_UNKNOWN_DIVISION = _id("99990119800101001")
_FUTURE = _id("11010520300101001")


@pytest.mark.parametrize(
    ("raw", "value", "reasons"),
    [
        ("11010519491231002X", "11010519491231002X", ()),
        ("11010519491231002x", "11010519491231002X", ()),
        ("１１０１０５１９４９１２３１００２Ｘ", "11010519491231002X", ()),
        ("110105 19491231 002X", "11010519491231002X", ()),
        ("110105-19491231-002X", "11010519491231002X", ()),
        ("'11010519491231002X", "11010519491231002X", ()),
        ("11010519491231002×", "11010519491231002X", ()),
        ("110105491231002", "11010519491231002X", ("id_upgraded_15_to_18",)),
        ("110105194912310021", None, ("id_bad_check_digit",)),
        ("11010519491231002", None, ("id_bad_length",)),
        ("1101051949123100AX", None, ("id_bad_chars",)),
        (_BAD_DATE, None, ("id_bad_birth_date",)),
        ("110105493112002", None, ("id_bad_birth_date",)),
        (_FUTURE, None, ("id_birth_in_future",)),
        (_UNKNOWN_DIVISION, _UNKNOWN_DIVISION, ("id_unknown_division",)),
        (_HK_PERMIT, _HK_PERMIT, ()),
        (_FOREIGNER, _FOREIGNER, ()),
        (1.1010519491231e17, None, ("id_excel_damaged",)),
        (110105491231002.0, "11010519491231002X", ("id_upgraded_15_to_18",)),  # 15 digits survive
        ("350102********002X", None, ("value_masked",)),
        ("1.10105E+17", None, ("id_excel_damaged",)),
        (None, None, ("missing",)),
    ],
)
def test_id_number(raw: object, value: str | None, reasons: tuple[str, ...]) -> None:
    r = normalize.id_number(raw, as_of=AS_OF)
    assert (r.value, r.reasons) == (value, reasons)


def test_id_number_extra() -> None:
    r = normalize.id_number("11010519491231002X")
    assert r.extra == {
        "birth_date": dt.date(1949, 12, 31),
        "sex": "女",
        "kind": "resident",
        "division_code": "110105",
    }


@pytest.mark.parametrize(
    ("number", "kind"),
    [
        (_HK_PERMIT, "hk_residence_permit"),
        (_id("82000019900101001"), "macau_residence_permit"),
        (_id("83000019900101001"), "tw_residence_permit"),
        (_FOREIGNER, "foreign_permanent_resident"),
    ],
)
def test_permits_are_accepted_and_labelled(number: str, kind: str) -> None:
    r = normalize.id_number(number)
    assert r.value == number and r.reasons == ()
    assert r.extra["kind"] == kind


def test_division_code_is_judged_between_birth_and_today() -> None:
    # 350111 was 郊区 1983-1994 and 晋安区 since: valid for anyone born since 1983
    assert normalize.id_number(_id("35011119900101001")).reasons == ()
    # 350182 长乐市 existed 1994-2017: fine for someone born 1960 who registered in between
    assert normalize.id_number(_id("35018219600101001")).reasons == ()
    # 350120 市区 ended in 1983: impossible for someone born in 1990
    assert normalize.id_number(_id("35012019900101001")).reasons == ("id_unknown_division",)


@pytest.mark.parametrize(
    ("birth_date", "sex", "reasons"),
    [
        ("1949-12-31", "女", ()),
        (dt.date(1949, 12, 31), "2", ()),
        ("1949年12月31日", "F", ()),
        ("1949-12-30", "女", ("id_birth_date_mismatch",)),
        (None, "男", ("id_sex_mismatch",)),
        ("1949-12-30", "M", ("id_birth_date_mismatch", "id_sex_mismatch")),
        ("garbage", "?", ()),  # an unreadable cross-check field is that field's problem
    ],
)
def test_id_number_cross_checks_the_row(
    birth_date: object, sex: object, reasons: tuple[str, ...]
) -> None:
    r = normalize.id_number("11010519491231002X", birth_date=birth_date, sex=sex)
    assert r.value == "11010519491231002X"
    assert r.reasons == reasons


@pytest.mark.parametrize(
    ("birth_date", "another"),
    [
        ("2015-03-01", True),  # a child filed under a parent's (or guardian's) number
        ("1961-12-31", True),  # twelve years to the day: a generation
        ("1961-12-30", False),  # a year typed wrong by eleven is still the holder's own row
        ("1949-12-13", False),  # day and month swapped, lunar, typo: days or months apart
        ("1948-01-01", False),  # older than the holder: not a guardian's number
    ],
)
def test_an_id_number_a_generation_older_than_the_row_is_another_persons(
    birth_date: str, another: bool
) -> None:
    r = normalize.id_number("11010519491231002X", birth_date=birth_date, as_of=dt.date(2026, 7, 1))
    if another:
        assert (r.value, r.reasons) == (None, ("id_of_another_person",))
        assert r.extra["other_person_id"] == "11010519491231002X"
    else:
        assert r.value == "11010519491231002X" and "other_person_id" not in r.extra


def test_a_minor_under_an_adults_number_from_five_years_apart() -> None:
    adult = _id("35010220000101001")  # 26 on the reference day
    minor = normalize.id_number(adult, birth_date="2010-06-01", as_of=dt.date(2026, 7, 1))
    assert minor.reasons == ("id_of_another_person",)
    near = normalize.id_number(adult, birth_date="2003-06-01", as_of=dt.date(2026, 7, 1))
    assert near.value == adult  # both adults, three years apart: a typo, not a guardian


# ------------------------------------------------------------------ credit codes

_LETTER_FIRST = identifiers.make_uscc("N", "2", "350100", "M000100Y")


@pytest.mark.parametrize(
    ("raw", "value", "reasons"),
    [
        ("91350100M000100Y43", "91350100M000100Y43", ()),
        ("91350100m000100y43", "91350100M000100Y43", ()),
        (" 9135 0100 M000 100Y 43 ", "91350100M000100Y43", ()),
        ("９１３５０１００Ｍ０００１００Ｙ４３", "91350100M000100Y43", ()),
        (_LETTER_FIRST, _LETTER_FIRST, ()),
        ("91350100M000100Y44", None, ("uscc_bad_check",)),
        ("91350100M000100Y4", None, ("uscc_bad_length",)),
        ("91350100MO00100Y43", "91350100M000100Y43", ("uscc_confusable_fixed",)),
        ("9I35O1OOMOOO1OOY43", "91350100M000100Y43", ("uscc_confusable_fixed",)),
        ("91350100M000100Y4V", None, ("uscc_bad_chars",)),
        ("91350100M000100Y4S", None, ("uscc_bad_chars",)),  # as 5 the check still fails
        ("913501001234567000", None, ("uscc_excel_damaged",)),
        (9.13501001234567e17, None, ("uscc_excel_damaged",)),
        (_uscc_with_bad_org_code(), None, ("uscc_org_code_mismatch",)),
        ("-", None, ("missing",)),
    ],
)
def test_uscc(raw: object, value: str | None, reasons: tuple[str, ...]) -> None:
    r = normalize.uscc(raw)
    assert (r.value, r.reasons) == (value, reasons)


def test_uscc_extra() -> None:
    extra = normalize.uscc("91350100M000100Y43").extra
    assert extra["org_code"] == "M000100Y4"
    assert extra["division_code"] == "350100"
    assert (extra["registration_dept"], extra["org_type"]) == ("9", "1")
    assert extra["registration_dept_name"] == "市场监管"


def test_uscc_unknown_division_is_a_warning() -> None:
    code = identifiers.make_uscc("9", "1", "999999", "M000100Y")
    assert normalize.uscc(code).value == code
    assert normalize.uscc(code).reasons == ("uscc_unknown_division",)


_REG_NO = "35010040001234" + identifiers.reg_no_check("35010040001234")


@pytest.mark.parametrize(
    ("raw", "value", "kind", "reasons"),
    [
        (_REG_NO, _REG_NO, "reg_no", ()),
        ("M000100Y-4", "M000100Y4", "org_code", ()),
        ("m000100y4", "M000100Y4", "org_code", ()),
        ("91350100M000100Y43", "91350100M000100Y43", "uscc", ()),
        (_REG_NO[:-1] + str((int(_REG_NO[-1]) + 1) % 10), None, "reg_no", ("reg_no_bad_check",)),
        ("M000100Y-5", None, "org_code", ("org_code_bad_check",)),
        ("3.50100400012349E+14", "350100400012349", "reg_no", ()),  # 15 digits survive Excel
        ("闽榕工商字第123号", None, None, ("legacy_code_unrecognized",)),
    ],
)
def test_legacy_code(
    raw: str, value: str | None, kind: str | None, reasons: tuple[str, ...]
) -> None:
    r = normalize.legacy_code(raw)
    assert (r.value, r.extra.get("kind"), r.reasons) == (value, kind, reasons)


# ------------------------------------------------------------------------- phones


@pytest.mark.parametrize(
    ("raw", "value", "all_numbers", "reasons"),
    [
        ("13812345678", "13812345678", ["13812345678"], ()),
        (13812345678, "13812345678", ["13812345678"], ()),
        ("１３８１２３４５６７８", "13812345678", ["13812345678"], ()),
        ("+86 138 1234 5678", "13812345678", ["13812345678"], ()),
        ("+86-138-1234-5678", "13812345678", ["13812345678"], ()),
        ("86-13812345678", "13812345678", ["13812345678"], ()),
        ("0086 13812345678", "13812345678", ["13812345678"], ()),
        ("138 1234 5678", "13812345678", ["13812345678"], ()),
        ("0591-87654321", "0591-87654321", ["0591-87654321"], ()),
        ("(0591)87654321", "0591-87654321", ["0591-87654321"], ()),
        ("（0591）8765 4321", "0591-87654321", ["0591-87654321"], ()),
        ("010-12345678", "010-12345678", ["010-12345678"], ()),
        ("+86 591 8765 4321", "0591-87654321", ["0591-87654321"], ()),
        ("0591-87654321转123", "0591-87654321-123", ["0591-87654321-123"], ()),
        ("0591-87654321 ext. 123", "0591-87654321-123", ["0591-87654321-123"], ()),
        ("0591-87654321x123", "0591-87654321-123", ["0591-87654321-123"], ()),
        ("0591-87654321-分机123", "0591-87654321-123", ["0591-87654321-123"], ()),
        ("0591-87654321-123", "0591-87654321-123", ["0591-87654321-123"], ()),
        (
            "13812345678/0591-87654321",
            "13812345678",
            ["13812345678", "0591-87654321"],
            ("phone_multiple",),
        ),
        (
            "13812345678，13912345678；0591-87654321",
            "13812345678",
            ["13812345678", "13912345678", "0591-87654321"],
            ("phone_multiple",),
        ),
        (
            "13812345678、13912345678",
            "13812345678",
            ["13812345678", "13912345678"],
            ("phone_multiple",),
        ),
        (
            "13812345678或13912345678",
            "13812345678",
            ["13812345678", "13912345678"],
            ("phone_multiple",),
        ),
        (
            "13812345678 0591-87654321",
            "13812345678",
            ["13812345678", "0591-87654321"],
            ("phone_multiple",),
        ),
        (
            "手机：13812345678 电话：0591-87654321",
            "13812345678",
            ["13812345678", "0591-87654321"],
            ("phone_multiple",),
        ),
        ("13812345678/13812345678", "13812345678", ["13812345678"], ()),
        (
            "0591-87654321,87654322",
            "0591-87654321",
            ["0591-87654321", "0591-87654322"],
            ("phone_multiple",),
        ),
        ("13812345678/123", "13812345678", ["13812345678"], ("phone_partly_invalid",)),
        ("400-800-8888", "4008008888", ["4008008888"], ()),
        ("+852 9123 4567", "+85291234567", ["+85291234567"], ()),
        ("87654321", None, [], ("phone_no_area_code",)),
        ("138****5678", None, [], ("value_masked",)),
        ("0591-8765****", None, [], ("value_masked",)),
        ("12345", None, [], ("phone_invalid",)),
        ("1381234567", None, [], ("phone_invalid",)),
        ("无", None, None, ("phone_missing",)),
        (None, None, None, ("phone_missing",)),
    ],
)
def test_phones(
    raw: object, value: str | None, all_numbers: list[str] | None, reasons: tuple[str, ...]
) -> None:
    r = normalize.phones(raw)
    assert (r.value, r.extra.get("all"), r.reasons) == (value, all_numbers, reasons)


def test_phone_kinds_and_default_area_code() -> None:
    assert normalize.phones("13812345678/0591-87654321").extra["kinds"] == ["mobile", "landline"]
    assert normalize.phones("87654321", default_area_code="0591").value == "0591-87654321"


def test_plain_mobile_shortcut_gives_what_phonenumbers_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A field holding only one mobile's digits (in the shapes departments write them) skips
    phonenumbers when they are a CN mobile; every such number, and every one that is not, reads
    the same both ways."""
    import random
    import re

    rng = random.Random(15)
    numbers = [f"1{a}{rng.randrange(10**9):09d}" for a in range(10) for _ in range(200)]
    numbers += [f"1{rng.randrange(10**10):010d}" for _ in range(3000)]
    numbers += ["17400012345", "17406012345", "16100012345", "14512345678", "19412345678"]
    numbers += ["١٣٨١٢٣٤٥٦٧٨", "13812345678 ", "+8613812345678", "10012345678", "17912345678"]
    shapes = (
        "{}{} {} {}", "{}{}-{}-{}", "+86 {}{} {} {}", "86-{}{}{}{}", "+86{}{}{}{}",
        "86 {}{} {}-{}", "+86-{}{}{}{}", "0{}{}{}{}", "+85 {}{} {} {}", "8{}{}{}{}",
    )  # fmt: skip
    numbers += [
        shape.format(n[:1], n[1:3], n[3:7], n[7:])
        for i, n in enumerate(numbers[:2000])
        for shape in shapes[i % 3 :: 3]
    ]
    shortcut = {n: normalize.phones(n) for n in numbers}
    assert sum(bool(normalize._PLAIN_MOBILE.fullmatch(n)) for n in numbers) > 1000
    monkeypatch.setattr(normalize, "_PLAIN_MOBILE", re.compile("(?!)"))
    assert {n: normalize.phones(n) for n in numbers} == shortcut


# -------------------------------------------------------------------------- dates


@pytest.mark.parametrize("fmt", ["%Y%m%d", "%Y%m%d%H%M%S", "%Y-%m-%d", "%Y-%m-%d %H:%M:%S"])
def test_parse_time_is_strptime(fmt: str) -> None:
    """Same datetime, or a ValueError with the same message, for stamps that are right, out of
    range (2月30日, 13月, 24时, 60秒, year 0), short, long, spaced or in full-width digits."""
    import random

    rng = random.Random(16)

    def reading(f: Any, s: str) -> Any:
        try:
            return f(s, fmt)
        except ValueError as e:
            return ("ValueError", str(e))

    stamps = ["00000101", "0000-01-01", "２０２４０６２７", "2024-6-27", "20240627 ", "2024062"]
    for _ in range(4000):
        y = rng.choice(["1990", "2024", "2000", "1900", "0000", "9999"])
        parts = [f"{rng.randrange(0, 14):02d}", f"{rng.randrange(0, 33):02d}"]
        parts += [
            f"{rng.randrange(0, 26):02d}",
            f"{rng.randrange(0, 62):02d}",
            f"{rng.randrange(0, 62):02d}",
        ]
        if "-" in fmt:
            s = f"{y}-{parts[0]}-{parts[1]}" + (
                f" {parts[2]}:{parts[3]}:{parts[4]}" if "H" in fmt else ""
            )
        else:
            s = y + "".join(parts[: 5 if "H" in fmt else 2])
        stamps += [s, s[:-1], s + "0", s.replace("-", "/")]
    expected = [reading(dt.datetime.strptime, s) for s in stamps]
    assert [reading(normalize.parse_time, s) for s in stamps] == expected
    assert sum(not isinstance(r, tuple) for r in expected) > 1000


D = dt.date(2024, 6, 27)


@pytest.mark.parametrize(
    ("raw", "value", "reasons"),
    [
        (D, D, ()),
        (dt.datetime(2024, 6, 27, 23, 59), D, ()),
        ("2024年6月27日", D, ()),
        ("2024年06月27号", D, ()),
        ("2024 年 6 月 27 日", D, ()),
        ("二〇二四年六月二十七日", D, ()),
        ("20240627", D, ()),
        (20240627, D, ()),
        ("2024/6/27", D, ()),
        ("2024-06-27", D, ()),
        ("2024.6.27", D, ()),
        ("２０２４－０６－２７", D, ()),
        ("2024-06-27 15:30:00", D, ()),
        ("2024-06-27T15:30:00+08:00", D, ()),
        ("2024/6/27 0:00", D, ()),
        ("20240627153000", D, ()),
        ("45470", D, ()),  # Excel serial, from 1899-12-30
        (45470, D, ()),
        (45470.75, D, ()),
        (Decimal("45470"), D, ()),
        ("27/06/2024", D, ()),  # day first, unambiguous since 27 > 12
        ("6/27/2024", D, ()),
        ("27-JUN-24", D, ("date_ambiguous",)),  # Oracle's default format, century guessed
        ("27-6月 -24", D, ("date_ambiguous",)),
        ("2024/27/6", D, ("date_ambiguous",)),  # year/day/month: the only possible reading
        ("06/07/2024", None, ("date_day_month_unclear",)),
        ("2024-02-30", None, ("date_impossible",)),
        ("2023-02-29", None, ("date_impossible",)),
        ("2024年13月45日", None, ("date_impossible",)),
        ("1990", None, ("date_incomplete",)),  # dateutil would invent a month and day
        (1990, None, ("date_incomplete",)),
        ("1990年", None, ("date_incomplete",)),
        ("2024-06", None, ("date_incomplete",)),
        ("2024年6月", None, ("date_incomplete",)),
        ("202406", None, ("date_incomplete",)),
        ("1900-01-01", None, ("date_out_of_range",)),
        ("9999-12-31", None, ("date_out_of_range",)),
        ("0001-01-01", None, ("date_out_of_range",)),
        ("六月二十七", None, ("date_unparseable",)),
        ("2024-06-2715", None, ("date_unparseable",)),
        ("yesterday", None, ("date_unparseable",)),
        (True, None, ("date_unparseable",)),
        ("", None, ("missing",)),
        (None, None, ("missing",)),
        (float("nan"), None, ("missing",)),
    ],
)
def test_date(raw: object, value: dt.date | None, reasons: tuple[str, ...]) -> None:
    r = normalize.date(raw, as_of=AS_OF)
    assert (r.value, r.reasons) == (value, reasons)


@pytest.mark.parametrize(
    ("raw", "fmt", "value", "reasons"),
    [
        ("27.06.2024", "%d.%m.%Y", D, ()),
        ("30.02.2024", "%d.%m.%Y", None, ("date_impossible",)),
        ("2024-06-27", "%d.%m.%Y", None, ("date_unparseable",)),
        ("1990", "excel_serial", dt.date(1905, 6, 12), ()),
        (61, "excel_serial", dt.date(1900, 3, 1), ()),
        # Excel's phantom 1900-02-29 and the day before it
        (60, "excel_serial", None, ("date_impossible",)),
        (59, "excel_serial", dt.date(1900, 2, 28), ()),
        ("2024年6月27日", "chinese", D, ()),
        ("2024/6/27", "chinese", D, ()),
        ("20240627", "chinese", None, ("date_unparseable",)),
    ],
)
def test_date_explicit_format(
    raw: object, fmt: str, value: dt.date | None, reasons: tuple[str, ...]
) -> None:
    r = normalize.date(raw, fmt=fmt)
    assert (r.value, r.reasons) == (value, reasons)


def test_date_in_future() -> None:
    assert normalize.date("2024-06-28", as_of=D).reasons == ("date_in_future",)
    assert normalize.date("2024-06-27", as_of=D).value == D


# ---------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("raw", "default_city", "expected", "reasons"),
    [
        (
            "福建省福州市鼓楼区五四路1号",
            None,
            ("福建省", "福州市", "鼓楼区", "350102", "五四路1号"),
            (),
        ),
        ("福州鼓楼五四路1号", None, ("福建省", "福州市", "鼓楼区", "350102", "五四路1号"), ()),
        ("福建福州鼓楼区五四路", None, ("福建省", "福州市", "鼓楼区", "350102", "五四路"), ()),
        ("福州市鼓楼区五四路1号", None, ("福建省", "福州市", "鼓楼区", "350102", "五四路1号"), ()),
        ("福建省鼓楼区五四路1号", None, ("福建省", "福州市", "鼓楼区", "350102", "五四路1号"), ()),
        ("晋安区福新中路8号", None, ("福建省", "福州市", "晋安区", "350111", "福新中路8号"), ()),
        ("福清融城路3号", None, ("福建省", "福州市", "福清市", "350181", "融城路3号"), ()),
        (
            "鼓楼区五四路1号",
            "350100",
            ("福建省", "福州市", "鼓楼区", "350102", "五四路1号"),
            (),
        ),
        ("鼓楼五四路1号", "350100", ("福建省", "福州市", "鼓楼区", "350102", "五四路1号"), ()),
        (
            "鼓楼区五四路1号",
            None,
            (None, None, "鼓楼区", None, "五四路1号"),
            ("address_ambiguous_district",),
        ),
        (
            "福建省福州市鼓樓區五四路1號",
            None,
            ("福建省", "福州市", "鼓楼区", "350102", "五四路1号"),
            ("traditional_converted",),
        ),
        (
            "中国 福建省 福州市 鼓楼区 五四路1号",
            None,
            ("福建省", "福州市", "鼓楼区", "350102", "五四路1号"),
            (),
        ),
        (
            "北京市朝阳区建国路88号",
            None,
            ("北京市", "北京市", "朝阳区", "110105", "建国路88号"),
            (),
        ),
        (
            "朝阳区建国路88号",
            "110000",
            ("北京市", "北京市", "朝阳区", "110105", "建国路88号"),
            (),
        ),
        ("湖北省仙桃市钱沟路", None, ("湖北省", None, "仙桃市", "429004", "钱沟路"), ()),
        (
            "延边延吉市光明街",
            None,
            ("吉林省", "延边朝鲜族自治州", "延吉市", "222401", "光明街"),
            (),
        ),
        (
            "福建省福州市郊区岳峰路",  # 郊区 was renamed 晋安区 in 1995, same code
            None,
            ("福建省", "福州市", "晋安区", "350111", "岳峰路"),
            ("address_historical_name",),
        ),
        (
            "福州市长乐市吴航路",  # 长乐市 350182 became 长乐区 350112 in 2017
            None,
            ("福建省", "福州市", "长乐区", "350112", "吴航路"),
            ("address_historical_name",),
        ),
        ("中山路100号", None, (None, None, None, None, "中山路100号"), ("address_unparsed",)),
        ("鼓楼东街1号", None, (None, None, None, None, "鼓楼东街1号"), ("address_unparsed",)),
        ("鼓楼东街1号", "350100", ("福建省", "福州市", "鼓楼区", "350102", "东街1号"), ()),
        ("五四路1号", "350100", (None, None, None, None, "五四路1号"), ("address_unparsed",)),
    ],
)
def test_address(
    raw: str,
    default_city: str | None,
    expected: tuple[str | None, ...],
    reasons: tuple[str, ...],
) -> None:
    r = normalize.address(raw, default_city_code=default_city)
    assert r.value is not None
    a = r.value
    assert (a.province, a.city, a.district, a.division_code, a.detail) == expected
    assert r.reasons == reasons


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("北京市 北京市西城区金融街1号", ("北京市", "北京市", "西城区", "110102", "金融街1号")),
        ("北京 北京市西城区金融街1号", ("北京市", "北京市", "西城区", "110102", "金融街1号")),
        (
            "福建省福建省福州市鼓楼区五四路1号",
            ("福建省", "福州市", "鼓楼区", "350102", "五四路1号"),
        ),
        ("福州市 福州市鼓楼区五四路1号", ("福建省", "福州市", "鼓楼区", "350102", "五四路1号")),
        # a county named after its league is not the league written twice
        (
            "阿拉善盟阿拉善左旗巴彦浩特镇",
            ("内蒙古自治区", "阿拉善盟", "阿拉善左旗", "152921", "巴彦浩特镇"),
        ),
    ],
)  # fmt: skip
def test_a_division_written_twice_keeps_what_follows(
    raw: str, expected: tuple[str | None, ...]
) -> None:
    r = normalize.address(raw, default_city_code="350100")
    a = r.value
    assert a is not None and r.reasons == ()
    assert (a.province, a.city, a.district, a.division_code, a.detail) == expected


def test_a_district_two_cities_of_the_named_province_have_is_not_guessed() -> None:
    """河北省桥西区: 石家庄 and 张家口 each have one (邢台's was renamed 信都区 in 2020)."""
    r = normalize.address("河北省桥西区中山路1号", default_city_code="350100")
    a = r.value
    assert a is not None
    assert (a.province, a.city, a.district, a.division_code) == ("河北省", None, "桥西区", "130000")
    assert r.reasons == ("address_ambiguous_district",)
    assert set(r.extra["candidates"]) == {"130104", "130703"}
    # one name under one province with a retired code kept open: the newest code, as before
    assert normalize.address("湖北省神农架林区松柏镇").value.division_code == "429021"  # type: ignore[union-attr]


def _written(d: divisions.Division) -> dict[str, str]:
    """A county's address as departments write it: in full, spaced, abbreviated, the province
    twice, and without the province."""
    province = divisions.lookup(d.code[:2] + "0000")
    assert province is not None
    prov = province.name
    pref = d.prefecture if d.prefecture and d.prefecture != prov else ""
    short_prov = normalize._short_name(prov) or prov
    short_pref = (normalize._short_name(pref) or pref) if pref else ""
    forms = {
        "full": f"{prov}{pref}{d.name}幸福路1号",
        "spaced": f"{prov} {pref} {d.name} 幸福路1号",
        "twice": f"{prov} {prov}{pref}{d.name}幸福路1号",
        "short": f"{short_prov}{short_pref}{d.name}幸福路1号",
        "province and county": f"{prov}{d.name}幸福路1号",
    }
    if pref:
        forms["city and county"] = f"{pref}{d.name}幸福路1号"
    return forms


def test_no_address_of_another_city_lands_in_the_configured_one() -> None:
    """Every county of China outside 福州, written the ways departments write it, parsed for a
    city configured as 福州 (350100): none resolves into 福州, and in full (also spaced, or with
    the province twice) each resolves to its own county."""
    into_default: list[str] = []
    wrong: list[tuple[str, str | None]] = []
    counties = [
        d
        for d in divisions.all_divisions()
        if d.level == "county"
        and d.end is None
        and d.name not in ("市辖区", "县")
        and not d.code.startswith("3501")
        and d.prefecture not in ("林区",)  # 神农架林区 sits under a grouping, not a city
    ]
    assert len(counties) > 2800
    for d in counties:
        for kind, text in _written(d).items():
            a = normalize.address(text, default_city_code="350100").value
            code = a.division_code if a is not None else None
            if code and code.startswith("3501"):
                into_default.append(text)
            if kind in ("full", "spaced", "twice") and code != d.code:
                wrong.append((text, code))
    assert into_default == []
    assert wrong == []


def test_address_full_and_dict_access() -> None:
    a = normalize.address("福州鼓楼五四路1号").value
    assert a is not None
    assert a.full == "福建省福州市鼓楼区五四路1号"
    assert a["district"] == "鼓楼区"
    assert a.as_dict()["division_code"] == "350102"
    beijing = normalize.address("北京市朝阳区建国路88号").value
    assert beijing is not None and beijing.full == "北京市朝阳区建国路88号"  # no 北京市北京市


def test_ambiguous_district_lists_candidates() -> None:
    r = normalize.address("鼓楼区五四路1号")
    assert set(r.extra["candidates"]) >= {"350102", "320106"}


def test_missing_address() -> None:
    assert normalize.address("  ").reasons == ("address_missing",)


# -------------------------------------------------------------- enterprise names


@pytest.mark.parametrize(
    "variants",
    [
        [
            "福州恒达科技有限公司",
            "恒达科技有限责任公司",
            "恒达（福州）科技有限公司",
            "恒达(福州)科技有限公司",
            "福建省福州市恒达科技有限公司",
            "恒達科技有限公司",
            " 恒达 科技 有限公司 ",
        ],
        [
            "恒达科技有限公司鼓楼分公司",
            "恒达科技有限公司（鼓楼分公司）",
            "福州恒达科技有限公司(鼓楼分公司)",
            "恒达科技有限责任公司[鼓楼分公司]",
        ],
        ["福州腾隆科技股份有限公司", "腾隆科技股份有限公司"],
        ["福州市场开发有限公司", "福州市市场开发有限公司", "市场开发有限公司"],
    ],
)
def test_enterprise_name_variants_share_a_key(variants: list[str]) -> None:
    keys = {normalize.enterprise_name(v).extra["key"] for v in variants}
    assert len(keys) == 1, keys


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("恒达科技有限公司", "恒达科技有限公司鼓楼分公司"),
        ("恒达科技有限公司鼓楼分公司", "恒达科技有限公司台江分公司"),
        ("恒达科技有限公司", "恒达科技股份有限公司"),
        ("恒达科技有限公司", "恒达贸易有限公司"),
    ],
)
def test_enterprise_names_that_must_not_share_a_key(a: str, b: str) -> None:
    assert normalize.enterprise_name(a).extra["key"] != normalize.enterprise_name(b).extra["key"]


@pytest.mark.parametrize(
    ("raw", "value", "branch", "place"),
    [
        ("恒达(福州)科技有限公司", "恒达（福州）科技有限公司", None, "福州"),
        ("福州恒达科技有限公司", "福州恒达科技有限公司", None, "福州"),
        ("恒达科技有限公司(鼓楼分公司)", "恒达科技有限公司（鼓楼分公司）", "鼓楼分公司", None),
        ("中国银行股份有限公司福州分行", "中国银行股份有限公司福州分行", "福州分行", None),
        ("恒达科技有限公司福州营业部", "恒达科技有限公司福州营业部", "福州营业部", None),
        ("恒达科技有限公司驻京办事处", "恒达科技有限公司驻京办事处", "驻京办事处", None),
        ("恒达集团有限公司鼓楼分公司", "恒达集团有限公司鼓楼分公司", "鼓楼分公司", None),
        ("招商银行福州分行", "招商银行福州分行", "福州分行", None),
        ("中山北路餐饮有限公司", "中山北路餐饮有限公司", None, None),
    ],
)
def test_enterprise_name_parts(raw: str, value: str, branch: str | None, place: str | None) -> None:
    r = normalize.enterprise_name(raw)
    assert (r.value, r.extra["branch"], r.extra["place"]) == (value, branch, place)


@pytest.mark.parametrize(("raw", "reason"), [("12345", "enterprise_name_invalid"), ("", "missing")])
def test_enterprise_name_rejects(raw: str, reason: str) -> None:
    assert normalize.enterprise_name(raw).reasons == (reason,)


# ------------------------------------------------------ sex, ethnicity, capital


@pytest.mark.parametrize(
    ("raw", "value", "reasons"),
    [
        ("男", "男", ()),
        ("女", "女", ()),
        ("男性", "男", ()),
        ("M", "男", ()),
        ("f", "女", ()),
        ("1", "男", ()),
        (2, "女", ()),
        (1.0, "男", ()),
        ("Male", "男", ()),
        ("FEMALE", "女", ()),
        ("0", None, ("sex_unknown",)),
        ("9", None, ("sex_unknown",)),
        ("未知", None, ("sex_unknown",)),
        ("3", None, ("sex_invalid",)),
        (True, None, ("sex_invalid",)),
        (None, None, ("missing",)),
    ],
)
def test_sex(raw: object, value: str | None, reasons: tuple[str, ...]) -> None:
    r = normalize.sex(raw)
    assert (r.value, r.reasons) == (value, reasons)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("01", "汉族"),
        ("1", "汉族"),
        (1, "汉族"),
        ("汉族", "汉族"),
        ("汉", "汉族"),
        ("漢族", "汉族"),
        ("09", "布依族"),
        ("22", "畲族"),
        ("畲族", "畲族"),
        ("维吾尔", "维吾尔族"),
        ("56", "基诺族"),
        ("97", "其他"),
        ("98", "外国血统中国籍人士"),
        ("57", None),
        ("火星族", None),
    ],
)
def test_ethnicity(raw: object, value: str | None) -> None:
    r = normalize.ethnicity(raw)
    assert r.value == value
    assert (r.value is None) == (r.reasons == ("ethnicity_invalid",))


@pytest.mark.parametrize(
    ("raw", "value", "currency"),
    [
        ("100万", Decimal("100"), "CNY"),
        ("100万元", Decimal("100"), "CNY"),
        ("100.5万元人民币", Decimal("100.5"), "CNY"),
        ("人民币100万元", Decimal("100"), "CNY"),
        ("￥1,000.5万", Decimal("1000.5"), "CNY"),
        ("1,000.5", Decimal("1000.5"), "CNY"),
        ("1亿", Decimal("10000"), "CNY"),
        ("100万元整", Decimal("100"), "CNY"),
        ("5,000,000元", Decimal("500"), "CNY"),
        ("50万美元", Decimal("50"), "USD"),
        (200, Decimal("200"), "CNY"),
        (200.5, Decimal("200.5"), "CNY"),
        (Decimal("5000.0000"), Decimal("5000"), "CNY"),
    ],
)
def test_registered_capital(raw: object, value: Decimal, currency: str) -> None:
    r = normalize.registered_capital(raw)
    assert (r.value, r.extra["currency"]) == (value, currency)


@pytest.mark.parametrize("raw", ["很多", "-5", "100万卢布", "1e5"])
def test_registered_capital_rejects(raw: str) -> None:
    assert normalize.registered_capital(raw).reasons == ("capital_invalid",)


def test_registered_capital_column_in_yuan() -> None:
    assert normalize.registered_capital("5000000", unit="元").value == Decimal("500")


# --------------------------------------------------------------------- dispatcher


@pytest.mark.parametrize(
    ("field", "raw", "context", "value", "reasons"),
    [
        ("name", "陳偉", {"as_of": AS_OF}, "陈伟", ("traditional_converted",)),
        ("legal_rep_name", "於麗", {}, "於丽", ("traditional_converted",)),
        ("id_number", "110105491231002", {"sex": "女"}, "11010519491231002X", None),
        ("legal_rep_id", "11010519491231002X", {"sex": "男"}, "11010519491231002X", None),
        ("sex", "F", {}, "女", ()),
        ("birth_date", "1949年12月31日", {"as_of": AS_OF}, dt.date(1949, 12, 31), ()),
        ("established_date", "45470", {}, D, ()),
        ("phone", "+86 138 1234 5678", {}, "13812345678", ()),
        ("uscc", "91350100M000100Y43", {}, "91350100M000100Y43", ()),
        ("employer_uscc", "913501001234567000", {}, None, ("uscc_excel_damaged",)),
        ("reg_no", _REG_NO, {}, _REG_NO, ()),
        ("reg_no", "M000100Y-4", {}, "M000100Y4", ("code_kind_mismatch",)),
        ("org_code", "M000100Y-4", {}, "M000100Y4", ()),
        ("registered_capital", "100万", {}, Decimal("100"), ()),
        ("status", " 存续 ", {}, "存续", ()),
        ("ethnicity", "01", {}, "汉族", ()),
        ("enterprise_name", "恒达(福州)科技有限公司", {}, "恒达（福州）科技有限公司", ()),
    ],
)
def test_normalize_value(
    field: str, raw: object, context: dict[str, Any], value: object, reasons: tuple[str, ...] | None
) -> None:
    r = normalize.normalize_value(field, raw, **context)
    assert r.value == value
    if reasons is not None:
        assert r.reasons == reasons


def test_dispatcher_passes_context_and_checks_the_row() -> None:
    r = normalize.normalize_value("id_number", "11010519491231002X", sex="男", as_of=AS_OF)
    assert r.reasons == ("id_sex_mismatch",)
    r = normalize.normalize_value("address", "鼓楼区五四路1号", default_city_code="350100")
    assert r.value is not None and r.value.division_code == "350102"


def test_dispatcher_unknown_field_is_a_programming_error() -> None:
    with pytest.raises(KeyError, match="no normalizer"):
        normalize.normalize_value("shoe_size", "42")


def test_a_reject_reason_always_drops_the_value() -> None:
    for r in (
        normalize.id_number("110105194912310021"),
        normalize.uscc("91350100M000100Y44"),
        normalize.date("2024-02-30"),
    ):
        assert r.value is None and rejected(r)


def test_docstring_examples_hold() -> None:
    failures, tried = doctest.testmod(normalize)
    assert tried > 0 and failures == 0
