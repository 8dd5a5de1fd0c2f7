"""Consolidation end to end on a small sample city: golden tables, stable IDs, delta = full,
idempotent and atomic publish, review decisions, twins and namesakes, explain."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa
from sample_cities import CityFactory

import master_data.link as link_module
import master_data.night_state as night_state
import store.warehouse as wh
from access.review import ReviewError, decide
from etl.config import CityConfig
from etl.extract import extract_all
from etl.sample_city.generate import next_night
from etl.standardize import standardize_all
from etl.state import RunState, warehouse_url
from master_data.consolidate import consolidate
from master_data.evaluate import load_truth
from master_data.explain import explain
from master_data.link import link
from master_data.model import FellegiSunter
from master_data.night_state import SORT, ConsolidateError, layer_file, prune_states, read_state
from master_data.publish import publish
from master_data.published import evaluate_published
from master_data.records import META, record_id
from store.layout import master_dir

ROOT = Path(__file__).resolve().parents[1]
NIGHT0, NIGHT1 = "2026-06-30", "2026-07-01"


def _night(city: CityConfig, run_id: str) -> None:
    assert all(r.ok for r in extract_all(city, run_id))
    standardize_all(city, run_id)


@pytest.fixture(scope="module")
def city(make_city: CityFactory) -> Iterator[CityConfig]:
    """A 900-person city, night 0 linked and published (embedded SQLite warehouse); a copy
    (the tests run the next nights on it)."""
    with pytest.MonkeyPatch.context() as mp:
        yield make_city(mp, persons=900, enterprises=90, seed=7, until="published", copy=True)


def _tables(city: CityConfig) -> dict[str, pd.DataFrame]:
    engine = wh.engine_for(warehouse_url(city))
    try:
        out = {}
        for t in (*wh.CURRENT_TABLES, *wh.NIGHTLY_TABLES):
            frame = wh.read(engine, t)
            out[t.name] = frame.sort_values(list(frame.columns)[:4]).reset_index(drop=True)
        return out
    finally:
        engine.dispose()


def _crosswalk(city: CityConfig, run_id: str, entity: str) -> pd.Series:
    state = master_dir(city.var_dir, run_id) / entity
    return (
        read_state(state, "crosswalk").to_pandas().set_index("record_id")["master_id"].sort_index()
    )


def test_every_accepted_row_is_in_the_crosswalk_once(city: CityConfig) -> None:
    tables = _tables(city)
    canonical = sum(
        len(pd.read_parquet(p))
        for p in (city.var_dir / "canonical" / f"run={NIGHT0}").glob("*/*.parquet")
        if p.stem in ("person", "enterprise")
    )
    xw = tables["mdm_crosswalk"]
    assert len(xw) == canonical
    assert not xw.duplicated(["department", "source_table", "source_key"]).any()
    for entity, table in (("person", "mdm_person"), ("enterprise", "mdm_enterprise")):
        masters = set(xw.loc[xw["entity"] == entity, "master_id"])
        assert masters == set(tables[table]["master_id"])
        assert tables[table]["member_count"].sum() == (xw["entity"] == entity).sum()


def test_linkage_is_precise_on_the_sample(city: CityConfig) -> None:
    ev = evaluate_published(city, city.var_dir / "city")
    person, firm = ev.entities["person"], ev.entities["enterprise"]
    assert person.pairwise.precision >= 0.995 and person.pairwise.f1 >= 0.98
    assert firm.pairwise.precision >= 0.995 and firm.pairwise.f1 >= 0.98
    assert person.counts.missing == 0  # no truth row lost between the sources and the master
    assert firm.golden is not None and firm.golden.attributes["uscc"].accuracy == 1.0


def test_twins_and_namesakes_stay_apart(city: CityConfig) -> None:
    truth = load_truth(city.var_dir / "city")
    rows = truth.rows
    xw = _tables(city)["mdm_crosswalk"].merge(
        rows.rename(columns={"table": "source_table"}),
        on=["department", "source_table", "source_key"],
    )
    master_of_entity = xw.groupby("entity_id")["master_id"].agg(lambda s: s.mode()[0])
    persons = truth.persons.set_index("person_id")
    twins = persons["twin_of"].dropna()
    twins = twins[twins.index.isin(master_of_entity.index) & twins.isin(master_of_entity.index)]
    assert len(twins) > 0
    for a, b in twins.items():
        assert master_of_entity[a] != master_of_entity[b], (a, b)
    # namesakes carry the most common names: everyone sharing such a name is someone else
    checked = 0
    for pid in persons.index[persons["namesake_group"].notna()]:
        same = persons.index[persons["name"] == persons.at[pid, "name"]]
        present = [m for m in same if m in master_of_entity.index]
        assert len({master_of_entity[m] for m in present}) == len(present), present
        checked += len(present) > 1
    assert checked > 0


def test_provenance_names_the_authority_and_conflicts_go_to_the_other_department(
    city: CityConfig,
) -> None:
    tables = _tables(city)
    prov = tables["mdm_provenance"]
    ids = prov[(prov["entity"] == "person") & (prov["attribute"] == "id_number")]
    fallback = {"authority", "completeness", "most_recent", "rank", "tiebreak"}
    assert set(ids["rule"].str.replace(r"^agreement\(\d+ of \d+\)$", "agreement", regex=True)) <= {
        *fallback,
        "agreement",
    }
    assert (ids.loc[ids["rule"] == "authority", "department"] == "gongan").all()
    conflicts = tables["mdm_conflict"]
    assert len(conflicts) > 0
    # a department's copy that differs from the authority, or the authority's own copy that every
    # other department contradicts more recently: the authority value is the golden value
    assert (conflicts["value"] != conflicts["authority_value"]).all()
    own = conflicts[conflicts["department"] == conflicts["authority_department"]]
    golden = tables["mdm_person"].set_index("master_id")
    phones = own[(own["entity"] == "person") & (own["attribute"] == "phone")]
    assert len(phones) > 0
    assert (phones["authority_value"] == phones["master_id"].map(golden["phone"])).all()


def test_golden_values_are_true_wherever_a_source_holds_them(city: CityConfig) -> None:
    """Scored against the city's truth: where some member row holds the true value, the golden
    value is it (name, ID, sex, birth date, address, phone). A phone comes from its authority
    (卫健, whose real-name visits verify it) while the authority's newest real-name copy is
    fresh; a copy older than authority_fresh_days is not the authority's word any more, and
    agreement and recency choose (provenance: ``stale>…``)."""
    person = evaluate_published(city, city.var_dir / "city").entities["person"]
    ev = person.golden
    assert ev is not None
    for attr in ("name", "id_number", "sex", "birth_date", "division_code", "address_detail"):
        a = ev.attributes[attr]
        assert a.held and a.held_accuracy is not None and a.held_accuracy >= 0.995, (attr, a)
    phone = ev.attributes["phone"]
    assert phone.held and phone.held_accuracy is not None and phone.held_accuracy >= 0.995
    tables = _tables(city)
    prov = tables["mdm_provenance"]
    phones = prov[(prov["entity"] == "person") & (prov["attribute"] == "phone")]
    assert set(phones.loc[phones["rule"] == "authority", "department"]) == {"weijian"}
    stale = phones[phones["rule"].str.startswith("stale>")]
    after = set(stale["rule"].str.removeprefix("stale>").str.replace(r"\(.*", "", regex=True))
    assert len(stale) > 0 and after <= {"agreement", "most_recent", "rank", "tiebreak"}
    rules = prov.loc[prov["entity"] == "person", "rule"].str.replace(r"\(.*", "", regex=True)
    assert {"agreement", "most_recent", "completeness"} <= set(rules)
    # the calibration bands cover every scored pair the night kept; the review band is 0.5–0.99
    edges = read_state(master_dir(city.var_dir, NIGHT0) / "person", "edges")
    assert sum(b.pairs for b in person.calibration) == edges.num_rows
    assert person.review_band is not None
    assert (person.review_band.low, person.review_band.high) == (0.5, 0.99)


_LAYERED_ORDER = {"records": ["record_id"], "blockkeys": ["pass", "key", "record_id"]}


def _sorted(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """A state table in a fixed order (a delta night appends its rows, a full night sorts)."""
    order = SORT.get(name) or _LAYERED_ORDER[name]
    return frame.sort_values(order, kind="mergesort").reset_index(drop=True)


def test_delta_night_equals_full_rebuild_and_keeps_ids(
    city: CityConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {e: _crosswalk(city, NIGHT0, e) for e in ("person", "enterprise")}
    next_night(city.var_dir / "city")
    _night(city, NIGHT1)
    written: list[str] = []
    to_json = FellegiSunter.to_json
    monkeypatch.setattr(FellegiSunter, "to_json", lambda m: written.append("model") or to_json(m))
    delta = link(city, NIGHT1)
    monkeypatch.undo()
    assert delta.mode == "delta" and delta.entities["person"].changed > 0
    # a model not fitted tonight is the base night's file, carried over, not written again
    assert not delta.entities["person"].model_trained
    fitted = [e for e in ("person", "enterprise") if delta.entities[e].model_trained]
    assert len(written) == len(fitted)
    for e in {"person", "enterprise"} - set(fitted):
        model_file = master_dir(city.var_dir, NIGHT1) / e / "model.json"
        assert (
            model_file.read_bytes()
            == (model_file.parents[2] / f"run={NIGHT0}" / e / "model.json").read_bytes()
        )
    relinked = delta.entities["person"].records_relinked
    assert 0 < relinked < delta.entities["person"].records / 5
    delta_ids = {e: _crosswalk(city, NIGHT1, e) for e in ("person", "enterprise")}
    state = master_dir(city.var_dir, NIGHT1)
    delta_files = {
        (e, f): _sorted(read_state(state / e, f).to_pandas(), f)
        for e in ("person", "enterprise")
        for f in (
            *("edges", "components", "crosswalk", "golden", "provenance", "conflicts", "review"),
            *_LAYERED_ORDER,  # a delta night's records and block keys are layers on night 0's
        )
    }
    for f in ("records", "blockkeys", "edges", "components", "crosswalk", "provenance"):
        assert layer_file(state / "person", f, "added").is_file(), f
    published = publish(city, NIGHT1)
    assert published["published"] == "incremental"  # the warehouse held the delta's base night
    incremental = _tables(city)

    # layers past their share get a new base: the same tables, written whole
    monkeypatch.setattr(night_state, "COMPACT_SHARE", 0.0)
    link(city, NIGHT1)
    monkeypatch.undo()
    for f in ("records", "blockkeys", "edges", "components", "crosswalk", "provenance"):
        assert not layer_file(state / "person", f, "added").exists(), f
    for (e, f), frame in delta_files.items():
        pd.testing.assert_frame_equal(
            frame, _sorted(read_state(state / e, f).to_pandas(), f), obj=f"{e} {f} whole"
        )

    # a full night compares the pandas frame of every record: the Arrow table of them is let
    # go first (on a million persons, a gigabyte held through comparing and training)
    held = {"records": 0, "comparing": 0}

    def candidates(*args: Any) -> Any:
        held["records"] = max(held["records"], args[2].nbytes)
        return blocking(*args)

    def compare(*args: Any) -> Any:
        held["comparing"] = max(held["comparing"], pa.total_allocated_bytes())
        return comparing(*args)

    blocking, comparing = link_module._candidates, link_module.cmp.compare
    monkeypatch.setattr(link_module, "_candidates", candidates)
    monkeypatch.setattr(link_module.cmp, "compare", compare)
    full = link(city, NIGHT1, full=True)
    monkeypatch.undo()
    assert full.mode == "full"
    assert 0 < held["comparing"] < held["records"] / 2
    for e in ("person", "enterprise"):
        assert delta_ids[e].equals(_crosswalk(city, NIGHT1, e)), e
        kept = before[e].index.intersection(delta_ids[e].index)
        # rows that were there last night keep their master ID unless linking moved them
        assert (before[e][kept] == delta_ids[e][kept]).mean() > 0.99
    for (e, f), frame in delta_files.items():
        pd.testing.assert_frame_equal(
            frame, _sorted(read_state(state / e, f).to_pandas(), f), obj=f"{e} {f}"
        )
    assert delta.entities["person"].pairs_compared < full.entities["person"].pairs_compared / 10

    assert publish(city, NIGHT1)["published"] == "whole"
    first = _tables(city)
    for name, frame in first.items():  # the incremental publish left what a whole one writes
        pd.testing.assert_frame_equal(frame, incremental[name], obj=name)
    consolidate(city, NIGHT1)  # the same night again changes nothing
    again = _tables(city)
    for name, frame in first.items():
        pd.testing.assert_frame_equal(frame, again[name], obj=name)


def test_a_crash_during_publish_leaves_the_last_night(
    city: CityConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _tables(city)
    real = wh._insert
    calls = {"n": 0}

    def failing(conn: sa.Connection, table: sa.Table, frame: Any, chunk_rows: int) -> None:
        calls["n"] += 1  # the third table fails, after two went in
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        real(conn, table, frame, chunk_rows)

    monkeypatch.setattr(wh, "_insert", failing)
    run = _latest(city)
    with pytest.raises(RuntimeError, match="disk full"):
        publish(city, run)
    after = _tables(city)
    for name, frame in before.items():
        pd.testing.assert_frame_equal(frame, after[name], obj=name)


def _latest(city: CityConfig) -> str:
    engine = wh.engine_for(warehouse_url(city))
    try:
        run = wh.latest_run(engine)
        assert run is not None
        return str(run["run_id"])
    finally:
        engine.dispose()


def test_review_decisions_override_the_model(city: CityConfig) -> None:
    run = _latest(city)
    xw = _tables(city)["mdm_crosswalk"]
    persons = xw[xw["entity"] == "person"]
    # two rows of different entities, linked by a reviewer
    singles = persons[persons["link_rule"] == "singleton"]
    ids = (
        read_state(master_dir(city.var_dir, run) / "person", "records", ["record_id", "id_number"])
        .to_pandas()
        .set_index("record_id")["id_number"]
    )
    keys = [record_id(*r) for r in singles[META].itertuples(index=False, name=None)]
    no_id = [k for k in keys if pd.isna(ids[k])]
    # (two different valid ID numbers could never be linked, not even by a reviewer)
    a, b = no_id[0], next(k for k in keys if k != no_id[0])
    assert decide(city, a, b, "link") == "person"
    # a model link kept apart
    model = persons[persons["link_rule"] == "model"]
    m = model.iloc[0]
    partner = persons[(persons["master_id"] == m["master_id"]) & (persons.index != m.name)]
    c = record_id(m["department"], m["source_table"], m["source_key"])
    d = record_id(*partner.iloc[0][META])
    decide(city, c, d, "apart", note="不是同一人")
    with pytest.raises(ReviewError, match="one of link, apart"):
        decide(city, a, b, "maybe")
    consolidate(city, run)
    after = _crosswalk(city, run, "person")
    assert after[a] == after[b]
    assert after[c] != after[d]


def test_explain_shows_sources_members_and_links(city: CityConfig) -> None:
    xw = _tables(city)["mdm_crosswalk"]
    row = xw[(xw["department"] == "gongan") & (xw["link_rule"] == "same_id_number")].iloc[0]
    ex = explain(city, f"gongan:{row['source_key']}")
    assert ex.master_id == row["master_id"] and ex.entity == "person"
    by_attr = {a["attribute"]: a for a in ex.attributes}
    assert by_attr["id_number"]["department"] == "gongan"
    assert any(m["record"].endswith(row["source_key"]) for m in ex.members)
    assert any("同一有效公民身份号码" in lk["why"] for lk in ex.links)
    assert all("=" in lk["weights"] for lk in ex.links)


def test_publish_on_postgres(city: CityConfig, pg_database: str, tmp_path: Path) -> None:
    """The same night published to a PostgreSQL warehouse holds the same golden tables."""
    state = master_dir(city.var_dir, _latest(city))
    night = wh.Night("pg-night", "full", str(state), {"n": 1})
    sqlite_tables = _tables(city)
    for name in ("mdm_person", "mdm_enterprise", "mdm_crosswalk"):
        night.frames[name] = sqlite_tables[name]
    engine = wh.engine_for(pg_database)
    try:
        wh.publish(engine, night)
        wh.publish(engine, night)  # again: same rows
        for name in night.frames:
            got = wh.read(engine, wh.metadata.tables[name])
            assert len(got) == len(sqlite_tables[name]), name
        assert wh.latest_run(engine)["run_id"] == "pg-night"  # type: ignore[index]
    finally:
        engine.dispose()
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_rerunning_an_older_night_is_refused(city: CityConfig) -> None:
    """Night 0 rerun after night 1 was published would put the golden tables back behind the
    watermarks: refused, naming the night to rerun instead; a rerun of a night starts from the
    night published before it, so night 0's base is nothing."""
    assert _latest(city) == NIGHT1
    state = master_dir(city.var_dir, NIGHT0)
    before = {p.name: p.stat().st_mtime_ns for p in state.rglob("*")}
    with pytest.raises(ConsolidateError, match=f"Fix: rerun night {NIGHT1}"):
        link(city, NIGHT0)
    assert {p.name: p.stat().st_mtime_ns for p in state.rglob("*")} == before
    engine = wh.engine_for(warehouse_url(city))
    try:
        assert wh.latest_run(engine, before=NIGHT0) is None
        assert wh.latest_run(engine, before=NIGHT1)["run_id"] == NIGHT0  # type: ignore[index]
    finally:
        engine.dispose()


def test_a_held_back_department_keeps_last_nights_rows_and_watermarks(city: CityConfig) -> None:
    """A department a blocking quality rule holds back adds nothing tonight; its watermarks stay,
    so the next night reads its rows again."""
    consolidate(city, NIGHT1)  # the module's last published night is NIGHT1 again
    night2 = "2026-07-02"
    next_night(city.var_dir / "city")
    _night(city, night2)
    canonical = city.var_dir / "canonical" / f"run={night2}"
    renshe_rows = pd.read_parquet(next(canonical.glob("*renshe*/person.parquet")))
    assert len(renshe_rows) > 0
    with RunState.for_city(city) as state:
        before = state.watermark("renshe", "insured_person")
        gongan_before = state.watermark("gongan", "t_rk_jbxx")
    linked = consolidate(city, night2, held={"renshe"})
    tonight = linked.entities["person"].changed
    everyone = sum(len(pd.read_parquet(p)) for p in canonical.glob("*/person.parquet"))
    assert tonight == everyone - len(renshe_rows)
    xw = _crosswalk(city, night2, "person")
    ids = [record_id("renshe", "insured_person", k) for k in renshe_rows["source_key"]]
    new = [i for i in ids if i not in _crosswalk(city, NIGHT1, "person").index]
    assert new and not xw.index.isin(new).any()  # renshe's new rows wait for a later night
    with RunState.for_city(city) as state:
        assert state.watermark("renshe", "insured_person") == before
        assert state.watermark("gongan", "t_rk_jbxx") != gongan_before


def test_old_master_state_is_pruned_after_publish(city: CityConfig) -> None:
    """Only the newest published nights keep their state folder (the last test: it prunes)."""
    latest = _latest(city)
    folders = sorted(p.name for p in (city.var_dir / "master").glob("run=*"))
    assert len(folders) >= 3
    removed = prune_states(city, keep=1)
    assert latest not in removed and len(removed) == len(folders) - 1
    assert [p.name for p in (city.var_dir / "master").glob("run=*")] == [f"run={latest}"]
    assert (
        explain(
            city,
            read_state(master_dir(city.var_dir, latest) / "person", "golden")["master_id"][
                0
            ].as_py(),
        )
        is not None
    )


@pytest.mark.slow
def test_a_model_fitted_for_other_levels_is_fitted_afresh(
    make_city: CityFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Last night's model, fitted before the enterprise name gained a level (an upgrade), can
    not score tonight's pairs: the night fits the model afresh and says so, never crashes."""
    city = make_city(
        monkeypatch, persons=900, enterprises=90, seed=7, until="published", copy=tmp_path
    )
    path = master_dir(city.var_dir, NIGHT0) / "enterprise" / "model.json"
    model = json.loads(path.read_text())
    [name] = [f for f in model["features"] if f["name"] == "name"]
    del name["levels"][1]  # the level an individual business under its operator's name takes
    for i, level in enumerate(name["levels"]):
        level["level"] = i
    for p in ("m", "u"):
        total = sum(level[p] for level in name["levels"])
        for level in name["levels"]:
            level[p] /= total
    path.write_text(json.dumps(model))
    next_night(city.var_dir / "city")
    _night(city, NIGHT1)
    with caplog.at_level("WARNING", logger="master_data.link"):
        linked = link(city, NIGHT1)
    assert linked.entities["enterprise"].model_trained
    assert "compares name with other levels" in caplog.text
    refit = json.loads((master_dir(city.var_dir, NIGHT1) / "enterprise" / "model.json").read_text())
    [name] = [f for f in refit["features"] if f["name"] == "name"]
    assert len(name["levels"]) == 6
