"""The Fellegi–Sunter model recovers a known mixture, scores, explains and round-trips."""

from __future__ import annotations

import dataclasses
import doctest
import itertools
import json
import math

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


# --- namesakes: features agreeing together by chance more often than independence says ----------

NAMESAKE_M = {
    "name": [0.1, 0.9],
    "birth_date": [0.1, 0.9],
    "id_number": [0.05, 0.95],
    "phone": [0.3, 0.7],
}
NAMESAKE_U = {
    "name": [0.999, 0.001],
    "birth_date": [0.999, 0.001],
    "id_number": [0.999, 0.001],
    "phone": [0.999, 0.001],
}


def _namesake_model(**kwargs: object) -> FellegiSunter:
    return FellegiSunter(m=NAMESAKE_M, u=NAMESAKE_U, prior=1e-4, **kwargs)  # type: ignore[arg-type]


def _namesake_pairs(matches: int, namesakes: int, seed: int = 5) -> pd.DataFrame:
    """Pattern counts of pairs agreeing on name and birth date without an ID number: matches
    share a phone 7 times in 10 (m), namesakes 1 in 1,000 (u); a few pairs elsewhere."""
    rng = np.random.default_rng(seed)
    shared = int(rng.binomial(matches, 0.7)) + int(rng.binomial(namesakes, 0.001))
    return pd.DataFrame(
        {
            "name": [1, 1, 1, 0],
            "birth_date": [1, 1, 1, 1],
            "id_number": [-1, -1, 1, 0],
            "phone": [1, 0, 0, 0],
            "count": [shared, matches + namesakes - shared, 500, 900],
        }
    )


def test_a_coincidence_weighs_only_where_the_group_agrees_and_nothing_decides() -> None:
    together = model_module.Coincidence(("name", "birth_date"), "id_number", -6.0)
    model = _namesake_model(coincidence=together)
    plain = _namesake_model()
    levels = pd.DataFrame(
        {
            "name": [1, 1, 1, 0, 1],
            "birth_date": [1, 1, 1, 1, 0],
            "id_number": [-1, 1, 0, -1, -1],
            "phone": [0, 0, 0, 0, 0],
        }
    )
    diff = (model.weights(levels) - plain.weights(levels)).to_numpy()
    # booked on the group's first feature, only in the first row: ID missing, all agreeing
    assert diff[:, 0].tolist() == [-6.0, 0.0, 0.0, 0.0, 0.0] and not diff[:, 1:].any()
    assert model.score(levels)[0] == pytest.approx(plain.score(levels)[0] - 6.0)
    explained = model.explain({"name": 1, "birth_date": 1, "id_number": -1, "phone": 0})
    assert sum(w for *_, w in explained) + model.prior_weight == pytest.approx(
        model.score(levels.iloc[:1])[0]
    )
    # without ``without``, it weighs wherever the group agrees
    anywhere = _namesake_model(
        coincidence=model_module.Coincidence(("name", "birth_date"), None, -6)
    )
    assert (anywhere.weights(levels)["name"] - plain.weights(levels)["name"]).tolist() == [
        -6.0,
        -6.0,
        -6.0,
        0.0,
        0.0,
    ]


@pytest.mark.parametrize("namesakes", [0, 300, 3000])
def test_the_coincidence_weight_is_what_phone_says_of_the_pairs(namesakes: int) -> None:
    """1,000 matches and some namesakes agree on name and birth date without ID: the fitted
    weight brings the model's odds for such a pair to the true odds, matches : namesakes."""
    model = _namesake_model()
    fitted = model_module.fit_coincidence(
        model, _namesake_pairs(1000, namesakes), ["name", "birth_date"], "id_number"
    )
    assert fitted.coincidence is not None
    assert fitted.coincidence.agree == ("name", "birth_date")
    assert fitted.m == model.m and fitted.prior == model.prior
    weights = model.level_weights()
    said = model.prior_weight + weights["name"][1] + weights["birth_date"][1]  # log2 odds
    if namesakes == 0:  # only the binomial noise of 700 phones shared in 1,000
        assert -1.0 < fitted.coincidence.weight <= 0.0
        return
    truth = np.log2(1000 / namesakes)
    assert said + fitted.coincidence.weight == pytest.approx(truth, abs=0.25)
    # the pairs scored by it are as sure as they are right: mean probability = true share
    levels = pd.DataFrame(
        {"name": [1, 1], "birth_date": [1, 1], "id_number": [-1, -1], "phone": [1, 0]}
    )
    counts = _namesake_pairs(1000, namesakes).iloc[:2]["count"].to_numpy()
    p = fitted.probability(levels).to_numpy()
    assert float(p @ counts) / counts.sum() == pytest.approx(1000 / (1000 + namesakes), abs=0.03)
    assert FellegiSunter.from_json(fitted.to_json()) == fitted


def test_too_few_pairs_or_a_feature_left_out_keep_independence() -> None:
    model = _namesake_model()
    # more pairs sharing a phone than matches would: the data say namesakes are rarer than
    # independence, which the weight never claims
    sure = _namesake_pairs(1000, 0).assign(count=[1000, 0, 500, 900])
    together = model_module.fit_coincidence(model, sure, ["name", "birth_date"], "id_number")
    assert together.coincidence is not None and together.coincidence.weight == 0.0
    few = _namesake_pairs(20, 20)
    assert model_module.fit_coincidence(
        model, few, ["name", "birth_date"], "id_number"
    ).coincidence == model_module.Coincidence(("name", "birth_date"), "id_number", 0.0)
    lost = model_module.fit_coincidence(model, _namesake_pairs(1000, 300), ["name", "sex"], None)
    assert lost.coincidence is not None and lost.coincidence.weight == 0.0


def test_a_model_saved_before_coincidences_loads_and_scores_alike() -> None:
    model = _namesake_model()
    doc = json.loads(model.to_json())
    assert "coincidence" not in doc  # the JSON is as before
    again = FellegiSunter.from_json(json.dumps(doc))
    assert again.coincidence is None and again == model
    fitted = model_module.fit_coincidence(
        model, _namesake_pairs(1000, 300), ["name", "birth_date"], "id_number"
    )
    saved = json.loads(fitted.to_json())["coincidence"]
    assert saved["agree"] == ["name", "birth_date"] and saved["without"] == "id_number"
    assert saved["weight"] < 0


def test_namesakes_are_told_apart_by_what_namesakes_look_like() -> None:
    """Namesakes of this city never share a district: the fitted namesakes' u of "same
    district" falls far below the random pairs' 1 in 2 (not to 0: the random pairs' u weighs as
    50 namesakes), and a pair in one district without a shared phone or e-mail, a match, is
    scored likelier one than the random pairs' u would say."""
    model = FellegiSunter(
        m={
            "name": [0.1, 0.9],
            "birth_date": [0.1, 0.9],
            "phone": [0.3, 0.7],
            "address": [0.2, 0.8],
            "email": [0.4, 0.6],
        },
        u={
            "name": [0.999, 0.001],
            "birth_date": [0.999, 0.001],
            "phone": [0.999, 0.001],
            "address": [0.5, 0.5],
            "email": [0.99, 0.01],
        },
        prior=1e-4,
    )
    # 1,000 matches as m says, 1,000 namesakes: phone 1 in 1,000, district never, e-mail 1 in 100
    shares = {"phone": (0.7, 0.001), "address": (0.8, 0.0), "email": (0.6, 0.01)}
    rows = []
    for levels in itertools.product([0, 1], repeat=3):
        of = [
            math.prod(s[c] if v else 1 - s[c] for s, v in zip(shares.values(), levels, strict=True))
            for c in (0, 1)
        ]
        rows.append(
            {
                "name": 1,
                "birth_date": 1,
                **dict(zip(shares, levels, strict=True)),
                "count": round(1000 * of[0] + 1000 * of[1]),
            }
        )
    counts = pd.DataFrame(rows)
    fitted = model_module.fit_coincidence(model, counts, ["name", "birth_date"], None)
    assert fitted.coincidence is not None
    assert fitted.coincidence.u["address"][1] < 0.1
    levels = counts[model.features]
    p = fitted.probability(levels).to_numpy()
    assert float(p @ counts["count"]) == pytest.approx(1000, rel=0.1)  # about as many as there are
    random_u = dataclasses.replace(fitted.coincidence, u={}, m={})
    q = dataclasses.replace(fitted, coincidence=random_u).probability(levels).to_numpy()
    one_district = ((counts["phone"] == 0) & (counts["address"] == 1)).to_numpy()
    # matches without phone and e-mail in common, then without phone: likelier than the random
    # pairs' u would say (0.15, 0.96)
    assert (p[one_district] > [0.5, 0.99]).all() and (q[one_district] < [0.2, 0.97]).all()
    assert p[0] < 0.05  # nothing but name and birth date in common: 13 in 1,013 are matches
    assert FellegiSunter.from_json(fitted.to_json()) == fitted


def test_the_coincidence_is_the_same_however_the_pairs_were_counted() -> None:
    """Another engine's counts come in another row order, a vector on several rows: the same
    model to the last bit (the Spark night's model.json equals the local one's)."""
    counts = _namesake_pairs(1000, 300)
    other = pd.concat([counts.iloc[::-1], counts.iloc[:1].assign(count=0)], ignore_index=True)
    split = counts.iloc[[1]].assign(count=counts["count"].iloc[1] - 7)
    other = pd.concat([other[other.index != 2], split, split.assign(count=7)], ignore_index=True)
    fit = [
        model_module.fit_coincidence(_namesake_model(), c, ["name", "birth_date"], "id_number")
        for c in (counts, other)
    ]
    assert fit[0].to_json() == fit[1].to_json()
