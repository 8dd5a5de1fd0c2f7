"""How fast extraction reads a PostgreSQL table compared with a bare COPY, and how much memory.

    .venv/bin/python bench/extract_bench.py --sizes 250000 1000000

Loads an ``insured_person`` table shaped like the sample city's 人社 table into a throwaway
database (INSERT ... SELECT generate_series), then for each size times (a) psycopg's
``COPY (SELECT ...) TO STDOUT`` into a sink that only counts bytes and (b) govmdm's extraction of
the same table to Parquet, each in a fresh process so that its peak RSS is its own (best of
``--repeat`` runs after the imports). Prints rows/s, the ratio (target ≥ 0.5) and peak RSS per size
(target: flat as the table grows), with the RSS right after the imports for reference. The
database is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from etl.sample_city.departments import RENSHE
from etl.sample_city.generate import drop_database, recreate_database

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [c.name for c in RENSHE.table.columns]

# Values shaped like the sample city's: Chinese names and insurance types, 18-character IDs,
# 11-digit mobiles, credit codes, one modification time per row.
_FILL = sa.text(
    """
    INSERT INTO insured_person (person_id, full_name, id_no, gender, birth_date, mobile,
                                employer_uscc, insurance_type, last_modified)
    SELECT g,
           (ARRAY['张','王','李','陈','林','黄'])[1 + g % 6]
               || (ARRAY['伟','芳','秀英','志强'])[1 + g % 4],
           '350102' || to_char(date '1950-01-01' + (g % 25000), 'YYYYMMDD')
                    || lpad((g % 1000)::text, 3, '0') || (g % 10)::text,
           CASE WHEN g % 2 = 0 THEN '男' ELSE '女' END,
           date '1950-01-01' + (g % 25000),
           CASE WHEN g % 10 = 0 THEN NULL
                ELSE '1' || lpad(((g::bigint * 7919) % 10000000000)::text, 10, '0') END,
           '91350100M' || lpad((g % 100000000)::text, 9, '0'),
           (ARRAY['城镇职工基本养老保险','职工基本医疗保险','失业保险'])[1 + g % 3],
           timestamp '2024-01-01' + g * interval '17 second'
    FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS g
    """
)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_copy(url: str, repeat: int) -> dict[str, Any]:
    """(a) COPY the table's rows into a sink that only counts bytes; the best of ``repeat``."""
    import psycopg
    from psycopg import sql

    select = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS), sql.Identifier("insured_person")
    )
    statement = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(select)
    dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    before = _peak_mib()
    best, rows = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(statement) as copy:
            rows = sum(1 for _block in copy)  # one block per row in COPY TO
        best = min(best, time.perf_counter() - t0)
    return {"rows": rows, "seconds": best, "start_mib": before, "peak_mib": _peak_mib()}


def child_extract(url: str, repeat: int, fast_path: bool) -> dict[str, Any]:
    """(b) govmdm's extraction of the same table to Parquet (a full snapshot); best of
    ``repeat``, each a separate run id."""
    var = Path(tempfile.mkdtemp(prefix="govmdm-extract-bench-"))
    os.environ["GOVMDM_VAR"] = str(var)
    os.environ.pop("GOVMDM_WAREHOUSE_URL", None)
    os.environ["GOVMDM_CONN_RENSHE"] = url
    from etl.config import load_city_config
    from etl.extract import extract_department

    city = load_city_config(ROOT / "config")
    # Imported lazily on first use (~0.4 s once per process: pyarrow's ParquetWriter pulls in
    # pandas, create_engine the psycopg dialect): start-up, like the COPY side's imports.
    import pandas  # noqa: F401
    import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401

    before = _peak_mib()
    best, rows, size = float("inf"), 0, 0.0
    try:
        for i in range(repeat):
            t0 = time.perf_counter()
            result = extract_department(
                city, city.department("renshe"), f"bench-{i}", full=True, fast_path=fast_path
            )
            best = min(best, time.perf_counter() - t0)
            if result.status != "ok":
                raise SystemExit(result.message)
            table = result.tables[0]
            assert table.parquet_path is not None
            rows, size = table.rows_read, table.parquet_path.stat().st_size / 2**20
    finally:
        shutil.rmtree(var, ignore_errors=True)
    return {
        "rows": rows,
        "seconds": best,
        "parquet_mib": size,
        "start_mib": before,
        "peak_mib": _peak_mib(),
    }


def _run_child(kind: str, url: str, repeat: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--url", url, "--repeat", str(repeat)],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _load(engine: sa.Engine, first: int, last: int) -> float:
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(_FILL, {"first": first, "last": last})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE insured_person")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250_000, 1_000_000])
    parser.add_argument(
        "--server",
        default=os.environ.get(
            "GOVMDM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL URL whose user may create databases",
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best counts")
    parser.add_argument(
        "--generic", action="store_true", help="also time the SQLAlchemy path (no COPY)"
    )
    parser.add_argument("--child", choices=["copy", "extract", "generic"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child == "copy":
            report = child_copy(args.url, args.repeat)
        else:
            report = child_extract(args.url, args.repeat, fast_path=args.child == "extract")
        print(json.dumps(report))
        return

    name = f"govmdm_bench_{uuid.uuid4().hex[:8]}"
    url = sa.make_url(args.server).set(database=name).render_as_string(hide_password=False)
    recreate_database(url)
    engine = sa.create_engine(url)
    try:
        RENSHE.metadata.create_all(engine)
        loaded = 0
        print(f"database {name}; table insured_person ({', '.join(COLUMNS)})")
        header = (
            f"{'rows':>10}  {'COPY rows/s':>12}  {'govmdm rows/s':>13}  {'ratio':>5}  "
            f"{'COPY peak RSS':>13}  {'govmdm peak RSS':>15}  {'(after imports)':>15}  "
            f"{'parquet':>8}"
        )
        print(header)
        for size in sorted(args.sizes):
            if size > loaded:
                load_s = _load(engine, loaded + 1, size)
                print(f"  (loaded {size - loaded:,} rows in {load_s:.1f} s)", file=sys.stderr)
                loaded = size
            copy = _run_child("copy", url, args.repeat)
            ours = _run_child("extract", url, args.repeat)
            assert copy["rows"] == ours["rows"] == size, (copy, ours, size)
            copy_rate = size / copy["seconds"]
            our_rate = size / ours["seconds"]
            print(
                f"{size:>10,}  {copy_rate:>12,.0f}  {our_rate:>13,.0f}  "
                f"{our_rate / copy_rate:>5.2f}  {copy['peak_mib']:>9.0f} MiB  "
                f"{ours['peak_mib']:>11.0f} MiB  {ours['start_mib']:>11.0f} MiB  "
                f"{ours['parquet_mib']:>4.1f} MiB"
            )
            if args.generic:
                generic = _run_child("generic", url, 1)
                print(
                    f"{'':>10}  SQLAlchemy path (no COPY): {size / generic['seconds']:,.0f} "
                    f"rows/s, peak RSS {generic['peak_mib']:.0f} MiB"
                )
        print("target: ratio ≥ 0.5; govmdm peak flat as rows grow")
    finally:
        engine.dispose()
        drop_database(url)


if __name__ == "__main__":
    main()
