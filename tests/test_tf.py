"""Term-frequency adjustment: a common name's exact agreement weighs less than a rare one's, by
numbers worked out by hand; the table is deterministic and travels with the model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etl.config import ConfigError
from master_data import compare as cmp
from master_data.model import FellegiSunter
from master_data.pairs import edges
from master_data.settings import MatchSettings, load_match_settings
from master_data.tf import attach, pair_u, term_frequencies, u_column
from master_data.train import rules_only

# 8 records: 王伟 (a common name) 4 times, 郑予涵 and 李娜 twice each; one row without a name
NAMES = ["王伟", "王伟", "王伟", "王伟", "郑予涵", "郑予涵", "李娜", "李娜", None]
M = {"name": [0.1, 0.1, 0.0, 0.0, 0.8], "sex": [0.05, 0.95]}
U = {"name": [0.9, 0.05, 0.02, 0.02, 0.01], "sex": [0.5, 0.5]}


def _records() -> pd.DataFrame:
    ids = [f"r{i}" for i in range(len(NAMES))]
    names = pd.Series(NAMES, index=ids, dtype=object)
    return pd.DataFrame(
        {
            "name": names,
            "name_pinyin": names.map(
                lambda v: {"王伟": "wangwei", "郑予涵": "zhengyuhan"}.get(v, v)
            ),
            "former_name": None,
            "sex": "男",
            "id_number": None,
        },
        index=pd.Index(ids, name="record_id"),
    )


def _model() -> FellegiSunter:
    m = {f: [max(p, 1e-6) for p in v] for f, v in M.items()}
    m = {f: [p / sum(v) for p in v] for f, v in m.items()}
    return FellegiSunter(m=m, u=U, prior=0.01)


def test_table_is_each_values_share_of_the_records_holding_one() -> None:
    table = term_frequencies(_records(), "person", {"name": 1e-5})
    assert table == {"name": {"李娜": 0.25, "王伟": 0.5, "郑予涵": 0.25}}
    assert list(table["name"]) == sorted(table["name"])  # no dependence on row order
    shuffled = _records().sample(frac=1.0, random_state=3)
    assert term_frequencies(shuffled, "person", {"name": 1e-5}) == table
    floored = term_frequencies(_records(), "person", {"name": 0.3})
    assert floored == {"name": {"李娜": 0.3, "王伟": 0.5, "郑予涵": 0.3}}


def test_a_common_names_exact_agreement_weighs_less_than_a_rare_ones() -> None:
    records = _records()
    model = attach(_model(), term_frequencies(records, "person", {"name": 1e-5}))
    m_exact = model.m["name"][-1]
    pairs = pd.MultiIndex.from_tuples([("r0", "r1"), ("r4", "r5"), ("r0", "r4")])
    levels = cmp.compare(records, pairs, [cmp.PersonNames(), cmp.Exact("sex")])
    assert levels["name"].tolist() == [4, 4, 0]
    left, right = cmp.pair_positions(records.index, pairs)
    u = pair_u(records, left, right, levels, model.levels, model.tf, "person")["name"]
    assert u[:2].tolist() == [0.5, 0.25] and math.isnan(u[2])
    weights = model.weights(levels, {"name": u})["name"]
    # log2(m/u_v) by hand: 王伟 log2(m/0.5), 郑予涵 log2(m/0.25): exactly one bit apart
    assert weights.iloc[0] == pytest.approx(math.log2(m_exact / 0.5))
    assert weights.iloc[1] == pytest.approx(math.log2(m_exact / 0.25))
    assert weights.iloc[1] - weights.iloc[0] == pytest.approx(1.0)
    # a disagreement keeps the level's weight; without the table both names weigh log2(m/u)
    assert weights.iloc[2] == pytest.approx(math.log2(model.m["name"][0] / U["name"][0]))
    plain = model.weights(levels)["name"]
    assert plain.iloc[0] == plain.iloc[1] == pytest.approx(math.log2(m_exact / 0.01))
    # the stored edges carry u_v and score with it
    scored = edges(records, pairs, levels, model, "person", keep=0.0)
    assert scored[u_column("name")].tolist()[:2] == [0.5, 0.25]
    assert scored["probability"].iloc[0] < scored["probability"].iloc[1]
    expected = model.probability(levels, {"name": u}).to_numpy()
    assert np.allclose(scored["probability"].to_numpy(), expected)


def test_an_agreement_through_a_former_name_uses_that_names_frequency() -> None:
    records = _records()
    records.loc["r8", ["name", "name_pinyin", "former_name"]] = ["王薇", "wangwei", "郑予涵"]
    table = term_frequencies(records, "person", {"name": 1e-5})
    pairs = pd.MultiIndex.from_tuples([("r4", "r8")])
    levels = cmp.compare(records, pairs, [cmp.PersonNames()])
    assert levels["name"].tolist() == [4]
    left, right = cmp.pair_positions(records.index, pairs)
    u = pair_u(records, left, right, levels, {"name": 4}, table, "person")["name"]
    assert u.tolist() == [2 / 9]


def test_the_table_travels_with_the_model_and_stays_out_of_a_rules_only_one() -> None:
    model = attach(_model(), term_frequencies(_records(), "person", {"name": 1e-5}))
    again = FellegiSunter.from_json(model.to_json())
    assert again == model and again.tf == model.tf
    assert attach(rules_only("person"), model.tf).tf == {}
    assert "term_frequencies" not in _model().to_json()  # without: the JSON is as before


def test_config_names_a_feature_that_cannot_be_adjusted(tmp_path: Path) -> None:
    shipped = load_match_settings("config")
    assert shipped.person.tf_floors() == {"name": 1e-5}
    doc = shipped.model_dump()
    doc["person"]["term_frequency"] = {"sex": {"floor": 0.001}}
    with pytest.raises(ValueError, match=r"person.term_frequency: no feature 'sex'.*Fix: use"):
        MatchSettings.model_validate(doc)
    doc = shipped.model_dump()
    doc["person"]["correlated"] = [["phone", "adress"]]
    with pytest.raises(ValueError, match=r"person.correlated\[0\].*unknown: adress"):
        MatchSettings.model_validate(doc)
    doc = shipped.model_dump()
    doc["person"]["coincidence"] = {"agree": ["name", "birthdate"], "without": "id_number"}
    with pytest.raises(ValueError, match=r"person.coincidence.*unknown: birthdate"):
        MatchSettings.model_validate(doc)
    doc["person"]["coincidence"] = {"agree": ["name", "sex"], "without": "sex"}
    with pytest.raises(ValueError, match=r"person.coincidence: agree .* different"):
        MatchSettings.model_validate(doc)
    assert shipped.person.coincidence is not None and shipped.enterprise.coincidence is None
    text = Path("config/matching.yaml").read_text(encoding="utf-8")
    (tmp_path / "matching.yaml").write_text(
        text.replace("floor: 1.0e-5", "floor: 0"), encoding="utf-8"
    )
    with pytest.raises(ConfigError, match="floor"):
        load_match_settings(tmp_path)


def test_a_household_agreeing_on_phone_and_address_counts_once() -> None:
    # phone: top weight log2(0.8/0.05) = 4; address: log2(0.8/0.1) = 3
    plain = FellegiSunter(
        m={"phone": [0.2, 0.8], "address": [0.2, 0.8], "sex": [0.5, 0.5]},
        u={"phone": [0.95, 0.05], "address": [0.9, 0.1], "sex": [0.5, 0.5]},
        prior=0.01,
    )
    model = attach(plain, {}, [["phone", "address"]])
    assert model.correlated == [["phone", "address"]]
    levels = pd.DataFrame({"phone": [1, 1, 0, -1], "address": [1, 0, 1, 1], "sex": [1, 1, 1, 1]})
    weights = model.weights(levels)
    assert weights.loc[0, ["phone", "address"]].tolist() == pytest.approx([4.0, 0.0])
    assert plain.weights(levels).loc[0, ["phone", "address"]].tolist() == pytest.approx([4, 3])
    # one agreeing alone, or with the other disagreeing or missing, keeps its own weight
    assert weights.loc[1].tolist() == pytest.approx([4.0, math.log2(0.2 / 0.9), 0.0])
    assert weights.loc[2, "address"] == pytest.approx(3.0)
    assert weights.loc[3].tolist() == pytest.approx([0.0, 3.0, 0.0])
    assert model.score(levels)[0] == pytest.approx(model.prior_weight + 4.0)
    explained = model.explain({"phone": 1, "address": 1, "sex": 1})
    assert [w for *_, w in explained] == pytest.approx([4.0, 0.0, 0.0])
    assert FellegiSunter.from_json(model.to_json()) == model
