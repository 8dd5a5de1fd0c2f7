"""The sample city standardized by both engines gives the same canonical tables, table by
table: Spark runs the local engine's kernel (``mapInArrow``), so nothing can drift."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl.config import CityConfig
from etl.standardize import standardize_all
from pipeline import night as nightly
from pipeline.context import Night
from store.layout import STANDARDIZED, canonical_dir

if TYPE_CHECKING:
    from sample_cities import CityFactory

pytestmark = [pytest.mark.spark, pytest.mark.slow]
CONFIG = Path(__file__).resolve().parents[1] / "config"
RUN = "2026-06-30"  # the sample city's first night: standardize judges dates by it


@pytest.fixture(scope="module")
def extracted(make_city: CityFactory) -> Iterator[CityConfig]:
    """The sample city, extracted; a copy (both engines write its canonical folder)."""
    with pytest.MonkeyPatch.context() as mp:
        yield make_city(mp, persons=800, enterprises=150, seed=5, until="extracted", copy=True)


def _outputs(city: CityConfig) -> dict[str, dict[str, Any]]:
    """Each department's canonical files (as tables, metadata included) and its marker."""
    out: dict[str, dict[str, Any]] = {}
    for dept in city.departments:
        folder = canonical_dir(city.var_dir, RUN, dept.code)
        out[dept.code] = {p.name: pq.read_table(p) for p in sorted(folder.glob("*.parquet"))} | {
            STANDARDIZED: json.loads((folder / STANDARDIZED).read_text(encoding="utf-8"))
        }
    return out


def test_spark_standardizes_the_sample_city_exactly_as_the_local_engine(
    extracted: CityConfig, spark: Any
) -> None:
    city = extracted
    local = {r.department: r for r in standardize_all(city, RUN)}
    assert all(r.status == "ok" and r.reconciled for r in local.values()), local
    expected = _outputs(city)
    for folder in (canonical_dir(city.var_dir, RUN, d.code) for d in city.departments):
        for path in folder.iterdir():
            path.unlink()  # nothing of the local engine's output can stand in for Spark's

    night = Night.of(city, CONFIG, RUN, "spark")
    counted: dict[str, Any] = {}
    for dept in city.departments:
        nightly.standardize(night, dept.code, on_result=lambda r: counted.update({r.department: r}))
    got = _outputs(city)

    assert got.keys() == expected.keys()
    for code, files in expected.items():
        assert got[code].keys() == files.keys(), code
        for name, table in files.items():
            if isinstance(table, pa.Table):
                assert got[code][name].num_rows == table.num_rows, (code, name)
                assert got[code][name].equals(table, check_metadata=True), (code, name)
            else:
                assert got[code][name] == table, (code, name)
        mine, theirs = counted[code], local[code]
        assert (mine.rows_read, mine.standardized, mine.rejected) == (
            theirs.rows_read,
            theirs.standardized,
            theirs.rejected,
        ), code
        assert mine.field_reasons == theirs.field_reasons, code
        assert list(mine.reject_reasons.most_common()) == list(
            theirs.reject_reasons.most_common()
        ), code
    assert sum(t.num_rows for f in got.values() for t in f.values() if isinstance(t, pa.Table))
