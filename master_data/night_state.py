"""The master state of a linked night: Arrow files under ``<var>/master/run=<run_id>/``.

Linking writes, per entity, the night's records, block keys, scored edges, components,
crosswalk, golden records, provenance, conflicts, review queue, ID events, the retired-ID
registry, the touched master IDs, the model and match settings; beside them the
relationships and a ``summary.json``. Publishing reads them into the warehouse, and the next
night reads them as its base (:class:`BaseState`). The files are Arrow IPC (LZ4), which reads
~8x and writes ~3x faster than Parquet for these tables (bench/link_bench.py); the golden
records (:data:`MAPPED`) and the layered tables' bases are left uncompressed. Only the newest
published nights keep theirs (:func:`prune_states`).

The large tables whose rows a delta night mostly keeps — the records, their block keys, the
edges, components, crosswalk and provenance (:data:`LAYERED`) — are kept in layers so that a
delta night does not rewrite them: a *base* file (uncompressed, read memory-mapped), the keys
(record or master IDs) dropped from it since (``<name>.dropped.arrow``) and the rows added since
(``<name>.added.arrow``). A delta night hard-links the base night's base file into its own
folder and writes only the two small layers (:func:`write_layered`); once they hold more than
:data:`COMPACT_SHARE` of the base's rows the night writes a new base instead. Every file is
written once and never changed, inside the night's ``.tmp`` folder that is renamed into place
as a whole, so a night killed part way leaves the base night's files as they were. A folder
with no layer files (a full night, or a night of an earlier govmdm) reads as its base alone.

>>> read_state(master_dir(var, "2026-07-01") / "person", "crosswalk").num_rows
900
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather

from etl.config import CityConfig
from etl.state import warehouse_url
from master_data.identity import RETIRED_COLUMNS
from master_data.model import FellegiSunter
from master_data.records import META, RECORD, take_each_column
from master_data.settings import load_match_settings
from store.layout import master_root, state_dir_of
from store.tables import (
    crosswalk_table,
    enterprise_table,
    person_table,
    review_queue_table,
    run_table,
)
from store.warehouse import engine_for, read

log = logging.getLogger(__name__)

SORT = {
    "edges": ["left", "right"],
    "components": [RECORD],
    "crosswalk": [RECORD],
    "golden": ["master_id"],
    "provenance": ["master_id", "attribute"],
    "conflicts": ["master_id", "attribute", "department", "source_table", "source_key"],
    "review": ["left_record", "right_record"],
}
"""The order a full night writes each state table in (a delta night appends its rows)."""


class ConsolidateError(RuntimeError):
    """A night cannot be linked or published as asked; the message says why and how to fix it."""


class DamagedState(ConsolidateError):
    """A master-state file is there but cannot be read (truncated, overwritten, not Arrow)."""

    def __init__(self, path: Path, cause: BaseException, fix: str | None = None) -> None:
        self.path, self.cause = path, cause
        what = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
        super().__init__(
            f"the master-state file {path} is damaged ({what})" + (f". Fix: {fix}" if fix else "")
        )

    def with_fix(self, fix: str) -> DamagedState:
        """The same damage, with the command that recovers from it."""
        return DamagedState(self.path, self.cause, fix)


def older_night(run_id: str, latest: str) -> str:
    """Why night ``run_id``, published before ``latest``, is not linked or published again."""
    return (
        f"night {run_id} was published before night {latest}; linking and publishing it again "
        f"would put the golden tables back to {run_id} while the watermarks stay at {latest}'s, "
        f"losing what was read since. Fix: rerun night {latest} instead (it is replayed from "
        "its raw data), or read every source in full as a new night "
        "(`govmdm extract --full --run-id NEW`, then standardize and consolidate NEW)"
    )


def state_file(folder: Path, name: str) -> Path:
    """The file of state table ``name`` (``records``, ``edges``, ``crosswalk``, …)."""
    return folder / f"{name}.arrow"


LAYERED = {
    "records": RECORD,
    "blockkeys": RECORD,
    "components": RECORD,
    "crosswalk": RECORD,
    "provenance": "master_id",
    "edges": RECORD,
}
"""The state tables a delta night appends to instead of rewriting (see the module doc), each
with the keys a night drops rows by (the column of its dropped layer): the records it relinks
(or their master IDs). Golden records and conflicts are rewritten whole each night
(relationships and the night's run ID change rows that were not relinked)."""
DROPPED_BY = {"edges": ("left", "right")}
"""The columns a layered table's rows are dropped by where they are not its key column: an
edge is dropped when either of its ends is."""
COMPACT_SHARE = 0.25
"""A layered table gets a new base once its dropped and added rows exceed this share of it."""


def layer_file(folder: Path, name: str, layer: str) -> Path:
    """The ``dropped`` or ``added`` layer of layered state table ``name``."""
    return folder / f"{name}.{layer}.arrow"


def _read_file(path: Path, columns: list[str] | None = None, *, mapped: bool = False) -> pa.Table:
    """The file's table (optionally only ``columns``). ``mapped``: an uncompressed file (a
    layered table's base, :data:`MAPPED`), read whole and memory-mapped, which costs nothing
    until its pages are touched, where picking columns while reading copies them (a file an
    earlier govmdm compressed is decompressed whole, once)."""
    try:
        if mapped:
            table = feather.read_table(path, memory_map=True)
            return table if columns is None else table.select(columns)
        return feather.read_table(path, columns=columns, memory_map=True)
    except (OSError, pa.ArrowException, ValueError, KeyError) as exc:
        raise DamagedState(path, exc) from exc


def _rows_in(path: Path) -> int:
    """How many rows the Arrow file ``path`` holds, from its batches' headers alone."""
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


Where = tuple[str | tuple[str, ...], pa.Array]
"""``(column, values)``: the rows of a state table whose ``column`` (or one of several columns)
holds one of ``values``."""


def _columns(where: Where) -> tuple[str, ...]:
    return (where[0],) if isinstance(where[0], str) else where[0]


def _dropped_by(name: str) -> tuple[str, ...]:
    """The columns rows of layered table ``name`` are dropped by (:data:`DROPPED_BY`)."""
    return DROPPED_BY.get(name, (LAYERED[name],))


def _hit(table: pa.Table, columns: tuple[str, ...], keys: pa.Array) -> pa.ChunkedArray:
    """Which rows of ``table`` hold one of ``keys`` in one of ``columns``."""
    hits = [_among(table[c], keys) for c in columns]
    return functools.reduce(pc.or_, hits[1:], hits[0])


def read_state(
    folder: Path, name: str, columns: list[str] | None = None, *, where: Where | None = None
) -> pa.Table:
    """A state table (optionally only ``columns``, and only the rows ``where`` picks); a
    layered one as its base less the dropped records, then the added rows. The rows are picked
    before a layered base (read memory-mapped) is copied: a night that needs a few rows of a
    large table copies only those. A file that is missing or cannot be read raises
    :class:`DamagedState` naming it."""
    path = state_file(folder, name)
    dropped_file = layer_file(folder, name, "dropped")
    layered = name in LAYERED and dropped_file.is_file()
    needed = list(_dropped_by(name)) if layered else []
    if where is not None:
        needed += _columns(where)
    wanted = columns if columns is None else list(dict.fromkeys([*columns, *needed]))
    table = _picked(_read_file(path, wanted, mapped=name in LAYERED or name in MAPPED), where)
    if layered:
        dropped = _read_file(dropped_file)[LAYERED[name]]
        added = _picked(_read_file(layer_file(folder, name, "added"), wanted), where)
        kept = table.filter(pc.invert(_hit(table, _dropped_by(name), dropped.combine_chunks())))
        table = _after(kept, added)
    return table.select(columns) if columns is not None else table


def read_layers(
    folder: Path, name: str, columns: list[str] | None = None
) -> tuple[pa.Table, pa.Array, pa.Table | None]:
    """Layered state table ``name`` as its layers, none of them filtered (nothing of the base
    copied): the base file memory-mapped, the keys dropped from it, and the rows added since
    (None: the table is its base alone). :func:`read_state` gives the table they make."""
    table = _read_file(state_file(folder, name), columns, mapped=True)
    dropped_file = layer_file(folder, name, "dropped")
    if not dropped_file.is_file():
        return table, pa.array([], pa.string()), None
    dropped = _read_file(dropped_file)[LAYERED[name]].combine_chunks().cast(pa.string())
    return table, dropped, _read_file(layer_file(folder, name, "added"), columns)


def _picked(table: pa.Table, where: Where | None) -> pa.Table:
    """The rows of ``table`` that ``where`` picks (all of them without)."""
    if where is None:
        return table
    return table.filter(_hit(table, _columns(where), where[1]))


MAPPED = frozenset({"golden"})
"""The unlayered state tables that every night reads whole and writes again (a delta night
carries the rows it did not relink, relationships rewrite the golden records): written
uncompressed and read memory-mapped, as the layered bases are. LZ4 costs more time on them
than it saves, for about two to four times the disk."""


def write_state(
    rows: pa.Table | pd.DataFrame, folder: Path, name: str, *, compression: str | None = None
) -> None:
    """Write a state table (a DataFrame without its index); LZ4 unless it is one of
    :data:`MAPPED` (or ``compression`` says otherwise). A table written again (relationships
    rewrite the golden records) replaces the file rather than overwriting it: the rows read
    from it may still be mapped from the old one."""
    table = (
        pa.Table.from_pandas(rows, preserve_index=False) if isinstance(rows, pd.DataFrame) else rows
    )
    how = compression or ("uncompressed" if name in MAPPED else "lz4")
    path = state_file(folder, name)
    written = path.with_name(path.name + ".writing")
    feather.write_feather(table, written, compression=how)
    os.replace(written, path)


def write_layered(
    folder: Path,
    name: str,
    whole: pa.Table | Callable[[], pa.Table],
    *,
    base: Path | None = None,
    removed: pd.Index | None = None,
    added: pa.Table | None = None,
) -> str:
    """Write layered state table ``name`` (:data:`LAYERED`): tonight's ``whole`` table, which
    is the ``base`` night's less the rows whose key (:data:`DROPPED_BY`) is ``removed``, then the
    ``added`` rows. With a
    base night whose layers stay small, its base file is linked and only the layers are
    written; otherwise ``whole`` becomes a new base. Which of the two (``linked``/``whole``).
    ``whole`` may be a function giving it: then it is built only when a new base is due."""
    if base is not None and removed is not None and added is not None:
        source, key = state_file(base, name), LAYERED[name]
        try:
            rows = _rows_in(source)
            dropped = read_layer(base, name, "dropped")
            before = read_layer(base, name, "added")
        except (OSError, pa.ArrowException, ValueError, KeyError) as exc:
            raise DamagedState(source, exc) from exc
        gone = pa.array(removed.to_numpy(dtype=object), pa.string())
        dropped_ids = pc.unique(
            pa.chunked_array([*(dropped[key].chunks if dropped else []), gone], pa.string())
        )
        if before is not None:
            before = before.filter(pc.invert(_hit(before, _dropped_by(name), gone)))
            added = _after(before, added)
        if len(dropped_ids) + added.num_rows <= COMPACT_SHARE * rows:
            _link(source, state_file(folder, name))
            write_state(pa.table({key: dropped_ids}), folder, name + ".dropped")
            write_state(added, folder, name + ".added")
            return "linked"
    write_state(whole() if callable(whole) else whole, folder, name, compression="uncompressed")
    return "whole"


def _among(values: pa.ChunkedArray, keys: pa.Array) -> pa.ChunkedArray:
    """Which ``values`` are among ``keys`` (a column written from an empty frame, or keys taken
    from one, are typed null or float: none of their values is among the other's)."""
    if pa.types.is_null(values.type) or not len(values):
        values = values.cast(pa.string() if pa.types.is_null(keys.type) else keys.type)
    if pa.types.is_null(keys.type):
        keys = keys.cast(values.type)
    return pc.is_in(values, value_set=keys)


def read_layer(folder: Path, name: str, layer: str) -> pa.Table | None:
    """One layer of a layered state table (None: the table has none, it is a base alone)."""
    path = layer_file(folder, name, layer)
    if not path.is_file():
        return None
    return feather.read_table(path, memory_map=True)


def _link(source: Path, target: Path) -> None:
    """``target`` as a second name of ``source`` (a copy where the file system has no hard
    links): neither is ever written again, so they may share their data."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_merged(
    folder: Path,
    name: str,
    new: pd.DataFrame,
    kept: pa.Table | Callable[[], pa.Table | None] | None,
    *,
    base: Path | None = None,
    removed: pd.Index | None = None,
) -> None:
    """Tonight's rows after last night's ``kept`` ones (a delta night), or sorted by
    :data:`SORT` (a full night, ``kept`` None). A :data:`LAYERED` table of a delta night is
    written as layers on the ``base`` night's, which ``kept`` is less the ``removed`` keys.
    ``kept`` may be a function giving them: a layered table then reads them only when it gets
    a new base (filtering last night's whole table costs more than writing tonight's layers).

    A caller that hands ``new`` over (``write_merged(..., tables.pop(name), ...)``) lets the
    frame go as soon as it is in Arrow: a night of a million persons holds no table in pandas
    and twice in Arrow at once."""
    fresh = pa.Table.from_pandas(new, preserve_index=False)
    del new
    carried = kept if callable(kept) else lambda: kept
    if name in LAYERED and base is not None and removed is not None:

        def whole() -> pa.Table:
            rows = carried()
            assert rows is not None, f"a delta night's {name} carries last night's rows"
            return _after(rows, fresh)

        write_layered(folder, name, whole, base=base, removed=removed, added=fresh)
        return
    rows = carried()
    if rows is not None:
        whole_table = _after(rows, fresh)
    else:
        order = _order(fresh, SORT[name])
        if order is None:
            whole_table = fresh
        else:  # sorted a column at a time, each one let go once taken
            schema, columns = fresh.schema, fresh.columns
            del fresh
            whole_table = take_each_column(schema, columns, order)
    if name not in LAYERED:
        write_state(whole_table, folder, name)
    else:
        write_layered(folder, name, whole_table)


def _order(table: pa.Table, columns: list[str]) -> pa.Array | None:
    """The row order that sorts ``table`` by ``columns``; None when it is in that order
    already (the golden records, the crosswalk and the components mostly are)."""
    order = pc.sort_indices(table, [(c, "ascending") for c in columns])
    return None if np.array_equal(order.to_numpy(), np.arange(table.num_rows)) else order


def _after(kept: pa.Table, fresh: pa.Table) -> pa.Table:
    """``kept``'s rows, then ``fresh``'s, in ``kept``'s columns."""
    for f in kept.schema:
        if f.name not in fresh.column_names:
            fresh = fresh.append_column(f.name, pa.nulls(fresh.num_rows, f.type))
    fresh = fresh.select(kept.schema.names)
    if not fresh.num_rows:  # an empty frame's columns have no real types: kept's stand
        return kept
    if not kept.num_rows:
        return fresh
    # an all-NULL column is typed null: the other side's type wins
    schema = pa.unify_schemas([kept.schema, fresh.schema], promote_options="permissive")
    return pa.concat_tables([kept.cast(schema), fresh.cast(schema)])


class BaseState:
    """Last night's master state of one entity, as linking reads it (``folder`` None: there
    is no last night).

    A damaged file raises :class:`DamagedState`. On a full night, the files whose content the
    warehouse also holds (the crosswalk, golden records and review queue) are read from the
    warehouse instead when it holds that very night, and last night's records are not needed
    when every department was read in full tonight; each file recovered so is noted."""

    _FROM_WAREHOUSE = frozenset({"crosswalk", "golden", "review"})

    def __init__(
        self,
        folder: Path | None,
        entity: str,
        *,
        fallback: bool,
        warehouse: str | None,
        records_needed: bool,
    ) -> None:
        self.folder, self.entity = folder, entity
        self.fallback, self.warehouse, self.records_needed = fallback, warehouse, records_needed
        self.recovered: list[str] = []

    def read(
        self, name: str, columns: list[str] | None = None, *, where: Where | None = None
    ) -> pa.Table:
        """State table ``name`` (optionally only ``columns``, and the rows ``where`` picks)."""
        assert self.folder is not None
        try:
            return read_state(self.folder, name, columns, where=where)
        except DamagedState as exc:
            if not (self.fallback and self.warehouse and name in self._FROM_WAREHOUSE):
                raise
            table = _picked(self._from_warehouse(name), where)
            log.warning("%s; read from the warehouse instead", exc)
            self.recovered.append(f"{exc.path} (read from the warehouse instead)")
            return table.select(columns) if columns else table

    def records(self, columns: list[str] | None = None) -> pa.Table | None:
        """Last night's records, optionally only ``columns`` (None on a first night, or when
        tonight read everything)."""
        if self.folder is None:
            return None
        try:
            return read_state(self.folder, "records", columns)
        except DamagedState as exc:
            if self.fallback and not self.records_needed:
                log.warning("%s; every source was read in full tonight: not needed", exc)
                self.recovered.append(f"{exc.path} (not needed: every source was read in full)")
                return None
            raise

    def record_layers(self, columns: list[str]) -> tuple[pa.Table, pa.Array, pa.Table | None]:
        """Last night's records in ``columns`` as their layers (:func:`read_layers`)."""
        assert self.folder is not None
        return read_layers(self.folder, "records", columns)

    def model(self) -> FellegiSunter:
        """Last night's fitted model."""
        assert self.folder is not None
        path = self.folder / "model.json"
        try:
            return FellegiSunter.from_json(path.read_text())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DamagedState(path, exc) from exc

    def carry(self, name: str, folder: Path) -> None:
        """Copy last night's file ``name`` (the model) unchanged into ``folder``: tonight's
        is the same, and writing it out again cost more than the copy."""
        assert self.folder is not None
        shutil.copyfile(self.folder / name, folder / name)

    def text(self, name: str) -> str | None:
        """A small text file of last night's state (None if missing or unreadable: a cache)."""
        assert self.folder is not None
        try:
            return (self.folder / name).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def retired(self) -> pd.DataFrame:
        """IDs retired on earlier nights with the records they last held (empty if none)."""
        if self.folder is None:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in RETIRED_COLUMNS})
        return self.read("retired").to_pandas()

    def _from_warehouse(self, name: str) -> pa.Table:
        assert self.warehouse is not None
        engine = engine_for(self.warehouse)
        try:
            if name == "golden":
                table = person_table if self.entity == "person" else enterprise_table
                frame = read(engine, table)
            elif name == "crosswalk":
                frame = read(engine, crosswalk_table, entity=self.entity).drop(columns="entity")
                keys = frame[META].astype(str).agg("/".join, axis=1) if len(frame) else []
                frame.insert(0, RECORD, keys)
            else:
                frame = read(engine, review_queue_table, entity=self.entity)
        finally:
            engine.dispose()
        return pa.Table.from_pandas(frame, preserve_index=False)


def prune_states(city: CityConfig, keep: int | None = None) -> list[str]:
    """Remove the master state of every night but the ``keep`` newest published ones
    (``state_nights_kept`` in config/matching.yaml) and any night being linked now; which."""
    if keep is None:
        keep = load_match_settings(city.config_dir).state_nights_kept
    engine = engine_for(warehouse_url(city))
    try:
        runs = read(engine, run_table).sort_values("published_at", ascending=False)
    finally:
        engine.dispose()
    folders = [state_dir_of(city.var_dir, r).resolve() for r in runs.to_dict("records")]
    kept = set(folders[:keep])
    published = set(folders)
    removed = []
    for folder in sorted(master_root(city.var_dir).glob("run=*")):
        # unpublished folders are a night in progress (or a link not yet published): left alone
        if folder.resolve() in published and folder.resolve() not in kept:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name.removeprefix("run="))
    return removed
