"""The house is layered: each package imports only from the layers below it, no module imports
itself back through another (not even from inside a function), and the stage packages load
without the command line or Airflow.

Layers, bottom to top (README, "Layout"):

    fields       the data dictionary, identifiers, divisions, normalization, masking
    store        the var/ layout and the warehouse tables
    etl          configuration, sources, extract, standardize, the sample city
    master_data  linkage, clustering, master IDs, survivorship, publish
    quality      data-quality rules, suites, scorecards, reports, delivery
    access       analyst views, share policy, query, export, lookup, catalog, review, audit
    spark        the Spark engine: the stages' kernels inside Apache Spark
    pipeline     one function per stage of the night
    web          the review page and the linkage pages (`govmdm review serve` starts it)
    cli, dags    commands and DAG wiring
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "fields": 0,
    "store": 1,
    "etl": 2,
    "master_data": 3,
    "quality": 4,
    "access": 5,
    "spark": 6,
    "pipeline": 7,
    "web": 8,
    "cli": 9,
    "dags": 9,
}
STAGE_PACKAGES = ["fields", "store", "etl", "master_data", "quality", "access", "spark", "pipeline"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[tuple[str, int]]]:
    """Every project import of every library module, at module level or inside a function."""
    modules = {
        _module_name(p): p for package in LAYERS for p in sorted((ROOT / package).rglob("*.py"))
    }
    edges: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from pkg import mod` imports the module pkg.mod when there is one
                targets = [
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                ]
            else:
                continue
            for target in targets:
                if target.split(".")[0] in LAYERS and target != name:
                    edges[name].add((target, node.lineno))
    return edges


def test_no_import_reaches_up_a_layer() -> None:
    upward = [
        f"{module}:{line} imports {target}"
        for module, targets in sorted(_imports().items())
        for target, line in sorted(targets)
        if LAYERS[target.split(".")[0]] > LAYERS[module.split(".")[0]]
    ]
    assert upward == [], "imports from a higher layer:\n" + "\n".join(upward)


def test_sideways_imports_only_between_cli_modules() -> None:
    """cli and dags share a layer but never import each other."""
    sideways = [
        f"{module}:{line} imports {target}"
        for module, targets in sorted(_imports().items())
        for target, line in sorted(targets)
        if {module.split(".")[0], target.split(".")[0]} == {"cli", "dags"}
    ]
    assert sideways == []


def test_no_package_imports_another_packages_private_names() -> None:
    """What one package uses of another is public there: a private name may change with no
    other package in mind."""
    private = [
        f"{path}:{node.lineno} imports {node.module}.{alias.name}"
        for package in LAYERS
        for path in sorted((ROOT / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
        if node.module.split(".")[0] in LAYERS and node.module.split(".")[0] != package
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []


def test_no_import_cycle_between_modules() -> None:
    edges = {m: {t for t, _ in ts} for m, ts in _imports().items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("package", STAGE_PACKAGES)
def test_stage_package_loads_without_cli_or_airflow(package: str) -> None:
    """Importing every module of a stage package pulls in neither the CLI nor Airflow."""
    modules = [
        _module_name(p)
        for p in sorted((ROOT / package).rglob("*.py"))
        if "sample_city" not in p.parts or package == "etl"
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('cli', 'airflow', 'dags'))\n"
        "print(','.join(bad))\n"
        "print('loaded')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    # "loaded": nothing on the way exited the interpreter early (an optional dependency's
    # import-time check once ended `python -c` silently with status 0)
    assert done.stdout.split() == ["loaded"], f"{package} imports {done.stdout.strip()}"
