"""Each night's data-quality reports: one per department for its 数据责任人, one overview for
the data-engineering team, each as self-contained HTML (in Chinese) and a JSON twin.

A department's report says, for one night: a headline (通过 / 需关注 / 不合格 / 数据被暂扣) and
why, derived from the grade beside it (:data:`VERDICTS`) so the two never disagree; the overall
score and grade; the score on each GB/T 36344 dimension (未覆盖 where no rule
covers it, never 100) with a trend chart over the last nights; the failed rules by severity
with rows failed and checked, threshold, how many nights in a row each has failed, masked
sample keys and how to fix it; rules that could not run; and the department's values that
contradict the authoritative department (多元校核), by attribute, with masked samples.

Rules with no new or changed row to judge tonight are listed apart: they are no one's problem.
Beside the nights' folders, :func:`build_index` keeps ``index.html`` (nights × departments, each
cell linking to that night's report) and a history page per rule (pass rate per night as a
chart, masked failing keys), all linked to each other.

Everything is read from the warehouse (``dq_result``, ``dq_scorecard``, ``mdm_conflict``); the
JSON twin is the very dictionary the HTML is rendered from, so the two never disagree. The HTML
has no scripts and loads nothing: CSS is inline, the chart is SVG drawn here, and a
Content-Security-Policy forbids any fetch, so the report reads the same from an e-mail, a
file share or an air-gapped desk.

Personal data is masked as it is read (sample keys, conflict values by attribute type), and
every rendered file is scanned with :func:`fields.masking.find_clear` before anything is
written: a valid ID number or mobile number in clear raises :class:`UnmaskedDataError` and no
file of the night is written.

>>> reports = build_reports(city, "2026-06-30")  # doctest: +SKIP
>>> reports.departments["gongan"].headline, reports.departments["gongan"].html_path.name
('failed', 'gongan.html')

Nights are ordered by run ID, digits compared as numbers: the default run IDs (ISO dates) sort
in calendar order.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Final

import jinja2
import sqlalchemy as sa

from etl.config import CityConfig, run_id_date
from etl.state import RunState, warehouse_url
from fields import dictionary
from fields.masking import (
    ALL_KINDS,
    address_parts,
    describe_difference,
    find_clear,
    mask_field,
    mask_key,
    mask_text,
    policy,
)
from quality.results import DIMENSIONS, OVERALL
from quality.suites import PLATFORM_FAILURE, platform_failure
from quality.tonight import NO_NEW_ROWS
from store import layout
from store.tables import conflict_table, result_table, scorecard_table
from store.warehouse import engine_for

__all__ = [
    "DEFAULT_NIGHTS",
    "HEADLINES",
    "LINKAGE_NAME",
    "VERDICTS",
    "Report",
    "ReportSet",
    "UnmaskedDataError",
    "build_index",
    "build_reports",
    "night_key",
    "render_reports",
    "reports_dir",
    "reports_root",
    "rule_page",
    "write_reports",
]

DEFAULT_NIGHTS = 14
"""Nights shown in the trend chart (tonight included)."""
SAMPLES_PER_RULE = 10
SAMPLES_PER_ATTRIBUTE = 5
SCHEMA_VERSION = 1

HEADLINES: Mapping[str, str] = {
    "passed": "通过",
    "attention": "需关注",
    "failed": "不合格",
    "held_back": "数据被暂扣",
}
"""Headline status → its Chinese label, from best to worst."""
VERDICTS: Mapping[str, str] = {"A": "passed", "B": "attention", "C": "failed", "D": "failed"}
"""The scorecard's grade → the headline it earns (see :func:`quality.scorecard.grade`)."""
GRADE_MEANINGS: Mapping[str, str] = {
    "A": "≥ 95 分且无错误级规则未通过",
    "B": "85–95 分，或有错误级规则未通过",
    "C": "70–85 分",
    "D": "低于 70 分或数据被暂扣",
}
SEVERITY_ORDER = ("blocking", "error", "warning")
SEVERITY_LABELS: Mapping[str, str] = {"blocking": "阻断", "error": "错误", "warning": "警告"}
STATUS_LABELS: Mapping[str, str] = {
    "passed": "通过",
    "failed": "未通过",
    "error": "执行出错",
    "not_run": "未执行",
}
NOT_COVERED = "未覆盖"
OVERALL_LABEL = "综合"
ENTITY_LABELS: Mapping[str, str] = {"person": "自然人", "enterprise": "法人"}

_NOT_EXTRACTED = "今晚未能抽取本部门数据"
_DELIVERY_DETAIL = (
    "技术细节（连接、主机等）已记录在当晚的运行记录中，由数据工程团队处理；如本部门数据库有变更或"
    "停机安排，请告知数据工程团队。"
)

_TEMPLATES = Path(__file__).with_name("templates")


class UnmaskedDataError(RuntimeError):
    """A rendered report or e-mail holds a valid ID number or mobile number in clear.

    The message names the files and shows the findings *masked*, so it is safe to log.
    """


@dataclass(frozen=True)
class Report:
    """One rendered report: ``data`` is the JSON twin, ``html`` and ``text`` render it."""

    name: str
    """``<department code>`` or ``overview``."""
    title: str
    headline: str
    """A key of :data:`HEADLINES` (the overview: the worst department's)."""
    data: dict[str, Any]
    html: str
    text: str
    """A plain-text summary, the e-mail's alternative to the HTML."""
    html_path: Path
    json_path: Path
    known: tuple[str, ...] = ()
    """Personal values the report was built from, in clear: the gate checks none is shown."""
    public: tuple[str, ...] = ()
    """Public values it may show as they are (enterprise names and addresses)."""
    mail_html: str = ""
    """The HTML as e-mailed: ``html`` without the links to the index, the rule pages and the
    night's other reports, which only resolve beside the file on disk."""

    @property
    def department(self) -> str | None:
        """The department code, or None for the overview."""
        return None if self.name == "overview" else self.name

    @property
    def headline_label(self) -> str:
        return HEADLINES[self.headline]

    @property
    def json_text(self) -> str:
        return _dump_json(self.data)


@dataclass(frozen=True)
class ReportSet:
    """A night's reports: one per department (by code), plus the overview unless a single
    department was asked for."""

    run_id: str
    directory: Path
    departments: dict[str, Report] = field(default_factory=dict)
    overview: Report | None = None

    def all(self) -> list[Report]:
        """Every report, departments first."""
        return [*self.departments.values(), *([self.overview] if self.overview else [])]

    def files(self) -> list[Path]:
        return [p for r in self.all() for p in (r.html_path, r.json_path)]


# ------------------------------------------------------------------------------ entry points


def build_reports(
    city: CityConfig,
    run_id: str,
    department: str | None = None,
    *,
    nights: int = DEFAULT_NIGHTS,
    engine: sa.Engine | None = None,
) -> ReportSet:
    """Render the night's reports and write them under ``var/reports/run=<run_id>/``, then
    rebuild the index and the rule pages that link them (:func:`build_index`).

    Every department with results tonight gets ``<code>.html`` and ``<code>.json``, and the
    night gets ``overview.html|json``; with ``department``, only that department's report is
    built (even if it has no results tonight: the report then says so). Nothing is written if
    any file would hold an ID number or mobile number in clear (:class:`UnmaskedDataError`).
    """
    reports = render_reports(city, run_id, department, nights=nights, engine=engine)
    write_reports(reports)
    build_index(city, engine=engine)
    return reports


def render_reports(
    city: CityConfig,
    run_id: str,
    department: str | None = None,
    *,
    nights: int = DEFAULT_NIGHTS,
    engine: sa.Engine | None = None,
) -> ReportSet:
    """The night's reports in memory (see :func:`build_reports`), scanned but not written."""
    engine = engine or engine_for(warehouse_url(city))
    night = _read_night(engine, run_id, department)
    out = reports_dir(city, run_id)
    names = {d.code: d.name for d in city.departments}
    if department is not None:
        codes = [department]
    else:
        present = set(night.results) | set(night.scorecard_tonight)
        configured = [d.code for d in city.departments if d.code in present]
        codes = configured + sorted(present - set(configured))
    # the platform's own contacts (departments' 数据责任人, data engineering) are named in
    # messages on purpose: official addresses, not the data's persons
    contacts = tuple(
        str(c.email)
        for c in (*(d.contact for d in city.departments), city.data_engineering_contact)
    )
    reports: dict[str, Report] = {}
    for code in codes:
        data = department_data(city, night, code, nights=nights)
        known, public = personal_values(night.conflicts.get(code, []))
        public += contacts
        reports[code] = replace(
            _render(out, code, "department", data, data["headline"]["status"]),
            known=known,
            public=public,
        )
    overview = None
    if department is None:
        data = overview_data(city, night, [reports[c].data for c in codes], names)
        known, public = personal_values([r for c in codes for r in night.conflicts.get(c, [])])
        public += contacts
        overview = replace(
            _render(out, "overview", "overview", data, data["headline"]["status"]),
            known=known,
            public=public,
        )
    result = ReportSet(run_id=run_id, directory=out, departments=reports, overview=overview)
    for report in result.all():
        check_masked(
            {
                report.html_path.name: report.html,
                report.json_path.name: report.json_text,
                f"{report.name} (e-mail text)": report.text,
                f"{report.name} (e-mail HTML)": report.mail_html,
            },
            known=report.known,
            public=report.public,
        )
    return result


def personal_values(
    conflicts: Sequence[Mapping[str, Any]],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(personal, public) values of a night's conflict rows, in clear: what a report built
    from them must not show (names, street addresses, ID and phone numbers of persons, legal
    representatives) and what it may (enterprise names and addresses, public registration)."""
    known: set[str] = set()
    public: set[str] = set()
    for row in conflicts:
        entity, attribute = str(row["entity"]), str(row["attribute"])
        rule = policy(entity, attribute)
        for value in (row["value"], row["authority_value"]):
            if value is None or not str(value).strip():
                continue
            text = str(value).strip()
            if not rule.personal:
                public.add(text)
            elif rule.mask == "address":
                detail = address_parts(text)[3]
                known.update(v for v in (text, detail) if len(v) >= 4)
            elif rule.mask in ("name", "id", "phone"):
                known.add(text)
    return tuple(sorted(known)), tuple(sorted(public))


def write_reports(reports: ReportSet) -> None:
    """Write every report's HTML and JSON, each file atomically (temp file, then rename).

    A whole night (with its overview) replaces the night's directory: reports of departments
    that no longer have results that night are removed, so a rerun leaves what a first run
    would have left.
    """
    for report in reports.all():
        check_masked(
            {report.html_path.name: report.html, report.json_path.name: report.json_text},
            known=report.known,
            public=report.public,
        )
    reports.directory.mkdir(parents=True, exist_ok=True)
    for report in reports.all():
        _write_atomic(report.html_path, report.html)
        _write_atomic(report.json_path, report.json_text)
    if reports.overview is not None:
        keep = {*reports.files(), reports.directory / LINKAGE_NAME}
        for stale in [*reports.directory.glob("*.html"), *reports.directory.glob("*.json")]:
            if stale not in keep:
                stale.unlink()


def reports_dir(city: CityConfig, run_id: str) -> Path:
    """``<var>/reports/run=<run_id>``."""
    return layout.reports_dir(city.var_dir, run_id)


def check_masked(
    documents: Mapping[str, str],
    *,
    known: Sequence[str] = (),
    public: Sequence[str] = (),
    kinds: Iterable[str] = ALL_KINDS,
) -> None:
    """Raise :class:`UnmaskedDataError` if any document (name → text) holds personal data in
    clear (:func:`fields.masking.find_clear`: ID numbers, mobile and landline numbers, bank
    cards, e-mail addresses, street addresses, and the ``known`` personal values the documents
    were built from); ``public`` values (enterprise addresses, the e-mail's own sender and
    recipient) do not count; ``kinds`` narrows what is looked for. The message lists each
    finding masked, never in clear."""
    problems = []
    for name, text in documents.items():
        found = find_clear(text, known=known, public=public, kinds=kinds)
        if found:
            shown = ", ".join(sorted({_hint(f) for f in found})[:5])
            problems.append(f"{name}: {len(found)} in clear ({shown})")
    if problems:
        raise UnmaskedDataError(
            "refusing to write or send reports with personal data in clear — "
            + "; ".join(problems)
            + ". Fix: mask the values where they are produced (fields.masking) — sample keys "
            "in dq_result must be masked by the suites."
        )


def _hint(found: str) -> str:
    """A finding as an error message may show it: masked, or only its first character."""
    masked = mask_text(found)
    return masked if masked != found else found[:1] + "*" * max(len(found) - 1, 1)


def night_key(run_id: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key for run IDs: digit runs compare as numbers (``night-9`` < ``night-10``)."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.findall(r"\d+|\D+", run_id)
    )


# --------------------------------------------------------------------------- reading a night


@dataclass
class _Night:
    run_id: str
    results: dict[str, list[dict[str, Any]]]  # department → tonight's dq_result rows
    scorecard_tonight: dict[str, dict[str, dict[str, Any]]]  # department → dimension → row
    scores: dict[str, dict[str, dict[str, float | None]]]  # department → night → dim → score
    history: dict[str, dict[str, dict[str, str]]]  # department → night → rule → status
    conflicts: dict[str, list[dict[str, Any]]]  # department → tonight's mdm_conflict rows


def _read_night(engine: sa.Engine, run_id: str, department: str | None) -> _Night:
    r, s, c = result_table.c, scorecard_table.c, conflict_table.c
    only = (lambda col: col == department) if department is not None else (lambda col: sa.true())
    with engine.connect() as conn:
        results = conn.execute(
            sa.select(result_table).where(r.run_id == run_id, only(r.department))
        ).mappings()
        by_dept: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in results:
            by_dept[row["department"]].append(dict(row))
        history: dict[str, dict[str, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
        for run, dept, rule, status in conn.execute(
            sa.select(r.run_id, r.department, r.rule_id, r.status).where(only(r.department))
        ):
            history[dept][run][rule] = status
        scores: dict[str, dict[str, dict[str, float | None]]] = defaultdict(
            lambda: defaultdict(dict)
        )
        tonight: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for row in conn.execute(sa.select(scorecard_table).where(only(s.department))).mappings():
            scores[row["department"]][row["run_id"]][row["dimension"]] = row["score"]
            if row["run_id"] == run_id:
                tonight[row["department"]][row["dimension"]] = dict(row)
        conflicts: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in conn.execute(
            sa.select(conflict_table)
            .where(c.run_id == run_id, only(c.department))
            .order_by(c.department, c.entity, c.attribute, c.source_table, c.source_key)
        ).mappings():
            conflicts[row["department"]].append(dict(row))
    return _Night(run_id, dict(by_dept), dict(tonight), scores, history, dict(conflicts))


# ------------------------------------------------------------------------ a department's data


def department_data(
    city: CityConfig, night: _Night, code: str, *, nights: int = DEFAULT_NIGHTS
) -> dict[str, Any]:
    """The JSON twin of one department's report (also what its HTML is rendered from)."""
    names = {d.code: d.name for d in city.departments}
    rows = sorted(night.results.get(code, []), key=lambda x: x["rule_id"])
    history = night.history.get(code, {})
    past = sorted((n for n in history if night_key(n) <= night_key(night.run_id)), key=night_key)
    failed: dict[str, list[dict[str, Any]]] = {s: [] for s in SEVERITY_ORDER}
    unrun, passed, idle = [], [], []
    for row in rows:
        rule = _rule(row, _failing_nights(history, past, row["rule_id"]))
        if row["status"] == "failed":
            failed.setdefault(row["severity"], []).append(rule)
        elif row["status"] == "passed":
            passed.append({k: rule[k] for k in ("rule_id", "description", "dimension")})
        elif row["status"] == "not_run" and row["message"] == NO_NEW_ROWS:
            idle.append({k: rule[k] for k in ("rule_id", "description", "dimension")})
        else:
            unrun.append(rule)
    for group in failed.values():
        group.sort(key=lambda x: (-x["failing_nights"], -x["rows_failed"], x["rule_id"]))
    tonight = night.scorecard_tonight.get(code, {})
    overall = tonight.get(OVERALL, {})
    conflicts = _conflicts(night.conflicts.get(code, []), names)
    summary = {
        "rules": len(rows),
        "passed": len(passed),
        "failed": sum(len(g) for g in failed.values()),
        "failed_by_severity": {s: len(failed.get(s, [])) for s in SEVERITY_ORDER},
        "could_not_run": len(unrun),
        "no_new_rows": len(idle),
        "held_back": any(bool(r["held_back"]) for r in rows),
        "conflicts": conflicts["total"],
    }
    return {
        "report": "department",
        "schema_version": SCHEMA_VERSION,
        "run_id": night.run_id,
        "city": city.name,
        "department": {"code": code, "name": names.get(code, code)},
        "headline": _headline(rows, failed, unrun, overall.get("grade"), idle=len(idle)),
        "score": {
            "overall": _round(overall.get("score")),
            "grade": overall.get("grade"),
            "change": _round(overall.get("change")),
            "rules": overall.get("rules", 0),
        },
        "dimensions": [_dimension(d, tonight.get(d, {})) for d in DIMENSIONS],
        "trend": _trend(night.scores.get(code, {}), night.run_id, nights),
        "summary": summary,
        "failed_rules": [
            {"severity": s, "label": SEVERITY_LABELS.get(s, s), "rules": failed[s]}
            for s in [*SEVERITY_ORDER, *sorted(set(failed) - set(SEVERITY_ORDER))]
            if failed[s]
        ],
        "rules_not_run": unrun,
        "rules_without_new_rows": idle,
        "passed_rules": passed,
        "conflicts": conflicts,
    }


def _rule(row: Mapping[str, Any], failing_nights: int) -> dict[str, Any]:
    checked, failed = int(row["rows_checked"]), int(row["rows_failed"])
    return {
        "rule_id": row["rule_id"],
        "description": mask_text(row["description"] or ""),
        "target": row["target"],
        "column": row["column_name"],
        "kind": row["kind"],
        "dimension": row["dimension"],
        "severity": row["severity"],
        "severity_label": SEVERITY_LABELS.get(row["severity"], row["severity"]),
        "status": row["status"],
        "status_label": STATUS_LABELS.get(row["status"], row["status"]),
        "threshold": float(row["threshold"]),
        "threshold_text": _threshold_text(row["kind"], float(row["threshold"])),
        "rows_checked": checked,
        "rows_failed": failed,
        "pass_rate": round((checked - failed) / checked, 6) if checked else None,
        "failing_nights": failing_nights,
        "sample_keys": [mask_key(k) for k in _json_list(row["sample_keys"])[:SAMPLES_PER_RULE]],
        "fix": mask_text(row["fix"]) if row["fix"] else None,
        "message": _message(row),
        "held_back": bool(row["held_back"]),
    }


def _message(row: Mapping[str, Any]) -> str | None:
    """A rule's message as its department reads it. A failed extraction says what happened,
    never how the platform connects (host, port, database, connection variables): those stay
    in the night's records for the data-engineering team."""
    message = row["message"]
    if not message:
        return None
    if row["kind"] == "delivery" and message.startswith(_NOT_EXTRACTED) and "：" in message:
        return f"{message.split('：', 1)[0]}。{_DELIVERY_DETAIL}"
    return mask_text(message)


def _threshold_text(kind: str, threshold: float) -> str:
    """The rule's limit in its own unit: days for freshness, a relative change for volume, a
    least pass rate for the rest (a delivery rule simply passes or fails)."""
    if kind == "freshness":
        return f"≤ {threshold:g} 天"
    if kind == "volume":
        return f"变化 ≤ {_format_percent(threshold, 0)}"
    if kind == "delivery":
        return "按时交付、结构无漂移"
    return f"≥ {_format_percent(threshold, 1)}"


def _failing_nights(
    history: Mapping[str, Mapping[str, str]], past: Sequence[str], rule: str
) -> int:
    """Nights in a row, up to tonight, on which ``rule`` failed; a night on which it passed,
    could not run or was absent ends the run."""
    count = 0
    for run in reversed(past):
        if history[run].get(rule) != "failed":
            break
        count += 1
    return count


def _headline(
    rows: Sequence[Mapping[str, Any]],
    failed: Mapping[str, Sequence[Mapping[str, Any]]],
    unrun: Sequence[Mapping[str, Any]],
    grade: str | None,
    *,
    idle: int = 0,
) -> dict[str, Any]:
    """The verdict: held back when a blocking rule held the batch; otherwise the scorecard's
    grade decides (:data:`VERDICTS`; an A with any failed or unrun rule only earns 需关注), so
    the verdict and the grade beside it never disagree; without a grade (nothing scored), the
    failed rules' severities decide. Rules with no new or changed row to judge tonight
    (``idle``) are no one's problem: they neither pass nor count as could-not-run."""
    reasons: list[str] = []
    held = [r["rule_id"] for r in rows if r["held_back"]]
    serious = [r["rule_id"] for s in ("blocking", "error") for r in failed.get(s, [])]
    warnings = [
        r["rule_id"] for s, g in failed.items() if s not in ("blocking", "error") for r in g
    ]
    if not rows:
        status = "attention"
        reasons.append("今晚没有本部门的质量检查结果（检查未执行），请联系数据工程团队。")
    platform = [r for r in unrun if str(r.get("message", "")).startswith(PLATFORM_FAILURE)]
    if rows and len(platform) == len(rows):
        reason = "今晚因平台故障未能抽取数据，本晚不评分，不计入本部门，无需处理。"
        return {"status": "attention", "label": HEADLINES["attention"], "reasons": [reason]}
    if held:
        reasons.append(f"阻断级规则未通过（{'、'.join(held)}），本批数据已暂扣，未进入基础库。")
    if serious:
        reasons.append(f"{len(serious)} 条错误级及以上规则未通过。")
    if warnings:
        reasons.append(f"{len(warnings)} 条警告级规则未通过。")
    if unrun:
        reasons.append(f"{len(unrun)} 条规则未能执行。")
    if held:
        status = "held_back"
    elif grade is not None and grade in VERDICTS:
        status = VERDICTS[grade]
        why = f"综合等级 {grade}（{GRADE_MEANINGS[grade]}），结论按等级判定"
        if status == "passed" and (warnings or serious or unrun):
            status = "attention"
            why += "；等级虽为 A，但有规则未通过或未能执行，故为需关注"
        reasons.insert(0, why + "。")
    elif serious:
        status = "failed"
    elif warnings or unrun or not rows:
        status = "attention"
    else:
        status = "passed"
    if status == "passed" and len(rows) > idle:
        reasons.append(
            f"全部 {len(rows) - idle} 条已运行的规则通过。"
            if idle
            else f"全部 {len(rows)} 条规则通过。"
        )
    if idle:
        reasons.append(f"{idle} 条规则今晚没有新增或变更的数据行可检查，无需处理。")
    return {"status": status, "label": HEADLINES[status], "reasons": reasons}


def _dimension(name: str, row: Mapping[str, Any]) -> dict[str, Any]:
    score = row.get("score")
    return {
        "dimension": name,
        "covered": score is not None,
        "score": _round(score),
        "rules": int(row.get("rules") or 0),
        "change": _round(row.get("change")),
    }


def _trend(
    by_night: Mapping[str, Mapping[str, float | None]], run_id: str, nights: int
) -> dict[str, Any]:
    shown = sorted((n for n in by_night if night_key(n) <= night_key(run_id)), key=night_key)
    shown = shown[-nights:]
    series = [
        {
            "name": name,
            "label": OVERALL_LABEL if name == OVERALL else name,
            "scores": [_round(by_night[n].get(name)) for n in shown],
        }
        for name in (OVERALL, *DIMENSIONS)
    ]
    return {
        "nights": shown,
        "series": [s for s in series if any(v is not None for v in s["scores"])],
    }


def _conflicts(rows: Sequence[Mapping[str, Any]], names: Mapping[str, str]) -> dict[str, Any]:
    """Conflict rows grouped by attribute and authority. A row of the authority itself (its
    value kept, every other department holding another, newer one) groups apart, ``own``: its
    ``value`` is what the others hold and ``authority_value`` the department's own."""
    groups: dict[tuple[str, str, str, bool], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        own = row["department"] == row["authority_department"]
        groups[(row["entity"], row["attribute"], row["authority_department"], own)].append(row)
    by_attribute: list[dict[str, Any]] = []
    for (entity, attribute, authority, own), members in groups.items():
        by_attribute.append(
            {
                "entity": entity,
                "entity_label": ENTITY_LABELS.get(entity, entity),
                "attribute": attribute,
                "attribute_label": _attribute_label(entity, attribute),
                "authority_department": {
                    "code": authority,
                    "name": names.get(authority, authority),
                },
                "own": own,
                "count": len(members),
                "samples": [
                    _conflict_sample(entity, attribute, m, own)
                    for m in members[:SAMPLES_PER_ATTRIBUTE]
                ],
            }
        )
    by_attribute.sort(key=lambda g: (-g["count"], g["entity"], g["attribute"], g["own"]))
    return {"total": len(rows), "by_attribute": by_attribute}


def _conflict_sample(
    entity: str, attribute: str, m: Mapping[str, Any], own: bool
) -> dict[str, Any]:
    """One masked sample: this department's value, and the one it is held against (the
    authority's; for the authority's own row, what the other departments agree on)."""
    mine, other = (m["authority_value"], m["value"]) if own else (m["value"], m["authority_value"])
    return {
        "source_table": m["source_table"],
        "source_key": mask_key(str(m["source_key"])),
        "value": mask_field(entity, attribute, mine),
        "authority_value": mask_field(entity, attribute, other),
        "difference": describe_difference(entity, attribute, mine, other),
    }


def _attribute_label(entity: str, attribute: str) -> str:
    return dictionary.label(entity, attribute)


# ---------------------------------------------------------------------------- the overview


def overview_data(
    city: CityConfig,
    night: _Night,
    departments: Sequence[Mapping[str, Any]],
    names: Mapping[str, str],
) -> dict[str, Any]:
    """The JSON twin of the night's overview, from the departments' own report data."""
    rows = []
    for d in departments:
        rows.append(
            {
                "code": d["department"]["code"],
                "name": d["department"]["name"],
                "headline": d["headline"],
                "overall": d["score"]["overall"],
                "grade": d["score"]["grade"],
                "change": d["score"]["change"],
                "dimensions": {x["dimension"]: x["score"] for x in d["dimensions"]},
                "summary": d["summary"],
                "held_back_rules": [
                    r["rule_id"] for g in d["failed_rules"] for r in g["rules"] if r["held_back"]
                ],
                "rules_not_run": [
                    {k: r[k] for k in ("rule_id", "status", "status_label", "message")}
                    for r in d["rules_not_run"]
                ],
                "report": f"{d['department']['code']}.html",
            }
        )
    reported = {r["code"] for r in rows}
    missing = [{"code": c, "name": n} for c, n in names.items() if c not in reported]
    alerts = platform_alerts(city, night.run_id)
    counts = {s: sum(r["headline"]["status"] == s for r in rows) for s in HEADLINES}
    worst = next((s for s in reversed(list(HEADLINES)) if counts[s]), "passed")
    if missing:
        worst = worst if _rank(worst) > _rank("attention") else "attention"
    reasons = [
        f"{HEADLINES[s]}：{'、'.join(r['name'] for r in rows if r['headline']['status'] == s)}"
        for s in reversed(list(HEADLINES))
        if counts[s] and s != "passed"
    ]
    if missing:
        reasons.append(f"{len(missing)} 个已配置部门今晚没有质量检查结果")
    if alerts:
        worst = worst if _rank(worst) > _rank("attention") else "attention"
        reasons.append(f"{len(alerts)} 项平台或配置问题需要数据工程团队处理（不计入部门得分）")
    return {
        "report": "overview",
        "schema_version": SCHEMA_VERSION,
        "run_id": night.run_id,
        "city": city.name,
        "headline": {"status": worst, "label": HEADLINES[worst], "reasons": reasons},
        "dimensions": list(DIMENSIONS),
        "departments": rows,
        "held_back": [
            {"code": r["code"], "name": r["name"], "rules": r["held_back_rules"]}
            for r in rows
            if r["held_back_rules"]
        ],
        "without_results": missing,
        "alerts": alerts,
        "counts": counts,
    }


ALERT_LABELS: Final = {
    "config": "部门配置文件有误，该部门今晚未运行",
    "mass_deletion": "源表出现超限的批量删除，本批数据已暂扣",
    "unreadable_column": "某列全部值无法按配置读取（配置错误），该部门今晚未发布、不评分",
    "platform": "平台故障：今晚没有任何部门的数据被抽取，本晚不评分",
}


def platform_alerts(city: CityConfig, run_id: str) -> list[dict[str, Any]]:
    """What data engineering must act on tonight that is no department's data fault (a broken
    department file, …): ``{code, name, kind, label, message}`` each, never scored."""
    alerts = [
        {
            "code": code,
            "name": code,
            "kind": "config",
            "label": ALERT_LABELS["config"],
            "message": "\n".join(problems),
        }
        for code, problems in city.broken.items()
    ]
    names = {d.code: d.name for d in city.departments}
    with RunState.for_city(city) as state:
        ledger = state.ledger(run_id)
    if (why := platform_failure(ledger)) is not None:
        alerts.append(
            {
                "code": "-",
                "name": "全部部门",
                "kind": "platform",
                "label": ALERT_LABELS["platform"],
                "message": why,
            }
        )
    for path in layout.problem_paths(city.var_dir, run_id):
        noted = json.loads(path.read_text(encoding="utf-8"))
        alerts.append(
            {
                "code": noted["department"],
                "name": names.get(noted["department"], noted["department"]),
                "kind": "unreadable_column",
                "label": ALERT_LABELS["unreadable_column"],
                "message": noted["message"],
            }
        )
    for row in ledger:
        if row.get("deletion_guard") == "held":
            alerts.append(
                {
                    "code": row["department"],
                    "name": names.get(row["department"], row["department"]),
                    "kind": "mass_deletion",
                    "label": ALERT_LABELS["mass_deletion"],
                    "message": f"{row['table_name']}: {row['message']}",
                }
            )
    return alerts


def _rank(status: str) -> int:
    return list(HEADLINES).index(status)


# ------------------------------------------------------------------- the index and rule pages

INDEX_NAME: Final = "index.html"
RULES_DIR: Final = "rules"
LINKAGE_NAME: Final = "linkage.html"
"""The night's linkage summary (:mod:`quality.linkage`), beside its reports."""


def reports_root(city: CityConfig) -> Path:
    """``<var>/reports``: every night's folder, the index and the rule pages."""
    return reports_dir(city, "").parent


def rule_page(department: str, rule_id: str) -> str:
    """A rule's history page, relative to :func:`reports_root`."""
    return f"{RULES_DIR}/{_slug(department)}/{_slug(rule_id)}.html"


def build_index(city: CityConfig, *, engine: sa.Engine | None = None) -> list[Path]:
    """Write ``index.html`` (nights × departments: each cell the night's headline, score, grade
    and change, linking to that night's department report) and one page per rule
    (``rules/<department>/<rule>.html``: its pass rate per night as a chart, and each night's
    status and masked failing keys), from the reports on disk and ``dq_result``.

    Every page is scanned by the same gate as the reports before anything is written; rule
    pages of rules no longer in the warehouse are removed. Returns the files written.
    """
    engine = engine or engine_for(warehouse_url(city))
    root = reports_root(city)
    nights = _reported_nights(root)
    history = _rule_history(engine)
    names = {d.code: d.name for d in city.departments}
    env = _environment()
    pages: dict[Path, str] = {}
    rules = []
    for (code, rule_id), by_night in sorted(history.items()):
        data = rule_history_data(city, code, rule_id, by_night, nights, names)
        chart = trend_chart(data["trend"], y_suffix="%")
        html = env.get_template("rule.html").render(
            report=data, chart=chart, title=data["title"], up="../../"
        )
        pages[root / data["page"]] = html
        rules.append(
            {k: data[k] for k in ("department", "rule_id", "page", "latest", "description")}
        )
    index = index_data(city, nights, rules, names)
    title = f"{city.name} 数据质量报告索引"
    pages[root / INDEX_NAME] = env.get_template("index.html").render(
        report=index, title=title, up=""
    )
    check_masked({str(p.relative_to(root)): html for p, html in pages.items()})
    for path, html in pages.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, html)
    for stale in (root / RULES_DIR).glob("*/*.html"):
        if stale not in pages:
            stale.unlink()
    return sorted(pages)


def _reported_nights(root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Night → department code → its report's JSON twin, for every night on disk."""
    nights: dict[str, dict[str, dict[str, Any]]] = {}
    for folder in root.glob("run=*"):
        found = {}
        for path in sorted(folder.glob("*.json")):
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("report") == "department":
                found[data["department"]["code"]] = data
        nights[folder.name.removeprefix("run=")] = found
    return dict(sorted(nights.items(), key=lambda kv: night_key(kv[0])))


def _rule_history(engine: sa.Engine) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """(department, rule) → night → its ``dq_result`` row."""
    history: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    with engine.connect() as conn:
        for row in conn.execute(sa.select(result_table)).mappings():
            history[(row["department"], row["rule_id"])][row["run_id"]] = dict(row)
    return history


def rule_history_data(
    city: CityConfig,
    code: str,
    rule_id: str,
    by_night: Mapping[str, Mapping[str, Any]],
    reported: Mapping[str, Mapping[str, Any]],
    names: Mapping[str, str],
) -> dict[str, Any]:
    """The data of one rule's history page: a row per night it has a result (oldest first),
    each with its pass rate, status and masked failing keys, and the pass-rate trend."""
    order = sorted(by_night, key=night_key)
    statuses = {n: {rule_id: str(by_night[n]["status"])} for n in order}
    rows = []
    for i, n in enumerate(order):
        rule = _rule(by_night[n], _failing_nights(statuses, order[: i + 1], rule_id))
        if rule["status"] not in ("passed", "failed"):  # it judged nothing: no pass rate
            rule["pass_rate"] = None
        has_report = code in reported.get(n, {})
        rows.append({"run_id": n, "report": f"run={n}/{code}.html" if has_report else None, **rule})
    latest = rows[-1]
    rates = [None if r["pass_rate"] is None else round(r["pass_rate"] * 100, 2) for r in rows]
    return {
        "report": "rule",
        "city": city.name,
        "title": f"规则 {rule_id} 历史（{names.get(code, code)}）",
        "department": {"code": code, "name": names.get(code, code)},
        "rule_id": rule_id,
        "page": rule_page(code, rule_id),
        "latest": {k: latest[k] for k in ("run_id", "status", "status_label", "pass_rate")}
        | {"failing_nights": latest["failing_nights"], "severity": latest["severity"]},
        "description": latest["description"],
        "nights": rows[::-1],
        "trend": {
            "nights": order,
            "series": [{"name": "pass_rate", "label": "通过率", "scores": rates}]
            if any(v is not None for v in rates)
            else [],
        },
    }


def index_data(
    city: CityConfig,
    nights: Mapping[str, Mapping[str, Mapping[str, Any]]],
    rules: Sequence[Mapping[str, Any]],
    names: Mapping[str, str],
) -> dict[str, Any]:
    """The index's data: nights (newest first) × departments, and every rule's latest state."""
    present = {code for found in nights.values() for code in found}
    codes = [c for c in names if c in present] + sorted(present - set(names))
    rows = []
    for n in reversed(list(nights)):
        cells = {}
        for code, data in nights[n].items():
            score = data["score"]
            cells[code] = {
                "href": f"run={n}/{code}.html",
                "headline": data["headline"],
                "overall": score["overall"],
                "grade": score["grade"],
                "change": score["change"],
            }
        overview = reports_dir(city, n) / "overview.html"
        linkage = reports_dir(city, n) / LINKAGE_NAME
        rows.append(
            {"run_id": n, "overview": f"run={n}/overview.html" if overview.exists() else None}
            | {"linkage": f"run={n}/{LINKAGE_NAME}" if linkage.exists() else None}
            | {"cells": cells}
        )
    return {
        "report": "index",
        "city": city.name,
        "departments": [{"code": c, "name": names.get(c, c)} for c in codes],
        "nights": rows,
        "rules": sorted(rules, key=lambda r: (r["department"]["code"], r["rule_id"])),
    }


def _slug(text: str) -> str:
    """A file name for a code or rule ID: letters, digits, ``.``, ``_`` and ``-`` kept."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text) or "_"


# ------------------------------------------------------------------------------- rendering


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["score"] = _format_score
    env.filters["percent"] = _format_percent
    env.filters["change"] = _format_change
    env.globals.update(
        rule_page=rule_page,
        NOT_COVERED=NOT_COVERED,
        SEVERITY_LABELS=SEVERITY_LABELS,
        HEADLINES=HEADLINES,
    )
    return env


def _render(out: Path, name: str, kind: str, data: dict[str, Any], headline: str) -> Report:
    env = _environment()
    chart = trend_chart(data["trend"]) if "trend" in data else None
    title = (
        f"{data['department']['name']} 数据质量报告 {data['run_id']}"
        if kind == "department"
        else f"{data['city']} 数据质量总览 {data['run_id']}"
    )
    page = env.get_template(f"{kind}.html")
    html = page.render(report=data, chart=chart, title=title, up="../")
    mail_html = page.render(report=data, chart=chart, title=title, up=None)
    text = env.get_template(f"{kind}.txt").render(report=data, title=title)
    return Report(
        name=name,
        title=title,
        headline=headline,
        data=data,
        html=html,
        text=text,
        html_path=out / f"{name}.html",
        json_path=out / f"{name}.json",
        mail_html=mail_html,
    )


def _format_score(value: float | None) -> str:
    return NOT_COVERED if value is None else f"{value:.1f}"


def _format_percent(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def _format_change(value: float | None) -> str:
    if value is None:
        return ""
    return "持平" if abs(value) < 0.05 else f"{'▲' if value > 0 else '▼'}{abs(value):.1f}"


# --------------------------------------------------------------------------- the trend chart

_SERIES_COLORS = ("#1f3a93", "#2e86de", "#10ac84", "#ee5253", "#ff9f43", "#8e44ad", "#576574")


@dataclass(frozen=True)
class ChartSeries:
    label: str
    color: str
    width: float
    paths: tuple[str, ...]
    """SVG path data, one per run of nights with a score (a night without one is a gap)."""
    points: tuple[tuple[float, float, str], ...]
    """(x, y, tooltip) per night with a score."""


@dataclass(frozen=True)
class Chart:
    """A line chart of scores (0–100) over nights, drawn as SVG by the templates."""

    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    y_ticks: tuple[tuple[float, int], ...]
    x_labels: tuple[tuple[float, str], ...]
    series: tuple[ChartSeries, ...]
    y_suffix: str = ""
    """Unit after each y-axis tick (``%`` for pass rates)."""

    @property
    def point_count(self) -> int:
        return sum(len(s.points) for s in self.series)


def trend_chart(
    trend: Mapping[str, Any], *, width: int = 720, height: int = 260, y_suffix: str = ""
) -> Chart | None:
    """The trend (``nights`` and ``series`` of 0–100 values, one per night or None) as chart
    geometry, nights spaced by date (:func:`night_offsets`); None when there is nothing to
    draw."""
    nights: list[str] = trend["nights"]
    if not nights or not trend["series"]:
        return None
    left, top, right, bottom = 44, 16, 16, 48
    pw, ph = width - left - right, height - top - bottom
    offsets = night_offsets(nights)

    def x(i: int) -> float:
        return round(left + pw * offsets[i], 1)

    def y(v: float) -> float:
        return round(top + ph * (1 - max(0.0, min(v, 100.0)) / 100), 1)

    series = []
    for n, s in enumerate(trend["series"]):
        points: list[tuple[float, float, str]] = []
        paths: list[str] = []
        run: list[tuple[float, float]] = []
        for i, v in enumerate([*s["scores"], None]):
            if v is None:
                if len(run) > 1:
                    paths.append("M" + " L".join(f"{a},{b}" for a, b in run))
                run = []
                continue
            run.append((x(i), y(v)))
            points.append((x(i), y(v), f"{s['label']} {nights[i]}：{v:.1f}"))
        series.append(
            ChartSeries(
                label=s["label"],
                color=_SERIES_COLORS[n % len(_SERIES_COLORS)],
                width=3.0 if s["name"] == OVERALL or len(trend["series"]) == 1 else 1.5,
                paths=tuple(paths),
                points=tuple(points),
            )
        )
    labels: list[tuple[float, str]] = []
    for i, night in enumerate(nights):  # at most about 8 labels, none on top of another
        if not labels or x(i) - labels[-1][0] >= pw / 9:
            labels.append((x(i), _short_night(night)))
    ticks = tuple((y(v), v) for v in (0, 25, 50, 75, 100))
    return Chart(width, height, left, top, pw, ph, ticks, tuple(labels), tuple(series), y_suffix)


def night_offsets(nights: Sequence[str]) -> list[float]:
    """Where each night sits on a chart's x axis, 0 (first) to 1 (last): spaced by date when
    every run ID starts with an ISO date (a week without a run leaves a week's gap), else
    evenly; a single night sits in the middle.

    >>> night_offsets(["2026-06-01", "2026-06-02", "2026-06-05"])
    [0.0, 0.25, 1.0]
    """
    if len(nights) < 2:
        return [0.5] * len(nights)
    days = [run_id_date(n) for n in nights]
    if all(d is not None for d in days):
        ordinals = [d.toordinal() for d in days if d is not None]
        span = ordinals[-1] - ordinals[0]
        if span > 0:
            return [(o - ordinals[0]) / span for o in ordinals]
    return [i / (len(nights) - 1) for i in range(len(nights))]


def _short_night(run_id: str) -> str:
    """``2026-06-30`` → ``06-30``; other run IDs as they are."""
    m = re.fullmatch(r"\d{4}-(\d{2}-\d{2})", run_id)
    return m.group(1) if m else run_id


# ----------------------------------------------------------------------------------- helpers


def _round(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return round(float(value), 1)


def _json_list(text: str | None) -> list[str]:
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return [str(text)]
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _dump_json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
