"""Real database servers for tests: admin URLs, reachability and throwaway databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

KINDS = ("postgres", "mariadb")

_ENV = {"postgres": "GOVMDM_TEST_PG_URL", "mariadb": "GOVMDM_TEST_MARIADB_URL"}
_DEFAULT_URL = {
    "postgres": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/?charset=utf8mb4",
}
_DEFAULT_PORT = {"postgres": 5432, "mariadb": 3306}
_NAME = {"postgres": "PostgreSQL", "mariadb": "MariaDB"}
_START = {
    "postgres": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "mariadb": "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
}
_CONNECT_TIMEOUT_S = 3

# Reachability per kind, filled on first use so a down server costs one timeout per session.
_reachability: dict[str, str | None] = {}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown database kind {kind!r}; expected one of {KINDS}")


def server_url(kind: str) -> str:
    """Admin URL of the `kind` server ("postgres" or "mariadb"), overridable via env."""
    _check_kind(kind)
    return os.environ.get(_ENV[kind]) or _DEFAULT_URL[kind]


def make_url_for(kind: str, dbname: str) -> str:
    """URL of database `dbname` on the `kind` server."""
    url = sa.make_url(server_url(kind)).set(database=dbname)
    if kind == "mariadb":
        url = url.update_query_dict({"charset": "utf8mb4"})
    return url.render_as_string(hide_password=False)


def _admin_engine(kind: str, probe: bool = False) -> sa.Engine:
    connect_args: dict[str, int] = {"connect_timeout": _CONNECT_TIMEOUT_S}
    if probe and kind == "mariadb":
        # PyMySQL's connect_timeout covers only the TCP connect, not a stalled handshake.
        connect_args["read_timeout"] = _CONNECT_TIMEOUT_S
    return sa.create_engine(
        server_url(kind),
        isolation_level="AUTOCOMMIT",  # CREATE/DROP DATABASE cannot run in a transaction
        poolclass=NullPool,
        connect_args=connect_args,
    )


def reachable(kind: str) -> str | None:
    """None if the `kind` server accepts connections, else a one-line reason."""
    engine = _admin_engine(kind, probe=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        cause = getattr(exc, "orig", None) or exc
        first_line = (str(cause).strip().splitlines() or [""])[0]
        return f"{type(cause).__name__}: {first_line}"
    finally:
        engine.dispose()
    return None


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def require_server(kind: str) -> str:
    """Return the `kind` admin URL; skip the test if the server is down, fail under CI."""
    if kind not in _reachability:
        _reachability[kind] = reachable(kind)
    reason = _reachability[kind]
    if reason is None:
        return server_url(kind)
    url = sa.make_url(server_url(kind))
    where = f"{url.host}:{url.port or _DEFAULT_PORT[kind]}"
    how = f"start it with `{_START[kind]}`, or set {_ENV[kind]}"
    message = f"{_NAME[kind]} not reachable at {where} ({reason})"
    if _in_ci():
        pytest.fail(f"{message}; CI=true requires it: {how}", pytrace=False)
    pytest.skip(f"{message}: {how}")


@contextmanager
def temporary_database(kind: str, prefix: str = "govmdm_test") -> Iterator[str]:
    """Create a uniquely named empty database, yield its URL, and drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}".lower()
    engine = _admin_engine(kind)
    quoted = engine.dialect.identifier_preparer.quote(name)
    if kind == "postgres":
        create = f"CREATE DATABASE {quoted}"
        drop = f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"
    else:
        create = f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        drop = f"DROP DATABASE IF EXISTS {quoted}"
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(create))
        try:
            yield make_url_for(kind, name)
        finally:
            with engine.connect() as conn:
                conn.execute(sa.text(drop))
    finally:
        engine.dispose()
