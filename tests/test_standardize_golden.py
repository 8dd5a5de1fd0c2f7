"""Standardization's output is pinned: the sample city, standardized with a fixed reference date,
gives exactly the canonical rows, rejects and counts recorded in ``data/standardize_golden.json``.

Every row of every output (person, enterprise, rejects) of every department is hashed in key
order, with the file's schema, and each department's counts of rows and reasons are kept beside
them. A change of the output is a change of behaviour: when it is meant, regenerate the file on
purpose and commit it with the change that explains it::

    GOVMDM_UPDATE_GOLDEN=1 .venv/bin/pytest -q tests/test_standardize_golden.py
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sample_cities import CityFactory

from etl.config import CityConfig
from etl.extract import ROW_KEY
from etl.standardize import DepartmentStandardized, standardize_all
from store.layout import canonical_dir, duplicates_path, raw_path

GOLDEN = Path(__file__).parent / "data" / "standardize_golden.json"
UPDATE = os.environ.get("GOVMDM_UPDATE_GOLDEN") == "1"
# The city of test_standardize.py (one shared build), standardized again in a copy.
SPEC: dict[str, Any] = dict(
    persons=1500, enterprises=250, seed=21, until="standardized", run_id="2026-07-01"
)
AS_OF = dt.date(2026, 7, 1)


def _text(value: Any) -> Any:
    """A cell as JSON can hold it, its type kept apart from a string of the same text."""
    if isinstance(value, dt.datetime | dt.date | Decimal):
        return [type(value).__name__, str(value)]
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, tuple):  # a map's (key, value) pair
        return [_text(v) for v in value]
    return value


def table_digest(table: pa.Table) -> dict[str, Any]:
    """Rows, schema (without the run's metadata) and a hash of every row, in key order."""
    lines = sorted(
        (row["source_table"], row["source_key"] or "", json.dumps(_text(list(row.values()))))
        for row in table.to_pylist()
    )
    digest = hashlib.blake2b(digest_size=16)
    for line in lines:
        digest.update("\x1f".join(line).encode("utf-8") + b"\n")
    schema = table.schema.remove_metadata()
    return {
        "rows": table.num_rows,
        "schema": hashlib.blake2b(str(schema).encode(), digest_size=8).hexdigest(),
        "content": digest.hexdigest(),
    }


def department_digest(city: CityConfig, run_id: str, r: DepartmentStandardized) -> dict[str, Any]:
    folder = canonical_dir(city.var_dir, run_id, r.department)
    return {
        "status": r.status,
        "rows_read": r.rows_read,
        "standardized": r.standardized,
        "rejected": r.rejected,
        "reject_reasons": dict(sorted(r.reject_reasons.items())),
        "field_reasons": dict(sorted(r.field_reasons.items())),
        "outputs": {
            path.name: table_digest(pq.read_table(path))
            for path in sorted(folder.glob("*.parquet"))
        },
    }


def digests(city: CityConfig, run_id: str, **options: Any) -> dict[str, Any]:
    results = standardize_all(city, run_id, as_of=AS_OF, **options)
    return {r.department: department_digest(city, run_id, r) for r in results}


def plant(city: CityConfig, run_id: str) -> None:
    """Add to each raw table rows of every kind standardization must reject or repair (the
    sample city's sources have none of some): keyless, blank key, garbled bytes, nothing to
    identify, an unreadable change time, codes and values of no configured form, and a key held
    twice."""
    for dept in city.departments:
        for t in dept.tables:
            path = raw_path(city.var_dir, run_id, dept.code, t.name)
            table = pq.read_table(path)
            first = table.slice(0, 6).to_pylist()
            columns = [c for c in table.column_names if c not in (ROW_KEY, t.change_column)]
            planted = []
            for i, row in enumerate(first):
                row = {**row, ROW_KEY: f"{row[ROW_KEY]}~{i}"}
                if i == 0:
                    row[ROW_KEY] = None
                elif i == 1:
                    row[ROW_KEY] = "  "
                elif i == 2:
                    row[columns[-1]] = f"{row[columns[-1]] or ''}\ufffd"
                elif i == 3:
                    row.update({c: None for c in columns if c not in t.primary_key})
                elif i == 4:
                    row[t.change_column] = "yesterday"
                else:
                    row.update({c: "ZZ 9/9" for c in columns if c not in t.primary_key})
                planted.append(row)
            pq.write_table(
                pa.concat_tables([table, pa.Table.from_pylist(planted, schema=table.schema)]),
                path,
            )
            twice = pa.Table.from_pylist([first[0], first[0]], schema=table.schema)
            pq.write_table(twice, duplicates_path(city.var_dir, run_id, dept.code, t.name))


@pytest.fixture(scope="module")
def city(make_city: CityFactory) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        city = make_city(mp, copy=True, as_of=AS_OF, **SPEC)
        plant(city, SPEC["run_id"])
        yield city


@pytest.mark.parametrize("workers", [1, 2])
def test_standardized_output_is_the_pinned_one(city: CityConfig, workers: int) -> None:
    """In this process (one worker) or departments side by side in worker processes."""
    got = digests(city, SPEC["run_id"], workers=workers)
    if UPDATE and workers == 1:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert set(got) == set(expected)
    for dept, pinned in expected.items():
        assert got[dept] == pinned, dept


def test_workers_run_departments_in_other_processes(city: CityConfig) -> None:
    import etl.standardize as std

    told: list[tuple[str, int]] = []
    results = std.standardize_all(
        city, SPEC["run_id"], as_of=AS_OF, workers=2, progress=lambda d, n: told.append((d, n))
    )
    assert [r.department for r in results] == [d.code for d in city.departments]
    assert told == [(r.department, r.rows_read) for r in results]  # once each, when done
    assert all(r.status == "ok" and r.reconciled and r.cpu_seconds > 0 for r in results)


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_of_city_yaml_decide_the_processes(
    city: CityConfig, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``workers: 1`` runs every department here, one after another, ``workers: 2`` in a pool of
    two processes; the output is the pinned one either way."""
    import etl.standardize as std

    here: list[str] = []
    pools: list[int] = []
    real = std.standardize_department

    def recorded(city: CityConfig, dept: Any, *args: Any, **kwargs: Any) -> Any:
        here.append(dept.code)
        return real(city, dept, *args, **kwargs)

    class Pool(std.ProcessPoolExecutor):
        def __init__(self, n: int, **kwargs: Any) -> None:
            pools.append(n)
            super().__init__(n, **kwargs)

    if workers == 1:  # a pool's processes would have to pickle this function
        monkeypatch.setattr(std, "standardize_department", recorded)
    monkeypatch.setattr(std, "ProcessPoolExecutor", Pool)
    configured = city.model_copy(update={"workers": workers})
    results = std.standardize_all(configured, SPEC["run_id"], as_of=AS_OF)
    assert (here, pools) == (
        ([d.code for d in city.departments], []) if workers == 1 else ([], [2])
    )
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert {r.department: department_digest(city, SPEC["run_id"], r) for r in results} == expected


def test_small_batches_and_a_small_memo_change_nothing(
    city: CityConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values remembered across batches, or forgotten between them, give the same rows."""
    import etl.standardize as std

    real, calls = std._normalize_once, [0]

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(std, "_normalize_once", counted)
    run_id = SPEC["run_id"]
    weijian = city.department("weijian")
    std.standardize_department(city, weijian, run_id, as_of=AS_OF, batch_rows=97)
    remembered, calls[0] = calls[0], 0
    monkeypatch.setattr(std, "MEMO_ENTRIES", 10)
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    for dept in city.departments:
        calls[0] = 0
        r = std.standardize_department(city, dept, run_id, as_of=AS_OF, batch_rows=97)
        assert department_digest(city, run_id, r) == expected[dept.code], dept.code
        if dept.code == "weijian":
            assert calls[0] > remembered  # it did forget


def test_stamps_read_at_once_are_those_read_one_by_one(city: CityConfig) -> None:
    """Every change stamp of the sample city (and the planted ones) that the vectorised reader
    takes is read as :func:`_updated_at` reads it alone; impossible days stay unreadable."""
    import etl.standardize as std

    taken = 0
    for dept in city.departments:
        for t in dept.tables:
            path = raw_path(city.var_dir, SPEC["run_id"], dept.code, t.name)
            values = pq.read_table(path, columns=[t.change_column]).column(0).to_pylist()
            edge = ["20230229000000", "2024-02-29 23:59:59", "2023-02-29 00:00:00", "0000-01-01"]
            values += [*edge, "2024-04-31T12:00:00", "1900-02-29 00:00:00", "20000229120000"]
            times, read = std._stamps_at_fixed_places(t, values)
            for v, got, r in zip(values, times, read, strict=True):
                assert got == (std._updated_at(v, t, city.timezone) if r else None), (t.name, v)
            taken += int(read.sum())
    assert taken > 1000  # the sample city's stamps are nearly all of the fixed forms


def test_the_memo_holds_one_night_and_its_newest_values(
    city: CityConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-lived process keeps at most MEMO_ENTRIES values per field, the newest, and only
    the night it standardizes now."""
    import etl.standardize as std

    run_id, weijian = SPEC["run_id"], city.department("weijian")
    monkeypatch.setattr(std, "MEMO_ENTRIES", 50)
    std.standardize_department(city, weijian, run_id, as_of=AS_OF, batch_rows=200)
    assert std._SHARED_NIGHT[0].as_of == AS_OF
    memos = [m for k, m in std._SHARED_FIELDS.items() if k[0] == "person"]
    assert memos and all(len(m) <= 50 + 200 for m in memos)
    memo = {i: i for i in range(120)}
    std._bound(memo)
    assert list(memo) == list(range(95, 120))  # the newest half of MEMO_ENTRIES kept
    later = AS_OF + dt.timedelta(days=1)
    std.standardize_department(city, weijian, run_id, as_of=later, batch_rows=200)
    assert {k[-1].as_of for k in std._SHARED_FIELDS if k[0] != "route"} == {later}
    std._SHARED_FIELDS.clear()
    std._SHARED_NIGHT.clear()


def test_name_readings_are_pypinyin_s_on_the_city_s_names(city: CityConfig) -> None:
    """Names read word by word (pypinyin's segmentation, each word remembered) give what
    pypinyin reads for the whole text, for every person name of the sample city."""
    from pypinyin import Style, lazy_pinyin

    from fields import normalize

    names: set[str] = set()
    for dept in city.departments:
        for t in dept.tables:
            path = raw_path(city.var_dir, SPEC["run_id"], dept.code, t.name)
            table = pq.read_table(path)
            for column, mapping in t.columns.items():
                if mapping.field in ("name", "legal_rep_name") and column in table.column_names:
                    names.update(v for v in table.column(column).to_pylist() if v)
    read = 0
    for raw in names:
        name = normalize.person_name(raw).value
        for text in {name, name[1:], name[2:]} - {"", None} if name else ():
            want = "".join(lazy_pinyin(text, style=Style.NORMAL))
            assert normalize._reading.__wrapped__(text) == want, text
            read += 1
    assert read > 1000


def test_a_worker_that_dies_fails_its_department_not_the_call(
    city: CityConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(Last in this module: it leaves 民政's output unfinished.)"""
    import etl.standardize as std

    real = std.standardize_rows

    def dying(entity: str, table: Any, *args: Any) -> Any:
        if table.name == "社会救助对象":
            os._exit(9)  # as a worker killed for its memory would
        return real(entity, table, *args)

    monkeypatch.setattr(std, "standardize_rows", dying)
    results = {r.department: r for r in std.standardize_all(city, SPEC["run_id"], workers=2)}
    assert results["minzheng"].status == "failed"
    assert "worker process ended" in results["minzheng"].message
    assert std.unfinished(city, city.department("minzheng"), SPEC["run_id"])
    assert set(results) == {d.code for d in city.departments}
