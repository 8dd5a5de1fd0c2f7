"""The sample city's six departments: their tables, naming styles, formats and dirt.

Each department renders its copy of a true person or enterprise as rows of its own table and
labels every piece of dirt it plants, so later stages can be scored against exact counts.
"""

from __future__ import annotations

import datetime as dt
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from etl.sample_city import dirt, hard_cases, pools
from etl.sample_city.entities import Enterprise, Person
from fields import divisions, identifiers

Row = dict[str, Any]
REVIEW_BAND_SHARE = 0.025  # of 卫健 rows (birth day ≤ 12): ~0.9 %, under its 99 % sex completeness


@dataclass
class Rendered:
    """One source row, the true entity it describes, and the dirt planted in it."""

    row: Row
    entity_id: str
    dirt: list[tuple[str, str]] = field(default_factory=list)  # (column, kind)


@dataclass
class World:
    """What a department may look up while rendering: the true city and the night's clock."""

    persons: dict[str, Person]
    enterprises: dict[str, Enterprise]
    as_of: dt.date
    review_band: bool = False  # plant hard cases: rows the model can only half decide
    hard_cases: bool = False  # render the persons of etl.sample_city.hard_cases as such

    def stamp(self, rng: random.Random, *, since_days: int = 3 * 365) -> dt.datetime:
        """A past modification time, at most ``since_days`` before the city's date."""
        start = dt.datetime.combine(self.as_of, dt.time()) - dt.timedelta(days=since_days)
        return start + dt.timedelta(seconds=rng.randrange(since_days * 86400))


class Department:
    """Base: one table; subclasses say which entities they hold and how they write them."""

    code: str
    title: str
    entity: str  # person | enterprise
    table_name: str
    key: str

    def __init__(self) -> None:
        self.metadata = sa.MetaData()
        self.table = sa.Table(self.table_name, self.metadata, *self.columns())

    def columns(self) -> list[sa.Column[Any]]:
        """The table's columns, in the department's own naming style."""
        raise NotImplementedError

    def render(self, rng: random.Random, world: World, entity: Any) -> list[Rendered]:
        """This department's rows for one true entity (none if it does not know it)."""
        raise NotImplementedError

    def change_column(self) -> str:
        """The column that moves whenever a row changes."""
        raise NotImplementedError

    def stamp_value(self, when: dt.datetime) -> Any:
        """``when`` in the change column's own type and format."""
        return when


def _vc(name: str, n: int = 64, **kw: Any) -> sa.Column[Any]:
    return sa.Column(name, sa.String(n), **kw)


class Gongan(Department):
    """公安 population registry (pinyin abbreviations); authority for identity and household."""

    code, title, entity, table_name, key = "gongan", "市公安局", "person", "t_rk_jbxx", "rkbh"

    def columns(self) -> list[sa.Column[Any]]:
        return [
            _vc("rkbh", 20, primary_key=True),
            _vc("xm", 30),
            _vc("sfzh", 18),
            _vc("xb", 1),
            _vc("csrq", 8),
            _vc("mz", 2),
            _vc("hjdz", 200),
            _vc("hjzt", 2),
            _vc("gxsj", 14),
            _vc("cym", 30),
        ]

    def change_column(self) -> str:
        return "gxsj"

    def stamp_value(self, when: dt.datetime) -> str:
        return when.strftime("%Y%m%d%H%M%S")

    def row(self, p: Person, address: str, when: dt.datetime) -> Row:
        """The registry's row for ``p``."""
        return {
            "xm": p.name,
            "sfzh": p.id_number,
            "xb": "1" if p.sex == "男" else "2",
            "csrq": p.birth_date.strftime("%Y%m%d"),
            "mz": p.ethnicity_code,
            "hjdz": address,
            "hjzt": "10" if p.status == "正常" else "20",
            "gxsj": self.stamp_value(when),
            "cym": p.former_name,
        }

    def render(self, rng: random.Random, world: World, p: Person) -> list[Rendered]:
        if p.hard_case == "namesake_same_birth":  # known to a hospital only
            return []
        if rng.random() < 0.03:  # registered in another city: unknown to this registry
            return []
        out = [Rendered(self.row(p, p.address, world.stamp(rng)), p.person_id)]
        if rng.random() < 0.01:  # a second, older registration never cancelled
            old = self.row(p, p.address, world.stamp(rng, since_days=3650))
            out.append(Rendered(old, p.person_id, [("rkbh", "duplicate_row")]))
        return out


class Renshe(Department):
    """人社 social insurance (English names): one row per insurance type, employer credit code."""

    code, title, entity, table_name, key = (
        "renshe",
        "市人力资源和社会保障局",
        "person",
        "insured_person",
        "person_id",
    )

    def columns(self) -> list[sa.Column[Any]]:
        return [
            sa.Column("person_id", sa.Integer, primary_key=True, autoincrement=False),
            _vc("full_name", 30),
            _vc("id_no", 40),
            _vc("gender", 2),
            sa.Column("birth_date", sa.Date),
            _vc("mobile", 60),
            _vc("employer_uscc", 18),
            _vc("insurance_type", 20),
            sa.Column("last_modified", sa.DateTime),
        ]

    def change_column(self) -> str:
        return "last_modified"

    def render(self, rng: random.Random, world: World, p: Person) -> list[Rendered]:
        age = (world.as_of - p.birth_date).days // 365
        retired = age > 62 and rng.random() < 0.5
        if p.employer_id is None and not retired:
            return []
        legacy_id = p.birth_date.year < 2000 and rng.random() < 0.12
        typo = dirt.name_typo(rng, p.name) if rng.random() < 0.05 else None
        stale_phone = p.previous_phone is not None and rng.random() < 0.5
        employer = world.enterprises[p.employer_id].uscc if p.employer_id else None
        out = []
        for kind in pools.INSURANCE_TYPES[: rng.randint(1, 3)]:
            planted: list[tuple[str, str]] = []
            id_no = identifiers.downgrade_id18(p.id_number) if legacy_id else p.id_number
            if legacy_id:
                planted.append(("id_no", "legacy_15_digit_id"))
            name = p.name
            if typo:
                name = typo[0]
                planted.append(("full_name", typo[1]))
            phone = p.previous_phone if stale_phone else p.phone
            if stale_phone:
                planted.append(("mobile", "stale_value"))
            mobile = dirt.phone_format(rng, phone) if phone else None
            if mobile and p.landline and rng.random() < 0.3:
                mobile = f"{mobile}/{p.landline}"
            if rng.random() < 0.03:
                id_no = dirt.fullwidth(id_no)
                planted.append(("id_no", "fullwidth_digits"))
            emp = employer
            if emp and rng.random() < 0.01 and (damaged := dirt.excel_damage(emp)):
                emp = damaged
                planted.append(("employer_uscc", "excel_damaged_code"))
            row = {
                "full_name": name,
                "id_no": id_no,
                "gender": p.sex,
                "birth_date": p.birth_date,
                "mobile": mobile,
                "employer_uscc": emp,
                "insurance_type": kind,
                "last_modified": world.stamp(rng),
            }
            out.append(Rendered(row, p.person_id, planted))
        return out


class Minzheng(Department):
    """民政 social assistance (Chinese names): traditional script, missing IDs, short addresses."""

    code, title, entity, table_name, key = (
        "minzheng",
        "市民政局",
        "person",
        "社会救助对象",
        "对象编号",
    )

    def columns(self) -> list[sa.Column[Any]]:
        return [
            _vc("对象编号", 20, primary_key=True),
            _vc("姓名", 30),
            _vc("身份证号", 18),
            _vc("性别", 2),
            _vc("出生日期", 20),
            _vc("联系电话", 40),
            _vc("居住地址", 200),
            _vc("救助类型", 20),
            _vc("更新时间", 19),
        ]

    def change_column(self) -> str:
        return "更新时间"

    def stamp_value(self, when: dt.datetime) -> str:
        return when.strftime("%Y-%m-%d %H:%M:%S")

    def render(self, rng: random.Random, world: World, p: Person) -> list[Rendered]:
        age = (world.as_of - p.birth_date).days // 365
        hard = world.hard_cases and p.hard_case in ("lunar_birth_date", "renamed")
        if p.hard_case == "namesake_same_birth":
            return []
        if not hard and rng.random() >= (0.2 if age >= 60 else 0.07):
            return []
        copies = 2 if rng.random() < 0.02 else 1
        out = []
        for i in range(copies):
            planted: list[tuple[str, str]] = [("对象编号", "duplicate_row")] if i else []
            name = p.name
            if rng.random() < 0.3:
                name = dirt.traditional(name)
                if name != p.name:
                    planted.append(("姓名", "traditional_chinese"))
            id_number: str | None = p.id_number
            if rng.random() < 0.15:
                id_number = None
                planted.append(("身份证号", "missing"))
            division, detail = p.division_code, p.address_detail
            if p.previous_address and rng.random() < 0.5:
                division, detail = p.previous_address
                planted.append(("居住地址", "stale_value"))
            if rng.random() < 0.6:
                address = dirt.short_address(rng, division, detail)
                planted.append(("居住地址", "abbreviated_address"))
            else:
                address = Person(
                    **{**p.__dict__, "division_code": division, "address_detail": detail}
                ).address
            if rng.random() < 0.3:
                address = dirt.traditional(address)
            phone = p.landline or p.phone
            side = dirt.side_rng(p.id_number, "minzheng", i)
            stale_phone = not p.landline and p.previous_phone and side.random() < 0.5
            if stale_phone:  # an assistance file not touched since the number changed
                phone = p.previous_phone
                planted.append(("联系电话", "stale_value"))
            short = dirt.unit_shorthand(division, detail)
            if short and side.random() < 0.15:
                address = short
                planted.append(("居住地址", "unit_shorthand_address"))
            b = p.birth_date
            if hard:  # an old file: no ID number, the former name, the lunar birth date
                id_number = None
                planted[:] = [lab for lab in planted if lab[0] not in ("身份证号", "姓名")]
                planted.append(("身份证号", "missing"))
                if p.former_name:
                    name = p.former_name
                    planted.append(("姓名", "former_name"))
                if p.lunar_birth_date:
                    b = p.lunar_birth_date
                    planted.append(("出生日期", "lunar_birth_date"))
            row = {
                "姓名": name,
                "身份证号": id_number,
                "性别": p.sex,
                "出生日期": f"{b.year}年{b.month}月{b.day}日",
                "联系电话": phone,
                "居住地址": address,
                "救助类型": rng.choice(pools.ASSISTANCE_TYPES),
                "更新时间": self.stamp_value(world.stamp(rng)),
            }
            if stale_phone:
                row["更新时间"] = self.stamp_value(dirt.long_ago(world.as_of, side))
            out.append(Rendered(row, p.person_id, planted))
        return out


class Weijian(Department):
    """卫健 health records (upper-case English): missing IDs, bad check digits, swapped dates."""

    code, title, entity, table_name, key = (
        "weijian",
        "市卫生健康委员会",
        "person",
        "PATIENT_INFO",
        "PATIENT_ID",
    )

    def columns(self) -> list[sa.Column[Any]]:
        return [
            _vc("PATIENT_ID", 20, primary_key=True),
            _vc("PATIENT_NAME", 30),
            _vc("ID_CARD_NO", 18),
            _vc("SEX_CODE", 1),
            _vc("BIRTH_DAY", 10),
            _vc("TEL", 40),
            _vc("HOME_ADDR", 200),
            _vc("ORG_NAME", 40),
            sa.Column("UPDATE_TIME", sa.BigInteger),
        ]

    def change_column(self) -> str:
        return "UPDATE_TIME"

    def stamp_value(self, when: dt.datetime) -> int:
        # epoch seconds of Beijing time, as the hospital system stores it
        return int((when - dt.datetime(1970, 1, 1, 8)).total_seconds())

    def render(self, rng: random.Random, world: World, p: Person) -> list[Rendered]:
        hard = world.hard_cases and p.hard_case in ("minor_guardian_id", "namesake_same_birth")
        if not hard and rng.random() >= 0.75:
            return []
        out = []
        for org in rng.sample(pools.HOSPITALS, rng.choices((1, 2, 3, 4), (40, 30, 20, 10))[0]):
            planted: list[tuple[str, str]] = []
            id_number: str | None = p.id_number
            if rng.random() < 0.4:
                id_number = None
                planted.append(("ID_CARD_NO", "missing"))
            elif rng.random() < 0.03:
                id_number = dirt.wrong_digit(rng, p.id_number)
                planted.append(("ID_CARD_NO", "bad_check_digit"))
            b = p.birth_date
            roll = rng.random()
            if roll < 0.02 and b.day <= 12 and b.day != b.month:
                birth = f"{b.year}/{b.day}/{b.month}"
                planted.append(("BIRTH_DAY", "day_month_swapped"))
            elif roll < 0.03:
                birth = dirt.excel_serial(b)
                planted.append(("BIRTH_DAY", "excel_serial_date"))
            else:
                birth = f"{b.year}/{b.month}/{b.day}"
            name = p.name
            if rng.random() < 0.02 and (typo := dirt.name_typo(rng, p.name)):
                name = typo[0]
                planted.append(("PATIENT_NAME", typo[1]))
            phone = dirt.phone_format(rng, p.phone) if p.phone else p.landline
            address = (
                p.address
                if rng.random() < 0.5
                else dirt.short_address(rng, p.division_code, p.address_detail)
            )
            row = {
                "PATIENT_NAME": name,
                "ID_CARD_NO": id_number,
                "SEX_CODE": "M" if p.sex == "男" else "F",
                "BIRTH_DAY": birth,
                "TEL": phone,
                "HOME_ADDR": address,
                "ORG_NAME": org,
                "UPDATE_TIME": self.stamp_value(world.stamp(rng)),
            }
            swappable = p.birth_date.day <= 12 and p.birth_date.day != p.birth_date.month
            if world.hard_cases and p.hard_case:
                self._planted_case(world, p, row, planted)
            elif world.review_band and swappable and rng.random() < REVIEW_BAND_SHARE:
                self._hard_case(rng, p, row, planted)
            else:
                self._golden_case(world, dirt.side_rng(p.id_number, org), p, row, planted)
            out.append(Rendered(row, p.person_id, planted))
        return out

    def _golden_case(
        self, world: World, side: random.Random, p: Person, row: Row, planted: list[Any]
    ) -> None:
        """What makes survivorship work without an authority: an old visit's row keeps the
        number the person had then (and an old change stamp), and a clerk writes the flat as
        ``融侨锦江28-1606``, the street dropped. Drawn from ``side``, not the city's stream."""
        if p.phone and p.previous_phone and side.random() < 0.5:
            row["TEL"] = dirt.phone_format(side, p.previous_phone)
            row["UPDATE_TIME"] = self.stamp_value(dirt.long_ago(world.as_of, side))
            planted.append(("TEL", "stale_value"))
        short = dirt.unit_shorthand(p.division_code, p.address_detail)
        if short and side.random() < 0.15:
            row["HOME_ADDR"] = short
            planted.append(("HOME_ADDR", "unit_shorthand_address"))

    def _planted_case(self, world: World, p: Person, row: Row, planted: list[Any]) -> None:
        """The hospital's row of a person of :mod:`etl.sample_city.hard_cases`: a child under
        its guardian's ID number and phone, a namesake without ID number, a renamed person
        under the former name."""
        if p.hard_case == "minor_guardian_id" and p.guardian_id:
            guardian = world.persons[p.guardian_id]
            row["ID_CARD_NO"], row["TEL"] = guardian.id_number, guardian.phone
            planted[:] = [lab for lab in planted if lab[0] != "ID_CARD_NO"]
            planted.append(("ID_CARD_NO", "guardian_id"))
        elif p.hard_case == "namesake_same_birth":
            row["ID_CARD_NO"] = None
            planted[:] = [lab for lab in planted if lab[0] != "ID_CARD_NO"]
            planted.append(("ID_CARD_NO", "missing"))
        elif p.hard_case == "renamed" and p.former_name:
            row["PATIENT_NAME"] = p.former_name
            planted[:] = [lab for lab in planted if lab[0] != "PATIENT_NAME"]
            planted.append(("PATIENT_NAME", "former_name"))

    def _hard_case(self, rng: random.Random, p: Person, row: Row, planted: list[Any]) -> None:
        """A walk-in patient's row the model can only half decide: no ID number and no sex
        code, a relative's mobile, the name misheard, another street of the same district
        (where they work), day and month of birth swapped. Its pairs with the person's other
        rows score between ``review`` and ``auto_link``, so a steward has real pairs to decide.
        Only for birth dates whose day and month can be swapped. The truth marks the row as a
        walk-in (``ID_CARD_NO: walk_in``, on the column no night fixes), so evaluation can
        score these rows as a kind of their own."""
        b = p.birth_date
        row["ID_CARD_NO"] = None
        row["SEX_CODE"] = None
        row["TEL"] = f"1{rng.choice('3589')}{rng.randrange(10**9):09d}"
        row["BIRTH_DAY"] = f"{b.year}/{b.day}/{b.month}"
        keep = ("ID_CARD_NO", "PATIENT_NAME", "BIRTH_DAY")
        planted[:] = [lab for lab in planted if lab[0] not in keep]
        planted += [
            ("ID_CARD_NO", "missing"),
            ("SEX_CODE", "missing"),
            ("TEL", "stale_value"),
            ("BIRTH_DAY", "day_month_swapped"),
            ("ID_CARD_NO", "walk_in"),
        ]
        if typo := dirt.name_typo(rng, p.name):
            row["PATIENT_NAME"] = typo[0]
            planted.append(("PATIENT_NAME", typo[1]))
        street = rng.choice(pools.STREETS[p.division_code])
        detail = f"{street}{rng.randrange(1, 400)}号"
        row["HOME_ADDR"] = dirt.short_address(rng, p.division_code, detail)
        planted.append(("HOME_ADDR", "stale_value"))


class Shichang(Department):
    """市场监管 business registry (pinyin abbreviations); authority for enterprise identity."""

    code, title, entity, table_name, key = (
        "shichang",
        "市市场监督管理局",
        "enterprise",
        "t_qy_djxx",
        "nbxh",
    )

    def columns(self) -> list[sa.Column[Any]]:
        return [
            _vc("nbxh", 20, primary_key=True),
            _vc("tyshxydm", 18),
            _vc("zch", 15),
            _vc("qymc", 100),
            _vc("fddbr", 30),
            _vc("fddbrzjhm", 18),
            _vc("zs", 200),
            sa.Column("zczb", sa.Numeric(18, 4)),
            sa.Column("clrq", sa.Date),
            _vc("djzt", 10),
            sa.Column("gxsj", sa.DateTime),
        ]

    def change_column(self) -> str:
        return "gxsj"

    def row(self, world: World, e: Enterprise, when: dt.datetime) -> Row:
        """The registry's row for ``e``; an enterprise hard case's shows no 注册号 any more."""
        rep = world.persons[e.legal_rep_id]
        return {
            "tyshxydm": e.uscc,
            "zch": None if world.hard_cases and e.hard_case else e.reg_no,
            "qymc": e.name,
            "fddbr": rep.name,
            "fddbrzjhm": rep.id_number,
            "zs": e.address,
            "zczb": Decimal(f"{e.registered_capital:.4f}"),
            "clrq": e.established_date,
            "djzt": e.status,
            "gxsj": when,
        }

    def render(self, rng: random.Random, world: World, e: Enterprise) -> list[Rendered]:
        return [Rendered(self.row(world, e, world.stamp(rng)), e.enterprise_id)]


class Shuiwu(Department):
    """税务 taxpayer registry (Chinese names): legacy identifiers, name variants, rep by name."""

    code, title, entity, table_name, key = (
        "shuiwu",
        "市税务局",
        "enterprise",
        "纳税人登记信息",
        "登记序号",
    )

    def columns(self) -> list[sa.Column[Any]]:
        return [
            sa.Column("登记序号", sa.Integer, primary_key=True, autoincrement=False),
            _vc("社会信用代码", 18),
            _vc("工商注册号", 15),
            _vc("组织机构代码", 10),
            _vc("纳税人名称", 100),
            _vc("法定代表人", 30),
            _vc("生产经营地址", 200),
            _vc("登记日期", 10),
            _vc("纳税人状态", 10),
            sa.Column("修改时间", sa.DateTime),
            _vc("纳税人识别号", 20),  # credit code, 注册号 or old 15-character tax number
        ]

    def change_column(self) -> str:
        return "修改时间"

    def render(self, rng: random.Random, world: World, e: Enterprise) -> list[Rendered]:
        if rng.random() >= 0.92:
            return []
        copies = 2 if rng.random() < 0.01 else 1
        out = []
        for i in range(copies):
            planted: list[tuple[str, str]] = [("登记序号", "duplicate_row")] if i else []
            uscc: str | None = e.uscc
            reg_no = org = None
            if e.reg_no and rng.random() < 0.3:
                uscc = None
                if rng.random() < 0.6:
                    reg_no = e.reg_no
                    planted.append(("社会信用代码", "legacy_registration_number"))
                else:
                    org = e.org_code if rng.random() < 0.5 else f"{e.org_code[:8]}-{e.org_code[8]}"
                    planted.append(("社会信用代码", "legacy_organization_code"))
            elif rng.random() < 0.02 and (damaged := dirt.excel_damage(e.uscc)):
                uscc = damaged
                planted.append(("社会信用代码", "excel_damaged_code"))
            name = e.name
            if rng.random() < 0.3:
                name, kind = dirt.enterprise_name_variant(rng, e.name, e.branch_suffix)
                if kind:
                    planted.append(("纳税人名称", kind))
            d = e.established_date
            fmt = rng.randrange(3)
            registered = (
                d.isoformat()
                if fmt == 0
                else f"{d.year}.{d.month}.{d.day}"
                if fmt == 1
                else dirt.excel_serial(d)
            )
            status = {"存续": "正常", "在业": "正常", "吊销": "非正常", "注销": "注销"}[e.status]
            row = {
                "社会信用代码": uscc,
                "工商注册号": reg_no,
                "组织机构代码": org,
                "纳税人名称": name,
                "法定代表人": world.persons[e.legal_rep_id].name,
                "生产经营地址": dirt.short_address(rng, e.division_code, e.address_detail),
                "登记日期": registered,
                "纳税人状态": status,
                "修改时间": world.stamp(rng),
                "纳税人识别号": _taxpayer_number(e, legacy=uscc is None),
            }
            if world.hard_cases and e.hard_case:
                self._hard_case(world, e, row, planted)
            out.append(Rendered(row, e.enterprise_id, planted))
        return out

    @staticmethod
    def _hard_case(world: World, e: Enterprise, row: Row, planted: list[Any]) -> None:
        """An enterprise of :mod:`etl.sample_city.hard_cases`: known only by its 注册号, under
        the operator's name (an individual business) or at its operating address elsewhere."""
        row.update({"社会信用代码": None, "工商注册号": e.reg_no, "组织机构代码": None})
        row["纳税人识别号"] = e.reg_no
        planted[:] = [c for c in planted if c[0] != "社会信用代码"]
        planted.append(("社会信用代码", "legacy_registration_number"))
        if e.hard_case == "individual_business":
            row["纳税人名称"] = world.persons[e.legal_rep_id].name
            planted[:] = [c for c in planted if c[0] != "纳税人名称"]
            planted.append(("纳税人名称", "operator_name"))
        elif e.hard_case == "operating_address":
            division, detail = hard_cases.operating_address(e)
            district = divisions.lookup(division)
            assert district is not None
            row["生产经营地址"] = f"{district.name}{detail}"
            planted.append(("生产经营地址", "operating_address"))


def _taxpayer_number(e: Enterprise, *, legacy: bool) -> str:
    """The taxpayer number (纳税人识别号): the credit code since the 2015 reform; before it, the
    old tax number (division + organization code), the 注册号 or the bare organization code, a
    third each by the enterprise's ID (drawn from no generator: the other columns stay as they
    were)."""
    if not legacy or e.reg_no is None:
        return e.uscc
    return (e.division_code + e.org_code, e.reg_no, e.org_code)[
        zlib.crc32(e.enterprise_id.encode()) % 3
    ]


GONGAN, RENSHE, MINZHENG = Gongan(), Renshe(), Minzheng()
WEIJIAN, SHICHANG, SHUIWU = Weijian(), Shichang(), Shuiwu()
DEPARTMENTS: tuple[Department, ...] = (GONGAN, RENSHE, MINZHENG, WEIJIAN, SHICHANG, SHUIWU)


def by_code(code: str) -> Department:
    """The department with this code."""
    for d in DEPARTMENTS:
        if d.code == code:
            return d
    raise KeyError(code)


KEY_PREFIXES: dict[str, str] = {
    "gongan": "RK3501",
    "minzheng": "MZ",
    "weijian": "H",
    "shichang": "3501",
}
"""The text before the 12-digit number of a department's keys (the others use bare integers)."""


def key_number(dept: Department, key: Any) -> int:
    """The running number of a key :func:`key_factory` made.

    >>> key_number(SHICHANG, "3501000123456789")
    123456789
    """
    prefix = KEY_PREFIXES.get(dept.code)
    text = str(key)
    return int(text[len(prefix) :] if prefix and text.startswith(prefix) else text)


def key_factory(dept: Department, start: int) -> Iterator[Any]:
    """Primary keys in the department's own style, from a seeded starting number."""
    n = start
    prefix = KEY_PREFIXES.get(dept.code)
    while True:
        n += 1
        yield n if prefix is None else f"{prefix}{n:012d}"
