"""The review page (`govmdm review serve`): the sample city's review band, the page's guards,
and a steward deciding a pair in headless Chromium that the next night honours.

The browser test drives Debian's chromium through its chromedriver with Selenium (.ci/run
installs both); with CI=true a missing browser fails instead of skipping.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
import uvicorn
import yaml
from sample_cities import CONFIG, NIGHT0, isolate
from sqlalchemy.pool import NullPool

import store.warehouse as wh
from access import audit
from access.policy import ANALYST_URL_ENV
from access.review import pair, pair_ref, queue
from access.views import after_publish
from etl.config import CityConfig, load_city_config
from etl.extract import extract_all
from etl.sample_city.departments import DEPARTMENTS
from etl.sample_city.generate import generate_city, next_night, sqlite_url
from etl.standardize import standardize_all
from etl.state import warehouse_url
from master_data.consolidate import consolidate
from master_data.deterministic import corroborated
from master_data.settings import load_match_settings
from store.tables import crosswalk_table, review_decision_table
from web.app import COOKIE, HOST, create_app, csrf_token

NIGHT1 = "2026-07-01"
TOKEN = "t0ken-for-tests-only-0123456789"


def _night(city: CityConfig, run_id: str) -> None:
    assert all(r.ok for r in extract_all(city, run_id))
    assert all(r.status == "ok" for r in standardize_all(city, run_id))
    consolidate(city, run_id)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CityConfig]:
    """A 600-person city drawn with review-band pairs, its first night published."""
    var = tmp_path_factory.mktemp("var")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, var)
        generate_city(var / "city", persons=600, enterprises=70, seed=7, review_band=True)
        c = load_city_config(CONFIG)
        _night(c, NIGHT0)
        yield c


def test_review_band_is_off_by_default_and_touches_only_the_health_records(
    tmp_path: Path,
) -> None:
    off = generate_city(tmp_path / "off", persons=150, enterprises=20, seed=3)
    on = generate_city(tmp_path / "on", persons=150, enterprises=20, seed=3, review_band=True)
    assert "review_band" not in off and on["review_band"] is True
    for d in DEPARTMENTS:
        rows = [
            pd.read_sql_table(d.table_name, sa.create_engine(sqlite_url(tmp_path / x, d.code)))
            for x in ("off", "on")
        ]
        if d.code == "weijian":
            assert not rows[0].equals(rows[1])
        else:
            pd.testing.assert_frame_equal(rows[0], rows[1])
    dirt = pd.read_parquet(tmp_path / "off" / "truth" / "dirt.parquet")
    assert not ((dirt["column"] == "SEX_CODE") & (dirt["kind"] == "missing")).any()


def _levels(row: dict[str, Any]) -> dict[str, int]:
    return {f: int(w["level"]) for f, w in json.loads(row["weights"]).items()}


def test_the_sample_city_puts_real_pairs_in_the_review_band(city: CityConfig) -> None:
    rows = queue(city, limit=1000)
    t = load_match_settings(CONFIG).person.thresholds
    assert len(rows) >= 5
    # between the bands, or above auto_link but uncorroborated (name, birth date, sex alone)
    sure = [
        corroborated(pd.DataFrame([_levels(r)]), r["entity"])[0] for r in rows
    ]  # fmt: skip
    assert all(
        t.review <= r["probability"] and (r["probability"] < t.auto_link or not ok)
        for r, ok in zip(rows, sure, strict=True)
    )
    # each says why it is queued: in the band, or above auto_link without corroboration
    for r in rows:
        why = "介于复核阈值" if r["probability"] < t.auto_link else "但只有姓名、出生日期、性别相符"
        assert why in r["reason"] and f"{r['probability']:.3f}" in r["reason"], r
    truth = pd.read_parquet(city.var_dir / "city" / "truth" / "source_rows.parquet")
    entity_of = {
        f"{r.department}/{r.table}/{r.source_key}": r.entity_id for r in truth.itertuples()
    }
    same = [entity_of[r["left_record"]] == entity_of[r["right_record"]] for r in rows]
    assert sum(same) >= len(rows) // 2  # most are one person the model could not be sure of


def test_pair_view_is_masked_unless_privileged(city: CityConfig) -> None:
    first = queue(city, limit=1)[0]
    masked = pair(city, first["ref"])
    clear = pair(city, first["ref"], privileged=True)  # the file's owner is privileged
    names = {f["field"]: f for f in masked.fields}
    assert "*" in names["name"]["left"] and "*" not in clear.fields[0]["left"]
    assert len(masked.clusters[0]) >= 1 and len(masked.clusters[1]) >= 1
    total = masked.prior + sum(w["weight"] for w in masked.weights)
    assert abs(1 / (1 + 2**-total) - masked.probability) < 1e-9


def test_review_serve_binds_localhost_and_prints_the_secret_once(
    city: CityConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import web.app
    from cli.main import app

    served: list[tuple[object, int]] = []
    monkeypatch.setattr(web.app, "serve", lambda a, *, port: served.append((a, port)))
    result = CliRunner().invoke(app, ["review", "serve", "--port", "18765"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert [port for _, port in served] == [18765]
    assert re.search(r"http://127\.0\.0\.1:18765/\?token=[\w-]{20,}", result.output)
    assert web.app.HOST == "127.0.0.1"


def _http(
    base: str, method: str, path: str, *, body: dict[str, str] | None = None, **headers: str
) -> tuple[int, dict[str, str], str]:
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or HOST, url.port, timeout=30)
    data = urllib.parse.urlencode(body) if body is not None else None
    if data is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(
        method, path, body=data, headers={k.replace("_", "-"): v for k, v in headers.items()}
    )
    response = conn.getresponse()
    out = (
        response.status,
        {k.lower(): v for k, v in response.getheaders()},
        response.read().decode(),
    )
    conn.close()
    return out


def test_the_page_wants_the_secret_the_host_and_the_csrf_token(city: CityConfig) -> None:
    ref = queue(city, limit=1)[0]["ref"]
    cookie = f"{COOKIE}={TOKEN}"
    form = {"decision": "link", "note": "x"}
    with _served(city) as base:
        assert _http(base, "GET", "/")[0] == 403
        assert _http(base, "GET", f"/?token={TOKEN}x")[0] == 403
        status, headers, _ = _http(base, "GET", f"/?token={TOKEN}")
        assert status == 303 and "token" not in headers["location"]
        assert "httponly" in headers["set-cookie"].lower()
        assert "samesite=strict" in headers["set-cookie"].lower()
        status, _, text = _http(base, "GET", "/", Cookie=cookie)
        assert status == 200 and 'id="queue"' in text and "模型无法判定" in text
        status, _, text = _http(base, "GET", f"/pair/{ref}", Cookie=cookie)
        assert status == 200 and "入队原因：匹配概率" in text
        assert _http(base, "POST", f"/pair/{ref}", body=form, Cookie=cookie)[0] == 403
        signed = {**form, "csrf": csrf_token(TOKEN)}
        evil = _http(
            base, "POST", f"/pair/{ref}", body=signed, Cookie=cookie, Origin="http://evil.example"
        )
        assert evil[0] == 403
        assert _http(base, "GET", f"/?token={TOKEN}", Host="evil.example")[0] == 400  # rebinding
    with sqlite3.connect(city.var_dir / "warehouse" / "govmdm.sqlite") as db:
        assert db.execute(f"SELECT count(*) FROM {review_decision_table.name}").fetchone() == (0,)


# ---------------------------------------------------------------------- headless Chromium


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _served(city: CityConfig) -> Iterator[str]:
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(city, token=TOKEN), host=HOST, port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the review page did not start"
        time.sleep(0.05)
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    chromium = os.environ.get("GOVMDM_CHROMIUM") or shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        how = "apt-get install -y chromium chromium-driver (as .ci/run does)"
        if os.environ.get("CI", "").strip().lower() in {"true", "1"}:
            pytest.fail(f"chromium/chromedriver not found; CI=true requires them: {how}")
        pytest.skip(f"chromium/chromedriver not found: {how}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    browser = webdriver.Chrome(service=Service(chromedriver), options=options)
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()


def _decide_in_browser(
    city: CityConfig, driver: object, queued: int, ref: str, note: str, shot: Path
) -> str:
    """Open the queue (``queued`` pairs), open pair ``ref`` (the first), link it with ``note``
    and return the page's banner once the decision is recorded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(driver, WebDriver)
    with _served(city) as base:
        driver.get(f"{base}/?token={TOKEN}")
        listed = driver.find_elements(By.CSS_SELECTOR, "#queue tr[data-ref]")
        assert len(listed) == queued
        assert TOKEN not in driver.current_url
        assert listed[0].get_attribute("data-ref") == ref  # most probable first
        listed[0].find_element(By.LINK_TEXT, "复核").click()
        assert driver.current_url.endswith(f"/pair/{ref}")
        assert driver.find_elements(By.CSS_SELECTOR, "#fields .diff")  # characters that differ
        assert len(driver.find_elements(By.CSS_SELECTOR, "table.cluster")) == 2
        driver.save_screenshot(str(shot))
        driver.find_element(By.ID, "note").send_keys(note)
        driver.find_element(By.CSS_SELECTOR, "button.link").click()
        # the POST redirects to the recorded page: wait for it (a loaded machine is slow)
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.ID, "recorded"))
        banner = str(driver.find_element(By.ID, "recorded").text)
        driver.get(f"{base}/")
        status = driver.find_element(By.CSS_SELECTOR, "#queue tr[data-ref] .status-link").text
        assert status == "link"
    return banner


@pytest.mark.slow
def test_a_steward_decides_a_pair_in_the_browser_and_the_next_night_honours_it(
    city: CityConfig, driver: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(driver, WebDriver)
    rows = queue(city, limit=1000, privileged=True)
    left, right = rows[0]["left_record"], rows[0]["right_record"]
    with _served(city) as base:  # the pair's page shows no value in clear
        driver.get(f"{base}/?token={TOKEN}")
        driver.get(f"{base}/pair/{rows[0]['ref']}")
        page = driver.page_source
        clear = pair(city, rows[0]["ref"], privileged=True).fields
        personal = [f[s] for f in clear for s in ("left", "right") if f["field"] != "sex"]
        assert all(v not in page for v in personal if v and len(v) > 1)  # masked
        bars = driver.find_elements(By.CSS_SELECTOR, "svg#waterfall rect")
        assert len(bars) == 2 + len(pair(city, rows[0]["ref"]).weights)  # prior, fields, total
    banner = _decide_in_browser(
        city, driver, len(rows), rows[0]["ref"], "同一人：就诊时未带身份证", tmp_path / "p.png"
    )
    assert "link" in banner and "审计日志 #" in banner and "review_decide" in banner
    engine = wh.engine_for(warehouse_url(city))
    try:
        [logged] = audit.entries(engine, action="review_decide", limit=5)
        assert logged["detail"]["decision"] == "link"
        assert logged["detail"]["note"] == "同一人：就诊时未带身份证"
        with engine.connect() as conn:
            decided = conn.execute(sa.select(review_decision_table)).all()
        assert [(d.decision, d.decided_by) for d in decided] == [("link", logged["who"])]
    finally:
        engine.dispose()
    next_night(city.var_dir / "city")
    _night(city, NIGHT1)
    assert _master(city, left) == _master(city, right)


def _pg_rows(url: str, sql: str, **params: object) -> list[sa.Row[Any]]:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_steward_decides_on_postgresql_and_the_next_night_honours_it(
    pg_database: str, driver: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warehouse on PostgreSQL: the page reads as the steward's own login
    (GOVMDM_ANALYST_URL, a login in the steward role as the README tells the DBA to make one),
    the decision goes through ``govmdm_review_decide`` (recorded under that login, with its
    audit row), and the next night, published into PostgreSQL, links the pair."""
    var = tmp_path / "var"
    isolate(monkeypatch, var)
    generate_city(var / "city", persons=600, enterprises=70, seed=7, review_band=True)
    db = sa.make_url(pg_database).database
    roles = {kind: f"{db}_{kind}" for kind in ("analyst", "privileged", "steward")}
    shutil.copytree(CONFIG, tmp_path / "config")
    catalog = tmp_path / "config" / "catalog.yaml"
    doc = yaml.safe_load(catalog.read_text(encoding="utf-8")) | {"roles": roles}
    catalog.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("GOVMDM_WAREHOUSE_URL", pg_database)
    c = load_city_config(tmp_path / "config")
    steward = f"{db}_steward_login"
    try:
        _night(c, NIGHT0)
        owner = wh.engine_for(pg_database)
        try:  # views, roles and grants, as `govmdm run` has every publish install them
            run = wh.latest_run(owner)
            assert run is not None
            assert after_publish(owner, c, NIGHT0, json.loads(run["summary"]))
        finally:
            owner.dispose()
        _pg_rows(pg_database, f"CREATE ROLE {steward} LOGIN IN ROLE {roles['steward']}")
        url = sa.make_url(pg_database).set(username=steward, password=None)
        monkeypatch.setenv(ANALYST_URL_ENV, url.render_as_string(hide_password=False))
        queued = _pg_rows(
            pg_database,
            "SELECT left_record, right_record, left_master_id, right_master_id "
            "FROM mdm_review_queue ORDER BY probability DESC, left_record",
        )
        assert len(queued) >= 5
        left, right, left_id, right_id = queued[0]
        assert left_id != right_id
        banner = _decide_in_browser(
            c,
            driver,
            len(queued),
            pair_ref(left, right),
            "同一人（PostgreSQL）",
            tmp_path / "p.png",
        )
        assert "link" in banner and "审计日志 #" in banner
        decided = _pg_rows(
            pg_database,
            "SELECT left_record, right_record, decision, decided_by, note FROM mdm_review_decision",
        )
        assert [tuple(r) for r in decided] == [
            (min(left, right), max(left, right), "link", steward, "同一人（PostgreSQL）")
        ]
        logged = _pg_rows(
            pg_database,
            "SELECT who, role, outcome, detail FROM audit_log WHERE action = 'review_decide'",
        )
        assert [(r.who, r.role, r.outcome) for r in logged] == [(steward, "steward", "ok")]
        detail = logged[0].detail
        assert (json.loads(detail) if isinstance(detail, str) else detail)["decision"] == "link"
        next_night(var / "city")
        _night(c, NIGHT1)
        linked = _pg_rows(
            pg_database,
            "SELECT DISTINCT master_id FROM mdm_crosswalk "
            "WHERE department || '/' || source_table || '/' || source_key IN (:a, :b)",
            a=left,
            b=right,
        )
        assert len(linked) == 1  # one master ID: the night honoured the decision
    finally:
        existing = {r.rolname for r in _pg_rows(pg_database, "SELECT rolname FROM pg_roles")}
        for role in [steward, *roles.values()]:
            if role in existing:
                _pg_rows(pg_database, f"DROP OWNED BY {role}")
                _pg_rows(pg_database, f"DROP ROLE {role}")


def _master(city: CityConfig, record: str) -> str:
    department, table, key = record.split("/", 2)
    c = crosswalk_table.c
    engine = wh.engine_for(warehouse_url(city))
    try:
        with engine.connect() as conn:
            return str(
                conn.execute(
                    sa.select(c.master_id).where(
                        c.department == department, c.source_table == table, c.source_key == key
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()
