"""The link stage's engine seam: what another engine (Spark, :mod:`spark.link`) does in place
of the local code when every record of an entity is linked again (a full night).

:func:`master_data.link.link` takes a :class:`LinkEngine`; without one, or on a delta night,
the local engine runs. An engine must give what the local code gives for the same rows — the
same candidate pairs, levels, model, clusters and golden records — because it runs the same
kernels; only where they run differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa

from etl.config import CityConfig
from master_data.cluster import RecordClusters
from master_data.model import FellegiSunter
from master_data.settings import EntityMatch, MatchSettings
from master_data.tf import Frequencies

__all__ = ["LinkEngine", "RecordFiles", "Scored"]


@dataclass
class Scored:
    """An entity's candidate pairs, compared and scored (a full night)."""

    compared: pd.DataFrame  # every record, by record ID, sorted (records.records_frame)
    keys: pa.Table  # every record's block keys (blocking.KEY_SCHEMA)
    report: dict[str, Any]  # how the pairs were found
    pairs: int  # candidate pairs compared
    model: FellegiSunter
    trained: bool  # the model was fitted tonight
    edges: pd.DataFrame  # the scored pairs worth keeping, as pairs.edges gives them


@dataclass(frozen=True)
class RecordFiles:
    """Where an entity's records are on disk when they are exactly tonight's canonical rows
    (:func:`master_data.records.tonight`: a full relink keeping no base-night records), for an
    engine that reads them itself rather than taking them from this process."""

    paths: tuple[Path, ...]  # master_data.records.canonical_files
    rows: int  # the records they give: an engine checks it read as many


class LinkEngine(Protocol):
    """The heavy steps of a full night, run elsewhere."""

    name: str

    def score(
        self,
        records: pa.Table,
        entity: str,
        match: EntityMatch,
        settings: MatchSettings,
        model: FellegiSunter | None,
        frequencies: Frequencies,
        files: RecordFiles | None = None,
    ) -> Scored:
        """Block, compare, fit the model unless ``model`` is given, attach the term
        ``frequencies`` (:func:`master_data.tf.attach`), score, keep the edges.
        ``files``: where the same records are on disk, if they are all there."""
        ...

    def cluster(
        self,
        records: pd.DataFrame,
        edges: pd.DataFrame,
        decided: pd.DataFrame,
        entity: str,
        auto_link: float,
    ) -> RecordClusters:
        """What :func:`master_data.cluster.cluster_records` gives for the same arguments."""
        ...

    def golden(
        self,
        members: pd.DataFrame,
        entity: str,
        city: CityConfig,
        match: EntityMatch,
        base_golden: pa.Table | None,
        run_id: str,
    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """What :func:`master_data.golden.golden_records` gives for the same arguments."""
        ...
