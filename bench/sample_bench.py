"""How fast the sample city generates: rows per second and peak memory at about a million rows.

    .venv/bin/python bench/sample_bench.py --persons 265000 --enterprises 30000

Prints one line per department and a total; the target (issue 2) is 1,000,000 person rows in
minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from etl.sample_city.generate import generate_city, next_night


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=265_000)
    parser.add_argument("--enterprises", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="govmdm-bench-"))
    t0 = time.perf_counter()
    manifest = generate_city(
        out, persons=args.persons, enterprises=args.enterprises, seed=args.seed
    )
    elapsed = time.perf_counter() - t0
    t1 = time.perf_counter()
    night = next_night(out)
    night_s = time.perf_counter() - t1
    rows = manifest["rows"]
    person_rows = sum(rows[d] for d in ("gongan", "renshe", "minzheng", "weijian"))
    for dept, n in rows.items():
        print(f"{dept:<10} {n:>10,} rows")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"person rows {person_rows:,}; all rows {sum(rows.values()):,}")
    rate = sum(rows.values()) / elapsed
    print(f"generate: {elapsed:.1f} s, {rate:,.0f} rows/s, peak {peak_mib:,.0f} MiB")
    changed = sum(sum(c.values()) for c in night["last_changes"].values())
    print(f"next night: {changed:,} changed rows in {night_s:.1f} s")
    print(f"output: {out}")


if __name__ == "__main__":
    main()
