"""Linkage you can see: the match model as a page (``govmdm model show --html``), and an
explanation as a page (``govmdm explain REF --html``).

Each comparison's levels with m, u and match weight log2(m/u), drawn as horizontal bars around
zero as Splink's ``match_weights_chart`` draws them, with the prior λ as the first bar and the
band thresholds beside them. The page is one self-contained file: inline CSS and SVG, no
script, nothing fetched.

The explanation page shows the golden record with where each value came from, the cluster as a
graph (member records on a circle, links as lines labelled by rule or probability; dashed where
a link was not used) and, for each link the model scored, its match weights as a waterfall.

>>> from master_data.model import FellegiSunter
>>> model = FellegiSunter(m={"sex": [0.125, 0.875]}, u={"sex": [0.5, 0.5]}, prior=0.2)
>>> [(r.feature, r.level, round(r.weight, 1)) for r in model_levels(model, "person")]
[('sex', 0, -2.0), ('sex', 1, 0.8)]
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from master_data.compare import features_for
from master_data.model import FellegiSunter
from web.charts import log2_odds, waterfall

__all__ = [
    "ClusterGraph",
    "LevelRow",
    "WeightChart",
    "cluster_graph",
    "explain_page",
    "link_weights",
    "model_levels",
    "model_page",
    "weight_chart",
]

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class LevelRow:
    """One level of one comparison: its name, m, u and match weight log2(m/u)."""

    feature: str
    level: int
    label: str
    label_zh: str
    m: float
    u: float
    weight: float


@dataclass(frozen=True)
class WeightBar:
    """One horizontal bar: a level's weight (or the prior's), laid out in pixels."""

    feature: str
    label: str
    weight: float
    x: float
    y: float
    width: float
    kind: str  # prior | up | down


@dataclass(frozen=True)
class WeightChart:
    """The laid-out chart: bars, the zero line's x, ticks (value, x) and the chart's size."""

    bars: list[WeightBar]
    zero: float
    ticks: list[tuple[int, float]]
    width: float
    height: float
    row: float
    left: float


def model_levels(model: FellegiSunter, entity: str) -> list[LevelRow]:
    """Every level of every comparison of ``model``, in model order, named as the comparisons
    of ``entity`` name them (``level k`` where a comparison is not known)."""
    known = {f.label: f for f in features_for(entity)}
    weights = model.level_weights()
    rows = []
    for f in model.features:
        comp = known.get(f)
        for level, (m, u) in enumerate(zip(model.m[f], model.u[f], strict=True)):
            names = comp.levels if comp is not None else ()
            names_zh = comp.levels_zh if comp is not None else ()
            label = names[level] if level < len(names) else f"level {level}"
            label_zh = names_zh[level] if level < len(names_zh) else label
            rows.append(LevelRow(f, level, label, label_zh, m, u, weights[f][level]))
    return rows


def weight_chart(prior_weight: float, rows: list[LevelRow], *, width: float = 760) -> WeightChart:
    """Horizontal bars of the prior and each level's weight around a zero line."""
    left, row, top = 230.0, 22.0, 24.0
    values = [prior_weight, *(r.weight for r in rows)]
    low = math.floor(min(0.0, *values))
    high = math.ceil(max(0.0, *values))
    plot = width - left - 20
    scale = plot / ((high - low) or 1)

    def x(v: float) -> float:
        return left + (v - low) * scale

    entries = [("prior", "λ", prior_weight, "prior")]
    entries += [(r.feature, r.label, r.weight, "up" if r.weight >= 0 else "down") for r in rows]
    bars = [
        WeightBar(
            feature,
            label,
            weight,
            x=min(x(0.0), x(weight)),
            y=top + i * row,
            width=max(abs(weight) * scale, 1.0),
            kind=kind,
        )
        for i, (feature, label, weight, kind) in enumerate(entries)
    ]
    step = max(1, math.ceil((high - low) / 12))
    first = math.ceil(low / step) * step  # multiples of step, so that zero is a tick
    ticks = [(t, x(t)) for t in range(first, int(high) + 1, step)]
    height = top + len(bars) * row + 30
    return WeightChart(bars, x(0.0), ticks, width, height, row, left)


def model_page(
    model: FellegiSunter,
    entity: str,
    *,
    thresholds: dict[str, float],
    run_id: str | None = None,
) -> str:
    """The model of ``entity`` as one self-contained HTML page; ``thresholds`` maps a band
    (auto_link, review, keep) to its match probability."""
    rows = model_levels(model, entity)
    bands = [(name, p, log2_odds(p)) for name, p in thresholds.items()]
    return (
        _env()
        .get_template("model.html")
        .render(
            entity=entity,
            run_id=run_id,
            model=model,
            rows=rows,
            chart=weight_chart(model.prior_weight, rows),
            bands=bands,
        )
    )


@dataclass(frozen=True)
class Node:
    """A member record on the cluster graph."""

    record: str
    x: float
    y: float
    label_x: float = 0.0
    label_y: float = 0.0
    anchor: str = "middle"  # text-anchor of its label, which sits outside the circle

    @property
    def short(self) -> str:
        """department/key: the record without its table (the full ID is the node's title)."""
        parts = self.record.split("/")
        return f"{parts[0]}/{parts[-1]}" if len(parts) > 2 else self.record


@dataclass(frozen=True)
class Edge:
    """A link between two members: what it says (rule or probability) and whether it was used."""

    left: Node
    right: Node
    label: str
    used: bool


@dataclass(frozen=True)
class ClusterGraph:
    """Records on a circle, links as the lines between them."""

    nodes: list[Node]
    edges: list[Edge]
    width: float
    height: float


_WEIGHT = re.compile(r"(\w+)=([^\s,]+) [+-]\d")


def link_label(why: str) -> str:
    """The short label of a link on the graph: its rule, else its probability.

    >>> link_label("rule: same ID number; p = 0.9990")
    'same ID number'
    >>> link_label("p = 0.9731 (not used: a stronger link joined them)")
    'p = 0.9731'
    """
    if why.startswith("rule: "):
        return why[len("rule: ") :].split(";")[0]
    return why.split(" (")[0]


def cluster_graph(
    members: list[str], links: list[dict[str, str]], size: float = 420
) -> ClusterGraph:
    """The members on a circle (a single one in the middle) and the links among them."""
    records = list(
        dict.fromkeys([*members, *(r for lk in links for r in (lk["left"], lk["right"]))])
    )
    n = len(records)
    size = max(size, min(60.0 * n + 200, 900.0))
    centre, radius = size / 2, size / 2 - 90
    margin = 130.0  # either side, for the labels of the nodes on the left and right
    nodes = {}
    for i, r in enumerate(records):
        angle = 2 * math.pi * i / n - math.pi / 2
        cos, sin = (math.cos(angle), math.sin(angle)) if n > 1 else (0.0, 1.0)
        spread = radius if n > 1 else 0.0
        nodes[r] = Node(
            r,
            margin + centre + spread * cos,
            centre + spread * sin,
            label_x=margin + centre + (spread + 14) * cos,
            label_y=centre + (spread + 14) * sin + 4,
            anchor="start" if cos > 0.3 else "end" if cos < -0.3 else "middle",
        )
    edges = [
        Edge(
            nodes[lk["left"]],
            nodes[lk["right"]],
            link_label(lk["why"]),
            "(not used" not in lk["why"],
        )
        for lk in links
    ]
    return ClusterGraph(list(nodes.values()), edges, size + 2 * margin, size)


def link_weights(model: FellegiSunter, entity: str, text: str) -> list[dict[str, Any]]:
    """The field weights of a link (explain's ``feature=level …`` text) as the model has them:
    the exact log2(m/u) of each level, 0 where a side had no value."""
    names = {f.label: list(f.levels) for f in features_for(entity)}
    weights = model.level_weights()
    out: list[dict[str, Any]] = []
    for feature, label in _WEIGHT.findall(text):
        if feature not in weights:
            continue
        levels = names.get(feature, [])
        level = levels.index(label) if label in levels else int(label) if label.isdigit() else None
        out.append(
            {
                "feature": feature,
                "label": label,
                "weight": 0.0 if level is None else weights[feature][level],
            }
        )
    return out


def explain_page(
    ex: Any, model: FellegiSunter, *, thresholds: dict[str, float], privileged: bool
) -> str:
    """An explanation (:func:`master_data.explain.explain`, masked by
    :func:`access.explain.mask_explanation` unless ``privileged``) as one self-contained page:
    the golden record with provenance, the cluster as a graph, a waterfall per scored link."""
    bands = tuple(sorted(p for k, p in thresholds.items() if k in ("review", "auto_link")))
    pairs = [
        (
            lk,
            waterfall(
                model.prior_weight, link_weights(model, ex.entity, lk["weights"]), bands=bands
            ),
        )
        for lk in ex.links
    ]
    members = [str(m["record"]) for m in ex.members if m.get("record")]
    return (
        _env()
        .get_template("explain.html")
        .render(
            ex=ex,
            graph=cluster_graph(members, ex.links),
            pairs=pairs,
            privileged=privileged,
        )
    )


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
