"""The data dictionary is the one definition of a canonical field: the schemas, tables, masks,
labels and groups every other module uses agree with it."""

from __future__ import annotations

import pyarrow as pa
import pytest
import sqlalchemy as sa

from access.catalog import FIELD_ZH, column_description
from access.release import CATALOG_TABLE
from etl.config import DATE_FIELDS, FIELDS
from etl.standardize import SCHEMAS
from fields import dictionary, masking, normalize
from fields.dictionary import ENTITIES
from master_data.evaluate import SCORED
from master_data.survivorship import ATTRIBUTES
from store import tables
from store.warehouse import CURRENT_TABLES, NIGHTLY_TABLES

GOLDEN = {"person": tables.person_table, "enterprise": tables.enterprise_table}


@pytest.mark.parametrize("entity", ENTITIES)
def test_golden_table_columns_are_the_dictionary_s(entity: str) -> None:
    table = GOLDEN[entity]
    values = [c for c in table.columns if c.name not in ("master_id", *_TAIL)]
    assert [c.name for c in values] == [f.name for f in dictionary.golden_fields(entity)]
    for column in values:
        f = dictionary.field(entity, column.name)
        assert str(column.type) == str(f.sql), column.name
        assert column.nullable


_TAIL = ("member_count", "departments", "updated_at", "run_id")


@pytest.mark.parametrize("entity", ENTITIES)
def test_canonical_schema_holds_every_column_with_its_arrow_type(entity: str) -> None:
    schema = SCHEMAS[entity]
    for f in dictionary.fields_of(entity):
        if f.arrow is None:
            assert f.name not in schema.names  # a linked column is set at publish
            continue
        assert schema.field(f.name).type == f.arrow
    assert [n for n in schema.names if n.startswith("raw_")] == [
        f"raw_{name}" for name in dictionary.source_fields(entity)
    ]


def test_config_fields_are_the_source_fields() -> None:
    assert {e: dictionary.source_fields(e) for e in ENTITIES} == FIELDS
    assert {"birth_date", "established_date"} == DATE_FIELDS
    assert "phones_all" not in FIELDS["person"] and "name_key" not in FIELDS["enterprise"]


@pytest.mark.parametrize("entity", ENTITIES)
def test_survivorship_groups_cover_the_golden_columns(entity: str) -> None:
    groups = ATTRIBUTES[entity]
    assert list(groups) == list(dictionary.source_fields(entity))
    survived = [c for columns in groups.values() for c in columns]
    linked = [f.name for f in dictionary.golden_fields(entity) if f.group is None]
    assert sorted(survived + linked) == sorted(f.name for f in dictionary.golden_fields(entity))
    assert groups["address"][0] == "division_code"  # the division decides "has an address"
    for attribute, columns in groups.items():
        assert all(dictionary.field(entity, c).group == attribute for c in columns)


def test_every_personal_field_has_a_mask_or_a_release_rule_and_public_ones_neither() -> None:
    for f in dictionary.FIELDS:
        policy = masking.policy(f.entity, f.name)
        assert policy == f.policy
        if policy.masked or policy.release != "clear":
            assert policy.personal, f
    persons = [f for f in dictionary.FIELDS if f.entity == "person" and f.golden]
    assert all(f.policy.personal for f in persons if f.group is not None)
    for name in ("name", "id_number", "phone", "address", "birth_date"):
        assert masking.policy("person", name).masked, name
    for name in ("legal_rep_name", "legal_rep_id"):
        assert masking.policy("enterprise", name).masked, name
    assert not masking.policy("enterprise", "name").personal


def test_masking_policy_is_the_dictionary_s() -> None:
    assert {(f.entity, f.name): f.policy for f in dictionary.FIELDS} == masking.POLICY
    assert masking.mask_field("person", "id_number", "11010519491231002X") == "110105********002X"
    assert masking.mask_field("enterprise", "legal_rep_name", "张三丰") == "张**"


@pytest.mark.parametrize("entity", ENTITIES)
def test_labels_are_unique_and_chinese(entity: str) -> None:
    labels = [f.label for f in dictionary.fields_of(entity)]
    assert len(labels) == len(set(labels))
    descriptions = dictionary.descriptions(entity)
    assert len(set(descriptions.values())) == len(descriptions)
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in label) for label in labels)


def test_catalog_and_reports_use_the_dictionary_s_labels() -> None:
    for entity in ENTITIES:
        for name in dictionary.source_fields(entity):
            assert FIELD_ZH[entity][name] == dictionary.label(entity, name)
        for f in dictionary.golden_fields(entity):
            assert column_description(f"mdm_{entity}", f.name) == (f.description or f.label)
    assert dictionary.label("person", "id_number") == "公民身份号码"
    assert dictionary.label("enterprise", "shoe_size") == "shoe_size"


def test_every_source_field_has_a_normalizer() -> None:
    for entity in ENTITIES:
        for name in dictionary.source_fields(entity):
            assert dictionary.field(entity, name).normalized_by in normalize.NORMALIZERS
    assert dictionary.field("enterprise", "name").normalized_by == "enterprise_name"
    assert dictionary.field("person", "name_pinyin").normalized_by is None


def test_evaluation_scores_golden_columns() -> None:
    for entity, scored in SCORED.items():
        golden = {f.name for f in dictionary.golden_fields(entity)}
        assert set(scored) <= golden, set(scored) - golden


def test_unknown_names_are_key_errors() -> None:
    with pytest.raises(KeyError, match="no entity"):
        dictionary.fields_of("vehicle")
    with pytest.raises(KeyError, match="no field"):
        dictionary.field("person", "uscc")


def test_one_metadata_holds_every_warehouse_table() -> None:
    names = set(tables.metadata.tables)
    for table in (*CURRENT_TABLES, *NIGHTLY_TABLES, *tables.PUBLISHED_TABLES, *tables.STATE_TABLES):
        assert table.metadata is tables.metadata and table.name in names
    assert {tables.catalog_table.name, tables.audit_table.name} <= names
    assert tables.catalog_table.name == CATALOG_TABLE
    engine = sa.create_engine("sqlite://")
    tables.metadata.create_all(engine)
    assert set(sa.inspect(engine).get_table_names()) == names


def test_arrow_types_of_golden_columns_fit_their_sql_types() -> None:
    for f in dictionary.FIELDS:
        if f.arrow is None or f.sql is None:
            continue
        if pa.types.is_string(f.arrow):
            assert isinstance(f.sql, sa.String | sa.Text), f
        elif pa.types.is_date(f.arrow):
            assert isinstance(f.sql, sa.Date), f
        else:
            assert pa.types.is_decimal(f.arrow) and isinstance(f.sql, sa.Numeric), f
