"""Sources that fail or misbehave mid-read: one department's trouble is that department's."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sample_cities import CityFactory, isolate

from etl.config import load_city_config
from etl.extract import extract_all
from etl.sample_city.generate import drop_database, generate_city, target_url
from etl.state import RunState
from store import layout

ROOT = Path(__file__).resolve().parents[1]
CODES = ("gongan", "renshe", "minzheng", "weijian", "shichang", "shuiwu")


@pytest.fixture
def out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty var folder for a sample city at ``<tmp>/city``, with no connections set."""
    isolate(monkeypatch, tmp_path)
    return tmp_path / "city"


@pytest.fixture
def pg_city(out: Path, pg_server_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The sample city loaded into PostgreSQL (one database per department), govmdm pointed
    at it; yields the base URL."""
    name = f"govmdm_test_{uuid.uuid4().hex[:10]}"
    base = sa.make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    try:
        generate_city(out, persons=400, enterprises=50, seed=3, targets=[base])
        for code in CODES:
            monkeypatch.setenv(f"GOVMDM_CONN_{code.upper()}", target_url(base, code))
        yield base
    finally:
        for code in CODES:
            drop_database(target_url(base, code))


def test_a_backend_terminated_during_copy_is_retried_and_the_others_go_on(
    out: Path, pg_city: str, pg_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gongan (the first department) gets a table big enough to be mid-COPY when killed
    gongan = sa.create_engine(target_url(pg_city, "gongan"))
    with gongan.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO t_rk_jbxx (rkbh, xm, sfzh, xb, csrq, hjdz, mz, hjzt, gxsj) "
            "SELECT 'BIG' || g, '张三', NULL, '1', '19800101', '福州市', '01', '10', "
            "'20260101000000' FROM generate_series(1, 200000) g"
        )
        total = conn.exec_driver_sql("SELECT count(*) FROM t_rk_jbxx").scalar_one()
    gongan.dispose()
    killed: list[int] = []
    stop = threading.Event()
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")

    def killer() -> None:
        database = sa.make_url(target_url(pg_city, "gongan")).database
        with admin.connect() as conn:
            while not stop.is_set() and not killed:
                pid = conn.execute(
                    sa.text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = :db AND "
                        "application_name = 'govmdm-extract' AND query LIKE 'COPY%' "
                        "AND state = 'active'"
                    ),
                    {"db": database},
                ).scalar()
                if pid is not None:
                    conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                    killed.append(pid)
                time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        city = load_city_config(ROOT / "config")
        results = {r.department: r for r in extract_all(city, "n1", retries=2, backoff_s=0.1)}
    finally:
        stop.set()
        thread.join()
        admin.dispose()
    assert killed, "the COPY was never seen in flight"
    g = results["gongan"]
    assert (g.status, g.attempts) == ("ok", 2), g.message
    assert g.tables[0].rows_read == total
    assert {r.status for r in results.values()} == {"ok"}
    assert sorted(results) == sorted(CODES)
    with RunState.for_city(city) as state:
        ledger = {r["department"]: r for r in state.ledger("n1")}
    assert set(ledger) == set(CODES)
    assert ledger["gongan"]["rows_read"] == total


def test_sample_next_night_on_postgresql_keeps_keys_in_their_columns(
    tmp_path: Path, pg_server_url: str
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    name = f"govmdm_test_{uuid.uuid4().hex[:10]}"
    base = sa.make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    out = tmp_path / "city"
    runner = CliRunner()
    try:
        first = ["sample", "--persons", "300", "--enterprises", "60", "--seed", "1"]
        result = runner.invoke(app, [*first, "--out", str(out), "--target", base])
        assert result.exit_code == 0, result.output
        for night in (1, 2, 3):
            result = runner.invoke(
                app, ["sample", "--next-night", "--out", str(out), "--target", base]
            )
            assert result.exit_code == 0, result.output
            assert f"Night {night} " in result.output
        engine = sa.create_engine(target_url(base, "shichang"))
        with engine.connect() as conn:
            lengths = conn.exec_driver_sql("SELECT DISTINCT length(nbxh) FROM t_qy_djxx").all()
        engine.dispose()
        assert [tuple(r) for r in lengths] == [(16,)]
    finally:
        for code in CODES:
            drop_database(target_url(base, code))


def test_temp_files_of_killed_writers_are_removed_and_a_live_writers_are_not(
    out: Path, make_city: CityFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    city = make_city(monkeypatch, persons=300, enterprises=60, seed=1, copy=out.parent)
    folder = layout.raw_dir(city.var_dir, "n1", "gongan")
    folder.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        killed = folder / f".t_rk_jbxx.parquet.{dead.pid}.tmp"
        running = folder / f".t_rk_jbxx.parquet.{live.pid}.tmp"
        for path in (killed, running):
            path.write_bytes(b"half a parquet file")
        result = extract_all(city, "n1", departments=["gongan"])
        assert result[0].status == "ok"
        assert not killed.exists() and running.exists()
    finally:
        live.kill()
        live.wait()
