"""`govmdm link | publish | consolidate | explain | model | review | evaluate`: master data
commands.

Registered on :data:`cli.common.app`; every command is a thin layer over :mod:`master_data`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import (
    ConfigDir,
    EngineOption,
    RunId,
    _load,
    _night,
    _progress,
    _summarize,
    app,
    console,
    say,
)
from store import layout

review_app = typer.Typer(
    help="The review queue: pairs the model could not decide.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(review_app, name="review")
model_app = typer.Typer(
    help="The match model of the published night.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(model_app, name="model")

Full = Annotated[
    bool, typer.Option("--full", help="Compare every candidate pair again (a rebuild).")
]
Retrain = Annotated[
    bool, typer.Option("--retrain", help="Fit the match model afresh (implies nothing else).")
]


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """A night that cannot be linked or published says why and how to fix it, without a
    traceback, and the command ends with exit code 1."""
    from master_data.night_state import ConsolidateError
    from pipeline.night import NothingToLink
    from store.warehouse import WarehouseBusy

    try:
        yield
    except (ConsolidateError, WarehouseBusy, NothingToLink) as exc:
        console.print(f"[red]{exc}", highlight=False)
        raise typer.Exit(1) from exc


def _linking(night: Any, full: bool, retrain: bool) -> None:
    """Link the night (:func:`pipeline.night.link`) and show what it did."""
    from pipeline import night as nightly

    results: list[Any] = []
    with _refusals(), _progress() as bar:
        task = bar.add_task("linking", total=None)
        outcome = nightly.link(
            night,
            full=full,
            retrain=retrain,
            progress=lambda msg: bar.update(task, description=msg[:40]),
            on_result=results.append,
        )
    if outcome["held_back"]:
        console.print(
            "[yellow]Held back by a blocking quality rule tonight: "
            f"{', '.join(outcome['held_back'])}. Their rows stay as last published; "
            "`govmdm quality` says which rule.",
            highlight=False,
        )
    linked = results[0]
    _print_linked(linked)
    for why in linked.unfinished.values():
        console.print(
            f"[yellow]Not linked tonight: {why}. Its rows wait and its watermarks stay.",
            highlight=False,
        )
    for what in linked.recovered:
        console.print(f"[yellow]Damaged master state recovered: {what}", highlight=False)


def _publishing(night: Any) -> None:
    """Publish the linked night (:func:`pipeline.night.publish`) and say what moved."""
    from pipeline import night as nightly

    results: list[dict[str, Any]] = []
    with _refusals():
        nightly.publish(night, on_result=results.append)
    summary = results[0]
    counts = {e: s["masters"] for e, s in summary["entities"].items()}
    console.print(
        f"Published night {night.run_id}: {counts['person']:,} persons, "
        f"{counts['enterprise']:,} enterprises; {summary['watermarks_committed']} watermarks moved."
    )
    waiting = sorted({*summary.get("held_back", []), *summary.get("unfinished", {})})
    if waiting:
        console.print(
            f"[yellow]Watermarks kept for {', '.join(waiting)}: their rows of tonight were not "
            "published; the next night reads them again.",
            highlight=False,
        )
    _summarize(night)


def _print_linked(linked: Any) -> None:
    table = Table(
        title=f"Linking, run {linked.run_id} ({linked.mode}"
        + (f", from {linked.base_run})" if linked.base_run else ")"),
        title_justify="left",
    )
    cols = (
        "entity",
        "rows",
        "changed",
        "removed",
        "pairs",
        "rule links",
        "model links",
        "refused",
        "masters",
        "singletons",
        "review",
        "conflicts",
        "IDs",
        "s",
    )
    for col in cols:
        table.add_column(col, justify="left" if col in ("entity", "IDs") else "right")
    for e, r in linked.entities.items():
        ids = ", ".join(f"{k} {v:,}" for k, v in sorted(r.events.items())) or "—"
        table.add_row(
            e,
            f"{r.records:,}",
            f"{r.changed:,}",
            f"{r.removed:,}",
            f"{r.pairs_compared:,}",
            f"{r.rule_links:,}",
            f"{r.model_links:,}",
            f"{r.refused_hard_key + r.refused_kept_apart:,}",
            f"{r.masters:,}",
            f"{r.singletons:,}",
            f"{r.review_queue:,}",
            f"{r.conflicts:,}",
            ids,
            f"{r.seconds:.1f}",
        )
    table.caption = (
        f"relationships {linked.relationships:,}, unresolved references {linked.unresolved:,}"
    )
    console.print(table)
    say(f"Master state: {linked.state_dir}")


@app.command()
def link(
    config: ConfigDir = Path("config"),
    run_id: RunId = None,
    full: Full = False,
    retrain: Retrain = False,
    engine: EngineOption = None,
) -> None:
    """Link a night's canonical rows into master entities (nothing is published yet).

    Delta by default: only pairs touching new or changed rows are compared. The first night
    is always full and trains the model.
    """
    city = _load(config)
    _linking(_night(city, config, run_id, engine), full, retrain)


@app.command()
def publish(config: ConfigDir = Path("config"), run_id: RunId = None) -> None:
    """Publish a linked night to the warehouse in one transaction; move the watermarks."""
    city = _load(config)
    _publishing(_night(city, config, run_id))


@app.command()
def consolidate(
    config: ConfigDir = Path("config"),
    run_id: RunId = None,
    full: Full = False,
    retrain: Retrain = False,
    engine: EngineOption = None,
) -> None:
    """`govmdm link` then `govmdm publish`, as one night: no other night links or publishes in
    between."""
    from pipeline import night as nightly

    city = _load(config)
    night = _night(city, config, run_id, engine)
    with _refusals(), nightly.lock(night, "consolidate"):
        _linking(night, full, retrain)
        _publishing(night)


@app.command()
def explain(
    ref: Annotated[
        str,
        typer.Argument(
            metavar="REF",
            help="A master ID (P0000000001, E0000000001), or a source row as "
            "department:key or department/table/key.",
        ),
    ],
    config: ConfigDir = Path("config"),
    privileged: Annotated[
        bool,
        typer.Option(
            "--privileged",
            help="Show personal data in clear (only for logins listed as privileged users).",
        ),
    ] = False,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            metavar="OUT",
            help="Also write it as a self-contained page: the cluster as a graph, a waterfall "
            "of match weights per link.",
        ),
    ] = None,
) -> None:
    """The golden record, where each attribute came from, its member rows, and why they link.

    Personal data is masked unless `--privileged`; every explain is written to the audit log.
    The page of `--html` is masked exactly as the terminal is.
    """
    from access import audit
    from access.errors import AccessError, NotShared
    from access.explain import mask_explanation
    from access.release import release_of
    from access.session import resolve_role
    from etl.state import warehouse_url
    from master_data.explain import ExplainError
    from master_data.explain import explain as do_explain
    from master_data.night_state import ConsolidateError

    city = _load(config)
    try:
        role = resolve_role(city, privileged, action="explain")
    except AccessError as exc:
        console.print(f"[red]{escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from exc
    try:
        ex = do_explain(city, ref)
    except (ExplainError, LookupError, ConsolidateError) as exc:  # nothing published, damage
        console.print(f"[red]{escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
    if role == "analyst":
        try:
            ex = mask_explanation(ex, release_of(city))
        except NotShared as exc:
            audit.record(
                warehouse_url(city),
                "explain",
                ex.master_id,
                role=role,
                outcome="refused",
                detail={"reason": str(exc)},
            )
            console.print(f"[red]{escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from exc
    audit.record(warehouse_url(city), "explain", ex.master_id, role=role, row_count=len(ex.members))
    _print_explanation(ex)
    if html is not None:
        _write_explain_page(city, config, ex, html, privileged=role != "analyst")


def _write_explain_page(city: Any, config: Path, ex: Any, out: Path, *, privileged: bool) -> None:
    """The explanation (already masked for an analyst) as a page, with the published model."""
    from master_data.model import FellegiSunter
    from master_data.published import published_night
    from master_data.settings import load_match_settings
    from web.linkage import explain_page

    try:
        path = published_night(city).state_dir / ex.entity / "model.json"
        model = FellegiSunter.from_json(path.read_text())
    except (LookupError, OSError, ValueError, KeyError) as exc:
        console.print(f"[red]No page written: {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
    bands = load_match_settings(config).entity(ex.entity).thresholds
    thresholds = {"auto_link": bands.auto_link, "review": bands.review}
    out.write_text(
        explain_page(ex, model, thresholds=thresholds, privileged=privileged), encoding="utf-8"
    )
    say(f"Explain page: {out.resolve()}")


_ATTRIBUTE_KEYS = ("attribute", "value", "department", "source_key", "updated", "rule", "agree")


def _print_explanation(ex: Any) -> None:
    """The golden record with each value's source, the member rows and the links."""
    console.rule(f"[bold]{ex.master_id}[/bold] ({ex.entity}, night {ex.run_id})")
    golden = Table(title="golden record", title_justify="left")
    for col in ("attribute", "value", "department", "source key", "updated", "rule", "agree"):
        golden.add_column(col)
    for a in ex.attributes:
        golden.add_row(*[escape(str(a[k])) if a[k] is not None else "—" for k in _ATTRIBUTE_KEYS])
    console.print(golden)
    members = Table(title="member rows", title_justify="left")
    for col in ex.member_columns:
        members.add_column(col, overflow="fold")
    for m in ex.members:
        members.add_row(*[escape(str(m.get(c) or "")) for c in ex.member_columns])
    console.print(members)
    links = Table(title="links", title_justify="left")
    for col in ("left", "right", "rule / probability", "field weights"):
        links.add_column(col, overflow="fold")
    for lk in ex.links:
        links.add_row(*[escape(str(lk[c])) for c in ("left", "right", "why", "weights")])
    console.print(links)
    for line in ex.notes:
        console.print(line, highlight=False, markup=False)


@model_app.command("show")
def model_show(
    config: ConfigDir = Path("config"),
    entity: Annotated[str, typer.Option(metavar="ENTITY", help="person or enterprise")] = "person",
    html: Annotated[
        Path | None,
        typer.Option(
            "--html", metavar="OUT", help="Also write the model as a self-contained HTML page."
        ),
    ] = None,
) -> None:
    """Each comparison's levels with m, u and match weight log2(m/u), the prior λ, and the
    band thresholds of config/matching.yaml: the model the published night linked with."""
    from master_data.model import FellegiSunter
    from master_data.published import published_night
    from master_data.settings import load_match_settings
    from web.linkage import model_levels, model_page

    if entity not in ("person", "enterprise"):
        console.print(f"[red]--entity is person or enterprise, not {escape(entity)!r}")
        raise typer.Exit(2)
    city = _load(config)
    try:
        night = published_night(city)
        path = night.state_dir / entity / "model.json"
        model = FellegiSunter.from_json(path.read_text())
    except (LookupError, OSError, ValueError, KeyError) as exc:
        console.print(f"[red]{escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
    bands = load_match_settings(config).entity(entity).thresholds
    thresholds = {"auto_link": bands.auto_link, "review": bands.review, "keep": bands.keep}
    table = Table(
        title=f"Match model of {entity}, night {night.run_id}: λ = {model.prior:.6g} "
        f"(log2 odds {model.prior_weight:+.2f})",
        title_justify="left",
    )
    for col in ("comparison", "level", "meaning", "m", "u", "weight"):
        table.add_column(col, justify="right" if col in ("level", "m", "u", "weight") else "left")
    for r in model_levels(model, entity):
        colour = "green" if r.weight >= 0 else "red"
        table.add_row(
            r.feature,
            str(r.level),
            f"{r.label} / {r.label_zh}",
            f"{r.m:.6g}",
            f"{r.u:.6g}",
            f"[{colour}]{r.weight:+.2f}",
        )
    table.caption = "bands (match probability): " + ", ".join(
        f"{k} {v:g}" for k, v in thresholds.items()
    )
    console.print(table)
    if html is not None:
        html.write_text(
            model_page(model, entity, thresholds=thresholds, run_id=night.run_id),
            encoding="utf-8",
        )
        say(f"Model page: {html.resolve()}")


@model_app.command("summary")
def model_summary(
    config: ConfigDir = Path("config"),
    run_id: Annotated[
        str | None,
        typer.Option("--run-id", help="A published night (default: the latest one)."),
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            metavar="OUT",
            help="Write the page here instead of var/reports/run=ID/linkage.html.",
        ),
    ] = None,
) -> None:
    """A night's linkage: cluster sizes, the scored pairs against the review and auto-link
    bands, merges / splits / new and retired master IDs beside the night before and, on the
    sample city, precision and recall per case kind; also written as a self-contained page
    that the reports index links (the night's reports stage writes it too)."""
    from master_data.published import published_night
    from quality.linkage import EVENTS, case_rows_of, linkage_data, render_linkage_page
    from quality.report import LINKAGE_NAME, build_index, reports_dir

    city = _load(config)
    try:
        night = run_id or published_night(city).run_id
        data = linkage_data(city, night)
        page = render_linkage_page(data)
    except (LookupError, OSError, ValueError, KeyError) as exc:
        console.print(f"[red]{escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
    _print_linkage(data, EVENTS, case_rows_of)
    out = html or reports_dir(city, night) / LINKAGE_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    if html is None:
        build_index(city)
    say(f"Linkage summary: {out.resolve()}")


def _print_linkage(data: dict[str, Any], events: dict[str, str], cases: Any) -> None:
    previous = f", beside {data['previous']}" if data["previous"] else ", the first night"
    table = Table(title=f"Linkage of night {data['run_id']}{previous}", title_justify="left")
    for col in ("entity", "records", "masters", "pairs", "below", "review", "auto", *events):
        table.add_column(col, justify="left" if col == "entity" else "right")
    for entity, d in data["entities"].items():
        for label, row in ((entity, d), ("  night before", d["previous"])):
            if row is None:
                continue
            same = row is d
            table.add_row(
                label,
                *(f"{d[k]:,}" if same else "" for k in ("records",)),
                f"{row['masters']:,}" if row.get("masters") is not None else "—",
                *(f"{d[k]:,}" if same else "" for k in ("pairs",)),
                *(f"{d['bands'][k]:,}" if same else "" for k in ("below", "review", "auto")),
                *(f"{row['events'][k] if same else row[k]:,}" for k in events),
            )
    console.print(table)
    if data["truth"]["note"]:
        say(data["truth"]["note"])
    for entity in data["truth"]["entities"]:
        t = Table(title=f"{entity}: pairs touching each case kind", title_justify="left")
        for col in ("case kind", "rows", "true pairs", "linked pairs", "precision", "recall"):
            t.add_column(col, justify="left" if col == "case kind" else "right")
        for c in cases(data, entity):
            t.add_row(
                c.kind,
                f"{c.rows:,}",
                f"{c.true_pairs:,}",
                f"{c.predicted_pairs:,}",
                f"{c.precision:.4f}",
                f"{c.recall:.4f}",
            )
        console.print(t)


@review_app.command("list")
def review_list(
    config: ConfigDir = Path("config"),
    entity: Annotated[str | None, typer.Option(help="person or enterprise")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
) -> None:
    """The open review queue, most probable first (the steward role; on SQLite the warehouse
    file's owner)."""
    from access.errors import AccessError
    from access.review import queue

    city = _load(config)
    try:
        rows = queue(city, entity=entity, limit=limit)
    except AccessError as exc:
        console.print(f"[red]{escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from exc
    table = Table(title=f"Review queue ({len(rows)} shown)", title_justify="left")
    for col in ("entity", "left", "right", "probability", "masters", "field weights", "reason"):
        # record IDs whole on one line: a steward copies them into `review decide`
        table.add_column(col, overflow="fold", no_wrap=col in ("left", "right"))
    for r in rows:
        table.add_row(
            r["entity"],
            escape(r["left_record"]),
            escape(r["right_record"]),
            f"{r['probability']:.3f}",
            f"{r['left_master_id']} / {r['right_master_id']}",
            escape(r["weights_text"]),
            escape(r["reason"]),
        )
    console.print(table)
    console.print(
        "Decide with `govmdm review decide LEFT RIGHT link|apart`; the decision is recorded "
        "under your login and holds on every later night."
    )


@review_app.command("decide")
def review_decide(
    left: Annotated[str, typer.Argument(metavar="LEFT", help="record ID (department/table/key)")],
    right: Annotated[str, typer.Argument(metavar="RIGHT", help="record ID (department/table/key)")],
    decision: Annotated[str, typer.Argument(metavar="DECISION", help="link or apart")],
    by: Annotated[
        str | None,
        typer.Option(
            "--by", help="Checked against your login, never recorded instead of it (optional)."
        ),
    ] = None,
    note: Annotated[str | None, typer.Option(help="why")] = None,
    config: ConfigDir = Path("config"),
) -> None:
    """Record a steward's decision on a pair: it overrides the model from the next night on.

    Only the steward role decides (PostgreSQL: a login in govmdm_steward; SQLite: the warehouse
    file's owner, where file permissions are the only boundary); the decision and its audit
    row carry the authenticated login.
    """
    from access.errors import AccessError
    from access.review import ReviewError, decide

    city = _load(config)
    try:
        entity = decide(city, left, right, decision, by=by, note=note)
    except (ReviewError, AccessError) as exc:
        console.print(f"[red]{escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from exc
    console.print(
        escape(f"Recorded: {entity} {left} ~ {right}: {decision}. ")
        + "Run `govmdm consolidate` to apply it.",
        highlight=False,
    )


@review_app.command("serve")
def review_serve(
    config: ConfigDir = Path("config"),
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 8765,
    privileged: Annotated[
        bool,
        typer.Option(
            "--privileged",
            help="Show personal values in clear (only if your login holds the privilege).",
        ),
    ] = False,
) -> None:
    """The review queue as web pages on 127.0.0.1 only: pairs side by side, match weights,
    the clusters they would join; link / apart / skip as `review decide` does (audited, under
    your login). Open the address it prints: it carries this session's secret."""
    from access.errors import AccessError
    from access.review import queue
    from web.app import HOST, create_app, new_token, serve

    city = _load(config)
    try:
        queue(city, limit=1, privileged=privileged)  # refuse a non-steward before serving
    except (AccessError, LookupError) as exc:
        console.print(f"[red]{escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from exc
    token = new_token()
    console.print(
        f"Review page (this address carries the session's secret; Ctrl-C stops):\n"
        f"http://{HOST}:{port}/?token={token}",
        highlight=False,
        soft_wrap=True,
    )
    serve(create_app(city, token=token, privileged=privileged), port=port)


@app.command()
def evaluate(
    config: ConfigDir = Path("config"),
    truth: Annotated[
        Path | None, typer.Option(help="The sample city's folder (default: var/city).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Precision, recall and F1 of the published master data against the sample city's truth."""
    from master_data.published import evaluate_published

    city = _load(config)
    try:
        result = evaluate_published(city, truth or layout.city_dir(city.var_dir))
    except (FileNotFoundError, LookupError, ValueError) as exc:
        console.print(f"[red]{exc}", highlight=False)
        raise typer.Exit(1) from exc
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        return
    table = Table(title="Linkage against the truth", title_justify="left")
    for col in (
        "entity",
        "rows",
        "masters",
        "true",
        "pair P",
        "pair R",
        "pair F1",
        "cluster P",
        "cluster R",
        "cluster F1",
        "golden accuracy",
    ):
        table.add_column(col, justify="left" if col == "entity" else "right")
    every: list[str] = []
    for e, ev in result.entities.items():
        p, c = ev.pairwise, ev.clusters
        acc = _headline_accuracy(ev.golden)
        if ev.golden is not None:
            every.append(f"{e} {ev.golden.fully_correct:.4f}")
        table.add_row(
            e,
            f"{ev.counts.linked:,}",
            f"{ev.counts.clusters:,}",
            f"{ev.counts.true_entities:,}",
            f"{p.precision:.4f}",
            f"{p.recall:.4f}",
            f"{p.f1:.4f}",
            f"{c.precision:.4f}",
            f"{c.recall:.4f}",
            f"{c.f1:.4f}",
            f"{acc:.4f}",
        )
    table.caption = (
        "golden accuracy: masters right on every attribute that some member source row holds "
        "truly (what survivorship can choose).\nGolden accuracy over every scored attribute, "
        f"held by a source or not: {', '.join(every) or '—'}"
    )
    table.caption_justify = "left"
    console.print(table)
    console.print(_golden_table(result))
    console.print(_calibration_table(result))
    _print_cases(result)


def _headline_accuracy(golden: Any) -> float:
    """The share of masters right wherever a member holds the truth; NaN without the member
    rows (the night's state no longer kept): the caption still gives the all-attribute figure."""
    if golden is None or golden.held_fully_correct is None:
        return float("nan")
    return float(golden.held_fully_correct)


def _calibration_table(result: Any) -> Table:
    """Per entity: the scored pairs in bands of predicted match probability, and the share
    truly one entity; the review band (review ≤ p < auto_link), then the non-empty bands of
    the corroborated pairs alone (those the model may link without a reviewer)."""
    table = Table(
        title="Calibration: predicted probability against the truth", title_justify="left"
    )
    for col in ("entity", "band", "pairs", "true matches", "mean predicted", "true share"):
        table.add_column(col, justify="left" if col in ("entity", "band") else "right")
    for e, ev in result.entities.items():
        rows = [(f"[{b.low:g}, {b.high:g}{']' if b.high >= 1 else ')'}", b) for b in ev.calibration]
        if ev.review_band is not None:
            b = ev.review_band
            rows.append((f"review band [{b.low:g}, {b.high:g})", b))
        rows += [
            (f"corroborated [{b.low:g}, {b.high:g}{']' if b.high >= 1 else ')'}", b)
            for b in ev.calibration_corroborated
            if b.pairs
        ]
        for label, b in rows:
            mean, share = (
                ("", "") if b.pairs == 0 else (f"{b.mean_probability:.4f}", f"{b.true_share:.4f}")
            )
            table.add_row(e, label, f"{b.pairs:,}", f"{b.true_matches:,}", mean, share)
    return table


def _golden_table(result: Any) -> Table:
    """Per entity and attribute: the share of masters with the true value, over all masters
    and over those where some member source row holds it (what survivorship could choose)."""
    table = Table(title="Golden values against the truth", title_justify="left")
    for col in ("entity", "attribute", "accuracy", "wrong", "where a source holds it", "wrong"):
        table.add_column(col, justify="left" if col in ("entity", "attribute") else "right")
    for e, ev in result.entities.items():
        for attr, a in (ev.golden.attributes if ev.golden is not None else {}).items():
            held = "" if a.held_accuracy is None else f"{a.held_accuracy:.4f}"
            missed = "" if a.held is None else f"{a.held - (a.held_correct or 0):,} of {a.held:,}"
            table.add_row(
                e, attr, f"{a.accuracy:.4f}", f"{a.evaluated - a.correct:,}", held, missed
            )
    return table


def _print_cases(result: Any) -> None:
    """The hard cases per kind: pairs kept apart that were merged, rows not linked; then the
    walk-in patients' rows: their recall beside every other pair's, and the review band."""
    cases = [(e, c) for e, ev in result.entities.items() for c in ev.cases]
    for e, ev in result.entities.items():
        if ev.walk_ins is not None:
            console.print(f"{e} walk-in rows: {ev.walk_ins.describe()}", highlight=False)
    if not cases:
        return
    table = Table(title="Hard cases per kind", title_justify="left")
    for col in ("entity", "kind", "must", "pairs", "wrong", "rate", "what"):
        table.add_column(col, justify="right" if col in ("pairs", "wrong", "rate") else "left")
    for e, c in cases:
        rate = f"{c.rate:.2%} merged" if c.must == "apart" else f"{c.rate:.4f} recall"
        table.add_row(e, c.kind, c.must, f"{c.pairs:,}", f"{c.wrong:,}", rate, c.label)
    console.print(table)
