"""`govmdm quality`: judge a night's quality rules and show each department's scorecard.

Registered on :data:`cli.common.app`; a thin layer over :func:`quality.suites.run_quality`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import (
    ConfigDir,
    Departments,
    RunId,
    _check_departments,
    _flags_broken,
    _load,
    _run_id,
    app,
    console,
)
from quality.results import DIMENSIONS

_SEVERITY_STYLE = {"warning": "yellow", "error": "red", "blocking": "bold red"}


@app.command()
def quality(
    config: ConfigDir = Path("config"),
    run_id: RunId = None,
    department: Departments = None,
    list_rules: Annotated[
        bool, typer.Option("--rules", help="List the configured rules instead of running them.")
    ] = False,
) -> None:
    """Judge a night's data-quality rules (config/quality) and score every department.

    Completeness, validity and uniqueness on each department's standardized batch (through
    Great Expectations), freshness, volume and delivery from the extraction ledger, consistency
    with the authority and references once the night is published, and the golden-table rules.
    Results go to dq_result and dq_scorecard (rerunning a night replaces its rows). Exit code 1
    if a blocking rule held a department's batch back or a rule could not run; 2 if the rules
    or the configuration have errors.
    """
    from etl.config import ConfigError
    from quality.rules import load_quality_rules
    from quality.suites import run_quality

    city = _load(config)
    department = _check_departments(city, department)
    try:
        rules = load_quality_rules(city, Path(config) / "quality")
    except ConfigError as exc:
        console.print(f"[red]Quality rules have errors:[/red]\n{exc}", highlight=False)
        raise typer.Exit(2) from exc
    if list_rules:
        _print_rules(rules, department)
        return
    rid = _run_id(city, run_id)
    with console.status(f"judging the quality rules of night {rid}"):
        night = run_quality(city, rid, departments=department, rules=rules)
    _print_scorecards(night)
    _print_failures(night)
    held = sorted(d for d, q in night.departments.items() if q.held_back)
    if held:
        console.print(
            f"[bold red]Held back from the golden tables:[/bold red] {', '.join(held)} "
            "(a blocking rule failed)",
            highlight=False,
        )
    errors = [r for r in night.results if r.status == "error"]
    for r in errors:
        console.print(f"[magenta]{r.rule_id}[/magenta]: {r.message}", highlight=False)
    from quality.tonight import UNSTANDARDIZED

    undelivered = sorted(
        {d for d, q in night.departments.items() if not q.delivered}
        | {r.department for r in night.results if r.message == UNSTANDARDIZED}
    )
    if undelivered:
        console.print(
            "[bold red]Not extracted or not standardized tonight, so their batch rules could "
            f"not run:[/bold red] {', '.join(undelivered)}",
            highlight=False,
        )
    console.print("Results: dq_result, dq_scorecard in the warehouse (`govmdm quality --rules`)")
    if held or errors or undelivered or _flags_broken(city, department):
        raise typer.Exit(1)


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _change(value: float | None) -> str:
    if value is None:
        return "—"
    style = "green" if value > 0 else "red" if value < 0 else "dim"
    return f"[{style}]{value:+.1f}"


def _print_scorecards(night: Any) -> None:
    table = Table(title=f"Data quality, night {night.run_id} (as of {night.as_of})")
    for col in ("department", "score", "grade", "change", *DIMENSIONS):
        table.add_column(col, justify="left" if col == "department" else "right")
    for col in ("failed w/e/b", "not run", "delivered", "held back"):
        table.add_column(col, justify="right" if col != "held back" else "left")
    for code, q in night.departments.items():
        scores = night.scores(code)
        failed = "/".join(str(q.failed[s]) for s in ("warning", "error", "blocking"))
        grade_style = {"A": "green", "B": "cyan", "C": "yellow"}.get(q.grade or "", "red")
        table.add_row(
            code,
            _score(q.score),
            f"[{grade_style}]{q.grade or '—'}",
            _change(q.change),
            *[_score(scores.get(d)) for d in DIMENSIONS],
            failed,
            str(q.not_run),
            "[green]yes" if q.delivered else "[red]no",
            "[bold red]HELD" if q.held_back else "—",
        )
    table.caption = "score 0–100 per GB/T 36344 dimension; — = not covered tonight"
    console.print(table)


def _print_failures(night: Any) -> None:
    failed = [r for r in night.results if r.status in ("failed", "error")]
    if not failed:
        console.print("[green]Every rule that ran passed.")
        return
    table = Table(title="Failed rules", title_justify="left")
    for col in ("department", "rule", "severity", "dimension", "target", "failed", "description"):
        table.add_column(col, overflow="fold", justify="right" if col == "failed" else "left")
    for r in failed:
        where = f"{r.target}.{r.column_name}" if r.column_name else r.target
        counts = f"{r.rows_failed:,}/{r.rows_checked:,}" if r.status == "failed" else "error"
        table.add_row(
            r.department,
            r.rule_id,
            f"[{_SEVERITY_STYLE[r.severity]}]{r.severity}",
            r.dimension,
            where,
            counts,
            r.description,
        )
    console.print(table)


def _print_rules(rules: Any, departments: list[str] | None) -> None:
    table = Table(title=f"Quality rules ({len(rules)})", title_justify="left")
    for col in (
        "rule",
        "department",
        "kind",
        "dimension",
        "severity",
        "threshold",
        "target",
        "description",
    ):
        table.add_column(col, overflow="fold")
    for r in rules:
        if departments and r.department not in departments:
            continue
        where = f"{r.target}.{r.column}" if r.column else r.target
        table.add_row(
            r.id,
            r.department,
            r.kind,
            r.dimension,
            f"[{_SEVERITY_STYLE[r.severity]}]{r.severity}",
            f"{r.threshold:g}",
            where,
            r.description,
        )
    console.print(table)
