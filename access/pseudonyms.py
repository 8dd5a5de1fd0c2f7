"""Keyed pseudonyms for extracts that leave the platform.

``govmdm export --pseudonymize`` replaces master IDs, ID numbers and source keys by
HMAC-SHA256 tokens keyed by ``GOVMDM_PSEUDONYM_KEY``: the same value gives the same token in
every table and every extract made with that key, so joins still work.

>>> pseudonym("P0000000001", b"0123456789abcdef")
'36524e6617d5ef64d746463981cfc6b2'
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from access.errors import PseudonymKeyMissing
from access.release import ViewSpec

PSEUDONYM_KEY_ENV = "GOVMDM_PSEUDONYM_KEY"
_MIN_KEY_BYTES = 16
_MIN_KEY_BITS = 64
_ID_ATTRS = ("id_number", "legal_rep_id")
"""Attributes whose conflict values are ID numbers (tokenised like the ID columns)."""


def pseudonym_key() -> bytes:
    """The HMAC key from ``GOVMDM_PSEUDONYM_KEY`` (at least 16 bytes)."""
    raw = os.environ.get(PSEUDONYM_KEY_ENV, "")
    if not raw.strip():
        raise PseudonymKeyMissing(
            f"pseudonyms need a secret key: {PSEUDONYM_KEY_ENV} is not set. Fix: set it to a "
            "random secret of at least 16 characters (e.g. `openssl rand -hex 32`), one per "
            "recipient, kept outside config/ and the extract; the same key gives the same "
            "pseudonyms, so keep it to join later extracts"
        )
    key = raw.encode("utf-8")
    if len(key) < _MIN_KEY_BYTES:
        raise PseudonymKeyMissing(
            f"{PSEUDONYM_KEY_ENV} is too short ({len(key)} bytes): an ID number is guessable, "
            f"only the key protects it. Fix: use at least {_MIN_KEY_BYTES} random characters"
        )
    bits = key_strength(raw)
    if bits < _MIN_KEY_BITS:
        raise PseudonymKeyMissing(
            f"{PSEUDONYM_KEY_ENV} is too predictable (about {bits:.0f} bits; repeated "
            f"characters, runs like abcd or 1234 and repeated blocks count for little): whoever "
            f"guesses it can compute the pseudonym of any ID number. Fix: use a random secret of "
            f"at least {_MIN_KEY_BITS} bits, e.g. `openssl rand -hex 32`"
        )
    return key


def key_strength(key: str) -> float:
    """A cautious estimate of a key's entropy in bits: the Shannon entropy of its characters
    times the characters that neither continue a run (``abcd``, ``1234``, ``aaaa``) nor repeat
    an earlier block of four or more.

    >>> key_strength("a" * 32), round(key_strength("9f86d081884c7d659a2feaa0c55ad015"))
    (0.0, 116)
    """
    if not key:
        return 0.0
    counts = Counter(key)
    per_char = sum(n / len(key) * math.log2(len(key) / n) for n in counts.values())
    fresh = 0
    for i, ch in enumerate(key):
        step = ord(ch) - ord(key[i - 1]) if i else None
        run = i >= 2 and step == ord(key[i - 1]) - ord(key[i - 2]) and abs(step or 0) <= 1
        repeat = i >= 4 and any(
            key[i - n + 1 : i + 1] in key[: i - n + 1] for n in range(4, min(i, 16) + 1)
        )
        fresh += not (run or repeat)
    return per_char * fresh


def pseudonym(value: str | None, key: bytes) -> str | None:
    """A keyed token for ``value``: HMAC-SHA256, first 128 bits in hex.

    >>> pseudonym("P0000000001", b"0123456789abcdef")  # the same in every table and extract
    '36524e6617d5ef64d746463981cfc6b2'
    """
    if value is None:
        return None
    return hmac.new(key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def pseudonymize_rows(
    spec: ViewSpec, rows: Sequence[Mapping[str, Any]], key: bytes
) -> list[dict[str, Any]]:
    """Rows of ``spec``'s table (clear values) with its pseudonym columns replaced by tokens."""
    out = []
    for row in rows:
        new = dict(row)
        for column, kind in spec.pseudonyms.items():
            value = row[column]
            if value is None:
                continue
            if kind == "master_ids":
                new[column] = ",".join(pseudonym(v, key) or "" for v in str(value).split(",") if v)
            elif kind == "record":
                rid = f"{row['department']}/{row['source_table']}/{value}"
                new[column] = pseudonym(rid, key)
            elif kind == "evidence":
                if row.get("kind") == "legal_representative":
                    new[column] = pseudonym(str(value), key)
            elif kind == "conflict":
                if row.get("attribute") in _ID_ATTRS:
                    new[column] = pseudonym(str(value), key)
            else:
                new[column] = pseudonym(str(value), key)
        out.append(new)
    return out
