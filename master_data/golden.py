"""Golden records of the relinked entities: survivorship, member counts, departments, and the
night that last changed each.

:func:`golden_records` runs survivorship (:func:`master_data.survivorship.survive`) over the
member rows of each master ID and adds what the golden tables carry besides the attributes:
how many member rows, from which departments, the latest ``updated_at``, and ``run_id`` — the
night that last changed the record (last night's, where it is exactly as published then).

>>> golden, provenance, conflicts = golden_records(members, "person", city, match, base, run_id)
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from etl.config import CityConfig
from master_data.deterministic import org_codes
from master_data.settings import EntityMatch
from master_data.survivorship import ATTRIBUTES, survive


def derived_rank(city: CityConfig, entity: str) -> list[str]:
    """The survivorship rank when ``matching.yaml`` gives none: the departments keeping
    ``entity`` rows, those that are the authority for more of its fields first (then in the
    order of their files).

    >>> derived_rank(load_city_config(), "enterprise")
    ['shichang', 'shuiwu']
    """
    keeping = [d for d in city.departments if d.tables_for(entity)]
    return [d.code for d in sorted(keeping, key=lambda d: -len(d.authority_for.fields(entity)))]


def fresh_since(match: EntityMatch, run_id: str, members: pd.DataFrame) -> dict[str, pd.Timestamp]:
    """Per attribute with an ``authority_fresh_days`` window, the oldest change stamp an
    authority's copy may have and still speak as the authority: the window counted back from
    the night's date (its run ID), or from the newest member row for a run ID that is no date.

    >>> fresh_since(EntityMatch(blocking=..., authority_fresh_days={"phone": 1095}), "2026-07-01",
    ...             members)  # doctest: +SKIP
    {'phone': Timestamp('2023-07-02 00:00:00')}
    """
    if not match.authority_fresh_days:
        return {}
    try:
        night = pd.Timestamp(dt.date.fromisoformat(run_id[:10]))
    except ValueError:
        night = pd.Timestamp(members["updated_at"].max())
    return {a: night - pd.Timedelta(days=d) for a, d in match.authority_fresh_days.items()}


def golden_records(
    members: pd.DataFrame,
    entity: str,
    city: CityConfig,
    match: EntityMatch,
    base_golden: pa.Table | None,
    run_id: str,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The golden records, provenance and conflicts of the master IDs of ``members`` (record
    rows with their ``master_id``); ``base_golden``: last night's golden records, if any."""
    if entity == "enterprise":  # a valid credit code carries the organization code (chars 9–17)
        members = members.assign(org_code=org_codes(members))
    authority = {
        a: d.code for a in ATTRIBUTES[entity] if (d := city.authority(entity, a)) is not None
    }
    rank = match.survivorship_rank or derived_rank(city, entity)
    golden, provenance, conflicts = survive(
        members, entity, authority, rank, fresh_since=fresh_since(match, run_id, members)
    )
    extra = members.groupby("master_id").agg(
        member_count=("department", "size"), updated_at=("updated_at", "max")
    )
    extra["departments"] = _departments(members)
    golden["master_id"] = golden["master_id"].astype(object)  # also when nothing was relinked
    extra.index = extra.index.astype(object)
    golden = golden.merge(extra, left_on="master_id", right_index=True)
    golden["run_id"] = _changed_by(golden, base_golden, run_id)
    # a column more in place: a copy of the provenance (a row per master and attribute) would
    # double the largest frame of the night
    provenance["entity"] = entity
    conflicts["entity"], conflicts["run_id"] = entity, run_id
    return golden, provenance, conflicts


def _departments(members: pd.DataFrame) -> pd.Series:
    """Each master ID's member departments, sorted and comma-joined (one vectorised string
    operation per department, not one Python call per master)."""
    masters = pd.Index(pd.unique(members["master_id"])).sort_values()
    joined = pd.Series("", index=masters)
    for dept, ids in members.groupby("department", sort=True)["master_id"]:
        joined = joined + np.where(masters.isin(ids), f"{dept},", "")
    return joined.str[:-1]


def _changed_by(golden: pd.DataFrame, base: pa.Table | None, run_id: str) -> pd.Series:
    """Each golden record's ``run_id``: the night that last changed it — last night's value
    where the record is exactly as last night published it, else tonight."""
    if base is None or not len(golden):
        return pd.Series(run_id, index=golden.index)
    ids = pa.array(golden["master_id"].to_numpy(dtype=object), pa.string())
    old = base.filter(pc.is_in(base["master_id"], value_set=ids)).to_pandas()
    same = [c for c in golden.columns if c in old.columns and c != "run_id"]
    try:
        found = golden[same].merge(old[[*same, "run_id"]], on=same, how="left")["run_id"]
    except (ValueError, TypeError):  # a column typed differently on the two nights: all new
        return pd.Series(run_id, index=golden.index)
    return pd.Series(found.fillna(run_id).to_numpy(), index=golden.index)
