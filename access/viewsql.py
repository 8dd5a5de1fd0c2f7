"""The SQL behind the analyst views, the same on SQLite and PostgreSQL.

:class:`SqlMask` writes the masks of :mod:`fields.masking` as SQL expressions of one dialect;
:func:`view_select` the SELECT behind each view of :data:`access.release.VIEWS`. In ``v_person``
a person's name, ID number, phone and street address are not released; sex, birth date,
residence and ethnicity are generalised together so that every combination stands for at
least k persons (``k_anonymity`` in ``config/catalog.yaml``); conflict values and source keys
release nothing ``v_person`` leaves out. Sources the catalog does not share (不予共享) are
withheld: their rows, their values and membership in them. Enterprise names, credit codes and
business addresses are public registration data and stay.

>>> view_select(VIEW_BY_NAME["v_id_event"], "sqlite", masked=False)
'SELECT run_id, entity, seq, event, master_id, old_ids, reason FROM mdm_id_event'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa

from access.errors import AccessSetupError
from access.release import PER_ROW_KINDS, VIEWS, Release, ViewSpec
from fields.masking import POLICY, SUPPRESSED
from store.tables import crosswalk_table, person_table

Dialect = Literal["sqlite", "postgresql"]

_STARS = "*" * 128


def _q(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class SqlMask:
    """The masking expressions of one SQL dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def stars(self, n: str) -> str:
        return (
            f"repeat('*', {n})" if self.dialect == "postgresql" else f"substr('{_STARS}', 1, {n})"
        )

    def mask_id(self, c: str) -> str:
        t = f"trim({c})"
        short = self.stars(f"length({t})")
        return (
            f"CASE WHEN {c} IS NULL THEN NULL WHEN length({t}) <= 10 THEN {short}"
            f" ELSE substr({t}, 1, 6) || {self.stars(f'length({t}) - 10')}"
            f" || substr({t}, length({t}) - 3, 4) END"
        )

    def digits(self, c: str) -> str:
        if self.dialect == "postgresql":
            return f"regexp_replace({c}, '[^0-9]', '', 'g')"
        out = c
        for ch in ("-", " ", "+", "(", ")", "/", "."):
            out = f"replace({out}, '{ch}', '')"
        return out

    def mask_phone(self, c: str) -> str:
        d = self.digits(c)
        return (
            f"CASE WHEN {c} IS NULL THEN NULL"
            f" WHEN length({d}) < 7 THEN {self.stars(f'length(trim({c}))')}"
            f" WHEN length({d}) = 11 THEN substr({d}, 1, 3) || '****' || substr({d}, 8, 4)"
            f" WHEN length({d}) = 7 THEN '****' || substr({d}, 4, 4)"
            f" ELSE substr({d}, 1, length({d}) - 8) || '****' || substr({d}, length({d}) - 3, 4)"
            " END"
        )

    def mask_name(self, c: str) -> str:
        t = f"trim({c})"
        rest = f"CASE WHEN length({t}) > 1 THEN length({t}) - 1 ELSE 1 END"
        return (
            f"CASE WHEN {c} IS NULL THEN NULL WHEN {t} = '' THEN ''"
            f" ELSE substr({t}, 1, 1) || {self.stars(rest)} END"
        )

    def id_like(self, c: str) -> str:
        if self.dialect == "postgresql":
            return f"({c} ~ '^[0-9]{{17}}[0-9Xx]$' OR {c} ~ '^[0-9]{{15}}$')"
        return f"({c} GLOB '{'[0-9]' * 17}[0-9Xx]' OR {c} GLOB '{'[0-9]' * 15}')"

    def mobile_like(self, c: str) -> str:
        if self.dialect == "postgresql":
            return f"{c} ~ '^1[3-9][0-9]{{9}}$'"
        return f"{c} GLOB '1[3-9]{'[0-9]' * 9}'"

    def hidden(self, c: str) -> str:
        return f"CASE WHEN {c} IS NULL THEN NULL ELSE '{SUPPRESSED}' END"

    def text(self, c: str) -> str:
        return f"CAST({c} AS TEXT)"

    def year(self, c: str) -> str:
        if self.dialect == "postgresql":
            return f"CAST(EXTRACT(YEAR FROM {c}) AS INTEGER)"
        return f"CAST(substr({c}, 1, 4) AS INTEGER)"

    def mask(self, kind: str, c: str) -> str:
        if kind == "id":
            return self.mask_id(c)
        if kind == "phone":
            return self.mask_phone(c)
        if kind == "name":
            return self.mask_name(c)
        if kind == "hidden":
            return self.hidden(c)
        if kind == "withheld":
            return f"'{SUPPRESSED}'"
        if kind == "key":
            return (
                f"CASE WHEN {self.id_like(c)} OR {self.mobile_like(c)} THEN '{SUPPRESSED}'"
                f" ELSE {c} END"
            )
        if kind == "evidence":
            return f"CASE WHEN kind = 'legal_representative' THEN {self.hidden(c)} ELSE {c} END"
        if kind == "conflict":
            whens = []
            for (entity, attribute), rule in sorted(POLICY.items()):
                if rule.release == "clear":
                    continue
                shown = self.mask(rule.mask, c) if rule.release == "mask" else f"'{SUPPRESSED}'"
                whens.append(
                    f" WHEN entity = '{entity}' AND attribute = '{attribute}' THEN {shown}"
                )
            return f"CASE WHEN {c} IS NULL THEN NULL{''.join(whens)} ELSE {c} END"
        raise ValueError(f"unknown mask kind {kind!r}")


def dialect_of(engine: sa.Engine) -> Dialect:
    """The dialect of a warehouse engine; :class:`AccessSetupError` for any but SQLite and
    PostgreSQL."""
    name = engine.dialect.name
    if name not in ("sqlite", "postgresql"):
        raise AccessSetupError(
            f"analysts' access supports SQLite and PostgreSQL warehouses, not {name}. Fix: point "
            "GOVMDM_WAREHOUSE_URL at PostgreSQL"
        )
    return "postgresql" if name == "postgresql" else "sqlite"


def _hidden_row(release: Release, dept: str = "department", table: str = "source_table") -> str:
    """SQL: the row comes from a source shared with nobody."""
    pairs = [f"({dept} = {_q(d)} AND {table} = {_q(t)})" for d, t in sorted(release.hidden)]
    return "(" + " OR ".join(pairs) + ")" if pairs else "1 = 0"


def _shared_rows(release: Release, entity: str) -> str:
    """SQL: the crosswalk rows of ``entity`` the analyst may see (from shared sources)."""
    return (
        f"FROM {crosswalk_table.name} x WHERE x.entity = '{entity}'"
        f" AND NOT {_hidden_row(release, 'x.department', 'x.source_table')}"
    )


def _visible_ids(release: Release, entity: str) -> str:
    """SQL: the master IDs with a member row from a shared source (uncorrelated, so that the
    database evaluates it once, not once per row)."""
    return f"SELECT DISTINCT x.master_id {_shared_rows(release, entity)}"


def _members(release: Release, entity: str, dialect: Dialect) -> str:
    """SQL: per visible master ID its shared member rows (``m_count``) and their departments
    (``m_departments``, sorted, comma-separated): joined to the golden table, it also leaves
    out whom only unshared sources know."""
    rows = _shared_rows(release, entity)
    if dialect == "postgresql":
        return (
            "SELECT x.master_id AS m_id, count(*) AS m_count, string_agg(DISTINCT x.department,"
            f" ',' ORDER BY x.department) AS m_departments {rows} GROUP BY x.master_id"
        )
    # one derived table (SQLite then indexes it for the join): rows per department, in order
    return (
        "SELECT m_id, sum(n) AS m_count, group_concat(d, ',') AS m_departments FROM (SELECT"
        f" x.master_id AS m_id, x.department AS d, count(*) AS n {rows} GROUP BY x.master_id,"
        " x.department ORDER BY x.master_id, x.department) GROUP BY m_id"
    )


def _golden_from(spec: ViewSpec, release: Release, entity: str, dialect: Dialect) -> str:
    """SQL: FROM clause of a golden view, ``g`` the table, joined to its shared members."""
    if not release.hidden:
        return f"FROM {spec.table.name} g"
    joined = f"FROM {spec.table.name} g JOIN ({_members(release, entity, dialect)}) m"
    joined += " ON m.m_id = g.master_id"
    if entity == "enterprise":
        joined += (
            f" LEFT JOIN (SELECT v.master_id AS vp_id FROM ({_visible_ids(release, 'person')}) v)"
            " vp ON vp.vp_id = g.legal_rep_master_id"
        )
    return joined


def _golden_columns(spec: ViewSpec, sql: SqlMask, release: Release, entity: str) -> dict[str, str]:
    """Each column of a golden view, masked, with membership counted over shared sources
    (``m`` of :func:`_golden_from`)."""
    cols = {c: c for c in spec.columns}
    for column, kind in spec.masks.items():
        if kind in PER_ROW_KINDS:
            cols[column] = sql.mask(kind, column)
    if release.hidden:
        cols["member_count"] = "m_count"
        cols["departments"] = "m_departments"
    if entity == "enterprise" and release.hidden:
        cols["legal_rep_master_id"] = "vp.vp_id"
    return cols


def _person_release(spec: ViewSpec, dialect: Dialect, release: Release) -> str:
    """``v_person``: direct identifiers suppressed, and the quasi-identifiers (sex, birth
    date, residence, ethnicity) generalised together so that every released combination is
    shared by at least k persons.

    Each person is released at the finest level whose class, counted among the persons not
    released at a finer level, has k members: (1) district, 5-year birth band, sex, ethnicity;
    (2) city, 10-year band, sex, 汉族/少数民族; (3) 20-year band and sex; (4) nothing. If
    fewer than k persons end at level 4, the coarsest released level joins them, so every
    combination, ``****`` included, stands for k persons or more.
    """
    sql = SqlMask(dialect)
    released = _golden_columns(spec, sql, release, "person") | _generalised(sql)
    # the levels are computed on the quasi-identifiers alone (narrow rows through the window
    # steps), then joined back to the table
    inner = _quasi_identifiers(spec, sql, release, dialect)
    for i, step in enumerate(_level_steps(release.k)):
        inner = f"SELECT {step} FROM ({inner}) q{i}"
    joins = f"FROM ({inner}) q JOIN {spec.table.name} g ON g.master_id = q.q_id"
    return (
        f"SELECT {', '.join(f'{expr} AS {name}' for name, expr in released.items())}"
        f"{_CARRY} {joins}"
    )


def _quasi_identifiers(spec: ViewSpec, sql: SqlMask, release: Release, dialect: Dialect) -> str:
    """SQL: per person its master ID and quasi-identifiers (``q_…``), and with sources withheld
    its shared membership (``m_…``); whom only unshared sources know is left out."""
    members = f" JOIN ({_members(release, 'person', dialect)}) m ON m.m_id = g.master_id"
    return (
        f"SELECT g.master_id AS q_id, {sql.year('g.birth_date')} AS q_year, g.sex AS q_sex,"
        + (" m.m_count AS m_count, m.m_departments AS m_departments," if release.hidden else "")
        + " g.ethnicity AS q_ethnicity, g.province AS q_province, g.city AS q_city,"
        " g.district AS q_district, g.division_code AS q_division,"
        " CASE WHEN g.address IS NULL THEN 0 ELSE 1 END AS q_has_address,"
        " CASE WHEN g.ethnicity IS NULL THEN NULL WHEN g.ethnicity = '汉族' THEN '汉族'"
        f" ELSE '少数民族' END AS q_eth FROM {spec.table.name} g"
        + (members if release.hidden else "")
    )


def _level_steps(k: int) -> list[str]:
    """The select lists that, nested one in the next, give each person the level ``q_level``
    (1 finest … 4 nothing released) at which their class has at least ``k`` members.

    Nested derived tables, not WITH: SQLite's authorizer names a CTE, not the view, as the
    reader of mdm_person, and an analyst may name a CTE anything."""
    # integer division in both dialects (and no %, which the PostgreSQL driver reads as a
    # placeholder)
    b5, b10, b20 = ("(q_year / 5) * 5", "(q_year / 10) * 10", "(q_year / 20) * 20")
    l1 = "q_province, q_city, q_district, q_division, q_sex, q_b5, q_ethnicity, q_has_address"
    l2 = "q_province, q_city, q_sex, q_b10, q_eth, q_has_address"
    l3 = "q_sex, q_b20"
    return [
        f"q0.*, {b5} AS q_b5, {b10} AS q_b10, {b20} AS q_b20",
        f"q1.*, count(*) OVER (PARTITION BY {l1}) AS q_n1",
        f"q2.*, count(*) OVER (PARTITION BY CASE WHEN q_n1 >= {k} THEN 1 ELSE 0 END, {l2}) AS q_n2",
        f"q3.*, count(*) OVER (PARTITION BY CASE WHEN q_n1 >= {k} OR q_n2 >= {k} THEN 1"
        f" ELSE 0 END, {l3}) AS q_n3",
        f"q4.*, CASE WHEN q_n1 >= {k} THEN 1 WHEN q_n2 >= {k} THEN 2 WHEN q_n3 >= {k} THEN 3"
        " ELSE 4 END AS q_first",
        "q5.*, sum(CASE WHEN q_first = 4 THEN 1 ELSE 0 END) OVER () AS q_c4,"
        " sum(CASE WHEN q_first = 3 THEN 1 ELSE 0 END) OVER () AS q_c3,"
        " sum(CASE WHEN q_first = 2 THEN 1 ELSE 0 END) OVER () AS q_c2",
        "q6.*, CASE WHEN q_c4 = 0 THEN q_first"
        f" WHEN q_first = 3 AND q_c4 < {k} THEN 4"
        f" WHEN q_first = 2 AND q_c4 + q_c3 < {k} THEN 4"
        f" WHEN q_first = 1 AND q_c4 + q_c3 + q_c2 < {k} THEN 4"
        " ELSE q_first END AS q_level",
    ]


def _generalised(sql: SqlMask) -> dict[str, str]:
    """The quasi-identifier columns of ``v_person``, each as released at the person's level."""
    stars = f"'{SUPPRESSED}'"

    def band(start: str, width: int) -> str:
        return f"{sql.text(start)} || '-' || {sql.text(f'{start} + {width - 1}')}"

    def at(levels: str, shown: str, column: str) -> str:
        # where a column is released it shows NULL as NULL (its NULL-ness is in the partition);
        # where it is not, it reads **** whether or not it had a value
        return (
            f"CASE WHEN q_level IN ({levels}) THEN CASE WHEN {column} IS NULL THEN NULL"
            f" ELSE {shown} END ELSE {stars} END"
        )

    return {
        "sex": at("1, 2, 3", "sex", "sex"),
        "birth_date": (
            f"CASE WHEN q_level = 4 THEN {stars} WHEN q_year IS NULL THEN NULL"
            f" WHEN q_level = 1 THEN {band('q_b5', 5)}"
            f" WHEN q_level = 2 THEN {band('q_b10', 10)} ELSE {band('q_b20', 20)} END"
        ),
        "division_code": at("1", "division_code", "division_code"),
        "district": at("1", "district", "district"),
        "province": at("1, 2", "province", "province"),
        "city": at("1, 2", "city", "city"),
        "address": at(
            "1, 2",
            "coalesce(province, '') || coalesce(city, '') || CASE WHEN q_level = 1 THEN"
            f" coalesce(district, '') ELSE '' END || {stars}",
            "address",
        ),
        "ethnicity": at("1, 2", "CASE WHEN q_level = 1 THEN ethnicity ELSE q_eth END", "ethnicity"),
    }


CARRIED = "govmdm_clear_"
"""Prefix of the columns :func:`view_select` carries in clear beside the masked ones."""
_CARRY = "\x00carry\x00"  # where carried columns go in a select list


def view_select(
    spec: ViewSpec,
    dialect: Dialect,
    *,
    masked: bool,
    release: Release | None = None,
    carry: Sequence[str] = (),
) -> str:
    """The SELECT behind ``spec``'s masked (or full) view; ``release`` (default: nothing
    withheld, k = 5) says what the share policy withholds from the masked one. ``carry``
    adds these columns in clear as ``govmdm_clear_<column>`` (for pseudonymized exports, never
    for a view)."""
    select = _view_select(spec, dialect, masked=masked, release=release or Release())
    # a select list reads the input row: `id_number AS govmdm_clear_id_number` is the clear value
    # even where the masked column of the same name is computed beside it
    extra = "".join(f", {c} AS {CARRIED}{c}" for c in carry)
    return select.replace(_CARRY, extra, 1)


def _view_select(spec: ViewSpec, dialect: Dialect, *, masked: bool, release: Release) -> str:
    if not masked:
        return f"SELECT {', '.join(spec.columns)}{_CARRY} FROM {spec.table.name}"
    sql = SqlMask(dialect)
    name = spec.table.name
    if name in release.withheld:
        return f"SELECT {', '.join(spec.columns)}{_CARRY} FROM {name} WHERE 1 = 0"
    if spec.name == "v_person":
        return _person_release(spec, dialect, release)
    if spec.name == "v_enterprise":
        cols = _golden_columns(spec, sql, release, "enterprise")
        select = ", ".join(f"{e} AS {c}" if e != c else f"g.{c}" for c, e in cols.items())
        return f"SELECT {select}{_CARRY} {_golden_from(spec, release, 'enterprise', dialect)}"
    cols = {
        c: (sql.mask(spec.masks[c], c) if spec.masks.get(c) in PER_ROW_KINDS else c)
        for c in spec.columns
    }
    where: list[str] = []
    if spec.name in ("v_provenance", "v_crosswalk", "v_conflict"):
        where.append(f"NOT {_hidden_row(release)}")
    if spec.name == "v_provenance" and release.hidden:
        cols["candidates"] = cols["agreeing"] = "CAST(NULL AS INTEGER)"
    if spec.name == "v_conflict" and release.hidden_departments:
        codes = ", ".join(_q(c) for c in sorted(release.hidden_departments))
        where.append(f"authority_department NOT IN ({codes})")
    if spec.name == "v_relationship" and release.hidden:
        where.append(f"person_master_id IN ({_visible_ids(release, 'person')})")
    if spec.name == "v_person_relationship" and release.hidden:  # both persons must be shown
        visible = _visible_ids(release, "person")
        where.append(f"person_master_id IN ({visible}) AND related_master_id IN ({visible})")
    if spec.name == "v_id_event" and release.hidden:
        where.append(
            f"NOT (entity = 'person' AND master_id IN (SELECT master_id FROM {person_table.name})"
            f" AND master_id NOT IN ({_visible_ids(release, 'person')}))"
        )
    select = ", ".join(f"{e} AS {c}" if e != c else c for c, e in cols.items())
    where_sql = f" WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT {select}{_CARRY} FROM {name}{where_sql}"


def views_sql(dialect: Dialect, release: Release | None = None) -> list[str]:
    """CREATE VIEW statements for every view, masked and full (idempotent on PostgreSQL)."""
    create = "CREATE OR REPLACE VIEW" if dialect == "postgresql" else "CREATE VIEW"
    out = []
    for spec in VIEWS:
        masked = view_select(spec, dialect, masked=True, release=release)
        out.append(f"{create} {spec.name} AS {masked}")
        out.append(f"{create} {spec.full_name} AS {view_select(spec, dialect, masked=False)}")
    return out
