"""A typo in one department's file flags that department; the city goes on without it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sample_cities import CityFactory
from typer.testing import CliRunner

from cli.main import app
from etl.config import ConfigError, load_city_config
from pipeline import night

ROOT = Path(__file__).resolve().parents[1]
CODES = ("gongan", "renshe", "minzheng", "weijian", "shichang", "shuiwu")


@pytest.fixture
def broken(make_city: CityFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of config/ whose renshe.yaml misspells a key, over a small sample city (a copy:
    the nights run on it)."""
    make_city(monkeypatch, persons=400, enterprises=60, seed=1, copy=tmp_path / "var")
    config = tmp_path / "project" / "config"
    shutil.copytree(ROOT / "config", config)
    path = config / "departments" / "renshe.yaml"
    path.write_text(path.read_text().replace("update_frequency:", "update_frequncy:"))
    return config


def test_the_strict_load_still_refuses_a_broken_department(broken: Path) -> None:
    with pytest.raises(ConfigError, match=r"renshe\.yaml: update_frequncy"):
        load_city_config(broken)
    city = load_city_config(broken, tolerant=True)
    assert "renshe" not in [d.code for d in city.departments] and len(city.departments) == 5
    assert any("did you mean `update_frequency`" in line for line in city.broken["renshe"])


def test_a_broken_city_file_still_stops_everything(broken: Path) -> None:
    (broken / "city.yaml").write_text("name: 福州市\n")
    with pytest.raises(ConfigError, match=r"city\.yaml"):
        load_city_config(broken, tolerant=True)


def test_extract_runs_the_others_and_flags_the_broken_one(broken: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    one = runner.invoke(app, ["extract", "--config", str(broken), "-d", "gongan", "--run-id", "n1"])
    assert one.exit_code == 0, one.output
    raw = tmp_path / "var" / "raw" / "run=n1"
    assert (raw / "department=gongan" / "t_rk_jbxx.parquet").is_file()
    every = runner.invoke(app, ["extract", "--config", str(broken), "--run-id", "n2"])
    assert every.exit_code == 1, every.output
    flat = " ".join(every.output.split())
    assert "renshe.yaml: update_frequncy" in flat and "Fix: did you mean `update_frequency`" in flat
    got = sorted(p.name for p in (tmp_path / "var" / "raw" / "run=n2").glob("department=*"))
    assert got == sorted(f"department={c}" for c in CODES if c != "renshe")
    only = runner.invoke(app, ["extract", "--config", str(broken), "-d", "renshe"])
    assert only.exit_code == 1 and "renshe.yaml" in only.output
    check = runner.invoke(app, ["config", "check", "--config", str(broken)])
    assert check.exit_code == 2 and "renshe.yaml: update_frequncy" in " ".join(check.output.split())


def test_the_night_flags_it_everywhere_and_keeps_its_published_rows(broken: Path) -> None:
    import sqlalchemy as sa

    from etl.state import warehouse_url

    good = broken.parent / "good"
    shutil.copytree(ROOT / "config", good / "config")
    run = {"n1": good / "config", "n2": broken}
    for rid, config in run.items():
        tonight = night.Night.open(config, rid)
        planned = night.plan(tonight)
        delivered = []
        for code in planned["departments"]:
            night.extract(tonight, code)
            night.standardize(tonight, code)
            night.validate(tonight, code)
            delivered.append(code)
        night.link(tonight, departments=delivered)
        night.publish(tonight)
        night.quality(tonight)
        night.build_reports(tonight)
    assert "renshe" not in planned["departments"] and "renshe.yaml" in planned["broken"]["renshe"]
    with pytest.raises(night.DepartmentFlagged) as flagged:
        night.extract(night.Night.open(broken, "n2"), "renshe")
    assert not flagged.value.retryable and "update_frequncy" in str(flagged.value)
    summary = night.summarize(night.Night.open(broken, "n2"))
    assert summary["flagged"] == ["renshe"]
    assert "renshe.yaml: update_frequncy" in summary["departments"]["renshe"]["message"]
    city = load_city_config(broken, tolerant=True)
    overview = json.loads((city.var_dir / "reports" / "run=n2" / "overview.json").read_text())
    alert = next(a for a in overview["alerts"] if a["code"] == "renshe")
    assert alert["kind"] == "config" and "update_frequncy" in alert["message"]
    assert "update_frequncy" in (city.var_dir / "reports" / "run=n2" / "overview.html").read_text()
    engine = sa.create_engine(warehouse_url(city))
    with engine.connect() as conn:
        kept = conn.execute(
            sa.text("SELECT count(*) FROM mdm_crosswalk WHERE department = 'renshe'")
        ).scalar_one()
        mark = conn.execute(
            sa.text("SELECT DISTINCT run_id FROM etl_watermark WHERE department = 'renshe'")
        ).scalar_one()
    engine.dispose()
    assert kept > 0 and mark == "n1"  # its rows stay published, its watermark stays


# --- Airflow ---------------------------------------------------------------------------------


@pytest.fixture
def wiring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.syspath_prepend(str(ROOT / "dags"))
    import govmdm_wiring

    return govmdm_wiring


def test_plan_fails_at_once_on_a_broken_city_file(
    wiring: Any, broken: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime as dt

    from airflow.sdk.exceptions import AirflowFailException

    (broken / "city.yaml").write_text("name: 福州市\n")
    monkeypatch.setenv("GOVMDM_CONFIG", str(broken))
    dag = wiring.night_dag(
        dag_id="t", doc_md=None, mode="nightly", schedule=None, params={}, tags=["t"],
        description="t",
    )  # fmt: skip
    run = type("Run", (), {"logical_date": dt.datetime(2026, 7, 1, tzinfo=dt.UTC)})()
    monkeypatch.setattr(wiring, "get_current_context", lambda: {"params": {}, "dag_run": run})
    with pytest.raises(AirflowFailException, match=r"city\.yaml"):
        dag.get_task("plan").python_callable()


class _Mailbox:
    sent: ClassVar[list[dict[str, Any]]] = []
    from_email = "govmdm@example.gov.cn"

    def __enter__(self) -> _Mailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def send_email_smtp(self, **kwargs: Any) -> None:
        self.sent.append(kwargs)


@pytest.mark.parametrize("what", ["department", "city"])
def test_failure_callbacks_mail_even_when_the_config_is_broken(
    wiring: Any, broken: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    import airflow.providers.smtp.hooks.smtp as smtp

    if what == "city":
        city_file = broken / "city.yaml"
        city_file.write_text(city_file.read_text().replace("timezone:", "time_zone:"))
    monkeypatch.setenv("GOVMDM_CONFIG", str(broken))
    _Mailbox.sent = []
    monkeypatch.setattr(smtp, "SmtpHook", _Mailbox)
    error = ConfigError([f"{broken}/city.yaml: time_zone: unknown key"])
    wiring.notify_data_engineering({"exception": error, "params": {"run_id": "n1"}})
    assert len(_Mailbox.sent) == 1
    mail = _Mailbox.sent[0]
    assert mail["to"] == ["liu.yang@example.gov.cn"]
    assert "time_zone" in mail["html_content"]
    if what == "department":
        assert "n1" in mail["subject"]
    else:
        assert "configuration error" in mail["html_content"]
    assert sys.modules["govmdm_wiring"] is wiring


def test_a_department_without_quality_rules_is_a_warning_not_a_refusal(
    broken: Path,
) -> None:
    config = broken.parent / "noquality" / "config"
    shutil.copytree(ROOT / "config", config)
    (config / "quality" / "weijian.yaml").unlink()
    runner = CliRunner()
    check = runner.invoke(app, ["config", "check", "--config", str(config), "--connect"])
    assert check.exit_code == 0, check.output
    flat = " ".join(check.output.split())
    assert "Warnings:" in flat and "weijian.yaml: (file): department weijian" in flat
    assert "it runs with the built-in ones only" in flat
    for stage in ("extract", "standardize", "consolidate"):
        result = runner.invoke(app, [stage, "--config", str(config), "--run-id", "n1"])
        assert result.exit_code == 0, (stage, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit)
    quality = runner.invoke(app, ["quality", "--config", str(config), "--run-id", "n1"])
    assert quality.exit_code in (0, 1), quality.output


def test_quality_exits_1_when_rules_could_not_run(broken: Path, monkeypatch: Any) -> None:
    good = broken.parent / "q" / "config"
    shutil.copytree(ROOT / "config", good)
    runner = CliRunner()
    for stage in ("extract", "standardize", "consolidate"):
        assert runner.invoke(app, [stage, "--config", str(good), "--run-id", "n1"]).exit_code == 0
    ok = runner.invoke(app, ["quality", "--config", str(good), "--run-id", "n1"])
    assert ok.exit_code in (0, 1)
    monkeypatch.setenv("GOVMDM_CONN_WEIJIAN", "sqlite:////nonexistent/weijian.sqlite")
    for stage in ("extract", "standardize"):
        runner.invoke(app, [stage, "--config", str(good), "--run-id", "n2"])
    result = runner.invoke(
        app, ["quality", "--config", str(good), "--run-id", "n2", "-d", "weijian"]
    )
    assert result.exit_code == 1, result.output
    assert "could not run" in result.output and "weijian" in result.output
