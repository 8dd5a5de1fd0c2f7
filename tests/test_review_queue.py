"""The review queue's per-feature weights: what the model explains for each queued pair."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from master_data.model import FellegiSunter
from master_data.review_queue import review_queue
from master_data.settings import load_match_settings

ROOT = Path(__file__).resolve().parents[1]


def test_queued_weights_are_the_models_explanation_of_each_pair() -> None:
    model = FellegiSunter(
        m={"name": [0.1, 0.2, 0.7], "phone": [0.3, 0.7], "address": [0.4, 0.6]},
        u={"name": [0.8, 0.15, 0.05], "phone": [0.9, 0.1], "address": [0.7, 0.3]},
        prior=0.01,
        tf={"name": {"王伟": 0.02}},
        correlated=[["phone", "address"]],
    )
    band = pd.DataFrame(
        {
            "left": ["a", "b", "c", "d"],
            "right": ["e", "f", "g", "h"],
            "name": [2, 2, -1, 1],
            "phone": [1, 0, 1, -1],
            "address": [1, 1, 1, 0],
            "name_tf": [0.02, math.nan, math.nan, math.nan],
            "probability": [0.6, 0.7, 0.8, 0.9],
            "rule": [None] * 4,
            "corroborated": [True] * 4,
        }
    )
    master_of = pd.Series([f"M{i}" for i in range(8)], index=list("abcdefgh"))
    decisions = pd.DataFrame({"left_record": [], "right_record": []}, dtype=object)
    match = load_match_settings(ROOT / "config").entity("person")
    queue = review_queue(
        band, pd.Series(dtype=object), master_of, decisions, model, match, "person", "7"
    )
    assert list(queue["left_record"]) == ["a", "b", "c", "d"]
    for weights, row in zip(queue["weights"], band.to_dict("records"), strict=True):
        tf_u = {} if math.isnan(row["name_tf"]) else {"name": row["name_tf"]}
        explained = model.explain({f: row[f] for f in model.features}, tf_u=tf_u)
        assert json.loads(weights) == {
            f: {"level": level, "weight": round(w, 3)} for f, level, _, w in explained
        }
