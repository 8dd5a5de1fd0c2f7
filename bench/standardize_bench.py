"""How fast standardization runs on the sample city: rows per CPU-second, wall time, peak RSS.

    .venv/bin/python bench/standardize_bench.py --persons 200000 [--workers 2] [--repeat 3]

Generates the sample city (``--enterprises`` defaults to persons / 8) and extracts it once into
``--var`` (kept there and reused when given), then standardizes its first night ``--repeat``
times, each in a fresh process, and prints the median run: per department and in total, rows,
wall seconds, CPU seconds (the process and its worker processes), rows per CPU-second and peak
RSS, with the load average beside it. The target (issue 15) is ≥ 25,000 rows per CPU-second.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUN = "2026-06-30"  # the sample city's first night
AS_OF = dt.date(2026, 6, 30)


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024  # KiB on Linux


def prepare(var: Path, persons: int, enterprises: int) -> None:
    """Generate and extract the city into ``var`` unless it is there already."""
    os.environ["GOVMDM_VAR"] = str(var)
    os.environ.pop("GOVMDM_WAREHOUSE_URL", None)
    from etl.config import load_city_config
    from etl.extract import extract_all
    from etl.sample_city.generate import generate_city

    done = var / "bench-prepared.json"
    wanted = {"persons": persons, "enterprises": enterprises}
    if done.is_file() and json.loads(done.read_text()) == wanted:
        return
    t0 = time.perf_counter()
    generate_city(var / "city", persons=persons, enterprises=enterprises, seed=1)
    results = extract_all(load_city_config(ROOT / "config"), RUN)
    assert all(r.ok for r in results), results
    done.write_text(json.dumps(wanted))
    print(f"(generated and extracted in {time.perf_counter() - t0:.0f} s)", file=sys.stderr)


def child(var: Path, workers: int) -> dict[str, Any]:
    """One standardization of the whole city in this (fresh) process."""
    os.environ["GOVMDM_VAR"] = str(var)
    os.environ.pop("GOVMDM_WAREHOUSE_URL", None)
    from etl.config import load_city_config
    from etl.standardize import standardize_all, standardize_department

    city = load_city_config(ROOT / "config")
    depts: dict[str, dict[str, float]] = {}
    wall0, cpu0 = time.perf_counter(), _cpu()
    if workers == 1:  # in this process: each department's own figures
        for dept in city.departments:
            w, c = time.perf_counter(), _cpu()
            r = standardize_department(city, dept, RUN, as_of=AS_OF)
            assert r.status == "ok", r
            depts[dept.code] = {
                "rows": r.rows_read,
                "wall": time.perf_counter() - w,
                "cpu": _cpu() - c,
                "peak_mib": _peak_mib(),
            }
    else:
        for r in standardize_all(city, RUN, as_of=AS_OF, workers=workers):
            assert r.status == "ok", r
            depts[r.department] = {
                "rows": r.rows_read,
                "wall": r.wall_seconds,
                "cpu": r.cpu_seconds,
                "peak_mib": float("nan"),
            }
    total = {
        "rows": sum(d["rows"] for d in depts.values()),
        "wall": time.perf_counter() - wall0,
        "cpu": _cpu() - cpu0,
        "peak_mib": _peak_mib(),
    }
    return {"departments": depts, "total": total}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose total CPU seconds are the median."""
    return sorted(runs, key=lambda r: r["total"]["cpu"])[len(runs) // 2]


def _line(name: str, d: dict[str, float]) -> str:
    rate = d["rows"] / d["cpu"] if d["cpu"] else float("nan")
    return (
        f"{name:<10} {d['rows']:>10,.0f} {d['wall']:>8.1f} {d['cpu']:>8.1f} {rate:>12,.0f} "
        f"{d['peak_mib']:>9.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--persons", type=int, default=200_000)
    parser.add_argument("--enterprises", type=int, default=None, help="default: persons / 8")
    parser.add_argument("--workers", type=int, default=1, help="processes; 1 = in-process")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median is printed")
    parser.add_argument("--var", type=Path, default=None, help="keep the city here (reused)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    var = args.var or Path(tempfile.mkdtemp(prefix="govmdm-std-bench-"))
    if args.child:
        print(json.dumps(child(var, args.workers)))
        return
    try:
        prepare(var, args.persons, args.enterprises or max(1, args.persons // 8))
        runs, loads = [], []
        for _ in range(args.repeat):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "--var",
                    str(var),
                    "--workers",
                    f"{args.workers}",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            loads.append(os.getloadavg()[0])
        best = _median_run(runs)
        cpus = ", ".join(f"{r['total']['cpu']:.1f}" for r in runs)
        print(
            f"standardize, sample city of {args.persons:,} persons, workers={args.workers}, "
            f"median of {args.repeat} (CPU s of all runs: "
            f"{cpus}); "
            f"load average after each run: {', '.join(f'{x:.1f}' for x in loads)}"
        )
        print(
            f"{'department':<10} {'rows':>10} {'wall s':>8} {'CPU s':>8} {'rows/CPU-s':>12} "
            f"{'peak MiB':>9}"
        )
        for code, d in best["departments"].items():
            print(_line(code, d))
        print(_line("total", best["total"]))
        print("target: ≥ 25,000 rows per CPU-second")
    finally:
        if args.var is None:
            shutil.rmtree(var, ignore_errors=True)


if __name__ == "__main__":
    main()
