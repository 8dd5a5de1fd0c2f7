"""Where everything a run writes lives under ``var/``: one function per path, nowhere else.

Each function takes the ``var`` folder (``CityConfig.var_dir``) and, where the path needs them,
a run ID, a department code and a table name. Nothing here touches the disk except the two
functions that list what is there (:func:`pending_key_set_dirs`, :func:`problem_paths`).

::

    var/
      raw/run=<run>/settings.json                       the configuration the night used
      raw/run=<run>/department=<dept>/<table>.parquet   every column as text, plus _row_key
                                     <table>.deleted.parquet     keys gone from the source
                                     <table>.duplicates.parquet  rows of keys held twice
      state/keys/<dept>/<table>.parquet                  committed key set (.seen, .hashes)
      state/keys/<dept>/pending/run=<run>/<table>.parquet  proposed by a night, moved on commit
      canonical/run=<run>/department=<dept>/             person, enterprise, rejects, marker
      canonical/run=<run>/department=<dept>.json         a configuration problem standardize found
      master/run=<run>/                                  one night's master state
      warehouse/govmdm.sqlite                            the embedded warehouse
      nights/run=<run>/night.json                        the night's summary (and its stages)
      reports/run=<run>/                                 the departments' reports
      exports/<name>/                                    analyst exports
      airflow/                                           the project-local Airflow (demo)
      city/sources/<connection>.sqlite                   the sample city's databases

>>> raw_path(Path("var"), "2026-07-01", "renshe", "insured_person")
PosixPath('var/raw/run=2026-07-01/department=renshe/insured_person.parquet')

Paths kept in the warehouse are relative to ``var/`` (:func:`master_state_ref`), so that a moved
or copied ``var/`` reads its own files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

SEEN_SUFFIX = ".seen"
"""Table-name suffix of a *seen set* (row versions at the watermark's edge)."""
HASH_SUFFIX = ".hashes"
"""Table-name suffix of a table's kept row hashes."""
STANDARDIZED = "_standardized.json"
"""The marker standardization writes last into a department's canonical folder."""


def _run(run_id: str) -> str:
    return f"run={run_id}"


def _department(department: str) -> str:
    return f"department={department}"


# --- raw extraction ------------------------------------------------------------------------------


def raw_root(var_dir: Path) -> Path:
    """The folder holding every night's raw extraction."""
    return var_dir / "raw"


def raw_run_dir(var_dir: Path, run_id: str) -> Path:
    """One night's raw extraction, every department."""
    return raw_root(var_dir) / _run(run_id)


def raw_settings_path(var_dir: Path, run_id: str) -> Path:
    """The configuration a night was extracted with."""
    return raw_run_dir(var_dir, run_id) / "settings.json"


def raw_dir(var_dir: Path, run_id: str, department: str) -> Path:
    """One department's raw Parquet of one night."""
    return raw_run_dir(var_dir, run_id) / _department(department)


def raw_path(var_dir: Path, run_id: str, department: str, table: str) -> Path:
    """The raw Parquet of one table in one night."""
    return raw_dir(var_dir, run_id, department) / f"{table}.parquet"


def deleted_path(var_dir: Path, run_id: str, department: str, table: str) -> Path:
    """The keys found deleted from one table in one night (column ``_row_key``)."""
    return raw_dir(var_dir, run_id, department) / f"{table}.deleted.parquet"


def duplicates_path(var_dir: Path, run_id: str, department: str, table: str) -> Path:
    """One night's rows of a table whose key the source holds more than once (every copy)."""
    return raw_dir(var_dir, run_id, department) / f"{table}.duplicates.parquet"


# --- key sets ------------------------------------------------------------------------------------


def key_sets_dir(var_dir: Path) -> Path:
    """The folder of every department's key sets, committed and pending."""
    return var_dir / "state" / "keys"


def key_set_path(var_dir: Path, department: str, table: str) -> Path:
    """The committed key set of a table: every source key the last committed night saw."""
    return key_sets_dir(var_dir) / department / f"{table}.parquet"


def pending_key_sets_dir(var_dir: Path, run_id: str, department: str) -> Path:
    """The key sets one night proposed for one department, until commit moves them."""
    return key_sets_dir(var_dir) / department / "pending" / _run(run_id)


def pending_key_set_dirs(var_dir: Path, run_id: str) -> dict[str, Path]:
    """Department → its folder of key sets proposed by night ``run_id``, where there is one."""
    found = sorted(key_sets_dir(var_dir).glob(f"*/pending/{_run(run_id)}"))
    return {folder.parent.parent.name: folder for folder in found}


def pending_key_set_path(var_dir: Path, run_id: str, department: str, table: str) -> Path:
    """A key set proposed by night ``run_id``; it becomes the committed one on commit."""
    return pending_key_sets_dir(var_dir, run_id, department) / f"{table}.parquet"


def seen_set_path(var_dir: Path, department: str, table: str) -> Path:
    """The committed seen set of a table: the row versions at its watermark or NULL-stamped."""
    return key_set_path(var_dir, department, f"{table}{SEEN_SUFFIX}")


def pending_seen_set_path(var_dir: Path, run_id: str, department: str, table: str) -> Path:
    """A seen set proposed by night ``run_id``."""
    return pending_key_set_path(var_dir, run_id, department, f"{table}{SEEN_SUFFIX}")


def hash_set_path(var_dir: Path, department: str, table: str) -> Path:
    """The committed row hashes of a table (key and content hash of every row)."""
    return key_set_path(var_dir, department, f"{table}{HASH_SUFFIX}")


def pending_hash_set_path(var_dir: Path, run_id: str, department: str, table: str) -> Path:
    """Row hashes proposed by night ``run_id``."""
    return pending_key_set_path(var_dir, run_id, department, f"{table}{HASH_SUFFIX}")


# --- canonical rows ------------------------------------------------------------------------------


def canonical_run_dir(var_dir: Path, run_id: str) -> Path:
    """One night's canonical output, every department."""
    return var_dir / "canonical" / _run(run_id)


def canonical_dir(var_dir: Path, run_id: str, department: str) -> Path:
    """One department's canonical output of one night."""
    return canonical_run_dir(var_dir, run_id) / _department(department)


def standardized_marker_path(var_dir: Path, run_id: str, department: str) -> Path:
    """The marker naming the raw files a finished standardization read."""
    return canonical_dir(var_dir, run_id, department) / STANDARDIZED


def problem_path(var_dir: Path, run_id: str, department: str) -> Path:
    """A configuration problem standardization found, beside the department's folder."""
    return canonical_run_dir(var_dir, run_id) / f"{_department(department)}.json"


def problem_paths(var_dir: Path, run_id: str) -> list[Path]:
    """Every configuration problem noted in night ``run_id``, by department."""
    return sorted(canonical_run_dir(var_dir, run_id).glob(f"{_department('*')}.json"))


# --- master state --------------------------------------------------------------------------------


def master_root(var_dir: Path) -> Path:
    """The folder holding every night's master state."""
    return var_dir / "master"


def master_dir(var_dir: Path, run_id: str) -> Path:
    """Where one night's master state lives."""
    return master_root(var_dir) / _run(run_id)


def master_state_ref(run_id: str) -> str:
    """A night's master-state folder as the warehouse keeps it: relative to ``var/``."""
    return f"master/{_run(run_id)}"


def state_dir_of(var_dir: Path, run: Mapping[str, Any]) -> Path:
    """The master-state folder of a published night (a row of ``mdm_run``).

    Stored relative to ``var/``; rows written by an older govmdm hold an absolute path, which
    counts only when ``var/master/run=<id>`` is not there (a moved or copied ``var/`` reads its
    own state, never the folder it was copied from). A rerun stopped while swapping the folder
    left the published one as ``run=<id>.old``, which is read then.

    >>> state_dir_of(Path("/srv/var"), {"run_id": "7", "state_dir": "master/run=7"})
    PosixPath('/srv/var/master/run=7')
    """
    stored = Path(str(run["state_dir"]))
    own = master_dir(var_dir, str(run["run_id"]))
    if stored.is_absolute() and not own.is_dir() and stored.is_dir():
        own = stored
    elif not stored.is_absolute():
        own = var_dir / stored
    if not own.is_dir() and (old := own.with_name(own.name + ".old")).is_dir():
        return old  # a rerun was replacing it when it stopped
    return own


# --- warehouse -----------------------------------------------------------------------------------


def warehouse_dir(var_dir: Path) -> Path:
    """The embedded warehouse's folder; also where the night lock file goes without SQLite."""
    return var_dir / "warehouse"


def warehouse_sqlite_path(var_dir: Path) -> Path:
    """The embedded SQLite warehouse, used unless ``GOVMDM_WAREHOUSE_URL`` names another."""
    return warehouse_dir(var_dir) / "govmdm.sqlite"


# --- nights, reports, exports --------------------------------------------------------------------


def night_dir(var_dir: Path, run_id: str) -> Path:
    """Where the record of one night lives."""
    return var_dir / "nights" / _run(run_id)


def summary_path(var_dir: Path, run_id: str) -> Path:
    """The night's summary."""
    return night_dir(var_dir, run_id) / "night.json"


def night_stage_path(var_dir: Path, run_id: str, stage: str) -> Path:
    """The outcome of one city-wide stage of a night (link, publish, quality, …)."""
    return night_dir(var_dir, run_id) / f"{stage}.json"


def night_department_path(var_dir: Path, run_id: str, department: str) -> Path:
    """What each stage of a night noted about one department."""
    return night_dir(var_dir, run_id) / f"{_department(department)}.json"


def delivery_path(var_dir: Path, run_id: str) -> Path:
    """Which of a night's reports were e-mailed, and how it went."""
    return night_stage_path(var_dir, run_id, "delivery")


def reports_dir(var_dir: Path, run_id: str) -> Path:
    """One night's reports (HTML and JSON)."""
    return var_dir / "reports" / _run(run_id)


def export_dir(var_dir: Path, name: str) -> Path:
    """One analyst export (``name``: its time stamp and role)."""
    return var_dir / "exports" / name


# --- the local Airflow and the sample city -------------------------------------------------------


def airflow_home(var_dir: Path) -> Path:
    """``AIRFLOW_HOME`` of the project-local Airflow the demo runs."""
    return var_dir / "airflow"


def airflow_db_path(var_dir: Path) -> Path:
    """The project-local Airflow's SQLite metadata database."""
    return airflow_home(var_dir) / "airflow.db"


def demo_log_path(var_dir: Path, run_id: str) -> Path:
    """Airflow's log of one demo night."""
    return airflow_home(var_dir) / "logs" / f"demo-night-{run_id}.log"


def spark_dir(var_dir: Path) -> Path:
    """Where the Spark engine keeps its scratch and warehouse files."""
    return var_dir / "spark"


def city_dir(var_dir: Path) -> Path:
    """The generated sample city: its databases and its truth."""
    return var_dir / "city"


def sample_source_path(city: Path, connection: str) -> Path:
    """One department's SQLite database in a sample city written to ``city``."""
    return city / "sources" / f"{connection}.sqlite"


def city_source_path(var_dir: Path, connection: str) -> Path:
    """The embedded sample-city database a connection reads when nothing else names one."""
    return sample_source_path(city_dir(var_dir), connection)
