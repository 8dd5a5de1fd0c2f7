"""Department reports, the overview, their masking and their delivery by e-mail.

The warehouse is filled by hand (``dq_result``, ``dq_scorecard``, ``mdm_conflict`` rows for three
departments over three nights, with ID numbers and phone numbers in clear where a careless suite
might leave them), so these tests depend on nothing but the tables' shape. E-mail goes to a
real SMTP server on localhost (aiosmtpd); the HTML is opened by headless Chromium over the
DevTools protocol, which reports console errors, failed or external requests, the chart as the
browser laid it out, and a screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import fcntl
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from typer.testing import CliRunner

from etl.config import CityConfig, load_city_config
from fields.identifiers import id_check_digit
from fields.masking import ALL_KINDS, find_clear
from quality.deliver import DeliveryConfigError, SmtpSettings, deliver_reports
from quality.report import (
    ReportSet,
    UnmaskedDataError,
    build_reports,
    check_masked,
    night_key,
    render_reports,
    reports_dir,
)
from quality.results import DIMENSIONS
from store.tables import conflict_table, result_table, scorecard_table
from store.warehouse import engine_for

ROOT = Path(__file__).resolve().parents[1]
NIGHTS = ("2026-06-28", "2026-06-29", "2026-06-30")
TONIGHT = NIGHTS[-1]
DEPARTMENTS = ("gongan", "renshe", "minzheng")


def _id(first17: str) -> str:
    return first17 + id_check_digit(first17)


# Personal data in clear, as a careless suite or a department keyed by ID might leave it.
ID_A = _id("35010219850101001")
ID_B = _id("35012119740315501")
ID_C = _id("35010319900707002")
ID_E = _id("35010219920202004")
PHONE_A, PHONE_B, PHONE_C = "13812345678", "13912345679", "+86 137-1234-5670"
assert all(find_clear(x) for x in (ID_A, ID_B, ID_C, ID_E, PHONE_A, PHONE_B, PHONE_C))

# rule ID → department, severity, dimension, status per night (None: absent that night),
# held back tonight, sample keys. RULES, SCORES and CONFLICTS are tables laid out by hand (fmt:
# skip): one rule, department or conflict per line or two, the same fields in the same place.
RULES: dict[str, dict[str, Any]] = {
    "GA-PER-001": dict(dept="gongan", sev="error", dim="完整性", statuses=("failed",) * 3,
                       keys=["RK0001", "RK0002"]),
    "GA-PER-002": dict(dept="gongan", sev="error", dim="规范性",
                       statuses=("passed", "failed", "failed"), keys=["RK0003", ID_A]),
    "GA-PER-003": dict(dept="gongan", sev="warning", dim="规范性",
                       statuses=("failed", "passed", "failed"), keys=["RK0004"]),
    "GA-PER-004": dict(dept="gongan", sev="error", dim="一致性", statuses=("passed",) * 3,
                       keys=[]),
    "GA-PER-005": dict(dept="gongan", sev="warning", dim="时效性",
                       statuses=("failed", None, "error"), keys=[],
                       message=f"源库不可达，值班电话 {PHONE_A}"),
    "RS-PER-001": dict(dept="renshe", sev="blocking", dim="规范性",
                       statuses=("failed", "passed", "failed"), keys=[PHONE_B, PHONE_C],
                       held=True),
    "RS-PER-002": dict(dept="renshe", sev="error", dim="准确性", statuses=("failed",) * 3,
                       keys=[ID_B, ID_C, "IP-7781"]),
    "RS-PER-003": dict(dept="renshe", sev="warning", dim="完整性", statuses=("passed",) * 3,
                       keys=[]),
    "MZ-PER-001": dict(dept="minzheng", sev="warning", dim="完整性", statuses=("passed",) * 3,
                       keys=[]),
    "MZ-PER-002": dict(dept="minzheng", sev="error", dim="规范性",
                       statuses=("failed", "failed", "passed"), keys=["MZ-OLD-KEY"]),
}  # fmt: skip
HEADLINE = {"gongan": "failed", "renshe": "held_back", "minzheng": "passed"}
STREAKS = {"GA-PER-001": 3, "GA-PER-002": 2, "GA-PER-003": 1, "RS-PER-001": 1, "RS-PER-002": 3}
# department → dimension → score per night (None: no rule covers it)
SCORES: dict[str, dict[str, tuple[float | None, ...]]] = {
    "gongan": {"规范性": (90, 85, 80), "完整性": (70, 72, 75), "一致性": (100, 100, 100),
               "时效性": (60, None, 50), "overall": (82, 80, 78)},
    "renshe": {"规范性": (88, 95, 60), "完整性": (99, 99, 99), "准确性": (70, 71, 69),
               "overall": (85, 88, 72)},
    "minzheng": {"完整性": (95, 96, 97), "规范性": (80, 85, 99), "时效性": (90, None, 92),
                 "overall": (88, 90, 96)},
}  # fmt: skip
GRADES = {"gongan": "C", "renshe": "C", "minzheng": "A"}
# (night, entity, master, attribute, department, table, key, value, authority, authority value)
CONFLICTS = [
    (TONIGHT, "person", "P0000000001", "name", "minzheng", "社会救助对象", ID_E,
     "张三丰", "gongan", "张三峰"),
    (TONIGHT, "person", "P0000000002", "name", "minzheng", "社会救助对象", "MZ0002",
     "欧阳娜娜", "gongan", "欧阳纳纳"),
    (TONIGHT, "person", "P0000000002", "address", "minzheng", "社会救助对象", "MZ0002",
     f"鼓楼区五四路1号（电话{PHONE_A}）", "gongan", "福建省福州市鼓楼区五四路1号"),
    (TONIGHT, "person", "P0000000003", "id_number", "renshe", "insured_person", "IP-5001",
     ID_C, "gongan", ID_A),
    (TONIGHT, "person", "P0000000004", "phone", "gongan", "t_rk_jbxx", "RK0009",
     PHONE_A, "renshe", PHONE_B),
    (NIGHTS[1], "person", "P0000000005", "phone", "gongan", "t_rk_jbxx", "RK-LAST-NIGHT",
     PHONE_A, "renshe", PHONE_B),
    (TONIGHT, "enterprise", "E0000000001", "name", "renshe", "insured_person", "IP-5002",
     "福州闽江科技有限责任公司", "shichang", "福州闽江科技有限公司"),
    # 人社 is the phone authority, its value kept; every other department holds a newer one
    (TONIGHT, "person", "P0000000006", "phone", "renshe", "insured_person", "IP-5003",
     PHONE_A, "renshe", PHONE_B),
    (TONIGHT, "enterprise", "E0000000001", "address", "renshe", "insured_person", "IP-5002",
     "福建省福州市鼓楼区五一北路12号", "shichang", "福建省福州市鼓楼区五一北路120号"),
]  # fmt: skip
CLEAR = (ID_A, ID_B, ID_C, ID_E, PHONE_A, PHONE_B, "137-1234-5670", "张三丰", "欧阳娜娜")
"""What must never appear in a report or an e-mail (names included: find_clear cannot see
them)."""


def _result_rows() -> list[dict[str, Any]]:
    rows = []
    for rule_id, r in RULES.items():
        for night, status in zip(NIGHTS, r["statuses"], strict=True):
            if status is None:
                continue
            failed = status == "failed"
            rows.append(
                dict(
                    run_id=night,
                    department=r["dept"],
                    rule_id=rule_id,
                    target="t_source",
                    column_name="col",
                    kind="valid",
                    dimension=r["dim"],
                    severity=r["sev"],
                    description=f"规则 {rule_id} 的说明",
                    fix=f"整改 {rule_id}：核对源系统后更正",
                    threshold=0.99,
                    rows_checked=1000,
                    rows_failed=37 if failed else 0,
                    sample_keys=json.dumps(r["keys"] if failed else [], ensure_ascii=False),
                    status=status,
                    held_back=failed and r.get("held", False),
                    message=r.get("message") if status == "error" else None,
                )
            )
    return rows


def _scorecard_rows() -> list[dict[str, Any]]:
    rows = []
    for dept, dims in SCORES.items():
        for i, night in enumerate(NIGHTS):
            for dim in (*DIMENSIONS, "overall"):
                score = dims.get(dim, (None,) * 3)[i]
                before = dims.get(dim, (None,) * 3)[i - 1] if i else None
                rows.append(
                    dict(
                        run_id=night,
                        department=dept,
                        dimension=dim,
                        score=score,
                        rules=0 if score is None else 2,
                        grade=GRADES[dept] if dim == "overall" else None,
                        change=None if score is None or before is None else score - before,
                    )
                )
    return rows


def _fill(engine: sa.Engine) -> None:
    columns = (
        "run_id",
        "entity",
        "master_id",
        "attribute",
        "department",
        "source_table",
        "source_key",
        "value",
        "authority_department",
        "authority_value",
    )
    with engine.begin() as conn:
        conn.execute(result_table.insert(), _result_rows())
        conn.execute(scorecard_table.insert(), _scorecard_rows())
        conn.execute(
            conflict_table.insert(), [dict(zip(columns, c, strict=True)) for c in CONFLICTS]
        )


@dataclass
class Night:
    city: CityConfig
    engine: sa.Engine
    reports: ReportSet


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Night]:
    var = tmp_path_factory.mktemp("var")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GOVMDM_VAR", str(var))
        mp.delenv("GOVMDM_WAREHOUSE_URL", raising=False)
        for name in ("HOST", "PORT", "USER", "PASSWORD", "FROM", "STARTTLS"):
            mp.delenv(f"GOVMDM_SMTP_{name}", raising=False)
        city = load_city_config(ROOT / "config")
        engine = engine_for(f"sqlite:///{var / 'warehouse.sqlite'}")
        _fill(engine)
        mp.setenv("GOVMDM_WAREHOUSE_URL", str(engine.url))
        yield Night(city, engine, build_reports(city, TONIGHT))
    engine.dispose()


# ------------------------------------------------------------------------------ the reports


def test_files_per_department_and_overview(night: Night) -> None:
    out = reports_dir(night.city, TONIGHT)
    assert out == night.city.var_dir / "reports" / f"run={TONIGHT}"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}.{ext}" for n in (*DEPARTMENTS, "overview") for ext in ("html", "json")
    )
    for report in night.reports.all():
        assert json.loads(report.json_path.read_text(encoding="utf-8")) == report.data
        html = report.html_path.read_text(encoding="utf-8")
        assert html == report.html
        assert "<script" not in html and "http://" not in html.replace(
            'xmlns="http://www.w3.org/2000/svg"', ""
        )
        assert "https://" not in html and '<link rel="stylesheet"' not in html


def test_headline_scores_and_trend(night: Night) -> None:
    for dept in DEPARTMENTS:
        data = night.reports.departments[dept].data
        assert data["headline"]["status"] == HEADLINE[dept], data["headline"]
        assert data["score"]["overall"] == SCORES[dept]["overall"][-1]
        assert data["score"]["grade"] == GRADES[dept]
        dims = {d["dimension"]: d for d in data["dimensions"]}
        assert list(dims) == list(DIMENSIONS)
        for dim, d in dims.items():
            expected = SCORES[dept].get(dim, (None,) * 3)[-1]
            assert d["score"] == expected and d["covered"] is (expected is not None)
        assert data["trend"]["nights"] == list(NIGHTS)
    gongan = night.reports.departments["gongan"]
    # an uncovered dimension reads 未覆盖, never 100
    row = gongan.html.split('data-dimension="可访问性"', 1)[1].split("</tr>", 1)[0]
    assert "未覆盖" in row and "100" not in row
    series = {s["name"]: s["scores"] for s in gongan.data["trend"]["series"]}
    assert series["时效性"] == [60.0, None, 50.0] and "可访问性" not in series
    labels = {
        "gongan": "不合格",
        "renshe": "数据被暂扣",
        "minzheng": "通过",
    }
    for dept, label in labels.items():
        assert night.reports.departments[dept].headline_label == label
        assert label in night.reports.departments[dept].html


def test_failed_rules_by_severity_with_streaks_and_masked_samples(night: Night) -> None:
    rules = {
        r["rule_id"]: (g["severity"], r)
        for dept in DEPARTMENTS
        for g in night.reports.departments[dept].data["failed_rules"]
        for r in g["rules"]
    }
    failed_tonight = {k for k, r in RULES.items() if r["statuses"][-1] == "failed"}
    assert set(rules) == failed_tonight
    for rule_id, (severity, rule) in rules.items():
        assert severity == RULES[rule_id]["sev"]
        assert rule["failing_nights"] == STREAKS[rule_id], rule_id
        assert (rule["rows_failed"], rule["rows_checked"], rule["threshold"]) == (37, 1000, 0.99)
        assert rule["fix"] == f"整改 {rule_id}：核对源系统后更正"
    assert rules["GA-PER-002"][1]["sample_keys"] == ["RK0003", ID_A[:6] + "********" + ID_A[-4:]]
    assert rules["RS-PER-001"][1]["sample_keys"] == ["139****5679", "137****5670"]
    assert rules["RS-PER-001"][1]["held_back"]
    renshe = night.reports.departments["renshe"].data
    assert [g["severity"] for g in renshe["failed_rules"]] == ["blocking", "error"]
    gongan = night.reports.departments["gongan"].data
    assert [r["rule_id"] for r in gongan["rules_not_run"]] == ["GA-PER-005"]
    assert gongan["rules_not_run"][0]["message"] == "源库不可达，值班电话 138****5678"
    html = night.reports.departments["gongan"].html
    assert "连续失败" in html and "3 晚" in html
    overview = night.reports.overview
    assert overview is not None
    assert overview.data["held_back"] == [
        {"code": "renshe", "name": night.city.department("renshe").name, "rules": ["RS-PER-001"]}
    ]
    assert {d["code"] for d in overview.data["without_results"]} == {
        "weijian",
        "shichang",
        "shuiwu",
    }


def test_conflicts_grouped_by_attribute_and_masked_by_type(night: Night) -> None:
    minzheng = night.reports.departments["minzheng"].data["conflicts"]
    assert minzheng["total"] == 3
    groups = {g["attribute"]: g for g in minzheng["by_attribute"]}
    assert groups["name"]["count"] == 2 and groups["name"]["authority_department"]["name"]
    # a person's name: masked, with what differs said without showing it
    assert [
        (s["source_key"], s["value"], s["authority_value"], s["difference"])
        for s in groups["name"]["samples"]
    ] == [
        (ID_E[:6] + "********" + ID_E[-4:], "张**", "张**", "第3字不同（同音）"),
        ("MZ0002", "欧***", "欧***", "第3–4字不同（同音）"),
    ]
    # a person's address: cut to the district, as in every other output (v_conflict, explain)
    address = groups["address"]["samples"][0]
    assert (address["value"], address["authority_value"]) == (
        "鼓楼区****",
        "福建省福州市鼓楼区****",
    )
    assert address["difference"] == "区县相同，详细地址不同（一方未写省市）"
    minzheng_files = night.reports.departments["minzheng"]
    for text in (minzheng_files.html, minzheng_files.json_text, minzheng_files.text):
        assert "五四路" not in text
    renshe = {
        (g["entity"], g["attribute"]): g["samples"][0]
        for g in night.reports.departments["renshe"].data["conflicts"]["by_attribute"]
        if not g["own"]
    }
    own = [g for g in night.reports.departments["renshe"].data["conflicts"]["by_attribute"]
           if g["own"]]  # fmt: skip
    assert [(g["attribute"], g["authority_department"]["code"], g["count"]) for g in own] == [
        ("phone", "renshe", 1)
    ]
    # its own (kept) value first, then the newer one the others agree on
    sample = own[0]["samples"][0]
    assert (sample["value"], sample["authority_value"]) == ("139****5679", "138****5678")
    assert "其他部门一致的较新取值" in night.reports.departments["renshe"].html
    assert renshe[("person", "id_number")]["value"] == ID_C[:6] + "********" + ID_C[-4:]
    assert renshe[("person", "id_number")]["difference"].endswith("段不同")
    # public registration data of an enterprise is shown as it is (nothing to hide, and the
    # department needs to see the difference)
    firm = renshe[("enterprise", "name")]
    assert (firm["value"], firm["authority_value"]) == (
        "福州闽江科技有限责任公司",
        "福州闽江科技有限公司",
    )
    assert renshe[("enterprise", "address")]["value"] == "福建省福州市鼓楼区五一北路12号"
    assert "福州闽江科技有限责任公司" in night.reports.departments["renshe"].html
    gongan = night.reports.departments["gongan"].data["conflicts"]
    assert gongan["total"] == 1  # last night's conflict is not tonight's
    assert gongan["by_attribute"][0]["samples"][0]["value"] == "138****5678"
    assert "RK-LAST-NIGHT" not in night.reports.departments["gongan"].html


def test_no_personal_data_in_clear_in_any_report(night: Night) -> None:
    files = sorted(reports_dir(night.city, TONIGHT).iterdir())
    assert len(files) == 8
    public = ["福建省福州市鼓楼区五一北路12号", "福建省福州市鼓楼区五一北路120号"]  # enterprise
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert find_clear(text, public=public, kinds=ALL_KINDS) == [], path.name
        for clear in CLEAR:
            assert clear not in text, (path.name, clear[:3])
    for report in night.reports.all():
        assert (
            find_clear(report.text, known=report.known, public=report.public, kinds=ALL_KINDS) == []
        )
        assert "五四路" in " ".join(report.known) or report.name != "minzheng"


def test_rerunning_a_night_gives_the_same_files(night: Night) -> None:
    out = reports_dir(night.city, TONIGHT)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "weijian.html").write_text("a department without results tonight", encoding="utf-8")
    build_reports(night.city, TONIGHT)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_refuses_to_write_anything_with_an_identifier_in_clear(night: Night) -> None:
    # ``target`` is shown as it is (a table name): a phone number there must stop the night.
    with night.engine.begin() as conn:
        conn.execute(
            result_table.update()
            .where(result_table.c.rule_id == "MZ-PER-002", result_table.c.run_id == NIGHTS[0])
            .values(target=f"备注_{PHONE_A}")
        )
    try:
        with pytest.raises(UnmaskedDataError) as err:
            build_reports(night.city, NIGHTS[0])
    finally:
        with night.engine.begin() as conn:
            conn.execute(
                result_table.update()
                .where(result_table.c.rule_id == "MZ-PER-002", result_table.c.run_id == NIGHTS[0])
                .values(target="t_source")
            )
    assert "minzheng.html" in str(err.value) and "138****5678" in str(err.value)
    assert PHONE_A not in str(err.value)
    assert not reports_dir(night.city, NIGHTS[0]).exists()


def test_single_department_and_a_night_without_results(night: Night) -> None:
    only = render_reports(night.city, TONIGHT, "renshe")
    assert list(only.departments) == ["renshe"] and only.overview is None
    assert only.departments["renshe"].data == night.reports.departments["renshe"].data
    empty = render_reports(night.city, TONIGHT, "weijian").departments["weijian"]
    assert empty.headline == "attention"
    assert all(d["score"] is None for d in empty.data["dimensions"])
    assert "暂无评分记录" in empty.html


def test_night_order_and_streak_break_on_absent_night() -> None:
    assert sorted(["night-10", "night-9", "night-1"], key=night_key) == [
        "night-1",
        "night-9",
        "night-10",
    ]
    assert sorted(NIGHTS[::-1], key=night_key) == list(NIGHTS)


# ---------------------------------------------------------------------------------- e-mail


@dataclass
class _Handler:
    reject: set[str] = field(default_factory=set)
    messages: list[tuple[list[str], bytes]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.reject:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unlinked(html: str) -> str:
    """A page without its links (their text kept), its navigation bar and any white space."""
    return re.sub(r"<nav\b.*?</nav>|</?a\b[^>]*>|\s+", "", html, flags=re.S)


@pytest.fixture
def smtp_server() -> Iterator[tuple[SmtpSettings, _Handler]]:
    handler = _Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        settings = SmtpSettings(
            host="127.0.0.1",
            port=controller.port,
            sender="dq-report@example.gov.cn",
            timeout=10,
        )
        yield settings, handler
    finally:
        controller.stop()


def _parts(raw: bytes) -> tuple[EmailMessage, dict[str, Any]]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    parts: dict[str, Any] = {}
    for part in msg.walk():
        if part.is_multipart():
            continue
        key = part.get_filename() or part.get_content_type()
        content = part.get_content()
        parts[key] = content.replace("\r\n", "\n") if isinstance(content, str) else content
    return msg, parts


def test_each_contact_gets_exactly_its_own_report(
    night: Night, smtp_server: tuple[SmtpSettings, _Handler]
) -> None:
    settings, handler = smtp_server
    result = deliver_reports(night.city, night.reports, settings)
    assert result.smtp_configured and result.ok, result
    assert [(d.report, d.status) for d in result.deliveries] == [
        *[(d.code, "sent") for d in night.city.departments if d.code in DEPARTMENTS],
        ("overview", "sent"),
    ]
    contact = {d.code: str(d.contact.email) for d in night.city.departments}
    inbox: dict[str, list[bytes]] = {}
    for rcpts, raw in handler.messages:
        assert len(rcpts) == 1
        inbox.setdefault(rcpts[0], []).append(raw)
    engineering = str(night.city.data_engineering_contact.email)
    assert set(inbox) == {contact[d] for d in DEPARTMENTS} | {engineering}
    assert all(len(v) == 1 for v in inbox.values())
    for dept in DEPARTMENTS:
        report = night.reports.departments[dept]
        raw = inbox[contact[dept]][0]
        msg, parts = _parts(raw)
        name = night.city.department(dept).name
        assert name in msg["Subject"] and TONIGHT in msg["Subject"]
        assert report.headline_label in msg["Subject"]
        assert msg["To"] == contact[dept]
        assert parts["text/html"] == report.mail_html and name in parts["text/html"]
        # the e-mailed copy is the page without links that resolve only beside it on disk
        assert "<a " not in report.mail_html and "<a " in report.html
        assert _unlinked(report.html) == _unlinked(report.mail_html)
        attachment = parts[f"{dept}-{TONIGHT}.json"]
        assert json.loads(attachment) == report.data
        body = "\n".join(str(v) if isinstance(v, str) else v.decode() for v in parts.values())
        own_keys = {k for r in RULES.values() if r["dept"] == dept for k in r["keys"]}
        for rule_id, rule in RULES.items():
            if rule["dept"] != dept:
                assert rule_id not in body and rule_id not in raw.decode("ascii", "replace")
                for key in set(rule["keys"]) - own_keys:
                    assert key not in body
        for other in set(DEPARTMENTS) - {dept}:
            assert night.city.department(other).name not in msg["Subject"]
        # nothing in clear: neither in the raw message nor in any decoded part
        # the raw message names its sender and recipient: only those e-mail addresses
        assert find_clear(raw.decode("utf-8", "replace"), kinds=ALL_KINDS - {"email"}) == []
        assert find_clear(body, public=report.public, kinds=ALL_KINDS) == []
        for clear in CLEAR:
            assert clear not in body
    msg, parts = _parts(inbox[engineering][0])
    assert "数据质量总览" in msg["Subject"]
    assert json.loads(parts[f"overview-{TONIGHT}.json"]) == night.reports.overview.data  # type: ignore[union-attr]


def test_a_refused_recipient_does_not_stop_the_others(
    night: Night, smtp_server: tuple[SmtpSettings, _Handler]
) -> None:
    settings, handler = smtp_server
    refused = str(night.city.department("renshe").contact.email)
    handler.reject.add(refused)
    result = deliver_reports(night.city, night.reports, settings)
    status = {d.report: d for d in result.deliveries}
    assert status["renshe"].status == "failed" and "550" in (status["renshe"].reason or "")
    assert [status[d].status for d in ("gongan", "minzheng", "overview")] == ["sent"] * 3
    assert not result.ok and len(handler.messages) == 3
    assert refused not in {r for rcpts, _ in handler.messages for r in rcpts}


def test_unreachable_server_fails_each_delivery_and_says_why(night: Night) -> None:
    settings = SmtpSettings(host="127.0.0.1", port=_free_port(), sender="dq@example.gov.cn")
    result = deliver_reports(night.city, night.reports, settings)
    assert [d.status for d in result.deliveries] == ["failed"] * 4
    assert all("ConnectionRefusedError" in (d.reason or "") for d in result.deliveries)


def test_without_smtp_reports_stay_on_disk_and_the_result_says_so(night: Night) -> None:
    result = deliver_reports(night.city, night.reports, env={})
    assert not result.smtp_configured and result.ok
    assert "SMTP not configured" in result.note and str(night.reports.directory) in result.note
    assert {d.status for d in result.deliveries} == {"skipped"}
    assert all(p.exists() for p in night.reports.files())


def test_smtp_settings_from_environment() -> None:
    base = {"GOVMDM_SMTP_HOST": "smtp.example.gov.cn", "GOVMDM_SMTP_FROM": "dq@example.gov.cn"}
    assert SmtpSettings.from_env({}) is None
    plain = SmtpSettings.from_env(base)
    assert plain is not None and (plain.port, plain.starttls, plain.user) == (25, False, None)
    tls = SmtpSettings.from_env(
        {
            **base,
            "GOVMDM_SMTP_PORT": "587",
            "GOVMDM_SMTP_USER": "dq",
            "GOVMDM_SMTP_PASSWORD": "s3cret",
        }
    )
    assert tls is not None and tls.starttls and tls.password == "s3cret"
    assert "s3cret" not in repr(tls)
    with pytest.raises(DeliveryConfigError, match="GOVMDM_SMTP_FROM"):
        SmtpSettings.from_env({"GOVMDM_SMTP_HOST": "smtp.example.gov.cn"})
    with pytest.raises(DeliveryConfigError, match="GOVMDM_SMTP_STARTTLS"):
        SmtpSettings.from_env({**base, "GOVMDM_SMTP_STARTTLS": "maybe"})


# -------------------------------------------------------------------------------------- CLI


def test_cli_writes_reports_and_says_smtp_is_not_configured(
    night: Night, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.main import app

    monkeypatch.setenv("GOVMDM_VAR", str(night.city.var_dir))
    monkeypatch.setenv("GOVMDM_WAREHOUSE_URL", str(night.engine.url))
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, ["report", "--send"])  # latest night by default
    assert result.exit_code == 0, result.output
    assert "SMTP not configured" in result.output
    assert f"run={TONIGHT}" in result.output.replace("\n", "")
    assert "数据被暂扣" in result.output
    result = CliRunner().invoke(app, ["report", "--run-id", NIGHTS[1], "-d", "minzheng"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in reports_dir(night.city, NIGHTS[1]).iterdir()) == [
        "minzheng.html",
        "minzheng.json",
    ]
    result = CliRunner().invoke(app, ["report", "-d", "nosuch"])
    assert result.exit_code == 2 and "Unknown department" in result.output


# ---------------------------------------------------------------------- headless Chromium


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Chromium]:
    exe = os.environ.get("GOVMDM_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    if exe is None:
        how = (
            "install it with `apt-get install -y --no-install-recommends chromium` "
            "(as .ci/run does) or set GOVMDM_CHROMIUM"
        )
        if _in_ci():
            pytest.fail(f"headless Chromium not found; CI=true requires it: {how}", pytrace=False)
        pytest.skip(f"headless Chromium not found: {how}")
    with _Chromium(exe, tmp_path_factory.mktemp("chromium")) as chromium:
        yield chromium


_BASH = shutil.which("bash") or "/bin/bash"


class _Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3 in, fd 4 out): no
    port, no websocket library, and every event of a page load is seen."""

    def __init__(self, exe: str, profile: Path) -> None:
        self.exe, self.profile = exe, profile
        self._id = 0
        self.seen: list[dict[str, Any]] = []
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def __enter__(self) -> _Chromium:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Lift our ends to 10 and above, so "3<&a 4>&b" cannot clobber one with the other; bash
        # (unlike dash) redirects file descriptors above 9.
        a, b = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome_r, from_chrome_w))
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-sync",
            "--disable-component-update",
            "--hide-scrollbars",
            "--mute-audio",
            "about:blank",
        ]
        self._stderr = (self.profile / "stderr.log").open("wb")
        self.process = subprocess.Popen(
            [_BASH, "-c", f'exec "$@" 3<&{a} 4>&{b} {a}<&- {b}>&-', "bash", self.exe, *args],
            pass_fds=(a, b),
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
        )
        os.close(a)
        os.close(b)
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable", session=self.session)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):  # it may close first
            self.call("Browser.close")
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        os.close(self._to_chrome)
        self._stderr.close()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_chrome, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for m in messages:
                self._events.put(json.loads(m))
        self._events.put(None)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send a command; events that arrive before its answer are kept in ``self.seen``."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 30
        while True:
            reply = self._next(deadline, method)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply["result"])
            self.seen.append(reply)

    def _next(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        try:
            event = self._events.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            raise TimeoutError(f"Chromium did not answer {waiting_for}") from None
        if event is None:
            log = (self.profile / "stderr.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Chromium exited while waiting for {waiting_for}:\n{log}")
        return event

    def open(self, url: str) -> list[str]:
        """Load ``url`` and return every problem the page caused: console errors, uncaught
        exceptions, error log entries (CSP violations among them), failed loads, and any
        request for something that is not the file itself or a data: URL."""
        self.seen = []
        self.call("Page.navigate", session=self.session, url=url)
        deadline = time.monotonic() + 30
        while not any(e.get("method") == "Page.loadEventFired" for e in self.seen):
            self.seen.append(self._next(deadline, "the page's load event"))
        self.call("Runtime.evaluate", session=self.session, expression="1")  # flush events
        problems = []
        for e in self.seen:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                problems.append(f"console.{p['type']}: {p['args']}")
            elif method == "Runtime.exceptionThrown":
                problems.append(f"exception: {p['exceptionDetails']}")
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                problems.append(f"log: {p['entry']['text']}")
            elif method == "Network.loadingFailed":
                problems.append(f"failed load: {p.get('errorText')} {p.get('blockedReason')}")
            elif method == "Network.requestWillBeSent":
                request = p["request"]["url"]
                if not request.startswith(("file:", "data:")):
                    problems.append(f"external request: {request}")
        return problems

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", session=self.session, expression=expression, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def screenshot(self, path: Path, width: int = 1280) -> bytes:
        """A PNG of the whole page at ``width`` CSS pixels (as --screenshot --window-size)."""
        height = 800
        for _ in range(2):  # the page's height depends on the width: set, measure, set again
            self.call(
                "Emulation.setDeviceMetricsOverride",
                session=self.session,
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            height = min(int(self.evaluate("document.documentElement.scrollHeight")), 8000)
        data = base64.b64decode(
            self.call("Page.captureScreenshot", session=self.session, format="png")["data"]
        )
        path.write_bytes(data)
        return data


_CHART = """(() => {
  const svg = document.querySelector('svg#trend-chart');
  if (!svg) return null;
  const box = svg.getBoundingClientRect();
  const drawn = [...svg.querySelectorAll('circle.point')].filter(c => {
    const b = c.getBoundingClientRect(); return b.width > 0 && b.height > 0; });
  const lines = [...svg.querySelectorAll('g.series path')].filter(p => p.getTotalLength() > 0);
  return {width: box.width, height: box.height, declared: Number(svg.dataset.points),
          points: drawn.length, lines: lines.length,
          series: svg.querySelectorAll('g.series').length};
})()"""


def _lines(scores: list[float | None]) -> int:
    """Line segments a series needs: one per run of two or more nights with a score."""
    runs = "".join("x" if v is not None else " " for v in scores).split()
    return sum(len(r) > 1 for r in runs)


def _png_is_not_blank(png: bytes) -> bool:
    """Decode the PNG's pixel data (no imaging library needed) and see more than a few colours."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    idat, pos = b"", 8
    while pos < len(png):
        length = int.from_bytes(png[pos : pos + 4], "big")
        if png[pos + 4 : pos + 8] == b"IDAT":
            idat += png[pos + 8 : pos + 8 + length]
        pos += length + 12
    return len(set(zlib.decompress(idat))) > 16


def test_browser_catches_console_errors_and_external_requests(
    browser: _Chromium, tmp_path: Path
) -> None:
    # The detector itself: a page with a console error, an exception and an external image.
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body><p>x</p>"
        "<img src='http://127.0.0.1:9/external.png'>"
        "<script>console.error('boom'); undefinedFunction();</script></body></html>",
        encoding="utf-8",
    )
    problems = "\n".join(browser.open(page.as_uri()))
    assert "console.error" in problems and "boom" in problems
    assert "undefinedFunction" in problems
    assert "127.0.0.1:9/external.png" in problems


def test_every_report_renders_in_chromium_without_errors(
    night: Night, browser: _Chromium, tmp_path: Path
) -> None:
    for report in night.reports.all():
        problems = browser.open(report.html_path.as_uri())
        assert problems == [], (report.name, problems)
        assert browser.evaluate("document.title") == report.title
        png = browser.screenshot(tmp_path / f"{report.name}.png")
        assert len(png) > 10_000 and _png_is_not_blank(png), report.name
        if report.department is None:
            rows = browser.evaluate("document.querySelectorAll('#scores tbody tr').length")
            assert rows == len(DEPARTMENTS)
            continue
        chart = browser.evaluate(_CHART)
        expected = sum(v is not None for s in report.data["trend"]["series"] for v in s["scores"])
        assert chart is not None, f"{report.name}: no trend chart"
        assert chart["width"] > 300 and chart["height"] > 150, chart
        assert chart["points"] == chart["declared"] == expected > 0, (report.name, chart)
        lines = sum(_lines(x["scores"]) for x in report.data["trend"]["series"])
        assert chart["series"] == len(report.data["trend"]["series"]) > 0, (report.name, chart)
        assert chart["lines"] == lines > 0, (report.name, chart)


def _luhn_card(prefix: str, length: int) -> str:
    body = prefix + "3" * (length - len(prefix) - 1)
    for check in "0123456789":
        digits = [int(c) for c in body + check][::-1]
        total = sum(
            d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(digits)
        )
        if total % 10 == 0:
            return body + check
    raise AssertionError


@pytest.mark.parametrize(
    ("text", "known"),
    [
        ("联系电话 0591-87654321", ()),
        ("邮箱 zhang.san@example.com", ()),
        (f"银行卡 {_luhn_card('622202', 19)}", ()),
        ("住址：福建省福州市台江区鳌峰路80号3单元", ()),
        ("经办人 王晓明 已核实", ("王晓明",)),
        ("身份证 11010519491231002X", ()),
        (r"Incorrect string value: '\xD5\xC511010519491231002X'", ()),
    ],
)
def test_the_gate_catches_every_kind_of_personal_data(text: str, known: tuple[str, ...]) -> None:
    with pytest.raises(UnmaskedDataError) as err:
        check_masked({"report.html": text}, known=known)
    assert "report.html" in str(err.value)
    for word in ("87654321", "zhang.san", "鳌峰路", "晓明", "19491231"):
        assert word not in str(err.value)  # the refusal itself shows nothing in clear


def test_public_enterprise_addresses_pass_the_gate() -> None:
    address = "福建省福州市鼓楼区五一北路12号"
    check_masked({"renshe.html": f"企业住所：{address}"}, public=[address])
    with pytest.raises(UnmaskedDataError):
        check_masked({"renshe.html": f"企业住所：{address}"})
