"""Field normalizers: one raw departmental value in, a clean value and reason codes out.

Every public normalizer takes any raw value (text, ``None``, numbers, dates, bytes) and returns
a :class:`Normalized`. The contract, checked by property tests: it never raises, and it returns
either a value or at least one reason code. A reason is ``reject_field`` (the value is dropped,
``value is None``) or ``warning`` (the value is kept); :data:`SEVERITY` says which, :data:`REASONS`
explains each code in one Chinese line for department reports.

>>> id_number("110105491231002").value
'11010519491231002X'
>>> id_number("110105491231002").reasons
('id_upgraded_15_to_18',)
>>> person_name("陳偉").value
'陈伟'

Libraries do the heavy lifting: ``unicodedata`` NFKC for full-width forms, OpenCC ``t2s`` for
traditional characters, pypinyin for pinyin keys, phonenumbers for telephone numbers, and the
check-digit code in :mod:`fields.identifiers` and division table in :mod:`fields.divisions`.
Hand-written, and why:

- surname readings: pypinyin has no surname mode (python-pinyin issue #297);
- t2s exceptions: OpenCC turns 张乾 into 张干 and 乾县 into 干县, and a surname 於 into 于;
- splitting a phone field: phonenumbers reads one number; its matcher misses 转 extensions,
  ``-123`` extensions and numbers separated only by spaces;
- dates: dateutil and pandas guess (COMPAT.md: "1990" becomes today's month and day);
- addresses: on loc.dat because it keeps code history (cpca's data stops around 2019);
- enterprise-name keys and GB/T 3304 codes: no maintained package covers them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import inspect
import logging
import math
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, ParamSpec, TypeVar

import opencc
import phonenumbers
from pypinyin import Style, lazy_pinyin
from pypinyin.constants import PHRASES_DICT
from pypinyin.core import Pinyin

from fields import divisions, identifiers

__all__ = [
    "NORMALIZERS",
    "REASONS",
    "SEVERITY",
    "Address",
    "Normalized",
    "address",
    "bound",
    "date",
    "enterprise_name",
    "ethnicity",
    "id_number",
    "legacy_code",
    "name_pinyin",
    "normalize_value",
    "parse_time",
    "person_name",
    "phones",
    "registered_capital",
    "sex",
    "text",
    "uscc",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

REJECT = "reject_field"
WARNING = "warning"

# code -> (severity, one-line explanation for department reports)
_REASON_TABLE: dict[str, tuple[str, str]] = {
    "missing": (REJECT, "值为空或为占位符（如 NULL、无、-）"),
    "normalizer_error": (REJECT, "规范化程序内部错误，请联系数据中心"),
    "value_masked": (REJECT, "值已脱敏（含*号），无法使用"),
    "traditional_converted": (WARNING, "含繁体字，已转换为简体"),
    "name_invalid_chars": (REJECT, "姓名含数字、字母或其他非汉字字符"),
    "name_bad_length": (REJECT, "姓名长度不合理（少于2个或多于30个汉字）"),
    "name_remark_removed": (WARNING, "姓名后的括号备注已去除"),
    "id_bad_length": (REJECT, "身份证号码长度不是15位或18位"),
    "id_bad_chars": (REJECT, "身份证号码含非法字符（仅允许数字，末位可为X）"),
    "id_bad_check_digit": (REJECT, "身份证号码校验位错误"),
    "id_bad_birth_date": (REJECT, "身份证号码中的出生日期不存在或早于1900年"),
    "id_birth_in_future": (REJECT, "身份证号码中的出生日期晚于当前日期"),
    "id_excel_damaged": (REJECT, "身份证号码被Excel转为数字或科学计数法，末几位已丢失"),
    "id_upgraded_15_to_18": (WARNING, "15位旧身份证号码已升位为18位"),
    "id_unknown_division": (WARNING, "身份证号码前6位行政区划代码不存在或与出生年代不符"),
    "id_birth_date_mismatch": (WARNING, "身份证号码中的出生日期与出生日期字段不一致"),
    "id_sex_mismatch": (WARNING, "身份证号码中的性别与性别字段不一致"),
    "id_of_another_person": (
        WARNING,
        "身份证号码不是本人的：号码中的出生日期比本人早12年以上（如未成年人登记了监护人的"
        "身份证号码），不作为本人身份证号码使用，按监护人号码保留",
    ),
    "uscc_bad_length": (REJECT, "统一社会信用代码长度不是18位"),
    "uscc_bad_chars": (REJECT, "统一社会信用代码含非法字符（不允许I、O、S、V、Z等）"),
    "uscc_bad_check": (REJECT, "统一社会信用代码校验位错误"),
    "uscc_excel_damaged": (REJECT, "统一社会信用代码疑被Excel截断精度（末三位为000且校验不通过）"),
    "uscc_org_code_mismatch": (REJECT, "统一社会信用代码中的组织机构代码（第9-17位）校验错误"),
    "uscc_confusable_fixed": (
        WARNING,
        "统一社会信用代码中的字母O/I/Z/S已按数字0/1/2/5纠正并通过校验",
    ),
    "uscc_unknown_division": (WARNING, "统一社会信用代码第3-8位行政区划代码不存在"),
    "uscc_unknown_registration_dept": (
        WARNING,
        "统一社会信用代码首位登记管理部门代码不在国标范围内",
    ),
    "reg_no_bad_check": (REJECT, "15位工商注册号校验位错误"),
    "org_code_bad_check": (REJECT, "组织机构代码校验位错误"),
    "legacy_code_unrecognized": (REJECT, "无法识别为注册号、组织机构代码或统一社会信用代码"),
    "code_kind_mismatch": (WARNING, "代码类型与字段不符（如注册号字段中填写了组织机构代码）"),
    "phone_missing": (REJECT, "联系电话为空"),
    "phone_invalid": (REJECT, "联系电话不是有效的手机号或固定电话"),
    "phone_no_area_code": (REJECT, "固定电话缺少区号"),
    "phone_partly_invalid": (WARNING, "字段中部分电话号码无效，已保留有效号码"),
    "phone_multiple": (WARNING, "字段中含多个电话号码，取第一个为主号码"),
    "date_unparseable": (REJECT, "无法识别的日期格式"),
    "date_incomplete": (REJECT, "日期不完整（只有年份或年月）"),
    "date_impossible": (REJECT, "日期不存在（如2月30日、13月）"),
    "date_in_future": (REJECT, "日期晚于数据日期"),
    "date_out_of_range": (REJECT, "年份不合理或为占位日期（如1900-01-01、9999-12-31）"),
    "date_day_month_unclear": (REJECT, "无法判断日和月的先后（如06/07/2024）"),
    "date_ambiguous": (WARNING, "日期写法有歧义，已按最可能的理解读取（如两位年份、日月颠倒）"),
    "address_missing": (REJECT, "地址为空"),
    "address_unparsed": (WARNING, "地址中未识别出省、市、县（区），整条保留为详细地址"),
    "address_ambiguous_district": (WARNING, "区县名称在多个城市重名，无法确定所属城市"),
    "address_historical_name": (WARNING, "地址使用了已撤销或更名的行政区划名称"),
    "enterprise_name_invalid": (REJECT, "企业名称不含有效文字"),
    "sex_unknown": (REJECT, "性别为未知或未说明（GB/T 2261.1 代码0或9）"),
    "sex_invalid": (REJECT, "无法识别的性别值"),
    "ethnicity_invalid": (REJECT, "无法识别的民族名称或代码（GB/T 3304）"),
    "capital_invalid": (REJECT, "无法识别的注册资本金额"),
}
REASONS: dict[str, str] = {code: text for code, (_, text) in _REASON_TABLE.items()}
SEVERITY: dict[str, str] = {code: sev for code, (sev, _) in _REASON_TABLE.items()}


@dataclass(frozen=True, slots=True)
class Normalized(Generic[T]):
    """A normalizer's answer: the clean value (or None), reason codes and side facts."""

    value: T | None
    reasons: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether a value survived (possibly with warnings)."""
        return self.value is not None


def _result(
    value: T | None, reasons: Any = (), extra: dict[str, Any] | None = None
) -> Normalized[T]:
    """Build a Normalized that honours the contract: a reject reason drops the value."""
    if not reasons and value is not None:  # the usual answer: a clean value
        return Normalized(value, (), extra or {})
    codes = tuple(dict.fromkeys(reasons))
    if any(SEVERITY[c] == REJECT for c in codes):
        value = None
    if value is None and not codes:
        codes = ("normalizer_error",)
    return Normalized(value, codes, extra or {})


def _guarded(fn: Callable[P, Normalized[T]]) -> Callable[P, Normalized[T]]:
    """A bad value must never stop a nightly load: turn a bug into a reason code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Normalized[T]:
        try:
            return fn(*args, **kwargs)
        except Exception:
            log.exception("normalizer %s failed on %r", fn.__name__, args[:1])
            return Normalized(None, ("normalizer_error",), {})

    return wrapper


# --------------------------------------------------------------------------- text

_MISSING = {
    "",
    "null",
    "none",
    "nil",
    "nan",
    "n/a",
    "na",
    "#n/a",
    "无",
    "-",
    "--",
    "---",
    "—",
    "——",
    "/",
    "\\",
    "空",
    "暂无",
    "不详",
    "未知",
    "未填",
    "(空)",
    "(null)",
}
_SPACE = re.compile(r"\s+")


def _decimal_text(d: Decimal) -> str:
    """Plain notation without trailing zeros: 100, 100.5 (never 1E+2)."""
    out = format(d, "f")
    return out.rstrip("0").rstrip(".") if "." in out else out


def _raw_str(raw: object) -> str | None:
    """Any raw value as a str, before cleaning; None for None and NaN."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bytes | bytearray):
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(raw).decode("gb18030", errors="replace")
    if isinstance(raw, bool):
        return str(raw)
    if isinstance(raw, float):
        if math.isnan(raw):
            return None
        if math.isinf(raw):
            return str(raw)
        return str(int(raw)) if raw.is_integer() else repr(raw)
    if isinstance(raw, Decimal):
        if raw.is_nan():
            return None
        return str(raw) if raw.is_infinite() else _decimal_text(raw)
    if isinstance(raw, dt.datetime | dt.date):
        try:
            return raw.isoformat()
        except (ValueError, TypeError):  # pandas NaT and friends
            return None
    return str(raw)


def _clean(raw: object) -> str | None:
    """NFKC, drop control/format characters, collapse whitespace; None when a placeholder."""
    s = _raw_str(raw)
    if s is None:
        return None
    s = unicodedata.normalize("NFKC", s)
    if not s.isprintable():  # printable: none of the categories below (the usual case)
        s = "".join(
            " " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
            for c in s
            if unicodedata.category(c) not in ("Cf", "Cs", "Co")
        )
    s = _SPACE.sub(" ", s).strip()
    return None if s.casefold() in _MISSING else s


@_guarded
def text(raw: object) -> Normalized[str]:
    """Clean free text: NFKC (full-width → half-width), trimmed, single spaces.

    >>> text("  ＡＢＣ　１２３ ").value
    'ABC 123'
    >>> text("NULL").reasons
    ('missing',)
    """
    s = _clean(raw)
    return _result(s, () if s else ("missing",))


# ------------------------------------------------------------------- traditional

# OpenCC's t2s is right for running text but wrong for a few characters that are also standard
# simplified characters in their own right. Kept as written:
#   乾 (qián) everywhere except in the "dry" words below: OpenCC turns 张乾 into 张干 and
#   乾县 into 干县;
#   於 as a person's surname (a different surname from 于).
# Mapped after OpenCC: 锺 → 钟 (OpenCC leaves 锺; registries use 钟 for 鍾/锺).
# 蕭 → 萧 is OpenCC's own answer and is right: 萧 and 肖 are different surnames.
_QIAN_DRY = re.compile(r"乾(?=[淨净燥貨货洗杯枯涸旱爹媽妈])|(?<=[餅饼])乾")
_AFTER_T2S = str.maketrans({"锺": "钟"})


@functools.cache
def _t2s_converter() -> opencc.OpenCC:
    return opencc.OpenCC("t2s")


@functools.lru_cache(maxsize=1 << 16)
def _t2s(s: str, *, surname: bool = False) -> str:
    """Traditional → simplified, keeping 乾 (and a leading 於 when ``s`` is a person's name)."""
    out = str(_t2s_converter().convert(s))
    if len(out) != len(s):  # phrase tables changed the length: fall back to characters
        out = "".join(str(_t2s_converter().convert(c)) for c in s)
    if "乾" in s:
        dry = {m.start() for m in _QIAN_DRY.finditer(s)}
        out = "".join(
            "乾" if c == "乾" and i not in dry else o
            for i, (c, o) in enumerate(zip(s, out, strict=True))
        )
    if surname and s.startswith("於"):
        out = "於" + out[1:]
    return out.replace("锺", "钟") if "锺" in out else out  # _AFTER_T2S, without translate's cost


# -------------------------------------------------------------------- person name

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f〇"
_DOTS = re.compile(rf"(?<=[{_CJK}])\s*[·•・‧∙⋅.。\-_]+\s*(?=[{_CJK}])")
_NAME_OK = re.compile(rf"[{_CJK}]+(?:·[{_CJK}]+)*")
_LATIN_NAME = re.compile(r"[A-Za-z]+(?:[ .'\-][A-Za-z]+)*")
_REMARK = re.compile(r"^(?P<name>[^()\[\]【】]+?)\s*[(\[【](?P<remark>[^()\[\]【】]*)[)\]】]$")


@_guarded
def person_name(raw: object, *, allow_latin: bool = False) -> Normalized[str]:
    """A person's name: simplified characters, no spaces, ``·`` between parts of minority names.

    Latin-letter names are rejected unless ``allow_latin`` (foreigners' registers), then upper-case.
    extra["pinyin"] is the toneless matching key from :func:`name_pinyin`.

    >>> person_name("於 麗").value
    '於丽'
    >>> person_name("阿依古丽•买买提").value
    '阿依古丽·买买提'
    """
    s = _clean(raw)
    if s is None:
        return _result(None, ("missing",))
    reasons: list[str] = []
    m = _REMARK.match(s)
    if m and m.group("name").strip():
        s = m.group("name").strip()
        reasons.append("name_remark_removed")
    if allow_latin and _LATIN_NAME.fullmatch(s):
        latin = s.upper()
        return _result(latin, reasons, {"script": "latin", "pinyin": name_pinyin(latin)})
    simplified = _t2s(s, surname=True)
    if simplified != s:
        reasons.append("traditional_converted")
    s = _DOTS.sub("·", simplified).replace(" ", "").strip("·")
    if not _NAME_OK.fullmatch(s):
        return _result(None, [*reasons, "name_invalid_chars"], {"cleaned": s})
    if not 2 <= len(s.replace("·", "")) <= 30:
        return _result(None, [*reasons, "name_bad_length"], {"cleaned": s})
    return _result(s, reasons, {"pinyin": name_pinyin(s)})


# pypinyin has no surname mode (python-pinyin issue #297 is open), so the readings of surnames
# that differ from the everyday reading are listed here. Both reading tables stay packed (fmt:
# skip): one character and its reading per line would spread 84 short pairs over 84 lines.
_SURNAME_READINGS = {
    "单": "shan", "曾": "zeng", "区": "ou", "仇": "qiu", "解": "xie", "查": "zha", "朴": "piao",
    "翟": "zhai", "盖": "ge", "乐": "yue", "种": "chong", "秘": "bi", "缪": "miao", "覃": "qin",
    "折": "she", "员": "yun", "繁": "po", "卜": "bu", "隗": "wei", "阚": "kan", "召": "shao",
    "薄": "bo", "都": "du", "能": "nai", "句": "gou", "洗": "xian", "么": "yao", "祭": "zhai",
    "粘": "nian", "佴": "nai", "不": "fou", "长": "chang", "黑": "he", "重": "chong", "藏": "zang",
    "适": "kuo", "尉": "wei", "沈": "shen", "贾": "jia", "柏": "bai", "燕": "yan", "纪": "ji",
    "宿": "su", "殷": "yin", "牟": "mou", "万": "wan", "任": "ren", "石": "shi", "车": "che",
}  # fmt: skip
_COMPOUND_SURNAMES = {
    "欧阳": "ouyang", "司马": "sima", "上官": "shangguan", "诸葛": "zhuge", "东方": "dongfang",
    "皇甫": "huangfu", "尉迟": "yuchi", "公孙": "gongsun", "慕容": "murong", "长孙": "zhangsun",
    "宇文": "yuwen", "司徒": "situ", "夏侯": "xiahou", "轩辕": "xuanyuan", "令狐": "linghu",
    "钟离": "zhongli", "澹台": "tantai", "单于": "chanyu", "万俟": "moqi", "呼延": "huyan",
    "端木": "duanmu", "拓跋": "tuoba", "南宫": "nangong", "西门": "ximen", "申屠": "shentu",
    "闻人": "wenren", "赫连": "helian", "淳于": "chunyu", "濮阳": "puyang", "乐正": "yuezheng",
    "司空": "sikong", "第五": "diwu", "百里": "baili", "公羊": "gongyang", "亓官": "qiguan",
}  # fmt: skip
_PINYIN_KEEP = re.compile(r"[^a-z0-9]+")


def name_pinyin(name: object) -> str:
    """Toneless, space-free lower-case pinyin of a name, reading the surname as a surname.

    ü is written ``v`` (pypinyin's plain style). Minority names joined by ``·`` are read plainly.

    >>> name_pinyin("陈伟")
    'chenwei'
    >>> name_pinyin("单雄信")
    'shanxiongxin'
    """
    return _pinyin(name) if isinstance(name, str) and name else ""


@functools.lru_cache(maxsize=1 << 16)
def _pinyin(name: str) -> str:
    head, rest = "", name
    if "·" not in name:
        if name[:2] in _COMPOUND_SURNAMES:
            head, rest = _COMPOUND_SURNAMES[name[:2]], name[2:]
        elif name[0] in _SURNAME_READINGS and len(name) > 1:
            head, rest = _SURNAME_READINGS[name[0]], name[1:]
    body = _reading(rest) if rest else ""
    return _PINYIN_KEEP.sub("", (head + body).lower())


@functools.lru_cache(maxsize=1 << 16)
def _reading(text: str) -> str:
    """Plain pinyin of a name after its surname (given names repeat far more than names)."""
    if len(text) == 2 and text not in PHRASES_DICT and _CJK_CHAR.fullmatch(text):
        # two characters that are no word of pypinyin's: each read alone, as pypinyin reads them
        return _character_reading(text[0]) + _character_reading(text[1])
    # pypinyin reads each word of its own segmentation apart from the others: reading the words
    # one by one gives its answer, and words (single characters most) repeat across names
    return "".join(_character_reading(w) for w in _pinyin_words(text))


_CJK_CHAR = re.compile(r"[\u4e00-\u9fff]+")
_pinyin_words = Pinyin().seg  # the words lazy_pinyin reads a text as, one by one


@functools.lru_cache(maxsize=1 << 16)
def _character_reading(c: str) -> str:
    """Plain pinyin of one character, or of one word of pypinyin's segmentation."""
    return "".join(lazy_pinyin(c, style=Style.NORMAL))


# -------------------------------------------------------------------- identifiers

_CODE_JUNK = re.compile(r"[\s\-_'\"`‘’“”.·()（）]+")
_SCIENTIFIC = re.compile(r"^\d(?:\.\d+)?E\+?\d+$")
_EXCEL_DIGITS = 15  # Excel keeps 15 significant digits of a number


def _compact_code(raw: object) -> tuple[str | None, bool]:
    """Upper-case, separators removed; and whether Excel's number format destroyed digits.

    A code that went through a numeric cell (a float, or text like ``1.10105E+17``) is exact up to
    15 digits (a 15-digit registration number survives) and damaged beyond.
    """
    if isinstance(raw, float) and not math.isnan(raw):
        if not (math.isfinite(raw) and raw.is_integer()):
            return _raw_str(raw), True
        raw = int(raw)
        return str(raw), len(str(abs(raw))) > _EXCEL_DIGITS
    s = _clean(raw)
    if s is None:
        return None, False
    s = s.upper().replace("×", "X")
    if _SCIENTIFIC.match(s.replace(" ", "")):
        try:
            number = Decimal(s.replace(" ", ""))
        except InvalidOperation:  # an exponent beyond what Decimal holds
            return s, True
        exact = number.adjusted() < _EXCEL_DIGITS and number == number.to_integral_value()
        return (str(int(number)), False) if exact else (s, True)
    return _CODE_JUNK.sub("", s), False


_PERMITS = {
    "81": "hk_residence_permit",
    "82": "macau_residence_permit",
    "83": "tw_residence_permit",
}


def _birth(s: str) -> dt.date | None:
    try:
        return dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    except ValueError:
        return None


def _division_known_between(code: str, first_year: int, last_year: int) -> bool:
    return any(
        (d.start is None or d.start <= last_year) and (d.end is None or d.end >= first_year)
        for d in divisions.by_code().get(code, ())
    )


@_guarded
def id_number(
    raw: object,
    birth_date: object = None,
    sex: object = None,
    *,
    as_of: dt.date | None = None,
) -> Normalized[str]:
    """A GB 11643 citizen ID number (also residence permits and foreigners' permanent IDs).

    15-digit numbers are upgraded to 18. The check digit and birth date reject the value; an
    unknown division code is only a warning. ``birth_date``/``sex`` are the row's own fields,
    cross-checked as warnings. extra: birth_date, sex, division_code, kind.

    The division code is accepted if it existed at any time between the birth year and
    ``as_of``: a number is assigned at first registration, often years after birth (IDs were first
    issued in 1984-85), so "valid in the birth year" would flag most older people.

    >>> r = id_number("11010519491231002x")
    >>> r.value, r.extra["birth_date"], r.extra["sex"]
    ('11010519491231002X', datetime.date(1949, 12, 31), '女')
    """
    s, excel = _compact_code(raw)
    if s is None:
        return _result(None, ("missing",))
    if excel:
        return _result(None, ("id_excel_damaged",), {"compact": s})
    if "*" in s:
        return _result(None, ("value_masked",), {"compact": s})
    reasons: list[str] = []
    if len(s) == 15:
        if not s.isdigit():
            return _result(None, ("id_bad_chars",), {"compact": s})
        if _birth("19" + s[6:12]) is None:
            return _result(None, ("id_bad_birth_date",), {"compact": s})
        s = identifiers.upgrade_id15(s)
        reasons.append("id_upgraded_15_to_18")
    elif len(s) != 18:
        return _result(None, ("id_bad_length",), {"compact": s})
    if not (s[:17].isdigit() and (s[17].isdigit() or s[17] == "X")):
        return _result(None, ("id_bad_chars",), {"compact": s})
    if s[17] != identifiers.id_check_digit(s[:17]):
        return _result(None, ("id_bad_check_digit",), {"compact": s})
    born = _birth(s[6:14])
    if born is None or born.year < 1900:
        return _result(None, ("id_bad_birth_date",), {"compact": s})
    today = as_of or dt.date.today()
    if born > today:
        return _result(None, ("id_birth_in_future",), {"compact": s})

    sex_code = "男" if int(s[16]) % 2 else "女"
    extra: dict[str, Any] = {"birth_date": born, "sex": sex_code}
    if s[:2] in _PERMITS:
        extra.update(kind=_PERMITS[s[:2]], division_code=s[:2] + "0000")
    elif s[0] == "9":
        # 2023 permanent-residence ID: 9, province of issue, GB/T 2659 numeric country code
        extra.update(kind="foreign_permanent_resident", division_code=s[1:3] + "0000")
        extra["nationality_code"] = s[3:6]
        if s[1:3] + "0000" not in divisions.by_code():
            reasons.append("id_unknown_division")
    else:
        extra.update(kind="resident", division_code=s[:6])
        if not _division_known_between(s[:6], born.year, today.year):
            reasons.append("id_unknown_division")

    if birth_date is not None:
        given = _parse_date(birth_date, None, None).value
        if given is not None and _holder_older(born, given, today):
            extra["other_person_id"] = s
            return _result(None, ("id_of_another_person",), extra)
        if given is not None and given != born:
            reasons.append("id_birth_date_mismatch")
    if sex is not None:
        given_sex = _sex_value(sex)[0]
        if given_sex is not None and given_sex != sex_code:
            reasons.append("id_sex_mismatch")
    return _result(s, reasons, extra)


GUARDIAN_MIN_YEARS = 12
"""An ID number whose holder was born at least this many years before the row's own person is
another person's (a parent's, a guardian's): a typo, a swapped day and month or a lunar date
moves a birth date by days or months, never by a generation."""
MINOR_MIN_YEARS = 5
"""The same, from this many years, when the row's person is a minor and the holder an adult."""


def _years_after(day: dt.date, years: int) -> dt.date:
    """``day`` plus ``years`` years (29 February → 1 March in a common year)."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return dt.date(day.year + years, 3, 1)


def _holder_older(born: dt.date, given: dt.date, today: dt.date) -> bool:
    """The ID's holder (born ``born``) is plainly not the row's person (born ``given``): a
    generation older, or an adult while the row's person is a minor on ``today``."""
    if given >= _years_after(born, GUARDIAN_MIN_YEARS):
        return True
    minor = _years_after(given, 18) > today >= _years_after(born, 18)
    return minor and given >= _years_after(born, MINOR_MIN_YEARS)


# GB 32100-2015 registration departments (first character) and, for 9 (市场监管), the types.
_USCC_DEPTS = {
    "1": "机构编制",
    "2": "外交",
    "3": "司法行政",
    "4": "文化",
    "5": "民政",
    "6": "旅游",
    "7": "宗教",
    "8": "工会",
    "9": "市场监管",
    "A": "中央军委改革和编制办公室",
    "N": "农业",
    "Y": "其他",
}
_USCC_TYPES_9 = {"1": "企业", "2": "个体工商户", "3": "农民专业合作社"}
_USCC_CONFUSABLE = str.maketrans("OIZS", "0125")


@_guarded
def uscc(raw: object) -> Normalized[str]:
    """A GB 32100 unified social credit code (统一社会信用代码), checked twice.

    Both the code's own check character and the embedded GB 11714 organization code
    (characters 9–17) must hold. Codes that start with a letter are accepted. extra: org_code,
    division_code, registration_dept, org_type.

    >>> r = uscc("91350100m000100y43")
    >>> r.value, r.extra["org_code"]
    ('91350100M000100Y43', 'M000100Y4')
    >>> uscc("913501001234567000").reasons
    ('uscc_excel_damaged',)
    """
    s, excel = _compact_code(raw)
    if s is None:
        return _result(None, ("missing",))
    if excel:
        return _result(None, ("uscc_excel_damaged",), {"compact": s})
    if "*" in s:
        return _result(None, ("value_masked",), {"compact": s})
    if len(s) != 18:
        return _result(None, ("uscc_bad_length",), {"compact": s})
    reasons = []
    if any(c not in identifiers.USCC_ALPHABET for c in s):
        # GB 32100 leaves out I O Z S V because they pass for 1 0 2 5; a repair must still pass
        # both check characters
        fixed = s.translate(_USCC_CONFUSABLE)
        if not identifiers.uscc_is_valid(fixed):
            return _result(None, ("uscc_bad_chars",), {"compact": s})
        s = fixed
        reasons.append("uscc_confusable_fixed")
    if s[17] != identifiers.uscc_check_char(s[:17]):
        damaged = s.isdigit() and s.endswith("000")
        return _result(
            None, ("uscc_excel_damaged" if damaged else "uscc_bad_check",), {"compact": s}
        )
    if not identifiers.org_code_is_valid(s[8:17]):
        return _result(None, ("uscc_org_code_mismatch",), {"compact": s})
    if s[0] not in _USCC_DEPTS:
        reasons.append("uscc_unknown_registration_dept")
    # 100000 is the code central-level registrations use
    if s[2:8] != "100000" and s[2:8] not in divisions.by_code():
        reasons.append("uscc_unknown_division")
    extra = {
        "org_code": s[8:17],
        "division_code": s[2:8],
        "registration_dept": s[0],
        "registration_dept_name": _USCC_DEPTS.get(s[0]),
        "org_type": s[1],
        "org_type_name": _USCC_TYPES_9.get(s[1]) if s[0] == "9" else None,
    }
    return _result(s, reasons, extra)


@_guarded
def legacy_code(raw: object) -> Normalized[str]:
    """Classify a legacy enterprise identifier; extra["kind"] is reg_no, org_code or uscc.

    15 digits with an ISO 7064 MOD 11,10 check = business registration number (注册号); 15
    characters of a division code and a valid organization code = an old tax registration number
    (税务登记号), read as its organization code (extra["tax_no"]); 9 characters with or without
    the hyphen = GB 11714 organization code; 18 characters = a credit code put in the wrong column.

    >>> r = legacy_code("M000100Y-4")
    >>> r.value, r.extra["kind"]
    ('M000100Y4', 'org_code')
    """
    s, excel = _compact_code(raw)
    if s is None:
        return _result(None, ("missing",))
    if excel:
        return _result(None, ("legacy_code_unrecognized",), {"compact": s})
    if "*" in s:
        return _result(None, ("value_masked",), {"compact": s})
    org = identifiers.tax_no_org_code(s) if len(s) == 15 else None
    if len(s) == 15 and s.isdigit():
        if identifiers.reg_no_is_valid(s):
            # it may also read as an old tax number: both checks hold for about 1 in 10
            return _result(s, (), {"kind": "reg_no", **({"tax_org_code": org} if org else {})})
        if org is None:
            return _result(None, ("reg_no_bad_check",), {"compact": s, "kind": "reg_no"})
    if org is not None:
        return _result(org, (), {"kind": "org_code", "tax_no": s})
    if len(s) == 9 and s.isalnum() and s.isascii():
        if identifiers.org_code_is_valid(s):
            return _result(s, (), {"kind": "org_code", "display": f"{s[:8]}-{s[8]}"})
        return _result(None, ("org_code_bad_check",), {"compact": s, "kind": "org_code"})
    if len(s) == 18:
        r = uscc(s)
        return _result(r.value, r.reasons, {**r.extra, "kind": "uscc"})
    return _result(None, ("legacy_code_unrecognized",), {"compact": s})


# ------------------------------------------------------------------------- phones

_PHONE_SPLIT = re.compile(r"[/,;、|\n]+|或者?|及|和")
_PHONE_EXT = re.compile(
    r"(?:[\s\-(]*)(?:转|轉|分机|分機|ext\.?|extension|x|#)\s*[-:]?\s*(\d{1,6})\s*\)?$", re.I
)
_NOT_DIGIT = re.compile(r"[^0-9+]+")
_MASKED = re.compile(r"\d[\s-]*\*{2,}|\*{2,}[\s-]*\d")  # 138****5678
_LOCAL = re.compile(r"[2-9]\d{6,7}")
_MAX_PHONE_DIGITS = 20


def _phone_canonical(n: phonenumbers.PhoneNumber, kind_of: int) -> tuple[str, str]:
    """Canonical text (without an extension) and kind of a valid number of type ``kind_of``."""
    nsn = phonenumbers.national_significant_number(n)
    if n.country_code != 86:
        out, kind = phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164), "foreign"
    elif kind_of == phonenumbers.PhoneNumberType.MOBILE:
        out, kind = nsn, "mobile"
    elif kind_of in (
        phonenumbers.PhoneNumberType.FIXED_LINE,
        phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
    ):
        area = phonenumbers.length_of_geographical_area_code(n)
        out = f"0{nsn[:area]}-{nsn[area:]}" if area else f"0{nsn}"
        kind = "landline"
    else:
        out, kind = nsn, "service"  # 400/800 and other non-geographic numbers
    return out, kind


@functools.lru_cache(maxsize=1 << 16)  # phonenumbers is the slow part; numbers repeat
def _parse_phone(digits: str) -> phonenumbers.PhoneNumber | None:
    try:
        n = phonenumbers.parse(digits, "CN")
    except phonenumbers.NumberParseException:
        return None
    return n if phonenumbers.is_valid_number(n) else None


@functools.lru_cache(maxsize=1 << 16)
def _phone_facts(digits: str) -> tuple[str, str, bool]:
    """Of the valid number ``digits`` reads as: canonical text (without an extension), kind, and
    whether it is a fixed line (each worked out once: phonenumbers is the slow part)."""
    n = _parse_phone(digits)
    assert n is not None
    kind_of = phonenumbers.number_type(n)
    canonical, kind = _phone_canonical(n, kind_of)
    return canonical, kind, kind_of == phonenumbers.PhoneNumberType.FIXED_LINE


def _phones_in_chunk(chunk: str, area: str | None) -> Iterator[tuple[str | None, str, str]]:
    """(canonical or None, kind or reason, source text) for each number found in one chunk."""
    ext = None
    m = _PHONE_EXT.search(chunk)
    if m and sum(c.isdigit() for c in chunk[: m.start()]) >= 7:
        ext, chunk = m.group(1), chunk[: m.start()]
    if _MASKED.search(chunk):
        yield None, "value_masked", chunk.strip()
        return
    tokens = [t for t in _NOT_DIGIT.sub(" ", chunk).split() if t.strip("+")]
    i = 0
    while i < len(tokens):
        found = None
        for j in range(len(tokens), i, -1):
            joined = "".join(tokens[i:j])
            if len(joined) > _MAX_PHONE_DIGITS:
                continue
            digits = joined
            n = _parse_phone(digits)
            if n is None and area and _LOCAL.fullmatch(joined):
                digits = f"0{area.lstrip('0')}{joined}"
                n = _parse_phone(digits)
            if n is not None:
                found = (digits, j)
                break
        if found is None:
            token = tokens[i]
            if _LOCAL.fullmatch(token):
                yield None, "phone_no_area_code", token
            elif len(token.strip("+")) >= 3:
                yield None, "phone_invalid", token
            i += 1
            continue
        digits, j = found
        canonical, kind, fixed_line = _phone_facts(digits)
        # "0591-87654321-123": a short group after a landline is its extension
        tail_ext = ext if j == len(tokens) else None
        if tail_ext is None and j == len(tokens) - 1 and len(tokens[j]) <= 5 and fixed_line:
            tail_ext, j = tokens[j], j + 1
        yield (f"{canonical}-{tail_ext}" if tail_ext else canonical), kind, "".join(tokens[i:j])
        i = j


def _plain_mobile_pattern() -> re.Pattern[str]:
    """Eleven digits that phonenumbers reads, as region CN, as exactly themselves and a mobile:
    its own CN mobile pattern, guarded so that no other number type of CN, no national or
    international prefix and no country code could apply. Built from the installed metadata, so
    a new phonenumbers release moves the shortcut with it (tests/test_normalize.py compares the
    two ways on random numbers)."""
    meta = phonenumbers.PhoneMetadata.metadata_for_region("CN")
    assert meta is not None and meta.mobile is not None and meta.general_desc is not None
    # the numbers every other CN type could also match start 10, 2–9 (fixed, shared-cost,
    # toll-free) or are not 11 digits long (premium rate); the national prefix for parsing
    # strips 11xx, 12xx and 179xx carrier codes, the international prefix starts 00 or 1[12]/179
    guard = r"1(?:[3-68]\d|7[0-8]|9\d)\d{8}"
    mobile = meta.mobile.national_number_pattern
    general = meta.general_desc.national_number_pattern
    return re.compile(rf"(?=(?:{guard})$)(?=(?:{mobile})$)(?:{general})", re.ASCII)


_PLAIN_MOBILE = _plain_mobile_pattern()
# how departments write one mobile: 13812345678, 138 1234 5678, 138-1234-5678,
# +86 138 1234 5678, 86-13812345678 (the digits are read as one number either way)
_MOBILE_SHAPE = re.compile(r"(?:\+?86[ -]?)?(\d{3})[ -]?(\d{4})[ -]?(\d{4})", re.ASCII)


@_guarded
def phones(raw: object, *, default_area_code: str | None = None) -> Normalized[str]:
    """Every phone number in a field; value = the first valid one in canonical form.

    Mobiles become 11 digits, landlines ``0591-87654321`` (extension appended as ``-123``), other
    countries E.164. A bare local number takes the area code of a landline before it in the
    field, else ``default_area_code`` (e.g. "0591") if given.
    extra: all (canonical numbers), kinds (mobile / landline / service / foreign), invalid.

    >>> r = phones("+86 138 1234 5678 / (0591)8765-4321转123")
    >>> r.value, r.extra["all"]
    ('13812345678', ['13812345678', '0591-87654321-123'])
    """
    if isinstance(raw, float) and not math.isnan(raw) and raw.is_integer():
        raw = int(raw)
    s = _clean(raw)
    if s is None:
        return _result(None, ("phone_missing",))
    shape = _MOBILE_SHAPE.fullmatch(s)  # most fields: one mobile, nothing else
    if shape and _PLAIN_MOBILE.fullmatch(mobile := "".join(shape.groups())):
        return Normalized(mobile, (), {"all": [mobile], "kinds": ["mobile"]})
    found: list[str] = []
    kinds: list[str] = []
    bad: list[tuple[str, str]] = []
    area = default_area_code
    for chunk in _PHONE_SPLIT.split(s):
        for canonical, kind, source in _phones_in_chunk(chunk, area):
            if canonical is None:
                bad.append((kind, source))
                continue
            if kind == "landline":  # "0591-87654321,87654322": the second shares the area code
                area = canonical.split("-")[0]
            if canonical not in found:
                found.append(canonical)
                kinds.append(kind)
    extra: dict[str, Any] = {"all": found, "kinds": kinds}
    if bad:
        extra["invalid"] = [source for _, source in bad]
    if not found:
        reason = bad[0][0] if bad else "phone_invalid"
        return _result(None, (reason,), extra)
    reasons = []
    if len(found) > 1:
        reasons.append("phone_multiple")
    if bad:
        reasons.append("phone_partly_invalid")
    return _result(found[0], reasons, extra)


# -------------------------------------------------------------------------- dates

EXCEL_EPOCH = dt.date(1899, 12, 30)
_EXCEL_MAX = 80000  # 2119-01-10
_PLACEHOLDER_DATES = {
    dt.date(1900, 1, 1),
    dt.date(1899, 12, 30),
    dt.date(1899, 12, 31),
    dt.date(9999, 12, 31),
    dt.date(9999, 1, 1),
    dt.date(1, 1, 1),
}
_YEAR_RANGE = (1800, 2200)

_YMD = re.compile(
    r"^(?P<y>\d{4})\s*(?P<s1>[-/.年])\s*(?P<m>\d{1,2})\s*(?P<s2>[-/.月])\s*(?P<d>\d{1,2})"
    r"\s*(?P<day>[日号])?"
)
_DMY = re.compile(
    r"^(?P<a>\d{1,2})\s*(?P<s1>[-/.])\s*(?P<b>\d{1,2})\s*(?P<s2>[-/.])\s*(?P<y>\d{4})"
)
_MON = {
    m: i
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}
# Oracle's default NLS_DATE_FORMAT, in English and in Chinese: 27-JUN-24, 27-6月 -24
_ORACLE = re.compile(r"^(?P<d>\d{1,2})-\s*(?P<m>[A-Za-z]{3}|\d{1,2}\s*月)\s*-\s*(?P<y>\d{2}|\d{4})")
_YM_ONLY = re.compile(r"^(?P<y>\d{4})\s*(?:[-/.年]\s*(?P<m>\d{1,2})\s*月?)?\s*年?$")
_TIME_TAIL = re.compile(r"[0-9:.时分秒点Z+\-\s]*(?:AM|PM|上午|下午)?[0-9:.时分秒点\s]*", re.I)
_CN_DIGITS = {c: i for i, c in enumerate("〇一二三四五六七八九")} | {"零": 0, "○": 0, "O": 0}
_CN_DATE = re.compile(
    r"^(?P<y>[〇零○O一二三四五六七八九]{4})年(?P<m>[一二三四五六七八九十]{1,3})月"
    r"(?P<d>[一二三四五六七八九十]{1,3})[日号](?P<tail>.*)"
)
_SEP_PAIRS = {("-", "-"), ("/", "/"), (".", "."), ("年", "月")}


def _time_tail_ok(rest: str) -> bool:
    """What follows a date may only be a time, set off by a space, T or 日."""
    stripped = rest.lstrip()
    if stripped[:1] in ("日", "号"):
        stripped = stripped[1:]
    elif rest and rest[0] not in " T":
        return False
    return bool(_TIME_TAIL.fullmatch(stripped.lstrip(" T")))


def _cn_number(s: str) -> int:
    if "十" not in s:
        return int("".join(str(_CN_DIGITS[c]) for c in s))
    tens, _, ones = s.partition("十")
    return (_CN_DIGITS[tens] if tens else 1) * 10 + (_CN_DIGITS[ones] if ones else 0)


Parsed = tuple[dt.date | None, tuple[str, ...]]


def _make_date(y: int, m: int, d: int) -> Parsed:
    try:
        return dt.date(y, m, d), ()
    except ValueError:
        return None, ("date_impossible",)


def _from_serial(n: float) -> Parsed:
    """Excel's day number → date, reproducing Excel's 1900 leap-year bug.

    Excel counts 1900-02-29 (serial 60), a day that never was. Serials from 61 on are days since
    1899-12-30; 1–59 are days since 1899-12-31; 60 itself is rejected as impossible.
    """
    if not 1 <= n < _EXCEL_MAX + 1:
        return None, ("date_unparseable",)
    whole = int(n)
    if whole == 60:
        return None, ("date_impossible",)
    base = EXCEL_EPOCH if whole > 60 else EXCEL_EPOCH + dt.timedelta(days=1)
    return base + dt.timedelta(days=whole), ()


def _century(yy: int, pivot: dt.date) -> int:
    return 2000 + yy if 2000 + yy <= pivot.year else 1900 + yy


def _date_from_number(n: float, fmt: str) -> Parsed:
    if fmt == "excel_serial":
        return _from_serial(n)
    if n.is_integer():
        whole = int(n)
        if 10000101 <= whole <= 99991231 or 10**13 <= whole < 10**14:  # yyyymmdd[HHMMSS]
            return _date_from_text(str(whole), "auto", None)
        if 1000 <= whole <= 2999:  # a bare year, not Excel day 1000–2999 (1902–1908)
            return None, ("date_incomplete",)
    return _from_serial(n)


_Y, _MO, _D = r"(\d{4})", r"(0[1-9]|1[0-2])", r"(0[1-9]|[12]\d|3[01])"
_H, _MI, _S = r"([01]\d|2[0-3])", r"([0-5]\d)", r"([0-5]\d)"
# strptime's own reading of these formats when every part has its two digits
_FIXED_WIDTH = {
    fmt: re.compile(pattern, re.ASCII)
    for fmt, pattern in {
        "%Y%m%d": _Y + _MO + _D,
        "%Y%m%d%H%M%S": _Y + _MO + _D + _H + _MI + _S,
        "%Y-%m-%d": f"{_Y}-{_MO}-{_D}",
        "%Y-%m-%d %H:%M:%S": f"{_Y}-{_MO}-{_D} {_H}:{_MI}:{_S}",
    }.items()
}


def parse_time(s: str, fmt: str) -> dt.datetime:
    """``datetime.strptime(s, fmt)``, the same answer and the same ValueError, without strptime's
    cost for the fixed-width digit formats departments use most (``%Y%m%d``, ``%Y%m%d%H%M%S``,
    ``%Y-%m-%d``, ``%Y-%m-%d %H:%M:%S``, each part written with all its digits).

    >>> parse_time("20240627153000", "%Y%m%d%H%M%S")
    datetime.datetime(2024, 6, 27, 15, 30)
    """
    pattern = _FIXED_WIDTH.get(fmt)
    m = pattern.fullmatch(s) if pattern is not None else None
    if m is None:
        return dt.datetime.strptime(s, fmt)
    n = [int(g) for g in m.groups()] + [0, 0, 0]  # no time: midnight
    return dt.datetime(n[0], n[1], n[2], n[3], n[4], n[5])


def _date_from_text(s: str, fmt: str, pivot: dt.date | None) -> Parsed:
    """Strict parsing of the forms Chinese government systems write."""
    if fmt not in ("auto", "chinese", "excel_serial"):
        try:
            return parse_time(s, fmt).date(), ()
        except ValueError as e:
            return None, ("date_impossible" if "out of range" in str(e) else "date_unparseable",)
    if fmt == "excel_serial" or (fmt == "auto" and re.fullmatch(r"\d{5}(?:\.\d+)?", s)):
        try:
            return _from_serial(float(s))
        except ValueError:
            return None, ("date_unparseable",)
    cn = _CN_DATE.match(s)
    if cn:
        year = _cn_number(cn["y"])
        s = f"{year}年{_cn_number(cn['m'])}月{_cn_number(cn['d'])}日{cn['tail']}"
    m = _YMD.match(s)
    if m and (m["s1"], m["s2"]) in _SEP_PAIRS and (m["day"] is None or m["s1"] == "年"):
        if not _time_tail_ok(s[m.end("d") :]):
            return None, ("date_unparseable",)
        y, mo, d = int(m["y"]), int(m["m"]), int(m["d"])
        if mo > 12 and d <= 12 and m["s1"] != "年":  # 2024/27/6: written year/day/month
            day, why = _make_date(y, d, mo)
            return day, why or ("date_ambiguous",)
        return _make_date(y, mo, d)
    if fmt == "chinese":
        return None, ("date_unparseable",)
    if re.match(r"^\d{8}(?:\d{4}|\d{6})?(?:[ T]|$)", s):  # 20240627, 20240627153000
        return _make_date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    m = _DMY.match(s)
    if m and m["s1"] == m["s2"] and _time_tail_ok(s[m.end("y") :]):
        a, b, y = int(m["a"]), int(m["b"]), int(m["y"])
        if a <= 12 and b <= 12 and a != b:
            return None, ("date_day_month_unclear",)
        d, mo = (a, b) if a > 12 or a == b else (b, a)
        return _make_date(y, mo, d)
    m = _ORACLE.match(s)
    if m and _time_tail_ok(s[m.end("y") :]):
        mon = m["m"].upper()
        month = _MON.get(mon) if mon.isalpha() else int(mon.rstrip("月").strip())
        if month is None:
            return None, ("date_unparseable",)
        if len(m["y"]) == 4:
            return _make_date(int(m["y"]), month, int(m["d"]))
        century = _century(int(m["y"]), pivot or dt.date.today())
        day, why = _make_date(century, month, int(m["d"]))
        return day, why or ("date_ambiguous",)
    m = _YM_ONLY.match(s)
    if m and 1000 <= int(m["y"]) <= 2999 and (m["m"] is None or 1 <= int(m["m"]) <= 12):
        return None, ("date_incomplete",)
    if re.fullmatch(r"\d{6}", s) and 1000 <= int(s[:4]) <= 2999 and 1 <= int(s[4:]) <= 12:
        return None, ("date_incomplete",)
    return None, ("date_unparseable",)


def _parse_date(raw: object, fmt: str | None, as_of: dt.date | None) -> Normalized[dt.date]:
    fmt = fmt or "auto"
    day: dt.date | None
    reasons: tuple[str, ...]
    if isinstance(raw, dt.datetime):
        try:
            day, reasons = dt.date(raw.year, raw.month, raw.day), ()
        except (TypeError, ValueError):  # pandas NaT is a datetime without a date
            return _result(None, ("missing",))
    elif isinstance(raw, dt.date):
        day, reasons = raw, ()
    elif isinstance(raw, bool):
        return _result(None, ("date_unparseable",))
    elif isinstance(raw, int | float | Decimal):
        if isinstance(raw, Decimal) and raw.is_nan():  # float() refuses sNaN
            return _result(None, ("missing",))
        number = float(raw)
        if math.isnan(number):
            return _result(None, ("missing",))
        if math.isinf(number):
            return _result(None, ("date_unparseable",))
        day, reasons = _date_from_number(number, fmt)
    else:
        s = _clean(raw)
        if s is None:
            return _result(None, ("missing",))
        day, reasons = _date_from_text(s, fmt, as_of)
    if day is None:
        return _result(None, reasons or ("date_unparseable",))
    if day in _PLACEHOLDER_DATES or not _YEAR_RANGE[0] <= day.year <= _YEAR_RANGE[1]:
        return _result(None, ("date_out_of_range",))
    if as_of is not None and day > as_of:
        return _result(None, ("date_in_future",))
    return _result(day, reasons)


@_guarded
def date(raw: object, fmt: str | None = None, as_of: dt.date | None = None) -> Normalized[dt.date]:
    """A calendar date, parsed strictly (never dateutil's guessing).

    Accepts date/datetime objects, ``2024年6月27日`` (also 二〇二四年六月二十七日), ``20240627``,
    ``2024/6/27``, ``2024-06-27``, ``2024.6.27``, a time after the date, ``27/06/2024`` when the
    day is > 12, Oracle's ``27-JUN-24``, and Excel serial numbers (numbers, or 5-digit strings).
    ``fmt`` may be a strptime format, "excel_serial", "chinese" or "auto" (the default).
    A bare year such as "1990" is incomplete, not a date.

    >>> date("2024年6月27日").value
    datetime.date(2024, 6, 27)
    >>> date("45470").value
    datetime.date(2024, 6, 27)
    >>> date("2024-02-30").reasons
    ('date_impossible',)
    """
    return _parse_date(raw, fmt, as_of)


# ------------------------------------------------------------------------ address


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed address; reads like a dict (``a["district"]``) for callers that want one."""

    province: str | None
    city: str | None
    district: str | None
    division_code: str | None
    detail: str
    full: str

    def __getitem__(self, key: str) -> str | None:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        value: str | None = getattr(self, key)
        return value

    def keys(self) -> tuple[str, ...]:
        """The field names, as a dict has them."""
        return tuple(self.__dataclass_fields__)

    def as_dict(self) -> dict[str, str | None]:
        """A plain dict copy."""
        return {k: self[k] for k in self.keys()}


@dataclass(frozen=True, slots=True)
class _Place:
    code: str
    level: str  # province | prefecture | county
    name: str  # the name the text used
    full: bool  # full name (with 省/市/区/县…) rather than an abbreviation
    historical: bool
    weak: bool = False  # an abbreviation that may be the start of a street name


_PLACEHOLDER_NAMES = {
    "市辖区",
    "县",
    "市区",
    "省直辖县级行政区划",
    "自治区直辖县级行政区划",
    "省直辖县级行政单位",
    "自治区直辖县级行政单位",
    "林区",
}
_SUFFIXES = (
    "特别行政区",
    "自治区",
    "自治州",
    "自治县",
    "自治旗",
    "地区",
    "林区",
    "特区",
    "省",
    "市",
    "区",
    "县",
    "旗",
    "盟",
)
# After an abbreviated name: 中山路 is a street, 长乐市 a different full name; 鼓楼东街 is either
# a street or 鼓楼(区) + 东街, so it only counts inside the default city.
_NOT_AFTER_SHORT = re.compile(r"^(?:[路街巷弄道里]|大道|大街|[市县区旗])")
_WEAK_AFTER_SHORT = re.compile(r"^[东西南北中][路街]")


def _short_name(name: str) -> str | None:
    """The everyday abbreviation of a division name (福建省 → 福建), if it is safe to use."""
    base = name
    for suffix in _SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            base = base[: -len(suffix)]
            break
    changed = "自治" in name  # 延边朝鲜族自治州 → 延边; ethnic stems elsewhere are place words
    while changed:
        changed = False
        for stem in sorted(_ETHNIC_STEMS, key=len, reverse=True):
            for form in (stem + "族", stem):
                if base.endswith(form) and len(base) - len(form) >= 2:
                    base, changed = base[: -len(form)], True
                    break
            if changed:
                break
    return base if base != name and len(base) >= 2 else None


@functools.cache
def _place_index() -> tuple[dict[str, tuple[_Place, ...]], int]:
    """Name (full or abbreviated, current or historical) → places; built once per process."""
    table: dict[str, list[_Place]] = {}
    current = {d.code for d in divisions.all_divisions() if d.end is None}
    for d in divisions.all_divisions():
        name = _t2s(d.name)
        if name in _PLACEHOLDER_NAMES or d.code == "000000":
            continue
        historical = d.end is not None
        if (
            historical
            and d.code in current
            and any(_t2s(c.name) == name for c in divisions.by_code()[d.code] if c.end is None)
        ):
            continue
        table.setdefault(name, []).append(_Place(d.code, d.level, name, True, historical))
        short = _short_name(name)
        if short and not historical and (d.level != "county" or len(name) >= 3):
            table.setdefault(short, []).append(_Place(d.code, d.level, short, False, False))
    index = {k: tuple(dict.fromkeys(v)) for k, v in table.items()}
    return index, max(len(k) for k in index)


@functools.cache
def _current_name(code: str) -> str | None:
    d = divisions.lookup(code)
    return _t2s(d.name) if d is not None and d.end is None else None


def _renamed(place: _Place) -> tuple[str, str]:
    """(code, current name) for a historical match: same code, or 长乐市 → 长乐区 in its city."""
    now = _current_name(place.code)
    if now is not None:
        return place.code, now
    stem = _short_name(place.name)
    if stem:
        for d in divisions.current_counties(place.code[:4]):
            if _short_name(_t2s(d.name)) == stem:
                return d.code, _t2s(d.name)
    return place.code, place.name


_SKIP = re.compile(r"[\s,，、;；:：\-]*")
_COUNTRY = re.compile(r"^(?:中华人民共和国|中国)")


def _matches(s: str, pos: int, level: str, parent: str | None) -> list[tuple[_Place, int]]:
    """Places of ``level`` whose name starts at ``pos`` (under ``parent`` code prefix)."""
    return _matches_reach(s, pos, level, parent)[0]


def _matches_reach(
    s: str, pos: int, level: str, parent: str | None
) -> tuple[list[tuple[_Place, int]], int]:
    """:func:`_matches`, and how far into ``s`` it read: the answer depends on ``s[:reach]``
    alone (and, when ``reach`` is past the end, on where ``s`` ends)."""
    _, longest = _place_index()
    prefixes = _name_prefixes()
    pos = _SKIP.match(s, pos).end()  # type: ignore[union-attr]  # the pattern always matches
    n = 0  # no name is longer than the longest start of s that begins some name
    while n < longest and pos + n < len(s) and s[pos : pos + n + 1] in prefixes:
        n += 1
    # what follows a name matters for two characters at most (_NOT_AFTER_SHORT, _WEAK_AFTER_SHORT)
    found = [(place, pos + k) for place, k in _matches_at(s[pos : pos + n + 2], level, parent)]
    return found, pos + n + 2


@functools.cache
def _name_prefixes() -> frozenset[str]:
    """Every beginning of every name in :func:`_place_index`."""
    return frozenset(name[:n] for name in _place_index()[0] for n in range(1, len(name) + 1))


@functools.lru_cache(maxsize=1 << 16)
def _matches_at(s: str, level: str, parent: str | None) -> tuple[tuple[_Place, int], ...]:
    """:func:`_matches` at the start of ``s``: places and where their names end. Addresses share
    their beginnings (province, city, district), so each beginning is looked up once."""
    index, longest = _place_index()
    out = []
    for n in range(min(longest, len(s)), 1, -1):
        for place in index.get(s[:n], ()):
            if place.level != level or (parent and not place.code.startswith(parent)):
                continue
            if not place.full and _NOT_AFTER_SHORT.match(s[n:]):
                continue
            if not place.full and _WEAK_AFTER_SHORT.match(s[n:]):
                place = dataclasses.replace(place, weak=True)
            if parent is None and place.full and level == "county" and len(place.name) < 3:
                continue  # 城区, 郊区, 矿区 mean something only under a city
            out.append((place, n))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Path:
    province: _Place | None
    city: _Place | None
    county: _Place | None
    end: int

    @property
    def places(self) -> tuple[_Place, ...]:
        return tuple(p for p in (self.province, self.city, self.county) if p)

    @property
    def code(self) -> str:
        return self.places[-1].code

    @property
    def weak(self) -> bool:
        """A leading abbreviation that may be a street name (a matched parent vouches for it)."""
        return self.places[0].weak

    def score(self) -> tuple[int, int, int]:
        ps = self.places
        return (self.end, -sum(p.historical for p in ps), sum(p.full for p in ps))


def _paths(s: str) -> tuple[list[_Path], int]:
    """Every reading of the start of ``s`` as province → city → county (each may be left out),
    and how far into ``s`` they were looked for (:func:`_matches_reach`)."""
    out: list[_Path] = []
    provinces, reach = _matches_reach(s, 0, "province", None)
    for prov, p0 in [(None, 0), *provinces]:
        prov_prefix = prov.code[:2] if prov else None
        ends, r1 = _repeated(s, prov, p0, None)
        reach = max(reach, r1)
        for p1 in ends:
            cities, r2 = _matches_reach(s, p1, "prefecture", prov_prefix)
            reach = max(reach, r2)
            for city, p in [(None, p1), *cities]:
                parent = city.code[:4] if city else prov_prefix
                more, r3 = _repeated(s, city, p, prov_prefix)
                reach = max(reach, r3)
                for p2 in more:
                    counties, r4 = _matches_reach(s, p2, "county", parent)
                    reach = max(reach, r4)
                    out.extend(
                        _Path(prov, city, county, p3)
                        for county, p3 in [(None, p2), *counties]
                        if prov or city or county
                    )
    return out, reach


def _repeated(s: str, place: _Place | None, end: int, parent: str | None) -> tuple[list[int], int]:
    """Where ``place``'s name ends, also read as written twice (``北京市 北京市西城区``,
    ``福州市福州市鼓楼区``; but 阿拉善盟阿拉善左旗 is one name and then another), and how far
    that was looked for."""
    ends, reach = [end], 0
    while place is not None:
        again, r = _matches_reach(s, ends[-1], place.level, parent)
        reach = max(reach, r)
        more = [e for p, e in again if p.code == place.code]
        if not more:
            break
        ends.append(max(more))
    return ends, reach


@functools.lru_cache(maxsize=256)
def _prefix_of(code: str | None) -> str | None:
    """The code prefix a default city stands for: "350100" → "3501"; a name works too."""
    if code and not code.isdigit():
        places = [p for p in _place_index()[0].get(_t2s(code.strip()), ()) if p.level != "county"]
        code = places[0].code if len(places) == 1 else None
    if not code:
        return None
    code = code.ljust(6, "0")[:6]
    return code[:2] if code.endswith("0000") else code[:4] if code.endswith("00") else code


def _common_code(codes: list[str]) -> str | None:
    for n, pad in ((6, ""), (4, "00"), (2, "0000")):
        if len({c[:n] for c in codes}) == 1:
            return codes[0][:n] + pad
    return None


def _names_for(code: str) -> tuple[str | None, str | None, str | None]:
    """(province, city, district) current names for a division code."""
    province = _current_name(code[:2] + "0000")
    if code.endswith("0000"):
        return province, None, None
    city = _current_name(code[:4] + "00")
    if city in _PLACEHOLDER_NAMES:
        city = None  # 省直辖县级行政单位: county-level cities with no prefecture (仙桃市)
    if province and province.endswith("市") and code[2:4] in ("01", "02"):
        city = province  # 北京市朝阳区: the municipality is its own city
    if code.endswith("00"):
        return province, city, None
    county = _current_name(code)
    return province, city, county


_Resolved = tuple[
    str | None, str | None, str | None, str | None, int, tuple[str, ...], tuple[str, ...]
]
"""(province, city, district, division code, where the divisions end, reasons, candidates)"""
_HEADS: dict[tuple[str, bool, str | None], _Resolved | None] = {}
_REACHES: set[int] = set()
_HEADS_KEPT = 1 << 17


def _resolved(body: str, default_prefix: str | None) -> _Resolved | None:
    """:func:`_resolve`, remembered by the beginning of ``body`` it read: addresses differ in
    their street and number, not in their province, city and district, so the divisions of an
    address are worked out once per beginning (the whole text when the reading reached its end).
    """
    hit = _HEADS.get((body, True, default_prefix), _HEADS)
    if hit is not _HEADS:
        return hit  # type: ignore[return-value]
    for reach in _REACHES:
        if reach < len(body):
            hit = _HEADS.get((body[:reach], False, default_prefix), _HEADS)
            if hit is not _HEADS:
                return hit  # type: ignore[return-value]
    paths, reach = _paths(body)
    found = _resolve(paths, default_prefix)
    if len(_HEADS) > _HEADS_KEPT:
        _HEADS.clear()
    if reach >= len(body):
        _HEADS[(body, True, default_prefix)] = found
    else:
        _HEADS[(body[:reach], False, default_prefix)] = found
        _REACHES.add(reach)
    return found


def _one_city(codes: list[str]) -> bool:
    """Whether at most one of ``codes`` lies in a city (a prefecture that is not a grouping)."""
    cities = {
        c[:4] for c in codes if _current_name(c[:4] + "00") not in (None, *_PLACEHOLDER_NAMES)
    }
    return len(cities) <= 1


def _resolve(paths: list[_Path], default_prefix: str | None) -> _Resolved | None:
    """The divisions an address names, from the readings of its beginning; None when none."""
    paths = [
        p for p in paths if not p.weak or (default_prefix and p.code.startswith(default_prefix))
    ]
    if not paths:
        return None
    scores = [p.score() for p in paths]
    best = max(scores)
    top = [p for p, score in zip(paths, scores, strict=True) if score == best]
    if default_prefix and len({p.code for p in top}) > 1:
        near = [p for p in top if p.code.startswith(default_prefix)]
        top = near or top
    codes = sorted({p.code for p in top})
    same_name = len({p.places[-1].name for p in top}) == 1
    if len(codes) > 1 and same_name and len({c[:2] for c in codes}) == 1 and _one_city(codes):
        # loc.dat keeps a few retired codes open (神农架林区 422921 and 429021): same name in
        # one province, not in two of its cities (河北省桥西区) → the newest code
        codes = codes[-1:]
        top = [p for p in top if p.code == codes[0]]
    path = top[0]
    reasons: list[str] = []
    if any(p.historical for p in path.places):
        reasons.append("address_historical_name")
    if len(codes) > 1:
        if all(not p.places[-1].full for p in top) and len(path.places) == 1:
            return None
        reasons.append("address_ambiguous_district")
        common = _common_code(codes)
        province, city, _ = _names_for(common) if common else (None, None, None)
        district = path.county.name if path.county and path.county.full else None
        return province, city, district, common, path.end, tuple(reasons), tuple(codes)
    code = path.code
    if path.places[-1].historical:
        code, _ = _renamed(path.places[-1])
    province, city, district = _names_for(code)
    if path.places[-1].historical and _current_name(code) is None:
        district = path.places[-1].name  # retired, never renamed: keep the name written
    return province, city, district, code, path.end, tuple(reasons), tuple(codes)


@functools.lru_cache(maxsize=1 << 16)
def _parse_address(
    s: str, default_prefix: str | None
) -> tuple[Address, tuple[str, ...], tuple[str, ...]]:
    """(address, reasons, candidate codes) for cleaned, simplified text."""
    body = _COUNTRY.sub("", s)
    found = _resolved(body, default_prefix)
    if found is None:
        return Address(None, None, None, None, s, s), ("address_unparsed",), ()
    province, city, district, code, end, reasons, codes = found
    detail = body[_SKIP.match(body, end).end() :]  # type: ignore[union-attr]
    parts = [province, city if city != province else None, district, detail]
    full = "".join(p for p in parts if p)
    return Address(province, city, district, code, detail, full), reasons, codes


@_guarded
def address(raw: object, *, default_city_code: str | None = None) -> Normalized[Address]:
    """Split an address into province, city and district with their GB/T 2260 code.

    Abbreviations (福州鼓楼 → 福州市鼓楼区) are read; a missing province is inferred from the city
    and a missing city from the district when the district's name is unique in the country or
    within ``default_city_code`` (e.g. "350100"). Renamed divisions (郊区 → 晋安区, 长乐市 →
    长乐区) resolve to today's names with a warning. Unparsed text is kept whole as ``detail``.

    >>> a = address("福州鼓楼五四路1号").value
    >>> a.division_code, a.full
    ('350102', '福建省福州市鼓楼区五四路1号')
    >>> address("鼓楼区五四路1号", default_city_code="350100").value.division_code
    '350102'
    """
    s = _clean(raw)
    if s is None:
        return _result(None, ("address_missing",))
    simplified = _t2s(s)
    reasons = ["traditional_converted"] if simplified != s else []
    parsed, why, candidates = _parse_address(simplified, _prefix_of(default_city_code))
    extra = {"candidates": list(candidates)} if len(candidates) > 1 else {}
    return _result(parsed, [*reasons, *why], extra)


# ---------------------------------------------------------------- enterprise name

_BRACKETS = str.maketrans("()[]【】〔〕{}", "（）（）（）（）（）")
_BRANCH_SUFFIX = (
    r"（?(?P<branch>[^（）]+?"
    r"(?:分公司|分店|营业部|办事处|分行|支行|分厂|分所|分部|分社|营业所))）?$"
)
# The head office's name ends with its last legal form (恒达集团有限公司|鼓楼分公司, 中国银行股份
# 有限公司|福州分行), or failing one with a weaker ending (招商银行|福州分行).
_BRANCH = (
    re.compile(
        r"^(?P<head>.*(?:有限责任公司|股份有限公司|有限公司|（有限合伙）|合伙企业|公司|集团))"
        + _BRANCH_SUFFIX
    ),
    re.compile(r"^(?P<head>.*(?:合作社|厂|店|行|社|中心|所))" + _BRANCH_SUFFIX),
)
_BRACKETED = re.compile(r"（(?P<inner>[^（）]+)）")
_LEGAL_KEY = (("有限责任公司", "有限公司"), ("股份公司", "股份有限公司"))
_KEY_DROP = re.compile(r"[\s（）·.\-_,，、&＆'\"]+")
_CJK_OR_LATIN = re.compile(rf"[{_CJK}A-Za-z]")


def _is_place(name: str) -> bool:
    return name in ("中国", "中华") or any(
        p.level != "county" or p.full for p in _place_index()[0].get(name, ())
    )


def _leading_place(s: str) -> int:
    """How many characters of ``s`` are a leading place (福建省福州市, 福州, 鼓楼区…)."""
    pos, parent = 0, None
    for level in ("province", "prefecture", "county"):
        hits = [
            (p, e)
            for p, e in _matches(s, pos, level, parent)
            if not p.weak and (level != "county" or p.full)
        ]
        if hits:
            place, pos = max(hits, key=lambda h: h[1])
            parent = place.code[:2] if level == "province" else place.code[:4]
    if s[pos - 1 : pos + 1] == "市场":  # 福州市场开发: 福州 + 市场, not 福州市 + 场
        pos -= 1
    return pos


def _name_key(s: str) -> str:
    for old, new in _LEGAL_KEY:
        s = s.replace(old, new)
    return _KEY_DROP.sub("", s).upper()


@_guarded
def enterprise_name(raw: object) -> Normalized[str]:
    """An enterprise's display name with full-width brackets; extra["key"] for comparison.

    The key drops a place prefix (福州…, 福建省福州市…) or a bracketed place (恒达（福州）科技),
    brackets and the 有限责任公司/有限公司 difference, but keeps a branch (…鼓楼分公司), so a
    branch never shares its head office's key. extra: key, branch, place.

    >>> enterprise_name("福州恒达科技有限公司").extra["key"] == enterprise_name(
    ...     "恒达(福州)科技有限责任公司").extra["key"]
    True
    """
    s = _clean(raw)
    if s is None:
        return _result(None, ("missing",))
    simplified = _t2s(s)
    reasons = ["traditional_converted"] if simplified != s else []
    display = re.sub(r"(?<![A-Za-z0-9]) | (?![A-Za-z0-9])", "", simplified.translate(_BRACKETS))
    if len(_CJK_OR_LATIN.findall(display)) < 2:
        return _result(None, [*reasons, "enterprise_name_invalid"], {"cleaned": display})
    head, branch = display, None
    for pattern in _BRANCH:
        m = pattern.match(display)
        if m:
            head, branch = m["head"], m["branch"]
            break
    places: list[str] = []
    lead = _leading_place(head)
    if lead and len(_CJK_OR_LATIN.findall(head[lead:])) >= 2:
        places.append(head[:lead])
        head = head[lead:]

    def drop_place(m: re.Match[str]) -> str:
        if _is_place(m["inner"]):
            places.append(m["inner"])
            return ""
        return m.group(0)

    head = _BRACKETED.sub(drop_place, head)
    key = _name_key(head) + (_name_key(branch) if branch else "")
    extra = {"key": key, "branch": branch, "place": "".join(places) or None}
    return _result(display, reasons, extra)


# ------------------------------------------------------------ sex, ethnicity, money

_SEX = {
    "男": "男",
    "男性": "男",
    "m": "男",
    "male": "男",
    "man": "男",
    "1": "男",
    "先生": "男",
    "女": "女",
    "女性": "女",
    "f": "女",
    "female": "女",
    "woman": "女",
    "2": "女",
    "女士": "女",
}
_SEX_UNKNOWN = {"0", "9", "未知", "未说明", "未知的性别", "未说明的性别", "u", "unknown", "不详"}


def _sex_value(raw: object) -> tuple[str | None, str]:
    """(男/女 or None, reason or "")."""
    if isinstance(raw, bool):
        return None, "sex_invalid"
    if isinstance(raw, float) and not math.isnan(raw) and raw.is_integer():
        raw = int(raw)
    s = _raw_str(raw)
    s = unicodedata.normalize("NFKC", s).strip().casefold() if s is not None else None
    if s in _SEX_UNKNOWN:  # before _clean, which would call 未知 merely missing
        return None, "sex_unknown"
    s = _clean(s)
    if s is None:
        return None, "missing"
    value = _SEX.get(s.casefold())
    return (value, "") if value else (None, "sex_invalid")


@_guarded
def sex(raw: object) -> Normalized[str]:
    """男 or 女 from 男/女, M/F, male/female and the GB/T 2261.1 codes 1/2 (0, 9: unknown).

    >>> sex("F").value, sex(1).value, sex("9").reasons
    ('女', '男', ('sex_unknown',))
    """
    value, why = _sex_value(raw)
    return _result(value, (why,) if why else ())


# GB/T 3304-1991
_ETHNICITIES = (
    "汉族",
    "蒙古族",
    "回族",
    "藏族",
    "维吾尔族",
    "苗族",
    "彝族",
    "壮族",
    "布依族",
    "朝鲜族",
    "满族",
    "侗族",
    "瑶族",
    "白族",
    "土家族",
    "哈尼族",
    "哈萨克族",
    "傣族",
    "黎族",
    "傈僳族",
    "佤族",
    "畲族",
    "高山族",
    "拉祜族",
    "水族",
    "东乡族",
    "纳西族",
    "景颇族",
    "柯尔克孜族",
    "土族",
    "达斡尔族",
    "仫佬族",
    "羌族",
    "布朗族",
    "撒拉族",
    "毛南族",
    "仡佬族",
    "锡伯族",
    "阿昌族",
    "普米族",
    "塔吉克族",
    "怒族",
    "乌孜别克族",
    "俄罗斯族",
    "鄂温克族",
    "德昂族",
    "保安族",
    "裕固族",
    "京族",
    "塔塔尔族",
    "独龙族",
    "鄂伦春族",
    "赫哲族",
    "门巴族",
    "珞巴族",
    "基诺族",
)
# Ethnic stems that end a division's name (延边朝鲜族自治州): every group but 汉, and 各族.
_ETHNIC_STEMS = (*(n[:-1] for n in _ETHNICITIES[1:]), "各族")
_ETHNIC_CODES = {f"{i:02d}": n for i, n in enumerate(_ETHNICITIES, 1)} | {
    "97": "其他",
    "98": "外国血统中国籍人士",
}
_ETHNIC_NAMES = (
    {n: n for n in _ETHNIC_CODES.values()}
    | {n[:-1]: n for n in _ETHNICITIES if len(n) > 2}  # 汉 and 土 alone are too short to trust
    | {"汉": "汉族", "穿青人": "其他"}
)


@_guarded
def ethnicity(raw: object) -> Normalized[str]:
    """An ethnic group's standard name from a name, a short name or a GB/T 3304 code.

    >>> ethnicity("01").value, ethnicity("维吾尔").value, ethnicity(22).value
    ('汉族', '维吾尔族', '畲族')
    """
    if isinstance(raw, float) and not math.isnan(raw) and raw.is_integer():
        raw = int(raw)
    s = _clean(raw)
    if s is None:
        return _result(None, ("missing",))
    s = _t2s(s)
    is_code = s.isdigit() and len(s) <= 2
    name = _ETHNIC_CODES.get(s.zfill(2)) if is_code else _ETHNIC_NAMES.get(s)
    if name is None:
        return _result(None, ("ethnicity_invalid",), {"cleaned": s})
    code = next(c for c, n in _ETHNIC_CODES.items() if n == name)
    return _result(name, (), {"code": code})


_CAPITAL = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>亿元|亿|万元|万|元)?(?P<cur>.*)$")
_CURRENCIES = {
    "": "CNY",
    "人民币": "CNY",
    "rmb": "CNY",
    "cny": "CNY",
    "美元": "USD",
    "usd": "USD",
    "港元": "HKD",
    "港币": "HKD",
    "hkd": "HKD",
    "欧元": "EUR",
    "eur": "EUR",
    "日元": "JPY",
    "jpy": "JPY",
    "英镑": "GBP",
    "新台币": "TWD",
}
_IN_WAN = {
    "亿元": Decimal(10000),
    "亿": Decimal(10000),
    "万元": Decimal(1),
    "万": Decimal(1),
    "元": Decimal("0.0001"),
}


@_guarded
def registered_capital(raw: object, *, unit: str = "万元") -> Normalized[Decimal]:
    """Registered capital in 万元 (the unit registries use): "100万元", "1亿", "1,000.5".

    A bare number is in the column's ``unit`` ("万元", "元" or "亿元"); extra["currency"] is the
    ISO 4217 code.

    >>> registered_capital("100万元").value, registered_capital("5,000,000元").value
    (Decimal('100'), Decimal('500'))
    """
    if isinstance(raw, bool):
        return _result(None, ("capital_invalid",))
    if isinstance(raw, float):
        raw = Decimal(repr(raw))  # the shortest repr, not the binary expansion
    if isinstance(raw, Decimal) and not raw.is_finite():
        return _result(None, ("missing",) if raw.is_nan() else ("capital_invalid",))
    s = _clean(raw)
    if s is None:
        return _result(None, ("missing",))
    s = re.sub(r"[\s,，¥￥]|整$", "", s)
    cur_prefix = re.match(r"^(人民币|RMB|CNY|美元|USD|港元|港币|HKD)", s, re.I)
    if cur_prefix:
        s = s[cur_prefix.end() :] + cur_prefix.group(1)
    m = _CAPITAL.match(s)
    currency = _CURRENCIES.get(m["cur"].casefold()) if m else None
    if m is None or currency is None:
        return _result(None, ("capital_invalid",), {"cleaned": s})
    amount = Decimal(m["n"]) * _IN_WAN[m["unit"] or unit]
    return _result(Decimal(_decimal_text(amount)), (), {"currency": currency})


# --------------------------------------------------------------------- dispatcher


def _legacy_as(kind: str) -> Callable[..., Normalized[str]]:
    def normalizer(raw: object) -> Normalized[str]:
        r = legacy_code(raw)
        if r.value is not None and r.extra.get("kind") != kind:
            return _result(r.value, (*r.reasons, "code_kind_mismatch"), r.extra)
        return r

    normalizer.__name__ = f"legacy_code_as_{kind}"
    return normalizer


# Named after the canonical field each cleans (fields.dictionary: Field.normalized_by), except an
# enterprise's name, whose normalizer also derives the matching key and the branch suffix.
_NORMALIZERS: dict[str, Callable[..., Normalized[Any]]] = {
    "name": person_name,
    "legal_rep_name": person_name,
    "id_number": id_number,
    "legal_rep_id": id_number,
    "sex": sex,
    "birth_date": date,
    "established_date": date,
    "phone": phones,
    "address": address,
    "uscc": uscc,
    "employer_uscc": uscc,
    "reg_no": _legacy_as("reg_no"),
    "org_code": _legacy_as("org_code"),
    "enterprise_name": enterprise_name,
    "registered_capital": registered_capital,
    "status": text,
    "ethnicity": ethnicity,
}


@functools.cache
def _accepted(fn: Callable[..., Any]) -> frozenset[str]:
    return frozenset(list(inspect.signature(fn).parameters)[1:])


def normalize_value(normalizer: str, raw: object, **context: Any) -> Normalized[Any]:
    """Normalize ``raw`` with the normalizer of that name (one of :data:`NORMALIZERS`: a
    canonical field's is :attr:`fields.dictionary.Field.normalized_by`, named after the field
    except ``enterprise_name``); context the normalizer does not take (e.g. as_of for a name) is
    ignored. An unknown name is a programming error.

    >>> normalize_value("id_number", "110105491231002", sex="女").value
    '11010519491231002X'
    >>> normalize_value("registered_capital", "100万").value
    Decimal('100')
    """
    return _bind(normalizer, context)(raw)


@functools.lru_cache(maxsize=256)
def bound(normalizer: str, **context: Any) -> Callable[..., Normalized[Any]]:
    """:func:`normalize_value` with its name and context bound once, for normalizing many values
    alike: ``bound("date", fmt="%Y%m%d", as_of=day)(raw)``; an ID number's row context is still
    given per value (``birth_date=…, sex=…``).

    >>> bound("id_number", as_of=None, default_city_code="350100")("110105491231002").value
    '11010519491231002X'
    """
    return _bind(normalizer, context)


def _bind(normalizer: str, context: dict[str, Any]) -> Callable[..., Normalized[Any]]:
    try:
        fn = _NORMALIZERS[normalizer]
    except KeyError:
        raise KeyError(
            f"no normalizer for field {normalizer!r}; known: {sorted(_NORMALIZERS)}"
        ) from None
    accepted = _accepted(fn)
    return functools.partial(fn, **{k: v for k, v in context.items() if k in accepted})


NORMALIZERS: tuple[str, ...] = tuple(_NORMALIZERS)
"""The names :func:`normalize_value` takes."""
