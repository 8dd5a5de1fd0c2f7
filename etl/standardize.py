"""Standardize raw departmental rows into canonical person and enterprise rows.

Every raw row ends in exactly one place: the department's canonical table for its entity, or its
rejects table with the reasons it cannot be used. Each field keeps its raw text beside the clean
value, and each field that failed or was repaired carries a ``field:reason`` code. A department
whose counts do not reconcile (read = standardized + rejected) fails, and only that department.

Output, per run and department, under ``<var_dir>/canonical/run=<run_id>/department=<code>/``:
``person.parquet``, ``enterprise.parquet`` (whichever the department has) and ``rejects.parquet``
(each rejected row's reasons and its raw values, source column → text), then
``_standardized.json`` naming the raw files they came from (:func:`unfinished`): a
standardization killed part way, or raw data extracted again since, leaves none that matches.
Every path is :mod:`store.layout`'s. The local engine writes each output as one Parquet file;
the Spark engine as a folder of the same name holding part files (:class:`ParquetParts`),
which ``pq.read_table`` and ``spark.read.parquet`` read as one table, in the same row order.

A batch is standardized column by column, each distinct value of a field (the ID number with
its row's birth date and sex) normalized once per process, whichever table of it holds the value,
and joined back to its rows: most columns repeat their values heavily, and a person's name, ID
number, phone and address come again in each department that holds the person.
:func:`standardize_all` runs departments side by side in ``workers`` worker processes
(``workers:`` of city.yaml).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gc
import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import time
import zoneinfo
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, Protocol, Self, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl.config import (
    ENTERPRISE_IDENTIFIER,
    FIELDS,
    CityConfig,
    ColumnMapping,
    DepartmentConfig,
    TableConfig,
    night_date,
    parse_stamp,
    strptime_format,
)
from etl.extract import NUL, ROW_KEY, ParquetSink, StagedOutput, parquet_writer
from fields import dictionary, normalize
from store import failpoints
from store.layout import (
    canonical_dir,
    duplicates_path,
    problem_path,
    raw_path,
    standardized_marker_path,
)

log = logging.getLogger(__name__)

ROW_REASONS: dict[str, str] = {
    "row_unidentifiable": "该行既无有效证件号码，也缺少可识别的姓名（名称）及其他信息，无法使用",
    "key_missing": "主键为空，无法追踪该行的更新与删除，不能进入主数据",
    "code_unmapped": "代码不在配置的代码表中，按原值处理",
    "change_value_unparseable": "更新时间字段无法解析",
    "invalid_encoding": "该列的值含无法识别的字符编码（乱码，不是有效的UTF-8），整行无法使用",
    "duplicate_key": "主键在源表中重复（多行共用同一主键），无法确定哪一行有效，全部拒收",
    "nul_character": (
        "该列的值含空字符（NUL，\\x00），数据库无法保存：规范化时与其他控制字符一样替换为"
        "空格，主键中以␀代替，该行照常处理"
    ),
}
BAD_BYTES = "\ufffd"
"""What extraction puts where a source value held bytes that are not UTF-8."""
# An empty value is a defect only where the row needs it; an empty 注册号 of a firm founded after
# the 2015 reform, or a person without a phone, is normal.
REQUIRED: dict[str, frozenset[str]] = {
    "person": frozenset({"name", "id_number", "sex", "birth_date"}),
    "enterprise": frozenset({"name", "uscc"}),
}
_EMPTY = frozenset({"missing", "phone_missing", "address_missing"})
_BEIJING_EPOCH = dt.datetime(1970, 1, 1, 8)  # epoch seconds are stored as Beijing wall time

_META = [
    ("department", pa.string()),
    ("source_table", pa.string()),
    ("source_key", pa.string()),
    ("run_id", pa.string()),
]
_TAIL = [
    ("updated_at", pa.timestamp("s")),
    ("extras", pa.string()),
    ("reasons", pa.list_(pa.string())),
]


def _canonical_schema(entity: str) -> pa.Schema:
    """Row metadata, the entity's columns (:mod:`fields.dictionary`), the tail, raw values."""
    return pa.schema(
        [
            *_META,
            *dictionary.canonical_fields(entity),
            *_TAIL,
            *[(f"raw_{f}", pa.string()) for f in FIELDS[entity]],
        ]
    )


PERSON_SCHEMA = _canonical_schema("person")
ENTERPRISE_SCHEMA = _canonical_schema("enterprise")
SCHEMAS = {"person": PERSON_SCHEMA, "enterprise": ENTERPRISE_SCHEMA}
REJECT_SCHEMA = pa.schema(
    [
        *_META,
        ("entity", pa.string()),
        ("reasons", pa.list_(pa.string())),
        ("raw", pa.map_(pa.string(), pa.string())),  # source column → its raw text
    ]
)


@dataclass
class DepartmentStandardized:
    """One department's standardization: counts, reasons, status and where the output is."""

    department: str
    rows_read: int = 0
    standardized: int = 0
    rejected: int = 0
    reject_reasons: Counter[str] = field(default_factory=Counter)
    field_reasons: Counter[str] = field(default_factory=Counter)
    status: str = "ok"  # ok | skipped | failed | config
    message: str = ""
    outputs: dict[str, Path] = field(default_factory=dict)
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0  # of the process that standardized it

    @property
    def reconciled(self) -> bool:
        """Rows read = rows standardized + rows rejected."""
        return self.rows_read == self.standardized + self.rejected


UNPARSEABLE: frozenset[str] = frozenset(
    {
        "date_unparseable",
        "code_unmapped",
        "change_value_unparseable",
        "sex_invalid",
        "ethnicity_invalid",
        "capital_invalid",
    }
)
"""Reason codes that say a value could not be read the way the configuration says it is
written; when every value of a column has one, the configuration is what is wrong."""
CONFIG_SUSPECT_ROWS = 20
"""A column is judged misconfigured only with at least this many filled values tonight."""


class ConfigSuspected(RuntimeError):
    """Every value of a column was unreadable: a configuration error for data engineering,
    not the department's data."""


class ReconciliationError(RuntimeError):
    """Rows read ≠ rows standardized + rows rejected: a row went missing or was doubled."""


def unfinished(city: CityConfig, dept: DepartmentConfig, run_id: str) -> str | None:
    """Why ``dept``'s canonical output of ``run_id`` cannot be linked, or None when it can: its
    standardization finished, from the raw files that are there now, one per configured table.

    >>> unfinished(city, city.department("renshe"), "2026-07-01")  # doctest: +SKIP
    "renshe: the standardization of night 2026-07-01 did not finish"
    """
    marker = standardized_marker_path(city.var_dir, run_id, dept.code)
    try:
        done = json.loads(marker.read_text(encoding="utf-8"))["raw"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{dept.code}: the standardization of night {run_id} did not finish"
    for t in dept.tables:
        path = raw_path(city.var_dir, run_id, dept.code, t.name)
        if t.name not in done:
            return f"{dept.code}: table {t.name!r} was not extracted completely in night {run_id}"
        if not path.is_file() or _digest(path) != done[t.name]:
            return f"{dept.code}: table {t.name!r} was extracted again after it was standardized"
    return None


def _digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


# --- one row -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    city_code: str
    as_of: dt.date
    timezone: str = "Asia/Shanghai"  # the city's: change stamps with an offset land in it


def _updated_at(raw: str | None, table: TableConfig, tz: str) -> dt.datetime | None:
    if raw is None or raw == "":
        return None
    try:
        if table.change_kind == "epoch_seconds":
            return _BEIJING_EPOCH + dt.timedelta(seconds=int(float(raw)))
        if table.change_kind == "string" and table.change_format:
            return parse_stamp(raw, table.change_format, tz)
        stamp = dt.datetime.fromisoformat(raw).replace(microsecond=0)
        if stamp.tzinfo is not None:  # an offset: the city's wall time, as the other stamps
            stamp = stamp.astimezone(zoneinfo.ZoneInfo(tz))
        return stamp.replace(tzinfo=None)
    except (ValueError, OverflowError):
        return None


@dataclass(frozen=True)
class _Column:
    """How one mapped column of a table is normalized: its field, mapping and the normalizer
    bound to the night's context (one per configured format for a date), bound once per column
    rather than once per value."""

    entity: str
    fld: str
    mapping: ColumnMapping
    normalizers: tuple[Callable[..., normalize.Normalized[Any]], ...]
    cross_checked: bool  # an ID number, read against its row's birth date and sex


def _column(entity: str, fld: str, mapping: ColumnMapping, ctx: _Context) -> _Column:
    name = _normalizer_name(entity, fld)
    context: dict[str, Any] = {"as_of": ctx.as_of, "default_city_code": ctx.city_code}
    if mapping.unit is not None:
        context["unit"] = mapping.unit
    normalizers: tuple[Callable[..., normalize.Normalized[Any]], ...]
    if name not in ("birth_date", "established_date"):
        normalizers = (normalize.bound(name, **context),)
    else:  # the first format that reads the value wins
        normalizers = tuple(
            normalize.bound(
                name, fmt=None if fmt in (None, "auto") else strptime_format(fmt), **context
            )
            for fmt in mapping.formats
        )
    return _Column(entity, fld, mapping, normalizers, name == "id_number")


def _field_value(
    column: _Column, raw: Any, row_context: dict[str, Any]
) -> tuple[normalize.Normalized[Any], list[str]]:
    """Normalize one mapped field; returns the result and any mapping-level reason codes."""
    extra_reasons: list[str] = []
    value: Any = raw
    mapping = column.mapping
    if isinstance(raw, _Unmatched):
        extra_reasons.append("code_unmapped")
        value = str(raw)
    if mapping.codes is not None and raw not in (None, ""):
        key = str(raw).strip()
        if key in mapping.codes:
            value = mapping.codes[key]
        else:
            extra_reasons.append("code_unmapped")
    if column.cross_checked:
        return column.normalizers[0](value, **row_context), extra_reasons
    result: normalize.Normalized[Any] | None = None
    for normalizer in column.normalizers:
        result = normalizer(value)
        if result.value is not None:
            break
    assert result is not None
    return result, extra_reasons


@functools.cache
def _normalizer_name(entity: str, fld: str) -> str:
    return dictionary.field(entity, fld).normalized_by or fld


def standardize_row(
    entity: str, table: TableConfig, raw: dict[str, Any], ctx: _Context
) -> tuple[dict[str, Any], list[str], bool]:
    """One raw row → (canonical row, its ``field:reason`` codes, usable?); see
    :func:`standardize_rows`, which does the same for a batch of rows."""
    rows = standardize_rows(entity, table, {c: [v] for c, v in raw.items()}, 1, ctx, _Memo())
    out = {
        name: rows.columns[name][0] if name in rows.columns else None
        for name in SCHEMAS[entity].names
    }
    return out, rows.reasons[0], rows.usable[0]


MEMO_ENTRIES = 250_000
"""A column's remembered values are forgotten past this many, between batches: a column whose
values hardly repeat (ID numbers, addresses) would otherwise hold a whole table in memory."""


_FieldMemo = dict[Any, tuple[tuple[Any, ...], tuple[str, ...], Any]]
_SHARED_FIELDS: dict[tuple[Any, ...], _FieldMemo] = {}
"""This process's normalized field values, shared by every table it standardizes: a person's
name, ID number, phone and address come again in each department that holds the person.
Forgotten when :func:`standardize_all` ends or another night's table comes (a long-lived worker
standardizes many nights), and per field down to the newest half past :data:`MEMO_ENTRIES`."""
_SHARED_NIGHT: list[_Context] = []
"""The night (context) whose values :data:`_SHARED_FIELDS` holds."""


def _shared_fields(ctx: _Context) -> dict[tuple[Any, ...], _FieldMemo]:
    """:data:`_SHARED_FIELDS` for the night of ``ctx``: another night's values are forgotten."""
    if [ctx] != _SHARED_NIGHT:
        _SHARED_FIELDS.clear()
        _SHARED_NIGHT[:] = [ctx]
    return _SHARED_FIELDS


def _bound(memo: dict[Any, Any]) -> None:
    """Past :data:`MEMO_ENTRIES`, keep the newest half: the values of the tables read last are
    the likeliest to come again, and forgetting all of them would normalize them again."""
    if len(memo) > MEMO_ENTRIES:
        for k in list(itertools.islice(memo, len(memo) - MEMO_ENTRIES // 2)):
            del memo[k]


class _Memo:
    """A table's normalized values, each distinct (field, mapping, value, context) once: most
    columns repeat their values heavily (dates, codes, names, divisions), and normalizing is the
    cost. ``fields`` is keyed by what decides a field's result (:func:`_memo_key`), so tables
    given the same ``shared`` dict reuse each other's values."""

    def __init__(self, shared: dict[tuple[Any, ...], _FieldMemo] | None = None) -> None:
        self.fields: dict[tuple[Any, ...], _FieldMemo] = {} if shared is None else shared
        self.updated: dict[Any, dt.datetime | None] = {}
        self.extras: dict[tuple[Any, ...], str] = {}

    def __reduce__(self) -> tuple[type[_Memo], tuple[()]]:
        """Sent to another process (a Spark worker) empty: what this one remembers stays here."""
        return _Memo, ()


def _memo_key(entity: str, fld: str, mapping: Any, ctx: _Context) -> tuple[Any, ...]:
    """Everything besides the value (and an ID number's row context) a field's result depends
    on (:func:`_normalize_once`)."""
    codes = None if mapping.codes is None else tuple(sorted(mapping.codes.items()))
    return (entity, fld, codes, tuple(mapping.formats), mapping.unit, ctx)


@dataclass
class _Rows:
    """A batch standardized: canonical columns (schema name → one value per row), each row's
    reason codes, and whether it is usable."""

    columns: dict[str, list[Any]]
    reasons: list[list[str]]
    usable: list[bool]


def _key(value: Any) -> Any:
    """A value as a memo key: equal only to the same value of the same type (1 ≠ "1" ≠ True)."""
    return value if value.__class__ is str or value is None else (value.__class__, value)


def _placed_columns(entity: str, fld: str) -> tuple[str, ...]:
    """The canonical columns one mapped field fills (:func:`_place`)."""
    if fld == "address":
        return ("address", "province", "city", "district", "division_code", "address_detail")
    if fld == "phone":
        return ("phone", "phones_all")
    if fld == "name":
        return ("name", "name_pinyin") if entity == "person" else ("name", "name_key", "branch")
    if fld == "id_number" and entity == "person":
        return ("id_number", "guardian_id")
    return (fld,)


def _normalize_once(
    column: _Column, raw: Any, row_context: dict[str, Any]
) -> tuple[tuple[Any, ...], tuple[str, ...], Any]:
    """One distinct value of a field: its canonical columns, its ``field:reason`` codes, and its
    clean value (the ID number's cross-check context)."""
    entity, fld = column.entity, column.fld
    result, more = _field_value(column, raw, row_context)
    codes = (*more, *result.reasons)
    if fld not in REQUIRED[entity]:
        codes = tuple(c for c in codes if c not in _EMPTY)
    return _placed(entity, fld, result), tuple(f"{fld}:{c}" for c in codes), result.value


_Found = tuple[dict[str, list[Any]], list[tuple[str, ...]], list[Any]]


def _field_columns(
    column: _Column,
    values: list[Any],
    context: dict[str, list[Any]],
    memo: _FieldMemo,
) -> _Found:
    """Normalize one mapped column, each distinct value (with its row context) once, and join
    the results back to the rows: the canonical columns it fills (name → one value per row),
    each row's reason codes, and each row's clean value."""
    _bound(memo)
    n = len(values)
    plain = _PLAIN.issuperset(map(type, values))  # in C; str columns need no key of their own
    keys: list[Any] = values if plain else [_key(v) for v in values]
    if column.cross_checked:
        nothing = [None] * n
        births, sexes = context.get("birth_date") or nothing, context.get("sex") or nothing
        keys = list(zip(keys, births, sexes, strict=True))
    distinct = dict.fromkeys(keys)  # in C, in order of first appearance
    for i, k in enumerate(distinct):
        hit = memo.get(k)
        if hit is None:
            row_context = {}
            value = k
            if column.cross_checked:
                value = k[0]
                row_context = {
                    n: c for n, c in zip(("birth_date", "sex"), k[1:], strict=True) if c is not None
                }
            if value.__class__ is tuple:  # a (type, value) key: the value as read
                value = value[1]
            hit = memo[k] = _normalize_once(column, value, row_context)
        distinct[k] = i
    rows = np.fromiter(map(distinct.__getitem__, keys), np.intp, count=n)
    names = _placed_columns(column.entity, column.fld)
    found = zip(*map(memo.__getitem__, distinct), strict=True) if n else ((), (), ())
    placed, codes, cleaned = found

    def joined(values_of_distinct: Sequence[Any]) -> list[Any]:
        by_value = np.fromiter(values_of_distinct, object, count=len(distinct))
        out: list[Any] = by_value[rows].tolist()  # in C: each row its distinct value's
        return out

    by_name = zip(*placed, strict=True) if n else [()] * len(names)
    columns = {name: joined(values) for name, values in zip(names, by_name, strict=True)}
    clean = joined(cleaned) if column.fld in ("birth_date", "sex") else []
    return columns, joined(codes), clean


_PLAIN = frozenset({str, type(None)})


def standardize_rows(
    entity: str, table: TableConfig, raw: dict[str, list[Any]], n: int, ctx: _Context, memo: _Memo
) -> _Rows:
    """``n`` raw rows (source column → values) → their canonical columns, reason codes and
    usability, row for row what :func:`standardize_row` gives; ``memo`` carries the values
    normalized so far in this table."""
    nothing: list[Any] = [None] * n
    out: dict[str, list[Any]] = {}
    codes: list[list[tuple[str, ...]]] = []
    context: dict[str, list[Any]] = {}
    extras: dict[str, list[Any]] = {}
    # birth date and sex first: the ID number is cross-checked against the row's own values
    # a column of mixed identifiers last: it fills what the fields' own columns leave empty
    order = sorted(
        table.columns,
        key=lambda c: (
            table.columns[c].route is not None,
            table.columns[c].field not in ("birth_date", "sex"),
        ),
    )
    for col in order:
        mapping = table.columns[col]
        values = raw.get(col, nothing)
        if mapping.extra:
            extras[mapping.extra] = values
            continue
        if mapping.route is not None:
            routed = memo.fields.setdefault(("route", *mapping.route), {})  # shared by tables
            _bound(routed)
            codes.append(_routed(mapping.route, values, out, routed))
            continue
        if mapping.cases is not None:
            values = _case_values(mapping, raw, n)
        fld = mapping.field
        assert fld is not None
        out[f"raw_{fld}"] = values
        columns, field_codes, clean = _field_columns(
            _column(entity, fld, mapping, ctx),
            values,
            context,
            memo.fields.setdefault(_memo_key(entity, fld, mapping, ctx), {}),
        )
        out.update(columns)
        codes.append(field_codes)
        if fld in ("birth_date", "sex"):
            context[fld] = clean
    codes.append(
        _change_times(table, raw.get(table.change_column, nothing), out, memo, ctx.timezone)
    )
    out["extras"] = _extras(extras, n, memo)
    garbled, nul = _flagged(table, raw, {BAD_BYTES: "invalid_encoding", NUL: "nul_character"})
    for flags in (garbled, nul):
        codes.append(
            [tuple(f for f in row if f) for row in zip(*flags, strict=True)] if flags else [()] * n
        )
    reasons = [[c for t in row for c in t] for row in zip(*codes, strict=True)]
    out["reasons"] = reasons
    usable = _usable_rows(entity, out, n)
    if garbled:
        usable = [u and not any(g) for u, *g in zip(usable, *garbled, strict=True)]
    return _Rows(out, reasons, usable)


def _flagged(
    table: TableConfig, raw: dict[str, list[Any]], codes: dict[str, str]
) -> list[list[list[str]]]:
    """For each character of ``codes`` (character → code), per source column that holds it in
    some value: each row's ``<column>:<code>``, or ``""``."""
    found: list[list[list[str]]] = [[] for _ in codes]
    for c in table.source_columns:
        if (vals := raw.get(c)) is None:
            continue
        shown = repr(vals)  # in C; holds each character (as its repr) where a value does
        for flags, (char, code) in zip(found, codes.items(), strict=True):
            if repr(char)[1:-1] in shown:
                flags.append(
                    [f"{c}:{code}" if isinstance(v, str) and char in v else "" for v in vals]
                )
    return found


def _case_values(mapping: ColumnMapping, raw: dict[str, list[Any]], n: int) -> list[Any]:
    """A value from several columns (``cases``): each row's first matching case; a row whose
    values no case matches keeps them as read (``_Unmatched``, reported ``code_unmapped``)."""
    columns = mapping.case_columns
    nothing: list[Any] = [None] * n
    out: list[Any] = []
    for row in zip(*(raw.get(c, nothing) for c in columns), strict=True):
        value = mapping.case_value(dict(zip(columns, row, strict=True)))
        if value is None and any(v not in (None, "") for v in row):
            value = _Unmatched("/".join("" if v is None else str(v) for v in row))
        out.append(value)
    return out


class _Unmatched(str):
    """The values of a row that no case of its ``cases`` mapping matches, joined by ``/``."""


def _routed(
    route: Sequence[str], values: list[Any], out: dict[str, list[Any]], memo: dict[Any, Any]
) -> list[tuple[str, ...]]:
    """A column of mixed enterprise identifiers: each value to ``uscc``, ``reg_no`` or
    ``org_code`` by its structure and check characters; the organization code is also read out
    of a credit code and of an old tax number. Fills the routed fields' columns where the
    fields' own columns (already in ``out``) left them empty, with ``raw_*`` of the field a
    value went to; returns each row's reason codes."""
    filled = {f: list(out.get(f) or [None] * len(values)) for f in route}
    raws = {f: list(out.get(f"raw_{f}") or [None] * len(values)) for f in route}
    reasons = []
    for i, v in enumerate(values):
        k = _key(v)
        if k not in memo:
            memo[k] = _route_one(route, v)
        placed, why = memo[k]
        for f, value in placed.items():
            if filled[f][i] is None:
                filled[f][i] = value
                raws[f][i] = v
        reasons.append(why)
    out.update(filled)
    out.update({f"raw_{f}": column for f, column in raws.items()})
    return reasons


def _route_one(route: Sequence[str], raw: Any) -> tuple[dict[str, str], tuple[str, ...]]:
    """Where one identifier goes (field → value) and its reason codes."""
    r = normalize.legacy_code(raw)
    kind = r.extra.get("kind")
    if kind is None or (r.value is None and "missing" in r.reasons):
        codes = tuple(c for c in r.reasons if c not in _EMPTY)
        return {}, tuple(f"{ENTERPRISE_IDENTIFIER}:{c}" for c in codes)
    if kind not in route:
        return {}, (f"{ENTERPRISE_IDENTIFIER}:identifier_not_routed_{kind}",)
    if r.value is None:
        return {}, tuple(f"{kind}:{c}" for c in r.reasons)
    placed = {kind: r.value}
    org = r.extra.get("org_code") if kind == "uscc" else r.extra.get("tax_org_code")
    if org and "org_code" in route:
        placed.setdefault("org_code", org)
    return placed, tuple(f"{kind}:{c}" for c in r.reasons)


def _change_times(
    table: TableConfig, values: list[Any], out: dict[str, list[Any]], memo: _Memo, tz: str
) -> list[tuple[str, ...]]:
    """Fill ``updated_at``; each row's reason code when its change value cannot be read."""
    _bound(memo.updated)
    times, read = _stamps_at_fixed_places(table, values)
    for i in np.flatnonzero(~read).tolist():  # stamps read one by one, each distinct once
        v = values[i]
        k = _key(v)
        if k not in memo.updated:
            memo.updated[k] = _updated_at(v, table, tz)
        times[i] = memo.updated[k]
    out["updated_at"] = times
    bad = (f"{table.change_column}:change_value_unparseable",)
    return [
        bad if t is None and v not in (None, "") else () for t, v in zip(times, values, strict=True)
    ]


_DIGITS = r"(?:\d{4})(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
_CLOCK = r"(?:[01]\d|2[0-3])(?:[0-5]\d){2}"
_FIXED_STAMPS: dict[tuple[str, str | None], tuple[str, tuple[int, ...]]] = {
    # (change_kind, change_format) → the whole stamp, and where its year, month, day, hour,
    # minute and second begin: the stamps :func:`_updated_at` reads with no time zone
    ("string", "%Y%m%d%H%M%S"): (_DIGITS + _CLOCK, (0, 4, 6, 8, 10, 12)),
    ("string", "%Y-%m-%d %H:%M:%S"): (
        r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01]) (?:[01]\d|2[0-3])(?::[0-5]\d){2}",
        (0, 5, 8, 11, 14, 17),
    ),
    ("timestamp", None): (
        r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])[ T](?:[01]\d|2[0-3])(?::[0-5]\d){2}",
        (0, 5, 8, 11, 14, 17),
    ),
}
_WIDTHS = (4, 2, 2, 2, 2, 2)
_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _stamps_at_fixed_places(table: TableConfig, values: list[Any]) -> tuple[list[Any], Any]:
    """The change stamps written with every digit at its place (``20240627153000``,
    ``2024-06-27 15:30:00``), read at once with pyarrow and numpy as :func:`_updated_at` reads
    them one by one (an impossible day, 2023-02-29, is unreadable); returns each row's time
    (None where not read here) and which rows were read."""
    n = len(values)
    fmt = table.change_format if table.change_kind == "string" else None
    fixed = _FIXED_STAMPS.get((table.change_kind, fmt))
    if fixed is None or not n or not _PLAIN.issuperset(map(type, values)):
        return [None] * n, np.zeros(n, bool)
    pattern, starts = fixed
    text = pa.array(values, pa.string())
    read = pc.match_substring_regex(text, f"^(?:{pattern})$").fill_null(False).to_numpy(False)
    at = np.flatnonzero(read)
    y, mo, d, h, mi, s = (
        pc.cast(pc.utf8_slice_codeunits(text.take(at), b, b + w), pa.int64()).to_numpy()
        for b, w in zip(starts, _WIDTHS, strict=True)
    )
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    real = (y >= 1) & (d <= _MONTH_DAYS[mo - 1] + ((mo == 2) & leap))
    month = ((y - 1970) * 12 + mo - 1).astype("datetime64[M]").astype("datetime64[s]")
    stamp = month + ((d - 1) * 86400 + h * 3600 + mi * 60 + s).astype("timedelta64[s]")
    times = np.full(n, None, object)
    times[at[real]] = stamp[real].astype(object)  # datetime.datetime, naive
    return times.tolist(), read


def _extras(extras: dict[str, list[Any]], n: int, memo: _Memo) -> list[str | None]:
    """The unmapped columns carried through, as one JSON object per row."""
    if not extras:
        return [None] * n
    names = list(extras)
    found: list[str | None] = []
    _bound(memo.extras)
    for values in zip(*extras.values(), strict=True):
        k = tuple(_key(v) for v in values)
        if k not in memo.extras:
            memo.extras[k] = json.dumps(
                dict(zip(names, values, strict=True)), ensure_ascii=False, sort_keys=True
            )
        found.append(memo.extras[k])
    return found


def _usable_rows(entity: str, out: dict[str, list[Any]], n: int) -> list[bool]:
    nothing: list[Any] = [None] * n
    col = {f: out.get(f, nothing) for f in ("id_number", "name", "birth_date", "phone", "address")}
    if entity == "person":
        return [
            bool(i) or (bool(nm) and bool(b or p or a))
            for i, nm, b, p, a in zip(*col.values(), strict=True)
        ]
    col = {f: out.get(f, nothing) for f in ("uscc", "reg_no", "org_code", "name")}
    return [bool(u or r or o or nm) for u, r, o, nm in zip(*col.values(), strict=True)]


def _placed(entity: str, fld: str, result: normalize.Normalized[Any]) -> tuple[Any, ...]:
    """The values of the canonical columns one normalized field fills, in the order of
    :func:`_placed_columns`."""
    value = result.value
    if fld == "address":
        if value is None:
            return (None,) * 6
        a: normalize.Address = value
        return (a.full, a.province, a.city, a.district, a.division_code, a.detail)
    if fld == "phone":
        return value, result.extra.get("all") if value is not None else None
    if fld == "id_number" and entity == "person":
        return value, result.extra.get("other_person_id")
    if fld == "name" and entity == "person":
        return value, normalize.name_pinyin(value) if value else None
    if fld == "name":
        if not value:
            return value, None, None
        return value, result.extra.get("key"), result.extra.get("branch")
    if fld == "registered_capital" and isinstance(value, Decimal):
        return (value.quantize(Decimal("0.0001")),)
    if isinstance(value, dt.datetime):
        value = value.date()
    return (value,)


# --- one department ---------------------------------------------------------------------------


def _raw_batches(path: Path, batch_rows: int) -> Iterator[dict[str, list[Any]]]:
    """The raw file in batches, each as source column → values."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        yield batch.to_pydict()


def standardize_department(
    city: CityConfig,
    dept: DepartmentConfig,
    run_id: str,
    *,
    as_of: dt.date | None = None,
    batch_rows: int = 20_000,
    progress: Callable[[str, int], None] | None = None,
    batches: BatchRunner[Any] | None = None,
) -> DepartmentStandardized:
    """Standardize every table this department extracted in ``run_id``; never raises for its data.
    ``batches`` runs the kernel over each raw file and writes the rows (default: :data:`LOCAL`,
    in this process).

    >>> r = standardize_department(city, city.department("gongan"), "2026-07-01")  # doctest: +SKIP
    >>> r.reconciled, r.status
    (True, 'ok')
    """
    wall, cpu = time.perf_counter(), time.process_time()
    result = _standardize_department(
        city, dept, run_id, as_of=as_of, batch_rows=batch_rows, progress=progress, batches=batches
    )
    result.wall_seconds = time.perf_counter() - wall
    result.cpu_seconds = time.process_time() - cpu
    return result


def _standardize_department(
    city: CityConfig,
    dept: DepartmentConfig,
    run_id: str,
    *,
    as_of: dt.date | None,
    batch_rows: int,
    progress: Callable[[str, int], None] | None,
    batches: BatchRunner[Any] | None,
) -> DepartmentStandardized:
    result = DepartmentStandardized(dept.code)
    marker = standardized_marker_path(city.var_dir, run_id, dept.code)
    before = marker.read_bytes() if marker.is_file() else None
    marker.unlink(missing_ok=True)  # killed part way, the outputs may be half old, half new
    sources = [(t, raw_path(city.var_dir, run_id, dept.code, t.name)) for t in dept.tables]
    sources = [(t, p) for t, p in sources if p.exists()]
    if not sources:
        result.status = "skipped"
        result.message = (
            f"{dept.code}: nothing was extracted in run {run_id} (extraction failed or was not "
            f"run); nothing to standardize"
        )
        return result
    problem = problem_path(city.var_dir, run_id, dept.code)
    problem.unlink(missing_ok=True)
    job = _Job(
        run_id,
        _Context(city.division_code, as_of or night_date(city, run_id), city.timezone),
        canonical_dir(city.var_dir, run_id, dept.code),
        batch_rows,
        progress,
        batches or LOCAL,
    )
    duplicated = [(t, duplicates_path(city.var_dir, run_id, dept.code, t.name)) for t, _ in sources]
    try:
        result.outputs = _write_canonical(result, job, sources, duplicated)
    except ConfigSuspected as exc:
        result.status = "config"
        result.message = str(exc)
        problem.parent.mkdir(parents=True, exist_ok=True)
        problem.write_text(
            json.dumps({"department": dept.code, "message": str(exc)}, ensure_ascii=False),
            encoding="utf-8",
        )
        return result
    except Exception as exc:  # one department's failure is that department's problem
        log.exception("standardizing %s failed", dept.code)
        if before is not None:  # every sink kept its old file: the old outputs stand
            marker.write_bytes(before)
        result.status = "failed"
        result.message = (
            str(exc)
            if isinstance(exc, ReconciliationError)
            else f"{dept.code}: standardization failed: {type(exc).__name__}: {exc}"
        )
        return result
    failpoints.reached("standardize:written")
    _mark_standardized(marker, run_id, sources)
    failpoints.reached("standardize:marked")
    return result


@dataclass(frozen=True)
class _Job:
    """One department's standardization in one night: where it writes and how."""

    run_id: str
    ctx: _Context
    out_dir: Path
    batch_rows: int
    progress: Callable[[str, int], None] | None
    batches: BatchRunner[Any]


def _write_canonical(
    result: DepartmentStandardized,
    job: _Job,
    sources: list[tuple[TableConfig, Path]],
    duplicated: list[tuple[TableConfig, Path]],
) -> dict[str, Path]:
    """Standardize ``sources`` into one Parquet per entity plus the rejects, reject the
    duplicated keys' rows, and check that the counts reconcile; returns entity → path.

    Every sink renames into place on success and removes its temp file on failure, so an
    exception leaves the department's previous outputs as they were."""
    meta = {"run_id": job.run_id, "department": result.department}
    sink = job.batches.sink
    with contextlib.ExitStack() as stack:
        rejects = stack.enter_context(
            sink(job.out_dir / "rejects.parquet", REJECT_SCHEMA, job.batch_rows, meta)
        )
        stack.callback(failpoints.reached, "standardize:closing")  # after the entity sinks
        sinks: dict[str, Sink] = {}
        for table, path in sources:
            entity: str = table.entity
            if entity not in sinks:
                sinks[entity] = stack.enter_context(
                    sink(job.out_dir / f"{entity}.parquet", SCHEMAS[entity], job.batch_rows, meta)
                )
            _standardize_table(result, entity, table, path, sinks[entity], rejects, job)
        for table, path in duplicated:
            if path.is_file():
                _reject_duplicates(result, table, path, rejects, job.run_id)
        if not result.reconciled:
            raise ReconciliationError(
                f"{result.department}: reconciliation failed: read {result.rows_read} rows but "
                f"standardized {result.standardized} and rejected {result.rejected}"
            )
    return {**{entity: sink.path for entity, sink in sinks.items()}, "rejects": rejects.path}


def _mark_standardized(marker: Path, run_id: str, sources: list[tuple[TableConfig, Path]]) -> None:
    """Name the raw files the finished standardization read (see :func:`unfinished`)."""
    done = {"run_id": run_id, "raw": {t.name: _digest(path) for t, path in sources}}
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(done, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, marker)


@dataclass
class BatchCounts:
    """What one standardized batch adds to its department's counts and checks."""

    rows: int
    """raw rows read"""
    standardized: int
    rejected: int
    reject_reasons: Counter[str] = field(default_factory=Counter)
    field_reasons: Counter[str] = field(default_factory=Counter)
    filled: Counter[str] = field(default_factory=Counter)
    """column → values given"""
    unreadable: Counter[str] = field(default_factory=Counter)
    """column → values its configuration cannot read"""
    examples: dict[str, str] = field(default_factory=dict)
    """column → its first unreadable value"""


@dataclass
class StandardizedBatch:
    """One batch of raw rows standardized (:func:`standardize_batch`): the canonical rows, the
    rejected rows, and their counts."""

    good: pa.Table
    bad: pa.Table
    counts: BatchCounts


Kernel = Callable[[dict[str, list[Any]]], StandardizedBatch]
"""Standardizes one batch of raw rows, source column → values (a :func:`standardize_batch` with
its table bound)."""


class Sink(Protocol):
    """Where one output of a department (an entity's canonical rows, or the rejects) goes: in
    place at ``path`` on a clean exit, the previous output untouched on an exception."""

    @property
    def path(self) -> Path: ...

    def write(self, rows: pa.Table) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None: ...


_S = TypeVar("_S", bound=Sink)


@dataclass(frozen=True)
class BatchRunner(Generic[_S]):
    """How an engine standardizes a raw file. ``run(table, path, kernel, batch_rows, good, bad)``
    runs ``kernel`` over the raw file at ``path`` in batches of about ``batch_rows`` rows, puts
    each batch's canonical rows into ``good`` and its rejected rows into ``bad``, in the file's
    row order, and yields each batch's counts in that order; ``sink(path, schema, chunk_rows,
    meta)`` opens the sink of one output. The local engine reads and writes in this process
    (:data:`LOCAL`); the Spark engine runs the same kernel inside Spark, whose executors write
    the rows (:func:`spark.standardize.spark_batches`)."""

    run: Callable[[TableConfig, Path, Kernel, int, _S, _S], Iterator[BatchCounts]]
    sink: Callable[[Path, pa.Schema, int, dict[str, Any]], _S]


def local_batches(
    table: TableConfig,
    path: Path,
    kernel: Kernel,
    batch_rows: int,
    good: ParquetSink,
    bad: ParquetSink,
) -> Iterator[BatchCounts]:
    """The local engine: the raw file read, standardized and written batch by batch in this
    process."""
    for rows in _raw_batches(path, batch_rows):
        batch = kernel(rows)
        good.write(batch.good)
        bad.write(batch.bad)
        yield batch.counts


LOCAL = BatchRunner(local_batches, ParquetSink)
"""The local engine's :class:`BatchRunner`: one Parquet file per output."""


class ParquetParts(StagedOutput):
    """One output written as a folder of Parquet part files that are read, in name order, as
    one table: ``pq.read_table`` and ``spark.read.parquet`` read the folder as they read a file.
    The Spark engine's executors write the parts themselves (:meth:`section`), so no row passes
    through the driver, whatever the size of the department.

    Like :class:`etl.extract.ParquetSink`, the output takes ``path``'s place only on success
    (:class:`etl.extract.StagedOutput`): on an exception the temp folder is removed and the
    previous output stands. A part is one batch of its source, so ``chunk_rows`` (the file
    sink's row groups) has no use here.
    """

    def __init__(
        self, path: Path, schema: pa.Schema, chunk_rows: int, meta: dict[str, Any]
    ) -> None:
        super().__init__(path, schema, meta)
        self.tmp.mkdir()
        self.sections = 0

    def section(self) -> PartWriter:
        """The writer of the next run of parts, read after every earlier one: a raw table's
        batches, each named by its first row."""
        part = PartWriter(self.tmp, f"part-{self.sections:05d}", self.schema)
        self.sections += 1
        return part

    def write(self, rows: pa.Table) -> None:
        """Write ``rows`` from this process, after everything written so far."""
        if rows.num_rows:
            self.section().write(0, rows)

    def __enter__(self) -> ParquetParts:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is not None:
            self.discard()
            return
        if not any(self.tmp.glob("part-*.parquet")):  # no rows: the folder still has its schema
            self.section().write(0, self.schema.empty_table())
        self.put_in_place()


@dataclass(frozen=True)
class PartWriter:
    """Writes one section's parts into a :class:`ParquetParts` folder; small enough to be
    handed to a Spark executor."""

    folder: Path
    prefix: str
    schema: pa.Schema

    def write(self, first: int, rows: pa.Table) -> None:
        """Write ``rows`` as the part that begins at row ``first`` of the section's source. It
        is renamed into place once whole, so a retried task's part replaces the failed
        attempt's and no reader sees half a part."""
        path = self.folder / f"{self.prefix}-{first:012d}.parquet"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with parquet_writer(tmp, self.schema) as writer:
            writer.write_table(rows, row_group_size=max(rows.num_rows, 1))
        os.replace(tmp, path)


def standardize_batch(
    department: str,
    entity: str,
    table: TableConfig,
    run_id: str,
    ctx: _Context,
    raw: dict[str, list[Any]],
    *,
    memo: _Memo | None = None,
) -> StandardizedBatch:
    """Standardize one batch of ``table``'s raw rows (source column → values): the kernel every
    engine runs. ``memo`` carries the values normalized so far in this table (one per process)."""
    with _no_cycle_collection():
        return _standardize_batch(department, entity, table, run_id, ctx, raw, memo)


def _standardize_batch(
    department: str,
    entity: str,
    table: TableConfig,
    run_id: str,
    ctx: _Context,
    raw: dict[str, list[Any]],
    memo: _Memo | None,
) -> StandardizedBatch:
    n = len(raw.get(ROW_KEY, ()))
    rows = standardize_rows(entity, table, raw, n, ctx, memo or _Memo())
    readable = _Readable(table)
    readable.count(raw, rows.reasons)
    keys = raw.get(ROW_KEY, [None] * n)
    keyless = [not (k or "").strip() for k in keys]  # NULL or blank primary key
    good = [u and not k for u, k in zip(rows.usable, keyless, strict=True)]
    meta = {
        "department": [department] * n,
        "source_table": [table.name] * n,
        "source_key": keys,
        "run_id": [run_id] * n,
    }
    canonical = pa.table(
        {
            f.name: pa.array(rows.columns.get(f.name) or meta.get(f.name) or [None] * n, f.type)
            for f in SCHEMAS[entity]
        },
        schema=SCHEMAS[entity],
    ).filter(pa.array(good, pa.bool_()))
    reject_reasons: Counter[str] = Counter()
    bad = _rejected_rows(
        reject_reasons, department, entity, table, run_id, raw, rows, keyless, good
    )
    counts = BatchCounts(
        n,
        canonical.num_rows,
        len(bad),
        reject_reasons,
        Counter(c for r in rows.reasons for c in r),
        readable.filled,
        readable.unreadable,
        readable.examples,
    )
    return StandardizedBatch(canonical, pa.Table.from_pylist(bad, schema=REJECT_SCHEMA), counts)


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Python's cycle collector held back while a batch is standardized: the batch makes
    hundreds of thousands of tuples and lists (none in a cycle), and each of them set off
    collections that walked the whole memo again, a third of the time. Cycles made meanwhile
    are collected once the collector runs again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _standardize_table(
    result: DepartmentStandardized,
    entity: str,
    table: TableConfig,
    path: Path,
    sink: Sink,
    rejects: Sink,
    job: _Job,
) -> None:
    """Standardize one raw table into its entity's sink and the rejects sink, counting."""
    filled: Counter[str] = Counter()
    unreadable: Counter[str] = Counter()
    examples: dict[str, str] = {}
    memo = _Memo(_shared_fields(job.ctx))
    kernel = functools.partial(
        standardize_batch, result.department, entity, table, job.run_id, job.ctx, memo=memo
    )
    for batch in job.batches.run(table, path, kernel, job.batch_rows, sink, rejects):
        filled.update(batch.filled)
        unreadable.update(batch.unreadable)
        for column, example in batch.examples.items():
            examples.setdefault(column, example)
        result.field_reasons.update(batch.field_reasons)
        result.reject_reasons.update(batch.reject_reasons)
        failpoints.reached("standardize:batch")
        result.rows_read += batch.rows
        result.standardized += batch.standardized
        result.rejected += batch.rejected
        if job.progress:
            job.progress(result.department, batch.rows)
    for column, given in filled.items():
        if given >= CONFIG_SUSPECT_ROWS and unreadable[column] == given:
            raise ConfigSuspected(
                _config_suspect_message(result.department, table, column, given, examples[column])
            )


def _rejected_rows(
    reject_reasons: Counter[str],
    department: str,
    entity: str,
    table: TableConfig,
    run_id: str,
    raw: dict[str, list[Any]],
    rows: _Rows,
    keyless: list[bool],
    good: list[bool],
) -> list[dict[str, Any]]:
    """The batch's rows that cannot be used, as the rejects keep them, with their reasons."""
    bad = []
    for i, ok in enumerate(good):
        if ok:
            continue
        reasons = rows.reasons[i]
        garbled = any(c.endswith(":invalid_encoding") for c in reasons)
        codes = [
            *reasons,
            *(["row:key_missing"] if keyless[i] else []),
            *([] if rows.usable[i] or garbled else ["row:row_unidentifiable"]),
        ]
        reject_reasons.update(codes)
        row = {c: values[i] for c, values in raw.items()}
        meta = {
            "department": department,
            "source_table": table.name,
            "source_key": row[ROW_KEY],
            "run_id": run_id,
        }
        bad.append({**meta, "entity": entity, "reasons": codes, "raw": _raw_values(row)})
    return bad


def _reject_duplicates(
    result: DepartmentStandardized,
    table: TableConfig,
    path: Path,
    rejects: Sink,
    run_id: str,
) -> None:
    """Every copy of a key the source holds more than once goes to rejects: which one is
    the department's row cannot be told, and linking one would re-point the key."""
    codes = [f"{c}:duplicate_key" for c in table.primary_key]
    for batch in pq.ParquetFile(path).iter_batches(batch_size=20_000):
        rows = batch.to_pylist()
        bad = [
            {
                "department": result.department,
                "source_table": table.name,
                "source_key": raw["_row_key"],
                "run_id": run_id,
                "entity": table.entity,
                "reasons": codes,
                "raw": _raw_values(raw),
            }
            for raw in rows
        ]
        rejects.write(pa.Table.from_pylist(bad, schema=REJECT_SCHEMA))
        result.reject_reasons.update(c for _ in rows for c in codes)
        result.rows_read += len(rows)
        result.rejected += len(rows)


def _raw_values(raw: dict[str, Any]) -> list[tuple[str, str | None]]:
    """A raw row as the rejects keep it (column ``raw``, a map): each source column, in name
    order, with its text as extracted."""
    return [(column, None if v is None else str(v)) for column, v in sorted(raw.items())]


class _Readable:
    """Per column of a table: values given, and values its configuration cannot read; a column
    with many of the first and all of them unreadable is a configuration error."""

    def __init__(self, table: TableConfig) -> None:
        self.table = table
        self.columns = {m.field: c for c, m in table.columns.items() if m.field}
        self.columns[table.change_column] = table.change_column
        self.filled: Counter[str] = Counter()
        self.unreadable: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def count(self, raw: dict[str, list[Any]], reasons: list[list[str]]) -> None:
        unread: dict[str, list[int]] = {}  # field → rows whose value it could not read
        for i, codes in enumerate(reasons):
            for c in codes:
                fld, _, why = c.partition(":")
                if why in UNPARSEABLE and (not unread.get(fld) or unread[fld][-1] != i):
                    unread.setdefault(fld, []).append(i)
        for fld, column in self.columns.items():
            values = raw.get(column)
            if values is None:
                continue
            if _PLAIN.issuperset(map(type, values)):  # text: each value stripped, in C
                self.filled[column] += sum(map(bool, map(str.strip, filter(None, values))))
            else:
                counts = Counter(values)  # in C; columns repeat their values
                self.filled[column] += sum(
                    c for v, c in counts.items() if v is not None and _filled(v)
                )
            for i in unread.get(fld, ()):
                value = values[i]
                if value is not None and _filled(value):
                    self.unreadable[column] += 1
                    self.examples.setdefault(column, str(value))

    def check(self, code: str) -> None:
        for column, given in self.filled.items():
            if given >= CONFIG_SUSPECT_ROWS and self.unreadable[column] == given:
                raise ConfigSuspected(
                    _config_suspect_message(code, self.table, column, given, self.examples[column])
                )


def _filled(value: Any) -> bool:
    return bool(value.strip() if value.__class__ is str else str(value).strip())


def _config_suspect_message(
    code: str, table: TableConfig, column: str, given: int, example: str
) -> str:
    mapping = table.columns.get(column)
    if column == table.change_column and (mapping is None or mapping.field is None):
        key, how = "change_kind / change_format", f"change_format {table.change_format!r}"
    elif mapping is not None and mapping.codes is not None:
        key, how = f"columns.{column}.codes", "its code table"
    else:
        fmt = mapping.format if mapping is not None else None
        key, how = f"columns.{column}.format", f"format {fmt!r}"
    return (
        f"{code}: table {table.name!r}: none of the {given:,} values of column {column!r} can be "
        f"read with {how} (e.g. {example!r}): a configuration error, not the department's data. "
        f"Nothing of {code} is published tonight and it is not scored. Fix: correct `{key}` of "
        f"{table.name!r} in config/departments/{code}.yaml to how the column is written, then "
        "rerun the night"
    )


def standardize_all(
    city: CityConfig,
    run_id: str,
    *,
    departments: list[str] | None = None,
    as_of: dt.date | None = None,
    progress: Callable[[str, int], None] | None = None,
    workers: int | None = None,
) -> list[DepartmentStandardized]:
    """Standardize every (or the named) department of ``run_id``, one failure stopping none.

    Departments run side by side in ``workers`` processes (default: ``workers:`` of city.yaml,
    else one per CPU; never more than there are departments); with one worker they run one after
    another in this process. With several, ``progress`` hears of each department once, when it
    is done."""
    chosen = [d for d in city.departments if departments is None or d.code in departments]
    if workers is None:
        workers = city.workers or os.cpu_count() or 1
    workers = min(workers, len(chosen))
    if workers <= 1 or len(chosen) <= 1:
        try:
            return [
                standardize_department(city, d, run_id, as_of=as_of, progress=progress)
                for d in chosen
            ]
        finally:
            _SHARED_FIELDS.clear()
            _SHARED_NIGHT.clear()
    # fork where there is one: a worker starts with what this process has loaded
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
        futures = [
            pool.submit(standardize_department, city, d, run_id, as_of=as_of) for d in chosen
        ]
        results = []
        for dept, future in zip(chosen, futures, strict=True):
            try:
                result = future.result()
            except Exception as exc:  # the worker died (killed, out of memory): only its own
                log.error("standardizing %s failed in its worker process: %r", dept.code, exc)
                result = DepartmentStandardized(dept.code, status="failed")
                result.message = (
                    f"{dept.code}: standardization failed: its worker process ended: "
                    f"{type(exc).__name__}: {exc}"
                )
            if progress:
                progress(result.department, result.rows_read)
            results.append(result)
    return results
