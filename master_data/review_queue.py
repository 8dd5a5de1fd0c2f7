"""The review queue: pairs the model could not decide that ended in different entities.

A pair goes to a reviewer when no rule links it, its match probability lies between the
``review`` and ``auto_link`` thresholds, its records ended in different master entities, they do
not hold two different hard keys (those can never be linked: no use asking), and no reviewer
has decided on it yet. Each queued pair carries the per-feature match weights behind its score,
and the night it was first queued.

>>> queue = review_queue(edges, hard_keys, master_of, decisions, model, match, "person", run_id)
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa

from master_data.model import FellegiSunter
from master_data.settings import EntityMatch


def review_queue(
    edges: pd.DataFrame,
    hard_keys: pd.Series,
    master_of: pd.Series,
    decisions: pd.DataFrame,
    model: FellegiSunter,
    match: EntityMatch,
    entity: str,
    run_id: str,
) -> pd.DataFrame:
    """Undecided pairs of ``edges`` in the review band that ended in different entities."""
    t = match.thresholds
    sure = edges["corroborated"].fillna(True).astype(bool) if "corroborated" in edges else True
    band = edges[
        edges["rule"].isna()
        & (edges["probability"] >= t.review)
        & ((edges["probability"] < t.auto_link) | ~sure)
    ]
    apart_now = (
        master_of.reindex(band["left"]).to_numpy() != master_of.reindex(band["right"]).to_numpy()
    )
    ka, kb = hard_keys.reindex(band["left"]).to_numpy(), hard_keys.reindex(band["right"]).to_numpy()
    linkable = ~(pd.notna(ka) & pd.notna(kb) & (ka != kb))
    band = band[apart_now & linkable]
    done = set(zip(decisions["left_record"], decisions["right_record"], strict=True))
    open_pair = [
        (a, b) not in done and (b, a) not in done
        for a, b in zip(band["left"], band["right"], strict=True)
    ]
    band = band[np.asarray(open_pair, dtype=bool)]
    return _queue(band, model, master_of, entity, run_id)


def since(review: pd.DataFrame, queued: pa.Table, run_id: str) -> pd.DataFrame:
    """``review`` with each pair's ``run_id`` set to the night it was first queued: the night
    in ``queued`` (last night's queue) if it was there, else tonight."""
    if not len(review):
        return review
    first = review[["left_record", "right_record"]].merge(
        queued.select(["left_record", "right_record", "run_id"]).to_pandas(),
        on=["left_record", "right_record"],
        how="left",
    )["run_id"]
    return review.assign(run_id=first.fillna(run_id).to_numpy())


def _queue(
    band: pd.DataFrame, model: FellegiSunter, master_of: pd.Series, entity: str, run_id: str
) -> pd.DataFrame:
    features = model.features
    weights = [
        json.dumps(
            {f: {"level": int(lv), "weight": round(w, 3)} for f, lv, _, w in model.explain(row)},
            ensure_ascii=False,
        )
        for row in band[features].to_dict("records")
    ]
    return pd.DataFrame(
        {
            "entity": entity,
            "left_record": band["left"].to_numpy(),
            "right_record": band["right"].to_numpy(),
            "left_master_id": master_of.reindex(band["left"]).to_numpy(),
            "right_master_id": master_of.reindex(band["right"]).to_numpy(),
            "probability": band["probability"].to_numpy(),
            "weights": pd.Series(weights, dtype=object),
            "run_id": run_id,
        }
    )
