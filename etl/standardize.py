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
Every path is :mod:`store.layout`'s.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from etl.config import FIELDS, CityConfig, DepartmentConfig, TableConfig, night_date
from etl.extract import ParquetSink
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


def _updated_at(raw: str | None, table: TableConfig) -> dt.datetime | None:
    if raw is None or raw == "":
        return None
    try:
        if table.change_kind == "epoch_seconds":
            return _BEIJING_EPOCH + dt.timedelta(seconds=int(float(raw)))
        if table.change_kind == "string" and table.change_format:
            return dt.datetime.strptime(raw, table.change_format)
        return dt.datetime.fromisoformat(raw).replace(microsecond=0, tzinfo=None)
    except (ValueError, OverflowError):
        return None


def _field_value(
    entity: str,
    fld: str,
    raw: str | None,
    mapping_codes: dict[str, str] | None,
    fmt: str | None,
    row_context: dict[str, Any],
    ctx: _Context,
) -> tuple[normalize.Normalized[Any], list[str]]:
    """Normalize one mapped field; returns the result and any mapping-level reason codes."""
    extra_reasons: list[str] = []
    value: Any = raw
    if mapping_codes is not None and raw not in (None, ""):
        key = str(raw).strip()
        if key in mapping_codes:
            value = mapping_codes[key]
        else:
            extra_reasons.append("code_unmapped")
    name = dictionary.field(entity, fld).normalized_by or fld
    context: dict[str, Any] = {"as_of": ctx.as_of, "default_city_code": ctx.city_code}
    if name in ("birth_date", "established_date"):
        context["fmt"] = None if fmt in (None, "auto") else fmt
    if name == "id_number":
        context.update(row_context)
    return normalize.normalize_value(name, value, **context), extra_reasons


def _usable(entity: str, out: dict[str, Any]) -> bool:
    if entity == "person":
        if out["id_number"]:
            return True
        return bool(out["name"]) and any(out[f] for f in ("birth_date", "phone", "address"))
    return any(out[f] for f in ("uscc", "reg_no", "org_code", "name"))


def standardize_row(
    entity: str, table: TableConfig, raw: dict[str, Any], ctx: _Context
) -> tuple[dict[str, Any], list[str], bool]:
    """One raw row → (canonical row, its ``field:reason`` codes, usable?)."""
    schema = SCHEMAS[entity]
    out: dict[str, Any] = {name: None for name in schema.names}
    reasons: list[str] = []
    extras: dict[str, Any] = {}
    targets = {col: m for col, m in table.columns.items()}
    # birth date and sex first: the ID number is cross-checked against the row's own values
    order = sorted(targets, key=lambda c: targets[c].field not in ("birth_date", "sex"))
    row_context: dict[str, Any] = {}
    for col in order:
        mapping = targets[col]
        value = raw.get(col)
        if mapping.extra:
            extras[mapping.extra] = value
            continue
        fld = mapping.field
        assert fld is not None
        out[f"raw_{fld}"] = value
        result, more = _field_value(
            entity, fld, value, mapping.codes, mapping.format, row_context, ctx
        )
        codes = (*more, *result.reasons)
        if fld not in REQUIRED[entity]:
            codes = tuple(c for c in codes if c not in _EMPTY)
        reasons += [f"{fld}:{code}" for code in codes]
        _place(entity, fld, result, out)
        if fld in ("birth_date", "sex") and result.value is not None:
            row_context[fld] = result.value
    out["updated_at"] = _updated_at(raw.get(table.change_column), table)
    if out["updated_at"] is None and raw.get(table.change_column) not in (None, ""):
        reasons.append(f"{table.change_column}:change_value_unparseable")
    out["extras"] = json.dumps(extras, ensure_ascii=False, sort_keys=True) if extras else None
    garbled = [
        f"{c}:invalid_encoding"
        for c in table.source_columns
        if isinstance(raw.get(c), str) and BAD_BYTES in raw[c]
    ]
    reasons += garbled
    out["reasons"] = reasons
    return out, reasons, not garbled and _usable(entity, out)


def _place(entity: str, fld: str, result: normalize.Normalized[Any], out: dict[str, Any]) -> None:
    value = result.value
    if fld == "address":
        if value is not None:
            parts = value.as_dict()
            out.update(
                address=parts["full"],
                province=parts["province"],
                city=parts["city"],
                district=parts["district"],
                division_code=parts["division_code"],
                address_detail=parts["detail"],
            )
        return
    if fld == "phone":
        out["phone"] = value
        out["phones_all"] = result.extra.get("all") if value is not None else None
        return
    if fld == "name" and entity == "person":
        out["name"] = value
        out["name_pinyin"] = normalize.name_pinyin(value) if value else None
        return
    if fld == "name":
        out["name"] = value
        out["name_key"] = result.extra.get("key") if value else None
        out["branch"] = result.extra.get("branch") if value else None
        return
    if fld == "registered_capital" and isinstance(value, Decimal):
        out[fld] = value.quantize(Decimal("0.0001"))
        return
    if isinstance(value, dt.datetime):
        value = value.date()
    out[fld] = value


# --- one department ---------------------------------------------------------------------------


def _raw_batches(path: Path, batch_rows: int) -> Iterator[list[dict[str, Any]]]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        yield batch.to_pylist()


def standardize_department(
    city: CityConfig,
    dept: DepartmentConfig,
    run_id: str,
    *,
    as_of: dt.date | None = None,
    batch_rows: int = 20_000,
    progress: Callable[[str, int], None] | None = None,
    batches: BatchRunner | None = None,
) -> DepartmentStandardized:
    """Standardize every table this department extracted in ``run_id``; never raises for its data.
    ``batches`` runs the kernel over each raw file (default: :func:`local_batches`, here).

    >>> r = standardize_department(city, city.department("gongan"), "2026-07-01")  # doctest: +SKIP
    >>> r.reconciled, r.status
    (True, 'ok')
    """
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
        _Context(city.division_code, as_of or night_date(city, run_id)),
        canonical_dir(city.var_dir, run_id, dept.code),
        batch_rows,
        progress,
        batches or local_batches,
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
    batches: BatchRunner


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
    with contextlib.ExitStack() as stack:
        rejects = stack.enter_context(
            ParquetSink(job.out_dir / "rejects.parquet", REJECT_SCHEMA, job.batch_rows, meta)
        )
        stack.callback(failpoints.reached, "standardize:closing")  # after the entity sinks
        sinks: dict[str, ParquetSink] = {}
        for table, path in sources:
            entity: str = table.entity
            if entity not in sinks:
                sinks[entity] = stack.enter_context(
                    ParquetSink(
                        job.out_dir / f"{entity}.parquet", SCHEMAS[entity], job.batch_rows, meta
                    )
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
class StandardizedBatch:
    """One batch of raw rows standardized (:func:`standardize_batch`): the canonical rows, the
    rejected rows, and the counts the department's result and checks add up."""

    rows: int
    good: pa.Table
    bad: pa.Table
    reject_reasons: Counter[str] = field(default_factory=Counter)
    field_reasons: Counter[str] = field(default_factory=Counter)
    filled: Counter[str] = field(default_factory=Counter)
    """column → values given"""
    unreadable: Counter[str] = field(default_factory=Counter)
    """column → values its configuration cannot read"""
    examples: dict[str, str] = field(default_factory=dict)
    """column → its first unreadable value"""


Kernel = Callable[[list[dict[str, Any]]], StandardizedBatch]
"""Standardizes one batch of raw rows (a :func:`standardize_batch` with its table bound)."""
BatchRunner = Callable[[TableConfig, Path, Kernel, int], Iterator[StandardizedBatch]]
"""Runs ``kernel`` over the raw file at ``path`` in batches of about ``batch_rows`` rows and
yields the standardized batches in the file's row order. The local engine reads the file here
(:func:`local_batches`); the Spark engine runs the same kernel inside Spark."""


def local_batches(
    table: TableConfig, path: Path, kernel: Kernel, batch_rows: int
) -> Iterator[StandardizedBatch]:
    """The local engine: the raw file read batch by batch in this process."""
    for rows in _raw_batches(path, batch_rows):
        yield kernel(rows)


def standardize_batch(
    department: str,
    entity: str,
    table: TableConfig,
    run_id: str,
    ctx: _Context,
    rows: list[dict[str, Any]],
) -> StandardizedBatch:
    """Standardize one batch of ``table``'s raw rows: the kernel every engine runs."""
    out = StandardizedBatch(0, SCHEMAS[entity].empty_table(), REJECT_SCHEMA.empty_table())
    columns = {m.field: c for c, m in table.columns.items() if m.field}
    columns[table.change_column] = table.change_column
    good, bad = [], []
    for raw in rows:
        canon, reasons, usable = standardize_row(entity, table, raw, ctx)
        _count_readable(table, raw, reasons, columns, out.filled, out.unreadable, out.examples)
        meta = {
            "department": department,
            "source_table": table.name,
            "source_key": raw["_row_key"],
            "run_id": run_id,
        }
        out.field_reasons.update(reasons)
        keyless = not (raw["_row_key"] or "").strip()  # NULL or blank primary key
        if usable and not keyless:
            good.append({**canon, **meta})
            continue
        garbled = any(c.endswith(":invalid_encoding") for c in reasons)
        codes = [
            *reasons,
            *(["row:key_missing"] if keyless else []),
            *([] if usable or garbled else ["row:row_unidentifiable"]),
        ]
        out.reject_reasons.update(codes)
        bad.append({**meta, "entity": entity, "reasons": codes, "raw": _raw_values(raw)})
    out.rows = len(rows)
    out.good = pa.Table.from_pylist(good, schema=SCHEMAS[entity])
    out.bad = pa.Table.from_pylist(bad, schema=REJECT_SCHEMA)
    return out


def _standardize_table(
    result: DepartmentStandardized,
    entity: str,
    table: TableConfig,
    path: Path,
    sink: ParquetSink,
    rejects: ParquetSink,
    job: _Job,
) -> None:
    """Standardize one raw table into its entity's sink and the rejects sink, counting."""
    filled: Counter[str] = Counter()
    unreadable: Counter[str] = Counter()
    examples: dict[str, str] = {}
    kernel = functools.partial(
        standardize_batch, result.department, entity, table, job.run_id, job.ctx
    )
    for batch in job.batches(table, path, kernel, job.batch_rows):
        filled.update(batch.filled)
        unreadable.update(batch.unreadable)
        for column, example in batch.examples.items():
            examples.setdefault(column, example)
        result.field_reasons.update(batch.field_reasons)
        result.reject_reasons.update(batch.reject_reasons)
        sink.write(batch.good)
        rejects.write(batch.bad)
        failpoints.reached("standardize:batch")
        result.rows_read += batch.rows
        result.standardized += batch.good.num_rows
        result.rejected += batch.bad.num_rows
        if job.progress:
            job.progress(result.department, batch.rows)
    for column, given in filled.items():
        if given >= CONFIG_SUSPECT_ROWS and unreadable[column] == given:
            raise ConfigSuspected(
                _config_suspect_message(result.department, table, column, given, examples[column])
            )


def _reject_duplicates(
    result: DepartmentStandardized,
    table: TableConfig,
    path: Path,
    rejects: ParquetSink,
    run_id: str,
) -> None:
    """Every copy of a key the source holds more than once goes to rejects: which one is
    the department's row cannot be told, and linking one would re-point the key."""
    codes = [f"{c}:duplicate_key" for c in table.primary_key]
    for rows in _raw_batches(path, 20_000):
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


def _count_readable(
    table: TableConfig,
    raw: dict[str, Any],
    reasons: list[str],
    columns: dict[str, str],
    filled: Counter[str],
    unreadable: Counter[str],
    examples: dict[str, str],
) -> None:
    bad = {code.partition(":")[0] for code in reasons if code.partition(":")[2] in UNPARSEABLE}
    for fld, column in columns.items():
        value = raw.get(column)
        if value is None or not str(value).strip():
            continue
        filled[column] += 1
        if fld in bad:
            unreadable[column] += 1
            examples.setdefault(column, str(value))


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
) -> list[DepartmentStandardized]:
    """Standardize every (or the named) department of ``run_id``, one failure stopping none."""
    chosen = [d for d in city.departments if departments is None or d.code in departments]
    return [standardize_department(city, d, run_id, as_of=as_of, progress=progress) for d in chosen]
