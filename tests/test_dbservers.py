"""Round trips through real temporary databases, and the skip-or-fail rule."""

from __future__ import annotations

import dbservers
import pytest
import sqlalchemy as sa
from dbservers import temporary_database
from sqlalchemy.pool import NullPool

# '𠮷' is outside the BMP: it only survives a true utf8mb4 MariaDB database.
ROWS: list[dict[str, str | None]] = [
    {"姓名": "张三", "身份证号": "110101199003070011"},
    {"姓名": "𠮷田", "身份证号": None},
]

_LIST_DATABASES = {
    "postgres": "SELECT datname FROM pg_database",
    "mariadb": "SELECT schema_name FROM information_schema.schemata",
}


def _databases(kind: str) -> set[str]:
    engine = sa.create_engine(dbservers.server_url(kind), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.text(_LIST_DATABASES[kind])).scalars())
    finally:
        engine.dispose()


def _round_trip_then_gone(kind: str) -> None:
    with temporary_database(kind) as url:
        name = sa.make_url(url).database
        assert name is not None
        assert name in _databases(kind)
        metadata = sa.MetaData()
        people = sa.Table(
            "人员",
            metadata,
            sa.Column("编号", sa.Integer, primary_key=True),
            sa.Column("姓名", sa.String(50), nullable=False),
            sa.Column("身份证号", sa.String(18)),
        )
        engine = sa.create_engine(url, poolclass=NullPool)
        try:
            with engine.begin() as conn:
                metadata.create_all(conn)
                conn.execute(people.insert(), ROWS)
            with engine.connect() as conn:
                query = sa.select(people.c["姓名"], people.c["身份证号"]).order_by(people.c["编号"])
                got = [dict(row) for row in conn.execute(query).mappings()]
        finally:
            engine.dispose()
        assert got == ROWS
    assert name not in _databases(kind)


def test_postgres_round_trip(pg_server_url: str) -> None:
    _round_trip_then_gone("postgres")


def test_mariadb_round_trip(mariadb_server_url: str) -> None:
    _round_trip_then_gone("mariadb")


def test_pg_database_fixture(pg_database: str, request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("postgres") is not None
    engine = sa.create_engine(pg_database, poolclass=NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT current_database()")).scalar() == (
            sa.make_url(pg_database).database
        )
    engine.dispose()


def test_mariadb_database_fixture(mariadb_database: str, request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("mariadb") is not None
    engine = sa.create_engine(mariadb_database, poolclass=NullPool)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT DATABASE(), @@collation_database")).one()
    engine.dispose()
    assert tuple(row) == (sa.make_url(mariadb_database).database, "utf8mb4_unicode_ci")


@pytest.fixture
def server_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbservers, "_reachability", {})
    monkeypatch.setattr(dbservers, "reachable", lambda kind: "OperationalError: refused")


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
@pytest.mark.usefixtures("server_down")
def test_require_server_fails_under_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=r"PostgreSQL not reachable at 127\.0\.0\.1:"):
        dbservers.require_server("postgres")


@pytest.mark.usefixtures("server_down")
def test_require_server_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"mariadbd.*GOVMDM_TEST_MARIADB_URL"):
        dbservers.require_server("mariadb")


def test_require_server_caches_and_returns_url(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_reachable(kind: str) -> None:
        calls.append(kind)

    monkeypatch.setattr(dbservers, "_reachability", {})
    monkeypatch.setattr(dbservers, "reachable", fake_reachable)
    assert dbservers.require_server("postgres") == dbservers.server_url("postgres")
    assert dbservers.require_server("postgres") == dbservers.server_url("postgres")
    assert calls == ["postgres"]
