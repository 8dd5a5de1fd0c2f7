"""The records a night links: tonight's canonical rows of one entity type, keyed by record ID.

A record is one source row, identified from night to night by ``department/table/key``
(:func:`record_id`). :func:`tonight` reads the night's canonical rows of every department that
goes in, with the record IDs that left tonight (deleted at the source, or rejected);
:func:`records_frame` turns the Arrow records into the pandas frame the comparison and
clustering kernels read.

>>> rows, gone, unkeyed = tonight(city, "2026-07-01", "person", held=frozenset())
>>> rows.column_names[0]
'record_id'
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl.config import CityConfig
from etl.extract import ROW_KEY
from etl.standardize import SCHEMAS
from store.layout import canonical_dir, deleted_path

log = logging.getLogger(__name__)

RECORD = "record_id"
META = ["department", "source_table", "source_key"]
"""The columns a record ID is made of, in order."""
_NOT_LINKED = ("extras",)  # columns linking never reads (raw_* neither): left in Arrow


def record_id(department: str, table: str, key: str) -> str:
    """The record ID of a source row: ``department/table/key``.

    >>> record_id("gongan", "t_rk_jbxx", "RK3501000204182001")
    'gongan/t_rk_jbxx/RK3501000204182001'
    """
    return f"{department}/{table}/{key}"


def is_in(values: pa.ChunkedArray | pa.Array, ids: pd.Index) -> pa.ChunkedArray | pa.Array:
    """Which of the string ``values`` (record or master IDs) are among ``ids``."""
    if pa.types.is_null(values.type):  # an all-NULL column written from an empty frame
        values = values.cast(pa.string())
    return pc.is_in(values, value_set=pa.array(ids.to_numpy(dtype=object), pa.string()))


def linked_columns(records: pa.Table) -> pa.Table:
    """``records`` without the columns linking never reads (the raw values, the extras): what
    a night keeps in memory once its records state is written."""
    return records.select(
        [c for c in records.column_names if c not in _NOT_LINKED and not c.startswith("raw_")]
    )


@dataclass
class DeltaRecords:
    """A delta night's records, the base night's not copied: its records file as mapped
    (``base``), the record IDs no longer among them (``dropped``: removed or replaced on an
    earlier night or tonight), and the rows added since (``added``, tonight's last). A delta
    night reads only a few records (:meth:`pick`); filtering the base night's into a new
    table copied every one of them and cost more than the rest of the night's linking."""

    base: pa.Table
    dropped: pa.Array
    added: pa.Table
    num_rows: int

    def pick(self, ids: Ids, columns: list[str] | None = None) -> pa.Table:
        """The records with ``ids`` (those there are; only ``columns`` if given): the base
        night's, then the added."""
        asked = id_array(ids)
        wanted = asked.filter(pc.invert(pc.is_in(asked, value_set=self.dropped)))
        base, added = self.base, self.added
        if columns is not None:
            base, added = base.select(columns), added.select(columns)
        return pa.concat_tables(
            [
                base.filter(pc.is_in(self.base[RECORD], value_set=wanted)),
                added.filter(pc.is_in(self.added[RECORD], value_set=asked)),
            ],
            promote_options="permissive",
        )

    def whole(self) -> pa.Table:
        """Every record in one table (a copy of them all)."""
        kept = self.base.filter(pc.invert(pc.is_in(self.base[RECORD], value_set=self.dropped)))
        return pa.concat_tables([kept, self.added], promote_options="permissive")


Records: TypeAlias = pa.Table | DeltaRecords
"""A night's records: one table, or a delta night's :class:`DeltaRecords`."""


Ids: TypeAlias = pd.Index | pa.Array
"""Record IDs: a pandas index, or an Arrow array of strings (see :func:`distinct`)."""


def id_array(ids: Ids) -> pa.Array:
    """Record IDs as an Arrow array of strings."""
    if isinstance(ids, pd.Index):
        return pa.array(ids.to_numpy(dtype=object), pa.string())
    return ids


def distinct(*ids: pd.Series | pd.Index | pa.Array) -> pa.Array:
    """The distinct record IDs among ``ids``, in no particular order (a set of them built by
    Arrow: a pandas union sorts the strings, which cost more than the lookups they serve)."""
    parts = [i if isinstance(i, pa.Array) else id_array(pd.Index(i)) for i in ids]
    return pc.unique(pa.chunked_array(parts, pa.string()))


def pick(records: Records, ids: Ids, columns: list[str] | None = None) -> pa.Table:
    """The ``records`` with ``ids`` (those there are; only ``columns`` if given)."""
    if isinstance(records, DeltaRecords):
        return records.pick(ids, columns)
    mask = pc.is_in(records[RECORD], value_set=id_array(ids))
    return (records if columns is None else records.select(columns)).filter(mask)


def records_frame(records: Records, ids: Ids | None = None) -> pd.DataFrame:
    """The records with ``ids`` (all if None) as pandas, indexed by record ID, sorted, without
    the columns linking never reads."""
    if isinstance(records, DeltaRecords):
        records = records.pick(ids) if ids is not None else records.whole()
    elif ids is not None:
        records = pick(records, ids)
    frame = linked_columns(records).to_pandas().set_index(RECORD)
    return frame if frame.index.is_monotonic_increasing else frame.sort_index()


def canonical_files(city: CityConfig, run_id: str, entity: str, held: frozenset[str]) -> list[Path]:
    """The night's canonical Parquet of ``entity`` that :func:`tonight` reads: one file (or
    folder of parts, from the Spark engine) per department that goes in (not in ``held``) and
    has rows of it, in configuration order."""
    paths = (
        canonical_dir(city.var_dir, run_id, d.code) / f"{entity}.parquet"
        for d in city.departments
        if d.code not in held
    )
    return [p for p in paths if p.exists()]


def tonight(
    city: CityConfig, run_id: str, entity: str, held: frozenset[str]
) -> tuple[pa.Table, list[str], int]:
    """Tonight's canonical rows of ``entity`` (the record ID first, sorted by it), the record
    IDs that left (deleted at the source, or rejected tonight), and how many rows had no source
    key. Departments in ``held`` give none of them.

    A row without a source key cannot be tracked from night to night; standardization rejects
    it (``row:key_missing``). One that reaches this point anyway (a canonical file edited or
    written outside standardization) is left out and counted, and the night goes on."""
    gone: list[str] = []
    schema = SCHEMAS[entity]
    tables = [
        pq.read_table(path).select(schema.names).cast(schema)
        for path in canonical_files(city, run_id, entity, held)
    ]
    for dept in city.departments:
        if dept.code in held:
            continue
        gone += _rejected(city, run_id, dept.code, entity)
        for table in dept.tables:
            deleted = deleted_path(city.var_dir, run_id, dept.code, table.name)
            if table.entity == entity and deleted.is_file():
                keys = pq.read_table(deleted).column(ROW_KEY).to_pylist()
                gone += [record_id(dept.code, table.name, k) for k in keys]
    rows, unkeyed = _keyed(
        pa.concat_tables(tables) if tables else schema.empty_table(), run_id, entity
    )
    del tables
    ids = pc.binary_join_element_wise(*[rows[c] for c in META], "/")  # = record_id()
    rows = rows.add_column(0, RECORD, ids)
    # sorted one column at a time: each unsorted column is let go as soon as its sorted copy
    # is made, so the rows are held about once, not twice
    order = pc.sort_indices(ids)
    schema, columns = rows.schema, rows.columns
    del rows, ids
    return take_each_column(schema, columns, order), gone, unkeyed


def take_each_column(
    schema: pa.Schema, columns: list[pa.ChunkedArray], order: pa.Array
) -> pa.Table:
    """The table of ``columns`` with its rows in ``order``, taken a column at a time: each
    column in the list is replaced by its reordered copy, so a caller that hands the list over
    (keeping no other reference to the table) holds the rows about once, not twice."""
    for i in range(len(columns)):
        columns[i] = columns[i].take(order)
    return pa.Table.from_arrays(columns, schema=schema)


def _rejected(city: CityConfig, run_id: str, department: str, entity: str) -> list[str]:
    """The record IDs of ``department``'s rows of ``entity`` rejected tonight."""
    path = canonical_dir(city.var_dir, run_id, department) / "rejects.parquet"
    if not path.exists():
        return []
    r = pq.read_table(path, columns=["entity", *META]).to_pandas()
    r = r[(r["entity"] == entity) & r["source_key"].notna()]
    return [record_id(*row) for row in r[META].itertuples(index=False, name=None)]


def _keyed(rows: pa.Table, run_id: str, entity: str) -> tuple[pa.Table, int]:
    """``rows`` less those without a source key (logged with their tables), and how many."""
    keyless = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(rows["source_key"]), ""), True)
    unkeyed = int(pc.sum(keyless).as_py() or 0)
    if not unkeyed:
        return rows, 0
    lost = rows.filter(keyless).group_by(["department", "source_table"]).aggregate([])
    log.warning(
        "night %s: %d %s row(s) without a source key left out (%s). Fix: standardize the "
        "night again: such rows go to rejects with row:key_missing",
        run_id,
        unkeyed,
        entity,
        ", ".join(f"{d}.{t}" for d, t in zip(*lost.to_pydict().values(), strict=True)),
    )
    return rows.filter(pc.invert(keyless)), unkeyed
