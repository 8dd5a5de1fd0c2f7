"""How fast the Fellegi–Sunter model fits and scores millions of candidate pairs.

    .venv/bin/python bench/model_bench.py --pairs 5000000

Simulates pairs from a known mixture (six features, 2–5 levels, 10 % missing), then prints the
fit time, the scoring time, peak memory and the largest error of the recovered parameters.
"""

from __future__ import annotations

import argparse
import resource
import time

from master_data.model import FellegiSunter, simulate_pairs

M = {
    "id_number": [0.04, 0.96],
    "name": [0.02, 0.05, 0.18, 0.75],
    "birth_date": [0.04, 0.08, 0.88],
    "address": [0.10, 0.10, 0.15, 0.25, 0.40],
    "phone": [0.30, 0.10, 0.60],
    "sex": [0.01, 0.99],
}
U = {
    "id_number": [0.99, 0.01],
    "name": [0.60, 0.25, 0.10, 0.05],
    "birth_date": [0.85, 0.10, 0.05],
    "address": [0.40, 0.30, 0.15, 0.10, 0.05],
    "phone": [0.95, 0.04, 0.01],
    "sex": [0.50, 0.50],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5_000_000)
    parser.add_argument("--prior", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    df, _ = simulate_pairs(args.pairs, prior=args.prior, m=M, u=U, missing=0.1, seed=args.seed)
    levels = {f: len(p) - 1 for f, p in M.items()}

    t0 = time.perf_counter()
    model = FellegiSunter.fit(df, levels=levels)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    model.probability(df)
    score_s = time.perf_counter() - t1

    error = max(
        abs(got - want)
        for fitted, true in ((model.m, M), (model.u, U))
        for f in true
        for got, want in zip(fitted[f], true[f], strict=True)
    )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"fit      {args.pairs:>10,} pairs  {fit_s:6.2f} s  "
        f"({model.distinct_vectors:,} distinct vectors, {model.iterations} EM iterations)"
    )
    print(f"score    {args.pairs:>10,} pairs  {score_s:6.2f} s")
    print(f"recovery max |m, u error| {error:.4f}, λ {model.prior:.4f} (true {args.prior})")
    print(f"peak memory {peak_mib:,.0f} MiB")


if __name__ == "__main__":
    main()
