"""How fast linking runs on a full (training) night and on the next (delta) night, and how well.

    .venv/bin/python bench/link_bench.py --persons 200000 --enterprises 20000

Generates a sample city into a temporary var folder (``GOVMDM_VAR``; removed at the end unless
``--keep``; a ``--var`` given, new or empty, is always kept),
extracts and standardizes night 0, then times ``link`` (full: blocking, comparison, EM training,
clustering, golden records) and ``publish`` separately, scores the published night against the
city's truth, applies the next night's changes and times the delta night the same way. Every
step runs in a fresh process, so its peak RSS is its own (the RSS right after the imports is
printed beside it); the linking child also reports its stages (time since start, RSS then, peak
so far). Targets for 200,000 persons on a 2-core machine: linking ≤ 5 min and ≤ 4 GiB.

The warehouse is SQLite under the var folder and sources are the city's own SQLite files:
``GOVMDM_WAREHOUSE_URL`` and source connection variables are ignored here. ``--profile`` runs the
full night's linking under cProfile and prints the heaviest functions.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 5 * 60
TARGET_MIB = 4 * 1024
STEPS = ("generate", "extract", "standardize", "link", "publish", "evaluate", "next_night")


# --- child side: one step in a fresh process ---------------------------------------------------


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _step(step: str, var: Path, run_id: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Run one step; returns what it reports (the timing fields are added by the caller)."""
    from etl.config import load_city_config

    city = load_city_config(ROOT / "config")
    out = var / "city"
    report: dict[str, Any] = {}
    if step == "generate":
        from etl.sample_city.generate import generate_city

        manifest = generate_city(
            out, persons=opts["persons"], enterprises=opts["enterprises"], seed=opts["seed"]
        )
        report = {"run_id": manifest["as_of"], "rows": manifest["rows"]}
    elif step == "next_night":
        from etl.sample_city.generate import next_night

        manifest = next_night(out)
        report = {
            "run_id": manifest["as_of"],
            "rows": manifest["rows"],
            "changed": sum(sum(c.values()) for c in manifest["last_changes"].values()),
        }
    elif step == "extract":
        from etl.extract import extract_all

        results = extract_all(city, run_id)
        bad = [f"{r.department}: {r.message}" for r in results if not r.ok]
        if bad:
            raise SystemExit("extraction failed: " + "; ".join(bad))
        report = {"rows": sum(r.rows_read for r in results)}
    elif step == "standardize":
        from etl.standardize import standardize_all

        done = standardize_all(city, run_id)
        bad = [f"{d.department} {d.status} {d.message}".strip() for d in done
               if d.status != "ok" or not d.reconciled]  # fmt: skip
        if bad:
            raise SystemExit(f"standardization did not reconcile: {bad}")
        report = {
            "rows": sum(d.standardized for d in done),
            "rejected": sum(d.rejected for d in done),
        }
    elif step == "link":
        from master_data.link import link

        t0 = time.perf_counter()
        stages: list[dict[str, Any]] = []

        def progress(msg: str) -> None:
            stage = {"at_s": round(time.perf_counter() - t0, 2), "rss_mib": round(_rss_mib()),
                     "peak_mib": round(_peak_mib()), "stage": msg}  # fmt: skip
            stages.append(stage)
            print(f"    [{stage['at_s']:7.1f} s  rss {stage['rss_mib']:>5} MiB  peak "
                  f"{stage['peak_mib']:>5} MiB] {msg}", file=sys.stderr, flush=True)  # fmt: skip

        profiler = None
        if opts.get("profile"):
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        linked = link(city, run_id, progress=progress)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(opts["profile"])
        progress("done")
        report = {"summary": linked.summary(), "stages": stages}
    elif step == "publish":
        from access.views import after_publish
        from master_data.publish import publish

        summary = publish(city, run_id, after_publish)
        report = {"watermarks": summary["watermarks_committed"], "published": summary["published"]}
    elif step == "evaluate":
        from master_data.published import evaluate_published

        ev = evaluate_published(city, out)
        report = {
            e: {
                "rows": r.counts.linked,
                "masters": r.counts.clusters,
                "true": r.counts.true_entities,
                "pair_p": r.pairwise.precision,
                "pair_r": r.pairwise.recall,
                "pair_f1": r.pairwise.f1,
                "cluster_f1": r.clusters.f1,
            }
            for e, r in ev.entities.items()
        }
    return report


def child(step: str, var: Path, run_id: str, opts: dict[str, Any]) -> None:
    os.environ["GOVMDM_VAR"] = str(var)
    # Heavy libraries are imported before the clock starts, like a long-lived worker would.
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import etl.extract
    import etl.standardize  # noqa: F401
    import master_data.link
    import master_data.publish  # noqa: F401

    start_mib, cpu0, t0 = _peak_mib(), _cpu_s(), time.perf_counter()
    report = _step(step, var, run_id, opts)
    report.update(
        seconds=time.perf_counter() - t0,
        cpu_s=_cpu_s() - cpu0,
        start_mib=start_mib,
        peak_mib=_peak_mib(),
    )
    print(json.dumps(report, ensure_ascii=False, default=str))


# --- parent side ---------------------------------------------------------------------------------


def _clean_env(var: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "GOVMDM_WAREHOUSE_URL"
        and not k.startswith("GOVMDM_CONN_")
        and not k.startswith("AIRFLOW_CONN_")
    }
    env["GOVMDM_VAR"] = str(var)
    return env


def _run(step: str, var: Path, run_id: str, opts: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", step, "--var", str(var), "--run-id", run_id,
           "--opts", json.dumps(opts)]  # fmt: skip
    out = subprocess.run(
        cmd, env=_clean_env(var), cwd=ROOT, check=False, stdout=subprocess.PIPE, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"step {step} failed (exit {out.returncode})")
    lines = out.stdout.strip().splitlines()
    return dict(json.loads(lines[-1]))


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} (1/5 min) on {os.cpu_count()} CPUs"


def _say(name: str, r: dict[str, Any], extra: str = "") -> None:
    print(
        f"{name:<22} {r['seconds']:8.1f} s  cpu {r['cpu_s']:7.1f} s  peak {r['peak_mib']:6,.0f} "
        f"MiB (after imports {r['start_mib']:4,.0f})  {extra}",
        flush=True,
    )


def _linked(r: dict[str, Any]) -> str:
    ents = r["summary"]["entities"]
    return "; ".join(
        f"{e} {x['records']:,} rows, {x['changed']:,} changed, {x['pairs_compared']:,} pairs, "
        f"{x['masters']:,} masters, {x.get('records_relinked', x['records']):,} relinked, "
        f"{x['seconds']:.1f} s"
        for e, x in ents.items()
    )


def _quality(ev: dict[str, Any], night: str) -> None:
    print(f"  quality after night {night}:")
    print(f"    {'entity':<11} {'rows':>9} {'masters':>9} {'true':>9} {'pair P':>7} "
          f"{'pair R':>7} {'pair F1':>7} {'clust F1':>8}")  # fmt: skip
    for e, q in ev.items():
        if not isinstance(q, dict):
            continue
        print(
            f"    {e:<11} {q['rows']:>9,} {q['masters']:>9,} {q['true']:>9,} "
            f"{q['pair_p']:>7.4f} {q['pair_r']:>7.4f} {q['pair_f1']:>7.4f} {q['cluster_f1']:>8.4f}"
        )


def _top_profile(path: str, n: int = 25) -> None:
    import pstats

    print(f"\ncProfile of the full night's linking ({path}); top {n} by cumulative time:")
    stats = pstats.Stats(path)
    stats.sort_stats("cumulative").print_stats(n)
    print(f"top {n} by own time:")
    stats.sort_stats("tottime").print_stats(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--persons", type=int, default=200_000)
    parser.add_argument("--enterprises", type=int, default=None, help="default: persons / 10")
    parser.add_argument("--seed", type=int, default=20260630)
    parser.add_argument("--var", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the var folder afterwards")
    parser.add_argument("--no-delta", action="store_true", help="stop after the first night")
    parser.add_argument(
        "--profile", type=Path, default=None, help="cProfile the full night's linking to this file"
    )
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--run-id", default="", help=argparse.SUPPRESS)
    parser.add_argument("--opts", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.var, args.run_id, json.loads(args.opts))
        return

    enterprises = args.enterprises or max(5, args.persons // 10)
    var = (args.var or Path(tempfile.mkdtemp(prefix="govmdm-link-bench-"))).resolve()
    if args.var is not None and (var / "city").exists():
        raise SystemExit(f"{var} already holds a city; give an empty or new --var")
    var.mkdir(parents=True, exist_ok=True)
    print(f"var {var}; {args.persons:,} persons, {enterprises:,} enterprises; {_load()}")
    opts = {"persons": args.persons, "enterprises": enterprises, "seed": args.seed}
    table: list[tuple[str, str, dict[str, Any]]] = []  # (night, step, report)

    def run(step: str, night: str, run_id: str = "", **opts_: Any) -> dict[str, Any]:
        r = _run(step, var, run_id, opts_)
        table.append((night, step, r))
        return r

    try:
        gen = run("generate", "0", **opts)
        rid = gen["run_id"]
        _say("generate", gen, f"{sum(gen['rows'].values()):,} source rows")
        ext = run("extract", "0", rid)
        _say(f"extract {rid}", ext, f"{ext['rows']:,} rows")
        std = run("standardize", "0", rid)
        _say(f"standardize {rid}", std, f"{std['rows']:,} rows, {std['rejected']:,} rejected")
        print(f"linking night {rid} (full, training); {_load()}", flush=True)
        link0 = run("link", "0", rid, profile=str(args.profile) if args.profile else None)
        _say(f"LINK {rid} (full)", link0)
        print(f"  {_linked(link0)}")
        pub0 = run("publish", "0", rid)
        _say(f"publish {rid}", pub0)
        ev0 = run("evaluate", "0", rid)
        _say("evaluate", ev0)
        _quality(ev0, rid)
        link1: dict[str, Any] | None = None
        if not args.no_delta:
            nn = run("next_night", "1")
            rid1 = nn["run_id"]
            _say("next_night", nn, f"{nn['changed']:,} changed source rows")
            ext1 = run("extract", "1", rid1)
            _say(f"extract {rid1}", ext1, f"{ext1['rows']:,} rows")
            std1 = run("standardize", "1", rid1)
            _say(
                f"standardize {rid1}", std1, f"{std1['rows']:,} rows, {std1['rejected']:,} rejected"
            )
            print(f"linking night {rid1} (delta); {_load()}", flush=True)
            link1 = run("link", "1", rid1)
            _say(f"LINK {rid1} ({link1['summary']['mode']})", link1)
            print(f"  {_linked(link1)}")
            pub1 = run("publish", "1", rid1)
            _say(f"publish {rid1}", pub1)
            ev1 = run("evaluate", "1", rid1)
            _say("evaluate", ev1)
            _quality(ev1, rid1)
    finally:
        if args.keep or args.var is not None:
            print(f"kept {var}")
        else:
            shutil.rmtree(var, ignore_errors=True)

    print(f"\n{args.persons:,} persons, {enterprises:,} enterprises; {_load()}")
    print(f"{'night':<5} {'step':<12} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9} {'(imports)':>9}")
    for night, name, r in table:
        mark = " <- timed linkage" if name == "link" else ""
        print(
            f"{night:<5} {name:<12} {r['seconds']:>8.1f} {r['cpu_s']:>8.1f} {r['peak_mib']:>9,.0f} "
            f"{r['start_mib']:>9,.0f}{mark}"
        )
    if link1 is not None:
        print(
            f"delta / full linking wall time: {link1['seconds'] / link0['seconds']:.2f} "
            f"({link1['seconds']:.1f} s / {link0['seconds']:.1f} s)"
        )
        for label, steps in (
            ("consolidation (link + publish)", ("link", "publish")),
            ("night (extract + standardize + link + publish)",
             ("extract", "standardize", "link", "publish")),
        ):  # fmt: skip
            took = {n: sum(r["seconds"] for n_, s_, r in table if n_ == n and s_ in steps)
                    for n in ("0", "1")}  # fmt: skip
            print(
                f"delta / full {label}: {took['1'] / took['0']:.3f} "
                f"({took['1']:.1f} s / {took['0']:.1f} s; target ≤ 0.10)"
            )
    ok_t = link0["seconds"] <= TARGET_S
    ok_m = link0["peak_mib"] <= TARGET_MIB
    print(
        f"targets (full linking, 200,000 persons, 2 cores): ≤ {TARGET_S / 60:.0f} min "
        f"[{'met' if ok_t else 'MISSED'}: {link0['seconds'] / 60:.1f} min], ≤ "
        f"{TARGET_MIB / 1024:.0f} GiB peak RSS [{'met' if ok_m else 'MISSED'}: "
        f"{link0['peak_mib'] / 1024:.2f} GiB]"
    )
    if link0["cpu_s"] < 0.8 * link0["seconds"]:
        print("note: linking CPU time well below wall time: the machine was likely busy")
    if args.profile:
        _top_profile(str(args.profile))


if __name__ == "__main__":
    main()
