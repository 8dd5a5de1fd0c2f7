"""`govmdm run`: the whole night in one command, through the same stage functions as the
nightly DAG (:mod:`pipeline.night`): extract → standardize → validate per department, then
link → publish → quality → reports for the city, then the night's summary.

Exit codes follow the DAG run's outcome: 0 when every department made it through every stage,
1 when a department was flagged or a city stage failed (the rest still ran, as in the DAG),
2 for a usage or configuration error (nothing ran).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import (
    ConfigDir,
    Departments,
    RunId,
    _check_departments,
    _load,
    _night,
    _progress,
    app,
    console,
    say,
)

DEPARTMENT_STAGES = ("extract", "standardize", "validate")
CITY_STAGES = ("link", "publish", "quality", "reports")


@app.command()
def run(
    config: ConfigDir = Path("config"),
    run_id: RunId = None,
    department: Departments = None,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="Rebuild: read every source in full and compare every candidate pair again.",
        ),
    ] = False,
) -> None:
    """Run the whole night: extract → standardize → validate → link → publish → quality →
    reports, the stages of the nightly DAG, then one summary table.

    A department that fails a stage is flagged and the others go on; its rows of tonight are
    held back and its watermarks stay. Exit code 0 when all is well, 1 when a department was
    flagged or a stage failed, 2 on a usage or configuration error.
    """
    from pipeline import night as nightly

    city = _load(config)
    _check_departments(city, department)  # exits on an unknown or only broken departments
    night = _night(city, config, run_id)
    try:
        planned = nightly.plan(night, departments=department, full=full)
    except (nightly.NightRefused, ValueError) as exc:
        console.print(f"[red]{exc}", highlight=False)
        raise typer.Exit(2) from exc
    codes: list[str] = planned["departments"]
    problems: list[str] = [f"{c}: {m}" for c, m in planned["broken"].items()]
    with _progress() as bar:
        per_department = bar.add_task("departments", total=len(codes) * len(DEPARTMENT_STAGES))
        delivered = _departments(night, codes, planned, full, problems, bar, per_department)
        city_task = bar.add_task("city", total=len(CITY_STAGES))
        _city_stages(night, codes, delivered, full, problems, bar, city_task)
    summary = nightly.summarize(night)
    _report(night, summary, problems)
    if problems or summary["flagged"]:
        raise typer.Exit(1)


def _departments(
    night: Any,
    codes: list[str],
    planned: dict[str, Any],
    full: bool,
    problems: list[str],
    bar: Any,
    task: Any,
) -> list[str]:
    """Each department through extract → standardize → validate; the codes that made it."""
    from pipeline import night as nightly

    delivered = []
    for code in codes:
        replay = code in planned["rerun"]
        stages: dict[str, Callable[[], Any]] = {
            "extract": partial(
                nightly.extract, night, code, full=full, replay=replay, retries=3, backoff_s=2.0
            ),
            "standardize": partial(nightly.standardize, night, code),
            "validate": partial(nightly.validate, night, code),
        }
        for done, (stage, step) in enumerate(stages.items()):
            bar.update(task, description=f"{code} {stage}")
            try:
                step()
            except nightly.DepartmentFlagged as exc:
                problems.append(f"{code} {stage}: {exc}")
                bar.advance(task, len(DEPARTMENT_STAGES) - done)
                break
            bar.advance(task, 1)
        else:
            delivered.append(code)
    bar.update(task, description="departments")
    return delivered


def _city_stages(
    night: Any,
    codes: list[str],
    delivered: list[str],
    full: bool,
    problems: list[str],
    bar: Any,
    task: Any,
) -> None:
    """Link and publish what the departments delivered (under the night lock), judge the
    night's quality and write its reports; a failing stage stops those after it."""
    from master_data.night_state import ConsolidateError
    from pipeline import night as nightly
    from store.warehouse import WarehouseBusy

    held = [c for c in codes if c not in delivered]
    stage = "link"
    try:
        with nightly.lock(night, "consolidate"):  # no other night links or publishes between
            bar.update(task, description=stage)
            nightly.link(night, departments=delivered, held=held, full=full)
            bar.advance(task, 1)
            stage = "publish"
            bar.update(task, description=stage)
            nightly.publish(night)
            bar.advance(task, 1)
        stage = "quality"
        bar.update(task, description=stage)
        nightly.quality(night)
        bar.advance(task, 1)
        stage = "reports"
        bar.update(task, description=stage)
        nightly.build_reports(night)
        bar.advance(task, 1)
    except (nightly.NothingToLink, ConsolidateError, WarehouseBusy) as exc:  # said how to fix
        problems.append(f"{stage}: {exc}")
    except Exception as exc:  # failed as its DAG task would fail: the night's record still ends
        problems.append(f"{stage} failed: {type(exc).__name__}: {exc}")
    bar.update(task, description="city")


def _report(night: Any, summary: dict[str, Any], problems: list[str]) -> None:
    """The night's summary table (as ``govmdm demo`` shows it), what it published, the
    problems and where its record is."""
    from cli.night import _demo_table, _print_demo_night
    from pipeline.record import summary_path

    table = _demo_table(night.run_id, summary)
    table.title = f"Night {night.run_id} (govmdm run)"
    console.print(table)
    if summary.get("golden"):
        _print_demo_night(summary)
    for line in problems:
        console.print(f"[red]{line}", highlight=False, soft_wrap=True)
    say(f"Night record: {summary_path(night.var_dir, night.run_id)}")
