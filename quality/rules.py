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

Each kind is a class (:data:`RULE_KINDS`; what all share is :class:`quality.rule_base.Rule`):
the keys it takes, when it is judged (its ``judged_at``: ``batch``, ``ledger`` or ``linked``; a
rule in ``golden.yaml`` is judged on the published golden tables), its default dimension,
whether it may block, and its ``judge``. The row rules are here, the rules on a table as a whole
in :mod:`quality.table_rules`. What they read and why:

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
rules: no mass deletion (:func:`quality.table_rules.deletion_rules`) and no 乱码 or NUL
(:func:`quality.table_rules.encoding_rules`); a person table with ID numbers a third: no
guardian's number as the person's own (:func:`quality.table_rules.guardian_rules`).

Rows judged by a rule: ``threshold`` is the least share of them that must pass (GX ``mostly``).
Severity ``blocking`` holds the department's batch out of the golden tables; only rules judged
before consolidation (completeness, validity, uniqueness, volume) may block.

Loading checks every file before raising one :class:`etl.config.ConfigError` that lists every
problem as ``<file>: rules[i] (<rule id>).<key> (line N): <what is wrong>. Fix: <how>``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal, Self, get_args

import pandas as pd
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)
from yaml.nodes import Node

from etl.config import (
    CityConfig,
    ConfigError,
    DepartmentConfig,
    TableConfig,
    load_yaml_model,
    yaml_line_of,
)
from etl.standardize import ROW_REASONS
from fields import dictionary, normalize
from quality.checks import VALIDATORS, Check, CheckResult, tally
from quality.results import RuleResult
from quality.rule_base import (
    DIMENSION_HELP,
    Dimension,
    Invalid,
    Loc,
    Placement,
    Problem,
    Rule,
    Stage,
    Where,
    choose,
    find_department,
)
from quality.table_rules import (
    Consistency,
    Delivery,
    Freshness,
    Volume,
    deletion_rules,
    encoding_rules,
    guardian_rules,
)
from quality.tonight import UNPUBLISHED, Batch, Tonight

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DIMENSION",
    "GOLDEN_FILE",
    "GOLDEN_TABLES",
    "KEY_FIELD",
    "KINDS",
    "RULE_KINDS",
    "TABLE_LEVEL",
    "Completeness",
    "QualityRules",
    "Referential",
    "Rule",
    "RuleSpec",
    "Uniqueness",
    "Validity",
    "load_quality_rules",
]

GOLDEN_TABLES: Final[Mapping[str, str]] = {"mdm_person": "person", "mdm_enterprise": "enterprise"}
GOLDEN_FILE: Final = "golden.yaml"
KEY_FIELD: Final = "source_key"
"""``field: source_key`` names a department table's primary key."""

_GOLDEN_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {
    table: ("master_id", *dictionary.checkable(entity)) for table, entity in GOLDEN_TABLES.items()
}
_VALIDITY_FORMS: Final = ("validator", "values", "code_table", "pattern", "reasons")
_REASON_CODES: Final = frozenset(normalize.REASONS) | frozenset(ROW_REASONS)


def _validator_name(name: str) -> str:
    if name not in VALIDATORS:
        raise Invalid(f"no validator '{name}'", choose(name, list(VALIDATORS), "validators"))
    return name


def _regular_expression(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise Invalid(
            f"not a regular expression ({exc})",
            "quote it in single quotes and escape as Python's re does",
        ) from None
    return pattern


def _reason_code(code: str) -> str:
    if code not in _REASON_CODES:
        codes = sorted(_REASON_CODES)
        raise Invalid(
            f"no reason code '{code}'", choose(code, codes, "codes of fields.normalize.REASONS")
        )
    return code


def _part(chars: tuple[int, int]) -> tuple[int, int]:
    if not 0 <= chars[0] < chars[1]:
        raise Invalid(
            f"{list(chars)} is not a part of a value",
            "write [start, end] with 0 ≤ start < end, e.g. [0, 6]",
        )
    return chars


def _some(values: tuple[str, ...]) -> tuple[str, ...]:
    if not values:
        raise Invalid("the list is empty", "list the allowed values")
    return values


def _golden_column(text: object) -> object:
    """``mdm_enterprise.uscc`` as ``("mdm_enterprise", "uscc")``, if it is a golden column."""
    if not isinstance(text, str):
        return text
    table, _, column = text.partition(".")
    if table not in _GOLDEN_COLUMNS or column not in _GOLDEN_COLUMNS[table]:
        choices = [f"{t}.{c}" for t, cols in _GOLDEN_COLUMNS.items() for c in cols]
        raise Invalid(f"'{text}' is not a golden column", choose(text, choices, "golden columns"))
    return table, column


# --- rules on rows -----------------------------------------------------------------------------


class _RowRule(Rule):
    """A rule on one field of each row of a department's batch or of a golden table."""

    judged_at: ClassVar[Stage] = "batch"
    can_block: ClassVar[bool] = True
    on_golden: ClassVar[bool] = True
    reads_raw: ClassVar[bool] = False
    """Reads the department's raw text rather than the cleaned value."""
    on_keys: ClassVar[bool] = False
    """May check the primary key (``source_key``, a golden table's ``master_id``)."""

    field: str = Field(description="a canonical field, or `source_key`")

    def _column(self, table: TableConfig, problems: list[Problem], at: Loc) -> str | None:
        mapped = table.field_columns
        if self.field == KEY_FIELD:
            if not self.on_keys:
                what = f"`{KEY_FIELD}` is checked by uniqueness rules only"
                problems.append(Problem((*at, "field"), what, "name a canonical field"))
            return "+".join(table.primary_key)
        if self.field not in mapped:
            if self.field in dictionary.source_fields(table.entity):  # a field it does not keep
                problems.append(
                    Problem(
                        (*at, "field"),
                        f"table {table.name} maps no column to '{self.field}': the rule is "
                        "left out",
                        f"map the column of {table.name} that holds `{self.field}`, if the "
                        "department keeps one; otherwise remove the rule",
                        skip=True,
                    )
                )
                return None
            choices = sorted(mapped) + ([KEY_FIELD] if self.on_keys else [])
            problems.append(
                Problem(
                    (*at, "field"),
                    f"table {table.name} maps no column to '{self.field}'",
                    choose(self.field, choices, f"fields of {table.name}"),
                )
            )
            return None
        return mapped[self.field]

    def place_golden(self, where: Where, problems: list[Problem], at: Loc) -> Self | None:
        """This golden rule checked and placed: its owner is the attribute's authority, or
        the department it names."""
        target = self.table
        if target is None or target not in GOLDEN_TABLES:
            what = f"'{target}' is not a golden table" if target else "a golden rule needs `table`"
            problems.append(Problem((*at, "table"), what, "use " + " or ".join(GOLDEN_TABLES)))
            return None
        columns = _GOLDEN_COLUMNS[target]
        if self.field not in columns or (self.field == "master_id" and not self.on_keys):
            problems.append(
                Problem(
                    (*at, "field"),
                    f"'{self.field}' is not a checkable column of {target}",
                    choose(self.field, columns, f"columns of {target}"),
                )
            )
            return None
        owner = self._golden_owner(where.city, GOLDEN_TABLES[target], problems, at)
        if owner is None:
            return None
        placement = Placement(
            department=owner.code,
            target=target,
            column=self.field,
            golden=True,
            table_department=None,
            threshold=self.written_threshold or 1.0,
        )
        return self.placed(placement)

    def _golden_owner(
        self, city: CityConfig, entity: str, problems: list[Problem], at: Loc
    ) -> DepartmentConfig | None:
        if self.named_department is not None:
            if self.named_department in city.broken:  # its department does not run tonight
                return None
            return find_department(city, self.named_department, (*at, "department"), problems)
        attribute = "address" if self.field == "division_code" else self.field
        owner = city.authority(entity, attribute)
        # with a department file broken tonight, its authorities are unknown: its rules wait
        if owner is None and not city.broken:
            problems.append(
                Problem(
                    (*at, "field"),
                    f"no department is the authority for {entity} `{attribute}`, so the rule "
                    "has no owner: it is left out",
                    f"write `department:` on the rule to name who answers for it, or add "
                    f"`{attribute}` to that department's `authority_for: {entity}:`",
                    skip=True,
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
        if self.reads_raw:
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

    reads_raw: ClassVar[bool] = True

    kind: Literal["completeness"]
    dimension: Dimension = Field(default="完整性", description=DIMENSION_HELP)

    def expectation(self, batch: Batch) -> tuple[pd.Series, Check]:
        value = self.values_judged(batch)
        filled = value if batch.golden else _map_distinct(value, _filled)
        return filled, self.gx_check("not_null")


class Uniqueness(_RowRule):
    """No two rows hold the same cleaned value (or primary key)."""

    on_keys: ClassVar[bool] = True

    kind: Literal["uniqueness"]
    # GB/T 36344 counts 唯一性 and 重复率 under 准确性
    dimension: Dimension = Field(default="准确性", description=DIMENSION_HELP)

    def expectation(self, batch: Batch) -> tuple[pd.Series, Check]:
        return self.values_judged(batch), self.gx_check("unique")


class Validity(_RowRule):
    """The department's raw value (or the golden value) is well formed: one of five forms."""

    reads_raw: ClassVar[bool] = True

    kind: Literal["validity"]
    dimension: Dimension = Field(default="规范性", description=DIMENSION_HELP)
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
        given = [k for k in _VALIDITY_FORMS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            yield (
                None,
                f"a validity rule needs exactly one of {', '.join(_VALIDITY_FORMS)}"
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
        self, table: TableConfig, dept: DepartmentConfig, problems: list[Problem], at: Loc
    ) -> Self:
        if not self.code_table or self.field not in table.field_columns:
            return self
        column = table.field_columns[self.field]
        mapping = table.columns[column]
        # a value from several columns: the values its own column takes in the cases
        codes = mapping.codes or {
            case.when[column]: case.value for case in mapping.cases or () if column in case.when
        }
        if not codes:
            problems.append(
                Problem(
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
    # 关联数据一致性
    dimension: Dimension = Field(default="一致性", description=DIMENSION_HELP)
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


# --- the city's rules --------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityRules:
    """Every rule of the city, in file order (department files by name, then golden.yaml)."""

    rules: tuple[Rule, ...]
    skipped: tuple[str, ...] = ()
    """Rules left out because this city cannot run them (a field no table maps, a golden
    attribute without an authority): one warning line each, with file, rule, key and fix."""

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
    A department with no rules file runs with the built-in rules only (deletions, encoding);
    unless ``every_department=False`` (linking asks which batch to hold back) that is logged as a
    warning, which ``govmdm config check`` prints (:func:`missing_rule_files`).

    >>> len(load_quality_rules(city)) > 0
    True
    """
    qdir = Path(quality_dir) if quality_dir is not None else city.config_dir / "quality"
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
    skipped: list[str] = []
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
        problems += [_format(path, spec, lines, p) for p in file_problems if not p.skip]
        skipped += [_format(path, spec, lines, p) for p in file_problems if p.skip]
        if spec.department:
            covered.add(spec.department)
    if every_department:
        for line in _uncovered(city, qdir, covered, problems):
            log.warning("%s", line)
    if problems:
        raise ConfigError(problems)
    for line in skipped:
        log.warning("%s", line)
    built_in = (*deletion_rules(city), *encoding_rules(city), *guardian_rules(city))
    return QualityRules((*rules, *built_in), tuple(skipped))


def missing_rule_files(city: CityConfig, quality_dir: str | Path | None = None) -> list[str]:
    """A warning for each department with no rules file under ``quality_dir`` (default
    ``<config>/quality``): it runs with the built-in rules only."""
    qdir = Path(quality_dir) if quality_dir is not None else city.config_dir / "quality"
    covered = set()
    for path in sorted(qdir.glob("*.yaml")) if qdir.is_dir() else []:
        try:
            spec = load_yaml_model(path, RuleFile)
        except ConfigError:
            covered.add(path.stem)  # its problems are reported by load_quality_rules
            continue
        covered.add(spec.department or path.stem)
    return _uncovered(city, qdir, covered, [])


def _uncovered(city: CityConfig, qdir: Path, covered: set[str], problems: list[str]) -> list[str]:
    """A warning for each department with no rules file (and none reported broken)."""
    return [
        f"{qdir / f'{dept.code}.yaml'}: (file): department {dept.code} ({dept.name}) has "
        "no quality rules: it runs with the built-in ones only (deletions, encoding). Fix: add "
        "the file with at least its completeness, validity, freshness and delivery rules (copy "
        "another department's file as a start)"
        for dept in city.departments
        if dept.code not in covered
        and not any(p.startswith(str(qdir / f"{dept.code}.yaml")) for p in problems)
    ]


def _read_file(
    city: CityConfig, path: Path, spec: RuleFile, first_seen: dict[str, Path]
) -> tuple[list[Rule], list[Problem]]:
    """The file's rules, checked and placed, and its problems; ``first_seen`` records each ID."""
    problems: list[Problem] = []
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
                Problem(
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
    city: CityConfig, path: Path, spec: RuleFile, problems: list[Problem]
) -> Where | None:
    """The file's department (None for golden.yaml); None when the department is wrong."""
    at: Loc = ("department",)
    if path.name == GOLDEN_FILE:
        if spec.department is not None:
            problems.append(
                Problem(
                    at,
                    f"{GOLDEN_FILE} belongs to no single department",
                    "remove `department:`; each golden rule belongs to the authority of its "
                    "attribute, or to the `department:` written on the rule",
                )
            )
        return Where(city, None, spec.table)
    if spec.department is None:
        fix = f"add `department: {path.stem}`"
        problems.append(Problem(at, "required key is missing", fix))
        return None
    if spec.department != path.stem:
        problems.append(
            Problem(
                at,
                f"department '{spec.department}' does not match the file name",
                f"name the file {spec.department}.yaml, or set `department: {path.stem}`",
            )
        )
        return None
    dept = find_department(city, spec.department, at, problems)
    return Where(city, dept, spec.table) if dept is not None else None


def _read_rule(where: Where, raw: dict[str, Any], at: Loc, problems: list[Problem]) -> Rule | None:
    """One written rule: its keys validated by its kind's class, then checked and placed."""
    try:
        rule: Rule = _SPEC.validate_python(raw)
    except ValidationError as exc:
        problems += [_pydantic_problem(err, raw, at) for err in exc.errors()]
        return None
    for key, what, fix in rule.problems(where.golden):
        problems.append(Problem((*at, key) if key else at, what, fix))
    if where.golden:
        if not isinstance(rule, _RowRule):
            golden_kinds = sorted(k for k, cls in RULE_KINDS.items() if cls.on_golden)
            what = f"a golden rule cannot be a {rule.kind} rule"
            problems.append(Problem((*at, "kind"), what, "use " + ", ".join(golden_kinds)))
            return None
        return rule.place_golden(where, problems, at)
    return rule.place(where, problems, at)


# --- problem lines -----------------------------------------------------------------------------


def _pydantic_problem(err: Mapping[str, Any], raw: Mapping[str, Any], at: Loc) -> Problem:
    """One pydantic error on a written rule as a problem at its key (the kind's tag left out)."""
    loc = tuple(err["loc"])
    kind = raw.get("kind")
    cls = RULE_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is not None and loc and loc[0] == kind:
        loc = loc[1:]
    error = err.get("ctx", {}).get("error")
    if isinstance(error, Invalid):
        return Problem((*at, *loc), error.what, error.fix)
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return _kind_problem(kind, at)
    assert cls is not None
    key = str(loc[-1]) if loc else "value"
    what, fix = _describe(err, cls, key)
    return Problem((*at, *loc), what, fix)


def _kind_problem(kind: object, at: Loc) -> Problem:
    if kind is None:
        return Problem(
            (*at, "kind"), "required key is missing", "add `kind:` — " + ", ".join(KINDS)
        )
    return Problem(
        (*at, "kind"), f"'{kind}' is not allowed here", choose(str(kind), KINDS, "kinds")
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
        return f"unknown key '{key}'", choose(key, _keys(cls), "allowed keys")
    if err["type"] == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"'{err.get('input')}' is not allowed here", f"use one of {expected}"
    message = str(err["msg"]).rstrip(".")
    return message, f"set `{key}` to {hint}" if hint else "correct the value"


def _format(path: Path, spec: RuleFile, lines: Node | None, p: Problem) -> str:
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
