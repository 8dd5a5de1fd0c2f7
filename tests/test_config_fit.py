"""Config that fits real departments (issue 16 §1, §2): a city whose departments lack a field
runs the whole night; one column may hold several identifiers; units, date formats, values
from two columns; a config folder elsewhere with other department names."""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from pydantic import ValidationError
from sample_cities import CityFactory
from typer.testing import CliRunner

import store.warehouse as wh
from cli.main import app
from etl.config import CityConfig, ConfigError, TableConfig, load_city_config
from etl.extract import extract_all
from etl.sample_city.generate import next_night
from etl.standardize import _Context, standardize_all, standardize_row
from etl.state import warehouse_url
from fields import dictionary, identifiers
from master_data.compare import features_for
from master_data.evaluate import pairwise_metrics
from master_data.link import link
from master_data.publish import publish
from master_data.settings import load_match_settings
from master_data.train import features_left_out, is_rules_only, train
from quality.rules import load_quality_rules
from quality.table_rules import _change_stamp
from store.layout import canonical_dir

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
                    c: kept
                    for c, m in table["columns"].items()
                    if (kept := _unmapped(m, field)) is not None
                }
        path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))
    for path in sorted((config / "quality").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        doc["rules"] = [r for r in doc["rules"] if not _names(r, field)]
        path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))


def _unmapped(mapping: Any, field: str) -> Any:
    """A column's mapping without ``field`` (None: the column maps nothing else)."""
    target = mapping if isinstance(mapping, str) else mapping.get("field")
    if target == "enterprise_identifier":
        target = ["uscc", "reg_no", "org_code"]
    if isinstance(target, list):
        rest = [f for f in target if f != field]
        return {**({} if isinstance(mapping, str) else mapping), "field": rest} if rest else None
    return None if target == field else mapping


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


# --- one column, several identifiers --------------------------------------------------------


def test_a_mixed_identifier_column_routes_each_value(
    make_city: CityFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tax department's 纳税人识别号 holds credit codes, 注册号 and old tax numbers: each
    lands in its field, an old tax number as its organization code, and the rows it identifies
    join their enterprise's registry row."""
    city = make_city(monkeypatch, until="published", **CITY)
    truth = city.var_dir / "city" / "truth"
    enterprises = pd.read_parquet(truth / "enterprises.parquet").set_index("enterprise_id")
    rows = pd.read_parquet(truth / "source_rows.parquet")
    entity_of = rows.set_index(["department", "source_key"])["entity_id"]
    canonical = pd.read_parquet(canonical_dir(city.var_dir, RUN, "shuiwu") / "enterprise.parquet")
    with sqlite3.connect(city.var_dir / "city" / "sources" / "shuiwu.sqlite") as db:
        number = dict(db.execute("SELECT 登记序号, 纳税人识别号 FROM 纳税人登记信息").fetchall())
    kinds: dict[str, int] = {}
    tax_rows = []
    for row in canonical.itertuples():
        e = enterprises.loc[entity_of[("shuiwu", row.source_key)]]
        n = number[int(row.source_key)]
        kind = {e.uscc: "uscc", e.reg_no: "reg_no", e.org_code: "org_code"}.get(n, "tax_no")
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "tax_no":
            assert n == e.division_code + e.org_code
            assert row.org_code == e.org_code, row
            tax_rows.append(row.source_key)
        elif kind == "reg_no":
            assert row.reg_no == e.reg_no
        elif kind == "org_code":
            assert row.org_code == e.org_code
        elif row.uscc is not None:
            assert row.uscc == e.uscc
    assert min(kinds["tax_no"], kinds["reg_no"], kinds["org_code"]) >= 2, kinds
    assert kinds["uscc"] > 50, kinds
    engine = wh.engine_for(warehouse_url(city))
    try:
        crosswalk = wh.read(engine, wh.crosswalk_table)
    finally:
        engine.dispose()
    crosswalk = crosswalk[crosswalk["entity"] == "enterprise"]
    master = crosswalk.set_index(["department", "source_key"])["master_id"]
    registry = {entity_of[("shichang", k)]: m for (d, k), m in master.items() if d == "shichang"}
    joined = [master[("shuiwu", k)] == registry.get(entity_of[("shuiwu", k)]) for k in tax_rows]
    assert all(joined), joined


# --- column forms, one row at a time ----------------------------------------------------------

AS_OF = dt.date(2026, 6, 30)


def _table(entity: str, columns: dict[str, Any], **more: Any) -> TableConfig:
    return TableConfig.model_validate(
        {
            "name": "t",
            "entity": entity,
            "primary_key": ["id"],
            "change_column": "ts",
            "change_kind": "timestamp",
            "columns": columns,
            **more,
        }
    )


def _row(entity: str, table: TableConfig, **raw: Any) -> tuple[dict[str, Any], list[str]]:
    out, reasons, _ = standardize_row(
        entity, table, {"id": "1", "ts": None, **raw}, _Context("350100", AS_OF)
    )
    return out, reasons


@pytest.mark.parametrize(
    ("value", "uscc", "reg_no", "org_code", "reasons"),
    [
        ("91350100M000100Y43", "91350100M000100Y43", None, "M000100Y4", []),
        ("M000100Y-4", None, None, "M000100Y4", []),
        ("350102M000100Y4", None, None, "M000100Y4", []),  # old tax number
        ("350100000000010", None, "350100000000010", None, []),  # 注册号 (MOD 11,10)
        ("91350100M000100Y44", None, None, None, ["uscc:uscc_bad_check"]),
        ("ABC", None, None, None, ["enterprise_identifier:legacy_code_unrecognized"]),
        (None, None, None, None, []),
    ],
)
def test_an_identifier_goes_where_its_structure_says(
    value: str | None, uscc: str | None, reg_no: str | None, org_code: str | None, reasons: Any
) -> None:
    table = _table("enterprise", {"mc": "name", "nsrsbh": "enterprise_identifier"})
    out, got = _row("enterprise", table, mc="某某有限公司", nsrsbh=value)
    assert (out["uscc"], out["reg_no"], out["org_code"]) == (uscc, reg_no, org_code)
    assert got == reasons


def test_an_identifier_column_fills_only_what_the_fields_own_columns_leave_empty() -> None:
    table = _table(
        "enterprise",
        {"mc": "name", "xydm": "uscc", "nsrsbh": {"field": ["uscc", "org_code"]}},
    )
    out, _ = _row("enterprise", table, mc="某某有限公司", xydm=None, nsrsbh="91350100M000100Y43")
    assert (out["uscc"], out["org_code"]) == ("91350100M000100Y43", "M000100Y4")
    own = identifiers.make_uscc("9", "1", "350100", "MA2YQ0TQ")
    out, _ = _row("enterprise", table, mc="某某有限公司", xydm=own, nsrsbh="350102M000100Y4")
    assert (out["uscc"], out["raw_uscc"], out["org_code"]) == (own, own, "M000100Y4")
    # a 注册号 in a column routed to uscc and org_code only is reported, not guessed
    out, got = _row("enterprise", table, mc="某某有限公司", nsrsbh="350100000000010")
    assert out["reg_no"] is None and "enterprise_identifier:identifier_not_routed_reg_no" in got


def test_a_status_read_from_two_columns() -> None:
    cases = [
        {"when": {"zxbs": "0"}, "value": "正常"},
        {"when": {"zxbs": "1", "zxyy": "迁出"}, "value": "迁出"},
        {"when": {"zxbs": "1", "zxyy": "死亡"}, "value": "死亡"},
    ]
    table = _table("person", {"xm": "name", "zxbs": {"field": "status", "cases": cases}})
    assert table.source_columns == ("id", "ts", "xm", "zxbs", "zxyy")
    got = {
        (flag, why): _row("person", table, xm="张三", zxbs=flag, zxyy=why)
        for flag, why in [("0", None), ("1", "迁出"), ("1", "死亡"), ("1", "失踪"), (None, None)]
    }
    assert {k: (out["status"], r) for k, (out, r) in got.items()} == {
        ("0", None): ("正常", []),
        ("1", "迁出"): ("迁出", []),
        ("1", "死亡"): ("死亡", []),
        ("1", "失踪"): ("1/失踪", ["status:code_unmapped"]),
        (None, None): (None, []),
    }


@pytest.mark.parametrize(
    ("unit", "raw", "wan"),
    [
        ("元", "5000000", "500"),
        ("万元", "500", "500"),
        (None, "500", "500"),
        ("亿元", "2", "20000"),
    ],
)
def test_a_bare_capital_is_read_in_the_columns_unit(unit: str | None, raw: str, wan: str) -> None:
    mapping: dict[str, Any] = {"field": "registered_capital"}
    if unit:
        mapping["unit"] = unit
    table = _table("enterprise", {"mc": "name", "zczb": mapping})
    out, reasons = _row("enterprise", table, mc="某某有限公司", zczb=raw)
    assert out["registered_capital"] == Decimal(wan) and reasons == []


def test_dates_unpadded_and_in_two_formats() -> None:
    fmt = ["%Y-%m-%d", "%-m/%-d/%Y"]
    table = _table("enterprise", {"mc": "name", "rq": {"field": "established_date", "format": fmt}})
    for raw, day in [("2001-05-07", dt.date(2001, 5, 7)), ("5/7/2001", dt.date(2001, 5, 7)),
                     ("12/31/1999", dt.date(1999, 12, 31))]:  # fmt: skip
        out, reasons = _row("enterprise", table, mc="某某有限公司", rq=raw)
        assert (out["established_date"], reasons) == (day, [])
    out, reasons = _row("enterprise", table, mc="某某有限公司", rq="2001.5.7")
    assert out["established_date"] is None and reasons


def test_change_stamps_with_an_offset_are_the_citys_wall_time() -> None:
    table = _table(
        "person",
        {"xm": "name"},
        change_kind="string",
        change_format="%Y-%m-%dT%H:%M:%S%z",
    )
    out, reasons = _row("person", table, xm="张三", ts="2026-06-30T02:00:00+0000")
    assert out["updated_at"] == dt.datetime(2026, 6, 30, 10, 0) and reasons == []
    iso = _table("person", {"xm": "name"})
    out, _ = _row("person", iso, xm="张三", ts="2026-06-30T02:00:00+00:00")
    assert out["updated_at"] == dt.datetime(2026, 6, 30, 10, 0)
    # the freshness rule reads the ledger's newest stamp the same way
    newest = _change_stamp("2026-06-30T02:00:00+0000", table, "Asia/Shanghai")
    assert newest == dt.datetime(2026, 6, 30, 10, 0)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"nsrsbh": "enterprise_identifier"}, "enterprise form, not a person one"),
        ({"nsrsbh": {"field": ["uscc", "name"]}}, "a list of distinct fields"),
        ({"xm": {"field": "name", "unit": "元"}}, "`unit` applies to registered_capital only"),
        ({"rq": {"field": "birth_date", "format": ["%Y%m%d", "%Q"]}}, "'%Q' cannot read back"),
    ],
)
def test_column_forms_are_checked(columns: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        _table("person", {"xm2": "name", **columns})
    assert message in str(info.value)


# --- a configuration folder of its own ----------------------------------------------------------

RENAMED = {"gongan": "hukou", "renshe": "shebao", "minzheng": "jiuzhu", "weijian": "yiyuan",
           "shichang": "dengji", "shuiwu": "nashui"}  # fmt: skip


def rename_departments(config: Path, names: dict[str, str]) -> None:
    """Give the departments of the config copy other codes (their sources stay where they are),
    leave the survivorship rank to be derived, and move the catalog's tables along."""
    for old, new in names.items():
        path = config / "departments" / f"{old}.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["code"] = new
        path.unlink()
        (config / "departments" / f"{new}.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
        rules = config / "quality" / f"{old}.yaml"
        doc = yaml.safe_load(rules.read_text())
        doc["department"] = new
        rules.unlink()
        (config / "quality" / f"{new}.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
    matching = yaml.safe_load((config / "matching.yaml").read_text())
    for entity in ("person", "enterprise"):
        del matching[entity]["survivorship_rank"]
    (config / "matching.yaml").write_text(yaml.safe_dump(matching))
    catalog = yaml.safe_load((config / "catalog.yaml").read_text())
    catalog["resources"] = {
        (f"{names[k.split('/')[0]]}/{k.split('/', 1)[1]}" if "/" in k else k): v
        for k, v in catalog["resources"].items()
    }
    (config / "catalog.yaml").write_text(yaml.safe_dump(catalog, allow_unicode=True))


def test_a_config_folder_elsewhere_with_other_departments_runs_the_night(
    make_city: CityFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    make_city(monkeypatch, copy=tmp_path / "var", **CITY)
    config = tmp_path / "elsewhere" / "fuzhou-settings"
    shutil.copytree(ROOT / "config", config)
    rename_departments(config, RENAMED)
    # a real catalogue often lacks a contact and a department's quality rules
    path = config / "departments" / "jiuzhu.yaml"
    doc = yaml.safe_load(path.read_text())
    del doc["contact"]
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    (config / "quality" / "jiuzhu.yaml").unlink()

    checked = CliRunner().invoke(app, ["config", "check", "--config", str(config)])
    assert checked.exit_code == 0, checked.output
    flat = " ".join(checked.output.split())
    assert "jiuzhu.yaml: contact: missing; its reports go to the data engineering contact" in flat
    assert (
        "department jiuzhu (" in flat and "has no quality rules: it runs with the built-in" in flat
    )

    city = load_city_config(config)
    assert city.config_dir == config.resolve()
    assert city.department("jiuzhu").contact == city.data_engineering_contact
    summary = run_night(city)
    assert sorted(summary["departments"]) == sorted(RENAMED.values())
    engine = wh.engine_for(warehouse_url(city))
    try:
        provenance = wh.read(engine, wh.provenance_table)
    finally:
        engine.dispose()
    assert set(provenance["department"]) <= set(RENAMED.values())
    # the authority's value survives, the derived rank after it: 登记 holds the enterprise names
    names = provenance[(provenance["entity"] == "enterprise") & (provenance["attribute"] == "name")]
    assert (names["department"] == "dengji").mean() > 0.9


def test_config_check_refuses_a_matching_file_naming_unknown_departments(
    tmp_path: Path, config_copy: Path
) -> None:
    shutil.copytree(config_copy, tmp_path / "other")
    checked = CliRunner().invoke(app, ["config", "check", "--config", str(tmp_path / "other")])
    assert checked.exit_code == 0, checked.output
    rename_departments(config_copy, RENAMED)
    for name in ("matching.yaml", "catalog.yaml"):  # as shipped: the example city's names
        (config_copy / name).write_text((ROOT / "config" / name).read_text())
    checked = CliRunner().invoke(app, ["config", "check", "--config", str(config_copy)])
    assert checked.exit_code == 2
    flat = " ".join(checked.output.split())
    assert (
        "matching.yaml: person.survivorship_rank[0]: no department 'gongan'. Fix: use one of"
        in flat
    )
    assert (
        "catalog.yaml: resources.weijian/PATIENT_INFO: no such resource. Fix: the table is "
        "yiyuan/PATIENT_INFO in this city's departments" in flat
    )


def test_config_check_warns_about_a_feature_no_department_supplies(config_copy: Path) -> None:
    without(config_copy, "enterprise", "reg_no")
    checked = CliRunner().invoke(app, ["config", "check", "--config", str(config_copy)])
    assert checked.exit_code == 0, checked.output
    flat = " ".join(checked.output.split())
    assert "no enterprise table maps a column to `reg_no`: the match model does without it" in flat
    assert "`org_code`" not in flat  # the tax department still has one


def _unmap_column(config: Path, department: str, column: str) -> None:
    path = config / "departments" / f"{department}.yaml"
    doc = yaml.safe_load(path.read_text())
    for table in doc["tables"]:
        table["columns"].pop(column, None)
    for fields in doc.get("authority_for", {}).values():
        if "reg_no" in fields:
            fields.remove("reg_no")
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))


def test_a_rule_on_a_field_the_registry_does_not_keep_is_left_out_with_a_warning(
    config_copy: Path,
) -> None:
    shipped = load_quality_rules(load_city_config(config_copy))
    # a registry without a 注册号 column, its quality rules as shipped (SC-V02 checks 注册号)
    _unmap_column(config_copy, "shichang", "zch")
    checked = CliRunner().invoke(app, ["config", "check", "--config", str(config_copy)])
    assert checked.exit_code == 0, checked.output
    flat = " ".join(checked.output.split())
    assert (
        f"{config_copy / 'quality' / 'shichang.yaml'}: rules[10] (SC-V02).field (line 74): "
        "table t_qy_djxx maps no column to 'reg_no': the rule is left out. Fix: map the column "
        "of t_qy_djxx that holds `reg_no`, if the department keeps one; otherwise remove the rule"
    ) in flat
    assert "Configuration has errors" not in flat
    # the night runs the same rules: all but SC-V02
    rules = load_quality_rules(load_city_config(config_copy))
    assert {r.id for r in shipped} - {r.id for r in rules} == {"SC-V02"}
    assert len(rules.skipped) == 1 and "SC-V02" in rules.skipped[0]
    # a misspelt field is still a mistake, not a field the city lacks
    rules_file = config_copy / "quality" / "shichang.yaml"
    rules_file.write_text(rules_file.read_text().replace("field: status", "field: statsu", 1))
    checked = CliRunner().invoke(app, ["config", "check", "--config", str(config_copy)])
    assert checked.exit_code == 2
    assert "maps no column to 'statsu'. Fix: did you mean `status`?" in " ".join(
        checked.output.split()
    )


def test_a_golden_rule_without_an_authority_is_left_out_with_a_warning(
    config_copy: Path,
) -> None:
    weijian = config_copy / "departments" / "weijian.yaml"
    weijian.write_text(weijian.read_text().replace("authority_for:\n  person: [phone]\n", ""))
    city = load_city_config(config_copy)
    assert city.authority("person", "phone") is None
    checked = CliRunner().invoke(app, ["config", "check", "--config", str(config_copy)])
    assert checked.exit_code == 0, checked.output
    flat = " ".join(checked.output.split())
    assert (
        f"{config_copy / 'quality' / 'golden.yaml'}: rules[6] (GD-P07).field (line 54): no "
        "department is the authority for person `phone`, so the rule has no owner: it is left "
        "out. Fix: write `department:` on the rule to name who answers for it, or add `phone` "
        "to that department's `authority_for: person:`"
    ) in flat
    rules = load_quality_rules(city)
    with pytest.raises(KeyError):
        rules.rule("GD-P07")
    assert rules.rule("GD-P08").department == "renshe"  # the other golden rules stay
    # naming the owner on the rule brings it back
    golden = config_copy / "quality" / "golden.yaml"
    text = golden.read_text().replace(
        "  - id: GD-P07\n", "  - id: GD-P07\n    department: weijian\n", 1
    )
    golden.write_text(text)
    rules = load_quality_rules(load_city_config(config_copy))
    assert rules.rule("GD-P07").department == "weijian" and rules.skipped == ()


@pytest.mark.parametrize("records", [0, 1])
def test_too_few_records_give_a_rules_only_model(records: int) -> None:
    frame = pd.DataFrame({"name": ["张三"] * records}, index=[f"r{i}" for i in range(records)])
    model = train(frame, pd.DataFrame(), "person", load_match_settings(ROOT / "config"))
    assert is_rules_only(model) and features_left_out(model, "person") == []
    assert model.probability(pd.DataFrame({f: [1] for f in model.features})).iloc[0] < 1e-6


def test_column_forms_through_the_night(
    make_city: CityFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config_copy: Path
) -> None:
    """公安 writes status as 注销标识 + 注销原因, half its birth dates as 5/7/1990 and its change
    stamps in UTC with an offset; 市场监管 writes capital in 元: the night reads them all."""
    make_city(monkeypatch, copy=tmp_path / "var", **CITY)
    sources = tmp_path / "var" / "city" / "sources"
    with sqlite3.connect(sources / "gongan.sqlite") as db:
        rows = db.execute("SELECT rkbh, csrq, gxsj FROM t_rk_jbxx ORDER BY rkbh").fetchall()
        db.execute("ALTER TABLE t_rk_jbxx ADD COLUMN zxbs VARCHAR(1)")
        db.execute("ALTER TABLE t_rk_jbxx ADD COLUMN zxyy VARCHAR(10)")
        expected = {}
        for i, (key, born, stamp) in enumerate(rows):
            flag, why = (
                ("1", "迁出") if i % 7 == 3 else ("1", "死亡") if i % 11 == 5 else ("0", None)
            )
            day = dt.datetime.strptime(born, "%Y%m%d").date()
            local = dt.datetime.strptime(stamp, "%Y%m%d%H%M%S")
            utc = (local - dt.timedelta(hours=8)).strftime("%Y-%m-%dT%H:%M:%S+0000")
            written = f"{day.month}/{day.day}/{day.year}" if i % 2 else born
            db.execute(
                "UPDATE t_rk_jbxx SET zxbs = ?, zxyy = ?, csrq = ?, gxsj = ? WHERE rkbh = ?",
                (flag, why, written, utc, key),
            )
            expected[key] = ({"0": "正常"}.get(flag, why), day, local)
    with sqlite3.connect(sources / "shichang.sqlite") as db:
        capital = dict(db.execute("SELECT nbxh, zczb FROM t_qy_djxx").fetchall())
        db.execute("UPDATE t_qy_djxx SET zczb = zczb * 10000")
    path = config_copy / "departments" / "gongan.yaml"
    doc = yaml.safe_load(path.read_text())
    table = doc["tables"][0]
    table["change_format"] = "%Y-%m-%dT%H:%M:%S%z"
    table["columns"]["csrq"]["format"] = ["%Y%m%d", "%-m/%-d/%Y"]
    del table["columns"]["hjzt"]
    table["columns"]["zxbs"] = {
        "field": "status",
        "cases": [
            {"when": {"zxbs": "0"}, "value": "正常"},
            {"when": {"zxbs": "1", "zxyy": "迁出"}, "value": "迁出"},
            {"when": {"zxbs": "1", "zxyy": "死亡"}, "value": "死亡"},
        ],
    }
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))
    path = config_copy / "departments" / "shichang.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["tables"][0]["columns"]["zczb"] = {"field": "registered_capital", "unit": "元"}
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))

    city = load_city_config(config_copy)
    run_night(city)
    person = pd.read_parquet(canonical_dir(city.var_dir, RUN, "gongan") / "person.parquet")
    got = {
        r.source_key: (r.status, r.birth_date, r.updated_at.to_pydatetime())
        for r in person.itertuples()
    }
    assert got == {k: v for k, v in expected.items() if k in got}
    assert len(got) >= len(expected) - 5  # the registry's own rejects (no usable identity)
    assert {s for s, _, _ in got.values()} == {"正常", "迁出", "死亡"}
    firms = pd.read_parquet(canonical_dir(city.var_dir, RUN, "shichang") / "enterprise.parquet")
    assert len(firms) == len(capital)
    assert all(
        r.registered_capital == Decimal(str(capital[r.source_key])) for r in firms.itertuples()
    )


def test_a_rules_only_night_is_followed_by_a_training_night(
    make_city: CityFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    city = make_city(monkeypatch, copy=tmp_path / "var", persons=200, enterprises=20, seed=5)
    first = run_night(city)["entities"]
    assert first["enterprise"]["rules_only"] and not first["person"]["rules_only"]
    next_night(city.var_dir / "city")
    assert all(r.ok for r in extract_all(city, "2026-07-01"))
    assert all(r.status == "ok" for r in standardize_all(city, "2026-07-01"))
    second = link(city, "2026-07-01").summary()["entities"]
    assert second["enterprise"]["model_trained"] and not second["person"]["model_trained"]


def _enterprise_pairs(city: CityConfig) -> Any:
    engine = wh.engine_for(warehouse_url(city))
    try:
        crosswalk = wh.read(engine, wh.crosswalk_table)
    finally:
        engine.dispose()
    truth = pd.read_parquet(city.var_dir / "city" / "truth" / "source_rows.parquet")
    return pairwise_metrics(crosswalk, truth)["enterprise"]


def test_a_tax_department_with_one_identifier_column_links_as_well(
    make_city: CityFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config_copy: Path
) -> None:
    """纳税人识别号 alone (the three identifier columns left unmapped) links the tax rows as
    well as the three columns do."""
    shipped = _enterprise_pairs(make_city(monkeypatch, until="published", **CITY))
    make_city(monkeypatch, copy=tmp_path / "var", **CITY)
    path = config_copy / "departments" / "shuiwu.yaml"
    doc = yaml.safe_load(path.read_text())
    for column in ("社会信用代码", "工商注册号", "组织机构代码"):
        del doc["tables"][0]["columns"][column]
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))
    city = load_city_config(config_copy)
    run_night(city)
    one_column = _enterprise_pairs(city)
    assert one_column.true_pairs == shipped.true_pairs > 50
    assert one_column.precision >= shipped.precision and one_column.recall >= shipped.recall
    assert one_column.f1 > 0.99


def test_column_form_errors_name_the_file_the_key_and_the_fix(config_copy: Path) -> None:
    gongan = config_copy / "departments" / "gongan.yaml"
    gongan.write_text(gongan.read_text().replace('format: "%Y%m%d"', 'format: ["%Y%m%d", "%Q"]', 1))
    shuiwu = config_copy / "departments" / "shuiwu.yaml"
    shuiwu.write_text(
        shuiwu.read_text().replace("{field: enterprise_identifier}", "{field: [uscc, phone]}")
    )
    with pytest.raises(ConfigError) as info:
        load_city_config(config_copy)
    problems = info.value.problems
    assert any(
        p.startswith(f"{gongan}: tables[0].columns.csrq.format[1] (line ")
        and "'%Q' cannot read back" in p
        for p in problems
    ), problems
    assert any(
        p.startswith(f"{shuiwu}: tables[0].columns.纳税人识别号.field (line ")
        and "Fix: write `field: enterprise_identifier`" in p
        for p in problems
    ), problems
