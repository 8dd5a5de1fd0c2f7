"""``govmdm lookup`` on a small sample city: each key finds the golden record the truth expects
(through the authority's source row in the crosswalk), masked unless privileged, with
provenance, members and relations; bad keys are refused in Chinese; every lookup is audited."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from sample_cities import CityFactory, isolate
from typer.testing import CliRunner

import store.warehouse as wh
from access import audit
from access.errors import AccessDenied
from access.lookup import LookupError_, lookup
from cli.main import app
from etl.config import CityConfig
from etl.state import warehouse_url
from fields.identifiers import downgrade_id18
from fields.masking import find_clear, mask_id, mask_name
from master_data.evaluate import load_truth

ROOT = Path(__file__).resolve().parents[1]
NIGHT = "2026-06-30"


@pytest.fixture(scope="module")
def city(make_city: CityFactory) -> Iterator[CityConfig]:
    """A 600-person city, one night published (SQLite) and the views installed; a copy (every
    lookup is audited in its warehouse)."""
    with pytest.MonkeyPatch.context() as mp:
        yield make_city(
            mp,
            persons=600,
            enterprises=70,
            seed=7,  # the city of test_access.py and test_access_roles.py: one build
            until="published",
            views=True,
            run_id=NIGHT,
            copy=True,
        )


@pytest.fixture
def env(city: CityConfig, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    isolate(monkeypatch, city.var_dir)
    return monkeypatch


@pytest.fixture(scope="module")
def expected(city: CityConfig) -> pd.DataFrame:
    """Truth entities with the master ID the crosswalk gives the authority's source row."""
    truth = load_truth(city.var_dir / "city")
    engine = wh.engine_for(warehouse_url(city))
    try:
        xw = wh.read(engine, wh.crosswalk_table)
    finally:
        engine.dispose()
    rows = truth.rows.rename(columns={"table": "source_table"}).merge(
        xw, on=["department", "source_table", "source_key"]
    )
    authority = rows[rows["department"].isin(["gongan", "shichang"])]
    master = authority.groupby("entity_id")["master_id"].first()
    persons = truth.persons.set_index("person_id").join(master, how="inner")
    firms = truth.enterprises.set_index("enterprise_id").join(master, how="inner")
    return pd.concat([persons.assign(kind="person"), firms.assign(kind="enterprise")])


def _persons(expected: pd.DataFrame, n: int) -> pd.DataFrame:
    p = expected[expected["kind"] == "person"]
    return p[p["twin_of"].isna()].head(n)


def test_lookup_by_id_number_finds_the_golden_record_masked(
    city: CityConfig, env: pytest.MonkeyPatch, expected: pd.DataFrame
) -> None:
    for p in _persons(expected, 20).itertuples():
        found = lookup(city, id_number=p.id_number)
        assert [m.master_id for m in found.matches] == [p.master_id]
        record = found.matches[0].record
        # the analyst views are a de-identified release: no part of name or ID number, and the
        # birth date as a band (or **** where k-anonymity needs it)
        assert record["id_number"] == record["name"] == "****"
        band = str(record["birth_date"])
        year = pd.Timestamp(p.birth_date).year
        assert band == "****" or int(band[:4]) <= year <= int(band[5:9]), band
        assert found.key_shown == mask_id(p.id_number)
        assert find_clear(json.dumps(found.to_dict(), ensure_ascii=False)) == []


def test_lookup_normalizes_the_id_number(
    city: CityConfig, env: pytest.MonkeyPatch, expected: pd.DataFrame
) -> None:
    p = _persons(expected, 200)
    old = p[p["id_number"].str[6:8] == "19"].iloc[0]
    short = lookup(city, id_number=downgrade_id18(old["id_number"]))
    assert [m.master_id for m in short.matches] == [old["master_id"]]
    assert any("15位" in n for n in short.notes)
    spaced = lookup(city, id_number=f" {old['id_number'][:6]} {old['id_number'][6:].lower()} ")
    assert [m.master_id for m in spaced.matches] == [old["master_id"]]
    x = p[p["id_number"].str.endswith("X")]
    if len(x):
        low = lookup(city, id_number=x.iloc[0]["id_number"].lower())
        assert [m.master_id for m in low.matches] == [x.iloc[0]["master_id"]]
    with pytest.raises(LookupError_, match="校验位"):
        bad = old["id_number"][:17] + ("0" if old["id_number"][17] != "0" else "1")
        lookup(city, id_number=bad)


def test_lookup_by_name_and_birth_date_finds_every_namesake(
    city: CityConfig, env: pytest.MonkeyPatch, expected: pd.DataFrame
) -> None:
    persons = expected[expected["kind"] == "person"]
    for p in _persons(expected, 10).itertuples():
        born = pd.Timestamp(p.birth_date)
        found = lookup(city, name=p.name, birth_date=f"{born.year}年{born.month}月{born.day}日")
        ids = {m.master_id for m in found.matches}
        assert p.master_id in ids
        same = persons[(persons["name"] == p.name) & (persons["birth_date"] == p.birth_date)]
        assert set(same["master_id"]) <= ids
    with pytest.raises(LookupError_, match="--birth-date"):
        lookup(city, name="张三")
    with pytest.raises(LookupError_, match="exactly one key"):
        lookup(city, id_number="11010519491231002X", credit_code="91350100M000100Y43")


def test_lookup_by_credit_code_shows_provenance_members_and_relations(
    city: CityConfig, env: pytest.MonkeyPatch, expected: pd.DataFrame
) -> None:
    firms = expected[(expected["kind"] == "enterprise") & expected["legal_rep_id"].notna()]
    names = {d.code: d.name for d in city.departments}
    related = 0
    for f in firms.head(10).itertuples():
        found = lookup(city, credit_code=f.uscc.lower())
        assert [m.master_id for m in found.matches] == [f.master_id]
        m = found.matches[0]
        assert m.record["uscc"] == f.uscc and m.record["name"] == f.name
        assert m.record["legal_rep_id"] == "****"
        assert m.record["legal_rep_name"] == mask_name(f.legal_rep_name)
        prov = {p["attribute"]: p for p in m.provenance}
        assert prov["uscc"]["department"] == "shichang" and prov["uscc"]["rule"] == "authority"
        assert prov["uscc"]["department_name"] == names["shichang"]
        assert prov["uscc"]["source_updated_at"] is not None
        assert {r["department"] for r in m.members} >= {"shichang"}
        reps = [r for r in m.related if r["kind"] == "legal_representative"]
        related += len(reps)
        for r in reps:
            assert r["id_number"] == r["name"] == "****"
    assert related > 0
    legacy = firms[firms["reg_no"].notna()].iloc[0]
    by_reg = lookup(city, credit_code=legacy["reg_no"])
    assert by_reg.key_kind == "reg_no" and [m.master_id for m in by_reg.matches] == [
        legacy["master_id"]
    ]
    with pytest.raises(LookupError_, match="not a credit code"):
        lookup(city, credit_code="12345")


def test_privileged_lookup_is_clear_and_everything_is_audited(
    city: CityConfig, env: pytest.MonkeyPatch, expected: pd.DataFrame
) -> None:
    p = _persons(expected, 1).iloc[0]
    with env.context() as other:  # not the warehouse file's owner
        other.setattr(os, "geteuid", lambda: _owner(city) + 4242)
        with pytest.raises(AccessDenied):
            lookup(city, id_number=p["id_number"], privileged=True)
    env.setenv("GOVMDM_USER", "李娜")  # names nobody: the OS account is recorded
    found = lookup(city, id_number=p["id_number"], privileged=True)
    assert found.role == "privileged" and found.matches[0].record["id_number"] == p["id_number"]
    assert found.matches[0].record["name"] == p["name"]
    lookup(city, credit_code="91350100M000100Y43")  # valid, not in the city: audited, 0 rows
    with pytest.raises(LookupError_):
        lookup(city, id_number="123")
    engine = wh.engine_for(warehouse_url(city))
    try:
        rows = audit.entries(engine, action="lookup", limit=200)
    finally:
        engine.dispose()
    mine = [r for r in rows if r["who"] == audit.os_user()]
    assert [(r["outcome"], r["row_count"]) for r in mine[:3]] == [
        ("refused", None), ("ok", 0), ("ok", 1),
    ]  # fmt: skip
    assert mine[2]["role"] == "privileged" and mine[2]["detail"]["master_ids"] == [p["master_id"]]
    assert any(r["outcome"] == "refused" and r["target"] == "--privileged" for r in rows)
    assert find_clear(json.dumps(rows, ensure_ascii=False, default=str)) == []


def _owner(city: CityConfig) -> int:
    return os.stat(warehouse_url(city).removeprefix("sqlite:///")).st_uid


def test_lookup_command(
    city: CityConfig, expected: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = _persons(expected, 1).iloc[0]
    runner = CliRunner()
    base = ["--config", str(ROOT / "config")]
    env = {"GOVMDM_VAR": str(city.var_dir)}
    out = runner.invoke(app, ["lookup", "--id-number", p["id_number"], *base], env=env)
    assert out.exit_code == 0, out.output
    assert p["master_id"] in out.output and mask_id(p["id_number"]) in out.output
    assert find_clear(out.output) == [] and p["name"] not in out.output
    out = runner.invoke(app, ["lookup", "--id-number", p["id_number"], "--json", *base], env=env)
    assert json.loads(out.output)["matches"][0]["master_id"] == p["master_id"]
    out = runner.invoke(app, ["lookup", "--id-number", p["id_number"], "--privileged", *base],
                        env=env)  # fmt: skip
    assert out.exit_code == 0 and p["id_number"] in out.output  # the file's owner
    monkeypatch.setattr(os, "geteuid", lambda: _owner(city) + 4242)  # anyone else
    spoof = {**env, "GOVMDM_PRIVILEGED_USERS": "root", "LOGNAME": "root", "USER": "root"}
    out = runner.invoke(app, ["lookup", "--id-number", p["id_number"], "--privileged", *base],
                        env=spoof)  # fmt: skip
    assert out.exit_code == 2 and "does not own the warehouse file" in out.output
