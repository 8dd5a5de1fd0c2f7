"""The masking policy of personal data (GB/T 35273, GB/T 37964 style): one rule per field, used
by every output — department reports and their e-mails, logs and run records, the analyst views
and exports, ``lookup``, ``explain`` and ``review``.

:data:`POLICY` says, for every field of a person or an enterprise, two things:

- ``mask``: how one value is shown where it stands for a row the reader already holds or has
  named — a department's own rows in its report, a run log, the review queue. Identifiers keep
  enough to recognise a row among one's own data, never enough to be one:

  >>> mask_field("person", "id_number", "11010519491231002X")
  '110105********002X'
  >>> mask_field("person", "phone", "13812345678"), mask_field("person", "name", "张三丰")
  ('138****5678', '张**')
  >>> mask_field("person", "address", "福建省福州市台江区鳌峰路80号")
  '福建省福州市台江区****'
  >>> mask_field("enterprise", "name", "福州闽江科技有限公司")  # public registration data
  '福州闽江科技有限公司'

- ``release``: how the field appears in a de-identified release, the analyst views and exports,
  where nobody is named and no combination of columns may single anyone out. Direct
  identifiers (name, ID number, phone, street address) are suppressed; quasi-identifiers (sex,
  birth date, residence, ethnicity) are generalised together until every combination is shared
  by at least *k* persons (:mod:`access.viewsql` builds that in SQL); everything else is
  released with its mask.

Where two values of one field disagree (多元校核), :func:`describe_difference` says what differs
without showing either value: ``第3字不同（同音）``, ``出生日期中月、日互换``.

Every output calls one pair of functions per kind of thing, the first for a reader who holds
the rows (reports, e-mails, logs, the review queue), the second for a de-identified release
(the analyst views, exports, ``lookup``, ``explain``):

- one value of a field: :func:`mask_field` / :func:`release_field`;
- a source key: :func:`mask_key` / :func:`release_key`;
- a record ID ``department/table/key``: :func:`mask_record` / :func:`release_record`.

Free text (messages, keys, log lines) goes through :func:`mask_text`; :func:`find_clear` is the
gate that reports, e-mails and analyst output pass before they leave: ID numbers, mobile and
landline numbers, bank cards and e-mail addresses in clear, and any of the personal values
(names, street addresses) the caller knows the document was built from. What an analyst is
shown passes :func:`scrub` last.

>>> mask_text("身份证 11010519491231002X，电话 13812345678")
'身份证 110105********002X，电话 138****5678'
>>> mask_text("could not decode 0xd5 in '%D5%C513812345678'")
"could not decode 0xd5 in '%D5%C5138****5678'"
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Literal

from fields.dictionary import FIELDS, PUBLIC, FieldPolicy
from fields.identifiers import id_is_valid

SUPPRESSED = "****"
"""What a suppressed value reads as, everywhere."""

POLICY: dict[tuple[str, str], FieldPolicy] = {(f.entity, f.name): f.policy for f in FIELDS}
"""(entity, field) → its policy, from :mod:`fields.dictionary`. A field not listed is not
personal data and shown as it is."""

MASK_DESCRIPTIONS: dict[str, str] = {
    "id": "保留前6位和后4位（110101********1234）",
    "phone": "隐藏中间4位（138****5678，固话 0591****7211）",
    "name": "仅保留首字（张**）",
    "address": "仅保留省、市、区县（福建省福州市台江区****）",
    "birth_date": "仅保留年份（1985-**-**）",
    "hidden": "全部隐藏（****）",
}
"""Mask kinds → what a reader sees of one value (for catalogs and data dictionaries)."""

RELEASE_DESCRIPTIONS: dict[str, str] = {
    "suppress": "去标识化发布：不发布（****）",
    "generalise": "去标识化发布：与性别、出生年份段、居住地、民族一同泛化，每种组合至少 k 人，"
    "不足时逐级泛化直至隐藏（****）",
}
"""Release kinds that change a value → what an analyst sees."""


def policy(entity: str, field: str) -> FieldPolicy:
    """The policy of ``entity``'s ``field`` (public and not masked if the field is not listed)."""
    return POLICY.get((entity, field), PUBLIC)


# --- one value -----------------------------------------------------------------------------------


def mask_id(value: str | None) -> str | None:
    """An ID number with the birth date and sequence hidden (first 6 and last 4 shown)."""
    if value is None:
        return None
    s = str(value).strip()
    if len(s) <= 10:
        return "*" * len(s)
    return s[:6] + "*" * (len(s) - 10) + s[-4:]


def mask_phone(value: str | None) -> str | None:
    """A phone number with the middle four digits hidden (138****5678); landlines alike."""
    if value is None:
        return None
    s = str(value).strip()
    digits = re.sub(r"\D", "", s)
    if len(digits) < 7:
        return "*" * len(s)
    return (
        digits[:3] + "****" + digits[-4:]
        if len(digits) == 11
        else digits[:-8] + "****" + digits[-4:]
    )


def mask_name(value: str | None) -> str | None:
    """A name with everything after the first character hidden (张*, 欧阳** → 欧***)."""
    if value is None:
        return None
    s = str(value).strip()
    return s[:1] + "*" * max(len(s) - 1, 1) if s else s


def mask_birth_date(value: str | None) -> str | None:
    """A birth date with month and day hidden: ``1985-**-**`` (unreadable dates: ``****``)."""
    if value is None:
        return None
    s = str(value).strip()
    m = re.match(r"(\d{4})", s)
    return f"{m.group(1)}-**-**" if m else (SUPPRESSED if s else s)


def mask_address(value: str | None) -> str | None:
    """A person's address cut to the district (``福建省福州市台江区****``); an address that
    names no district is hidden whole."""
    if value is None:
        return None
    s = str(value).strip()
    if not s:
        return s
    parts = address_parts(s)
    region = "".join(p for p in parts[:3] if p)
    return f"{region}{SUPPRESSED}" if parts[2] else SUPPRESSED


def address_parts(value: str) -> tuple[str | None, str | None, str | None, str]:
    """(province, city, district, detail) of an address, as the standardizer parses it."""
    from fields import normalize  # the parser loads the division table: only when needed

    parsed = normalize.address(value).value
    if parsed is None:
        return None, None, None, value
    return parsed.province, parsed.city, parsed.district, parsed.detail


_MASKERS = {
    "id": mask_id,
    "phone": mask_phone,
    "name": mask_name,
    "address": mask_address,
    "birth_date": mask_birth_date,
}


def mask_as(kind: str, value: str | None) -> str | None:
    """``value`` masked as mask ``kind`` (a key of :data:`MASK_DESCRIPTIONS`, or ``clear``)."""
    if value is None:
        return None
    if kind == "clear":
        return str(value)
    if kind == "hidden":
        return SUPPRESSED
    return _MASKERS[kind](str(value))


def mask_field(entity: str, field: str, value: object) -> str | None:
    """One value of ``entity``'s ``field`` as :data:`POLICY` masks it (text that holds an ID or
    mobile number in a field that is not masked is still caught by :func:`mask_text`)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    rule = policy(entity, field)
    if not rule.masked:
        return mask_text(str(value))
    return mask_as(rule.mask, str(value))


def release_field(entity: str, field: str, value: object) -> str | None:
    """One value as a de-identified release shows it when the field is not generalised with
    the others: suppressed, masked, or as it is."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    rule = policy(entity, field)
    if rule.release in ("suppress", "generalise"):
        return SUPPRESSED
    if rule.release == "mask":
        return mask_as(rule.mask, str(value))
    return str(value)


# --- what differs --------------------------------------------------------------------------------

_ID_SEGMENTS = ((0, 6, "地址码"), (6, 14, "出生日期"), (14, 17, "顺序码"), (17, 18, "校验码"))


def describe_difference(entity: str, field: str, value: object, other: object) -> str | None:
    """What differs between two values of one field, in Chinese, naming positions and kinds
    of difference but never a character of a personal value.

    >>> describe_difference("person", "name", "肖明华", "肖明化")
    '第3字不同（同音）'
    >>> describe_difference("person", "id_number", "350121197403155015", "350121197404035015")
    '出生日期段不同'
    >>> describe_difference("person", "birth_date", "1985-03-07", "1985-07-03")
    '月、日互换'
    """
    if value is None or other is None:
        return "一方为空"
    a, b = str(value).strip(), str(other).strip()
    if a == b:
        return "相同"
    kind = policy(entity, field).mask
    if kind == "name":
        return _name_difference(a, b)
    if kind == "id":
        return _id_difference(a, b)
    if kind == "phone":
        return _digits_difference(re.sub(r"\D", "", a), re.sub(r"\D", "", b))
    if kind == "birth_date":
        return _date_difference(a, b)
    if kind == "address":
        return _address_difference(a, b)
    return None


def _positions(a: str, b: str) -> list[int]:
    return [i + 1 for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y]


def _runs(positions: list[int]) -> str:
    runs: list[list[int]] = []
    for p in positions:
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return "、".join(f"{r[0]}" if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in runs)


def _name_difference(a: str, b: str) -> str:
    if len(a) != len(b):
        return f"字数不同（{len(a)} 字 / {len(b)} 字）"
    if a.casefold() == b.casefold():
        return "大小写不同"
    positions = _positions(a, b)
    how = []
    from pypinyin import lazy_pinyin

    if lazy_pinyin(a) == lazy_pinyin(b):
        how.append("同音")
    from fields.normalize import person_name

    if person_name(a).value == person_name(b).value:
        how = ["繁简或全半角不同"]
    return f"第{_runs(positions)}字不同" + (f"（{'、'.join(how)}）" if how else "")


def _id_difference(a: str, b: str) -> str:
    if len(a) != len(b):
        if {len(a), len(b)} == {15, 18}:
            short, long_ = (a, b) if len(a) == 15 else (b, a)
            if short[:6] + "19" + short[6:] == long_[:17]:
                return "15位旧号码，升级为18位后一致"
            return "15位旧号码，升级后仍不一致"
        return f"位数不同（{len(a)} 位 / {len(b)} 位）"
    if a.upper() == b.upper():
        return "校验码 X 大小写不同"
    positions = set(_positions(a, b))
    segments = [
        name for start, end, name in _ID_SEGMENTS if positions & set(range(start + 1, end + 1))
    ]
    return "、".join(segments) + "段不同"


def _digits_difference(a: str, b: str) -> str:
    kinds = {"固定电话" if d.startswith("0") else "手机" for d in (a, b)}
    if len(kinds) == 2:
        return "一方为固定电话，一方为手机号码"
    if len(a) != len(b):
        return f"位数不同（{len(a)} 位 / {len(b)} 位）"
    positions = _positions(a, b)
    if len(positions) > len(a) // 2:
        return "号码不同"
    return f"第{_runs(positions)}位不同"


def _date_difference(a: str, b: str) -> str:
    da, db = re.findall(r"\d+", a), re.findall(r"\d+", b)
    if len(da) != 3 or len(db) != 3:
        return "日期格式不同"
    (ya, ma, dda), (yb, mb, ddb) = (tuple(int(x) for x in d) for d in (da, db))
    if ya == yb and ma == ddb and dda == mb:
        return "月、日互换"
    parts = [n for n, x, y in (("年", ya, yb), ("月", ma, mb), ("日", dda, ddb)) if x != y]
    return "、".join(parts) + "不同"


def _address_difference(a: str, b: str) -> str:
    pa, pb = address_parts(a), address_parts(b)
    if pa[2] and pb[2] and pa[2] != pb[2]:
        return f"区县不同（{pa[2]} / {pb[2]}）"
    if not (pa[2] and pb[2]):
        return "一方未写到区县"
    if pa[3] == pb[3]:
        return "区县相同，省市写法不同"
    if pa[:2] != pb[:2]:
        return "区县相同，详细地址不同（一方未写省市）"
    return "区县相同，详细地址不同"


# --- free text -----------------------------------------------------------------------------------

# Escaped bytes (\xD5, %D5, \u5f20, \325) in driver messages and reprs separate what they stand
# between: an ID glued to an escape is still an ID.
# Keyed pseudonyms (32 or 64 hex characters) are opaque: digits in them are no phone number.
_ESCAPE = re.compile(
    r"\\x[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}|\\[0-7]{3}|%[0-9A-Fa-f]{2}"
    r"|(?<![0-9A-Za-z])(?=[0-9a-f]*[a-f])(?:[0-9a-f]{64}|[0-9a-f]{32})(?![0-9A-Za-z])"
)
# An 18-character ID, or a 15-digit one, or a mobile, not glued to more digits on either side.
_ID = re.compile(r"(?<![0-9])(\d{6})(\d{8})(\d{3}[\dXx])(?![0-9])")
_ID15 = re.compile(r"(?<![0-9])(\d{6})(\d{6})(\d{3})(?![0-9])")
_MOBILE = re.compile(r"(?<!\d)(?:\+?86[- ]?)?(1[3-9]\d)[- ]?(\d{4})[- ]?(\d{4})(?!\d)")
_LANDLINE = re.compile(r"(?<![\dA-Za-z-])(0\d{2,3})[- ]?(\d{3,4})[- ]?(\d{4})(?![\d-])")
_CARD = re.compile(r"(?<![0-9A-Za-z])(62\d{14,17}|4\d{15}|5[1-5]\d{14}|3[47]\d{13})(?![0-9A-Za-z])")
_EMAIL = re.compile(
    r"(?<![\w.+-])([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@((?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,})\b"
)
# A street address below district level: a road, street, lane or village with a house number.
_STREET = re.compile(
    r"[\u4e00-\u9fff]{1,12}(?:路|街|大道|巷|弄|胡同|里|村|组)\s*\d+\s*(?:号|弄|栋|幢|排)"
    r"(?:\s*\d+\s*(?:号楼|栋|幢|单元|室|楼))*"
)

ClearKind = Literal["id", "mobile", "landline", "card", "email", "street", "known"]
ALL_KINDS: frozenset[str] = frozenset({"id", "mobile", "landline", "card", "email", "street"})
"""What the gate of reports and e-mails looks for."""
IDENTIFIER_KINDS: frozenset[str] = frozenset({"id", "mobile"})
"""What no output may ever hold, public data included (:func:`find_clear`'s default)."""


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _segments(text: str) -> list[tuple[bool, str]]:
    """``text`` cut at escaped bytes: (is_escape, piece) in order."""
    out: list[tuple[bool, str]] = []
    last = 0
    for m in _ESCAPE.finditer(text):
        out.append((False, text[last : m.start()]))
        out.append((True, m.group(0)))
        last = m.end()
    out.append((False, text[last:]))
    return out


def _is_id(candidate: str, glued: bool) -> bool:
    """An 18-character match is an ID if it is valid, or stands alone (not glued to letters)."""
    return id_is_valid(candidate.upper()) or not glued


def _mask_card(m: re.Match[str]) -> str:
    card = m.group(0)
    return card[:4] + "*" * (len(card) - 8) + card[-4:] if _luhn(card) else card


def _mask_piece(piece: str) -> str:
    def id18(m: re.Match[str]) -> str:
        start, end = m.span()
        glued = (start > 0 and piece[start - 1].isalpha()) or (
            end < len(piece) and piece[end].isalpha()
        )
        if not _is_id(m.group(0), glued):
            return m.group(0)
        return m.group(1) + "*" * 8 + m.group(3)[-4:]

    piece = _ID.sub(id18, piece)
    piece = _CARD.sub(_mask_card, piece)
    piece = _MOBILE.sub(lambda m: m.group(1) + "****" + m.group(3), piece)
    piece = _ID15.sub(lambda m: m.group(1) + "*" * 5 + m.group(2)[-1] + m.group(3), piece)
    piece = _LANDLINE.sub(lambda m: m.group(1) + "****" + m.group(3), piece)
    return _EMAIL.sub(lambda m: m.group(1) + "***@" + m.group(2), piece)


def mask_text(text: str) -> str:
    """``text`` with every ID number, mobile and landline number, bank card and e-mail address
    in it masked, also where escaped bytes of a badly encoded value surround them."""
    return "".join(p if esc else _mask_piece(p) for esc, p in _segments(text))


def mask_key(key: str) -> str:
    """A source key as it may appear in a report, a log or the review queue: masked where it
    is (or holds) an ID number or a mobile number, as some departments key rows by them; other
    keys as they are.

    >>> mask_key("350121197403155015"), mask_key("RK3501000301006001")
    ('350121********5015', 'RK3501000301006001')
    """
    return mask_text(key)


_ID_LIKE = re.compile(r"\d{17}[\dXx]|\d{15}")
_MOBILE_LIKE = re.compile(r"1[3-9]\d{9}")


def release_key(key: str | None) -> str | None:
    """A source key as a de-identified release shows it: suppressed when the whole key is an ID
    number or a mobile number (a release keeps no part of either); other keys as they are.

    >>> release_key("13812345678"), release_key("RK3501000301006001")
    ('****', 'RK3501000301006001')
    """
    if key is None:
        return None
    return SUPPRESSED if _ID_LIKE.fullmatch(key) or _MOBILE_LIKE.fullmatch(key) else key


_RECORD = re.compile(r"(?P<dept>[^/\s]+)/(?P<table>[^/\s]+)/(?P<key>\S+)")


def parse_record(record: str) -> tuple[str, str, str] | None:
    """(department, table, key) of a record ID ``department/table/key``; None if it is not one.

    >>> parse_record("gongan/t_rk_jbxx/RK1")
    ('gongan', 't_rk_jbxx', 'RK1')
    """
    m = _RECORD.fullmatch(record.strip())
    return None if m is None else (m["dept"], m["table"], m["key"])


def mask_record(record: str) -> str:
    """A record ID with its key masked as :func:`mask_key` masks it (text that is no record ID:
    :func:`mask_text`).

    >>> mask_record("gongan/t_rk_jbxx/13812345678")
    'gongan/t_rk_jbxx/138****5678'
    """
    parts = parse_record(record)
    if parts is None:
        return mask_text(record)
    dept, table, key = parts
    return f"{dept}/{table}/{mask_key(key)}"


def release_record(record: str) -> str:
    """A record ID with its key as a de-identified release shows it (:func:`release_key`).

    >>> release_record("gongan/t_rk_jbxx/13812345678")
    'gongan/t_rk_jbxx/****'
    """
    parts = parse_record(record)
    if parts is None:
        return mask_text(record)
    dept, table, key = parts
    return f"{dept}/{table}/{release_key(key)}"


def replace_records(text: str, how: Callable[[str], str]) -> str:
    """``text`` with every record ID in it replaced by ``how(record)``."""
    return _RECORD.sub(lambda m: how(m.group(0)), text)


def records_in(text: str) -> list[str]:
    """The record IDs (``department/table/key``) that ``text`` names."""
    return [m.group(0) for m in _RECORD.finditer(text)]


def find_clear(
    text: str,
    *,
    known: Iterable[str] = (),
    public: Iterable[str] = (),
    kinds: Iterable[str] = IDENTIFIER_KINDS,
) -> list[str]:
    """Personal data in clear in ``text``: valid ID numbers, mobile and landline numbers, bank
    card numbers (Luhn), e-mail addresses and street addresses below district level (``kinds``
    chooses: by default ID and mobile numbers only, as enterprise views show registered
    addresses and the catalog official contacts; reports pass :data:`ALL_KINDS`), and any of
    the ``known`` personal values (names, addresses) the text was built
    from. Matches inside one of the ``public`` values (enterprise addresses, the sender of an
    e-mail) do not count."""
    wanted = set(kinds)
    allowed = [p for p in public if p]
    found: list[str] = []

    def add(match: str, where: str) -> None:
        if not any(match in p and where.find(p) >= 0 for p in allowed):
            found.append(match)

    for esc, piece in _segments(text):
        if esc:
            continue
        if "id" in wanted:
            found += [m.group(0) for m in _ID.finditer(piece) if id_is_valid(m.group(0).upper())]
        if "mobile" in wanted:
            found += [m.group(0) for m in _MOBILE.finditer(piece)]
        if "landline" in wanted:
            found += [m.group(0) for m in _LANDLINE.finditer(piece)]
        if "card" in wanted:
            found += [m.group(0) for m in _CARD.finditer(piece) if _luhn(m.group(0))]
        if "email" in wanted:
            for m in _EMAIL.finditer(piece):
                add(m.group(0), piece)
        if "street" in wanted:
            for m in _STREET.finditer(piece):
                add(m.group(0), piece)
    for value in {v.strip() for v in known if v and len(v.strip()) >= 2}:
        if value in text and not any(value in p for p in allowed):
            found.append(value)
    return found


_CANDIDATE = re.compile(r"\d{15}|1[3-9]\d[- ]?\d{4}[- ]?\d{4}|0\d{2,3}[- ]?\d{3,4}[- ]?\d{4}")
SCRUB_KINDS: frozenset[str] = frozenset({"id", "mobile", "landline", "card"})
"""What the last gate of analyst output looks for: not e-mails or street addresses, which the
catalog (contacts) and the enterprise views (registered addresses) show on purpose."""


def scrub(value: object) -> tuple[object, bool]:
    """``value`` with any valid ID number, mobile or landline number or bank card in it masked,
    and whether it was: the last line of defence on what an analyst is shown.

    >>> scrub("联系 13812345678"), scrub(42)
    (('联系 138****5678', True), (42, False))
    """
    if (
        not isinstance(value, str)
        or not _CANDIDATE.search(value)
        or not find_clear(value, kinds=SCRUB_KINDS)
    ):
        return value, False
    return mask_text(value), True


# Driver messages that quote the offending source value: the value is personal data of unknown
# shape (a badly encoded name, an ID glued to stray bytes), so the quote goes whole.
_QUOTED_VALUE = re.compile(
    r"(?P<lead>with text |Incorrect \w+ value: |invalid input syntax for (?:type )?[\w ]+: |"
    r"invalid input value for enum [\w.]+: |value too long for type [\w ()]+: |"
    r"Data truncated for column '[^']*' at row \d+: |for key '[^']*': |Duplicate entry )"
    r"(?P<q>['\"])(?P<value>.*?)(?P=q)"
)
_KEY_DETAIL = re.compile(r"(Key \([^)]*\)=)\([^)]*\)")
VALUE_HIDDEN = "<值已隐去>"


def redact_message(text: str) -> str:
    """An error message from a database driver as run records, logs and e-mails may keep it:
    the source value it quotes is removed, and what else looks personal is masked.

    >>> redact_message("Could not decode to UTF-8 column 'xm' with text '��张三13812345678'")
    "Could not decode to UTF-8 column 'xm' with text '<值已隐去>'"
    """
    text = _QUOTED_VALUE.sub(lambda m: f"{m['lead']}{m['q']}{VALUE_HIDDEN}{m['q']}", text)
    text = _KEY_DETAIL.sub(lambda m: f"{m.group(1)}({VALUE_HIDDEN})", text)
    return mask_text(text)
