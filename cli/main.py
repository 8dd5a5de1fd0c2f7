"""The ``govmdm`` command: every pipeline stage from the shell, no scheduler needed.

Each module of this package registers its commands on :data:`cli.common.app`; importing them
here, in the order ``govmdm --help`` lists them, puts the whole command line together.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from cli.common import app, console

for _module in ("run", "night", "analyst", "master", "quality", "report"):
    importlib.import_module(f"cli.{_module}")


def _version() -> str:
    try:
        return version("govmdm")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        console.print(f"govmdm {_version()}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Print govmdm's version and exit.",
        ),
    ] = False,
) -> None:
    """Nightly ETL and master data for government data sharing (一数一源、多元校核)."""


__all__ = ["app"]

if __name__ == "__main__":
    app()
