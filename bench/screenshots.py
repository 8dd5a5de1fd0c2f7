"""Screenshots of govmdm's pages for the README, taken in headless Chromium (Selenium).

    .venv/bin/python bench/screenshots.py [--var DIR] [--out docs/screenshots]

Builds a sample city of 600 persons and 70 enterprises (review-band pairs planted) in a
temporary var folder and runs two nights of it with ``govmdm run`` — or, with ``--var``, uses
that folder as it is if a night is published there — then photographs: the review page with a
pair, the match model's weights chart, an explain page, the reports index, a rule's history
and the night's linkage summary (its top, and its precision/recall per case kind). Each PNG
is 1280 px wide and at most 250 KB (the height is cut until it fits); Chinese text needs a CJK
font (Debian: fonts-wqy-zenhei, as .ci/run installs with chromium and chromium-driver). Prints
each file with a line saying what it shows.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NIGHTS = ("2026-06-30", "2026-07-01")
WIDTH = 1280
MAX_BYTES = 250_000
HEIGHTS = (1600, 1300, 1100, 900, 760, 640)
TOKEN = "screenshots-only-token-0123456789"


def _govmdm(var: Path, *args: str, ok: tuple[int, ...] = (0,)) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOVMDM_", "AIRFLOW_CONN_"))}
    env |= {"GOVMDM_VAR": str(var), "COLUMNS": "200"}
    config = [] if args[0] == "sample" else ["--config", str(ROOT / "config")]
    cmd = [str(ROOT / ".venv" / "bin" / "govmdm"), *args, *config]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode not in ok:
        sys.exit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def build_city(var: Path) -> None:
    """Two nights of a small sample city, as `make demo` would run them without Airflow."""
    _govmdm(var, "sample", "--out", str(var / "city"), "--persons", "600", "--enterprises", "70",
            "--seed", "7")  # fmt: skip
    _govmdm(var, "run", "--run-id", NIGHTS[0], ok=(0, 1))
    _govmdm(var, "sample", "--out", str(var / "city"), "--next-night")
    _govmdm(var, "run", "--run-id", NIGHTS[1], ok=(0, 1))


def _driver() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = os.environ.get("GOVMDM_CHROMIUM") or shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        sys.exit("chromium and chromedriver are needed: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    size = f"--window-size={WIDTH},{HEIGHTS[0]}"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", size):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def _png_size(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def shoot(driver: Any, url: str, out: Path) -> tuple[int, int, int]:
    """The page at ``url`` as a PNG of ``WIDTH`` px, as tall as fits in ``MAX_BYTES``."""
    driver.get(url)
    time.sleep(0.3)
    page = int(driver.execute_script("return document.documentElement.scrollHeight"))
    anchor = url.partition("#")[2]
    for height in dict.fromkeys(min(page, h) for h in HEIGHTS):
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        if anchor:
            driver.execute_script(f"document.getElementById('{anchor}').scrollIntoView()")
        data = driver.get_screenshot_as_png()
        if len(data) <= MAX_BYTES:
            break
    else:
        sys.exit(f"{out.name}: {len(data):,} bytes even at {height} px tall")
    out.write_bytes(data)
    return (*_png_size(data), len(data))


@contextlib.contextmanager
def review_server(var: Path) -> Iterator[str]:
    """The review page of the city in ``var`` on a free port of 127.0.0.1."""
    import uvicorn

    from etl.config import load_city_config
    from web.app import HOST, create_app

    os.environ["GOVMDM_VAR"] = str(var)
    city = load_city_config(ROOT / "config")
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(create_app(city, token=TOKEN), host=HOST, port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _pages(var: Path, work: Path) -> dict[str, tuple[str, str]]:
    """name → (file URL, description) of the static pages, written for the latest night."""
    from quality.report import rule_page

    _govmdm(var, "model", "show", "--html", str(work / "model.html"))
    with sqlite3.connect(var / "warehouse" / "govmdm.sqlite") as db:
        master = db.execute(
            "SELECT master_id FROM mdm_crosswalk WHERE entity = 'person' GROUP BY master_id "
            "HAVING count(*) >= 4 ORDER BY count(*) DESC, master_id LIMIT 1"
        ).fetchone()[0]
        department, rule = db.execute(  # a row rule failing every night, with masked keys
            "SELECT department, rule_id FROM dq_result WHERE status = 'failed' "
            "AND rows_failed > 1 AND sample_keys != '[]' GROUP BY department, rule_id "
            "ORDER BY count(*) DESC, max(rows_checked) DESC, department, rule_id LIMIT 1"
        ).fetchone()
        night = db.execute("SELECT max(run_id) FROM mdm_run").fetchone()[0]
    _govmdm(var, "explain", master, "--html", str(work / "explain.html"))
    reports = var / "reports"
    return {
        "model-person": (
            (work / "model.html").as_uri(),
            "govmdm model show --html: each comparison level's match weight as a bar, the prior "
            "and the bands",
        ),
        "explain-person": (
            (work / "explain.html").as_uri(),
            f"govmdm explain {master} --html: golden record with sources, the cluster as a "
            "graph, a waterfall per link (masked)",
        ),
        "reports-index": (
            (reports / "index.html").as_uri(),
            "var/reports/index.html: nights × departments with headline, score and grade, "
            "each night's linkage summary",
        ),
        "rule-history": (
            (reports / rule_page(department, rule)).as_uri(),
            f"a rule's history page ({rule}, {department}): pass rate per night, failing keys "
            "masked",
        ),
        "linkage-summary": (
            (reports / f"run={night}" / "linkage.html").as_uri(),
            f"night {night}'s linkage summary: master-ID events beside the night before, "
            "cluster sizes, match weights against the review and auto-link thresholds",
        ),
        "linkage-cases": (
            (reports / f"run={night}" / "linkage.html").as_uri() + "#truth",
            "the same page further down: pairwise precision/recall per case kind against the "
            "sample city's truth (twins, namesakes, movers, each kind of planted dirt)",
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--var", type=Path, help="a var/ folder with a published night")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="govmdm-shots-"))
    var = (args.var or work / "var").resolve()
    if args.var is None:
        build_city(var)
    args.out.mkdir(parents=True, exist_ok=True)
    driver = _driver()
    shots: list[tuple[Path, str, tuple[int, int, int]]] = []
    try:
        with review_server(var) as base:
            from selenium.webdriver.common.by import By

            driver.get(f"{base}/?token={TOKEN}")
            first = driver.find_element(By.CSS_SELECTOR, "#queue tr[data-ref]")
            url = f"{base}/pair/{first.get_attribute('data-ref')}"
            out = args.out / "review-pair.png"
            what = "govmdm review serve: a pair side by side, differing characters marked, "
            what += "match weights as a waterfall, the two clusters, link / apart / skip"
            shots.append((out, what, shoot(driver, url, out)))
        for name, (url, what) in _pages(var, work).items():
            out = args.out / f"{name}.png"
            shots.append((out, what, shoot(driver, url, out)))
    finally:
        driver.quit()
        shutil.rmtree(work, ignore_errors=True)  # the pages written here, and a city built here
    for path, what, (width, height, size) in shots:
        print(f"{path}  ({width}×{height}, {size / 1000:.0f} KB): {what}")


if __name__ == "__main__":
    main()
