"""How much more a second core gets done on this machine, for work like the link's.

    .venv/bin/python bench/cores_bench.py              # 3 runs of each, medians

The Spark link's speedup (``bench/scale_bench.py --engine spark``: ``local[1] / local[2]``) can
be no better than what two processes doing the link's kind of work (pandas and numpy over
millions of rows: sorts, hashing, gathers) get done side by side against one alone. Two vCPUs
may be two cores that share a memory bus and cache, or less: this prints, for a pure-Python
loop and for pandas work, one process's wall alone, each of two processes' wall side by side,
and the throughput of the two against one (2.0: a second core doubles the work done; the
Spark goal of 1.5 needs more than 1.5 here, with room for the link's serial part).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

KERNELS = ("python", "pandas")
SETUP_S = 8.0
"""Seconds a child is given to import pandas and build its rows before the work starts."""


def kernel(name: str, start: float) -> None:
    """One run of ``name``'s work in this process, begun at ``start`` (epoch seconds: side by
    side processes then work at the same time), its wall time printed."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(20261206)
    frame = pd.DataFrame(
        {
            "key": rng.integers(0, 200_000, 2_000_000).astype(str),
            "value": rng.random(2_000_000),
        }
    )
    time.sleep(max(0.0, start - time.time()))
    t0 = time.perf_counter()
    if name == "python":
        total = 0
        for i in range(20_000_000):
            total += i * i
    else:
        for _ in range(3):
            frame.sort_values("key").groupby("key", sort=False)["value"].sum()
            pd.util.hash_array(frame["key"].to_numpy())
    print(f"{time.perf_counter() - t0:.3f}")


def _walls(name: str, side_by_side: int) -> list[float]:
    """The wall seconds of ``side_by_side`` processes each running ``name`` at once."""
    start = str(time.time() + SETUP_S)
    command = [sys.executable, __file__, "--child", name, "--start", start]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(side_by_side)
    ]
    return [float(p.communicate()[0].strip()) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=KERNELS, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kernel(args.child, args.start)
        return
    one, five, _ = os.getloadavg()
    print(f"{os.cpu_count()} CPUs; load {one:.2f}/{five:.2f} (1/5 min); medians of {args.repeat}")
    for name in KERNELS:
        alone = [_walls(name, 1)[0] for _ in range(args.repeat)]
        paired = [max(_walls(name, 2)) for _ in range(args.repeat)]
        a, p = statistics.median(alone), statistics.median(paired)
        print(
            f"{name:<7} alone {a:6.2f} s, two side by side {p:6.2f} s each: "
            f"two cores do {2 * a / p:.2f} times the work of one "
            f"(alone {', '.join(f'{w:.2f}' for w in alone)}; "
            f"two {', '.join(f'{w:.2f}' for w in paired)})"
        )


if __name__ == "__main__":
    main()
