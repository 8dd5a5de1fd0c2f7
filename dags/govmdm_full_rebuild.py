"""
# govmdm_full_rebuild — read every source in full and rebuild the golden tables (全量重建)

Manual only. The same night as `govmdm_nightly`, except that every department is read **in
full** (not from its watermark; deletions found by comparing key sets) and every candidate pair
is compared again. Use it after onboarding a department, after fixing a department's schema
drift, or after changing `config/matching.yaml` (tick *Retrain the match model*).

Master IDs carry over by overlap, so a rebuild does not renumber anyone; the golden tables are
replaced in one transaction like any night. Parameters: `run_id` (empty: the logical date in
Asia/Shanghai), `retrain`, `departments`.

Trigger: `airflow dags trigger govmdm_full_rebuild -c '{"retrain": true}'`.
"""

from __future__ import annotations

from govmdm_wiring import night_dag, rebuild_params

night_dag(
    dag_id="govmdm_full_rebuild",
    description="Full extraction and full relink of every department (manual)",
    doc_md=__doc__,
    mode="rebuild",
    schedule=None,
    params=rebuild_params(),
    tags=["govmdm", "rebuild", "master-data"],
)
