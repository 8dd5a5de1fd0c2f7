"""A whole night, run task by task as the DAG runs it, checked for what it leaves readable and
what it writes down: every file of var/ (and of an export) private to its owner, so that user
``nobody`` reads none of them; and no personal data from a badly encoded source value, nor how
the platform reaches a department's database, in the run records, the ledger, the logs, the
quality results or the department's report."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from access.export import export
from etl.config import CityConfig, load_city_config
from etl.sample_city.generate import generate_city
from etl.state import warehouse_url
from fields.masking import find_clear, mask_id, redact_message
from pipeline import night as glue

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
FIRST = "2026-06-30"
NIGHT = "2026-07-01"
BAD_ID = "350121197403155015"
BAD_PHONE = "13990871234"
UNREACHABLE = "postgresql+psycopg://govmdm_reader@127.0.0.1:1/city_renshe_gone"
NOBODY = 65534


@dataclass
class Night:
    city: CityConfig
    flagged: dict[str, str] = field(default_factory=dict)
    log: str = ""
    export: Path | None = None
    outside: Path | None = None


def _run_night(city: CityConfig, run_id: str) -> dict[str, str]:
    """Every task of the nightly DAG in order; the departments flagged, with their message."""
    flagged: dict[str, str] = {}
    delivered = []
    for dept in city.departments:
        try:
            glue.extract(CONFIG, dept.code, run_id, retries=0, backoff_s=0.0)
            glue.standardize(CONFIG, dept.code, run_id)
            glue.validate(CONFIG, dept.code, run_id)
            delivered.append(dept.code)
        except glue.DepartmentFlagged as exc:
            flagged[dept.code] = str(exc)
    glue.link(CONFIG, run_id, departments=delivered, held=sorted(flagged))
    glue.publish(CONFIG, run_id)
    glue.quality(CONFIG, run_id)
    glue.build_reports(CONFIG, run_id)
    glue.summarize(CONFIG, run_id)
    return flagged


def _plant_bad_encoding(city_dir: Path) -> None:
    """A weijian row whose name is GBK bytes glued to a mobile number, and whose ID number
    follows two stray bytes: SQLite cannot decode either as UTF-8."""
    conn = sqlite3.connect(city_dir / "sources" / "weijian.sqlite")
    try:
        row = conn.execute("SELECT * FROM PATIENT_INFO LIMIT 1").fetchone()
        columns = [r[1] for r in conn.execute("PRAGMA table_info(PATIENT_INFO)")]
        values = dict(zip(columns, row, strict=True)) | {"PATIENT_ID": "HBAD0001"}
        conn.execute(
            f"INSERT INTO PATIENT_INFO ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})",
            list(values.values()),
        )
        name = "D5C5C8FD" + BAD_PHONE.encode().hex().upper()
        card = "D5C5" + BAD_ID.encode().hex().upper()
        conn.execute(
            f"UPDATE PATIENT_INFO SET PATIENT_NAME = CAST(X'{name}' AS TEXT), "
            f"ID_CARD_NO = CAST(X'{card}' AS TEXT) WHERE PATIENT_ID = 'HBAD0001'"
        )
        conn.commit()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def night() -> Iterator[Night]:
    """Two nights of a 600-person city, task by task, from a shell's umask (022); on the second,
    weijian's source holds a badly encoded row and renshe's database cannot be reached."""
    # under a folder anyone may enter (pytest's own temporary folders are private already)
    base = Path(tempfile.mkdtemp(prefix="govmdm-night-"))
    base.chmod(0o755)
    old_umask = os.umask(0o022)
    var = base / "var"
    var.mkdir()
    outside = base / "handover" / "export"
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("GOVMDM_VAR", str(var))
            for name in ("GOVMDM_WAREHOUSE_URL", "GOVMDM_USER", "GOVMDM_SMTP_HOST"):
                mp.delenv(name, raising=False)
            city = load_city_config(CONFIG)
            generate_city(var / "city", persons=600, enterprises=70, seed=7)
            _run_night(city, FIRST)
            _plant_bad_encoding(var / "city")
            mp.setenv("GOVMDM_CONN_RENSHE", UNREACHABLE)
            result = Night(city, flagged=_run_night(city, NIGHT))
            result.export = export(city).out_dir
            result.outside = export(city, outside, views=["v_person"]).out_dir
            result.log = "\n".join(records)
            yield result
    finally:
        logging.getLogger().removeHandler(handler)
        os.umask(old_umask)
        shutil.rmtree(base, ignore_errors=True)


# --- nothing of var/ is readable by anyone else -------------------------------------------------


def _tree(root: Path) -> list[Path]:
    return [root, *sorted(root.rglob("*"))]


def test_every_file_a_night_writes_is_private(night: Night) -> None:
    var = night.city.var_dir
    assert night.export is not None and night.outside is not None
    paths = _tree(var) + _tree(night.outside)
    kinds = {p.relative_to(var).parts[0] for p in paths if p.is_relative_to(var) and p != var}
    assert {"warehouse", "raw", "canonical", "master", "nights", "reports", "exports",
            "state", "city"} <= kinds  # fmt: skip
    loose = [
        f"{p} {stat.filemode(p.stat().st_mode)}"
        for p in paths
        if p.stat().st_mode & 0o077 or (p.is_dir() and p.stat().st_mode & 0o700 != 0o700)
    ]
    assert loose == []
    assert stat.S_IMODE(var.stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="reading as user nobody needs root to switch")
def test_user_nobody_reads_none_of_it(night: Night) -> None:
    var = night.city.var_dir
    assert night.export is not None and night.outside is not None
    targets = [
        var / "warehouse" / "govmdm.sqlite",
        next((var / "raw").rglob("*.parquet")),
        next((var / "canonical").rglob("person.parquet")),
        next((var / "master").rglob("*.arrow")),
        next((var / "nights").rglob("night.json")),
        next((var / "reports").rglob("*.json")),
        next(night.export.glob("person.parquet")),
        next(night.outside.glob("person.parquet")),
        next((var / "city" / "sources").glob("*.sqlite")),
    ]
    for path in targets:
        probe = (
            f"import os; os.setgid({NOBODY}); os.setuid({NOBODY}); "
            f"open({str(path)!r}, 'rb').read(16)"
        )
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        assert done.returncode != 0 and "PermissionError" in done.stderr, path
    # the folder above var/ is open: it is var/ itself that keeps nobody out
    assert stat.S_IMODE(var.parent.stat().st_mode) == 0o755


# --- what the run records, logs and reports say -------------------------------------------------


def _everywhere(night: Night) -> dict[str, str]:
    """Every record of the night a person could read: the flagged tasks' messages (what
    Airflow logs and e-mails), the log, the night's JSON, the ledger, dq_result, the reports."""
    var = night.city.var_dir
    texts = {f"flagged {d}": m for d, m in night.flagged.items()}
    texts["log"] = night.log
    for path in sorted((var / "nights").rglob("*.json")):
        texts[str(path.relative_to(var))] = path.read_text(encoding="utf-8")
    for path in sorted((var / "reports").rglob("*.*")):
        texts[str(path.relative_to(var))] = path.read_text(encoding="utf-8")
    engine = sa.create_engine(warehouse_url(night.city))
    try:
        with engine.connect() as conn:
            texts["etl_ledger"] = "\n".join(
                str(r) for r in conn.exec_driver_sql("SELECT * FROM etl_ledger").fetchall()
            )
            texts["dq_result"] = "\n".join(
                str(r) for r in conn.exec_driver_sql("SELECT message FROM dq_result").fetchall()
            )
    finally:
        engine.dispose()
    return texts


def test_a_badly_encoded_source_value_stays_out_of_every_record(night: Night) -> None:
    # the row is read with U+FFFD for the bad bytes and rejected by standardization; no record
    # of the night, log line or report quotes what the bytes surrounded
    assert set(night.flagged) == {"renshe"}
    rejects = pq.read_table(
        night.city.var_dir / "canonical" / f"run={NIGHT}" / "department=weijian" / "rejects.parquet"
    ).to_pylist()
    assert any("invalid_encoding" in str(r) for r in rejects if "HBAD0001" in str(r))
    texts = _everywhere(night)
    for where, text in texts.items():
        assert BAD_PHONE not in text and BAD_ID not in text, where
        assert BAD_PHONE[:3] + "****" + BAD_PHONE[-4:] not in text, where
        assert find_clear(text, kinds={"id", "mobile"}) == [], where
    assert mask_id(BAD_ID) not in texts["log"]


@pytest.mark.parametrize(
    "message",
    [
        f"OperationalError: Could not decode to UTF-8 column 'xm' "
        f"with text '\ufffd\ufffd{BAD_PHONE}'",
        f"DataError: (1366, \"Incorrect string value: '\\xD5\\xC5{BAD_ID}' for column 'sfzh'\")",
        f'InvalidTextRepresentation: invalid input syntax for type bigint: "{BAD_PHONE}"',
        f"UniqueViolation: duplicate key value violates unique constraint; "
        f"DETAIL: Key (sfzh)=({BAD_ID})",
    ],
)  # fmt: skip
def test_a_driver_message_loses_the_value_it_quotes(message: str) -> None:
    redacted = redact_message(message)
    assert BAD_ID not in redacted and BAD_PHONE not in redacted
    assert find_clear(redacted) == [] and "<值已隐去>" in redacted


def test_an_unreachable_source_reports_no_connection_details_to_its_department(
    night: Night,
) -> None:
    assert "127.0.0.1" in night.flagged["renshe"]  # the data-engineering team needs them
    var = night.city.var_dir / "reports" / f"run={NIGHT}"
    report = json.loads((var / "renshe.json").read_text(encoding="utf-8"))
    html = (var / "renshe.html").read_text(encoding="utf-8")
    messages = [r["message"] for g in report["failed_rules"] for r in g["rules"]]
    assert any(m and m.startswith("今晚未能抽取本部门数据") for m in messages)
    for text in (html, json.dumps(report, ensure_ascii=False)):
        for detail in ("127.0.0.1", "city_renshe_gone", "GOVMDM_CONN", "AIRFLOW_CONN",
                       "govmdm_reader", "postgresql", ":1,"):  # fmt: skip
            assert detail not in text, detail
