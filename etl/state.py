"""Run state: watermarks, the extraction ledger, schema snapshots and key sets.

The tables (defined in :mod:`store.tables`) live in the warehouse database
(``sqlite:///<var_dir>/warehouse/govmdm.sqlite`` unless ``GOVMDM_WAREHOUSE_URL`` names another,
e.g. PostgreSQL); key sets for deletion detection live as Parquet under
``<var_dir>/state/keys``. An extraction only *proposes* a watermark and a key set;
:meth:`RunState.commit_watermarks` makes them current once the night has published, so a failed
night reruns from the same place (DESIGN: "watermarks move only after success").

>>> state = RunState.for_city(city)
>>> state.watermark("renshe", "insured_person")  # None before the first committed night
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

from etl.config import CityConfig
from store import failpoints
from store.tables import (
    STATE_TABLES,
    deletion_acceptance_table,
    ledger_table,
    metadata,
    pending_watermark_table,
    schema_snapshot_table,
    watermark_table,
)

Mode = Literal["full", "incremental"]
Status = Literal["ok", "drift", "unreachable", "failed"]

WAREHOUSE_ENV = "GOVMDM_WAREHOUSE_URL"


@dataclass(frozen=True)
class LedgerEntry:
    """One table of one department in one run: what was read and how it ended."""

    run_id: str
    department: str
    table_name: str
    mode: Mode
    rows_read: int
    watermark_before: str | None
    watermark_after: str | None
    started_at: dt.datetime
    duration_s: float
    status: Status
    message: str | None = None
    parquet_path: str | None = None
    rows_deleted: int | None = None
    rows_unchanged: int | None = None  # re-read at the watermark or NULL-stamped, not changed
    rows_late: int | None = None  # found by the key scan below the watermark (back-dated)
    rows_backdated: int | None = None  # changed with an old stamp: found by the hash check
    rows_duplicate: int | None = None  # rows of keys the source holds twice: rejected
    keys_before: int | None = None  # keys in the committed key set the deletions are out of
    deletion_guard: str | None = None  # held | accepted: a deletion above the table's limit


def warehouse_url(city: CityConfig) -> str:
    """The warehouse database: ``GOVMDM_WAREHOUSE_URL``, else SQLite under ``var_dir``.

    >>> warehouse_url(city)
    'sqlite:///.../var/warehouse/govmdm.sqlite'
    """
    if url := os.environ.get(WAREHOUSE_ENV, "").strip():
        return url
    path = city.var_dir / "warehouse" / "govmdm.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def key_set_path(var_dir: Path, department: str, table: str) -> Path:
    """The committed key set of a table: every source key seen by the last committed night."""
    return var_dir / "state" / "keys" / department / f"{table}.parquet"


def pending_key_set_path(var_dir: Path, run_id: str, department: str, table: str) -> Path:
    """A key set proposed by run ``run_id``; becomes the committed one on commit."""
    return (
        var_dir / "state" / "keys" / department / "pending" / f"run={run_id}" / f"{table}.parquet"
    )


def seen_set_path(var_dir: Path, department: str, table: str) -> Path:
    """The committed *seen set* of a table: a version (key and content hash) of each row whose
    change stamp equals the watermark or is NULL. Incremental nights read those rows again
    (``>=`` and ``IS NULL``) and drop the versions already seen."""
    return key_set_path(var_dir, department, f"{table}{SEEN_SUFFIX}")


def pending_seen_set_path(var_dir: Path, run_id: str, department: str, table: str) -> Path:
    """A seen set proposed by run ``run_id``; becomes the committed one on commit."""
    return pending_key_set_path(var_dir, run_id, department, f"{table}{SEEN_SUFFIX}")


SEEN_SUFFIX = ".seen"
HASH_SUFFIX = ".hashes"


def hash_set_path(var_dir: Path, department: str, table: str) -> Path:
    """The committed row hashes of a table: a version (key and content hash) of every row, as
    of the last row-hash check and the nights since; compared on the next check to find rows
    changed with a back-dated change stamp."""
    return key_set_path(var_dir, department, f"{table}{HASH_SUFFIX}")


class RunState:
    """The run-state tables of one warehouse, plus the key sets under ``var_dir``.

    >>> state = RunState("sqlite:///var/warehouse/govmdm.sqlite", Path("var"))
    >>> state.commit_watermarks("2026-07-01")
    0
    """

    def __init__(self, url: str, var_dir: Path) -> None:
        self.var_dir = var_dir
        backend = sa.make_url(url).get_backend_name()
        # Mapped extraction tasks may share one SQLite warehouse: wait for the lock, don't fail.
        connect_args = {"timeout": 60} if backend == "sqlite" else {}
        self.engine = sa.create_engine(url, connect_args=connect_args)
        metadata.create_all(self.engine, tables=STATE_TABLES, checkfirst=True)
        _add_missing_columns(self.engine)

    @classmethod
    def for_city(cls, city: CityConfig) -> RunState:
        """The run state of ``city``'s warehouse (see :func:`warehouse_url`).

        >>> RunState.for_city(city).var_dir == city.var_dir
        True
        """
        return cls(warehouse_url(city), city.var_dir)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def __enter__(self) -> RunState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- watermarks ----------------------------------------------------------------------------

    def watermark(self, department: str, table: str) -> tuple[str, str] | None:
        """The committed ``(change_column, value)`` of a table, or None before its first night.

        >>> state.watermark("renshe", "insured_person")
        ('last_modified', '2026-07-01 19:58:02')
        """
        w = watermark_table.c
        query = sa.select(w.change_column, w.value).where(
            w.department == department, w.table_name == table
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return (row.change_column, row.value) if row else None

    def committed_by(self, department: str) -> dict[str, str]:
        """Table → the night whose commit moved its watermark last, for one department.

        >>> state.committed_by("renshe")
        {'insured_person': '2026-07-01'}
        """
        w = watermark_table.c
        query = sa.select(w.table_name, w.run_id).where(w.department == department)
        with self.engine.connect() as conn:
            return {r.table_name: r.run_id for r in conn.execute(query)}

    def propose_watermark(
        self, run_id: str, department: str, table: str, change_column: str, value: str
    ) -> None:
        """Record the watermark run ``run_id`` reached; it counts only after commit.

        >>> state.propose_watermark("2026-07-01", "renshe", "insured_person",
        ...                         "last_modified", "2026-07-01 19:58:02")
        """
        p = pending_watermark_table.c
        with self.engine.begin() as conn:
            conn.execute(
                pending_watermark_table.delete().where(
                    p.run_id == run_id, p.department == department, p.table_name == table
                )
            )
            conn.execute(
                pending_watermark_table.insert().values(
                    run_id=run_id,
                    department=department,
                    table_name=table,
                    change_column=change_column,
                    value=value,
                    committed_at=_now(),
                )
            )

    def discard_pending(self, run_id: str, department: str | None = None) -> None:
        """Forget what run ``run_id`` proposed (for one department, or all of them)."""
        p = pending_watermark_table.c
        where = [p.run_id == run_id] + ([p.department == department] if department else [])
        with self.engine.begin() as conn:
            conn.execute(pending_watermark_table.delete().where(*where))
        root = self.var_dir / "state" / "keys"
        for pending in root.glob(f"{department or '*'}/pending/run={run_id}"):
            shutil.rmtree(pending, ignore_errors=True)

    def commit_watermarks(self, run_id: str, departments: Collection[str] | None = None) -> int:
        """Make run ``run_id``'s proposed watermarks and key sets current; returns how many
        watermarks moved. Call it after the night has published.

        ``departments``: only theirs move — the departments whose rows the night published; the
        others' proposals are dropped, so the next night reads their rows again. None: all.
        Safe to call again after a crash part way: what moved stays moved, the rest moves.

        >>> state.commit_watermarks("2026-07-01")
        6
        """
        p, w = pending_watermark_table.c, watermark_table.c
        now = _now()
        mine = [p.run_id == run_id]
        if departments is not None:
            mine.append(p.department.in_(sorted(departments)))
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(pending_watermark_table).where(*mine)).all()
            for r in rows:
                conn.execute(
                    watermark_table.delete().where(
                        w.department == r.department, w.table_name == r.table_name
                    )
                )
                conn.execute(
                    watermark_table.insert().values(
                        department=r.department,
                        table_name=r.table_name,
                        change_column=r.change_column,
                        value=r.value,
                        run_id=run_id,
                        committed_at=now,
                    )
                )
            conn.execute(pending_watermark_table.delete().where(p.run_id == run_id))
            a = deletion_acceptance_table.c
            used = [a.applied_run_id == run_id, a.consumed_at.is_(None)]
            if departments is not None:
                used.append(a.department.in_(sorted(departments)))
            conn.execute(deletion_acceptance_table.update().where(*used).values(consumed_at=now))
        failpoints.reached("publish:watermarks-db")
        for pending in sorted((self.var_dir / "state" / "keys").glob(f"*/pending/run={run_id}")):
            department = pending.parent.parent.name
            if departments is None or department in departments:
                for proposed in sorted(pending.glob("*.parquet")):
                    os.replace(proposed, key_set_path(self.var_dir, department, proposed.stem))
                    failpoints.reached("publish:keysets-moving")
            shutil.rmtree(pending, ignore_errors=True)
        return len(rows)

    # --- mass deletions ------------------------------------------------------------------------

    def accept_deletions(
        self,
        department: str,
        table: str,
        rows: int,
        *,
        by: str,
        reason: str,
        held_run_id: str | None,
    ) -> None:
        """Let the next night delete up to ``rows`` keys of a table beyond its limit (see
        :func:`deletion_allowance`); the acceptance is used up when that night publishes."""
        with self.engine.begin() as conn:
            conn.execute(
                deletion_acceptance_table.insert().values(
                    department=department,
                    table_name=table,
                    rows_accepted=rows,
                    held_run_id=held_run_id,
                    accepted_by=by,
                    reason=reason,
                    accepted_at=_now(),
                )
            )

    def deletion_allowance(
        self, run_id: str, department: str, table: str
    ) -> tuple[int, str] | None:
        """Rows accepted for deletion and by whom, not yet used by a published night; marks
        the acceptances as applied by ``run_id`` (used up when it publishes)."""
        a = deletion_acceptance_table.c
        mine = [a.department == department, a.table_name == table, a.consumed_at.is_(None)]
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(a.id, a.rows_accepted, a.accepted_by).where(*mine).order_by(a.id)
            ).all()
            if not rows:
                return None
            conn.execute(
                deletion_acceptance_table.update()
                .where(a.id.in_([r.id for r in rows]))
                .values(applied_run_id=run_id)
            )
        return sum(r.rows_accepted for r in rows), ", ".join(
            dict.fromkeys(r.accepted_by for r in rows)
        )

    # --- ledger --------------------------------------------------------------------------------

    def record(self, entries: list[LedgerEntry]) -> None:
        """Write ledger rows, replacing earlier rows of the same run, department and table.

        >>> state.record([LedgerEntry("2026-07-01", "renshe", "insured_person", "full", 596,
        ...               None, "2026-06-30 23:51:07", started, 0.4, "ok")])
        """
        lg = ledger_table.c
        with self.engine.begin() as conn:
            for e in entries:
                conn.execute(
                    ledger_table.delete().where(
                        lg.run_id == e.run_id,
                        lg.department == e.department,
                        lg.table_name == e.table_name,
                    )
                )
                conn.execute(ledger_table.insert().values(**asdict(e)))

    def ledger(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Ledger rows (of one run, or all), oldest first.

        >>> {r["status"] for r in state.ledger("2026-07-01")}
        {'ok'}
        """
        lg = ledger_table.c
        query = sa.select(ledger_table).order_by(lg.started_at, lg.department, lg.table_name)
        if run_id is not None:
            query = query.where(lg.run_id == run_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    # --- schema snapshots ----------------------------------------------------------------------

    def schema_snapshot(self, department: str, table: str) -> dict[str, str]:
        """Column → type text as of the last successful extraction (empty before the first).

        >>> state.schema_snapshot("renshe", "insured_person")["last_modified"]
        'DATETIME'
        """
        s = schema_snapshot_table.c
        query = sa.select(s.column_name, s.type_text).where(
            s.department == department, s.table_name == table
        )
        with self.engine.connect() as conn:
            return {r.column_name: r.type_text for r in conn.execute(query)}

    def save_schema_snapshot(
        self, run_id: str, department: str, table: str, types: Mapping[str, str]
    ) -> None:
        """Replace a table's snapshot with ``types`` (column → type text) from run ``run_id``."""
        s = schema_snapshot_table.c
        with self.engine.begin() as conn:
            conn.execute(
                schema_snapshot_table.delete().where(
                    s.department == department, s.table_name == table
                )
            )
            if types:
                conn.execute(
                    schema_snapshot_table.insert(),
                    [
                        {
                            "department": department,
                            "table_name": table,
                            "column_name": column,
                            "type_text": type_text,
                            "run_id": run_id,
                        }
                        for column, type_text in types.items()
                    ],
                )

    def forget_schema_snapshot(self, department: str, table: str) -> None:
        """Accept a table's changed column types: the next extraction snapshots them afresh."""
        s = schema_snapshot_table.c
        with self.engine.begin() as conn:
            conn.execute(
                schema_snapshot_table.delete().where(
                    s.department == department, s.table_name == table
                )
            )


def commit_watermarks(
    city: CityConfig, run_id: str, departments: Collection[str] | None = None
) -> int:
    """Move run ``run_id``'s watermarks and key sets into place once the night has published
    (only ``departments``' if given: see :meth:`RunState.commit_watermarks`).

    >>> commit_watermarks(city, "2026-07-01")
    6
    """
    with RunState.for_city(city) as state:
        return state.commit_watermarks(run_id, departments)


def _add_missing_columns(engine: sa.Engine) -> None:
    """Add the nullable columns a newer govmdm defines to tables an older one created."""
    inspector = sa.inspect(engine)
    with engine.begin() as conn:
        for table in STATE_TABLES:
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have and column.nullable:
                    type_sql = column.type.compile(dialect=engine.dialect)
                    conn.execute(
                        sa.text(
                            f"ALTER TABLE {conn.dialect.identifier_preparer.quote(table.name)} "
                            f"ADD COLUMN {conn.dialect.identifier_preparer.quote(column.name)} "
                            f"{type_sql}"
                        )
                    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
