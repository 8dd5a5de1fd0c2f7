"""Comparison features for record linkage: one small integer level per feature and pair.

Every feature follows one convention: level ``-1`` = at least one side missing (no evidence),
``0`` = disagree, ``1..k`` = increasing agreement. ``levels`` (English) and ``levels_zh`` name
each level, index = level; :func:`level_label` also names ``-1``.

The features are recordlinkage ``BaseCompareFeature`` subclasses, so
``recordlinkage.Compare(features_for("person")).compute(pairs, df)`` works, but :func:`compare`
is the fast path: each feature first encodes every record once (:meth:`LevelFeature.prepare`:
factorized codes, parsed dates, phone sets) and then compares by position with numpy; string
similarity runs in rapidfuzz's C++ (``process.cpdist``) only on the pairs that still need it.
recordlinkage's own string comparisons call jellyfish once per pair and are far slower.

>>> import pandas as pd
>>> df = pd.DataFrame({"sex": ["男", "男", None]}, index=["a", "b", "c"])
>>> pairs = pd.MultiIndex.from_tuples([("a", "b"), ("a", "c")])
>>> compare(df, pairs, [Exact("sex")])["sex"].tolist()
[1, -1]
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pandas as pd
from lunardate import LunarDate
from rapidfuzz.distance import OSA, Hamming, Indel, JaroWinkler
from rapidfuzz.process import cpdist
from recordlinkage.base import BaseCompareFeature

from fields.normalize import name_pinyin

__all__ = [
    "MISSING",
    "SHAPE_SIMILAR_PATH",
    "Address",
    "BirthDate",
    "CodeTypo",
    "DateLevel",
    "EnterpriseAddress",
    "EnterpriseName",
    "Exact",
    "LegalRepName",
    "LevelFeature",
    "OrgCode",
    "PersonName",
    "PersonNames",
    "Phones",
    "compare",
    "describe",
    "features_for",
    "flat",
    "level_label",
    "load_shape_similar",
    "pair_positions",
]

MISSING = -1
SHAPE_SIMILAR_PATH = (
    Path(__file__).resolve().parents[1] / "config" / "matching" / "shape_similar.txt"
)

Codes = npt.NDArray[np.int64]
Positions = npt.NDArray[np.intp]
Levels = npt.NDArray[np.int8]
Prepared = dict[str, Any]


# --- encodings of one column --------------------------------------------------------------


def _strings(values: pd.Series[Any]) -> npt.NDArray[np.object_]:
    """Object array of str, ``None`` where missing or empty."""
    out = values.to_numpy(dtype=object, copy=True)
    bad = pd.isna(values).to_numpy() | (values.astype(object) == "").to_numpy()
    out[bad] = None
    return out


def _codes(values: npt.NDArray[np.object_]) -> Codes:
    """Equal values, equal codes; ``-1`` where missing."""
    codes, _ = pd.factorize(values, use_na_sentinel=True)
    return codes.astype(np.int64)


def _lengths(values: npt.NDArray[np.object_]) -> npt.NDArray[np.int64]:
    return np.fromiter((len(v) if v is not None else -1 for v in values), np.int64, len(values))


def _equal(codes: Codes, left: Positions, right: Positions) -> npt.NDArray[np.bool_]:
    a, b = codes[left], codes[right]
    return (a == b) & (a >= 0)


def _missing(codes: Codes, left: Positions, right: Positions) -> npt.NDArray[np.bool_]:
    return (codes[left] < 0) | (codes[right] < 0)


def _scores(
    scorer: Any,
    strings: npt.NDArray[np.object_],
    left: Positions,
    right: Positions,
    **kwargs: Any,
) -> npt.NDArray[Any]:
    """rapidfuzz ``scorer`` over zipped pairs (no missing values allowed)."""
    if len(left) == 0:
        return np.empty(0)
    return np.asarray(cpdist(strings[left], strings[right], scorer=scorer, **kwargs))


# --- the base class -----------------------------------------------------------------------


class LevelFeature(BaseCompareFeature):
    """A comparison with discrete levels; subclasses set ``columns``, ``levels``, ``levels_zh``
    and implement :meth:`prepare` (encode records once) and :meth:`compare_at`.
    """

    columns: ClassVar[tuple[str, ...]]
    levels: ClassVar[tuple[str, ...]]
    levels_zh: ClassVar[tuple[str, ...]]
    default_label: ClassVar[str]

    def __init__(
        self,
        columns: str | Sequence[str] | None = None,
        *,
        right_columns: str | Sequence[str] | None = None,
        label: str | None = None,
    ) -> None:
        left = self._as_columns(columns) if columns is not None else self.columns
        right = self._as_columns(right_columns) if right_columns is not None else left
        if len(left) != len(self.columns) or len(right) != len(self.columns):
            raise ValueError(
                f"{type(self).__name__} compares {len(self.columns)} column(s): {self.columns}"
            )
        name = label or (self.default_label if columns is None else left[0])
        super().__init__(list(left), list(right), label=name)

    @staticmethod
    def _as_columns(columns: str | Sequence[str]) -> tuple[str, ...]:
        return (columns,) if isinstance(columns, str) else tuple(columns)

    @property
    def max_level(self) -> int:
        """The highest (most agreeing) level."""
        return len(self.levels) - 1

    def prepare(self, *columns: pd.Series[Any]) -> Prepared:
        """Encode each record once (one entry per input row, positionally)."""
        raise NotImplementedError

    def compare_at(self, data: Prepared, left: Positions, right: Positions) -> Levels:
        """Levels of the pairs of records at positions ``left[i]``, ``right[i]`` of ``data``."""
        raise NotImplementedError

    def _compute_vectorized(self, *args: pd.Series[Any]) -> Levels:
        # recordlinkage passes one series per left label, then one per right label, aligned
        # by pair: stack both sides, encode once, compare row i with row n + i
        k = len(args) // 2
        n = len(args[0])
        stacked = [
            pd.concat([args[i], args[k + i]], ignore_index=True).rename(self.labels_left[i])
            for i in range(k)
        ]
        positions = np.arange(n, dtype=np.intp)
        return self.compare_at(self.prepare(*stacked), positions, positions + n)


def _levels(n: int) -> Levels:
    return np.zeros(n, dtype=np.int8)


# --- simple features ----------------------------------------------------------------------


class Exact(LevelFeature):
    """1 equal, 0 different (sex, reg_no, legal_rep_id, …)."""

    columns = ("value",)
    levels = ("different", "equal")
    levels_zh = ("不同", "相同")
    default_label = "value"

    def __init__(self, column: str, *, right_column: str | None = None, label: str | None = None):
        super().__init__(column, right_columns=right_column, label=label)

    def prepare(self, *columns: pd.Series[Any]) -> Prepared:
        return {"code": _codes(_strings(columns[0]))}

    def compare_at(self, data: Prepared, left: Positions, right: Positions) -> Levels:
        code = data["code"]
        out = _equal(code, left, right).astype(np.int8)
        out[_missing(code, left, right)] = MISSING
        return out


class CodeTypo(LevelFeature):
    """Identifier: 2 exact; 1 one position different or two adjacent characters swapped; 0 else.

    Two valid GB 11643 numbers never differ in exactly one position (the check digit would
    differ too), so twins — same birth date, different sequence and check digits — are level 0.
    """

    columns = ("value",)
    levels = ("different", "one_typo", "exact")
    levels_zh = ("不同", "一位之差", "相同")
    default_label = "value"

    def __init__(self, column: str, *, right_column: str | None = None, label: str | None = None):
        super().__init__(column, right_columns=right_column, label=label)

    def prepare(self, *columns: pd.Series[Any]) -> Prepared:
        s = _strings(columns[0])
        return {"s": s, "code": _codes(s), "len": _lengths(s)}

    def compare_at(self, data: Prepared, left: Positions, right: Positions) -> Levels:
        code, length = data["code"], data["len"]
        out = _levels(len(left))
        missing = _missing(code, left, right)
        exact = _equal(code, left, right)
        out[exact] = 2
        # OSA distance 1 between equal-length strings = one substitution or one adjacent swap
        rest = np.flatnonzero(~missing & ~exact & (length[left] == length[right]))
        near = _scores(OSA.distance, data["s"], left[rest], right[rest], score_cutoff=2) == 1
        out[rest[near]] = 1
        out[missing] = MISSING
        return out


class DateLevel(LevelFeature):
    """Dates: 3 exact; 2 day and month swapped; 1 same year and month, or same month and day
    with the years one digit apart (1985/1986, 1985/1995); 0 else."""

    columns = ("date",)
    levels: ClassVar[tuple[str, ...]] = ("different", "partial", "day_month_swapped", "exact")
    levels_zh: ClassVar[tuple[str, ...]] = ("不同", "部分相同", "日月颠倒", "相同")
    default_label = "date"

    def __init__(self, column: str, *, right_column: str | None = None, label: str | None = None):
        super().__init__(column, right_columns=right_column, label=label)

    def prepare(self, *columns: pd.Series[Any]) -> Prepared:
        dates = pd.to_datetime(columns[0], errors="coerce")
        ok = dates.notna().to_numpy()
        parts = {}
        for part in ("year", "month", "day"):
            values = getattr(dates.dt, part).to_numpy(dtype=float, na_value=-1)
            parts[part] = np.where(ok, values, -1).astype(np.int64)
        return parts

    def compare_at(self, data: Prepared, left: Positions, right: Positions) -> Levels:
        y1, y2 = data["year"][left], data["year"][right]
        m1, m2 = data["month"][left], data["month"][right]
        d1, d2 = data["day"][left], data["day"][right]
        digits_apart = np.zeros(len(left), dtype=np.int64)
        for power in (1, 10, 100, 1000):
            digits_apart += (y1 // power % 10) != (y2 // power % 10)
        out = _levels(len(left))
        out[((y1 == y2) & (m1 == m2)) | ((m1 == m2) & (d1 == d2) & (digits_apart == 1))] = 1
        out[(y1 == y2) & (m1 == d2) & (d1 == m2) & (m1 != d1)] = 2
        out[(y1 == y2) & (m1 == m2) & (d1 == d2)] = 3
        out[(y1 < 0) | (y2 < 0)] = MISSING
        return out


@functools.lru_cache(maxsize=65536)
def _from_lunar(year: int, month: int, day: int) -> tuple[int, ...]:
    """The proleptic ordinals of the solar dates that ``year-month-day`` names if it is a date
    of the lunar calendar written as a solar one (two where that month also has a leap month,
    whose flag the writing lost); none where no lunar date has that name."""
    out = []
    for leap in (False, True):
        # no such lunar day, no such leap month, or out of 1900–2099: no solar date
        with contextlib.suppress(ValueError):
            out.append(LunarDate(year, month, day, leap).to_solar_date().toordinal())
    return tuple(out)


class BirthDate(DateLevel):
    """Birth dates: 4 exact; 3 day and month swapped; 2 one is the other's lunar-calendar date
    written as a solar one (elderly people often know their birthday by the lunar calendar;
    lunardate converts); 1 partial; 0 else. The model learns each level's m and u."""

    levels = ("different", "partial", "lunar_calendar", "day_month_swapped", "exact")
    levels_zh = ("不同", "部分相同", "农历公历之差", "日月颠倒", "相同")

    def prepare(self, *columns: pd.Series[Any]) -> Prepared:
        """Each row's ordinal and lunar readings, worked out once per distinct date: a city
        has a few tens of thousands of birth dates among millions of rows."""
        parts = super().prepare(*columns)
        y, m, d = parts["year"], parts["month"], parts["day"]
        dates, row_date = np.unique(
            np.where(y < 0, -1, y * 10000 + m * 100 + d), return_inverse=True
        )
        ordinal = np.full(len(dates), -1, dtype=np.int64)
        lunar = np.full((len(dates), 2), -2, dtype=np.int64)  # -2 never equals an ordinal
        for i, ymd in enumerate(dates.tolist()):
            if ymd < 0:
                continue
            year, month, day = ymd // 10000, ymd // 100 % 100, ymd % 100
            ordinal[i] = dt.date(year, month, day).toordinal()
            found = _from_lunar(year, month, day)
            lunar[i, : len(found)] = found
        return {**parts, "ordinal": ordinal[row_date], "lunar": lunar[row_date]}

    def compare_at(self, data: Prepared, left: Positions, right: Positions) -> Levels:
        base = super().compare_at(data, left, right)
        out = np.where(base >= 2, base + 1, base).astype(np.int8)
        o, lunar = data["ordinal"], data["lunar"]
        hit = (lunar[left] == o[right][:, None]).any(axis=1) | (
            lunar[right] == o[left][:, None]
        ).any(axis=1)
        out[(base >= 0) & (base < 2) & hit] = 2
        return out


# --- names --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def load_shape_similar(path: Path | str = SHAPE_SIMILAR_PATH) -> frozenset[str]:
    """Confusable character pairs (形近字) from a groups-per-line file; each pair as its two
    characters in code-point order, e.g. ``"季李"``.

    >>> "季李" in load_shape_similar()
    True
    """
    pairs: set[str] = set()
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].split()
        if not text:
            continue
        if any(len(c) != 1 for c in text) or len(text) < 2:
            raise ValueError(f"{path}:{lineno}: expected two or more single characters: {line!r}")
        pairs.update("".join(sorted((a, b))) for a in text for b in text if a < b)
    return frozenset(pairs)


def _one_char_apart(a: str, b: str) -> str | None:
    """The two differing characters (sorted) of equal-length strings differing in one place."""
    for x, y in zip(a, b, strict=True):
        if x != y:
            return x + y if x < y else y + x
    return None


class PersonName(LevelFeature):
    """Person name: 4 exact; 3 same pinyin (homophones: 林海/林海, 张伟/章伟); 2 one character
    different and the two are a listed 形近字 pair (李/季); 1 pinyin Jaro-Winkler ≥ 0.92; 0 else.

    Level 1 uses pinyin similarity, not "any one character different": it catches the -n/-ng,
    n/l and z/zh confusions of names taken down by ear (林/凌, 陈/程), while an arbitrary
    one-character difference in a two-character name (李伟/李强) is usually another person.
    """

    columns: ClassVar[tuple[str, ...]] = ("name", "name_pinyin")
    levels = ("different", "pinyin_similar", "shape_similar", "same_pinyin", "exact")
    levels_zh = ("不同", "拼音相近", "形近字", "同音", "完全相同")
    default_label = "name"
    PINYIN_THRESHOLD: ClassVar[float] = 0.92

    def __init__(
        self,
        columns: Sequence[str] | None = None,
        *,
        right_columns: Sequence[str] | None = None,
        label: str | None = None,
        shape_similar: frozenset[str] | None = None,
    ) -> None:
        super().__init__(columns, right_columns=right_columns, label=label)
        self.shape_similar = load_shape_similar() if shape_similar is None else shape_similar

    def prepare(self, *columns: pd.Series[Any]) -> Prepared:
        name, pinyin = _strings(columns[0]), _strings(columns[1])
        return {
            "name": name,
            "code": _codes(name),
            "len": _lengths(name),
            "pinyin": pinyin,
            "pcode": _codes(pinyin),
        }

    def compare_at(self, data: Prepared, left: Positions, right: Positions) -> Levels:
        code, pcode, length = data["code"], data["pcode"], data["len"]
        out = _levels(len(left))
        missing = _missing(code, left, right)
        exact = _equal(code, left, right)
        same_pinyin = ~exact & _equal(pcode, left, right)
        out[exact] = 4
        out[same_pinyin] = 3
        open_ = ~missing & ~exact & ~same_pinyin
        rest = np.flatnonzero(open_ & (length[left] == length[right]))
        one = rest[_scores(Hamming.distance, data["name"], left[rest], right[rest]) == 1]
        names = data["name"]
        shape = [
            i for i in one if _one_char_apart(names[left[i]], names[right[i]]) in self.shape_similar
        ]
        out[shape] = 2
        open_[shape] = False
        rest = np.flatnonzero(open_ & (pcode[left] >= 0) & (pcode[right] >= 0))
        jw = _scores(JaroWinkler.normalized_similarity, data["pinyin"], left[rest], right[rest])
        out[rest[jw >= self.PINYIN_THRESHOLD]] = 1
        out[missing] = MISSING
        return out


class PersonNames(PersonName):
    """:class:`PersonName` against every name a person went by: the levels of the two names,
    and of each name against the other row's former name (曾用名, ``former_name``), the
    highest of them. A renamed person's older rows, under the former name, agree with the
    registry's row, which holds both."""

    columns = ("name", "name_pinyin", "former_name")

    def prepare(self, *columns: pd.Series[Any]) -> Prepared:
        name, pinyin, former = columns
        former_pinyin = former.map(lambda v: name_pinyin(v) if isinstance(v, str) and v else None)
        data = super().prepare(
            pd.concat([name, former], ignore_index=True),
            pd.concat([pinyin, former_pinyin], ignore_index=True),
        )
        return {**data, "n": len(name), "has_former": pd.notna(former).to_numpy()}

    def compare_at(self, data: Prepared, left: Positions, right: Positions) -> Levels:
        n, has = data["n"], data["has_former"]
        out = super().compare_at(data, left, right)
        for a, b, former in ((left + n, right, has[left]), (left, right + n, has[right])):
            rows = np.flatnonzero(former & (out < self.max_level))
            if len(rows):
                alt = super().compare_at(data, a[rows], b[rows])
                out[rows] = np.maximum(out[rows], alt)
        return out


class LegalRepName(PersonName):
    """The name of an enterprise's legal representative (法定代表人, or an individual
    business's operator, 经营者), with :class:`PersonName`'s levels: the registry and tax hold
    it in full, often where they share no identifier."""

    columns = ("legal_rep_name",)
    default_label = "legal_rep_name"

    def prepare(self, *columns: pd.Series[Any]) -> Prepared:
        name = pd.Series(_strings(columns[0]), dtype=object)
        codes, uniques = pd.factorize(name.to_numpy(dtype=object), use_na_sentinel=True)
        pinyin = np.array([name_pinyin(u) or None for u in uniques] + [None], dtype=object)
        return super().prepare(name, pd.Series(pinyin[codes], dtype=object))


class EnterpriseName(LevelFeature):
    """Enterprise name: 5 exact; 4 same ``name_key`` (legal form, brackets and city prefix
    normalized away); 3 ``name_key`` similarity ≥ 0.9; 2 ≥ 0.8; 1 one name is the operator's
    (a 个体工商户 filed under the name of its 经营者, who is a legal representative of the pair)
    and the other name holds it (林秀英 / 福州市鼓楼区林秀英小吃店); 0 else. Similarity is
    rapidfuzz Indel (``fuzz.ratio``/100). A branch mismatch — one a 分公司 and the other not, or
    different branches — is always 0: a head office never matches its branch.
    """

    columns = ("name", "name_key", "branch", "legal_rep_name")
    levels = ("different", "operator_name", "similar_weak", "similar", "same_key", "exact")
    levels_zh = ("不同", "经营者姓名", "较相似", "相似", "规范名相同", "完全相同")
    default_label = "name"
    THRESHOLDS: ClassVar[tuple[float, float]] = (0.8, 0.9)

    def prepare(self, *columns: pd.Series[Any]) -> Prepared:
        name, key, branch, rep = (_strings(c) for c in columns)
        key = np.where(pd.isna(key), name, key)
        return {
            "name": name,
            "rep": rep,
            "code": _codes(name),
            "key": key,
            "kcode": _codes(key),
            "bcode": _codes(branch),
        }

    def compare_at(self, data: Prepared, left: Positions, right: Positions) -> Levels:
        code, kcode, bcode = data["code"], data["kcode"], data["bcode"]
        out = _levels(len(left))
        missing = _missing(code, left, right)
        same_branch = bcode[left] == bcode[right]  # both -1 = both head offices
        exact = same_branch & _equal(code, left, right)
        same_key = same_branch & ~exact & _equal(kcode, left, right)
        out[exact] = 5
        out[same_key] = 4
        rest = np.flatnonzero(~missing & same_branch & ~exact & ~same_key)
        sim = _scores(Indel.normalized_similarity, data["key"], left[rest], right[rest])
        weak, strong = self.THRESHOLDS
        out[rest[sim >= weak]] = 2
        out[rest[sim >= strong]] = 3
        open_ = rest[sim < weak]
        out[open_[self._operator(data, left[open_], right[open_])]] = 1
        out[missing] = MISSING
        return out

    @staticmethod
    def _operator(data: Prepared, left: Positions, right: Positions) -> npt.NDArray[np.bool_]:
        """One row's name is a legal representative's of the pair, and the other's holds it."""
        names, reps = data["name"], data["rep"]
        out = np.zeros(len(left), dtype=bool)
        for i, (a, b) in enumerate(zip(left.tolist(), right.tolist(), strict=True)):
            pair_reps = {reps[a], reps[b]} - {None}
            out[i] = any(
                x in pair_reps and x != y and x in y
                for x, y in ((names[a], names[b]), (names[b], names[a]))
            )
        return out


# --- phones and addresses -----------------------------------------------------------------


class _Sets:
    """One set of integer codes per record, in CSR form."""

    def __init__(self, owner: npt.NDArray[np.int64], values: Codes, n: int) -> None:
        order = np.lexsort((values, owner))
        self.values = values[order]
        self.offsets = np.searchsorted(owner[order], np.arange(n + 1)).astype(np.int64)

    def count(self, rows: Positions) -> npt.NDArray[np.int64]:
        return self.offsets[rows + 1] - self.offsets[rows]

    def overlap(self, left: Positions, right: Positions) -> npt.NDArray[np.bool_]:
        """Pairs whose two sets share at least one code.

        Element i of the left set against element j of the right, over the pairs whose sets
        are that large: sets hold one or two phone numbers, so the first round does most work.
        """
        out = np.zeros(len(left), dtype=bool)
        n_left, n_right = self.count(left), self.count(right)
        for i in range(int(n_left.max(initial=0))):
            rows = np.flatnonzero(n_left > i)
            a = self.values[self.offsets[left[rows]] + i]
            for j in range(int(n_right[rows].max(initial=0))):
                has = n_right[rows] > j
                sub, a_sub = rows[has], a[has]
                out[sub] |= a_sub == self.values[self.offsets[right[sub]] + j]
        return out


def _phone_weak_key(number: str) -> str | None:
    """Mobile: its last 8 digits; landline: the local number without area code or extension."""
    if len(number) == 11 and number.isdigit() and number[0] == "1":
        return "m" + number[3:]
    if number.startswith("0") and "-" in number:
        return "l" + number.split("-")[1]
    return None


class Phones(LevelFeature):
    """Phone lists (``phones_all``): 2 a number in common; 1 a mobile with the same last 8
    digits or a landline with the same local number (area code differs or missing); 0 else."""

    columns = ("phones_all",)
    levels = ("different", "similar_number", "shared_number")
    levels_zh = ("不同", "号码相近", "有相同号码")
    default_label = "phone"

    def prepare(self, *columns: pd.Series[Any]) -> Prepared:
        values = columns[0].reset_index(drop=True)
        n = len(values)
        listed = np.fromiter(
            (isinstance(v, list | tuple | np.ndarray) for v in values), dtype=bool, count=n
        )
        flat = values[listed].explode().dropna().astype(str)
        owner = flat.index.to_numpy(dtype=np.int64)
        full, numbers = pd.factorize(flat.to_numpy(dtype=object))
        # the weak key once per distinct number: most numbers are on several rows
        weak = np.asarray([_phone_weak_key(v) for v in numbers], dtype=object)[full]
        has_weak = pd.notna(weak)
        return {
            "full": _Sets(owner, full.astype(np.int64), n),
            "weak": _Sets(owner[has_weak], _codes(weak[has_weak]), n),
        }

    def compare_at(self, data: Prepared, left: Positions, right: Positions) -> Levels:
        full: _Sets = data["full"]
        weak: _Sets = data["weak"]
        out = _levels(len(left))
        out[weak.overlap(left, right)] = 1
        out[full.overlap(left, right)] = 2
        out[(full.count(left) == 0) | (full.count(right) == 0)] = MISSING
        return out


_FLAT = re.compile(
    r"(?P<estate>[\u4e00-\u53f6\u53f8-\u9fff]{2,}(?:\d+期)?)"  # CJK but 号, the house number's
    r"(?P<building>\d+)(?:号楼|幢|栋|座|号|#|-)"
    r"(?:(?P<unit>\d+)(?:单元|-))?"
    r"(?P<room>\d+)(?:室|号|房)?$"
)
"""A flat at the end of an address detail: the estate (小区), building, unit and room, written
out (``融侨锦江28座1606室``, ``金辉花园3号楼2单元502室``) or as clerks write it down
(``融侨锦江28-1606``, ``金辉花园3-2-502``); what comes before the estate is the street."""


def flat(detail: str | None) -> tuple[str, str] | None:
    """The flat an address detail names, as (street before it, ``estate|building|unit|room``);
    None where the detail names no flat (a house number alone).

    >>> flat("首占路21号融侨锦江28座2401室")
    ('首占路21号', '融侨锦江|28||2401')
    >>> flat("融侨锦江28-2401"), flat("金辉花园3号楼2单元502室"), flat("杨桥中路10号")
    (('', '融侨锦江|28||2401'), ('', '金辉花园|3|2|502'), None)
    """
    if not detail:
        return None
    m = _FLAT.search(detail.replace(" ", "").replace("—", "-"))
    if m is None:
        return None
    key = "|".join((m["estate"], m["building"], m["unit"] or "", m["room"]))
    return m.string[: m.start()], key


class Address(LevelFeature):
    """Address: 3 same division code (district) and either ``address_detail`` similarity ≥ 0.9
    (rapidfuzz Indel) or the same flat (:func:`flat`: estate, building, unit and room, where
    the street, if both name one, is the same too); 2 same district; 1 same city (first 4
    digits); 0 else; missing when either division code is. A city-level code (``350100``)
    agrees at most on the city.

    The same flat is the same address however it is written: hospitals and social assistance
    write ``融侨锦江28-1606`` where the registry has ``首占路21号融侨锦江28座1606室``, and the two
    are far apart as strings (similarity 0.74). For a pair without ID number or phone, a
    shared flat is what tells a person's own rows from a namesake in the same district."""

    columns = ("division_code", "address_detail")
    levels: ClassVar[tuple[str, ...]] = ("different", "same_city", "same_district", "same_address")
    levels_zh: ClassVar[tuple[str, ...]] = ("不同", "同城市", "同区县", "地址相同")
    default_label = "address"
    DETAIL_THRESHOLD: ClassVar[float] = 0.9

    def prepare(self, *columns: pd.Series[Any]) -> Prepared:
        division, detail = _strings(columns[0]), _strings(columns[1])
        city = np.array(
            [d[:4] if d is not None and len(d) >= 4 and d[2:4] != "00" else None for d in division],
            dtype=object,
        )
        district = np.array(
            [d if d is not None and len(d) == 6 and d[4:6] != "00" else None for d in division],
            dtype=object,
        )
        # each distinct detail parsed once: a household's rows repeat it
        detail_code, details = pd.factorize(detail, use_na_sentinel=True)
        flats = [flat(d) for d in details]
        street = np.array([f[0] if f and f[0] else None for f in flats] + [None], dtype=object)
        room = np.array([f[1] if f else None for f in flats] + [None], dtype=object)
        return {
            "dcode": _codes(division),
            "district": _codes(district),
            "city": _codes(city),
            "detail": detail,
            "detail_code": detail_code.astype(np.int64),
            "flat": _codes(room[detail_code]),
            "street": _codes(street[detail_code]),
        }

    def compare_at(self, data: Prepared, left: Positions, right: Positions) -> Levels:
        dcode, detail_code = data["dcode"], data["detail_code"]
        out = _levels(len(left))
        out[_equal(data["city"], left, right)] = 1
        same_district = _equal(data["district"], left, right)
        out[same_district] = 2
        both = same_district & (detail_code[left] >= 0) & (detail_code[right] >= 0)
        same = both & (detail_code[left] == detail_code[right])
        street = data["street"]
        streets_differ = (
            (street[left] >= 0) & (street[right] >= 0) & (street[left] != street[right])
        )
        same |= both & _equal(data["flat"], left, right) & ~streets_differ
        rest = np.flatnonzero(both & ~same)
        sim = _scores(Indel.normalized_similarity, data["detail"], left[rest], right[rest])
        out[same] = 3
        out[rest[sim >= self.DETAIL_THRESHOLD]] = 3
        out[_missing(dcode, left, right)] = MISSING
        return out


class EnterpriseAddress(Address):
    """Enterprise address: 2 same district and detail; 1 same district; 0 another city;
    missing when either division code is, or when the two lie in different districts of one
    city."""

    levels = ("different", "same_district", "same_address")
    levels_zh = ("不同城市", "同区县", "地址相同")

    def compare_at(self, data: Prepared, left: Positions, right: Positions) -> Levels:
        base = super().compare_at(data, left, right)
        # a department may hold the operating premises (经营场所, as tax does) where another holds
        # the domicile (住所): another district of the same city is no evidence either way
        return np.array([0, MISSING, 1, 2, MISSING], dtype=np.int8)[base]  # [-1]: missing


class OrgCode(LevelFeature):
    """Organization code: 1 equal, 0 different. A side without its own ``org_code`` uses the
    one inside its credit code (characters 9-17), so an old record holding only the org code
    meets a new one holding only the credit code; when neither side has its own org code the
    feature is missing (the ``uscc`` feature already says it)."""

    columns = ("org_code", "uscc")
    levels = ("different", "equal")
    levels_zh = ("不同", "相同")
    default_label = "org_code"

    def prepare(self, *columns: pd.Series[Any]) -> Prepared:
        own, uscc = _strings(columns[0]), _strings(columns[1])
        inner = np.array(
            [u[8:17] if u is not None and len(u) == 18 else None for u in uscc], dtype=object
        )
        return {"own": _codes(own) >= 0, "code": _codes(np.where(pd.isna(own), inner, own))}

    def compare_at(self, data: Prepared, left: Positions, right: Positions) -> Levels:
        code, own = data["code"], data["own"]
        out = _equal(code, left, right).astype(np.int8)
        out[_missing(code, left, right) | ~(own[left] | own[right])] = MISSING
        return out


# --- entity feature sets ------------------------------------------------------------------


def features_for(entity: str) -> list[LevelFeature]:
    """The default features of ``person`` or ``enterprise`` (fresh instances).

    >>> [f.label for f in features_for("person")]
    ['name', 'id_number', 'birth_date', 'sex', 'phone', 'address']
    """
    if entity == "person":
        return [
            PersonNames(),
            CodeTypo("id_number"),
            BirthDate("birth_date"),
            Exact("sex"),
            Phones(),
            Address(),
        ]
    if entity == "enterprise":
        return [
            EnterpriseName(),
            CodeTypo("uscc"),
            Exact("reg_no"),
            OrgCode(),
            Exact("legal_rep_id"),
            LegalRepName(),
            EnterpriseAddress(),
            DateLevel("established_date"),
        ]
    raise ValueError(f"unknown entity {entity!r}; use 'person' or 'enterprise'")


def pair_positions(index: pd.Index, pairs: pd.MultiIndex) -> tuple[Positions, Positions]:
    """The positions in ``index`` of each pair's two record IDs (-1 where absent); each
    distinct ID is looked up once, not once per pair.

    >>> import pandas as pd
    >>> pair_positions(pd.Index(["a", "b", "c"]), pd.MultiIndex.from_tuples([("a", "c")]))
    (array([0]), array([2]))
    """
    out = []
    for level in (0, 1):
        found = index.get_indexer(pairs.levels[level])
        codes = pairs.codes[level]
        at = found[codes] if len(found) else np.full(len(codes), -1, dtype=np.intp)
        at[codes < 0] = -1
        out.append(at.astype(np.intp, copy=False))
    return out[0], out[1]


def compare(
    df: pd.DataFrame,
    pairs: pd.MultiIndex,
    entity: str | Sequence[LevelFeature],
) -> pd.DataFrame:
    """Comparison levels of every pair: one ``int8`` column per feature, indexed by ``pairs``.

    ``entity`` is ``"person"``, ``"enterprise"`` or a list of features. Records are encoded
    once (only those in ``pairs``), then compared by position.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"birth_date": ["1985-03-04", "1985-04-03", None]}, index=list("abc"))
    >>> pairs = pd.MultiIndex.from_tuples([("a", "b"), ("a", "c")])
    >>> compare(df, pairs, [DateLevel("birth_date")])["birth_date"].tolist()
    [2, -1]
    """
    features = features_for(entity) if isinstance(entity, str) else list(entity)
    if pairs.nlevels != 2:
        raise ValueError("pairs must be a two-level MultiIndex of record ids")
    left, right = pair_positions(df.index, pairs)
    if (left < 0).any() or (right < 0).any():
        raise KeyError("pairs refer to record ids that are not in the frame")
    used, inverse = np.unique(np.concatenate([left, right]), return_inverse=True)
    inverse = inverse.astype(np.intp)
    lpos, rpos = inverse[: len(left)], inverse[len(left) :]
    # the records in pairs, in the columns the features read only: a copy of every column
    # was as large as the records themselves on a full night
    wanted = dict.fromkeys(c for f in features for c in f.labels_left if c in df.columns)
    records = df.iloc[used, df.columns.get_indexer(list(wanted))]
    columns: dict[str, Levels] = {}
    for feature in features:
        if feature.labels_left != feature.labels_right:
            raise ValueError(f"{feature!r}: compare() deduplicates one frame; use one column set")
        missing = [c for c in feature.labels_left if c not in records.columns]
        if missing:
            raise KeyError(f"{feature!r} needs column(s) {missing}")
        data = feature.prepare(*(records[c].reset_index(drop=True) for c in feature.labels_left))
        columns[feature.label] = feature.compare_at(data, lpos, rpos)
    return pd.DataFrame(columns, index=pairs)


# --- labels -------------------------------------------------------------------------------


def level_label(feature: LevelFeature, level: int, lang: str = "en") -> str:
    """The name of one level (``-1`` included).

    >>> level_label(PersonName(), 3), level_label(PersonName(), 3, "zh")
    ('same_pinyin', '同音')
    >>> level_label(Exact("sex"), -1)
    'missing'
    """
    if level == MISSING:
        return "missing" if lang == "en" else "缺失"
    names = feature.levels if lang == "en" else feature.levels_zh
    if not 0 <= level < len(names):
        raise ValueError(f"{feature!r} has no level {level}")
    return names[level]


def describe(
    row: Mapping[str, int], entity: str | Sequence[LevelFeature], lang: str = "en"
) -> list[str]:
    """``feature: level name`` for one pair's row of :func:`compare`.

    >>> describe({"name": 3, "sex": -1}, "person")
    ['name: same_pinyin', 'sex: missing']
    """
    features = features_for(entity) if isinstance(entity, str) else list(entity)
    by_label = {f.label: f for f in features}
    return [
        f"{k}: {level_label(by_label[k], int(v), lang)}" for k, v in row.items() if k in by_label
    ]
