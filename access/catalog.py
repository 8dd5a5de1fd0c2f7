"""The catalog of shared resources (信息资源目录), generated from the configuration.

One resource per golden table (人口基础库 ``mdm_person``, 法人基础库 ``mdm_enterprise``, their
provenance, crosswalk, relationships, conflicts and ID history) and per department's source
table (``gongan/t_rk_jbxx``, …). Each lists its fields with a Chinese description, type and
authoritative department (一数一源), and how an analyst sees it (masked or not); its owner and
contact, update frequency, and share type — 无条件共享 (unconditional), 有条件共享
(conditional, with the condition) or 不予共享 (not shared) — from ``config/catalog.yaml``.

``govmdm catalog`` prints it; :func:`write_catalog` stores it flat (one row per field) as the
``catalog`` table of the warehouse, which analysts may query like the views; the data dictionary
of an export (:func:`data_dictionary`) is built from the same descriptions.

>>> [r.resource_id for r in build_catalog(city)][:2]
['mdm_person', 'mdm_enterprise']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import sqlalchemy as sa

from access.policy import Role, load_share_policy
from access.release import MASKS, PSEUDONYMS, VIEWS, ViewSpec, parquet_type
from etl.config import CityConfig, TableConfig
from fields import dictionary
from master_data.survivorship import ATTRIBUTES
from store.tables import catalog_table, metadata

SHARE_TYPES_ZH = {
    "unconditional": "无条件共享",
    "conditional": "有条件共享",
    "not_shared": "不予共享",
}
FREQUENCY_ZH = {"daily": "每日", "weekly": "每周", "monthly": "每月"}

GOLDEN_TITLES = {
    "mdm_person": "人口基础库",
    "mdm_enterprise": "法人基础库",
    "mdm_provenance": "基础库数据溯源（每个属性的来源）",
    "mdm_crosswalk": "源记录与主体对照表",
    "mdm_relationship": "自然人与法人关联关系",
    "mdm_person_relationship": "自然人之间的关联关系（监护人）",
    "mdm_conflict": "多元校核冲突记录",
    "mdm_id_event": "主体标识变更记录",
}

FIELD_ZH = {
    entity: {name: dictionary.label(entity, name) for name in dictionary.source_fields(entity)}
    for entity in dictionary.ENTITIES
}
"""Canonical fields in Chinese, for source tables (from :mod:`fields.dictionary`)."""

_TAIL_ZH = {
    "member_count": "归并的源记录数",
    "departments": "提供源记录的部门（代码，逗号分隔）",
    "updated_at": "各源记录中最近的更新时间",
    "run_id": "最后一次改变该记录的批次（夜间运行）",
}
COLUMN_ZH: dict[str, dict[str, str]] = {
    "mdm_person": {
        "master_id": "自然人主数据标识（P + 10位数字，跨批次稳定）",
        **dictionary.descriptions("person"),
        **_TAIL_ZH,
    },
    "mdm_enterprise": {
        "master_id": "法人主数据标识（E + 10位数字，跨批次稳定）",
        **dictionary.descriptions("enterprise"),
        **_TAIL_ZH,
    },
    "mdm_provenance": {
        "entity": "主体类型（person 自然人 / enterprise 法人）",
        "master_id": "主数据标识",
        "attribute": "属性名",
        "department": "取值来源部门（代码）",
        "source_table": "来源表",
        "source_key": "来源记录主键",
        "source_updated_at": "来源记录的更新时间",
        "candidates": "该属性有值的源记录数",
        "agreeing": "其中与所取值一致的记录数",
        "rule": (
            "取值规则（authority 权威部门 / completeness 地址最完整 / "
            "agreement(k of n) 多部门一致 / most_recent 最新 / rank 部门优先级 / "
            "tiebreak 确定性排序；stale> 前缀：权威部门的值已超过时效，由其后的规则取值）"
        ),
    },
    "mdm_crosswalk": {
        "entity": "主体类型（person / enterprise）",
        "department": "源部门（代码）",
        "source_table": "源表",
        "source_key": "源记录主键",
        "master_id": "所属主数据标识",
        "link_rule": "关联方式（确定性规则名，或 model 概率模型，singleton 单独成体）",
        "link_probability": "模型匹配概率",
        "first_run_id": "首次关联的批次",
    },
    "mdm_relationship": {
        "kind": "关系类型（legal_representative 法定代表人 / employer 工作单位）",
        "person_master_id": "自然人主数据标识",
        "enterprise_master_id": "法人主数据标识",
        "evidence": "关联依据（法定代表人身份证号，或工作单位统一社会信用代码）",
    },
    "mdm_person_relationship": {
        "kind": "关系类型（guardian 监护人：未成年人的记录登记在监护人的身份证号下）",
        "person_master_id": "自然人主数据标识（被监护人）",
        "related_master_id": "关联自然人的主数据标识（监护人）",
        "evidence": "关联依据（监护人身份证号）",
    },
    "mdm_conflict": {
        "run_id": "发现冲突的批次",
        "entity": "主体类型（person / enterprise）",
        "master_id": "主数据标识",
        "attribute": "属性名",
        "department": "与权威值不一致的部门",
        "source_table": "该部门的表",
        "source_key": "该部门的记录主键",
        "value": "该部门的值",
        "authority_department": "权威部门（代码）",
        "authority_value": "权威部门的值（基础库取值）",
    },
    "mdm_id_event": {
        "run_id": "批次",
        "entity": "主体类型（person / enterprise）",
        "seq": "批次内序号",
        "event": "事件（issued 新发 / restored 恢复 / merged 合并 / split 拆分 / retired 注销）",
        "master_id": "事件后的主数据标识",
        "old_ids": "事件前的主数据标识（逗号分隔）",
        "reason": "原因说明",
    },
}


@dataclass
class CatalogField:
    """One field of a resource."""

    name: str
    description: str
    data_type: str | None = None
    maps_to: str | None = None
    authority: str | None = None
    authority_name: str | None = None
    masked: str | None = None


@dataclass
class Resource:
    """One entry of the catalog."""

    resource_id: str
    title: str
    kind: str
    entity: str | None
    owner: str
    owner_code: str | None
    contact: str | None
    update_frequency: str
    share_type: str
    share_condition: str | None
    share_basis: str | None
    analyst_view: str | None = None
    primary_key: list[str] = field(default_factory=list)
    authority_for: list[str] = field(default_factory=list)
    fields: list[CatalogField] = field(default_factory=list)

    @property
    def share_type_zh(self) -> str:
        """The share type as the 目录 writes it."""
        return SHARE_TYPES_ZH[self.share_type]

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return asdict(self) | {"share_type_zh": self.share_type_zh}


def column_description(table: str, column: str) -> str:
    """The Chinese description of a warehouse column (the column name if none is written)."""
    return COLUMN_ZH.get(table, {}).get(column, column)


def _entity_of(table: str) -> str | None:
    return {"mdm_person": "person", "mdm_enterprise": "enterprise"}.get(table)


def _attribute_of(entity: str, column: str) -> str | None:
    return next((a for a, cols in ATTRIBUTES[entity].items() if column in cols), None)


def golden_field(city: CityConfig, spec: ViewSpec, column: sa.Column[Any]) -> CatalogField:
    """A golden table's column as the catalog and the data dictionary describe it."""
    entity = _entity_of(spec.table.name)
    attribute = _attribute_of(entity, column.name) if entity else None
    dept = city.authority(entity, attribute) if entity and attribute else None
    kind = spec.masks.get(column.name)
    return CatalogField(
        name=column.name,
        description=column_description(spec.table.name, column.name),
        data_type=str(column.type),
        authority=dept.code if dept else None,
        authority_name=dept.name if dept else None,
        masked=MASKS[kind] if kind else None,
    )


def build_catalog(city: CityConfig) -> list[Resource]:
    """Every golden table, then every department's source table, with their fields."""
    policy = load_share_policy(city)
    platform = f"{city.name}政务数据共享交换平台"
    contact = city.data_engineering_contact
    out = []
    for spec in VIEWS:
        share = policy.for_resource(spec.table.name)
        entity = _entity_of(spec.table.name)
        out.append(
            Resource(
                resource_id=spec.table.name,
                title=GOLDEN_TITLES.get(spec.table.name, spec.table.name),
                kind="golden",
                entity=entity,
                owner=platform,
                owner_code=None,
                contact=f"{contact.name} <{contact.email}>",
                update_frequency="daily",
                share_type=share.share_type,
                share_condition=share.condition,
                share_basis=share.basis,
                analyst_view=spec.name,
                primary_key=[c.name for c in spec.table.primary_key.columns],
                authority_for=[],
                fields=[golden_field(city, spec, c) for c in spec.table.columns],
            )
        )
    for dept in city.departments:
        for table in dept.tables:
            rid = f"{dept.code}/{table.name}"
            share = policy.for_resource(rid)
            out.append(
                Resource(
                    resource_id=rid,
                    title=f"{dept.name} {table.name}",
                    kind="source",
                    entity=table.entity,
                    owner=dept.name,
                    owner_code=dept.code,
                    contact=f"{dept.contact.name} <{dept.contact.email}>",
                    update_frequency=dept.update_frequency,
                    share_type=share.share_type,
                    share_condition=share.condition,
                    share_basis=share.basis,
                    primary_key=list(table.primary_key),
                    authority_for=list(dept.authority_for.fields(table.entity)),
                    fields=_source_fields(city, table),
                )
            )
    return out


def _source_fields(city: CityConfig, table: TableConfig) -> list[CatalogField]:
    masked_golden = {"person": VIEWS[0].masks, "enterprise": VIEWS[1].masks}[table.entity]
    fields = []
    for column in table.source_columns:
        mapping = table.columns.get(column)
        if mapping is not None and mapping.field is not None:
            canonical = mapping.field
            dept = city.authority(table.entity, canonical)
            kind = masked_golden.get(canonical)
            fields.append(
                CatalogField(
                    name=column,
                    description=FIELD_ZH[table.entity].get(canonical, canonical),
                    maps_to=canonical,
                    authority=dept.code if dept else None,
                    authority_name=dept.name if dept else None,
                    masked=MASKS[kind] if kind else None,
                )
            )
        elif mapping is not None and mapping.route is not None:
            routes = "/".join(mapping.route)
            fields.append(CatalogField(column, f"企业代码，按结构分至 {routes}", maps_to=routes))
        elif mapping is not None:
            fields.append(
                CatalogField(column, f"扩展字段（{mapping.target}）", maps_to=mapping.target)
            )
        elif column in table.primary_key:
            fields.append(CatalogField(column, "记录主键"))
        elif column == table.change_column:
            fields.append(CatalogField(column, "更新时间（增量抽取依据）"))
        else:  # read by another column's `cases`
            fields.append(CatalogField(column, "参与多列取值的列（见该表 cases 配置）"))
    return fields


def catalog_frame(resources: Sequence[Resource]) -> pd.DataFrame:
    """The catalog flat, one row per field: the ``catalog`` table's rows."""
    rows = []
    for r in resources:
        for i, f in enumerate(r.fields):
            rows.append(
                {
                    "resource_id": r.resource_id,
                    "field": f.name,
                    "position": i,
                    "resource_title": r.title,
                    "resource_kind": r.kind,
                    "entity": r.entity,
                    "analyst_view": r.analyst_view,
                    "owner": r.owner,
                    "owner_code": r.owner_code,
                    "contact": r.contact,
                    "update_frequency": r.update_frequency,
                    "share_type": r.share_type,
                    "share_type_zh": r.share_type_zh,
                    "share_condition": r.share_condition,
                    "share_basis": r.share_basis,
                    "maps_to": f.maps_to,
                    "description": f.description,
                    "data_type": f.data_type,
                    "authority": f.authority,
                    "authority_name": f.authority_name,
                    "masked": f.masked,
                }
            )
    return pd.DataFrame(rows, columns=[c.name for c in catalog_table.columns])


def write_catalog(conn: sa.Connection, city: CityConfig) -> int:
    """Replace the ``catalog`` table's rows (in the caller's transaction); returns the count."""
    metadata.create_all(conn, tables=[catalog_table], checkfirst=True)
    frame = catalog_frame(build_catalog(city))
    conn.execute(catalog_table.delete())
    records = [
        {k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict("records")
    ]
    if records:
        conn.execute(catalog_table.insert(), records)
    return len(records)


def data_dictionary(
    city: CityConfig, specs: Sequence[ViewSpec], *, role: Role, pseudonymized: bool
) -> pd.DataFrame:
    """The data dictionary of an export: for each file's column its type, Chinese description,
    whether (and how) it is masked or pseudonymized, and its authoritative department."""
    rows = []
    for spec in specs:
        for column in spec.table.columns:
            f = golden_field(city, spec, column)
            pseudo = pseudonymized and column.name in spec.pseudonyms
            masked = f.masked if role == "analyst" else None
            rows.append(
                {
                    "file": f"{spec.export_name}.parquet",
                    "table": spec.table.name,
                    "column": column.name,
                    "type": str(parquet_type(spec, column, role=role, pseudonymized=pseudonymized)),
                    "description": f.description,
                    "masked": masked is not None,
                    "masking": masked,
                    "pseudonymized": pseudo,
                    "pseudonym_of": PSEUDONYMS[spec.pseudonyms[column.name]] if pseudo else None,
                    "authority": f.authority,
                    "authority_name": f.authority_name,
                }
            )
    return pd.DataFrame(rows)


def resource(city: CityConfig, resource_id: str) -> Resource:
    """One resource by ID (``mdm_person``, ``gongan/t_rk_jbxx``, or a view name)."""
    for r in build_catalog(city):
        if resource_id in (r.resource_id, r.analyst_view):
            return r
    raise KeyError(resource_id)
