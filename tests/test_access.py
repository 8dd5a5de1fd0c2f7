"""Analysts' access: masked views equal to fields.masking, guarded read-only queries, roles on
real PostgreSQL, keyed pseudonyms, exports with a data dictionary, the catalog, the audit log,
and a scan of everything an analyst can get for ID or mobile numbers in clear."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sample_cities import CityFactory, copy_warehouse, isolate
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

import store.warehouse as wh
from access import audit
from access.catalog import build_catalog
from access.errors import AccessDenied, AccessError, NotShared, PseudonymKeyMissing, QueryRefused
from access.explain import mask_explanation
from access.export import export
from access.lookup import lookup
from access.policy import ANALYST_URL_ENV, load_share_policy
from access.pseudonyms import PSEUDONYM_KEY_ENV, pseudonym, pseudonym_key
from access.query import _fetch_postgres, _fetch_sqlite, run_query
from access.release import PER_ROW_KINDS, VIEWS, ViewSpec, release_of
from access.session import session
from access.views import install_views
from access.viewsql import Dialect, SqlMask, view_select
from cli.main import app
from etl.config import CityConfig, ConfigError, load_city_config
from etl.state import warehouse_url
from fields.masking import (
    SCRUB_KINDS,
    SUPPRESSED,
    find_clear,
    mask_id,
    mask_name,
    mask_phone,
    release_field,
    release_key,
)
from master_data.explain import explain
from store.tables import person_relationship_table

ROOT = Path(__file__).resolve().parents[1]
NIGHT = "2026-06-30"
KEY = "test-pseudonym-key-0123456789"


@pytest.fixture(scope="module")
def city(make_city: CityFactory) -> Iterator[CityConfig]:
    """A 600-person city, one night published to SQLite, with the publish hook run; a copy
    (queries, lookups and exports add audit rows). Its hard cases include children filed under
    a guardian's ID number (mdm_person_relationship)."""
    with pytest.MonkeyPatch.context() as mp:
        yield make_city(
            mp,
            persons=600,
            enterprises=70,
            seed=7,
            until="published",
            views=True,
            run_id=NIGHT,
            copy=True,
            hard_cases=True,
        )


@pytest.fixture
def env(city: CityConfig, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    isolate(monkeypatch, city.var_dir)
    return monkeypatch


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=NullPool)


def _read(url: str, sql: str) -> pd.DataFrame:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            result = conn.exec_driver_sql(sql)
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    finally:
        engine.dispose()


def _text_of_frame(frame: pd.DataFrame) -> str:
    return "\n".join(
        "\t".join("" if v is None else str(v) for v in row)
        for row in frame.astype(object).itertuples(index=False)
    )


# --- masking in SQL equals masking in Python ---------------------------------------------------

EDGE = {
    "id": ["11010519491231002X", "110105491231002", "  350121197403155015 ", "12345", "", None],
    "phone": ["13812345678", "0591-87654321", "0591-87654321-123", "+442071838750", "8765432",
              "12345", "", None],
    "name": ["张三丰", "欧阳娜娜", "李", " 王五 ", "", None],
    "key": ["350121197403155015", "350121740315501", "13812345678", "RK3501000301006001",
            "631867001", None],
}  # fmt: skip
PYTHON = {"id": mask_id, "phone": mask_phone, "name": mask_name, "key": release_key}


def _mask_value(kind: str, column: str, row: dict[str, Any]) -> Any:
    """``row[column]`` as a masked view shows it, from fields.masking (per-row kinds only)."""
    value = row[column]
    if kind == "withheld":
        return SUPPRESSED
    if value is None:
        return None
    text = str(value)
    if kind == "hidden":
        return SUPPRESSED
    if kind == "name":
        return mask_name(text)
    if kind == "key":
        return release_key(text)
    if kind == "evidence":
        return SUPPRESSED if row.get("kind") == "legal_representative" else text
    if kind == "conflict":
        return release_field(str(row.get("entity")), str(row.get("attribute")), text)
    raise ValueError(f"mask kind {kind!r} is computed over the whole table, in SQL only")


def _mask_rows(spec: ViewSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of ``spec``'s table with the per-row masks of its view applied, in Python."""
    return [
        dict(row) | {c: _mask_value(k, c, row) for c, k in spec.masks.items() if k in PER_ROW_KINDS}
        for row in rows
    ]


def _sql_mask(url: str, dialect: Dialect, kind: str, values: list[Any]) -> list[Any]:
    query = sa.text(
        f"SELECT {SqlMask(dialect).mask(kind, 'x')} FROM (SELECT CAST(:v AS TEXT) AS x) t"
    )
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return [conn.execute(query, {"v": v}).scalar() for v in values]
    finally:
        engine.dispose()


def _assert_views_equal_python(url: str, city: CityConfig) -> None:
    """Every masked view's per-row masks, row for row, equal fields.masking's policy applied to
    the same rows in clear (carried beside them by the view's own SELECT)."""
    release = release_of(city)
    dialect: Dialect = "postgresql" if url.startswith("postgresql") else "sqlite"
    for spec in VIEWS:
        per_row = [c for c, k in spec.masks.items() if k in PER_ROW_KINDS]
        if not per_row:
            continue
        select = view_select(spec, dialect, masked=True, release=release,
                                    carry=spec.columns)  # fmt: skip
        frame = _read(url, select)
        rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
        assert len(rows) == len(_read(url, f"SELECT * FROM {spec.name}")) > 0, spec.name
        for row in rows:
            clear = {c: row[f"govmdm_clear_{c}"] for c in spec.columns}
            expected = _mask_rows(spec, [clear])[0]
            assert {c: row[c] for c in per_row} == {c: expected[c] for c in per_row}, spec.name


@pytest.mark.parametrize("kind", sorted(EDGE))
def test_sql_masks_equal_python_on_edge_values(kind: str, tmp_path: Path) -> None:
    got = _sql_mask(f"sqlite:///{tmp_path / 'x.sqlite'}", "sqlite", kind, EDGE[kind])
    assert got == [None if v is None else PYTHON[kind](v) for v in EDGE[kind]]


def test_masked_views_equal_python_masking(city: CityConfig) -> None:
    _assert_views_equal_python(warehouse_url(city), city)
    person = _read(warehouse_url(city), "SELECT * FROM v_person WHERE phone IS NOT NULL LIMIT 1")
    row = person.iloc[0]
    assert row["id_number"] == row["name"] == row["phone"] == row["address_detail"] == "****"
    assert row["address"].endswith("****")


def test_views_install_is_idempotent(city: CityConfig) -> None:
    engine = wh.engine_for(warehouse_url(city))
    try:
        first = install_views(engine, city)
        again = install_views(engine, city)
        assert first.views == again.views and len(again.views) == 2 * len(VIEWS)
        assert first.catalog_rows == again.catalog_rows > 0
    finally:
        engine.dispose()


# --- guarded queries (SQLite) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT * FROM mdm_person", "may not read mdm_person"),
        ('SELECT * FROM "MDM_PERSON"', "may not read mdm_person"),
        ("SELECT name FROM v_person_full", "may not read v_person_full"),
        ("WITH v_person AS (SELECT * FROM mdm_person) SELECT * FROM v_person", "mdm_person"),
        ("SELECT * FROM v_person WHERE master_id IN (SELECT master_id FROM mdm_crosswalk)",
         "mdm_crosswalk"),
        ("SELECT * FROM audit_log", "audit_log"),
        ("DELETE FROM v_person", "only SELECT"),
        ("SELECT 1; DROP TABLE mdm_person", "one statement"),
        ("ATTACH 'x.db' AS x", "only SELECT"),
        ("SELECT load_extension('x')", "LOAD_EXTENSION"),
        ("", "empty"),
    ],
)  # fmt: skip
def test_analyst_query_refuses_what_it_must(
    city: CityConfig, env: pytest.MonkeyPatch, sql: str, reason: str
) -> None:
    with pytest.raises(QueryRefused, match=re.escape(reason)):
        run_query(city, sql)


def test_sqlite_guard_holds_without_the_text_check(city: CityConfig) -> None:
    """The read-only connection and its authorizer refuse on their own."""
    engine = wh.engine_for(warehouse_url(city))
    try:
        with pytest.raises(QueryRefused, match="mdm_person"):
            _fetch_sqlite(engine, "SELECT name FROM mdm_person", "analyst")
        with pytest.raises(QueryRefused, match="only reads"):
            _fetch_sqlite(engine, "CREATE TEMP VIEW x AS SELECT 1", "analyst")
        with pytest.raises((QueryRefused, sqlite3.Error, AccessError)):
            _fetch_sqlite(engine, "DELETE FROM mdm_run", "privileged")  # mode=ro
        _, rows = _fetch_sqlite(engine, "SELECT count(*) FROM v_person", "analyst")
        assert rows[0][0] > 0
    finally:
        engine.dispose()


def test_analyst_query_reads_the_views_and_privileged_needs_the_file_owner(
    city: CityConfig, env: pytest.MonkeyPatch
) -> None:
    result = run_query(
        city, "WITH p AS (SELECT * FROM v_person) SELECT master_id, name, id_number FROM p"
    )
    assert len(result.frame) > 0 and result.role == "analyst"
    assert result.relations == {"v_person"}
    with env.context() as other:  # someone who can read the file but does not own it
        other.setattr(os, "geteuid", lambda: _owner(city) + 4242)
        with pytest.raises(AccessDenied, match="does not own the warehouse file"):
            run_query(city, "SELECT * FROM mdm_person", privileged=True)
        other.setenv("GOVMDM_USER", audit.os_user())  # naming yourself grants nothing
        with pytest.raises(AccessDenied):
            run_query(city, "SELECT * FROM mdm_person", privileged=True)
    with pytest.raises(QueryRefused):  # the owner, but without the flag: still masked
        run_query(city, "SELECT id_number FROM mdm_person")
    full = run_query(
        city, "SELECT id_number FROM mdm_person WHERE id_number IS NOT NULL", privileged=True
    )
    assert full.role == "privileged" and find_clear(_text_of_frame(full.frame))


def _owner(city: CityConfig) -> int:
    return os.stat(warehouse_url(city).removeprefix("sqlite:///")).st_uid


# --- PostgreSQL: real roles and grants ---------------------------------------------------------


@pytest.fixture
def pg_city(
    city: CityConfig, pg_database: str, env: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[CityConfig, str]]:
    """The night in PostgreSQL with roles named after the database (roles are cluster-wide),
    and GOVMDM_ANALYST_URL set to an analyst's own login, made the README's way."""
    import yaml

    db = sa.make_url(pg_database).database
    roles = {k: f"{db}_{k}" for k in ("analyst", "privileged", "steward")}
    shutil.copytree(city.root / "config", tmp_path / "config")
    policy = tmp_path / "config" / "catalog.yaml"
    doc = yaml.safe_load(policy.read_text(encoding="utf-8")) | {"roles": roles}
    policy.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    mine = load_city_config(tmp_path / "config")
    login = f"{db}_login"
    admin = _engine(pg_database)
    try:
        copy_warehouse(mine, pg_database)
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {login} LOGIN IN ROLE {roles['analyst']}")
        env.setenv("GOVMDM_WAREHOUSE_URL", pg_database)
        login_url = sa.make_url(pg_database).set(username=login)
        env.setenv(ANALYST_URL_ENV, login_url.render_as_string(hide_password=False))
        yield mine, pg_database
    finally:
        with admin.begin() as conn:
            for role in (login, *roles.values()):
                if conn.exec_driver_sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'").first():
                    conn.exec_driver_sql(f"DROP OWNED BY {role}")
                    conn.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


def test_postgres_analyst_login_is_refused_the_tables_and_reads_the_views(
    pg_city: tuple[CityConfig, str],
) -> None:
    city, url = pg_city
    login = f"govmdm_test_analyst_{uuid.uuid4().hex[:8]}"
    admin = _engine(url)
    with admin.begin() as conn:
        analyst_role = load_share_policy(city).roles.analyst
        conn.exec_driver_sql(f"CREATE ROLE {login} LOGIN IN ROLE {analyst_role}")
    analyst = _engine(sa.make_url(url).set(username=login, password=None))
    try:
        with analyst.connect() as conn:
            assert conn.exec_driver_sql("SELECT current_user").scalar() == login
            for relation in ("mdm_person", "mdm_enterprise", "mdm_crosswalk", "mdm_provenance",
                             "mdm_relationship", "mdm_conflict", "mdm_review_decision",
                             "v_person_full", "audit_log"):  # fmt: skip
                with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                    conn.exec_driver_sql(f"SELECT * FROM {relation} LIMIT 1")
                conn.rollback()
            persons = conn.exec_driver_sql("SELECT * FROM v_person").fetchall()
            assert len(persons) > 0
            text = "\n".join(map(str, persons))
            text += "\n".join(map(str, conn.exec_driver_sql("SELECT * FROM v_conflict")))
            assert find_clear(text) == []
            assert conn.exec_driver_sql("SELECT count(*) FROM catalog").scalar() > 0
            with pytest.raises(sa.exc.DBAPIError):
                conn.exec_driver_sql("DELETE FROM v_person")
            conn.rollback()
    finally:
        analyst.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP ROLE {login}")
        admin.dispose()
    _assert_views_equal_python(url, pg_city[0])
    for kind, values in EDGE.items():
        got = _sql_mask(url, "postgresql", kind, values)
        assert got == [None if v is None else PYTHON[kind](v) for v in values], kind


def test_postgres_query_runs_as_the_analyst_role(pg_city: tuple[CityConfig, str]) -> None:
    city, _ = pg_city
    result = run_query(city, "SELECT current_user AS u, count(*) AS n FROM v_person GROUP BY 1")
    analyst_role = load_share_policy(city).roles.analyst
    assert result.frame.iloc[0]["u"] == analyst_role and result.frame.iloc[0]["n"] > 0
    with session(city) as s:  # the database refuses on its own, without the text check
        with pytest.raises(QueryRefused, match="permission denied"):
            _fetch_postgres(s.engine, "SELECT * FROM mdm_person", "analyst")
        with pytest.raises(AccessError, match="read-only"):
            _fetch_postgres(
                s.engine, "WITH d AS (DELETE FROM mdm_run RETURNING 1) SELECT * FROM d", "analyst"
            )
    for sql in (
        "SELECT set_config('role', 'postgres', true)",
        "SELECT $$x$$",
        "SELECT E'\\'' FROM v_person",
        "SELECT * FROM pg_catalog.pg_authid, mdm_person",
    ):
        with pytest.raises(QueryRefused):
            run_query(city, sql)


def test_postgres_analyst_outputs_hold_nothing_in_clear(
    pg_city: tuple[CityConfig, str], tmp_path: Path
) -> None:
    city, _ = pg_city
    _assert_analyst_outputs_clean(city, tmp_path)


def _assert_guardians_shown(city: CityConfig) -> None:
    """v_person_relationship: each child ↔ guardian link between two masters an analyst sees,
    the guardian's ID number (the evidence) never in clear."""
    full = wh.engine_for(warehouse_url(city))
    try:
        published = wh.read(full, person_relationship_table)
    finally:
        full.dispose()
    shown = run_query(city, "SELECT * FROM v_person_relationship").frame
    visible = set(run_query(city, "SELECT master_id FROM v_person").frame["master_id"])
    guardians = published[published["kind"] == "guardian"]
    both = guardians["person_master_id"].isin(visible) & guardians["related_master_id"].isin(
        visible
    )
    assert both.sum() > 0  # the sample city files children under a guardian's ID number
    pairs = sorted(zip(shown["person_master_id"], shown["related_master_id"], strict=True))
    assert pairs == sorted(
        zip(guardians.loc[both, "person_master_id"], guardians.loc[both, "related_master_id"],
            strict=True)
    )  # fmt: skip
    assert (shown["kind"] == "guardian").all() and set(shown["evidence"]) == {SUPPRESSED}
    assert find_clear(_text_of_frame(shown)) == []
    # the child and its guardian are two masters, related, neither merged into the other
    assert (shown["person_master_id"] != shown["related_master_id"]).all()


def test_an_analyst_sees_a_childs_guardian_without_the_guardians_id(
    city: CityConfig, env: pytest.MonkeyPatch
) -> None:
    _assert_guardians_shown(city)


def test_postgres_analyst_sees_a_childs_guardian_without_the_guardians_id(
    pg_city: tuple[CityConfig, str],
) -> None:
    city, url = pg_city
    _assert_guardians_shown(city)
    login = f"{sa.make_url(url).database}_login"
    analyst = _engine(sa.make_url(url).set(username=login, password=None))
    try:
        with (
            analyst.connect() as conn,
            pytest.raises(sa.exc.ProgrammingError, match="permission denied"),
        ):
            conn.exec_driver_sql("SELECT * FROM mdm_person_relationship LIMIT 1")
    finally:
        analyst.dispose()


# --- the scan: nothing an analyst gets holds an ID or mobile number in clear -------------------


def _assert_analyst_outputs_clean(city: CityConfig, tmp_path: Path) -> None:
    texts: dict[str, str] = {}
    for spec in VIEWS:
        frame = run_query(city, f"SELECT * FROM {spec.name}").frame
        texts[f"query {spec.name}"] = _text_of_frame(frame)
    texts["query catalog"] = _text_of_frame(run_query(city, "SELECT * FROM catalog").frame)
    full = wh.engine_for(warehouse_url(city))
    try:
        persons_all = wh.read(full, wh.person_table)
        persons = persons_all[persons_all["departments"].str.contains("gongan")]
        persons = persons.dropna(subset=["id_number"]).head(25)
        firms_all = wh.read(full, wh.enterprise_table)
        firms = firms_all.dropna(subset=["uscc"]).head(10)
    finally:
        full.dispose()
    for p in persons.itertuples():
        found = lookup(city, id_number=p.id_number)
        texts[f"lookup {p.master_id}"] = json.dumps(found.to_dict(), ensure_ascii=False)
        assert [m.master_id for m in found.matches] == [p.master_id]
    for f in firms.itertuples():
        found = lookup(city, credit_code=f.uscc)
        texts[f"lookup {f.master_id}"] = json.dumps(found.to_dict(), ensure_ascii=False)
    exported = export(city, tmp_path / "export")
    for path in sorted(exported.out_dir.iterdir()):
        if path.suffix == ".parquet":
            texts[f"export {path.name}"] = _text_of_frame(pq.read_table(path).to_pandas())
        else:
            texts[f"export {path.name}"] = path.read_text(encoding="utf-8-sig")
    # what no analyst output may hold: ID, mobile, landline and card numbers, and the persons'
    # own names and street addresses (enterprise addresses are public registration data)
    known = [v for v in (*persons_all["name"].dropna(), *persons_all["address_detail"].dropna())
             if len(v) >= 3]  # fmt: skip
    # a 个体工商户's registered name carries its operator's name (福州市鼓楼区张三小吃店), published
    # in the enterprise credit register: inside it the name is public; a golden enterprise name
    # that is nothing but a person's name is not
    names = set(persons_all["name"].dropna())
    public = [n for n in firms_all["name"].dropna() if n not in names]
    leaks = {
        where: found[:3]
        for where, text in texts.items()
        if (found := find_clear(text, known=known, public=public, kinds=SCRUB_KINDS))
    }
    assert leaks == {}
    assert sum(len(t) for t in texts.values()) > 100_000  # the scan did see the data


def test_analyst_outputs_hold_nothing_in_clear(
    city: CityConfig, env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _assert_analyst_outputs_clean(city, tmp_path)
    # and the same through the command line
    runner = CliRunner()
    args = ["--config", str(ROOT / "config")]
    for cmd in (["query", "SELECT * FROM v_person", "--format", "csv"],
                ["query", "SELECT * FROM v_enterprise", "--format", "table", "--max-rows", "500"],
                ["catalog", "--format", "json"]):  # fmt: skip
        out = runner.invoke(app, [*cmd, *args], env={"GOVMDM_VAR": str(city.var_dir)})
        assert out.exit_code == 0, out.output
        assert find_clear(out.output, kinds=SCRUB_KINDS) == [], cmd


# --- pseudonyms, exports, the data dictionary --------------------------------------------------


def test_pseudonymized_export_keeps_joins_and_hides_identifiers(
    city: CityConfig, env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(PseudonymKeyMissing, match=PSEUDONYM_KEY_ENV):
        export(city, tmp_path / "none", pseudonymize=True)
    env.setenv(PSEUDONYM_KEY_ENV, KEY)
    out = export(city, tmp_path / "a", pseudonymize=True)
    person = pd.read_parquet(out.files["person"])
    firm = pd.read_parquet(out.files["enterprise"])
    rel = pd.read_parquet(out.files["relationship"])
    xw = pd.read_parquet(out.files["crosswalk"])
    clear_rel = run_query(city, "SELECT * FROM v_relationship").frame
    assert len(rel.merge(person, left_on="person_master_id", right_on="master_id")) == len(
        clear_rel
    )
    assert len(rel.merge(firm, left_on="enterprise_master_id", right_on="master_id")) == len(
        clear_rel
    )
    assert set(xw["master_id"]) == set(person["master_id"]) | set(firm["master_id"])
    assert (person["name"].dropna() == "****").all() and person["birth_date"].str.len().max() == 9
    clear = _read(warehouse_url(city), "SELECT master_id, id_number, name FROM mdm_person "
                  "WHERE departments LIKE '%gongan%'")  # fmt: skip
    row = clear.dropna().iloc[0]
    token = pseudonym(row["master_id"], KEY.encode())
    mine = person.set_index("master_id").loc[token]
    assert mine["id_number"] == pseudonym(row["id_number"], KEY.encode())
    assert mine["name"] == "****"
    reps = firm.dropna(subset=["legal_rep_master_id"]).merge(
        person, left_on="legal_rep_master_id", right_on="master_id", suffixes=("", "_p")
    )
    assert len(reps) > 0 and (reps["legal_rep_id"] == reps["id_number"]).all()
    text = "\n".join(_text_of_frame(pd.read_parquet(p)) for p in out.files.values())
    assert not re.search(r"\b[PE]\d{10}\b", text) and find_clear(text, kinds=SCRUB_KINDS) == []
    env.setenv(PSEUDONYM_KEY_ENV, KEY + "-other-recipient")
    other = export(city, tmp_path / "b", pseudonymize=True, views=["v_person"])
    assert set(pd.read_parquet(other.files["person"])["master_id"]).isdisjoint(person["master_id"])


def test_export_writes_typed_parquet_and_a_data_dictionary(
    city: CityConfig, env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = export(city, tmp_path / "x")
    assert set(out.files) == {v.export_name for v in VIEWS}
    schema = pq.read_schema(out.files["person"])
    assert str(schema.field("birth_date").type) == "string"  # a band: 1970-1974
    firm_schema = pq.read_schema(out.files["enterprise"])
    assert str(firm_schema.field("established_date").type) == "date32[day]"
    assert schema.field("id_number").metadata[b"description"].decode() == "公民身份号码"
    assert str(pq.read_schema(out.files["enterprise"]).field("registered_capital").type) == (
        "decimal128(20, 4)"
    )
    dictionary = pd.read_parquet(out.dictionary)
    row = dictionary.set_index(["table", "column"]).loc[("mdm_person", "phone")]
    assert bool(row["masked"]) and row["authority"] == "weijian"
    assert row["description"] == "联系电话"
    assert (tmp_path / "x" / "data_dictionary.csv").is_file()
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert manifest["night"] == NIGHT and manifest["role"] == "analyst"
    with env.context() as other:
        other.setattr(os, "geteuid", lambda: _owner(city) + 4242)
        with pytest.raises(AccessDenied):
            export(city, tmp_path / "y", privileged=True)
    full = export(city, tmp_path / "z", privileged=True, views=["v_person"])
    assert find_clear(_text_of_frame(pd.read_parquet(full.files["person"])))
    assert str(pq.read_schema(full.files["person"]).field("birth_date").type) == "date32[day]"


# --- catalog -----------------------------------------------------------------------------------


def test_catalog_comes_from_config(city: CityConfig, env: pytest.MonkeyPatch) -> None:
    resources = {r.resource_id: r for r in build_catalog(city)}
    assert set(resources) >= {"mdm_person", "mdm_enterprise", "gongan/t_rk_jbxx",
                              "weijian/PATIENT_INFO", "shuiwu/纳税人登记信息"}  # fmt: skip
    assert len(resources) == len(VIEWS) + sum(len(d.tables) for d in city.departments)
    assert resources["weijian/PATIENT_INFO"].share_type == "not_shared"
    assert resources["mdm_enterprise"].share_type_zh == "无条件共享"
    assert resources["renshe/insured_person"].share_type == "conditional"  # the default
    gongan = resources["gongan/t_rk_jbxx"]
    assert gongan.owner == "市公安局" and gongan.update_frequency == "daily"
    assert "id_number" in gongan.authority_for
    fields = {f.name: f for f in gongan.fields}
    assert fields["sfzh"].maps_to == "id_number" and fields["sfzh"].authority == "gongan"
    person = {f.name: f for f in resources["mdm_person"].fields}
    assert person["phone"].authority == "weijian" and person["phone"].masked
    assert "k" in (person["sex"].masked or "")  # generalised with the other quasi-identifiers
    assert person["status"].masked is None
    rows = run_query(
        city, "SELECT field, share_type FROM catalog WHERE resource_id = 'weijian/PATIENT_INFO'"
    ).frame
    assert len(rows) > 0 and set(rows["share_type"]) == {"not_shared"}


def test_share_policy_is_validated(city: CityConfig, tmp_path: Path) -> None:
    bad = city.model_copy(update={"root": tmp_path, "config_dir": tmp_path / "config"})
    (tmp_path / "config").mkdir()
    path = tmp_path / "config" / "catalog.yaml"
    path.write_text("resources:\n  mdm_persons: {share_type: unconditional}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mdm_persons: no such resource"):
        load_share_policy(bad)
    path.write_text("resources:\n  mdm_person: {share_type: conditional}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="condition"):
        load_share_policy(bad)
    path.write_text("privileged_users: [wang]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="privileged_users is no longer read"):
        load_share_policy(bad)
    path.write_text("roles: {analyst: wang; DROP TABLE x}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"roles\.analyst"):
        load_share_policy(bad)


# --- explain, audit ----------------------------------------------------------------------------


def test_explain_can_be_masked_for_analysts(city: CityConfig) -> None:
    conflicts = _read(warehouse_url(city), "SELECT master_id FROM mdm_conflict WHERE "
                      "entity = 'person' AND attribute IN ('phone', 'name') "
                      "AND department <> 'weijian'")  # fmt: skip
    ex = explain(city, conflicts["master_id"].iloc[0])
    assert find_clear(repr(ex)) != [] or any(a["attribute"] == "name" for a in ex.attributes)
    masked = mask_explanation(ex, release_of(city))
    assert find_clear(repr(masked)) == []
    name = next(a for a in ex.attributes if a["attribute"] == "name")["value"]
    assert name not in repr(masked)
    assert any(n.startswith("conflict:") for n in masked.notes)


def test_audit_rows_for_each_action(
    city: CityConfig, env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env.setenv("GOVMDM_USER", "王芳")  # names nobody: the log says who the OS says
    run_query(city, "SELECT count(*) FROM v_person")
    with pytest.raises(QueryRefused):
        run_query(city, "SELECT id_number FROM mdm_person WHERE id_number = "
                         "'350121197403155015'")  # fmt: skip
    firm = _read(warehouse_url(city), "SELECT master_id, uscc FROM mdm_enterprise").iloc[0]
    lookup(city, credit_code=firm["uscc"])
    export(city, tmp_path / "audit", views=["v_id_event"])
    engine = wh.engine_for(warehouse_url(city))
    try:
        with engine.begin() as conn:  # the review-decision hook: in the decision's transaction
            audit.record(conn, "review_decide", "person a ~ b", role="steward",
                         detail={"decision": "link"})  # fmt: skip
        with pytest.raises(RuntimeError), engine.begin() as conn:
            audit.record(conn, "review_decide", "person c ~ d")
            raise RuntimeError("the decision failed: its audit row goes too")
        rows = audit.entries(engine, user=audit.os_user(), limit=20)
        everything = audit.entries(engine, limit=1000)
    finally:
        engine.dispose()
    actions = {(r["action"], r["outcome"]) for r in rows}
    assert {("query", "ok"), ("query", "refused"), ("lookup", "ok"), ("export", "ok"),
            ("review_decide", "ok")} <= actions  # fmt: skip
    assert not any(r["target"] == "person c ~ d" for r in rows)
    assert any(r["action"] == "publish" and r["who"] for r in everything)
    lookup_row = next(r for r in rows if r["action"] == "lookup")
    assert lookup_row["detail"]["master_ids"] == [firm["master_id"]]
    assert lookup_row["detail"]["os_user"] == audit.os_user()
    assert find_clear(json.dumps(rows, ensure_ascii=False, default=str)) == []
    runner = CliRunner()
    out = runner.invoke(
        app, ["audit", "list", "--format", "json", "--config", str(ROOT / "config")],
        env={"GOVMDM_VAR": str(city.var_dir), "GOVMDM_USER": "王芳"},
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    listed = json.loads(out.output)
    # the file's owner sees everyone's entries (here also a refused non-owner's)
    assert listed and audit.os_user() in {r["who"] for r in listed}


# --- de-identification: no combination of released columns singles anyone out ------------------

QUASI = ("name", "id_number", "sex", "birth_date", "phone", "address", "province", "city",
         "district", "division_code", "ethnicity")  # fmt: skip


def _digits(value: Any) -> str:
    return re.sub(r"\D", "", "" if value is None else str(value))


def _consistent(column: str, shown: Any, truth: Any) -> bool:
    """Whether a released value could be this person's true value (what an attacker who knows
    the person checks)."""
    if shown is None or (isinstance(shown, float) and pd.isna(shown)):
        return truth is None or (isinstance(truth, float) and pd.isna(truth))
    shown = str(shown)
    if set(shown) <= {"*"} or re.fullmatch(r"[0-9a-f]{32}", shown):  # suppressed, or a token
        return True
    if truth is None or (isinstance(truth, float) and pd.isna(truth)):
        return False
    truth = str(truth)
    if column == "birth_date":
        band = re.fullmatch(r"(\d{4})-(\d{4})", shown)
        if band:
            return int(band[1]) <= int(truth[:4]) <= int(band[2])
        return shown[:10] == truth[:10]
    if column == "ethnicity" and shown == "少数民族":
        return truth != "汉族"
    if column == "address":
        return truth.startswith(shown.rstrip("*")) or shown.rstrip("*") == ""
    if "*" in shown:  # a mask: every shown character must be the person's
        t = _digits(truth) if column == "phone" else truth
        return len(shown) == len(t) and all(a in ("*", b) for a, b in zip(shown, t, strict=True))
    return shown == truth


def _assert_deidentified(released: pd.DataFrame, truth: pd.DataFrame, k: int, where: str) -> None:
    """The issue's attacks on a masked release of persons: rebuild ID numbers from the ID's
    shown digits and the birth date; find a released combination held by fewer than k rows;
    and, knowing a person's ID, name, phone, sex, birth date, residence and ethnicity, narrow
    the release down to fewer than k rows."""
    released = released.astype(object).where(released.notna(), None)
    # a keyed pseudonym identifies no one without the key (which stays on the platform): like
    # master_id it is not a quasi-identifier
    released = released.map(lambda v: "****" if isinstance(v, str)
                            and re.fullmatch(r"[0-9a-f]{32}", v) else v)  # fmt: skip
    ids = set(truth["id_number"].dropna())
    rebuilt = {
        _digits(r["id_number"])[:6] + _digits(r["birth_date"])[:8] + str(r["id_number"])[-4:]
        for r in released.to_dict("records")
        if r["id_number"] and r["birth_date"]
    }
    assert rebuilt & ids == set(), f"{where}: {len(rebuilt & ids)} ID numbers rebuilt"
    sizes = released.groupby(list(QUASI), dropna=False).size()
    assert sizes.min() >= k, f"{where}: a combination held by {sizes.min()} rows:\n{sizes.idxmin()}"
    shown = released[list(QUASI)].drop_duplicates()
    counts = released.groupby(list(QUASI), dropna=False).size().to_dict()
    narrowest = len(released)
    for person in truth.to_dict("records"):
        candidates = sum(
            counts[tuple(row)]
            for row in shown.itertuples(index=False)
            if all(_consistent(c, v, person[c]) for c, v in zip(QUASI, row, strict=True))
        )
        assert candidates != 0, f"{where}: {person['master_id']} matches no row at all"
        narrowest = min(narrowest, candidates)
    assert narrowest >= k, f"{where}: a person narrowed down to {narrowest} rows"


def _visible_truth(city: CityConfig) -> pd.DataFrame:
    """The published persons (in clear) that the analyst views release."""
    truth = _read(warehouse_url(city), "SELECT * FROM mdm_person")
    truth["birth_date"] = truth["birth_date"].astype(str)
    shown = set(run_query(city, "SELECT master_id FROM v_person").frame["master_id"])
    return truth[truth["master_id"].isin(shown)].astype(object).where(truth.notna(), None)


def _assert_no_person_attribute_in_other_views(city: CityConfig) -> None:
    """What the other views say of persons cannot be joined back to v_person to learn more."""
    conflicts = run_query(city, "SELECT attribute, value, authority_value FROM v_conflict "
                                 "WHERE entity = 'person'").frame  # fmt: skip
    personal = conflicts[conflicts["attribute"].isin(QUASI)]
    assert len(personal) > 0
    assert set(personal["value"].dropna()) | set(personal["authority_value"].dropna()) == {"****"}
    firms = run_query(city, "SELECT legal_rep_id FROM v_enterprise").frame
    assert set(firms["legal_rep_id"].dropna()) == {"****"}
    reps = run_query(city, "SELECT evidence FROM v_relationship "
                            "WHERE kind = 'legal_representative'").frame  # fmt: skip
    assert len(reps) > 0 and set(reps["evidence"]) == {"****"}


def test_masked_views_and_exports_resist_reidentification(
    city: CityConfig, env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    k = release_of(city).k
    truth = _visible_truth(city)
    released = run_query(city, "SELECT * FROM v_person").frame
    assert len(released) == len(truth) > 500
    _assert_deidentified(released, truth, k, "v_person")
    exported = export(city, tmp_path / "plain", views=["v_person"])
    _assert_deidentified(pd.read_parquet(exported.files["person"]), truth, k, "person.parquet")
    env.setenv(PSEUDONYM_KEY_ENV, KEY)
    tokens = export(city, tmp_path / "tokens", views=["v_person"], pseudonymize=True)
    _assert_deidentified(pd.read_parquet(tokens.files["person"]), truth, k, "pseudonymized")
    _assert_no_person_attribute_in_other_views(city)
    # still useful in a 600-person city: nearly everyone keeps sex and a birth band, and the
    # larger classes their district too (the 5,000-person demo keeps it for 9 in 10)
    assert (released["birth_date"].dropna() != "****").mean() > 0.95
    assert (released["district"].dropna() != "****").mean() > 0.15
    # explain, for an analyst, shows no more than the views
    for person in truth.head(15).to_dict("records"):
        shown = repr(mask_explanation(explain(city, person["master_id"]), release_of(city)))
        assert person["birth_date"][:10] not in shown and mask_id(person["id_number"]) not in shown
        assert person["name"] not in shown and mask_name(person["name"]) not in shown


def test_postgres_masked_views_resist_reidentification(pg_city: tuple[CityConfig, str]) -> None:
    city, _ = pg_city
    truth = _visible_truth(city)
    released = run_query(city, "SELECT * FROM v_person").frame
    _assert_deidentified(released, truth, release_of(city).k, "v_person on PostgreSQL")
    _assert_no_person_attribute_in_other_views(city)
    sqlite_view = _read(warehouse_url(city).replace(warehouse_url(city), _sqlite_url(city)),
                        "SELECT * FROM v_person ORDER BY master_id")  # fmt: skip
    pg_view = released.sort_values("master_id").reset_index(drop=True)
    for column in QUASI:  # the same release on both warehouses
        assert (pg_view[column].astype(object).where(pg_view[column].notna(), None).tolist()
                == sqlite_view[column].astype(object).where(sqlite_view[column].notna(), None)
                .tolist()), column  # fmt: skip


def _sqlite_url(city: CityConfig) -> str:
    return f"sqlite:///{city.var_dir / 'warehouse' / 'govmdm.sqlite'}"


# --- 不予共享: the share type decides what the analyst sees --------------------------------------


def _with_share(city: CityConfig, tmp_path: Path, share_type: str) -> CityConfig:
    """The city with weijian/PATIENT_INFO shared as ``share_type`` (a copy of config/)."""
    import shutil

    root = tmp_path / f"project-{share_type}"
    shutil.copytree(ROOT / "config", root / "config")
    path = root / "config" / "catalog.yaml"
    text = path.read_text(encoding="utf-8").replace(
        "  weijian/PATIENT_INFO:\n    share_type: not_shared",
        f"  weijian/PATIENT_INFO:\n    share_type: {share_type}\n    condition: 仅限测试",
    )
    path.write_text(text, encoding="utf-8")
    return load_city_config(root / "config")


def _weijian_seen(city: CityConfig) -> dict[str, int]:
    q = {
        "crosswalk": "SELECT count(*) FROM v_crosswalk WHERE department = 'weijian'",
        "provenance": "SELECT count(*) FROM v_provenance WHERE department = 'weijian'",
        "conflicts": "SELECT count(*) FROM v_conflict WHERE department = 'weijian'",
        "membership": "SELECT count(*) FROM v_person WHERE departments LIKE '%weijian%'",
    }
    return {k: int(run_query(city, sql).frame.iloc[0, 0]) for k, sql in q.items()}


def test_not_shared_sources_are_withheld_from_analysts(
    city: CityConfig, env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert release_of(city).hidden == {("weijian", "PATIENT_INFO")}
    clear = _read(warehouse_url(city), "SELECT count(*) AS n FROM mdm_crosswalk "
                  "WHERE department = 'weijian'")  # fmt: skip
    assert clear["n"].iloc[0] > 100
    assert _weijian_seen(city) == {"crosswalk": 0, "provenance": 0, "conflicts": 0, "membership": 0}
    # membership does not show through the counts either
    persons = run_query(city, "SELECT master_id, member_count FROM v_person").frame
    visible = run_query(city, "SELECT master_id, count(*) AS n FROM v_crosswalk "
                               "WHERE entity = 'person' GROUP BY master_id").frame  # fmt: skip
    merged = persons.merge(visible, on="master_id", how="left")
    assert (merged["member_count"] == merged["n"]).all()
    counts = run_query(city, "SELECT candidates, agreeing FROM v_provenance").frame
    assert counts["candidates"].isna().all() and counts["agreeing"].isna().all()
    # a person known only to weijian is not there at all: not in v_person, lookup, explain
    only = _read(warehouse_url(city), "SELECT master_id, id_number FROM mdm_person "
                 "WHERE departments = 'weijian' AND id_number IS NOT NULL")  # fmt: skip
    assert len(only) > 0
    hidden = only.iloc[0]
    assert run_query(city, f"SELECT * FROM v_person WHERE master_id = "
                            f"'{hidden['master_id']}'").frame.empty  # fmt: skip
    assert run_query(city, f"SELECT * FROM v_id_event WHERE master_id = "
                            f"'{hidden['master_id']}'").frame.empty  # fmt: skip
    assert lookup(city, id_number=hidden["id_number"]).matches == []
    with pytest.raises(NotShared):
        mask_explanation(explain(city, hidden["master_id"]), release_of(city))
    # a person also known to gongan: explained without weijian's rows, links or conflicts
    both = _read(warehouse_url(city), "SELECT master_id FROM mdm_person "
                 "WHERE departments = 'gongan,weijian'")["master_id"].iloc[0]  # fmt: skip
    shown = mask_explanation(explain(city, both), release_of(city))
    assert "weijian" not in repr(shown) and shown.members
    # the privileged role (here: the warehouse file's owner), for its legal duty, sees all
    full = run_query(
        city, "SELECT count(*) FROM v_crosswalk_full WHERE department = 'weijian'", privileged=True
    )
    assert int(full.frame.iloc[0, 0]) == clear["n"].iloc[0]
    # and the share type decides: shared, weijian's rows are there for analysts
    shared = _with_share(city, tmp_path, "conditional")
    engine = wh.engine_for(warehouse_url(shared))
    try:
        install_views(engine, shared)
        seen = _weijian_seen(shared)
        assert seen["crosswalk"] == clear["n"].iloc[0] and seen["membership"] > 0
    finally:
        install_views(engine, city)
        engine.dispose()


def test_postgres_analyst_login_sees_no_not_shared_source(pg_city: tuple[CityConfig, str]) -> None:
    city, url = pg_city
    login = f"govmdm_test_share_{uuid.uuid4().hex[:8]}"
    admin = _engine(url)
    with admin.begin() as conn:
        analyst_role = load_share_policy(city).roles.analyst
        conn.exec_driver_sql(f"CREATE ROLE {login} LOGIN IN ROLE {analyst_role}")
    analyst = _engine(sa.make_url(url).set(username=login, password=None))
    try:
        with analyst.connect() as conn:
            where = {
                "v_crosswalk": "department = 'weijian'",
                "v_conflict": "department = 'weijian'",
                "v_provenance": "department = 'weijian'",
                "v_person": "strpos(departments, 'weijian') > 0",
            }
            for view, condition in where.items():
                sql = f"SELECT count(*) FROM {view} WHERE {condition}"
                assert conn.exec_driver_sql(sql).scalar() == 0, sql
    finally:
        analyst.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP ROLE {login}")
        admin.dispose()


# --- pseudonym keys, markup, the review queue ---------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["aaaaaaaaaaaaaaaa", "abababababababababababab", "0123456789abcdefghij",
     "Passw0rd!Passw0rd!Passw0rd!", "1111111111111111111111111111111111111111"],
)  # fmt: skip
def test_a_predictable_pseudonym_key_is_refused(key: str, env: pytest.MonkeyPatch) -> None:
    env.setenv(PSEUDONYM_KEY_ENV, key)
    with pytest.raises(PseudonymKeyMissing, match="too predictable"):
        pseudonym_key()


def test_a_random_pseudonym_key_is_accepted(env: pytest.MonkeyPatch) -> None:
    import secrets

    for key in (secrets.token_hex(16), secrets.token_urlsafe(24), KEY):
        env.setenv(PSEUDONYM_KEY_ENV, key)
        assert pseudonym_key() == key.encode()


def _copy_var(city: CityConfig, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "var"
    shutil.copytree(city.var_dir, target)
    return target


def test_markup_in_the_data_is_shown_not_applied(city: CityConfig, tmp_path: Path) -> None:
    var = _copy_var(city, tmp_path)
    url = f"sqlite:///{var / 'warehouse' / 'govmdm.sqlite'}"
    firm = _read(url, "SELECT master_id, uscc FROM mdm_enterprise WHERE uscc IS NOT NULL").iloc[0]
    evil = "K3[/x] [link=https://example.org/x]点我[/link] [bold red]"
    engine = _engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE mdm_enterprise SET name = ? WHERE master_id = ?",
                             (evil, firm["master_id"]))  # fmt: skip
    engine.dispose()
    runner = CliRunner()
    env = {"GOVMDM_VAR": str(var), "COLUMNS": "400"}
    args = ["--config", str(ROOT / "config")]
    for cmd in (
        ["query", f"SELECT name, '[/y]' AS \"[b]col\" FROM v_enterprise WHERE master_id = "
                  f"'{firm['master_id']}'"],
        ["explain", firm["master_id"]],
        ["lookup", "--credit-code", firm["uscc"]],
    ):  # fmt: skip
        out = runner.invoke(app, [*cmd, *args], env=env)
        assert out.exit_code == 0, (cmd, out.output, out.exception)
        assert "K3[/x]" in out.output and "[link=https://example.org/x]" in out.output, cmd
        assert "\x1b]8;" not in out.output  # no live hyperlink escape
    out = runner.invoke(app, ["query", 'SELECT * FROM "[/x]"', *args], env=env)
    assert out.exit_code == 1 and "[/x]" in out.output  # an error quoting the input prints too


def test_review_list_masks_record_ids(city: CityConfig, tmp_path: Path) -> None:
    var = _copy_var(city, tmp_path)
    url = f"sqlite:///{var / 'warehouse' / 'govmdm.sqlite'}"
    person = _read(url, "SELECT master_id, id_number FROM mdm_person "
                   "WHERE id_number IS NOT NULL").iloc[0]  # fmt: skip
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(wh.review_queue_table.insert(), {
            "entity": "person", "left_record": f"renshe/insured_person/{person['id_number']}",
            "right_record": "gongan/t_rk_jbxx/13812345678", "left_master_id": person["master_id"],
            "right_master_id": "P0000000002", "probability": 0.9, "run_id": NIGHT,
            "weights": json.dumps({"name": {"level": 3, "weight": 4.2}}),
        })  # fmt: skip
    engine.dispose()
    out = CliRunner().invoke(
        app, ["review", "list", "--config", str(ROOT / "config")],
        env={"GOVMDM_VAR": str(var), "COLUMNS": "300"},
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert mask_id(person["id_number"]) in out.output and "138****5678" in out.output
    assert find_clear(out.output) == []
