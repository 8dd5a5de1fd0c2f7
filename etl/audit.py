"""The audit log: who did what to the golden data, and when.

Every publish, export, lookup, query, views install, review decision and accepted mass
deletion writes one row of
``audit_log`` in the warehouse: who (``GOVMDM_USER`` if set, else the OS login), when, the
action, its target, the role it ran as (analyst | privileged | platform), how many rows it
returned or wrote, its outcome (ok | refused | failed) and details as JSON. Refused attempts
are logged too. Targets and details never hold an ID number or a mobile number in clear: they
are masked (:func:`quality.masking.mask_text`) before they are written, and lookups record the
master IDs they found instead of the key typed in.

>>> record(engine, "lookup", "id_number 350121********5015", role="analyst", row_count=1)
>>> entries(engine, action="lookup")[0]["who"]
'wangfang'
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
from typing import Any

import sqlalchemy as sa

from quality.masking import mask_text

USER_ENV = "GOVMDM_USER"
ACTIONS = (
    "publish",
    "views_install",
    "export",
    "lookup",
    "query",
    "explain",
    "review_decide",
    "accept_deletions",
)
OUTCOMES = ("ok", "refused", "failed")

audit_metadata = sa.MetaData()
audit_table = sa.Table(
    "audit_log",
    audit_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("who", sa.String(128), nullable=False, index=True),
    sa.Column("action", sa.String(32), nullable=False, index=True),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("role", sa.String(16), comment="analyst | privileged | platform"),
    sa.Column("row_count", sa.BigInteger),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False, comment="JSON"),
    comment="who read or changed the golden data, when, and what",
)


def os_user() -> str:
    """The operating-system login running this process."""
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (some containers): still say something
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def who() -> str:
    """The person to record: ``GOVMDM_USER`` (set by a shared service account, e.g. the
    scheduler, or a jump host that knows the analyst), else the OS login."""
    return os.environ.get(USER_ENV, "").strip() or os_user()


def ensure_table(bind: sa.Engine | sa.Connection) -> None:
    """Create ``audit_log`` if it is missing."""
    audit_metadata.create_all(bind, checkfirst=True)


def record(
    bind: sa.Engine | sa.Connection | str,
    action: str,
    target: str,
    *,
    role: str | None = None,
    row_count: int | None = None,
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one audit row. ``bind``: an engine, a connection (the row then commits with the
    caller's transaction, e.g. a review decision) or a database URL.

    >>> record("sqlite:///var/warehouse/govmdm.sqlite", "export", "var/exports/x", row_count=9)
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; known: {', '.join(ACTIONS)}")
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}; known: {', '.join(OUTCOMES)}")
    details = {"os_user": os_user(), **(detail or {})}
    row = {
        "at": dt.datetime.now(dt.UTC),
        "who": who()[:128],
        "action": action,
        "target": mask_text(target),
        "role": role,
        "row_count": row_count,
        "outcome": outcome,
        "detail": mask_text(json.dumps(details, ensure_ascii=False, sort_keys=True, default=str)),
    }
    if isinstance(bind, str):
        engine = sa.create_engine(bind)
        try:
            _insert(engine, row)
        finally:
            engine.dispose()
    else:
        _insert(bind, row)


def _insert(bind: sa.Engine | sa.Connection, row: dict[str, Any]) -> None:
    if isinstance(bind, sa.Connection):
        ensure_table(bind)
        bind.execute(audit_table.insert().values(**row))
        return
    ensure_table(bind)
    with bind.begin() as conn:
        conn.execute(audit_table.insert().values(**row))


def entries(
    bind: sa.Engine | sa.Connection,
    *,
    action: str | None = None,
    user: str | None = None,
    since: dt.datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Audit rows, newest first, optionally filtered; ``detail`` decoded from JSON."""
    ensure_table(bind)
    t = audit_table.c
    query = sa.select(audit_table).order_by(t.id.desc()).limit(limit)
    if action:
        query = query.where(t.action == action)
    if user:
        query = query.where(t.who == user)
    if since:
        query = query.where(t.at >= since)
    if isinstance(bind, sa.Connection):
        rows = bind.execute(query).all()
    else:
        with bind.connect() as conn:
            rows = conn.execute(query).all()
    return [dict(r._mapping) | {"detail": json.loads(r.detail)} for r in rows]
