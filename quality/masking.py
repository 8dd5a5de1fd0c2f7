"""Masking of personal data (GB/T 35273 style) for reports, e-mails and analyst output.

Identifiers keep enough to recognise a row among one's own data, never enough to be one:

>>> mask_id("11010519491231002X")
'110105********002X'
>>> mask_phone("13812345678")
'138****5678'
>>> mask_name("张三丰")
'张**'
>>> mask_text("身份证 11010519491231002X，电话 13812345678")
'身份证 110105********002X，电话 138****5678'

:func:`find_clear` is the scanner tests and the report builder use to prove that no valid
18-character ID number or 11-digit mobile number is left in clear.
"""

from __future__ import annotations

import re

from etl.identifiers import id_is_valid

# An 18-character ID or an 11-digit mobile, not glued to more digits on either side.
_ID = re.compile(r"(?<![0-9A-Za-z])(\d{6})(\d{8})(\d{3}[\dXx])(?![0-9A-Za-z])")
_ID15 = re.compile(r"(?<!\d)(\d{6})(\d{6})(\d{3})(?!\d)")
_MOBILE = re.compile(r"(?<!\d)(?:\+?86[- ]?)?(1[3-9]\d)[- ]?(\d{4})[- ]?(\d{4})(?!\d)")


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


def mask_text(text: str) -> str:
    """``text`` with every 18/15-digit ID number and every mobile number in it masked."""
    text = _ID.sub(lambda m: m.group(1) + "*" * 8 + m.group(3)[-4:], text)
    text = _MOBILE.sub(lambda m: m.group(1) + "****" + m.group(3), text)
    return _ID15.sub(lambda m: m.group(1) + "*" * 5 + m.group(2)[-1] + m.group(3), text)


def mask_key(key: str) -> str:
    """A source key as it may appear in a report: masked where it is (or holds) an ID number
    or a mobile number, as some departments key rows by them; other keys as they are."""
    return mask_text(key)


def find_clear(text: str) -> list[str]:
    """Valid 18-character ID numbers and 11-digit mobile numbers found in clear in ``text``."""
    found = [m.group(0) for m in _ID.finditer(text) if id_is_valid(m.group(0).upper())]
    found += [m.group(0) for m in _MOBILE.finditer(text)]
    return found
