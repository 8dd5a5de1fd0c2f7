"""Config that fits real departments (issue 16 §1, §2): a city whose departments lack a field
runs the whole night; one column may hold several identifiers; units, date formats, values
from two columns; a config folder elsewhere with other department names."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from sample_cities import CityFactory

import store.warehouse as wh
from etl.config import CityConfig, load_city_config
from etl.extract import extract_all
from etl.standardize import standardize_all
from etl.state import warehouse_url
from fields import dictionary
from master_data.compare import features_for
from master_data.link import link
from master_data.publish import publish

ROOT = Path(__file__).resolve().parents[1]
CITY = {"persons": 200, "enterprises": 90, "seed": 5}
RUN = "2026-06-30"

OPTIONAL = [
    (entity, field)
    for entity in ("person", "enterprise")
    for field in dictionary.source_fields(entity)
    if field != "name"
]


def without(config: Path, entity: str, field: str) -> None:
    """Unmap ``field`` of ``entity`` in every department of the config copy at ``config``, as
    a city that keeps no such column would write it (its quality rules do not name it)."""
    for path in sorted((config / "departments").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        claims = doc.get("authority_for", {}).get(entity, [])
        if field in claims:
            claims.remove(field)
        for table in doc["tables"]:
            if table["entity"] == entity:
                table["columns"] = {
                    c: m
                    for c, m in table["columns"].items()
                    if (m if isinstance(m, str) else m.get("field")) != field
                }
        path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))
    for path in sorted((config / "quality").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        doc["rules"] = [r for r in doc["rules"] if not _names(r, field)]
        path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))


def _names(rule: Any, field: str) -> bool:
    if isinstance(rule, dict):
        return any(_names(v, field) for v in rule.values())
    if isinstance(rule, list):
        return any(_names(v, field) for v in rule)
    return bool(rule == field)


def run_night(city: CityConfig) -> dict[str, Any]:
    """extract → standardize → link → publish, every stage asserted to succeed."""
    assert all(r.ok for r in extract_all(city, RUN))
    standardized = standardize_all(city, RUN)
    assert all(r.status == "ok" and r.reconciled for r in standardized), standardized
    link(city, RUN)
    return publish(city, RUN)


@pytest.fixture
def config_copy(tmp_path: Path) -> Path:
    config = tmp_path / "project" / "config"
    shutil.copytree(ROOT / "config", config)
    return config


@pytest.mark.parametrize(("entity", "field"), OPTIONAL)
def test_a_city_without_a_field_runs_the_night(
    entity: str,
    field: str,
    make_city: CityFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    config_copy: Path,
) -> None:
    make_city(monkeypatch, copy=tmp_path / "var", **CITY)
    without(config_copy, entity, field)
    city = load_city_config(config_copy)
    summary = run_night(city)

    linked = summary["entities"][entity]
    feature = field in {f.label for f in features_for(entity)}
    assert linked["features_left_out"] == ([field] if feature else [])
    assert not linked["rules_only"]
    engine = wh.engine_for(warehouse_url(city))
    try:
        golden = wh.read(engine, wh.person_table if entity == "person" else wh.enterprise_table)
        crosswalk = wh.read(engine, wh.crosswalk_table)
    finally:
        engine.dispose()
    if field == "org_code":  # derived from the credit code (its characters 9–17)
        assert (golden["org_code"] == golden["uscc"].str[8:17]).all()
    else:
        assert golden[field].isna().all()
    # every source row of the entity is in the crosswalk: nothing dropped for the missing field
    assert (crosswalk["entity"] == entity).sum() == linked["records"]
    assert 0 < len(golden) < linked["records"]
