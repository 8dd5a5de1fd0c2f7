"""Chinese identifier algorithms: GB 11643 ID numbers, GB 32100 credit codes, GB 11714
organization codes, the legacy 15-digit business registration numbers and old 15-character tax
registration numbers.

Check characters come from python-stdnum where it computes them; validation is ours because
stdnum is stricter than government data (COMPAT.md): it has no 15-digit IDs, rejects residence
permits and credit codes that start with a letter, and never checks the embedded organization code.

>>> id_check_digit("11010519491231002")
'X'
>>> uscc_is_valid("91350100M000100Y43")
True
"""

from __future__ import annotations

import datetime as dt

from stdnum.cn import ric, uscc
from stdnum.iso7064 import mod_11_10

USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
_ORG_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def id_check_digit(first17: str) -> str:
    """The GB 11643 check character for the first 17 digits of an ID number."""
    return ric.calc_check_digit(first17 + "0")


def upgrade_id15(id15: str) -> str:
    """Upgrade a 15-digit ID number (born 19xx) to 18 digits.

    >>> upgrade_id15("110105491231002")
    '11010519491231002X'
    """
    if len(id15) != 15 or not id15.isdigit():
        raise ValueError(f"not a 15-digit ID number: {id15!r}")
    first17 = id15[:6] + "19" + id15[6:]
    return first17 + id_check_digit(first17)


def downgrade_id18(id18: str) -> str:
    """The legacy 15-digit form of an 18-digit ID number born in the 1900s."""
    if len(id18) != 18 or id18[6:8] != "19":
        raise ValueError(f"only IDs of people born 1900-1999 had a 15-digit form: {id18!r}")
    return id18[:6] + id18[8:17]


def id_is_valid(number: str) -> bool:
    """Length, digits, check character and a real calendar birth date (not the division code)."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    if number[17] != id_check_digit(number[:17]):
        return False
    try:
        dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    return True


def org_code_check(first8: str) -> str:
    """The GB 11714 organization-code check character for its first 8 characters.

    >>> org_code_check("M000100Y")
    '4'
    """
    total = sum(_ORG_ALPHABET.index(c) * w for c, w in zip(first8, _ORG_WEIGHTS, strict=True))
    check = 11 - total % 11
    return {10: "X", 11: "0"}.get(check, str(check))


def org_code_is_valid(code: str) -> bool:
    """A 9-character organization code (hyphen already removed) with a correct check character."""
    if len(code) != 9 or any(c not in _ORG_ALPHABET for c in code[:8]):
        return False
    return code[8] == org_code_check(code[:8])


def uscc_check_char(first17: str) -> str:
    """The GB 32100 check character for the first 17 characters of a credit code."""
    return uscc.calc_check_digit(first17)


def uscc_is_valid(code: str) -> bool:
    """Alphabet, check character and the embedded organization code's own check."""
    if len(code) != 18 or any(c not in USCC_ALPHABET for c in code):
        return False
    return code[17] == uscc_check_char(code[:17]) and org_code_is_valid(code[8:17])


def make_uscc(registration_dept: str, org_type: str, division: str, org8: str) -> str:
    """Assemble a valid credit code from its parts (used by the sample city).

    >>> make_uscc("9", "1", "350100", "M000100Y")
    '91350100M000100Y43'
    """
    first17 = registration_dept + org_type + division + org8 + org_code_check(org8)
    return first17 + uscc_check_char(first17)


def reg_no_check(first14: str) -> str:
    """The ISO 7064 MOD 11,10 check digit of a 15-digit business registration number."""
    return mod_11_10.calc_check_digit(first14)


def reg_no_is_valid(number: str) -> bool:
    """A 15-digit business registration number (注册号) with a correct check digit."""
    return len(number) == 15 and number.isdigit() and mod_11_10.is_valid(number)


def tax_no_org_code(number: str) -> str | None:
    """The organization code inside an old 15-character tax registration number (税务登记号:
    6-digit division code + 9-character organization code), or None if it is not one.

    >>> tax_no_org_code("350102M000100Y4")
    'M000100Y4'
    """
    if len(number) != 15 or not number[:6].isdigit() or number[0] == "0":
        return None
    return number[6:] if org_code_is_valid(number[6:]) else None
