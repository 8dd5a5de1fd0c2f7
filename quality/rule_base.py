"""What every quality rule is, whatever its kind: the keys all rules share, where the loader
places a rule in the city (:class:`Placement`), how a rule's problems are reported, and the
``dq_result`` row a rule's judgement becomes.

The kinds themselves are the subclasses of :class:`Rule`: the row rules in
:mod:`quality.rules`, the rules on a table as a whole in :mod:`quality.table_rules`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, ClassVar, Final, Literal, Self

import pandas as pd
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
)

from etl.config import CityConfig, DepartmentConfig, TableConfig
from fields.masking import mask_key
from quality.checks import Check
from quality.results import RuleResult
from quality.tonight import Batch, Tonight

__all__ = [
    "DIMENSION_HELP",
    "SAMPLE_KEYS",
    "Dimension",
    "Invalid",
    "Loc",
    "Placement",
    "Problem",
    "Rule",
    "Severity",
    "Stage",
    "Where",
    "choose",
    "find_department",
]

Dimension = Literal["规范性", "完整性", "准确性", "一致性", "时效性", "可访问性"]
"""GB/T 36344 dimensions, as :data:`quality.results.DIMENSIONS` lists them."""
DIMENSION_HELP: Final = "a GB/T 36344 dimension: 规范性 完整性 准确性 一致性 时效性 可访问性"
Severity = Literal["warning", "error", "blocking"]
Stage = Literal["batch", "ledger", "linked"]
SAMPLE_KEYS: Final = 20
"""Masked sample keys kept per result."""
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_HAN = re.compile(r"[\u4e00-\u9fff]")


# --- problems ----------------------------------------------------------------------------------

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    loc: Loc
    """Where, from the top of the file: ``("rules", 3, "field")``."""
    what: str
    fix: str
    skip: bool = False
    """Only this rule cannot run in this city (it checks what no table maps, or has no owner):
    it is left out with a warning instead of refusing the whole configuration."""


class Invalid(ValueError):
    """Raised by a key's validator; the loader reads ``what`` and ``fix`` from pydantic's error."""

    def __init__(self, what: str, fix: str) -> None:
        self.what, self.fix = what, fix
        super().__init__(f"{what}. Fix: {fix}")


def choose(word: str, choices: Sequence[str], what: str) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    return f"use one of the {what}: {', '.join(choices)}"


def _rule_id(text: str) -> str:
    if not _ID.match(text):
        raise Invalid(f"'{text}' is not a rule ID", "use letters, digits and - _ . such as GA-V01")
    return text


# --- what every rule is ------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a rule applies, resolved against the city's configuration by the loader."""

    department: str
    """Who answers for the rule: the file's department, the attribute's authority, or the
    department the rule names."""
    target: str
    """The department's source table, or the golden table."""
    column: str | None
    """The column as its owner knows it: the department's source column(s), the golden column."""
    golden: bool
    table_department: str | None
    """The department whose table the rule reads (None for a golden rule)."""
    threshold: float


@dataclass(frozen=True)
class Where:
    """A rules file and the city it is read against."""

    city: CityConfig
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
    dimension: Dimension = Field(description=DIMENSION_HELP)
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
            raise Invalid(
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
    def column(self) -> str | None:
        return self.placement.column

    @property
    def golden(self) -> bool:
        return self.placement.golden

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
        if self.written_threshold is not None and (
            why := self._bad_threshold(self.written_threshold)
        ):
            yield ("threshold", *why)

    def _bad_threshold(self, threshold: float) -> tuple[str, str] | None:
        """What is wrong with a written threshold, and the fix; by default it is a share."""
        if 0 < threshold <= 1:
            return None
        return (
            f"{threshold} is not a share",
            "give the least share of rows that must pass, e.g. 0.99",
        )

    def placed(self, at: Placement) -> Self:
        """This rule, applying where ``at`` says."""
        rule = self.model_copy()
        rule._at = at
        return rule

    def place(self, where: Where, problems: list[Problem], at: Loc) -> Self | None:
        """This rule checked against the city and placed; None (with ``problems``) when it cannot
        be. A department file's rule reads one of its tables."""
        assert where.department is not None
        owner = where.department
        if self.named_department is not None:
            found = find_department(
                where.city, self.named_department, (*at, "department"), problems
            )
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
            column=column,
            golden=False,
            table_department=where.department.code,
            threshold=self._threshold(where.department),
        )
        return self._fitted(table, where.department, problems, at).placed(placement)

    @staticmethod
    def _table(
        dept: DepartmentConfig, name: str | None, problems: list[Problem], at: Loc
    ) -> TableConfig | None:
        if name is None:
            if len(dept.tables) == 1:
                return dept.tables[0]
            names = ", ".join(t.name for t in dept.tables)
            what = f"{dept.code} has several tables"
            problems.append(Problem((*at, "table"), what, f"add `table:` naming one of {names}"))
            return None
        for table in dept.tables:
            if table.name == name:
                return table
        fix = choose(name, [t.name for t in dept.tables], "tables")
        problems.append(Problem((*at, "table"), f"{dept.code} has no table '{name}'", fix))
        return None

    def _column(self, table: TableConfig, problems: list[Problem], at: Loc) -> str | None:
        """The department's column the rule reads (None: it reads no single column)."""
        return None

    def _fitted(
        self, table: TableConfig, dept: DepartmentConfig, problems: list[Problem], at: Loc
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


def find_department(
    city: CityConfig, code: str, loc: Loc, problems: list[Problem]
) -> DepartmentConfig | None:
    try:
        return city.department(code)
    except KeyError:
        known = [d.code for d in city.departments]
        problems.append(Problem(loc, f"no department '{code}'", choose(code, known, "codes")))
        return None
