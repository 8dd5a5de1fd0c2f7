"""Survivorship (一数一源) and cross-checks (多元校核).

For each attribute of a master entity, the value comes from one member row chosen in this order:

1. the department configured as the attribute's **authority** (``authority``), if it holds a value;
   for a value that changes (``CHANGING``), its real-name rows (with an ID number) first, then its
   newest row; a copy older than the attribute's freshness window (``fresh_since``, from
   ``authority_fresh_days`` in ``matching.yaml``) is no longer authoritative, and provenance
   says so (``stale>`` before the rule that chose instead);
2. otherwise, for an address, the most **complete** parsed address (district, street, house
   number): ``28-6-1606`` with the street dropped never beats a full address of another
   department;
3. the value held by the most departments (**agreement**, ``agreement(3 of 4)``: 3 of the 4
   departments that hold a value agree); for a value that changes (a phone, an address: see
   ``CHANGING``), each department by its newest row;
4. the most recent ``updated_at`` (**most_recent**);
5. the configured **rank** of departments; then department and source key, so the choice is
   deterministic (``tiebreak``).

Provenance keeps the rule that decided: the first of these on which the winning value beat the
best other value (``agreement(k of n)`` also when every department agrees). Only usable values take
part: a field the standardizer refused is NULL in the canonical row and never survives. Attributes
that belong together (the parts of an address; a name and its pinyin) come from the same row.

Where a member row's value differs from a golden value that came from the authority, a conflict
row is written for the member's department: that department's copy disagrees with the
authoritative source. Where every other department's rows (at least two) agree on one other value
and the newest of them is newer than the authority's row, the authority's value is still kept, and
a conflict row is written for the **authority** itself (``department == authority_department``,
``value``: what the others hold, ``authority_value``: the kept value): its copy may be stale.

>>> golden, provenance, conflicts = survive(members, "person", authority, rank)
>>> survive(members, "person", authority, rank, fresh_since={"phone": pd.Timestamp("2023-07-01")})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fields import dictionary
from store.tables import conflict_table, provenance_table

ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {
    entity: dictionary.attributes(entity) for entity in dictionary.ENTITIES
}
"""Attribute → the golden columns that survive together (the first one decides "has a value"),
from :mod:`fields.dictionary`."""

STALE = "stale>"
"""Provenance rule prefix: the authority holds the attribute, but its every copy is older than
the attribute's freshness window (``authority_fresh_days`` in ``matching.yaml``), so the rule
after ``>`` chose among the other rows (``stale>most_recent``)."""

CHANGING = frozenset(
    {"phone", "address", "status", "employer_uscc", "legal_rep_name", "legal_rep_id",
     "registered_capital"}
)  # fmt: skip
"""Attributes whose true value changes over a life (a department's newest row speaks for it);
the others change only by correction (every row of a department counts)."""

# The rows of mdm_provenance and mdm_conflict, less what the publish adds (entity, night).
PROVENANCE_COLUMNS = [c.name for c in provenance_table.columns if c.name != "entity"]
CONFLICT_COLUMNS = [c.name for c in conflict_table.columns if c.name not in ("run_id", "entity")]


def survive(
    members: pd.DataFrame,
    entity: str,
    authority: Mapping[str, str],
    rank: Sequence[str],
    *,
    fresh_since: Mapping[str, pd.Timestamp] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Golden records, per-attribute provenance and conflicts with the authority.

    ``members``: canonical rows with ``master_id`` (columns of the entity's canonical schema).
    ``authority``: attribute → department code. ``rank``: departments, most trusted first; a
    department not listed ranks after all listed ones.
    """
    order = {d: i for i, d in enumerate(rank)}
    # Every sort key as integer codes once (factorize(sort=True) keeps the values' order): one
    # lexsort per attribute instead of sorting object columns, on the rows that have a value.
    master_code, masters = pd.factorize(members["master_id"], sort=True)
    codes = _Codes(
        dept=pd.factorize(members["department"], sort=True)[0],
        key=pd.factorize(members["source_key"], sort=True)[0],
        newer=-pd.factorize(members["updated_at"].fillna(pd.Timestamp.min), sort=True)[0],
        rank=members["department"].map(order).fillna(len(order)).astype(int).to_numpy(),
    )
    golden = pd.DataFrame(index=pd.Index(masters, name="master_id"))
    provenance: list[pd.DataFrame] = []
    conflicts: list[pd.DataFrame] = []
    for attribute, columns in ATTRIBUTES[entity].items():
        at = np.flatnonzero(members[columns[0]].notna().to_numpy())
        if not len(at):
            for c in columns:
                golden[c] = None
            continue
        # only the columns choosing reads (a copy of every member column, per attribute,
        # was the largest thing a night of a million persons held)
        has = members.iloc[at, members.columns.get_indexer(_needed(members, attribute, columns))]
        has.index = pd.RangeIndex(len(at))  # positions (no copy, unlike reset_index)
        chosen = _choose(has, master_code[at], codes.take(at), attribute, columns[0],
                         authority.get(attribute), (fresh_since or {}).get(attribute))  # fmt: skip
        for c in columns:
            golden[c] = chosen.winners[c].reindex(golden.index)
        provenance.append(chosen.provenance(attribute))
        if chosen.auth:
            conflicts.append(_conflicts(chosen, attribute, columns[0]))
            conflicts.append(_authority_contradicted(chosen, attribute, columns[0]))
    prov = pd.concat(provenance, ignore_index=True) if provenance else _empty(PROVENANCE_COLUMNS)
    conf = pd.concat(conflicts, ignore_index=True) if conflicts else _empty(CONFLICT_COLUMNS)
    return golden.reset_index(), prov, conf.sort_values(["master_id", "attribute", "department"])


_ROW = ("master_id", "department", "source_table", "source_key", "updated_at")
"""The member columns every attribute's choice and its provenance and conflict rows read."""
_ADDRESS = ("division_code", "address_detail", "address")
"""The columns an address is compared, ranked for completeness and shown by."""


def _needed(members: pd.DataFrame, attribute: str, columns: tuple[str, ...]) -> list[str]:
    """The member columns :func:`_choose` and the conflict rows read for ``attribute``: its
    golden ``columns``, the row's identity, the ID number (a changing value's real-name rows)
    and, for an address, what it is compared and shown by."""
    extra: tuple[str, ...] = ("id_number",) if attribute in CHANGING else ()
    extra += _ADDRESS if attribute == "address" else ()
    wanted = dict.fromkeys((*columns, *_ROW, *extra))
    return [c for c in wanted if c in members.columns]


@dataclass(frozen=True)
class _Codes:
    """Per-row integer sort keys: department, source key, recency (lower is newer), rank."""

    dept: np.ndarray
    key: np.ndarray
    newer: np.ndarray
    rank: np.ndarray

    def take(self, at: np.ndarray) -> _Codes:
        return _Codes(self.dept[at], self.key[at], self.newer[at], self.rank[at])


@dataclass(frozen=True)
class _Chosen:
    """One attribute's rows with a value (``has``), their comparable ``value`` and the winning
    row of each master (``winners``, indexed by master ID, with ``rule``, ``candidates`` and
    ``agreeing``)."""

    has: pd.DataFrame
    value: pd.Series
    winners: pd.DataFrame
    auth: str | None
    m: np.ndarray  # per row of ``has``: master code, (master, value) code, department code,
    pair: np.ndarray  # recency (lower is newer), whether it is the authority's row; ``first``:
    dept: np.ndarray  # each master's winning row
    newer: np.ndarray
    is_auth: np.ndarray
    first: np.ndarray

    def provenance(self, attribute: str) -> pd.DataFrame:
        w = self.winners
        return pd.DataFrame(
            {
                "master_id": w.index,
                "attribute": attribute,
                "department": w["department"].to_numpy(),
                "source_table": w["source_table"].to_numpy(),
                "source_key": w["source_key"].to_numpy(),
                "source_updated_at": w["updated_at"].to_numpy(),
                "candidates": w["_candidates"].to_numpy(),
                "agreeing": w["_agreeing"].to_numpy(),
                "rule": w["_rule"].to_numpy(),
            }
        )


def _choose(
    has: pd.DataFrame,
    m: np.ndarray,
    codes: _Codes,
    attribute: str,
    lead: str,
    auth: str | None,
    fresh: pd.Timestamp | None = None,
) -> _Chosen:
    """The winning row of each master for one attribute, and the rule that chose it."""
    value = _comparable(has, attribute, lead)
    pair = pd.factorize(pd.Series(m) * (len(value) + 1) + pd.factorize(value)[0])[0]
    agree = np.bincount(pair)[pair]  # rows holding the same value in the master
    agree_depts, held_by = _department_votes(m, pair, codes, attribute in CHANGING)
    auth_rows = has["department"] == auth if auth else pd.Series(False, index=has.index)
    if fresh is not None:  # an authority's copy not updated since is no longer authoritative
        auth_rows &= has["updated_at"].fillna(pd.Timestamp.min) >= fresh
    not_auth = (~auth_rows).to_numpy().astype(int)
    complete = _completeness(has, attribute)
    keys = (-complete, -agree_depts, codes.newer, codes.rank)
    # lexsort: the last key sorts first, so master, authority, then ``keys`` in order, then the
    # department and source key
    # a changing value (a phone): the authority speaks with its newest row, as each department
    # votes with its newest row (an old row agreeing with another department does not win)
    # a changing value (a phone): the authority speaks with its real-name rows (with an ID
    # number: a walk-in registered without one may give a relative's number), then its newest
    # row, as each department votes with its newest row
    none = np.zeros(len(has), int)
    auth_newer, unnamed = none, none
    if attribute in CHANGING:
        auth_newer = np.where(not_auth == 0, codes.newer, 0)
        if "id_number" in has:
            unnamed = ((not_auth == 0) & has["id_number"].isna().to_numpy()).astype(int)
    sort = np.lexsort((codes.key, codes.dept, *keys[::-1], auth_newer, unnamed, not_auth, m))
    head = np.concatenate(([True], m[sort][1:] != m[sort][:-1]))
    first = sort[head]
    rule = _rules(sort, head, m, pair, keys, not_auth)[first]
    by_agreement = rule == "agreement"
    rule[by_agreement] = _agreement_label(agree_depts[first], held_by[first])[by_agreement]
    if fresh is not None and auth:  # the authority held it, but only in stale copies
        held = (has["department"] == auth).to_numpy()
        stale = np.bincount(m, weights=held, minlength=int(m.max()) + 1)
        aged = (stale[m[first]] > 0) & (not_auth[first] == 1)
        rule[aged] = STALE + rule[aged]
    winners = has.iloc[first].assign(
        _rule=rule, _candidates=np.bincount(m)[m][first], _agreeing=agree[first]
    )
    return _Chosen(
        has, value, winners.set_index("master_id"), auth,
        m, pair, codes.dept, codes.newer, not_auth == 0, first,
    )  # fmt: skip


def _rules(
    sort: np.ndarray,
    head: np.ndarray,
    m: np.ndarray,
    pair: np.ndarray,
    keys: tuple[np.ndarray, ...],
    not_auth: np.ndarray,
) -> np.ndarray:
    """Per row (set at each master's winner): the first criterion of ``keys`` on which the
    winner beat the runner-up, the best row of the master that holds another value."""
    names = np.array(["completeness", "agreement", "most_recent", "rank", "tiebreak"], object)
    ms = m[sort]
    winner_of = sort[np.flatnonzero(head)][np.cumsum(head) - 1]  # each sorted row's winner
    sorted_rows = pd.DataFrame({"m": ms, "row": sort})[pair[sort] != pair[winner_of]]
    runner = sorted_rows.groupby("m")["row"].first()
    w = sort[head]
    rule = np.full(len(m), "agreement", object)
    r = runner.reindex(m[w]).to_numpy()
    contested = ~np.isnan(r)
    ri = np.where(contested, r, 0).astype(int)
    decided = np.full(len(w), len(names) - 1)
    for i in reversed(range(len(keys))):  # the earliest key that differs decides
        decided[contested & (keys[i][w] != keys[i][ri])] = i
    labels = np.where(contested, names[decided], "agreement").astype(object)
    labels[not_auth[w] == 0] = "authority"
    rule[w] = labels
    return rule


def _department_votes(
    m: np.ndarray, pair: np.ndarray, codes: _Codes, changing: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how many departments of its master hold its value, and how many hold one. For
    a value that ``changing`` (a phone, an address), a department votes with its newest row only:
    three old hospital visits with the number a person had then do not outvote last month's
    visit. For one that does not (a name, a birth date), any of its rows counts: one newer row
    with a typo does not take a department away from the value its other rows hold."""
    rows = pd.DataFrame({"m": m, "d": codes.dept, "newer": codes.newer, "p": pair})
    if changing:
        voting = rows.sort_values(["m", "d", "newer"], kind="stable").drop_duplicates(["m", "d"])
    else:
        voting = rows.drop_duplicates(["p", "d"])
    votes = np.bincount(voting["p"], minlength=pair.max() + 1)[pair]
    voters = np.bincount(rows.drop_duplicates(["m", "d"])["m"], minlength=m.max() + 1)[m]
    return votes, voters


def _agreement_label(agree_depts: np.ndarray, held_by: np.ndarray) -> np.ndarray:
    """``agreement(k of n)``: k of the n departments that hold a value hold this one. One
    string per distinct (k, n), shared by the rows that have it: a night of a million persons
    keeps ten million provenance rows and a few dozen distinct labels."""
    n = int(held_by.max()) + 1 if len(held_by) else 1
    kinds, which = np.unique(agree_depts.astype(np.int64) * n + held_by, return_inverse=True)
    labels = np.array([f"agreement({k // n} of {k % n})" for k in kinds.tolist()], dtype=object)
    return labels[which.reshape(-1)]


_STREET = r"[\u4e00-\u9fff]+(?:大道|路|街|巷|道|弄|里|村|镇|乡)"
_HOUSE = r"\d+(?:-\d+)?号"


def _completeness(rows: pd.DataFrame, attribute: str) -> np.ndarray:
    """How complete a parsed address is (district, street, house number: 0–3); 0 for anything
    else, where all rows are equally complete."""
    if attribute != "address":
        return np.zeros(len(rows), int)
    detail = rows["address_detail"].fillna("").astype(str)
    return (
        rows["division_code"].notna().to_numpy().astype(int)
        + detail.str.contains(_STREET, regex=True).to_numpy().astype(int)
        + detail.str.contains(_HOUSE, regex=True).to_numpy().astype(int)
    )


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


def _conflicts(chosen: _Chosen, attribute: str, lead: str) -> pd.DataFrame:
    """Member rows of other departments whose value differs from the authority's."""
    has, value, auth = chosen.has, chosen.value, chosen.auth
    assert auth is not None
    from_authority = chosen.winners[chosen.winners["department"] == auth]
    key = _comparable(from_authority, attribute, lead)
    shown = _shown(from_authority, attribute, lead)
    mine = has[(has["department"] != auth) & has["master_id"].isin(key.index)]
    differs = (value.loc[mine.index] != mine["master_id"].map(key)).to_numpy()
    rows = mine[differs]
    authority_values = rows["master_id"].map(shown)
    return _conflict_rows(rows, attribute, _shown(rows, attribute, lead), auth, authority_values)


def _authority_contradicted(chosen: _Chosen, attribute: str, lead: str) -> pd.DataFrame:
    """The authority's winning rows that every other department contradicts with one value (the
    newest row of each department; two rows at least), the newest of them newer than the
    authority's row. On integer codes: this runs for every master of the night."""
    auth, c = chosen.auth, chosen
    assert auth is not None
    n = int(c.m.max()) + 1
    kept = np.full(n, -1)  # per master: the authority's kept (master, value) code and recency
    kept_newer = np.zeros(n, dtype=c.newer.dtype)
    won = c.first[c.is_auth[c.first]]
    kept[c.m[won]], kept_newer[c.m[won]] = c.pair[won], c.newer[won]
    others = np.flatnonzero(~c.is_auth & (kept[c.m] >= 0))
    order = others[np.lexsort((c.newer[others], c.dept[others], c.m[others]))]
    mo, do = c.m[order], c.dept[order]
    newest = order[np.concatenate(([True], (mo[1:] != mo[:-1]) | (do[1:] != do[:-1])))[: len(mo)]]
    values = np.bincount(c.m[_first_of(c.pair, newest)], minlength=n)  # distinct, per master
    top = newest[np.lexsort((c.newer[newest], c.m[newest]))]
    top = top[np.concatenate(([True], c.m[top][1:] != c.m[top][:-1]))[: len(top)]]
    backing = np.bincount(c.pair[others], minlength=int(c.pair.max()) + 1)
    mt = c.m[top]
    hit = top[
        (values[mt] == 1)
        & (backing[c.pair[top]] >= 2)
        & (c.pair[top] != kept[mt])
        & (c.newer[top] < kept_newer[mt])
    ]
    newer_rows = c.has.iloc[hit]
    rows = c.winners.loc[newer_rows["master_id"].to_numpy()].reset_index()
    return _conflict_rows(
        rows,
        attribute,
        _shown(newer_rows, attribute, lead).reset_index(drop=True),
        auth,
        _shown(rows, attribute, lead),
    )


def _first_of(pair: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One row of ``rows`` per distinct (master, value) code among them."""
    return rows[np.unique(pair[rows], return_index=True)[1]]


def _conflict_rows(
    rows: pd.DataFrame, attribute: str, values: pd.Series, auth: str, authority_values: pd.Series
) -> pd.DataFrame:
    """Conflict rows: ``rows`` are the member rows reported (with ``master_id``)."""
    return pd.DataFrame(
        {
            "master_id": rows["master_id"].to_numpy(),
            "attribute": attribute,
            "department": rows["department"].to_numpy(),
            "source_table": rows["source_table"].to_numpy(),
            "source_key": rows["source_key"].to_numpy(),
            "value": values.to_numpy(),
            "authority_department": auth,
            "authority_value": authority_values.to_numpy(),
        },
        columns=CONFLICT_COLUMNS,
    )


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
