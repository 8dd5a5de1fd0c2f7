"""
# govmdm_replay — recompute a past night from what it extracted (重放历史批次)

Manual only. Give the night's `run_id` (e.g. `2026-07-01`): its raw Parquet under
`var/raw/run=<id>/` is standardized, validated, linked, published and scored again, **without
touching any source database** (a source has moved on since that night; reading it again would
put today's rows under an old night). Linking starts from the night published before it, so
the result is what the night would have been; use it after fixing a bug in linking or a quality
rule, or when a night failed after extraction.

Only the latest published night (or a later one that never published) can be replayed: the
watermarks have moved on with every night since, and putting the golden tables back to an older
night would lose what the later nights read. For that, run `govmdm_full_rebuild`. A department
that failed that night has no raw data to replay and is flagged. Parameters: `run_id`
(required), `full` (compare every pair again), `retrain`, `departments`, `send_reports` (off:
the departments had that night's reports already).

Trigger: `airflow dags trigger govmdm_replay -c '{"run_id": "2026-07-01"}'`.
"""

from __future__ import annotations

from govmdm_wiring import night_dag, replay_params

night_dag(
    dag_id="govmdm_replay",
    description="Recompute a past night from its raw data (manual)",
    doc_md=__doc__,
    mode="replay",
    schedule=None,
    params=replay_params(),
    tags=["govmdm", "replay", "master-data"],
)
