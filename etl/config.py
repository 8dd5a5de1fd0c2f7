"""The city's configuration: departments, column mappings and authorities, validated on load.

Rules are data. ``config/city.yaml`` names the city; each ``config/departments/<code>.yaml``
says which table a department keeps, how its columns map onto the canonical person and
enterprise fields, and which fields it is the authority for (一数一源: one department per field).
Loading checks everything and raises one :class:`ConfigError` listing every problem as
``<file>: <key path> (line N): <what is wrong>. Fix: <how>``.

Connections are names, never URLs: :func:`resolve_connection` turns a name into a SQLAlchemy URL
from the environment (an Airflow connection or ``GOVMDM_CONN_<NAME>``) or the embedded SQLite demo.

>>> city = load_city_config("config")
>>> city.authority("person", "phone").code
'renshe'
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import logging
import os
import re
import types
import zoneinfo
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin
from urllib.parse import parse_qsl, unquote, urlsplit

import sqlalchemy as sa
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from yaml.nodes import MappingNode, Node, SequenceNode

from fields import dictionary, divisions, normalize
from fields.dictionary import Entity
from store.layout import city_source_path

log = logging.getLogger(__name__)

ChangeKind = Literal["timestamp", "string", "epoch_seconds"]
UpdateFrequency = Literal["daily", "weekly", "monthly"]
Engine = Literal["local", "spark"]
"""What runs the heavy stages: ``local`` (this process) or ``spark`` (Apache Spark)."""

PERSON_FIELDS: tuple[str, ...] = dictionary.source_fields("person")
ENTERPRISE_FIELDS: tuple[str, ...] = dictionary.source_fields("enterprise")
FIELDS: dict[str, tuple[str, ...]] = {"person": PERSON_FIELDS, "enterprise": ENTERPRISE_FIELDS}
"""The canonical fields a department's column may map onto (see :mod:`fields.dictionary`)."""
DATE_FIELDS = frozenset(f.name for f in dictionary.FIELDS if f.is_source and f.is_date)
DATE_FORMATS = ("excel_serial", "chinese", "auto")
ENTERPRISE_IDENTIFIER = "enterprise_identifier"
"""``{field: enterprise_identifier}``: a column holding credit codes, 注册号, organization codes
and old tax numbers alike, each value routed to ``uscc``, ``reg_no`` or ``org_code``."""
IDENTIFIER_FIELDS = ("uscc", "reg_no", "org_code")
CAPITAL_UNITS = ("元", "万元", "亿元")

_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")
_SECRET_HINTS = ("://", "@", "password", "passwd", "pwd", "secret", "token")
_HAN = re.compile(r"[\u4e00-\u9fff]")
_ENV_FIX = (
    "set the environment variable AIRFLOW_CONN_{name} (an Airflow connection) or "
    "GOVMDM_CONN_{name} (a SQLAlchemy URL) instead"
)


class ConfigError(Exception):
    """The configuration is broken; ``problems`` holds one self-contained line per problem.

    >>> str(ConfigError(["config/city.yaml: name: required key is missing. Fix: add `name:`"]))
    'config/city.yaml: name: required key is missing. Fix: add `name:`'
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


class ConnectionNotConfigured(ConfigError):
    """A department's connection name resolves to nothing: no env var and no embedded file."""

    def __init__(self, problems: list[str], *, department: str, connection: str) -> None:
        super().__init__(problems)
        self.department = department
        self.connection = connection


@dataclass(frozen=True)
class _Issue:
    """One problem found by a validator, at ``path`` below the object being validated."""

    path: tuple[str | int, ...]
    what: str
    fix: str


def _invalid(what: str, fix: str) -> _Invalid:
    """A single issue at the validated value itself."""
    return _Invalid([_Issue((), what, fix)])


class _Invalid(ValueError):
    """Raised by validators; pydantic keeps the instance in ``ctx['error']`` for the loader."""

    def __init__(self, issues: list[_Issue]) -> None:
        self.issues = issues
        super().__init__("; ".join(f"{i.what}. Fix: {i.fix}" for i in issues))


def _did_you_mean(word: str, choices: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _choose_fix(word: str, choices: Sequence[str], what: str) -> str:
    guess = _did_you_mean(word, choices)
    listed = ", ".join(choices)
    if guess:
        return f"did you mean `{guess}`? ({what}: {listed})"
    return f"use one of the {what}: {listed}"


def _extra_name(column: str) -> str:
    name = column.lower()
    return name if _IDENTIFIER.match(name) else "<name>"


def strptime_format(fmt: str) -> str:
    """``fmt`` as :func:`datetime.datetime.strptime` reads it: the unpadded ``%-m`` / ``%-d``
    (and Windows' ``%#m``) become ``%m`` / ``%d``, which read one or two digits.

    >>> dt.datetime.strptime("6/7/2024", strptime_format("%-m/%-d/%Y")).day
    7
    """
    return fmt.replace("%-", "%").replace("%#", "%")


def parse_stamp(text: str, fmt: str, tz: str) -> dt.datetime:
    """A change stamp written in ``fmt`` as wall time in the city's time zone ``tz`` (naive):
    a stamp with a ``%z`` offset is converted, one without is taken as it is.

    >>> parse_stamp("2026-06-30 10:00:00+0000", "%Y-%m-%d %H:%M:%S%z", "Asia/Shanghai")
    datetime.datetime(2026, 6, 30, 18, 0)
    """
    stamp = normalize.parse_time(text, strptime_format(fmt))  # strptime's answer, faster
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(zoneinfo.ZoneInfo(tz)).replace(tzinfo=None)
    return stamp


def _strptime_problem(fmt: str) -> str | None:
    """Why ``fmt`` cannot read back a full date it wrote, or None if it can."""
    if "%" not in fmt:
        return f"'{fmt}' has no % directives"
    sample = dt.datetime(2001, 12, 31, 23, 45, 56, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    try:
        parsed = dt.datetime.strptime(sample.strftime(fmt), strptime_format(fmt))
    except ValueError as exc:
        return f"'{fmt}' cannot read back what it writes ({exc})"
    if parsed.date() != sample.date():
        return f"'{fmt}' does not hold a full date (year, month and day)"
    return None


class _Strict(BaseModel):
    # Unknown keys are typos until proven otherwise; frozen so no stage edits the config.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnMapping(_Strict):
    """Where one source column goes: a canonical field (with its date format and code table) or
    an extra column carried through under its own name.

    In YAML either the shorthand ``xm: name`` or a mapping::

        csrq: {field: birth_date, format: "%Y%m%d"}
        rq: {field: established_date, format: ["%Y-%m-%d", "%-m/%-d/%Y"]}  # tried in order
        xb: {field: sex, codes: {"1": 男, "2": 女}}
        zczb: {field: registered_capital, unit: 元}
        nsrsbh: {field: enterprise_identifier}  # or a list: {field: [uscc, org_code]}
        zxbs:  # a value from two columns: the first case whose columns all match
          field: status
          cases:
            - {when: {zxbs: "0"}, value: 正常}
            - {when: {zxbs: "1", zxyy: 死亡}, value: 死亡}
        insurance_type: {extra: insurance_type}
    """

    field: str | None = Field(
        None, description="the canonical field this column fills, e.g. `field: name`"
    )
    extra: str | None = Field(
        None,
        description="a lowercase name to carry the column through under, e.g. `extra: hospital`",
    )
    route: list[str] | None = Field(
        None,
        description="the identifier fields this column's values are routed to by their "
        "structure and check characters; written `field: enterprise_identifier` (all of uscc, "
        "reg_no, org_code) or `field: [uscc, org_code]`",
    )
    format: str | list[str] | None = Field(
        None,
        description=(
            "a date format: a strptime format such as '%Y%m%d' or '%-m/%-d/%Y', or "
            "excel_serial, chinese (1985年3月7日) or auto; a list is tried in order"
        ),
    )
    codes: dict[str, str] | None = Field(
        None,
        description=(
            'a table from source codes to canonical values, keys quoted: {"1": 男, "2": 女}'
        ),
    )
    cases: list[Case] | None = Field(
        None,
        description="a value read from several columns: the first case whose `when` columns "
        "all hold their values gives `value`, e.g. {when: {zxbs: '1', zxyy: 死亡}, value: 死亡}",
    )
    unit: Literal["元", "万元", "亿元"] | None = Field(
        None, description="the unit of a bare registered capital: 元, 万元 (the default) or 亿元"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"field": data}
        if data is None:
            raise _invalid(
                "the column has no mapping",
                "write a canonical field (`xm: name`), a mapping such as "
                "`{field: birth_date, format: '%Y%m%d'}`, or `{extra: <name>}`",
            )
        if isinstance(data, dict):
            field = data.get("field")
            if field == ENTERPRISE_IDENTIFIER:
                data = {**data, "field": None, "route": list(IDENTIFIER_FIELDS)}
            elif isinstance(field, list):
                data = {**data, "field": None, "route": field}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ColumnMapping:
        issues: list[_Issue] = []
        if sum(x is not None for x in (self.field, self.extra, self.route)) != 1:
            issues.append(
                _Issue(
                    (),
                    "give exactly one of `field` and `extra`",
                    "use `field: <canonical field>` to fill a canonical field, or "
                    "`extra: <name>` to carry the column through",
                )
            )
        issues += self._route_issues() + self._form_issues()
        if self.extra is not None and not _IDENTIFIER.match(self.extra):
            issues.append(
                _Issue(
                    ("extra",),
                    f"'{self.extra}' is not a lowercase identifier",
                    "use lowercase ASCII letters, digits and underscores, e.g. `insurance_type`",
                )
            )
        if self.format is not None:
            known = self.field in PERSON_FIELDS or self.field in ENTERPRISE_FIELDS
            if self.field not in DATE_FIELDS and (known or self.extra is not None or self.route):
                issues.append(
                    _Issue(
                        ("format",),
                        "`format` applies to date fields only (birth_date, established_date)",
                        "remove `format` from this column",
                    )
                )
            else:
                issues += _format_issues(self.format)
        if self.codes is not None and not self.codes:
            issues.append(
                _Issue(("codes",), "the code table is empty", "list codes or remove `codes`")
            )
        if issues:
            raise _Invalid(issues)
        return self

    def _route_issues(self) -> list[_Issue]:
        if self.route is None:
            return []
        bad = [f for f in self.route if f not in IDENTIFIER_FIELDS]
        if bad or not self.route or len(set(self.route)) != len(self.route):
            return [
                _Issue(
                    ("field",),
                    f"a column routed to several identifiers names {self.route}",
                    f"write `field: {ENTERPRISE_IDENTIFIER}`, or a list of distinct fields "
                    f"among {', '.join(IDENTIFIER_FIELDS)}",
                )
            ]
        if self.codes is not None or self.cases is not None or self.unit is not None:
            return [
                _Issue(
                    (),
                    "an identifier column takes no `codes`, `cases` or `unit`",
                    "remove them: its values are routed by structure and check characters",
                )
            ]
        return []

    def _form_issues(self) -> list[_Issue]:
        issues = []
        if self.unit is not None and self.field != "registered_capital":
            issues.append(
                _Issue(
                    ("unit",),
                    "`unit` applies to registered_capital only",
                    "remove `unit` from this column",
                )
            )
        if self.cases is not None and self.codes is not None:
            issues.append(
                _Issue(
                    ("cases",),
                    "give `codes` or `cases`, not both",
                    "fold the code table into the cases",
                )
            )
        if self.cases is not None and (self.field is None or not self.cases):
            issues.append(
                _Issue(
                    ("cases",),
                    "`cases` needs a canonical `field` and at least one case",
                    "write `field: <canonical field>` and list the cases",
                )
            )
        return issues

    @property
    def target(self) -> str:
        """The name this column lands under: its canonical field, its extra name, or (routed
        identifiers) enterprise_identifier."""
        if self.route is not None:
            return ENTERPRISE_IDENTIFIER
        return self.field if self.field is not None else str(self.extra)

    @property
    def formats(self) -> list[str | None]:
        """The date formats to try, in order (``[None]``: none configured, read as auto)."""
        if self.format is None:
            return [None]
        return [self.format] if isinstance(self.format, str) else list(self.format)

    @property
    def fills(self) -> tuple[str, ...]:
        """The canonical fields this column fills (a routed column: each of its routes)."""
        if self.route is not None:
            return tuple(self.route)
        return (self.field,) if self.field is not None else ()

    @property
    def case_columns(self) -> tuple[str, ...]:
        """The other columns a ``cases`` mapping reads."""
        return tuple(dict.fromkeys(c for case in self.cases or () for c in case.when))

    def case_value(self, row: Mapping[str, Any]) -> str | None:
        """The value of the first case whose columns all hold their values in ``row``
        (source column → raw value); None when none does."""
        for case in self.cases or ():
            if all(_case_text(row.get(c)) == v for c, v in case.when.items()):
                return case.value
        return None


def _format_issues(formats: str | list[str]) -> list[_Issue]:
    """What is wrong with a date column's format, or with each of its list of formats."""
    listed = (
        [(("format",), formats)]
        if isinstance(formats, str)
        else [(("format", i), fmt) for i, fmt in enumerate(formats)]
    )
    if not listed:
        return [_Issue(("format",), "the list of formats is empty", "list a format")]
    return [
        _Issue(
            at,
            why,
            "use a strptime format such as '%Y%m%d' or '%-m/%-d/%Y', or one of: "
            + ", ".join(DATE_FORMATS),
        )
        for at, fmt in listed
        if fmt not in DATE_FORMATS and (why := _strptime_problem(fmt))
    ]


def _case_text(value: Any) -> str:
    return "" if value is None else str(value).strip()


class Case(_Strict):
    """One case of a value read from several columns (``cases:``)."""

    when: dict[str, str] = Field(
        min_length=1, description="source column → its value (quoted; '' for empty)"
    )
    value: str = Field(description="the canonical value when every column holds its value")


ColumnMapping.model_rebuild()


class TableConfig(_Strict):
    """One source table and how its columns map onto one entity's canonical fields."""

    name: str = Field(
        min_length=1, description="the table's name exactly as the database spells it"
    )
    entity: Entity = Field(description="`person` or `enterprise`")
    primary_key: list[str] = Field(
        min_length=1, description="the key column(s), e.g. `primary_key: [rkbh]`"
    )
    change_column: str = Field(
        min_length=1, description="the column that moves whenever a row changes"
    )
    change_kind: ChangeKind = Field(description="`timestamp`, `string` or `epoch_seconds`")
    change_format: str | None = Field(
        None,
        description="the strftime format of a `string` change column, e.g. '%Y%m%d%H%M%S'",
    )
    columns: dict[str, ColumnMapping] = Field(
        min_length=1, description="source column → canonical field (or mapping)"
    )
    max_deleted_share: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="the largest share of the table's keys one night may delete before its "
        "batch is held back for data engineering to confirm (a table emptied is always held), "
        "e.g. 0.05",
    )
    min_deleted_rows: int = Field(
        10,
        ge=0,
        description="deletions below this many rows never hold the batch back, whatever their "
        "share (a small table losing two rows is no alarm); a table emptied is always held",
    )

    @field_validator("columns")
    @classmethod
    def _canonical_targets(
        cls, columns: dict[str, ColumnMapping], info: ValidationInfo
    ) -> dict[str, ColumnMapping]:
        entity = info.data.get("entity")
        if entity is None:  # entity itself is invalid and already reported
            return columns
        allowed = FIELDS[entity]
        other = "enterprise" if entity == "person" else "person"
        issues: list[_Issue] = []
        owner: dict[str, str] = {}
        for column, mapping in columns.items():
            if mapping.field is not None and mapping.field not in allowed:
                elsewhere = f" (it is an {other} field)" if mapping.field in FIELDS[other] else ""
                issues.append(
                    _Issue(
                        (column,),
                        f"'{mapping.field}' is not a canonical {entity} field{elsewhere}",
                        _choose_fix(mapping.field, allowed, f"{entity} fields")
                        + f", or carry it through with `{{extra: {_extra_name(column)}}}`",
                    )
                )
                continue
            if mapping.extra is not None and mapping.extra in allowed:
                issues.append(
                    _Issue(
                        (column, "extra"),
                        f"extra name '{mapping.extra}' is a canonical {entity} field",
                        f"map it with `field: {mapping.extra}`, or choose another extra name",
                    )
                )
                continue
            if mapping.route is not None and entity != "enterprise":
                issues.append(
                    _Issue(
                        (column, "field"),
                        f"{ENTERPRISE_IDENTIFIER} is an enterprise form, not a {entity} one",
                        "map the column to one canonical field",
                    )
                )
                continue
            if mapping.route is not None:  # fills what the field's own column leaves empty
                continue
            for target in mapping.fills or (mapping.target,):
                if target in owner:
                    issues.append(
                        _Issue(
                            (column,),
                            f"'{target}' is already mapped from column '{owner[target]}'",
                            "map one column per field; carry the other through with "
                            "`{extra: <another name>}`",
                        )
                    )
                owner.setdefault(target, column)
        if issues:
            raise _Invalid(issues)
        return columns

    @model_validator(mode="after")
    def _change_and_key(self) -> TableConfig:
        issues: list[_Issue] = []
        if self.change_kind == "string":
            if self.change_format is None:
                issues.append(
                    _Issue(
                        ("change_format",),
                        "a `string` change column needs its format",
                        "add `change_format:` with the strftime format the column is written "
                        "in, e.g. '%Y%m%d%H%M%S'",
                    )
                )
            elif why := _strptime_problem(self.change_format):
                issues.append(
                    _Issue(("change_format",), why, "use a strftime format like '%Y%m%d%H%M%S'")
                )
        elif self.change_format is not None:
            issues.append(
                _Issue(
                    ("change_format",),
                    f"`change_format` only applies to change_kind `string`, not "
                    f"`{self.change_kind}`",
                    "remove `change_format`, or set `change_kind: string`",
                )
            )
        for i, column in enumerate(self.primary_key):
            if column in self.primary_key[:i]:
                issues.append(
                    _Issue(
                        ("primary_key", i),
                        f"'{column}' is listed twice",
                        "list each key column once",
                    )
                )
        if issues:
            raise _Invalid(issues)
        return self

    @property
    def field_columns(self) -> dict[str, str]:
        """Canonical field → source column.

        >>> load_city_config().department("gongan").tables[0].field_columns["id_number"]
        'sfzh'
        """
        own = {m.field: col for col, m in self.columns.items() if m.field is not None}
        routed = {f: col for col, m in self.columns.items() if m.route for f in m.route}
        return {**routed, **own}

    @property
    def source_columns(self) -> tuple[str, ...]:
        """Every column the config knows: key, change column, mapped columns, then the other
        columns a value from several columns (``cases``) reads."""
        cases = [c for m in self.columns.values() for c in m.case_columns]
        return tuple(dict.fromkeys([*self.primary_key, self.change_column, *self.columns, *cases]))


class Contact(_Strict):
    """A person to write to."""

    name: str = Field(min_length=1, description="the contact's name, e.g. 林志强")
    email: EmailStr = Field(description="an e-mail address, e.g. lin.zhiqiang@example.gov.cn")


class AuthorityFor(_Strict):
    """The canonical fields, per entity, for which a department is the authoritative source."""

    person: list[str] = Field(default_factory=list, description="person fields, e.g. [phone]")
    enterprise: list[str] = Field(
        default_factory=list, description="enterprise fields, e.g. [org_code]"
    )

    @field_validator("person", "enterprise")
    @classmethod
    def _canonical(cls, fields: list[str], info: ValidationInfo) -> list[str]:
        entity = str(info.field_name)
        issues: list[_Issue] = []
        for i, name in enumerate(fields):
            if name not in FIELDS[entity]:
                issues.append(
                    _Issue(
                        (i,),
                        f"'{name}' is not a canonical {entity} field",
                        _choose_fix(name, FIELDS[entity], f"{entity} fields"),
                    )
                )
            elif name in fields[:i]:
                issues.append(_Issue((i,), f"'{name}' is listed twice", "list it once"))
        if issues:
            raise _Invalid(issues)
        return fields

    def fields(self, entity: str) -> list[str]:
        """The fields claimed for ``entity``."""
        return list(self.person if entity == "person" else self.enterprise)


class DepartmentConfig(_Strict):
    """One department (委办局): who to tell, how to reach its data, what it is authority for."""

    code: str = Field(description="a lowercase identifier, e.g. `gongan`; the file's name")
    name: str = Field(description="the department's Chinese title, e.g. 市公安局")
    contact: Contact = Field(description="the department's data owner (数据责任人)")
    connection: str = Field(description="a connection *name*, e.g. `gongan`")
    update_frequency: UpdateFrequency = Field(description="`daily`, `weekly` or `monthly`")
    authority_for: AuthorityFor = Field(
        default_factory=AuthorityFor, description="{person: [...], enterprise: [...]}"
    )
    tables: list[TableConfig] = Field(min_length=1, description="the department's tables")
    pool_slots: int = Field(
        2, ge=1, description="how many extraction tasks may hit this source at once"
    )
    _source_file: Path | None = PrivateAttr(None)

    @field_validator("code")
    @classmethod
    def _code(cls, code: str) -> str:
        if not _IDENTIFIER.match(code):
            raise _invalid(
                f"'{code}' is not a lowercase ASCII identifier",
                "use lowercase letters, digits and underscores, e.g. `gongan`",
            )
        return code

    @field_validator("name")
    @classmethod
    def _chinese_title(cls, name: str) -> str:
        if not _HAN.search(name):
            raise _invalid(
                f"'{name}' is not a Chinese title",
                "write the department's official title, e.g. 市公安局",
            )
        return name

    @field_validator("connection")
    @classmethod
    def _connection_name(cls, connection: str, info: ValidationInfo) -> str:
        # Never echo the value: it may be a URL with a password in it.
        if any(hint in connection.lower() for hint in _SECRET_HINTS):
            code = info.data.get("code") or "gongan"
            raise _invalid(
                "this looks like a URL or a secret; never put URLs or secrets in config",
                f"write a connection name such as `{code}` here and "
                + _ENV_FIX.format(name=code.upper()),
            )
        if not _IDENTIFIER.match(connection):
            raise _invalid(
                "a connection name must be a lowercase identifier",
                "use lowercase letters, digits and underscores, e.g. `gongan`; the "
                "environment variables AIRFLOW_CONN_GONGAN / GOVMDM_CONN_GONGAN follow "
                "from it",
            )
        return connection

    @model_validator(mode="after")
    def _authorities_mapped(self) -> DepartmentConfig:
        issues: list[_Issue] = []
        for entity in FIELDS:
            tables = [t for t in self.tables if t.entity == entity]
            mapped = {f for t in tables for f in t.field_columns}
            for i, name in enumerate(self.authority_for.fields(entity)):
                if name in mapped:
                    continue
                if tables:
                    where = ", ".join(t.name for t in tables)
                    fix = f"map a column of {where} to `{name}`, or remove `{name}` here"
                else:
                    fix = f"add a {entity} table that maps `{name}`, or remove `{name}` here"
                issues.append(
                    _Issue(
                        ("authority_for", entity, i),
                        f"authority for {entity} `{name}`, but no {entity} table of this "
                        f"department maps a column to it",
                        fix,
                    )
                )
        for i, table in enumerate(self.tables):
            if any(t.name == table.name for t in self.tables[:i]):
                issues.append(
                    _Issue(
                        ("tables", i, "name"),
                        f"table '{table.name}' is listed twice",
                        "list each table once",
                    )
                )
        if issues:
            raise _Invalid(issues)
        return self

    @property
    def source_file(self) -> Path | None:
        """The YAML file this department was loaded from (None if built in code)."""
        return self._source_file

    def tables_for(self, entity: str) -> list[TableConfig]:
        """This department's tables holding ``entity`` rows."""
        return [t for t in self.tables if t.entity == entity]


class CityFile(_Strict):
    """What ``config/city.yaml`` holds."""

    name: str = Field(min_length=1, description="the city's name, e.g. 福州市")
    division_code: str = Field(
        description="the city's 6-digit GB/T 2260 division code, e.g. '350100' (quoted)"
    )
    timezone: str = Field("Asia/Shanghai", description="an IANA time zone such as Asia/Shanghai")
    data_engineering_contact: Contact = Field(
        description="who runs the pipeline: {name: ..., email: ...}"
    )
    engine: Engine = Field(
        "local",
        description="`local` (this machine, the default) or `spark` (Apache Spark; needs the "
        "govmdm[spark] extra)",
    )
    workers: int | None = Field(
        None,
        description="how many processes standardization runs departments in side by side, e.g. "
        "`workers: 2`; 1 runs them one after another in one process; default: one per CPU, at "
        "most one per department",
    )

    spark: dict[str, str] = Field(
        default_factory=dict,
        description="Spark settings of the Spark engine's applications, Spark's key → value, "
        "e.g. `spark: {spark.driver.memory: 4g, spark.executor.memory: 8g}`; given to the "
        "session govmdm starts and to spark-submit",
    )

    @field_validator("spark", mode="before")
    @classmethod
    def _spark(cls, settings: Any) -> Any:
        if settings is None:
            return {}
        if not isinstance(settings, dict):
            raise _invalid(
                f"{_kind(settings)} is not a mapping of Spark settings",
                "write one Spark key and its value a line, e.g. spark: {spark.driver.memory: 4g}",
            )
        issues: list[_Issue] = []
        out: dict[str, str] = {}
        for key, value in settings.items():
            name = str(key)
            what, fix = _spark_setting_problem(name, value)
            if what:
                issues.append(_Issue((name,), what, fix))
            else:
                out[name] = _spark_value(value)
        if issues:
            raise _Invalid(issues)
        return out

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, n: Any) -> Any:
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise _invalid(
                f"{n!r} is not a number of processes",
                "write a whole number of at least 1 (e.g. workers: 2), or leave the key out for "
                "one process per CPU",
            )
        return n

    @field_validator("division_code")
    @classmethod
    def _division(cls, code: str) -> str:
        if not re.fullmatch(r"\d{6}", code):
            raise _invalid(
                f"'{code}' is not 6 digits",
                "write the GB/T 2260 code quoted, e.g. division_code: '350100'",
            )
        if divisions.lookup(code) is None:
            raise _invalid(
                f"'{code}' is not a GB/T 2260 division code",
                "look the city's code up in GB/T 2260, e.g. 350100 for 福州市",
            )
        return code

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, name: str) -> str:
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise _invalid(
                f"unknown time zone '{name}'", "use an IANA name like Asia/Shanghai"
            ) from None
        return name


_SPARK_KEY = re.compile(r"spark\.[A-Za-z0-9_.-]+")
_SPARK_SIZE = re.compile(r"\d+[kmgtp]?b?", re.IGNORECASE)  # as Spark reads 512m, 4g, 8gb
_SPARK_OWN = {
    "spark.master": "the master is the Airflow connection spark_default's, or "
    "$GOVMDM_SPARK_MASTER for a night started without Airflow",
    "spark.io.encryption.enabled": "govmdm always encrypts shuffle and spill files (they "
    "hold personal data)",
    "spark.authenticate": "the nightly DAG always sets it, with spark.network.crypto.enabled",
    "spark.network.crypto.enabled": "the nightly DAG always encrypts traffic between the "
    "driver and its executors",
    "spark.local.dir": "govmdm keeps Spark's scratch files under <var>/spark/, its owner's "
    "alone like the rest of var/",
    "spark.sql.warehouse.dir": "govmdm keeps Spark's warehouse folder under <var>/spark/",
}


SPARK_JVM_OPTIONS = {
    "spark.driver.extraJavaOptions": "-XX:+ExitOnOutOfMemoryError",
    "spark.executor.extraJavaOptions": "-XX:+ExitOnOutOfMemoryError",
}
"""JVM options govmdm gives every Spark JVM it starts or submits: a JVM out of memory exits,
so the night fails. Otherwise a thread that died of OutOfMemoryError (the driver's, launching
tasks) can leave the job waiting for ever, the night stalled with nothing flagged."""


def spark_settings(settings: Mapping[str, str]) -> dict[str, str]:
    """The Spark settings of ``spark:`` in city.yaml with govmdm's JVM options
    (:data:`SPARK_JVM_OPTIONS`) put first in each JVM's ``extraJavaOptions``; the city's
    options follow, so that a city's own flag wins.

    >>> spark_settings({"spark.driver.extraJavaOptions": "-Dx=1"})["spark.driver.extraJavaOptions"]
    '-XX:+ExitOnOutOfMemoryError -Dx=1'
    """
    out = dict(settings)
    for key, ours in SPARK_JVM_OPTIONS.items():
        out[key] = f"{ours} {out.get(key, '')}".strip()
    return out


def _spark_setting_problem(key: str, value: Any) -> tuple[str, str]:
    """What is wrong with one setting of ``spark:`` in city.yaml, and the fix; ("", "") if
    nothing is."""
    if not _SPARK_KEY.fullmatch(key):
        like = f"spark.{key}" if _SPARK_KEY.fullmatch(f"spark.{key}") else "spark.driver.memory"
        return f"'{key}' is not a Spark setting", f"write Spark's own key, e.g. {like}"
    if key in _SPARK_OWN:
        return f"{key} is govmdm's to set: {_SPARK_OWN[key]}", "remove the line"
    if any(hint in key.lower() for hint in ("password", "secret", "token", "credential")):
        return (
            f"{key} holds a secret, and a secret never goes in a configuration file (nor on "
            "spark-submit's command line)",
            "give it to Spark in the Spark client's spark-defaults.conf or a Hadoop credential "
            "provider, and remove the line",
        )
    if value is None or isinstance(value, dict | list):
        return (
            f"{_kind(value)} is not a value for {key}",
            "write one value, e.g. 4g for a memory size, 2 for a number of cores",
        )
    size = key.endswith((".memory", ".memoryOverhead", ".maxResultSize"))
    if size and not _SPARK_SIZE.fullmatch(_spark_value(value)):
        return (
            f"{value!r} is not a size Spark reads",
            "write a number and a unit without a space, e.g. 512m or 4g",
        )
    return "", ""


def _spark_value(value: Any) -> str:
    """A setting's value as Spark reads it: YAML's true and false in Spark's spelling."""
    return str(value).lower() if isinstance(value, bool) else str(value).strip()


def _default_var_dir(data: dict[str, Any]) -> Path:
    env = os.environ.get("GOVMDM_VAR")
    if env:
        return Path(env).expanduser().resolve()
    return Path(data["root"]) / "var"


class CityConfig(CityFile):
    """The whole configuration of one city: ``city.yaml`` plus every department.

    ``root`` is the project directory (the config directory's parent); ``var_dir`` is where runs
    write (``<root>/var`` unless ``GOVMDM_VAR`` is set).
    """

    departments: list[DepartmentConfig] = Field(min_length=1)
    root: Path
    config_dir: Path = Field(default_factory=lambda data: Path(data["root"]) / "config")
    """The folder every configuration file is read from (matching.yaml, catalog.yaml,
    quality/ as well as city.yaml and departments/): the one ``load_city_config`` was given."""
    var_dir: Path = Field(default_factory=_default_var_dir)
    warnings: list[str] = Field(default_factory=list)
    """What the configuration leaves out and was given a default for (a department without a
    contact), one ``<file>: <key>: <what>. Fix: <how>`` line each; ``config check`` prints them."""
    broken: dict[str, list[str]] = Field(default_factory=dict)
    """Departments whose file is broken (code → its problem lines), left out of
    ``departments`` by a tolerant load; empty after a strict one."""

    @model_validator(mode="after")
    def _one_source_per_field(self) -> CityConfig:
        issues = _cross_department_issues(self.departments)
        if issues:
            raise _Invalid(issues)
        return self

    def department(self, code: str) -> DepartmentConfig:
        """The department with this code.

        >>> load_city_config().department("shuiwu").name
        '市税务局'
        """
        for d in self.departments:
            if d.code == code:
                return d
        raise KeyError(code)

    def broken_message(self, code: str) -> str:
        """Why department ``code`` cannot run: its configuration problems, one per line."""
        return f"{code}: its configuration is broken, so it does not run:\n" + "\n".join(
            self.broken[code]
        )

    def authority(self, entity: str, field: str) -> DepartmentConfig | None:
        """The department that is the authority for ``entity``'s ``field``, if any.

        >>> load_city_config().authority("enterprise", "org_code").code
        'shuiwu'
        """
        for d in self.departments:
            if field in d.authority_for.fields(entity):
                return d
        return None


def _where(dept: DepartmentConfig) -> str:
    return f"{dept.code} ({dept.source_file})" if dept.source_file else dept.code


def _cross_department_issues(departments: Sequence[DepartmentConfig]) -> list[_Issue]:
    """Unique codes and 一数一源; paths are relative to the city (``departments[i]…``)."""
    issues: list[_Issue] = []
    first_code: dict[str, DepartmentConfig] = {}
    claimed: dict[tuple[str, str], DepartmentConfig] = {}
    for j, dept in enumerate(departments):
        if dept.code in first_code:
            issues.append(
                _Issue(
                    ("departments", j, "code"),
                    f"code '{dept.code}' is also used by {_where(first_code[dept.code])}",
                    "give every department its own code",
                )
            )
        first_code.setdefault(dept.code, dept)
        for entity in FIELDS:
            for i, name in enumerate(dept.authority_for.fields(entity)):
                holder = claimed.setdefault((entity, name), dept)
                if holder is dept:
                    continue
                issues.append(
                    _Issue(
                        ("departments", j, "authority_for", entity, i),
                        f"{entity} `{name}` has two authorities: {_where(holder)} and "
                        f"{_where(dept)}",
                        f"一数一源 — keep `{name}` in the authority_for of only one of "
                        f"{holder.code} and {dept.code}",
                    )
                )
    return issues


# --- loading -----------------------------------------------------------------------------------


_M = TypeVar("_M", bound=BaseModel)


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML would silently keep the last one)."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # unhashable key: the base class reports it
                continue
            if first != key_node.start_mark.line + 1:
                raise _DuplicateKey(
                    None,
                    None,
                    f"duplicate key '{key}' (first at line {first})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep)


@dataclass
class _Doc:
    path: Path
    data: Any
    node: Node | None


def _read_yaml(path: Path, problems: list[str]) -> _Doc | None:
    """Parse one file; on failure add a problem and return None."""
    if not path.is_file():
        problems.append(
            f"{path}: (file): not found. Fix: create it (see the example city's config/ in the "
            "govmdm repository)"
        )
        return None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: (file): not UTF-8 ({exc.reason}). Fix: save it as UTF-8")
        return None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        if isinstance(exc, _DuplicateKey):
            problems.append(
                f"{path}: {at}: {exc.problem}. Fix: keep one of the two (YAML would silently "
                "drop the first)"
            )
        else:
            what = " ".join(p for p in (exc.context, exc.problem) if p)
            problems.append(
                f"{path}: {at}: YAML syntax error: {what}. Fix: check indentation, colons and "
                "quoting there; quote values containing ': ' or starting with {, [, *, &, % or @"
            )
        return None
    except yaml.YAMLError as exc:
        problems.append(f"{path}: (file): YAML error: {exc}. Fix: correct the YAML")
        return None
    finally:
        loader.dispose()
    if data is None:
        problems.append(
            f"{path}: (file): the file is empty. Fix: fill it in (see the example city's config/)"
        )
        return None
    if not isinstance(data, dict):
        problems.append(
            f"{path}: (top level): expected `key: value` lines, got a {type(data).__name__}. "
            "Fix: write the file as a YAML mapping"
        )
        return None
    return _Doc(path, data, node)


def _format_path(model: type[BaseModel], loc: Sequence[str | int]) -> str:
    """``loc`` as ``tables[0].columns.sfzh``: list indices in brackets, keys dotted."""
    out = ""
    tp: Any = model
    for item in loc:
        if item == "[key]":  # pydantic's marker for an invalid dict key
            continue
        tp = _unwrap(tp)
        origin = get_origin(tp)
        if origin in (Union, types.UnionType) and isinstance(item, int):  # `str | list[str]`
            tp = next((a for a in get_args(tp) if get_origin(a) in (list, tuple)), tp)
            origin = get_origin(tp)
        if origin in (list, tuple) and isinstance(item, int):
            out += f"[{item}]"
            tp = get_args(tp)[0] if get_args(tp) else None
            continue
        out += f".{item}" if out else str(item)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            info = tp.model_fields.get(str(item))
            tp = info.annotation if info else None
        elif origin is dict:
            tp = get_args(tp)[1] if get_args(tp) else None
        else:
            tp = None
    return out or "(top level)"


def _unwrap(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _field_at(
    model: type[BaseModel], loc: Sequence[str | int]
) -> tuple[type[BaseModel], FieldInfo | None]:
    """The model owning the last key of ``loc`` and that key's field info."""
    owner: type[BaseModel] = model
    info: FieldInfo | None = None
    tp: Any = model
    for item in loc:
        tp = _unwrap(tp)
        origin = get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            owner = tp
            info = tp.model_fields.get(str(item))
            tp = info.annotation if info else None
        elif origin in (list, tuple, dict):
            tp = get_args(tp)[-1] if get_args(tp) else None
        else:
            break
    return owner, info


def yaml_line_of(node: Node | None, loc: Sequence[Any]) -> int | None:
    """The line of the deepest YAML node ``loc`` reaches."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for item in loc:
        nxt: Node | None = None
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                if str(key_node.value) == str(item):
                    nxt = value_node
                    line = key_node.start_mark.line + 1
                    break
        elif isinstance(node, SequenceNode) and isinstance(item, int) and item < len(node.value):
            nxt = node.value[item]
            line = nxt.start_mark.line + 1
        if nxt is None:
            break
        node = nxt
    return line


def _describe(err: Mapping[str, Any], model: type[BaseModel]) -> tuple[str, str]:
    """A pydantic error as (what is wrong, how to fix it)."""
    loc = tuple(err["loc"])
    kind = err["type"]
    owner, info = _field_at(model, loc)
    key = str(loc[-1]) if loc else "value"
    hint = info.description if info and info.description else None
    value = err.get("input")
    if kind == "missing":
        return "required key is missing", f"add `{key}:` — {hint or 'see the example config'}"
    if kind == "extra_forbidden":
        allowed = list(owner.model_fields)
        return f"unknown key '{key}'", _choose_fix(key, allowed, "allowed keys")
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"'{value}' is not allowed here", f"use one of {expected}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty", f"fill it in — {hint or 'see the example config'}"
    if kind == "value_error" and str(err["msg"]).startswith("value is not a valid email"):
        reason = err.get("ctx", {}).get("reason", err["msg"])
        return (
            f"not a valid e-mail address ({str(reason).rstrip('.')})",
            "write a full address such as zhang.wei@example.gov.cn",
        )
    if kind == "string_type" and isinstance(value, bool | int | float):
        read_as = "true/false" if isinstance(value, bool) else "a number"
        if loc and loc[-1] == "[key]":
            return (
                f"key {value!r} is read by YAML as {read_as}, not text",
                'quote code keys, e.g. "01": 汉族 — unquoted 01 would lose its leading zero',
            )
        return (
            f"{value!r} is read by YAML as {read_as}, not text",
            f"quote it so YAML keeps it as text — {hint}" if hint else "quote it",
        )
    if kind in ("model_type", "dict_type"):
        return (
            f"expected a mapping of `key: value` lines, got {_kind(value)}",
            hint or "write a YAML mapping",
        )
    if kind == "list_type":
        return f"expected a list, got {_kind(value)}", f"write a list, e.g. [a, b] — {hint}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{str(err['msg']).rstrip('.')}, got {_kind(value)}", hint or "correct the value"
    return str(err["msg"]).rstrip("."), f"set `{key}` to {hint}" if hint else "correct the value"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "text" if isinstance(value, str) else type(value).__name__


def _problem(
    path: Path | str,
    doc: _Doc | None,
    model: type[BaseModel],
    loc: Sequence[str | int],
    what: str,
    fix: str,
) -> str:
    dotted = _format_path(model, loc)
    line = yaml_line_of(doc.node if doc else None, loc)
    at = f"{dotted} (line {line})" if line is not None else dotted
    return f"{path}: {at}: {what.rstrip('.')}. Fix: {fix}"


def _translate(
    exc: ValidationError,
    model: type[BaseModel],
    doc: _Doc | None,
    path: Path | str,
    departments: Sequence[tuple[DepartmentConfig, _Doc]] = (),
) -> list[str]:
    """Pydantic errors as problem lines; errors under ``departments[i]`` go to that file."""
    out: list[str] = []
    for err in exc.errors():
        error = err.get("ctx", {}).get("error")
        if isinstance(error, _Invalid):
            for issue in error.issues:
                out.append(
                    _issue_line((*err["loc"], *issue.path), issue, model, doc, path, departments)
                )
        else:
            what, fix = _describe(err, model)
            out.append(
                _issue_line(tuple(err["loc"]), _Issue((), what, fix), model, doc, path, departments)
            )
    return out


def _issue_line(
    loc: tuple[str | int, ...],
    issue: _Issue,
    model: type[BaseModel],
    doc: _Doc | None,
    path: Path | str,
    departments: Sequence[tuple[DepartmentConfig, _Doc]],
) -> str:
    if (
        len(loc) >= 2
        and loc[0] == "departments"
        and isinstance(loc[1], int)
        and loc[1] < len(departments)
    ):
        dept_doc = departments[loc[1]][1]
        return _problem(dept_doc.path, dept_doc, DepartmentConfig, loc[2:], issue.what, issue.fix)
    return _problem(path, doc, model, loc, issue.what, issue.fix)


def load_city_config(config_dir: str | Path = "config", *, tolerant: bool = False) -> CityConfig:
    """Read ``<config_dir>/city.yaml`` and every ``<config_dir>/departments/*.yaml``.

    Every file is checked before anything is raised, so one run of the loader lists every
    problem of every file. ``tolerant`` is how a night loads: a broken department file flags
    that department only (left out of ``departments``, its problems in ``broken`` under the
    file's name) while the city files, the other departments and the rules between them
    (unique codes, one authority per field) must still be valid.

    >>> city = load_city_config("config")
    >>> len(city.departments), city.division_code
    (6, '350100')
    """
    cdir = Path(config_dir)
    if not cdir.is_dir():
        raise ConfigError(
            [
                f"{cdir}: (directory): not found. Fix: run from the project root or pass the "
                "config directory (it holds city.yaml and departments/)"
            ]
        )
    problems: list[str] = []
    city_doc = _read_yaml(cdir / "city.yaml", problems)
    city_ok = False
    if city_doc is not None:
        try:
            CityFile.model_validate(city_doc.data)
            city_ok = True
        except ValidationError as exc:
            problems += _translate(exc, CityFile, city_doc, city_doc.path)
    default_contact = (
        city_doc.data.get("data_engineering_contact") if city_ok and city_doc else None
    )
    warnings: list[str] = []
    loaded, broken = _load_departments(
        _department_files(cdir / "departments", problems), default_contact, warnings
    )
    if not tolerant or not loaded:
        problems += [line for lines in broken.values() for line in lines]
        broken = {}
    departments = [d for d, _ in loaded]
    if not city_ok or problems:
        for issue in _cross_department_issues(departments):
            problems.append(
                _issue_line(issue.path, issue, CityConfig, city_doc, cdir / "city.yaml", loaded)
            )
        raise ConfigError(problems)
    assert city_doc is not None
    try:
        city = CityConfig.model_validate(
            {
                **city_doc.data,
                "departments": departments,
                "root": cdir.resolve().parent,
                "config_dir": cdir.resolve(),
                "warnings": warnings,
                "broken": broken,
            }
        )
    except ValidationError as exc:
        raise ConfigError(_translate(exc, CityConfig, city_doc, city_doc.path, loaded)) from None
    make_private(city.var_dir)
    return city


def _department_files(ddir: Path, problems: list[str]) -> list[Path]:
    """The department files (``*.yaml``) in ``ddir``; a stray ``*.yml`` or none at all is
    added to ``problems``."""
    files = sorted(ddir.glob("*.yaml")) if ddir.is_dir() else []
    for stray in sorted(ddir.glob("*.yml")) if ddir.is_dir() else []:
        problems.append(
            f"{stray}: (file): ignored: only *.yaml is read. Fix: rename it to {stray.stem}.yaml"
        )
    if not files:
        problems.append(
            f"{ddir}: (directory): no department files (*.yaml). Fix: add one file per "
            "department, e.g. departments/gongan.yaml (see the example city's config/)"
        )
    return files


def _load_departments(
    files: Sequence[Path], default_contact: Any = None, warnings: list[str] | None = None
) -> tuple[list[tuple[DepartmentConfig, _Doc]], dict[str, list[str]]]:
    """The departments that load cleanly (with their documents), and the problems of each
    file that does not, under the file's name. A department without a ``contact`` gets
    ``default_contact`` (the data engineering contact), with a line in ``warnings``."""
    loaded: list[tuple[DepartmentConfig, _Doc]] = []
    broken: dict[str, list[str]] = {}
    for path in files:
        own: list[str] = []
        doc = _read_yaml(path, own)
        if _lacks_contact(doc) and default_contact is not None:
            assert doc is not None
            doc.data["contact"] = default_contact
            if warnings is not None:
                warnings.append(_no_contact(path, default_contact))
        dept: DepartmentConfig | None = None
        if doc is not None:
            try:
                dept = DepartmentConfig.model_validate(doc.data)
            except ValidationError as exc:
                own += _translate(exc, DepartmentConfig, doc, path)
        if dept is not None and doc is not None:
            dept._source_file = path
            if path.stem != dept.code:
                own.append(
                    _problem(
                        path,
                        doc,
                        DepartmentConfig,
                        ("code",),
                        f"code '{dept.code}' does not match the file name",
                        f"name the file {dept.code}.yaml, or set `code: {path.stem}`",
                    )
                )
            elif not own:
                loaded.append((dept, doc))
        if own:
            broken[path.stem] = own
    return loaded, broken


def _lacks_contact(doc: _Doc | None) -> bool:
    return doc is not None and isinstance(doc.data, dict) and doc.data.get("contact") is None


def _no_contact(path: Path, contact: Any) -> str:
    who = f"{contact.get('name')} <{contact.get('email')}>" if isinstance(contact, dict) else ""
    return (
        f"{path}: contact: missing; its reports go to the data engineering contact {who} "
        "until it has its own. Fix: add `contact: {name: …, email: …}` with the department's "
        "data owner (数据责任人)"
    )


PRIVATE_UMASK = 0o077


def make_private(var_dir: Path) -> None:
    """Keep what a run writes to its owner: ``var_dir`` mode 0700, and this process's umask
    077 so that every file it (or a child such as Airflow) creates is 0600 and every folder
    0700 — the warehouse with its -wal/-shm, raw and canonical Parquet, master state, run
    records, reports, exports. Everything govmdm runs loads the configuration first, so this
    holds for the command line, the DAG's tasks and the demo alike.
    """
    os.umask(PRIVATE_UMASK)
    var_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if var_dir.stat().st_mode & 0o077:
            var_dir.chmod(0o700)
    except PermissionError:
        log.warning(
            "%s is readable by others and not ours to change (mode %o). Fix: its owner runs "
            "`chmod 700 %s`",
            var_dir,
            var_dir.stat().st_mode & 0o777,
            var_dir,
        )


def load_yaml_model(path: str | Path, model: type[_M]) -> _M:
    """One YAML file validated by ``model`` (e.g. ``config/matching.yaml``), with problems
    reported the same way as the city's: file, key, line, what is wrong and how to fix it.

    >>> load_yaml_model("config/matching.yaml", MatchSettings).person.thresholds.auto_link
    0.99
    """
    problems: list[str] = []
    doc = _read_yaml(Path(path), problems)
    if doc is None:
        raise ConfigError(problems)
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(_translate(exc, model, doc, doc.path)) from None


# --- connections -------------------------------------------------------------------------------


def resolve_connection(city: CityConfig, dept: DepartmentConfig) -> str:
    """The SQLAlchemy URL to read ``dept``'s tables from.

    In order: ``AIRFLOW_CONN_<NAME>`` (an Airflow connection, URI or JSON form, translated to
    ``postgresql+psycopg`` / ``mysql+pymysql``), ``GOVMDM_CONN_<NAME>`` (a SQLAlchemy URL, used as
    is), then the embedded demo ``<var_dir>/city/sources/<name>.sqlite`` if it exists.

    >>> os.environ["AIRFLOW_CONN_GONGAN"] = "postgres://reader:pw@db:5432/rk"
    >>> resolve_connection(city, city.department("gongan"))
    'postgresql+psycopg://reader:pw@db:5432/rk'
    """
    name = dept.connection.upper()
    airflow_var, govmdm_var = f"AIRFLOW_CONN_{name}", f"GOVMDM_CONN_{name}"
    if raw := os.environ.get(airflow_var, "").strip():
        return _from_airflow(raw, airflow_var)
    if raw := os.environ.get(govmdm_var, "").strip():
        try:
            sa.engine.make_url(raw)
        except sa.exc.ArgumentError:
            raise _env_error(
                govmdm_var,
                "not a SQLAlchemy URL",
                "set it to a URL like postgresql+psycopg://user:password@host:5432/db",
            ) from None
        return raw
    default = city_source_path(city.var_dir, dept.connection)
    if default.is_file():
        return f"sqlite:///{default}"
    where = dept.source_file or dept.code
    raise ConnectionNotConfigured(
        [
            f"{where}: connection: department {dept.code} ({dept.name}) reads connection "
            f"'{dept.connection}', which is not configured. Fix: set {airflow_var} (an Airflow "
            f"connection URI or JSON) or {govmdm_var} (a SQLAlchemy URL), or generate the "
            f"embedded demo database {default}"
        ],
        department=dept.code,
        connection=dept.connection,
    )


def _env_error(var: str, what: str, fix: str) -> ConfigError:
    # Never echo the variable's value: it carries a password.
    return ConfigError([f"{var}: (environment): {what}. Fix: {fix}"])


_AIRFLOW_JSON_HINT = (
    'write it as {"conn_type": "postgres", "host": ..., "login": ..., "password": ..., '
    '"port": ..., "schema": ...}'
)


def _from_airflow(raw: str, var: str) -> str:
    """An Airflow connection, URI or JSON form, as a SQLAlchemy URL."""
    if raw.startswith("{"):
        return _from_airflow_json(raw, var)
    parts = urlsplit(raw)
    scheme = parts.scheme.lower().replace("-", "_")
    if scheme == "sqlite":
        # Airflow writes the file path as an encoded host (sqlite://%2Ftmp%2Fx.db); SQLAlchemy
        # style sqlite:///path passes through unchanged.
        return f"sqlite:///{unquote(parts.netloc + parts.path)}" if parts.netloc else raw
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    extra = _json_object(query.pop("__extra__", ""), var)
    extra.update(query)
    try:
        port = parts.port
    except ValueError:
        raise _env_error(
            var, "the port is not a number", "write conn_type://login:password@host:port/schema"
        ) from None
    return _sqlalchemy_url(
        var,
        scheme,
        host=unquote(parts.hostname or "") or None,
        login=unquote(parts.username or "") or None,
        password=unquote(parts.password or "") or None,
        port=port,
        schema=unquote(parts.path.lstrip("/")) or None,
        extra=extra,
    )


def _from_airflow_json(raw: str, var: str) -> str:
    conn = _json_object(raw, var)
    extra = conn.get("extra") or {}
    if isinstance(extra, str):
        extra = _json_object(extra, var)
    port = conn.get("port")
    try:
        port_number = int(port) if port not in (None, "") else None
    except (TypeError, ValueError):
        raise _env_error(var, "the port is not a number", _AIRFLOW_JSON_HINT) from None
    return _sqlalchemy_url(
        var,
        str(conn.get("conn_type") or ""),
        host=conn.get("host") or None,
        login=conn.get("login") or None,
        password=conn.get("password") or None,
        port=port_number,
        schema=conn.get("schema") or None,
        extra=extra if isinstance(extra, dict) else {},
    )


def _json_object(text: str, var: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _env_error(var, f"invalid JSON at character {exc.pos}", _AIRFLOW_JSON_HINT) from None
    if not isinstance(value, dict):
        raise _env_error(var, "expected a JSON object", _AIRFLOW_JSON_HINT)
    return value


def _sqlalchemy_url(
    var: str,
    conn_type: str,
    *,
    host: str | None,
    login: str | None,
    password: str | None,
    port: int | None,
    schema: str | None,
    extra: Mapping[str, Any],
) -> str:
    kind = conn_type.lower().replace("-", "_")
    query = {k: str(v) for k, v in extra.items() if v is not None}
    if kind in ("postgres", "postgresql"):
        driver = "postgresql+psycopg"
    elif kind in ("mysql", "mariadb"):
        driver = "mysql+pymysql"
        # Chinese text beyond the BMP (rare surnames) needs utf8mb4; MySQL's utf8 is 3-byte.
        query.setdefault("charset", "utf8mb4")
    elif kind == "sqlite":
        path = host or schema
        return f"sqlite:///{path}" if path else "sqlite://"
    else:
        raise _env_error(
            var,
            f"connection type '{conn_type}' is not supported",
            "use postgres, mysql or sqlite, or set GOVMDM_CONN_<NAME> to a SQLAlchemy URL",
        )
    url = sa.engine.URL.create(
        driver,
        username=login,
        password=password,
        host=host,
        port=port,
        database=schema,
        query=query,
    )
    return url.render_as_string(hide_password=False)


def save_settings_snapshot(city: CityConfig, path: str | Path) -> Path:
    """Write the configuration a run used as JSON beside its output; returns the path.

    Connection *names* only: resolved URLs (and their passwords) are never written.

    >>> save_settings_snapshot(city, "var/runs/2024-05-01/settings.json")
    PosixPath('var/runs/2024-05-01/settings.json')
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(city.model_dump(mode="json"), ensure_ascii=False, indent=2) + "\n"
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)  # readers never see a half-written snapshot
    return target


def run_id_date(run_id: str) -> dt.date | None:
    """The ``YYYY-MM-DD`` a run ID carries (the default run IDs and Airflow's
    ``scheduled__<date>…`` carry one), or None.

    >>> run_id_date("scheduled__2026-07-01T18:00:00+00:00"), run_id_date("n1")
    (datetime.date(2026, 7, 1), None)
    """
    if m := re.search(r"\d{4}-\d{2}-\d{2}", run_id):
        try:
            return dt.date.fromisoformat(m.group(0))
        except ValueError:
            return None
    return None


def night_date(city: CityConfig, run_id: str) -> dt.date:
    """The day a night's data describes: the date in its run ID (:func:`run_id_date`), else
    today in the city's time zone.

    >>> night_date(city, "2026-07-01")
    datetime.date(2026, 7, 1)
    """
    return run_id_date(run_id) or dt.datetime.now(zoneinfo.ZoneInfo(city.timezone)).date()
