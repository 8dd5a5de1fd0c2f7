"""`govmdm report`: build the night's quality reports and, with ``--send``, e-mail them.

Registered on :data:`cli.common.app`; a thin layer over :mod:`quality.report` and
:mod:`quality.deliver`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import ConfigDir, _load, _night, app, console, say

_HEADLINE_STYLE = {
    "passed": "green",
    "attention": "yellow",
    "failed": "red",
    "held_back": "magenta",
}
_DELIVERY_STYLE = {"sent": "green", "failed": "red", "skipped": "yellow"}


@app.command()
def report(
    config: ConfigDir = Path("config"),
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run-id",
            help="The night to report on (default: the latest night with quality results).",
        ),
    ] = None,
    department: Annotated[
        str | None,
        typer.Option("--department", "-d", help="Only this department's report (no overview)."),
    ] = None,
    send: Annotated[
        bool,
        typer.Option(
            "--send",
            help="E-mail each department its report and the overview to the data-engineering "
            "contact (SMTP from GOVMDM_SMTP_*).",
        ),
    ] = False,
    nights: Annotated[int, typer.Option(min=1, help="Nights in the trend chart.")] = 14,
) -> None:
    """Write each department's data-quality report (HTML in Chinese + JSON) and the overview
    under var/reports/run=ID/; with --send, e-mail them (a report already e-mailed for the
    night is not sent again, so a rerun after a mail-server outage sends only the rest).

    Exit code 1 if any e-mail failed, 2 if there is nothing to report or a report would hold
    personal data in clear.
    """
    import dataclasses

    from pipeline import night as nightly
    from quality.deliver import DeliveryConfigError, SmtpSettings
    from quality.report import UnmaskedDataError

    city = _load(config)
    known = [d.code for d in city.departments]
    if department is not None and department not in known:
        console.print(f"[red]Unknown department {department}; configured: {', '.join(known)}")
        raise typer.Exit(2)
    settings = None
    if send:
        try:
            settings = SmtpSettings.from_env()
        except DeliveryConfigError as exc:
            console.print(f"[red]{exc}", highlight=False)
            raise typer.Exit(2) from exc
    rid = run_id or nightly.last_judged_night(city)
    if rid is None:
        console.print(
            "[red]No quality results in the warehouse yet: run the quality suites for a night "
            "first."
        )
        raise typer.Exit(2)
    night = _night(city, config, rid)
    built: list[Any] = []
    try:
        nightly.build_reports(night, department, nights=nights, on_result=built.append)
    except UnmaskedDataError as exc:
        console.print(f"[red]{exc}", highlight=False)
        raise typer.Exit(2) from exc
    reports = built[0]
    if not reports.departments:
        console.print(f"[yellow]No quality results for night {rid}.")
    console.print(_report_table(rid, reports))
    say(f"Reports: {reports.directory}")
    if not send:
        console.print("Not e-mailed (use --send).")
        return
    smtp = dataclasses.asdict(settings) if settings is not None else None
    sent: list[Any] = []
    with contextlib.suppress(nightly.DeliveryFailed):  # each failure is in the table below
        nightly.send_reports(night, department, smtp=smtp, nights=nights, on_result=sent.append)
    result = sent[0]
    if result.smtp_configured:
        console.print(_delivery_table(result))
    say(result.note, style=None if result.smtp_configured else "yellow")
    if not result.ok:
        raise typer.Exit(1)


def _report_table(run_id: str, reports: Any) -> Table:
    table = Table(title=f"Quality reports, night {run_id}", title_justify="left")
    cols = (
        "report",
        "name",
        "headline",
        "overall",
        "grade",
        "failed (B/E/W)",
        "not run",
        "conflicts",
        "file",
    )
    for col in cols:
        table.add_column(
            col, justify="right" if col in ("overall", "not run", "conflicts") else "left"
        )
    for code, r in reports.departments.items():
        d = r.data
        f = d["summary"]["failed_by_severity"]
        overall = d["score"]["overall"]
        table.add_row(
            code,
            d["department"]["name"],
            f"[{_HEADLINE_STYLE[r.headline]}]{r.headline_label}",
            "未覆盖" if overall is None else f"{overall:.1f}",
            d["score"]["grade"] or "—",
            f"{f['blocking']}/{f['error']}/{f['warning']}",
            str(d["summary"]["could_not_run"]),
            f"{d['summary']['conflicts']:,}",
            r.html_path.name,
        )
    if reports.overview is not None:
        o = reports.overview
        held = ", ".join(h["code"] for h in o.data["held_back"]) or "—"
        table.add_row(
            "overview",
            o.data["city"],
            f"[{_HEADLINE_STYLE[o.headline]}]{o.headline_label}",
            "",
            "",
            "",
            "",
            "",
            o.html_path.name,
        )
        table.caption = f"held back: {held}"
    return table


def _delivery_table(result: Any) -> Table:
    table = Table(title="E-mail", title_justify="left")
    for col in ("report", "to", "status", "reason"):
        table.add_column(col, overflow="fold")
    for d in result.deliveries:
        table.add_row(
            d.report, d.recipient or "—", f"[{_DELIVERY_STYLE[d.status]}]{d.status}", d.reason or ""
        )
    return table
