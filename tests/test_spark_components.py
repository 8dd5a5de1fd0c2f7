"""Connected components by large-star/small-star in Spark SQL equal scipy's and the local
engine's (:func:`master_data.cluster.cluster_records`'s labelling: the smallest record ID) on
random graphs, long chains in shuffled order, stars, and repeated or self-loop edges."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.sparse import csgraph

pytestmark = [pytest.mark.spark]


def _expected(names: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, str]:
    """scipy's components, each labelled by its smallest name, of the nodes on an edge."""
    n = len(names)
    graph = sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, comp = csgraph.connected_components(graph, directed=False)
    frame = pd.DataFrame({"name": names, "comp": comp})
    smallest = frame.groupby("comp")["name"].min()
    seen = np.unique(np.concatenate([a, b]))
    return {str(names[i]): str(smallest[comp[i]]) for i in seen}


def _spark(spark: Any, names: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, str]:
    from spark.components import components

    edges = spark.createDataFrame(pd.DataFrame({"left": names[a], "right": names[b]}).astype(str))
    found = components(edges).toPandas()
    assert not found["node"].duplicated().any()
    return dict(zip(found["node"], found["component"], strict=True))


def _graph(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = 3000
    # names whose order is not the order they were drawn in
    names = np.array([f"r{x:07d}" for x in rng.permutation(n) * 7 + 11])
    if kind == "random":  # sparse: many small components and some large ones
        a, b = rng.integers(0, n, 2200), rng.integers(0, n, 2200)
    elif kind == "chains":  # three long paths through shuffled nodes, plus repeats and loops
        order = rng.permutation(n)
        cuts = [order[:1500], order[1500:2700], order[2700:]]
        a = np.concatenate([c[:-1] for c in cuts] + [order[:50], order[100:110]])
        b = np.concatenate([c[1:] for c in cuts] + [order[1:51], order[100:110]])
    else:  # stars with their centre the largest name, and a cycle
        centres = rng.choice(n, 20, replace=False)
        leaves = np.setdiff1d(np.arange(n), centres)[:2000]
        a = centres[np.arange(len(leaves)) % 20]
        b = leaves
        ring = np.setdiff1d(np.arange(n), np.concatenate([centres, leaves]))
        a = np.concatenate([a, ring])
        b = np.concatenate([b, np.roll(ring, 1)])
    return names, a, b


@pytest.mark.parametrize("kind", ["random", "chains", "stars"])
def test_components_equal_scipys(spark: Any, kind: str) -> None:
    rng = np.random.default_rng({"random": 1, "chains": 2, "stars": 3}[kind])
    names, a, b = _graph(kind, rng)
    expected = _expected(names, a, b)
    assert _spark(spark, names, a, b) == expected
    if kind == "chains":
        assert len(set(expected.values())) == 3  # three paths of up to 1,500 nodes


def test_components_label_as_the_local_engine_does(spark: Any) -> None:
    """The local engine's components of the same links, on record IDs, are Spark's."""
    from master_data.cluster import _components

    rng = np.random.default_rng(5)
    names, a, b = _graph("random", rng)
    ids = pd.Index(np.sort(names))
    position = pd.Series(np.arange(len(ids)), index=ids)
    local = _components(ids, position[names[a]].to_numpy(), position[names[b]].to_numpy())
    found = _spark(spark, names, a, b)
    on_edges = local[list(found)]
    assert dict(on_edges.items()) == found


def test_no_edges_no_components(spark: Any) -> None:
    from spark.components import components

    empty = spark.createDataFrame([], "left STRING, right STRING")
    assert components(empty).count() == 0
