"""Evaluate linkage and golden records against the sample city's ground truth.

The sample-city generator keeps apart which true person or enterprise every source row describes
(``<city>/truth/source_rows.parquet``) and each entity's true current values (``persons.parquet``,
``enterprises.parquet``). This module scores a pipeline's output against them:

* **Linkage**, per entity type: pairwise precision/recall/F1 (counted from a contingency table,
  never by listing pairs), exact-cluster precision/recall/F1 and B-cubed precision/recall/F1.
* **Golden records**: each master is matched to the true entity holding most of its rows, and
  each attribute scored as the share of masters whose value equals the truth (formats normalised).
* **Error examples**: false merges, false splits and rows the pipeline lost, with source keys.

Input contract (pandas DataFrames):

``crosswalk``
    ``department, source_table, source_key, entity ('person' | 'enterprise'), master_id``; every
    source row that survived standardization exactly once. Rejected rows are absent.
``golden persons``
    ``master_id, name, id_number, sex, birth_date, phone, division_code, address_detail,
    ethnicity, status``.
``golden enterprises``
    ``master_id, name, uscc, reg_no, org_code, legal_rep_id (an id_number), legal_rep_name,
    division_code, address_detail, registered_capital (万元), established_date, status``.
    Golden columns that are absent are skipped, not failed; ``master_id`` is required.

Which rows count: a truth row is *live* on night ``n`` when it was created on or before ``n`` and
not deleted on or before ``n``; only live rows are scored. Crosswalk rows whose source row is not
live (*stale*) or that the truth does not know (*unknown*) are counted and left out. Live rows
missing from the crosswalk (*missing*, usually rejected by standardization) lower pairwise recall,
because their pairs were never found; the cluster and B-cubed metrics judge the clustering of the
rows the linker was given (the linked rows), so that one lost row does not also count as a split.

Where a ratio has nothing to count (no predicted pairs, say), it is 1.0: nothing was claimed, so
nothing was wrong. The counts beside each ratio say when that is the case.

>>> ev = evaluate(Path("var/city"), crosswalk, golden_persons, golden_enterprises)  # doctest: +SKIP
>>> ev.entities["person"].pairwise.f1  # doctest: +SKIP
0.9931
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import logging
import math
import re
import unicodedata
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from master_data.cases import CaseScore, case_scores

log = logging.getLogger(__name__)

ENTITIES = ("person", "enterprise")
CROSSWALK_COLUMNS = ("department", "source_table", "source_key", "entity", "master_id")
TRUTH_ROW_COLUMNS = ("department", "table", "source_key", "entity_type", "entity_id")
_KEY = ["department", "source_table", "source_key"]


# --- ground truth ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundTruth:
    """The generator's truth tables, as written by ``etl.sample_city.generate.write_truth``.

    ``night`` is the night the files describe (from ``city.json``); entity values are as of it.
    """

    persons: pd.DataFrame
    enterprises: pd.DataFrame
    rows: pd.DataFrame
    night: int | None = None
    dirt: pd.DataFrame | None = None  # the planted defects by row and column (dirt.parquet)

    def entities(self, entity: str) -> pd.DataFrame:
        """The true persons or enterprises, indexed by their entity id."""
        if entity == "person":
            return self.persons.set_index("person_id", drop=False)
        if entity == "enterprise":
            return self.enterprises.set_index("enterprise_id", drop=False)
        raise ValueError(f"entity must be one of {ENTITIES}, not {entity!r}")


def load_truth(path: Path | str) -> GroundTruth:
    """Read the truth of a generated city; ``path`` is the city directory or its ``truth/``.

    >>> truth = load_truth("var/city")  # doctest: +SKIP
    >>> truth.night, len(truth.rows)  # doctest: +SKIP
    (0, 20039)
    """
    path = Path(path)
    tdir = path / "truth" if (path / "truth").is_dir() else path
    missing = [
        n for n in ("persons", "enterprises", "source_rows") if not (tdir / f"{n}.parquet").exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"{tdir}: no {', '.join(m + '.parquet' for m in missing)}; "
            "generate the city first (govmdm sample)"
        )
    manifest = tdir.parent / "city.json"
    night = int(json.loads(manifest.read_text())["night"]) if manifest.exists() else None
    return GroundTruth(
        persons=pq.read_table(tdir / "persons.parquet").to_pandas(),
        enterprises=pq.read_table(tdir / "enterprises.parquet").to_pandas(),
        rows=pq.read_table(tdir / "source_rows.parquet").to_pandas(),
        night=night,
        dirt=pq.read_table(dirt).to_pandas() if (dirt := tdir / "dirt.parquet").exists() else None,
    )


def live_rows(truth_rows: pd.DataFrame, night: int | None = None) -> pd.DataFrame:
    """The truth rows present in the sources on ``night`` (``None``: never deleted).

    >>> rows = pd.DataFrame({"created_night": [0, 0, 2], "deleted_night": [None, 1, None]})
    >>> len(live_rows(rows, 1)), len(live_rows(rows, 0)), len(live_rows(rows))
    (1, 2, 2)
    """
    deleted = truth_rows.get("deleted_night")
    created = truth_rows.get("created_night")
    keep = pd.Series(True, index=truth_rows.index)
    if deleted is not None:
        keep &= deleted.isna() if night is None else (deleted.isna() | (deleted > night))
    if created is not None and night is not None:
        keep &= created.fillna(0) <= night
    return truth_rows[keep]


# --- aligning the crosswalk with the truth ------------------------------------------------------


@dataclass(frozen=True)
class _Aligned:
    """Crosswalk and truth rows joined on the source key, split by what each row turned out to be.

    ``linked`` has the key, ``entity_type``, ``entity_id``, ``master_id`` (as text), ``cluster``
    (an integer per (crosswalk entity, master_id)) and ``truth`` (an integer per entity id).
    """

    linked: pd.DataFrame
    live: pd.DataFrame  # live truth rows, with source_table
    missing: pd.DataFrame
    stale: pd.DataFrame
    unknown: pd.DataFrame
    mismatched: pd.DataFrame


def _as_text(col: pd.Series) -> pd.Series:
    if col.dtype == object and pd.api.types.infer_dtype(col, skipna=False) == "string":
        return col
    return col.astype(str)


def _check_crosswalk(crosswalk: pd.DataFrame) -> pd.DataFrame:
    absent = [c for c in CROSSWALK_COLUMNS if c not in crosswalk.columns]
    if absent:
        raise ValueError(f"crosswalk lacks column(s) {absent}; it needs {list(CROSSWALK_COLUMNS)}")
    cw = pd.DataFrame({c: _as_text(crosswalk[c]) for c in CROSSWALK_COLUMNS})
    bad = sorted(set(cw["entity"].unique()) - set(ENTITIES))
    if bad:
        raise ValueError(f"crosswalk.entity has {bad}; allowed: {list(ENTITIES)}")
    return cw.reset_index(drop=True)


def _truth_frame(truth_rows: pd.DataFrame) -> pd.DataFrame:
    absent = [c for c in TRUTH_ROW_COLUMNS if c not in truth_rows.columns]
    if absent:
        raise ValueError(f"truth rows lack column(s) {absent}; need {list(TRUTH_ROW_COLUMNS)}")
    tr = truth_rows.rename(columns={"table": "source_table"}).reset_index(drop=True)
    return tr.assign(**{c: _as_text(tr[c]) for c in (*_KEY, "entity_type", "entity_id")})


def _key_codes(left: pd.DataFrame, right: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """One integer per distinct (department, source_table, source_key), shared by both frames:
    joining on it is several times faster than merging on three text columns."""
    n = len(left)
    codes = np.zeros(n + len(right), dtype=np.int64)
    for col in _KEY:
        part, uniques = pd.factorize(pd.concat([left[col], right[col]], ignore_index=True))
        codes, _ = pd.factorize(codes * len(uniques) + part)
    return codes[:n], codes[n:]


def _first_duplicates(frame: pd.DataFrame, dup: np.ndarray) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = frame.loc[dup, _KEY].head(3).to_dict("records")
    return records


def _align(crosswalk: pd.DataFrame, truth_rows: pd.DataFrame, night: int | None) -> _Aligned:
    cw = _check_crosswalk(crosswalk)
    tr = _truth_frame(truth_rows)
    cw_code, tr_code = _key_codes(cw, tr)
    for name, frame, code in (("crosswalk", cw, cw_code), ("truth rows", tr, tr_code)):
        dup = pd.Series(code).duplicated(keep=False).to_numpy()
        if dup.any():
            raise ValueError(
                f"{name} has {int(dup.sum())} rows whose source key appears more than once "
                f"(each source row must appear once), e.g. {_first_duplicates(frame, dup)}"
            )
    live = np.zeros(len(tr), dtype=bool)
    live[live_rows(tr, night).index.to_numpy()] = True
    pos = pd.Index(tr_code).get_indexer(cw_code)  # crosswalk row -> truth row, -1 if unknown
    known = pos >= 0
    in_cw = np.zeros(len(tr), dtype=bool)
    in_cw[pos[known]] = True
    cols = [*_KEY, "entity_type", "entity_id"]
    found = tr.loc[pos[known], ["entity_type", "entity_id"]].to_numpy()
    matched = cw[known].assign(entity_type=found[:, 0], entity_id=found[:, 1])
    is_live = live[pos[known]]
    linked = matched[is_live].reset_index(drop=True)
    linked = linked.assign(
        cluster=linked.groupby(["entity", "master_id"], sort=False).ngroup().to_numpy(),
        truth=pd.factorize(linked["entity_id"])[0],
    )
    return _Aligned(
        linked=linked,
        live=tr.loc[live, cols].reset_index(drop=True),
        missing=tr.loc[live & ~in_cw, cols].reset_index(drop=True),
        stale=matched[~is_live].reset_index(drop=True),
        unknown=cw[~known].reset_index(drop=True),
        mismatched=linked[linked["entity"] != linked["entity_type"]],
    )


def _types(al: _Aligned) -> list[str]:
    present = set(al.live["entity_type"]) | set(al.linked["entity"]) | set(al.unknown["entity"])
    return [e for e in ENTITIES if e in present] + sorted(present - set(ENTITIES))


# --- linkage metrics ---------------------------------------------------------------------------


def _ratio(num: float, den: float) -> float:
    return 1.0 if den == 0 else num / den


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _pairs(sizes: pd.Series) -> int:
    return int((sizes * (sizes - 1) // 2).sum())


@dataclass(frozen=True)
class PairwiseMetrics:
    """Pairs of rows put together (predicted) vs truly together, for one entity type.

    ``true_pairs`` counts every live truth row, so pairs of rows missing from the crosswalk are
    false negatives.
    """

    true_positives: int
    predicted_pairs: int
    true_pairs: int
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class ClusterMetrics:
    """Exact-cluster and B-cubed scores over the linked rows of one entity type.

    A predicted cluster is *exact* when its rows are all one true entity's linked rows; ``exact``
    counts them (which equals the true entities reproduced exactly).
    """

    predicted_clusters: int
    true_entities: int
    exact: int
    precision: float
    recall: float
    f1: float
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f1: float


def _pairwise(linked: pd.DataFrame, live: pd.DataFrame) -> PairwiseMetrics:
    tp = _pairs(linked.groupby(["cluster", "truth"]).size())
    predicted = _pairs(linked.groupby("cluster").size())
    true = _pairs(live.groupby("entity_id").size())
    p, r = _ratio(tp, predicted), _ratio(tp, true)
    return PairwiseMetrics(tp, predicted, true, p, r, _f1(p, r))


def _clusters(linked: pd.DataFrame) -> ClusterMetrics:
    cells = linked.groupby(["cluster", "truth"]).size().rename("n").reset_index()
    by_cluster = cells.groupby("cluster")["n"].agg(["size", "sum"])
    by_truth = cells.groupby("truth")["n"].agg(["size", "sum"])
    single_c = cells["cluster"].map(by_cluster["size"]).eq(1)
    single_t = cells["truth"].map(by_truth["size"]).eq(1)
    exact = int((single_c & single_t).sum())
    n_c, n_t, rows = len(by_cluster), len(by_truth), int(cells["n"].sum())
    p, r = _ratio(exact, n_c), _ratio(exact, n_t)
    sq = cells["n"].astype("float64") ** 2
    bp = _ratio(float((sq / cells["cluster"].map(by_cluster["sum"])).sum()), rows)
    br = _ratio(float((sq / cells["truth"].map(by_truth["sum"])).sum()), rows)
    return ClusterMetrics(n_c, n_t, exact, p, r, _f1(p, r), bp, br, _f1(bp, br))


def pairwise_metrics(
    crosswalk: pd.DataFrame, truth_rows: pd.DataFrame, *, night: int | None = None
) -> dict[str, PairwiseMetrics]:
    """Pairwise precision, recall and F1 per entity type, counted from cluster/entity cells.

    ``truth_rows`` is the truth's ``source_rows`` table; rows not live on ``night`` are left out.
    True positives are Σ C(n, 2) over the (master, true entity) cells, predicted pairs Σ C(n, 2)
    over masters, true pairs Σ C(n, 2) over true entities (all live rows, linked or not).

    >>> truth = pd.DataFrame({"department": "d", "table": "t", "source_key": list("abcd"),
    ...                       "entity_type": "person", "entity_id": ["P1", "P1", "P2", "P2"]})
    >>> xw = truth.rename(columns={"table": "source_table", "entity_type": "entity"})
    >>> m = pairwise_metrics(xw.assign(master_id="M1"), truth)["person"]
    >>> (m.true_positives, m.predicted_pairs, m.true_pairs, round(m.precision, 4), m.recall)
    (2, 6, 2, 0.3333, 1.0)
    """
    al = _align(crosswalk, truth_rows, night)
    return {
        e: _pairwise(al.linked[al.linked["entity_type"] == e], al.live[al.live["entity_type"] == e])
        for e in _types(al)
    }


def cluster_metrics(
    crosswalk: pd.DataFrame, truth_rows: pd.DataFrame, *, night: int | None = None
) -> dict[str, ClusterMetrics]:
    """Exact-cluster and B-cubed precision, recall and F1 per entity type, over linked rows.

    >>> truth = pd.DataFrame({"department": "d", "table": "t", "source_key": list("abc"),
    ...                       "entity_type": "person", "entity_id": ["P1", "P1", "P2"]})
    >>> xw = truth.rename(columns={"table": "source_table", "entity_type": "entity"})
    >>> m = cluster_metrics(xw.assign(master_id=["M1", "M2", "M2"]), truth)["person"]
    >>> (m.exact, m.precision, m.recall, round(m.bcubed_precision, 4), round(m.bcubed_recall, 4))
    (0, 0.0, 0.0, 0.6667, 0.6667)
    """
    al = _align(crosswalk, truth_rows, night)
    return {e: _clusters(al.linked[al.linked["entity_type"] == e]) for e in _types(al)}


# --- error examples ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceRef:
    """One source row in an error example; ``master_id`` is None for a row missing from the
    crosswalk."""

    department: str
    source_table: str
    source_key: str
    entity_id: str
    master_id: str | None


@dataclass(frozen=True)
class ErrorExample:
    """A false merge (one master, several true entities), a false split (one true entity, several
    masters) or a true entity with live rows missing from the crosswalk."""

    kind: str  # false_merge | false_split | missing
    entity: str
    master_ids: tuple[str, ...]
    entity_ids: tuple[str, ...]
    rows: tuple[SourceRef, ...]


def _refs(frame: pd.DataFrame, limit: int) -> tuple[SourceRef, ...]:
    frame = frame.sort_values(["entity_id", "department", "source_table", "source_key"])
    return tuple(
        SourceRef(
            str(r["department"]),
            str(r["source_table"]),
            str(r["source_key"]),
            str(r["entity_id"]),
            None if pd.isna(r.get("master_id")) else str(r["master_id"]),
        )
        for r in frame.head(limit).to_dict("records")
    )


def _examples(al: _Aligned, entity: str, n: int, max_rows: int) -> list[ErrorExample]:
    linked = al.linked[al.linked["entity_type"] == entity]
    out: list[ErrorExample] = []
    for kind, by, other, label in (
        ("false_merge", "cluster", "truth", "master_id"),
        ("false_split", "truth", "cluster", "entity_id"),
    ):
        spread = linked.groupby(by).agg(
            k=(other, "nunique"), rows=(other, "size"), name=(label, "first")
        )
        worst = spread[spread["k"] > 1]
        worst = worst.sort_values(["k", "rows", "name"], ascending=[False, False, True]).head(n)
        chosen = linked[linked[by].isin(worst.index)]
        for code in worst.index:
            rows = chosen[chosen[by] == code]
            out.append(
                ErrorExample(
                    kind,
                    entity,
                    tuple(sorted(rows["master_id"].unique())),
                    tuple(sorted(rows["entity_id"].unique())),
                    _refs(rows, max_rows),
                )
            )
    missing = al.missing[al.missing["entity_type"] == entity]
    for eid in sorted(missing["entity_id"].unique())[:n]:
        masters = linked.loc[linked["entity_id"] == eid, "master_id"].unique()
        out.append(
            ErrorExample(
                "missing",
                entity,
                tuple(sorted(masters)),
                (eid,),
                _refs(missing[missing["entity_id"] == eid], max_rows),
            )
        )
    return out


def error_examples(
    crosswalk: pd.DataFrame,
    truth_rows: pd.DataFrame,
    *,
    n: int = 5,
    night: int | None = None,
    max_rows: int = 20,
) -> list[ErrorExample]:
    """Up to ``n`` false merges, ``n`` false splits and ``n`` entities with missing rows, per
    entity type; the widest errors first, each with up to ``max_rows`` of its source rows.

    >>> truth = pd.DataFrame({"department": "d", "table": "t", "source_key": list("ab"),
    ...                       "entity_type": "person", "entity_id": ["P1", "P2"]})
    >>> xw = truth.rename(columns={"table": "source_table", "entity_type": "entity"})
    >>> found = error_examples(xw.assign(master_id="M"), truth)
    >>> [(x.kind, x.master_ids, x.entity_ids) for x in found]
    [('false_merge', ('M',), ('P1', 'P2'))]
    """
    al = _align(crosswalk, truth_rows, night)
    return [x for e in _types(al) for x in _examples(al, e, n, max_rows)]


# --- golden record accuracy ----------------------------------------------------------------------

Normaliser = Callable[[Any], Hashable | None]


def _blank(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # list-likes are not blank scalars
        return False


def _text(v: Any) -> str | None:
    """NFKC, no whitespace: full-width brackets and stray spaces are format, not content."""
    if _blank(v):
        return None
    s = str(v)
    s = "".join((s if s.isascii() else unicodedata.normalize("NFKC", s)).split())
    return s or None


def _ident(v: Any) -> str | None:
    s = _text(v)
    s = re.sub(r"[^0-9A-Za-z]", "", s).upper() if s else None
    return s or None


def _division(v: Any) -> str | None:
    s = _ident(v)
    if s and s.isdigit() and len(s) > 6 and set(s[6:]) == {"0"}:
        return s[:6]
    return s


def _date(v: Any) -> Hashable | None:
    if _blank(v):
        return None
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    s = _text(v)
    if s is None:
        return None
    for fmt in ("%Y-%m-%d", "%Y%m%d", "%Y/%m/%d", "%Y.%m.%d", "%Y年%m月%d日"):
        try:
            return dt.datetime.strptime(s[: len(s) if "年" in fmt else 10], fmt).date()
        except ValueError:
            continue
    try:
        return pd.Timestamp(v).date()
    except (ValueError, TypeError, OverflowError):
        return s  # unparseable: compares unequal to any real date


def _phone(v: Any) -> str | None:
    if isinstance(v, str) and len(v) == 11 and v.isascii() and v.isdigit():
        return v  # the common case, a clean mobile number
    s = _text(v)
    if s is None:
        return None
    parts = s.split("-")
    if s.startswith("0") and len(parts) >= 3:  # 0591-87654321-123: drop the extension
        s = "-".join(parts[:2])
    digits = re.sub(r"\D", "", s)
    if len(digits) == 13 and digits.startswith("861"):
        digits = digits[2:]
    return digits or None


def _capital(v: Any) -> Hashable | None:
    if _blank(v):
        return None
    try:
        d = Decimal(str(v).strip())
        return d.quantize(Decimal("0.0001")) if d.is_finite() else None
    except InvalidOperation:
        return _text(v)


SCORED: dict[str, dict[str, tuple[tuple[str, ...], Normaliser]]] = {
    "person": {
        "name": (("name",), _text),
        "id_number": (("id_number",), _ident),
        "sex": (("sex",), _text),
        "birth_date": (("birth_date",), _date),
        "phone": (("phone", "landline"), _phone),
        "division_code": (("division_code",), _division),
        "address_detail": (("address_detail",), _text),
        "ethnicity": (("ethnicity", "ethnicity_code"), _text),
        "status": (("status",), _text),
    },
    "enterprise": {
        "name": (("name",), _text),
        "uscc": (("uscc",), _ident),
        "reg_no": (("reg_no",), _ident),
        "org_code": (("org_code",), _ident),
        "legal_rep_id": (("legal_rep_id",), _ident),
        "legal_rep_name": (("legal_rep_name",), _text),
        "division_code": (("division_code",), _division),
        "address_detail": (("address_detail",), _text),
        "registered_capital": (("registered_capital",), _capital),
        "established_date": (("established_date",), _date),
        "status": (("status",), _text),
    },
}
"""Golden column scored → (the ground truth's columns, any of which may match; the normaliser
both sides are compared by). Not survivorship's attributes: an address is scored by its
division and its detail, and a person's employer is not in the truth."""


@dataclass(frozen=True)
class AttributeAccuracy:
    """How many evaluated masters carry the true value of one attribute.

    ``held``: of them, the masters where some member source row holds the true value (what
    survivorship could have chosen), ``held_correct`` those right, ``held_accuracy`` the share;
    ``None`` when the member rows were not given.
    """

    correct: int
    evaluated: int
    accuracy: float
    held: int | None = None
    held_correct: int | None = None
    held_accuracy: float | None = None


@dataclass(frozen=True)
class GoldenAccuracy:
    """Golden-record accuracy for one entity type.

    ``evaluated`` masters have linked rows and are scored against the true entity holding most of
    them; ``unmatched`` golden masters have none. ``fully_correct`` is the share of evaluated
    masters right on every scored attribute; ``skipped`` attributes are absent from the golden
    table. ``held_fully_correct`` (the headline: what survivorship is answerable for) is the share
    of the ``held_masters`` (masters where some member row holds the true value of at least one
    attribute) right on every attribute some member holds; ``None`` when the member rows were
    not given.
    """

    entity: str
    masters: int
    evaluated: int
    unmatched: int
    fully_correct: float
    attributes: dict[str, AttributeAccuracy] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    held_masters: int | None = None
    held_fully_correct: float | None = None


def _normalised(values: pd.Series, fn: Normaliser) -> pd.Series:
    """``fn`` applied once per distinct value (a million golden rows hold far fewer values)."""
    try:
        uniques = values.dropna().unique()
        table = {u: fn(u) for u in uniques}
        return values.map(table).astype(object)
    except TypeError:  # unhashable cells
        return values.map(lambda v: None if _blank(v) else fn(v)).astype(object)


def _matches(golden: pd.Series, candidates: list[pd.Series]) -> pd.Series:
    """A present golden value must equal some present truth value; a blank one needs all blank."""
    g_blank = golden.isna()
    any_equal = pd.Series(False, index=golden.index)
    all_blank = pd.Series(True, index=golden.index)
    for c in candidates:
        any_equal |= (golden == c) & c.notna()
        all_blank &= c.isna()
    return (~g_blank & any_equal) | (g_blank & all_blank)


def _truth_entities(truth: GroundTruth, entity: str) -> pd.DataFrame:
    frame = truth.entities(entity)
    if entity == "enterprise" and "legal_rep_id" in frame and len(truth.persons):
        # tolerate a truth whose legal_rep_id still holds person ids rather than ID numbers
        ids = truth.persons.set_index("person_id")["id_number"]
        rep = frame["legal_rep_id"]
        frame = frame.assign(legal_rep_id=rep.map(ids).where(rep.isin(ids.index), rep))
    return frame


def master_entities(linked: pd.DataFrame) -> pd.Series:
    """Each master's true entity: the one holding most of its linked rows (ties: lowest id).

    ``linked`` needs ``master_id`` and ``entity_id``; the result is indexed by ``master_id``.
    """
    masters, master_names = pd.factorize(linked["master_id"])
    entities, entity_names = pd.factorize(linked["entity_id"])
    rank = np.empty(len(entity_names), dtype=np.int64)
    rank[entity_names.argsort()] = np.arange(len(entity_names))
    cells = pd.DataFrame({"m": masters, "e": entities}).groupby(["m", "e"]).size()
    cells = cells.rename("n").reset_index()
    cells = cells.assign(r=rank[cells["e"].to_numpy()])
    cells = cells.sort_values(["m", "n", "r"], ascending=[True, False, True])
    best = cells.drop_duplicates("m")
    return pd.Series(
        entity_names[best["e"].to_numpy()],
        index=pd.Index(master_names[best["m"].to_numpy()], name="master_id"),
        name="entity_id",
    )


def _held(
    records: pd.DataFrame | None,
    al: _Aligned,
    truth: GroundTruth,
    entity: str,
    owner: pd.Series,
) -> dict[str, pd.Series]:
    """Per scored attribute, the masters (index) where some linked member row holds the value of
    the master's true entity (``records``: canonical rows with the source-row key columns)."""
    if records is None or not len(records):
        return {}
    linked = al.linked[al.linked["entity"] == entity][[*_KEY, "master_id"]]
    rows = records.assign(**{c: _as_text(records[c]) for c in _KEY}).merge(linked, on=_KEY)
    rows = rows.assign(_entity_id=rows["master_id"].map(owner))
    rows = rows[rows["_entity_id"].notna()].reset_index(drop=True)
    true = _truth_entities(truth, entity).reindex(rows["_entity_id"]).reset_index(drop=True)
    held: dict[str, pd.Series] = {}
    for attr, (columns, fn) in SCORED[entity].items():
        present = [c for c in columns if c in true.columns]
        if attr not in rows.columns or not present:
            continue
        mine = _normalised(rows[attr], fn)
        ok = mine.notna() & _matches(mine, [_normalised(true[c], fn) for c in present])
        held[attr] = ok.groupby(rows["master_id"]).any()
    return held


def _golden(
    golden: pd.DataFrame,
    al: _Aligned,
    truth: GroundTruth,
    entity: str,
    records: pd.DataFrame | None = None,
) -> GoldenAccuracy:
    if "master_id" not in golden.columns:
        raise ValueError(f"golden {entity} table lacks master_id")
    g = golden.assign(master_id=golden["master_id"].astype(str))
    dup = g["master_id"].duplicated()
    if dup.any():
        raise ValueError(
            f"golden {entity} table repeats {int(dup.sum())} master_id(s), e.g. "
            f"{g.loc[dup, 'master_id'].head(3).tolist()}"
        )
    linked = al.linked[(al.linked["entity"] == entity) & (al.linked["entity_type"] == entity)]
    owner = master_entities(linked)
    g = g.assign(_entity_id=g["master_id"].map(owner))
    scored = g[g["_entity_id"].notna()].reset_index(drop=True)
    true = _truth_entities(truth, entity).reindex(scored["_entity_id"]).reset_index(drop=True)
    attributes: dict[str, AttributeAccuracy] = {}
    skipped: list[str] = []
    every = pd.Series(True, index=scored.index)
    held_every = pd.Series(True, index=scored.index)  # right wherever a member holds the truth
    held_any = pd.Series(False, index=scored.index)
    held = _held(records, al, truth, entity, owner)
    for attr, (columns, fn) in SCORED[entity].items():
        present = [c for c in columns if c in true.columns]
        if attr not in scored.columns or not present:
            skipped.append(attr)
            continue
        ok = _matches(_normalised(scored[attr], fn), [_normalised(true[c], fn) for c in present])
        every &= ok
        attributes[attr] = _accuracy(ok, held.get(attr), scored["master_id"])
        if attr in held:
            mask = scored["master_id"].map(held[attr]).fillna(False).astype(bool)
            held_every &= ok | ~mask
            held_any |= mask
    n_held = int(held_any.sum())
    return GoldenAccuracy(
        entity=entity,
        masters=len(g),
        evaluated=len(scored),
        unmatched=len(g) - len(scored),
        fully_correct=_ratio(int(every.sum()), len(scored)),
        attributes=attributes,
        skipped=tuple(skipped),
        held_masters=n_held if held else None,
        held_fully_correct=_ratio(int((held_every & held_any).sum()), n_held) if held else None,
    )


def _accuracy(ok: pd.Series, held: pd.Series | None, masters: pd.Series) -> AttributeAccuracy:
    """``ok``: per scored master, right or not; ``held``: per master, a member holds the truth."""
    n, right = len(ok), int(ok.sum())
    if held is None:
        return AttributeAccuracy(right, n, _ratio(right, n))
    mask = masters.map(held).fillna(False).astype(bool).to_numpy()
    h, hr = int(mask.sum()), int(ok[mask].sum())
    return AttributeAccuracy(right, n, _ratio(right, n), h, hr, _ratio(hr, h))


def golden_accuracy(
    golden: pd.DataFrame,
    crosswalk: pd.DataFrame,
    truth: GroundTruth,
    entity: str,
    *,
    night: int | None = None,
    records: pd.DataFrame | None = None,
) -> GoldenAccuracy:
    """Per attribute, the share of masters whose golden value equals their true entity's value
    (and, given the member ``records``, the share among masters where some member holds it).

    Values are compared after normalising format: dates as dates, phones as digits (a person's
    mobile or landline both count), capital as ``Decimal`` to 4 places, identifiers upper-case
    alphanumerics, text NFKC without whitespace. An enterprise's ``legal_rep_id`` is compared with
    its representative's ID number.

    >>> truth = load_truth("var/city")  # doctest: +SKIP
    >>> acc = golden_accuracy(golden_persons, crosswalk, truth, "person")  # doctest: +SKIP
    >>> acc.attributes["phone"].accuracy  # doctest: +SKIP
    0.982
    """
    if entity not in ENTITIES:
        raise ValueError(f"entity must be one of {ENTITIES}, not {entity!r}")
    night = truth.night if night is None else night
    return _golden(golden, _align(crosswalk, truth.rows, night), truth, entity, records)


# --- everything at once --------------------------------------------------------------------------


class TruthMismatch(ValueError):
    """The truth describes another city than the one whose crosswalk is scored."""


def _check_same_city(truth_dir: Path | str, rows: int, unknown: int) -> None:
    """Scores against a truth that does not know most of the crosswalk's source rows would be
    meaningless (recall 0 beside a perfect-looking cluster F1): refuse them."""
    if rows and unknown * 2 > rows:
        raise TruthMismatch(
            f"the truth in {truth_dir} does not describe the data being scored: only "
            f"{rows - unknown:,} of the {rows:,} source rows scored appear in it, so it is the "
            "truth of another city (another seed or size, or another department set). Fix: point "
            "--truth at the folder of the sample city the sources were extracted from"
        )


@dataclass(frozen=True)
class RowCounts:
    """Where the rows of one entity type went (source rows unless named otherwise)."""

    truth_rows: int  # live in the sources on the night
    linked: int  # live and in the crosswalk
    missing: int  # live but absent from the crosswalk (rejected or lost)
    stale: int  # in the crosswalk but deleted (or not yet created) on the night
    unknown: int  # in the crosswalk but not in the truth at all
    entity_mismatch: int  # linked under the other entity type
    clusters: int  # masters with at least one linked row
    true_entities: int  # true entities with at least one live row
    true_entities_linked: int  # true entities with at least one linked row


@dataclass(frozen=True)
class Band:
    """Scored candidate pairs whose match probability lies in ``[low, high)`` (the last band
    includes 1): how many, how many are truly one entity, the mean predicted probability and the
    true share. A calibrated model has ``true_share`` close to ``mean_probability``."""

    low: float
    high: float
    pairs: int
    true_matches: int
    mean_probability: float
    true_share: float


BANDS = (0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0)
"""The calibration bands' edges: the default ``keep``, ``review`` and ``auto_link`` among them (a
pair below ``keep`` is kept only when a rule links it)."""


def _band(probability: np.ndarray, same: np.ndarray, low: float, high: float) -> Band:
    inside = (probability >= low) & ((probability < high) | (high >= 1.0))
    n, true = int(inside.sum()), int(same[inside].sum())
    mean = float(probability[inside].mean()) if n else float("nan")
    return Band(low, high, n, true, mean, _ratio(true, n))


def calibration(
    edges: pd.DataFrame,
    records: pd.DataFrame,
    truth_rows: pd.DataFrame,
    bands: tuple[float, ...] = BANDS,
    review: tuple[float, float] | None = None,
) -> tuple[tuple[Band, ...], Band | None]:
    """Predicted match probability against the truth, in bands, for one entity's scored pairs.

    ``edges``: ``left, right`` (record IDs) and ``probability``, as linking kept them;
    ``records``: ``record_id`` and the source-row key columns; ``truth_rows``: the generator's
    rows (source key → true entity). Pairs with an end the truth does not know are left out.
    ``review``: ``(review, auto_link)``, also scored as one band, the review band.

    >>> bands, review = calibration(edges, recs, truth.rows, review=(0.5, 0.99))  # doctest: +SKIP
    >>> review.pairs, review.true_share  # doctest: +SKIP
    (143, 0.99)
    """
    tr = _truth_frame(truth_rows)
    keyed = records[["record_id", *_KEY]].assign(**{c: _as_text(records[c]) for c in _KEY})
    owner = keyed.merge(tr[[*_KEY, "entity_id"]], on=_KEY).set_index("record_id")["entity_id"]
    left = edges["left"].map(owner)
    right = edges["right"].map(owner)
    known = (left.notna() & right.notna()).to_numpy()
    probability = edges["probability"].to_numpy(dtype=float)[known]
    same = (left == right).to_numpy()[known]
    out = tuple(_band(probability, same, lo, hi) for lo, hi in itertools.pairwise(bands))
    return out, (None if review is None else _band(probability, same, *review))


WALK_IN = "walk_in"
"""The dirt kind the sample city gives a walk-in patient's 卫健 row (no ID number, no sex, a
relative's phone, the name misheard, day and month swapped, another street): planted so the
review queue has real pairs, scored as a kind of their own."""


@dataclass(frozen=True)
class WalkIns:
    """The walk-in patients' rows: the recall of their pairs, the recall of every other pair
    (what the overall figure would be without them), and how many of them the review band holds.

    ``true_pairs`` are the live pairs with a walk-in row at one end at least, ``linked_pairs``
    those in one master. The ``review_*`` counts are ``None`` without the night's scored pairs:
    ``review_pairs`` scored pairs in the review band with a walk-in row at an end,
    ``review_true`` of them truly one person, ``review_rows`` the walk-in rows at an end of one.
    """

    rows: int  # live walk-in rows
    linked: int  # of them, in the crosswalk
    true_pairs: int
    linked_pairs: int
    recall: float
    other_pairs: int  # the live pairs without a walk-in row
    other_linked: int
    other_recall: float
    review_pairs: int | None = None
    review_true: int | None = None
    review_rows: int | None = None

    def describe(self) -> str:
        """One line for a terminal or a log."""
        line = (
            f"{self.true_pairs - self.linked_pairs} of {self.true_pairs} pairs of "
            f"{self.rows} walk-in rows not linked (recall {self.recall:.4f}; every other pair "
            f"{self.other_recall:.4f})"
        )
        if self.review_pairs is not None:
            line += (
                f"; the review band holds {self.review_rows} of the {self.rows} rows, in "
                f"{self.review_pairs} pairs ({self.review_true} true)"
            )
        return line


def walk_in_keys(dirt: pd.DataFrame | None) -> pd.MultiIndex:
    """(department, source_key) of the rows the truth marks as walk-ins; none in a truth
    written before walk-ins were marked."""
    if dirt is None or "kind" not in dirt.columns:
        return pd.MultiIndex.from_arrays([[], []], names=["department", "source_key"])
    rows = dirt.loc[dirt["kind"] == WALK_IN, ["department", "source_key"]].astype(str)
    return pd.MultiIndex.from_frame(rows.drop_duplicates())


def _walk_in_review(
    edges: pd.DataFrame,
    records: pd.DataFrame,
    truth_rows: pd.DataFrame,
    keys: pd.MultiIndex,
    review: tuple[float, float],
) -> tuple[int, int, int]:
    """Scored pairs in the review band with a walk-in row at an end, how many are truly one
    person, and how many walk-in rows are at an end of one (pairs the truth cannot judge are
    left out, as :func:`calibration` leaves them out)."""
    keyed = records[["record_id", *_KEY]].assign(**{c: _as_text(records[c]) for c in _KEY})
    walk = keyed.loc[pd.MultiIndex.from_frame(keyed[["department", "source_key"]]).isin(keys)]
    ids = set(walk["record_id"])
    low, high = review
    p = edges["probability"].to_numpy(dtype=float)
    inside = (p >= low) & ((p < high) | (high >= 1.0))  # as calibration's bands are cut
    touch = edges["left"].isin(ids).to_numpy() | edges["right"].isin(ids).to_numpy()
    band = edges[inside & touch]
    tr = _truth_frame(truth_rows)
    owner = keyed.merge(tr[[*_KEY, "entity_id"]], on=_KEY).set_index("record_id")["entity_id"]
    left, right = band["left"].map(owner), band["right"].map(owner)
    judged = (left.notna() & right.notna()).to_numpy()
    same = (left == right).to_numpy()[judged]
    ends = set(band["left"][judged]) | set(band["right"][judged])
    rows = walk.loc[walk["record_id"].isin(ends), ["department", "source_key"]].drop_duplicates()
    return int(judged.sum()), int(same.sum()), len(rows)


def walk_ins(
    linked: pd.DataFrame,
    live: pd.DataFrame,
    keys: pd.MultiIndex,
    scored: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, tuple[float, float]] | None = None,
) -> WalkIns | None:
    """The walk-in rows' scores for one entity type's ``linked`` and ``live`` rows (as
    :func:`evaluate` aligns them); ``None`` when none of the live rows is a walk-in.
    ``scored``: the night's ``(edges, records, truth rows, (review, auto_link))``, for the
    review band."""
    mine = _case(linked, live, WALK_IN, keys)
    if not mine.rows:
        return None
    every = _pairwise(linked, live)
    other_pairs = every.true_pairs - mine.true_pairs
    other_linked = every.true_positives - mine.true_positives
    review: tuple[int, int, int] | tuple[None, None, None] = (None, None, None)
    if scored is not None:
        review = _walk_in_review(scored[0], scored[1], scored[2], keys, scored[3])
    return WalkIns(
        rows=mine.rows,
        linked=mine.linked,
        true_pairs=mine.true_pairs,
        linked_pairs=mine.true_positives,
        recall=mine.recall,
        other_pairs=other_pairs,
        other_linked=other_linked,
        other_recall=_ratio(other_linked, other_pairs),
        review_pairs=review[0],
        review_true=review[1],
        review_rows=review[2],
    )


@dataclass(frozen=True)
class EntityEvaluation:
    """Everything measured for one entity type; ``calibration`` and ``review_band`` when the
    night's scored pairs were given."""

    entity: str
    counts: RowCounts
    pairwise: PairwiseMetrics
    clusters: ClusterMetrics
    golden: GoldenAccuracy | None
    examples: tuple[ErrorExample, ...] = ()
    calibration: tuple[Band, ...] = ()
    review_band: Band | None = None
    # the bands of the corroborated pairs alone: those the model may link on its own word
    # (master_data.deterministic.corroborated); the others always wait for a reviewer
    calibration_corroborated: tuple[Band, ...] = ()
    cases: tuple[CaseScore, ...] = ()  # the hard cases per kind (master_data.cases)
    walk_ins: WalkIns | None = None  # the sample city's walk-in patients, if the truth marks any


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass(frozen=True)
class Evaluation:
    """Linkage and golden-record scores of one night, per entity type."""

    truth_dir: str
    night: int | None
    entities: dict[str, EntityEvaluation]

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and lists, ready for ``json.dumps``."""
        out: dict[str, Any] = _jsonable(dataclasses.asdict(self))
        return out

    def summary(self) -> str:
        """A few lines for a terminal or a log."""
        lines = [f"evaluation of night {self.night} against {self.truth_dir}"]
        for e in self.entities.values():
            c, p, k = e.counts, e.pairwise, e.clusters
            lines.append(
                f"{e.entity}: {c.linked}/{c.truth_rows} rows linked ({c.missing} missing), "
                f"{c.clusters} masters for {c.true_entities_linked} entities; "
                f"pairwise P {p.precision:.4f} R {p.recall:.4f} F1 {p.f1:.4f}; "
                f"cluster F1 {k.f1:.4f}; B-cubed F1 {k.bcubed_f1:.4f}"
            )
            if e.golden is not None:
                g = e.golden
                accs = ", ".join(f"{a} {v.accuracy:.3f}" for a, v in g.attributes.items())
                if g.held_fully_correct is not None:
                    lines.append(
                        f"  golden accuracy where a source holds the truth: "
                        f"{g.held_fully_correct:.4f} ({g.held_masters} masters)"
                    )
                lines.append(
                    f"  golden accuracy over every scored attribute: {g.fully_correct:.4f} "
                    f"({g.evaluated} masters): {accs}"
                )
            for case in e.cases:
                what = "merged" if case.must == "apart" else "not linked"
                lines.append(f"  {case.kind}: {case.wrong} of {case.pairs} pairs {what}")
            if e.walk_ins is not None:
                lines.append(f"  walk-in rows: {e.walk_ins.describe()}")
        return "\n".join(lines)


def evaluate(
    truth_dir: Path | str,
    crosswalk: pd.DataFrame,
    golden_persons: pd.DataFrame | None = None,
    golden_enterprises: pd.DataFrame | None = None,
    night: int | None = None,
    *,
    examples: int = 5,
    records: Mapping[str, pd.DataFrame] | None = None,
    edges: Mapping[str, pd.DataFrame] | None = None,
    review: Mapping[str, tuple[float, float]] | None = None,
) -> Evaluation:
    """Score one night's crosswalk and golden tables against a generated city's truth.

    ``truth_dir`` is the city directory (or its ``truth/``); ``night`` defaults to the night the
    truth files describe. Entity values in the truth are as of that night, so golden records of an
    earlier night are scored against later values. ``records``: per entity, the night's canonical
    member rows (``department, source_table, source_key`` and the attributes); with them each
    attribute is also scored where some member row holds the true value (``held_accuracy``).
    ``edges``: per entity, the night's scored pairs; with ``records`` they give the calibration
    bands, and the review band of ``review`` (entity → ``(review, auto_link)``).

    >>> ev = evaluate("var/city", crosswalk, golden_persons, golden_enterprises)  # doctest: +SKIP
    >>> print(json.dumps(ev.to_dict(), ensure_ascii=False))  # doctest: +SKIP
    """
    truth = load_truth(truth_dir)
    if night is None:
        night = truth.night
    elif truth.night is not None and night > truth.night:
        raise ValueError(f"the truth in {truth_dir} describes night {truth.night}, not {night}")
    elif truth.night is not None and night < truth.night:
        log.warning(
            "the truth is of night %s: night %s is scored on later values", truth.night, night
        )
    al = _align(crosswalk, truth.rows, night)
    _check_same_city(truth_dir, len(crosswalk), len(al.unknown))
    goldens = {"person": golden_persons, "enterprise": golden_enterprises}
    walk_in_rows = walk_in_keys(truth.dirt)
    entities: dict[str, EntityEvaluation] = {}
    for e in _types(al):
        linked = al.linked[al.linked["entity_type"] == e]
        live = al.live[al.live["entity_type"] == e]
        counts = RowCounts(
            truth_rows=len(live),
            linked=len(linked),
            missing=int((al.missing["entity_type"] == e).sum()),
            stale=int((al.stale["entity"] == e).sum()),
            unknown=int((al.unknown["entity"] == e).sum()),
            entity_mismatch=int((al.mismatched["entity_type"] == e).sum()),
            clusters=int(linked["cluster"].nunique()),
            true_entities=int(live["entity_id"].nunique()),
            true_entities_linked=int(linked["entity_id"].nunique()),
        )
        g = goldens.get(e)
        bands: tuple[tuple[Band, ...], Band | None] = ((), None)
        corroborated_bands: tuple[Band, ...] = ()
        scored = None
        if edges and records and e in edges and e in records:
            band = (review or {}).get(e)
            bands = calibration(edges[e], records[e], truth.rows, review=band)
            scored = None if band is None else (edges[e], records[e], truth.rows, band)
            if "corroborated" in edges[e].columns:
                sure = edges[e][edges[e]["corroborated"].fillna(True).astype(bool)]
                corroborated_bands = calibration(sure, records[e], truth.rows)[0]
        walking = walk_ins(linked, live, walk_in_rows, scored) if len(walk_in_rows) else None
        entities[e] = EntityEvaluation(
            entity=e,
            counts=counts,
            pairwise=_pairwise(linked, live),
            clusters=_clusters(linked),
            golden=None if g is None else _golden(g, al, truth, e, (records or {}).get(e)),
            examples=tuple(_examples(al, e, examples, 20)),
            calibration=bands[0],
            review_band=bands[1],
            calibration_corroborated=corroborated_bands,
            cases=_cases(linked, truth, walking) if e == "person" else (),
            walk_ins=walking,
        )
    return Evaluation(str(truth_dir), night, entities)


def _cases(
    linked: pd.DataFrame, truth: GroundTruth, walking: WalkIns | None
) -> tuple[CaseScore, ...]:
    """The hard cases of :mod:`master_data.cases`, then the walk-in rows as a kind of their
    own, with the figures of their :class:`WalkIns` line (each live pair with a walk-in row at
    an end counted once), so that the two agree."""
    out = case_scores(linked, truth.persons, truth.dirt)
    if walking is None:
        return out
    apart = walking.true_pairs - walking.linked_pairs
    return (*out, CaseScore(WALK_IN, CASE_LABELS[WALK_IN], "link", walking.true_pairs, apart))


# --- per case kind -----------------------------------------------------------------------------

CASE_LABELS: dict[str, str] = {
    "all": "全部记录",
    "twin": "双胞胎（须分开）",
    "namesake": "同名同生日（须分开）",
    "moved": "迁居（地址已变）",
    "phone_changed": "换了手机号",
    "branch": "分支机构（须与总部分开）",
    "missing": "缺失值（如无身份证号）",
    "homophone": "同音字",
    "similar_shape": "形近字",
    "traditional_chinese": "繁体字",
    "legacy_15_digit_id": "15 位旧身份证号",
    "fullwidth_digits": "全角数字",
    "bad_check_digit": "校验位错误",
    "day_month_swapped": "月、日互换",
    "excel_serial_date": "Excel 日期序号",
    "stale_value": "过时的值",
    "abbreviated_address": "地址简写",
    "duplicate_row": "重复行",
    "excel_damaged_code": "Excel 损坏的代码",
    "legacy_organization_code": "旧组织机构代码",
    "legacy_registration_number": "旧注册号",
    "city_dropped": "名称缺市名",
    "halfwidth_brackets": "半角括号",
    "legal_form_variant": "企业类型写法不同",
    "guardian_id": "登记在监护人身份证号下",
    "former_name": "曾用名",
    "lunar_birth_date": "农历生日",
    "unit_shorthand_address": "门牌简写（缺街道）",
    "operator_name": "个体工商户以经营者姓名登记",
    "operating_address": "生产经营地址在另一区县",
    WALK_IN: "无证就诊（无身份证号、无性别、亲属电话、姓名误听、日月颠倒）",
}
"""Chinese labels of the case kinds: the sample city's planted dirt (``truth/dirt.parquet``)
and the kinds of entity that test linkage (twins, namesakes, movers, branches)."""

_ENTITY_CASES = {
    "person": {
        "twin": "twin_of",
        "namesake": "namesake_group",
        "moved": "previous_division_code",
        "phone_changed": "previous_phone",
    },
    "enterprise": {"branch": "parent_enterprise_id"},
}


@dataclass(frozen=True)
class CaseMetrics:
    """Pairwise precision and recall over the pairs that touch rows of one case kind: a pair
    counts when at least one of its two rows is of that kind (``all``: every pair, the same
    figures as :class:`PairwiseMetrics`)."""

    kind: str
    label: str
    rows: int  # live source rows of this kind
    linked: int  # of them, in the crosswalk
    true_pairs: int
    predicted_pairs: int
    true_positives: int
    precision: float
    recall: float


def case_rows(truth: GroundTruth, truth_dir: Path | str) -> pd.DataFrame:
    """(department, source_key, kind) of every truth row of a case kind: the rows of entities
    of a kind (all rows of a twin, …) and the rows the generator dirtied (``dirt.parquet``)."""
    path = Path(truth_dir)
    tdir = path / "truth" if (path / "truth").is_dir() else path
    keys = truth.rows[["department", "source_key", "entity_type", "entity_id"]].astype(str)
    parts = []
    for entity, (frame, id_col) in {
        "person": (truth.persons, "person_id"),
        "enterprise": (truth.enterprises, "enterprise_id"),
    }.items():
        for kind, column in _ENTITY_CASES[entity].items():
            if column not in frame.columns:
                continue
            ids = set(frame.loc[frame[column].notna(), id_col].astype(str))
            hit = keys[(keys["entity_type"] == entity) & keys["entity_id"].isin(ids)]
            parts.append(hit[["department", "source_key"]].assign(kind=kind))
    if (tdir / "dirt.parquet").exists():
        dirt = pq.read_table(tdir / "dirt.parquet").to_pandas()
        parts.append(dirt[["department", "source_key", "kind"]].astype(str))
    if not parts:
        return pd.DataFrame(columns=["department", "source_key", "kind"])
    return pd.concat(parts, ignore_index=True).drop_duplicates(ignore_index=True)


def _touching(frame: pd.DataFrame, by: str | list[str], flag: str) -> int:
    """Pairs within each group of ``frame`` with at least one row whose ``flag`` is set."""
    g = frame.groupby(by)[flag].agg(["size", "sum"])
    n, rest = g["size"], g["size"] - g["sum"]
    return int((n * (n - 1) // 2 - rest * (rest - 1) // 2).sum())


def case_metrics(
    truth_dir: Path | str, crosswalk: pd.DataFrame, night: int | None = None
) -> dict[str, list[CaseMetrics]]:
    """Per entity type, pairwise precision/recall of the pairs touching each case kind's rows,
    ``all`` first, then the kinds by how many rows they have.

    >>> cases = case_metrics("var/city", crosswalk)  # doctest: +SKIP
    >>> [(c.kind, round(c.precision, 3)) for c in cases["person"]][:2]  # doctest: +SKIP
    [('all', 0.998), ('missing', 0.991)]
    """
    truth = load_truth(truth_dir)
    night = truth.night if night is None else night
    al = _align(crosswalk, truth.rows, night)
    _check_same_city(truth_dir, len(crosswalk), len(al.unknown))
    cases = case_rows(truth, truth_dir)
    out: dict[str, list[CaseMetrics]] = {}
    for e in _types(al):
        linked = al.linked[al.linked["entity_type"] == e]
        live = al.live[al.live["entity_type"] == e]
        found = []
        for kind in sorted(cases["kind"].unique()):
            keys = cases.loc[cases["kind"] == kind, ["department", "source_key"]]
            found.append(_case(linked, live, kind, pd.MultiIndex.from_frame(keys)))
        kinds = sorted((c for c in found if c.rows), key=lambda c: (-c.rows, c.kind))
        out[e] = [_case(linked, live, "all", None), *kinds]
    return out


def _case(
    linked: pd.DataFrame, live: pd.DataFrame, kind: str, keys: pd.MultiIndex | None
) -> CaseMetrics:
    def flag(frame: pd.DataFrame) -> pd.DataFrame:
        if keys is None:
            return frame.assign(case=True)
        at = pd.MultiIndex.from_frame(frame[["department", "source_key"]].astype(str))
        return frame.assign(case=at.isin(keys))

    lk, lv = flag(linked), flag(live)
    tp = _touching(lk, ["cluster", "truth"], "case")
    predicted = _touching(lk, "cluster", "case")
    true = _touching(lv, "entity_id", "case")
    return CaseMetrics(
        kind,
        CASE_LABELS.get(kind, kind),
        rows=int(lv["case"].sum()),
        linked=int(lk["case"].sum()),
        true_pairs=true,
        predicted_pairs=predicted,
        true_positives=tp,
        precision=_ratio(tp, predicted),
        recall=_ratio(tp, true),
    )
