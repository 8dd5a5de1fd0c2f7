"""`govmdm query | export | lookup | catalog | views install | audit list`: analysts' access.

Registered on :data:`cli.common.app`; every command is a thin layer over the :mod:`access`
package (query, export, lookup, catalog, views, audit). Output is masked
unless ``--privileged`` is given by a privileged user (see ``config/catalog.yaml``).
"""

from __future__ import annotations

import json
import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.common import ConfigDir, _load, app, console, say

notes = Console(stderr=True)

views_app = typer.Typer(
    help="The analyst views, roles and grants.", no_args_is_help=True, rich_markup_mode=None
)
audit_app = typer.Typer(
    help="The audit log: who read or changed what.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(views_app, name="views")
app.add_typer(audit_app, name="audit")

Privileged = Annotated[
    bool,
    typer.Option(
        "--privileged",
        help="Personal data in clear (full views). PostgreSQL: only for a login in the "
        "privileged role; SQLite: only for the warehouse file's owner. Audited.",
    ),
]


class QueryFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


class ExportFormat(StrEnum):
    parquet = "parquet"


class ListFormat(StrEnum):
    table = "table"
    json = "json"


def _fail(exc: Exception) -> typer.Exit:
    from access.errors import AccessDenied, PseudonymKeyMissing, QueryRefused

    console.print(f"[red]{escape(str(exc))}", highlight=False)
    refused = isinstance(exc, AccessDenied | QueryRefused | PseudonymKeyMissing)
    return typer.Exit(2 if refused else 1)


def _boundary(city: Any, privileged: bool) -> None:
    """Where privilege is asked for on SQLite, say plainly what really protects the data."""
    from access.errors import AccessError
    from access.session import boundary_note

    if not privileged:
        return
    try:
        note = boundary_note(city)
    except AccessError:
        return
    if note:
        notes.print(f"[yellow]{escape(note)}.", highlight=False)


def _text(value: Any) -> str:
    """A value from the data as a table cell: rich markup in it is shown, never applied."""
    return "" if value is None else escape(str(value))


@app.command()
def query(
    sql: Annotated[
        str,
        typer.Argument(metavar="SQL", help='One SELECT, e.g. "SELECT * FROM v_person LIMIT 5".'),
    ],
    fmt: Annotated[QueryFormat, typer.Option("--format", help="Output format.")] = (
        QueryFormat.table
    ),
    out: Annotated[
        Path | None, typer.Option("--out", help="Write to this file (needed for parquet).")
    ] = None,
    privileged: Privileged = False,
    max_rows: Annotated[
        int, typer.Option("--max-rows", min=1, help="Rows shown by --format table.")
    ] = 100,
    config: ConfigDir = Path("config"),
) -> None:
    """Run one read-only SELECT against the analyst views (v_person, v_enterprise, v_provenance,
    v_crosswalk, v_relationship, v_conflict, v_id_event, catalog); audited.

    Anything but a single SELECT is refused, and so is any table the role may not read.
    """
    from access.errors import AccessError
    from access.query import run_query

    city = _load(config)
    if fmt is QueryFormat.parquet and out is None:
        console.print("[red]--format parquet needs --out FILE.parquet")
        raise typer.Exit(2)
    _boundary(city, privileged)
    try:
        result = run_query(city, sql, privileged=privileged)
    except AccessError as exc:
        if hint := did_you_mean(str(exc)):
            exc = type(exc)(f"{exc}; {hint}")
        raise _fail(exc) from exc
    frame = result.frame
    if fmt is QueryFormat.parquet:
        assert out is not None
        _to_parquet(frame, out)
        say(f"{len(frame):,} rows → {out}")
    elif fmt is QueryFormat.csv:
        if out is None:
            frame.to_csv(sys.stdout, index=False)
        else:
            frame.to_csv(out, index=False, encoding="utf-8-sig")
            say(f"{len(frame):,} rows → {out}")
    elif fmt is QueryFormat.json:
        text = frame.to_json(orient="records", force_ascii=False, date_format="iso")
        if out is None:
            sys.stdout.write(text + "\n")
        else:
            out.write_text(text + "\n", encoding="utf-8")
            say(f"{len(frame):,} rows → {out}")
    else:
        table = Table(title_justify="left")
        for col in frame.columns:
            table.add_column(_text(col), overflow="fold")
        for row in frame.head(max_rows).itertuples(index=False):
            table.add_row(*[_text(v) for v in row])
        more = len(frame) - max_rows
        table.caption = f"{len(frame):,} rows ({result.role})" + (
            f"; {more:,} not shown: --format csv or parquet for all" if more > 0 else ""
        )
        console.print(table)
    if result.scrubbed:
        console.print(
            f"[yellow]{result.scrubbed} values held an ID or mobile number in clear and "
            "were masked."
        )


# What SQLite and PostgreSQL say of a relation or a column they do not know.
_QUALIFIED = r"(?:\w+\.)?(\w+)"
_UNKNOWN = (
    ("view", re.compile(rf'no such table: {_QUALIFIED}|relation "{_QUALIFIED}" does not exist')),
    ("column", re.compile(rf'no such column: {_QUALIFIED}|column "?{_QUALIFIED}"? does not')),
)


def did_you_mean(message: str) -> str | None:
    """For a query that names an unknown view or column, the analyst views or columns whose
    names are closest (difflib), as "did you mean …?"; None when there is nothing to suggest.

    >>> did_you_mean("the query failed: no such table: v_persn")
    'did you mean v_person?'
    >>> did_you_mean("the query failed: no such column: p.nmae")
    'did you mean name?'
    """
    import difflib

    from access.release import ANALYST_RELATIONS, VIEWS

    for kind, pattern in _UNKNOWN:
        if m := pattern.search(message):
            name = (m[1] or m[2]).lower()
            names = (
                sorted(ANALYST_RELATIONS)
                if kind == "view"
                else sorted({c for v in VIEWS for c in v.columns})
            )
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
            if close:
                return f"did you mean {' or '.join(close)}?"
    return None


def _to_parquet(frame: Any, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # SQLite columns may mix types: as text
        table = pa.Table.from_pandas(
            frame.astype(object).where(frame.notna(), None).astype("string"),
            preserve_index=False,
        )
    pq.write_table(table, out)


@app.command()
def export(
    fmt: Annotated[ExportFormat, typer.Option("--format", help="Output format.")] = (
        ExportFormat.parquet
    ),
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder (default var/exports/<time>-<role>/)."),
    ] = None,
    privileged: Privileged = False,
    pseudonymize: Annotated[
        bool,
        typer.Option(
            "--pseudonymize",
            help="Replace master IDs, ID numbers and source keys by HMAC tokens keyed by "
            "GOVMDM_PSEUDONYM_KEY (for extracts leaving the platform; joins still work).",
        ),
    ] = False,
    view: Annotated[
        list[str] | None, typer.Option("--view", help="Only this view (repeatable).")
    ] = None,
    config: ConfigDir = Path("config"),
) -> None:
    """Write the golden tables as Parquet for DuckDB / pandas, with a data dictionary
    (data_dictionary.parquet / .csv: column, type, 中文说明, masked?, authority) and
    manifest.json. Masked views unless --privileged; audited."""
    from access.errors import AccessError
    from access.export import export as do_export
    from access.release import VIEW_BY_NAME

    city = _load(config)
    unknown = [v for v in view or [] if v not in VIEW_BY_NAME]
    if unknown:
        console.print(f"[red]No view {', '.join(unknown)}; views: {', '.join(VIEW_BY_NAME)}")
        raise typer.Exit(2)
    _boundary(city, privileged)
    try:
        result = do_export(
            city, out, privileged=privileged, pseudonymize=pseudonymize, views=view or None
        )
    except AccessError as exc:
        raise _fail(exc) from exc
    table = Table(
        title=f"Export ({fmt.value}, {result.role}"
        + (", pseudonymized)" if result.pseudonymized else ")"),
        title_justify="left",
    )
    table.add_column("file")
    table.add_column("rows", justify="right")
    for name, path in result.files.items():
        table.add_row(path.name, f"{result.rows[name]:,}")
    table.caption = "data dictionary: data_dictionary.parquet / .csv"
    console.print(table)
    say(f"Exported to: {result.out_dir}")


@app.command()
def lookup(
    id_number: Annotated[
        str | None, typer.Option("--id-number", help="15 or 18 digits (x or X).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="With --birth-date.")] = None,
    birth_date: Annotated[
        str | None, typer.Option("--birth-date", help="1985-03-07, 19850307, 1985年3月7日.")
    ] = None,
    credit_code: Annotated[
        str | None,
        typer.Option("--credit-code", help="统一社会信用代码 (or 15-digit 注册号 / 组织机构代码)."),
    ] = None,
    privileged: Privileged = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigDir = Path("config"),
) -> None:
    """One person or enterprise: the golden record, each attribute's source department and
    date, the member source rows and related persons/enterprises. Masked unless --privileged;
    audited."""
    from access.errors import AccessError
    from access.lookup import lookup as do_lookup

    city = _load(config)
    _boundary(city, privileged)
    try:
        result = do_lookup(
            city,
            id_number=id_number,
            name=name,
            birth_date=birth_date,
            credit_code=credit_code,
            privileged=privileged,
        )
    except AccessError as exc:
        raise _fail(exc) from exc
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        return
    console.rule(f"[bold]{result.key_kind} {_text(result.key_shown)}[/bold] ({result.role})")
    for note in result.notes:
        console.print(note, highlight=False, markup=False)
    for m in result.matches:
        _print_match(m)
    if not result.matches:
        raise typer.Exit(1)


def _print_match(m: Any) -> None:
    by_attr = {p["attribute"]: p for p in m.provenance}
    golden = Table(title=f"{m.master_id} ({m.entity}): golden record", title_justify="left")
    for col in ("column", "value", "source department", "source key", "updated", "rule", "agree"):
        golden.add_column(col, overflow="fold")
    from master_data.survivorship import ATTRIBUTES

    attribute_of = {c: a for a, cols in ATTRIBUTES[m.entity].items() for c in cols}
    for column, value in m.record.items():
        p = by_attr.get(attribute_of.get(column, ""))
        golden.add_row(
            column,
            _text(value),
            _text(f"{p['department_name']} ({p['department']})") if p else "",
            _text(p["source_key"]) if p else "",
            _text(p["source_updated_at"])[:19] if p else "",
            _text(p["rule"]) if p else "",
            f"{p['agreeing']}/{p['candidates']}" if p and p["candidates"] is not None else "",
        )
    console.print(golden)
    members = Table(title="member source rows", title_justify="left")
    for col in ("department", "table", "key", "link", "probability", "since"):
        members.add_column(col, overflow="fold")
    for r in m.members:
        prob = r["link_probability"]
        members.add_row(
            _text(f"{r['department_name']} ({r['department']})"),
            _text(r["source_table"]),
            _text(r["source_key"]),
            _text(r["link_rule"]),
            "" if prob is None else f"{prob:.4f}",
            _text(r["first_run_id"]),
        )
    console.print(members)
    if m.related:
        related = Table(title="related", title_justify="left")
        for col in m.related[0]:
            related.add_column(_text(col), overflow="fold")
        for r in m.related:
            related.add_row(*[_text(v) for v in r.values()])
        console.print(related)


@app.command()
def catalog(
    fmt: Annotated[ListFormat, typer.Option("--format", help="Output format.")] = (
        ListFormat.table
    ),
    resource: Annotated[
        str | None,
        typer.Option("--resource", help="One resource's fields: mdm_person, gongan/t_rk_jbxx …"),
    ] = None,
    config: ConfigDir = Path("config"),
) -> None:
    """The catalog of shared resources (信息资源目录): every golden table and department
    source, with fields, owner, authority, update frequency and share type."""
    from access.catalog import FREQUENCY_ZH, build_catalog
    from access.catalog import resource as one_resource
    from etl.config import ConfigError

    city = _load(config)
    try:
        resources = [one_resource(city, resource)] if resource else build_catalog(city)
    except KeyError as exc:
        console.print(f"[red]No resource {resource!r}; `govmdm catalog` lists them.")
        raise typer.Exit(2) from exc
    except ConfigError as exc:
        console.print(f"[red]{exc}", highlight=False)
        raise typer.Exit(2) from exc
    if fmt is ListFormat.json:
        print(json.dumps([r.to_dict() for r in resources], ensure_ascii=False, indent=2))
        return
    if resource:
        r = resources[0]
        table = Table(title=f"{r.resource_id} {r.title}", title_justify="left")
        for col in ("field", "description", "maps to / type", "authority", "analyst view"):
            table.add_column(col, overflow="fold")
        for f in r.fields:
            table.add_row(
                f.name,
                f.description,
                f.maps_to or f.data_type or "",
                f.authority_name or "",
                f.masked or "明文",
            )
        table.caption = (
            f"owner {r.owner} ({r.contact}); {FREQUENCY_ZH[r.update_frequency]}更新; "
            f"{r.share_type_zh}" + (f": {r.share_condition}" if r.share_condition else "")
        )
        console.print(table)
        return
    table = Table(title=f"信息资源目录 {city.name}", title_justify="left")
    for col in (
        "resource",
        "title",
        "owner",
        "fields",
        "authority for",
        "frequency",
        "share type",
        "condition / basis",
        "view",
    ):
        table.add_column(col, overflow="fold")
    for r in resources:
        table.add_row(
            r.resource_id,
            r.title,
            r.owner,
            str(len(r.fields)),
            ", ".join(r.authority_for),
            FREQUENCY_ZH[r.update_frequency],
            r.share_type_zh,
            r.share_condition or r.share_basis or "",
            r.analyst_view or "",
        )
    table.caption = "Fields: govmdm catalog --resource ID; in SQL: SELECT * FROM catalog"
    console.print(table)


@views_app.command("install")
def views_install(
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL instead (for a DBA), do nothing.")
    ] = False,
    config: ConfigDir = Path("config"),
) -> None:
    """Create or replace the masked and full views and the catalog table; on PostgreSQL also
    the roles govmdm_analyst / govmdm_privileged and their grants. Idempotent."""
    from access import audit
    from access.errors import AccessError
    from access.policy import load_share_policy, roles_sql
    from access.release import release_of
    from access.views import grants_sql, install_views
    from access.viewsql import views_sql
    from etl.state import warehouse_url
    from store.warehouse import engine_for

    city = _load(config)
    engine = engine_for(warehouse_url(city))
    try:
        if sql:
            pg = engine.dialect.name == "postgresql"
            stmts = views_sql("postgresql" if pg else "sqlite", release_of(city))
            if pg:
                roles = load_share_policy(city).roles
                with engine.connect() as conn:
                    schema = str(conn.exec_driver_sql("SELECT current_schema()").scalar())
                stmts = roles_sql(roles) + stmts + grants_sql(roles, schema)
            print(";\n".join(stmts) + ";")
            return
        try:
            report = install_views(engine, city)
        except AccessError as exc:
            raise _fail(exc) from exc
        audit.record(
            engine,
            "views_install",
            engine.url.render_as_string(hide_password=True),
            role="platform",
            row_count=len(report.views),
            detail={"grants": report.grants, "warnings": report.warnings},
        )
    finally:
        engine.dispose()
    console.print(
        f"{len(report.views)} views on {report.backend} ({', '.join(report.views[::2])} and "
        f"their _full twins); catalog: {report.catalog_rows} fields"
        + (
            f"; roles and grants: {'ok' if report.grants else 'not set'}"
            if report.backend == "postgresql"
            else ""
        ),
        highlight=False,
    )
    for w in report.warnings:
        console.print(f"[yellow]{w}", highlight=False)


@audit_app.command("list")
def audit_list(
    action: Annotated[str | None, typer.Option(help="Only this action (query, lookup, …).")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only this person.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    fmt: Annotated[ListFormat, typer.Option("--format", help="Output format.")] = (
        ListFormat.table
    ),
    config: ConfigDir = Path("config"),
) -> None:
    """The audit log, newest first: your own entries; everyone's for the privileged role
    (PostgreSQL) or the warehouse file's owner (SQLite). An entry still `running` was begun
    and never finished (the command was killed or is still at work)."""
    from access import audit
    from access.errors import AccessError
    from access.session import session

    city = _load(config)
    try:
        with session(city) as own:
            mine = "privileged" not in own.caller.may
            if mine and own.caller.backend == "sqlite":
                notes.print(f"[yellow]{escape(own.caller.boundary)}.", highlight=False)
            rows = audit.entries(own.engine, action=action, user=user, limit=limit, own=mine)
            me = own.caller.who
    except AccessError as exc:
        raise _fail(exc) from exc
    if fmt is ListFormat.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2, default=str))
        return
    table = Table(title="Audit log" + (f" ({me})" if mine else ""), title_justify="left")
    for col in ("when", "who", "action", "role", "outcome", "rows", "target"):
        table.add_column(col, overflow="fold")
    for r in rows:
        style = "" if r["outcome"] == "ok" else "[red]"
        table.add_row(
            str(r["at"])[:19],
            escape(r["who"]),
            r["action"],
            _text(r["role"]),
            style + r["outcome"],
            _text(r["row_count"]),
            escape(r["target"]),
        )
    console.print(table)
