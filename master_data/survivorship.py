"""Survivorship (一数一源) and cross-checks (多元校核).

For each attribute of a master entity, the value comes from one member row chosen in this order:
the department configured as the attribute's authority; then the configured rank of departments;
then the most recent ``updated_at``; then the value most members agree on; then department and
source key (so the choice is deterministic). Only usable values take part: a field the
standardizer refused is NULL in the canonical row and never survives. Attributes that belong
together (the parts of an address; a name and its pinyin) come from the same row.

Where a member row's value differs from a golden value that came from the authority, a conflict
row is written for the member's department: that department's copy disagrees with the
authoritative source.

>>> golden, provenance, conflicts = survive(members, "person", authority, rank)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from fields import dictionary
from store.tables import conflict_table, provenance_table

ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {
    entity: dictionary.attributes(entity) for entity in dictionary.ENTITIES
}
"""Attribute → the golden columns that survive together (the first one decides "has a value"),
from :mod:`fields.dictionary`."""

_SOURCE = ["master_id", "department", "source_table", "source_key", "updated_at"]
_SHOWN = ["division_code", "address_detail", "address"]  # what an address is compared and shown by

# The rows of mdm_provenance and mdm_conflict, less what the publish adds (entity, night).
PROVENANCE_COLUMNS = [c.name for c in provenance_table.columns if c.name != "entity"]
CONFLICT_COLUMNS = [c.name for c in conflict_table.columns if c.name not in ("run_id", "entity")]


def survive(
    members: pd.DataFrame,
    entity: str,
    authority: Mapping[str, str],
    rank: Sequence[str],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Golden records, per-attribute provenance and conflicts with the authority.

    ``members``: canonical rows with ``master_id`` (columns of the entity's canonical schema).
    ``authority``: attribute → department code. ``rank``: departments, most trusted first; a
    department not listed ranks after all listed ones.
    """
    order = {d: i for i, d in enumerate(rank)}
    # only the columns survivorship reads, positionally indexed: each attribute's subset of
    # rows copies these few columns, and lookups by position are cheap
    needed = [*_SOURCE, *_SHOWN, *(c for cs in ATTRIBUTES[entity].values() for c in cs)]
    members = members[list(dict.fromkeys(c for c in needed if c in members.columns))]
    members = members.reset_index(drop=True)
    # Every sort key as integer codes once (factorize(sort=True) keeps the values' order): one
    # lexsort per attribute instead of sorting object columns, on the rows that have a value.
    master_code, masters = pd.factorize(members["master_id"], sort=True)
    dept_code = pd.factorize(members["department"], sort=True)[0]
    key_code = pd.factorize(members["source_key"], sort=True)[0]
    newer = -pd.factorize(members["updated_at"].fillna(pd.Timestamp.min), sort=True)[0]
    ranks = members["department"].map(order).fillna(len(order)).astype(int).to_numpy()
    golden = pd.DataFrame(index=pd.Index(masters, name="master_id"))
    provenance: list[pd.DataFrame] = []
    conflicts: list[pd.DataFrame] = []
    for attribute, columns in ATTRIBUTES[entity].items():
        lead = columns[0]
        at = np.flatnonzero(members[lead].notna().to_numpy())
        if not len(at):
            for c in columns:
                golden[c] = None
            continue
        has = members.iloc[at]
        auth = authority.get(attribute)
        value = _comparable(has, attribute, lead)
        m = master_code[at]
        pair = pd.factorize(pd.Series(m) * (len(value) + 1) + pd.factorize(value)[0])[0]
        agree = np.bincount(pair)[pair]
        candidates = np.bincount(m)[m]
        not_auth = (
            (has["department"] != auth).to_numpy().astype(int) if auth else np.zeros(len(at), int)
        )
        sort = np.lexsort(
            (key_code[at], dept_code[at], -agree, newer[at], ranks[at], not_auth, m)
        )  # the last key sorts first: master, authority, rank, recency, agreement, dept, key
        first = sort[np.concatenate(([True], m[sort][1:] != m[sort][:-1]))]
        winners = has.iloc[first].set_index("master_id")
        for c in columns:
            golden[c] = winners[c].reindex(golden.index)
        rule = pd.Series("recency", index=winners.index)
        rule[ranks[at][first] < len(order)] = "rank"
        if auth:
            rule[(winners["department"] == auth).to_numpy()] = "authority"
        provenance.append(
            pd.DataFrame(
                {
                    "master_id": winners.index,
                    "attribute": attribute,
                    "department": winners["department"].to_numpy(),
                    "source_table": winners["source_table"].to_numpy(),
                    "source_key": winners["source_key"].to_numpy(),
                    "source_updated_at": winners["updated_at"].to_numpy(),
                    "candidates": candidates[first],
                    "agreeing": agree[first],
                    "rule": rule.to_numpy(),
                }
            )
        )
        if auth:
            conflicts.append(_conflicts(has, value, first, m, attribute, lead, auth))
    prov = pd.concat(provenance, ignore_index=True) if provenance else _empty(PROVENANCE_COLUMNS)
    conf = pd.concat(conflicts, ignore_index=True) if conflicts else _empty(CONFLICT_COLUMNS)
    return golden.reset_index(), prov, conf.sort_values(["master_id", "attribute", "department"])


def _comparable(rows: pd.DataFrame, attribute: str, lead: str) -> pd.Series:
    """The text two departments' values are compared by (an address: division and detail)."""
    if attribute == "address":
        return rows["division_code"].astype(str) + " " + rows["address_detail"].fillna("")
    return rows[lead].astype(str)


def _shown(rows: pd.DataFrame, attribute: str, lead: str) -> pd.Series:
    """The value as a report shows it (an address: the whole normalised address)."""
    if attribute == "address":
        return rows["address"].fillna(rows["address_detail"]).astype(str)
    return rows[lead].astype(str)


def _conflicts(
    has: pd.DataFrame,
    value: pd.Series,
    first: np.ndarray,
    master: np.ndarray,
    attribute: str,
    lead: str,
    auth: str,
) -> pd.DataFrame:
    """Member rows of other departments whose value differs from the authority's: ``has``
    the rows with a value (``value`` to compare, ``master`` their master's code), ``first``
    the position of each master's winning row among them."""
    dept = has["department"].to_numpy()
    won = first[dept[first] == auth]  # masters whose value came from the authority
    winner = np.full(int(master.max()) + 1 if len(master) else 0, -1, dtype=np.int64)
    winner[master[won]] = won
    mine = np.flatnonzero((dept != auth) & (winner[master] >= 0))
    values = value.to_numpy()
    differs = mine[values[mine] != values[winner[master[mine]]]]
    rows, theirs = has.iloc[differs], has.iloc[winner[master[differs]]]
    return pd.DataFrame(
        {
            "master_id": rows["master_id"].to_numpy(),
            "attribute": attribute,
            "department": rows["department"].to_numpy(),
            "source_table": rows["source_table"].to_numpy(),
            "source_key": rows["source_key"].to_numpy(),
            "value": _shown(rows, attribute, lead).to_numpy(),
            "authority_department": auth,
            "authority_value": _shown(theirs, attribute, lead).to_numpy(),
        },
        columns=CONFLICT_COLUMNS,
    )


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
