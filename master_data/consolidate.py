"""One night's consolidation: :func:`master_data.link.link`, then
:func:`master_data.publish.publish`, as one night.

>>> linked = consolidate(city, "2026-07-01")
"""

from __future__ import annotations

from collections.abc import Collection

from etl.config import CityConfig
from etl.state import warehouse_url
from master_data.link import Linked, Progress, link
from master_data.publish import publish
from store import layout
from store.warehouse import night_lock


def consolidate(
    city: CityConfig,
    run_id: str,
    *,
    full: bool = False,
    retrain: bool = False,
    held: Collection[str] = (),
    progress: Progress | None = None,
) -> Linked:
    """Link then publish ``run_id``, holding the night lock across both: no other night links
    or publishes in between."""
    with night_lock(
        warehouse_url(city), run_id, "consolidate", lock_dir=layout.warehouse_dir(city.var_dir)
    ):
        linked = link(city, run_id, full=full, retrain=retrain, held=held, progress=progress)
        publish(city, run_id)
    return linked
