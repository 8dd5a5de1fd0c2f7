"""A full night of the sample city at scale: each stage's wall time, CPU seconds and peak RSS.

    .venv/bin/python bench/scale_bench.py                       # 200,000 persons, SQLite
    .venv/bin/python bench/scale_bench.py --warehouse postgresql+psycopg://postgres@127.0.0.1/postgres
    .venv/bin/python bench/scale_bench.py --var /tmp/city200k --keep --repeat 1   # build once
    .venv/bin/python bench/scale_bench.py --var /tmp/city200k --stages publish   # publish only
    .venv/bin/python bench/scale_bench.py --delta 0.01          # and a night with 1 % changed

Generates the sample city once (``--persons``, enterprises a tenth of that unless given), then
runs the night ``--repeat`` times (default 3) from an empty warehouse: extract, standardize,
link, publish, each stage in a fresh process so its peak RSS is its own. Prints every run and
the median per stage, with the load average beside it (the figures are only as good as the
machine is quiet; CPU seconds are the steadier figure). CPU seconds and peak RSS include the
stage's worker processes (standardize runs departments in parallel): peak is the largest one
process reached, "all processes" the largest sum of the stage's processes at one time.

``--delta SHARE`` follows each full night with a delta night: the city's next nights of changes
(:func:`etl.sample_city.generate.next_night`) are applied to a copy of its sources until at
least SHARE of the source rows changed, then the night runs again on them, and the bench prints
its median beside the full night's (issue 15: ≤ 10 % of the full night's CPU seconds). With
``--var`` (or ``--keep``) the full night is kept as it was before the changes, in
``delta-base<run>``, and ``--delta-only`` then reruns just the delta night on a copy of it,
``--repeat`` times (SQLite only: the warehouse is in the folder), without the full night:

    .venv/bin/python bench/scale_bench.py --var /tmp/city --delta 0.01 --repeat 1   # once
    .venv/bin/python bench/scale_bench.py --var /tmp/city --delta 0.01 --delta-only

Warehouse: SQLite under each run's var folder, or ``--warehouse URL`` — then the URL is a
server login: each run gets a new database on that server (``govmdm_bench_…``, dropped
afterwards), so the night starts empty and nothing of the URL's own database is touched.

``--stages`` runs a tail of the night on a kept ``--var`` (e.g. ``publish``: the night it holds,
republished ``--repeat`` times; a republished night replaces the tables whole, as a first one
does), or its head (``extract,standardize``): a long night (1M persons) can then be run in two
sittings, ``--stages link,publish`` on the same ``--var`` finishing the night the head began;
``--stages link`` links a kept standardized night again (its peak RSS and the phase it was in).
``--engine`` picks the engine the stages run on: ``local`` (pandas/numpy), or ``spark``:
standardize and link on Spark, the night run once per ``--spark-master`` (default
``local[1],local[2]``), then the link stage's speedup of the one over the other:

    .venv/bin/python bench/scale_bench.py --engine spark --persons 20000

Each master's stages may use every CPU of the machine: ``local[1]`` is one task slot, its
driver's Python and JVM threads free to take the other cores. ``--pin`` runs each Spark stage
on as many CPUs as its master has task slots (``local[1]`` on one core, ``local[2]`` on two):
the speedup of cores, not of task slots.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("extract", "standardize", "link", "publish")
PUBLISH_TARGET_S = 20.0  # issue 15: publish ≤ 20 s for 200,000 persons
PUBLISH_TARGET_PERSONS = 200_000  # the only size the publish target is set for
DELTA_TARGET = 0.10  # issue 15: a delta night with 1 % changes ≤ 10 % of the full night


# --- child side: one stage in a fresh process --------------------------------------------------


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished children (standardize's workers)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _descendants_cpu_s() -> float:
    """CPU seconds of every live process below this one (Spark's JVM, its Python daemon and
    workers), with what each has reaped of its own children: read from /proc while they run,
    since the JVM outlives ``spark.stop()`` and is never waited for."""
    parent: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])
        times[pid] = sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    mine, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parent.items() if pp == pid and p not in mine]
        mine.update(kids)
        todo.extend(kids)
    return sum(times[p] for p in mine)


_PHASE = ["start"]
"""The stage's phase now: its last progress line (:func:`_progress`), for :class:`_TreeRss`."""


class _TreeRss:
    """The peak of the summed RSS of this process and every process below it, sampled from
    /proc every ``every`` seconds while the stage runs: standardize's department workers run
    side by side, so the largest single process (:func:`_peak_mib`) is not what the stage
    holds at once. Also this process's own largest sample in each phase (``phases``, by the
    last progress line): where a long stage's memory peaks, read off one run instead of found
    by bisecting."""

    def __init__(self, every: float = 0.5) -> None:
        self.peak_mib = 0.0
        self.phases: dict[str, float] = {}
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE") / 2**20
        while True:
            total, todo = 0, [os.getpid()]
            while todo:  # the process tree, through each thread's list of children
                pid = todo.pop()
                try:
                    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
                    if pid == os.getpid():
                        phase = _PHASE[0]
                        self.phases[phase] = max(self.phases.get(phase, 0.0), rss * page)
                    total += rss
                    for kids in Path(f"/proc/{pid}/task").glob("*/children"):
                        todo.extend(int(k) for k in kids.read_text().split())
                except OSError:  # gone meanwhile
                    continue
            self.peak_mib = max(self.peak_mib, total * page)
            if self._stop.wait(self._every):
                return


def _peak_mib() -> float:
    """The largest peak RSS of this process and of any of its finished children."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return max(me.ru_maxrss, kids.ru_maxrss) / 1024  # KiB on Linux


def _progress(stage: str) -> Callable[[str], None]:
    """A stage's progress lines on stderr, each with the stage's wall and CPU seconds and this
    process's RSS and peak so far: a long stage (1M persons) shows where it is and what it
    holds before it ends."""
    cpu0, t0 = _cpu_s(), time.perf_counter()

    def say(message: str) -> None:
        _PHASE[0] = message
        rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        print(
            f"  {stage}: {message}  ({time.perf_counter() - t0:.0f} s, cpu {_cpu_s() - cpu0:.1f}"
            f" s, rss {rss / 2**20:,.0f} MiB, peak {_peak_mib():,.0f} MiB)",
            file=sys.stderr,
            flush=True,
        )

    return say


class _SparkGaps:
    """Where a Spark stage leaves the executors idle: every ``every`` seconds Spark's status
    tracker says whether any task runs; the time none does is the driver's (its Python, the
    JVM planning, collecting and writing), which no number of cores shortens; the time fewer
    tasks run than there are cores is partly so. Kept per phase (the stage's latest progress
    line), with the driver process's own CPU seconds, the Spark jobs started and the tasks
    their stages ran (a stage's partitions; stages skipped, their shuffle already written, not
    counted)."""

    def __init__(self, spark: Any, every: float = 0.1) -> None:
        # phase: wall, no task, fewer tasks than cores, driver CPU seconds, jobs
        self.phases: dict[str, list[float]] = {}
        self._started: dict[str, list[int]] = {}  # phase: the jobs started in it
        self._cores = spark.sparkContext.defaultParallelism
        self._tracker = spark.sparkContext.statusTracker()
        self._jobs: set[int] = set()
        self._phase = "starting"
        self._every = every
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _SparkGaps:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def phase(self, name: str) -> None:
        with self._lock:
            self._phase = name

    def _running(self) -> tuple[int, set[int]]:
        """The tasks running now, and the jobs started so far."""
        tracker, tasks = self._tracker, 0
        for stage in tracker.getActiveStageIds():
            info = tracker.getStageInfo(stage)
            tasks += info.numActiveTasks if info is not None else 0
        return tasks, set(tracker.getJobIdsForGroup())

    def _sample(self) -> None:
        seen, cpu = time.perf_counter(), time.process_time()
        while not self._stop.wait(self._every):
            tasks, jobs = self._running()
            now, used = time.perf_counter(), time.process_time()
            with self._lock:
                phase = self._phase
            row = self.phases.setdefault(phase, [0.0] * 5)
            row[0] += now - seen
            row[1] += 0.0 if tasks else now - seen
            row[2] += now - seen if 0 < tasks < self._cores else 0.0
            row[3] += used - cpu
            row[4] += len(jobs - self._jobs)
            self._started.setdefault(phase, []).extend(jobs - self._jobs)
            self._jobs |= jobs
            seen, cpu = now, used

    def _tasks(self, phase: str) -> int:
        """The tasks the stages of the jobs started in ``phase`` ran."""
        tasks = 0
        for job in self._started.get(phase, []):
            info = self._tracker.getJobInfo(job)
            for stage in info.stageIds if info is not None else []:
                ran = self._tracker.getStageInfo(stage)
                tasks += ran.numCompletedTasks if ran is not None else 0
        return tasks

    def report(self) -> dict[str, float]:
        """The table on stderr; the totals of no task running and the driver's CPU seconds."""
        print(
            "  phase (latest progress line)                                 wall s  no task s"
            "  fewer tasks than cores s  driver cpu s  jobs  tasks",
            file=sys.stderr,
        )
        for name, (wall, idle, few, cpu, jobs) in self.phases.items():
            print(
                f"  {name[:60]:60} {wall:7.1f} {idle:10.1f} {few:25.1f} {cpu:13.1f} {jobs:5.0f}"
                f" {self._tasks(name):6d}",
                file=sys.stderr,
            )
        wall, idle, few, cpu, jobs = (sum(r[i] for r in self.phases.values()) for i in range(5))
        print(
            f"  no task running {idle:.1f} of {wall:.1f} s ({idle / max(wall, 1e-9):.0%}), fewer "
            f"tasks than cores {few:.1f} s; driver process {cpu:.1f} CPU-s; {jobs:.0f} jobs",
            file=sys.stderr,
            flush=True,
        )
        return {
            "no_task_s": round(idle, 1),
            "fewer_tasks_s": round(few, 1),
            "driver_cpu_s": round(cpu, 1),
            "jobs": int(jobs),
        }


def _local_stage(stage: str, run_id: str, opts: dict[str, Any]) -> dict[str, Any]:
    """One stage on the local engine; what it reports besides the timings."""
    from etl.config import load_city_config

    city = load_city_config(ROOT / "config")
    if stage == "generate":
        from etl.sample_city.generate import generate_city

        out = city.var_dir / "city"
        manifest = generate_city(
            out, persons=opts["persons"], enterprises=opts["enterprises"], seed=opts["seed"]
        )
        return {"run_id": manifest["as_of"], "rows": sum(manifest["rows"].values())}
    if stage == "change":
        run_id, changed, rows = _change_city(city.var_dir / "city", opts["share"])
        return {"run_id": run_id, "changed": changed, "rows": rows}
    if stage == "extract":
        from etl.extract import extract_all

        results = extract_all(city, run_id)
        bad = [f"{r.department}: {r.message}" for r in results if not r.ok]
        if bad:
            raise SystemExit("extraction failed: " + "; ".join(bad))
        return {"rows": sum(r.rows_read for r in results)}
    if stage == "standardize":
        from etl.standardize import standardize_all

        done = standardize_all(city, run_id)
        if any(d.status != "ok" or not d.reconciled for d in done):
            raise SystemExit(f"standardization did not reconcile: {done}")
        return {"rows": sum(d.standardized for d in done)}
    if stage == "link":
        from master_data.link import link

        linked = link(city, run_id, progress=_progress("link")).summary()["entities"]
        return {"masters": sum(e["masters"] for e in linked.values())}
    from access.views import after_publish
    from master_data.publish import publish

    return {"published": publish(city, run_id, after_publish)["published"]}


def _spark_stage(stage: str, run_id: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Standardize and link on Spark (master ``opts["spark_master"]``, e.g. ``local[2]``);
    extract and publish are the local engine's (publish stays in Python). The session is
    started inside the stage, as a night's stage starts it (``spark_start_s`` says how long
    that took); ``cpu_s`` adds the CPU seconds of the JVM and its Python workers."""
    if stage not in ("standardize", "link"):
        return _local_stage(stage, run_id, opts)
    from etl.config import load_city_config
    from spark.session import session
    from store.layout import spark_dir

    city = load_city_config(ROOT / "config")
    t0 = time.perf_counter()
    spark = session(city.var_dir, opts["spark_master"], city.spark)
    report: dict[str, Any] = {
        "master": opts["spark_master"],
        "spark_start_s": round(time.perf_counter() - t0, 1),
    }
    try:
        if stage == "standardize":
            from etl.standardize import standardize_department
            from spark.standardize import spark_batches

            batches = spark_batches(spark)
            done = [
                standardize_department(city, d, run_id, batches=batches) for d in city.departments
            ]
            if any(d.status != "ok" or not d.reconciled for d in done):
                raise SystemExit(f"standardization did not reconcile: {done}")
            report["rows"] = sum(d.standardized for d in done)
        else:
            from master_data.link import link
            from spark.link import SparkLink

            said = _progress("link")
            with _SparkGaps(spark) as gaps:

                def say(message: str) -> None:
                    gaps.phase(message)
                    said(message)

                engine = SparkLink(spark, spark_dir(city.var_dir) / "link", say=say)
                linked = link(city, run_id, progress=say, engine=engine).summary()["entities"]
            report["masters"] = sum(e["masters"] for e in linked.values())
            report.update(gaps.report())
        report["spark_cpu_s"] = _descendants_cpu_s()  # the session started in this stage
    finally:
        spark.stop()
    return report


ENGINES: dict[str, Callable[[str, str, dict[str, Any]], dict[str, Any]]] = {
    "local": _local_stage,
    "spark": _spark_stage,
}
"""How each engine runs one stage (in the child process): stage, run ID, options → report."""


def child(stage: str, run_id: str, opts: dict[str, Any]) -> None:
    # Heavy libraries are imported before the clock starts, like a long-lived worker would.
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import access.views  # noqa: F401
    import etl.extract
    import etl.standardize  # noqa: F401
    import master_data.link
    import master_data.publish  # noqa: F401

    profile = cProfile.Profile() if opts.get("profile") else None
    cpu0, t0 = _cpu_s(), time.perf_counter()
    with _TreeRss(every=0.25) as tree:
        if profile is not None:
            profile.enable()
        report = ENGINES[opts["engine"]](stage, run_id, opts)
        if profile is not None:
            profile.disable()
            profile.dump_stats(Path(opts["profile"]) / f"{run_id}-{stage}.prof")
    cpu = _cpu_s() - cpu0 + report.pop("spark_cpu_s", 0.0)
    report.update(wall_s=time.perf_counter() - t0, cpu_s=cpu, peak_mib=_peak_mib())
    report["all_processes_peak_mib"] = round(tree.peak_mib)
    if len(tree.phases) > 1:  # a stage that reports its phases (link): the peak's, the top 3
        top = sorted(tree.phases.items(), key=lambda p: -p[1])[:3]
        report["peak_phase"] = top[0][0]
        report["phase_peaks_mib"] = {phase: round(mib) for phase, mib in top}
    print(json.dumps(report, default=str))


# --- parent side ---------------------------------------------------------------------------------


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} (1/5 min) on {os.cpu_count()} CPUs"


def _pinned_cores(stage: str, opts: dict[str, Any]) -> set[int] | None:
    """With ``--pin``, the CPUs a Spark stage's process (its JVM and Python workers with it)
    may run on: as many as its ``local[N]`` master has task slots, so that ``local[1]`` is one
    core, not one task beside a driver that takes the other core; None: any."""
    if not opts.get("pin") or not opts.get("spark_master") or stage not in ("standardize", "link"):
        return None
    from spark.session import _cores

    return set(sorted(os.sched_getaffinity(0))[: _cores(opts["spark_master"])])


def _run(
    stage: str, var: Path, url: str | None, run_id: str, opts: dict[str, Any]
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "GOVMDM_WAREHOUSE_URL"}
    env["GOVMDM_VAR"] = str(var)
    if url:
        env["GOVMDM_WAREHOUSE_URL"] = url
    cmd = [
        sys.executable,
        __file__,
        "--child",
        stage,
        "--run-id",
        run_id,
        "--opts",
        json.dumps(opts),
    ]
    cores = _pinned_cores(stage, opts)
    out = subprocess.run(
        cmd,
        env=env,
        cwd=ROOT,
        check=False,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=None if cores is None else lambda: os.sched_setaffinity(0, cores),
    )
    if out.returncode != 0:
        raise SystemExit(f"stage {stage} failed (exit {out.returncode})")
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    report["load"] = os.getloadavg()[0]
    return report


@contextlib.contextmanager
def _warehouse(server: str | None) -> Iterator[str | None]:
    """None (SQLite under the run's var folder), or a new database on ``server``, dropped after."""
    if not server:
        yield None
        return
    import sqlalchemy as sa

    url = sa.make_url(server)
    name = f"govmdm_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    quoted = admin.dialect.identifier_preparer.quote(name)
    force = " WITH (FORCE)" if url.get_backend_name() == "postgresql" else ""
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}{force}")
    finally:
        admin.dispose()


def _fresh_var(root: Path, rep: int, *, own_city: bool = False) -> Path:
    """Run ``rep``'s var folder: empty but for the generated city (linked, read only; a copy
    of its own with ``own_city``, for a delta night that changes the sources)."""
    var = root / f"run{rep}"
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    if own_city:
        shutil.copytree(root / "city", var / "city")
    else:
        (var / "city").symlink_to(root / "city", target_is_directory=True)
    return var


def _change_city(city: Path, share: float) -> tuple[str, int, int]:
    """Apply the sample city's next nights of changes (moves, new phones, births, deaths,
    new and closed enterprises, …) to ``city``'s sources until at least ``share`` of its
    source rows changed; the last night's run ID, the rows changed and the rows there were."""
    from etl.sample_city.generate import next_night

    rows = sum(json.loads((city / "city.json").read_text())["rows"].values())
    changed, run_id = 0, ""
    while changed < share * rows:
        manifest = next_night(city)
        run_id = manifest["as_of"]
        changed += sum(sum(c.values()) for c in manifest["last_changes"].values())
    return run_id, changed, rows


def _say(rep: int, stage: str, r: dict[str, Any], night: str = "") -> None:
    shown = ("wall_s", "cpu_s", "peak_mib", "all_processes_peak_mib", "load")
    rest = {k: v for k, v in r.items() if k not in shown}
    print(
        f"run {rep}  {night + stage:<18} {r['wall_s']:8.1f} s  cpu {r['cpu_s']:7.1f} s  peak "
        f"{r['peak_mib']:7,.0f} MiB (all processes {r.get('all_processes_peak_mib', 0):,.0f})  "
        f"load {r['load']:.2f}  {json.dumps(rest)}",
        flush=True,
    )


def _medians(runs: list[dict[str, dict[str, Any]]], stages: tuple[str, ...], head: str) -> None:
    print(f"\n{head}; median of {len(runs)}; {_load()}")
    print(
        f"{'stage':<12} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9} {'all MiB':>9}   "
        "(each run's wall s; all: the summed peak of the stage's processes)"
    )
    for stage in (*stages, "night"):
        rows = [_night_total(r, stages) if stage == "night" else r[stage] for r in runs]
        walls = [r["wall_s"] for r in rows]
        print(
            f"{stage:<12} {statistics.median(walls):8.1f} "
            f"{statistics.median(r['cpu_s'] for r in rows):8.1f} "
            f"{statistics.median(r['peak_mib'] for r in rows):9,.0f} "
            f"{statistics.median(r.get('all_processes_peak_mib', 0) for r in rows):9,.0f}   "
            + " ".join(f"{w:.1f}" for w in walls)
        )


def _night_total(run: dict[str, dict[str, Any]], stages: tuple[str, ...]) -> dict[str, Any]:
    return {
        "wall_s": sum(run[s]["wall_s"] for s in stages),
        "cpu_s": sum(run[s]["cpu_s"] for s in stages),
        "peak_mib": max(run[s]["peak_mib"] for s in stages),
        "all_processes_peak_mib": max(run[s].get("all_processes_peak_mib", 0) for s in stages),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--persons", type=int, default=200_000)
    parser.add_argument("--enterprises", type=int, default=None, help="default: persons / 10")
    parser.add_argument("--seed", type=int, default=20260630)
    parser.add_argument("--repeat", type=int, default=3, help="runs of the night (median)")
    parser.add_argument("--warehouse", default=None, help="a server login URL; default SQLite")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="local")
    parser.add_argument(
        "--spark-master",
        default="local[1],local[2]",
        help="with --engine spark: the masters to run the night on, comma-separated; the "
        "link speedup of the first over the last is printed",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="with --engine spark: run each Spark stage on as many CPUs as its master has "
        "task slots (local[1] on one core), for the speedup of cores rather than of task slots",
    )
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help="consecutive stages of " + ",".join(STAGES),
    )
    parser.add_argument("--var", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the var folder afterwards")
    parser.add_argument(
        "--delta",
        type=float,
        default=None,
        metavar="SHARE",
        help="after each full night, change this share of source rows (e.g. 0.01) and run "
        "the next night on them: the delta night",
    )
    parser.add_argument(
        "--delta-only",
        action="store_true",
        help="with --var and --delta: rerun only the delta night, on a copy of the full night "
        "an earlier --delta bench kept there",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="write each stage's cProfile to DIR/<run id>-<stage>.prof (its CPU seconds then "
        "include the profiler's own)",
    )
    parser.add_argument("--child", choices=("generate", "change", *STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--run-id", default="", help=argparse.SUPPRESS)
    parser.add_argument("--opts", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.run_id, json.loads(args.opts))
        return
    stages = tuple(s.strip() for s in args.stages.split(","))
    if stages not in [STAGES[i : i + len(stages)] for i in range(len(STAGES))]:
        parser.error(f"--stages must be consecutive stages of {','.join(STAGES)}")
    if args.delta is not None and stages != STAGES:
        parser.error("--delta runs the whole night and the next: leave out --stages")
    if args.delta_only and (args.delta is None or args.var is None or args.warehouse):
        parser.error("--delta-only needs --delta and --var, and the SQLite warehouse")
    if stages[0] != STAGES[0] and args.var is None:
        parser.error("--stages without extract needs --var: a kept folder holding the night")
    root = (args.var or Path(tempfile.mkdtemp(prefix="govmdm-scale-bench-"))).resolve()
    opts = {
        "delta": args.delta,
        "engine": args.engine,
        "persons": args.persons,
        "seed": args.seed,
        "enterprises": args.enterprises or max(5, args.persons // 10),
        "profile": str(args.profile.resolve()) if args.profile else None,
        "pin": args.pin,
    }
    try:
        _bench(root, stages, args, opts)
    finally:
        if args.keep or args.var is not None:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _bench(root: Path, stages: tuple[str, ...], args: Any, opts: dict[str, Any]) -> None:
    where = "SQLite" if not args.warehouse else f"a new database per run on {args.warehouse}"
    masters = [m.strip() for m in args.spark_master.split(",")] if args.engine == "spark" else [""]
    head = f"{args.engine} engine, warehouse {where}, var {root}"
    print(f"{head}; {_load()}", flush=True)
    if not (root / "city" / "city.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        gen = _run("generate", root, None, "", opts)
        print(
            f"generated {gen['rows']:,} source rows ({opts['persons']:,} persons) in "
            f"{gen['wall_s']:.1f} s",
            flush=True,
        )
    if args.delta_only:
        _delta_only(root, args.repeat, head, opts)
        return
    run_id = json.loads((root / "city" / "city.json").read_text())["as_of"]
    by_master: dict[str, list[dict[str, dict[str, Any]]]] = {}
    deltas: list[dict[str, dict[str, Any]]] = []
    for master in masters:
        runs = by_master.setdefault(master, [])
        for rep in range(1, args.repeat + 1):
            var = (
                _fresh_var(root, rep, own_city=args.delta is not None)
                if stages[0] == STAGES[0]
                else _kept_var(root)
            )
            with _warehouse(args.warehouse) as url:
                runs.append({})
                for stage in stages:
                    runs[-1][stage] = _run(
                        stage, var, url, run_id, {**opts, "spark_master": master}
                    )
                    _say(rep, stage, runs[-1][stage])
                if args.delta is not None:
                    if args.keep or args.var is not None:  # for --delta-only
                        _copy_var(var, _delta_base(root, rep))
                    deltas.append(_delta_night(rep, var, url, {**opts, "spark_master": master}))
    for master, runs in by_master.items():
        _medians(runs, stages, f"{head}{f', Spark {master}' if master else ''}, night {run_id}")
        if "publish" in stages and opts["persons"] == PUBLISH_TARGET_PERSONS:
            wall = statistics.median(r["publish"]["wall_s"] for r in runs)
            met = "met" if wall <= PUBLISH_TARGET_S else "MISSED"
            print(
                f"publish target ({PUBLISH_TARGET_PERSONS:,} persons) ≤ {PUBLISH_TARGET_S:.0f} s: "
                f"{met} ({wall:.1f} s median)"
            )
    if deltas:
        _delta_verdict(by_master[masters[0]], deltas, head)
    if len(masters) > 1 and "link" in stages:
        _speedup(by_master, masters[0], masters[-1], pinned=bool(opts["pin"]))


def _delta_night(rep: int, var: Path, url: str | None, opts: dict[str, Any]) -> dict[str, Any]:
    """The next night after ``--delta`` of the source rows changed, every stage timed."""
    # in a child: the city's truth is large, and a child forked from a large parent would
    # report the parent's peak RSS as its own
    change = _run("change", var, None, "", {**opts, "share": opts["delta"]})
    next_id, changed, rows = change["run_id"], change["changed"], change["rows"]
    print(
        f"run {rep}  changed {changed:,} of {rows:,} source rows "
        f"({changed / rows:.2%}): night {next_id}",
        flush=True,
    )
    night: dict[str, Any] = {}
    for stage in STAGES:
        night[stage] = _run(stage, var, url, next_id, opts)
        _say(rep, stage, night[stage], "delta ")
    return night


def _delta_base(root: Path, rep: int) -> Path:
    """Where run ``rep``'s full night is kept, as it was before the delta night's changes."""
    return root / f"delta-base{rep}"


def _copy_var(var: Path, to: Path) -> None:
    """A copy of the var folder ``var`` (its city's sources and SQLite warehouse with it)."""
    shutil.rmtree(to, ignore_errors=True)
    shutil.copytree(var, to, symlinks=True)


def _delta_only(root: Path, repeat: int, head: str, opts: dict[str, Any]) -> None:
    """Rerun the delta night ``repeat`` times, each on a fresh copy of the last full night an
    earlier ``--delta`` bench kept under ``root``."""
    kept = sorted(root.glob("delta-base*"))
    if not kept:
        raise SystemExit(f"no full night kept under {root}: run the bench with --delta first")
    deltas = []
    for rep in range(1, repeat + 1):
        var = root / "delta-rerun"
        _copy_var(kept[-1], var)
        deltas.append(_delta_night(rep, var, None, opts))
    _medians(deltas, STAGES, f"{head}, the delta night on {kept[-1].name}")


def _delta_verdict(
    runs: list[dict[str, dict[str, Any]]], deltas: list[dict[str, dict[str, Any]]], head: str
) -> None:
    _medians(deltas, STAGES, f"{head}, the delta night after it")
    full = statistics.median(_night_total(r, STAGES)["cpu_s"] for r in runs)
    delta = statistics.median(_night_total(r, STAGES)["cpu_s"] for r in deltas)
    met = "met" if delta <= DELTA_TARGET * full else "MISSED"
    print(
        f"delta night ≤ {DELTA_TARGET:.0%} of the full night's CPU seconds: {met} "
        f"({delta:.1f} / {full:.1f} s = {delta / full:.1%})"
    )


def _speedup(
    by_master: dict[str, list[dict[str, dict[str, Any]]]], one: str, other: str, *, pinned: bool
) -> None:
    """The link stage's speedup of ``other`` over ``one`` (issue 15: local[1] / local[2] ≥ 1.5):
    wall seconds with and without starting the session; ``pinned``: each master ran on as many
    CPUs as it has task slots (``--pin``)."""

    def median(master: str, key: str) -> float:
        return statistics.median(r["link"].get(key, 0.0) for r in by_master[master])

    wall = median(one, "wall_s") / median(other, "wall_s")
    started = (median(one, "wall_s") - median(one, "spark_start_s")) / (
        median(other, "wall_s") - median(other, "spark_start_s")
    )
    print(
        f"link speedup {one} / {other}: {wall:.2f}x wall ({started:.2f}x without starting "
        f"Spark); goal ≥ 1.5; "
        + ("each master on as many CPUs as task slots; " if pinned else "every CPU free to each; ")
        + _load()
    )


def _kept_var(root: Path) -> Path:
    """The folder of the kept night: the last run's of an earlier bench (a full night, or its
    head: standardized, not linked yet), or ``root``."""
    kept = sorted(
        p for p in root.glob("run*") if (p / "master").is_dir() or (p / "canonical").is_dir()
    )
    return kept[-1] if kept else root


if __name__ == "__main__":
    main()
