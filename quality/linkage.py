"""A night's linkage summary, beside its quality reports: ``var/reports/run=<id>/linkage.html``.

Per entity type (persons, enterprises): how big the clusters are, how the scored pairs' match
weights fall against the review and auto-link thresholds, what happened to master IDs tonight
(merges, splits, new and retired IDs) beside the night before, and — where the sample city's
truth is there — pairwise precision and recall per case kind (twins, namesakes, movers, each
kind of planted dirt; :func:`master_data.evaluate.case_metrics`). One self-contained page,
charts as inline SVG, no script, nothing fetched, and no personal data: only counts.

It is written by the night's reports stage (:func:`pipeline.night.build_reports`) and by
``govmdm model summary``; the reports index links it.

>>> page = write_linkage_page(city, "2026-07-01")  # doctest: +SKIP
>>> page.name
'linkage.html'
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from etl.config import CityConfig
from etl.state import warehouse_url
from master_data.evaluate import CaseMetrics, TruthMismatch, case_metrics
from master_data.model import FellegiSunter
from master_data.night_state import read_state
from master_data.tf import edge_u
from quality.report import (
    LINKAGE_NAME,
    _environment,
    _write_atomic,
    check_masked,
    reports_dir,
)
from store import layout
from store.warehouse import engine_for, latest_run, published_run

__all__ = [
    "EVENTS",
    "Histogram",
    "histogram",
    "linkage_data",
    "render_linkage_page",
    "write_linkage_page",
]

EVENTS: dict[str, str] = {
    "issued": "新主体",
    "merged": "合并",
    "split": "拆分",
    "retired": "注销（记录均已删除）",
    "restored": "恢复旧编号",
}
"""What can happen to a master ID in a night (:mod:`master_data.identity`), in Chinese."""

ENTITY_LABELS = {"person": "自然人（人口基础库）", "enterprise": "法人（法人基础库）"}
SIZE_BINS = 10  # cluster sizes 1 … 9, then "10+"
WEIGHT_RANGE = (-30, 40)  # match weights drawn; a pair beyond falls in the end bin


@dataclass(frozen=True)
class Bin:
    """One bar: the range [low, high) it counts, its label, its count and its layout."""

    low: float
    high: float
    label: str
    count: int
    band: str  # size | below | review | auto
    x: float = 0.0
    y: float = 0.0
    width: float = 0.0
    height: float = 0.0


@dataclass(frozen=True)
class Histogram:
    """Bars over an x range, with marked x values (the thresholds), laid out in pixels."""

    bins: list[Bin]
    lines: list[tuple[str, float, float]]  # (label, value, x)
    ticks: list[tuple[str, float]]  # (label, x)
    y_ticks: list[tuple[int, float]]  # (count, y)
    width: float
    height: float
    left: float
    top: float
    bottom: float


def histogram(
    bins: Sequence[tuple[float, float, str, int, str]],
    lines: Sequence[tuple[str, float]] = (),
    *,
    log: bool = False,
    width: float = 720,
    height: float = 260,
) -> Histogram:
    """Lay out ``bins`` (low, high, label, count, band) side by side on one linear x scale, with
    a vertical line at each value of ``lines`` (label, value); ``log``: counts on a log scale
    (log10 of 1 + count), so that a band of a few pairs beside thousands still shows.

    >>> h = histogram([(1, 2, "1", 4, "size"), (2, 3, "2", 2, "size")])
    >>> [round(b.height / h.bins[0].height, 2) for b in h.bins]
    [1.0, 0.5]
    """
    left, top, bottom, right = 52.0, 16.0, 34.0, 16.0
    low, high = bins[0][0], bins[-1][1]
    plot_w, plot_h = width - left - right, height - top - bottom
    top_count = max(1, *(b[3] for b in bins))
    step = 10 ** math.floor(math.log10(top_count)) if top_count >= 10 else 1
    while top_count / step > 6:
        step *= 2
    peak = math.ceil(top_count / step) * step
    marks = list(range(0, int(peak) + 1, int(step)))
    if log:
        peak = 10 ** math.ceil(math.log10(top_count + 1))
        marks = [0, *(10**k for k in range(round(math.log10(peak)) + 1))]
    scale = math.log10(peak + 1) if log else peak

    def x(v: float) -> float:  # rounded: long decimals would read as phone numbers
        return round(left + (min(max(v, low), high) - low) / ((high - low) or 1) * plot_w, 1)

    def y(count: float) -> float:
        return round(top + plot_h * (1 - (math.log10(count + 1) if log else count) / scale), 1)

    laid = [
        Bin(lo, hi, label, count, band, x(lo) + 1, y(count), round(max(x(hi) - x(lo) - 2, 1), 1))
        for lo, hi, label, count, band in bins
    ]
    laid = [Bin(**{**asdict(b), "height": round(top + plot_h - b.y, 1)}) for b in laid]
    every = max(1, math.ceil(len(bins) / 14))
    ticks = [(b.label, round(b.x + b.width / 2, 1)) for i, b in enumerate(laid) if i % every == 0]
    y_ticks = [(int(c), y(c)) for c in marks]
    return Histogram(
        laid,
        [(label, round(v, 4), x(v)) for label, v in lines],
        ticks,
        y_ticks,
        width,
        height,
        left,
        top,
        top + plot_h,
    )


def _log2_odds(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log2(p / (1 - p))


def _size_bins(sizes: pd.Series) -> list[tuple[float, float, str, int, str]]:
    counts = sizes.clip(upper=SIZE_BINS).value_counts()
    return [
        (s, s + 1, f"{s}+" if s == SIZE_BINS else str(s), int(counts.get(s, 0)), "size")
        for s in range(1, SIZE_BINS + 1)
    ]


def _weight_bins(
    weights: pd.Series, review: float, auto: float
) -> list[tuple[float, float, str, int, str]]:
    lo, hi = WEIGHT_RANGE
    if len(weights):
        lo = max(lo, math.floor(min(weights.min(), review - 2)))
        hi = min(hi, math.ceil(max(weights.max(), auto + 2)) + 1)
    edges = range(int(lo), int(hi))
    clipped = weights.clip(lower=lo, upper=hi - 1).map(math.floor).value_counts()
    return [
        (
            e,
            e + 1,
            f"≤{e}" if e == WEIGHT_RANGE[0] else f"≥{e}" if e == WEIGHT_RANGE[1] - 1 else str(e),
            int(clipped.get(e, 0)),
            "auto" if e >= auto else "review" if e + 1 > review else "below",
        )
        for e in edges
    ]


def _entity(state: Path, summary: Mapping[str, Any], before: Mapping[str, Any] | None) -> Any:
    """One entity type's figures from its master state and the nights' summaries."""
    sizes = read_state(state, "crosswalk", ["master_id"]).to_pandas()["master_id"].value_counts()
    edges = read_state(state, "edges").to_pandas()
    model = FellegiSunter.from_json((state / "model.json").read_text(encoding="utf-8"))
    thresholds = json.loads((state / "match.json").read_text(encoding="utf-8"))["thresholds"]
    weights = (
        model.score(edges[model.features], edge_u(edges)) if len(edges) else pd.Series(dtype=float)
    )
    review, auto = _log2_odds(thresholds["review"]), _log2_odds(thresholds["auto_link"])
    bands = {
        "below": int((weights < review).sum()),
        "review": int(((weights >= review) & (weights < auto)).sum()),
        "auto": int((weights >= auto).sum()),
    }
    events = {k: int(summary.get("events", {}).get(k, 0)) for k in EVENTS}
    previous = None
    if before is not None:
        previous = {"masters": before.get("masters")} | {
            k: int(before.get("events", {}).get(k, 0)) for k in EVENTS
        }
    return {
        "records": int(sizes.sum()),
        "masters": len(sizes),
        "largest": int(sizes.max()) if len(sizes) else 0,
        "sizes": _size_bins(sizes),
        "pairs": len(edges),
        "rule_pairs": int(edges["rule"].notna().sum()) if "rule" in edges else 0,
        "weights": _weight_bins(weights, review, auto),
        "thresholds": {k: float(v) for k, v in thresholds.items()},
        "lines": [("review", review), ("auto_link", auto)],
        "bands": bands,
        "review_queue": int(summary.get("review_queue", 0)),
        "events": events,
        "previous": previous,
    }


def linkage_data(
    city: CityConfig, run_id: str, *, engine: sa.Engine | None = None
) -> dict[str, Any]:
    """The summary page's data for published night ``run_id``; LookupError if it was not
    published (the message says what to run)."""
    own = engine is None
    engine = engine or engine_for(warehouse_url(city))
    try:
        run = published_run(engine, run_id)
        before = latest_run(engine, before=run_id) if run else None
        latest = latest_run(engine)
    finally:
        if own:
            engine.dispose()
    if run is None:
        raise LookupError(
            f"night {run_id} was not published, so it has no linkage to summarize. Fix: "
            f"`govmdm consolidate --run-id {run_id}` first, or name a published night"
        )
    state = layout.state_dir_of(city.var_dir, run)
    summary = json.loads(run["summary"])
    base = json.loads(before["summary"]) if before else {}
    entities = {
        e: _entity(state / e, s, base.get("entities", {}).get(e) if base else None)
        for e, s in sorted(summary.get("entities", {}).items(), key=lambda kv: _order(kv[0]))
        if (state / e).is_dir()
    }
    return {
        "report": "linkage",
        "city": city.name,
        "run_id": run_id,
        "mode": run["mode"],
        "previous": before["run_id"] if before else None,
        "entities": entities,
        "truth": _truth(
            city, state, list(entities), latest is not None and latest["run_id"] == run_id
        ),
    }


def _order(entity: str) -> tuple[int, str]:
    return (list(ENTITY_LABELS).index(entity) if entity in ENTITY_LABELS else 9, entity)


def _truth(city: CityConfig, state: Path, entities: list[str], latest: bool) -> dict[str, Any]:
    """Precision and recall per case kind against the sample city's truth, or why not."""
    truth_dir = layout.city_dir(city.var_dir)
    if not (truth_dir / "truth").is_dir():
        return {"note": "没有样例城市的真值（var/city/truth），不计算准确率。", "entities": {}}
    if not latest:
        return {"note": "真值只描述最新一晚，本页不是最新一晚，不计算准确率。", "entities": {}}
    crosswalk = pd.concat(
        [read_state(state / e, "crosswalk").to_pandas().assign(entity=e) for e in entities],
        ignore_index=True,
    )
    try:
        cases = case_metrics(truth_dir, crosswalk)
    except (TruthMismatch, ValueError) as exc:
        return {"note": f"真值与本晚的数据不符，不计算准确率：{exc}", "entities": {}}
    return {"note": None, "entities": {e: [asdict(c) for c in rows] for e, rows in cases.items()}}


def render_linkage_page(data: Mapping[str, Any]) -> str:
    """The page (:func:`linkage_data`), scanned for personal data in clear."""
    charts = {
        e: {
            "sizes": histogram(d["sizes"]),
            "weights": histogram(d["weights"], d["lines"], log=True),
        }
        for e, d in data["entities"].items()
    }
    html = (
        _environment()
        .get_template("linkage.html")
        .render(
            report=data,
            charts=charts,
            title=f"{data['city']} 主数据链接汇总 {data['run_id']}",
            EVENTS=EVENTS,
            ENTITY_LABELS=ENTITY_LABELS,
            up="../",
        )
    )
    check_masked({LINKAGE_NAME: html})
    return html


def write_linkage_page(city: CityConfig, run_id: str, out: Path | None = None) -> Path:
    """Write the summary of night ``run_id`` to ``out`` (default:
    ``var/reports/run=<id>/linkage.html``) and return where it went."""
    html = render_linkage_page(linkage_data(city, run_id))
    path = out or reports_dir(city, run_id) / LINKAGE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, html)
    return path


def case_rows_of(data: Mapping[str, Any], entity: str) -> list[CaseMetrics]:
    """The truth section's rows of ``entity`` back as :class:`CaseMetrics` (for the terminal)."""
    return [CaseMetrics(**r) for r in data["truth"]["entities"].get(entity, [])]
