"""Run data-quality checks through Great Expectations 1.x and return plain results.

A :class:`Check` is one quality rule as data (rule ID, kind — ``not_null``, ``unique``,
``in_set``, ``regex`` or ``valid`` —, column, parameters, pass threshold, and ``meta``: owning
department, GB/T 36344 dimension, severity, Chinese description).
:func:`run_checks` turns a list of them into a GX ``ExpectationSuite``, validates a pandas
DataFrame with it and returns one :class:`CheckResult` per check, in the order given.

>>> frame = pd.DataFrame({"rkbh": ["P1", "P2", "P3"], "xb": ["男", "女", "未知"]})
>>> check = Check("GA-PER-003", "in_set", "xb", {"value_set": ["男", "女"]},
...               meta={"department": "gongan", "dimension": "规范性", "severity": "error"})
>>> [r] = run_checks(frame, [check], key_column="rkbh", suite_name="gongan.t_rk_jbxx")
>>> r.success, r.rows_checked, r.rows_failed, r.failed_keys
(False, 3, 1, ('P3',))

How the results are counted, and why:

- **Nulls.** ``not_null`` counts every row. Every other column check ignores nulls: GX drops
  them before evaluating (``filter_column_isnull``), so ``rows_checked`` is the non-null count
  and ``threshold`` is a fraction of the non-null rows (GX ``mostly``). Completeness is the
  ``not_null`` check's job. A check with no non-null rows passes, as GX decides.
- **unique** fails every row of a duplicated value (both rows of a doubled key), not just the
  second one (GX uses ``duplicated(keep=False)``).
- **regex** must match the whole value: GX's pandas engine *searches* (``str.contains``), so the
  pattern is wrapped in ``\\A(?:…)\\Z`` before it goes into the suite.
- **Failing keys** are exact and complete: GX's ``COMPLETE`` result lists the frame-index label of
  every failing row, and the frame is validated with a 0..n-1 index, so the labels are row
  positions mapped onto ``key_column`` here. (``unexpected_index_column_names`` gives the same
  keys, but GX builds them one row at a time: about 4 s more for 75,000 failing rows.) A null
  key is reported as ``""``.
- **Validity** (``valid``) checks are a custom GX ``ColumnMapExpectation`` whose condition calls
  the :data:`VALIDATORS` (on :mod:`fields.identifiers`, :mod:`fields.divisions`, phonenumbers) once
  per distinct value: GX itself drops the nulls, counts and lists the failures exactly like its
  built-in checks, and the suite JSON names the validator; a precomputed boolean column would
  cost the same validator calls plus a copy of the frame, and hide the failing values from GX.
- **Severity**: our three levels go onto GX's own ``severity`` in order (warning → info, error →
  warning, blocking → critical), so GX's ``get_max_severity_failure`` ranks them as we do; our
  word stays in ``meta["severity"]``.
- **Errors**: an expectation GX cannot evaluate (missing column, a parameter of the wrong type)
  gives a result with ``error`` set, naming the rule, the column and the fix; the others still
  run.
- **Flags counted directly**: a rule whose verdict on each row is already computed (a
  standardizer flag, a lookup in a golden table) needs no expectation; :func:`tally` counts its
  verdicts the way GX counts a check.

GX is slow to import (about 5 s), so it is imported on first use; one ephemeral context, with
progress bars off and GX's INFO logging quieted, serves the whole process. Validation goes
through ``Batch.validate`` rather than ``ValidationDefinition.run``: the latter also serializes
every ``COMPLETE`` result into the context's in-memory results store, which costs more than the
validation itself when many rows fail and keeps every result alive for the life of the process.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd
import phonenumbers

from fields import divisions, identifiers
from quality.results import DIMENSIONS, SEVERITIES

if TYPE_CHECKING:
    from great_expectations.core import (
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.expectations import Expectation

__all__ = [
    "GX_SEVERITY",
    "KINDS",
    "VALIDATORS",
    "Check",
    "CheckResult",
    "SuiteRun",
    "run_checks",
    "tally",
    "validate",
]

log = logging.getLogger(__name__)

GX_SEVERITY: Final[Mapping[str, str]] = {
    "warning": "info",
    "error": "warning",
    "blocking": "critical",
}


# ------------------------------------------------------------------------------ validators


def _code_text(value: object) -> str | None:
    """A code as text: strings as they are, integers in decimal; anything else is no code."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return str(value)
    return None


def id_number_valid(value: object) -> bool:
    """A GB 11643 ID number as stored: 18 characters, check character, real birth date.

    A 15-digit number fails (standardization upgrades it, but the source is not to standard),
    and so does a lower-case ``x``.

    >>> id_number_valid("11010519491231002X"), id_number_valid("110105491231002")
    (True, False)
    """
    text = _code_text(value)
    return text is not None and identifiers.id_is_valid(text)


def uscc_valid(value: object) -> bool:
    """A GB 32100 credit code: alphabet, check character and the embedded organization code.

    >>> uscc_valid("91350100M000100Y43"), uscc_valid("91350100M000100Y44")
    (True, False)
    """
    text = _code_text(value)
    return text is not None and identifiers.uscc_is_valid(text)


def org_code_valid(value: object) -> bool:
    """A 9-character GB 11714 organization code (no hyphen) with its check character."""
    text = _code_text(value)
    return text is not None and identifiers.org_code_is_valid(text)


def reg_no_valid(value: object) -> bool:
    """A 15-digit business registration number (注册号) with its check digit."""
    text = _code_text(value)
    return text is not None and identifiers.reg_no_is_valid(text)


def division_code_valid(value: object) -> bool:
    """A 6-digit GB/T 2260 code that exists or once existed (ID numbers keep old codes).

    >>> division_code_valid("350111"), division_code_valid("359999")
    (True, False)
    """
    text = _code_text(value)
    return text is not None and len(text) == 6 and text in divisions.by_code()


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def iso_date_valid(value: object) -> bool:
    """A date object, or text ``YYYY-MM-DD`` naming a real day.

    >>> iso_date_valid("2024-02-29"), iso_date_valid("2023-02-29"), iso_date_valid("2024/6/27")
    (True, False, False)
    """
    if isinstance(value, dt.date | np.datetime64):
        return True
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


# The forms fields.normalize.phones writes: mobile 13812345678, landline 0591-87654321, service
# 4008001234, each optionally with -extension; numbers abroad in E.164.
_MOBILE = re.compile(r"(1\d{10})(?:-\d{1,6})?")
_LANDLINE = re.compile(r"0(\d{2,3})-(\d{7,8})(?:-\d{1,6})?")
_SERVICE = re.compile(r"([48]00\d{7})(?:-\d{1,6})?")
_E164 = re.compile(r"\+[1-9]\d{6,14}")


@functools.lru_cache(maxsize=1 << 16)
def _cn_number_valid(national: str, area_digits: int) -> bool:
    # Built directly instead of phonenumbers.parse: a third of the cost, same verdict
    number = phonenumbers.PhoneNumber(country_code=86, national_number=int(national))
    if not phonenumbers.is_valid_number(number):
        return False
    return area_digits == 0 or phonenumbers.length_of_geographical_area_code(number) == area_digits


def phone_valid(value: object) -> bool:
    """One telephone number in the canonical form of :func:`fields.normalize.phones`.

    The number must be in a range phonenumbers knows, and a landline's area code must be the
    real one (``0591-87654321``, not ``05918-7654321``).

    >>> phone_valid("13812345678"), phone_valid("0591-87654321-123"), phone_valid("138 1234 5678")
    (True, True, False)
    """
    if not isinstance(value, str):
        return False
    if m := _MOBILE.fullmatch(value) or _SERVICE.fullmatch(value):
        return _cn_number_valid(m[1], 0)
    if m := _LANDLINE.fullmatch(value):
        return _cn_number_valid(m[1] + m[2], len(m[1]))
    if _E164.fullmatch(value):
        try:
            number = phonenumbers.parse(value)
        except phonenumbers.NumberParseException:
            return False
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        # a Chinese number is written nationally, not +86…
        return number.country_code != 86 and phonenumbers.is_valid_number(number) and e164 == value
    return False


VALIDATORS: Final[Mapping[str, Callable[[object], bool]]] = {
    "id_number": id_number_valid,
    "uscc": uscc_valid,
    "org_code": org_code_valid,
    "reg_no": reg_no_valid,
    "division_code": division_code_valid,
    "phone": phone_valid,
    "date": iso_date_valid,
}


# ---------------------------------------------------------------------------------- checks


KINDS: Final[Mapping[str, str]] = {
    "not_null": "ExpectColumnValuesToNotBeNull",
    "unique": "ExpectColumnValuesToBeUnique",
    "in_set": "ExpectColumnValuesToBeInSet",
    "regex": "ExpectColumnValuesToMatchRegex",
    "valid": "",  # our validity expectation, defined on first use
}
"""Each kind of check and its class in ``great_expectations.expectations``."""
_PARAMS: Final[Mapping[str, tuple[str, ...]]] = {
    "in_set": ("value_set",),
    "regex": ("regex",),
    "valid": ("validator",),
}


@dataclass(frozen=True)
class Check:
    """One quality rule, as configured.

    ``params`` by kind: ``in_set`` ``value_set``; ``regex`` ``regex`` (matched against the whole
    value); ``valid`` ``validator`` (a key of :data:`VALIDATORS`). ``threshold`` is the fraction
    of rows that must pass (GX ``mostly``; 1.0 = every row). ``meta`` travels in the
    expectation's GX ``meta``: ``department``, ``dimension`` (one of :data:`DIMENSIONS`),
    ``severity`` (one of :data:`SEVERITIES`, default ``error``) and ``description_zh``.

    A malformed check raises ``ValueError`` naming the rule and the fix, so a config loader can
    report it with its file and key.
    """

    rule_id: str
    kind: str
    column: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    threshold: float = 1.0
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rule_id:
            raise ValueError("quality rule without a rule_id: give every rule a stable ID")
        if problem := self._problem():
            raise ValueError(f"quality rule {self.rule_id!r}: {problem}")

    def _problem(self) -> str | None:
        """What is wrong with the check, or None."""
        if self.kind not in KINDS:
            return f"unknown kind {self.kind!r}; use one of {', '.join(KINDS)}"
        if not self.column:
            return f"a {self.kind} check needs `column`"
        required = _PARAMS.get(self.kind, ())
        missing = [k for k in required if k not in self.params]
        unknown = sorted(set(self.params) - set(required))
        if missing:
            return f"{self.kind} needs params {missing}"
        if unknown:
            return f"unknown params {unknown} for {self.kind}; allowed: {[*required] or ['none']}"
        if not 0.0 < self.threshold <= 1.0:
            return f"threshold {self.threshold} must be in (0, 1]; 1.0 means every row"
        return self._param_problem() or self._meta_problem()

    def _param_problem(self) -> str | None:
        if self.kind == "regex":
            try:
                re.compile(self.params["regex"])
            except (re.error, TypeError) as e:
                return f"regex {self.params['regex']!r} does not compile: {e}"
        if self.kind == "valid" and self.params["validator"] not in VALIDATORS:
            known = ", ".join(VALIDATORS)
            return f"unknown validator {self.params['validator']!r}; use one of {known}"
        return None

    def _meta_problem(self) -> str | None:
        if self.meta.get("severity", "error") not in SEVERITIES:
            return f"severity {self.meta['severity']!r}; use one of {', '.join(SEVERITIES)}"
        if "dimension" in self.meta and self.meta["dimension"] not in DIMENSIONS:
            return (
                f"dimension {self.meta['dimension']!r} is not a GB/T 36344 dimension; use one of "
                + "、".join(DIMENSIONS)
            )
        return None

    @property
    def severity(self) -> str:
        """Our severity: warning, error (the default) or blocking."""
        return str(self.meta.get("severity", "error"))


@dataclass(frozen=True)
class CheckResult:
    """What one check found; plain values only, safe to log (no row values).

    ``rows_checked`` is the number of rows the check judged (non-null rows, except for
    ``not_null`` and table checks, which count every row); ``failed_keys`` holds the
    ``key_column`` value of every failing row, in frame order. ``observed`` has GX's summary
    numbers (``element_count``, ``missing_count``, ``unexpected_percent``…, or
    ``observed_value`` for a table check). ``error`` is set when GX could not run the check;
    then ``success`` is False and the counts are 0.
    """

    rule_id: str
    success: bool
    rows_checked: int
    rows_failed: int
    failed_keys: tuple[str, ...] = ()
    observed: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class SuiteRun:
    """One suite's results, and GX's own result for archiving (``gx_result.to_json_dict()``)."""

    suite_name: str
    results: tuple[CheckResult, ...]
    gx_result: ExpectationSuiteValidationResult


# --------------------------------------------------------------------------------- GX side


@dataclass(frozen=True)
class _Engine:
    batch_definition: BatchDefinition
    validity_expectation: type[Expectation]


_LOCK = threading.Lock()  # one shared context and batch definition per process


@functools.cache
def _engine() -> _Engine:
    """The process's GX context, data source, asset and batch definition; imports GX."""
    gx_log = logging.getLogger("great_expectations")
    if gx_log.level == logging.NOTSET:  # its INFO chatter, unless someone asked for it
        gx_log.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # sre_constants, from GX's imports
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = context.data_sources.add_pandas("govmdm").add_dataframe_asset("frame")
    batch_definition = asset.add_batch_definition_whole_dataframe("whole frame")
    return _Engine(batch_definition, _validity_expectation())


def _validity_expectation() -> type[Expectation]:
    """Define (and so register with GX) the metric and expectation behind ``valid`` checks."""
    from great_expectations.execution_engine import PandasExecutionEngine
    from great_expectations.expectations.expectation import ColumnMapExpectation
    from great_expectations.expectations.metrics import (
        ColumnMapMetricProvider,
        column_condition_partial,
    )

    class ColumnValuesPassGovmdmValidator(ColumnMapMetricProvider):
        condition_metric_name = "column_values.govmdm_validator"
        condition_value_keys = ("validator",)

        @column_condition_partial(engine=PandasExecutionEngine)
        def _pandas(cls, column: pd.Series, validator: str, **kwargs: Any) -> pd.Series:
            # GX has dropped nulls; each distinct value is judged once
            check = VALIDATORS[validator]
            try:
                codes, uniques = pd.factorize(column, use_na_sentinel=False)
            except TypeError:  # unhashable values (lists)
                return column.map(check).astype(bool)
            verdicts = np.fromiter((check(v) for v in uniques), dtype=bool, count=len(uniques))
            return pd.Series(verdicts[codes], index=column.index)

    class ExpectColumnValuesToPassGovmdmValidator(ColumnMapExpectation):
        """Expect column values to pass a govmdm validator (ID number, credit code, phone…)."""

        validator: str
        map_metric = "column_values.govmdm_validator"
        success_keys = ("validator", "mostly")
        args_keys = ("column", "validator")

    del ColumnValuesPassGovmdmValidator  # registered with GX on definition
    return ExpectColumnValuesToPassGovmdmValidator


def _expectation(check: Check, engine: _Engine) -> Expectation:
    import great_expectations.expectations as gxe
    from great_expectations.expectations.metadata_types import FailureSeverity

    kwargs: dict[str, Any] = dict(check.params)
    if check.kind == "regex":
        kwargs["regex"] = rf"\A(?:{kwargs['regex']})\Z"
    kwargs.update(column=check.column, mostly=check.threshold)
    cls = engine.validity_expectation if check.kind == "valid" else getattr(gxe, KINDS[check.kind])
    meta = {"rule_id": check.rule_id, **check.meta, "severity": check.severity}
    description = check.meta.get("description_zh")
    expectation: Expectation = cls(
        **kwargs,
        meta=meta,
        severity=FailureSeverity(GX_SEVERITY[check.severity]),
        description=str(description) if description else None,
    )
    return expectation


def _error_message(check: Check, frame: pd.DataFrame, problem: str, *, built: bool = True) -> str:
    """One line: which rule on which column, what GX said, and what to change in the config."""
    params = dict(check.params)
    if check.column and check.column not in frame.columns:
        shown = ", ".join(map(str, list(frame.columns)[:30]))
        fix = (
            f"the data has no column {check.column!r}; set `column` of this rule to one of "
            f"[{shown}] or map a source column to {check.column!r} in the department config"
        )
    elif not built:
        fix = f"correct this rule's params {params} as GX's message says"
    else:
        fix = (
            f"make this rule's params {params} fit the column's type "
            f"({frame[check.column].dtype}), or point the rule at the right column"
        )
    problem = " ".join(problem.split()).rstrip(".")
    where = f"column {check.column!r}"
    return f"rule {check.rule_id} ({check.kind} on {where}) could not run: {problem}. Fix: {fix}"


def _exception_messages(info: Mapping[str, Any]) -> list[str]:
    """GX's exception_info is flat, or keyed by metric when metrics failed."""
    if "raised_exception" in info:
        return [str(info.get("exception_message"))] if info["raised_exception"] else []
    return sorted(
        {
            str(v.get("exception_message"))
            for v in info.values()
            if isinstance(v, Mapping) and v.get("raised_exception")
        }
    )


def _key_text(value: object) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _check_result(
    check: Check, outcome: ExpectationValidationResult, keys: np.ndarray, frame: pd.DataFrame
) -> CheckResult:
    if problems := _exception_messages(outcome.exception_info or {}):
        return CheckResult(
            check.rule_id, False, 0, 0, error=_error_message(check, frame, "; ".join(problems))
        )
    result: Mapping[str, Any] = outcome.result
    observed = {k: v for k, v in result.items() if not isinstance(v, list | dict | tuple)}
    positions = np.asarray(result.get("unexpected_index_list") or [], dtype=np.int64)
    return CheckResult(
        rule_id=check.rule_id,
        success=bool(outcome.success),
        rows_checked=int(result["element_count"]) - int(result.get("missing_count") or 0),
        rows_failed=int(result["unexpected_count"]),
        failed_keys=tuple(_key_text(k) for k in keys[positions]),
        observed=observed,
    )


def validate(
    frame: pd.DataFrame, checks: Sequence[Check], *, key_column: str, suite_name: str
) -> SuiteRun:
    """Validate ``frame`` with ``checks`` as one GX suite; results in the order of ``checks``.

    ``key_column`` names the column whose values identify failing rows (the source key).
    Raises ``ValueError`` for a missing key column or a rule ID used twice; a check GX cannot
    run gives a result with ``error`` set instead.
    """
    if key_column not in frame.columns:
        raise ValueError(f"suite {suite_name}: key column {key_column!r} is not in the data")
    seen: set[str] = set()
    for c in checks:
        if c.rule_id in seen:
            raise ValueError(f"suite {suite_name}: rule ID {c.rule_id!r} is used twice")
        seen.add(c.rule_id)
    if not frame.index.equals(pd.RangeIndex(len(frame))):
        frame = frame.reset_index(drop=True)  # GX reports failing rows by index label

    built_errors: dict[str, CheckResult] = {}
    with _LOCK:
        engine = _engine()  # first: it imports GX quietly
        from great_expectations import ExpectationSuite

        expectations: list[Expectation] = []
        for check in checks:
            try:
                expectations.append(_expectation(check, engine))
            except Exception as e:  # GX's own validation of the parameters
                message = _error_message(check, frame, f"GX rejected the rule: {e}", built=False)
                built_errors[check.rule_id] = CheckResult(check.rule_id, False, 0, 0, error=message)
        suite = ExpectationSuite(name=suite_name, expectations=expectations)
        result_format = {"result_format": "COMPLETE", "return_unexpected_index_query": False}
        batch = engine.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        gx_result = batch.validate(suite, result_format=result_format)

    by_rule = {
        r.expectation_config.meta["rule_id"]: r for r in gx_result.results if r.expectation_config
    }
    keys = frame[key_column].to_numpy(dtype=object)
    results = []
    for check in checks:
        if check.rule_id in built_errors:
            results.append(built_errors[check.rule_id])
        elif check.rule_id in by_rule:
            results.append(_check_result(check, by_rule[check.rule_id], keys, frame))
        else:
            missing = _error_message(check, frame, "GX returned no result for it")
            results.append(CheckResult(check.rule_id, False, 0, 0, error=missing))
    log.debug("suite %s: %d checks on %d rows", suite_name, len(checks), len(frame))
    return SuiteRun(suite_name, tuple(results), gx_result)


def run_checks(
    frame: pd.DataFrame, checks: Sequence[Check], *, key_column: str, suite_name: str
) -> list[CheckResult]:
    """Validate ``frame`` with ``checks`` through GX; one result per check, in order.

    See :func:`validate` (which also returns GX's own result) and the module docstring for
    how rows are counted.
    """
    return list(validate(frame, checks, key_column=key_column, suite_name=suite_name).results)


def tally(
    rule_id: str, failed: Iterable[bool | None], keys: pd.Series, threshold: float
) -> CheckResult:
    """The result of a rule whose verdict on each row is already known (None: not judged),
    counted as GX counts a check (see the module docstring): ``failed[i]`` is row ``i``'s."""
    verdicts = list(failed)
    checked = sum(v is not None for v in verdicts)
    failing = [i for i, v in enumerate(verdicts) if v]
    success = not checked or (checked - len(failing)) / checked >= threshold
    labels = keys.to_numpy(dtype=object)
    return CheckResult(
        rule_id, success, checked, len(failing), tuple(_key_text(labels[i]) for i in failing)
    )
