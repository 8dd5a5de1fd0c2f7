"""Every table of the warehouse database, in one SQLAlchemy ``MetaData``.

The warehouse (SQLite under ``var/warehouse`` by default, PostgreSQL via
``GOVMDM_WAREHOUSE_URL``) holds:

- the master tables a night publishes (:mod:`store.warehouse`): the golden tables (人口基础库
  ``mdm_person``, 法人基础库 ``mdm_enterprise``, their columns from :mod:`fields.dictionary`),
  provenance, crosswalk, relationships, unresolved references, review queue and decisions,
  conflicts, master-ID events and the published nights (``mdm_run``);
- the data-quality results (``dq_result``, ``dq_scorecard``: :mod:`quality.results`);
- the extraction's run state (``etl_*``: watermarks, the ledger, accepted deletions, schema
  snapshots: :mod:`etl.state`);
- the catalog of shared resources (``catalog``: :mod:`access.catalog`) and the audit log
  (``audit_log``: :mod:`access.audit`).

:func:`store.warehouse.engine_for` creates what is missing; the run state, the catalog and the
audit log also create their own tables where they are used first.
"""

from __future__ import annotations

import sqlalchemy as sa

from fields import dictionary

metadata = sa.MetaData()
_id = sa.String(16)
_name = sa.String(128)
_key = sa.String(256)
_run = sa.String(64)
_text = sa.Text


def _golden(entity: str, comment: str) -> sa.Table:
    """An entity's golden table: master ID, the dictionary's golden columns, then the tail."""
    return sa.Table(
        f"mdm_{entity}",
        metadata,
        sa.Column("master_id", _id, primary_key=True),
        *[sa.Column(f.name, f.sql, comment=f.unit) for f in dictionary.golden_fields(entity)],
        sa.Column("member_count", sa.Integer, nullable=False),
        sa.Column("departments", _text, nullable=False, comment="member rows' departments"),
        sa.Column("updated_at", sa.DateTime, comment="latest updated_at of any member row"),
        sa.Column("run_id", _run, nullable=False, comment="the night that last changed it"),
        comment=comment,
    )


person_table = _golden("person", "人口基础库: one golden record per person")
enterprise_table = _golden(
    "enterprise", "法人基础库: one golden record per enterprise (a branch is its own entity)"
)
provenance_table = sa.Table(
    "mdm_provenance",
    metadata,
    sa.Column("entity", sa.String(16), primary_key=True),
    sa.Column("master_id", _id, primary_key=True),
    sa.Column("attribute", sa.String(32), primary_key=True),
    sa.Column("department", _name, nullable=False),
    sa.Column("source_table", _name, nullable=False),
    sa.Column("source_key", _key, nullable=False),
    sa.Column("source_updated_at", sa.DateTime),
    sa.Column("candidates", sa.Integer, nullable=False, comment="member rows with a value"),
    sa.Column("agreeing", sa.Integer, nullable=False, comment="of them, with this value"),
    sa.Column(
        "rule",
        sa.String(32),
        nullable=False,
        comment="authority | completeness | agreement(k of n) | most_recent | rank | tiebreak",
    ),
    comment="where each golden attribute came from",
)
crosswalk_table = sa.Table(
    "mdm_crosswalk",
    metadata,
    sa.Column("entity", sa.String(16), primary_key=True),
    sa.Column("department", _name, primary_key=True),
    sa.Column("source_table", _name, primary_key=True),
    sa.Column("source_key", _key, primary_key=True),
    sa.Column("master_id", _id, nullable=False, index=True),
    sa.Column("link_rule", sa.String(32), nullable=False, comment="how the row joined"),
    sa.Column("link_probability", sa.Float),
    sa.Column("first_run_id", _run, nullable=False),
    comment="every accepted source row → its master ID",
)
relationship_table = sa.Table(
    "mdm_relationship",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),  # legal_representative | employer
    sa.Column("person_master_id", _id, primary_key=True),
    sa.Column("enterprise_master_id", _id, primary_key=True),
    sa.Column("evidence", sa.String(32), nullable=False, comment="the ID or credit code"),
    comment="person ↔ enterprise: legal representatives and employers",
)
person_relationship_table = sa.Table(
    "mdm_person_relationship",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),  # guardian
    sa.Column("person_master_id", _id, primary_key=True),
    sa.Column("related_master_id", _id, primary_key=True),
    sa.Column("evidence", sa.String(32), nullable=False, comment="the guardian's ID number"),
    comment=(
        "person ↔ person: guardians, from rows that hold a guardian's ID number instead of "
        "the person's own (a minor filed under a parent's number)"
    ),
)
unresolved_table = sa.Table(
    "mdm_unresolved_reference",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("master_id", _id, primary_key=True),
    sa.Column("evidence", sa.String(32), nullable=False),
    comment="a golden employer credit code or legal representative ID with no master entity",
)
conflict_table = sa.Table(
    "mdm_conflict",
    metadata,
    sa.Column("run_id", _run, primary_key=True),
    sa.Column("entity", sa.String(16), primary_key=True),
    sa.Column("master_id", _id, primary_key=True),
    sa.Column("attribute", sa.String(32), primary_key=True),
    sa.Column("department", _name, primary_key=True),
    sa.Column("source_table", _name, primary_key=True),
    sa.Column("source_key", _key, primary_key=True),
    sa.Column("value", _text),
    sa.Column("authority_department", _name, nullable=False),
    sa.Column("authority_value", _text),
    comment="多元校核: a department's value that contradicts the authority's golden value",
)
id_event_table = sa.Table(
    "mdm_id_event",
    metadata,
    sa.Column("run_id", _run, primary_key=True),
    sa.Column("entity", sa.String(16), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("event", sa.String(16), nullable=False),  # issued restored merged split retired
    sa.Column("master_id", _id, nullable=False, index=True),
    sa.Column("old_ids", _text, nullable=False),
    sa.Column("reason", _text, nullable=False),
    comment="master-ID history: what each night issued, restored, merged, split and retired",
)
review_queue_table = sa.Table(
    "mdm_review_queue",
    metadata,
    sa.Column("entity", sa.String(16), primary_key=True),
    sa.Column("left_record", _key, primary_key=True),
    sa.Column("right_record", _key, primary_key=True),
    sa.Column("left_master_id", _id, nullable=False),
    sa.Column("right_master_id", _id, nullable=False),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("weights", _text, nullable=False, comment="JSON: feature → level, weight"),
    sa.Column("run_id", _run, nullable=False, comment="the night the pair was first queued"),
    sa.Column("reason", _text, comment="why a reviewer is asked (中文)"),
    comment="pairs the model could not decide: a reviewer links or keeps them apart",
)
review_decision_table = sa.Table(
    "mdm_review_decision",
    metadata,
    sa.Column("entity", sa.String(16), primary_key=True),
    sa.Column("left_record", _key, primary_key=True),
    sa.Column("right_record", _key, primary_key=True),
    sa.Column("decision", sa.String(8), nullable=False),  # link | apart
    sa.Column("decided_by", _name, nullable=False),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("note", _text),
    comment="reviewers' decisions; they override the model on every later night",
)
run_table = sa.Table(
    "mdm_run",
    metadata,
    sa.Column("run_id", _run, primary_key=True),
    sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),  # full | delta
    sa.Column("state_dir", _text, nullable=False),
    sa.Column("summary", _text, nullable=False, comment="JSON counts of the night"),
    comment="published nights, newest last; the latest is what the tables hold",
)

# --- the run state of extraction ------------------------------------------------------------------

watermark_table = sa.Table(
    "etl_watermark",
    metadata,
    sa.Column("department", _name, primary_key=True),
    sa.Column("table_name", _name, primary_key=True),
    sa.Column("change_column", _name, nullable=False),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("run_id", _run, nullable=False),
    sa.Column("committed_at", sa.DateTime(timezone=True)),
)
pending_watermark_table = sa.Table(
    "etl_pending_watermark",
    metadata,
    sa.Column("run_id", _run, primary_key=True),
    sa.Column("department", _name, primary_key=True),
    sa.Column("table_name", _name, primary_key=True),
    sa.Column("change_column", _name, nullable=False),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("committed_at", sa.DateTime(timezone=True)),  # the proposal's time until moved
)
ledger_table = sa.Table(
    "etl_ledger",
    metadata,
    sa.Column("run_id", _run, primary_key=True),
    sa.Column("department", _name, primary_key=True),
    sa.Column("table_name", _name, primary_key=True),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("rows_read", sa.BigInteger, nullable=False),
    sa.Column("rows_deleted", sa.BigInteger),
    sa.Column("rows_unchanged", sa.BigInteger),
    sa.Column("rows_late", sa.BigInteger),
    sa.Column("rows_backdated", sa.BigInteger),
    sa.Column("rows_duplicate", sa.BigInteger),
    sa.Column("keys_before", sa.BigInteger),  # keys the committed key set held
    sa.Column("deletion_guard", sa.String(16)),  # held | accepted | None (within the limit)
    sa.Column("watermark_before", sa.Text),
    sa.Column("watermark_after", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("message", sa.Text),
    sa.Column("parquet_path", sa.Text),
)
deletion_acceptance_table = sa.Table(
    "etl_deletion_acceptance",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("department", _name, nullable=False),
    sa.Column("table_name", _name, nullable=False),
    sa.Column("rows_accepted", sa.BigInteger, nullable=False),
    sa.Column("held_run_id", _run),  # the night that held the deletion back
    sa.Column("accepted_by", _name, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("applied_run_id", _run),  # the night that let it through
    sa.Column("consumed_at", sa.DateTime(timezone=True)),  # that night was published
)
schema_snapshot_table = sa.Table(
    "etl_schema_snapshot",
    metadata,
    sa.Column("department", _name, primary_key=True),
    sa.Column("table_name", _name, primary_key=True),
    sa.Column("column_name", _name, primary_key=True),
    sa.Column("type_text", sa.Text, nullable=False),
    sa.Column("run_id", _run, nullable=False),
)

# --- data-quality results -------------------------------------------------------------------------

result_table = sa.Table(
    "dq_result",
    metadata,
    sa.Column("run_id", _run, primary_key=True),
    sa.Column("department", _name, primary_key=True, comment="the department that owns the rule"),
    sa.Column("rule_id", sa.String(64), primary_key=True),
    sa.Column("target", _name, nullable=False, comment="source table, or golden table"),
    sa.Column("column_name", _name, comment="the checked column, if any"),
    sa.Column("kind", sa.String(32), nullable=False, comment="completeness, validity, ..."),
    sa.Column("dimension", sa.String(8), nullable=False, comment="GB/T 36344 dimension"),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("description", sa.Text, nullable=False, comment="the rule, in Chinese"),
    sa.Column("fix", sa.Text, comment="how the department fixes it, in Chinese"),
    sa.Column("threshold", sa.Float, nullable=False, comment="minimum share of rows passing"),
    sa.Column("rows_checked", sa.Integer, nullable=False),
    sa.Column("rows_failed", sa.Integer, nullable=False),
    sa.Column("sample_keys", sa.Text, nullable=False, comment="JSON list of masked source keys"),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("held_back", sa.Boolean, nullable=False, comment="blocking failure: batch held"),
    sa.Column("message", sa.Text, comment="why it could not run, or what was observed"),
    comment="one night's data-quality results, per department and rule",
)

scorecard_table = sa.Table(
    "dq_scorecard",
    metadata,
    sa.Column("run_id", _run, primary_key=True),
    sa.Column("department", _name, primary_key=True),
    sa.Column("dimension", sa.String(8), primary_key=True, comment="a dimension, or 'overall'"),
    sa.Column("score", sa.Float, comment="0-100; NULL: no rule covers this dimension"),
    sa.Column("rules", sa.Integer, nullable=False, comment="rules that scored it"),
    sa.Column("grade", sa.String(2), comment="A/B/C/D (overall row only)"),
    sa.Column("change", sa.Float, comment="score minus the previous night's, if any"),
    comment="per department and night: a score per GB/T 36344 dimension and overall",
)

# --- the catalog and the audit log ----------------------------------------------------------------

catalog_table = sa.Table(
    "catalog",
    metadata,
    sa.Column("resource_id", sa.String(256), primary_key=True),
    sa.Column("field", sa.String(128), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("resource_title", sa.Text, nullable=False),
    sa.Column("resource_kind", sa.String(16), nullable=False, comment="golden | source"),
    sa.Column("entity", sa.String(16)),
    sa.Column("analyst_view", sa.String(64)),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("owner_code", sa.String(64)),
    sa.Column("contact", sa.Text),
    sa.Column("update_frequency", sa.String(16), nullable=False),
    sa.Column("share_type", sa.String(16), nullable=False),
    sa.Column("share_type_zh", sa.String(16), nullable=False),
    sa.Column("share_condition", sa.Text),
    sa.Column("share_basis", sa.Text),
    sa.Column("maps_to", sa.String(128), comment="canonical field of a source column"),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("data_type", sa.String(64)),
    sa.Column("authority", sa.String(64), comment="the authoritative department's code"),
    sa.Column("authority_name", sa.Text),
    sa.Column("masked", sa.Text, comment="how the analyst views show it; NULL: in clear"),
    comment="信息资源目录: every shared resource's fields, owner, authority and share type",
)
audit_table = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("who", sa.String(128), nullable=False, index=True),
    sa.Column("action", sa.String(32), nullable=False, index=True),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("role", sa.String(16), comment="analyst | privileged | steward | platform"),
    sa.Column("row_count", sa.BigInteger),
    sa.Column("outcome", sa.String(16), nullable=False, comment="running | ok | refused | failed"),
    sa.Column("detail", sa.Text, nullable=False, comment="JSON"),
    sa.Column("finished_at", sa.DateTime(timezone=True), comment="NULL while running"),
    comment="who read or changed the golden data, when, and what",
)


PUBLISHED_TABLES = (
    person_table,
    enterprise_table,
    provenance_table,
    crosswalk_table,
    relationship_table,
    person_relationship_table,
    unresolved_table,
    conflict_table,
    id_event_table,
    review_queue_table,
    review_decision_table,
    run_table,
    result_table,
    scorecard_table,
)
"""What the nights publish: the master tables and the data-quality results."""
STATE_TABLES = (
    watermark_table,
    pending_watermark_table,
    ledger_table,
    deletion_acceptance_table,
    schema_snapshot_table,
)
"""The extraction's run state."""
