"""The nightly DAG end to end through Airflow itself: ``dag.test()`` on a small sample city, with a
project-local SQLite metadata database and an SMTP server that catches the failure e-mails.

Night 0 runs clean. Night 1 applies the sample city's next night with one department's source
database stopped (its Airflow connection points at a database file that does not exist, the
others have none and read the embedded demo databases) and another department's export broken
(a blocking quality rule holds its batch back). Both are flagged, every other department goes
on, the golden tables are published, scored and announced as Asset events, each department
gets its report and the data-engineering contact the failure mail. Night 1 is then replayed
(``govmdm_replay``), and once both sources are mended ``govmdm_nightly`` is triggered for night
1 again: the departments it published are replayed from their raw data, the two it missed are
read and published, and the run is green.

Airflow configures itself once per process from the environment, so the nights run in a child
process (this file run as a script) and the tests read what it wrote: its JSON report, the
warehouse, the night summaries and the mail.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "dags"
STOPPED = "renshe"  # night 1: its source database is down
HELD = "shichang"  # night 1: a blocking quality rule holds its batch back
BROKEN_EXPORT = (
    "CREATE TABLE broken_backup AS SELECT nbxh, tyshxydm FROM t_qy_djxx ORDER BY nbxh LIMIT 10;"
    "UPDATE t_qy_djxx SET tyshxydm = 'BROKEN-EXPORT', gxsj = (SELECT max(gxsj) FROM t_qy_djxx) "
    "WHERE nbxh IN (SELECT nbxh FROM broken_backup)"
)
MENDED_EXPORT = (  # the credit codes put back (deleting the rows would be a mass deletion)
    "UPDATE t_qy_djxx SET tyshxydm = (SELECT b.tyshxydm FROM broken_backup b "
    "WHERE b.nbxh = t_qy_djxx.nbxh) WHERE nbxh IN (SELECT nbxh FROM broken_backup);"
    "DROP TABLE broken_backup"
)
PERSONS, ENTERPRISES = 300, 60

pytestmark = pytest.mark.slow


# --- the child process: run the nights through dag.test() -------------------------------------


def _run_nights(spec_path: Path) -> None:
    """Run each night of the spec with ``dag.test()``; write states and asset events as JSON."""
    spec = json.loads(spec_path.read_text())
    sys.path.insert(0, str(DAGS))  # as Airflow's DAG bundle does: the DAG files import wiring

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.connection import Connection
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import delete, select

    from etl.sample_city.generate import next_night
    from pipeline.record import summary_path

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors, bag.import_errors
    for dag in bag.dags.values():
        for t in dag.tasks:  # keep the scheduler's retries, not their minutes of backoff
            t.retry_delay = dt.timedelta(seconds=1)
            t.max_retry_delay = dt.timedelta(seconds=2)
        dag.get_task("department.extract").retries = 1
    results = []
    for night in spec["nights"]:
        dag = bag.get_dag(night.get("dag_id", "govmdm_nightly"))
        if night.get("next_night"):
            next_night(Path(spec["city"]))
        for code, statement in night.get("source_sql", {}).items():
            db = sqlite3.connect(Path(spec["city"]) / "sources" / f"{code}.sqlite")
            with db:
                db.executescript(statement)
            db.close()
        with create_session() as session:  # Airflow connections in the metadata database
            for conn_id, uri in night.get("connections", {}).items():
                session.add(Connection(conn_id=conn_id, uri=uri))
        run = dag.test(
            logical_date=dt.datetime.fromisoformat(night["logical_date"]),
            run_conf=night.get("conf"),
        )
        with create_session() as session:
            for conn_id in night.get("connections", {}):
                session.execute(delete(Connection).where(Connection.conn_id == conn_id))
        with create_session() as session:
            tis = session.scalars(
                select(TaskInstance).where(
                    TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == run.run_id
                )
            ).all()
            events = session.execute(
                select(AssetModel.name, AssetEvent.extra, AssetEvent.source_task_id)
                .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                .where(AssetEvent.source_run_id == run.run_id)
            ).all()
            summary = summary_path(Path(spec["city"]).parent, night["run_id"])
            warehouse = sqlite3.connect(Path(spec["city"]).parent / "warehouse" / "govmdm.sqlite")
            warehouse.row_factory = sqlite3.Row
            marks = warehouse.execute("SELECT department, table_name, value FROM etl_watermark")
            watermarks = {f"{r['department']}/{r['table_name']}": r["value"] for r in marks}
            ledger = warehouse.execute(
                "SELECT department, status, mode, watermark_after FROM etl_ledger WHERE run_id = ?",
                (night["run_id"],),
            )
            ledger_rows = [dict(r) for r in ledger]
            warehouse.close()
            results.append(
                {
                    "watermarks": watermarks,  # as this night left them
                    "ledger": ledger_rows,
                    "dag_id": dag.dag_id,
                    "state": str(run.state),
                    "summary": json.loads(summary.read_text()) if summary.is_file() else {},
                    "tasks": [
                        {
                            "task_id": ti.task_id,
                            "map_index": ti.map_index,
                            "map_name": ti.rendered_map_index,
                            "state": str(ti.state),
                            "try_number": ti.try_number,
                            "pool": ti.pool,
                        }
                        for ti in tis
                    ],
                    "asset_events": [
                        {"asset": name, "extra": extra, "task_id": task_id}
                        for name, extra, task_id in events
                    ],
                }
            )
    Path(spec["out"]).write_text(json.dumps(results, ensure_ascii=False, indent=2))


# --- the fixture: a city, two nights, an SMTP server ------------------------------------------


class _Mailbox:
    """Messages received by the test SMTP server."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd API
        msg = message_from_bytes(envelope.original_content or envelope.content)
        body = ""
        for part in msg.walk():
            if part.get_content_type() == "text/html":
                body += part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
        with self.lock:
            self.messages.append(
                {
                    "to": list(envelope.rcpt_tos),
                    "subject": str(make_header(decode_header(msg["Subject"]))),
                    "body": body,
                }
            )
        return "250 OK"


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path) -> Iterator[dict[str, Any]]:
    """Two nights of the sample city through ``dag.test()``: what Airflow, the warehouse and the
    mail server hold afterwards."""
    from aiosmtpd.controller import Controller

    from etl.config import load_city_config
    from etl.sample_city.generate import generate_city

    root = tmp_path_factory.mktemp("dag_e2e")
    var, home = root / "var", root / "airflow"
    (home / "config").mkdir(parents=True)
    shutil.copy(DAGS / "airflow_local_settings.py", home / "config")  # the pool policy
    shutil.copy(airflow_db, home / "airflow.db")
    manifest = generate_city(var / "city", persons=PERSONS, enterprises=ENTERPRISES, seed=11)
    night0 = manifest["as_of"]
    night1 = (dt.date.fromisoformat(night0) + dt.timedelta(days=1)).isoformat()
    mailbox = _Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=_free_port())
    smtp.start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GOVMDM_"))},
        "GOVMDM_VAR": str(var),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": smtp.port,
                "extra": {
                    "disable_tls": True,
                    "disable_ssl": True,
                    "from_email": "govmdm@example.gov.cn",
                    "retry_limit": 0,
                    "timeout": 10,
                },
            }
        ),
    }
    spec = {
        "city": str(var / "city"),
        "out": str(root / "result.json"),
        "nights": [
            {"logical_date": f"{night0}T02:00:00+08:00", "run_id": night0},
            {
                "logical_date": f"{night1}T02:00:00+08:00",
                "run_id": night1,
                "next_night": True,
                # its Airflow connection now points at a database that is not there
                "connections": {STOPPED: f"sqlite:///{root / 'stopped.sqlite'}"},
                # a broken export: tonight's changed rows carry invalid credit codes
                "source_sql": {HELD: BROKEN_EXPORT},
            },
            {  # night 1 again, from the raw data it kept
                "dag_id": "govmdm_replay",
                "logical_date": f"{night1}T09:00:00+08:00",
                "run_id": night1,
                "conf": {"run_id": night1},
            },
            {  # both sources mended; the nightly DAG triggered for night 1 once more
                "logical_date": f"{night1}T05:00:00+08:00",
                "run_id": night1,
                "source_sql": {HELD: MENDED_EXPORT},
            },
        ],
    }
    (root / "spec.json").write_text(json.dumps(spec))
    try:
        from pipeline.airflow_local import pools

        city = load_city_config(ROOT / "config")
        (root / "pools.json").write_text(json.dumps(pools(city)))
        done = subprocess.run(
            [sys.executable, "-m", "airflow", "pools", "import", str(root / "pools.json")],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        done = subprocess.run(
            [sys.executable, __file__, str(root / "spec.json")],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        (root / "nights.log").write_text(done.stdout + done.stderr)
        assert done.returncode == 0, f"nights failed; log: {root / 'nights.log'}"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("GOVMDM_VAR", str(var))
            city = load_city_config(ROOT / "config")
        yield {
            "runs": json.loads((root / "result.json").read_text()),
            "city": city,
            "var": var,
            "run_ids": [night0, night1],
            "mail": mailbox.messages,
            "log": root / "nights.log",
        }
    finally:
        smtp.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tasks(run: dict[str, Any], task_id: str) -> dict[str, dict[str, Any]]:
    """A task's instances in one run, by map name (or ``-`` when not mapped)."""
    return {(t["map_name"] or "-"): t for t in run["tasks"] if t["task_id"] == task_id}


def _warehouse(city: Any) -> sa.Engine:
    from etl.state import warehouse_url

    return sa.create_engine(warehouse_url(city))


# --- night 0: everything runs ------------------------------------------------------------------


def test_first_night_runs_every_task(nights: dict[str, Any]) -> None:
    run = nights["runs"][0]
    codes = [d.code for d in nights["city"].departments]
    assert run["state"] == "success", nights["log"]
    assert {t["state"] for t in run["tasks"]} == {"success"}
    for stage in ("department.extract", "department.standardize"):
        assert sorted(_tasks(run, stage)) == sorted(codes)  # readable map names
    # the cluster policy put each extraction in its source database's pool
    pools = {code: t["pool"] for code, t in _tasks(run, "department.extract").items()}
    assert pools == {d.code: f"govmdm_source_{d.connection}" for d in nights["city"].departments}
    assert {t["pool"] for t in _tasks(run, "department.standardize").values()} == {"default_pool"}


def test_first_night_publishes_the_golden_tables(nights: dict[str, Any]) -> None:
    night0 = nights["run_ids"][0]
    with _warehouse(nights["city"]).connect() as conn:
        persons = conn.execute(sa.text("SELECT count(*) FROM mdm_person")).scalar_one()
        enterprises = conn.execute(sa.text("SELECT count(*) FROM mdm_enterprise")).scalar_one()
        runs = conn.execute(sa.text("SELECT run_id, mode FROM mdm_run ORDER BY published_at"))
        published = [tuple(r) for r in runs]
        ledger = conn.execute(
            sa.text("SELECT department, status, mode FROM etl_ledger WHERE run_id = :r"),
            {"r": night0},
        ).all()
    # linkage folds duplicates and cross-department copies into one master each
    assert 0.8 * PERSONS <= persons <= 1.05 * PERSONS
    assert 0.8 * ENTERPRISES <= enterprises <= 1.05 * ENTERPRISES
    assert published[0] == (night0, "full")
    assert {d for d, _, _ in ledger} == {d.code for d in nights["city"].departments}
    assert {(s, m) for _, s, m in ledger} == {("ok", "full")}


def test_scored_golden_tables_emit_asset_events(nights: dict[str, Any]) -> None:
    run = nights["runs"][0]
    summary = run["summary"]
    events = {e["asset"]: e for e in run["asset_events"]}
    assert set(events) == {"mdm_person", "mdm_enterprise"}
    codes = {d.code for d in nights["city"].departments}
    for table, event in events.items():
        extra = event["extra"]
        assert event["task_id"] == "validate_golden"
        assert extra["run_id"] == nights["run_ids"][0] and extra["mode"] == "full"
        assert extra["rows"] == summary["golden"][table] > 0
        assert set(extra["departments"]) == codes and extra["held_back"] == []
        assert 0 < extra["quality_score"] <= 100
        assert set(extra["department_scores"]) == codes


def test_quality_reports_reach_every_department(nights: dict[str, Any]) -> None:
    city = nights["city"]
    for run in nights["runs"][:2]:
        summary = run["summary"]
        reports = summary["reports"]["reports"]
        assert set(reports) == {d.code for d in city.departments} | {"overview"}
        assert all(Path(r["html"]).is_file() for r in reports.values())
        delivery = {d["report"]: d for d in summary["delivery"]["deliveries"]}
        assert {d["status"] for d in delivery.values()} == {"sent"}
        for d in city.departments:
            assert delivery[d.code]["recipient"] == str(d.contact.email)
    report_mail = [m for m in nights["mail"] if m["subject"].startswith("【数据质量")]
    assert len(report_mail) == 2 * (len(city.departments) + 1)  # two nights, plus overviews


# --- night 1: one source database stopped, one batch held back ---------------------------------


def test_stopped_source_fails_only_its_department(nights: dict[str, Any]) -> None:
    run = nights["runs"][1]
    extract = _tasks(run, "department.extract")
    assert extract[STOPPED]["state"] == "failed"
    assert extract[STOPPED]["try_number"] == 2  # retried by the scheduler, then failed
    others = {code: t for code, t in extract.items() if code != STOPPED}
    assert len(others) == len(nights["city"].departments) - 1
    assert {t["state"] for t in others.values()} == {"success"}
    for stage in ("department.standardize", "department.validate"):
        states = sorted(t["state"] for t in run["tasks"] if t["task_id"] == stage)
        assert states.count("upstream_failed") == 1, stage
    # the night is published, scored and reported for everyone else; the run says what failed
    for task_id in ("link", "publish", "validate_golden", "build_reports", "send_reports"):
        assert _tasks(run, task_id)["-"]["state"] == "success", task_id
    assert _tasks(run, "summary")["-"]["state"] == "failed"
    assert run["state"] == "failed"
    events = {e["asset"]: e["extra"] for e in run["asset_events"]}
    assert set(events) == {"mdm_person", "mdm_enterprise"}
    assert events["mdm_person"]["held_back"] == sorted([STOPPED, HELD])


def test_stopped_source_is_flagged_and_keeps_its_watermark(nights: dict[str, Any]) -> None:
    night1 = nights["run_ids"][1]
    run = nights["runs"][1]  # the watermarks and ledger as night 1's run left them
    summary = run["summary"]
    assert summary["flagged"] == sorted([STOPPED, HELD])
    entry = summary["departments"][STOPPED]
    assert entry["failed_stage"] == "extract"
    assert "cannot reach the source database" in entry["message"]
    assert entry["extract"]["status"] == "unreachable"
    assert summary["golden"]["published_run"] == night1
    assert summary["quality"]["departments"][STOPPED]["delivered"] is False  # in its report
    ledger = {r["department"]: r for r in run["ledger"]}
    assert ledger[STOPPED]["status"] == "unreachable"
    assert {r["status"] for c, r in ledger.items() if c != STOPPED} == {"ok"}
    assert {r["mode"] for c, r in ledger.items() if c != STOPPED} == {"incremental"}
    before = {r["department"]: r["watermark_after"] for r in nights["runs"][0]["ledger"]}
    # flagged departments' watermarks stay at night 0: the next night reads them again
    for code in (STOPPED, HELD):
        table = nights["city"].department(code).tables[0].name
        assert run["watermarks"][f"{code}/{table}"] == before[code], code
    moved = nights["city"].department("gongan").tables[0].name
    assert run["watermarks"][f"gongan/{moved}"] == ledger["gongan"]["watermark_after"]


def test_blocking_rule_holds_a_batch_out_of_the_golden_tables(nights: dict[str, Any]) -> None:
    run = nights["runs"][1]
    validate = _tasks(run, "department.validate")
    assert validate[HELD]["state"] == "failed" and validate[HELD]["try_number"] == 1
    assert _tasks(run, "department.standardize")[HELD]["state"] == "success"
    entry = run["summary"]["departments"][HELD]
    assert entry["failed_stage"] == "validate" and entry["validate"]["status"] == "held"
    assert "held back" in entry["message"]
    with _warehouse(nights["city"]).connect() as conn:
        broken = conn.execute(
            sa.text("SELECT count(*) FROM mdm_enterprise WHERE uscc = 'BROKEN-EXPORT'")
        ).scalar_one()
    assert broken == 0


def test_failures_notify_the_data_engineering_contact(nights: dict[str, Any]) -> None:
    contact = str(nights["city"].data_engineering_contact.email)
    mail = [m for m in nights["mail"] if m["subject"].startswith("[govmdm] govmdm_nightly")]
    assert mail, "no failure e-mail was sent"
    assert all(m["to"] == [contact] for m in mail)
    extract_mail = [m for m in mail if f"department.extract [{STOPPED}]" in m["subject"]]
    assert len(extract_mail) == 1  # after the last try, not on the retry
    assert "cannot reach the source database" in extract_mail[0]["body"]
    held_mail = [m for m in mail if f"department.validate [{HELD}]" in m["subject"]]
    assert len(held_mail) == 1 and "held back" in held_mail[0]["body"]
    run_mail = [m for m in mail if m not in extract_mail + held_mail]
    assert len(run_mail) == 1  # the DAG run's own callback, with the flagged departments
    assert nights["run_ids"][1] in run_mail[0]["subject"]
    assert STOPPED in run_mail[0]["body"] and HELD in run_mail[0]["body"]


# --- the replay of night 1 ---------------------------------------------------------------------


def test_replay_recomputes_the_latest_night_without_the_sources(nights: dict[str, Any]) -> None:
    from etl.state import RunState

    night1, replay = nights["runs"][1], nights["runs"][2]
    assert replay["dag_id"] == "govmdm_replay"
    extract = _tasks(replay, "department.extract")
    # the stopped department kept no raw data that night: flagged at once, no retry
    assert extract[STOPPED]["state"] == "failed" and extract[STOPPED]["try_number"] == 1
    assert {t["state"] for c, t in extract.items() if c != STOPPED} == {"success"}
    summary = replay["summary"]
    assert summary["mode"] == "replay"
    assert {d["extract"]["status"] for c, d in summary["departments"].items() if c != STOPPED} == {
        "reused"
    }
    assert "nothing to replay" in summary["departments"][STOPPED]["message"]
    assert summary["flagged"] == sorted([STOPPED, HELD])  # the broken batch is held again
    # the same golden tables as the first time, published again; no report re-sent
    assert summary["golden"] == night1["summary"]["golden"]
    assert summary["link"]["base_run"] == night1["summary"]["link"]["base_run"]
    assert _tasks(replay, "send_reports")["-"]["state"] == "skipped"
    assert {e["asset"] for e in replay["asset_events"]} == {"mdm_person", "mdm_enterprise"}
    with RunState.for_city(nights["city"]) as state:  # no source was read again
        assert len(state.ledger(nights["run_ids"][1])) == len(nights["city"].departments)


# --- govmdm_nightly triggered again for the published night 1 ----------------------------------


def test_a_published_night_triggered_again_replays_it_and_catches_up(
    nights: dict[str, Any],
) -> None:
    """The departments night 1 published are replayed (their watermarks moved past those rows:
    reading them again would publish less); the two it missed are read again now that their
    sources are mended; nothing is lost and the run is green."""
    from test_night_safety import unaccounted

    night1, rerun = nights["runs"][1], nights["runs"][3]
    codes = {d.code for d in nights["city"].departments}
    published = codes - {STOPPED, HELD}
    assert (rerun["dag_id"], rerun["state"]) == ("govmdm_nightly", "success"), nights["log"]
    summary = rerun["summary"]
    assert summary["flagged"] == []
    status = {c: d["extract"]["status"] for c, d in summary["departments"].items()}
    assert status == {**dict.fromkeys(published, "reused"), STOPPED: "ok", HELD: "ok"}
    assert summary["link"]["base_run"] == night1["summary"]["link"]["base_run"]
    assert sorted(summary["link"]["departments"]) == sorted(codes)
    read = {r["department"]: r for r in rerun["ledger"]}
    for key, mark in night1["watermarks"].items():
        code = key.split("/")[0]
        if code in published:
            assert rerun["watermarks"][key] == mark, key  # nothing read again, nothing moved
        else:  # caught up: read now, and committed
            assert read[code]["status"] == "ok"
            assert rerun["watermarks"][key] == read[code]["watermark_after"], key
    assert summary["golden"]["mdm_person"] >= night1["summary"]["golden"]["mdm_person"]
    assert unaccounted(nights["city"]) == (set(), set())


if __name__ == "__main__":
    _run_nights(Path(sys.argv[1]))
