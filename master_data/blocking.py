"""Candidate pairs for record linkage: blocking passes over canonical rows of one entity type.

A :class:`BlockingPass` names the keys two rows must share to become a candidate pair; the
candidates are the union of all passes. Keys are canonical column names or the derived keys of
:data:`DERIVED_KEYS`. Deterministic identifiers only count when valid: as a key, ``id_number``
and ``legal_rep_id`` mean a valid GB 11643 number, ``uscc`` a valid GB 32100 code, and any value
whose field carries a ``reject_field`` reason (:data:`fields.normalize.SEVERITY`) is no key at all.

>>> import pandas as pd
>>> df = pd.DataFrame(
...     {"name": ["林海", "林海", "林梅"], "division_code": ["350102", "350102", "350102"]},
...     index=["a", "b", "c"],
... )
>>> by_name = BlockingPass(name="name+district", keys=("name", "division_code"))
>>> found = candidate_pairs(df, [by_name])
>>> list(found.pairs)
[('a', 'b')]
>>> found.report.passes[0].pairs
1

The nightly delta blocks only the changed rows against everything:
``candidate_pairs(df, passes, among=changed_ids)`` returns exactly the pairs of the full run
that touch a changed row, without building the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from recordlinkage.base import BaseIndexAlgorithm

from etl.standardize import SCHEMAS
from fields import dictionary, identifiers, normalize

__all__ = [
    "DEFAULT_MAX_BLOCK",
    "DERIVED_KEYS",
    "KEY_SCHEMA",
    "BlockingPass",
    "BlockingReport",
    "Candidates",
    "DerivedKey",
    "PassIndex",
    "PassReport",
    "SkippedBlock",
    "block_key_rows",
    "block_key_table",
    "candidate_pairs",
    "delta_candidates",
    "key_values",
    "load_passes",
    "masked_key",
    "valid_id",
    "valid_uscc",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BLOCK = 1000
"""Blocks with more rows than this are skipped (a block of n rows makes n(n-1)/2 pairs)."""

Positions = npt.NDArray[np.int64]

# Canonical column -> the field its reason codes are filed under ("address:address_unparsed").
_REASON_FIELD = {
    f.name: f.group for f in dictionary.FIELDS if f.group is not None and f.group != f.name
}
# Keys whose values are personal data: masked in logs and reports (GB/T 35273 style): the masked
# fields of either entity, and each number of a person's phones.
_PERSONAL = frozenset({f.name for f in dictionary.FIELDS if f.policy.masked} | {"phone_any"})


# --- validity -----------------------------------------------------------------------------


class _Rows:
    """A frame of canonical rows with its reject reasons and keys, each worked out once and
    shared by all passes of a run."""

    def __init__(self, df: pd.DataFrame) -> None:
        self.df = df
        self._invalid: dict[str, npt.NDArray[np.bool_]] | None = None
        self._keys: dict[str, pd.Series[Any]] = {}
        self._ids: pa.Array | None = None

    def ids(self) -> pa.Array:
        """The record IDs (the frame's index) as an Arrow string array."""
        if self._ids is None:
            self._ids = pa.array(np.asarray(self.df.index.to_numpy(), dtype=object), pa.string())
        return self._ids

    def invalid(self, fld: str) -> npt.NDArray[np.bool_]:
        """Rows (positional) whose ``reasons`` hold a ``reject_field`` code for ``fld``."""
        if self._invalid is None:
            self._invalid = {}
            if "reasons" in self.df.columns:
                codes = self.df["reasons"].reset_index(drop=True).explode().dropna().astype(str)
                parts = codes.str.partition(":") if len(codes) else pd.DataFrame(columns=[0, 1, 2])
                rejected = parts[2].map(
                    lambda code: normalize.SEVERITY.get(code) == normalize.REJECT
                )
                bad = parts[rejected.to_numpy(dtype=bool)]
                for name, group in bad.groupby(0):
                    mask = np.zeros(len(self.df), dtype=bool)
                    mask[group.index.to_numpy(dtype=np.int64)] = True
                    self._invalid[str(name)] = mask
        found = self._invalid.get(fld)
        return found if found is not None else np.zeros(len(self.df), dtype=bool)

    def column(self, column: str) -> pd.Series[Any]:
        """A column as a key: values with a ``reject_field`` reason are no key."""
        values = self.df[column].to_numpy(dtype=object, copy=True)
        values[self.invalid(_REASON_FIELD.get(column, column))] = None
        return _positional(values)

    def checked(self, column: str, fld: str, check: Callable[[str], bool]) -> pd.Series[bool]:
        """Present, no ``reject_field`` reason on ``fld`` and ``check`` passes."""
        values = self.df[column]
        present = values.notna().to_numpy() & ~self.invalid(fld)
        good = {v for v in pd.unique(values[present]) if isinstance(v, str) and check(v)}
        ok = present & values.isin(good).to_numpy()
        return pd.Series(ok, index=self.df.index, name=column)

    def only(self, column: str, ok: pd.Series[bool]) -> pd.Series[Any]:
        """A column as a key where ``ok``, else no key."""
        values = self.df[column].to_numpy(dtype=object, copy=True)
        values[~ok.to_numpy()] = None
        return _positional(values)

    def key(self, key: str) -> pd.Series[Any]:
        """Key values of every row, positionally; a list where a row has several."""
        if key not in self._keys:
            derived = DERIVED_KEYS.get(key)
            if derived is not None and derived.needs & set(self.df.columns):
                self._keys[key] = derived.compute(self)
            elif key in self.df.columns:
                self._keys[key] = _listed(self.column(key))
            else:
                raise KeyError(
                    f"blocking key {key!r} is neither a column of the frame nor a derived key"
                )
        return self._keys[key]


def valid_id(df: pd.DataFrame, column: str = "id_number") -> pd.Series[bool]:
    """Rows whose ID number may serve as a deterministic key.

    18 characters, GB 11643 check character and birth date right
    (:func:`fields.identifiers.id_is_valid`), and no ``reject_field`` reason on the field.

    >>> import pandas as pd
    >>> ids = pd.DataFrame({"id_number": ["11010519491231002X", "110105194912310021", None]})
    >>> valid_id(ids).tolist()
    [True, False, False]
    """
    return _Rows(df).checked(column, column, identifiers.id_is_valid)


def valid_uscc(df: pd.DataFrame, column: str = "uscc") -> pd.Series[bool]:
    """Rows whose unified social credit code is valid (GB 32100, embedded org code included).

    >>> import pandas as pd
    >>> valid_uscc(pd.DataFrame({"uscc": ["91350100M000100Y43", "91350100M000100Y44"]})).tolist()
    [True, False]
    """
    return _Rows(df).checked(column, column, identifiers.uscc_is_valid)


# --- keys ---------------------------------------------------------------------------------


def _positional(values: pd.Series[Any] | npt.NDArray[Any] | list[Any]) -> pd.Series[Any]:
    out = np.empty(len(values), dtype=object)  # not np.asarray: lists of equal length go 2-D
    out[:] = list(values)
    return pd.Series(out, dtype=object)


def _listed(values: pd.Series[Any]) -> pd.Series[Any]:
    """List-valued cells (``phones_all``) as lists, empty ones as no key."""
    present = values.dropna()
    if present.empty or not isinstance(present.iloc[0], list | tuple | np.ndarray):
        return values
    return values.map(
        lambda v: list(v) if isinstance(v, list | tuple | np.ndarray) and len(v) else None
    )


def _year(rows: _Rows, column: str) -> pd.Series[Any]:
    dates = pd.to_datetime(rows.column(column), errors="coerce")
    years = dates.dt.year.astype("Int64").astype(str)
    return _positional(np.where(dates.isna().to_numpy(), None, years.to_numpy(dtype=object)))


def _per_value(values: pd.Series[Any], fn: Callable[[Any], Any]) -> pd.Series[Any]:
    """``values.map(fn)`` calling ``fn`` once per distinct value (missing values: None)."""
    codes, uniques = pd.factorize(values.to_numpy(dtype=object), use_na_sentinel=True)
    mapped = np.empty(len(uniques) + 1, dtype=object)
    mapped[:-1] = [fn(u) for u in uniques]
    mapped[-1] = None  # code -1: missing
    return pd.Series(mapped[codes], index=values.index, dtype=object)


def _city_code(rows: _Rows) -> pd.Series[Any]:
    return _per_value(
        rows.column("division_code"),
        lambda c: c[:4] if isinstance(c, str) and len(c) >= 4 and c[2:4] != "00" else None,
    )


def _org_codes(rows: _Rows) -> pd.Series[Any]:
    """Organization codes of a row: its own, and the one inside its credit code (chars 9-17)."""
    none = _positional([None] * len(rows.df))
    own = rows.column("org_code") if "org_code" in rows.df.columns else none
    own = own.map(lambda c: c if isinstance(c, str) and identifiers.org_code_is_valid(c) else None)
    inner = (
        rows.key("uscc").map(lambda u: u[8:17] if isinstance(u, str) else None)
        if "uscc" in rows.df.columns
        else none
    )
    return _positional(
        [
            None if not (a or b) else sorted({c for c in (a, b) if c})
            for a, b in zip(own, inner, strict=True)
        ]
    )


def _names_pinyin(rows: _Rows) -> pd.Series[Any]:
    """The pinyin of every name a person went by: the name's, and the former name's (曾用名)."""
    current = rows.column("name_pinyin")
    if "former_name" not in rows.df.columns:
        return current
    names = current.to_numpy()
    out = _positional([[a] if a else None for a in names])
    # few people were renamed: the former name's pinyin only where there is one
    former = rows.column("former_name").to_numpy()
    for i in np.flatnonzero(pd.notna(former)).tolist():
        if isinstance(former[i], str) and former[i]:
            both = (names[i], normalize.name_pinyin(former[i]))
            out.iat[i] = sorted({k for k in both if k}) or None
    return out


def _reg_no(rows: _Rows) -> pd.Series[Any]:
    return _per_value(
        rows.column("reg_no"),
        lambda v: v if isinstance(v, str) and identifiers.reg_no_is_valid(v) else None,
    )


_COMPANY_WORDS = ("公司", "集团", "合作社", "事务所", "银行", "医院", "学校", "协会")


def _operator_name(name: object, rep: object) -> str | None:
    """The operator's name an individual business may be filed under: the legal
    representative's, where the row's name holds it (福州市鼓楼区林秀英小吃店) or names no
    company (a 个体工商户, or the operator's own name); ordinary companies get no key."""
    if not (isinstance(name, str) and isinstance(rep, str) and rep):
        return None
    if rep in name or not any(w in name for w in _COMPANY_WORDS):
        return rep
    return None


def _operator_names(rows: _Rows) -> pd.Series[Any]:
    if not {"name", "legal_rep_name"} <= set(rows.df.columns):
        return _positional([None] * len(rows.df))
    return _positional(
        [
            _operator_name(n, r)
            for n, r in zip(rows.column("name"), rows.column("legal_rep_name"), strict=True)
        ]
    )


@dataclass(frozen=True)
class DerivedKey:
    """A blocking key computed from canonical columns (``needs``)."""

    description: str
    needs: frozenset[str]
    compute: Callable[[_Rows], pd.Series[Any]]


def _derived(
    description: str, needs: str, compute: Callable[[_Rows], pd.Series[Any]]
) -> DerivedKey:
    return DerivedKey(description, frozenset(needs.split()), compute)


DERIVED_KEYS: dict[str, DerivedKey] = {
    "id_number": _derived(
        "valid GB 11643 ID number",
        "id_number",
        lambda r: r.only("id_number", r.checked("id_number", "id_number", identifiers.id_is_valid)),
    ),
    "birth_year": _derived("year of birth_date", "birth_date", lambda r: _year(r, "birth_date")),
    "names_pinyin": _derived(
        "pinyin of the name and of the former name (曾用名; one row, several keys)",
        "name_pinyin former_name",
        _names_pinyin,
    ),
    "phone_any": _derived(
        "each number of phones_all (one row, several keys)",
        "phones_all",
        lambda r: _listed(r.column("phones_all")),
    ),
    "city_code": _derived("first 4 digits of division_code (city)", "division_code", _city_code),
    "uscc": _derived(
        "valid GB 32100 credit code",
        "uscc",
        lambda r: r.only("uscc", r.checked("uscc", "uscc", identifiers.uscc_is_valid)),
    ),
    "reg_no": _derived("valid 15-digit registration number", "reg_no", _reg_no),
    "org_code": _derived(
        "valid organization code, own or inside the credit code (several keys)",
        "org_code uscc",
        _org_codes,
    ),
    "legal_rep_id": _derived(
        "valid ID number of the legal representative",
        "legal_rep_id",
        lambda r: r.only(
            "legal_rep_id", r.checked("legal_rep_id", "legal_rep_id", identifiers.id_is_valid)
        ),
    ),
    "operator_name": _derived(
        "legal representative's name of an individual-business-like row (name holds it or "
        "names no company)",
        "name legal_rep_name",
        _operator_names,
    ),
    "established_year": _derived(
        "year of established_date", "established_date", lambda r: _year(r, "established_date")
    ),
}
"""Key name -> how it is computed; a derived key overrides the column of the same name."""


def _keys_of(entity: str) -> frozenset[str]:
    columns = set(SCHEMAS[entity].names) - {"reasons", "extras", "run_id", "updated_at"}
    derived = {k for k, d in DERIVED_KEYS.items() if d.needs <= columns or k in columns}
    return frozenset(columns | derived)


def key_values(df: pd.DataFrame, key: str) -> pd.Series[Any]:
    """One key of every row, positionally indexed; a list where a row has several keys.

    >>> import pandas as pd
    >>> key_values(pd.DataFrame({"phones_all": [["13812345678", "0591-87654321"], None]}),
    ...            "phone_any").tolist()
    [['13812345678', '0591-87654321'], None]
    """
    return _Rows(df).key(key)


# --- passes -------------------------------------------------------------------------------


class BlockingPass(BaseModel):
    """Rows sharing every key of ``keys`` (all non-null) become candidate pairs.

    >>> BlockingPass(name="pinyin+birth", keys=["name_pinyin", "birth_date"]).keys
    ('name_pinyin', 'birth_date')
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    keys: tuple[str, ...] = Field(min_length=1)
    max_block: int | None = Field(default=None, ge=2, description="overrides the run's max_block")

    @field_validator("keys")
    @classmethod
    def _known(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        known = _keys_of("person") | _keys_of("enterprise")
        unknown = [k for k in keys if k not in known]
        if unknown:
            raise ValueError(
                f"unknown blocking key(s) {unknown}; use a canonical column or one of "
                f"{sorted(DERIVED_KEYS)}"
            )
        if len(set(keys)) != len(keys):
            raise ValueError(f"blocking keys repeat: {list(keys)}")
        return keys


def load_passes(data: Mapping[str, Any]) -> dict[str, list[BlockingPass]]:
    """Validate ``{entity: [{name, keys, max_block?}, ...]}`` into passes.

    Errors name the entity, the pass and the fix.

    >>> load_passes({"person": [{"name": "id_number", "keys": ["id_number"]}]})["person"][0]
    BlockingPass(name='id_number', keys=('id_number',), max_block=None)
    """
    out: dict[str, list[BlockingPass]] = {}
    for entity, passes in data.items():
        if entity not in SCHEMAS:
            raise ValueError(f"blocking: unknown entity {entity!r}; use one of {sorted(SCHEMAS)}")
        if not isinstance(passes, Sequence) or isinstance(passes, str):
            raise ValueError(f"blocking.{entity}: expected a list of passes")
        known = _keys_of(entity)
        seen: set[str] = set()
        out[entity] = []
        for i, raw in enumerate(passes):
            try:
                p = BlockingPass.model_validate(raw)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'pass'}: {e['msg']}" for e in exc.errors()
                )
                raise ValueError(f"blocking.{entity}[{i}]: {problems}") from None
            wrong = [k for k in p.keys if k not in known]
            if wrong:
                raise ValueError(
                    f"blocking.{entity}[{i}] ({p.name}): key(s) {wrong} do not exist for "
                    f"{entity} rows; available: {sorted(known)}"
                )
            if p.name in seen:
                raise ValueError(f"blocking.{entity}[{i}]: pass name {p.name!r} used twice")
            seen.add(p.name)
            out[entity].append(p)
    return out


# --- report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkippedBlock:
    """A block larger than ``max_block`` rows, left out of its pass."""

    pass_name: str
    key: str  # components joined by " + ", personal data masked
    size: int


@dataclass(frozen=True)
class PassReport:
    """What one pass found: pairs (``new_pairs`` not found by earlier passes) and skips."""

    name: str
    keys: tuple[str, ...]
    keyed_rows: int
    blocks: int
    pairs: int
    new_pairs: int
    skipped: tuple[SkippedBlock, ...] = ()


@dataclass(frozen=True)
class BlockingReport:
    """Pairs per pass and the blocks that were too large; ``as_dict`` for the run's JSON."""

    records: int
    among: int | None
    pairs: int
    passes: tuple[PassReport, ...]

    @property
    def skipped(self) -> list[SkippedBlock]:
        """Every skipped block of every pass."""
        return [s for p in self.passes for s in p.skipped]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "records": self.records,
            "among": self.among,
            "pairs": self.pairs,
            "passes": [
                {
                    "name": p.name,
                    "keys": list(p.keys),
                    "keyed_rows": p.keyed_rows,
                    "blocks": p.blocks,
                    "pairs": p.pairs,
                    "new_pairs": p.new_pairs,
                    "skipped": [{"key": s.key, "size": s.size} for s in p.skipped],
                }
                for p in self.passes
            ],
        }


@dataclass(frozen=True)
class Candidates:
    """Candidate pairs (``left < right`` record ids, sorted) and how they were found."""

    pairs: pd.MultiIndex
    report: BlockingReport
    keys: pa.Table | None = None
    """With ``keep_keys``: every row's block key per pass (:data:`KEY_SCHEMA`), the cache a
    delta night blocks against (:func:`delta_candidates`)."""


# --- the algorithm ------------------------------------------------------------------------


def _mask(value: object) -> str:
    s = str(value)
    if len(s) <= 1:
        return "*"
    if len(s) <= 4:
        return s[0] + "*" * (len(s) - 1)
    return s[:3] + "*" * (len(s) - 5) + s[-2:]


@dataclass
class _Blocks:
    """Rows (positions) grouped by key, sorted by block then row."""

    rows: Positions
    block: Positions
    start: Positions  # first index in rows/block of each block
    size: Positions
    first: pd.DataFrame = field(default_factory=pd.DataFrame)  # each block's key values

    def key_of(self, block: int) -> tuple[Any, ...]:
        """The key values of one block."""
        return tuple(self.first.iloc[block])

    def key_texts(self) -> npt.NDArray[np.object_]:
        """Each block's key values as one text, joined by :data:`_KEY_SEPARATOR`."""
        columns = [self.first[c].astype(str) for c in self.first.columns]
        if not columns:
            return np.empty(0, dtype=object)
        texts = columns[0]
        for c in columns[1:]:
            texts = texts + _KEY_SEPARATOR + c
        return texts.to_numpy(dtype=object)


def _sorted_unique(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    # np.unique hashes int64 in numpy 2.x, several times slower than sorting here
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


def _blocks(rows: _Rows, keys: Sequence[str]) -> _Blocks:
    """The rows of each block of ``keys``, blocks in the order of their key values (a row
    without one of the keys, or with it empty, is in no block). Each key column is
    factorized in sorted order once and a block is its rows' tuple of key ranks: integers
    sorted, not a groupby and a drop of duplicates over the key values."""
    table = pd.DataFrame({f"k{i}": rows.key(k) for i, k in enumerate(keys)})
    cols = list(table.columns)
    for col in cols:
        present = table[col].dropna()
        if not present.empty and isinstance(present.iloc[0], list):
            table = table.explode(col)  # several keys in one row: one table row per key
    keyed = np.ones(len(table), dtype=bool)
    ranks, uniques = [], []
    for col in cols:
        rank, values = pd.factorize(table[col].to_numpy(dtype=object), sort=True)
        keyed &= rank >= 0
        for blank in np.flatnonzero(values == ""):  # an empty text is no key
            keyed &= rank != blank
        ranks.append(rank)
        uniques.append(values)
    at = np.flatnonzero(keyed)
    if not len(at):
        empty = np.empty(0, dtype=np.int64)
        return _Blocks(empty, empty, empty, empty)
    key = np.zeros(len(at), dtype=np.int64)
    for rank, values in zip(ranks, uniques, strict=True):
        key = _dense(key) * len(values) + rank[at]  # dense first: the product stays small
    positions = table.index.to_numpy(dtype=np.int64)[at]
    order = np.lexsort((positions, key))
    key, positions = key[order], positions[order]
    # a row holding the same key twice (a number listed twice) is in its block once
    once = np.concatenate(([True], (key[1:] != key[:-1]) | (positions[1:] != positions[:-1])))
    key, positions, order = key[once], positions[once], order[once]
    block = _dense(key)
    size = np.bincount(block).astype(np.int64)
    start = np.concatenate(([0], np.cumsum(size)[:-1])).astype(np.int64)
    row = at[order[start]]
    first = pd.DataFrame(
        {col: values[rank[row]] for col, rank, values in zip(cols, ranks, uniques, strict=True)}
    )
    return _Blocks(positions, block, start, size, first)


def _dense(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Each value's rank among the distinct ``values`` (0, 1, …, in their order)."""
    return np.unique(values, return_inverse=True)[1].astype(np.int64, copy=False)


def _pass_pairs(
    blocks: _Blocks, max_block: int, among: npt.NDArray[np.bool_] | None
) -> tuple[Positions, Positions, npt.NDArray[np.int64]]:
    """Row positions of every pair within kept blocks; also the oversized blocks touched."""
    sizes = blocks.size
    oversized = np.flatnonzero(sizes > max_block)
    kept = (sizes >= 2) & (sizes <= max_block)
    if among is not None:
        touched = np.bincount(blocks.block, weights=among[blocks.rows], minlength=len(sizes)) > 0
        oversized = oversized[touched[oversized]]
        kept &= touched
    in_kept = kept[blocks.block]
    if among is None:
        # all i < j within each block, no wasted rows: element k of a block of n pairs with the
        # n-1-k elements after it
        idx = np.flatnonzero(in_kept)
        blk = blocks.block[idx]
        local = idx - blocks.start[blk]
        partners = sizes[blk] - 1 - local
        left = np.repeat(idx, partners)
        offsets = np.repeat(np.cumsum(partners) - partners, partners)
        right = left + 1 + (np.arange(len(left), dtype=np.int64) - offsets)
    else:
        # each delta row against every other member of its block
        idx = np.flatnonzero(in_kept & among[blocks.rows])
        blk = blocks.block[idx]
        n = sizes[blk]
        left = np.repeat(idx, n)
        offsets = np.repeat(np.cumsum(n) - n, n)
        right = np.repeat(blocks.start[blk], n) + (np.arange(len(left), dtype=np.int64) - offsets)
        keep = left != right
        left, right = left[keep], right[keep]
    return blocks.rows[left], blocks.rows[right], oversized


class PassIndex(BaseIndexAlgorithm):
    """One blocking pass as a recordlinkage index algorithm (deduplication of one frame).

    Usable on its own with ``recordlinkage.Index().add(PassIndex(p)).index(df)``; pairs are
    ``(left, right)`` record ids with ``left < right``. After ``index`` the attribute
    ``skipped`` lists the blocks that were too large.
    """

    def __init__(
        self,
        blocking_pass: BlockingPass,
        *,
        max_block: int = DEFAULT_MAX_BLOCK,
        among: Collection[Any] | pd.Index | None = None,
    ) -> None:
        super().__init__(verify_integrity=True)
        self.blocking_pass = blocking_pass
        self.max_block = blocking_pass.max_block or max_block
        self.among = among
        self.skipped: tuple[SkippedBlock, ...] = ()
        self.keyed_rows = 0
        self.blocks = 0
        self.key_table: pa.Table = KEY_SCHEMA.empty_table()

    def __repr__(self) -> str:
        return f"<PassIndex {self.blocking_pass.name!r} keys={list(self.blocking_pass.keys)}>"

    def _link_index(self, df_a: pd.DataFrame, df_b: pd.DataFrame) -> pd.MultiIndex:
        raise NotImplementedError("PassIndex deduplicates one frame; use among= for a delta")

    def _dedup_index(self, df_a: pd.DataFrame) -> pd.MultiIndex:
        ranks = _Ranks(df_a.index)
        codes = self.pair_codes(_Rows(df_a), ranks, _among_mask(df_a.index, self.among))
        return ranks.pairs(codes)

    def pair_codes(
        self, rows: _Rows, ranks: _Ranks, among: npt.NDArray[np.bool_] | None
    ) -> npt.NDArray[np.int64]:
        """Sorted unique pair codes (``rank(left) * n + rank(right)``) of this pass."""
        blocks = _blocks(rows, self.blocking_pass.keys)
        self.key_table = _key_table(self.blocking_pass.name, blocks, rows.ids())
        left, right, oversized = _pass_pairs(blocks, self.max_block, among)
        self.keyed_rows = int(np.count_nonzero(np.bincount(blocks.rows))) if len(blocks.rows) else 0
        self.blocks = int(np.count_nonzero((blocks.size >= 2) & (blocks.size <= self.max_block)))
        self.skipped = self._report_skipped(blocks, oversized)
        return ranks.codes(left, right)

    def _report_skipped(self, blocks: _Blocks, oversized: Positions) -> tuple[SkippedBlock, ...]:
        return _skipped(
            self.blocking_pass,
            self.max_block,
            [(blocks.key_of(int(b)), int(blocks.size[b])) for b in oversized],
        )


def _skipped(
    blocking_pass: BlockingPass, max_block: int, blocks: Sequence[tuple[Sequence[Any], int]]
) -> tuple[SkippedBlock, ...]:
    """The oversized ``(key values, size)`` blocks as masked reports, logged once."""
    if not blocks:
        return ()
    found = sorted(
        (
            SkippedBlock(
                blocking_pass.name,
                " + ".join(
                    _mask(v) if k in _PERSONAL else str(v)
                    for k, v in zip(blocking_pass.keys, values, strict=True)
                ),
                size,
            )
            for values, size in blocks
        ),
        key=lambda s: (-s.size, s.key),
    )
    shown = ", ".join(f"{s.key} ({s.size} rows)" for s in found[:5])
    log.warning(
        "blocking pass %r: skipped %d block(s) larger than max_block=%d: %s%s",
        blocking_pass.name,
        len(found),
        max_block,
        shown,
        ", …" if len(found) > 5 else "",
    )
    return tuple(found)


class _Ranks:
    """Record ids <-> their rank in sorted order; a pair is ``rank(left) * n + rank(right)``."""

    def __init__(self, index: pd.Index) -> None:
        if not index.is_unique:
            raise ValueError("record ids (the frame's index) must be unique")
        values = index.to_numpy()
        order = np.argsort(values, kind="stable")
        self.ids = values[order]
        self.rank = np.empty(len(values), dtype=np.int64)
        self.rank[order] = np.arange(len(values), dtype=np.int64)
        self.n = max(len(values), 1)
        self.name = index.name

    def codes(self, left: Positions, right: Positions) -> npt.NDArray[np.int64]:
        a, b = self.rank[left], self.rank[right]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        keep = lo != hi
        return _sorted_unique(lo[keep] * self.n + hi[keep])

    def pairs(self, codes: npt.NDArray[np.int64]) -> pd.MultiIndex:
        return pd.MultiIndex(
            levels=[self.ids, self.ids],
            codes=[codes // self.n, codes % self.n],
            names=["left", "right"],
            verify_integrity=False,
        )


def _among_mask(
    index: pd.Index, among: Collection[Any] | pd.Index | None
) -> npt.NDArray[np.bool_] | None:
    if among is None:
        return None
    wanted = pd.Index(list(among) if not isinstance(among, pd.Index) else among)
    missing = wanted.difference(index)
    if len(missing):
        raise KeyError(f"among: {len(missing)} record id(s) not in the frame, e.g. {missing[:3]!r}")
    return np.asarray(index.isin(wanted), dtype=bool)


def candidate_pairs(
    df: pd.DataFrame,
    passes: Iterable[BlockingPass | Mapping[str, Any]],
    *,
    among: Collection[Any] | pd.Index | None = None,
    max_block: int = DEFAULT_MAX_BLOCK,
    keep_keys: bool = False,
) -> Candidates:
    """Candidate pairs of canonical rows: the union of every pass, each pair once, sorted.

    ``df`` holds rows of one entity type indexed by unique record ids. With ``among`` (record
    ids, e.g. the night's changed rows) only pairs with at least one member in ``among`` are
    made, by blocking those rows against the whole frame; the result equals the full run's
    pairs filtered to those touching ``among``. A block over ``max_block`` rows (or the pass's
    own ``max_block``) is skipped for that pass, logged and reported.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"phones_all": [["13812345678"], ["13812345678", "0591-87654321"],
    ...                                   ["0591-87654321"], None]}, index=["p1", "p2", "p3", "p4"])
    >>> found = candidate_pairs(df, [{"name": "phone", "keys": ["phone_any"]}])
    >>> list(found.pairs)
    [('p1', 'p2'), ('p2', 'p3')]
    """
    plist = [p if isinstance(p, BlockingPass) else BlockingPass.model_validate(p) for p in passes]
    ranks = _Ranks(df.index)
    mask = _among_mask(df.index, among)
    rows = _Rows(df)
    union = np.empty(0, dtype=np.int64)
    reports = []
    key_tables = []
    for p in plist:
        algorithm = PassIndex(p, max_block=max_block)
        codes = algorithm.pair_codes(rows, ranks, mask)
        if keep_keys:
            key_tables.append(algorithm.key_table)
        at = np.minimum(np.searchsorted(union, codes), max(len(union) - 1, 0))
        new = codes[union[at] != codes] if len(union) else codes
        union = np.sort(np.concatenate([union, new]), kind="stable")  # merges two sorted runs
        reports.append(
            PassReport(
                p.name,
                p.keys,
                algorithm.keyed_rows,
                algorithm.blocks,
                len(codes),
                len(new),
                algorithm.skipped,
            )
        )
        log.info("blocking pass %r: %d pairs, %d new", p.name, len(codes), len(new))
    report = BlockingReport(
        records=len(df),
        among=None if mask is None else int(mask.sum()),
        pairs=len(union),
        passes=tuple(reports),
    )
    keys = pa.concat_tables(key_tables) if keep_keys and key_tables else None
    if keep_keys and keys is None:
        keys = KEY_SCHEMA.empty_table()
    return Candidates(ranks.pairs(union), report, keys)


# --- the delta night: blocking against cached keys -----------------------------------------

KEY_SCHEMA = pa.schema(
    [
        pa.field("pass", pa.string()),
        pa.field("key", pa.string()),
        pa.field("record_id", pa.string()),
    ]
)
"""One row per (pass, block key, record): what :func:`delta_candidates` blocks against."""
_KEY_SEPARATOR = "\x1f"


def _key_table(name: str, blocks: _Blocks, ids: pa.Array) -> pa.Table:
    """The pass's block key of every keyed row (one row per row and key); ``ids``: the record
    ID of every row, in Arrow (each block's key text and each ID is encoded once, then taken
    in Arrow, not once per row and key)."""
    n = len(blocks.rows)
    if not n:
        return KEY_SCHEMA.empty_table()
    return pa.table(
        [
            pa.array([name], pa.string()).take(np.zeros(n, dtype=np.int64)),
            pa.array(blocks.key_texts(), pa.string()).take(blocks.block),
            ids.take(blocks.rows),
        ],
        schema=KEY_SCHEMA,
    )


def block_key_table(df: pd.DataFrame, passes: Iterable[BlockingPass]) -> pa.Table:
    """Every row's block key per pass (:data:`KEY_SCHEMA`), as ``candidate_pairs(df, passes,
    keep_keys=True)`` keys them, without making pairs or judging block sizes: what another
    engine blocks on (:mod:`spark.blocking`)."""
    return block_key_rows(df, passes)[0]


def block_key_rows(df: pd.DataFrame, passes: Iterable[BlockingPass]) -> tuple[pa.Table, np.ndarray]:
    """:func:`block_key_table`, and the position in ``df`` of each key row's record."""
    rows = _Rows(df)
    found = [(p.name, _blocks(rows, p.keys)) for p in passes]
    tables = [_key_table(name, blocks, df.index) for name, blocks in found]
    at = [np.asarray(blocks.rows, dtype=np.int64) for _, blocks in found]
    if not tables:
        return KEY_SCHEMA.empty_table(), np.zeros(0, dtype=np.int64)
    return pa.concat_tables(tables), np.concatenate(at)


def masked_key(blocking_pass: BlockingPass, text: str) -> str:
    """A block key of :data:`KEY_SCHEMA` as a report shows it: its values joined by " + ",
    personal data masked (see :class:`SkippedBlock`)."""
    values = text.split(_KEY_SEPARATOR)
    return " + ".join(
        _mask(v) if k in _PERSONAL else v for k, v in zip(blocking_pass.keys, values, strict=True)
    )


def delta_candidates(
    keys: pa.Table,
    among: Collection[str],
    passes: Iterable[BlockingPass | Mapping[str, Any]],
    *,
    records: int,
    max_block: int = DEFAULT_MAX_BLOCK,
) -> Candidates:
    """The candidate pairs touching ``among``, from the block keys of every row (``keys``:
    :data:`KEY_SCHEMA`, tonight's rows included) instead of the rows themselves.

    Equals ``candidate_pairs(df, passes, among=among)`` on the frame the keys came from, with the
    same oversized blocks skipped, at a cost that grows with the changed rows' blocks rather than
    with the whole frame. ``records`` is the frame's row count, for the report.
    """
    plist = [p if isinstance(p, BlockingPass) else BlockingPass.model_validate(p) for p in passes]
    wanted = pa.array(sorted(set(among)), pa.string())
    # every record as its position among the sorted record IDs, a pair as one integer (left
    # major): pairs are made, deduplicated and ordered as numbers, not tuples of strings
    ids = pc.unique(keys["record_id"])
    ids = ids.take(pc.sort_indices(ids))
    width = max(len(ids), 1)
    chosen = pc.is_in(ids, value_set=wanted).to_numpy(zero_copy_only=False)
    seen = np.empty(0, dtype=np.int64)
    reports = []
    for p in plist:
        limit = p.max_block or max_block
        mine = keys.filter(pc.equal(keys["pass"], p.name))
        touched = pc.unique(mine.filter(pc.is_in(mine["record_id"], value_set=wanted))["key"])
        near = mine.filter(pc.is_in(mine["key"], value_set=touched))
        members = pd.DataFrame(
            {
                "key": near["key"].to_pandas(),
                "record": pc.index_in(near["record_id"], value_set=ids).to_numpy(),
            }
        )
        size = members.groupby("key")["record"].transform("size").to_numpy()
        oversized = members.loc[size > limit].groupby("key").size()
        kept = members[(size >= 2) & (size <= limit)]
        changed = kept[chosen[kept["record"].to_numpy()]]
        pairs = changed.merge(kept, on="key", suffixes=("_a", "_b"))
        a, b = pairs["record_a"].to_numpy(np.int64), pairs["record_b"].to_numpy(np.int64)
        keep = a != b
        a, b = a[keep], b[keep]
        index = np.unique(np.minimum(a, b) * width + np.maximum(a, b))
        new = np.setdiff1d(index, seen, assume_unique=True)
        seen = np.union1d(seen, new)
        reports.append(
            PassReport(
                p.name,
                p.keys,
                keyed_rows=int(kept["record"].nunique()),
                blocks=int(kept["key"].nunique()),
                pairs=len(index),
                new_pairs=len(new),
                skipped=_skipped(
                    p,
                    limit,
                    [(k.split(_KEY_SEPARATOR), int(n)) for k, n in oversized.items()],
                ),
            )
        )
    names = ids.to_numpy(zero_copy_only=False)
    left, right = names[seen // width], names[seen % width]  # seen is sorted: pairs in order
    report = BlockingReport(
        records=records, among=len(wanted), pairs=len(seen), passes=tuple(reports)
    )
    return Candidates(pd.MultiIndex.from_arrays([left, right], names=["left", "right"]), report)
