"""Unsupervised Fellegi–Sunter match model over multi-level comparison vectors.

The input is a table of comparison levels: one int column per feature, one row per candidate
pair (a MultiIndex of record keys), with ``-1`` = missing (one side had no value; the feature
then carries weight 0), ``0`` = disagree and ``1 … k`` = increasingly strong agreement. The
model holds, per feature and level, ``m`` = P(level | match) and ``u`` = P(level | non-match),
and ``prior`` = λ = P(match) among candidate pairs. It is fitted by EM on the distinct
comparison vectors weighted by their counts, so millions of pairs train in seconds.

recordlinkage's ECMClassifier is not used: its deterministic start accepts only binary features
(the other start is random) and it has no notion of a missing comparison.

EM needs at least three features (two cannot identify two classes) unless u is given.

Example:
    >>> df, truth = simulate_pairs(
    ...     5_000, prior=0.3,
    ...     m={"name": [0.05, 0.15, 0.8], "birth": [0.1, 0.9], "phone": [0.3, 0.7]},
    ...     u={"name": [0.7, 0.25, 0.05], "birth": [0.9, 0.1], "phone": [0.95, 0.05]},
    ... )
    >>> model = FellegiSunter.fit(df, levels={"name": 2, "birth": 1, "phone": 1})
    >>> round(model.prior, 1)
    0.3
    >>> flagged = model.probability(df) > 0.5
    >>> bool(flagged[truth].mean() > 0.9 and truth[flagged].mean() > 0.9)
    True
    >>> FellegiSunter.from_json(model.to_json()) == model
    True
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = [
    "EPS",
    "FORMAT",
    "MIN_PAIRS",
    "MISSING",
    "Coincidence",
    "DegenerateModelError",
    "FellegiSunter",
    "fit_coincidence",
    "pattern_counts",
    "simulate_pairs",
    "u_from_counts",
    "u_from_random_pairs",
]

log = logging.getLogger(__name__)

FORMAT = "govmdm.fellegi_sunter/1"
MISSING = -1
EPS = 1e-6
"""Every probability (m, u, λ) is kept inside [EPS, 1 - EPS] so that every weight is finite."""
MIN_PAIRS = 50
"""Fewer candidate pairs than this cannot identify a two-class mixture: ``fit`` refuses."""
UNINFORMATIVE_TVD = 0.05
"""A feature whose m and u differ by less than this total-variation distance separates nothing."""
UNINFORMATIVE_ASSOCIATION = 0.05
"""Cramér's V below which a feature is reported as varying with no other feature."""

Probabilities = dict[str, list[float]]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
TfU = Mapping[str, FloatArray]
"""Per feature, one term-frequency u_v per pair (NaN: none): :func:`master_data.tf.pair_u`."""


class DegenerateModelError(ValueError):
    """EM found no usable split of the candidate pairs into matches and non-matches."""


@dataclass(frozen=True)
class Coincidence:
    """Features whose agreement together is commoner among different people than the product
    of their u says: namesakes born on one day are far commoner than name share × 1/365.25
    days × ½ sex. Where every feature of ``agree`` is at its top level and ``without`` is
    missing (no ID number can tell), the pair's weight changes by ``weight`` bits (≤ 0: log2
    of 1/κ, κ how many times more often the agreement happens by chance than independence
    says; booked on the first feature of ``agree``, so weights still sum to the score), and
    each feature of ``u`` weighs log2(m / u among such namesakes) instead of log2(m / u among
    random pairs): a namesake is no random person (he may live in the same district as often
    as not). Both are fitted by :func:`fit_coincidence`."""

    agree: tuple[str, ...]
    without: str | None
    weight: float = 0.0
    u: dict[str, list[float]] = field(default_factory=dict)
    m: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Patterns:
    """The distinct comparison vectors of a table (levels shifted by one: 0 = missing)."""

    codes: IntArray  # shape (distinct vectors, features)
    counts: FloatArray  # shape (distinct vectors,)
    missing: dict[str, int]
    pairs: int


@dataclass
class FellegiSunter:
    """A fitted (or loaded) Fellegi–Sunter model.

    ``m[f][l]`` and ``u[f][l]`` are the probabilities of level ``l`` (0 = disagree … k_f) of
    feature ``f`` among matches and non-matches; ``prior`` is λ. Everything else records how the
    model was trained, without timestamps, so that refitting the same pairs gives the same JSON.

    Example:
        >>> model = FellegiSunter(m={"sex": [0.125, 0.875]}, u={"sex": [0.5, 0.5]}, prior=0.2)
        >>> model.explain({"sex": 0}, labels={"sex": ["different", "same"]})
        [('sex', 0, 'different', -2.0)]
        >>> model.prior_weight
        -2.0
    """

    m: Probabilities
    u: Probabilities
    prior: float
    iterations: int = 0
    converged: bool = False
    pairs: int = 0
    distinct_vectors: int = 0
    missing: dict[str, int] = field(default_factory=dict)
    log_likelihood: float | None = None
    lr_statistic: float | None = None
    fixed_u: list[str] = field(default_factory=list)
    max_iter: int | None = None
    tol: float | None = None
    tf: dict[str, dict[str, float]] = field(default_factory=dict)
    """Term frequencies (:mod:`master_data.tf`): per feature, each value's u_v; an exact
    agreement on v weighs log2(m/u_v) instead of log2(m/u)."""
    correlated: list[list[str]] = field(default_factory=list)
    """Groups of features that agree together among non-matches too (a family shares its
    address and its phone): where every feature of a group agrees at its top level, only the
    strongest of their weights counts."""
    coincidence: Coincidence | None = None
    """Features agreeing together by chance more often than independence says
    (:class:`Coincidence`), with the weight fitted for it."""

    def __post_init__(self) -> None:
        if set(self.m) != set(self.u):
            raise ValueError(
                f"m and u name different features: {sorted(set(self.m) ^ set(self.u))}"
            )
        for f in self.m:
            if len(self.m[f]) != len(self.u[f]) or len(self.m[f]) < 2:
                raise ValueError(
                    f"feature {f!r}: m has {len(self.m[f])} levels and u {len(self.u[f])}; "
                    "both need the same number, at least 2 (disagree and agree)"
                )
            for name, p in (("m", self.m[f]), ("u", self.u[f])):
                if not all(0.0 < x <= 1.0 for x in p) or abs(sum(p) - 1.0) > 1e-6:
                    raise ValueError(
                        f"{name}[{f!r}] must be positive probabilities summing to 1, got {p}"
                    )
        if not 0.0 < self.prior < 1.0:
            raise ValueError(f"prior must lie strictly between 0 and 1, got {self.prior}")

    # ----------------------------------------------------------------------------------- shape
    @property
    def features(self) -> list[str]:
        """Feature names in model order (the order of ``weights`` columns)."""
        return list(self.m)

    @property
    def levels(self) -> dict[str, int]:
        """Highest agreement level k_f of each feature (levels run 0 … k_f)."""
        return {f: len(p) - 1 for f, p in self.m.items()}

    @property
    def prior_weight(self) -> float:
        """log2(λ / (1 - λ)): the score of a pair about which nothing is known."""
        return math.log2(self.prior / (1.0 - self.prior))

    def level_weights(self) -> dict[str, list[float]]:
        """log2(m/u) per feature and level (level 0 first).

        Example:
            >>> FellegiSunter(m={"a": [0.2, 0.8]}, u={"a": [0.8, 0.2]}, prior=0.5).level_weights()
            {'a': [-2.0, 2.0]}
        """
        return {
            f: [math.log2(mi / ui) for mi, ui in zip(self.m[f], self.u[f], strict=True)]
            for f in self.m
        }

    def uninformative_features(self, threshold: float = UNINFORMATIVE_TVD) -> list[str]:
        """Features whose m and u are nearly equal (total variation distance below threshold)."""
        return [f for f in self.m if _tvd(self.m[f], self.u[f]) < threshold]

    # ------------------------------------------------------------------------------------- fit
    @classmethod
    def fit(
        cls,
        levels_df: pd.DataFrame,
        *,
        levels: Mapping[str, int] | None = None,
        max_iter: int = 100,
        tol: float = 1e-6,
        fixed_u: Mapping[str, Sequence[float]] | None = None,
        init: FellegiSunter | None = None,
    ) -> FellegiSunter:
        """Estimate m, u and λ by expectation–maximisation; deterministic.

        ``levels`` gives the highest agreement level k_f of each feature (so the feature has
        k_f + 1 parameters, including levels that never occur in this night's pairs); without it,
        k_f is the largest level seen. ``fixed_u`` holds u fixed for the features it names, e.g.
        from :func:`u_from_random_pairs`. ``init`` warm-starts from an earlier model (last
        night's); otherwise m starts at 0.9 on the top level and u at the observed level
        frequencies. Raises ``ValueError`` for fewer than ``MIN_PAIRS`` pairs or bad input and
        :class:`DegenerateModelError` if EM finds no match class.

        Example:
            >>> df, _ = simulate_pairs(
            ...     2_000, prior=0.2, seed=1,
            ...     m={"a": [0.1, 0.9], "b": [0.2, 0.8], "c": [0.1, 0.3, 0.6]},
            ...     u={"a": [0.9, 0.1], "b": [0.7, 0.3], "c": [0.8, 0.15, 0.05]},
            ... )
            >>> FellegiSunter.fit(df, levels={"a": 1, "b": 1, "c": 2}).converged
            True
        """
        tops = _resolve_levels(levels_df, levels)
        return cls._fit(_patterns(levels_df, tops), tops, max_iter, tol, fixed_u, init)

    @classmethod
    def fit_counts(
        cls,
        counts: pd.DataFrame,
        *,
        levels: Mapping[str, int],
        max_iter: int = 100,
        tol: float = 1e-6,
        fixed_u: Mapping[str, Sequence[float]] | None = None,
        init: FellegiSunter | None = None,
    ) -> FellegiSunter:
        """:meth:`fit` from the comparison patterns' counts instead of the pairs: ``counts``
        holds one column per feature (levels as in :meth:`fit`) and ``count``, the number of
        pairs with that vector (a vector may appear on several rows: they add up). The same
        pairs give the same model, to the last bit, however they were counted (a Spark
        ``GROUP BY`` of the level columns, or :func:`pattern_counts` here).

        Example:
            >>> df, _ = simulate_pairs(
            ...     2_000, prior=0.2, seed=1,
            ...     m={"a": [0.1, 0.9], "b": [0.2, 0.8], "c": [0.1, 0.3, 0.6]},
            ...     u={"a": [0.9, 0.1], "b": [0.7, 0.3], "c": [0.8, 0.15, 0.05]},
            ... )
            >>> tops = {"a": 1, "b": 1, "c": 2}
            >>> counted = pattern_counts(df, levels=tops)
            >>> FellegiSunter.fit_counts(counted, levels=tops) == FellegiSunter.fit(df, levels=tops)
            True
        """
        tops = _resolve_levels(counts.drop(columns="count", errors="ignore"), levels)
        return cls._fit(_counted(counts, tops), tops, max_iter, tol, fixed_u, init)

    @classmethod
    def _fit(
        cls,
        pats: _Patterns,
        tops: dict[str, int],
        max_iter: int,
        tol: float,
        fixed_u: Mapping[str, Sequence[float]] | None,
        init: FellegiSunter | None,
    ) -> FellegiSunter:
        if max_iter < 1:
            raise ValueError(f"max_iter must be at least 1, got {max_iter}")
        features = list(tops)
        _check_fittable(pats, features, bool(fixed_u))
        fixed = _check_fixed_u(fixed_u or {}, tops)
        m, u, lam = _initial(pats, tops, fixed, init)
        m, u, lam, iterations, converged = _em(pats, tops, fixed, (m, u, lam), max_iter, tol)
        _, loglik = _e_step(pats.codes, pats.counts, m, u, lam)
        # 2·log-likelihood ratio of the two-class model over "features independent, one class".
        lr = 2.0 * (loglik - _independent_log_likelihood(pats, tops))

        model = cls(
            m={f: m[j].tolist() for j, f in enumerate(features)},
            u={f: u[j].tolist() for j, f in enumerate(features)},
            prior=lam,
            iterations=iterations,
            converged=converged,
            pairs=pats.pairs,
            distinct_vectors=int(pats.codes.shape[0]),
            missing=pats.missing,
            log_likelihood=loglik,
            lr_statistic=lr,
            fixed_u=sorted(fixed),
            max_iter=max_iter,
            tol=tol,
        )
        _check_not_degenerate(model, pats, tops)
        if not converged:
            log.warning("EM stopped after %d iterations without converging (tol %g)", max_iter, tol)
        return model

    # --------------------------------------------------------------------------------- scoring
    def weights(self, levels_df: pd.DataFrame, tf_u: TfU | None = None) -> pd.DataFrame:
        """log2(m/u) of each pair's observed level per feature; 0 where the level is missing;
        log2(m/u_v) at the exact level of a feature with a term-frequency u_v in ``tf_u``
        (feature → one u_v per pair, NaN where none: :func:`master_data.tf.pair_u`).

        Example:
            >>> model = FellegiSunter(m={"a": [0.2, 0.8]}, u={"a": [0.8, 0.2]}, prior=0.5)
            >>> model.weights(pd.DataFrame({"a": [1, 0, -1]}))["a"].tolist()
            [2.0, -2.0, 0.0]
        """
        return pd.DataFrame(
            self._weight_matrix(levels_df, tf_u), index=levels_df.index, columns=self.features
        )

    def score(self, levels_df: pd.DataFrame, tf_u: TfU | None = None) -> pd.Series:
        """Total match weight plus prior log-odds: log2 of the posterior odds of a match."""
        total = self._weight_matrix(levels_df, tf_u).sum(axis=1) + self.prior_weight
        return pd.Series(total, index=levels_df.index, name="score")

    def probability(self, levels_df: pd.DataFrame, tf_u: TfU | None = None) -> pd.Series:
        """Posterior match probability of each pair, 1 / (1 + 2^-score).

        Example:
            >>> model = FellegiSunter(m={"a": [0.2, 0.8]}, u={"a": [0.8, 0.2]}, prior=0.5)
            >>> levels = pd.DataFrame({"a": [1, 1]})
            >>> model.probability(levels, {"a": np.array([0.8, np.nan])}).tolist()
            [0.5, 0.8]
        """
        total = self._weight_matrix(levels_df, tf_u).sum(axis=1) + self.prior_weight
        return pd.Series(_expit2(total), index=levels_df.index, name="probability")

    def tf_weight(self, feature: str, u_v: float) -> float:
        """The weight of an exact agreement on a value with term frequency ``u_v``: log2(m/u_v)
        — Splink's u-of-this-value in place of the average u of the exact level."""
        return math.log2(self.m[feature][-1] / u_v)

    def _weight_matrix(self, levels_df: pd.DataFrame, tf_u: TfU | None = None) -> FloatArray:
        codes = _codes(levels_df, self.levels)
        lw = self.level_weights()
        out = np.empty(codes.shape, dtype=np.float64, order="F")
        for j, f in enumerate(self.features):
            out[:, j] = np.asarray([0.0, *lw[f]], dtype=np.float64)[codes[:, j]]
            u_v = None if tf_u is None else tf_u.get(f)
            if u_v is not None:
                u_v = np.asarray(u_v, dtype=np.float64)
                at = np.flatnonzero(~np.isnan(u_v) & (codes[:, j] == len(self.m[f])))
                out[at, j] = np.log2(self.m[f][-1] / u_v[at])
        at_top = codes == np.asarray([len(self.m[f]) for f in self.features])
        hit = self._coincident(codes, at_top)
        if hit is not None and self.coincidence is not None:
            for f, u_ns in self.coincidence.u.items():
                # such a pair is told from a namesake, not from a random pair: phone and
                # address weigh log2(m / u among such pairs)
                j = self.features.index(f)
                m_pop = self.coincidence.m.get(f, self.m[f])
                w = np.log2(np.asarray(m_pop) / np.asarray(u_ns))
                rows = np.flatnonzero(hit & (codes[:, j] > 0))
                out[rows, j] = w[codes[rows, j] - 1]
        for group in self.correlated:
            cols = np.asarray([self.features.index(f) for f in group if f in self.m], np.intp)
            if len(cols) < 2:
                continue
            # P(all agree | non-match) ≈ P(the rarest agrees | non-match): independence would
            # multiply the evidence of one shared household
            rows = np.flatnonzero(at_top[:, cols].all(axis=1))
            block = out[np.ix_(rows, cols)]
            strongest = block.argmax(axis=1)
            kept = block[np.arange(len(rows)), strongest]
            block[:] = 0.0
            block[np.arange(len(rows)), strongest] = kept
            out[np.ix_(rows, cols)] = block
        if hit is not None and self.coincidence is not None:
            out[hit, self.features.index(self.coincidence.agree[0])] += self.coincidence.weight
        return out

    def _coincident(self, codes: IntArray, at_top: BoolArray) -> BoolArray | None:
        """Which pairs (rows of shifted level ``codes``) the :class:`Coincidence` applies to:
        every feature of ``agree`` at its top level and ``without`` missing; None without one."""
        together = self.coincidence
        if together is None or not set(together.agree) <= set(self.m):
            return None
        hit = at_top[:, [self.features.index(f) for f in together.agree]].all(axis=1)
        if together.without in self.m:
            hit = hit & (codes[:, self.features.index(together.without)] == 0)
        return np.asarray(hit, dtype=np.bool_)

    def explain(
        self,
        vector: Mapping[str, int],
        labels: Mapping[str, Sequence[str]] | None = None,
        tf_u: Mapping[str, float] | None = None,
    ) -> list[tuple[str, int, str, float]]:
        """(feature, level, label, weight) for one pair; the weights plus ``prior_weight`` sum
        to its score. ``labels[f][l]`` names level ``l`` of feature ``f`` (0 = disagree).

        Example:
            >>> model = FellegiSunter(m={"a": [0.2, 0.8]}, u={"a": [0.8, 0.2]}, prior=0.5)
            >>> model.explain({"a": -1}, labels={"a": ["different", "same"]})
            [('a', -1, 'missing', 0.0)]
        """
        unknown = sorted(set(vector) - set(self.m))
        absent = [f for f in self.m if f not in vector]
        if unknown or absent:
            raise ValueError(f"vector does not fit the model: unknown {unknown}, absent {absent}")
        for f in self.m:
            top = len(self.m[f]) - 1
            if not MISSING <= int(vector[f]) <= top:
                raise ValueError(f"feature {f!r}: level {int(vector[f])} outside -1 … {top}")
        one = pd.DataFrame({f: [int(vector[f])] for f in self.m})
        u_v = {f: np.asarray([u], dtype=np.float64) for f, u in (tf_u or {}).items()}
        weights = self._weight_matrix(one, u_v)[0]
        rows = []
        for j, f in enumerate(self.m):
            level = int(vector[f])
            top = len(self.m[f]) - 1
            if level == MISSING:
                rows.append((f, level, "missing", 0.0))
                continue
            names = labels.get(f) if labels else None
            label = names[level] if names is not None else f"level {level} of {top}"
            rows.append((f, level, label, float(weights[j])))
        return rows

    # ------------------------------------------------------------------------------------ JSON
    def to_json(self) -> str:
        """Readable, diffable JSON (sorted keys; per feature and level m, u and weight)."""
        lw = self.level_weights()
        doc = {
            "format": FORMAT,
            "prior": self.prior,
            "prior_weight": self.prior_weight,
            "features": [
                {
                    "name": f,
                    "levels": [
                        {"level": level, "m": mi, "u": ui, "weight": wi}
                        for level, (mi, ui, wi) in enumerate(
                            zip(self.m[f], self.u[f], lw[f], strict=True)
                        )
                    ],
                }
                for f in self.m
            ],
            "training": {
                "converged": self.converged,
                "distinct_vectors": self.distinct_vectors,
                "fixed_u": self.fixed_u,
                "iterations": self.iterations,
                "log_likelihood": self.log_likelihood,
                "lr_statistic": self.lr_statistic,
                "max_iter": self.max_iter,
                "missing": self.missing,
                "pairs": self.pairs,
                "tol": self.tol,
            },
        }
        if self.tf:
            doc["term_frequencies"] = self.tf
        if self.correlated:
            doc["correlated"] = self.correlated
        if self.coincidence is not None:
            doc["coincidence"] = asdict(self.coincidence)
        return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> FellegiSunter:
        """Load what :meth:`to_json` wrote (weights are recomputed from m and u)."""
        doc: dict[str, Any] = json.loads(text)
        if doc.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} model (format {doc.get('format')!r})")
        m: Probabilities = {}
        u: Probabilities = {}
        for feat in doc["features"]:
            rows = feat["levels"]
            if [r["level"] for r in rows] != list(range(len(rows))):
                raise ValueError(f"feature {feat['name']!r}: levels must run 0, 1, … in order")
            m[feat["name"]] = [float(r["m"]) for r in rows]
            u[feat["name"]] = [float(r["u"]) for r in rows]
        t = doc.get("training", {})
        return cls(
            m=m,
            u=u,
            prior=float(doc["prior"]),
            iterations=int(t.get("iterations", 0)),
            converged=bool(t.get("converged", False)),
            pairs=int(t.get("pairs", 0)),
            distinct_vectors=int(t.get("distinct_vectors", 0)),
            missing={k: int(v) for k, v in t.get("missing", {}).items()},
            log_likelihood=t.get("log_likelihood"),
            lr_statistic=t.get("lr_statistic"),
            fixed_u=list(t.get("fixed_u", [])),
            max_iter=t.get("max_iter"),
            tol=t.get("tol"),
            tf={
                f: {str(v): float(u) for v, u in values.items()}
                for f, values in doc.get("term_frequencies", {}).items()
            },
            correlated=[[str(f) for f in group] for group in doc.get("correlated", [])],
            coincidence=_coincidence(doc.get("coincidence")),
        )


# ------------------------------------------------------------------------------- u from random
def u_from_random_pairs(
    levels_df: pd.DataFrame, *, levels: Mapping[str, int] | None = None
) -> dict[str, list[float]]:
    """u estimated as the level frequencies among random (non-candidate) record pairs.

    Random pairs are almost all non-matches, so this estimate does not depend on EM; pass the
    result as ``FellegiSunter.fit(..., fixed_u=...)``.

    Example:
        >>> u = u_from_random_pairs(pd.DataFrame({"a": [0, 0, 0, 1, -1]}), levels={"a": 2})
        >>> [round(p, 4) for p in u["a"]]
        [0.75, 0.25, 0.0]
    """
    tops = _resolve_levels(levels_df, levels)
    codes = _codes(levels_df, tops)
    ones = np.ones(codes.shape[0], dtype=np.float64)
    out = {}
    for j, f in enumerate(tops):
        if not (codes[:, j] > 0).any():
            raise ValueError(f"feature {f!r} is missing in every random pair: cannot estimate u")
        out[f] = _m_step(codes[:, j], ones, tops[f]).tolist()
    return out


def u_from_counts(counts: pd.DataFrame, *, levels: Mapping[str, int]) -> dict[str, list[float]]:
    """:func:`u_from_random_pairs` from the random pairs' pattern counts (as
    :meth:`FellegiSunter.fit_counts` takes them): the same pairs give the same u.

    Example:
        >>> counted = pd.DataFrame({"a": [0, 1, -1], "count": [3, 1, 1]})
        >>> [round(p, 4) for p in u_from_counts(counted, levels={"a": 2})["a"]]
        [0.75, 0.25, 0.0]
    """
    tops = _resolve_levels(counts.drop(columns="count", errors="ignore"), levels)
    pats = _counted(counts, tops)
    out = {}
    for j, f in enumerate(tops):
        if not (pats.codes[:, j] > 0).any():
            raise ValueError(f"feature {f!r} is missing in every random pair: cannot estimate u")
        out[f] = _m_step(pats.codes[:, j], pats.counts, tops[f]).tolist()
    return out


def pattern_counts(
    levels_df: pd.DataFrame, *, levels: Mapping[str, int] | None = None
) -> pd.DataFrame:
    """The distinct comparison vectors of ``levels_df`` and how many pairs have each
    (``count``): what :meth:`FellegiSunter.fit_counts` fits.

    Example:
        >>> pattern_counts(pd.DataFrame({"a": [1, 1, -1], "b": [0, 0, 1]})).to_dict("list")
        {'a': [1, -1], 'b': [0, 1], 'count': [2, 1]}
    """
    tops = _resolve_levels(levels_df, levels)
    pats = _patterns(levels_df, tops)
    out = pd.DataFrame(pats.codes - 1, columns=list(tops))
    out["count"] = pats.counts.astype(np.int64)
    return out


# ---------------------------------------------------------------------------------- coincidence
COINCIDENCE_MIN_PAIRS = MIN_PAIRS
"""Fewer candidate pairs where a :class:`Coincidence` applies than this say too little to fit
it: the model keeps independence (weight 0, namesakes as random pairs)."""
COINCIDENCE_PSEUDO_PAIRS = 50.0
"""The namesakes' u of each feature starts from the random pairs' u as if seen on this many
namesakes: a city with few namesakes keeps about the random pairs' u."""


def fit_coincidence(
    model: FellegiSunter,
    counts: pd.DataFrame,
    agree: Sequence[str],
    without: str | None,
    *,
    max_iter: int = 500,
    tol: float = 1e-9,
) -> FellegiSunter:
    """``model`` with its :class:`Coincidence` (``agree``, ``without``) fitted on the
    candidate pairs' pattern ``counts`` (as :meth:`FellegiSunter.fit_counts` takes them).

    Why: u of each feature comes from random pairs and the model multiplies them, which holds
    for name against phone but not for name against birth date: namesakes born on one day
    are far commoner than that, and so a pair agreeing on name, birth date and sex without ID
    number was scored as sure as a person's own rows. Which such pairs are namesakes is what
    the other features say. Among the candidate pairs that agree on all of ``agree`` and that
    ``without`` cannot decide, EM fits a mixture of the model's matches (m as trained) and
    namesakes: the share of matches, and the namesakes' own u of each other feature (a
    namesake is no random person), that u drawn towards the random pairs' by
    ``COINCIDENCE_PSEUDO_PAIRS``. The weight −k is what brings the model's odds for such a
    pair to that share: k = log2 κ, κ how many times more often the agreement happens among
    different people than independence says. k is at least 0: the data may say that
    namesakes are commoner than independence, never that they are rarer. Counts alone go in
    (no term frequency), so both engines' counts give the same model.

    Where a feature of ``agree`` or ``without`` is not in the model, or fewer than
    ``COINCIDENCE_MIN_PAIRS`` pairs are such pairs, the coincidence is independence.

    Example:
        >>> model = FellegiSunter(
        ...     m={"name": [0.1, 0.9], "birth": [0.1, 0.9], "phone": [0.2, 0.8]},
        ...     u={"name": [0.99, 0.01], "birth": [0.99, 0.01], "phone": [0.99, 0.01]},
        ...     prior=0.01,
        ... )
        >>> # 100 pairs agree on name and birth date, 60 of them share a phone: matches do 4
        >>> # times in 5, random pairs 1 in 100, so 3 in 4 of the 100 are matches (odds 2.95)
        >>> # where prior and weights said odds of 2^6.35 = 81: namesakes are 27.7 times commoner
        >>> counts = pd.DataFrame(
        ...     {"name": [1, 1], "birth": [1, 1], "phone": [1, 0], "count": [60, 40]}
        ... )
        >>> fitted = fit_coincidence(model, counts, ["name", "birth"], None)
        >>> round(2 ** -fitted.coincidence.weight, 1), round(fitted.coincidence.u["phone"][1], 3)
        (27.7, 0.01)
    """
    group = Coincidence(tuple(agree), without)
    plain = replace(model, coincidence=group)
    needed = [*agree, *([without] if without is not None else [])]
    absent = [f for f in needed if f not in model.m]
    if absent:
        log.warning("coincidence of %s not fitted: %s not in the model", list(agree), absent)
        return plain
    # the distinct vectors in one fixed order: counts from any engine, in any row order, give
    # the same sums to the last bit
    pats = _counted(counts[[*model.features, "count"]], model.levels)
    codes = pats.codes
    tops = np.asarray([len(model.m[f]) for f in model.features])
    hit = plain._coincident(codes, codes == tops)
    assert hit is not None
    n = pats.counts[hit]
    if n.sum() < COINCIDENCE_MIN_PAIRS:
        log.info("coincidence of %s: %d pairs, too few to fit", list(agree), int(n.sum()))
        return plain
    others = [f for f in model.features if f not in needed]
    at = {f: codes[hit, model.features.index(f)] for f in others}
    m_pop = {f: np.asarray(model.m[f]) for f in others}
    u_pop = {f: np.asarray(model.u[f]) for f in others}
    said = model.prior_weight + sum(model.level_weights()[f][-1] for f in agree)
    share = _expit2(np.asarray([said]))[0]  # the model's share of matches among them
    for _ in range(max_iter):
        log_odds = math.log(share / (1.0 - share)) + sum(
            np.log(np.concatenate(([1.0], m_pop[f])))[at[f]]
            - np.log(np.concatenate(([1.0], u_pop[f])))[at[f]]
            for f in others
        )
        post = 1.0 / (1.0 + np.exp(-log_odds))
        new_share = _clamp(float((n * post).sum() / n.sum()))
        new_m = {f: _drawn(at[f], n * post, model.m[f]) for f in others}
        new_u = {f: _drawn(at[f], n * (1.0 - post), model.u[f]) for f in others}
        change = max(
            abs(new_share - share),
            *(float(np.abs(new_m[f] - m_pop[f]).max()) for f in others),
            *(float(np.abs(new_u[f] - u_pop[f]).max()) for f in others),
        )
        share, m_pop, u_pop = new_share, new_m, new_u
        if change < tol:
            break
    k = max(said - math.log2(share / (1.0 - share)), 0.0)
    fitted = Coincidence(
        group.agree,
        without,
        -k if k else 0.0,
        {f: u_pop[f].tolist() for f in others},
        {f: m_pop[f].tolist() for f in others},
    )
    return replace(model, coincidence=fitted)


def _drawn(levels: IntArray, weight: FloatArray, start: Sequence[float]) -> FloatArray:
    """Level frequencies of one feature (shifted levels, 0 = missing ignored) weighted by
    ``weight``, drawn towards ``start`` as if it had been seen on ``COINCIDENCE_PSEUDO_PAIRS``
    pairs."""
    tally = np.bincount(levels, weights=weight, minlength=len(start) + 1)[1:]
    prior = COINCIDENCE_PSEUDO_PAIRS * np.asarray(start)
    return _smooth((tally + prior) / (tally.sum() + COINCIDENCE_PSEUDO_PAIRS))


def _coincidence(doc: Mapping[str, Any] | None) -> Coincidence | None:
    """The :class:`Coincidence` of a model's JSON (None: the model has none)."""
    if doc is None:
        return None
    without = doc.get("without")
    return Coincidence(
        tuple(str(f) for f in doc["agree"]),
        None if without is None else str(without),
        float(doc.get("weight", 0.0)),
        {str(f): [float(p) for p in u] for f, u in doc.get("u", {}).items()},
        {str(f): [float(p) for p in m] for f, m in doc.get("m", {}).items()},
    )


# ---------------------------------------------------------------------------------- simulation
def simulate_pairs(
    n: int,
    *,
    prior: float,
    m: Mapping[str, Sequence[float]],
    u: Mapping[str, Sequence[float]],
    missing: float | Mapping[str, float] = 0.0,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.Series]:
    """Draw ``n`` comparison vectors from a known Fellegi–Sunter mixture (for tests and benches).

    Returns the levels table (index: a MultiIndex of pair numbers) and the true match flags.
    """
    rng = np.random.default_rng(seed)
    is_match = rng.random(n) < prior
    cols: dict[str, npt.NDArray[np.int8]] = {}
    for f in m:
        pm, pu = np.asarray(m[f], dtype=float), np.asarray(u[f], dtype=float)
        draw = rng.random(n)
        level = np.where(
            is_match,
            np.searchsorted(np.cumsum(pm / pm.sum()), draw, side="right"),
            np.searchsorted(np.cumsum(pu / pu.sum()), draw, side="right"),
        )
        level = np.minimum(level, len(pm) - 1)
        rate = missing.get(f, 0.0) if isinstance(missing, Mapping) else missing
        level[rng.random(n) < rate] = MISSING
        cols[f] = level.astype(np.int8)
    index = pd.MultiIndex.from_arrays([np.arange(n), np.arange(n) + n], names=["left", "right"])
    return pd.DataFrame(cols, index=index), pd.Series(is_match, index=index, name="match")


# ---------------------------------------------------------------------------------- guard rails
def _check_not_degenerate(model: FellegiSunter, pats: _Patterns, tops: Mapping[str, int]) -> None:
    """Raise DegenerateModelError, naming the features that carry no evidence, if EM failed."""
    weak = model.uninformative_features()
    params = 2 * sum(tops.values()) + 1  # k_f free values in each of m_f and u_f, and λ
    problem = None
    if min(model.prior, 1.0 - model.prior) * model.pairs < 1.0:
        problem = f"λ = {model.prior:.3g}, so EM put (almost) all {model.pairs} pairs in one class"
    elif not model.fixed_u and (model.lr_statistic or 0.0) < 2.0 * params + 10.0:
        # Simulated pairs without any matches give a two-class fit at most about one unit of
        # the statistic per parameter; real matches give thousands.
        problem = (
            f"two classes fit the pairs no better than chance (likelihood-ratio statistic "
            f"{model.lr_statistic:.1f} for {params} parameters): the features do not vary together"
        )
    elif len(weak) == len(model.m):
        problem = "m ≈ u on every feature, so no feature separates matches from non-matches"
    elif sum(w[-1] for w in model.level_weights().values()) <= 0.0:
        problem = "the class EM called 'match' agrees less often than the other"
    if problem is None:
        if weak:
            log.warning("features with m ≈ u carry no evidence: %s", ", ".join(weak))
        return
    assoc = _strongest_association(pats, tops)
    quiet = [f for f in model.m if f in weak or assoc[f][1] < UNINFORMATIVE_ASSOCIATION]
    detail = ", ".join(
        f"{f} {assoc[f][1]:.3f}" + (f" ({assoc[f][0]})" if assoc[f][0] else "") for f in model.m
    )
    raise DegenerateModelError(
        f"Fellegi–Sunter EM degenerated: {problem}. Uninformative features: "
        f"{', '.join(quiet) or 'none'}. Strongest association of each feature with another "
        f"(Cramér's V): {detail}. Check that the candidate pairs contain true matches "
        "(blocking) and that the comparison levels vary."
    )


def _independent_log_likelihood(pats: _Patterns, tops: Mapping[str, int]) -> float:
    """Log-likelihood of the pairs if every feature were independent of the others."""
    total = 0.0
    for j, top in enumerate(tops.values()):
        tally = np.bincount(pats.codes[:, j], weights=pats.counts, minlength=top + 2)[1:]
        seen = tally[tally > 0]
        total += float(np.dot(seen, np.log(seen / seen.sum())))
    return total


def _strongest_association(
    pats: _Patterns, tops: Mapping[str, int]
) -> dict[str, tuple[str | None, float]]:
    """Per feature, the other feature it varies with most, and that Cramér's V."""
    names = list(tops)
    best: dict[str, tuple[str | None, float]] = {f: (None, 0.0) for f in names}
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            v = _cramers_v(pats, a, b, tops[names[a]] + 1, tops[names[b]] + 1)
            for me, other in ((names[a], names[b]), (names[b], names[a])):
                if v > best[me][1]:
                    best[me] = (other, v)
    return best


def _cramers_v(pats: _Patterns, a: int, b: int, ka: int, kb: int) -> float:
    both = (pats.codes[:, a] > 0) & (pats.codes[:, b] > 0)
    cell = (pats.codes[both, a] - 1) * kb + (pats.codes[both, b] - 1)
    table = np.bincount(cell, weights=pats.counts[both], minlength=ka * kb).reshape(ka, kb)
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    n = table.sum()
    if min(table.shape) < 2 or n <= 0:
        return 0.0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return math.sqrt(chi2 / (n * (min(table.shape) - 1)))


# ------------------------------------------------------------------------------------ internals
def _tvd(p: Sequence[float], q: Sequence[float]) -> float:
    return 0.5 * sum(abs(a - b) for a, b in zip(p, q, strict=True))


def _clamp(x: float) -> float:
    return min(max(x, EPS), 1.0 - EPS)


def _smooth(p: FloatArray) -> FloatArray:
    """Keep a distribution summing to 1 with every entry in [EPS, 1 - EPS]."""
    return EPS + (1.0 - EPS * p.size) * p


def _expit2(s: FloatArray) -> FloatArray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp2(-s))


def _resolve_levels(df: pd.DataFrame, levels: Mapping[str, int] | None) -> dict[str, int]:
    if df.shape[1] == 0:
        raise ValueError("the levels table has no feature columns")
    if levels is None:
        maxima = df.max(axis=0, skipna=True)
        return {str(f): max(int(maxima[f]) if pd.notna(maxima[f]) else 1, 1) for f in df.columns}
    extra = sorted(str(c) for c in df.columns if c not in levels)
    if extra:
        raise ValueError(f"columns {extra} have no entry in levels={dict(levels)}")
    bad = {f: k for f, k in levels.items() if int(k) < 1}
    if bad:
        raise ValueError(f"levels must be at least 1 (disagree=0, agree=1): {bad}")
    return {str(f): int(k) for f, k in levels.items()}


def _codes(df: pd.DataFrame, tops: Mapping[str, int]) -> npt.NDArray[np.int64]:
    """Levels shifted by one (0 = missing) as an int64 matrix, validated against ``tops``."""
    absent = [f for f in tops if f not in df.columns]
    if absent:
        raise ValueError(f"levels table lacks feature columns {absent}")
    extra = sorted(str(c) for c in df.columns if c not in tops)
    if extra:
        raise ValueError(f"levels table has columns the model does not know: {extra}")
    out = np.empty((df.shape[0], len(tops)), dtype=np.int64)
    for j, (f, top) in enumerate(tops.items()):
        col = df[f]
        if col.hasnans:
            col = col.fillna(MISSING)
        values = col.to_numpy()
        if values.dtype.kind == "f" and not np.all(np.mod(values, 1) == 0):
            raise ValueError(f"feature {f!r} has non-integer levels")
        values = values.astype(np.int64, copy=False)
        if values.size and (values.min() < MISSING or values.max() > top):
            bad = values[(values < MISSING) | (values > top)]
            raise ValueError(
                f"feature {f!r}: level {int(bad[0])} outside -1 … {top} "
                f"({bad.size} pairs); pass levels={{{f!r}: …}} matching the comparison"
            )
        out[:, j] = values + 1
    return out


def _patterns(df: pd.DataFrame, tops: Mapping[str, int]) -> _Patterns:
    return _distinct(_codes(df, tops), tops, None)


def _counted(counts: pd.DataFrame, tops: Mapping[str, int]) -> _Patterns:
    """The patterns of a table of vectors with their ``count``."""
    if "count" not in counts.columns:
        raise ValueError("the pattern counts have no 'count' column")
    weights = counts["count"].to_numpy()
    if weights.size and (weights.dtype.kind not in "iu" or weights.min() < 0):
        raise ValueError("pattern counts must be non-negative integers")
    codes = _codes(counts.drop(columns="count"), tops)
    return _distinct(codes, tops, weights.astype(np.float64))


def _distinct(codes: IntArray, tops: Mapping[str, int], weights: FloatArray | None) -> _Patterns:
    """The distinct rows of ``codes`` in one fixed order (ascending mixed-radix key, else
    lexicographic) with their counts: each row counts once, or its ``weights``. Whole counts
    add up exactly in float64, so patterns counted anywhere give the same numbers here."""
    ones = np.ones(codes.shape[0]) if weights is None else weights
    missing = {f: int(ones[codes[:, j] == 0].sum()) for j, f in enumerate(tops)}
    radices = [top + 2 for top in tops.values()]
    space = math.prod(radices)
    if space < 2**62:
        # Mixed-radix key per vector; bincount when the key space is small, else a sort.
        strides = np.cumprod([1, *radices[:-1]], dtype=np.int64)
        keys = codes @ strides
        if space <= 1 << 24:
            counts_all = np.bincount(keys, weights=weights, minlength=space)
            uniq = np.flatnonzero(counts_all)
            counts = counts_all[uniq]
        else:
            uniq, inverse = np.unique(keys, return_inverse=True)
            counts = np.bincount(inverse.ravel(), weights=weights, minlength=uniq.size)
        distinct = (uniq[:, None] // strides[None, :]) % np.asarray(radices, dtype=np.int64)
    else:
        distinct, inverse = np.unique(codes, axis=0, return_inverse=True)
        counts = np.bincount(inverse.ravel(), weights=weights, minlength=distinct.shape[0])
    return _Patterns(
        codes=distinct.astype(np.int64),
        counts=counts.astype(np.float64),
        missing=missing,
        pairs=int(ones.sum()),
    )


def _check_fixed_u(
    fixed_u: Mapping[str, Sequence[float]], tops: Mapping[str, int]
) -> dict[str, FloatArray]:
    out = {}
    for f, p in fixed_u.items():
        if f not in tops:
            raise ValueError(f"fixed_u names unknown feature {f!r}")
        arr = np.asarray(p, dtype=np.float64)
        if arr.shape != (tops[f] + 1,) or (arr < 0).any() or abs(arr.sum() - 1.0) > 1e-6:
            raise ValueError(
                f"fixed_u[{f!r}] must be {tops[f] + 1} probabilities summing to 1, got {list(p)}"
            )
        out[f] = np.clip(arr, EPS, 1.0 - EPS)
    return out


def _initial(
    pats: _Patterns,
    tops: Mapping[str, int],
    fixed: Mapping[str, FloatArray],
    init: FellegiSunter | None,
) -> tuple[list[FloatArray], list[FloatArray], float]:
    m: list[FloatArray] = []
    u: list[FloatArray] = []
    for j, (f, top) in enumerate(tops.items()):
        if init is not None and f in init.m:
            if len(init.m[f]) != top + 1:
                raise ValueError(
                    f"init model has {len(init.m[f])} levels for {f!r}, the data {top + 1}"
                )
            m.append(np.asarray(init.m[f], dtype=np.float64))
            u.append(fixed.get(f, np.asarray(init.u[f], dtype=np.float64)))
            continue
        start = np.full(top + 1, 0.1 / top)
        start[top] = 0.9
        m.append(_smooth(start))
        if f in fixed:
            u.append(fixed[f])
        else:
            u.append(_m_step(pats.codes[:, j], pats.counts, top))
    lam = init.prior if init is not None else 0.1
    return m, u, lam


def _check_fittable(pats: _Patterns, features: list[str], fixed_u: bool) -> None:
    """Raise ``ValueError`` unless EM can fit a model on ``pats`` (``fixed_u``: some u given)."""
    if pats.pairs < MIN_PAIRS:
        raise ValueError(
            f"cannot fit a Fellegi–Sunter model on {pats.pairs} candidate pairs: "
            f"need at least {MIN_PAIRS}; check blocking, or reuse the last saved model"
        )
    if len(features) < 3 and not fixed_u:
        raise ValueError(
            f"cannot learn m and u unsupervised from {len(features)} feature(s) {features}: "
            "two classes need at least three features; pass fixed_u (u_from_random_pairs)"
        )


def _em(
    pats: _Patterns,
    tops: Mapping[str, int],
    fixed: Mapping[str, FloatArray],
    start: tuple[list[FloatArray], list[FloatArray], float],
    max_iter: int,
    tol: float,
) -> tuple[list[FloatArray], list[FloatArray], float, int, bool]:
    """EM from ``start`` (m, u, λ) until no parameter moves by ``tol`` or ``max_iter`` rounds;
    m, u, λ, the rounds run and whether it converged. u stays ``fixed`` where given."""
    m, u, lam = start
    features = list(tops)
    counts = pats.counts
    iterations, converged = 0, False
    while iterations < max_iter and not converged:
        iterations += 1
        post, _ = _e_step(pats.codes, counts, m, u, lam)
        w_match = counts * post
        new_lam = _clamp(float(w_match.sum()) / pats.pairs)
        new_m = [_m_step(pats.codes[:, j], w_match, tops[f]) for j, f in enumerate(features)]
        new_u = [
            fixed[f] if f in fixed else _m_step(pats.codes[:, j], counts - w_match, tops[f])
            for j, f in enumerate(features)
        ]
        change = max(
            abs(new_lam - lam),
            *(float(np.max(np.abs(a - b))) for a, b in zip(new_m, m, strict=True)),
            *(float(np.max(np.abs(a - b))) for a, b in zip(new_u, u, strict=True)),
        )
        m, u, lam = new_m, new_u, new_lam
        converged = change < tol
    return m, u, lam, iterations, converged


def _e_step(
    codes: IntArray, counts: FloatArray, m: list[FloatArray], u: list[FloatArray], lam: float
) -> tuple[FloatArray, float]:
    """Posterior P(match | vector) per distinct vector, and the log-likelihood of all pairs."""
    log_m = np.full(codes.shape[0], math.log(lam))
    log_u = np.full(codes.shape[0], math.log1p(-lam))
    for j in range(codes.shape[1]):
        log_m += np.concatenate(([0.0], np.log(m[j])))[codes[:, j]]
        log_u += np.concatenate(([0.0], np.log(u[j])))[codes[:, j]]
    log_total = np.logaddexp(log_m, log_u)
    post = np.exp(log_m - log_total)
    return post, float(np.dot(counts, log_total))


def _m_step(codes: IntArray, weight: FloatArray, top: int) -> FloatArray:
    """Weighted level frequencies of one feature, ignoring missing; uniform if never observed."""
    tally = np.bincount(codes, weights=weight, minlength=top + 2)[1:]
    total = tally.sum()
    if total <= 0.0:
        return np.full(top + 1, 1.0 / (top + 1))
    return _smooth(tally / total)
