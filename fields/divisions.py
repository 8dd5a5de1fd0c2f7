"""GB/T 2260 administrative divisions, read from the table python-stdnum ships (``cn/loc.dat``).

stdnum keeps the code history (``[1983-1994]郊区,[1995-]晋安区``), which is what an ID number's
division code needs: a code is judged against the year it was issued, not today's map.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

_SPAN = re.compile(r"^\[(\d*)-(\d*)\](.+)$")
# Names in the table that stand for a grouping, not a place
_PLACEHOLDERS = {
    "市辖区",
    "县",
    "省直辖行政单位",
    "省直辖县级行政单位",
    "自治区直辖县级行政单位",
    "省直辖县级行政区划",
    "自治区直辖县级行政区划",
}


@dataclass(frozen=True, slots=True)
class Division:
    """One name a 6-digit code carried over a span of years (``None`` = open-ended)."""

    code: str
    name: str
    province: str
    prefecture: str | None
    start: int | None
    end: int | None

    @property
    def level(self) -> str:
        """``province``, ``prefecture`` or ``county``."""
        if self.code.endswith("0000"):
            return "province"
        if self.code.endswith("00"):
            return "prefecture"
        return "county"

    def valid_in(self, year: int) -> bool:
        """Whether the code carried this name in ``year``."""
        return (self.start is None or year >= self.start) and (self.end is None or year <= self.end)


def _spans(raw: str) -> list[tuple[str, int | None, int | None]]:
    out: list[tuple[str, int | None, int | None]] = []
    for part in raw.split(","):
        m = _SPAN.match(part)
        if m:
            start, end, name = m.groups()
            out.append((name, int(start) if start else None, int(end) if end else None))
        else:
            out.append((part, None, None))
    return out


@functools.cache
def all_divisions() -> tuple[Division, ...]:
    """Every (code, name, span) in the table, in file order."""
    text = resources.files("stdnum").joinpath("cn/loc.dat").read_text(encoding="utf-8")
    out: list[Division] = []
    province = ""
    prefectures: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.strip().partition(" ")
        name = value.split("=", 1)[1].strip('"')
        if not line.startswith(" "):
            province_code, province = key, name
            out.append(Division(key + "0000", province, province, None, None, None))
            continue
        code = province_code + key
        for span_name, start, end in _spans(name):
            if code.endswith("0000"):
                continue
            if code.endswith("00"):
                prefectures[code[:4]] = span_name
                out.append(Division(code, span_name, province, span_name, start, end))
            else:
                pref = prefectures.get(code[:4])
                if pref is None or pref in _PLACEHOLDERS:
                    # municipalities (北京市…) list 市辖区 where a prefecture would stand
                    pref = province if province.endswith("市") else None
                out.append(Division(code, span_name, province, pref, start, end))
    return tuple(out)


@functools.cache
def by_code() -> dict[str, tuple[Division, ...]]:
    """Code → the names it has carried."""
    table: dict[str, list[Division]] = {}
    for d in all_divisions():
        table.setdefault(d.code, []).append(d)
    return {k: tuple(v) for k, v in table.items()}


def lookup(code: str, year: int | None = None) -> Division | None:
    """The division a code named in ``year`` (or its latest name when ``year`` is None).

    >>> lookup("350111", 1990).name
    '郊区'
    >>> lookup("350111").name
    '晋安区'
    """
    names = by_code().get(code, ())
    if year is not None:
        names = tuple(d for d in names if d.valid_in(year))
    return names[-1] if names else None


def current_counties(prefix: str) -> list[Division]:
    """County-level divisions under a code prefix that still exist (no end year)."""
    return [
        d
        for d in all_divisions()
        if d.code.startswith(prefix)
        and d.level == "county"
        and d.end is None
        and d.name not in _PLACEHOLDERS
    ]
