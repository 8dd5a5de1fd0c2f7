"""Quality rules as data: ``config/quality/<department>.yaml`` and ``config/quality/golden.yaml``.

Each department's file holds the rules that department answers for; ``golden.yaml`` holds the
rules on the golden tables, each owned by the department that is the authority for the checked
attribute (一数一源: whoever supplies a golden value answers for it). Every rule names a stable
``id``, its ``kind`` and target, a GB/T 36344 ``dimension``, a ``severity`` and a ``threshold``,
and says in Chinese what it checks (``description``) and how the department fixes it (``fix``).

>>> rules = load_quality_rules(city)
>>> rule = rules.rule("RS-V01")
>>> rule.department, rule.kind, rule.column, rule.dimension
('renshe', 'validity', 'id_no', '规范性')

Each kind is a class (:data:`RULE_KINDS`): the keys it takes, when it is judged (its
``judged_at``: ``batch``, ``ledger`` or ``linked``; a rule in ``golden.yaml`` is judged on the
published golden tables), its default dimension, whether it may block, and its ``judge``. What
they read and why:

- ``completeness`` — the department's **raw** value is filled (blank and placeholders such as
  ``NULL``/``无``/``-`` count as empty): whether a field was filled is the department's fact,
  and a filled but invalid value is a validity finding, not a missing one.
- ``validity`` — the department's **raw** value, one of: a ``validator`` (ID number, credit
  code, organization code, 注册号, division code, phone, ISO date; ``chars: [0, 6]`` checks a
  part), ``values`` or ``code_table: true`` (an enumeration: the field's code table in the
  department's config), a ``pattern`` (regular expression, whole value), or ``reasons`` (the
  standardizer's reason codes on the field). Raw, because the standardizer repairs: a 15-digit
  ID it upgraded, full-width digits, ``+86 138 …`` phones are the department's defects even
  though the golden tables never see them. ``reasons`` is for what only the standardizer can
  tell (traditional characters converted, an ID contradicting the row's birth date).
- ``uniqueness`` — ``field: source_key`` (the primary key) or a **cleaned** identifier: two
  rows holding ``110105491231002`` and ``11010519491231002X`` are the same person twice.
- ``referential`` — the **cleaned** value exists in a golden table column
  (``references: mdm_enterprise.uscc``); a malformed code is validity's finding, not this one's.
- ``freshness`` — the newest change stamp (tonight's batch, or the ledger's watermark) is at
  most ``threshold`` days old at the end of the night's day; default: the department's
  ``update_frequency`` (daily 1, weekly 7, monthly 31 days).
- ``volume`` — rows read tonight against the median of up to ``window`` earlier nights of the
  same extraction mode in the ledger; ``threshold`` is the largest relative change allowed.
- ``consistency`` — the share of the department's linked rows with no value contradicting the
  authority (``mdm_conflict`` of the night), optionally for some ``attributes`` only.
- ``delivery`` — from the ledger: ``check: extraction`` (every table was read) or
  ``check: schema`` (no schema drift).

Completeness, validity (but ``reasons``) and uniqueness go through Great Expectations, one suite
per table (:mod:`quality.checks`); a referential rule and a ``reasons`` rule count flags the
rule computes itself, so they count them directly. Every department table also has two built-in
rules: no mass deletion (:func:`deletion_rules`) and no 乱码 (:func:`encoding_rules`).

Rows judged by a rule: ``threshold`` is the least share of them that must pass (GX ``mostly``).
Severity ``blocking`` holds the department's batch out of the golden tables; only rules judged
before consolidation (completeness, validity, uniqueness, volume) may block.

Loading checks every file before raising one :class:`etl.config.ConfigError` that lists every
problem as ``<file>: rules[i] (<rule id>).<key> (line N): <what is wrong>. Fix: <how>``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import re
import statistics
import zoneinfo
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal, Self, get_args

import pandas as pd
import sqlalchemy as sa
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from yaml.nodes import Node

from etl.config import (
    FIELDS,
    CityConfig,
    ConfigError,
    DepartmentConfig,
    TableConfig,
    load_yaml_model,
    yaml_line_of,
)
from etl.standardize import ROW_REASONS
from fields import normalize
from fields.masking import mask_key
from quality.checks import VALIDATORS, Check, CheckResult, tally
from quality.results import RuleResult
from quality.tonight import EXTRACTION_STATUS, UNPUBLISHED, Batch, Tonight, not_extracted
from store.warehouse import conflict_table, crosswalk_table

__all__ = [
    "DEFAULT_DIMENSION",
    "FRESHNESS_DAYS",
    "GOLDEN_FILE",
    "GOLDEN_TABLES",
    "KEY_FIELD",
    "KINDS",
    "RULE_KINDS",
    "SAMPLE_KEYS",
    "TABLE_LEVEL",
    "QualityRules",
    "Rule",
    "RuleSpec",
    "load_quality_rules",
]

Dimension = Literal["规范性", "完整性", "准确性", "一致性", "时效性", "可访问性"]
"""GB/T 36344 dimensions, as :data:`quality.results.DIMENSIONS` lists them."""
Severity = Literal["warning", "error", "blocking"]
Stage = Literal["batch", "ledger", "linked"]
GOLDEN_TABLES: Final[Mapping[str, str]] = {"mdm_person": "person", "mdm_enterprise": "enterprise"}
GOLDEN_FILE: Final = "golden.yaml"
FRESHNESS_DAYS: Final[Mapping[str, int]] = {"daily": 1, "weekly": 7, "monthly": 31}
KEY_FIELD: Final = "source_key"
"""``field: source_key`` names a department table's primary key."""
SAMPLE_KEYS: Final = 20
"""Masked sample keys kept per result."""

_GOLDEN_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {
    "mdm_person": (
        "master_id", "name", "name_pinyin", "id_number", "sex", "birth_date", "phone",
        "division_code", "address", "ethnicity", "employer_uscc", "status",
    ),
    "mdm_enterprise": (
        "master_id", "name", "uscc", "reg_no", "org_code", "legal_rep_name", "legal_rep_id",
        "division_code", "address", "registered_capital", "established_date", "status",
    ),
}  # fmt: skip
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_HAN = re.compile(r"[\u4e00-\u9fff]")
_REASON_CODES: Final = frozenset(normalize.REASONS) | frozenset(ROW_REASONS)
_BEIJING_EPOCH = dt.datetime(1970, 1, 1, 8)  # epoch change stamps are Beijing wall time
_FREQUENCY = {"daily": "每日", "weekly": "每周", "monthly": "每月"}
_MODE = {"full": "全量抽取", "incremental": "增量抽取"}


# --- problems ----------------------------------------------------------------------------------

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class _Problem:
    loc: Loc
    """Where, from the top of the file: ``("rules", 3, "field")``."""
    what: str
    fix: str


class _Invalid(ValueError):
    """Raised by a key's validator; the loader reads ``what`` and ``fix`` from pydantic's error."""

    def __init__(self, what: str, fix: str) -> None:
        self.what, self.fix = what, fix
        super().__init__(f"{what}. Fix: {fix}")


def _choose(word: str, choices: Sequence[str], what: str) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    return f"use one of the {what}: {', '.join(choices)}"


def _rule_id(text: str) -> str:
    if not _ID.match(text):
        raise _Invalid(f"'{text}' is not a rule ID", "use letters, digits and - _ . such as GA-V01")
    return text


def _validator_name(name: str) -> str:
    if name not in VALIDATORS:
        raise _Invalid(f"no validator '{name}'", _choose(name, list(VALIDATORS), "validators"))
    return name


def _regular_expression(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise _Invalid(
            f"not a regular expression ({exc})",
            "quote it in single quotes and escape as Python's re does",
        ) from None
    return pattern


def _reason_code(code: str) -> str:
    if code not in _REASON_CODES:
        codes = sorted(_REASON_CODES)
        raise _Invalid(
            f"no reason code '{code}'", _choose(code, codes, "codes of fields.normalize.REASONS")
        )
    return code


def _part(chars: tuple[int, int]) -> tuple[int, int]:
    if not 0 <= chars[0] < chars[1]:
        raise _Invalid(
            f"{list(chars)} is not a part of a value",
            "write [start, end] with 0 ≤ start < end, e.g. [0, 6]",
        )
    return chars


def _some(values: tuple[str, ...]) -> tuple[str, ...]:
    if not values:
        raise _Invalid("the list is empty", "list the allowed values")
    return values


def _golden_column(text: object) -> object:
    """``mdm_enterprise.uscc`` as ``("mdm_enterprise", "uscc")``, if it is a golden column."""
    if not isinstance(text, str):
        return text
    table, _, column = text.partition(".")
    if table not in _GOLDEN_COLUMNS or column not in _GOLDEN_COLUMNS[table]:
        choices = [f"{t}.{c}" for t, cols in _GOLDEN_COLUMNS.items() for c in cols]
        raise _Invalid(f"'{text}' is not a golden column", _choose(text, choices, "golden columns"))
    return table, column


# --- what every rule is ------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a rule applies, resolved against the city's configuration by the loader."""

    department: str
    """Who answers for the rule: the file's department, the attribute's authority, or the
    department the rule names."""
    target: str
    """The department's source table, or the golden table."""
    entity: str
    column: str | None
    """The column as its owner knows it: the department's source column(s), the golden column."""
    golden: bool
    source_file: Path
    table_department: str | None
    """The department whose table the rule reads (None for a golden rule)."""
    threshold: float


@dataclass(frozen=True)
class _Where:
    """A rules file and the city it is read against."""

    city: CityConfig
    path: Path
    department: DepartmentConfig | None
    """The file's department; None in golden.yaml."""
    table: str | None
    """The file's default table."""

    @property
    def golden(self) -> bool:
        return self.department is None


class Rule(BaseModel):
    """What every kind of rule states, and how it is judged (one subclass per ``kind``).

    The loader checks a rule against the city and places it (:class:`Placement`): then
    ``department``, ``target``, ``column`` and ``threshold`` say where it applies and how strict
    it is.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    judged_at: ClassVar[Stage]
    """When: on the standardized batch, from the ledger, or after the night is linked."""
    can_block: ClassVar[bool] = False
    """A failure may hold the department's batch out of the golden tables (judged before them)."""
    on_golden: ClassVar[bool] = False
    """The kind may check a golden table (golden.yaml)."""
    table_level: ClassVar[bool] = False
    """Judged once per table (pass or fail), not row by row."""
    default_threshold: ClassVar[float] = 1.0

    id: Annotated[str, AfterValidator(_rule_id)] = Field(
        description="a stable rule ID such as `GA-V01`; never reuse one"
    )
    kind: str
    description: str = Field(description="what the rule checks, in Chinese")
    fix: str = Field(description="how the department fixes a failure, in Chinese")
    named_department: str | None = Field(
        default=None, alias="department", description="the owning department's code"
    )
    dimension: Dimension = Field(
        description="a GB/T 36344 dimension: 规范性 完整性 准确性 一致性 时效性 可访问性"
    )
    severity: Severity = Field("error", description="`warning`, `error` or `blocking`")
    written_threshold: float | None = Field(
        default=None,
        alias="threshold",
        description="least share of rows passing (volume: largest change; freshness: days)",
    )
    table: str | None = Field(default=None, description="the department's table, or a golden table")

    _at: Placement | None = PrivateAttr(None)

    @field_validator("description", "fix")
    @classmethod
    def _in_chinese(cls, text: str, info: ValidationInfo) -> str:
        if not _HAN.search(text):
            key = info.field_name
            raise _Invalid(
                f"`{key}` is not in Chinese", "department contacts read it: write it in 中文"
            )
        return text

    # where it applies

    @property
    def placement(self) -> Placement:
        assert self._at is not None, f"rule {self.id} was not placed by the loader"
        return self._at

    @property
    def department(self) -> str:
        return self.placement.department

    @property
    def target(self) -> str:
        return self.placement.target

    @property
    def entity(self) -> str:
        return self.placement.entity

    @property
    def column(self) -> str | None:
        return self.placement.column

    @property
    def golden(self) -> bool:
        return self.placement.golden

    @property
    def source_file(self) -> Path:
        return self.placement.source_file

    @property
    def table_department(self) -> str | None:
        return self.placement.table_department

    @property
    def threshold(self) -> float:
        return self.placement.threshold

    @property
    def stage(self) -> str:
        """``batch``, ``ledger``, ``linked`` (after consolidation) or ``golden``."""
        return "golden" if self.golden else self.judged_at

    @property
    def blocking(self) -> bool:
        """A failure holds the department's batch out of the golden tables."""
        return self.severity == "blocking"

    # checking and placing

    def problems(self, golden: bool) -> Iterator[tuple[str | None, str, str]]:
        """What is wrong with the rule beyond its keys' types: (key, what, fix)."""
        if self.blocking and (golden or not self.can_block):
            yield (
                "severity",
                f"a {'golden ' if golden else ''}{self.kind} rule cannot block",
                "blocking holds a department's batch out of the golden tables before they are "
                "built, so only completeness, validity, uniqueness and volume rules on a "
                "department's batch may block; use `error`",
            )
        if golden and not self.on_golden:
            golden_kinds = sorted(k for k, cls in RULE_KINDS.items() if cls.on_golden)
            yield (
                "kind",
                f"a golden rule cannot be a {self.kind} rule",
                "use " + ", ".join(golden_kinds),
            )
        t = self.written_threshold
        if t is not None and not 0 < t <= 1:
            yield (
                "threshold",
                f"{t} is not a share",
                "give the least share of rows that must pass, e.g. 0.99",
            )

    def placed(self, at: Placement) -> Self:
        """This rule, applying where ``at`` says."""
        rule = self.model_copy()
        rule._at = at
        return rule

    def _place(self, where: _Where, problems: list[_Problem], at: Loc) -> Self | None:
        """This rule checked against the city and placed; None (with ``problems``) when it cannot
        be. A department file's rule reads one of its tables."""
        assert where.department is not None
        owner = where.department
        if self.named_department is not None:
            found = _department(where.city, self.named_department, (*at, "department"), problems)
            if found is None:
                return None
            owner = found
        table = self._table(where.department, self.table or where.table, problems, at)
        if table is None:
            return None
        column = self._column(table, problems, at)
        placement = Placement(
            department=owner.code,
            target=table.name,
            entity=table.entity,
            column=column,
            golden=False,
            source_file=where.path,
            table_department=where.department.code,
            threshold=self._threshold(where.department),
        )
        return self._fitted(table, where.department, problems, at).placed(placement)

    @staticmethod
    def _table(
        dept: DepartmentConfig, name: str | None, problems: list[_Problem], at: Loc
    ) -> TableConfig | None:
        if name is None:
            if len(dept.tables) == 1:
                return dept.tables[0]
            names = ", ".join(t.name for t in dept.tables)
            what = f"{dept.code} has several tables"
            problems.append(_Problem((*at, "table"), what, f"add `table:` naming one of {names}"))
            return None
        for table in dept.tables:
            if table.name == name:
                return table
        fix = _choose(name, [t.name for t in dept.tables], "tables")
        problems.append(_Problem((*at, "table"), f"{dept.code} has no table '{name}'", fix))
        return None

    def _column(self, table: TableConfig, problems: list[_Problem], at: Loc) -> str | None:
        """The department's column the rule reads (None: it reads no single column)."""
        return None

    def _fitted(
        self, table: TableConfig, dept: DepartmentConfig, problems: list[_Problem], at: Loc
    ) -> Self:
        """The rule with what it takes from the department's table (e.g. a code table)."""
        return self

    def _threshold(self, dept: DepartmentConfig) -> float:
        return self.written_threshold or self.default_threshold

    # judging

    def judge(self, batch: Batch) -> RuleResult:
        """The rule's result tonight, from its target's inputs."""
        raise NotImplementedError

    def expectation(self, batch: Batch) -> tuple[pd.Series, Check] | None:
        """The values the rule judges and its GX check; None for a rule judged without GX."""
        return None

    def result(
        self,
        night: Tonight,
        status: str,
        checked: int = 0,
        failed: int = 0,
        keys: Sequence[str] = (),
        message: str | None = None,
    ) -> RuleResult:
        """One ``dq_result`` row of the rule (at most :data:`SAMPLE_KEYS` keys, masked)."""
        return RuleResult(
            run_id=night.run_id,
            department=self.department,
            rule_id=self.id,
            target=self.target,
            column_name=self.column,
            kind=self.kind,
            dimension=self.dimension,
            severity=self.severity,
            description=self.description,
            fix=self.fix,
            threshold=self.threshold,
            rows_checked=checked,
            rows_failed=failed,
            sample_keys=tuple(mask_key(k) for k in keys[:SAMPLE_KEYS]),
            status=status,
            held_back=status == "failed" and self.blocking and self.stage in ("batch", "ledger"),
            message=message,
        )

    def not_run(self, night: Tonight, message: str) -> RuleResult:
        return self.result(night, "not_run", message=message)

    def passed(self, night: Tonight, ok: bool, message: str) -> RuleResult:
        """The result of a rule judged once per table."""
        return self.result(night, "passed" if ok else "failed", 1, 0 if ok else 1, (), message)


# --- rules on rows -----------------------------------------------------------------------------


class _RowRule(Rule):
    """A rule on one field of each row of a department's batch or of a golden table."""

    judged_at: ClassVar[Stage] = "batch"
    can_block: ClassVar[bool] = True
    on_golden: ClassVar[bool] = True

    field: str = Field(description="a canonical field, or `source_key`")

    def _column(self, table: TableConfig, problems: list[_Problem], at: Loc) -> str | None:
        mapped = table.field_columns
        if self.field == KEY_FIELD:
            if self.kind != "uniqueness":
                what = f"`{KEY_FIELD}` is checked by uniqueness rules only"
                problems.append(_Problem((*at, "field"), what, "name a canonical field"))
            return "+".join(table.primary_key)
        if self.field not in mapped:
            choices = sorted(mapped) + ([KEY_FIELD] if self.kind == "uniqueness" else [])
            problems.append(
                _Problem(
                    (*at, "field"),
                    f"table {table.name} maps no column to '{self.field}'",
                    _choose(self.field, choices, f"fields of {table.name}"),
                )
            )
            return None
        return mapped[self.field]

    def _place_golden(self, where: _Where, problems: list[_Problem], at: Loc) -> Self | None:
        """This golden rule checked and placed: its owner is the attribute's authority, or
        the department it names."""
        target = self.table
        if target is None or target not in GOLDEN_TABLES:
            what = f"'{target}' is not a golden table" if target else "a golden rule needs `table`"
            problems.append(_Problem((*at, "table"), what, "use " + " or ".join(GOLDEN_TABLES)))
            return None
        columns = _GOLDEN_COLUMNS[target]
        if self.field not in columns or (self.field == "master_id" and self.kind != "uniqueness"):
            problems.append(
                _Problem(
                    (*at, "field"),
                    f"'{self.field}' is not a checkable column of {target}",
                    _choose(self.field, columns, f"columns of {target}"),
                )
            )
            return None
        owner = self._golden_owner(where.city, GOLDEN_TABLES[target], problems, at)
        if owner is None:
            return None
        placement = Placement(
            department=owner.code,
            target=target,
            entity=GOLDEN_TABLES[target],
            column=self.field,
            golden=True,
            source_file=where.path,
            table_department=None,
            threshold=self.written_threshold or 1.0,
        )
        return self.placed(placement)

    def _golden_owner(
        self, city: CityConfig, entity: str, problems: list[_Problem], at: Loc
    ) -> DepartmentConfig | None:
        if self.named_department is not None:
            if self.named_department in city.broken:  # its department does not run tonight
                return None
            return _department(city, self.named_department, (*at, "department"), problems)
        attribute = "address" if self.field == "division_code" else self.field
        owner = city.authority(entity, attribute)
        # with a department file broken tonight, its authorities are unknown: its rules wait
        if owner is None and not city.broken:
            problems.append(
                _Problem(
                    (*at, "field"),
                    f"no department is the authority for {entity} `{attribute}`, so the rule "
                    "has no owner",
                    "write `department:` on the rule to name who answers for it",
                )
            )
        return owner

    def values_judged(self, batch: Batch) -> pd.Series:
        """The field's values: the golden column; the department's raw text (surrounding
        whitespace ignored: CHAR columns pad with it) for completeness and validity; the
        cleaned value (or the source key) for uniqueness and referential rules."""
        assert batch.frame is not None
        if batch.golden:
            return _column(batch.frame, self.field)
        if self.kind in ("completeness", "validity"):
            return _column(batch.frame, f"raw_{self.field}").map(_strip)
        if self.field == KEY_FIELD:
            return batch.frame["source_key"]
        return _column(batch.frame, self.field)

    def gx_check(self, kind: str, **params: Any) -> Check:
        meta = {
            "department": self.department,
            "dimension": self.dimension,
            "severity": self.severity,
            "description_zh": self.description,
            "target": self.target,
        }
        return Check(self.id, kind, self.id, params, self.threshold, meta)

    def judge(self, batch: Batch) -> RuleResult:
        if batch.missing:
            return self.not_run(batch.night, batch.missing)
        return self.counted(batch.night, batch.checked(self))

    def counted(self, night: Tonight, c: CheckResult) -> RuleResult:
        """The result of a rule judged row by row."""
        if c.error:
            return self.result(night, "error", message=c.error)
        status = "passed" if c.success else "failed"
        if c.rows_checked:
            share = 1 - c.rows_failed / c.rows_checked
            message = (
                f"检查 {c.rows_checked:,} 行，{c.rows_failed:,} 行不通过"
                f"（通过率 {share:.2%}，要求不低于 {self.threshold:.0%}）"
            )
        else:
            message = "没有可检查的值（该字段今晚全部为空）"
        return self.result(night, status, c.rows_checked, c.rows_failed, c.failed_keys, message)


class Completeness(_RowRule):
    """The field is filled (the department's raw value; placeholders count as empty)."""

    kind: Literal["completeness"]
    dimension: Dimension = "完整性"

    def expectation(self, batch: Batch) -> tuple[pd.Series, Check]:
        value = self.values_judged(batch)
        filled = value if batch.golden else _map_distinct(value, _filled)
        return filled, self.gx_check("not_null")


class Uniqueness(_RowRule):
    """No two rows hold the same cleaned value (or primary key)."""

    kind: Literal["uniqueness"]
    dimension: Dimension = "准确性"  # GB/T 36344 counts 唯一性 and 重复率 under 准确性

    def expectation(self, batch: Batch) -> tuple[pd.Series, Check]:
        return self.values_judged(batch), self.gx_check("unique")


_FORMS: Final = ("validator", "values", "code_table", "pattern", "reasons")


class Validity(_RowRule):
    """The department's raw value (or the golden value) is well formed: one of five forms."""

    kind: Literal["validity"]
    dimension: Dimension = "规范性"
    validator: Annotated[str, AfterValidator(_validator_name)] | None = Field(
        None, description="one of " + ", ".join(VALIDATORS)
    )
    values: Annotated[tuple[str, ...], AfterValidator(_some)] | None = Field(
        None, description="the allowed values, quoted"
    )
    code_table: bool = Field(False, description="`true`: the config's code table is the set")
    pattern: Annotated[str, AfterValidator(_regular_expression)] | None = Field(
        None, description="a regular expression for the whole value"
    )
    reasons: tuple[Annotated[str, AfterValidator(_reason_code)], ...] | None = Field(
        None, description="standardizer reason codes"
    )
    chars: Annotated[tuple[int, int], AfterValidator(_part)] | None = Field(
        None, description="a part of the value: [start, end]"
    )

    def problems(self, golden: bool) -> Iterator[tuple[str | None, str, str]]:
        yield from super().problems(golden)
        given = [k for k in _FORMS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            yield (
                None,
                f"a validity rule needs exactly one of {', '.join(_FORMS)}"
                + (f", got {', '.join(given)}" if given else ""),
                "e.g. `validator: id_number`, `values: [男, 女]`, `code_table: true`, "
                r"`pattern: '\d{8}'` or `reasons: [traditional_converted]`",
            )
        if golden and (self.code_table or self.reasons is not None):
            key = "code_table" if self.code_table else "reasons"
            yield (
                key,
                f"`{key}` applies to a department's raw values, not to a golden table",
                "use `values: [...]`, `validator:` or `pattern:`",
            )

    def _fitted(
        self, table: TableConfig, dept: DepartmentConfig, problems: list[_Problem], at: Loc
    ) -> Self:
        if not self.code_table or self.field not in table.field_columns:
            return self
        column = table.field_columns[self.field]
        codes = table.columns[column].codes
        if not codes:
            problems.append(
                _Problem(
                    (*at, "code_table"),
                    f"column {column} has no code table in {dept.source_file or dept.code}",
                    "list the allowed raw values with `values: [...]` instead",
                )
            )
            return self
        return self.model_copy(update={"values": tuple(codes)})

    def expectation(self, batch: Batch) -> tuple[pd.Series, Check] | None:
        if self.reasons is not None:
            return None  # flags the standardizer set: counted directly
        value = self.values_judged(batch)
        if self.chars is not None:
            start, end = self.chars
            value = value.map(lambda v: v[start:end] if isinstance(v, str) else v)
        if self.validator is not None:
            return value, self.gx_check("valid", validator=self.validator)
        if self.values is not None:
            return value, self.gx_check("in_set", value_set=list(self.values))
        assert self.pattern is not None
        return value, self.gx_check("regex", regex=self.pattern)

    def judge(self, batch: Batch) -> RuleResult:
        if self.reasons is None or batch.missing:
            return super().judge(batch)
        assert batch.frame is not None
        codes = {f"{self.field}:{code}" for code in self.reasons}
        filled = _map_distinct(self.values_judged(batch), _filled)
        flagged = [
            None if v is None else bool(codes.intersection(rs if rs is not None else ()))
            for v, rs in zip(filled, batch.frame["reasons"], strict=True)
        ]
        return self.counted(batch.night, tally(self.id, flagged, batch.keys, self.threshold))


class Referential(_RowRule):
    """The cleaned value exists in a golden table column; judged once the night is published."""

    judged_at: ClassVar[Stage] = "linked"
    can_block: ClassVar[bool] = False

    kind: Literal["referential"]
    dimension: Dimension = "一致性"  # 关联数据一致性
    references: Annotated[tuple[str, str], BeforeValidator(_golden_column)] = Field(
        description="a golden column: mdm_enterprise.uscc"
    )

    def judge(self, batch: Batch) -> RuleResult:
        night = batch.night
        if batch.missing:
            return self.not_run(night, batch.missing)
        if not night.published:
            return self.not_run(night, UNPUBLISHED)
        ref_table, ref_column = self.references
        known = set(night.golden_table(ref_table)[ref_column].dropna())
        unknown = self.values_judged(batch).map(lambda v: None if _empty(v) else v not in known)
        return self.counted(night, tally(self.id, unknown, batch.keys, self.threshold))


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name in frame.columns:
        return frame[name]
    return pd.Series([None] * len(frame), dtype=object)


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def _empty(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT


def _filled(value: object) -> object:
    """The value if the department filled it, None when blank or a placeholder (NULL, 无, -)."""
    return value if not _empty(value) and normalize.text(value).ok else None


def _map_distinct(series: pd.Series, fn: Callable[[object], object]) -> pd.Series:
    """``series.map(fn)``, calling ``fn`` once per distinct value."""
    cache: dict[object, object] = {}

    def once(v: object) -> object:
        if _empty(v):
            return None
        if v not in cache:
            cache[v] = fn(v)
        return cache[v]

    return pd.Series([once(v) for v in series], dtype=object)


# --- rules on the ledger -----------------------------------------------------------------------


class _LedgerRule(Rule):
    """A rule on one department table's extraction, judged from the ledger."""

    judged_at: ClassVar[Stage] = "ledger"
    table_level: ClassVar[bool] = True


class Freshness(_LedgerRule):
    """The newest change stamp is at most ``threshold`` days old at the end of the night's day."""

    kind: Literal["freshness"]
    dimension: Dimension = "时效性"

    def problems(self, golden: bool) -> Iterator[tuple[str | None, str, str]]:
        yield from _positive(super().problems(golden), self.written_threshold, "days")

    def _threshold(self, dept: DepartmentConfig) -> float:
        return self.written_threshold or float(FRESHNESS_DAYS[dept.update_frequency])

    def judge(self, batch: Batch) -> RuleResult:
        night, entry, table = batch.night, batch.entry, batch.table
        assert table is not None and batch.department is not None
        if entry is None or entry["status"] != "ok":
            return self.not_run(night, f"{not_extracted(entry)}，无法判断数据时效")
        stamps = [_change_stamp(entry["watermark_after"], table, night.city.timezone)]
        frame = batch.frame
        if (
            frame is not None
            and "updated_at" in frame.columns
            and frame["updated_at"].notna().any()
        ):
            stamps.append(pd.Timestamp(frame["updated_at"].max()).to_pydatetime())
        newest = max((s for s in stamps if s is not None), default=None)
        frequency = _FREQUENCY[batch.department.update_frequency]
        promise = f"承诺{frequency}更新，允许 {self.threshold:g} 天"
        if newest is None:
            return self.passed(night, False, f"没有可用的变更时间（{promise}）")
        end_of_day = dt.datetime.combine(night.as_of + dt.timedelta(days=1), dt.time())
        age = (end_of_day - newest).total_seconds() / 86400
        message = (
            f"最新变更时间 {newest:%Y-%m-%d %H:%M}，距 {night.as_of} 日终 {age:.1f} 天（{promise}）"
        )
        return self.passed(night, age <= self.threshold, message)


def _change_stamp(text: str | None, table: TableConfig, timezone: str) -> dt.datetime | None:
    """A ledger watermark as naive local time, read the way the table's change column is."""
    if not text:
        return None
    try:
        if table.change_kind == "epoch_seconds":
            return _BEIJING_EPOCH + dt.timedelta(seconds=float(text))
        if table.change_kind == "string" and table.change_format:
            return dt.datetime.strptime(text, table.change_format)
        stamp = dt.datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        return None
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(zoneinfo.ZoneInfo(timezone)).replace(tzinfo=None)
    return stamp


def _positive(
    problems: Iterator[tuple[str | None, str, str]], threshold: float | None, unit: str
) -> Iterator[tuple[str | None, str, str]]:
    """The rule's problems, a threshold that is a number of days or a change, not a share."""
    for p in problems:
        if p[0] != "threshold":
            yield p
    if threshold is not None and threshold <= 0:
        yield "threshold", f"{threshold} is not positive", f"give the {unit}"


class Volume(_LedgerRule):
    """Rows read tonight against the median of earlier nights of the same extraction mode."""

    can_block: ClassVar[bool] = True
    default_threshold: ClassVar[float] = 0.5

    kind: Literal["volume"]
    dimension: Dimension = "完整性"  # 记录完整性: rows gone missing from a delivery
    window: int = Field(7, ge=1, description="earlier nights compared, e.g. 7")

    def problems(self, golden: bool) -> Iterator[tuple[str | None, str, str]]:
        unit = "largest relative change, e.g. 0.3"
        yield from _positive(super().problems(golden), self.written_threshold, unit)

    def judge(self, batch: Batch) -> RuleResult:
        night, entry = batch.night, batch.entry
        if entry is None or entry["status"] != "ok":
            return self.not_run(night, f"{not_extracted(entry)}，无法比较数据量")
        mode = _MODE[entry["mode"]]
        earlier = self._earlier(night, entry)
        if not earlier:
            return self.not_run(night, f"没有可比较的历史批次（此前没有{mode}的夜间）")
        tonight = int(entry["rows_read"])
        baseline = statistics.median(int(r["rows_read"]) for r in earlier)
        change = (
            abs(tonight - baseline) / baseline if baseline else (0.0 if tonight == 0 else math.inf)
        )
        message = (
            f"今晚{mode}读取 {tonight:,} 行，此前 {len(earlier)} 晚中位数 "
            f"{baseline:,.0f} 行，变化 {change:.0%}（允许不超过 {self.threshold:.0%}）"
        )
        return self.passed(night, change <= self.threshold, message)

    def _earlier(self, night: Tonight, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Up to ``window`` earlier nights of the table read the same way, oldest first."""
        same = [
            r
            for r in night.ledger
            if r["department"] == entry["department"]
            and r["table_name"] == entry["table_name"]
            and r["status"] == "ok"
            and r["mode"] == entry["mode"]
            and r["run_id"] < night.run_id
        ]
        return sorted(same, key=lambda r: r["run_id"])[-self.window :]


class Delivery(_LedgerRule):
    """The table was extracted tonight (``extraction``) or kept its agreed schema (``schema``)."""

    kind: Literal["delivery"]
    dimension: Dimension = "可访问性"
    check: Literal["extraction", "schema"] = Field(
        "extraction", description="`extraction` or `schema`"
    )

    def problems(self, golden: bool) -> Iterator[tuple[str | None, str, str]]:
        for p in super().problems(golden):
            if p[0] != "threshold":
                yield p
        if self.written_threshold is not None:
            yield "threshold", "a delivery rule passes or fails", "remove `threshold`"

    def judge(self, batch: Batch) -> RuleResult:
        night, entry = batch.night, batch.entry
        if self.check == "schema":
            if entry is None:
                return self.not_run(night, "今晚没有该表的抽取记录，表结构未能检查")
            if entry["status"] == "drift":
                return self.passed(night, False, f"表结构发生变更：{entry['message']}")
            if entry["status"] != "ok":
                why = EXTRACTION_STATUS.get(entry["status"], entry["status"])
                return self.not_run(night, f"{why}，表结构未能检查")
            return self.passed(night, True, "表结构与约定一致")
        if entry is None or entry["status"] != "ok":
            first = (entry["message"] or "").splitlines()[0] if entry and entry["message"] else ""
            message = f"{not_extracted(entry)}：{first}" if first else not_extracted(entry)
            return self.passed(night, False, message)
        return self.passed(night, True, f"今晚已抽取 {entry['rows_read']:,} 行（{entry['mode']}）")


# --- rules after linking -----------------------------------------------------------------------


class Consistency(Rule):
    """The department's linked rows hold no value contradicting the authority's."""

    judged_at: ClassVar[Stage] = "linked"

    kind: Literal["consistency"]
    dimension: Dimension = "一致性"  # 相同数据一致性
    attributes: tuple[str, ...] | None = Field(None, description="the attributes compared")

    def _fitted(
        self, table: TableConfig, dept: DepartmentConfig, problems: list[_Problem], at: Loc
    ) -> Self:
        known = FIELDS[table.entity]
        for j, attribute in enumerate(self.attributes or ()):
            if attribute not in known:
                problems.append(
                    _Problem(
                        (*at, "attributes", j),
                        f"'{attribute}' is not a {table.entity} attribute",
                        _choose(attribute, known, f"{table.entity} fields"),
                    )
                )
        return self

    def judge(self, batch: Batch) -> RuleResult:
        night = batch.night
        if not night.published:
            return self.not_run(night, UNPUBLISHED)
        dept = str(self.table_department)
        x, c = crosswalk_table.c, conflict_table.c
        where = [c.run_id == night.run_id, c.department == dept, c.source_table == self.target]
        if self.attributes:
            where.append(c.attribute.in_(self.attributes))
        linked = sa.select(sa.func.count()).where(
            x.department == dept, x.source_table == self.target
        )
        with night.engine.connect() as conn:
            checked = int(conn.execute(linked).scalar_one())
            rows = conn.execute(sa.select(c.source_key, c.attribute).where(*where)).all()
        keys = sorted({r.source_key for r in rows})
        by_attribute = Counter(r.attribute for r in rows)
        ok = not checked or 1 - len(keys) / checked >= self.threshold
        detail = "，".join(f"{a} {n}" for a, n in by_attribute.most_common()) or "无"
        message = (
            f"{checked:,} 条已关联记录中 {len(keys):,} 条与权威部门不一致（按属性：{detail}）"
            f"；要求一致率不低于 {self.threshold:.0%}"
        )
        return self.result(night, "passed" if ok else "failed", checked, len(keys), keys, message)


# --- the kinds a rules file may name ---------------------------------------------------------

RuleSpec = Annotated[
    Completeness
    | Validity
    | Uniqueness
    | Referential
    | Freshness
    | Volume
    | Consistency
    | Delivery,
    Field(discriminator="kind"),
]
"""One rule as written in a rules file: the class of its ``kind``."""
RULE_KINDS: Final[Mapping[str, type[Rule]]] = {
    "completeness": Completeness,
    "validity": Validity,
    "uniqueness": Uniqueness,
    "referential": Referential,
    "freshness": Freshness,
    "volume": Volume,
    "consistency": Consistency,
    "delivery": Delivery,
}
KINDS: Final[tuple[str, ...]] = tuple(RULE_KINDS)
DEFAULT_DIMENSION: Final[Mapping[str, str]] = {
    kind: cls.model_fields["dimension"].default for kind, cls in RULE_KINDS.items()
}
TABLE_LEVEL: Final = frozenset(kind for kind, cls in RULE_KINDS.items() if cls.table_level)
"""Kinds judged once per table (pass or fail), not row by row."""
_SPEC: Final = TypeAdapter(RuleSpec)


# --- built-in rules ----------------------------------------------------------------------------


class Deletions(_LedgerRule):
    """Built in: a night deletes at most the table's ``max_deleted_share`` of its keys."""

    kind: Literal["delivery"] = "delivery"
    dimension: Dimension = "完整性"

    def judge(self, batch: Batch) -> RuleResult:
        night, entry = batch.night, batch.entry
        if entry is None or entry["status"] != "ok":
            return self.not_run(night, f"{not_extracted(entry)}，无法判断删除量")
        gone, before = entry.get("rows_deleted"), entry.get("keys_before")
        if gone is None or not before:
            return self.passed(night, True, "今晚未核对删除（未做主键比对或首次抽取）")
        scale = "整表被清空" if gone == before else f"占 {gone / before:.1%}"
        said = f"今晚发现 {gone:,} 行在源表中被删除（此前共 {before:,} 行，{scale}"
        guard = entry.get("deletion_guard")
        if guard == "held":
            message = (
                f"{said}，超过允许的 {self.threshold:.0%}）。本批数据已暂扣，基础库保留上一晚的"
                "数据；数据工程团队已收到提醒，核实后方可放行"
            )
            return self.passed(night, False, message)
        if guard == "accepted":
            return self.passed(night, True, f"{said}），已由数据工程团队确认放行")
        return self.passed(night, True, f"{said}），未超过允许的 {self.threshold:.0%}）")


class Encoding(_LedgerRule):
    """Built in: no value of the table holds bytes that are not UTF-8 (乱码)."""

    kind: Literal["delivery"] = "delivery"
    dimension: Dimension = "规范性"

    def judge(self, batch: Batch) -> RuleResult:
        night, frame = batch.night, batch.frame
        if batch.missing:
            return self.not_run(night, batch.missing)
        assert frame is not None
        columns: Counter[str] = Counter()
        keys = []
        for key, reasons in zip(frame["source_key"], frame["reasons"], strict=True):
            bad = [
                c.rpartition(":")[0]
                for c in (reasons if reasons is not None else ())
                if c.endswith(":invalid_encoding")
            ]
            if bad:
                keys.append(str(key))
                columns.update(bad)
        rows = f"检查 {len(frame):,} 行"
        if not keys:
            return self.result(night, "passed", len(frame), 0, (), f"{rows}，未发现乱码")
        where = "，".join(f"列 {c} {n} 行" for c, n in columns.most_common())
        message = f"{rows}，{len(keys):,} 行含乱码（{where}），这些行已拒收，其余数据照常处理"
        return self.result(night, "failed", len(frame), len(keys), tuple(keys), message)


ENCODING_RULE: Final = "{code}-ENC{index:02d}"
"""The ID of the built-in rule on values that are not valid UTF-8."""
DELETION_RULE: Final = "{code}-DEL{index:02d}"
"""The ID of the built-in mass-deletion rule of each department table."""


def _built_in(
    city: CityConfig, dept: DepartmentConfig, table: TableConfig, threshold: float
) -> Placement:
    return Placement(
        department=dept.code,
        target=table.name,
        entity=table.entity,
        column=None,
        golden=False,
        source_file=dept.source_file or city.root / "config",
        table_department=dept.code,
        threshold=threshold,
    )


def encoding_rules(city: CityConfig) -> list[Rule]:
    """The built-in rule on every department table: no value may hold bytes that are not
    UTF-8 (乱码). Such rows are rejected (``<column>:invalid_encoding``) and the rest of the
    table goes on; the report names the columns."""
    return [
        Encoding(
            id=ENCODING_RULE.format(code=dept.code, index=i + 1),
            description="数据中不得含有无法识别的字符编码（乱码，不是有效的UTF-8）；含乱码的行已拒收",
            fix="按报告所列的列和主键，在本部门系统中以UTF-8重新录入或转换这些值后重新推送",
            severity="error",
        ).placed(_built_in(city, dept, table, 1.0))
        for dept in city.departments
        for i, table in enumerate(dept.tables)
    ]


def deletion_rules(city: CityConfig) -> list[Rule]:
    """The built-in rule on every department table: a night may not delete more than the
    table's ``max_deleted_share`` of its keys (nor empty it) unless data engineering accepted
    it (``govmdm accept-deletions``). Blocking: the batch is held back and the base libraries
    keep the department's rows; its report says why."""
    return [
        Deletions(
            id=DELETION_RULE.format(code=dept.code, index=i + 1),
            description=(
                f"一晚之内删除的记录不应超过全表的 {table.max_deleted_share:.0%}，"
                "也不应整表清空；超过时本批数据暂扣，基础库保留上一晚的数据，待核实"
            ),
            fix=(
                "如系误删或导出程序故障（例如前置表被清空后重新导入了一部分），请恢复"
                "数据后重新推送；如确为真实的批量删除，请书面告知数据工程团队，由其执行"
                "确认命令后放行"
            ),
            severity="blocking",
        ).placed(_built_in(city, dept, table, table.max_deleted_share))
        for dept in city.departments
        for i, table in enumerate(dept.tables)
    ]


# --- the city's rules --------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityRules:
    """Every rule of the city, in file order (department files by name, then golden.yaml)."""

    rules: tuple[Rule, ...]

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def rule(self, rule_id: str) -> Rule:
        """The rule with this ID."""
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    def owned_by(self, department: str) -> list[Rule]:
        """The rules ``department`` answers for, its golden rules included."""
        return [r for r in self.rules if r.department == department]

    def stage(self, department: str, stage: str) -> list[Rule]:
        """The rules of ``department`` judged at ``stage`` (see :attr:`Rule.stage`)."""
        return [r for r in self.owned_by(department) if r.stage == stage]


# --- loading -----------------------------------------------------------------------------------


class RuleFile(BaseModel):
    """What one ``config/quality/*.yaml`` file holds (each rule is read as :data:`RuleSpec`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    department: str | None = Field(
        None, description="the department these rules belong to (its code, as the file name)"
    )
    table: str | None = Field(None, description="the default table of every rule")
    rules: list[dict[str, Any]] = Field(min_length=1, description="the rules, one mapping each")


def load_quality_rules(
    city: CityConfig, quality_dir: str | Path | None = None, *, every_department: bool = True
) -> QualityRules:
    """Read and check every ``*.yaml`` under ``quality_dir`` (default ``config/quality``).

    Raises :class:`etl.config.ConfigError` listing every problem of every file.
    ``every_department=False`` (linking asks which batch to hold back) lets a department with no
    rules file pass with none but the built-in ones; ``govmdm config check`` and
    ``govmdm quality`` still refuse it.

    >>> len(load_quality_rules(city)) > 0
    True
    """
    qdir = Path(quality_dir) if quality_dir is not None else city.root / "config" / "quality"
    if not qdir.is_dir():
        raise ConfigError(
            [
                f"{qdir}: (directory): not found. Fix: add one rules file per department "
                f"({qdir}/<department>.yaml) and {qdir}/{GOLDEN_FILE} (see the example city)"
            ]
        )
    problems = [
        f"{p}: (file): ignored: only *.yaml is read. Fix: rename it to {p.stem}.yaml"
        for p in sorted(qdir.glob("*.yml"))
    ]
    rules: list[Rule] = []
    first_seen: dict[str, Path] = {}
    covered: set[str] = set()
    for path in sorted(qdir.glob("*.yaml")):
        if path.stem in city.broken:  # its department file is broken: it does not run tonight
            continue
        try:
            spec = load_yaml_model(path, RuleFile)
        except ConfigError as exc:
            problems += _with_rule_ids(path, exc.problems)
            continue
        file_rules, file_problems = _read_file(city, path, spec, first_seen)
        rules += file_rules
        lines = _yaml_lines(path)
        problems += [_format(path, spec, lines, p) for p in file_problems]
        if spec.department:
            covered.add(spec.department)
    if every_department:
        problems += _uncovered(city, qdir, covered, problems)
    if problems:
        raise ConfigError(problems)
    return QualityRules((*rules, *deletion_rules(city), *encoding_rules(city)))


def _uncovered(city: CityConfig, qdir: Path, covered: set[str], problems: list[str]) -> list[str]:
    """A problem for each department with no rules file (and none reported broken)."""
    return [
        f"{qdir / f'{dept.code}.yaml'}: (file): department {dept.code} ({dept.name}) has "
        "no quality rules. Fix: add the file with at least its completeness, validity, "
        "freshness and delivery rules (copy another department's file as a start)"
        for dept in city.departments
        if dept.code not in covered
        and not any(p.startswith(str(qdir / f"{dept.code}.yaml")) for p in problems)
    ]


def _read_file(
    city: CityConfig, path: Path, spec: RuleFile, first_seen: dict[str, Path]
) -> tuple[list[Rule], list[_Problem]]:
    """The file's rules, checked and placed, and its problems; ``first_seen`` records each ID."""
    problems: list[_Problem] = []
    where = _file_where(city, path, spec, problems)
    if where is None:
        return [], problems
    out: list[Rule] = []
    for i, raw in enumerate(spec.rules):
        before = len(problems)
        rule = _read_rule(where, raw, ("rules", i), problems)
        if rule is None or len(problems) != before:
            continue
        if rule.id in first_seen:
            problems.append(
                _Problem(
                    ("rules", i, "id"),
                    f"rule ID {rule.id} is also used in {first_seen[rule.id]}",
                    "give every rule its own ID; results are kept by ID night after night",
                )
            )
            continue
        first_seen[rule.id] = path
        out.append(rule)
    return out, problems


def _file_where(
    city: CityConfig, path: Path, spec: RuleFile, problems: list[_Problem]
) -> _Where | None:
    """The file's department (None for golden.yaml); None when the department is wrong."""
    at: Loc = ("department",)
    if path.name == GOLDEN_FILE:
        if spec.department is not None:
            problems.append(
                _Problem(
                    at,
                    f"{GOLDEN_FILE} belongs to no single department",
                    "remove `department:`; each golden rule belongs to the authority of its "
                    "attribute, or to the `department:` written on the rule",
                )
            )
        return _Where(city, path, None, spec.table)
    if spec.department is None:
        fix = f"add `department: {path.stem}`"
        problems.append(_Problem(at, "required key is missing", fix))
        return None
    if spec.department != path.stem:
        problems.append(
            _Problem(
                at,
                f"department '{spec.department}' does not match the file name",
                f"name the file {spec.department}.yaml, or set `department: {path.stem}`",
            )
        )
        return None
    dept = _department(city, spec.department, at, problems)
    return _Where(city, path, dept, spec.table) if dept is not None else None


def _read_rule(
    where: _Where, raw: dict[str, Any], at: Loc, problems: list[_Problem]
) -> Rule | None:
    """One written rule: its keys validated by its kind's class, then checked and placed."""
    try:
        rule: Rule = _SPEC.validate_python(raw)
    except ValidationError as exc:
        problems += [_pydantic_problem(err, raw, at) for err in exc.errors()]
        return None
    for key, what, fix in rule.problems(where.golden):
        problems.append(_Problem((*at, key) if key else at, what, fix))
    if where.golden:
        if not isinstance(rule, _RowRule):
            return None  # reported: a golden rule cannot be of its kind
        return rule._place_golden(where, problems, at)
    return rule._place(where, problems, at)


def _department(
    city: CityConfig, code: str, loc: Loc, problems: list[_Problem]
) -> DepartmentConfig | None:
    try:
        return city.department(code)
    except KeyError:
        known = [d.code for d in city.departments]
        problems.append(_Problem(loc, f"no department '{code}'", _choose(code, known, "codes")))
        return None


# --- problem lines -----------------------------------------------------------------------------


def _pydantic_problem(err: Mapping[str, Any], raw: Mapping[str, Any], at: Loc) -> _Problem:
    """One pydantic error on a written rule as a problem at its key (the kind's tag left out)."""
    loc = tuple(err["loc"])
    kind = raw.get("kind")
    cls = RULE_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is not None and loc and loc[0] == kind:
        loc = loc[1:]
    error = err.get("ctx", {}).get("error")
    if isinstance(error, _Invalid):
        return _Problem((*at, *loc), error.what, error.fix)
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return _kind_problem(kind, at)
    assert cls is not None
    key = str(loc[-1]) if loc else "value"
    what, fix = _describe(err, cls, key)
    return _Problem((*at, *loc), what, fix)


def _kind_problem(kind: object, at: Loc) -> _Problem:
    if kind is None:
        return _Problem(
            (*at, "kind"), "required key is missing", "add `kind:` — " + ", ".join(KINDS)
        )
    return _Problem(
        (*at, "kind"), f"'{kind}' is not allowed here", _choose(str(kind), KINDS, "kinds")
    )


_COMMON_KEYS: Final = frozenset(f.alias or name for name, f in Rule.model_fields.items())


def _keys(cls: type[Rule]) -> list[str]:
    return [f.alias or name for name, f in cls.model_fields.items()]


def _describe(err: Mapping[str, Any], cls: type[Rule], key: str) -> tuple[str, str]:
    """A pydantic error as (what is wrong, how to fix it)."""
    fields = {f.alias or name: f for name, f in cls.model_fields.items()}
    hint = fields[key].description if key in fields else None
    kind = cls.model_fields["kind"].annotation
    name = get_args(kind)[0] if get_args(kind) else "this"
    if err["type"] == "missing":
        return "required key is missing", f"add `{key}:` — {hint or 'see the example rules'}"
    if err["type"] == "extra_forbidden":
        if any(key in _keys(other) for other in RULE_KINDS.values()):
            uses = ", ".join(sorted(set(_keys(cls)) - _COMMON_KEYS)) or "none of the kind keys"
            return f"`{key}` does not apply to a {name} rule", f"remove it ({name} uses {uses})"
        return f"unknown key '{key}'", _choose(key, _keys(cls), "allowed keys")
    if err["type"] == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"'{err.get('input')}' is not allowed here", f"use one of {expected}"
    message = str(err["msg"]).rstrip(".")
    return message, f"set `{key}` to {hint}" if hint else "correct the value"


def _format(path: Path, spec: RuleFile, lines: Node | None, p: _Problem) -> str:
    """``<file>: rules[i] (<id>).<key> (line N): <what>. Fix: <fix>``."""
    parts: list[str] = []
    for k, item in enumerate(p.loc):
        if isinstance(item, int):
            parts[-1] += f"[{item}]"
            if k == 1 and p.loc[0] == "rules" and item < len(spec.rules):
                rid = spec.rules[item].get("id")
                parts[-1] += f" ({rid})" if rid else ""
        else:
            parts.append(str(item))
    where = ".".join(parts) or "(top level)"
    line = yaml_line_of(lines, p.loc)
    at = f"{where} (line {line})" if line is not None else where
    return f"{path}: {at}: {p.what.rstrip('.')}. Fix: {p.fix}"


_RULE_AT = re.compile(r"^(?P<head>.*?: rules\[(?P<i>\d+)\])")


def _with_rule_ids(path: Path, lines: list[str]) -> list[str]:
    """Problem lines of :func:`etl.config.load_yaml_model` with the rule's ID after ``rules[i]``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return lines
    rules = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, list):
        return lines

    def add_id(m: re.Match[str]) -> str:
        i = int(m["i"])
        rule = rules[i] if i < len(rules) else None
        rid = rule.get("id") if isinstance(rule, dict) else None
        return f"{m['head']} ({rid})" if rid else m["head"]

    return [_RULE_AT.sub(add_id, line, count=1) for line in lines]


def _yaml_lines(path: Path) -> Node | None:
    try:
        return yaml.compose(path.read_text(encoding="utf-8-sig"), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return None
