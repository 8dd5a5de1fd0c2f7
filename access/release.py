"""What the analyst views release: one view spec per published table, with the mask kind of
each column and the pseudonym kind of each column an extract may tokenise, and what the share
policy (``config/catalog.yaml``) withholds from them.

Every published table an analyst may read has two views in the warehouse: ``v_person``
(masked) and ``v_person_full`` (as published), likewise ``v_enterprise``, ``v_provenance``,
``v_crosswalk``, ``v_relationship``, ``v_person_relationship`` (guardians), ``v_conflict`` and
``v_id_event``; plus the ``catalog`` table (信息资源目录). The masked views are a de-identified
release: each golden column's kind comes from the per-field policy of :mod:`fields.masking`;
sources shared with nobody (不予共享) are withheld (:class:`Release`). :mod:`access.viewsql`
writes the SQL behind them.

>>> [v.name for v in VIEWS][:2]
['v_person', 'v_enterprise']
>>> VIEW_BY_NAME["v_person"].masks["id_number"]
'withheld'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from access.audit import audit_table
from access.policy import DEFAULT_K, Role, load_share_policy
from etl.config import CityConfig
from fields.masking import MASK_DESCRIPTIONS, RELEASE_DESCRIPTIONS, policy
from store.tables import (
    PUBLISHED_TABLES,
    conflict_table,
    crosswalk_table,
    enterprise_table,
    id_event_table,
    person_relationship_table,
    person_table,
    provenance_table,
    relationship_table,
)

CATALOG_TABLE = "catalog"

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

_RELEASE_KIND = {"suppress": "hidden", "generalise": "kanon", "mask": "name"}
PER_ROW_KINDS = frozenset({"hidden", "withheld", "name", "key", "evidence", "conflict"})
"""Mask kinds computed row by row (the others are computed over the whole table)."""


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
        pseudonyms={"master_id": "master_id", "employer_master_id": "master_id", "id_number": "id"},
    ),
    ViewSpec(
        "v_enterprise",
        enterprise_table,
        "enterprise",
        masks=_golden_masks("enterprise", enterprise_table),
        pseudonyms={
            "master_id": "master_id",
            "legal_rep_master_id": "master_id",
            "legal_rep_id": "id",
        },
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
        pseudonyms={
            "person_master_id": "master_id",
            "enterprise_master_id": "master_id",
            "evidence": "evidence",
        },
    ),
    ViewSpec(
        "v_person_relationship",
        person_relationship_table,
        "person_relationship",
        masks={"evidence": "hidden"},  # the guardian's ID number: the masters say who it is
        pseudonyms={
            "person_master_id": "master_id",
            "related_master_id": "master_id",
            "evidence": "id",
        },
    ),
    ViewSpec(
        "v_conflict",
        conflict_table,
        "conflict",
        masks={"source_key": "key", "value": "conflict", "authority_value": "conflict"},
        pseudonyms={
            "master_id": "master_id",
            "source_key": "record",
            "value": "conflict",
            "authority_value": "conflict",
        },
    ),
    ViewSpec(
        "v_id_event",
        id_event_table,
        "id_event",
        pseudonyms={"master_id": "master_id", "old_ids": "master_ids"},
    ),
)
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
        d.code
        for d in city.departments
        if d.tables and all((d.code, t.name) in hidden for t in d.tables)
    )
    withheld = frozenset(
        v.table.name for v in VIEWS if share.for_resource(v.table.name).share_type == "not_shared"
    )
    return Release(share.k_anonymity, hidden, whole, withheld)


def protected() -> list[str]:
    """What the analyst role must never read: every warehouse table, the full views, the log."""
    return [
        *(t.name for t in PUBLISHED_TABLES),
        *(v.full_name for v in VIEWS),
        audit_table.name,
    ]


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
