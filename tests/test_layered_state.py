"""The layered master state (:func:`master_data.night_state.write_layered`): a delta night links
the base night's records and block keys and writes only what changed; the table it reads back is
the whole one, night after night; the layers get a new base once they grow; a state folder of an
earlier govmdm (one LZ4 file per table) still opens and is built on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import pytest

from master_data.link import _write_block_keys
from master_data.night_state import (
    COMPACT_SHARE,
    BaseState,
    DamagedState,
    layer_file,
    read_state,
    state_file,
    write_layered,
    write_merged,
)
from master_data.records import RECORD, is_in
from master_data.scope import delta_records, night_records

ROWS = 400


def _records(ids: list[int], night: int) -> pa.Table:
    return pa.table(
        {
            RECORD: pa.array([f"gongan/t_rk/{i:05d}" for i in ids], pa.string()),
            "name": pa.array([f"张{i}" for i in ids], pa.string()),
            "night": pa.array([night] * len(ids), pa.int32()),
        }
    )


def _next(
    folder: Path,
    base: Path,
    whole: pa.Table,
    gone: list[int],
    new: list[int],
    night: int,
    name: str = "records",
) -> tuple[pa.Table, str]:
    """Night ``night`` on ``base``: records ``gone`` removed, ``new`` (re)written."""
    removed = pd.Index([f"gongan/t_rk/{i:05d}" for i in sorted(set(gone) | set(new))])
    added = _records(new, night)
    keep = [r not in set(removed) for r in whole[RECORD].to_pylist()]
    tonight = pa.concat_tables([whole.filter(pa.array(keep)), added])
    folder.mkdir(parents=True)
    how = write_layered(folder, name, tonight, base=base, removed=removed, added=added)
    return tonight, how


def test_a_delta_night_links_the_base_and_reads_back_the_whole_table(tmp_path: Path) -> None:
    night0, night1, night2 = tmp_path / "n0", tmp_path / "n1", tmp_path / "n2"
    night0.mkdir()
    whole0 = _records(list(range(ROWS)), 0)
    assert write_layered(night0, "records", whole0) == "whole"
    assert not layer_file(night0, "records", "added").exists()
    base_bytes = state_file(night0, "records").read_bytes()

    whole1, how = _next(night1, night0, whole0, gone=[3, 4], new=[5, 400, 401], night=1)
    assert how == "linked"
    # the same file, not a copy: tonight wrote only its layers
    assert (
        state_file(night1, "records").stat().st_ino == state_file(night0, "records").stat().st_ino
    )
    assert read_state(night1, "records").equals(whole1)
    assert read_state(night1, "records", ["name"]).equals(whole1.select(["name"]))

    # on a layered base: record 400 removed again, 5 changed again, 7 new
    whole2, how = _next(night2, night1, whole1, gone=[400], new=[5, 7], night=2)
    assert how == "linked"
    assert read_state(night2, "records").equals(whole2)
    assert read_state(night2, "records").num_rows == ROWS - 2 + 1
    assert read_state(night1, "records").equals(whole1)  # the base night reads as it did
    assert state_file(night0, "records").read_bytes() == base_bytes


def test_rows_picked_by_a_column_read_as_the_whole_table_filtered(tmp_path: Path) -> None:
    night0, night1 = tmp_path / "n0", tmp_path / "n1"
    night0.mkdir()
    whole0 = _records(list(range(ROWS)), 0)
    write_layered(night0, "records", whole0)
    whole1, how = _next(night1, night0, whole0, gone=[3, 4], new=[5, 400], night=1)
    assert how == "linked"
    names = pa.array(["张2", "张3", "张5", "张400", "张999"])  # 3 is gone, 5 and 400 are new
    picked = read_state(night1, "records", [RECORD, "night"], where=("name", names))
    assert picked.to_pydict() == {
        RECORD: ["gongan/t_rk/00002", "gongan/t_rk/00005", "gongan/t_rk/00400"],
        "night": [0, 1, 1],
    }
    assert picked.equals(whole1.filter(pc.is_in(whole1["name"], names)).select([RECORD, "night"]))
    assert read_state(night0, "records", where=("name", names)).num_rows == 3  # 2, 3 and 5
    ids = pa.array(["gongan/t_rk/00004", "gongan/t_rk/00400"])  # by the layers' own key
    assert read_state(night1, "records", ["name"], where=(RECORD, ids)).to_pydict() == {
        "name": ["张400"]
    }


def test_a_delta_nights_records_are_the_base_nights_not_copied(tmp_path: Path) -> None:
    """A delta night's records (:func:`master_data.scope.delta_records`) are the table that
    filtering the base night's gives (:func:`master_data.scope.night_records`), record for
    record, on a base night that is itself layered; building them copies none of the base
    night's records, only what is picked is copied."""
    many = 20_000
    night0, night1 = tmp_path / "n0", tmp_path / "n1"
    night0.mkdir()
    whole0 = _records(list(range(many)), 0)
    write_layered(night0, "records", whole0)
    _next(night1, night0, whole0, gone=[3, 4], new=[5, many, many + 1], night=1)
    base = BaseState(night1, "person", fallback=False, warehouse=None, records_needed=True)
    tonight = _records([5, 6, many + 1, many + 2], 2)
    gone = [f"gongan/t_rk/{i:05d}" for i in (7, many)]

    expected, removed, left = night_records(tonight, gone, base.records(), True)
    before = pa.total_allocated_bytes()
    records, removed_too, left_too = delta_records(tonight, gone, base)
    assert pa.total_allocated_bytes() - before < whole0.nbytes / 20
    assert removed_too.equals(removed) and left_too == left == 2  # 7 and 20000 left
    assert records.num_rows == expected.num_rows == many - 1  # 3, 4, 7, 20000 left; 2 new

    def by_id(table: pa.Table) -> pa.Table:
        return table.sort_by(RECORD)

    assert by_id(records.whole()).equals(by_id(expected))
    ids = pd.Index([f"gongan/t_rk/{i:05d}" for i in (2, 3, 5, 6, 7, many, many + 1, many + 2)])
    picked = records.pick(ids)
    assert picked.num_rows == 5  # 3, 7 and 20000 are gone
    assert by_id(picked).equals(by_id(expected.filter(is_in(expected[RECORD], ids))))
    assert picked.filter(pc.equal(picked[RECORD], "gongan/t_rk/00005"))["night"].to_pylist() == [2]


def test_edges_are_layered_and_dropped_by_either_end(tmp_path: Path) -> None:
    """A delta night writes the edges as layers on the base night's file (1.9M rows at 200k
    persons were read, filtered and written whole each night): an edge is dropped when either
    of its ends is relinked, on the base and on the base night's own added layer, and rows
    picked by either end read as the whole table filtered."""

    def edges(pairs: list[tuple[int, int]], night: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "left": [f"r{a:04d}" for a, _ in pairs],
                "right": [f"r{b:04d}" for _, b in pairs],
                "probability": [night + a / 10_000 for a, _ in pairs],
            }
        )

    night0, night1, night2 = tmp_path / "n0", tmp_path / "n1", tmp_path / "n2"
    for night in (night0, night1, night2):
        night.mkdir()
    first = [(i, i + 1) for i in range(0, ROWS, 2)]
    write_merged(night0, "edges", edges(first, 0), None)
    expected = edges(first, 0)

    def night(
        folder: Path, base: Path, relinked: list[int], fresh: list[tuple[int, int]], n: int
    ) -> None:
        nonlocal expected
        ids = pd.Index([f"r{i:04d}" for i in relinked])
        kept = expected[~(expected["left"].isin(ids) | expected["right"].isin(ids))]
        write_merged(folder, "edges", edges(fresh, n), None, base=base, removed=ids)
        expected = pd.concat([kept, edges(fresh, n)], ignore_index=True)
        assert (
            state_file(folder, "edges").stat().st_ino == state_file(night0, "edges").stat().st_ino
        )
        got = read_state(folder, "edges").to_pandas()
        pd.testing.assert_frame_equal(got, expected)

    night(night1, night0, [3, 10], [(3, 10), (3, 7)], 1)  # (2,3) and (10,11) dropped
    night(night2, night1, [7, 11], [(7, 9)], 2)  # (3,7) of night 1's layer and (6,7) dropped
    ends = pa.array(["r0003", "r0020"])
    picked = read_state(night2, "edges", where=(("left", "right"), ends)).to_pandas()
    want = expected[
        expected["left"].isin(["r0003", "r0020"]) | expected["right"].isin(["r0003", "r0020"])
    ]
    pd.testing.assert_frame_equal(picked, want.reset_index(drop=True))
    assert sorted(zip(picked["left"], picked["right"], strict=True)) == [
        ("r0003", "r0010"),
        ("r0020", "r0021"),
    ]


def test_a_delta_nights_block_keys_get_a_new_base_from_the_base_nights(tmp_path: Path) -> None:
    def keys(ids: list[int], key: str) -> pa.Table:
        return pa.table(
            {
                "pass": ["id_number"] * len(ids),
                "key": [f"{key}{i}" for i in ids],
                RECORD: [f"gongan/t_rk/{i:05d}" for i in ids],
            }
        )

    night0, night1 = tmp_path / "n0", tmp_path / "n1"
    for folder in (night0, night1):
        folder.mkdir()
    write_layered(night0, "blockkeys", keys(list(range(ROWS)), "a"))
    base = BaseState(night0, "person", fallback=False, warehouse=None, records_needed=True)
    many = list(range(int(ROWS * COMPACT_SHARE) + 1))
    tonight = keys(many, "b")
    removed = pd.Index([f"gongan/t_rk/{i:05d}" for i in [*many, ROWS - 1]])
    assert _write_block_keys(night1, tonight, base, removed).num_rows == 0
    assert not layer_file(night1, "blockkeys", "added").exists()  # a new base
    expected = pa.concat_tables([keys(list(range(len(many), ROWS - 1)), "a"), tonight])
    assert read_state(night1, "blockkeys").equals(expected)


def test_layers_past_the_share_get_a_new_base(tmp_path: Path) -> None:
    night0, night1 = tmp_path / "n0", tmp_path / "n1"
    night0.mkdir()
    whole0 = _records(list(range(ROWS)), 0)
    write_layered(night0, "records", whole0)
    many = list(range(int(ROWS * COMPACT_SHARE) + 1))
    whole1, how = _next(night1, night0, whole0, gone=[], new=many, night=1)
    assert how == "whole" and not layer_file(night1, "records", "dropped").exists()
    assert (
        state_file(night1, "records").stat().st_ino != state_file(night0, "records").stat().st_ino
    )
    assert read_state(night1, "records").equals(whole1)


def test_a_state_folder_of_an_earlier_govmdm_opens_and_is_built_on(tmp_path: Path) -> None:
    """Before the layers every table was one LZ4-compressed file: it reads as a base alone,
    and the next delta night links it as its base."""
    old, night1 = tmp_path / "old", tmp_path / "n1"
    old.mkdir()
    whole0 = _records(list(range(ROWS)), 0)
    feather.write_feather(whole0, state_file(old, "records"), compression="lz4")
    assert read_state(old, "records").equals(whole0)
    whole1, how = _next(night1, old, whole0, gone=[1], new=[2], night=1)
    assert how == "linked"
    assert read_state(night1, "records").equals(whole1)


def test_a_damaged_layer_is_named(tmp_path: Path) -> None:
    night0, night1 = tmp_path / "n0", tmp_path / "n1"
    night0.mkdir()
    whole0 = _records(list(range(ROWS)), 0)
    write_layered(night0, "records", whole0)
    _next(night1, night0, whole0, gone=[1], new=[2], night=1)
    added = layer_file(night1, "records", "added")
    added.write_bytes(added.read_bytes()[:100])
    with pytest.raises(DamagedState, match=r"records\.added\.arrow"):
        read_state(night1, "records")


def test_a_night_that_relinks_nothing_and_the_night_after_it(tmp_path: Path) -> None:
    """A delta night with no relinked rows writes an empty added layer (its columns typed null,
    from an empty frame); the next night filters it by key like any other."""
    night0, night1, night2 = tmp_path / "n0", tmp_path / "n1", tmp_path / "n2"
    night0.mkdir()
    whole0 = _records(list(range(ROWS)), 0)
    write_layered(night0, "crosswalk", whole0)
    night1.mkdir()
    empty = pd.DataFrame({RECORD: pd.Series(dtype=object), "name": pd.Series(dtype=object)})
    kept = read_state(night0, "crosswalk")
    write_merged(night1, "crosswalk", empty, kept, base=night0, removed=pd.Index([]))
    assert read_state(night1, "crosswalk").equals(whole0)
    whole2, how = _next(night2, night1, whole0, gone=[9], new=[], night=2, name="crosswalk")
    night2_view = read_state(night2, "crosswalk")
    assert how == "linked" and night2_view.num_rows == ROWS - 1
    assert night2_view.equals(whole2)


def test_last_nights_rows_are_read_only_when_a_new_base_is_due(tmp_path: Path) -> None:
    """``write_merged`` given a function for the kept rows calls it only to write a new base:
    layers on the base night's file need none of last night's rows."""
    night0, night1, night2 = tmp_path / "n0", tmp_path / "n1", tmp_path / "n2"
    for night in (night0, night1, night2):
        night.mkdir()
    whole0 = _records(list(range(ROWS)), 0)
    write_layered(night0, "crosswalk", whole0)
    calls: list[str] = []

    def kept(ids: list[int]) -> pa.Table:
        calls.append("read")
        wanted = {f"gongan/t_rk/{i:05d}" for i in ids}
        return whole0.filter(pa.array([r in wanted for r in whole0[RECORD].to_pylist()]))

    few = _records([3], 1).to_pandas()
    gone = pd.Index(few[RECORD])
    rest = [i for i in range(ROWS) if i != 3]
    write_merged(night1, "crosswalk", few, lambda: kept(rest), base=night0, removed=gone)
    assert calls == [] and layer_file(night1, "crosswalk", "added").is_file()
    assert read_state(night1, "crosswalk").num_rows == ROWS
    many = _records(list(range(ROWS // 2)), 2).to_pandas()
    write_merged(
        night2,
        "crosswalk",
        many,
        lambda: kept(list(range(ROWS // 2, ROWS))),
        base=night1,
        removed=pd.Index(many[RECORD]),
    )
    assert calls == ["read"] and not layer_file(night2, "crosswalk", "added").is_file()
    back = read_state(night2, "crosswalk").to_pandas().sort_values(RECORD, ignore_index=True)
    assert back["night"].tolist() == [2] * (ROWS // 2) + [0] * (ROWS // 2)


def test_a_handed_over_frame_is_let_go_before_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A night of a million persons held each state table in pandas and twice in Arrow at
    once: a frame handed to write_merged is gone by the time its file is written, and a table
    already in order is written as it is, not copied by a sort."""
    import weakref

    from master_data import night_state

    ids = [f"P{i:010d}" for i in range(50)]
    frames = {"golden": pd.DataFrame({"master_id": ids, "n": range(50)})}
    frame = weakref.ref(frames["golden"])
    let_go: list[bool] = []
    write = night_state.write_state

    def spy(rows: pa.Table, folder: Path, name: str, **kw: str) -> None:
        let_go.append(frame() is None)
        write(rows, folder, name, **kw)

    monkeypatch.setattr(night_state, "write_state", spy)
    write_merged(tmp_path, "golden", frames.pop("golden"), None)
    assert let_go == [True]
    assert read_state(tmp_path, "golden")["master_id"].to_pylist() == ids

    assert night_state._order(pa.table({"master_id": ids}), ["master_id"]) is None
    # sorted a column at a time: the same table a sort of the whole would give
    backwards = pd.DataFrame({"master_id": ids[::-1], "n": range(50)})
    write_merged(tmp_path, "golden", backwards, None)
    whole = pa.Table.from_pandas(backwards, preserve_index=False)
    expected = whole.take(pa.array(range(49, -1, -1)))
    got = read_state(tmp_path, "golden")
    assert got.equals(expected) and got.schema.equals(expected.schema, check_metadata=True)


def test_block_keys_once_written_hold_no_memory(tmp_path: Path) -> None:
    """The block keys of a million persons are written as soon as blocking has them and let
    go: what linking keeps of them holds none of their buffers (an empty slice held them all)."""
    from master_data.blocking import KEY_SCHEMA
    from master_data.link import _write_block_keys

    ids = [f"gongan/t_rk/{i:05d}" for i in range(ROWS)]
    keys = pa.table({"pass": ["name"] * ROWS, "key": ids, RECORD: ids}, schema=KEY_SCHEMA)
    left = _write_block_keys(tmp_path, keys)
    assert left.num_rows == 0 and left.schema == KEY_SCHEMA
    assert left.get_total_buffer_size() < 64  # not the keys' buffers
    assert read_state(tmp_path, "blockkeys").equals(keys)
