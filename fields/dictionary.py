"""The data dictionary: every column of a canonical person or enterprise, defined once.

Each :class:`Field` says what one column is — its entity, Arrow type in the canonical Parquet
rows, SQL type in the golden table, Chinese label, how personal data in it is masked and
released, the survivorship group it belongs to — and everything else is derived from
:data:`FIELDS`: the fields a department may map its columns onto (``etl.config``), the
canonical Arrow schemas (``etl.standardize``), the golden tables' columns (``store.tables``),
survivorship's attribute groups, the masking policy (``fields.masking``), the catalog's labels,
the columns a quality rule may check in a golden table, and which blocking keys are masked in
logs.

Three kinds of column share the table:

- a **source field** (its ``group`` is its own name): a department's column maps onto it
  (``config/departments/*.yaml``) and one normalizer (:data:`fields.normalize.NORMALIZERS`)
  cleans it;
- a **derived** column (``group`` names the source field it comes from): standardization
  computes it from that field (``name_pinyin`` from ``name``, the address parts from
  ``address``); it survives together with its source field and files its reason codes under it;
- a **linked** column (no ``group``, no Arrow type): set when the golden tables are published,
  from the relationships (``employer_master_id``).

>>> source_fields("person")[:5]
('name', 'id_number', 'sex', 'birth_date', 'phone')
>>> label("enterprise", "uscc")
'统一社会信用代码'
>>> field("person", "id_number").policy.mask
'id'
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import sqlalchemy as sa

Entity = Literal["person", "enterprise"]
ENTITIES: tuple[Entity, ...] = ("person", "enterprise")

MaskKind = Literal["clear", "id", "phone", "name", "address", "birth_date", "hidden"]
"""How one value is shown where it stands for a row the reader holds (``fields.masking``)."""
ReleaseKind = Literal["clear", "mask", "suppress", "generalise"]
"""How a field appears in a de-identified release (the analyst views and exports)."""


@dataclass(frozen=True)
class FieldPolicy:
    """How one field of a person or an enterprise is shown (see :mod:`fields.masking`)."""

    mask: MaskKind
    release: ReleaseKind
    personal: bool

    @property
    def masked(self) -> bool:
        """True if a single value of the field is not shown as it is."""
        return self.mask != "clear"


PUBLIC = FieldPolicy("clear", "clear", personal=False)
"""Not personal data: shown and released as it is."""
_ABOUT = FieldPolicy("clear", "clear", personal=True)  # about a person, singles no one out
_QUASI = FieldPolicy("clear", "generalise", personal=True)  # generalised with the others
_NAME = FieldPolicy("name", "suppress", personal=True)
_ID = FieldPolicy("id", "suppress", personal=True)
_PHONE = FieldPolicy("phone", "suppress", personal=True)
_HIDDEN = FieldPolicy("hidden", "suppress", personal=True)
_HOME = FieldPolicy("address", "generalise", personal=True)
_BIRTH = FieldPolicy("birth_date", "generalise", personal=True)
_REP_NAME = FieldPolicy("name", "mask", personal=True)  # a legal representative's name


@dataclass(frozen=True)
class Field:
    """One column of a canonical entity (see the module docstring for the three kinds)."""

    entity: Entity
    name: str
    arrow: pa.DataType | None
    """Its type in the canonical Parquet rows; None: not in them (a linked column)."""
    sql: sa.types.TypeEngine[Any] | None
    """Its type in the golden table; None: not in it (``phones_all``)."""
    label: str
    """中文 name, as catalogs, exports and department reports show it."""
    policy: FieldPolicy = PUBLIC
    group: str | None = None
    """The source field it survives with (its own name for a source field); None: linked."""
    checkable: bool = False
    """A quality rule may check it in the golden table (``quality.rules``)."""
    description: str | None = None
    """How the golden column is described, where that differs from ``label``."""
    unit: str | None = None
    """The unit of a number (the golden column's comment)."""
    normalizer: str | None = None
    """The normalizer of a source field, where it is not named after the field."""

    @property
    def is_source(self) -> bool:
        """A department's column may map onto it."""
        return self.group == self.name

    @property
    def is_date(self) -> bool:
        """A date (a format may say how a department writes it)."""
        return self.arrow is not None and pa.types.is_date(self.arrow)

    @property
    def golden(self) -> bool:
        """A column of the entity's golden table."""
        return self.sql is not None

    @property
    def normalized_by(self) -> str | None:
        """The :data:`fields.normalize.NORMALIZERS` entry that cleans a source field."""
        return (self.normalizer or self.name) if self.is_source else None


def _person(name: str, arrow: pa.DataType | None, sql: Any, label: str, **kw: Any) -> Field:
    return Field("person", name, arrow, sql, label, **{"group": name, **kw})


def _enterprise(name: str, arrow: pa.DataType | None, sql: Any, label: str, **kw: Any) -> Field:
    return Field("enterprise", name, arrow, sql, label, **{"group": name, **kw})


def _address(entity: Entity, policy: FieldPolicy, label: str, description: str) -> list[Field]:
    """The address and the parts standardization parses it into (the division code decides)."""
    part = _QUASI if entity == "person" else PUBLIC
    detail = _HIDDEN if entity == "person" else PUBLIC

    def column(name: str, sql: Any, label: str, policy: FieldPolicy, **kw: Any) -> Field:
        return Field(entity, name, _TEXT, sql, label, policy, group="address", **kw)

    return [
        column("division_code", sa.String(6), "行政区划代码（GB/T 2260）", part, checkable=True),
        column("address", sa.Text(), label, policy, checkable=True, description=description),
        column("province", sa.String(32), "省（自治区、直辖市）", part),
        column("city", sa.String(32), "市（地区、州）", part),
        column("district", sa.String(32), "区（县）", part),
        column("address_detail", sa.Text(), "详细地址（街路巷门牌）", detail),
    ]


_TEXT = pa.string()
_DATE = pa.date32()
_CODE = sa.String(18)  # an ID number or a credit code
_MASTER_ID = sa.String(16)

FIELDS: tuple[Field, ...] = (
    _person("name", _TEXT, sa.String(64), "姓名", policy=_NAME, checkable=True),
    _person(
        "name_pinyin",
        _TEXT,
        sa.String(128),
        "姓名拼音（无声调，用于匹配）",
        policy=_HIDDEN,
        group="name",
        checkable=True,
    ),
    _person(
        "former_name",
        _TEXT,
        sa.String(64),
        "曾用名",
        policy=_NAME,
        normalizer="name",
        description="改名前的姓名（公安户籍的曾用名）；旧记录仍用它时据此关联",
    ),
    _person("id_number", _TEXT, _CODE, "公民身份号码", policy=_ID, checkable=True),
    _person(
        "guardian_id",
        _TEXT,
        None,
        "监护人公民身份号码（登记在本人名下的他人号码）",
        policy=_ID,
        group="id_number",
    ),
    _person("sex", _TEXT, sa.String(2), "性别", policy=_QUASI, checkable=True),
    _person("birth_date", _DATE, sa.Date(), "出生日期", policy=_BIRTH, checkable=True),
    _person("phone", _TEXT, sa.String(32), "联系电话", policy=_PHONE, checkable=True),
    _person(
        "phones_all",
        pa.list_(_TEXT),
        None,
        "联系电话（一栏中的全部号码）",
        policy=_PHONE,
        group="phone",
    ),
    *_address("person", _HOME, "住址", "住址（标准化全文）"),
    _person("ethnicity", _TEXT, sa.String(16), "民族", policy=_QUASI, checkable=True),
    _person(
        "employer_uscc", _TEXT, _CODE, "工作单位统一社会信用代码", policy=_ABOUT, checkable=True
    ),
    _person("employer_master_id", None, _MASTER_ID, "工作单位的法人主数据标识", group=None),
    _person("status", _TEXT, sa.String(16), "人员状态", policy=_ABOUT, checkable=True),
    _enterprise(
        "name", _TEXT, sa.String(256), "单位名称", checkable=True, normalizer="enterprise_name"
    ),
    _enterprise(
        "name_key", _TEXT, sa.String(256), "名称匹配键（去掉行政区划和组织形式变体）", group="name"
    ),
    _enterprise("branch", _TEXT, sa.String(128), "分支机构名称后缀", group="name"),
    _enterprise("uscc", _TEXT, _CODE, "统一社会信用代码", checkable=True),
    _enterprise("reg_no", _TEXT, sa.String(15), "工商注册号（15位）", checkable=True),
    _enterprise("org_code", _TEXT, sa.String(10), "组织机构代码", checkable=True),
    _enterprise(
        "legal_rep_name", _TEXT, sa.String(64), "法定代表人姓名", policy=_REP_NAME, checkable=True
    ),
    _enterprise("legal_rep_id", _TEXT, _CODE, "法定代表人身份证号", policy=_ID, checkable=True),
    _enterprise(
        "legal_rep_master_id", None, _MASTER_ID, "法定代表人的自然人主数据标识", group=None
    ),
    *_address("enterprise", PUBLIC, "住所（经营场所）", "住所（标准化全文）"),
    _enterprise(
        "registered_capital",
        pa.decimal128(20, 4),
        sa.Numeric(20, 4),
        "注册资本（万元）",
        checkable=True,
        unit="万元",
    ),
    _enterprise("established_date", _DATE, sa.Date(), "成立日期", checkable=True),
    _enterprise("status", _TEXT, sa.String(16), "登记状态", checkable=True),
)
"""Every column of a canonical person and enterprise, in the golden tables' order."""


# --- views -------------------------------------------------------------------------------------


@functools.cache
def fields_of(entity: str) -> tuple[Field, ...]:
    """``entity``'s columns, in order (KeyError for an unknown entity)."""
    found = tuple(f for f in FIELDS if f.entity == entity)
    if not found:
        raise KeyError(f"no entity {entity!r}; use one of {list(ENTITIES)}")
    return found


def field(entity: str, name: str) -> Field:
    """One column of ``entity`` (KeyError if it has none of that name)."""
    for f in fields_of(entity):
        if f.name == name:
            return f
    raise KeyError(f"{entity} has no field {name!r}")


def source_fields(entity: str) -> tuple[str, ...]:
    """The fields a department's column may map onto, in order."""
    return tuple(f.name for f in fields_of(entity) if f.is_source)


def golden_fields(entity: str) -> tuple[Field, ...]:
    """The value columns of ``entity``'s golden table, in order."""
    return tuple(f for f in fields_of(entity) if f.golden)


def canonical_fields(entity: str) -> list[pa.Field]:
    """The value columns of ``entity``'s canonical rows as Arrow fields, in order."""
    return [pa.field(f.name, f.arrow) for f in fields_of(entity) if f.arrow is not None]


def attributes(entity: str) -> dict[str, tuple[str, ...]]:
    """Survivorship's groups: source field → the golden columns that survive with it, the
    first of which decides whether a row has a value (an address: its division code)."""
    out: dict[str, list[str]] = {}
    for f in golden_fields(entity):
        if f.group is not None:
            out.setdefault(f.group, []).append(f.name)
    return {group: tuple(columns) for group, columns in out.items()}


def checkable(entity: str) -> tuple[str, ...]:
    """The golden columns a quality rule may check, in order."""
    return tuple(f.name for f in fields_of(entity) if f.checkable)


def label(entity: str, name: str) -> str:
    """The Chinese label of ``entity``'s field ``name`` (the name itself if it has none).

    >>> label("person", "id_number"), label("person", "shoe_size")
    ('公民身份号码', 'shoe_size')
    """
    try:
        return field(entity, name).label
    except KeyError:
        return name


def descriptions(entity: str) -> dict[str, str]:
    """How each column of ``entity``'s golden table is described (its label unless it has its
    own description), for the catalog and the data dictionary of an export."""
    return {f.name: f.description or f.label for f in golden_fields(entity)}
