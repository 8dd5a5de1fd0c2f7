"""The night's commands: sample city, configuration check, extract, accepting deletions,
standardize and the Airflow demo."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import (
    ConfigDir,
    Departments,
    EngineOption,
    RunId,
    _check_departments,
    _flags_broken,
    _load,
    _night,
    _progress,
    app,
    config_app,
    console,
    say,
)
from store import layout


def _row_table(title: str, manifest: dict[str, Any], out: Path) -> Table:
    from etl.sample_city.departments import DEPARTMENTS

    table = Table(title=title, title_justify="left")
    for col in ("department", "name", "table", "rows", "changes tonight"):
        table.add_column(col, justify="right" if col == "rows" else "left", overflow="fold")
    changes = manifest.get("last_changes", {})
    for d in DEPARTMENTS:
        c = changes.get(d.code)
        delta = f"+{c['inserted']} ~{c['updated']} -{c['deleted']}" if c else "—"
        table.add_row(d.code, d.title, d.table_name, f"{manifest['rows'][d.code]:,}", delta)
    return table


@app.command()
def sample(
    out: Annotated[Path, typer.Option(help="Folder for the city's databases and truth.")] = Path(
        "var/city"
    ),
    persons: Annotated[int, typer.Option(min=10, help="True persons in the city.")] = 5000,
    enterprises: Annotated[int, typer.Option(min=5, help="True enterprises in the city.")] = 600,
    seed: Annotated[int, typer.Option(help="Same seed, same city, byte for byte.")] = 20260630,
    target: Annotated[
        list[str] | None,
        typer.Option(
            help="Also load every department into this server, one database per department "
            "named <db>_<department>: postgresql+psycopg://postgres@127.0.0.1/city or "
            "mysql+pymysql://root@127.0.0.1/city. Repeatable."
        ),
    ] = None,
    next_night: Annotated[
        bool,
        typer.Option("--next-night", help="Apply the next night's changes to an existing city."),
    ] = False,
    review_pairs: Annotated[
        bool,
        typer.Option(
            "--review-pairs/--no-review-pairs",
            help="Plant hard cases whose pairs land in the review band, for `govmdm review`.",
        ),
    ] = True,
    hard_cases: Annotated[
        bool,
        typer.Option(
            "--hard-cases/--no-hard-cases",
            help=(
                "Plant the hard cases: minors under a guardian's ID number, lunar birth dates, "
                "renamed people (曾用名), same-birth-date namesakes; individual businesses taxed "
                "under the operator's name, operating addresses in another district."
            ),
        ),
    ] = True,
) -> None:
    """Generate the sample city (福州市): six departmental databases plus ground truth.

    公安 (population registry), 人社 (social insurance), 民政 (social assistance), 卫健 (health),
    市场监管 (business registry) and 税务 (tax), each with its own naming style, formats and dirt.
    The truth (which source row is which real person or enterprise, and the true values) goes to
    OUT/truth/*.parquet, never into the databases.
    """
    from etl.config import PRIVATE_UMASK
    from etl.sample_city.generate import generate_city
    from etl.sample_city.generate import next_night as apply_next_night

    os.umask(PRIVATE_UMASK)  # the sample's persons are made up, but the files hold them like data
    targets = target or []
    if next_night:
        try:
            manifest = apply_next_night(out, targets=targets)
        except FileNotFoundError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
        title = f"Night {manifest['night']} ({manifest['as_of']}) applied to {out}"
    else:
        with _progress() as bar:
            tasks: dict[str, Any] = {}

            def advance(name: str, step: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=total)
                bar.advance(tasks[name], step)

            manifest = generate_city(
                out,
                persons=persons,
                enterprises=enterprises,
                seed=seed,
                targets=targets,
                progress=advance,
                review_band=review_pairs,
                hard_cases=hard_cases,
            )
        title = f"Sample city (seed {seed}) written to {out}"
    console.print(_row_table(title, manifest, out))
    say(f"SQLite databases: {out / 'sources'}/<department>.sqlite")
    say(f"Ground truth: {out / 'truth'}/{{persons,enterprises,source_rows,dirt}}.parquet")
    if targets:
        console.print("Also loaded into (paste these to read from the server instead of SQLite):")
        for line in conn_exports(targets):
            console.print(line, highlight=False, markup=False, soft_wrap=True)


def conn_exports(targets: list[str]) -> list[str]:
    """The shell lines that point govmdm at the departments loaded into ``targets``."""
    from etl.sample_city.departments import DEPARTMENTS
    from etl.sample_city.generate import target_url

    return [
        f"export GOVMDM_CONN_{d.code.upper()}={shlex.quote(target_url(t, d.code))}"
        for t in targets
        for d in DEPARTMENTS
    ]


@config_app.command("check")
def config_check(
    config: ConfigDir = Path("config"),
    connect: Annotated[
        bool,
        typer.Option(
            "--connect",
            help="Also resolve each department's connection and check its tables and columns.",
        ),
    ] = False,
) -> None:
    """Validate config/ and list the departments, their tables and authorities."""
    from etl.config import ConfigError, load_city_config

    try:
        city = load_city_config(config, tolerant=True)
    except ConfigError as exc:
        console.print(f"[red]Configuration has errors:[/red]\n{exc}", highlight=False)
        raise typer.Exit(2) from exc
    problems = [line for lines in city.broken.values() for line in lines]
    problems += _other_files(city)
    table = Table(title=f"{city.name} ({city.division_code}): {len(city.departments)} departments")
    for col in ("department", "name", "tables", "authority for", "contact"):
        table.add_column(col)
    for d in city.departments:
        auth = "; ".join(
            f"{e}: {', '.join(d.authority_for.fields(e))}"
            for e in ("person", "enterprise")
            if d.authority_for.fields(e)
        )
        tables = ", ".join(f"{t.name} ({t.entity})" for t in d.tables)
        table.add_row(d.code, d.name, tables, auth or "—", f"{d.contact.name} <{d.contact.email}>")
    console.print(table)
    warnings = config_warnings(city)
    if warnings:
        console.print("[yellow]Warnings:[/yellow]\n" + "\n".join(warnings), highlight=False)
    if problems:
        broken = f" (departments not run: {', '.join(city.broken)})" if city.broken else ""
        console.print(
            f"[red]Configuration has errors{broken}:[/red]\n" + "\n".join(problems),
            highlight=False,
        )
    if connect:
        try:
            _probe_sources(city)
        except typer.Exit:
            if not problems:
                raise
    if problems:
        raise typer.Exit(2)


def _other_files(city: Any) -> list[str]:
    """The problems of the configuration's other files: quality rules, matching.yaml (its
    departments must be the city's) and catalog.yaml (its tables must be the city's)."""
    from access.policy import load_share_policy
    from etl.config import ConfigError
    from master_data.settings import load_match_settings
    from quality.rules import load_quality_rules

    problems: list[str] = []
    codes = {d.code for d in city.departments} | set(city.broken)
    for check in (
        lambda: load_quality_rules(city),
        lambda: load_match_settings(city.config_dir, codes),
        lambda: load_share_policy(city),
    ):
        try:
            check()
        except ConfigError as exc:
            problems += exc.problems
    return problems


def config_warnings(city: Any) -> list[str]:
    """What the configuration runs without: defaults taken (a contact, quality rules), quality
    rules this city cannot run (left out) and comparison features no department supplies, which
    the match model leaves out."""
    from etl.config import ConfigError
    from master_data.compare import features_for
    from quality.rules import load_quality_rules, missing_rule_files

    out = [*city.warnings, *missing_rule_files(city)]
    with contextlib.suppress(ConfigError):  # its problems are listed as errors
        out += load_quality_rules(city, every_department=False).skipped
    for entity in ("person", "enterprise"):
        mapped = {
            f for d in city.departments for t in d.tables_for(entity) for f in t.field_columns
        }
        for feature in features_for(entity):
            if feature.label not in mapped:
                out.append(
                    f"{city.config_dir / 'departments'}: no {entity} table maps a column to "
                    f"`{feature.label}`: the match model does without it. Fix: map the column "
                    "that holds it, if a department keeps one"
                )
    return out


def _probe_sources(city: Any) -> None:
    from etl.sources import probe

    table = Table(title="Source databases", title_justify="left")
    for col in ("department", "backend", "table", "rows", "status"):
        table.add_column(col, justify="right" if col == "rows" else "left", overflow="fold")
    failed = False
    for d in city.departments:
        result = probe(city, d)
        failed |= not result.ok
        if result.problem:
            table.add_row(d.code, result.backend or "—", "—", "—", f"[red]{result.problem}")
        for t in result.tables:
            status = (
                f"[red]{t.problem}"
                if t.problem
                else f"[red]missing columns: {', '.join(t.missing_columns)}"
                if t.missing_columns
                else "[green]ok"
            )
            rows = "—" if t.rows is None else f"{t.rows:,}"
            table.add_row(d.code, result.backend or "—", t.table, rows, status)
    console.print(table)
    if failed:
        raise typer.Exit(1)


@app.command()
def extract(
    config: ConfigDir = Path("config"),
    run_id: RunId = None,
    department: Departments = None,
    full: Annotated[
        bool, typer.Option("--full", help="Full snapshot instead of rows past the watermark.")
    ] = False,
) -> None:
    """Extract each department's tables, read-only and in chunks, into raw Parquet.

    Incremental by each table's change column; the first night (or --full) takes everything.
    A department whose schema drifted or whose database cannot be reached is flagged, and the
    others go on. Exit code 1 if any department was flagged.

    Rerunning a night that was published replays it: the departments whose rows it published
    reuse the raw data it kept (their sources are not read), so standardize and consolidate
    publish the night again exactly as it was. An older night than the latest published one is
    refused (exit code 2), with the command that works.
    """
    from pipeline import night as nightly

    city = _load(config)
    chosen = _check_departments(city, department) or [d.code for d in city.departments]
    night = _night(city, config, run_id)
    try:
        replayed = nightly.plan(night, departments=department, full=full)["rerun"]
    except nightly.NightRefused as exc:
        console.print(f"[red]{exc}", highlight=False)
        raise typer.Exit(2) from exc
    if replayed:
        console.print(
            f"[yellow]Night {night.run_id} is published with the rows of {', '.join(replayed)}: "
            "their raw data is replayed and their sources are not read, so the night is "
            "published again exactly as it was.",
            highlight=False,
        )
    results: list[Any] = []
    reused: dict[str, Any] = {}
    refused: list[str] = []
    with _progress() as bar:
        task = bar.add_task("departments", total=len(chosen) - len(replayed))

        def extracted(result: Any) -> None:
            results.append(result)
            bar.advance(task, 1)

        for code in chosen:
            try:
                outcome = nightly.extract(
                    night,
                    code,
                    full=full,
                    replay=code in replayed,
                    retries=3,
                    backoff_s=2.0,
                    on_result=extracted,
                )
            except nightly.DepartmentFlagged as exc:
                if not any(r.department == code for r in results):
                    refused.append(f"[red]{code}[/red]: {exc}")
                continue
            if outcome["status"] == "reused":
                reused[code] = outcome["tables"]
    console.print(_extraction_table(night.run_id, results, reused))
    for r in results:
        if r.message:
            console.print(f"[red]{r.department}[/red]: {r.message}", highlight=False)
        for t in r.tables:
            if r.ok and t.message:
                console.print(f"[yellow]{r.department}[/yellow]: {t.message}", highlight=False)
    for line in refused:
        console.print(line, highlight=False)
    say(f"Raw Parquet: {night.raw_root}")
    if refused or not all(r.ok for r in results) or _flags_broken(city, department):
        raise typer.Exit(1)


def _extraction_table(run_id: str, results: list[Any], reused: dict[str, Any]) -> Table:
    """Each table extracted tonight, then each table replayed from the raw data kept."""
    table = Table(title=f"Extraction, run {run_id}", title_justify="left")
    cols = ("department", "table", "mode", "rows", "unchanged", "late", "deleted", "watermark")
    numbers = ("rows", "unchanged", "late", "deleted", "s")
    for col in (*cols, "s", "status"):
        table.add_column(col, justify="right" if col in numbers else "left")
    for r in results:
        for t in r.tables:
            style = "green" if t.status == "ok" else "red"
            deleted = "—" if t.rows_deleted is None else f"{t.rows_deleted:,}"
            table.add_row(
                r.department,
                t.table,
                t.mode,
                f"{t.rows_read:,}",
                f"{t.rows_unchanged:,}",
                f"{t.rows_late:,}",
                deleted,
                t.watermark_after or "—",
                f"{t.duration_s:.1f}",
                f"[{style}]{t.status}",
            )
    for code, tables in reused.items():
        for name, t in tables.items():
            rows = f"{t['rows']:,}"
            table.add_row(code, name, "replay", rows, "—", "—", "—", "—", "—", "[green]reused")
    return table


@app.command("accept-deletions")
def accept_deletions(
    department: Annotated[str, typer.Option("--department", "-d", help="The department.")],
    reason: Annotated[
        str, typer.Option(help="Why the deletion is real (who confirmed it, the ticket).")
    ],
    table: Annotated[
        str | None, typer.Option(help="The table (default: the department's only table).")
    ] = None,
    rows: Annotated[
        int | None,
        typer.Option(min=1, help="Deletions to accept (default: what the last night held)."),
    ] = None,
    config: ConfigDir = Path("config"),
) -> None:
    """Accept a mass deletion that held a department's batch back: the next night lets it
    through and the base libraries drop the deleted rows.

    A night that deletes more than a table's `max_deleted_share` of its keys (or empties it)
    holds the department's batch back; once the department confirms the deletion is real, run
    this. It is written to the audit log (`govmdm audit list`) with your login and the reason.
    """
    from access import audit
    from etl.state import RunState, warehouse_url

    city = _load(config)
    runnable = _check_departments(city, [department]) or [department]
    dept = city.department(runnable[0])
    names = [t.name for t in dept.tables]
    if table is None and len(names) > 1:
        console.print(f"[red]{dept.code} has several tables: name one with --table ({names})")
        raise typer.Exit(2)
    chosen = table or names[0]
    if chosen not in names:
        console.print(f"[red]{dept.code} has no table {chosen!r}; its tables: {names}")
        raise typer.Exit(2)
    with RunState.for_city(city) as state:
        held = [
            r
            for r in state.ledger()
            if r["department"] == dept.code
            and r["table_name"] == chosen
            and r["deletion_guard"] == "held"
        ]
        last = held[-1] if held else None
        count = rows or (int(last["rows_deleted"]) if last else 0)
        if not count:
            console.print(
                f"[red]No night held a deletion of {dept.code} {chosen!r} back; give --rows to "
                "accept one in advance"
            )
            raise typer.Exit(2)
        state.accept_deletions(
            dept.code,
            chosen,
            count,
            by=audit.who(state.engine),
            reason=reason,
            held_run_id=last["run_id"] if last else None,
        )
    audit.record(
        warehouse_url(city),
        "accept_deletions",
        f"{dept.code}.{chosen}",
        role="platform",
        row_count=count,
        detail={"reason": reason, "held_run_id": last["run_id"] if last else None},
    )
    console.print(
        f"Accepted: the next night may delete up to {count:,} rows of {dept.code} {chosen!r} "
        f"beyond its limit (audited).",
        highlight=False,
    )


def _raw_rows(city: Any, run_id: str, department: str, table: str) -> int:
    import pyarrow.parquet as pq

    from etl.extract import raw_path

    path = raw_path(city.var_dir, run_id, department, table)
    return pq.ParquetFile(path).metadata.num_rows if path.exists() else 0


@app.command()
def standardize(
    config: ConfigDir = Path("config"),
    run_id: RunId = None,
    department: Departments = None,
    engine: EngineOption = None,
) -> None:
    """Standardize a run's raw rows into canonical person and enterprise rows.

    Every row lands either in the canonical table or in the rejects table with its reasons;
    a department whose counts do not reconcile fails (exit code 1), the others go on.
    """
    from pipeline import night as nightly

    city = _load(config)
    department = _check_departments(city, department)
    night = _night(city, config, run_id, engine)
    chosen = [d for d in city.departments if department is None or d.code in department]
    results: list[Any] = []
    with _progress() as bar:
        tasks = {
            d.code: bar.add_task(
                d.code, total=sum(_raw_rows(city, night.run_id, d.code, t.name) for t in d.tables)
            )
            for d in chosen
        }
        for d in chosen:
            with contextlib.suppress(nightly.DepartmentFlagged):  # shown in the table below
                nightly.standardize(
                    night,
                    d.code,
                    progress=lambda code, n: bar.advance(tasks[code], n),
                    on_result=results.append,
                )
    console.print(_standardization_table(night.run_id, results))
    for r in results:
        if r.message:
            console.print(f"[yellow]{r.department}[/yellow]: {r.message}", highlight=False)
    say(f"Canonical Parquet: {layout.canonical_run_dir(city.var_dir, night.run_id)}")
    if any(r.status in ("failed", "config") for r in results) or _flags_broken(city, department):
        raise typer.Exit(1)


def _standardization_table(run_id: str, results: list[Any]) -> Table:
    table = Table(title=f"Standardization, run {run_id}", title_justify="left")
    numbers = ("read", "standardized", "rejected")
    for col in ("department", *numbers, "rejected by reason", "top field reasons", "status"):
        table.add_column(col, justify="right" if col in numbers else "left")
    for r in results:
        top = ", ".join(f"{code} {n:,}" for code, n in r.field_reasons.most_common(3)) or "—"
        why = ", ".join(f"{c} {n:,}" for c, n in r.reject_reasons.most_common(3)) or "—"
        style = {"ok": "green", "skipped": "yellow"}.get(r.status, "red")
        table.add_row(
            r.department,
            f"{r.rows_read:,}",
            f"{r.standardized:,}",
            f"{r.rejected:,}",
            why,
            top,
            f"[{style}]{r.status}",
        )
    return table


@app.command()
def demo(
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Start a new city instead of the next night.")
    ] = False,
    config: ConfigDir = Path("config"),
    persons: Annotated[int, typer.Option(min=10)] = 5000,
    enterprises: Annotated[int, typer.Option(min=5)] = 600,
) -> None:
    """Run a night through Airflow on the embedded default (SQLite + Parquet under var/): the
    sample city, then the nightly DAG with `airflow dags test` on a project-local Airflow
    (var/airflow, SQLite metadata database), then what it did and how it scores against the
    sample's truth.

    The first run generates the sample city; each later run applies the next night's changes.
    """
    import json

    from pipeline.record import read_summary, summary_path

    city = _load(config)
    out = layout.city_dir(city.var_dir)
    console.rule("[bold]govmdm demo")
    config_check(config, connect=False)
    if fresh or not (out / "city.json").exists():
        sample(out=out, persons=persons, enterprises=enterprises, seed=20260630, target=None)
    else:
        sample(out=out, next_night=True, target=None)
    try:
        _probe_sources(city)
    except typer.Exit:
        console.print("[yellow]A source failed the probe: the night flags it and goes on.")
    rid = json.loads((out / "city.json").read_text())["as_of"]  # the sample city's night
    console.rule(f"[bold]night {rid}: the nightly DAG, run by Airflow")
    log = layout.demo_log_path(city.var_dir, rid)
    code = _run_demo_night(city, config, rid, log)
    summary = read_summary(city.var_dir, rid)
    if not summary:
        console.print("[red]The DAG run stopped before its summary.")
        say(f"Airflow's log: {log}")
        raise typer.Exit(1)
    console.print(_demo_table(rid, summary))
    _print_demo_night(summary)
    if code != 0:
        flagged = ", ".join(summary["flagged"]) or "a stage failed"
        console.print(f"[yellow]The DAG run ended failed ({flagged}); the others were published.")
    say(f"Night summary: {summary_path(city.var_dir, rid)}")
    say(f"Airflow's log: {log}")
    say(f"Airflow metadata database: {layout.airflow_db_path(city.var_dir)}")
    from cli import master

    console.rule(f"[bold]night {rid}: against the sample city's truth")
    master.evaluate(config=config, truth=out, as_json=False)
    console.print(
        "Watch the nights in the Airflow UI: `airflow standalone` on var/airflow (dags/README.md). "
        "Try: `govmdm explain <master ID | department:key>`, `govmdm review list`."
    )


def _run_demo_night(city: Any, config: Path, rid: str, log: Path) -> int:
    """Night ``rid`` through the nightly DAG on the project-local Airflow: a line as each
    Airflow command and each task starts, and as each task ends (the latest in the status line
    too); returns the DAG run's exit code."""
    import time

    from pipeline.airflow_local import run_local_night

    codes = [d.code for d in city.departments]  # the plan maps over them in this order
    began = time.monotonic()
    with console.status("Airflow: starting (db migrate, pools import, dags test)") as status:

        def show(line: str) -> None:
            if event := task_event(line, codes):
                say(f"  {time.monotonic() - began:5.0f}s  {event}")
                status.update(f"Airflow: govmdm_nightly · {event}")

        code, _ = run_local_night(city, config, rid, log=log, on_line=show)
    return code


_TASK_EVENT = re.compile(r"\[DAG TEST\] (starting|end) task(?: task)?_id=(\S+) map_index=(-?\d+)")


def task_event(line: str, departments: list[str]) -> str | None:
    """What a line of Airflow's output says of the night's progress, if anything: the Airflow
    command starting, a task starting or ending (a mapped one named by its department).

    >>> task_event("... [DAG TEST] starting task_id=department.extract map_index=1", ["a", "b"])
    'department.extract [b] started'
    >>> task_event("[DAG TEST] end task task_id=link map_index=-1", ["a"])
    'link finished'
    """
    if line.startswith("$ airflow "):
        return line[2:].strip()
    if not (m := _TASK_EVENT.search(line)):
        return None
    index = int(m[3])
    mapped = f" [{departments[index]}]" if 0 <= index < len(departments) else ""
    return f"{m[2]}{mapped} {'started' if m[1] == 'starting' else 'finished'}"


def _demo_table(rid: str, summary: dict[str, Any]) -> Table:
    """Each department's night, from the night's summary."""
    table = Table(title=f"Night {rid} in Airflow (govmdm_nightly)", title_justify="left")
    numbers = ("rows read", "deleted", "standardized", "rejected", "quality")
    quality = summary.get("quality", {}).get("departments", {})
    for col in ("department", "name", "extract", *numbers, "status"):
        table.add_column(col, justify="right" if col in numbers else "left", overflow="fold")
    for code, d in summary["departments"].items():
        ext, std = d.get("extract", {}), d.get("standardize", {})
        tables = ext.get("tables", {}).values()
        modes = sorted({t.get("mode", "?") for t in tables})
        deleted = sum(t.get("deleted") or 0 for t in tables)
        if d["status"] == "ok":
            status = "[green]ok"
        else:
            status = f"[red]{d.get('failed_stage')}: {d.get('message', '').splitlines()[0]}"
        q = quality.get(code, {})
        score = "—" if q.get("score") is None else f"{q['score']:.1f} {q.get('grade') or ''}"
        table.add_row(
            code,
            d.get("name", ""),
            "/".join(modes) or "—",
            f"{ext.get('rows', 0):,}",
            f"{deleted:,}",
            f"{std.get('standardized', 0):,}",
            f"{std.get('rejected', 0):,}",
            score,
            status,
        )
    return table


def _print_demo_night(summary: dict[str, Any]) -> None:
    """What the night linked and published, its quality and where its reports are."""
    if linked := summary.get("link"):
        base = f", on night {linked['base_run']}" if linked.get("base_run") else ""
        console.print(
            f"Linked ({linked['mode']}{base}): "
            + "; ".join(
                f"{e} {v['records']:,} records, {v['changed']:,} new or changed → "
                f"{v['masters']:,} masters"
                for e, v in sorted(linked["entities"].items(), reverse=True)
            ),
            highlight=False,
        )
    golden = summary["golden"]
    console.print(
        f"Golden tables (night {golden['published_run']}): 人口基础库 mdm_person "
        f"{golden['mdm_person']:,} · 法人基础库 mdm_enterprise {golden['mdm_enterprise']:,}",
        highlight=False,
    )
    if (score := summary.get("quality", {}).get("score")) is not None:
        console.print(f"Quality (GB/T 36344, mean of the departments): {score:.1f}")
    if reports := summary.get("reports"):
        say(f"Reports: {reports['directory']}/<department>.html and overview.html")
        if page := (reports.get("linkage") or {}).get("html"):
            say(f"Linkage summary: {page}")
        unsent = "not e-mailed (govmdm report --send e-mails them)"
        say(f"Delivery: {summary.get('delivery', {}).get('note', unsent)}")
