"""The browsable reports: ``var/reports/index.html`` (nights × departments) and a history page
per rule, opened in headless Chromium like the reports themselves.

The warehouse is the one ``test_quality_reports`` fills by hand (three nights, three
departments, personal data in clear where a careless suite might leave it); here every night's
reports are built, so the index has a full grid to link.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import sqlalchemy as sa
from test_quality_reports import (
    CLEAR,
    DEPARTMENTS,
    ID_B,
    NIGHTS,
    ROOT,
    RULES,
    _Chromium,
    _fill,
    _png_is_not_blank,
    browser,
)

from etl.config import CityConfig, load_city_config
from fields.masking import find_clear
from quality.report import INDEX_NAME, build_reports, reports_root, rule_page
from store.warehouse import engine_for

__all__ = ["browser"]  # the Chromium fixture, shared with the reports' own tests


@dataclass
class Built:
    city: CityConfig
    root: Path
    engine: sa.Engine


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    var = tmp_path_factory.mktemp("var")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GOVMDM_VAR", str(var))
        mp.delenv("GOVMDM_WAREHOUSE_URL", raising=False)
        city = load_city_config(ROOT / "config")
        engine = engine_for(f"sqlite:///{var / 'warehouse.sqlite'}")
        _fill(engine)
        mp.setenv("GOVMDM_WAREHOUSE_URL", str(engine.url))
        for night in NIGHTS:
            build_reports(city, night, engine=engine)
        yield Built(city, reports_root(city), engine)
    engine.dispose()


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def _pages(root: Path) -> list[Path]:
    return sorted(root.rglob("*.html"))


def test_every_link_of_every_page_resolves_to_a_file(
    reports: Built,
) -> None:
    root = reports.root
    pages = _pages(root)
    assert root / INDEX_NAME in pages
    assert len([p for p in pages if p.parent.parent.name == "rules"]) == len(RULES)
    linked: set[Path] = set()
    for page in pages:
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        assert parser.hrefs, f"{page} links nowhere"
        for href in parser.hrefs:
            assert not urlparse(href).scheme, (page, href)
            target = (page.parent / unquote(href)).resolve()
            assert target.is_file(), (page.relative_to(root), href)
            linked.add(target)
    # every page is reachable: the grid, the overviews and the rule pages are all linked
    assert {p.resolve() for p in pages} - {(root / INDEX_NAME).resolve()} <= linked


def test_the_index_has_a_cell_per_night_and_department(reports: Built) -> None:
    root = reports.root
    html = (root / INDEX_NAME).read_text(encoding="utf-8")
    for night in NIGHTS:
        assert f'href="run={night}/overview.html"' in html
        for dept in DEPARTMENTS:
            assert f'href="run={night}/{dept}.html"' in html
    assert html.index(f'data-night="{NIGHTS[-1]}"') < html.index(f'data-night="{NIGHTS[0]}"')
    for rule, r in RULES.items():
        assert f'href="{rule_page(r["dept"], rule)}"' in html
    overview = (root / f"run={NIGHTS[-1]}" / "overview.html").read_text(encoding="utf-8")
    assert '<a href="gongan.html"><code>gongan.html</code></a>' in overview


def test_no_personal_data_in_clear_in_the_index_or_rule_pages(
    reports: Built,
) -> None:
    root = reports.root
    for page in [root / INDEX_NAME, *sorted((root / "rules").rglob("*.html"))]:
        text = page.read_text(encoding="utf-8")
        assert find_clear(text) == [], page
        assert not [v for v in CLEAR if v in text], page
    keys = (root / rule_page("renshe", "RS-PER-002")).read_text(encoding="utf-8")
    assert ID_B not in keys and f"{ID_B[:6]}********{ID_B[-4:]}" in keys


_RULE_CHART = """(() => {
  const svg = document.querySelector('svg#rule-chart');
  if (!svg) return null;
  const drawn = [...svg.querySelectorAll('circle.point')].filter(c => {
    const b = c.getBoundingClientRect(); return b.width > 0 && b.height > 0; });
  return {declared: Number(svg.dataset.points), points: drawn.length,
          xs: drawn.map(c => Number(c.getAttribute('cx')))};
})()"""
_LINKS = "[...document.links].map(a => a.href)"


@pytest.mark.parametrize(
    ("dept", "rule", "judged"),
    [("gongan", "GA-PER-001", 3), ("renshe", "RS-PER-001", 3), ("gongan", "GA-PER-005", 1)],
)
def test_a_rule_page_charts_one_point_per_judged_night_in_chromium(
    reports: Built, browser: _Chromium, dept: str, rule: str, judged: int
) -> None:
    root = reports.root
    page = root / rule_page(dept, rule)
    assert browser.open(page.as_uri()) == []
    chart = browser.evaluate(_RULE_CHART)
    # GA-PER-005: failed, absent, could not run — one night judged, one point
    assert chart is not None and chart["points"] == chart["declared"] == judged, chart
    assert chart["xs"] == sorted(chart["xs"])
    for href in browser.evaluate(_LINKS):
        assert Path(unquote(urlparse(href).path)).is_file(), href


def test_the_index_renders_in_chromium_and_its_links_resolve(
    reports: Built, browser: _Chromium, tmp_path: Path
) -> None:
    root = reports.root
    assert browser.open((root / INDEX_NAME).as_uri()) == []
    cells = browser.evaluate("document.querySelectorAll('#nights td[data-department] a').length")
    assert cells == len(NIGHTS) * len(DEPARTMENTS)
    hrefs = browser.evaluate(_LINKS)
    assert len(hrefs) == cells + len(NIGHTS) + len(RULES)
    for href in hrefs:
        assert Path(unquote(urlparse(href).path)).is_file(), href
    png = browser.screenshot(tmp_path / "index.png")
    assert _png_is_not_blank(png)


def test_a_rerun_removes_the_pages_of_rules_no_longer_judged(
    reports: Built,
) -> None:
    root = reports.root
    stale = root / rule_page("gongan", "GA-GONE-001")
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("<p>old</p>", encoding="utf-8")
    build_reports(reports.city, NIGHTS[-1], engine=reports.engine)
    assert not stale.exists() and (root / rule_page("gongan", "GA-PER-001")).exists()
