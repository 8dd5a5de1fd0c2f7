"""Rows an incremental night never sees: back-dated changes, duplicate keys, lost key sets."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sample_cities import CityFactory
from typer.testing import CliRunner

import etl.extract as ex
from cli.main import app
from etl.config import load_city_config
from etl.extract import extract_all
from etl.state import commit_watermarks, warehouse_url
from store import layout

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "config")


@pytest.fixture
def var(make_city: CityFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``var/`` holding a copy of a small generated city (the tests change its sources)."""
    make_city(monkeypatch, persons=400, enterprises=60, seed=1, copy=tmp_path)
    return tmp_path


def _renshe(var: Path) -> sqlite3.Connection:
    return sqlite3.connect(var / "city" / "sources" / "renshe.sqlite")


def test_a_change_with_a_back_dated_stamp_is_found_by_the_row_hash_check(var: Path) -> None:
    city = load_city_config(CONFIG)
    extract_all(city, "n0")
    commit_watermarks(city, "n0")
    with _renshe(var) as conn:  # a new phone, written with the row's old change stamp
        key = conn.execute("SELECT min(person_id) FROM insured_person").fetchone()[0]
        conn.execute("UPDATE insured_person SET mobile = '13900000000' WHERE person_id = ?", (key,))
    missed = {r.department: r for r in extract_all(city, "n1", hash_check_every_nights=7)}
    assert missed["renshe"].tables[0].rows_read == 0  # not a check night: not seen
    found = {r.department: r for r in extract_all(city, "n1", hash_check_every_nights=1)}
    t = found["renshe"].tables[0]
    assert (t.rows_read, t.rows_backdated) == (1, 1)
    raw = pq.read_table(layout.raw_path(city.var_dir, "n1", "renshe", "insured_person"))
    assert raw[ex.ROW_KEY].to_pylist() == [str(key)] and raw["mobile"].to_pylist() == [
        "13900000000"
    ]
    assert t.message and "row-hash check" in t.message
    assert all(r.tables[0].rows_backdated == 0 for c, r in found.items() if c != "renshe")
    # once read and committed, the same row is not found again
    commit_watermarks(city, "n1")
    again = {r.department: r for r in extract_all(city, "n2", hash_check_every_nights=1)}
    assert again["renshe"].tables[0].rows_backdated == 0


def test_a_duplicate_key_is_rejected_and_never_repoints_the_crosswalk(var: Path) -> None:
    runner = CliRunner()

    def night(run_id: str) -> None:
        for stage in ("extract", "standardize", "consolidate"):
            result = runner.invoke(app, [stage, "--config", CONFIG, "--run-id", run_id])
            assert result.exit_code == 0, (stage, result.output)

    night("n1")
    with _renshe(var) as conn:  # the department's table loses its primary key constraint
        ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'insured_person'")
        text = ddl.fetchone()[0].replace(", \n\tPRIMARY KEY (person_id)", "")
        assert "PRIMARY KEY" not in text
        conn.executescript(
            f"ALTER TABLE insured_person RENAME TO old; {text}; "
            "INSERT INTO insured_person SELECT * FROM old; DROP TABLE old;"
        )
        key, other = conn.execute(
            "SELECT min(person_id), max(person_id) FROM insured_person"
        ).fetchone()
        conn.execute(  # another person's row under an existing key, stamped tonight
            "INSERT INTO insured_person SELECT ?, full_name, id_no, gender, birth_date, mobile, "
            "employer_uscc, insurance_type, '2030-01-01 00:00:00' FROM insured_person "
            "WHERE person_id = ?",
            (key, other),
        )
    engine = sa.create_engine(warehouse_url(load_city_config(CONFIG)))
    query = sa.text(
        "SELECT master_id FROM mdm_crosswalk WHERE department = 'renshe' AND source_key = :k"
    )
    with engine.connect() as conn:
        before = conn.execute(query, {"k": str(key)}).scalar()
        theirs = conn.execute(query, {"k": str(other)}).scalar()
    assert before is not None and before != theirs
    result = runner.invoke(app, ["extract", "--config", CONFIG, "--run-id", "n2", "-d", "renshe"])
    flat = " ".join(result.output.split())
    assert "appear more than once" in flat and str(key) in flat
    night("n2")
    folder = var / "canonical" / "run=n2" / "department=renshe"
    rejects = [r for r in pq.read_table(folder / "rejects.parquet").to_pylist()]
    copies = [r for r in rejects if r["source_key"] == str(key)]
    assert len(copies) == 2 and all("person_id:duplicate_key" in r["reasons"] for r in copies)
    person = pq.read_table(folder / "person.parquet")["source_key"].to_pylist()
    assert str(key) not in person
    with engine.connect() as conn:
        after = conn.execute(query, {"k": str(key)}).scalar()
    engine.dispose()
    # both copies rejected, and renshe's blocking uniqueness rule (RS-U01) holds the batch
    # back: the key keeps the record it had; it is never re-pointed to the other person
    assert after == before != theirs
