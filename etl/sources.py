"""Reach a department's database and compare its live schema with the configuration.

The first thing an engineer onboarding a department wants to know: does the connection resolve,
does every configured table and column exist, and how many rows are there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from etl.config import CityConfig, ConfigError, DepartmentConfig, resolve_connection


@dataclass
class TableProbe:
    """What the live database says about one configured table."""

    table: str
    rows: int | None = None
    missing_columns: list[str] = field(default_factory=list)
    problem: str | None = None


@dataclass
class SourceProbe:
    """One department: where its connection came from and the state of each table."""

    department: str
    backend: str | None = None
    tables: list[TableProbe] = field(default_factory=list)
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """Reachable, and every table and column is where the configuration says."""
        return self.problem is None and all(
            t.problem is None and not t.missing_columns for t in self.tables
        )


def probe(city: CityConfig, dept: DepartmentConfig, *, timeout_s: int = 5) -> SourceProbe:
    """Resolve, connect and inspect; never raises, every failure lands in ``problem``.

    >>> probe(city, city.department("gongan")).ok  # doctest: +SKIP
    True
    """
    result = SourceProbe(dept.code)
    try:
        url = make_url(resolve_connection(city, dept))
    except ConfigError as exc:
        result.problem = str(exc)
        return result
    result.backend = url.get_backend_name()
    connect_args = {} if result.backend == "sqlite" else {"connect_timeout": timeout_s}
    engine = sa.create_engine(url, connect_args=connect_args, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            for t in dept.tables:
                tp = TableProbe(t.name)
                result.tables.append(tp)
                if not inspector.has_table(t.name):
                    tp.problem = (
                        f"{dept.code}: table {t.name!r} not found in the source database "
                        f"(config key tables[].name). Fix: correct the table name in "
                        f"{dept.source_file or dept.code}, or ask the department about the rename."
                    )
                    continue
                live = {c["name"] for c in inspector.get_columns(t.name)}
                tp.missing_columns = [c for c in t.source_columns if c not in live]
                table = sa.table(t.name)
                tp.rows = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    except sa.exc.SQLAlchemyError as exc:
        # the driver's own message, without the URL (it may hold a password)
        cause = getattr(exc, "orig", None) or exc
        first_line = str(cause).splitlines()[0] if str(cause) else ""
        result.problem = (
            f"{dept.code}: cannot read the source database ({type(cause).__name__}: {first_line})"
        )
    finally:
        engine.dispose()
    return result
