"""How long a department's quality suite takes through Great Expectations, and how much memory.

    .venv/bin/python bench/quality_bench.py --rows 10000 100000 [--per-check]

Synthetic raw person rows (made here, not by the sample city) with a few percent of planted
dirt in every checked column, validated with nine checks of every kind (not_null, unique,
in_set, regex, valid: ID number, date, phone, division code). GX's import
and context start-up are timed apart, once per process, as a nightly worker pays them once.
Each size is validated twice: the second run shows the cost without first-use caches.
Peak RSS is the process's high-water mark so far. ``--per-check`` times each check alone
on the largest frame.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pandas as pd

from fields.identifiers import id_check_digit
from quality import checks as qc

DIVISIONS = ["350102", "350103", "350104", "350105", "350111", "350112", "350121", "350122"]
SURNAMES = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾")
GIVEN = list("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红梅海峰建国志")

CHECKS = [
    qc.Check("B-01", "not_null", "sfzh"),
    qc.Check("B-02", "valid", "sfzh", {"validator": "id_number"}, threshold=0.95),
    qc.Check("B-03", "unique", "rkbh"),
    qc.Check("B-04", "in_set", "xb", {"value_set": ["男", "女"]}),
    qc.Check("B-05", "regex", "xm", {"regex": r"[\u4e00-\u9fff·]{2,30}"}),
    qc.Check("B-06", "valid", "csrq", {"validator": "date"}),
    qc.Check("B-07", "valid", "lxdh", {"validator": "phone"}, threshold=0.9),
    qc.Check("B-08", "valid", "xzqh", {"validator": "division_code"}),
    qc.Check("B-09", "not_null", "lxdh", threshold=0.8),
]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _persons(rng: np.random.Generator, n: int) -> pd.DataFrame:
    births = pd.Timestamp("1940-01-01") + pd.to_timedelta(rng.integers(0, 25000, n), unit="D")
    divisions = rng.choice(DIVISIONS, size=n)
    first17 = [
        f"{d}{b:%Y%m%d}{s:03d}"
        for d, b, s in zip(divisions, births, rng.integers(0, 1000, n), strict=True)
    ]
    ids = [f + id_check_digit(f) for f in first17]
    names = [
        rng.choice(SURNAMES) + "".join(rng.choice(GIVEN, rng.integers(1, 3))) for _ in range(n)
    ]
    frame = pd.DataFrame(
        {
            "rkbh": [f"RK{i:09d}" for i in range(n)],
            "xm": names,
            "sfzh": ids,
            "xb": rng.choice(["男", "女"], n),
            "csrq": births.strftime("%Y-%m-%d"),
            "lxdh": [f"1{rng.choice([3, 5, 8])}{x:09d}" for x in rng.integers(0, 10**9, n)],
            "xzqh": divisions,
        }
    )
    return _dirt(rng, frame)


def _dirt(rng: np.random.Generator, frame: pd.DataFrame) -> pd.DataFrame:
    n = len(frame)

    def pick(rate: float) -> np.ndarray:
        return np.flatnonzero(rng.random(n) < rate)

    for col, rate in (("sfzh", 0.02), ("lxdh", 0.1), ("xb", 0.01)):
        frame.loc[pick(rate), col] = None
    frame.loc[pick(0.02), "sfzh"] = frame["sfzh"].str[:6] + frame["sfzh"].str[8:17]  # 15-digit
    frame.loc[pick(0.01), "xb"] = "未知"
    frame.loc[pick(0.01), "xm"] = "测试1"
    frame.loc[pick(0.02), "csrq"] = frame["csrq"].str.replace("-", "")
    frame.loc[pick(0.03), "lxdh"] = "0591-1234"
    frame.loc[pick(0.01), "xzqh"] = "359999"
    frame.loc[pick(0.001), "rkbh"] = "RK000000000"
    return frame


def _run(frame: pd.DataFrame, checks: list[qc.Check]) -> tuple[float, list[qc.CheckResult]]:
    t0 = time.perf_counter()
    results = qc.run_checks(frame, checks, key_column="rkbh", suite_name="bench")
    return time.perf_counter() - t0, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-check", action="store_true", help="time each check alone")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"peak RSS after imports: {_peak_rss_mib():,.0f} MiB")

    t0 = time.perf_counter()
    qc.run_checks(pd.DataFrame({"k": ["a"]}), [], key_column="k", suite_name="warm-up")
    started = time.perf_counter() - t0
    print(f"GX import + context: {started:.2f} s, peak RSS {_peak_rss_mib():,.0f} MiB")

    frame = pd.DataFrame()
    for n in args.rows:
        frame = _persons(rng, n)
        first, results = _run(frame, CHECKS)
        second, _ = _run(frame, CHECKS)
        print(
            f"{n:>9,} rows x {len(CHECKS)} checks: {first:.2f} s (again: {second:.2f} s), "
            f"peak RSS {_peak_rss_mib():,.0f} MiB"
        )
        for c, r in zip(CHECKS, results, strict=True):
            verdict = "error" if r.error else ("pass" if r.success else "FAIL")
            print(
                f"    {r.rule_id} {c.kind:<8} {c.column:<5} {verdict:<5} "
                f"{r.rows_failed:>7,} of {r.rows_checked:>7,} failed"
            )
    if args.per_check:
        print(f"each check alone on {len(frame):,} rows:")
        for c in CHECKS:
            seconds, _ = _run(frame, [c])
            print(f"    {c.rule_id} {c.kind:<8} {c.column:<5} {seconds:.2f} s")


if __name__ == "__main__":
    main()
