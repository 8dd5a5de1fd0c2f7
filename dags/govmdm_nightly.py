"""
# govmdm_nightly — the city's night (每日夜间数据汇聚与主数据治理)

Every night at **02:00 Asia/Shanghai**: each department's source database is read (only what
changed since the last published night), standardized, and linked into the golden master tables
**人口基础库 `mdm_person`** and **法人基础库 `mdm_enterprise`**, published in one transaction.

- `plan`: the night's run ID (the logical date in Asia/Shanghai, e.g. `2026-07-02`) and its
  departments.
- `department.extract`, `department.standardize`, `department.validate`: one mapped instance
  per department, named by its code. Extraction is read-only and incremental by watermark; an
  unreachable source is retried with exponential backoff, schema drift fails at once.
  Standardization's counts must reconcile. Validation judges the department's blocking quality
  rules: a failure holds its batch back from the golden tables.
- `link` waits until every department is done and links whichever made it
  (`all_done_min_one_success`); the others are held back and keep their watermarks.
- `publish`: atomic publish of the golden tables; the watermarks move.
- `validate_golden`: every quality rule on the published night (department and golden-table
  rules, scorecards), then the `mdm_person` and `mdm_enterprise` Asset events with the night's
  counts and quality scores, for downstream DAGs scheduled on them.
- `build_reports`, `send_reports`: each department's report in Chinese (masked), e-mailed to
  its contact; the overview to the data-engineering contact.
- `summary` writes `var/nights/run=<id>/night.json` and fails the run if a department was
  flagged, after everything else is done.

**A failed department** shows as a red mapped task instance under its code, and its report says
so; the night goes on with every other department and its watermark stays put, so the next
night (or clearing the failed task with *Downstream*) reads it again. Failures e-mail the
data-engineering contact of `config/city.yaml` through the `smtp_default` connection.

Source databases are Airflow connections named as in `config/departments/*.yaml`
(`AIRFLOW_CONN_GONGAN`, a secrets backend, or the UI); each extraction holds a slot of its
database's pool `govmdm_source_<connection>` (or of `govmdm_sources` without the pool policy:
see dags/README.md). Manual runs take `departments` and `send_reports` parameters. See also
`govmdm_full_rebuild` and `govmdm_replay`.
"""

from __future__ import annotations

from airflow.sdk import CronTriggerTimetable
from govmdm_wiring import night_dag, nightly_params

night_dag(
    dag_id="govmdm_nightly",
    description="Nightly extract → standardize → link → publish of the golden tables",
    doc_md=__doc__,
    mode="nightly",
    schedule=CronTriggerTimetable("0 2 * * *", timezone="Asia/Shanghai"),
    params=nightly_params(),
    tags=["govmdm", "nightly", "master-data"],
)
