"""Analysts' access to the golden tables: masked views, roles, pseudonyms, guarded queries.

**Views.** Every published table an analyst may read has two views in the warehouse:
``v_person`` (masked) and ``v_person_full`` (as published), likewise ``v_enterprise``,
``v_provenance``, ``v_crosswalk``, ``v_relationship``, ``v_conflict`` and ``v_id_event``; plus the
``catalog`` table (信息资源目录). The masked views are a de-identified release built in SQL (the
same on SQLite and PostgreSQL) from the per-field policy of :mod:`fields.masking`: a person's
name, ID number, phone and street address are not released; sex, birth date, residence and
ethnicity are generalised together so that every combination in ``v_person`` stands for at
least k persons (``k_anonymity`` in ``config/catalog.yaml``); conflict values and source keys
release nothing ``v_person`` leaves out. Sources the catalog does not share (不予共享) are
withheld: their rows, their values and membership in them. Enterprise names, credit codes and
business addresses are public registration data and stay.

**Roles.** On PostgreSQL :func:`install_views` creates the roles ``govmdm_analyst`` (SELECT on
the masked views and ``catalog`` only), ``govmdm_privileged`` (also everything published and the
whole audit log, never a write) and ``govmdm_steward`` (the review queue, and decisions through
one function); names from ``roles:`` in ``config/catalog.yaml``. Nobody is made a member of
them by govmdm: a DBA gives each person a login in one of them (``CREATE ROLE wang LOGIN ... IN
ROLE govmdm_analyst``).

**Whose connection.** Analysts' commands (query, export, lookup, audit list, review) run on the
caller's *own* login (``GOVMDM_ANALYST_URL``, else ``GOVMDM_WAREHOUSE_URL``), never on the
pipeline's owner login: they refuse a login that could become a superuser, the tables' owner or
any role that may write them (:func:`session`), so a query that escapes ``SET ROLE`` by any trick
finds nothing above the login. ``statement_timeout`` bounds every statement and the backend of a
client that dies is cancelled. On SQLite the file's permissions are the only boundary, and the
tool says so: the file's owner (by OS user ID) is privileged and steward, everyone else an
analyst, and ``govmdm query`` opens the file read-only with an authorizer and a time limit.

**Privilege** comes from the database (membership of the privileged role) or the OS user ID,
never from an environment variable or a config file the caller can point elsewhere.

**Pseudonyms.** Extracts that leave the platform can replace master IDs, ID numbers and source
keys by HMAC-SHA256 tokens keyed by ``GOVMDM_PSEUDONYM_KEY``: the same value gives the same
token in every table and every extract made with that key, so joins still work.

>>> install_views(engine, city).views[:2]
['v_person', 'v_enterprise']
>>> run_query(city, "SELECT name, id_number, birth_date FROM v_person").frame.iloc[0].tolist()
['****', '****', '1985-1989']
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from access import audit
from etl.config import CityConfig, ConfigError, load_yaml_model
from etl.state import warehouse_url
from fields.masking import (
    MASK_DESCRIPTIONS,
    POLICY,
    RELEASE_DESCRIPTIONS,
    SUPPRESSED,
    find_clear,
    mask_id,
    mask_name,
    mask_phone,
    mask_text,
    policy,
    release_field,
)
from store.tables import (
    PUBLISHED_TABLES,
    conflict_table,
    crosswalk_table,
    enterprise_table,
    id_event_table,
    metadata,
    person_table,
    provenance_table,
    relationship_table,
    review_queue_table,
    run_table,
)

log = logging.getLogger(__name__)

Role = Literal["analyst", "privileged"]
ShareType = Literal["unconditional", "conditional", "not_shared"]
Dialect = Literal["sqlite", "postgresql"]

ANALYST_ROLE = "govmdm_analyst"
PRIVILEGED_ROLE = "govmdm_privileged"
STEWARD_ROLE = "govmdm_steward"
_ROLE_NAME = r"^[a-z_][a-z0-9_]{0,62}$"
ANALYST_URL_ENV = "GOVMDM_ANALYST_URL"
PSEUDONYM_KEY_ENV = "GOVMDM_PSEUDONYM_KEY"
POLICY_FILE = "catalog.yaml"
CATALOG_TABLE = "catalog"
_MIN_KEY_BYTES = 16
_MIN_KEY_BITS = 64


class AccessError(Exception):
    """Something an analyst asked for that cannot be done, with what to do instead."""


class AccessDenied(AccessError):
    """The caller may not do this (``--privileged`` without being a privileged user)."""


class QueryRefused(AccessError):
    """A statement that is not a single read of what the caller's role may read."""


class AccessSetupError(AccessError):
    """The warehouse lacks the views or roles: ``govmdm views install`` (or a DBA) is needed."""


class PseudonymKeyMissing(AccessError):
    """``GOVMDM_PSEUDONYM_KEY`` is unset or too short."""


# --- what each view masks and pseudonymizes ------------------------------------------------------

MASKS: dict[str, str] = {
    "hidden": RELEASE_DESCRIPTIONS["suppress"],
    "withheld": RELEASE_DESCRIPTIONS["suppress"] + "，有无取值也不发布",
    "kanon": RELEASE_DESCRIPTIONS["generalise"],
    "name": f"脱敏：{MASK_DESCRIPTIONS['name']}",
    "key": "脱敏：键值为身份证号或手机号时不发布（****）",
    "evidence": "脱敏：法定代表人身份证号不发布（****）",
    "conflict": "脱敏：按字段的发布规则（个人的身份证号、电话、姓名、住址、出生日期、性别、民族"
    "不发布）",
    "counts": "不予共享的来源存在时不发布（会暴露其记录）",
    "departments": "仅列出可共享来源的部门，不予共享的来源不计入",
}
"""Mask kinds of the analyst views → what an analyst sees (for the data dictionary and the
catalog). Each golden column's kind comes from :data:`fields.masking.POLICY`."""

PSEUDONYMS: dict[str, str] = {
    "master_id": "主数据标识",
    "master_ids": "逗号分隔的主数据标识",
    "id": "身份证号",
    "record": "源记录（部门/表/键）",
    "evidence": "法定代表人身份证号",
    "conflict": "身份证号类冲突值",
}
"""Pseudonym kinds → what the HMAC token replaces."""

_ID_ATTRS = ("id_number", "legal_rep_id")
_RELEASE_KIND = {"suppress": "hidden", "generalise": "kanon", "mask": "name"}
QUASI_IDENTIFIERS = ("sex", "birth_date", "division_code", "address", "province", "city",
                     "district", "ethnicity")  # fmt: skip
"""The person columns generalised together for k-anonymity in ``v_person``."""
DEFAULT_K = 5


def _golden_masks(entity: str, table: sa.Table) -> dict[str, str]:
    """The masked view's kind for each column of a golden table, from the masking policy."""
    out = {}
    for column in table.columns:
        rule = policy(entity, column.name)
        if rule.release == "mask" and rule.mask != "name":
            raise ValueError(f"no SQL mask for {entity}.{column.name} ({rule.mask})")
        if rule.release != "clear":
            out[column.name] = _RELEASE_KIND[rule.release]
        if entity == "person" and rule.release == "suppress":
            # whether a person has a phone or an ID number would single people out as well
            out[column.name] = "withheld"
    out.update({"member_count": "departments", "departments": "departments"})
    return out


@dataclass(frozen=True)
class ViewSpec:
    """One published table as analysts see it: its masked columns and, for extracts, the
    columns replaced by keyed pseudonyms."""

    name: str
    table: sa.Table
    export_name: str
    masks: Mapping[str, str] = field(default_factory=dict)
    pseudonyms: Mapping[str, str] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        """The unmasked view, for the privileged role."""
        return f"{self.name}_full"

    @property
    def columns(self) -> list[str]:
        """The view's columns: the table's, in order."""
        return [c.name for c in self.table.columns]


VIEWS: tuple[ViewSpec, ...] = (
    ViewSpec(
        "v_person",
        person_table,
        "person",
        masks=_golden_masks("person", person_table),
        pseudonyms={"master_id": "master_id", "employer_master_id": "master_id",
                    "id_number": "id"},
    ),
    ViewSpec(
        "v_enterprise",
        enterprise_table,
        "enterprise",
        masks=_golden_masks("enterprise", enterprise_table),
        pseudonyms={"master_id": "master_id", "legal_rep_master_id": "master_id",
                    "legal_rep_id": "id"},
    ),
    ViewSpec(
        "v_provenance",
        provenance_table,
        "provenance",
        masks={"source_key": "key", "candidates": "counts", "agreeing": "counts"},
        pseudonyms={"master_id": "master_id", "source_key": "record"},
    ),
    ViewSpec(
        "v_crosswalk",
        crosswalk_table,
        "crosswalk",
        masks={"source_key": "key"},
        pseudonyms={"master_id": "master_id", "source_key": "record"},
    ),
    ViewSpec(
        "v_relationship",
        relationship_table,
        "relationship",
        masks={"evidence": "evidence"},
        pseudonyms={"person_master_id": "master_id", "enterprise_master_id": "master_id",
                    "evidence": "evidence"},
    ),
    ViewSpec(
        "v_conflict",
        conflict_table,
        "conflict",
        masks={"source_key": "key", "value": "conflict", "authority_value": "conflict"},
        pseudonyms={"master_id": "master_id", "source_key": "record", "value": "conflict",
                    "authority_value": "conflict"},
    ),
    ViewSpec(
        "v_id_event",
        id_event_table,
        "id_event",
        pseudonyms={"master_id": "master_id", "old_ids": "master_ids"},
    ),
)  # fmt: skip
VIEW_BY_NAME = {v.name: v for v in VIEWS}
ANALYST_RELATIONS = frozenset({*(v.name for v in VIEWS), CATALOG_TABLE})
"""What the analyst role may read."""


def view_for(table_name: str) -> ViewSpec | None:
    """The view spec over a warehouse table (``mdm_person`` → ``v_person``), if any."""
    return next((v for v in VIEWS if v.table.name == table_name), None)


@dataclass(frozen=True)
class Release:
    """What the share policy (``config/catalog.yaml``) withholds from the analyst views, and
    the k of their k-anonymity.

    ``hidden`` are the (department, table) sources shared with nobody (不予共享): their rows,
    their values in conflicts, and membership in them are left out of every masked view, and
    an entity known only to them is left out whole. ``withheld`` are golden tables not shared
    (their masked view is empty).
    """

    k: int = DEFAULT_K
    hidden: frozenset[tuple[str, str]] = frozenset()
    hidden_departments: frozenset[str] = frozenset()
    withheld: frozenset[str] = frozenset()


def release_of(city: CityConfig) -> Release:
    """The city's :class:`Release`, from its share policy."""
    share = load_share_policy(city)
    hidden = frozenset(
        (d.code, t.name)
        for d in city.departments
        for t in d.tables
        if share.for_resource(f"{d.code}/{t.name}").share_type == "not_shared"
    )
    whole = frozenset(
        d.code for d in city.departments if d.tables and all((d.code, t.name) in hidden
                                                             for t in d.tables)
    )  # fmt: skip
    withheld = frozenset(
        v.table.name for v in VIEWS if share.for_resource(v.table.name).share_type == "not_shared"
    )
    return Release(share.k_anonymity, hidden, whole, withheld)


# --- masking, in Python (equal to the views' SQL for every column but the k-anonymous ones) -----

_ID_LIKE = re.compile(r"\d{17}[\dXx]|\d{15}")
_MOBILE_LIKE = re.compile(r"1[3-9]\d{9}")


def mask_address(
    address: str | None, province: str | None, city: str | None, district: str | None
) -> str | None:
    """A person's address cut to the district: ``福建省福州市台江区****``.

    >>> mask_address("福建省福州市台江区鳌峰路80号", "福建省", "福州市", "台江区")
    '福建省福州市台江区****'
    """
    if address is None:
        return None
    return f"{province or ''}{city or ''}{district or ''}{SUPPRESSED}"


def mask_source_key(key: str | None) -> str | None:
    """A source key as a report or log shows it: masked when the whole key is an ID number or
    a mobile number."""
    if key is None:
        return None
    if _ID_LIKE.fullmatch(key):
        return mask_id(key)
    if _MOBILE_LIKE.fullmatch(key):
        return mask_phone(key)
    return key


def release_source_key(key: str | None) -> str | None:
    """A source key as the analyst views show it: suppressed when the whole key is an ID
    number or a mobile number (a de-identified release keeps no part of either)."""
    if key is None:
        return None
    return SUPPRESSED if _ID_LIKE.fullmatch(key) or _MOBILE_LIKE.fullmatch(key) else key


def mask_value(kind: str, column: str, row: Mapping[str, Any]) -> Any:
    """``row[column]`` as the masked view shows it (mask ``kind`` from :data:`MASKS`; the
    k-anonymous and count columns are computed over the whole table, in SQL only)."""
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
        return release_source_key(text)
    if kind == "evidence":
        return SUPPRESSED if row.get("kind") == "legal_representative" else text
    if kind == "conflict":
        return release_field(str(row.get("entity")), str(row.get("attribute")), text)
    raise ValueError(f"mask kind {kind!r} is computed over the whole table, in SQL only")


PER_ROW_KINDS = frozenset({"hidden", "withheld", "name", "key", "evidence", "conflict"})
"""Mask kinds :func:`mask_value` computes row by row."""


def mask_rows(spec: ViewSpec, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of ``spec``'s table with the per-row masks of its view applied."""
    out = []
    for row in rows:
        masked = dict(row)
        for column, kind in spec.masks.items():
            if kind in PER_ROW_KINDS:
                masked[column] = mask_value(kind, column, row)
        out.append(masked)
    return out


# --- masking, in SQL ---------------------------------------------------------------------------

_STARS = "*" * 128


def _q(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class _Sql:
    """The masking expressions of one SQL dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def stars(self, n: str) -> str:
        return (
            f"repeat('*', {n})" if self.dialect == "postgresql" else f"substr('{_STARS}', 1, {n})"
        )

    def mask_id(self, c: str) -> str:
        t = f"trim({c})"
        short = self.stars(f"length({t})")
        return (
            f"CASE WHEN {c} IS NULL THEN NULL WHEN length({t}) <= 10 THEN {short}"
            f" ELSE substr({t}, 1, 6) || {self.stars(f'length({t}) - 10')}"
            f" || substr({t}, length({t}) - 3, 4) END"
        )

    def digits(self, c: str) -> str:
        if self.dialect == "postgresql":
            return f"regexp_replace({c}, '[^0-9]', '', 'g')"
        out = c
        for ch in ("-", " ", "+", "(", ")", "/", "."):
            out = f"replace({out}, '{ch}', '')"
        return out

    def mask_phone(self, c: str) -> str:
        d = self.digits(c)
        return (
            f"CASE WHEN {c} IS NULL THEN NULL"
            f" WHEN length({d}) < 7 THEN {self.stars(f'length(trim({c}))')}"
            f" WHEN length({d}) = 11 THEN substr({d}, 1, 3) || '****' || substr({d}, 8, 4)"
            f" WHEN length({d}) = 7 THEN '****' || substr({d}, 4, 4)"
            f" ELSE substr({d}, 1, length({d}) - 8) || '****' || substr({d}, length({d}) - 3, 4)"
            " END"
        )

    def mask_name(self, c: str) -> str:
        t = f"trim({c})"
        rest = f"CASE WHEN length({t}) > 1 THEN length({t}) - 1 ELSE 1 END"
        return (
            f"CASE WHEN {c} IS NULL THEN NULL WHEN {t} = '' THEN ''"
            f" ELSE substr({t}, 1, 1) || {self.stars(rest)} END"
        )

    def id_like(self, c: str) -> str:
        if self.dialect == "postgresql":
            return f"({c} ~ '^[0-9]{{17}}[0-9Xx]$' OR {c} ~ '^[0-9]{{15}}$')"
        return f"({c} GLOB '{'[0-9]' * 17}[0-9Xx]' OR {c} GLOB '{'[0-9]' * 15}')"

    def mobile_like(self, c: str) -> str:
        if self.dialect == "postgresql":
            return f"{c} ~ '^1[3-9][0-9]{{9}}$'"
        return f"{c} GLOB '1[3-9]{'[0-9]' * 9}'"

    def hidden(self, c: str) -> str:
        return f"CASE WHEN {c} IS NULL THEN NULL ELSE '{SUPPRESSED}' END"

    def text(self, c: str) -> str:
        return f"CAST({c} AS TEXT)"

    def year(self, c: str) -> str:
        if self.dialect == "postgresql":
            return f"CAST(EXTRACT(YEAR FROM {c}) AS INTEGER)"
        return f"CAST(substr({c}, 1, 4) AS INTEGER)"

    def mask(self, kind: str, c: str) -> str:
        if kind == "id":
            return self.mask_id(c)
        if kind == "phone":
            return self.mask_phone(c)
        if kind == "name":
            return self.mask_name(c)
        if kind == "hidden":
            return self.hidden(c)
        if kind == "withheld":
            return f"'{SUPPRESSED}'"
        if kind == "key":
            return (
                f"CASE WHEN {self.id_like(c)} OR {self.mobile_like(c)} THEN '{SUPPRESSED}'"
                f" ELSE {c} END"
            )
        if kind == "evidence":
            return f"CASE WHEN kind = 'legal_representative' THEN {self.hidden(c)} ELSE {c} END"
        if kind == "conflict":
            whens = []
            for (entity, attribute), rule in sorted(POLICY.items()):
                if rule.release == "clear":
                    continue
                shown = self.mask(rule.mask, c) if rule.release == "mask" else f"'{SUPPRESSED}'"
                whens.append(
                    f" WHEN entity = '{entity}' AND attribute = '{attribute}' THEN {shown}"
                )
            return f"CASE WHEN {c} IS NULL THEN NULL{''.join(whens)} ELSE {c} END"
        raise ValueError(f"unknown mask kind {kind!r}")


def _dialect(engine: sa.Engine) -> Dialect:
    name = engine.dialect.name
    if name not in ("sqlite", "postgresql"):
        raise AccessSetupError(
            f"analysts' access supports SQLite and PostgreSQL warehouses, not {name}. Fix: point "
            "GOVMDM_WAREHOUSE_URL at PostgreSQL"
        )
    return "postgresql" if name == "postgresql" else "sqlite"


def _hidden_row(release: Release, dept: str = "department", table: str = "source_table") -> str:
    """SQL: the row comes from a source shared with nobody."""
    pairs = [f"({dept} = {_q(d)} AND {table} = {_q(t)})" for d, t in sorted(release.hidden)]
    return "(" + " OR ".join(pairs) + ")" if pairs else "1 = 0"


def _shared_rows(release: Release, entity: str) -> str:
    """SQL: the crosswalk rows of ``entity`` the analyst may see (from shared sources)."""
    return (
        f"FROM {crosswalk_table.name} x WHERE x.entity = '{entity}'"
        f" AND NOT {_hidden_row(release, 'x.department', 'x.source_table')}"
    )


def _visible_ids(release: Release, entity: str) -> str:
    """SQL: the master IDs with a member row from a shared source (uncorrelated, so that the
    database evaluates it once, not once per row)."""
    return f"SELECT DISTINCT x.master_id {_shared_rows(release, entity)}"


def _members(release: Release, entity: str, dialect: Dialect) -> str:
    """SQL: per visible master ID its shared member rows (``m_count``) and their departments
    (``m_departments``, sorted, comma-separated): joined to the golden table, it also leaves
    out whom only unshared sources know."""
    rows = _shared_rows(release, entity)
    if dialect == "postgresql":
        return (
            "SELECT x.master_id AS m_id, count(*) AS m_count, string_agg(DISTINCT x.department,"
            f" ',' ORDER BY x.department) AS m_departments {rows} GROUP BY x.master_id"
        )
    # one derived table (SQLite then indexes it for the join): rows per department, in order
    return (
        "SELECT m_id, sum(n) AS m_count, group_concat(d, ',') AS m_departments FROM (SELECT"
        f" x.master_id AS m_id, x.department AS d, count(*) AS n {rows} GROUP BY x.master_id,"
        " x.department ORDER BY x.master_id, x.department) GROUP BY m_id"
    )


def _golden_from(spec: ViewSpec, release: Release, entity: str, dialect: Dialect) -> str:
    """SQL: FROM clause of a golden view, ``g`` the table, joined to its shared members."""
    if not release.hidden:
        return f"FROM {spec.table.name} g"
    joined = f"FROM {spec.table.name} g JOIN ({_members(release, entity, dialect)}) m"
    joined += " ON m.m_id = g.master_id"
    if entity == "enterprise":
        joined += (
            f" LEFT JOIN (SELECT v.master_id AS vp_id FROM ({_visible_ids(release, 'person')}) v)"
            " vp ON vp.vp_id = g.legal_rep_master_id"
        )
    return joined


def _golden_columns(spec: ViewSpec, sql: _Sql, release: Release, entity: str) -> dict[str, str]:
    """Each column of a golden view, masked, with membership counted over shared sources
    (``m`` of :func:`_golden_from`)."""
    cols = {c: c for c in spec.columns}
    for column, kind in spec.masks.items():
        if kind in PER_ROW_KINDS:
            cols[column] = sql.mask(kind, column)
    if release.hidden:
        cols["member_count"] = "m_count"
        cols["departments"] = "m_departments"
    if entity == "enterprise" and release.hidden:
        cols["legal_rep_master_id"] = "vp.vp_id"
    return cols


def _person_release(spec: ViewSpec, dialect: Dialect, release: Release) -> str:
    """``v_person``: direct identifiers suppressed, and the quasi-identifiers (sex, birth
    date, residence, ethnicity) generalised together so that every released combination is
    shared by at least k persons.

    Each person is released at the finest level whose class, counted among the persons not
    released at a finer level, has k members: (1) district, 5-year birth band, sex, ethnicity;
    (2) city, 10-year band, sex, 汉族/少数民族; (3) 20-year band and sex; (4) nothing. If
    fewer than k persons end at level 4, the coarsest released level joins them, so every
    combination, ``****`` included, stands for k persons or more.
    """
    sql = _Sql(dialect)
    k = release.k
    cols = _golden_columns(spec, sql, release, "person")
    year = sql.year("g.birth_date")
    # the levels are computed on the quasi-identifiers alone (narrow rows through the window
    # steps), then joined back to the table
    members = f" JOIN ({_members(release, 'person', dialect)}) m ON m.m_id = g.master_id"
    base = (
        f"SELECT g.master_id AS q_id, {year} AS q_year, g.sex AS q_sex,"
        + (" m.m_count AS m_count, m.m_departments AS m_departments," if release.hidden else "")
        + " g.ethnicity AS q_ethnicity, g.province AS q_province, g.city AS q_city,"
        " g.district AS q_district, g.division_code AS q_division,"
        " CASE WHEN g.address IS NULL THEN 0 ELSE 1 END AS q_has_address,"
        " CASE WHEN g.ethnicity IS NULL THEN NULL WHEN g.ethnicity = '汉族' THEN '汉族'"
        f" ELSE '少数民族' END AS q_eth FROM {spec.table.name} g"
        + (members if release.hidden else "")
    )
    # integer division in both dialects (and no %, which the PostgreSQL driver reads as a
    # placeholder)
    b5, b10, b20 = ("(q_year / 5) * 5", "(q_year / 10) * 10", "(q_year / 20) * 20")
    l1 = "q_province, q_city, q_district, q_division, q_sex, q_b5, q_ethnicity, q_has_address"
    l2 = "q_province, q_city, q_sex, q_b10, q_eth, q_has_address"
    l3 = "q_sex, q_b20"
    stars = f"'{SUPPRESSED}'"

    def band(start: str, width: int) -> str:
        return f"{sql.text(start)} || '-' || {sql.text(f'{start} + {width - 1}')}"

    def at(levels: str, shown: str, column: str) -> str:
        # where a column is released it shows NULL as NULL (its NULL-ness is in the partition);
        # where it is not, it reads **** whether or not it had a value
        return (
            f"CASE WHEN q_level IN ({levels}) THEN CASE WHEN {column} IS NULL THEN NULL"
            f" ELSE {shown} END ELSE {stars} END"
        )

    released = dict(cols)
    released.update(
        {
            "sex": at("1, 2, 3", "sex", "sex"),
            "birth_date": (
                f"CASE WHEN q_level = 4 THEN {stars} WHEN q_year IS NULL THEN NULL"
                f" WHEN q_level = 1 THEN {band('q_b5', 5)}"
                f" WHEN q_level = 2 THEN {band('q_b10', 10)} ELSE {band('q_b20', 20)} END"
            ),
            "division_code": at("1", "division_code", "division_code"),
            "district": at("1", "district", "district"),
            "province": at("1, 2", "province", "province"),
            "city": at("1, 2", "city", "city"),
            "address": at(
                "1, 2",
                "coalesce(province, '') || coalesce(city, '') || CASE WHEN q_level = 1 THEN"
                f" coalesce(district, '') ELSE '' END || {stars}",
                "address",
            ),
            "ethnicity": at(
                "1, 2", "CASE WHEN q_level = 1 THEN ethnicity ELSE q_eth END", "ethnicity"
            ),
        }
    )
    # Nested derived tables, not WITH: SQLite's authorizer names a CTE, not the view, as the
    # reader of mdm_person, and an analyst may name a CTE anything.
    steps = [
        f"q0.*, {b5} AS q_b5, {b10} AS q_b10, {b20} AS q_b20",
        f"q1.*, count(*) OVER (PARTITION BY {l1}) AS q_n1",
        f"q2.*, count(*) OVER (PARTITION BY CASE WHEN q_n1 >= {k} THEN 1 ELSE 0 END, {l2}) AS q_n2",
        f"q3.*, count(*) OVER (PARTITION BY CASE WHEN q_n1 >= {k} OR q_n2 >= {k} THEN 1"
        f" ELSE 0 END, {l3}) AS q_n3",
        f"q4.*, CASE WHEN q_n1 >= {k} THEN 1 WHEN q_n2 >= {k} THEN 2 WHEN q_n3 >= {k} THEN 3"
        " ELSE 4 END AS q_first",
        "q5.*, sum(CASE WHEN q_first = 4 THEN 1 ELSE 0 END) OVER () AS q_c4,"
        " sum(CASE WHEN q_first = 3 THEN 1 ELSE 0 END) OVER () AS q_c3,"
        " sum(CASE WHEN q_first = 2 THEN 1 ELSE 0 END) OVER () AS q_c2",
        "q6.*, CASE WHEN q_c4 = 0 THEN q_first"
        f" WHEN q_first = 3 AND q_c4 < {k} THEN 4"
        f" WHEN q_first = 2 AND q_c4 + q_c3 < {k} THEN 4"
        f" WHEN q_first = 1 AND q_c4 + q_c3 + q_c2 < {k} THEN 4"
        " ELSE q_first END AS q_level",
    ]
    inner = base
    for i, step in enumerate(steps):
        inner = f"SELECT {step} FROM ({inner}) q{i}"
    joins = f"FROM ({inner}) q JOIN {spec.table.name} g ON g.master_id = q.q_id"
    return (
        f"SELECT {', '.join(f'{expr} AS {name}' for name, expr in released.items())}"
        f"{_CARRY} {joins}"
    )


_CARRIED = "govmdm_clear_"
_CARRY = "\x00carry\x00"  # where carried columns go in a select list


def view_select(
    spec: ViewSpec,
    dialect: Dialect,
    *,
    masked: bool,
    release: Release | None = None,
    carry: Sequence[str] = (),
) -> str:
    """The SELECT behind ``spec``'s masked (or full) view; ``release`` (default: nothing
    withheld, k = 5) says what the share policy withholds from the masked one. ``carry``
    adds these columns in clear as ``govmdm_clear_<column>`` (for pseudonymized exports, never
    for a view)."""
    select = _view_select(spec, dialect, masked=masked, release=release or Release())
    # a select list reads the input row: `id_number AS govmdm_clear_id_number` is the clear value
    # even where the masked column of the same name is computed beside it
    extra = "".join(f", {c} AS {_CARRIED}{c}" for c in carry)
    return select.replace(_CARRY, extra, 1)


def _view_select(spec: ViewSpec, dialect: Dialect, *, masked: bool, release: Release) -> str:
    if not masked:
        return f"SELECT {', '.join(spec.columns)}{_CARRY} FROM {spec.table.name}"
    sql = _Sql(dialect)
    name = spec.table.name
    if name in release.withheld:
        return f"SELECT {', '.join(spec.columns)}{_CARRY} FROM {name} WHERE 1 = 0"
    if spec.name == "v_person":
        return _person_release(spec, dialect, release)
    if spec.name == "v_enterprise":
        cols = _golden_columns(spec, sql, release, "enterprise")
        select = ", ".join(f"{e} AS {c}" if e != c else f"g.{c}" for c, e in cols.items())
        return f"SELECT {select}{_CARRY} {_golden_from(spec, release, 'enterprise', dialect)}"
    cols = {c: (sql.mask(spec.masks[c], c) if spec.masks.get(c) in PER_ROW_KINDS else c)
            for c in spec.columns}  # fmt: skip
    where: list[str] = []
    if spec.name in ("v_provenance", "v_crosswalk", "v_conflict"):
        where.append(f"NOT {_hidden_row(release)}")
    if spec.name == "v_provenance" and release.hidden:
        cols["candidates"] = cols["agreeing"] = "CAST(NULL AS INTEGER)"
    if spec.name == "v_conflict" and release.hidden_departments:
        codes = ", ".join(_q(c) for c in sorted(release.hidden_departments))
        where.append(f"authority_department NOT IN ({codes})")
    if spec.name == "v_relationship" and release.hidden:
        where.append(f"person_master_id IN ({_visible_ids(release, 'person')})")
    if spec.name == "v_id_event" and release.hidden:
        where.append(
            f"NOT (entity = 'person' AND master_id IN (SELECT master_id FROM {person_table.name})"
            f" AND master_id NOT IN ({_visible_ids(release, 'person')}))"
        )
    select = ", ".join(f"{e} AS {c}" if e != c else c for c, e in cols.items())
    where_sql = f" WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT {select}{_CARRY} FROM {name}{where_sql}"


def views_sql(dialect: Dialect, release: Release | None = None) -> list[str]:
    """CREATE VIEW statements for every view, masked and full (idempotent on PostgreSQL)."""
    create = "CREATE OR REPLACE VIEW" if dialect == "postgresql" else "CREATE VIEW"
    out = []
    for spec in VIEWS:
        masked = view_select(spec, dialect, masked=True, release=release)
        out.append(f"{create} {spec.name} AS {masked}")
        out.append(f"{create} {spec.full_name} AS {view_select(spec, dialect, masked=False)}")
    return out


def _protected() -> list[str]:
    """What the analyst role must never read: every warehouse table, the full views, the log."""
    return [
        *(t.name for t in PUBLISHED_TABLES),
        *(v.full_name for v in VIEWS),
        audit.audit_table.name,
    ]


class DbRoles(BaseModel):
    """The PostgreSQL roles govmdm grants to, from ``roles:`` in ``config/catalog.yaml``.

    Roles are cluster-wide: warehouses that share a server and must not share analysts name
    their roles apart. A login is given one of them by a DBA (``GRANT govmdm_analyst TO wang``).
    """

    model_config = ConfigDict(extra="forbid")
    analyst: str = Field(
        default=ANALYST_ROLE, pattern=_ROLE_NAME, description="reads the masked views"
    )
    privileged: str = Field(
        default=PRIVILEGED_ROLE, pattern=_ROLE_NAME, description="also reads personal data in clear"
    )
    steward: str = Field(
        default=STEWARD_ROLE, pattern=_ROLE_NAME, description="decides the review queue's pairs"
    )

    def of(self, role: Role) -> str:
        """The database role behind a govmdm role."""
        return self.analyst if role == "analyst" else self.privileged

    @property
    def names(self) -> list[str]:
        """All three, analyst first."""
        return [self.analyst, self.privileged, self.steward]


def roles_sql(roles: DbRoles | None = None) -> list[str]:
    """The roles (cluster-wide, NOLOGIN, created once, each only if missing) and the privileged
    role's membership in the analyst role. Nobody else is made a member: the warehouse owner
    least of all, so that no analyst's login can become it."""
    r = roles or DbRoles()
    create = " ".join(
        f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{n}') THEN "
        f"CREATE ROLE {_ident(n)} NOLOGIN; END IF;"
        for n in r.names
    )
    member = (
        f"IF NOT pg_has_role('{r.privileged}', '{r.analyst}', 'MEMBER') THEN "
        f"GRANT {_ident(r.analyst)} TO {_ident(r.privileged)}; END IF;"
    )
    return [f"DO $$ BEGIN {create} END $$", f"DO $$ BEGIN {member} END $$"]


def dba_sql(roles: DbRoles | None = None) -> str:
    """What a DBA runs once when the warehouse owner may not create roles."""
    r = roles or DbRoles()
    create = "; ".join(f"CREATE ROLE {_ident(n)} NOLOGIN" for n in r.names)
    return f"{create}; GRANT {_ident(r.analyst)} TO {_ident(r.privileged)}"


def login_sql(login: str, role: str) -> str:
    """A person's own login in one govmdm role, as the README tells a DBA to create it.

    >>> login_sql("wang", "govmdm_analyst")
    "CREATE ROLE wang LOGIN PASSWORD '…' IN ROLE govmdm_analyst"
    """
    name = login if login.startswith("<") else _ident(login)  # a placeholder stays readable
    return f"CREATE ROLE {name} LOGIN PASSWORD '…' IN ROLE {_ident(role)}"


def grants_sql(roles: DbRoles | None = None, schema: str = "public") -> list[str]:
    """Privileges. The analyst role reads the masked views and the catalog; the privileged role
    also everything published and the whole audit log, never a write; the steward role reads
    the review queue and decides through ``govmdm_review_decide``. All three write the audit
    log only through its functions and read only their own rows of it (``v_audit_log``)."""
    from access.review import decide_function_sql  # review imports nothing of access

    r = roles or DbRoles()
    a, p, s = (_ident(n) for n in r.names)
    protected = ", ".join(_protected())
    masked = ", ".join(sorted(ANALYST_RELATIONS))
    return [
        f"GRANT USAGE ON SCHEMA {_ident(schema)} TO {a}, {p}, {s}",
        f"REVOKE CREATE ON SCHEMA {_ident(schema)} FROM PUBLIC",
        f"REVOKE ALL ON TABLE {protected} FROM PUBLIC",
        f"REVOKE ALL ON TABLE {protected} FROM {a}, {p}, {s}",
        f"REVOKE ALL ON TABLE {masked} FROM {a}, {p}, {s}",
        f"GRANT SELECT ON TABLE {masked} TO {a}, {p}",
        f"GRANT SELECT ON TABLE {protected} TO {p}",
        # the export's manifest names the night it read: run IDs and counts, nothing personal
        f"GRANT SELECT ON TABLE {run_table.name} TO {a}",
        f"GRANT SELECT ON TABLE {review_queue_table.name} TO {s}",
        *audit.functions_sql(schema, r.names),
        *find_person_sql(schema, [r.analyst, r.privileged]),
        *decide_function_sql(schema, r.steward),
    ]


FIND_PERSON_FUNCTION = "govmdm_find_person"


def find_person_sql(schema: str, grantees: list[str]) -> list[str]:
    """PostgreSQL: ``govmdm_find_person``, the only way an analyst's login turns an ID number,
    or a name and a birth date, into master IDs. It answers one key per running ``lookup``
    audit entry of the caller, and writes the (masked) key into that entry first."""
    s = _ident(schema)
    sql = _Sql("postgresql")
    fixed = "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
    fn = f"{s}.{FIND_PERSON_FUNCTION}(bigint, text, text, date)"
    body = (
        f"CREATE OR REPLACE FUNCTION {s}.{FIND_PERSON_FUNCTION}(p_audit_id bigint, "
        f"p_id_number text, p_name text, p_birth_date date) RETURNS SETOF text {fixed} AS $fn$\n"
        "DECLARE shown text;\n"
        "BEGIN\n"
        "  IF p_id_number IS NOT NULL THEN\n"
        f"    shown := 'id_number ' || {sql.mask_id('p_id_number')};\n"
        "  ELSIF p_name IS NOT NULL AND p_birth_date IS NOT NULL THEN\n"
        f"    shown := 'name ' || {sql.mask_name('p_name')} || ' ' || p_birth_date::text;\n"
        "  ELSE\n"
        "    RAISE EXCEPTION 'give an ID number, or a name with a birth date';\n"
        "  END IF;\n"
        f"  UPDATE {s}.audit_log SET target = shown,\n"
        "    detail = (detail::jsonb || '{\"resolved\": true}'::jsonb)::text\n"
        "  WHERE id = p_audit_id AND who = session_user AND action = 'lookup'\n"
        "    AND outcome = 'running'\n"
        "    AND NOT coalesce((detail::jsonb ->> 'resolved')::boolean, false);\n"
        "  IF NOT FOUND THEN\n"
        "    RAISE EXCEPTION 'a lookup answers one key, under its own running audit entry "
        "(govmdm lookup writes it)' USING ERRCODE = 'insufficient_privilege';\n"
        "  END IF;\n"
        "  IF p_id_number IS NOT NULL THEN\n"
        f"    RETURN QUERY SELECT master_id::text FROM {s}.{person_table.name}\n"
        "      WHERE id_number = p_id_number ORDER BY 1;\n"
        "  ELSE\n"
        f"    RETURN QUERY SELECT master_id::text FROM {s}.{person_table.name}\n"
        "      WHERE name = p_name AND birth_date = p_birth_date ORDER BY 1;\n"
        "  END IF;\n"
        "END $fn$"
    )
    out = [body, f"REVOKE ALL ON FUNCTION {fn} FROM PUBLIC"]
    if grantees:
        out.append(f"GRANT EXECUTE ON FUNCTION {fn} TO {', '.join(map(_ident, grantees))}")
    return out


def _ident(name: str) -> str:
    """A PostgreSQL identifier, quoted only when it must be."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


@dataclass
class InstallReport:
    """What :func:`install_views` did."""

    backend: str
    views: list[str] = field(default_factory=list)
    catalog_rows: int = 0
    roles: bool = False
    grants: bool = False
    warnings: list[str] = field(default_factory=list)


def install_views(engine: sa.Engine, city: CityConfig) -> InstallReport:
    """Create or replace the analyst views and the ``catalog`` table; on PostgreSQL also the
    roles and grants. Idempotent: run after every publish and by ``govmdm views install``.

    Without the right to create roles (CREATEROLE), the views and grants are still installed
    when the roles exist already, and a warning says what a DBA must run once.
    """
    from access.catalog import write_catalog  # catalog imports this module

    dialect = _dialect(engine)
    report = InstallReport(backend=dialect)
    metadata.create_all(engine, checkfirst=True)
    audit.ensure_table(engine)
    roles = load_share_policy(city).roles
    if dialect == "postgresql":
        report.roles = _install_roles(engine, report, roles)
    release = release_of(city)
    with engine.begin() as conn:
        for spec in VIEWS:
            for name, masked in ((spec.name, True), (spec.full_name, False)):
                select = view_select(spec, dialect, masked=masked, release=release)
                _create_view(conn, dialect, name, select)
                report.views.append(name)
        report.catalog_rows = write_catalog(conn, city)
        if dialect == "postgresql" and report.roles:
            schema = str(conn.exec_driver_sql("SELECT current_schema()").scalar())
            for stmt in grants_sql(roles, schema):
                conn.exec_driver_sql(stmt.replace("%", "%%"))  # the driver's paramstyle
            report.grants = True
    return report


def _install_roles(engine: sa.Engine, report: InstallReport, roles: DbRoles) -> bool:
    """Create the roles; True if all three exist."""
    for stmt in roles_sql(roles):
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(stmt)
        except sa.exc.DBAPIError as exc:
            report.warnings.append(
                f"{_first_line(exc.orig or exc)}. Fix: a DBA runs once, as a role with "
                f"CREATEROLE: {dba_sql(roles)}"
            )
    with engine.connect() as conn:
        existing = set(
            conn.execute(
                sa.text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:names)"),
                {"names": roles.names},
            ).scalars()
        )
    return existing == set(roles.names)


def _create_view(conn: sa.Connection, dialect: Dialect, name: str, select: str) -> None:
    if dialect == "sqlite":
        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE VIEW {name} AS {select}")
        return
    savepoint = conn.begin_nested()
    try:
        conn.exec_driver_sql(f"CREATE OR REPLACE VIEW {name} AS {select}")
        savepoint.commit()
    except sa.exc.DBAPIError:  # the columns changed: replace cannot drop or retype a column
        savepoint.rollback()
        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE VIEW {name} AS {select}")


def after_publish(
    engine: sa.Engine, city: CityConfig, run_id: str, summary: Mapping[str, Any]
) -> InstallReport | None:
    """The publish hook: (re)install views, grants and catalog, and audit the night.

    Never raises: the night is published already; a failure here is logged as a warning and
    in the audit row, and ``govmdm views install`` repairs it.
    """
    report: InstallReport | None = None
    error: str | None = None
    try:
        report = install_views(engine, city)
        for warning in report.warnings:
            log.warning("analyst views: %s", warning)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.warning("night %s is published, but the analyst views were not installed: %s. "
                    "Fix: `govmdm views install`", run_id, error)  # fmt: skip
    entities = summary.get("entities", {})
    masters = {e: s.get("masters") for e, s in entities.items() if isinstance(s, Mapping)}
    with contextlib.suppress(Exception):  # the audit must not fail a published night either
        audit.record(
            engine,
            "publish",
            f"night {run_id}",
            role="platform",
            row_count=sum(v for v in masters.values() if isinstance(v, int)),
            outcome="ok" if error is None else "failed",
            detail={"mode": summary.get("mode"), "masters": masters,
                    "views": None if report is None else len(report.views),
                    "grants": None if report is None else report.grants,
                    "warnings": [] if report is None else report.warnings,
                    "error": error},
        )  # fmt: skip
    return report


# --- who may do what ---------------------------------------------------------------------------


class SharePolicyEntry(BaseModel):
    """How one resource of the catalog is shared."""

    model_config = ConfigDict(extra="forbid")
    share_type: ShareType = Field(
        description="unconditional (无条件共享), conditional (有条件共享) or not_shared (不予共享)"
    )
    condition: str | None = Field(
        None, description="for conditional: on what condition, e.g. 仅限履行法定职责所需"
    )
    basis: str | None = Field(None, description="the legal or policy basis, e.g. 个人信息保护法")

    @model_validator(mode="after")
    def _conditional_says_how(self) -> SharePolicyEntry:
        if self.share_type == "conditional" and not (self.condition or "").strip():
            raise ValueError(
                "a conditional resource must state its condition: add `condition: <条件>`"
            )
        return self


class SharePolicy(BaseModel):
    """``config/catalog.yaml``: share types per resource, the database roles, the query limit."""

    model_config = ConfigDict(extra="forbid")
    default: SharePolicyEntry = Field(
        default_factory=lambda: SharePolicyEntry(
            share_type="conditional", condition="经数据共享平台申请审批后共享", basis=None
        ),
        description="for resources not listed under resources",
    )
    resources: dict[str, SharePolicyEntry] = Field(
        default_factory=dict,
        description="resource ID (mdm_person, or department/table) → its share policy",
    )
    k_anonymity: int = Field(
        default=DEFAULT_K,
        ge=2,
        le=1000,
        description="every combination of quasi-identifiers in v_person stands for at least "
        "this many persons (GB/T 37964 k-anonymity)",
    )
    roles: DbRoles = Field(
        default_factory=DbRoles, description="PostgreSQL role names (cluster-wide)"
    )
    query_timeout_s: float = Field(
        default=30, gt=0, le=3600, description="an analyst's statement is cancelled after this long"
    )
    export_timeout_s: float = Field(
        default=600, gt=0, le=86400, description="the same for each view read by govmdm export"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_privileged_users(cls, data: Any) -> Any:
        if isinstance(data, dict) and "privileged_users" in data:
            raise ValueError(
                "privileged_users is no longer read: a list anyone can edit, or point --config "
                "at, cannot grant anything. Fix: remove the key; on PostgreSQL a DBA grants the "
                "privileged role to a person's own login (GRANT govmdm_privileged TO li); on "
                "SQLite the warehouse file's owner is privileged"
            )
        return data

    def for_resource(self, resource_id: str) -> SharePolicyEntry:
        """The policy of one resource: its own, else the default."""
        return self.resources.get(resource_id, self.default)


def policy_path(city: CityConfig) -> Path:
    """``config/catalog.yaml`` beside the city's other configuration."""
    return city.root / "config" / POLICY_FILE


def load_share_policy(city: CityConfig) -> SharePolicy:
    """The sharing policy; defaults (everything conditional, default role names) without a file.

    Resource IDs are checked against the city: a golden table (``mdm_person``) or a
    department's table (``gongan/t_rk_jbxx``).
    """
    path = policy_path(city)
    if not path.is_file():
        return SharePolicy()
    policy = load_yaml_model(path, SharePolicy)
    known = {t.name for t in PUBLISHED_TABLES} | {
        f"{d.code}/{t.name}" for d in city.departments for t in d.tables
    }
    problems = [
        f"{path}: resources.{key}: no such resource. Fix: use a golden table (mdm_person, "
        f"mdm_enterprise, …) or department/table, e.g. {sorted(known - {key})[0]}"
        for key in policy.resources
        if key not in known
    ]
    if problems:
        raise ConfigError(problems)
    return policy


Capability = Literal["analyst", "privileged", "steward"]

# Whoever can become one of these (or a superuser, or a role that may create roles or bypass
# row security) is above every govmdm role: analysts' commands refuse such a login.
_ABOVE = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program",
          "pg_write_all_data")  # fmt: skip


@dataclass(frozen=True)
class Caller:
    """The person at the keyboard as the warehouse knows them: their login (PostgreSQL) or OS
    account (SQLite), what they may do, and what really protects the data."""

    who: str
    backend: Dialect
    may: frozenset[Capability]
    boundary: str


@dataclass
class Session:
    """A caller's own connection to the warehouse (see :func:`session`)."""

    engine: sa.Engine
    caller: Caller
    policy: SharePolicy

    def role(self, privileged: bool, *, action: str) -> Role:
        """``privileged`` if asked for and the caller holds it, else ``analyst``; a refusal is
        audited and raised as :class:`AccessDenied`."""
        c, roles = self.caller, self.policy.roles
        if not privileged:
            if c.may & {"analyst", "privileged"}:
                return "analyst"
            raise AccessDenied(
                f"the login {c.who!r} may not read the analyst views. Fix: a DBA runs "
                f"GRANT {_ident(roles.analyst)} TO {_ident(c.who)}"
            )
        if "privileged" in c.may:
            return "privileged"
        if c.backend == "postgresql":
            why = (
                f"--privileged: the login {c.who!r} is not in the {roles.privileged} role; "
                "personal data in clear is granted by the database, not by govmdm. Fix: if "
                f"your duties need it, a DBA runs GRANT {_ident(roles.privileged)} TO "
                f"{_ident(c.who)}; without --privileged you see the masked views"
            )
        else:
            why = (
                f"--privileged: {c.who!r} does not own the warehouse file. {c.boundary}. Fix: "
                "run as the file's owner, or leave out --privileged for the masked views"
            )
        self.refuse(action, "--privileged", why, role="privileged")
        raise AssertionError  # refuse() raised

    def require(self, capability: Capability, *, action: str, target: str) -> None:
        """Raise :class:`AccessDenied` (audited) unless the caller holds ``capability``."""
        c, roles = self.caller, self.policy.roles
        if capability in c.may:
            return
        if c.backend == "postgresql":
            role = getattr(roles, capability)
            why = (
                f"{action.replace('_', ' ')}: the login {c.who!r} is not in the {role} role. "
                f"Fix: a DBA runs GRANT {_ident(role)} TO {_ident(c.who)}"
            )
        else:
            why = (
                f"{action.replace('_', ' ')}: {c.who!r} does not own the warehouse file. "
                f"{c.boundary}. Fix: run as the file's owner"
            )
        self.refuse(action, target, why, role=capability)

    def refuse(self, action: str, target: str, why: str, *, role: str) -> None:
        """Audit a refusal (best effort) and raise it."""
        with contextlib.suppress(Exception):
            audit.record(self.engine, action, target, role=role, outcome="refused",
                         detail={"reason": why})  # fmt: skip
        raise AccessDenied(why)


@contextlib.contextmanager
def session(city: CityConfig, *, export: bool = False) -> Iterator[Session]:
    """The caller's own connection: on PostgreSQL the login of ``GOVMDM_ANALYST_URL`` (else of
    ``GOVMDM_WAREHOUSE_URL``), refused unless it is no more than an analyst, privileged user or
    steward — never the warehouse owner or a superuser —, with ``statement_timeout`` set and a
    dead client's backend cancelled; on SQLite the warehouse file, the OS user ID deciding.

    >>> with session(city) as s:
    ...     s.caller.who, sorted(s.caller.may)
    ('wang', ['analyst'])
    """
    from etl.state import WAREHOUSE_ENV
    from store.warehouse import engine_for

    policy = load_share_policy(city)
    if export:  # whole views: a longer limit than an ad-hoc query's
        policy = policy.model_copy(update={"query_timeout_s": policy.export_timeout_s})
    url, source = os.environ.get(ANALYST_URL_ENV, "").strip(), ANALYST_URL_ENV
    if not url:
        url, source = warehouse_url(city), WAREHOUSE_ENV
    if sa.make_url(url).get_backend_name() == "sqlite" and source == WAREHOUSE_ENV:
        base = engine_for(url)
    else:
        base = _personal_engine(url, policy, source)
    try:
        engine = base.execution_options(
            govmdm_roles=policy.roles, govmdm_timeout_s=policy.query_timeout_s,
            govmdm_source=source,
        )  # fmt: skip
        caller = _caller(engine)
        yield Session(engine.execution_options(govmdm_caller=caller), caller, policy)
    finally:
        base.dispose()


def _personal_engine(url: str, policy: SharePolicy, source: str) -> sa.Engine:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise AccessSetupError(
            f"{source} is not a database URL. Fix: postgresql+psycopg://<you>@<host>/<warehouse>"
        ) from None
    if parsed.get_backend_name() != "postgresql":
        return sa.create_engine(parsed)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    ms = max(1, int(policy.query_timeout_s * 1000))
    # Session defaults; each read sets its own again inside its transaction. A client that dies
    # mid-query is noticed within a second and its backend cancelled.
    options = (
        f"-c statement_timeout={ms} -c lock_timeout={ms} "
        f"-c idle_in_transaction_session_timeout={max(ms, 60_000)} "
        "-c client_connection_check_interval=1000"
    )
    given = parsed.query.get("options")
    if given:
        options = f"{given if isinstance(given, str) else ' '.join(given)} {options}"
    parsed = parsed.difference_update_query(["options"])
    return sa.create_engine(parsed, connect_args={"options": options, "application_name": "govmdm"})


def _caller(engine: sa.Engine) -> Caller:
    """Who ``engine`` logs in as; :class:`AccessDenied` for a login above every govmdm role."""
    cached = engine.get_execution_options().get("govmdm_caller")
    if isinstance(cached, Caller):
        return cached
    if _dialect(engine) == "sqlite":
        return _sqlite_caller(engine)
    return _postgres_caller(engine)


def _postgres_caller(engine: sa.Engine) -> Caller:
    roles: DbRoles = engine.get_execution_options().get("govmdm_roles") or DbRoles()
    from access.review import DECIDE_FUNCTION

    tables = [*_protected(), *(v.name for v in VIEWS)]
    query = sa.text(
        "WITH reach AS (SELECT r.oid, r.rolname, r.rolsuper, r.rolcreaterole, r.rolbypassrls "
        "  FROM pg_roles r WHERE pg_has_role(session_user, r.oid, 'MEMBER')), "
        "rel AS (SELECT c.oid, c.relname, c.relowner FROM pg_class c "
        "  WHERE c.oid IN (SELECT to_regclass(x) FROM unnest(CAST(:tables AS text[])) AS x)) "
        "SELECT session_user::text AS login, "
        " ARRAY(SELECT rolname::text FROM reach WHERE rolsuper ORDER BY 1) AS supers, "
        " ARRAY(SELECT rolname::text FROM reach WHERE rolcreaterole OR rolbypassrls"
        "       OR rolname = ANY(CAST(:above AS text[])) ORDER BY 1) AS powers, "
        " ARRAY(SELECT relname::text FROM rel WHERE pg_has_role(session_user, relowner, 'MEMBER')"
        "       OR EXISTS (SELECT FROM reach WHERE has_table_privilege(reach.oid, rel.oid,"
        "                  'INSERT, UPDATE, DELETE, TRUNCATE')) ORDER BY 1) AS writes, "
        " to_regclass(:masked) IS NOT NULL AS installed, "
        " EXISTS (SELECT FROM reach WHERE has_table_privilege(reach.oid,"
        "         to_regclass(:masked), 'SELECT')) AS analyst, "
        " EXISTS (SELECT FROM reach WHERE has_table_privilege(reach.oid,"
        "         to_regclass(:full), 'SELECT')) AS privileged, "
        " EXISTS (SELECT FROM reach WHERE has_function_privilege(reach.oid,"
        "         to_regprocedure(:decide), 'EXECUTE')) AS steward"
    )
    with engine.connect() as conn:
        row = conn.execute(
            query,
            {"tables": tables, "above": list(_ABOVE), "masked": VIEWS[0].name,
             "full": VIEWS[0].full_name, "decide": f"{DECIDE_FUNCTION}(text, text, text, text)"},
        ).one()  # fmt: skip
    login = str(row.login)
    if row.supers or row.powers or row.writes:
        if row.supers:
            what = f"is or can become the superuser {row.supers[0]}"
        elif row.powers:
            what = (
                f"can become {', '.join(row.powers)} (CREATEROLE, BYPASSRLS, server files or "
                "writing all data)"
            )
        else:
            what = f"owns or may write {', '.join(row.writes)}"
        source = engine.get_execution_options().get("govmdm_source", "the connection")
        raise AccessDenied(
            f"{source} logs in as {login!r}, which {what}: a query could escape to that, so "
            "analysts' commands refuse it (the warehouse owner's login is for the pipeline). "
            f"Fix: set {ANALYST_URL_ENV} to your own login, a member of {roles.analyst} (or "
            f"{roles.privileged} / {roles.steward}) only; a DBA creates it once: "
            f"{login_sql('<you>', roles.analyst)}"
        )
    if not row.installed:
        raise AccessSetupError(
            "the analyst views are not installed in this warehouse. Fix: the warehouse owner "
            "runs `govmdm views install` (every publish does), or a DBA the SQL of "
            "`govmdm views install --sql`"
        )
    may: set[Capability] = set()
    if row.analyst:
        may.add("analyst")
    if row.privileged:
        may.add("privileged")
    if row.steward:
        may.add("steward")
    boundary = f"PostgreSQL login {login}: the database's grants decide what it may read"
    return Caller(login, "postgresql", frozenset(may), boundary)


def _sqlite_caller(engine: sa.Engine) -> Caller:
    import stat

    path = Path(_sqlite_path(engine))
    st = path.stat()
    uid = os.geteuid()
    owner = _account(st.st_uid)
    boundary = (
        f"On SQLite the file's permissions are the only boundary ({path}: owner {owner}, "
        f"{stat.filemode(st.st_mode)}): whoever can read it reads every table in clear, "
        "whatever govmdm shows; govmdm treats its owner as privileged and steward and everyone "
        "else as an analyst. Roles the database enforces need PostgreSQL"
    )
    full = uid in (st.st_uid, 0)
    may: frozenset[Capability] = frozenset(
        ("analyst", "privileged", "steward") if full else ("analyst",)
    )
    return Caller(audit.os_user(), "sqlite", may, boundary)


def _account(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


def resolve_role(city: CityConfig, privileged: bool, *, action: str = "query") -> Role:
    """``privileged`` if asked for and the caller holds it (PostgreSQL: their login is in the
    privileged role; SQLite: they own the warehouse file), else ``analyst``; a refusal is
    audited. Nothing the caller sets in the environment or a config file counts."""
    if not privileged:
        return "analyst"
    with session(city) as s:
        return s.role(True, action=action)


def boundary_note(city: CityConfig) -> str | None:
    """On SQLite, the plain sentence that file permissions are the only boundary; else None."""
    if os.environ.get(ANALYST_URL_ENV, "").strip():
        return None
    if sa.make_url(warehouse_url(city)).get_backend_name() != "sqlite":
        return None
    with session(city) as s:
        return s.caller.boundary


# --- keyed pseudonyms --------------------------------------------------------------------------


def pseudonym_key() -> bytes:
    """The HMAC key from ``GOVMDM_PSEUDONYM_KEY`` (at least 16 bytes)."""
    raw = os.environ.get(PSEUDONYM_KEY_ENV, "")
    if not raw.strip():
        raise PseudonymKeyMissing(
            f"pseudonyms need a secret key: {PSEUDONYM_KEY_ENV} is not set. Fix: set it to a "
            "random secret of at least 16 characters (e.g. `openssl rand -hex 32`), one per "
            "recipient, kept outside config/ and the extract; the same key gives the same "
            "pseudonyms, so keep it to join later extracts"
        )
    key = raw.encode("utf-8")
    if len(key) < _MIN_KEY_BYTES:
        raise PseudonymKeyMissing(
            f"{PSEUDONYM_KEY_ENV} is too short ({len(key)} bytes): an ID number is guessable, "
            f"only the key protects it. Fix: use at least {_MIN_KEY_BYTES} random characters"
        )
    bits = key_strength(raw)
    if bits < _MIN_KEY_BITS:
        raise PseudonymKeyMissing(
            f"{PSEUDONYM_KEY_ENV} is too predictable (about {bits:.0f} bits; repeated "
            f"characters, runs like abcd or 1234 and repeated blocks count for little): whoever "
            f"guesses it can compute the pseudonym of any ID number. Fix: use a random secret of "
            f"at least {_MIN_KEY_BITS} bits, e.g. `openssl rand -hex 32`"
        )
    return key


def key_strength(key: str) -> float:
    """A cautious estimate of a key's entropy in bits: the Shannon entropy of its characters
    times the characters that neither continue a run (``abcd``, ``1234``, ``aaaa``) nor repeat
    an earlier block of four or more.

    >>> key_strength("a" * 32), round(key_strength("9f86d081884c7d659a2feaa0c55ad015"))
    (0.0, 116)
    """
    import math
    from collections import Counter

    if not key:
        return 0.0
    counts = Counter(key)
    per_char = sum(n / len(key) * math.log2(len(key) / n) for n in counts.values())
    fresh = 0
    for i, ch in enumerate(key):
        step = ord(ch) - ord(key[i - 1]) if i else None
        run = i >= 2 and step == ord(key[i - 1]) - ord(key[i - 2]) and abs(step or 0) <= 1
        repeat = i >= 4 and any(key[i - n + 1 : i + 1] in key[: i - n + 1]
                                for n in range(4, min(i, 16) + 1))  # fmt: skip
        fresh += not (run or repeat)
    return per_char * fresh


def pseudonym(value: str | None, key: bytes) -> str | None:
    """A keyed token for ``value``: HMAC-SHA256, first 128 bits in hex.

    >>> pseudonym("P0000000001", b"0123456789abcdef")  # the same in every table and extract
    '36524e6617d5ef64d746463981cfc6b2'
    """
    if value is None:
        return None
    return hmac.new(key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def pseudonymize_rows(
    spec: ViewSpec, rows: Sequence[Mapping[str, Any]], key: bytes
) -> list[dict[str, Any]]:
    """Rows of ``spec``'s table (clear values) with its pseudonym columns replaced by tokens."""
    out = []
    for row in rows:
        new = dict(row)
        for column, kind in spec.pseudonyms.items():
            value = row[column]
            if value is None:
                continue
            if kind == "master_ids":
                new[column] = ",".join(pseudonym(v, key) or "" for v in str(value).split(",") if v)
            elif kind == "record":
                rid = f"{row['department']}/{row['source_table']}/{value}"
                new[column] = pseudonym(rid, key)
            elif kind == "evidence":
                if row.get("kind") == "legal_representative":
                    new[column] = pseudonym(str(value), key)
            elif kind == "conflict":
                if row.get("attribute") in _ID_ATTRS:
                    new[column] = pseudonym(str(value), key)
            else:
                new[column] = pseudonym(str(value), key)
        out.append(new)
    return out


# --- scrubbing: the last line of defence on analyst output ---------------------------------------

_CANDIDATE = re.compile(r"\d{15}|1[3-9]\d[- ]?\d{4}[- ]?\d{4}|0\d{2,3}[- ]?\d{3,4}[- ]?\d{4}")
SCRUB_KINDS = frozenset({"id", "mobile", "landline", "card"})
"""What the scrub looks for: not e-mails or street addresses, which the catalog (contacts) and
the enterprise views (registered addresses) show on purpose."""


def scrub(value: Any) -> tuple[Any, bool]:
    """``value`` with any valid ID number, mobile or landline number or bank card in it masked;
    and whether it was."""
    if (
        not isinstance(value, str)
        or not _CANDIDATE.search(value)
        or not find_clear(value, kinds=SCRUB_KINDS)
    ):
        return value, False
    return mask_text(value), True


def scrub_frame(frame: pd.DataFrame, skip: Sequence[str] = ()) -> tuple[pd.DataFrame, int]:
    """A copy of ``frame`` with :func:`scrub` applied to every text cell but those of ``skip``
    (keyed pseudonyms: hex that may hold 11 digits in a row); and how many changed."""
    out = frame.copy()
    changed = 0
    for column in out.columns:
        if out[column].dtype != object or column in skip:
            continue
        values = out[column].tolist()
        for i, v in enumerate(values):
            values[i], hit = scrub(v)
            changed += hit
        out[column] = pd.Series(values, index=out.index, dtype=object)
    return out, changed


# --- guarded reads -----------------------------------------------------------------------------

# Writes, session changes, and server-side file or network access.
# fmt: off
_FORBIDDEN_WORDS = frozenset({
    "insert", "update", "delete", "merge", "upsert", "create", "drop", "alter", "grant", "revoke",
    "truncate", "copy", "call", "do", "set", "reset", "attach", "detach", "pragma", "vacuum",
    "reindex", "analyze", "lock", "listen", "notify", "unlisten", "prepare", "execute",
    "deallocate", "discard", "load", "into", "set_config", "lo_import", "lo_export",
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_terminate_backend",
    "pg_cancel_backend", "pg_reload_conf", "pg_sleep", "load_extension", "dblink", "dblink_exec",
    "query_to_xml", "cursor_to_xml", "table_to_xml", "ts_stat", "ts_rewrite",
})
# Families of the above: functions that run SQL given as text, read server files, sleep or hold
# locks. The words are a first line only; the caller's own login is what holds.
_FORBIDDEN_PREFIXES = (
    "query_to_xml", "cursor_to_xml", "table_to_xml", "schema_to_xml", "database_to_xml",
    "pg_sleep", "pg_advisory", "pg_try_advisory", "pg_read_", "pg_ls_", "pg_file", "dblink",
    "lo_", "pg_terminate", "pg_cancel", "pg_reload", "pg_rotate", "pg_promote",
)
# fmt: on
_STARTERS = frozenset({"select", "with", "values"})
_WORD = re.compile(r"[^\W\d][\w$]*")  # identifiers may be Chinese


def _tokens(sql: str, dialect: Dialect) -> tuple[list[str], list[str]]:
    """(bare words lower-cased, quoted identifiers) of ``sql`` outside strings and comments.

    Refuses what the scan cannot read safely: several statements, PostgreSQL dollar-quoted,
    E'' and U& strings.
    """
    words: list[str] = []
    quoted: list[str] = []
    i, n = 0, len(sql)
    ended = False
    while i < n:
        ch = sql[i]
        if ended and not ch.isspace() and not sql.startswith(("--", "/*"), i):
            raise QueryRefused("one statement at a time: remove everything after the ';'")
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            if j < 0:
                raise QueryRefused("unterminated /* comment")
            i = j + 2
        elif ch == "'":
            j = i + 1
            while True:
                j = sql.find("'", j)
                if j < 0:
                    raise QueryRefused("unterminated string literal")
                if sql.startswith("''", j):
                    j += 2
                    continue
                break
            i = j + 1
        elif ch in '"`[':
            close = {'"': '"', "`": "`", "[": "]"}[ch]
            if ch != '"' and dialect == "postgresql":
                i += 1
                continue
            j = sql.find(close, i + 1)
            if j < 0:
                raise QueryRefused(f"unterminated quoted identifier {ch}")
            quoted.append(sql[i + 1 : j].replace(close * 2, close).lower())
            i = j + 1
        elif ch == ";":
            ended = True
            i += 1
        elif ch == "$" and dialect == "postgresql":
            raise QueryRefused("dollar-quoted text ($$ … $$) is not accepted here")
        elif ch.isalpha() or ch == "_":
            m = _WORD.match(sql, i)
            assert m is not None
            word = m.group(0).lower()
            if (
                dialect == "postgresql"
                and word in ("e", "u")
                and sql.startswith(("'", "&"), m.end())
            ):
                raise QueryRefused("E'' and U& strings are not accepted here; write plain '…'")
            words.append(word)
            i = m.end()
        else:
            i += 1
    return words, quoted


def check_sql(
    sql: str, *, dialect: Dialect, allowed: frozenset[str] | None, known: frozenset[str]
) -> set[str]:
    """The relations ``sql`` names, after checking it is one read-only SELECT that names no
    relation outside ``allowed`` (None: any). Raises :class:`QueryRefused` with the reason."""
    if not sql.strip():
        raise QueryRefused("empty statement: write a SELECT")
    words, quoted = _tokens(sql, dialect)
    first = next((w for w in words), "")
    if first not in _STARTERS:
        raise QueryRefused(
            f"only SELECT statements run here, not {first.upper() or 'that'}: govmdm query is "
            "read-only (write SELECT … or WITH … SELECT …)"
        )
    bad = sorted(
        {w for w in (*words, *quoted) if w in _FORBIDDEN_WORDS or w.startswith(_FORBIDDEN_PREFIXES)}
    )
    if bad:
        raise QueryRefused(
            f"{', '.join(w.upper() for w in bad)} cannot be used here: govmdm query runs one "
            "read-only SELECT"
        )
    named = {w for w in (*words, *quoted) if w in known}
    if allowed is not None and (denied := sorted(named - allowed)):
        raise QueryRefused(_denied_message(denied))
    return named


def _denied_message(denied: Sequence[str]) -> str:
    hints = []
    for name in denied:
        spec = view_for(name) or next((v for v in VIEWS if v.full_name == name), None)
        if spec is not None:
            hints.append(f"{spec.name} instead of {name}")
    hint = f" (use {', '.join(hints)})" if hints else ""
    return (
        f"the analyst role may not read {', '.join(denied)}{hint}. Analysts read the masked "
        f"views: {', '.join(sorted(ANALYST_RELATIONS))}; personal data in clear needs "
        "--privileged"
    )


def _known_relations(engine: sa.Engine) -> frozenset[str]:
    """Every relation of the warehouse; AccessSetupError if the analyst views are missing."""
    inspector = sa.inspect(engine)
    views = set(inspector.get_view_names())
    missing = sorted({v.name for v in VIEWS} - views)
    if missing:
        raise AccessSetupError(
            f"the analyst views are not installed in this warehouse ({', '.join(missing)}). "
            "Fix: run `govmdm views install` (every publish installs them too)"
        )
    names = {*inspector.get_table_names(), *views, *_protected(), CATALOG_TABLE}
    return frozenset(n.lower() for n in names)


def require_views(engine: sa.Engine) -> None:
    """AccessSetupError, saying what to run, unless the analyst views are installed."""
    _known_relations(engine)


@dataclass
class QueryResult:
    """Rows of a guarded read."""

    columns: list[str]
    frame: pd.DataFrame
    role: Role
    relations: set[str] = field(default_factory=set)
    scrubbed: int = 0


def fetch(engine: sa.Engine, sql: str, role: Role) -> QueryResult:
    """Run ``sql`` read-only as ``role`` on a caller's own connection (:func:`session`).

    The text check (:func:`check_sql`) is a first line only. What holds is the connection: on
    PostgreSQL the caller's login, refused if it could become anything above a govmdm role, in
    a READ ONLY transaction under ``SET LOCAL ROLE`` with ``statement_timeout``; on SQLite a
    ``mode=ro`` connection whose authorizer lets the analyst read the masked views only, and a
    progress handler that stops it at the time limit. Analyst output is scrubbed; errors are
    cut to their first line and masked before anyone sees them.
    """
    dialect = _dialect(engine)
    if dialect == "postgresql":
        _caller(engine)  # refuses an owner's or superuser's connection
    known = _known_relations(engine)
    allowed = ANALYST_RELATIONS if role == "analyst" else None
    relations = check_sql(sql, dialect=dialect, allowed=allowed, known=known)
    runner = _fetch_postgres if dialect == "postgresql" else _fetch_sqlite
    columns, rows = runner(engine, sql.strip().rstrip(";"), role)
    frame = pd.DataFrame.from_records(rows, columns=_unique(columns))
    scrubbed = 0
    if role == "analyst":
        frame, scrubbed = scrub_frame(frame)
    return QueryResult(columns, frame, role, relations, scrubbed)


def _unique(columns: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for c in columns:
        seen[c] = seen.get(c, 0) + 1
        out.append(c if seen[c] == 1 else f"{c}_{seen[c]}")
    return out


def _settings(engine: sa.Engine) -> tuple[DbRoles, float]:
    options = engine.get_execution_options()
    roles = options.get("govmdm_roles")
    timeout = options.get("govmdm_timeout_s")
    return (
        roles if isinstance(roles, DbRoles) else DbRoles(),
        float(timeout) if timeout else float(SharePolicy.model_fields["query_timeout_s"].default),
    )


def _timed_out(timeout_s: float) -> AccessError:
    return AccessError(
        f"the query ran longer than {timeout_s:g} s and was stopped (query_timeout_s in "
        f"config/catalog.yaml). Fix: narrow it with WHERE or LIMIT, or aggregate in SQL"
    )


def _error_text(exc: BaseException) -> str:
    """An error as it may be shown or logged: its first line, ID and mobile numbers masked."""
    return mask_text(_first_line(exc))[:500]


def _fetch_postgres(engine: sa.Engine, sql: str, role: Role) -> tuple[list[str], Sequence[Any]]:
    import psycopg

    roles, timeout_s = _settings(engine)
    ms = max(1, int(timeout_s * 1000))
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SET TRANSACTION READ ONLY")
        cur.execute("SET LOCAL standard_conforming_strings = on")
        cur.execute(f"SET LOCAL statement_timeout = {ms}")
        cur.execute(f"SET LOCAL lock_timeout = {ms}")
        try:
            cur.execute(f"SET LOCAL ROLE {_ident(roles.of(role))}")
        except psycopg.Error as exc:
            raise AccessSetupError(
                f"cannot act as the {roles.of(role)} role ({_error_text(exc)}). Fix: a DBA "
                f"runs `govmdm views install --sql` and GRANT {_ident(roles.of(role))} TO "
                "your login"
            ) from None
        try:
            # prepared: the extended protocol runs exactly one statement
            cur.execute(sql, prepare=True)  # type: ignore[call-arg]  # psycopg's cursor
        except psycopg.errors.QueryCanceled:
            raise _timed_out(timeout_s) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise QueryRefused(f"PostgreSQL refused it: {_error_text(exc)}") from None
        except psycopg.Error as exc:
            raise AccessError(f"the query failed: {_error_text(exc)}") from None
        if cur.description is None:
            raise QueryRefused("the statement returned no rows: govmdm query runs SELECTs")
        columns = [d[0] for d in cur.description]
        try:
            rows = cur.fetchall()
        except psycopg.errors.QueryCanceled:
            raise _timed_out(timeout_s) from None
        return columns, rows
    finally:
        with contextlib.suppress(Exception):
            raw.rollback()
        raw.close()


def _sqlite_path(engine: sa.Engine) -> str:
    path = engine.url.database
    if not path or path == ":memory:":
        raise AccessSetupError("govmdm query needs a SQLite warehouse file, not :memory:")
    return str(Path(path).resolve())


def _authorizer(role: Role, denied: list[str]) -> Callable[..., int]:
    masked_views = frozenset(v.name for v in VIEWS)
    system = ("sqlite_master", "sqlite_schema", "sqlite_temp_master")
    pragmas = ("table_info", "table_xinfo", "table_list", "index_list")

    def authorize(
        action: int, arg1: str | None, arg2: str | None, _db: str | None, source: str | None
    ) -> int:
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and arg1 in pragmas and arg2 is not None:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ:
            table = (arg1 or "").lower()
            if (
                role == "privileged"
                or table in ANALYST_RELATIONS
                or table in system
                or table.startswith("pragma_")
                or arg2 == ""  # no column read: count(*) over a flattened view
                # a masked view reading its table (a CTE named like one is refused by check_sql)
                or (source or "").lower() in masked_views
            ):
                return sqlite3.SQLITE_OK
            denied.append(table)
            return sqlite3.SQLITE_DENY
        denied.append(f"action {action} {arg1 or ''}".strip())
        return sqlite3.SQLITE_DENY

    return authorize


_PROGRESS_STEPS = 20_000  # SQLite VM instructions between two looks at the clock (~1 ms)


def _fetch_sqlite(engine: sa.Engine, sql: str, role: Role) -> tuple[list[str], Sequence[Any]]:
    import time

    _, timeout_s = _settings(engine)
    path = _sqlite_path(engine)
    conn = sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True, timeout=60)
    denied: list[str] = []
    deadline = time.monotonic() + timeout_s
    # A reader holds its WAL snapshot (and so holds back checkpoints) until it ends: bound it.
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_STEPS)
    try:
        conn.set_authorizer(_authorizer(role, denied))
        try:
            cur = conn.execute(sql)
            columns = None if cur.description is None else [d[0] for d in cur.description]
            rows = cur.fetchall()
        except sqlite3.DatabaseError as exc:
            if denied:
                tables = sorted({d for d in denied if not d.startswith("action")})
                if tables:
                    raise QueryRefused(_denied_message(tables)) from None
                raise QueryRefused(
                    "only reads are allowed: govmdm query runs one read-only SELECT"
                ) from None
            if time.monotonic() > deadline and "interrupt" in str(exc).lower():
                raise _timed_out(timeout_s) from None
            raise AccessError(f"the query failed: {_error_text(exc)}") from None
        if columns is None:
            raise QueryRefused("the statement returned no rows: govmdm query runs SELECTs")
        return columns, rows
    finally:
        conn.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def run_query(
    city: CityConfig, sql: str, *, privileged: bool = False, audit_it: bool = True
) -> QueryResult:
    """``govmdm query``: run one SELECT on the caller's own connection against what their role
    may read. Audited: the entry is written before the query runs (a killed query leaves it
    ``running``) and completed after, refusals and failures too."""
    with session(city) as s:
        role = s.role(privileged, action="query")
        entry = None
        if audit_it:
            entry = audit.begin(s.engine, "query", _sql_target(sql), role=role,
                                detail={"sql": sql})  # fmt: skip
        try:
            result = fetch(s.engine, sql, role)
        except AccessError as exc:
            if entry is not None:
                outcome = "refused" if isinstance(exc, QueryRefused | AccessDenied) else "failed"
                audit.finish(s.engine, entry, outcome=outcome, detail={"reason": str(exc)})
            raise
        except BaseException as exc:  # Ctrl-C, a lost connection: say so, then go on failing
            if entry is not None:
                with contextlib.suppress(Exception):
                    audit.finish(s.engine, entry, outcome="failed",
                                 detail={"reason": type(exc).__name__})  # fmt: skip
            raise
        if entry is not None:
            audit.finish(
                s.engine, entry, row_count=len(result.frame),
                detail={"relations": sorted(result.relations), "scrubbed": result.scrubbed},
            )  # fmt: skip
    return result


def _sql_target(sql: str) -> str:
    one_line = " ".join(sql.split())
    return one_line if len(one_line) <= 200 else one_line[:199] + "…"


# --- exports -----------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What ``govmdm export`` wrote."""

    out_dir: Path
    role: Role
    pseudonymized: bool
    files: dict[str, Path] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    dictionary: Path | None = None
    scrubbed: int = 0


def export(
    city: CityConfig,
    out_dir: Path | None = None,
    *,
    privileged: bool = False,
    pseudonymize: bool = False,
    views: Sequence[str] | None = None,
) -> ExportResult:
    """Write the published tables as Parquet (one file per view, e.g. ``person.parquet``) with
    ``data_dictionary.parquet`` / ``.csv`` and ``manifest.json``.

    The analyst export reads the masked views the way ``govmdm query`` does (PostgreSQL: as the
    analyst role). ``privileged`` exports the full views. ``pseudonymize`` replaces master IDs,
    ID numbers and source keys by keyed tokens (:func:`pseudonym`), on top of either.
    """
    from access.catalog import data_dictionary  # catalog imports this module

    role = resolve_role(city, privileged, action="export")
    key = pseudonym_key() if pseudonymize else None
    release = release_of(city)
    specs = [VIEW_BY_NAME[v] for v in views] if views else list(VIEWS)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = f"{role}{'-pseudonymized' if pseudonymize else ''}"
    target = out_dir or city.var_dir / "exports" / f"{stamp}-{suffix}"
    target.mkdir(parents=True, exist_ok=True)
    result = ExportResult(target, role, pseudonymize)
    with session(city, export=True) as own:
        engine = own.engine
        entry = audit.begin(
            engine, "export", str(target), role=role,
            detail={"format": "parquet", "pseudonymized": pseudonymize},
        )  # fmt: skip
        try:
            for spec in specs:
                rows = _export_rows(engine, spec, role, key, release)
                frame = pd.DataFrame.from_records(rows, columns=spec.columns)
                if role == "analyst":
                    frame, hits = scrub_frame(frame, skip=list(spec.pseudonyms) if key else ())
                    result.scrubbed += hits
                path = target / f"{spec.export_name}.parquet"
                _write_parquet(frame, spec, path, role=role, pseudonymized=key is not None,
                               city=city)  # fmt: skip
                result.files[spec.export_name] = path
                result.rows[spec.export_name] = len(frame)
            dictionary = data_dictionary(city, specs, role=role, pseudonymized=key is not None)
            result.dictionary = _write_dictionary(dictionary, target)
            _write_manifest(result, city, engine)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                audit.finish(engine, entry, outcome="failed", detail={"reason": str(exc)})
            raise
        audit.finish(
            engine, entry, row_count=sum(result.rows.values()),
            detail={"rows": result.rows, "scrubbed": result.scrubbed},
        )  # fmt: skip
    return result


def _export_rows(
    engine: sa.Engine, spec: ViewSpec, role: Role, key: bytes | None, release: Release
) -> list[dict[str, Any]]:
    if key is None:
        name = spec.name if role == "analyst" else spec.full_name
        got = fetch(engine, f"SELECT * FROM {name}", role)
        return [dict(zip(got.columns, r, strict=True)) for r in got.frame.itertuples(index=False)]
    if role == "privileged":
        got = fetch(engine, f"SELECT * FROM {spec.full_name}", "privileged")
        rows = [dict(zip(got.columns, r, strict=True)) for r in got.frame.itertuples(index=False)]
        return pseudonymize_rows(spec, rows, key)
    # Tokens are computed from clear values (the same ID gives the same token everywhere): the
    # platform runs the masked view's own SELECT with the pseudonymized columns carried in clear.
    carry = list(spec.pseudonyms)
    select = view_select(spec, _dialect(engine), masked=True, release=release, carry=carry)
    got = fetch(engine, select, "privileged")
    out = []
    for r in got.frame.itertuples(index=False):
        row = dict(zip(got.columns, r, strict=True))
        masked = {c: row[c] for c in spec.columns}
        clear = masked | {c: row[f"{_CARRIED}{c}"] for c in carry}
        tokens = pseudonymize_rows(spec, [clear], key)[0]
        out.append(
            {c: (tokens[c] if c in carry and tokens[c] != clear[c] else masked[c])
             for c in spec.columns}
        )  # fmt: skip
    return out


def _write_parquet(
    frame: pd.DataFrame,
    spec: ViewSpec,
    path: Path,
    *,
    role: Role,
    pseudonymized: bool,
    city: CityConfig,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from access.catalog import column_description

    fields = []
    arrays = []
    for column in spec.table.columns:
        arrow_type = parquet_type(spec, column, role=role, pseudonymized=pseudonymized)
        values = [_coerce(v, arrow_type) for v in frame[column.name].tolist()]
        arrays.append(pa.array(values, arrow_type))
        description = column_description(spec.table.name, column.name)
        fields.append(pa.field(column.name, arrow_type, metadata={"description": description}))
    schema = pa.schema(fields, metadata={"govmdm.view": spec.name, "govmdm.role": role,
                                         "govmdm.city": city.name})  # fmt: skip
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)


def parquet_type(spec: ViewSpec, column: sa.Column[Any], *, role: Role, pseudonymized: bool) -> Any:
    """The Arrow type a column is exported as: text where masked or pseudonymized, else the
    warehouse column's type (dates as date32, decimals as decimal128, …)."""
    import pyarrow as pa

    if (role == "analyst" and column.name in spec.masks) or (
        pseudonymized and column.name in spec.pseudonyms
    ):
        return pa.string()
    return _arrow_type(column.type)


def _arrow_type(sa_type: Any) -> Any:
    import pyarrow as pa

    if isinstance(sa_type, sa.DateTime):
        return pa.timestamp("us", tz="UTC" if sa_type.timezone else None)
    if isinstance(sa_type, sa.Date):
        return pa.date32()
    if isinstance(sa_type, sa.Integer):
        return pa.int64()
    if isinstance(sa_type, sa.Float):
        return pa.float64()
    if isinstance(sa_type, sa.Numeric):
        return pa.decimal128(sa_type.precision or 38, sa_type.scale or 0)
    return pa.string()


def _coerce(value: Any, arrow_type: Any) -> Any:
    """A value from either backend (SQLite gives dates as text) as ``arrow_type`` takes it."""
    import decimal

    import pyarrow as pa

    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NaT:
        return None
    if pa.types.is_string(arrow_type):
        return str(value)
    if pa.types.is_timestamp(arrow_type):
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        return value.to_pydatetime() if isinstance(value, pd.Timestamp) else value
    if pa.types.is_date(arrow_type):
        if isinstance(value, str):
            return dt.date.fromisoformat(value[:10])
        return value.date() if isinstance(value, dt.datetime) else value
    if pa.types.is_decimal(arrow_type):
        return decimal.Decimal(str(value))
    if pa.types.is_integer(arrow_type):
        return int(value)
    if pa.types.is_floating(arrow_type):
        return float(value)
    return value


def _write_dictionary(dictionary: pd.DataFrame, target: Path) -> Path:
    path = target / "data_dictionary.parquet"
    dictionary.to_parquet(path, index=False)
    dictionary.to_csv(target / "data_dictionary.csv", index=False, encoding="utf-8-sig")
    return path


def _write_manifest(result: ExportResult, city: CityConfig, engine: sa.Engine) -> None:
    import json

    from store.warehouse import latest_run

    run = latest_run(engine)
    manifest = {
        "city": city.name,
        "night": run["run_id"] if run else None,
        "role": result.role,
        "pseudonymized": result.pseudonymized,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "created_by": audit.who(engine),
        "files": {k: p.name for k, p in result.files.items()},
        "rows": result.rows,
        "dictionary": "data_dictionary.parquet",
    }
    (result.out_dir / "manifest.json").write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


# --- masking for govmdm explain and review ---------------------------------------------------

_CONFLICT_NOTE = re.compile(
    r"^conflict: (?P<dept>\S+) says (?P<attr>\S+) = (?P<value>.*), authority (?P<auth>\S+) "
    r"says (?P<auth_value>.*) \((?P<key>[^()]*)\)$"
)
_RECORD = re.compile(r"(?P<dept>[^/\s]+)/(?P<table>[^/\s]+)/(?P<key>\S+)")


def _hidden_record(record: str, release: Release) -> bool:
    m = _RECORD.fullmatch(record.strip())
    return m is not None and (m["dept"], m["table"]) in release.hidden


def release_record(record: str) -> str:
    """A record ID (``department/table/key``) with its key as the analyst views show it."""
    m = _RECORD.fullmatch(record.strip())
    if not m:
        return mask_text(record)
    return f"{m['dept']}/{m['table']}/{release_source_key(m['key'])}"


class NotShared(AccessDenied):
    """The entity is known only from sources shared with nobody (不予共享)."""


def mask_explanation(ex: Any, release: Release | None = None) -> Any:
    """A :class:`master_data.explain.Explanation` as an analyst may see it: what the analyst
    views release — personal values suppressed, public ones in clear, keys that are ID or
    mobile numbers suppressed — and nothing from a source shared with nobody (``release``): its
    member rows, their links, its provenance and its conflicts are left out.

    Raises :class:`NotShared` if every member row comes from such a source."""
    release = release or Release()
    entity = ex.entity
    attributes = []
    for a in ex.attributes:
        hidden = a["department"] is not None and any(
            d == a["department"] for d in release.hidden_departments
        )
        shown = a | {
            "value": release_field(entity, str(a["attribute"]), a["value"]),
            "source_key": release_source_key(a["source_key"]),
            "agree": None if release.hidden else a["agree"],
        }
        if hidden or (a["department"] and a.get("source_table")
                      and (a["department"], a["source_table"]) in release.hidden):  # fmt: skip
            shown |= {"department": None, "source_key": None, "updated": None, "rule": None}
        attributes.append(shown)
    members = []
    for m in ex.members:
        if m.get("record") and _hidden_record(str(m["record"]), release):
            continue
        masked = {
            c: (v if c in ("record", "link_rule", "updated_at") else release_field(entity, c, v))
            for c, v in m.items()
        }
        if masked.get("record"):
            masked["record"] = release_record(str(masked["record"]))
        members.append(masked)
    if ex.members and not members:
        raise NotShared(
            f"{ex.master_id} is known only from sources that are not shared (不予共享, "
            "config/catalog.yaml); only a privileged user may explain it"
        )
    links = [
        lk | {"left": release_record(lk["left"]), "right": release_record(lk["right"])}
        for lk in ex.links
        if not (_hidden_record(lk["left"], release) or _hidden_record(lk["right"], release))
    ]
    notes = []
    for note in ex.notes:
        m = _CONFLICT_NOTE.match(note)
        if m:
            if m["dept"] in release.hidden_departments or m["auth"] in release.hidden_departments:
                continue
            attr = m["attr"]
            value = release_field(entity, attr, _unrepr(m["value"]))
            auth_value = release_field(entity, attr, _unrepr(m["auth_value"]))
            note = (
                f"conflict: {m['dept']} says {attr} = {value!r}, authority {m['auth']} says "
                f"{auth_value!r} ({release_source_key(m['key'])})"
            )
        elif any(_hidden_record(r.group(0), release) for r in _RECORD.finditer(note)):
            continue
        else:
            note = _RECORD.sub(lambda r: release_record(r.group(0)), note)
        notes.append(mask_text(note))
    return replace(ex, attributes=attributes, members=members, links=links, notes=notes)


def _unrepr(text: str) -> str | None:
    import ast

    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return None if value is None else str(value)


def mask_review_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Review-queue rows as ``govmdm review list`` prints them: record IDs with keys that are ID
    or mobile numbers masked (:func:`fields.masking.mask_key`)."""
    return [
        dict(r) | {"left_record": _mask_record(str(r["left_record"])),
                   "right_record": _mask_record(str(r["right_record"]))}
        for r in rows
    ]  # fmt: skip


def _mask_record(record: str) -> str:
    m = _RECORD.fullmatch(record.strip())
    if not m:
        return mask_text(record)
    return f"{m['dept']}/{m['table']}/{mask_source_key(m['key'])}"
