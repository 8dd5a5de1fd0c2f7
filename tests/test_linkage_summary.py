"""A night's linkage summary page (``var/reports/run=ID/linkage.html``), written by the night's
reports stage and by ``govmdm model summary``, opened in headless Chromium like the reports:
the charts' numbers are the warehouse's, the ID events are the night's beside the night
before, precision and recall per case kind equal a brute-force count over the sample city's
truth, the reports index links the page, and nothing personal is on it."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest
from sample_cities import CONFIG, NIGHT0, isolate
from test_linkage_html import chromium
from test_quality_reports import _Chromium, _png_is_not_blank
from typer.testing import CliRunner

from cli.main import app
from etl.config import CityConfig, load_city_config
from etl.extract import extract_all
from etl.sample_city.generate import generate_city, next_night
from etl.standardize import standardize_all
from fields.masking import ALL_KINDS, find_clear
from master_data.consolidate import consolidate
from master_data.evaluate import case_rows, load_truth
from pipeline.context import Night
from pipeline.night import build_reports, quality
from quality.linkage import histogram, linkage_data
from quality.report import INDEX_NAME, reports_dir, reports_root

__all__ = ["chromium"]  # the Chromium fixture, shared with the linkage pages' own tests

NIGHT1 = "2026-07-01"


def _night(city: CityConfig, run_id: str) -> None:
    assert all(r.ok for r in extract_all(city, run_id))
    assert all(r.status == "ok" for r in standardize_all(city, run_id))
    consolidate(city, run_id)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CityConfig]:
    """A 400-person city (70 enterprises: enough pairs to fit their model) with review-band
    pairs, two nights published; the second night's quality judged and its reports built by
    the night's own stages."""
    var = tmp_path_factory.mktemp("var")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, var)
        generate_city(var / "city", persons=400, enterprises=70, seed=7, review_band=True)
        c = load_city_config(CONFIG)
        _night(c, NIGHT0)
        next_night(var / "city")
        _night(c, NIGHT1)
        night = Night.open(CONFIG, NIGHT1)
        quality(night)
        build_reports(night)
        yield c


def _db(city: CityConfig) -> sqlite3.Connection:
    return sqlite3.connect(city.var_dir / "warehouse" / "govmdm.sqlite")


def test_histogram_bars_are_drawn_to_one_scale() -> None:
    h = histogram([(1, 2, "1", 40, "size"), (2, 3, "2", 10, "size"), (3, 4, "3", 0, "size")])
    assert [b.height for b in h.bins][2] == 0
    assert h.bins[0].height == pytest.approx(4 * h.bins[1].height, abs=0.2)
    log = histogram(
        [(0, 1, "0", 999, "auto"), (1, 2, "1", 9, "review")], [("review", 1.5)], log=True
    )
    assert log.bins[0].height == pytest.approx(3 * log.bins[1].height, abs=0.2)  # log10(1 + n)
    [(label, value, x)] = log.lines
    assert (label, value) == ("review", 1.5)
    assert x == pytest.approx((log.bins[1].x - 1 + log.bins[1].x + log.bins[1].width + 1) / 2)


def _brute_force(city: CityConfig, entity: str, kind: str) -> tuple[int, int, int]:
    """(true pairs, linked pairs, correct) touching the rows of ``kind``, pair by pair."""
    truth = load_truth(city.var_dir / "city")
    live = truth.rows[truth.rows["deleted_night"].isna()]
    live = live[live["entity_type"] == entity]
    who = {(r.department, r.source_key): r.entity_id for r in live.itertuples()}
    with _db(city) as db:
        cw = pd.read_sql(
            "SELECT department, source_key, master_id FROM mdm_crosswalk WHERE entity = ?",
            db,
            params=(entity,),
        )
    master = {
        (r.department, r.source_key): r.master_id
        for r in cw.itertuples()
        if (r.department, r.source_key) in who
    }
    if kind == "all":
        of_kind = set(who)
    else:
        rows = case_rows(truth, city.var_dir / "city")
        of_kind = {(r.department, r.source_key) for r in rows[rows["kind"] == kind].itertuples()}
    groups: dict[object, list[tuple[str, str]]] = {}
    for key, entity_id in who.items():  # a pair is true or linked only within one of these
        groups.setdefault(("truth", entity_id), []).append(key)
        if key in master:
            groups.setdefault(("master", master[key]), []).append(key)
    pairs = {p for g in groups.values() for p in itertools.combinations(sorted(g), 2)}
    true = linked = correct = 0
    for a, b in pairs:
        if a not in of_kind and b not in of_kind:
            continue
        same = who[a] == who[b]
        together = a in master and b in master and master[a] == master[b]
        true += same
        linked += together
        correct += same and together
    return true, linked, correct


_READ = """(() => {
  const sec = e => document.querySelector(`section[data-entity="${e}"]`);
  const bars = (e, id) => [...sec(e).querySelectorAll(`svg#${id}-${e} rect.bar`)].map(r =>
      [r.dataset.label, +r.dataset.count, r.dataset.band, r.getBBox().height]);
  const out = {};
  for (const e of ['person', 'enterprise']) {
    out[e] = {
      sizes: bars(e, 'sizes'),
      weights: bars(e, 'weights'),
      lines: [...sec(e).querySelectorAll('line.threshold')].map(l =>
          [l.dataset.band, +l.dataset.value]),
      counts: Object.fromEntries([...sec(e).querySelectorAll('td[data-count]')].map(td =>
          [td.dataset.count, +td.textContent])),
      events: Object.fromEntries([...sec(e).querySelectorAll('tr[data-night]')].map(tr =>
          [tr.dataset.night, Object.fromEntries([...tr.querySelectorAll('td[data-event]')].map(td =>
              [td.dataset.event, +td.textContent]))])),
      cases: Object.fromEntries(
          [...document.querySelectorAll(`table.cases[data-entity="${e}"] tr[data-kind]`)].map(tr =>
          [tr.dataset.kind, [...tr.cells].slice(2, 5).map(td => +td.textContent)])),
    };
  }
  return out;
})()"""


def test_the_nights_reports_stage_writes_the_page_and_the_index_links_it(
    city: CityConfig, chromium: _Chromium, tmp_path: Path
) -> None:
    page = reports_dir(city, NIGHT1) / "linkage.html"
    assert page.exists()
    assert not (reports_dir(city, NIGHT0) / "linkage.html").exists()  # no reports that night
    assert chromium.open((reports_root(city) / INDEX_NAME).as_uri()) == []
    href = chromium.evaluate(
        f"document.querySelector('tr[data-night=\"{NIGHT1}\"] td.linkage a').href"
    )
    assert unquote(href) == unquote(page.as_uri())
    assert chromium.open(href) == []
    assert chromium.evaluate("document.querySelector('h1').textContent") == f"{NIGHT1} 链接汇总"
    png = chromium.screenshot(tmp_path / "linkage.png")
    assert len(png) > 10_000 and _png_is_not_blank(png)
    back = chromium.evaluate("document.querySelector('nav a').href")
    assert unquote(back) == unquote((reports_root(city) / INDEX_NAME).as_uri())


def test_the_pages_numbers_are_the_warehouses_and_the_truths(
    city: CityConfig, chromium: _Chromium
) -> None:
    page = reports_dir(city, NIGHT1) / "linkage.html"
    text = page.read_text(encoding="utf-8")
    truth = load_truth(city.var_dir / "city")
    known = [
        str(v) for c in ("name", "id_number", "phone", "address") for v in truth.persons[c].dropna()
    ]
    assert find_clear(text, known=known, kinds=ALL_KINDS) == []
    assert chromium.open(page.as_uri()) == []
    shown = chromium.evaluate(_READ)
    with _db(city) as db:
        for entity in ("person", "enterprise"):
            got = shown[entity]
            sizes = pd.read_sql(
                "SELECT count(*) AS n FROM mdm_crosswalk WHERE entity = ? GROUP BY master_id",
                db,
                params=(entity,),
            )["n"]
            want = sizes.clip(upper=10).value_counts()
            assert [c for _, c, _, _ in got["sizes"]] == [int(want.get(s, 0)) for s in range(1, 11)]
            assert got["counts"]["masters"] == len(sizes)
            assert got["counts"]["records"] == int(sizes.sum())
            # the bars are drawn to their counts
            top = max(got["sizes"], key=lambda b: b[1])
            for _, count, _, height in got["sizes"]:
                assert height == pytest.approx(count / top[1] * top[3], abs=0.6)
            # every scored pair is in one bar; the bands match the thresholds drawn
            assert sum(c for _, c, _, _ in got["weights"]) == got["counts"]["pairs"] > 0
            assert dict(got["lines"]) == pytest.approx(
                {"review": 0.0, "auto_link": 6.6294}, abs=1e-4
            )
            assert {band for _, c, band, _ in got["weights"] if c} <= {"below", "review", "auto"}
            # tonight's ID events and the night before's, as mdm_id_event holds them
            events = dict(
                db.execute(
                    "SELECT run_id || '/' || event, count(*) FROM mdm_id_event "
                    "WHERE entity = ? GROUP BY run_id, event",
                    (entity,),
                ).fetchall()
            )
            for night, run in (("tonight", NIGHT1), ("previous", NIGHT0)):
                for event, n in got["events"][night].items():
                    assert n == events.get(f"{run}/{event}", 0), (entity, night, event)
            # precision and recall per case kind, against a pair-by-pair count
            assert got["cases"]["all"] == list(_brute_force(city, entity, "all"))
        person = shown["person"]
        assert person["counts"]["review_queue"] > 0  # the review band is on the chart
        assert any(c for _, c, band, _ in person["weights"] if band == "review")
        assert sum(person["events"]["tonight"].values()) > 0
        assert (
            person["events"]["previous"]["issued"]
            == db.execute(
                "SELECT count(*) FROM mdm_id_event WHERE entity = 'person' AND run_id = ? "
                "AND event = 'issued'",
                (NIGHT0,),
            ).fetchone()[0]
        )
        for kind in ("twin", "homophone", "missing", "walk_in"):
            assert person["cases"][kind] == list(_brute_force(city, "person", kind)), kind
        assert shown["enterprise"]["cases"]["branch"] == list(
            _brute_force(city, "enterprise", "branch")
        )


def test_model_summary_prints_the_figures_and_writes_the_page(
    city: CityConfig, tmp_path: Path
) -> None:
    out = tmp_path / "summary.html"
    args = ["model", "summary", "--config", str(CONFIG), "--run-id", NIGHT1, "--html", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    data = linkage_data(city, NIGHT1)
    person = data["entities"]["person"]
    assert f"Linkage of night {NIGHT1}, beside {NIGHT0}" in result.output
    assert (
        f"{person['masters']:,}" in result.output
        and "pairs touching each case kind" in result.output
    )
    assert out.read_text(encoding="utf-8") == (
        reports_dir(city, NIGHT1) / "linkage.html"
    ).read_text(encoding="utf-8")
    assert f"Linkage summary: {out.resolve()}" in result.output
    first = ["model", "summary", "--config", str(CONFIG), "--run-id", NIGHT0]
    old = CliRunner().invoke(app, first, env={"COLUMNS": "200"})
    assert old.exit_code == 0, old.output
    assert "真值只描述最新一晚" in old.output  # the truth is of the latest night only
    assert (reports_dir(city, NIGHT0) / "linkage.html").exists()
    index = (reports_root(city) / INDEX_NAME).read_text(encoding="utf-8")
    assert f'href="run={NIGHT0}/linkage.html"' in index
    never = CliRunner().invoke(
        app, ["model", "summary", "--config", str(CONFIG), "--run-id", "2026-01-01"]
    )
    assert never.exit_code == 1 and "was not published" in never.output
