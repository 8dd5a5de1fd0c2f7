"""Whether two linked nights' master states are the same, table by table.

    .venv/bin/python bench/state_diff.py OLD_STATE_DIR NEW_STATE_DIR

Each argument is a night's master-state folder (``<var>/master/run=<run_id>``). Compares, per
entity, every state table (records, block keys, edges, components, crosswalk, golden records,
provenance, conflicts, review queue, ID events, retired IDs, touched IDs), the model and the
match settings, and the relationships. Rows are compared as sets (sorted by every column) and
floats to 1e-9 relative, so the check holds for a change of algorithm that writes the same
rows in another order. Prints "identical", or per table the row counts and a few differing
rows; exits 1 on any difference. Use it to check that a faster linking gives the same night:
copy the state folder of a night linked before the change, link the night again, compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from master_data.night_state import read_state


def _table(path: Path) -> pa.Table:
    """A state file's table; a layered one's (records, block keys) with its layers."""
    return read_state(path.parent, path.name.removesuffix(".arrow"))


def _layer(path: Path) -> bool:
    """A layer file of a layered table: compared as part of its table."""
    return path.name.endswith((".dropped.arrow", ".added.arrow"))


def _frame(path: Path) -> pd.DataFrame:
    frame = _table(path).to_pandas()
    for c in frame.columns:
        if frame[c].dtype == object:  # lists (phones_all, reasons) and mixed cells: as text
            frame[c] = frame[c].map(
                lambda v: json.dumps(v.tolist() if isinstance(v, np.ndarray) else v, default=str)
            )
    return frame.sort_values(list(frame.columns), kind="mergesort").reset_index(drop=True)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """What differs between two tables (empty: nothing)."""
    if list(a.columns) != list(b.columns):
        if sorted(a.columns) != sorted(b.columns):
            return [f"columns {list(a.columns)} != {list(b.columns)}"]
        b = b[list(a.columns)].sort_values(list(a.columns), kind="mergesort")
        b = b.reset_index(drop=True)
    if len(a) != len(b):
        return [f"{len(a):,} rows != {len(b):,} rows"]
    out = []
    for c in a.columns:
        x, y = a[c], b[c]
        if x.dtype.kind == "f" and y.dtype.kind == "f":
            bad = ~np.isclose(x.to_numpy(), y.to_numpy(), rtol=1e-9, atol=0, equal_nan=True)
        else:
            bad = ~((x == y) | (x.isna() & y.isna())).to_numpy()
        if bad.any():
            at = np.flatnonzero(bad)[:3]
            out.append(
                f"column {c}: {int(bad.sum()):,} rows differ, e.g. "
                f"{x.iloc[at].tolist()} != {y.iloc[at].tolist()}"
            )
    return out


def diff(old: Path, new: Path) -> dict[str, list[str]]:
    """Per state file (relative path), what differs; empty when the nights are the same."""
    found: dict[str, list[str]] = {}
    names = sorted(
        {p.relative_to(old) for p in old.rglob("*") if p.is_file() and not _layer(p)}
        | {p.relative_to(new) for p in new.rglob("*") if p.is_file() and not _layer(p)}
    )
    for name in names:
        a, b = old / name, new / name
        if not a.is_file() or not b.is_file():
            found[str(name)] = [f"only in {old if a.is_file() else new}"]
        elif name.suffix == ".arrow":
            if _table(a).equals(_table(b)):
                continue  # the same rows in the same order: no need to sort them
            problems = _same(_frame(a), _frame(b))
            if problems:
                found[str(name)] = problems
        elif name.name == "summary.json":
            keep = ("mode", "relationships", "unresolved_references", "next_seq")
            sa, sb = json.loads(a.read_text()), json.loads(b.read_text())
            for k in keep:
                if sa.get(k) != sb.get(k):
                    found.setdefault(str(name), []).append(f"{k}: {sa.get(k)} != {sb.get(k)}")
            for entity, ea in sa["entities"].items():
                eb = sb["entities"].get(entity, {})
                for k, v in ea.items():
                    if k != "seconds" and eb.get(k) != v:
                        found.setdefault(str(name), []).append(f"{entity}.{k}: {v} != {eb.get(k)}")
        elif a.read_bytes() != b.read_bytes():
            found[str(name)] = ["contents differ"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args()
    found = diff(args.old, args.new)
    if not found:
        print("identical")
        return
    for name, problems in found.items():
        print(name)
        for p in problems:
            print("   ", p)
    sys.exit(1)


if __name__ == "__main__":
    main()
