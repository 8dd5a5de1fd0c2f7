"""The ``govmdm`` command: every pipeline stage from the shell, no scheduler needed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    name="govmdm",
    help="Nightly ETL and master data for government data sharing (一数一源、多元校核).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
config_app = typer.Typer(
    help="Inspect and validate the configuration in config/.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
console = Console()

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
    table.caption = f"SQLite databases: {out / 'sources'}/<department>.sqlite"
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
) -> None:
    """Generate the sample city (福州市): six departmental databases plus ground truth.

    公安 (population registry), 人社 (social insurance), 民政 (social assistance), 卫健 (health),
    市场监管 (business registry) and 税务 (tax), each with its own naming style, formats and dirt.
    The truth (which source row is which real person or enterprise, and the true values) goes to
    OUT/truth/*.parquet, never into the databases.
    """
    from etl.sample_city.generate import generate_city
    from etl.sample_city.generate import next_night as apply_next_night

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
                out, persons=persons, enterprises=enterprises, seed=seed, targets=targets,
                progress=advance,
            )  # fmt: skip
        title = f"Sample city (seed {seed}) written to {out}"
    console.print(_row_table(title, manifest, out))
    console.print(f"Ground truth: {out / 'truth'}/{{persons,enterprises,source_rows,dirt}}.parquet")
    if targets:
        from etl.sample_city.departments import DEPARTMENTS
        from etl.sample_city.generate import target_url

        console.print("Also loaded into (set these to read from the server instead of SQLite):")
        for t in targets:
            for d in DEPARTMENTS:
                url = target_url(t, d.code)
                console.print(f"  GOVMDM_CONN_{d.code.upper()}={url}", highlight=False)


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
        city = load_city_config(config)
    except ConfigError as exc:
        console.print(f"[red]Configuration has errors:[/red]\n{exc}", highlight=False)
        raise typer.Exit(2) from exc
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
    if connect:
        _probe_sources(city)


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
                f"[red]{t.problem}" if t.problem
                else f"[red]missing columns: {', '.join(t.missing_columns)}" if t.missing_columns
                else "[green]ok"
            )  # fmt: skip
            rows = "—" if t.rows is None else f"{t.rows:,}"
            table.add_row(d.code, result.backend or "—", t.table, rows, status)
    console.print(table)
    if failed:
        raise typer.Exit(1)


@app.command()
def demo(
    fresh: Annotated[
        bool, typer.Option(help="Start a new city instead of the next night.")
    ] = False,
    config: ConfigDir = Path("config"),
    persons: Annotated[int, typer.Option(min=10)] = 5000,
    enterprises: Annotated[int, typer.Option(min=5)] = 600,
) -> None:
    """Run everything that exists so far on the embedded default (SQLite + Parquet under var/).

    The first run generates the sample city; each later run applies the next night's changes.
    """
    from etl.config import load_city_config

    city = load_city_config(config)
    out = city.var_dir / "city"
    console.rule("[bold]govmdm demo")
    config_check(config, connect=False)
    if fresh or not (out / "city.json").exists():
        sample(out=out, persons=persons, enterprises=enterprises, seed=20260630, target=None)
    else:
        sample(out=out, next_night=True, target=None)
    _probe_sources(city)
    console.print(
        "Coming in later issues: extract, standardize, link, golden tables, quality reports, and "
        "the night run by Airflow."
    )


if __name__ == "__main__":
    app()
