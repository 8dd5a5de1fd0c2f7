"""E-mail each department its own night's report, and the overview to the data-engineering team.

One message per report: subject in Chinese (department, night, headline), a plain-text summary
with the HTML report as its alternative, and the JSON twin attached. A department's message is
built from its own :class:`~quality.report.Report` only, so it can hold no other department's
data. Before a message leaves, its parts and its raw form are scanned for ID numbers and mobile
numbers in clear (:func:`quality.report.check_masked`).

SMTP comes from the environment, never from the repository:

======================== =====================================================================
``GOVMDM_SMTP_HOST``     the server; unset → nothing is sent, the reports stay on disk and the
                         result says so
``GOVMDM_SMTP_PORT``     default 587 with STARTTLS, 465 for implicit TLS, else 25
``GOVMDM_SMTP_FROM``     the sender address (required with a host)
``GOVMDM_SMTP_USER``     log in as this user (optional)
``GOVMDM_SMTP_PASSWORD`` its password (optional)
``GOVMDM_SMTP_STARTTLS`` true/false; default true on port 587, false otherwise
======================== =====================================================================

Each message goes over its own connection, so one refused recipient or dropped connection fails
that department's delivery only; the result lists every report as sent, failed or skipped, with
the reason.

>>> result = deliver_reports(city, build_reports(city, "2026-06-30"))  # doctest: +SKIP
>>> [(d.report, d.status) for d in result.deliveries][:2]  # doctest: +SKIP
[('gongan', 'sent'), ('renshe', 'sent')]
"""

from __future__ import annotations

import os
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Literal

from etl.config import CityConfig
from fields.masking import mask_text
from quality.report import Report, ReportSet, UnmaskedDataError, check_masked

__all__ = [
    "ENV",
    "Delivery",
    "DeliveryConfigError",
    "DeliveryResult",
    "SmtpSettings",
    "build_message",
    "deliver_reports",
]

ENV = {
    "host": "GOVMDM_SMTP_HOST",
    "port": "GOVMDM_SMTP_PORT",
    "user": "GOVMDM_SMTP_USER",
    "password": "GOVMDM_SMTP_PASSWORD",
    "sender": "GOVMDM_SMTP_FROM",
    "starttls": "GOVMDM_SMTP_STARTTLS",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

Status = Literal["sent", "failed", "skipped"]


class DeliveryConfigError(ValueError):
    """The SMTP environment is set but unusable; the message names the variable and the fix."""


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to send. ``password`` never shows in ``repr``."""

    host: str
    sender: str
    port: int = 25
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = False
    timeout: float = 30.0

    @property
    def implicit_tls(self) -> bool:
        return self.port == 465

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SmtpSettings | None:
        """Settings from ``GOVMDM_SMTP_*``, or None if ``GOVMDM_SMTP_HOST`` is unset.

        >>> SmtpSettings.from_env({"GOVMDM_SMTP_HOST": "smtp.example.gov.cn",
        ...                        "GOVMDM_SMTP_FROM": "dq@example.gov.cn"}).port
        25
        >>> SmtpSettings.from_env({}) is None
        True
        """
        env = os.environ if env is None else env

        def get(key: str) -> str | None:
            return (env.get(ENV[key]) or "").strip() or None

        host = get("host")
        if host is None:
            return None
        problems = []
        sender = get("sender")
        if sender is None or "@" not in sender:
            problems.append(f"{ENV['sender']} must be the sender's e-mail address")
        port_text = get("port")
        starttls_text = (get("starttls") or "").lower()
        port = 25
        if port_text is not None:
            if port_text.isdigit() and 0 < int(port_text) < 65536:
                port = int(port_text)
            else:
                problems.append(f"{ENV['port']}={port_text!r} is not a port number")
        elif starttls_text in _TRUE:
            port = 587
        if starttls_text and starttls_text not in _TRUE | _FALSE:
            problems.append(f"{ENV['starttls']}={starttls_text!r}: use true or false")
        starttls = starttls_text in _TRUE if starttls_text else port == 587
        if starttls and port == 465:
            problems.append(f"port 465 is implicit TLS: unset {ENV['starttls']} or use port 587")
        user, password = get("user"), env.get(ENV["password"]) or None
        if password and not user:
            problems.append(f"{ENV['password']} is set without {ENV['user']}")
        if problems:
            raise DeliveryConfigError(
                "SMTP settings in the environment are unusable: " + "; ".join(problems)
            )
        assert sender is not None
        return cls(
            host=host,
            sender=sender,
            port=port,
            user=user,
            password=password,
            starttls=starttls,
        )


@dataclass(frozen=True)
class Delivery:
    """What happened to one report's e-mail."""

    report: str
    """A department code, or ``overview``."""
    recipient: str | None
    status: Status
    reason: str | None = None


@dataclass(frozen=True)
class DeliveryResult:
    """Every report's delivery; ``smtp_configured`` False means nothing was sent (see ``note``)."""

    run_id: str
    smtp_configured: bool
    note: str
    deliveries: tuple[Delivery, ...]

    @property
    def ok(self) -> bool:
        """No delivery failed (skipped ones are not failures)."""
        return all(d.status != "failed" for d in self.deliveries)


def deliver_reports(
    city: CityConfig,
    reports: ReportSet,
    settings: SmtpSettings | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overview: bool = True,
) -> DeliveryResult:
    """Send each department's report to its ``contact`` and the overview to the city's
    ``data_engineering_contact``.

    ``settings`` default to :meth:`SmtpSettings.from_env`; without any, nothing is sent and
    every delivery is ``skipped`` with the reason. A department with no configured contact is
    skipped; a failed send is recorded and the next report goes on.
    """
    from etl.state import RunState
    from quality.suites import platform_failure

    settings = settings or SmtpSettings.from_env(env)
    targets: list[tuple[Report, str | None]] = []
    contacts = {d.code: str(d.contact.email) for d in city.departments}
    with RunState.for_city(city) as state:
        platform = platform_failure(state.ledger(reports.run_id))
    for code, report in reports.departments.items():
        # a platform failure is no department's business: only data engineering hears of it
        targets.append((report, None if platform else contacts.get(code)))
    if overview and reports.overview is not None:
        targets.append((reports.overview, str(city.data_engineering_contact.email)))
    if settings is None:
        note = (
            f"SMTP not configured ({ENV['host']} is not set): reports were written to "
            f"{reports.directory} only, nothing was e-mailed."
        )
        return DeliveryResult(
            reports.run_id,
            False,
            note,
            tuple(
                Delivery(r.name, to, "skipped", f"SMTP not configured ({ENV['host']} unset)")
                for r, to in targets
            ),
        )
    deliveries = []
    for report, to in targets:
        if to is None:
            why = platform or "no contact configured for department"
            deliveries.append(Delivery(report.name, None, "skipped", why))
            continue
        try:
            message = build_message(city, report, to, settings.sender)
            _send(settings, message)
        except UnmaskedDataError as exc:
            deliveries.append(Delivery(report.name, to, "failed", str(exc)))
        except (smtplib.SMTPException, OSError) as exc:
            deliveries.append(Delivery(report.name, to, "failed", _describe(exc)))
        else:
            deliveries.append(Delivery(report.name, to, "sent"))
    sent = sum(d.status == "sent" for d in deliveries)
    note = f"{sent} of {len(deliveries)} e-mails sent via {settings.host}:{settings.port}."
    return DeliveryResult(reports.run_id, True, note, tuple(deliveries))


def build_message(city: CityConfig, report: Report, recipient: str, sender: str) -> EmailMessage:
    """The e-mail for one report: Chinese subject, text + HTML body, JSON twin attached.

    Raises :class:`~quality.report.UnmaskedDataError` rather than build a message that holds an
    ID number or mobile number in clear.
    """
    data = report.data
    if report.department is None:
        subject = f"【数据质量总览】{data['city']} {data['run_id']}：{report.headline_label}"
    else:
        subject = (
            f"【数据质量报告】{data['department']['name']} {data['run_id']}："
            f"{report.headline_label}"
        )
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = Address(addr_spec=recipient)  # the address only: no person's name in clear
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg["X-Govmdm-Run"] = data["run_id"]
    msg["X-Govmdm-Report"] = report.name
    msg.set_content(report.text)
    msg.add_alternative(report.mail_html, subtype="html")
    msg.add_attachment(
        report.json_text.encode("utf-8"),
        maintype="application",
        subtype="json",
        filename=f"{report.name}-{data['run_id']}.json",
    )
    check_masked(
        {
            f"{report.name} e-mail subject": subject,
            f"{report.name} e-mail text": report.text,
            f"{report.name} e-mail HTML": report.mail_html,
            f"{report.name} e-mail attachment": report.json_text,
        },
        known=report.known,
        public=report.public,
    )
    # the raw message wraps and encodes lines, which may put a key's digits at a line start:
    # there only ID and mobile numbers are looked for (the parts above were checked whole)
    check_masked({f"{report.name} e-mail (raw)": msg.as_string()}, kinds=("id", "mobile"))
    return msg


def _send(settings: SmtpSettings, message: EmailMessage) -> None:
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if settings.implicit_tls:
        smtp = smtplib.SMTP_SSL(
            settings.host, settings.port, timeout=settings.timeout, context=context
        )
    else:
        smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
    with smtp:
        if settings.starttls:
            smtp.starttls(context=context)
        if settings.user:
            smtp.login(settings.user, settings.password or "")
        smtp.send_message(message)


def _describe(exc: Exception) -> str:
    """A one-line reason for a failed send (masked, as server replies may quote addresses)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        parts = [
            f"{addr} refused: {code} {_text(msg)}" for addr, (code, msg) in exc.recipients.items()
        ]
        return mask_text("; ".join(parts))
    if isinstance(exc, smtplib.SMTPResponseException):
        return mask_text(f"{type(exc).__name__}: {exc.smtp_code} {_text(exc.smtp_error)}")
    return mask_text(f"{type(exc).__name__}: {exc}")


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
