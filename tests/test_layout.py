"""Project policy: library packages never import Airflow (STYLE.md, point 1)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_only_dags_import_airflow() -> None:
    offenders = []
    for package in (
        "fields",
        "store",
        "etl",
        "master_data",
        "quality",
        "access",
        "pipeline",
        "cli",
    ):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = (
                    [a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                )  # fmt: skip
                if any(n == "airflow" or n.startswith("airflow.") for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], f"Airflow imported outside dags/: {offenders}"


def test_top_level_layout() -> None:
    for name in ("pyproject.toml", "dags", "etl", "quality", "master_data", "config", "tests",
                 "bench", "airflow.cfg.example", "README.md", "Makefile", ".ci/run"):  # fmt: skip
        assert (ROOT / name).exists(), name
