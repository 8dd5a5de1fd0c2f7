"""Real-database fixtures: throwaway PostgreSQL and MariaDB databases per test.

Without a reachable server these fixtures skip the test, or fail it when CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dbservers import require_server, temporary_database

# Fixture -> marker, so `-m postgres` / `-m "not mariadb"` select tests by what they need.
_FIXTURE_MARKERS = {
    "pg_server_url": "postgres",
    "pg_database": "postgres",
    "mariadb_server_url": "mariadb",
    "mariadb_database": "mariadb",
}


@pytest.hookimpl(tryfirst=True)  # markers must exist before -m deselection runs
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests with the database servers their fixtures need."""
    for item in items:
        fixturenames = getattr(item, "fixturenames", ())
        for marker in sorted({m for f, m in _FIXTURE_MARKERS.items() if f in fixturenames}):
            item.add_marker(marker)


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """Admin URL of a reachable PostgreSQL server."""
    return require_server("postgres")


@pytest.fixture(scope="session")
def mariadb_server_url() -> str:
    """Admin URL of a reachable MariaDB server."""
    return require_server("mariadb")


@pytest.fixture
def pg_database(pg_server_url: str) -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database, dropped after the test."""
    with temporary_database("postgres") as url:
        yield url


@pytest.fixture
def mariadb_database(mariadb_server_url: str) -> Iterator[str]:
    """URL of a fresh, empty utf8mb4 MariaDB database, dropped after the test."""
    with temporary_database("mariadb") as url:
        yield url
