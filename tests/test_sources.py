"""Probing departmental sources against the configuration (govmdm config check --connect)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sample_cities import CityFactory
from typer.testing import CliRunner

from cli.main import app
from etl.config import CityConfig
from etl.sources import probe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def city(make_city: CityFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CityConfig:
    """The generated city at ``<tmp>/city``, a copy (tests change its sources)."""
    return make_city(monkeypatch, persons=200, enterprises=30, seed=3, copy=tmp_path)


def test_every_configured_table_and_column_exists_in_the_sample_city(city: CityConfig) -> None:
    for dept in city.departments:
        result = probe(city, dept)
        assert result.ok, (dept.code, result)
        assert result.backend == "sqlite" and all(t.rows and t.rows > 0 for t in result.tables)


def test_a_renamed_column_is_named_for_that_department_only(
    city: CityConfig, tmp_path: Path
) -> None:
    db = tmp_path / "city" / "sources" / "renshe.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE insured_person RENAME COLUMN id_no TO id_card")
    results = {d.code: probe(city, d) for d in city.departments}
    assert results["renshe"].tables[0].missing_columns == ["id_no"]
    assert not results["renshe"].ok
    assert all(r.ok for code, r in results.items() if code != "renshe")


def test_a_missing_table_and_an_unreachable_server(
    city: CityConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sqlite3.connect(tmp_path / "city" / "sources" / "shuiwu.sqlite") as conn:
        conn.execute('ALTER TABLE "纳税人登记信息" RENAME TO "纳税人登记信息_old"')
    shuiwu = probe(city, city.department("shuiwu"))
    assert shuiwu.tables[0].problem is not None and "纳税人登记信息" in shuiwu.tables[0].problem
    monkeypatch.setenv("GOVMDM_CONN_GONGAN", "postgresql+psycopg://reader:s3cret@127.0.0.1:1/rk")
    gongan = probe(city, city.department("gongan"), timeout_s=2)
    assert gongan.problem is not None and gongan.problem.startswith("gongan: cannot read")
    assert "s3cret" not in gongan.problem


def test_unconfigured_connection_names_the_environment_variables(
    city: CityConfig, tmp_path: Path
) -> None:
    (tmp_path / "city" / "sources" / "minzheng.sqlite").unlink()
    result = probe(city, city.department("minzheng"))
    assert result.problem is not None
    assert "GOVMDM_CONN_MINZHENG" in result.problem and "AIRFLOW_CONN_MINZHENG" in result.problem


def test_cli_config_check_connect_exit_codes(city: CityConfig, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "check", "--connect", "--config", str(ROOT / "config")])
    assert ok.exit_code == 0, ok.output
    assert "Source databases" in ok.output
    with sqlite3.connect(tmp_path / "city" / "sources" / "weijian.sqlite") as conn:
        conn.execute('ALTER TABLE "PATIENT_INFO" DROP COLUMN "TEL"')
    bad = runner.invoke(app, ["config", "check", "--connect", "--config", str(ROOT / "config")])
    assert bad.exit_code == 1 and "TEL" in bad.output


def test_cli_extract_then_standardize(city: CityConfig, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["--config", str(ROOT / "config"), "--run-id", "2026-06-30"]
    extracted = runner.invoke(app, ["extract", *args])
    assert extracted.exit_code == 0, extracted.output
    assert "full" in extracted.output and "t_rk_jbxx" in extracted.output
    done = runner.invoke(app, ["standardize", *args])
    assert done.exit_code == 0, done.output
    assert (
        tmp_path / "canonical" / "run=2026-06-30" / "department=gongan" / "person.parquet"
    ).exists()
    # a renamed column flags that department (exit 1) and names it; the others are extracted
    with sqlite3.connect(tmp_path / "city" / "sources" / "renshe.sqlite") as conn:
        conn.execute("ALTER TABLE insured_person RENAME COLUMN mobile TO phone")
    flagged = runner.invoke(app, ["extract", "--config", str(ROOT / "config"), "--run-id", "n2"])
    assert flagged.exit_code == 1 and "mobile" in flagged.output
    assert "drift" in flagged.output
    unknown = runner.invoke(app, ["extract", "-d", "nosuch", "--config", str(ROOT / "config")])
    assert unknown.exit_code == 2 and "Unknown department nosuch" in unknown.output
