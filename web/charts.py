"""What the review page draws: the differing characters of two values, and the match weights
as a waterfall (inline SVG, laid out here so the template only places shapes).

>>> [(s.text, s.differs) for s in highlight("肖明华", "肖明化")]
[('肖明', False), ('华', True)]
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Segment:
    """A run of characters of one value, and whether it differs from the other value."""

    text: str
    differs: bool


def highlight(value: str | None, other: str | None) -> list[Segment]:
    """``value`` cut into runs that the other value shares and runs it does not."""
    if value is None:
        return []
    if other is None:
        return [Segment(value, True)]
    out: list[Segment] = []
    matcher = difflib.SequenceMatcher(None, value, other, autojunk=False)
    for tag, i1, i2, _j1, _j2 in matcher.get_opcodes():
        if i2 > i1:
            out.append(Segment(value[i1:i2], tag != "equal"))
    return out


@dataclass(frozen=True)
class Bar:
    """One bar of the waterfall: where it starts and ends (log2 odds) and how it is drawn."""

    label: str
    sublabel: str
    start: float
    end: float
    kind: str  # prior | up | down | total
    x: float = 0.0
    y: float = 0.0
    height: float = 0.0
    value: str = ""


@dataclass(frozen=True)
class Waterfall:
    """The laid-out waterfall: bars, the bands' lines (label, y) and the chart's size."""

    bars: list[Bar]
    width: float
    height: float
    bar_width: float
    lines: list[tuple[str, float]]
    probability: float


def log2_odds(p: float) -> float:
    """log2(p / (1 − p)): where a probability sits on the waterfall's scale."""
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log2(p / (1 - p))


def waterfall(
    prior: float,
    weights: list[dict[str, Any]],
    *,
    bands: tuple[float, ...] = (),
    height: float = 260,
) -> Waterfall:
    """The prior log2 odds, then each field's weight, then the total, as Splink draws it;
    a dashed line at each probability of ``bands`` (the review and auto-link thresholds)."""
    steps = [("先验", "λ", prior, "prior")]
    steps += [
        (
            str(w["feature"]),
            str(w["label"]),
            float(w["weight"]),
            "up" if w["weight"] >= 0 else "down",
        )
        for w in weights
    ]
    level, spans = 0.0, []
    for label, sub, weight, kind in steps:
        start = 0.0 if kind == "prior" else level
        level = start + weight
        spans.append((label, sub, start, level, kind))
    spans.append(("合计", "log₂ odds", 0.0, level, "total"))
    marks = [log2_odds(b) for b in bands]
    top = max(0.0, *marks, *(max(s[2], s[3]) for s in spans))
    bottom = min(0.0, *marks, *(min(s[2], s[3]) for s in spans))
    plot, pad = height - 70, 20.0
    scale = plot / ((top - bottom) or 1.0)

    def y(v: float) -> float:
        return pad + (top - v) * scale

    bar_width, gap = 56.0, 18.0
    bars = [
        Bar(
            label,
            sub,
            start,
            end,
            kind,
            x=40 + i * (bar_width + gap),
            y=y(max(start, end)),
            height=max(abs(end - start) * scale, 1.0),
            value=f"{end - start:+.1f}" if kind not in ("total",) else f"{end:+.1f}",
        )
        for i, (label, sub, start, end, kind) in enumerate(spans)
    ]
    return Waterfall(
        bars=bars,
        width=80 + len(bars) * (bar_width + gap),
        height=height,
        bar_width=bar_width,
        lines=[(f"p={b:g}", y(m)) for b, m in zip(bands, marks, strict=True)],
        probability=1 / (1 + math.pow(2.0, -level)),
    )
