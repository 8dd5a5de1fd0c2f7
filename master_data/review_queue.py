"""The review queue: pairs the model could not decide that ended in different entities.

A pair goes to a reviewer when no rule links it, its match probability lies between the
``review`` and ``auto_link`` thresholds, its records ended in different master entities, they do
not hold two different hard keys (those can never be linked: no use asking), and no reviewer
has decided on it yet; or when its probability reaches ``auto_link`` but only name, birth date
and sex back it (:func:`master_data.deterministic.corroborated`). Each queued pair carries the
per-feature match weights behind its score, why it is queued (``reason``, in Chinese, as the
review page shows it) and the night it was first queued.

>>> queue = review_queue(edges, hard_keys, master_of, decisions, model, match, "person", run_id)
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa

from master_data.model import FellegiSunter
from master_data.settings import EntityMatch, Thresholds
from master_data.tf import u_column

UNDECIDED = "匹配概率 {p:.3f} 介于复核阈值 {review:g} 与自动链接阈值 {auto:g} 之间：模型无法判定"
UNCORROBORATED = (
    "匹配概率 {p:.3f} 已达自动链接阈值 {auto:g}，但只有姓名、出生日期、性别相符，"
    "身份证号、电话、所在区县均无佐证：同名同生日者常是两个人，须人工确认"
)
"""Why a pair is queued: its probability is in the review band, or it reaches ``auto_link``
without corroboration (:data:`master_data.deterministic.CORROBORATION`)."""


def reasons(probability: pd.Series, thresholds: Thresholds) -> list[str]:
    """Why each pair of that ``probability`` is in the queue (中文).

    >>> reasons(pd.Series([0.7, 0.995]), Thresholds())[1][:20]
    '匹配概率 0.995 已达自动链接阈值 0.99'
    """
    return [
        (UNDECIDED if p < thresholds.auto_link else UNCORROBORATED).format(
            p=p, review=thresholds.review, auto=thresholds.auto_link
        )
        for p in probability.to_numpy(dtype=float)
    ]


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
    return _queue(band, model, master_of, entity, run_id, t)


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
    band: pd.DataFrame,
    model: FellegiSunter,
    master_of: pd.Series,
    entity: str,
    run_id: str,
    thresholds: Thresholds,
) -> pd.DataFrame:
    features = model.features
    tf_u = {f: band[u_column(f)].to_numpy(np.float64) for f in model.tf if u_column(f) in band}
    # every pair's weights at once, as FellegiSunter.explain gives them for one pair: the
    # weights of a pair depend on that pair alone
    matrix = model.weights(band[features], tf_u).to_numpy()
    levels = band[features].to_numpy(np.int64)
    weights = [
        json.dumps(
            {
                f: {"level": int(lv), "weight": round(float(w), 3)}
                for f, lv, w in zip(features, row_levels, row_weights, strict=True)
            },
            ensure_ascii=False,
        )
        for row_levels, row_weights in zip(levels, matrix, strict=True)
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
            "reason": pd.Series(reasons(band["probability"], thresholds), dtype=object),
        }
    )
