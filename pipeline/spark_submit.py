"""The application ``spark-submit`` runs for a night on the Spark engine: one stage, one night.

The nightly DAG's ``standardize`` and ``link`` tasks of a night whose city says
``engine: spark`` submit this file through Airflow's Apache Spark provider
(``SparkSubmitOperator``'s hook, connection ``spark_default``), with the night's run ID and
department on the command line, never data::

    spark-submit pipeline/spark_submit.py standardize --config config --run-id 2026-07-01 \\
        --department gongan
    spark-submit pipeline/spark_submit.py link --config config --run-id 2026-07-01 \\
        --departments gongan,minzheng --held shichang

The stage is the same function of :mod:`pipeline.night` a ``govmdm`` command runs, on the
SparkSession ``spark-submit`` set up (:func:`spark.session.session`). Its outcome lands in the
night's record (``<var>/nights/run=<id>/``) with the Spark application that ran it, where the
task reads it back. Exit status: 0 when the stage ran, whether or not it flagged the department
(the record says which); 2 for bad arguments; anything else is Spark's or the stage's crash.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

STAGES = ("standardize", "link")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spark_submit.py", description="Run one govmdm stage of one night on Spark."
    )
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--config", required=True, help="the configuration folder")
    parser.add_argument("--run-id", required=True, help="the night's run ID")
    parser.add_argument("--department", help="standardize: the department's code")
    parser.add_argument("--departments", default="", help="link: codes that made it, comma-sep.")
    parser.add_argument("--held", default="", help="link: codes held back tonight, comma-sep.")
    parser.add_argument("--full", action="store_true", help="link: compare every pair again")
    parser.add_argument("--retrain", action="store_true", help="link: fit the model afresh")
    return parser


def _codes(text: str) -> list[str]:
    return [c for c in (part.strip() for part in text.split(",")) if c]


def spark_info(night: Any) -> dict[str, str]:
    """The Spark application a stage ran on, for the night's record: master, application ID
    and whether shuffle and RPC traffic were encrypted."""
    from spark.session import session

    sc = session(night.var_dir, conf=night.city.spark).sparkContext
    conf = sc.getConf()
    return {
        "master": str(sc.master),
        "application_id": sc.applicationId,
        "io_encryption": conf.get("spark.io.encryption.enabled", "false"),
        "network_crypto": conf.get("spark.network.crypto.enabled", "false"),
    }


def noted(night: Any, stage: str, department: str | None = None) -> dict[str, Any]:
    """What the night's record holds for ``stage`` (of ``department``, for a per-department
    stage): how the task that submitted this application learns its outcome."""
    from pipeline.record import noted_night, read_json
    from store import layout

    if department is None:
        return noted_night(night, stage)
    path = layout.night_department_path(night.var_dir, night.run_id, department)
    return dict(read_json(path).get(stage) or {})


def run(argv: list[str]) -> dict[str, Any]:
    """Run the stage ``argv`` names on the Spark engine; its outcome as noted in the record."""
    from pipeline import night as glue
    from pipeline.context import Night
    from pipeline.record import note, note_night

    args = _parser().parse_args(argv)
    if args.stage == "standardize" and not args.department:  # before a JVM starts for nothing
        _parser().error("standardize needs --department")
    night = Night.open(Path(args.config), args.run_id, "spark")
    info = spark_info(night)
    if args.stage == "standardize":
        try:
            out = glue.standardize(night, args.department)
        except glue.DepartmentFlagged as exc:  # noted in the record by the stage
            print(f"govmdm: {exc}", file=sys.stderr)
            return {"status": exc.status, "message": str(exc)}
        outcome = {k: v for k, v in out.items() if k not in ("department", "stage")}
        return note(night, args.department, "standardize", {**outcome, "spark": info})
    out = glue.link(
        night,
        departments=_codes(args.departments),
        held=_codes(args.held),
        full=args.full,
        retrain=args.retrain,
    )
    return note_night(night, "link", {**out, "spark": info})


if __name__ == "__main__":
    # spark-submit puts this file's folder first on sys.path; govmdm is imported as installed
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    run(sys.argv[1:])
