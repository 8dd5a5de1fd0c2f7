"""Project policy: library packages never import Airflow (STYLE.md, point 1), and README's
layout tree names every folder and module there is, and nothing that is not."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = (
    "fields",
    "store",
    "etl",
    "master_data",
    "quality",
    "access",
    "spark",
    "pipeline",
    "cli",
)


def _imported_names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return []


def test_only_dags_import_airflow() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for package in LIBRARY
        for path in sorted((ROOT / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if any(n == "airflow" or n.startswith("airflow.") for n in _imported_names(node))
    ]
    assert offenders == [], f"Airflow imported outside dags/: {offenders}"


def test_top_level_layout() -> None:
    names = [*LIBRARY, "dags", "config", "tests", "bench", "pyproject.toml", "README.md"]
    for name in [*names, "airflow.cfg.example", "Makefile", ".ci/run"]:
        assert (ROOT / name).exists(), name


def _layout_tree() -> dict[str, set[str]]:
    """README's layout tree: each top-level folder with the module names listed under it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    tree: dict[str, set[str]] = {}
    folder = ""
    for line in block.splitlines():
        if m := re.match(r"^([a-z_]+)/ ", line):
            folder = m.group(1)
            tree[folder] = set()
        elif line.startswith("  ") and folder:
            tree[folder] |= set(re.findall(r"\b[a-z_]+\.py\b", line))
            tree[folder] |= set(re.findall(r"^  ([a-z_]+/)", line))
    return tree


def test_readme_layout_tree_matches_the_folders() -> None:
    tree = _layout_tree()
    for package in LIBRARY:
        assert package in tree, f"README's layout tree lacks {package}/"
        on_disk = {
            p.name if p.is_file() else f"{p.name}/"
            for p in (ROOT / package).iterdir()
            if (p.suffix == ".py" and not p.name.startswith("__"))
            or (p.is_dir() and (p / "__init__.py").exists())
        }
        assert tree[package] == on_disk, (
            f"README lists under {package}/ {sorted(tree[package] - on_disk)} that are not "
            f"there and leaves out {sorted(on_disk - tree[package])}"
        )
