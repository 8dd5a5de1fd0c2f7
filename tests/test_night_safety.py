"""Nothing lost: reruns, crashes, damaged state, one night at a time, bad rows and bad commands.

Every test starts from a copy of one small sample city whose first night is published, and goes
through the real path — the ``govmdm`` commands, or the functions the Airflow tasks call — on the
embedded SQLite warehouse (the lock also on PostgreSQL and MariaDB).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from sample_cities import CityFactory
from typer.testing import CliRunner, Result

import store.warehouse as wh
from cli.main import app
from etl.config import CityConfig, load_city_config
from etl.sample_city.generate import next_night
from etl.standardize import canonical_dir
from etl.state import RunState, warehouse_url
from master_data.consolidate import consolidate
from master_data.link import link
from master_data.night_state import ConsolidateError, layer_file, read_state, state_file
from master_data.publish import publish
from store.layout import master_dir

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
PERSONS, ENTERPRISES, SEED = 300, 60, 3


# --- the city ----------------------------------------------------------------------------------


@pytest.fixture
def var(make_city: CityFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the template — ``var/`` of a small city with its first night published, built
    once — in a new place (``var/`` moves with its master state)."""
    moved = tmp_path / "var"
    make_city(
        monkeypatch,
        persons=PERSONS,
        enterprises=ENTERPRISES,
        seed=SEED,
        until="published",
        copy=moved,
    )
    return moved


def _city() -> CityConfig:
    return load_city_config(CONFIG)


def _night0(var: Path) -> str:
    """The template's night: the first published."""
    with contextlib.closing(sqlite3.connect(var / "warehouse" / "govmdm.sqlite")) as db:
        return str(db.execute("SELECT min(run_id) FROM mdm_run").fetchone()[0])


def cli(*args: str) -> Result:
    """Run a ``govmdm`` command in this process."""
    return CliRunner().invoke(app, list(args))


def run_night(run_id: str) -> None:
    """A night by hand, as the README says."""
    for command in ("extract", "standardize", "consolidate"):
        done = cli(command, "--run-id", run_id)
        assert done.exit_code == 0, done.output


def tables(var: Path) -> dict[str, pd.DataFrame]:
    """Every master table, in a fixed order."""
    engine = wh.engine_for(f"sqlite:///{var / 'warehouse' / 'govmdm.sqlite'}")
    try:
        out = {}
        for t in (*wh.CURRENT_TABLES, *wh.NIGHTLY_TABLES):
            frame = wh.read(engine, t)
            out[t.name] = frame.sort_values(list(frame.columns)).reset_index(drop=True)
        return out
    finally:
        engine.dispose()


def assert_same_tables(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    for name, frame in a.items():
        pd.testing.assert_frame_equal(frame, b[name], obj=name)


def watermarks(city: CityConfig) -> dict[tuple[str, str], str]:
    with RunState.for_city(city) as state:
        return {
            (d.code, t.name): (state.watermark(d.code, t.name) or ("", ""))[1]
            for d in city.departments
            for t in d.tables
        }


def source_keys(city: CityConfig) -> pd.DataFrame:
    """Every row in the source databases now: department, source_table, source_key."""
    rows = []
    for d in city.departments:
        db = sqlite3.connect(city.var_dir / "city" / "sources" / f"{d.code}.sqlite")
        try:
            for t in d.tables:
                cols = ", ".join(f'"{c}"' for c in t.primary_key)
                for (key,) in db.execute(f'SELECT {cols} FROM "{t.name}"'):
                    rows.append((d.code, t.name, None if key is None else str(key)))
        finally:
            db.close()
    return pd.DataFrame(rows, columns=["department", "source_table", "source_key"])


def unaccounted(city: CityConfig) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """Source rows in neither the crosswalk nor any night's rejects (lost), and crosswalk rows
    whose source row is gone (ghosts). The crosswalk's primary key rules out doubles."""
    live = set(source_keys(city).itertuples(index=False, name=None))
    xw = tables(city.var_dir)["mdm_crosswalk"]
    linked = set(
        xw[["department", "source_table", "source_key"]].itertuples(index=False, name=None)
    )
    rejected: set[tuple[Any, ...]] = set()
    for path in (city.var_dir / "canonical").glob("run=*/department=*/rejects.parquet"):
        r = pq.read_table(path, columns=["department", "source_table", "source_key"])
        rejected |= set(r.to_pandas().itertuples(index=False, name=None))
    return live - linked - rejected, linked - live


# --- 1. a rerun of a published night ------------------------------------------------------------


def test_rerunning_a_published_night_publishes_it_again_exactly(var: Path) -> None:
    """Extract, standardize and consolidate a published night again: the same golden tables,
    deletions included, no watermark moves; the next night goes on from there."""
    city = _city()
    night1 = next_night(var / "city")["as_of"]
    run_night(night1)
    deleted = [
        (p.parent.name.removeprefix("department="), p.name.removesuffix(".deleted.parquet"), k)
        for p in (var / "raw" / f"run={night1}").glob("*/*.deleted.parquet")
        for k in pq.read_table(p).column("_row_key").to_pylist()
    ]
    assert deleted, "the sample's night should delete rows"
    published, marks = tables(var), watermarks(city)
    xw = published["mdm_crosswalk"]
    assert not set(deleted) & set(xw[["department", "source_table", "source_key"]].itertuples(
        index=False, name=None))  # fmt: skip

    again = cli("extract", "--run-id", night1)
    assert again.exit_code == 0, again.output
    assert "replay" in again.output and "sources are not read" in again.output
    assert cli("standardize", "--run-id", night1).exit_code == 0
    done = cli("consolidate", "--run-id", night1)
    assert done.exit_code == 0, done.output
    assert "0 watermarks moved" in done.output
    assert_same_tables(published, tables(var))
    assert watermarks(city) == marks

    night2 = next_night(var / "city")["as_of"]
    run_night(night2)
    assert unaccounted(city) == (set(), set())
    assert len(tables(var)["mdm_person"]) >= len(published["mdm_person"]) - 5


def test_an_older_night_is_refused_with_the_way_that_works(var: Path) -> None:
    night0 = _night0(var)
    night1 = next_night(var / "city")["as_of"]
    run_night(night1)
    published = tables(var)
    older = cli("extract", "--run-id", night0)
    assert older.exit_code == 2
    assert f"Fix: rerun night {night1}" in " ".join(older.output.split())
    relinked = cli("consolidate", "--run-id", night0)
    assert relinked.exit_code == 1 and "Traceback" not in relinked.output
    assert f"was published before night {night1}" in " ".join(relinked.output.split())
    full = cli("extract", "--full", "--run-id", night1)
    assert full.exit_code == 2 and "without --full" in " ".join(full.output.split())
    assert_same_tables(published, tables(var))


def test_the_dag_tasks_replay_a_published_night(var: Path) -> None:
    """What govmdm_nightly's tasks call, for a night already published by hand: every
    department's raw data is reused and the same night is published again."""
    from pipeline import night as glue

    city = _city()
    night1 = next_night(var / "city")["as_of"]
    run_night(night1)
    published, marks = tables(var), watermarks(city)
    tonight = glue.Night.open(CONFIG, night1)
    planned = glue.plan(tonight)
    codes = [d.code for d in city.departments]
    assert planned["rerun"] == sorted(codes)
    for code in codes:
        assert glue.extract(tonight, code)["status"] == "reused"
        glue.standardize(tonight, code)
        glue.validate(tonight, code)
    glue.link(tonight, departments=codes)
    assert glue.publish(tonight)["watermarks_committed"] == 0
    assert_same_tables(published, tables(var))
    assert watermarks(city) == marks
    with pytest.raises(glue.NightRefused, match="new run_id"):
        glue.plan(tonight, full=True)  # govmdm_full_rebuild on that date


def test_a_rerun_reads_again_a_department_the_night_did_not_publish(var: Path) -> None:
    """A department held back on a published night kept its watermark: a rerun of that night
    reads its source again (catching it up) and replays everyone else."""
    from pipeline import night as glue

    city = _city()
    night1 = next_night(var / "city")["as_of"]
    tonight = glue.Night.open(CONFIG, night1)
    for code in [d.code for d in city.departments]:
        glue.extract(tonight, code)
        glue.standardize(tonight, code)
    codes = [d.code for d in city.departments]
    glue.link(tonight, departments=codes[1:], held=codes[:1])
    glue.publish(tonight)
    held_mark = watermarks(city)[(codes[0], city.department(codes[0]).tables[0].name)]
    assert glue.plan(tonight)["rerun"] == sorted(codes[1:])
    assert glue.extract(tonight, codes[0])["status"] == "ok"
    assert glue.extract(tonight, codes[1])["status"] == "reused"
    glue.standardize(tonight, codes[0])
    glue.link(tonight, departments=codes)
    assert glue.publish(tonight)["watermarks_committed"] == len(city.department(codes[0]).tables)
    assert watermarks(city)[(codes[0], city.department(codes[0]).tables[0].name)] != held_mark
    assert unaccounted(city) == (set(), set())


# --- 3. a killed standardize, then consolidate by hand ------------------------------------------


def _govmdm(*args: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    """``govmdm`` in a child process, killed with SIGKILL at ``kill_at`` if given."""
    env = {k: v for k, v in os.environ.items() if k != "GOVMDM_KILL_AT"}
    if kill_at:
        env["GOVMDM_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-c", "from cli.main import app; app()", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_killed_standardize_moves_only_the_standardized_departments_watermarks(
    var: Path,
) -> None:
    city = _city()
    codes = [d.code for d in city.departments]
    before = watermarks(city)
    night1 = next_night(var / "city")["as_of"]
    assert cli("extract", "--run-id", night1).exit_code == 0
    killed = _govmdm("standardize", "--run-id", night1, kill_at="standardize:written#3")
    assert killed.returncode == -signal.SIGKILL
    # the third department's outputs are written, but it never said it finished
    assert (canonical_dir(var, night1, codes[2]) / "person.parquet").is_file() or (
        canonical_dir(var, night1, codes[2]) / "enterprise.parquet"
    ).is_file()
    done = cli("consolidate", "--run-id", night1)
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    for code in codes[2:]:
        assert f"Not linked tonight: {code}:" in text
        assert f"govmdm standardize --run-id {night1} -d {code}" in text
    after = watermarks(city)
    with RunState.for_city(city) as state:
        proposed = {(r["department"], r["table_name"]): r["watermark_after"]
                    for r in state.ledger(night1)}  # fmt: skip
    for (code, table), mark in after.items():
        expected = proposed[(code, table)] if code in codes[:2] else before[(code, table)]
        assert mark == expected, (code, table)
    summary = json.loads((master_dir(var, night1) / "summary.json").read_text())
    assert summary["departments"] == sorted(codes[:2])
    assert sorted(summary["unfinished"]) == sorted(codes[2:])

    # the next night reads the departments left out again: no row is lost
    night2 = next_night(var / "city")["as_of"]
    run_night(night2)
    assert unaccounted(city) == (set(), set())


# --- 5. a row without a primary key ------------------------------------------------------------


def _drop_not_null(db_path: Path, table: str) -> sqlite3.Connection:
    """The source table without its NOT NULL / PRIMARY KEY constraints (as many real sources
    have: views, exports, tables without keys)."""
    db = sqlite3.connect(db_path)
    db.executescript(
        f'CREATE TABLE "_t" AS SELECT * FROM "{table}"; DROP TABLE "{table}"; '
        f'ALTER TABLE "_t" RENAME TO "{table}";'
    )
    return db


def test_a_row_without_a_key_is_rejected_and_the_night_goes_on(var: Path) -> None:
    city = _city()
    dept = city.department("gongan")
    table = dept.tables[0]
    night1 = next_night(var / "city")["as_of"]
    db = _drop_not_null(var / "city" / "sources" / "gongan.sqlite", table.name)
    with db:
        key, change = table.primary_key[0], table.change_column
        top = db.execute(f'SELECT max("{change}") FROM "{table.name}"').fetchone()[0]
        for value in ("NULL", "'  '"):
            db.execute(
                f'INSERT INTO "{table.name}" SELECT * FROM "{table.name}" WHERE "{key}" = '
                f'(SELECT min("{key}") FROM "{table.name}")'
            )
            db.execute(
                f'UPDATE "{table.name}" SET "{key}" = {value}, "{change}" = ? WHERE rowid = '
                f'(SELECT max(rowid) FROM "{table.name}")',
                (top,),
            )
    db.close()
    run_night(night1)
    rejects = pq.read_table(canonical_dir(var, night1, "gongan") / "rejects.parquet").to_pandas()
    keyless = rejects[rejects["reasons"].map(lambda r: "row:key_missing" in list(r))]
    assert len(keyless) == 2
    assert sorted(keyless["source_key"].fillna("NULL")) == ["  ", "NULL"]
    assert unaccounted(city) == (set(), set())  # both rows are in rejects, with their reason
    assert all(len(t) for t in (tables(var)["mdm_person"], tables(var)["mdm_enterprise"]))


def test_consolidate_never_crashes_on_a_keyless_canonical_row(var: Path) -> None:
    """Canonical rows written by an older govmdm may hold a row without a key: it is left out,
    counted and named, and the night publishes."""
    city = _city()
    night1 = next_night(var / "city")["as_of"]
    assert cli("extract", "--run-id", night1).exit_code == 0
    assert cli("standardize", "--run-id", night1).exit_code == 0
    path = canonical_dir(var, night1, "weijian") / "person.parquet"
    rows = pq.read_table(path)
    assert rows.num_rows
    broken = rows.slice(0, 1).to_pandas().assign(source_key=None)
    frame = pd.concat([rows.to_pandas(), broken], ignore_index=True)
    pq.write_table(pq.read_table(path).from_pandas(frame, schema=rows.schema), path)
    raw = json.loads((canonical_dir(var, night1, "weijian") / "_standardized.json").read_text())
    assert raw["raw"]
    linked = consolidate(city, night1)
    assert linked.entities["person"].unkeyed == 1
    assert linked.entities["person"].records == len(
        tables(var)["mdm_crosswalk"].query("entity == 'person'")
    )


# --- 7. damaged master state, and a var/ that moves ---------------------------------------------


def _next_night_extracted(var: Path) -> str:
    night1 = next_night(var / "city")["as_of"]
    assert cli("extract", "--run-id", night1).exit_code == 0
    assert cli("standardize", "--run-id", night1).exit_code == 0
    return str(night1)


@pytest.fixture
def reference(var: Path, tmp_path: Path) -> dict[str, pd.DataFrame]:
    """Night 1 published from an undamaged copy of ``var``: what recovery must give."""
    copy = tmp_path / "reference"
    shutil.copytree(var, copy)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GOVMDM_VAR", str(copy))
        run_night(next_night(copy / "city")["as_of"])
        return tables(copy)


def _base_state(var: Path) -> Path:
    return master_dir(var, _night0(var))


@pytest.mark.parametrize("entity", ["person", "enterprise"])
def test_a_damaged_golden_file_is_named_and_its_fix_recovers(
    var: Path, reference: dict[str, pd.DataFrame], entity: str
) -> None:
    night1 = _next_night_extracted(var)
    golden = _base_state(var) / entity / "golden.arrow"
    golden.write_bytes(golden.read_bytes()[:300])
    failed = cli("consolidate", "--run-id", night1)
    text = " ".join(failed.output.split())
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    assert f"{golden}isdamaged" in "".join(failed.output.split())
    fix = f"govmdm consolidate --run-id {night1} --full`"
    assert fix in text
    recovered = cli(*fix.rstrip("`").split()[1:])
    assert recovered.exit_code == 0, recovered.output
    said = " ".join(recovered.output.split())
    assert "recovered" in said and "read from the warehouse" in said
    assert_same_tables(reference, tables(var))  # as if nothing had been damaged


def test_a_damaged_model_is_named_and_retrain_recovers(
    var: Path, reference: dict[str, pd.DataFrame]
) -> None:
    night1 = _next_night_extracted(var)
    model = _base_state(var) / "person" / "model.json"
    model.write_text('{"m": ')
    failed = cli("consolidate", "--run-id", night1)
    text = "".join(failed.output.split())
    assert failed.exit_code == 1 and "model.json" in text
    assert f"govmdmconsolidate--run-id{night1}--retrain" in text
    recovered = cli("consolidate", "--run-id", night1, "--retrain")
    assert recovered.exit_code == 0, recovered.output
    person = tables(var)["mdm_person"]
    assert len(person) == len(reference["mdm_person"])


def test_damaged_records_are_recovered_by_reading_the_sources_in_full(var: Path) -> None:
    city = _city()
    night1 = _next_night_extracted(var)
    records = _base_state(var) / "person" / "records.arrow"
    records.write_bytes(b"not arrow at all")
    failed = cli("consolidate", "--run-id", night1, "--full")
    text = " ".join(failed.output.split())
    assert failed.exit_code == 1 and f"govmdm extract --full --run-id {night1}" in text
    assert cli("extract", "--full", "--run-id", night1).exit_code == 0
    assert cli("standardize", "--run-id", night1).exit_code == 0
    done = cli("consolidate", "--run-id", night1, "--full")
    assert done.exit_code == 0, done.output
    assert unaccounted(city) == (set(), set())


def test_a_rerun_killed_while_replacing_the_state_keeps_the_published_state(var: Path) -> None:
    """Rerunning a published night replaces its master-state folder; killed in between, the
    published folder is still read (explain, the next night)."""
    city = _city()
    night1 = next_night(var / "city")["as_of"]
    run_night(night1)
    published = tables(var)
    killed = _govmdm("consolidate", "--run-id", night1, kill_at="link:swapping")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = master_dir(var, night1)
    assert not state.exists() and state.with_name(state.name + ".old").is_dir()
    master_id = published["mdm_person"]["master_id"].iloc[0]
    explained = cli("explain", master_id)
    assert explained.exit_code == 0 and "links" in explained.output, explained.output
    assert_same_tables(published, tables(var))
    run_night(next_night(var / "city")["as_of"])
    assert unaccounted(city) == (set(), set())


def test_a_delta_night_killed_after_its_layers_leaves_the_base_nights_files(
    var: Path, reference: dict[str, pd.DataFrame]
) -> None:
    """A delta night's records and block keys are layers on the base night's file, which it
    hard-links: killed once they are written, the base night's files are byte for byte as
    they were, and the rerun publishes what an unbroken night does."""
    night1 = _next_night_extracted(var)
    base = _base_state(var)
    before = {p.relative_to(base): p.read_bytes() for p in base.rglob("*") if p.is_file()}
    killed = _govmdm("consolidate", "--run-id", night1, kill_at="link:scored")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    work = master_dir(var, night1).with_name(f"run={night1}.tmp") / "person"
    for name in ("records", "blockkeys"):
        assert os.path.samefile(state_file(work, name), state_file(base / "person", name))
        assert layer_file(work, name, "added").is_file()
    assert {p.relative_to(base): p.read_bytes() for p in base.rglob("*") if p.is_file()} == before
    done = cli("consolidate", "--run-id", night1)
    assert done.exit_code == 0, done.output
    assert_same_tables(reference, tables(var))


def test_var_moves_and_old_absolute_state_paths_still_read(
    var: Path, reference: dict[str, pd.DataFrame]
) -> None:
    """The template was published elsewhere; this copy links on its own state. A row written
    by an older govmdm (an absolute path to a folder that is gone) still reads."""
    night0 = _night0(var)
    with sqlite3.connect(var / "warehouse" / "govmdm.sqlite") as db:
        stored = db.execute("SELECT state_dir FROM mdm_run").fetchone()[0]
        assert stored == f"master/run={night0}"
        db.execute("UPDATE mdm_run SET state_dir = ?", (f"/gone/var/master/run={night0}",))
    db.close()
    run_night(next_night(var / "city")["as_of"])
    assert_same_tables(reference, tables(var))


# --- 8. two nights at once -----------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from store.warehouse import night_lock
    with night_lock(sys.argv[1], "held-night", "link"):
        print("held", flush=True)
        time.sleep(600)
    """
)


@contextlib.contextmanager
def _holding(url: str) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the night lock of the warehouse ``url`` until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _acquire_soon(url: str) -> None:
    """The lock is free (the server may take a moment to notice a dead client)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with wh.night_lock(url, "next-night", "link"):
                return
        except wh.WarehouseBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_second_night_refuses_while_one_links_and_a_killed_holder_frees_the_lock(
    var: Path,
) -> None:
    city = _city()
    night1 = _next_night_extracted(var)
    with _holding(warehouse_url(city)) as holder:
        busy = cli("consolidate", "--run-id", night1)
        text = " ".join(busy.output.split())
        assert busy.exit_code == 1 and "Traceback" not in busy.output
        assert "another govmdm night is linking or publishing" in text
        assert "held-night" in text and f"pid {holder.pid}" in text
        assert cli("publish", "--run-id", night1).exit_code == 1
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel drops the flock
        holder.wait()
    done = cli("consolidate", "--run-id", night1)
    assert done.exit_code == 0, done.output


def test_two_nights_linked_on_one_base_publish_once_and_issue_each_id_once(var: Path) -> None:
    """Two run IDs extracted and linked on the same night: the first publishes, the second is
    refused (it would undo the first and issue the same new IDs again) until it is extracted
    again on top of the first."""
    city = _city()
    first = _next_night_extracted(var)
    second = f"{first}.second"
    assert cli("extract", "--run-id", second).exit_code == 0
    assert cli("standardize", "--run-id", second).exit_code == 0
    link(city, first)
    link(city, second)
    publish(city, first)
    published = tables(var)
    with pytest.raises(ConsolidateError, match=f"was linked on night .* holds night {first}"):
        publish(city, second)
    assert_same_tables(published, tables(var))
    with pytest.raises(ConsolidateError, match="extract the night again"):
        link(city, second)  # its rows were read before the first night moved the watermarks
    run_night(second)
    events = tables(var)["mdm_id_event"]
    issued = events[events["event"] == "issued"]
    assert not issued.duplicated(["entity", "master_id"]).any()
    assert unaccounted(city) == (set(), set())


def test_the_night_lock_on_postgresql_is_released_when_its_holder_is_killed(
    pg_database: str,
) -> None:
    with _holding(pg_database) as holder:
        with (
            pytest.raises(wh.WarehouseBusy, match="held-night"),
            wh.night_lock(pg_database, "second", "link"),
        ):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    _acquire_soon(pg_database)


def test_the_night_lock_on_mariadb_is_released_when_its_holder_is_killed(
    mariadb_database: str,
) -> None:
    with _holding(mariadb_database) as holder:
        with (
            pytest.raises(wh.WarehouseBusy, match="another govmdm night"),
            wh.night_lock(mariadb_database, "second", "link"),
        ):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    _acquire_soon(mariadb_database)


def test_the_night_lock_is_reentrant_in_a_thread_and_exclusive_across_threads(var: Path) -> None:
    url = warehouse_url(_city())
    refused: list[BaseException] = []

    def other() -> None:
        try:
            with wh.night_lock(url, "other", "link"):
                pass
        except wh.WarehouseBusy as exc:
            refused.append(exc)

    with wh.night_lock(url, "mine", "consolidate"), wh.night_lock(url, "mine", "link"):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(refused) == 1 and "night mine (consolidate)" in str(refused[0])
    _acquire_soon(url)


# --- 11. clear errors instead of tracebacks; stable identity -----------------------------------


def test_consolidate_before_any_extract_and_explain_on_an_empty_warehouse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOVMDM_VAR", str(tmp_path / "var"))
    monkeypatch.delenv("GOVMDM_WAREHOUSE_URL", raising=False)
    done = cli("consolidate", "--run-id", "2026-06-30")
    text = " ".join(done.output.split())
    assert done.exit_code == 1 and "Traceback" not in done.output
    assert "has nothing to link" in text and "govmdm extract --run-id 2026-06-30" in text
    explained = cli("explain", "P0000000001")
    assert explained.exit_code == 1 and "Traceback" not in explained.output
    assert "nothing is published yet" in explained.output


def test_evaluate_refuses_the_truth_of_another_city(var: Path, make_city: CityFactory) -> None:
    other = make_city.path(persons=60, enterprises=8, seed=SEED + 1) / "city"
    wrong = cli("evaluate", "--truth", str(other))
    text = " ".join(wrong.output.split())
    assert wrong.exit_code == 1 and "does not describe the data being scored" in text
    assert "recall" not in text.lower() and "1.0000" not in text
    right = cli("evaluate", "--json")
    assert right.exit_code == 0, right.output
    person = json.loads(right.output)["entities"]["person"]
    assert person["pairwise"]["recall"] > 0.9
    golden = person["golden"]  # the headline scores what some source holds; both are kept
    assert 0 < golden["held_masters"] <= golden["evaluated"]
    assert golden["held_fully_correct"] >= golden["fully_correct"]
    shown = " ".join(cli("evaluate").output.split())
    assert "Golden accuracy over every scored attribute, held by a source or not: person" in shown


def test_a_deleted_then_reinserted_row_gets_its_master_id_back(var: Path) -> None:
    city = _city()
    table = city.department("gongan").tables[0]
    key = table.primary_key[0]
    xw = tables(var)["mdm_crosswalk"]
    sizes = xw.groupby(["entity", "master_id"])["source_key"].transform("size")
    night1 = next_night(var / "city")["as_of"]
    source = var / "city" / "sources" / "gongan.sqlite"
    db = sqlite3.connect(source)
    db.row_factory = sqlite3.Row
    live = {r[0] for r in db.execute(f'SELECT "{key}" FROM "{table.name}"')}
    single = xw[(sizes == 1) & (xw["department"] == "gongan") & xw["source_key"].isin(live)]
    row = single.iloc[0]
    saved = dict(
        db.execute(
            f'SELECT * FROM "{table.name}" WHERE "{key}" = ?', (row["source_key"],)
        ).fetchone()
    )
    with db:
        db.execute(f'DELETE FROM "{table.name}" WHERE "{key}" = ?', (row["source_key"],))
    run_night(night1)
    events = tables(var)["mdm_id_event"]
    retired = events[(events["run_id"] == night1) & (events["event"] == "retired")]
    assert row["master_id"] in set(retired["master_id"])

    night2 = next_night(var / "city")["as_of"]
    change = table.change_column
    saved[change] = db.execute(f'SELECT max("{change}") FROM "{table.name}"').fetchone()[0]
    with db:
        cols = ", ".join(f'"{c}"' for c in saved)
        db.execute(
            f'INSERT INTO "{table.name}" ({cols}) VALUES ({", ".join("?" * len(saved))})',
            list(saved.values()),
        )
    db.close()
    run_night(night2)
    now = tables(var)
    back = now["mdm_crosswalk"].query("department == 'gongan' and source_key == @row.source_key")
    assert back["master_id"].tolist() == [row["master_id"]]
    restored = now["mdm_id_event"].query("run_id == @night2 and event == 'restored'")
    assert row["master_id"] in set(restored["master_id"])
    assert row["master_id"] not in set(
        now["mdm_id_event"].query("event == 'issued' and run_id == @night2")["master_id"]
    )
    # a full rebuild of the night gives the same IDs as the delta night did
    delta = read_state(master_dir(var, night2) / "person", "crosswalk").to_pandas()
    link(city, night2, full=True)
    full = read_state(master_dir(var, night2) / "person", "crosswalk").to_pandas()
    pd.testing.assert_frame_equal(
        delta.sort_values("record_id").reset_index(drop=True),
        full.sort_values("record_id").reset_index(drop=True),
    )
