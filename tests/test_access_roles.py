"""Who may do what, held by the database and the OS rather than by the tool's good manners:
analysts' queries run on their own login (an escape from ``SET ROLE`` finds nothing above it),
privilege comes from the database role or the OS user ID, only stewards decide reviews, the
audit log is append-only with identity from the connection, every statement has a time limit,
and the README's per-analyst login can use every analyst command. PostgreSQL roles are
cluster-wide: each test names its roles and logins after its own temporary database."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from sample_cities import CityFactory, copy_warehouse, isolate
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

import store.warehouse as wh
from access import audit
from access.errors import AccessDenied, AccessError, QueryRefused
from access.export import export
from access.lookup import lookup
from access.policy import ANALYST_URL_ENV, DbRoles, roles_sql
from access.query import _fetch_postgres, run_query
from access.review import ReviewError, decide, queue
from access.session import session
from cli.main import app
from etl.config import CityConfig, ConfigError, load_city_config
from etl.state import warehouse_url
from fields.masking import find_clear

ROOT = Path(__file__).resolve().parents[1]
NIGHT = "2026-06-30"

# The escape of the issue: the first call drops the role for the rest of the statement, the
# second reads the golden table as whoever is left.
ESCAPE = (
    "SELECT query_to_xml_and_xmlschema('select set_config(''role'',''none'',true)', true, "
    "false, ''), query_to_xml_and_xmlschema('select current_user, name, translate(id_number, "
    "''0123456789'', ''abcdefghij'') AS t FROM mdm_person LIMIT 3', true, false, '')"
)
WHO_AFTER_ESCAPE = (
    "SELECT query_to_xml('select set_config(''role'',''none'',true)', true, false, ''), "
    "query_to_xml('select current_user AS u, session_user AS s', true, false, '')"
)


@pytest.fixture(scope="module")
def city(make_city: CityFactory) -> Iterator[CityConfig]:
    """A 600-person city, one night published to SQLite, with the publish hook run; a copy
    (review decisions and the audit log write to it)."""
    with pytest.MonkeyPatch.context() as mp:
        yield make_city(
            mp,
            persons=600,
            enterprises=70,
            seed=7,
            until="published",
            views=True,
            run_id=NIGHT,
            copy=True,
        )


@pytest.fixture
def env(city: CityConfig, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    isolate(monkeypatch, city.var_dir)
    return monkeypatch


def _config_copy(city: CityConfig, where: Path, **policy: object) -> CityConfig:
    """The city with its config copied to ``where`` and ``config/catalog.yaml`` given
    ``policy`` (roles, query_timeout_s, …) on top; same var/."""
    shutil.copytree(city.root / "config", where / "config", dirs_exist_ok=True)
    _set_policy(where, **policy)
    return load_city_config(where / "config")


def _set_policy(root: Path, **policy: object) -> None:
    import yaml

    path = root / "config" / "catalog.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc.update(policy)
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")


def _read(url: str, sql: str, **params: object) -> list[sa.Row[object]]:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def _person_ids(city: CityConfig, n: int) -> pd.DataFrame:
    rows = _read(
        warehouse_url(city),
        "SELECT master_id, id_number FROM mdm_person WHERE id_number IS NOT NULL "
        "ORDER BY master_id LIMIT :n",
        n=n,
    )
    return pd.DataFrame(rows, columns=["master_id", "id_number"])


def _two_records(city: CityConfig) -> tuple[str, str]:
    """Two person source rows of different entities (a child's and an unrelated adult's in the
    issue's words: any two that the model did not link)."""
    rows = _read(
        warehouse_url(city),
        "SELECT department, source_table, source_key, master_id FROM mdm_crosswalk "
        "WHERE entity = 'person' ORDER BY master_id, department LIMIT 200",
    )
    first = rows[0]
    other = next(r for r in rows if r.master_id != first.master_id)
    return (f"{first.department}/{first.source_table}/{first.source_key}",
            f"{other.department}/{other.source_table}/{other.source_key}")  # fmt: skip


# --- PostgreSQL: a warehouse with its own roles, and logins made the README's way ---------------


@dataclass
class Pg:
    """A PostgreSQL warehouse of the city, its role names and the logins a test made."""

    city: CityConfig
    owner_url: str
    roles: dict[str, str]
    made: list[str] = field(default_factory=list)

    def login(self, kind: str, name: str | None = None) -> tuple[str, str]:
        """``CREATE ROLE <login> LOGIN IN ROLE <role>`` as the README tells a DBA; (name, URL)."""
        db = sa.make_url(self.owner_url).database
        login = name or f"{db}_{kind}_{len(self.made)}"
        self.admin(f"CREATE ROLE {login} LOGIN IN ROLE {self.roles[kind]}")
        self.made.append(login)
        url = sa.make_url(self.owner_url).set(username=login, password=None)
        return login, url.render_as_string(hide_password=False)

    def admin(self, sql: str) -> None:
        engine = sa.create_engine(self.owner_url, poolclass=NullPool)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(sql)
        finally:
            engine.dispose()


@pytest.fixture
def pg(city: CityConfig, pg_database: str, env: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Pg]:
    db = sa.make_url(pg_database).database
    roles = {kind: f"{db}_{kind}" for kind in ("analyst", "privileged", "steward")}
    c = _config_copy(city, tmp_path, roles=roles)
    out = Pg(c, pg_database, roles)
    try:
        copy_warehouse(c, pg_database)
        env.setenv("GOVMDM_WAREHOUSE_URL", pg_database)
        yield out
    finally:
        existing = {r.rolname for r in _read(pg_database, "SELECT rolname FROM pg_roles")}
        for role in [*out.made, *roles.values()]:
            if role in existing:
                out.admin(f"DROP OWNED BY {role}")  # its privileges in this database
                out.admin(f"DROP ROLE {role}")


# --- 1. the analyst role cannot be escaped ------------------------------------------------------


def test_postgres_escape_from_set_role_finds_only_the_analysts_login(
    pg: Pg, env: pytest.MonkeyPatch
) -> None:
    login, url = pg.login("analyst")
    env.setenv(ANALYST_URL_ENV, url)
    for sql in (ESCAPE, WHO_AFTER_ESCAPE, "SELECT pg_read_file('/etc/hostname')",
                "SELECT * FROM pg_ls_dir('/')"):  # fmt: skip
        with pytest.raises(AccessError):
            run_query(pg.city, sql)
    with session(pg.city) as s:
        # without the text check: the database itself holds
        with pytest.raises(QueryRefused, match="permission denied for table mdm_person"):
            _fetch_postgres(s.engine, ESCAPE, "analyst")
        _, rows = _fetch_postgres(s.engine, WHO_AFTER_ESCAPE, "analyst")
        xml = str(rows[0][1])
        assert f"<u>{login}</u>" in xml and f"<s>{login}</s>" in xml  # not the owner
        for sql in ("SELECT pg_read_file('/etc/hostname')", "SELECT * FROM pg_ls_dir('/')",
                    "SELECT set_config('role', 'postgres', true)"):  # fmt: skip
            with pytest.raises(AccessError, match="permission denied"):
                _fetch_postgres(s.engine, sql, "analyst")
    outcomes = _read(pg.owner_url, "SELECT outcome FROM audit_log WHERE who = :w", w=login)
    assert len(outcomes) == 4 and all(o.outcome != "ok" for o in outcomes)


def test_postgres_owner_and_superuser_logins_are_refused_for_analysts(
    pg: Pg, env: pytest.MonkeyPatch
) -> None:
    # the pipeline's URL (a superuser here) is not an analyst's, whichever variable holds it
    with pytest.raises(AccessDenied, match="superuser"):
        run_query(pg.city, "SELECT count(*) FROM v_person")
    env.setenv(ANALYST_URL_ENV, pg.owner_url)
    with pytest.raises(AccessDenied, match=r"GOVMDM_ANALYST_URL logs in as 'postgres'"):
        run_query(pg.city, "SELECT pg_read_file('/etc/hostname')")
    # an analyst's login that may also write a table is above the analyst role too
    writer, url = pg.login("analyst")
    pg.admin(f"GRANT INSERT ON mdm_conflict TO {writer}")
    env.setenv(ANALYST_URL_ENV, url)
    with pytest.raises(AccessDenied, match="may write mdm_conflict"):
        run_query(pg.city, "SELECT count(*) FROM v_person")


def test_postgres_errors_are_scrubbed_before_they_are_shown(
    pg: Pg, env: pytest.MonkeyPatch
) -> None:
    _, url = pg.login("analyst")
    env.setenv(ANALYST_URL_ENV, url)
    clear = _person_ids(pg.city, 1)["id_number"].iloc[0]
    with pytest.raises(AccessError) as caught:
        run_query(pg.city, f"SELECT CAST('{clear}' AS integer) FROM v_person")
    assert "out of range" in str(caught.value) and find_clear(str(caught.value)) == []
    assert clear[:6] + "********" + clear[-4:] in str(caught.value)


# --- 3. privilege comes from the database or the OS user ID -------------------------------------


def test_postgres_privilege_comes_from_the_database_role(pg: Pg, env: pytest.MonkeyPatch) -> None:
    _, analyst = pg.login("analyst")
    env.setenv(ANALYST_URL_ENV, analyst)
    for name in ("GOVMDM_PRIVILEGED_USERS", "GOVMDM_USER", "LOGNAME", "USER"):
        env.setenv(name, f"root,{audit.os_user()}" if "PRIVILEGED" in name else "root")
    with pytest.raises(AccessDenied, match=f"not in the {pg.roles['privileged']} role"):
        run_query(pg.city, "SELECT id_number FROM v_person_full", privileged=True)
    with pytest.raises(AccessDenied):
        lookup(pg.city, credit_code="91350100M000100Y43", privileged=True)
    _, privileged = pg.login("privileged")
    env.setenv(ANALYST_URL_ENV, privileged)
    full = run_query(
        pg.city, "SELECT id_number FROM v_person_full WHERE id_number IS NOT NULL",
        privileged=True,
    )  # fmt: skip
    assert full.role == "privileged" and find_clear(full.frame.to_csv())
    masked = run_query(pg.city, "SELECT id_number FROM v_person")  # masked unless asked
    assert find_clear(masked.frame.to_csv()) == []


def test_sqlite_privilege_is_the_file_owners_not_an_environment_variable(
    city: CityConfig, env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    owner = os.stat(Path(warehouse_url(city).removeprefix("sqlite:///"))).st_uid
    for name in ("GOVMDM_PRIVILEGED_USERS", "GOVMDM_USER", "LOGNAME", "USER", "LNAME",
                 "USERNAME"):  # fmt: skip
        env.setenv(name, f"root,{audit.os_user()}" if "PRIVILEGED" in name else "root")
    env.setattr(os, "geteuid", lambda: owner + 4242)  # someone else, who can read the file
    sql = "SELECT id_number FROM mdm_person"
    with pytest.raises(AccessDenied, match="only boundary"):
        run_query(city, sql, privileged=True)
    with pytest.raises(AccessDenied, match="does not own the warehouse file"):
        lookup(city, credit_code="91350100M000100Y43", privileged=True)
    with pytest.raises(AccessDenied):
        export(city, tmp_path / "x", privileged=True)
    assert run_query(city, "SELECT count(*) FROM v_person").role == "analyst"
    # a private --config cannot list anyone either
    private = _config_copy(city, tmp_path / "mine")
    (tmp_path / "mine" / "config" / "catalog.yaml").write_text(
        "privileged_users: [root]\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError, match="privileged_users is no longer read"):
        run_query(private, sql, privileged=True)
    env.undo()  # the owner, as themselves
    env.setenv("GOVMDM_VAR", str(city.var_dir))
    full = run_query(city, f"{sql} WHERE id_number IS NOT NULL", privileged=True)
    assert full.role == "privileged" and find_clear(full.frame.to_csv())


def test_cli_says_on_sqlite_that_file_permissions_are_the_boundary(
    city: CityConfig, env: pytest.MonkeyPatch
) -> None:
    out = CliRunner().invoke(
        app, ["query", "SELECT count(*) AS n FROM v_person_full", "--privileged", "--format",
              "csv", "--config", str(ROOT / "config")],
        env={"GOVMDM_VAR": str(city.var_dir)},
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "file's permissions are the only boundary" in out.output


# --- 5. only a steward decides, as themselves --------------------------------------------------


def test_sqlite_review_decisions_need_the_steward_and_record_the_os_account(
    city: CityConfig, env: pytest.MonkeyPatch
) -> None:
    a, b = _two_records(city)
    env.setenv("GOVMDM_USER", "analyst_li")
    env.setenv("LOGNAME", "analyst_li")
    owner = os.stat(Path(warehouse_url(city).removeprefix("sqlite:///"))).st_uid
    with env.context() as other:
        other.setattr(os, "geteuid", lambda: owner + 4242)
        with pytest.raises(AccessDenied, match="does not own the warehouse file"):
            decide(city, a, b, "link", by="数据管理处 王芳")
        with pytest.raises(AccessDenied):
            queue(city)
    with pytest.raises(AccessDenied, match="is not you"):
        decide(city, a, b, "link", by="数据管理处 王芳")
    assert decide(city, a, b, "apart", note="不是同一人") == "person"
    rows = _read(
        warehouse_url(city),
        "SELECT decided_by FROM mdm_review_decision WHERE left_record = :a AND right_record = :b",
        a=min(a, b),
        b=max(a, b),
    )
    assert [r.decided_by for r in rows] == [audit.os_user()]
    engine = wh.engine_for(warehouse_url(city))
    try:
        logged = audit.entries(engine, action="review_decide", limit=10)
    finally:
        engine.dispose()
    assert [(r["who"], r["outcome"]) for r in logged[:3]] == [
        (audit.os_user(), "ok"), (audit.os_user(), "refused"), ("uid:" + str(owner + 4242),
                                                                 "refused"),
    ]  # fmt: skip
    # listing the queue is audited too: refused for the other account, ok for the steward
    shown = queue(city, entity="person", limit=3)
    engine = wh.engine_for(warehouse_url(city))
    try:
        listed = audit.entries(engine, action="review_list", limit=10)
    finally:
        engine.dispose()
    assert [(r["who"], r["outcome"], r["row_count"]) for r in listed[:2]] == [
        (audit.os_user(), "ok", len(shown)),
        ("uid:" + str(owner + 4242), "refused", None),
    ]


def test_postgres_review_decisions_need_the_steward_role(pg: Pg, env: pytest.MonkeyPatch) -> None:
    a, b = _two_records(pg.city)
    analyst, analyst_url = pg.login("analyst")
    steward, steward_url = pg.login("steward")
    env.setenv("GOVMDM_USER", "数据管理处 王芳")
    env.setenv(ANALYST_URL_ENV, analyst_url)
    with pytest.raises(AccessDenied, match=f"not in the {pg.roles['steward']} role"):
        decide(pg.city, a, b, "link", by="数据管理处 王芳")
    with pytest.raises(AccessDenied):
        queue(pg.city)
    with (
        session(pg.city) as s,
        pytest.raises(sa.exc.ProgrammingError),
        s.engine.begin() as c,
    ):
        c.execute(sa.text("SELECT govmdm_review_decide(:a, :b, 'link', NULL)"), {"a": a, "b": b})
    env.setenv(ANALYST_URL_ENV, steward_url)
    [(queued,)] = _read(pg.owner_url, "SELECT count(*) FROM mdm_review_queue")
    assert len(queue(pg.city, limit=1000)) == queued
    listed = _read(
        pg.owner_url,
        "SELECT who, outcome, row_count FROM audit_log WHERE action = 'review_list' ORDER BY id",
    )
    assert [tuple(r) for r in listed] == [(analyst, "refused", None), (steward, "ok", queued)]
    with pytest.raises(AccessDenied, match="is not you"):
        decide(pg.city, a, b, "link", by="数据管理处 王芳")
    with pytest.raises(ReviewError, match="no published source row"):
        decide(pg.city, a, "gongan/t_rk_jbxx/nope", "link")
    assert decide(pg.city, b, a, "link", by=steward) == "person"
    rows = _read(pg.owner_url, "SELECT left_record, decided_by FROM mdm_review_decision")
    assert [(r.left_record, r.decided_by) for r in rows] == [(min(a, b), steward)]
    logged = _read(pg.owner_url, "SELECT who, role, outcome, target FROM audit_log WHERE action "
                   "= 'review_decide' ORDER BY id")  # fmt: skip
    assert [(r.who, r.role, r.outcome) for r in logged] == [
        (analyst, "steward", "refused"), (steward, "steward", "refused"),
        (steward, "steward", "ok"),
    ]  # fmt: skip
    # the steward role writes nothing directly
    with session(pg.city) as s, s.engine.connect() as conn:
        for sql in ("UPDATE mdm_review_decision SET decided_by = 'x'",
                    "DELETE FROM mdm_review_decision", "SELECT * FROM mdm_person"):  # fmt: skip
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                conn.exec_driver_sql(sql)
            conn.rollback()


# --- 6. the audit log: append-only, identity from the connection, begun before ---------------


def test_postgres_audit_log_is_append_only_and_knows_who_connected(
    pg: Pg, env: pytest.MonkeyPatch
) -> None:
    li, li_url = pg.login("analyst")
    wang, wang_url = pg.login("analyst")
    env.setenv("GOVMDM_USER", "someone_else")
    env.setenv("LOGNAME", "root")
    env.setenv(ANALYST_URL_ENV, wang_url)
    run_query(pg.city, "SELECT count(*) FROM v_person WHERE name LIKE '王%'")
    env.setenv(ANALYST_URL_ENV, li_url)
    run_query(pg.city, "SELECT count(*) FROM v_enterprise")
    [(wang_entry,)] = _read(pg.owner_url, "SELECT id FROM audit_log WHERE who = :w", w=wang)
    with session(pg.city) as s, s.engine.connect() as conn:
        for sql in ("DELETE FROM audit_log", "UPDATE audit_log SET who = 'x'",
                    "INSERT INTO audit_log (at, who, action, target, outcome, detail) "
                    "VALUES (now(), 'wang', 'query', 'x', 'ok', '{}')",
                    "SELECT * FROM audit_log", "TRUNCATE audit_log"):  # fmt: skip
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                conn.exec_driver_sql(sql)
            conn.rollback()
        with pytest.raises(sa.exc.DBAPIError, match="not a running entry"):
            conn.execute(sa.text("SELECT govmdm_audit_finish(:i, 'failed', 0, '{}')"),
                         {"i": wang_entry})  # fmt: skip
        conn.rollback()
        mine = audit.entries(conn, own=True)
    assert {r["who"] for r in mine} == {li} and mine[0]["outcome"] == "ok"
    assert mine[0]["finished_at"] is not None and mine[0]["detail"]["sql"].startswith("SELECT")
    out = CliRunner().invoke(
        app, ["audit", "list", "--format", "json", "--config", str(pg.city.root / "config")],
        env={ANALYST_URL_ENV: wang_url, "GOVMDM_USER": li},
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    listed = json.loads(out.output[out.output.index("[") :])
    assert {r["who"] for r in listed} == {wang} and "王%" in listed[0]["target"]
    _, boss = pg.login("privileged")
    env.setenv(ANALYST_URL_ENV, boss)
    with session(pg.city) as s:
        everyone = audit.entries(s.engine, action="query")
    assert {li, wang} <= {r["who"] for r in everyone}
    assert "someone_else" not in {r["who"] for r in everyone}


def _wait(predicate: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def _cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`govmdm ARGS` in its own process (so that it can be killed like a client)."""
    code = "import sys; from cli.main import app; sys.argv = ['govmdm', *sys.argv[1:]]; app()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.mark.slow
def test_postgres_killed_query_leaves_its_audit_row_and_its_backend_is_cancelled(
    pg: Pg, env: pytest.MonkeyPatch
) -> None:
    login, url = pg.login("analyst")
    _set_policy(pg.city.root, query_timeout_s=600)
    proc = _cli(["query", "SELECT count(*) FROM generate_series(1, 1000000000000) AS g, v_id_event",
                 "--config", str(pg.city.root / "config")],
                {ANALYST_URL_ENV: url, "GOVMDM_VAR": str(pg.city.var_dir)})  # fmt: skip

    def backends() -> list[sa.Row[object]]:
        return _read(pg.owner_url, "SELECT pid, state FROM pg_stat_activity WHERE usename = :u "
                     "AND query LIKE '%generate_series%'", u=login)  # fmt: skip

    try:
        assert _wait(lambda: [b for b in backends() if b.state == "active"], 60)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    [row] = _read(pg.owner_url, "SELECT outcome, target, finished_at FROM audit_log "
                  "WHERE who = :w AND action = 'query'", w=login)  # fmt: skip
    assert row.outcome == "running" and "generate_series" in row.target and not row.finished_at
    assert _wait(lambda: not backends(), 15), backends()  # the server noticed the dead client


@pytest.mark.slow
def test_sqlite_killed_query_leaves_its_audit_row(
    city: CityConfig, env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    c = _config_copy(city, tmp_path, query_timeout_s=600)
    marker = f"k{os.getpid()}x{time.monotonic_ns()}"
    proc = _cli(["query", f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
                 f"SELECT count(*) AS {marker} FROM n", "--config", str(c.root / "config")],
                {"GOVMDM_VAR": str(city.var_dir)})  # fmt: skip
    db = warehouse_url(city).removeprefix("sqlite:///")

    def running() -> list[tuple[str]]:
        with sqlite3.connect(db) as conn:
            return conn.execute(
                "SELECT outcome FROM audit_log WHERE target LIKE ?", (f"%{marker}%",)
            ).fetchall()

    try:
        assert _wait(lambda: running() == [("running",)], 60)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert running() == [("running",)]


def test_sqlite_audit_log_is_append_only_and_knows_the_os_account(
    city: CityConfig, env: pytest.MonkeyPatch
) -> None:
    env.setenv("GOVMDM_USER", "王芳")
    env.setenv("LOGNAME", "someone_else")
    env.setenv("USER", "someone_else")
    run_query(city, "SELECT count(*) FROM v_enterprise")
    db = warehouse_url(city).removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        last = conn.execute("SELECT id, who, outcome FROM audit_log ORDER BY id DESC").fetchone()
        assert last[1:] == (audit.os_user(), "ok")
        for sql in ("DELETE FROM audit_log", f"UPDATE audit_log SET who = 'x' WHERE id = {last[0]}",
                    f"UPDATE audit_log SET outcome = 'ok' WHERE id = {last[0]}"):  # fmt: skip
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)
    owner = os.stat(db).st_uid
    env.setattr(os, "geteuid", lambda: owner + 4242)
    run_query(city, "SELECT count(*) FROM v_person")
    out = CliRunner().invoke(
        app, ["audit", "list", "--format", "json", "--config", str(ROOT / "config")],
        env={"GOVMDM_VAR": str(city.var_dir), "GOVMDM_USER": audit.os_user()},
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    listed = json.loads(out.output[out.output.index("[") :])
    assert listed and {r["who"] for r in listed} == {f"uid:{owner + 4242}"}


# --- 7. every statement has a time limit -------------------------------------------------------


def test_postgres_statements_have_a_time_limit(pg: Pg, env: pytest.MonkeyPatch) -> None:
    login, url = pg.login("analyst")
    env.setenv(ANALYST_URL_ENV, url)
    _set_policy(pg.city.root, query_timeout_s=1)
    started = time.monotonic()
    with pytest.raises(AccessError, match="ran longer than 1 s"):
        run_query(pg.city, "SELECT count(*) FROM generate_series(1, 1000000000000)")
    assert time.monotonic() - started < 15
    for sql in ("SELECT pg_sleep_for('1 minute')", "SELECT pg_advisory_lock(1)",
                "SELECT pg_try_advisory_xact_lock(1)", "SELECT pg_sleep(60)"):  # fmt: skip
        with pytest.raises(QueryRefused, match="cannot be used here"):
            run_query(pg.city, sql)
    with session(pg.city) as s:
        started = time.monotonic()
        with pytest.raises(AccessError, match="ran longer than 1 s"):
            _fetch_postgres(s.engine, "SELECT pg_sleep(60)", "analyst")  # no text check
        assert time.monotonic() - started < 15
        with s.engine.connect() as conn:
            settings = {k: conn.exec_driver_sql(f"SHOW {k}").scalar() for k in (
                "statement_timeout", "client_connection_check_interval",
                "idle_in_transaction_session_timeout")}  # fmt: skip
    assert settings == {"statement_timeout": "1s", "client_connection_check_interval": "1s",
                        "idle_in_transaction_session_timeout": "1min"}  # fmt: skip
    [row] = _read(pg.owner_url, "SELECT outcome, detail FROM audit_log WHERE who = :w AND "
                  "target LIKE '%generate_series%'", w=login)  # fmt: skip
    assert row.outcome == "failed" and "ran longer" in row.detail


def test_sqlite_statements_have_a_time_limit(
    city: CityConfig, env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    c = _config_copy(city, tmp_path, query_timeout_s=1)
    started = time.monotonic()
    with pytest.raises(AccessError, match="ran longer than 1 s"):
        run_query(c, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
                         "SELECT count(*) FROM n")  # fmt: skip
    assert time.monotonic() - started < 10
    # the reader is gone: a checkpoint can move the whole WAL into the database again
    db = warehouse_url(city).removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0


# --- 8. the README's per-analyst login uses every analyst command ------------------------------


def test_postgres_readme_analyst_login_uses_the_tool(
    pg: Pg, env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    login, url = pg.login("analyst")
    person = _person_ids(pg.city, 1).iloc[0]
    firm = _read(pg.owner_url, "SELECT uscc FROM mdm_enterprise WHERE uscc IS NOT NULL LIMIT 1")
    runner = CliRunner()
    base = ["--config", str(pg.city.root / "config")]
    # an analyst who has only their own login puts it where the README says the warehouse is
    cli_env = {"GOVMDM_WAREHOUSE_URL": url, "GOVMDM_VAR": str(pg.city.var_dir)}
    runs = {
        "query": ["query", "SELECT session_user AS s, count(*) AS n FROM v_person GROUP BY 1",
                  "--format", "csv"],
        "lookup": ["lookup", "--id-number", person["id_number"]],
        "firm": ["lookup", "--credit-code", firm[0].uscc],
        "export": ["export", "--out", str(tmp_path / "export")],
        "audit": ["audit", "list", "--format", "json"],
    }  # fmt: skip
    outputs = {}
    for name, args in runs.items():
        out = runner.invoke(app, [*args, *base], env=cli_env)
        assert out.exit_code == 0, (name, out.output)
        assert find_clear(out.output) == [], name
        outputs[name] = out.output
    assert re.search(rf"^{login},\d+$", outputs["query"], re.M)
    assert person["master_id"] in outputs["lookup"]
    assert (tmp_path / "export" / "person.parquet").is_file()
    listed = json.loads(outputs["audit"][outputs["audit"].index("[") :])
    assert {r["who"] for r in listed} == {login}
    assert {r["action"] for r in listed} >= {"query", "lookup", "export"}
    lookups = [r for r in listed if r["action"] == "lookup"]
    assert all(r["outcome"] == "ok" for r in lookups)
    assert any(r["detail"].get("master_ids") == [person["master_id"]] for r in lookups)
    # the lookup function answers one key per audit entry of one's own, nothing more
    env.setenv(ANALYST_URL_ENV, url)
    with (
        session(pg.city) as s,
        s.engine.connect() as conn,
        pytest.raises(sa.exc.DBAPIError, match="one key"),
    ):
        conn.execute(sa.text("SELECT * FROM govmdm_find_person(:i, :n, NULL, NULL)"),
                         {"i": lookups[0]["id"], "n": person["id_number"]})  # fmt: skip


def test_postgres_two_warehouses_installing_the_same_roles_at_once_both_succeed(
    pg_server_url: str,
) -> None:
    """Roles are the server's: two warehouses on one server installed at the same moment (two
    nights at once, two test workers) both create the roles. The second's creation waits for
    the first's commit and then finds the role taken, which is what it wanted."""
    tag = uuid.uuid4().hex[:8]
    roles = DbRoles(**{k: f"govmdm_race_{tag}_{k}" for k in ("analyst", "privileged", "steward")})
    engine = sa.create_engine(pg_server_url, poolclass=NullPool)
    failed: list[BaseException] = []

    def second() -> None:
        try:
            with engine.begin() as conn:
                for statement in roles_sql(roles):
                    conn.exec_driver_sql(statement)
        except BaseException as e:  # reported by the test's thread
            failed.append(e)

    try:
        with engine.connect() as first:
            with first.begin():
                for statement in roles_sql(roles):  # created, not yet committed
                    first.exec_driver_sql(statement)
                other = threading.Thread(target=second)
                other.start()
                # each look a transaction of its own: within one, pg_stat_activity stays as
                # it was first read
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as look:
                    for _ in range(600):  # the second waits on the first's roles
                        waiting = look.execute(
                            sa.text(
                                "SELECT count(*) FROM pg_stat_activity "
                                "WHERE wait_event_type = 'Lock' AND query LIKE :mine"
                            ),
                            {"mine": f"%govmdm_race_{tag}%"},
                        ).scalar()
                        if waiting:
                            break
                        time.sleep(0.05)
                assert waiting == 1
            other.join(30)
        assert not other.is_alive() and failed == []
        with engine.connect() as conn:
            made = conn.execute(
                sa.text("SELECT rolname FROM pg_roles WHERE rolname LIKE :mine"),
                {"mine": f"govmdm_race_{tag}_%"},
            ).scalars()
            assert sorted(made) == sorted(roles.names)
            member = f"SELECT pg_has_role('{roles.privileged}', '{roles.analyst}', 'MEMBER')"
            assert conn.exec_driver_sql(member).scalar() is True
    finally:
        with engine.begin() as conn:
            for name in roles.names:
                conn.exec_driver_sql(f"DROP ROLE IF EXISTS {name}")
        engine.dispose()
