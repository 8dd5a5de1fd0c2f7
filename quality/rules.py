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

Rule kinds, what they read and why:

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

Rows judged by a rule: ``threshold`` is the least share of them that must pass (GX ``mostly``).
Severity ``blocking`` holds the department's batch out of the golden tables; only rules judged
before consolidation (completeness, validity, uniqueness, volume) may block.

Loading checks every file before raising one :class:`etl.config.ConfigError` that lists every
problem as ``<file>: rules[i] (<rule id>).<key> (line N): <what is wrong>. Fix: <how>``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field
from yaml.nodes import Node

from etl.config import (
    FIELDS,
    CityConfig,
    ConfigError,
    DepartmentConfig,
    load_yaml_model,
    yaml_line_of,
)
from etl.standardize import ROW_REASONS
from fields import dictionary, normalize
from quality.checks import VALIDATORS

__all__ = [
    "BLOCKABLE",
    "DEFAULT_DIMENSION",
    "FRESHNESS_DAYS",
    "GOLDEN_FILE",
    "GOLDEN_TABLES",
    "KEY_FIELD",
    "KINDS",
    "QualityRules",
    "Rule",
    "load_quality_rules",
]

Kind = Literal[
    "completeness",
    "validity",
    "uniqueness",
    "referential",
    "freshness",
    "volume",
    "consistency",
    "delivery",
]
Dimension = Literal["规范性", "完整性", "准确性", "一致性", "时效性", "可访问性"]
"""GB/T 36344 dimensions, as :data:`quality.results.DIMENSIONS` lists them."""
Severity = Literal["warning", "error", "blocking"]
KINDS: Final[tuple[str, ...]] = get_args(Kind)
DEFAULT_DIMENSION: Final[Mapping[str, str]] = {
    "completeness": "完整性",
    "validity": "规范性",
    "uniqueness": "准确性",  # GB/T 36344 counts 唯一性 and 重复率 under 准确性
    "referential": "一致性",  # 关联数据一致性
    "freshness": "时效性",
    "volume": "完整性",  # 记录完整性: rows gone missing from a delivery
    "consistency": "一致性",  # 相同数据一致性
    "delivery": "可访问性",
}
# When a rule is judged: on the standardized batch; from the ledger; after the night is linked.
STAGE: Final[Mapping[str, str]] = {
    "completeness": "batch",
    "validity": "batch",
    "uniqueness": "batch",
    "referential": "linked",
    "freshness": "ledger",
    "volume": "ledger",
    "consistency": "linked",
    "delivery": "ledger",
}
BLOCKABLE: Final = frozenset({"completeness", "validity", "uniqueness", "volume"})
TABLE_LEVEL: Final = frozenset({"freshness", "volume", "delivery"})
"""Kinds judged once per table (pass or fail), not row by row."""
GOLDEN_KINDS: Final = frozenset({"completeness", "validity", "uniqueness", "referential"})
GOLDEN_TABLES: Final[Mapping[str, str]] = {"mdm_person": "person", "mdm_enterprise": "enterprise"}
GOLDEN_FILE: Final = "golden.yaml"
FRESHNESS_DAYS: Final[Mapping[str, int]] = {"daily": 1, "weekly": 7, "monthly": 31}
KEY_FIELD: Final = "source_key"
"""``field: source_key`` names a department table's primary key."""

_GOLDEN_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {
    table: ("master_id", *dictionary.checkable(entity)) for table, entity in GOLDEN_TABLES.items()
}
_VALIDITY_FORMS: Final = ("validator", "values", "code_table", "pattern", "reasons")
_KIND_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "completeness": frozenset({"field"}),
    "validity": frozenset({"field", "chars", *_VALIDITY_FORMS}),
    "uniqueness": frozenset({"field"}),
    "referential": frozenset({"field", "references"}),
    "freshness": frozenset(),
    "volume": frozenset({"window"}),
    "consistency": frozenset({"attributes"}),
    "delivery": frozenset({"check"}),
}
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_HAN = re.compile(r"[\u4e00-\u9fff]")
_REASON_CODES: Final = frozenset(normalize.REASONS) | frozenset(ROW_REASONS)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleSpec(_Strict):
    """One rule as written in YAML (its meaning is checked against the city afterwards)."""

    id: str = Field(description="a stable rule ID such as `GA-V01`; never reuse one")
    kind: Kind = Field(description="completeness, validity, uniqueness, referential, ...")
    description: str = Field(description="what the rule checks, in Chinese")
    fix: str = Field(description="how the department fixes a failure, in Chinese")
    department: str | None = Field(None, description="the owning department's code")
    dimension: Dimension | None = Field(
        None, description="a GB/T 36344 dimension: 规范性 完整性 准确性 一致性 时效性 可访问性"
    )
    severity: Severity = Field("error", description="`warning`, `error` or `blocking`")
    threshold: float | None = Field(
        None, description="least share of rows passing (volume: largest change; freshness: days)"
    )
    table: str | None = Field(None, description="the department's table, or a golden table")
    field: str | None = Field(None, description="a canonical field, or `source_key`")
    validator: str | None = Field(None, description="one of " + ", ".join(VALIDATORS))
    values: list[str] | None = Field(None, description="the allowed values, quoted")
    code_table: bool = Field(False, description="`true`: the config's code table is the set")
    pattern: str | None = Field(None, description="a regular expression for the whole value")
    reasons: list[str] | None = Field(None, description="standardizer reason codes")
    chars: tuple[int, int] | None = Field(None, description="a part of the value: [start, end]")
    references: str | None = Field(None, description="a golden column: mdm_enterprise.uscc")
    attributes: list[str] | None = Field(None, description="the attributes compared")
    check: Literal["extraction", "schema"] | None = Field(
        None, description="`extraction` or `schema`"
    )
    window: int | None = Field(None, ge=1, description="earlier nights compared, e.g. 7")


class RuleFile(_Strict):
    """What one ``config/quality/*.yaml`` file holds."""

    department: str | None = Field(
        None, description="the department these rules belong to (its code, as the file name)"
    )
    table: str | None = Field(None, description="the default table of every rule")
    rules: list[RuleSpec] = Field(min_length=1, description="the rules, one mapping each")


@dataclass(frozen=True)
class Rule:
    """One validated rule, resolved against the city's configuration."""

    id: str
    department: str
    kind: str
    dimension: str
    severity: str
    threshold: float
    description: str
    fix: str
    target: str
    """The department's source table, or the golden table."""
    entity: str
    field: str | None
    """The canonical field (``source_key`` for the primary key), or the golden column."""
    column: str | None
    """The column as its owner knows it: the department's source column(s), the golden column."""
    golden: bool
    source_file: Path
    table_department: str | None = None
    """The department whose table the rule reads (None for a golden rule)."""
    validator: str | None = None
    values: tuple[str, ...] | None = None
    pattern: str | None = None
    reasons: tuple[str, ...] | None = None
    chars: tuple[int, int] | None = None
    references: tuple[str, str] | None = None
    attributes: tuple[str, ...] | None = None
    check: str | None = None
    window: int = 7

    @property
    def stage(self) -> str:
        """``batch``, ``ledger``, ``linked`` (after consolidation) or ``golden``."""
        return "golden" if self.golden else STAGE[self.kind]

    @property
    def table_level(self) -> bool:
        """Judged once per table (freshness, volume, delivery) rather than row by row."""
        return self.kind in TABLE_LEVEL

    @property
    def blocking(self) -> bool:
        """A failure holds the department's batch out of the golden tables."""
        return self.severity == "blocking"


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


@dataclass(frozen=True)
class _Problem:
    loc: tuple[str | int, ...]
    what: str
    fix: str


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
    files = sorted(qdir.glob("*.yaml"))
    problems = [
        f"{p}: (file): ignored: only *.yaml is read. Fix: rename it to {p.stem}.yaml"
        for p in sorted(qdir.glob("*.yml"))
    ]
    rules: list[Rule] = []
    first_seen: dict[str, Path] = {}
    covered: set[str] = set()
    for path in files:
        if path.stem in city.broken:  # its department file is broken: it does not run tonight
            continue
        try:
            spec = load_yaml_model(path, RuleFile)
        except ConfigError as exc:
            problems += _with_rule_ids(path, exc.problems)
            continue
        file_rules, file_problems = _resolve_file(city, path, spec)
        lines = _yaml_lines(path)
        for p in file_problems:
            problems.append(_format(path, spec, lines, p))
        for i, rule in enumerate(file_rules):
            if rule is None:
                continue
            if rule.id in first_seen:
                problems.append(
                    _format(
                        path,
                        spec,
                        lines,
                        _Problem(
                            ("rules", i, "id"),
                            f"rule ID {rule.id} is also used in {first_seen[rule.id]}",
                            "give every rule its own ID; results are kept by ID night after night",
                        ),
                    )
                )
                continue
            first_seen[rule.id] = path
            rules.append(rule)
        if spec.department:
            covered.add(spec.department)
    for dept in city.departments if every_department else ():
        if dept.code not in covered and not any(
            p.startswith(str(qdir / f"{dept.code}.yaml")) for p in problems
        ):
            problems.append(
                f"{qdir / f'{dept.code}.yaml'}: (file): department {dept.code} ({dept.name}) has "
                "no quality rules. Fix: add the file with at least its completeness, validity, "
                "freshness and delivery rules (copy another department's file as a start)"
            )
    if problems:
        raise ConfigError(problems)
    return QualityRules((*rules, *deletion_rules(city), *encoding_rules(city)))


ENCODING_RULE: Final = "{code}-ENC{index:02d}"
"""The ID of the built-in rule on values that are not valid UTF-8."""


def encoding_rules(city: CityConfig) -> list[Rule]:
    """The built-in rule on every department table: no value may hold bytes that are not
    UTF-8 (乱码). Such rows are rejected (``<column>:invalid_encoding``) and the rest of the
    table goes on; the report names the columns."""
    return [
        Rule(
            id=ENCODING_RULE.format(code=dept.code, index=i + 1),
            department=dept.code,
            kind="delivery",
            dimension="规范性",
            severity="error",
            threshold=1.0,
            description="数据中不得含有无法识别的字符编码（乱码，不是有效的UTF-8）；含乱码的行已拒收",
            fix="按报告所列的列和主键，在本部门系统中以UTF-8重新录入或转换这些值后重新推送",
            target=table.name,
            entity=table.entity,
            field=None,
            column=None,
            golden=False,
            source_file=dept.source_file or city.root / "config",
            table_department=dept.code,
            check="encoding",
        )
        for dept in city.departments
        for i, table in enumerate(dept.tables)
    ]


DELETION_RULE: Final = "{code}-DEL{index:02d}"
"""The ID of the built-in mass-deletion rule of each department table."""


def deletion_rules(city: CityConfig) -> list[Rule]:
    """The built-in rule on every department table: a night may not delete more than the
    table's ``max_deleted_share`` of its keys (nor empty it) unless data engineering accepted
    it (``govmdm accept-deletions``). Blocking: the batch is held back and the base libraries
    keep the department's rows; its report says why."""
    out = []
    for dept in city.departments:
        for i, table in enumerate(dept.tables):
            out.append(
                Rule(
                    id=DELETION_RULE.format(code=dept.code, index=i + 1),
                    department=dept.code,
                    kind="delivery",
                    dimension="完整性",
                    severity="blocking",
                    threshold=table.max_deleted_share,
                    description=(
                        f"一晚之内删除的记录不应超过全表的 {table.max_deleted_share:.0%}，"
                        "也不应整表清空；超过时本批数据暂扣，基础库保留上一晚的数据，待核实"
                    ),
                    fix=(
                        "如系误删或导出程序故障（例如前置表被清空后重新导入了一部分），请恢复"
                        "数据后重新推送；如确为真实的批量删除，请书面告知数据工程团队，由其执行"
                        "确认命令后放行"
                    ),
                    target=table.name,
                    entity=table.entity,
                    field=None,
                    column=None,
                    golden=False,
                    source_file=dept.source_file or city.root / "config",
                    table_department=dept.code,
                    check="deletions",
                )
            )
    return out


def _resolve_file(
    city: CityConfig, path: Path, spec: RuleFile
) -> tuple[list[Rule | None], list[_Problem]]:
    """Check ``spec`` against the city; one resolved rule (or None) per written rule."""
    golden = path.name == GOLDEN_FILE
    problems: list[_Problem] = []
    dept: DepartmentConfig | None = None
    if golden:
        if spec.department is not None:
            problems.append(
                _Problem(
                    ("department",),
                    f"{GOLDEN_FILE} belongs to no single department",
                    "remove `department:`; each golden rule belongs to the authority of its "
                    "attribute, or to the `department:` written on the rule",
                )
            )
    elif spec.department is None:
        problems.append(
            _Problem(("department",), "required key is missing", f"add `department: {path.stem}`")
        )
    elif spec.department != path.stem:
        problems.append(
            _Problem(
                ("department",),
                f"department '{spec.department}' does not match the file name",
                f"name the file {spec.department}.yaml, or set `department: {path.stem}`",
            )
        )
    else:
        dept = _department(city, spec.department, ("department",), problems)
    if not golden and dept is None:
        return [None] * len(spec.rules), problems
    out: list[Rule | None] = []
    for i, rs in enumerate(spec.rules):
        before = len(problems)
        rule = _resolve_rule(city, path, spec, dept, i, rs, problems)
        out.append(rule if len(problems) == before else None)
    return out, problems


def _department(
    city: CityConfig, code: str, loc: tuple[str | int, ...], problems: list[_Problem]
) -> DepartmentConfig | None:
    try:
        return city.department(code)
    except KeyError:
        known = [d.code for d in city.departments]
        problems.append(_Problem(loc, f"no department '{code}'", _choose(code, known, "codes")))
        return None


def _resolve_rule(
    city: CityConfig,
    path: Path,
    spec: RuleFile,
    file_dept: DepartmentConfig | None,
    i: int,
    rs: RuleSpec,
    problems: list[_Problem],
) -> Rule | None:
    at: tuple[str | int, ...] = ("rules", i)

    def bad(key: str | None, what: str, fix: str) -> None:
        problems.append(_Problem((*at, key) if key else at, what, fix))

    golden = file_dept is None
    if not _ID.match(rs.id):
        bad("id", f"'{rs.id}' is not a rule ID", "use letters, digits and - _ . such as GA-V01")
    for key, text in (("description", rs.description), ("fix", rs.fix)):
        if not _HAN.search(text):
            bad(key, f"`{key}` is not in Chinese", "department contacts read it: write it in 中文")
    # keys that do not apply to the kind
    allowed = _KIND_KEYS[rs.kind]
    for key in ("field", "chars", "references", "attributes", "check", "window", *_VALIDITY_FORMS):
        value = getattr(rs, key)
        if key not in allowed and value not in (None, False):
            uses = ", ".join(sorted(allowed)) or "none of the kind keys"
            bad(
                key,
                f"`{key}` does not apply to a {rs.kind} rule",
                f"remove it ({rs.kind} uses {uses})",
            )
    if "field" in allowed and rs.field is None:
        bad(None, f"a {rs.kind} rule needs `field`", "add `field:` with the checked field")
    if rs.kind == "validity":
        given = [k for k in _VALIDITY_FORMS if getattr(rs, k) not in (None, False)]
        if len(given) != 1:
            bad(
                None,
                f"a validity rule needs exactly one of {', '.join(_VALIDITY_FORMS)}"
                + (f", got {', '.join(given)}" if given else ""),
                "e.g. `validator: id_number`, `values: [男, 女]`, `code_table: true`, "
                r"`pattern: '\d{8}'` or `reasons: [traditional_converted]`",
            )
    if rs.validator is not None and rs.validator not in VALIDATORS:
        bad(
            "validator",
            f"no validator '{rs.validator}'",
            _choose(rs.validator, list(VALIDATORS), "validators"),
        )
    if rs.pattern is not None:
        try:
            re.compile(rs.pattern)
        except re.error as exc:
            bad(
                "pattern",
                f"not a regular expression ({exc})",
                "quote it in single quotes and escape as Python's re does",
            )
    for j, code in enumerate(rs.reasons or ()):
        if code not in _REASON_CODES:
            problems.append(
                _Problem(
                    (*at, "reasons", j),
                    f"no reason code '{code}'",
                    _choose(code, sorted(_REASON_CODES), "codes of fields.normalize.REASONS"),
                )
            )
    if rs.chars is not None and not 0 <= rs.chars[0] < rs.chars[1]:
        bad(
            "chars",
            f"{list(rs.chars)} is not a part of a value",
            "write [start, end] with 0 ≤ start < end, e.g. [0, 6]",
        )
    if rs.values is not None and not rs.values:
        bad("values", "the list is empty", "list the allowed values")
    # severity and threshold by kind
    if rs.severity == "blocking" and (golden or rs.kind not in BLOCKABLE):
        bad(
            "severity",
            f"a {'golden ' if golden else ''}{rs.kind} rule cannot block",
            "blocking holds a department's batch out of the golden tables before they are "
            "built, so only completeness, validity, uniqueness and volume rules on a "
            "department's batch may block; use `error`",
        )
    if golden and rs.kind not in GOLDEN_KINDS:
        bad(
            "kind",
            f"a golden rule cannot be a {rs.kind} rule",
            "use " + ", ".join(sorted(GOLDEN_KINDS)),
        )
    if rs.kind == "delivery" and rs.threshold is not None:
        bad("threshold", "a delivery rule passes or fails", "remove `threshold`")
    if rs.threshold is not None:
        if rs.kind in ("volume", "freshness"):
            if rs.threshold <= 0:
                unit = "largest relative change, e.g. 0.3" if rs.kind == "volume" else "days"
                bad("threshold", f"{rs.threshold} is not positive", f"give the {unit}")
        elif not 0 < rs.threshold <= 1:
            bad(
                "threshold",
                f"{rs.threshold} is not a share",
                "give the least share of rows that must pass, e.g. 0.99",
            )

    # owner and target
    if golden:
        return _resolve_golden(city, path, i, rs, problems)
    assert file_dept is not None
    owner = file_dept
    if rs.department is not None:
        found = _department(city, rs.department, (*at, "department"), problems)
        if found is None:
            return None
        owner = found
    table_name = rs.table or spec.table
    if table_name is None:
        if len(file_dept.tables) > 1:
            names = ", ".join(t.name for t in file_dept.tables)
            bad(
                "table",
                f"{file_dept.code} has several tables",
                f"add `table:` naming one of {names}",
            )
            return None
        table = file_dept.tables[0]
    else:
        match = [t for t in file_dept.tables if t.name == table_name]
        if not match:
            bad(
                "table",
                f"{file_dept.code} has no table '{table_name}'",
                _choose(table_name, [t.name for t in file_dept.tables], "tables"),
            )
            return None
        table = match[0]
    column: str | None = None
    if rs.field is not None:
        mapped = table.field_columns
        if rs.field == KEY_FIELD:
            if rs.kind != "uniqueness":
                bad(
                    "field",
                    f"`{KEY_FIELD}` is checked by uniqueness rules only",
                    "name a canonical field",
                )
            column = "+".join(table.primary_key)
        elif rs.field not in mapped:
            choices = sorted(mapped) + ([KEY_FIELD] if rs.kind == "uniqueness" else [])
            bad(
                "field",
                f"table {table.name} maps no column to '{rs.field}'",
                _choose(rs.field, choices, f"fields of {table.name}"),
            )
        else:
            column = mapped[rs.field]
    values = tuple(rs.values) if rs.values is not None else None
    if rs.code_table and rs.field in table.field_columns:
        codes = table.columns[table.field_columns[rs.field]].codes
        if not codes:
            bad(
                "code_table",
                f"column {table.field_columns[rs.field]} has no code table in "
                f"{file_dept.source_file or file_dept.code}",
                "list the allowed raw values with `values: [...]` instead",
            )
        else:
            values = tuple(codes)
    if rs.kind == "referential":
        refs = _reference(rs.references, (*at, "references"), problems)
    else:
        refs = None
    for j, attribute in enumerate(rs.attributes or ()):
        if attribute not in FIELDS[table.entity]:
            problems.append(
                _Problem(
                    (*at, "attributes", j),
                    f"'{attribute}' is not a {table.entity} attribute",
                    _choose(attribute, FIELDS[table.entity], f"{table.entity} fields"),
                )
            )
    if rs.kind == "freshness":
        threshold = rs.threshold or float(FRESHNESS_DAYS[file_dept.update_frequency])
    elif rs.kind == "volume":
        threshold = rs.threshold or 0.5
    else:
        threshold = rs.threshold or 1.0
    return Rule(
        id=rs.id,
        department=owner.code,
        kind=rs.kind,
        dimension=rs.dimension or DEFAULT_DIMENSION[rs.kind],
        severity=rs.severity,
        threshold=threshold,
        description=rs.description,
        fix=rs.fix,
        target=table.name,
        entity=table.entity,
        field=rs.field,
        column=column,
        golden=False,
        source_file=path,
        table_department=file_dept.code,
        validator=rs.validator,
        values=values,
        pattern=rs.pattern,
        reasons=tuple(rs.reasons) if rs.reasons is not None else None,
        chars=rs.chars,
        references=refs,
        attributes=tuple(rs.attributes) if rs.attributes else None,
        check=rs.check or ("extraction" if rs.kind == "delivery" else None),
        window=rs.window or 7,
    )


def _resolve_golden(
    city: CityConfig, path: Path, i: int, rs: RuleSpec, problems: list[_Problem]
) -> Rule | None:
    at: tuple[str | int, ...] = ("rules", i)
    target = rs.table
    if target is None or target not in GOLDEN_TABLES:
        problems.append(
            _Problem(
                (*at, "table"),
                f"'{target}' is not a golden table" if target else "a golden rule needs `table`",
                "use " + " or ".join(GOLDEN_TABLES),
            )
        )
        return None
    entity = GOLDEN_TABLES[target]
    if rs.field is None:
        return None  # reported above
    columns = _GOLDEN_COLUMNS[target]
    if rs.field not in columns or (rs.field == "master_id" and rs.kind != "uniqueness"):
        problems.append(
            _Problem(
                (*at, "field"),
                f"'{rs.field}' is not a checkable column of {target}",
                _choose(rs.field, columns, f"columns of {target}"),
            )
        )
        return None
    if rs.code_table or rs.reasons is not None:
        key = "code_table" if rs.code_table else "reasons"
        problems.append(
            _Problem(
                (*at, key),
                f"`{key}` applies to a department's raw values, not to a golden table",
                "use `values: [...]`, `validator:` or `pattern:`",
            )
        )
    owner: DepartmentConfig | None
    if rs.department is not None:
        if rs.department in city.broken:  # its department does not run tonight
            return None
        owner = _department(city, rs.department, (*at, "department"), problems)
    else:
        attribute = "address" if rs.field == "division_code" else rs.field
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
    if owner is None:
        return None
    refs = (
        _reference(rs.references, (*at, "references"), problems)
        if rs.kind == "referential"
        else None
    )
    return Rule(
        id=rs.id,
        department=owner.code,
        kind=rs.kind,
        dimension=rs.dimension or DEFAULT_DIMENSION[rs.kind],
        severity=rs.severity,
        threshold=rs.threshold or 1.0,
        description=rs.description,
        fix=rs.fix,
        target=target,
        entity=entity,
        field=rs.field,
        column=rs.field,
        golden=True,
        source_file=path,
        validator=rs.validator,
        values=tuple(rs.values) if rs.values is not None else None,
        pattern=rs.pattern,
        chars=rs.chars,
        references=refs,
    )


def _reference(
    text: str | None, loc: tuple[str | int, ...], problems: list[_Problem]
) -> tuple[str, str] | None:
    choices = [f"{t}.{c}" for t, cols in _GOLDEN_COLUMNS.items() for c in cols]
    if text is None:
        problems.append(
            _Problem(
                loc[:-1],
                "a referential rule needs `references`",
                "add e.g. `references: mdm_enterprise.uscc`",
            )
        )
        return None
    table, _, column = text.partition(".")
    if table not in _GOLDEN_COLUMNS or column not in _GOLDEN_COLUMNS[table]:
        problems.append(
            _Problem(
                loc, f"'{text}' is not a golden column", _choose(text, choices, "golden columns")
            )
        )
        return None
    return table, column


def _choose(word: str, choices: Sequence[str], what: str) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    return f"use one of the {what}: {', '.join(choices)}"


# --- problem lines -----------------------------------------------------------------------------


def _format(path: Path, spec: RuleFile, lines: Node | None, p: _Problem) -> str:
    """``<file>: rules[i] (<id>).<key> (line N): <what>. Fix: <fix>``."""
    parts: list[str] = []
    for k, item in enumerate(p.loc):
        if isinstance(item, int):
            parts[-1] += f"[{item}]"
            if k == 1 and p.loc[0] == "rules" and item < len(spec.rules):
                parts[-1] += f" ({spec.rules[item].id})"
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
