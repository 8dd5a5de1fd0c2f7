"""An emptied or truncated source table holds its department back until the deletion is
accepted; it never wipes the department out of the base libraries."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from sample_cities import CityFactory
from typer.testing import CliRunner

from access.audit import os_user as audit_user
from cli.main import app
from etl.config import load_city_config
from etl.state import warehouse_url

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "config")

pytestmark = pytest.mark.slow


@pytest.fixture
def var(make_city: CityFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``var/`` holding a copy of a small generated city (the tests empty its tables)."""
    make_city(monkeypatch, persons=400, enterprises=60, seed=1, copy=tmp_path)
    return tmp_path


def _night(run_id: str) -> dict[str, int]:
    runner = CliRunner()
    codes = {}
    for stage in ("extract", "standardize", "consolidate", "quality", "report"):
        result = runner.invoke(app, [stage, "--config", CONFIG, "--run-id", run_id])
        assert result.exit_code in (0, 1), result.output
        codes[stage] = result.exit_code
    return codes


def _crosswalk(var: Path) -> dict[str, int]:
    engine = sa.create_engine(warehouse_url(load_city_config(CONFIG)))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT department, count(*) FROM mdm_crosswalk GROUP BY department")
        ).all()
    engine.dispose()
    return {r[0]: r[1] for r in rows}


def _delete(var: Path, where: str = "") -> int:
    with sqlite3.connect(var / "city" / "sources" / "shuiwu.sqlite") as conn:
        return conn.execute(f"DELETE FROM 纳税人登记信息 {where}").rowcount


def test_an_emptied_table_is_held_until_accepted(var: Path) -> None:
    _night("n1")
    before = _crosswalk(var)
    deleted = _delete(var)
    assert deleted == before["shuiwu"] > 0
    codes = _night("n2")
    assert codes["quality"] == 1
    assert _crosswalk(var) == before  # nothing wiped
    report = json.loads((var / "reports" / "run=n2" / "shuiwu.json").read_text())
    assert report["headline"]["status"] == "held_back"
    rule = next(
        r for g in report["failed_rules"] for r in g["rules"] if r["rule_id"] == "shuiwu-DEL01"
    )
    assert "整表被清空" in rule["message"] and f"{deleted:,}" in rule["message"]
    overview = json.loads((var / "reports" / "run=n2" / "overview.json").read_text())
    assert [a["code"] for a in overview["alerts"] if a["kind"] == "mass_deletion"] == ["shuiwu"]
    # still held the next night: nothing was accepted
    _night("n3")
    assert _crosswalk(var) == before
    accepted = CliRunner().invoke(
        app, ["accept-deletions", "--config", CONFIG, "-d", "shuiwu", "--reason", "书面确认"]
    )
    assert accepted.exit_code == 0, accepted.output
    codes = _night("n4")
    after = _crosswalk(var)
    assert "shuiwu" not in after and {k: v for k, v in before.items() if k != "shuiwu"} == after
    engine = sa.create_engine(warehouse_url(load_city_config(CONFIG)))
    with engine.connect() as conn:
        audit = conn.execute(
            sa.text("SELECT who, target, row_count FROM audit_log WHERE action='accept_deletions'")
        ).all()
        used = conn.execute(
            sa.text("SELECT applied_run_id, consumed_at IS NOT NULL FROM etl_deletion_acceptance")
        ).all()
    engine.dispose()
    assert [tuple(a) for a in audit] == [(audit_user(), "shuiwu.纳税人登记信息", deleted)]
    assert [tuple(u) for u in used] == [("n4", 1)]


def test_a_truncated_table_is_held_and_a_small_deletion_is_not(var: Path) -> None:
    _night("n1")
    before = _crosswalk(var)
    total = before["shuiwu"]
    small = _delete(var, "WHERE rowid IN (SELECT rowid FROM 纳税人登记信息 LIMIT 2)")
    _night("n2")
    assert _crosswalk(var)["shuiwu"] == total - small  # 2 of ~60: within 5 %, goes through
    few = _delete(var, "WHERE rowid IN (SELECT rowid FROM 纳税人登记信息 LIMIT 5)")
    _night("n3")  # above 5 % but fewer than min_deleted_rows (10): no alarm
    assert few == 5 and _crosswalk(var)["shuiwu"] == total - small - few
    cut = _delete(var, "WHERE rowid IN (SELECT rowid FROM 纳税人登记信息 LIMIT 20)")
    _night("n4")
    assert _crosswalk(var)["shuiwu"] == total - small - few  # a third gone at once: held
    report = json.loads((var / "reports" / "run=n4" / "shuiwu.json").read_text())
    assert report["headline"]["status"] == "held_back"
    assert cut == 20


# --- damaged or lost key sets ----------------------------------------------------------------


def test_a_damaged_or_lost_key_set_is_named_and_rebuilt_and_deletions_still_reach_the_master(
    var: Path,
) -> None:
    _night("n1")
    before = _crosswalk(var)
    keys = var / "state" / "keys"
    (keys / "gongan" / "t_rk_jbxx.parquet").write_bytes(b"not parquet")
    (keys / "minzheng" / "社会救助对象.parquet").unlink()
    with sqlite3.connect(var / "city" / "sources" / "minzheng.sqlite") as conn:
        conn.execute(
            "DELETE FROM 社会救助对象 WHERE rowid IN (SELECT rowid FROM 社会救助对象 LIMIT 1)"
        )
    result = CliRunner().invoke(app, ["extract", "--config", CONFIG, "--run-id", "n2"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert f"its key set {keys / 'gongan' / 't_rk_jbxx.parquet'} is damaged (ArrowInvalid" in flat
    assert "minzheng" in flat and "is missing" in flat and "1 row(s) the base libraries" in flat
    assert list((keys / "gongan").glob("t_rk_jbxx.parquet.damaged-*"))
    codes = _night("n2")
    assert codes["consolidate"] == 0
    after = _crosswalk(var)
    assert after["minzheng"] == before["minzheng"] - 1  # the deletion was not lost
    assert {k: v for k, v in after.items() if k != "minzheng"} == {
        k: v for k, v in before.items() if k != "minzheng"
    }
    assert (keys / "gongan" / "t_rk_jbxx.parquet").is_file()  # rebuilt on publish
    assert _night("n3")["extract"] == 0
