"""``govmdm export``: the published tables as Parquet, one file per view, with a data
dictionary and a manifest — masked for an analyst, in clear for a privileged user, and with
keyed pseudonyms (:mod:`access.pseudonyms`) on top of either if asked.

>>> export(city, Path("out"), views=["v_person"]).files["person"].name
'person.parquet'
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from access import audit
from access.catalog import column_description, data_dictionary
from access.policy import Role
from access.pseudonyms import pseudonym_key, pseudonymize_rows
from access.query import fetch, scrub_frame
from access.release import VIEW_BY_NAME, VIEWS, Release, ViewSpec, parquet_type, release_of
from access.session import resolve_role, session
from access.viewsql import CARRIED, dialect_of, view_select
from etl.config import CityConfig
from store.warehouse import latest_run


@dataclass
class ExportResult:
    """What ``govmdm export`` wrote."""

    out_dir: Path
    role: Role
    pseudonymized: bool
    files: dict[str, Path] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    dictionary: Path | None = None
    scrubbed: int = 0


def export(
    city: CityConfig,
    out_dir: Path | None = None,
    *,
    privileged: bool = False,
    pseudonymize: bool = False,
    views: Sequence[str] | None = None,
) -> ExportResult:
    """Write the published tables as Parquet (one file per view, e.g. ``person.parquet``) with
    ``data_dictionary.parquet`` / ``.csv`` and ``manifest.json``.

    The analyst export reads the masked views the way ``govmdm query`` does (PostgreSQL: as the
    analyst role). ``privileged`` exports the full views. ``pseudonymize`` replaces master IDs,
    ID numbers and source keys by keyed tokens (:func:`pseudonym`), on top of either.
    """
    role = resolve_role(city, privileged, action="export")
    key = pseudonym_key() if pseudonymize else None
    release = release_of(city)
    specs = [VIEW_BY_NAME[v] for v in views] if views else list(VIEWS)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = f"{role}{'-pseudonymized' if pseudonymize else ''}"
    target = out_dir or city.var_dir / "exports" / f"{stamp}-{suffix}"
    target.mkdir(parents=True, exist_ok=True)
    result = ExportResult(target, role, pseudonymize)
    with session(city, export=True) as own:
        engine = own.engine
        entry = audit.begin(
            engine,
            "export",
            str(target),
            role=role,
            detail={"format": "parquet", "pseudonymized": pseudonymize},
        )
        try:
            for spec in specs:
                _export_view(result, city, engine, spec, key, release)
            dictionary = data_dictionary(city, specs, role=role, pseudonymized=key is not None)
            result.dictionary = _write_dictionary(dictionary, target)
            _write_manifest(result, city, engine)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                audit.finish(engine, entry, outcome="failed", detail={"reason": str(exc)})
            raise
        audit.finish(
            engine,
            entry,
            row_count=sum(result.rows.values()),
            detail={"rows": result.rows, "scrubbed": result.scrubbed},
        )
    return result


def _export_view(
    result: ExportResult,
    city: CityConfig,
    engine: sa.Engine,
    spec: ViewSpec,
    key: bytes | None,
    release: Release,
) -> None:
    """Read one view as the caller's role sees it and write it as Parquet into the export."""
    rows = _export_rows(engine, spec, result.role, key, release)
    frame = pd.DataFrame.from_records(rows, columns=spec.columns)
    if result.role == "analyst":
        frame, hits = scrub_frame(frame, skip=list(spec.pseudonyms) if key else ())
        result.scrubbed += hits
    path = result.out_dir / f"{spec.export_name}.parquet"
    _write_parquet(frame, spec, path, role=result.role, pseudonymized=key is not None, city=city)
    result.files[spec.export_name] = path
    result.rows[spec.export_name] = len(frame)


def _export_rows(
    engine: sa.Engine, spec: ViewSpec, role: Role, key: bytes | None, release: Release
) -> list[dict[str, Any]]:
    if key is None:
        name = spec.name if role == "analyst" else spec.full_name
        got = fetch(engine, f"SELECT * FROM {name}", role)
        return [dict(zip(got.columns, r, strict=True)) for r in got.frame.itertuples(index=False)]
    if role == "privileged":
        got = fetch(engine, f"SELECT * FROM {spec.full_name}", "privileged")
        rows = [dict(zip(got.columns, r, strict=True)) for r in got.frame.itertuples(index=False)]
        return pseudonymize_rows(spec, rows, key)
    # Tokens are computed from clear values (the same ID gives the same token everywhere): the
    # platform runs the masked view's own SELECT with the pseudonymized columns carried in clear.
    carry = list(spec.pseudonyms)
    select = view_select(spec, dialect_of(engine), masked=True, release=release, carry=carry)
    got = fetch(engine, select, "privileged")
    out = []
    for r in got.frame.itertuples(index=False):
        row = dict(zip(got.columns, r, strict=True))
        masked = {c: row[c] for c in spec.columns}
        clear = masked | {c: row[f"{CARRIED}{c}"] for c in carry}
        tokens = pseudonymize_rows(spec, [clear], key)[0]
        out.append(
            {
                c: (tokens[c] if c in carry and tokens[c] != clear[c] else masked[c])
                for c in spec.columns
            }
        )
    return out


def _write_parquet(
    frame: pd.DataFrame,
    spec: ViewSpec,
    path: Path,
    *,
    role: Role,
    pseudonymized: bool,
    city: CityConfig,
) -> None:
    fields = []
    arrays = []
    for column in spec.table.columns:
        arrow_type = parquet_type(spec, column, role=role, pseudonymized=pseudonymized)
        values = [_coerce(v, arrow_type) for v in frame[column.name].tolist()]
        arrays.append(pa.array(values, arrow_type))
        description = column_description(spec.table.name, column.name)
        fields.append(pa.field(column.name, arrow_type, metadata={"description": description}))
    schema = pa.schema(
        fields,
        metadata={"govmdm.view": spec.name, "govmdm.role": role, "govmdm.city": city.name},
    )
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)


def _coerce(value: Any, arrow_type: Any) -> Any:
    """A value from either backend (SQLite gives dates as text) as ``arrow_type`` takes it."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NaT:
        return None
    if pa.types.is_string(arrow_type):
        return str(value)
    if pa.types.is_timestamp(arrow_type):
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        return value.to_pydatetime() if isinstance(value, pd.Timestamp) else value
    if pa.types.is_date(arrow_type):
        if isinstance(value, str):
            return dt.date.fromisoformat(value[:10])
        return value.date() if isinstance(value, dt.datetime) else value
    if pa.types.is_decimal(arrow_type):
        return decimal.Decimal(str(value))
    if pa.types.is_integer(arrow_type):
        return int(value)
    if pa.types.is_floating(arrow_type):
        return float(value)
    return value


def _write_dictionary(dictionary: pd.DataFrame, target: Path) -> Path:
    path = target / "data_dictionary.parquet"
    dictionary.to_parquet(path, index=False)
    dictionary.to_csv(target / "data_dictionary.csv", index=False, encoding="utf-8-sig")
    return path


def _write_manifest(result: ExportResult, city: CityConfig, engine: sa.Engine) -> None:
    run = latest_run(engine)
    manifest = {
        "city": city.name,
        "night": run["run_id"] if run else None,
        "role": result.role,
        "pseudonymized": result.pseudonymized,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "created_by": audit.who(engine),
        "files": {k: p.name for k, p in result.files.items()},
        "rows": result.rows,
        "dictionary": "data_dictionary.parquet",
    }
    (result.out_dir / "manifest.json").write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
