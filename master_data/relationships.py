"""Relationships by master ID: person ↔ enterprise (employers, legal representatives) and
person ↔ person (guardians).

A person record names its employer by credit code, an enterprise record its legal
representative by ID number. After both entity types are linked, :func:`relationships` resolves
those references over every golden record to the master IDs of the records holding them,
writes the golden records' ``employer_master_id`` and ``legal_rep_master_id``, the
relationship table, and the references that resolved to no one. A person record holding a
guardian's ID number (``guardian_id``: a minor filed under a parent's number) relates its
master to the guardian's, in ``guardians`` (``mdm_person_relationship``).

>>> relationships(master_dir(var, "2026-07-01"), "2026-07-01")
(412, 3)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from master_data.night_state import read_state, write_state
from master_data.records import RECORD


def relationships(state: Path, run_id: str) -> tuple[int, int]:
    """Resolve the references of the night linked into ``state``; how many relationships and
    how many unresolved references. A golden record whose resolved reference changed tonight
    joins its entity's touched master IDs."""
    person, enterprise = state / "person", state / "enterprise"
    employers = read_state(person, "golden", ["employer_uscc"])["employer_uscc"]
    gp = _resolve(
        person,
        "employer_master_id",
        "employer_uscc",
        _owner(enterprise, "uscc", employers),
        run_id,
    )
    wards = _wards(person)
    reps = read_state(enterprise, "golden", ["legal_rep_id"])["legal_rep_id"]
    # of legal representatives and guardians
    holder = _owner(person, "id_number", pa.chunked_array([reps, wards["guardian_id"]]))
    ge = _resolve(enterprise, "legal_rep_master_id", "legal_rep_id", holder, run_id)
    employer = gp.dropna(subset=["employer_master_id"])
    rep = ge.dropna(subset=["legal_rep_master_id"])
    rel = pd.concat(
        [
            _rows(
                "employer",
                employer["master_id"],
                employer["employer_master_id"],
                employer["employer_uscc"],
            ),
            _rows(
                "legal_representative",
                rep["legal_rep_master_id"],
                rep["master_id"],
                rep["legal_rep_id"],
            ),
        ],
        ignore_index=True,
    ).drop_duplicates(["kind", "person_master_id", "enterprise_master_id"])
    write_state(rel, state, "relationships")
    no_employer = gp[gp["employer_uscc"].notna() & gp["employer_master_id"].isna()]
    no_rep = ge[ge["legal_rep_id"].notna() & ge["legal_rep_master_id"].isna()]
    unresolved = pd.concat(
        [
            _unresolved("employer", no_employer["master_id"], no_employer["employer_uscc"]),
            _unresolved("legal_representative", no_rep["master_id"], no_rep["legal_rep_id"]),
        ],
        ignore_index=True,
    )
    no_guardian = _guardians(state, wards, holder)
    unresolved = pd.concat([unresolved, no_guardian], ignore_index=True)
    write_state(unresolved, state, "unresolved")
    return len(rel), len(unresolved)


def _wards(folder: Path) -> pa.Table:
    """The person records holding a guardian's ID number (``guardian_id``, set by
    standardization when the number is a generation older than the row's own person), with
    their master IDs."""
    records = read_state(folder, "records", [RECORD, "guardian_id"])
    return _with_masters(folder, records.filter(pc.is_valid(records["guardian_id"])))


def _guardians(state: Path, wards: pa.Table, holder: pd.Series) -> pd.DataFrame:
    """Write the night's guardian relationships (``guardians``): each of the ``wards``
    (:func:`_wards`) relates its master to the master holding its guardian's ID number as its
    own (``holder``: ID number → master ID). Returns the references that resolved to no one."""
    held = wards.to_pandas().sort_values(RECORD)
    guardian = held["guardian_id"].map(holder)
    found = held.assign(guardian_master_id=guardian).dropna(subset=["guardian_master_id"])
    found = found[found["master_id"] != found["guardian_master_id"]]
    rows = pd.DataFrame(
        {
            "kind": "guardian",
            "person_master_id": found["master_id"].to_numpy(),
            "related_master_id": found["guardian_master_id"].to_numpy(),
            "evidence": found["guardian_id"].to_numpy(),
        }
    ).drop_duplicates(["kind", "person_master_id", "related_master_id"])
    write_state(rows, state, "guardians")
    lost = held[guardian.isna()].drop_duplicates("master_id")  # one per master (the key)
    return _unresolved("guardian", lost["master_id"], lost["guardian_id"])


def _owner(folder: Path, column: str, wanted: pa.ChunkedArray) -> pd.Series:
    """``column`` value → master ID of the first record (by record ID) that has it, for the
    ``wanted`` values (those looked up): the records of every other value are left out
    before the crosswalk is joined and sorted."""
    values = pc.drop_null(pc.unique(wanted.cast(pa.string())))
    # the records holding a wanted value picked while reading: the others are never copied
    both = _with_masters(
        folder, read_state(folder, "records", [RECORD, column], where=(column, values))
    )
    both = both.take(pc.sort_indices(both, [(RECORD, "ascending")])).to_pandas()
    return both.drop_duplicates(column).set_index(column)["master_id"]


def _with_masters(folder: Path, records: pa.Table) -> pa.Table:
    """``records`` (a few of them) with their master IDs (null without a crosswalk row): the
    crosswalk rows of those records, read as such, joined to them."""
    ids = records[RECORD].combine_chunks()
    xw = read_state(folder, "crosswalk", [RECORD, "master_id"], where=(RECORD, ids))
    return xw.join(records, RECORD, join_type="right outer")


def _resolve(folder: Path, target: str, evidence: str, of: pd.Series, run_id: str) -> pd.DataFrame:
    """Set the golden records' ``target`` to the master ID their ``evidence`` resolves to;
    their master ID, evidence and ``target``. Only those columns go through pandas: the
    golden table itself is rewritten in Arrow with two columns replaced."""
    golden = read_state(folder, "golden")
    held = [c for c in ("master_id", evidence, "run_id", target) if c in golden.column_names]
    frame = golden.select(held).to_pandas()
    before = frame[target] if target in frame.columns else pd.Series(None, index=frame.index)
    frame[target] = frame[evidence].map(of)
    differs = ~(before.eq(frame[target]) | (before.isna() & frame[target].isna()))
    moved = frame.loc[differs, "master_id"]
    frame.loc[differs & frame[target].notna() & before.notna(), "run_id"] = run_id
    touched = read_state(folder, "touched")["master_id"].to_pandas()
    write_state(pd.DataFrame({"master_id": sorted(set(touched) | set(moved))}), folder, "touched")
    # converted as a whole frame's columns are, so the file is what writing the frame gave
    new = pa.Table.from_pandas(frame[["run_id", target]], preserve_index=False)
    for name in ("run_id", target):
        i = golden.schema.get_field_index(name)
        if i < 0:
            golden = golden.append_column(name, new[name])
        else:
            golden = golden.set_column(i, name, new[name])
    write_state(golden, folder, "golden")
    return frame


def _rows(kind: str, person: pd.Series, enterprise: pd.Series, evidence: pd.Series) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "kind": kind,
            "person_master_id": person.to_numpy(),
            "enterprise_master_id": enterprise.to_numpy(),
            "evidence": evidence.to_numpy(),
        }
    )


def _unresolved(kind: str, master_id: pd.Series, evidence: pd.Series) -> pd.DataFrame:
    return pd.DataFrame(
        {"kind": kind, "master_id": master_id.to_numpy(), "evidence": evidence.to_numpy()}
    )
