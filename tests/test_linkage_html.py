"""Linkage you can see: ``govmdm model show`` and ``govmdm explain --html`` in the terminal and
as self-contained pages, opened in headless Chromium (as the quality reports are): the numbers
on the page are the model's, nothing is fetched, and no personal data is in clear."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sample_cities import CityFactory
from test_quality_reports import _Chromium, _in_ci
from typer.testing import CliRunner

import master_data.published as published_module
from access.explain import mask_explanation
from access.release import release_of
from cli.main import app
from etl.config import CityConfig
from fields.masking import ALL_KINDS, find_clear
from master_data.explain import explain
from master_data.model import FellegiSunter
from master_data.published import published_night
from web.linkage import cluster_graph, link_weights, model_levels, model_page, weight_chart

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "config")
SHOTS = Path(os.environ.get("GOVMDM_SHOTS", "")) if os.environ.get("GOVMDM_SHOTS") else None

_READ_PAGE = """(() => ({
  levels: [...document.querySelectorAll('#levels tr[data-feature]')].map(tr =>
    [tr.dataset.feature, +tr.dataset.level, ...[...tr.cells].slice(3).map(td => td.textContent)]),
  bars: [...document.querySelectorAll('#weights-chart rect.bar')].map(r =>
    [r.dataset.feature, +r.dataset.weight, r.getBBox().width]),
  bands: Object.fromEntries([...document.querySelectorAll('#bands tr[data-band]')].map(tr =>
    [tr.dataset.band, tr.cells[1].textContent])),
}))()"""


@pytest.fixture(scope="module")
def published(make_city: CityFactory) -> Iterator[CityConfig]:
    """A copy of a published night (the consolidation tests' build; explain audits into it)."""
    with pytest.MonkeyPatch.context() as mp:
        yield make_city(mp, persons=900, enterprises=90, seed=7, until="published", copy=True)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Chromium]:
    exe = os.environ.get("GOVMDM_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    if exe is None:
        if _in_ci():
            pytest.fail("headless Chromium not found; CI=true requires it", pytrace=False)
        pytest.skip("headless Chromium not found (apt-get install chromium)")
    with _Chromium(exe, tmp_path_factory.mktemp("chromium")) as browser:
        yield browser


def test_levels_carry_the_models_numbers_and_the_comparisons_names() -> None:
    model = FellegiSunter(
        m={"sex": [0.125, 0.875], "name": [0.1, 0.2, 0.7]},
        u={"sex": [0.5, 0.5], "name": [0.8, 0.15, 0.05]},
        prior=0.2,
    )
    rows = model_levels(model, "person")
    assert [(r.feature, r.level, r.label_zh) for r in rows][:2] == [
        ("sex", 0, "不同"),
        ("sex", 1, "相同"),
    ]
    assert [r.weight for r in rows] == [w for f in model.m for w in model.level_weights()[f]]
    chart = weight_chart(model.prior_weight, rows)
    zero = chart.zero
    # the prior first; bars for negative weights end at zero, positive ones start there
    assert [b.kind for b in chart.bars] == ["prior", "down", "up", "down", "up", "up"]
    assert all(abs(b.x + b.width - zero) < 1e-9 for b in chart.bars if b.kind != "up")
    assert all(abs(b.x - zero) < 1e-9 for b in chart.bars if b.kind == "up")
    assert dict(chart.ticks)[0] == zero  # the zero line is drawn, whatever the range


def test_model_show_prints_levels_bands_and_writes_the_page(
    published: CityConfig, chromium: _Chromium, tmp_path: Path
) -> None:
    out = tmp_path / "model.html"
    result = CliRunner().invoke(
        app, ["model", "show", "--config", CONFIG, "--entity", "person", "--html", str(out)]
    )
    assert result.exit_code == 0, result.output
    night = published_night(published)
    model = FellegiSunter.from_json((night.state_dir / "person" / "model.json").read_text())
    assert f"λ = {model.prior:.6g}" in result.output
    assert "auto_link 0.99" in result.output and "review 0.5" in result.output
    for f in model.features:
        assert f in result.output
    assert f"{model.level_weights()['id_number'][-1]:+.2f}" in result.output

    text = out.read_text(encoding="utf-8")
    assert find_clear(text, kinds=ALL_KINDS) == []
    assert chromium.open(out.as_uri()) == []
    page = chromium.evaluate(_READ_PAGE)
    expected = [
        [r.feature, r.level, f"{r.m:.6g}", f"{r.u:.6g}", f"{r.weight:+.2f}"]
        for r in model_levels(model, "person")
    ]
    assert page["levels"] == expected
    weights = [model.prior_weight, *(w for f in model.m for w in model.level_weights()[f])]
    assert [b[0] for b in page["bars"]] == ["prior", *(r[0] for r in expected)]
    assert [b[1] for b in page["bars"]] == pytest.approx(weights)
    # drawn to one scale: each bar's width is proportional to its weight
    scale = max(b[2] for b in page["bars"]) / max(abs(w) for w in weights)
    for _, weight, width in page["bars"]:
        assert width == pytest.approx(max(abs(weight) * scale, 1.0), abs=0.6)
    assert page["bands"] == {
        "prior": f"{model.prior:.6g}",
        "auto_link": "0.99",
        "review": "0.5",
        "keep": "0.01",
    }
    if SHOTS is not None:
        chromium.screenshot(SHOTS / "model-person.png")


def test_model_show_of_enterprises_and_of_an_unknown_entity(published: CityConfig) -> None:
    result = CliRunner().invoke(
        app, ["model", "show", "--config", CONFIG, "--entity", "enterprise"]
    )
    assert result.exit_code == 0, result.output
    model = FellegiSunter.from_json(
        (published_night(published).state_dir / "enterprise" / "model.json").read_text()
    )
    assert "Match model of enterprise" in result.output and "uscc" in result.output
    assert f"λ = {model.prior:.6g}" in result.output
    wrong = CliRunner().invoke(app, ["model", "show", "--config", CONFIG, "--entity", "firm"])
    assert wrong.exit_code == 2 and "person or enterprise" in wrong.output


def test_model_show_without_a_published_night_says_what_to_do(
    make_city: CityFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_city(monkeypatch, persons=300, enterprises=60, seed=3, until="generated")
    result = CliRunner().invoke(app, ["model", "show", "--config", CONFIG])
    assert result.exit_code == 1
    assert "nothing is published yet" in result.output


def test_model_page_is_self_contained() -> None:
    model = FellegiSunter(m={"sex": [0.125, 0.875]}, u={"sex": [0.5, 0.5]}, prior=0.2)
    page = model_page(model, "person", thresholds={"auto_link": 0.99, "review": 0.5})
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    assert "https://" not in page


_READ_EXPLAIN = """(() => ({
  nodes: [...document.querySelectorAll('#cluster-graph circle.node')].map(c => c.dataset.record),
  edges: [...document.querySelectorAll('#cluster-graph line.edge')].map(l =>
    [l.dataset.left, l.dataset.right]),
  waterfalls: [...document.querySelectorAll('svg.waterfall')].map(svg =>
    [+svg.dataset.probability,
     [...svg.querySelectorAll('rect.step')].map(r => [r.dataset.feature, +r.dataset.weight])]),
  text: document.body.innerText,
}))()"""


def _linked_master(city: CityConfig) -> str:
    """A person whose cluster has three or more member rows (so links the model scored)."""
    with sqlite3.connect(city.var_dir / "warehouse" / "govmdm.sqlite") as db:
        row = db.execute(
            "SELECT master_id FROM mdm_crosswalk WHERE entity = 'person' GROUP BY master_id "
            "HAVING count(*) >= 3 ORDER BY count(*) DESC, master_id LIMIT 1"
        ).fetchone()
    return str(row[0])


def test_cluster_graph_puts_members_on_a_circle_and_links_between_them() -> None:
    links = [
        {"left": "a", "right": "b", "why": "rule: same ID number; p = 0.9990", "weights": ""},
        {"left": "b", "right": "c", "why": "p = 0.7 (not used: below)", "weights": ""},
    ]
    graph = cluster_graph(["a", "b", "c"], links)
    cx, cy = graph.width / 2, graph.height / 2
    radii = {round(((n.x - cx) ** 2 + (n.y - cy) ** 2) ** 0.5, 6) for n in graph.nodes}
    assert len(radii) == 1 and radii.pop() > 0
    assert [(e.left.record, e.right.record, e.label, e.used) for e in graph.edges] == [
        ("a", "b", "same ID number", True),
        ("b", "c", "p = 0.7", False),
    ]
    single = cluster_graph(["a"], [])
    assert [(n.x, n.y) for n in single.nodes] == [(single.width / 2, single.height / 2)]


def test_explain_page_is_masked_and_its_waterfalls_are_the_models(
    published: CityConfig, chromium: _Chromium, tmp_path: Path
) -> None:
    master = _linked_master(published)
    out = tmp_path / "explain.html"
    result = CliRunner().invoke(app, ["explain", master, "--config", CONFIG, "--html", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    clear = explain(published, master)  # what a privileged user would see
    known = [
        str(v)
        for m in clear.members
        for c, v in m.items()
        if v and c in ("name", "id_number", "phone", "address")
    ]
    assert known and find_clear(text, known=known, kinds=ALL_KINDS) == []
    assert chromium.open(out.as_uri()) == []
    page = chromium.evaluate(_READ_EXPLAIN)
    assert master in page["text"] and "已脱敏" in page["text"]
    shown = mask_explanation(clear, release_of(published))  # as the terminal shows it
    assert page["nodes"] == [m["record"] for m in shown.members]
    assert len(page["nodes"]) >= 3
    assert page["edges"] == [[lk["left"], lk["right"]] for lk in shown.links]
    assert len(page["waterfalls"]) == len(shown.links) >= 2

    model = FellegiSunter.from_json(
        (published_night(published).state_dir / "person" / "model.json").read_text()
    )
    for (probability, steps), link in zip(page["waterfalls"], shown.links, strict=True):
        weights = link_weights(model, "person", link["weights"])
        assert [f for f, _ in steps] == ["先验", *(w["feature"] for w in weights), "合计"]
        expected = [model.prior_weight, *(w["weight"] for w in weights)]
        assert [w for _, w in steps[:-1]] == pytest.approx(expected)
        assert steps[-1][1] == pytest.approx(sum(expected))
        said = float(re.search(r"p = ([0-9.]+)", link["why"]).group(1))  # type: ignore[union-attr]
        assert probability == pytest.approx(said, abs=5e-5)
    if SHOTS is not None:
        chromium.screenshot(SHOTS / "explain-person.png")


def test_explain_page_is_in_clear_only_for_the_privileged(
    published: CityConfig, tmp_path: Path
) -> None:
    master = _linked_master(published)
    out = tmp_path / "explain.html"
    args = ["explain", master, "--config", CONFIG, "--privileged", "--html", str(out)]
    result = CliRunner().invoke(app, args)  # on SQLite, the warehouse file's owner
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert "特权：明文显示" in text
    ids = {str(m["id_number"]) for m in explain(published, master).members if m["id_number"]}
    assert ids and all(i in text for i in ids) and find_clear(text)


def test_explain_without_a_readable_model_writes_no_page(
    published: CityConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    night = published_night(published)
    monkeypatch.setattr(
        published_module,
        "published_night",
        lambda city: dataclasses.replace(night, state_dir=tmp_path / "gone"),
    )
    out = tmp_path / "explain.html"
    args = ["explain", _linked_master(published), "--config", CONFIG, "--html", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "No page written" in result.output
    assert not out.exists()
