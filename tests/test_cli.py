"""The ``govmdm`` command line as its users meet it: one command for the whole night, the
version, flags shown as flags, help text that keeps its placeholders, JSON out of ``query``,
"did you mean" for a mistyped view or column, and lines that can be copied and pasted."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from sample_cities import CityFactory, isolate
from typer.testing import CliRunner, Result

from cli.analyst import did_you_mean
from cli.main import app
from cli.night import conn_exports
from etl.config import CityConfig
from etl.sample_city.generate import next_night

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "config")
NIGHT0, NIGHT1 = "2026-06-30", "2026-07-01"
DEPARTMENTS = ("gongan", "minzheng", "renshe", "shichang", "shuiwu", "weijian")


def govmdm(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _count(var: Path, sql: str) -> int:
    with sqlite3.connect(var / "warehouse" / "govmdm.sqlite") as db:
        return int(db.execute(sql).fetchone()[0])


@pytest.fixture(scope="module")
def night0(make_city: CityFactory) -> Iterator[tuple[CityConfig, Result]]:
    """A small generated city (a copy) and `govmdm run` of its first night."""
    with pytest.MonkeyPatch.context() as mp:
        city = make_city(mp, persons=300, enterprises=60, seed=3, until="generated", copy=True)
        yield city, govmdm("run", "--config", CONFIG, "--run-id", NIGHT0)


@pytest.fixture
def var(night0: tuple[CityConfig, Result], monkeypatch: pytest.MonkeyPatch) -> Path:
    isolate(monkeypatch, night0[0].var_dir)
    return night0[0].var_dir


# --- govmdm run ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_takes_a_night_through_every_stage(
    night0: tuple[CityConfig, Result], var: Path
) -> None:
    done = night0[1]
    assert done.exit_code == 0, done.output
    out = done.output
    persons = _count(var, "SELECT count(*) FROM mdm_person")
    enterprises = _count(var, "SELECT count(*) FROM mdm_enterprise")
    assert persons > 0 and enterprises > 0
    assert _count(var, f"SELECT count(*) FROM mdm_run WHERE run_id = '{NIGHT0}'") == 1
    assert _count(var, f"SELECT count(DISTINCT run_id) FROM dq_result WHERE run_id = '{NIGHT0}'")
    summary = json.loads((var / "nights" / f"run={NIGHT0}" / "night.json").read_text())
    assert summary["flagged"] == []
    assert summary["golden"]["mdm_person"] == persons
    assert f"Night {NIGHT0} (govmdm run)" in out
    rows = [line for line in out.splitlines() if line.startswith("│ ")]
    assert sorted(line.split("│")[1].strip() for line in rows) == sorted(DEPARTMENTS)
    assert all(line.split("│")[-2].strip() == "ok" for line in rows), rows
    assert (
        f"Golden tables (night {NIGHT0}): 人口基础库 mdm_person {persons:,} · "
        f"法人基础库 mdm_enterprise {enterprises:,}"
    ) in out
    assert "\nDelivery: not e-mailed (govmdm report --send e-mails them)\n" in out
    record = var / "nights" / f"run={NIGHT0}" / "night.json"
    assert f"\nNight record: {record}\n" in out  # one line, whatever its length
    reports = var / "reports" / f"run={NIGHT0}"
    assert (reports / "overview.html").is_file() and (reports / "gongan.html").is_file()


@pytest.mark.slow
def test_run_flags_a_department_and_publishes_the_others(
    night0: tuple[CityConfig, Result], var: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert night0[1].exit_code == 0, night0[1].output
    next_night(var / "city")
    monkeypatch.setenv("GOVMDM_CONN_WEIJIAN", "sqlite:////nonexistent/weijian.sqlite")
    done = govmdm("run", "--config", CONFIG, "--run-id", NIGHT1)
    assert done.exit_code == 1, done.output
    assert _count(var, f"SELECT count(*) FROM mdm_run WHERE run_id = '{NIGHT1}'") == 1
    summary = json.loads((var / "nights" / f"run={NIGHT1}" / "night.json").read_text())
    assert summary["flagged"] == ["weijian"]
    weijian = next(line for line in done.output.splitlines() if line.startswith("│ weijian"))
    assert "extract:" in weijian
    assert "weijian extract: " in done.output


def test_run_refuses_bad_usage_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    var = tmp_path / "var"
    isolate(monkeypatch, var)
    unknown = govmdm("run", "--config", CONFIG, "--department", "nosuch")
    assert unknown.exit_code == 2
    assert "Unknown department nosuch; configured: gongan" in unknown.output
    bad_id = govmdm("run", "--config", CONFIG, "--run-id", "../x")
    assert bad_id.exit_code == 2
    missing = govmdm("run", "--config", str(tmp_path / "no-config"))
    assert missing.exit_code == 2
    assert not (var / "nights").exists()


# --- the command line itself --------------------------------------------------------------------


def test_version() -> None:
    done = govmdm("--version")
    assert done.exit_code == 0
    assert done.output == f"govmdm {version('govmdm')}\n"


def _help(*command: str) -> str:
    done = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert done.exit_code == 0, done.output
    return done.output


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (("run",), "--full"),
        (("extract",), "--full"),
        (("demo",), "--fresh"),
        (("sample",), "--next-night"),
        (("query",), "--privileged"),
        (("config", "check"), "--connect"),
        (("report",), "--send"),
    ],
)
def test_boolean_options_are_shown_as_flags(command: tuple[str, ...], flag: str) -> None:
    text = _help(*command)
    line = next(line for line in text.splitlines() if line.startswith(f"  {flag} "))
    assert re.match(rf"  {flag} +[A-Z]", line), line  # the flag, then its help: no value
    assert f"--no-{flag[2:]}" not in text
    assert "<bool>" not in text and "BOOLEAN" not in text


def test_help_keeps_its_placeholders() -> None:
    assert "database per department named <db>_<department>:" in _help("sample")
    assert "Folder (default var/exports/<time>-<role>/)." in _help("export")
    assert "[default: 5000; x>=10]" in _help("sample")
    run_help = _help("run")
    assert "extract → standardize → validate → link → publish → quality →" in run_help


def test_conn_lines_can_be_pasted_into_a_shell() -> None:
    lines = conn_exports(["postgresql+psycopg://postgres@127.0.0.1/city"])
    assert lines[0] == (
        "export GOVMDM_CONN_GONGAN=postgresql+psycopg://postgres@127.0.0.1/city_gongan"
    )
    assert len(lines) == len(DEPARTMENTS)
    assert all(line.startswith("export GOVMDM_CONN_") for line in lines)


# --- query --------------------------------------------------------------------------------------


def test_did_you_mean_names_the_closest_views_and_columns() -> None:
    assert did_you_mean("the query failed: no such table: v_persn") == "did you mean v_person?"
    assert did_you_mean('relation "v_conflcit" does not exist') == "did you mean v_conflict?"
    assert did_you_mean("the query failed: no such column: p.birth_dat") == (
        "did you mean birth_date?"
    )
    assert did_you_mean('column "master_di" does not exist') == (
        "did you mean master_id or person_master_id or related_master_id?"
    )
    assert did_you_mean("the query failed: no such table: zzzz") is None
    assert did_you_mean("the query failed: near FROM: syntax error") is None


@pytest.mark.slow
def test_query_as_json_and_did_you_mean(night0: tuple[CityConfig, Result], var: Path) -> None:
    assert night0[1].exit_code == 0, night0[1].output
    sql = "SELECT count(*) AS n, '福州' AS city FROM v_person"
    done = govmdm("query", sql, "--format", "json", "--config", CONFIG)
    assert done.exit_code == 0, done.output
    persons = _count(var, "SELECT count(*) FROM v_person")
    assert done.output == f'[{{"n":{persons},"city":"福州"}}]\n'
    typo = govmdm("query", "SELECT * FROM v_persn", "--config", CONFIG)
    assert typo.exit_code == 1
    assert "no such table: v_persn; did you mean v_person?" in typo.output
    column = govmdm("query", "SELECT master_di FROM v_person", "--config", CONFIG)
    assert (
        "no such column: master_di; did you mean master_id or person_master_id or "
        "related_master_id?" in column.output
    )


def test_paths_are_printed_whole_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.common import console, say

    path = "/srv/govmdm/var/" + "/".join(f"[night-{i}]" for i in range(30)) + "/night.json"
    assert len(path) > console.width
    say(f"Night record: {path}")
    assert capsys.readouterr().out == f"Night record: {path}\n"


def test_arguments_are_named_in_capitals() -> None:
    assert "Usage: govmdm query [OPTIONS] {SQL}" in _help("query")
    assert "[OPTIONS] {LEFT} {RIGHT} {DECISION}" in _help("review", "decide")
    assert "masked unless `--privileged`;" in _help("explain")


def test_ctrl_c_in_a_command_stops_the_test_run() -> None:
    """A KeyboardInterrupt inside a command invoked through ``CliRunner`` reaches the test (and
    so stops pytest) instead of coming back as exit status 130; a command that itself exits
    130 is still a result."""
    import typer

    stopped = typer.Typer()

    @stopped.command()
    def night(interrupt: bool = False) -> None:
        if interrupt:
            raise KeyboardInterrupt
        raise typer.Exit(130)

    with pytest.raises(KeyboardInterrupt):
        CliRunner().invoke(stopped, ["--interrupt"])
    assert CliRunner().invoke(stopped, []).exit_code == 130
