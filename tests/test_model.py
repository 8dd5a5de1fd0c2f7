"""The Fellegi–Sunter model recovers a known mixture, scores, explains and round-trips."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pandas as pd
import pytest

from master_data import model as model_module
from master_data.model import (
    EPS,
    MIN_PAIRS,
    DegenerateModelError,
    FellegiSunter,
    pattern_counts,
    simulate_pairs,
    u_from_counts,
    u_from_random_pairs,
)

TRUE_PRIOR = 0.3
TRUE_M = {
    "id_number": [0.04, 0.96],
    "name": [0.02, 0.05, 0.18, 0.75],
    "birth_date": [0.04, 0.08, 0.88],
    "address": [0.10, 0.10, 0.15, 0.25, 0.40],
}
TRUE_U = {
    "id_number": [0.99, 0.01],
    "name": [0.60, 0.25, 0.10, 0.05],
    "birth_date": [0.85, 0.10, 0.05],
    "address": [0.40, 0.30, 0.15, 0.10, 0.05],
}
LEVELS = {f: len(p) - 1 for f, p in TRUE_M.items()}
TOL = 0.03


@pytest.fixture(scope="module")
def simulated() -> tuple[pd.DataFrame, pd.Series]:
    return simulate_pairs(20_000, prior=TRUE_PRIOR, m=TRUE_M, u=TRUE_U, missing=0.1, seed=2024)


@pytest.fixture(scope="module")
def fitted(simulated: tuple[pd.DataFrame, pd.Series]) -> FellegiSunter:
    return FellegiSunter.fit(simulated[0], levels=LEVELS)


def _max_error(got: dict[str, list[float]], want: dict[str, list[float]]) -> float:
    return max(abs(a - b) for f in want for a, b in zip(got[f], want[f], strict=True))


def test_em_recovers_the_simulated_mixture(fitted: FellegiSunter) -> None:
    assert fitted.converged and fitted.iterations < 100
    assert fitted.prior == pytest.approx(TRUE_PRIOR, abs=TOL)
    assert _max_error(fitted.m, TRUE_M) < TOL
    assert _max_error(fitted.u, TRUE_U) < TOL
    assert fitted.pairs == 20_000
    assert fitted.distinct_vectors <= 3 * 5 * 4 * 6
    assert 1_700 < fitted.missing["name"] < 2_300  # ~10 % missing per feature
    for f in TRUE_M:
        assert sum(fitted.m[f]) == pytest.approx(1.0)
        assert sum(fitted.u[f]) == pytest.approx(1.0)
        assert all(EPS <= p <= 1 - EPS for p in fitted.m[f] + fitted.u[f])


def test_classification_at_one_half_matches_the_truth(
    simulated: tuple[pd.DataFrame, pd.Series], fitted: FellegiSunter
) -> None:
    df, truth = simulated
    flagged = fitted.probability(df) > 0.5
    true_positives = int((flagged & truth).sum())
    assert true_positives / int(flagged.sum()) > 0.97  # precision
    assert true_positives / int(truth.sum()) > 0.97  # recall


def test_fit_is_deterministic_and_ignores_row_order(
    simulated: tuple[pd.DataFrame, pd.Series], fitted: FellegiSunter
) -> None:
    df, _ = simulated
    again = FellegiSunter.fit(df, levels=LEVELS)
    shuffled = FellegiSunter.fit(df.sample(frac=1.0, random_state=3), levels=LEVELS)
    assert again.to_json() == fitted.to_json()
    assert shuffled.to_json() == fitted.to_json()


def test_json_round_trip_is_exact_and_readable(fitted: FellegiSunter) -> None:
    text = fitted.to_json()
    loaded = FellegiSunter.from_json(text)
    assert loaded == fitted
    assert loaded.to_json() == text
    doc = json.loads(text)
    assert text == json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert [f["name"] for f in doc["features"]] == list(TRUE_M)
    top = doc["features"][0]["levels"][-1]
    assert set(top) == {"level", "m", "u", "weight"}
    assert top["weight"] == pytest.approx(np.log2(top["m"] / top["u"]))
    assert doc["training"]["pairs"] == 20_000
    assert "time" not in text


def test_from_json_rejects_other_documents() -> None:
    with pytest.raises(ValueError, match=r"not a govmdm\.fellegi_sunter"):
        FellegiSunter.from_json('{"format": "splink"}')


def test_weights_are_monotone_for_a_separating_feature(fitted: FellegiSunter) -> None:
    for feature in ("name", "birth_date", "address"):
        w = fitted.level_weights()[feature]
        assert w == sorted(w), feature
    assert fitted.level_weights()["name"][0] < -4 < 3 < fitted.level_weights()["name"][-1]


def test_missing_level_weighs_zero(fitted: FellegiSunter) -> None:
    df = pd.DataFrame(
        {"id_number": [-1, 1], "name": [-1, -1], "birth_date": [-1, 2], "address": [-1, 0]},
        index=pd.MultiIndex.from_tuples([("a", "b"), ("c", "d")]),
    )
    weights = fitted.weights(df)
    assert weights.index.equals(df.index)
    assert (weights.iloc[0] == 0.0).all()
    assert weights.loc[("c", "d"), "name"] == 0.0
    score = fitted.score(df)
    assert score.iloc[0] == pytest.approx(fitted.prior_weight)
    assert fitted.probability(df).iloc[0] == pytest.approx(fitted.prior)
    assert score.iloc[1] == pytest.approx(weights.iloc[1].sum() + fitted.prior_weight)


def test_nan_counts_as_missing(fitted: FellegiSunter) -> None:
    df = pd.DataFrame(
        {"id_number": [np.nan], "name": [3.0], "birth_date": [2.0], "address": [np.nan]}
    )
    weights = fitted.weights(df)
    assert weights["id_number"].iloc[0] == 0.0 and weights["address"].iloc[0] == 0.0


def test_probability_of_a_hand_model() -> None:
    model = FellegiSunter(
        m={"a": [0.2, 0.8], "b": [0.5, 0.5]}, u={"a": [0.8, 0.2], "b": [0.5, 0.5]}, prior=0.2
    )
    df = pd.DataFrame({"a": [1, 0, -1], "b": [1, 0, 1]})
    assert model.score(df).tolist() == pytest.approx([0.0, -4.0, -2.0])
    assert model.probability(df).tolist() == pytest.approx([0.5, 1 / 17, 0.2])


def test_explain_lists_each_feature_and_adds_up_to_the_score(fitted: FellegiSunter) -> None:
    vector = {"id_number": 1, "name": 2, "birth_date": -1, "address": 0}
    labels = {"name": ["different", "similar", "pinyin equal", "equal"]}
    rows = fitted.explain(vector, labels)
    assert [(f, lvl, label) for f, lvl, label, _ in rows] == [
        ("id_number", 1, "level 1 of 1"),
        ("name", 2, "pinyin equal"),
        ("birth_date", -1, "missing"),
        ("address", 0, "level 0 of 4"),
    ]
    total = sum(w for *_, w in rows) + fitted.prior_weight
    assert total == pytest.approx(fitted.score(pd.DataFrame([vector])).iloc[0])
    with pytest.raises(ValueError, match="absent"):
        fitted.explain({"id_number": 1})


def test_a_level_unseen_in_training_keeps_a_neutral_parameter(
    simulated: tuple[pd.DataFrame, pd.Series],
) -> None:
    df, _ = simulated
    model = FellegiSunter.fit(df, levels={**LEVELS, "birth_date": 3})
    assert len(model.m["birth_date"]) == 4
    assert model.level_weights()["birth_date"][3] == pytest.approx(0.0, abs=1e-3)
    unseen = pd.DataFrame({"id_number": [1], "name": [3], "birth_date": [3], "address": [4]})
    assert model.weights(unseen)["birth_date"].iloc[0] == pytest.approx(0.0, abs=1e-3)


def test_a_level_above_the_declared_top_is_an_error(
    simulated: tuple[pd.DataFrame, pd.Series], fitted: FellegiSunter
) -> None:
    df, _ = simulated
    with pytest.raises(ValueError, match=r"'address': level 4 outside -1 … 3"):
        FellegiSunter.fit(df, levels={**LEVELS, "address": 3})
    with pytest.raises(ValueError, match="'name': level 7"):
        fitted.weights(
            pd.DataFrame({"id_number": [1], "name": [7], "birth_date": [0], "address": [0]})
        )
    with pytest.raises(ValueError, match="lacks feature columns"):
        fitted.weights(df[["name"]])


def test_levels_default_to_the_largest_seen(simulated: tuple[pd.DataFrame, pd.Series]) -> None:
    model = FellegiSunter.fit(simulated[0])
    assert model.levels == LEVELS


def test_data_without_matches_raises_a_clear_error() -> None:
    df, _ = simulate_pairs(20_000, prior=0.3, m=TRUE_U, u=TRUE_U, missing=0.1, seed=5)
    with pytest.raises(DegenerateModelError) as err:
        FellegiSunter.fit(df, levels=LEVELS)
    message = str(err.value)
    assert "no better than chance" in message
    assert "Uninformative features: id_number, name, birth_date, address." in message


def test_a_noise_feature_is_reported_but_does_not_stop_the_fit() -> None:
    m = {**TRUE_M, "ethnicity": [0.3, 0.7]}
    u = {**TRUE_U, "ethnicity": [0.3, 0.7]}
    df, _ = simulate_pairs(20_000, prior=TRUE_PRIOR, m=m, u=u, missing=0.1, seed=8)
    model = FellegiSunter.fit(df)
    assert model.uninformative_features() == ["ethnicity"]
    assert max(abs(w) for w in model.level_weights()["ethnicity"]) < 0.2


def test_a_constant_feature_degenerates_only_that_feature() -> None:
    df, _ = simulate_pairs(5_000, prior=TRUE_PRIOR, m=TRUE_M, u=TRUE_U, seed=9)
    df["always_missing"] = -1
    model = FellegiSunter.fit(df, levels={**LEVELS, "always_missing": 2})
    assert model.uninformative_features() == ["always_missing"]
    assert model.level_weights()["always_missing"] == [0.0, 0.0, 0.0]


def test_too_few_pairs_or_features_raise() -> None:
    df, _ = simulate_pairs(MIN_PAIRS - 1, prior=0.3, m=TRUE_M, u=TRUE_U, seed=1)
    with pytest.raises(ValueError, match=f"on {MIN_PAIRS - 1} candidate pairs"):
        FellegiSunter.fit(df, levels=LEVELS)
    two, _ = simulate_pairs(5_000, prior=0.3, m=TRUE_M, u=TRUE_U, seed=1)
    with pytest.raises(ValueError, match="at least three features"):
        FellegiSunter.fit(two[["name", "address"]])


def test_u_from_random_pairs_lets_two_features_fit() -> None:
    features = ["name", "birth_date"]
    m = {f: TRUE_M[f] for f in features}
    u = {f: TRUE_U[f] for f in features}
    random_pairs, _ = simulate_pairs(50_000, prior=0.0, m=u, u=u, missing=0.1, seed=11)
    fixed = u_from_random_pairs(random_pairs)
    assert _max_error(fixed, u) < 0.01
    df, _ = simulate_pairs(20_000, prior=TRUE_PRIOR, m=m, u=u, missing=0.1, seed=12)
    model = FellegiSunter.fit(df, fixed_u=fixed)
    assert model.u == fixed and model.fixed_u == sorted(features)
    assert _max_error(model.m, m) < TOL
    assert model.prior == pytest.approx(TRUE_PRIOR, abs=TOL)


def test_warm_start_from_last_nights_model(
    simulated: tuple[pd.DataFrame, pd.Series], fitted: FellegiSunter
) -> None:
    warm = FellegiSunter.fit(simulated[0], levels=LEVELS, init=fitted)
    assert warm.iterations < fitted.iterations
    assert _max_error(warm.m, fitted.m) < 1e-4
    with pytest.raises(ValueError, match="init model has 5 levels"):
        FellegiSunter.fit(simulated[0], levels={**LEVELS, "address": 5}, init=fitted)


def test_docstring_examples_hold() -> None:
    result = doctest.testmod(model_module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 5


def test_a_hand_written_model_is_validated() -> None:
    with pytest.raises(ValueError, match=r"m\['a'\] must be positive probabilities"):
        FellegiSunter(m={"a": [0.0, 1.0]}, u={"a": [0.5, 0.5]}, prior=0.1)
    with pytest.raises(ValueError, match="prior must lie strictly between 0 and 1"):
        FellegiSunter(m={"a": [0.5, 0.5]}, u={"a": [0.5, 0.5]}, prior=1.0)


@pytest.mark.parametrize("wide", [False, True])
def test_fitting_pattern_counts_gives_the_model_of_the_pairs_to_the_bit(
    simulated: tuple[pd.DataFrame, pd.Series], wide: bool
) -> None:
    """Another engine counts the patterns (GROUP BY, split over partitions, in any order):
    the model is the same JSON as fitting the pairs themselves."""
    df, _ = simulated
    df = df.assign(id_number=df["id_number"].where(np.arange(len(df)) % 7 != 0, -1))
    levels = dict(LEVELS)
    if wide:  # a key space past 2**24: the sorted path
        for i in range(8):
            df[f"extra{i}"] = np.arange(len(df)) % 9
            levels[f"extra{i}"] = 8
    counted = pattern_counts(df, levels=levels)
    assert counted["count"].sum() == len(df) and not counted.duplicated(list(levels)).any()
    # the counts of two partitions, shuffled: a vector on two rows adds up
    halves = [pattern_counts(part, levels=levels) for part in (df.iloc[::2], df.iloc[1::2])]
    scattered = pd.concat(halves).sample(frac=1.0, random_state=4).reset_index(drop=True)
    fixed = u_from_random_pairs(df.iloc[:500], levels=levels)
    direct = FellegiSunter.fit(df, levels=levels, fixed_u=fixed)
    from_counts = FellegiSunter.fit_counts(scattered, levels=levels, fixed_u=fixed)
    assert from_counts.to_json() == direct.to_json()
    assert from_counts.pairs == len(df) and from_counts.missing["id_number"] > 0
    assert u_from_counts(pattern_counts(df.iloc[:500], levels=levels), levels=levels) == fixed


def test_pattern_counts_refuse_what_is_not_a_count() -> None:
    bad = pd.DataFrame({"a": [0, 1], "b": [1, 1], "c": [0, 0], "count": [1.5, 2.0]})
    with pytest.raises(ValueError, match="non-negative integers"):
        FellegiSunter.fit_counts(bad, levels={"a": 1, "b": 1, "c": 1})
    with pytest.raises(ValueError, match="no 'count' column"):
        FellegiSunter.fit_counts(bad.drop(columns="count"), levels={"a": 1, "b": 1, "c": 1})
