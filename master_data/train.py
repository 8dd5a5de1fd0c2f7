"""Training the match model: u from random record pairs, then m and the prior by EM.

Blocking makes the candidate pairs mostly true matches, so EM alone cannot tell which of its
two classes is the non-matches; random pairs are almost all non-matches and pin u down. A full
night (or ``--retrain``) fits the model; a delta night reuses the base night's, so a delta night
and a full rebuild on the same data score every pair alike.

>>> model = train(records, cmp.compare(records, pairs, "person"), "person", settings)
>>> model.features[:2]
['name', 'id_number']
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from master_data import compare as cmp
from master_data.model import (
    MIN_PAIRS,
    DegenerateModelError,
    FellegiSunter,
    fit_coincidence,
    pattern_counts,
    u_from_counts,
)
from master_data.settings import MatchSettings

log = logging.getLogger(__name__)

RANDOM_PAIRS = 200_000
_SEED = 20260630  # fixed: the same rows give the same model
RULES_ONLY_PRIOR = 1e-9


def top_levels(entity: str) -> dict[str, int]:
    """Each comparison feature's top agreement level (the model's ``levels``)."""
    return {f.label: f.max_level for f in cmp.features_for(entity)}


def train(
    records: pd.DataFrame, levels: pd.DataFrame, entity: str, settings: MatchSettings
) -> FellegiSunter:
    """Fit the model on ``records`` and their candidate pairs' comparison ``levels``.

    A feature that no random pair can compare (no department supplies the field, or every
    value is empty tonight) is left out of the model with a warning (:func:`features_left_out`
    names them). With fewer than two records, fewer than ``MIN_PAIRS`` candidate pairs or no
    feature left there is nothing to learn from: the model is :func:`rules_only`.
    """
    if len(records) < 2 or len(levels) < MIN_PAIRS:
        return _too_few(entity, len(records), len(levels))
    tops = top_levels(entity)
    randomly = cmp.compare(records, random_pairs(records.index.to_numpy()), entity)
    return fit_counted(
        pattern_counts(levels, levels=tops),
        pattern_counts(randomly, levels=tops),
        len(records),
        entity,
        settings,
    )


def fit_counted(
    counts: pd.DataFrame,
    random: pd.DataFrame,
    records: int,
    entity: str,
    settings: MatchSettings,
) -> FellegiSunter:
    """Fit the model from pattern counts (:func:`master_data.model.pattern_counts`, or a
    ``GROUP BY`` of the levels on another engine): ``counts`` of the candidate pairs,
    ``random`` of the random pairs (:func:`random_pairs`) among ``records`` records. A feature
    no random pair can compare is left out (:func:`features_left_out`); with none left, the
    model is :func:`rules_only`, as it is with fewer than two records or ``MIN_PAIRS`` pairs."""
    if records < 2 or int(counts["count"].sum()) < MIN_PAIRS:
        return _too_few(entity, records, int(counts["count"].sum()))
    tops = top_levels(entity)
    absent = [f for f in tops if not (random.loc[random[f] >= 0, "count"] > 0).any()]
    if absent:
        log.warning(
            "%s: left out of the model, no department supplies a value tonight: %s",
            entity,
            ", ".join(absent),
        )
    tops = {f: k for f, k in tops.items() if f not in absent}
    if not tops:
        log.warning("%s: no comparison feature has a value in any record: rules only", entity)
        return rules_only(entity)
    if absent:  # the same pairs, counted over the features that are left
        counts = counts.groupby(list(tops), as_index=False)["count"].sum()
        random = random.groupby(list(tops), as_index=False)["count"].sum()
    u = u_from_counts(random, levels=tops)
    pairs = int(counts["count"].sum())
    try:
        fitted = FellegiSunter.fit_counts(
            counts, levels=tops, max_iter=settings.em.max_iter, tol=settings.em.tol, fixed_u=u
        )
    except DegenerateModelError as exc:
        if "λ =" not in str(exc):
            raise
        # Blocking found (almost) nothing but matches: then the candidates' level frequencies
        # are m itself, which is where EM was heading.
        log.warning("%s: EM put every candidate in one class; m from candidate frequencies", entity)
        fitted = FellegiSunter(_frequencies(counts, tops), u, 1 - 1 / (pairs + 2))
    # EM's prior is the share of matches among the *candidates*; u describes random pairs. The
    # prior that goes with u is the share among *all* pairs: λ · candidates / all pairs.
    everyone = max(records * (records - 1) / 2, 1.0)
    prior = min(fitted.prior * pairs / everyone, 0.5)
    fitted = dataclasses.replace(fitted, prior=prior)
    together = settings.entity(entity).coincidence
    if together is None:
        return fitted
    return fit_coincidence(fitted, counts, together.agree, together.without)


def _too_few(entity: str, records: int, pairs: int) -> FellegiSunter:
    log.warning(
        "%s: %d records, %d candidate pairs: too few to train a model; only the rules "
        "(same ID number / credit code) link tonight",
        entity,
        records,
        pairs,
    )
    return rules_only(entity)


def rules_only(entity: str) -> FellegiSunter:
    """A model that learnt nothing: every feature's m equals its u and the prior is tiny, so
    no pair links by probability and only the deterministic rules link records."""
    flat = {f: [1 / (k + 1)] * (k + 1) for f, k in top_levels(entity).items()}
    return FellegiSunter(flat, flat, RULES_ONLY_PRIOR)


def is_rules_only(model: FellegiSunter) -> bool:
    """Whether ``model`` is :func:`rules_only`'s (the night summary says so)."""
    return model.prior == RULES_ONLY_PRIOR and model.m == model.u


def features_changed(model: FellegiSunter, entity: str) -> list[str]:
    """The features ``model`` knows with other levels than today's comparison makes (a model
    fitted before an upgrade): such a model cannot score tonight's pairs."""
    tops = top_levels(entity)
    return [f for f, top in model.levels.items() if tops.get(f) != top]


def features_left_out(model: FellegiSunter, entity: str) -> list[str]:
    """The comparison features of ``entity`` that ``model`` does without (no values to learn
    from when it was trained)."""
    return [f for f in top_levels(entity) if f not in model.m]


def _frequencies(counts: pd.DataFrame, tops: dict[str, int]) -> dict[str, list[float]]:
    """Each feature's level frequencies among the counted pairs (missing ignored), half-count
    smoothed."""
    out = {}
    weights = counts["count"].to_numpy(dtype=np.int64)
    for f, top in tops.items():
        values = counts[f].to_numpy(dtype=np.int64)
        seen = values >= 0
        tally = np.bincount(values[seen], weights=weights[seen], minlength=top + 1)[: top + 1]
        out[f] = ((tally + 0.5) / (tally + 0.5).sum()).tolist()
    return out


def random_pairs(ids: np.ndarray, n: int = RANDOM_PAIRS) -> pd.MultiIndex:
    """Up to ``n`` distinct random pairs of different records among the sorted record ``ids``,
    deterministic for the same IDs."""
    left, right = random_positions(len(ids), n)
    return pd.MultiIndex.from_arrays([ids[left], ids[right]])


def random_positions(size: int, n: int = RANDOM_PAIRS) -> tuple[np.ndarray, np.ndarray]:
    """:func:`random_pairs` among ``size`` sorted records, as their positions (``left <
    right``, ordered by left then right)."""
    rng = np.random.default_rng(_SEED)
    a = rng.integers(0, size, n)
    b = rng.integers(0, size, n)
    keep = a != b
    a, b = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    coded = np.unique(a.astype(np.int64) * size + b)
    return coded // size, coded % size
