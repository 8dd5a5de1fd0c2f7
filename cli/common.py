"""What every ``govmdm`` command shares: the Typer app, the console, common options and
loading the configuration the way a night loads it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

app = typer.Typer(
    name="govmdm",
    help="Nightly ETL and master data for government data sharing (一数一源、多元校核).",
    no_args_is_help=True,
    # Plain help, as click prints it: rich markup would eat "[...]" and markdown "<...>" in the
    # help texts, and rich shows every flag with a "<bool>" value it does not take.
    rich_markup_mode=None,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
config_app = typer.Typer(
    help="Inspect and validate the configuration in config/.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(config_app, name="config")
# Piped or logged output (make demo in CI, Airflow logs) gets room for the summary tables.
console = Console(width=None if sys.stdout.isatty() else 160)

ConfigDir = Annotated[
    Path, typer.Option("--config", help="Configuration folder.", show_default=True)
]


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


RunId = Annotated[
    str | None,
    typer.Option(
        "--run-id",
        help="The night's ID (default: today's date in the city's time zone). Rerunning a night "
        "with the same ID replaces its output.",
    ),
]
EngineOption = Annotated[
    str | None,
    typer.Option(
        "--engine",
        help="What runs the stage: local or spark (default: `engine` in config/city.yaml).",
    ),
]
Departments = Annotated[
    list[str] | None,
    typer.Option("--department", "-d", help="Only this department (repeatable)."),
]


def _load(config: Path) -> Any:
    """The city, loaded the way a night loads it: a broken department file flags that
    department (said here, in red) and the others run; a broken city file stops (exit 2)."""
    from etl.config import ConfigError, load_city_config

    try:
        city = load_city_config(config, tolerant=True)
    except ConfigError as exc:
        console.print(f"[red]Configuration has errors:[/red]\n{exc}", highlight=False)
        raise typer.Exit(2) from exc
    for code in city.broken:
        console.print(f"[red]{city.broken_message(code)}", highlight=False)
    return city


def _night(city: Any, config: Path, run_id: str | None, engine: str | None = None) -> Any:
    """The night ``run_id`` (default: today in the city's time zone) of the loaded city, as
    the pipeline's stages take it, run by ``engine`` (default: the city's); exits 2 on a run ID
    that cannot name the night's folders or an unknown engine."""
    from pipeline.context import Night

    try:
        return Night.of(city, config, run_id, engine)  # type: ignore[arg-type]  # checked there
    except ValueError as exc:
        console.print(f"[red]{exc}", highlight=False)
        raise typer.Exit(2) from exc


def _summarize(night: Any) -> None:
    """Bring the night's summary (``var/nights/run=<id>/night.json``) up to date, as the
    DAG's last task does, and say where it is."""
    from pipeline import night as nightly
    from pipeline.record import summary_path

    nightly.summarize(night)
    say(f"Night record: {summary_path(night.var_dir, night.run_id)}")


def _check_departments(city: Any, departments: list[str] | None) -> list[str] | None:
    """The departments to run (None: all that load); exits 2 on an unknown code, 1 when every
    named department's configuration is broken."""
    known = [d.code for d in city.departments]
    broken = [d for d in departments or [] if d in city.broken]
    if broken and len(broken) == len(departments or []):
        console.print(f"[red]Not run: the configuration of {', '.join(broken)} is broken (above)")
        raise typer.Exit(1)
    unknown = [d for d in departments or [] if d not in known and d not in broken]
    if unknown:
        console.print(
            f"[red]Unknown department {', '.join(unknown)}; configured: {', '.join(known)}"
        )
        raise typer.Exit(2)
    return [d for d in departments if d in known] if departments else None


def _flags_broken(city: Any, departments: list[str] | None) -> bool:
    """Whether a department this command was asked to run could not load."""
    return any(d in city.broken for d in departments) if departments else bool(city.broken)


def say(text: str, style: str | None = None) -> None:
    """A line holding a path or a command, printed as is (in ``style``): no markup or
    highlighting applied and never wrapped or cut by the console, so it can be copied from the
    terminal."""
    console.print(text, markup=False, highlight=False, soft_wrap=True, style=style)
