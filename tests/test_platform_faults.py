"""Platform and configuration faults are data engineering's, never scored against a department."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
from sample_cities import CityFactory
from typer.testing import CliRunner

from cli.main import app
from etl.config import load_city_config
from etl.extract import extract_all

ROOT = Path(__file__).resolve().parents[1]
CODES = ("gongan", "renshe", "minzheng", "weijian", "shichang", "shuiwu")


@pytest.fixture
def var(make_city: CityFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``var/`` holding a copy of a small generated city (the tests run nights on it)."""
    make_city(monkeypatch, persons=300, enterprises=60, seed=1, copy=tmp_path)
    return tmp_path


def test_a_night_with_nothing_extracted_scores_nobody_and_mails_only_data_engineering(
    var: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiosmtpd.controller import Controller

    from quality.deliver import SmtpSettings, deliver_reports
    from quality.report import render_reports

    for code in CODES:  # the worker lost every source tonight
        monkeypatch.setenv(f"GOVMDM_CONN_{code.upper()}", f"sqlite:////nonexistent/{code}.sqlite")
    city = load_city_config(ROOT / "config")
    assert {r.status for r in extract_all(city, "n1", retries=0)} == {"unreachable"}
    runner = CliRunner()
    result = runner.invoke(app, ["quality", "--run-id", "n1"])
    assert result.exit_code == 1, result.output
    result = runner.invoke(app, ["report", "--run-id", "n1"])
    assert result.exit_code == 0, result.output
    reports = var / "reports" / "run=n1"
    for code in CODES:
        data = json.loads((reports / f"{code}.json").read_text())
        assert data["score"]["overall"] is None and data["score"]["grade"] is None, code
        assert data["headline"]["status"] != "failed"
        assert "平台故障" in data["headline"]["reasons"][0]
    overview = json.loads((reports / "overview.json").read_text())
    assert [a["kind"] for a in overview["alerts"]] == ["platform"]

    received: list[Any] = []

    class Box:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope.rcpt_tos)
            return "250 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    smtp = Controller(Box(), hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        settings = SmtpSettings(host="127.0.0.1", port=port, sender="govmdm@example.gov.cn")
        sent = deliver_reports(city, render_reports(city, "n1"), settings)
    finally:
        smtp.stop()
    assert received == [[city.data_engineering_contact.email]]
    assert {d.status for d in sent.deliveries if d.report != "overview"} == {"skipped"}


def test_a_column_no_value_of_which_parses_is_a_configuration_error(
    var: Path, tmp_path: Path
) -> None:
    config = tmp_path / "project" / "config"
    shutil.copytree(ROOT / "config", config)
    gongan = config / "departments" / "gongan.yaml"
    gongan.write_text(gongan.read_text().replace('format: "%Y%m%d"', 'format: "%Y-%m-%d"'))
    runner = CliRunner()
    args = ["--config", str(config), "--run-id", "2026-06-30"]
    assert runner.invoke(app, ["extract", *args]).exit_code == 0
    result = runner.invoke(app, ["standardize", *args])
    assert result.exit_code == 1
    flat = " ".join(result.output.split())
    assert (
        "column 'csrq'" in flat and "columns.csrq.format" in flat and "not the department" in flat
    )
    assert not (
        var / "canonical" / "run=2026-06-30" / "department=gongan" / "person.parquet"
    ).exists()
    assert runner.invoke(app, ["quality", *args]).exit_code == 1
    assert runner.invoke(app, ["report", *args]).exit_code == 0
    data = json.loads((var / "reports" / "run=2026-06-30" / "gongan.json").read_text())
    blamed = {r["kind"] for g in data["failed_rules"] for r in g["rules"]}
    assert not blamed & {"completeness", "validity", "uniqueness"}  # its batch is not judged
    assert any(r["status"] == "not_run" for r in data["rules_not_run"])
    overview = json.loads((var / "reports" / "run=2026-06-30" / "overview.json").read_text())
    alert = next(a for a in overview["alerts"] if a["kind"] == "unreadable_column")
    assert alert["code"] == "gongan" and "csrq" in alert["message"]


# --- one bad row -------------------------------------------------------------------------------


def _garble(var: Path) -> str:
    import sqlite3

    with sqlite3.connect(var / "city" / "sources" / "weijian.sqlite") as conn:
        key = conn.execute(
            "SELECT PATIENT_ID FROM PATIENT_INFO ORDER BY PATIENT_ID LIMIT 1"
        ).fetchone()[0]
        conn.execute(
            "UPDATE PATIENT_INFO SET PATIENT_NAME = CAST(X'E5BCA0FF' AS TEXT) WHERE PATIENT_ID = ?",
            (key,),
        )
    return str(key)


def test_a_value_that_is_not_utf8_rejects_its_row_and_the_table_goes_on(var: Path) -> None:
    import pyarrow.parquet as pq

    key = _garble(var)
    runner = CliRunner()
    args = ["--run-id", "2026-06-30"]
    for stage in ("extract", "standardize"):
        result = runner.invoke(app, [stage, *args, "-d", "weijian"])
        assert result.exit_code == 0, result.output
    folder = var / "canonical" / "run=2026-06-30" / "department=weijian"
    rejects = pq.read_table(folder / "rejects.parquet").to_pylist()
    garbled = [r for r in rejects if r["source_key"] == key]
    assert len(garbled) == 1 and "PATIENT_NAME:invalid_encoding" in garbled[0]["reasons"]
    persons = pq.read_table(folder / "person.parquet")
    raw = pq.read_table(
        var / "raw" / "run=2026-06-30" / "department=weijian" / "PATIENT_INFO.parquet"
    )
    assert persons.num_rows + len(rejects) == raw.num_rows > 100
    runner.invoke(app, ["quality", *args, "-d", "weijian"])
    assert runner.invoke(app, ["report", *args, "-d", "weijian"]).exit_code == 0
    report = json.loads((var / "reports" / "run=2026-06-30" / "weijian.json").read_text())
    rule = next(
        r for g in report["failed_rules"] for r in g["rules"] if r["rule_id"] == "weijian-ENC01"
    )
    assert rule["rows_failed"] == 1 and "列 PATIENT_NAME 1 行" in rule["message"]


def test_a_nul_character_keeps_its_row_is_reported_and_the_night_publishes_on_postgresql(
    var: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite (and MariaDB) store a NUL in text; a PostgreSQL warehouse cannot hold one."""
    import sqlite3

    import pyarrow.parquet as pq
    import sqlalchemy as sa

    from etl.standardize import standardize_all
    from master_data.link import link
    from master_data.publish import publish

    with sqlite3.connect(var / "city" / "sources" / "weijian.sqlite") as conn:
        a, b, c = (
            k
            for (k,) in conn.execute(
                "SELECT PATIENT_ID FROM PATIENT_INFO WHERE HOME_ADDR > '' AND ORG_NAME > '' "
                "AND PATIENT_NAME > '' AND ID_CARD_NO > '' ORDER BY PATIENT_ID LIMIT 3"
            )
        )
        change = "UPDATE PATIENT_INFO SET {0} = {0} || char(0) || 'N' WHERE PATIENT_ID = ?"
        for column, key in (("PATIENT_ID", a), ("HOME_ADDR", b), ("ORG_NAME", c)):
            conn.execute(change.format(column), (key,))
    monkeypatch.setenv("GOVMDM_WAREHOUSE_URL", pg_database)
    city = load_city_config(ROOT / "config")
    run = "2026-06-30"
    assert all(r.ok for r in extract_all(city, run))
    weijian = next(r for r in standardize_all(city, run) if r.department == "weijian")
    assert weijian.status == "ok" and weijian.reconciled
    link(city, run)
    publish(city, run)  # no NUL reaches the warehouse

    a = f"{a}\u2400N"  # the key as the warehouse holds it
    folder = var / "canonical" / "run=2026-06-30" / "department=weijian"
    persons = pq.read_table(folder / "person.parquet").to_pandas().set_index("source_key")
    assert {a, b, c} <= set(persons.index)  # no row dropped
    for key, column in ((a, "PATIENT_ID"), (b, "HOME_ADDR"), (c, "ORG_NAME")):
        assert f"{column}:nul_character" in list(persons.loc[key, "reasons"]), key
    assert persons.loc[b, "raw_address"].endswith("\x00N")  # the raw value as the source has it
    assert "\x00" not in "".join(
        persons.select_dtypes("object")
        .drop(columns="raw_address")
        .map(lambda v: v if isinstance(v, str) else "")
        .to_numpy()
        .ravel()
    )
    engine = sa.create_engine(pg_database)
    try:
        with engine.connect() as conn:
            published = conn.execute(
                sa.text(
                    "SELECT source_key FROM mdm_crosswalk WHERE department = 'weijian' "
                    "AND source_key IN (:a, :b, :c)"
                ),
                {"a": a, "b": b, "c": c},
            ).scalars()
            assert sorted(published) == sorted([a, b, c])
    finally:
        engine.dispose()

    runner = CliRunner()
    args = ["--run-id", run, "-d", "weijian"]
    runner.invoke(app, ["quality", *args])
    assert runner.invoke(app, ["report", *args]).exit_code == 0
    report = json.loads((var / "reports" / f"run={run}" / "weijian.json").read_text())
    rule = next(
        r for g in report["failed_rules"] for r in g["rules"] if r["rule_id"] == "weijian-ENC01"
    )
    assert rule["rows_failed"] == 3, rule
    for column in ("PATIENT_ID", "HOME_ADDR", "ORG_NAME"):
        assert f"列 {column} 1 行" in rule["message"], rule["message"]


def test_a_value_that_is_not_utf8_through_postgresql_copy(
    var: Path, pg_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQL_ASCII database stores any bytes and COPY hands them through as they are."""
    import uuid

    import pyarrow.parquet as pq
    import sqlalchemy as sa

    from etl.sample_city.generate import drop_database

    name = f"govmdm_test_{uuid.uuid4().hex[:10]}"
    url = sa.make_url(pg_server_url).set(database=name)
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(
            f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )
    admin.dispose()
    try:
        import sqlite3

        src = sqlite3.connect(var / "city" / "sources" / "weijian.sqlite")
        names = [c[1] for c in src.execute("PRAGMA table_info(PATIENT_INFO)")]
        rows = src.execute("SELECT * FROM PATIENT_INFO ORDER BY PATIENT_ID LIMIT 50").fetchall()
        src.close()
        types = {"PATIENT_ID": "varchar(20) PRIMARY KEY", "UPDATE_TIME": "bigint"}
        ddl = ", ".join(f'"{n}" {types.get(n, "text")}' for n in names)
        marks = ", ".join(f":p{i}" for i in range(len(names)))
        engine = sa.create_engine(url, connect_args={"client_encoding": "utf8"})
        with engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE TABLE "PATIENT_INFO" ({ddl})')
            conn.exec_driver_sql("SET client_encoding TO 'UTF8'")
            insert = sa.text(f'INSERT INTO "PATIENT_INFO" VALUES ({marks})')
            for r in rows:
                values = {f"p{i}": None if v is None else str(v) for i, v in enumerate(r)}
                conn.execute(insert, values)
            garble = "convert_from('\\xe5bca0ff'::bytea, 'SQL_ASCII')"  # 张 and a stray 0xFF
            conn.execute(
                sa.text(
                    f'UPDATE "PATIENT_INFO" SET "PATIENT_NAME" = {garble} WHERE "PATIENT_ID" = :k'
                ),
                {"k": str(rows[0][0])},
            )
        engine.dispose()
        monkeypatch.setenv("GOVMDM_CONN_WEIJIAN", url.render_as_string(hide_password=False))
        runner = CliRunner()
        for stage in ("extract", "standardize"):
            result = runner.invoke(app, [stage, "--run-id", "pg", "-d", "weijian"])
            assert result.exit_code == 0, result.output
        folder = var / "canonical" / "run=pg" / "department=weijian"
        rejects = pq.read_table(folder / "rejects.parquet").to_pylist()
        assert [
            r["source_key"] for r in rejects if "PATIENT_NAME:invalid_encoding" in r["reasons"]
        ] == [str(rows[0][0])]
        assert pq.read_table(folder / "person.parquet").num_rows + len(rejects) == 50
    finally:
        drop_database(url.render_as_string(hide_password=False))
