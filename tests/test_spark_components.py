"""Connected components by large-star/small-star in Spark SQL equal scipy's and the local
engine's (:func:`master_data.cluster.cluster_records`'s labelling: the smallest record ID) on
random graphs, long chains in shuffled order, stars, and repeated or self-loop edges; a Spark
link's clusters are the same whether the driver or Spark SQL works out their components."""

from __future__ import annotations

from pathlib import Path
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
    from master_data.cluster import record_components

    rng = np.random.default_rng(5)
    names, a, b = _graph("random", rng)
    ids = pd.Index(np.sort(names))
    position = pd.Series(np.arange(len(ids)), index=ids)
    local = record_components(ids, position[names[a]].to_numpy(), position[names[b]].to_numpy())
    found = _spark(spark, names, a, b)
    on_edges = local[list(found)]
    assert dict(on_edges.items()) == found


def test_no_edges_no_components(spark: Any) -> None:
    from spark.components import components

    empty = spark.createDataFrame([], "left STRING, right STRING")
    assert components(empty).count() == 0


def test_link_clusters_alike_with_components_on_the_driver_or_in_spark(
    spark: Any, tmp_path: Path
) -> None:
    """The links the driver holds put into components there (few) or in Spark SQL (many):
    the same clusters, components, accepted links and counts."""
    from master_data.records import RECORD
    from spark.link import SparkLink, _cluster

    rng = np.random.default_rng(7)
    ids = pd.Index([f"gongan/hukou/{i:04d}" for i in range(300)], name=RECORD)
    hard = [f"11{i:016d}" if i % 6 == 0 else None for i in range(300)]  # some clash
    records = pd.DataFrame({"id_number": hard}, index=ids)
    a, b = rng.integers(0, 300, 240), rng.integers(0, 300, 240)
    keep = a < b
    edges = pd.DataFrame(
        {
            "left": ids[a[keep]],
            "right": ids[b[keep]],
            "probability": rng.uniform(0.5, 1.0, keep.sum()),
            "rule": None,
            "corroborated": True,
        }
    ).drop_duplicates(["left", "right"], ignore_index=True)
    decided = pd.DataFrame(
        {"left_record": [ids[0]], "right_record": [ids[1]], "decision": ["link"]}
    )
    done = [
        _cluster(SparkLink(spark, tmp_path, driver_edges=n), records, edges, decided, "person", 0.9)
        for n in (0, len(edges) + 1)
    ]
    in_spark, on_driver = done
    assert (in_spark.labels == on_driver.labels).all()
    assert (in_spark.accepted == on_driver.accepted).all()
    pd.testing.assert_series_equal(in_spark.component, on_driver.component, check_names=False)
    assert in_spark.counts == on_driver.counts
    assert on_driver.counts["model_links"] > 0 and on_driver.counts["refused_hard_key"] > 0
