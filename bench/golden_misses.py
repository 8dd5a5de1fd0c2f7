"""Golden values that miss the truth although a member row holds it: one block per miss.

For each master whose golden ``ATTRIBUTE`` differs from the true value while some member source
row holds the true value, print every member row (department, value, change stamp, whether it is
true) and the survivorship rule that chose, then a count of misses per rule and per department
that supplied the golden value. Run after a night on the sample city (``make demo``)::

    .venv/bin/python bench/golden_misses.py [ATTRIBUTE] [--config config] [--limit 20]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import pandas as pd

from etl.config import load_city_config
from master_data import evaluate as ev
from master_data.published import _state, published_night, warehouse
from store import layout
from store.tables import crosswalk_table, person_table, provenance_table
from store.warehouse import read as read_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("attribute", nargs="?", default="phone")
    parser.add_argument("--config", type=Path, default=Path("config"))
    parser.add_argument("--limit", type=int, default=20, help="Misses printed in full.")
    args = parser.parse_args()
    attr = args.attribute
    city = load_city_config(args.config)
    truth = ev.load_truth(layout.city_dir(city.var_dir))
    with warehouse(city) as engine:
        crosswalk = read_table(engine, crosswalk_table)
        golden = read_table(engine, person_table)
        prov = read_table(engine, provenance_table)
    records = _state(published_night(city).state_dir, "records")["person"]
    al = ev._align(crosswalk, truth.rows, truth.night)
    linked = al.linked[(al.linked["entity"] == "person") & (al.linked["entity_type"] == "person")]
    owner = ev.master_entities(linked)
    columns, fn = ev.SCORED["person"][attr]
    true = truth.entities("person")
    true_value = {
        pid: {v for c in columns if pd.notna(v := fn(true.at[pid, c]))} for pid in owner.unique()
    }
    g = golden.assign(master_id=golden["master_id"].astype(str)).set_index("master_id")
    g_norm = ev._normalised(g[attr], fn)
    keys = ["department", "source_table", "source_key"]
    xw = crosswalk[crosswalk["entity"] == "person"][[*keys, "master_id"]].astype(str)
    rows = records.assign(**{k: records[k].astype(str) for k in keys}).merge(xw, on=keys)
    rows = rows.assign(_norm=ev._normalised(rows[attr], fn))
    prov = prov[prov["attribute"] == attr].assign(master_id=lambda p: p["master_id"].astype(str))
    rule_of = prov.set_index("master_id")["rule"]
    dept_of = prov.set_index("master_id")["department"]
    by_master = rows.groupby("master_id")
    misses: list[str] = []
    for master, members in by_master:
        pid = owner.get(master)
        if pid is None or master not in g_norm.index:
            continue
        wanted = true_value[pid]
        if not wanted or not members["_norm"].isin(wanted).any():
            continue
        if g_norm[master] in wanted:
            continue
        misses.append(str(master))
    rules = Counter(str(rule_of.get(m)) for m in misses)
    depts = Counter(str(dept_of.get(m)) for m in misses)
    scored = sum(
        1
        for master, members in by_master
        if (pid := owner.get(master)) is not None and members["_norm"].isin(true_value[pid]).any()
    )
    print(f"{attr}: {len(misses)} misses of {scored} masters where a member holds the truth")
    print("by rule:", dict(rules.most_common()))
    print("by golden department:", dict(depts.most_common()))
    for master in misses[: args.limit]:
        members = by_master.get_group(master).sort_values(["department", "updated_at"])
        wanted = true_value[owner[master]]
        print(f"\n{master}  golden {g.at[master, attr]!r}  rule {rule_of.get(master)}")
        for _, r in members.iterrows():
            mark = "TRUE " if r["_norm"] in wanted else "     "
            print(f"  {mark}{r['department']:10} {r['source_key']:>12} {r['updated_at']!s:26} "
                  f"{r[attr]!s}")  # fmt: skip


if __name__ == "__main__":
    main()
