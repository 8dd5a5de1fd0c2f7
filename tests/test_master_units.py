"""Clustering constraints, stable master IDs and survivorship, on hand-built tables."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from sample_cities import CityFactory

from master_data.cluster import TIER_MODEL, TIER_REVIEW_LINK, TIER_RULE, cluster
from master_data.identity import assign_ids
from master_data.model import FellegiSunter
from master_data.published import evaluate_published
from master_data.review_queue import review_queue
from master_data.settings import EntityMatch
from master_data.survivorship import survive

# --- clustering ----------------------------------------------------------------------------------


def test_a_chain_of_links_never_joins_two_valid_ids() -> None:
    # A(ID x) - b - C(ID y): b joins whichever comes first; the other merge is refused
    out = cluster(
        3, [(0, 1, TIER_MODEL, 0.999), (1, 2, TIER_MODEL, 0.995)], hard_keys=["x", None, "y"]
    )
    assert out.labels.tolist() == [0, 0, 2]
    assert [(r.left, r.right, r.reason) for r in out.refused] == [(1, 2, "hard_key")]


def test_rules_merge_before_model_links_whatever_their_scores() -> None:
    edges = [(1, 2, TIER_MODEL, 0.9999), (0, 1, TIER_RULE, 0.5)]
    out = cluster(3, edges, hard_keys=[None, "x", "y"])
    assert out.labels.tolist() == [0, 0, 2]


def test_kept_apart_holds_against_any_chain_and_links_come_first() -> None:
    edges = [(0, 1, TIER_MODEL, 0.999), (1, 2, TIER_MODEL, 0.999), (2, 3, TIER_REVIEW_LINK, 1.0)]
    out = cluster(4, edges, hard_keys=[None] * 4, apart=[(0, 3)])
    assert out.labels[0] != out.labels[3]
    assert out.labels[2] == out.labels[3]
    assert {r.reason for r in out.refused} == {"kept_apart"}


def test_labels_do_not_depend_on_edge_order() -> None:
    edges = [(0, 4, TIER_MODEL, 0.99), (4, 2, TIER_MODEL, 0.98), (1, 3, TIER_RULE, 1.0)]
    a = cluster(5, edges, hard_keys=[None] * 5)
    b = cluster(5, list(reversed(edges)), hard_keys=[None] * 5)
    assert a.labels.tolist() == b.labels.tolist() == [0, 1, 0, 1, 0]


def _greedy_reference(
    n: int, edges: list[tuple[int, int, int, float]], hard: list[str | None], apart: set[frozenset]
) -> tuple[list[int], dict[tuple[int, int], tuple[int, float]], list[tuple[int, int, str]]]:
    """The merge as the model of clustering states it: edge by edge, every record's set."""
    members = {i: {i} for i in range(n)}
    where = list(range(n))
    merged, refused = {}, []
    for a, b, t, s in sorted(edges, key=lambda e: (e[2], -e[3], min(e[:2]), max(e[:2]))):
        ca, cb = where[a], where[b]
        if ca == cb:
            continue
        keys = {hard[i] for i in members[ca] | members[cb] if hard[i]}
        if len(keys) > 1:
            refused.append((a, b, "hard_key"))
            continue
        if any(frozenset((x, y)) in apart for x in members[ca] for y in members[cb]):
            refused.append((a, b, "kept_apart"))
            continue
        for i in members[cb]:
            where[i] = ca
        members[ca] |= members.pop(cb)
        merged[(min(a, b), max(a, b))] = (t, s)
    return [min(members[where[i]]) for i in range(n)], merged, refused


@pytest.mark.parametrize("seed", range(40))
def test_clustering_equals_the_edge_by_edge_merge(seed: int) -> None:
    # most components take their spanning tree at once, constrained ones merge edge by edge:
    # the result must be the plain greedy merge's, refusals and taken edges included
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    m = int(rng.integers(0, 3 * n))
    edges = [
        (int(a), int(b), int(t), float(s))
        for a, b, t, s in zip(
            rng.integers(0, n, m),
            rng.integers(0, n, m),
            rng.integers(0, 3, m),
            rng.choice([0.9, 0.95, 0.99, 1.0], m),
            strict=True,
        )
    ]
    hard = [str(rng.integers(0, 4)) if rng.random() < 0.15 else None for _ in range(n)]
    apart = {
        (int(a), int(b)) for a, b in rng.integers(0, n, (int(rng.integers(0, 3)), 2)) if a != b
    }
    out = cluster(n, edges, hard_keys=hard, apart=sorted(apart))
    labels, merged, refused = _greedy_reference(n, edges, hard, {frozenset(p) for p in apart})
    assert out.labels.tolist() == labels
    assert out.merged_by == merged
    assert [(r.left, r.right, r.reason) for r in out.refused] == refused


# --- stable IDs ----------------------------------------------------------------------------------


def _clusters(groups: dict[str, list[str]]) -> pd.DataFrame:
    rows = [(r, c) for c, members in groups.items() for r in members]
    return pd.DataFrame(rows, columns=["record_id", "cluster"])


def _previous(groups: dict[str, list[str]]) -> pd.DataFrame:
    rows = [(r, m) for m, members in groups.items() for r in members]
    return pd.DataFrame(rows, columns=["record_id", "master_id"])


def test_ids_survive_merges_splits_and_retirements() -> None:
    previous = _previous(
        {"P0000000001": ["a", "b"], "P0000000002": ["c"], "P0000000003": ["d", "e", "f"],
         "P0000000004": ["g"]}
    )  # fmt: skip
    tonight = _clusters({"m": ["a", "b", "c"], "s1": ["d", "e"], "s2": ["f"], "new": ["h"]})
    ids = assign_ids(tonight, previous, entity="person", next_seq=5)
    got = ids.assignment.set_index("record_id")["master_id"].to_dict()
    assert got == {
        "a": "P0000000001", "b": "P0000000001", "c": "P0000000001",
        "d": "P0000000003", "e": "P0000000003", "f": "P0000000005", "h": "P0000000006",
    }  # fmt: skip
    events = {(e.event, e.master_id, e.old_ids) for e in ids.events}
    assert events == {
        ("merged", "P0000000001", ("P0000000002",)),
        ("split", "P0000000003", ("P0000000003",)),
        ("retired", "P0000000004", ("P0000000004",)),
        ("issued", "P0000000006", ()),
    }
    assert ids.next_seq == 7


def test_the_same_clusters_keep_every_id() -> None:
    previous = _previous({"E0000000007": ["a"], "E0000000009": ["b", "c"]})
    ids = assign_ids(_clusters({"x": ["a"], "y": ["b", "c"]}), previous, entity="enterprise",
                     next_seq=10)  # fmt: skip
    assert ids.assignment["master_id"].tolist() == ["E0000000007", "E0000000009", "E0000000009"]
    assert ids.events == [] and ids.next_seq == 10


# --- survivorship --------------------------------------------------------------------------------


def _members() -> pd.DataFrame:
    rows = [
        # department, key, name, phone, updated
        ("weijian", "w1", "林海泽", "13900000001", dt.datetime(2026, 6, 1)),
        ("gongan", "g1", "林海澤", None, dt.datetime(2020, 1, 1)),
        ("renshe", "r1", "林海泽", "13900000002", dt.datetime(2021, 1, 1)),
        ("minzheng", "m1", "林海泽", "13900000003", dt.datetime(2026, 6, 2)),
    ]
    frame = pd.DataFrame(rows, columns=["department", "source_key", "name", "phone", "updated_at"])
    frame["source_table"] = "t"
    frame["master_id"] = "P0000000001"
    for c in ("name_pinyin", "id_number", "sex", "birth_date", "division_code", "address",
              "province", "city", "district", "address_detail", "ethnicity", "employer_uscc",
              "status", "former_name"):  # fmt: skip
        frame[c] = None
    return frame


def test_the_authority_wins_and_is_flagged_when_all_others_say_otherwise_more_recently() -> None:
    golden, prov, conflicts = survive(
        _members(), "person", {"name": "gongan", "phone": "renshe"}, ["gongan", "weijian"]
    )
    assert golden.loc[0, "name"] == "林海澤" and golden.loc[0, "phone"] == "13900000002"
    p = prov.set_index("attribute")
    assert (p.loc["name", "department"], p.loc["name", "rule"]) == ("gongan", "authority")
    assert p.loc["phone", "agreeing"] == 1 and p.loc["phone", "candidates"] == 3
    # every other department's differing value is a conflict with the authority; and the three
    # departments that write 林海泽, all after 公安's 2020 row, flag 公安's own copy
    got = set(zip(conflicts["attribute"], conflicts["department"], strict=True))
    assert got == {("name", "weijian"), ("name", "renshe"), ("name", "minzheng"),
                   ("name", "gongan"), ("phone", "weijian"), ("phone", "minzheng")}  # fmt: skip
    own = conflicts[conflicts["department"] == "gongan"].iloc[0]
    assert (own["source_key"], own["value"], own["authority_value"]) == ("g1", "林海泽", "林海澤")
    # the phones disagree among themselves: no flag for 人社


def test_without_an_authority_agreement_then_recency_then_rank() -> None:
    golden, prov, none = survive(_members(), "person", {}, ["weijian"])
    p = prov.set_index("attribute")
    assert golden.loc[0, "name"] == "林海泽"  # three departments of four agree
    assert p.loc["name", "rule"] == "agreement(3 of 4)"
    assert p.loc["name", "department"] == "minzheng"  # of the three, the most recent row
    assert golden.loc[0, "phone"] == "13900000003"  # three values, one each: recency, not rank
    assert p.loc["phone", "rule"] == "most_recent"
    assert len(none) == 0
    same_time = _members().assign(updated_at=dt.datetime(2026, 1, 1))
    golden, prov, _ = survive(same_time, "person", {}, ["renshe", "weijian"])
    assert golden.loc[0, "phone"] == "13900000002"
    assert prov.set_index("attribute").loc["phone", "rule"] == "rank"


def _phones(*rows: tuple[str, str, str | None, str, dt.datetime]) -> pd.DataFrame:
    """Members of one master: department, key, ID number, phone, change stamp."""
    frame = pd.concat([_members().iloc[:1]] * len(rows), ignore_index=True)
    for i, (dept, key, id_number, phone, when) in enumerate(rows):
        frame.loc[i, ["department", "source_key", "id_number", "phone", "updated_at"]] = [
            dept, key, id_number, phone, when]  # fmt: skip
    return frame


def test_a_phone_authority_speaks_with_its_newest_real_name_row_while_it_is_fresh() -> None:
    id_ = "350102198001010011"
    visits = _phones(
        ("weijian", "w_old", id_, "13900000001", dt.datetime(2024, 1, 5)),  # before the change
        ("renshe", "r1", id_, "13900000001", dt.datetime(2026, 5, 1)),  # stale, new stamp
        ("weijian", "w_new", id_, "13900000002", dt.datetime(2026, 3, 1)),  # SMS-verified visit
        ("weijian", "w_walkin", None, "13900000009", dt.datetime(2026, 6, 1)),  # a relative's
    )
    auth, rank = {"phone": "weijian"}, ["renshe", "weijian"]
    fresh = {"phone": pd.Timestamp("2023-07-01")}  # 1095 days before the night 2026-06-30
    golden, prov, conflicts = survive(visits, "person", auth, rank, fresh_since=fresh)
    p = prov.set_index("attribute").loc["phone"]
    # not the old visit that agrees with 人社, not the walk-in row without an ID number
    assert golden.loc[0, "phone"] == "13900000002"
    assert (p["department"], p["source_key"], p["rule"]) == ("weijian", "w_new", "authority")
    assert ("phone", "renshe", "r1") in set(
        zip(conflicts["attribute"], conflicts["department"], conflicts["source_key"], strict=True)
    )
    # the authority's only copy is older than the window: the other departments decide, and
    # provenance says why the authority did not
    stale = _phones(
        ("weijian", "w_old", id_, "13900000001", dt.datetime(2022, 2, 1)),
        ("renshe", "r1", id_, "13900000002", dt.datetime(2025, 9, 1)),
        ("minzheng", "m1", id_, "13900000002", dt.datetime(2024, 9, 1)),
    )
    golden, prov, conflicts = survive(stale, "person", auth, rank, fresh_since=fresh)
    p = prov.set_index("attribute").loc["phone"]
    assert golden.loc[0, "phone"] == "13900000002"
    assert (p["department"], p["rule"]) == ("renshe", "stale>agreement(2 of 3)")
    assert not (conflicts["attribute"] == "phone").any()  # no authority value to conflict with
    # without a window the stale copy stays the authority's (一数一源), flagged for it
    golden, prov, conflicts = survive(stale, "person", auth, rank)
    assert golden.loc[0, "phone"] == "13900000001"
    assert prov.set_index("attribute").loc["phone", "rule"] == "authority"
    own = conflicts[(conflicts["attribute"] == "phone") & (conflicts["department"] == "weijian")]
    assert own["value"].tolist() == ["13900000002"]


def test_an_abbreviated_address_never_beats_a_full_one_without_an_authority() -> None:
    rows = _members().iloc[[0, 2, 3]].reset_index(drop=True)  # weijian, renshe, minzheng
    rows["division_code"] = "350102"
    full = "湖东路277号融侨锦江28座1606室"
    rows["address_detail"] = [full, None, "28-1606"]
    rows["updated_at"] = [dt.datetime(2024, 1, 1), dt.datetime(2025, 1, 1), dt.datetime(2026, 6, 1)]
    rows["address"] = "福建省福州市鼓楼区" + rows["address_detail"].fillna("")
    golden, prov, _ = survive(rows, "person", {"address": "gongan"}, ["minzheng", "weijian"])
    assert golden.loc[0, "address_detail"] == full
    assert prov.set_index("attribute").loc["address", "rule"] == "completeness"
    # with two departments on the full address, completeness still decides first
    rows.loc[1, "address_detail"] = full
    golden, prov, _ = survive(rows, "person", {}, [])
    assert prov.set_index("attribute").loc["address", "rule"] == "completeness"
    rows.loc[2, "address_detail"] = "湖东路277号融侨锦江28座1606"  # as complete, the newest
    golden, prov, _ = survive(rows, "person", {}, [])
    assert golden.loc[0, "address_detail"] == full
    assert prov.set_index("attribute").loc["address", "rule"] == "agreement(2 of 3)"


# --- review queue ---------------------------------------------------------------------------------


def test_queued_weights_are_what_explain_says_of_each_pair() -> None:
    # missing levels, a term-frequency u_v (and a pair without one), a correlated group at top
    model = FellegiSunter(
        m={"name": [0.1, 0.2, 0.7], "phone": [0.2, 0.8], "address": [0.3, 0.7]},
        u={"name": [0.8, 0.15, 0.05], "phone": [0.9, 0.1], "address": [0.6, 0.4]},
        prior=0.01,
        tf={"name": {"张伟": 0.02}},
        correlated=[["phone", "address"]],
    )
    levels = {"name": [2, 2, 1, -1], "phone": [1, 0, 1, -1], "address": [1, 1, -1, 0]}
    u_v = [0.02, np.nan, np.nan, np.nan]
    edges = pd.DataFrame(
        {
            "left": ["a", "c", "e", "g"],
            "right": ["b", "d", "f", "h"],
            **levels,
            "name_tf": u_v,
            "rule": None,
            "probability": [0.6, 0.7, 0.8, 0.9],
        }
    )
    master_of = pd.Series([f"M{i}" for i in range(8)], index=list("abcdefgh"))
    match = EntityMatch.model_validate({"blocking": [{"name": "name", "keys": ["name"]}]})
    decided = pd.DataFrame({"left_record": [], "right_record": []})
    queue = review_queue(
        edges, pd.Series(dtype=object), master_of, decided, model, match, "person", "2026-07-01"
    )
    want = [
        {
            f: {"level": level, "weight": round(w, 3)}
            for f, level, _, w in model.explain(
                {f: v[i] for f, v in levels.items()},
                tf_u={"name": u_v[i]} if not np.isnan(u_v[i]) else {},
            )
        }
        for i in range(4)
    ]
    assert [json.loads(w) for w in queue["weights"]] == want
    assert json.loads(queue["weights"][0])["address"]["weight"] == 0.0  # phone is the stronger


def _many_masters(masters: int, wide: int = 0) -> pd.DataFrame:
    """Four members per master, each department with its own phone; ``wide`` columns more
    that survivorship never reads (a canonical row carries raw values, quality flags, …)."""
    frame = pd.concat([_members()] * masters, ignore_index=True)
    frame["master_id"] = [f"P{i // 4:010d}" for i in range(len(frame))]
    frame["source_key"] = frame["source_key"] + frame.index.astype(str)
    for i in range(wide):
        frame[f"raw_{i}"] = frame["source_key"] + f"-{i}"
    return frame


def test_survivorship_copies_only_the_columns_it_reads() -> None:
    """A night of a million persons peaked in survivorship, which copied every member column
    once per attribute: columns it never reads must not add to what it holds."""
    import tracemalloc

    def peak(members: pd.DataFrame) -> int:
        tracemalloc.start()
        try:
            survive(members, "person", {"name": "gongan"}, ["gongan", "weijian"])
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    narrow, wide = _many_masters(2_000), _many_masters(2_000, wide=60)
    # 60 object columns of 8,000 rows are 3.8 MB a copy: less than one copy more at the peak
    assert peak(wide) - peak(narrow) < 3_000_000


def test_agreement_labels_are_shared_by_the_rows_that_have_them() -> None:
    """Ten million provenance rows hold a few dozen distinct labels: one string each, not one
    per row."""
    _, prov, _ = survive(_many_masters(500), "person", {}, ["weijian"])
    labels = prov.loc[prov["rule"].str.startswith("agreement("), "rule"]
    assert len(labels) >= 500 and len({id(x) for x in labels}) == labels.nunique()


# --- the whole linkage on a 10,000-person city ------------------------------------------------


@pytest.mark.slow
def test_linkage_quality_on_a_10k_sample(
    make_city: CityFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the shared build: the test only reads what night n0 published
    city = make_city(
        monkeypatch, persons=10_000, enterprises=1_000, seed=11, until="published", run_id="n0"
    )
    ev = evaluate_published(city, city.var_dir / "city")
    for entity in ("person", "enterprise"):
        pairwise = ev.entities[entity].pairwise
        assert pairwise.precision >= 0.995, (entity, pairwise)
        assert pairwise.f1 >= 0.98, (entity, pairwise)
