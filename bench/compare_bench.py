"""How fast person comparison runs: pairs per second of ``master_data.compare.compare``.

    .venv/bin/python bench/compare_bench.py --records 200000 --pairs 1000000

Synthetic canonical person rows (made here, not by the sample city): half are originals, half
are copies of an original with typical defects (one-character name change, ID typo, day/month
swap, mobile prefix changed, phone or address missing). The pairs are every copy with its original
plus random pairs, so every level and every string-similarity path is exercised. The target
(issue 4) is 1,000,000 pairs in well under a minute on a 2-core machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

import numpy as np
import pandas as pd

from fields.identifiers import id_check_digit
from fields.normalize import name_pinyin
from master_data.compare import compare

SURNAMES = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾")
GIVEN = list("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红梅海峰建国志")
DISTRICTS = ["350102", "350103", "350104", "350105", "350111", "350112", "350121", "350122"]
STREETS = ["五一中路", "六一北路", "湖东路", "工业路", "杨桥中路", "首占路", "金山大道"]


def _persons(rng: np.random.Generator, n: int) -> pd.DataFrame:
    names = [
        rng.choice(SURNAMES) + "".join(rng.choice(GIVEN, size=rng.integers(1, 3))) for _ in range(n)
    ]
    births = [
        dt.date(1940, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 25000, size=n)
    ]
    divisions = rng.choice(DISTRICTS, size=n)
    ids = []
    for division, birth, seq in zip(divisions, births, rng.integers(0, 1000, size=n), strict=True):
        first17 = f"{division}{birth:%Y%m%d}{seq:03d}"
        ids.append(first17 + id_check_digit(first17))
    mobiles = [f"1{rng.integers(3, 9)}{rng.integers(0, 10**9):09d}" for _ in range(n)]
    phones = [
        [m] if rng.random() < 0.8 else [m, f"0591-{rng.integers(10**7, 10**8)}"] for m in mobiles
    ]
    numbers = zip(
        rng.integers(1, 400, size=n), rng.integers(1, 30, size=n), rng.integers(101, 2999, size=n),
        strict=True,
    )  # fmt: skip
    details = [f"{rng.choice(STREETS)}{a}号{b}座{c}室" for a, b, c in numbers]
    return pd.DataFrame(
        {
            "name": names,
            "id_number": ids,
            "sex": rng.choice(["男", "女"], size=n),
            "birth_date": births,
            "phones_all": phones,
            "division_code": divisions,
            "address_detail": details,
        }
    )


def _defects(rng: np.random.Generator, df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    n = len(out)
    for col, rate in (("id_number", 0.3), ("phones_all", 0.3), ("address_detail", 0.2)):
        out.loc[rng.random(n) < rate, col] = None
    names = out["name"].tolist()
    for i in np.flatnonzero(rng.random(n) < 0.2):
        names[i] = names[i][:-1] + str(rng.choice(GIVEN))
    out["name"] = names
    ids = out["id_number"].tolist()
    for i in np.flatnonzero(rng.random(n) < 0.05):
        if ids[i]:
            ids[i] = ids[i][:16] + ids[i][17] + ids[i][16]
    out["id_number"] = ids
    phones = out["phones_all"].tolist()
    for i in np.flatnonzero(rng.random(n) < 0.05):
        if phones[i]:
            phones[i] = ["186" + phones[i][0][3:], *phones[i][1:]]  # same last 8 digits
    out["phones_all"] = phones
    births = out["birth_date"].tolist()
    for i in np.flatnonzero(rng.random(n) < 0.05):
        b = births[i]
        if b.day <= 12:
            births[i] = dt.date(b.year, b.day, b.month)
    out["birth_date"] = births
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    half = args.records // 2
    original = _persons(rng, half)
    copies = _defects(rng, original)
    df = pd.concat([original, copies], ignore_index=True)
    df["name_pinyin"] = df["name"].map(name_pinyin)
    df.index = pd.Index([f"r{i:08d}" for i in range(len(df))])
    ids = df.index.to_numpy()
    dup = np.arange(half)
    rand = args.pairs - half
    left = np.concatenate([dup, rng.integers(0, len(df), size=rand)])
    right = np.concatenate([dup + half, rng.integers(0, len(df), size=rand)])
    keep = left != right
    pairs = pd.MultiIndex.from_arrays([ids[left[keep]], ids[right[keep]]])

    t0 = time.perf_counter()
    levels = compare(df, pairs, "person")
    elapsed = time.perf_counter() - t0
    print(f"records {len(df):,}; pairs {len(pairs):,}")
    for col in levels:
        counts = levels[col].value_counts().sort_index()
        print(f"  {col:<11} " + "  ".join(f"{k:>2}: {v:>8,}" for k, v in counts.items()))
    print(f"compare: {elapsed:.2f} s, {len(pairs) / elapsed:,.0f} pairs/s")


if __name__ == "__main__":
    main()
