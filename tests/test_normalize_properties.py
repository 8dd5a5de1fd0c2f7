"""Property tests for fields.normalize: the contract holds for any input, and valid IDs round-trip.

The contract: a normalizer never raises; it returns a value or at least one reason; every reason
is a known code; a value is dropped exactly when a reason is reject_field.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pypinyin import Style, lazy_pinyin

from fields import identifiers, normalize
from fields.normalize import REASONS, SEVERITY, Normalized

SETTINGS = settings(max_examples=300, deadline=None)

# Text that looks like the fields (digits, ID/credit-code letters, Chinese words, separators)
# finds more corner cases than uniform unicode alone.
_FIELD_ALPHABET = (
    "0123456789０１２３４５６７８９XxMNOIS*-/.,;:()（）年月日号转或、 +·•"
    "省市区县福州鼓楼五四路号陳偉於麗有限公司分男女汉族万元亿"
)
RAW = st.one_of(
    st.text(),
    st.text(alphabet=_FIELD_ALPHABET, max_size=40),
    st.from_regex(r"\A[0-9]\.[0-9]{0,16}E\+?[0-9]{1,25}\Z"),  # Excel's scientific notation
    st.none(),
    st.integers(),
    st.floats(),
    st.decimals(),
    st.dates(),
    st.datetimes(),
    st.booleans(),
    st.binary(max_size=20),
)

NORMALIZERS: dict[str, Callable[[Any], Normalized[Any]]] = {
    "text": normalize.text,
    "person_name": normalize.person_name,
    "id_number": normalize.id_number,
    "uscc": normalize.uscc,
    "legacy_code": normalize.legacy_code,
    "phones": normalize.phones,
    "date": normalize.date,
    "address": normalize.address,
    "enterprise_name": normalize.enterprise_name,
    "sex": normalize.sex,
    "ethnicity": normalize.ethnicity,
    "registered_capital": normalize.registered_capital,
}


def check_contract(result: object) -> None:
    assert isinstance(result, Normalized)
    assert isinstance(result.reasons, tuple)
    assert result.value is not None or len(result.reasons) > 0
    assert set(result.reasons) <= REASONS.keys()
    assert "normalizer_error" not in result.reasons
    rejected = any(SEVERITY[r] == "reject_field" for r in result.reasons)
    assert rejected == (result.value is None)


@pytest.mark.parametrize("name", sorted(NORMALIZERS))
@SETTINGS
@given(raw=RAW)
def test_contract_holds_for_any_input(name: str, raw: object) -> None:
    check_contract(NORMALIZERS[name](raw))


@SETTINGS
@given(raw=RAW, birth=RAW, sex=RAW)
def test_id_number_contract_with_row_context(raw: object, birth: object, sex: object) -> None:
    check_contract(normalize.id_number(raw, birth, sex, as_of=dt.date(2026, 11, 1)))


@SETTINGS
@given(raw=RAW, fmt=st.sampled_from([None, "auto", "chinese", "excel_serial", "%Y%m%d", "%Q"]))
def test_date_contract_with_formats(raw: object, fmt: str | None) -> None:
    check_contract(normalize.date(raw, fmt=fmt, as_of=dt.date(2026, 11, 1)))


@SETTINGS
@given(raw=RAW, city=st.sampled_from([None, "350100", "3501", "110000", "福州", "xx", ""]))
def test_address_contract_with_default_city(raw: object, city: str | None) -> None:
    check_contract(normalize.address(raw, default_city_code=city))


@SETTINGS
@given(field=st.sampled_from(normalize.NORMALIZERS), raw=RAW)
def test_dispatcher_contract(field: str, raw: object) -> None:
    check_contract(normalize.normalize_value(field, raw, as_of=dt.date(2026, 11, 1)))


@SETTINGS
@given(raw=RAW)
def test_name_pinyin_is_plain_ascii(raw: object) -> None:
    out = normalize.name_pinyin(raw)
    assert isinstance(out, str)
    assert out == "" or (out.isascii() and out.isalnum() and out == out.lower())


def test_every_reason_has_a_severity_and_an_explanation() -> None:
    assert REASONS.keys() == SEVERITY.keys()
    assert set(SEVERITY.values()) == {"reject_field", "warning"}
    for code, explanation in REASONS.items():
        assert code.isidentifier() and code == code.lower(), code
        assert explanation and "\n" not in explanation


# ------------------------------------------------------------------ ID round trips

_DIVISIONS = st.sampled_from(["110105", "350102", "350111", "350181", "440305", "510104"])
_BIRTHS = st.dates(min_value=dt.date(1950, 1, 1), max_value=dt.date(2020, 12, 31))
_FULLWIDTH = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")


@st.composite
def valid_ids(draw: st.DrawFn) -> str:
    first17 = (
        draw(_DIVISIONS)
        + draw(_BIRTHS).strftime("%Y%m%d")
        + draw(st.text(alphabet="0123456789", min_size=3, max_size=3))
    )
    return first17 + identifiers.id_check_digit(first17)


@SETTINGS
@given(number=valid_ids())
def test_valid_id_is_returned_unchanged(number: str) -> None:
    r = normalize.id_number(number, as_of=dt.date(2026, 11, 1))
    assert r.value == number
    assert not any(SEVERITY[c] == "reject_field" for c in r.reasons)
    assert r.extra["birth_date"].strftime("%Y%m%d") == number[6:14]


@SETTINGS
@given(number=valid_ids())
def test_fullwidth_and_spaced_id_normalizes_the_same(number: str) -> None:
    as_of = dt.date(2026, 11, 1)
    fullwidth = number.translate(_FULLWIDTH)
    spaced = f" {number[:6]} {number[6:14]} {number[14:].lower()} "
    assert normalize.id_number(fullwidth, as_of=as_of).value == number
    assert normalize.id_number(spaced, as_of=as_of).value == number


@SETTINGS
@given(number=valid_ids().filter(lambda n: n[6:8] == "19"))
def test_15_digit_form_upgrades_back(number: str) -> None:
    r = normalize.id_number(identifiers.downgrade_id18(number), as_of=dt.date(2026, 11, 1))
    assert r.value == number
    assert "id_upgraded_15_to_18" in r.reasons


@SETTINGS
@given(number=valid_ids(), position=st.integers(0, 16), delta=st.integers(1, 9))
def test_any_single_digit_change_is_rejected(number: str, position: int, delta: int) -> None:
    changed = str((int(number[position]) + delta) % 10)
    damaged = number[:position] + changed + number[position + 1 :]
    assert normalize.id_number(damaged, as_of=dt.date(2026, 11, 1)).value is None


@st.composite
def valid_usccs(draw: st.DrawFn) -> str:
    org8 = draw(st.text(alphabet=identifiers.USCC_ALPHABET, min_size=8, max_size=8))
    dept, kind = draw(st.sampled_from("159Y")), draw(st.sampled_from("123"))
    return identifiers.make_uscc(dept, kind, draw(_DIVISIONS), org8)


@SETTINGS
@given(code=valid_usccs())
def test_valid_uscc_round_trips(code: str) -> None:
    r = normalize.uscc(f" {code.lower()} ")
    assert r.value == code
    assert r.extra["org_code"] == code[8:17]
    assert normalize.legacy_code(code).extra["kind"] == "uscc"


@SETTINGS
@given(value=st.decimals(min_value=0, max_value=10**9, places=4, allow_nan=False))
def test_registered_capital_reads_plain_numbers(value: Decimal) -> None:
    r = normalize.registered_capital(str(value))
    assert r.value == value


# Surnames, given-name characters and characters of pypinyin's phrases (重庆, 银行, 长城, 朝阳).
_NAME_CHARS = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐韩冯邓曹曾单解查区乐种"
    "华国明建伟军平海东红小文晓丽英芳敏静秀霞燕玲兰娟云雪荣爱香月瑞佳嘉珍莉"
    "重庆银行长城朝阳大都会和平乐天子弟·"
)


@SETTINGS
@given(text=st.text(alphabet=_NAME_CHARS, min_size=1, max_size=6))
def test_name_reading_word_by_word_is_pypinyin_s(text: str) -> None:
    """Reading pypinyin's words one by one gives what pypinyin reads for the whole text."""
    want = "".join(lazy_pinyin(text, style=Style.NORMAL))
    assert normalize._reading.__wrapped__(text) == want
