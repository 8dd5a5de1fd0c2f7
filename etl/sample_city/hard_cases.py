"""The hard cases of Chinese person data, planted in the sample city (``hard_cases=True``).

Each planted person carries its kind in ``Person.hard_case`` (kept in the truth), so linkage can
be scored per kind (``master_data.evaluate``):

- ``minor_guardian_id``: a child (0–12) whom hospitals file under a guardian's ID number and
  phone; the registry (公安) knows the child by its own number. One guardian in three has two
  such children, half of them twins.
- ``lunar_birth_date``: an elderly person whose 民政 row, without ID number, gives the birth
  date of the lunar calendar written as if it were a solar date.
- ``renamed``: a person who changed name (改名); the registry keeps the former name (曾用名),
  older 民政 and 卫健 rows still hold it.
- ``namesake_same_birth``: someone with the same name, birth date and sex as another person
  who lives in another district, known to a hospital only, without ID number.

And of enterprises (``Enterprise.hard_case``), each known to tax (税务) only by its 注册号, which
the registry's row (市场监管) no longer shows, so name, legal representative, address and
establishment date must link them:

- ``individual_business``: a 个体工商户 registered as ``福州市鼓楼区林秀英小吃店`` whose tax
  row carries the operator's name (``林秀英``) as the taxpayer's name.
- ``operating_address``: a company whose tax row holds its operating address (生产经营地址) in
  another district than its registered domicile (住所).

>>> lunar_as_written(dt.date(1950, 2, 17))
datetime.date(1950, 1, 1)
"""

from __future__ import annotations

import datetime as dt
import random

from lunardate import LunarDate

from etl.sample_city import pools
from etl.sample_city.dirt import side_rng
from etl.sample_city.entities import CityBuilder, Enterprise, Person
from fields import divisions

KINDS = ("minor_guardian_id", "lunar_birth_date", "renamed", "namesake_same_birth")
SHARE = 0.01
"""Planted cases of each kind, per person of the city."""
ENTERPRISE_KINDS = ("individual_business", "operating_address")
ENTERPRISE_SHARE = 0.02
"""Planted cases of each enterprise kind, per enterprise of the city."""
SHOPS = ("小吃店", "便利店", "五金店", "理发店", "水果店", "早餐店", "副食店", "服装店", "茶叶店")


def lunar_as_written(day: dt.date) -> dt.date | None:
    """The lunar date of ``day`` written as a solar date (the leap flag lost), or None when
    that is no date (the 30th of a lunar month into a 29- or 30-day solar month: 2/30)."""
    lunar = LunarDate.from_solar_date(day.year, day.month, day.day)
    try:
        return dt.date(lunar.year, lunar.month, lunar.day)
    except ValueError:
        return None


def _age(p: Person, as_of: dt.date) -> int:
    return (as_of - p.birth_date).days // 365


def _surname(name: str) -> str:
    return name[:2] if name.startswith("欧阳") else name[0]


def _child(b: CityBuilder, guardian: Person, born: dt.date) -> Person:
    """A child of ``guardian``: the guardian's surname and home, an ID number of its own."""
    child = b.person(born=born)
    child.name = _surname(guardian.name) + b.given_name(child.sex)
    child.division_code, child.address_detail = guardian.division_code, guardian.address_detail
    child.phone, child.landline = None, guardian.landline
    child.guardian_id, child.hard_case = guardian.person_id, "minor_guardian_id"
    return child


def _minors(rng: random.Random, b: CityBuilder, guardians: list[Person]) -> list[Person]:
    out: list[Person] = []
    for g in guardians:
        born = b.as_of - dt.timedelta(days=rng.randrange(30, 12 * 365))
        first = _child(b, g, born)
        out.append(first)
        roll = rng.random()
        if roll < 1 / 6:  # twins under one guardian's number
            twin = b.twin(first)
            twin.phone, twin.guardian_id, twin.hard_case = None, g.person_id, "minor_guardian_id"
            out.append(twin)
        elif roll < 1 / 3:  # a brother or sister, born in another year
            later = born + dt.timedelta(days=rng.randrange(400, 1500))
            out.append(_child(b, g, min(later, b.as_of - dt.timedelta(days=10))))
    return out


def _namesake(b: CityBuilder, of: Person) -> Person:
    """Same name, birth date and sex as ``of``; another district, an ID number of its own."""
    q = b.person(born=of.birth_date)
    if q.sex != of.sex:
        b.ids.used.discard(q.id_number[:17])
        q.sex = of.sex
        q.id_number = b.ids.issue(b.rng, q.id_number[:6], of.birth_date, of.sex)
    q.name = of.name
    while q.division_code == of.division_code:
        q.division_code = b.rng.choice(b.districts)
    q.address_detail = b.address_detail(q.division_code)
    group = f"same-birth-{of.person_id}"
    of.namesake_group = q.namesake_group = group
    q.hard_case = "namesake_same_birth"
    return q


def plant(rng: random.Random, b: CityBuilder, persons: list[Person]) -> list[Person]:
    """Mark some of ``persons`` as hard cases and draw the new ones (children, namesakes),
    returned to be added to the city. ``b`` is the builder that drew ``persons``."""
    n = max(2, round(len(persons) * SHARE))
    plain = [p for p in persons if not (p.twin_of or p.namesake_group) and p.status == "正常"]
    adults = [p for p in plain if 25 <= _age(p, b.as_of) <= 50]
    picked = rng.sample(adults, min(len(adults), 3 * n))
    guardians, renamed, twins_of = picked[:n], picked[n : 2 * n], picked[2 * n :]
    new = _minors(rng, b, guardians)
    for p in renamed:
        former = _surname(p.name) + b.given_name(p.sex)
        while former == p.name:
            former = _surname(p.name) + b.given_name(p.sex)
        p.former_name, p.hard_case = former, "renamed"
    new += [_namesake(b, p) for p in twins_of]
    elderly = [p for p in plain if p.birth_date.year <= 1960 and p.hard_case is None]
    for p in rng.sample(elderly, min(len(elderly), n)):
        written = lunar_as_written(p.birth_date)
        if written is not None and written != p.birth_date:
            p.lunar_birth_date, p.hard_case = written, "lunar_birth_date"
    return new


def plant_enterprises(
    rng: random.Random, b: CityBuilder, enterprises: list[Enterprise], persons: list[Person]
) -> None:
    """Mark some head offices with a 注册号 (established before the credit-code reform) as
    enterprise hard cases; an individual business takes its operator's name into its own."""
    reps = {p.person_id: p for p in persons}
    parents = {e.parent_id for e in enterprises if e.parent_id}
    plain = [
        e
        for e in enterprises
        if e.reg_no and e.parent_id is None and e.enterprise_id not in parents
    ]
    n = max(2, round(len(enterprises) * ENTERPRISE_SHARE))
    picked = rng.sample(plain, min(len(plain), 2 * n))
    for e in picked[:n]:
        district = divisions.lookup(e.division_code)
        assert district is not None
        e.name = f"福州市{district.name}{reps[e.legal_rep_id].name}{rng.choice(SHOPS)}"
        e.trade_name, e.industry, e.legal_form = "", "", "个体工商户"
        e.registered_capital, e.hard_case = 0.0, "individual_business"
    for e in picked[n:]:
        e.hard_case = "operating_address"


def operating_address(e: Enterprise) -> tuple[str, str]:
    """The operating premises (division code, detail) of an ``operating_address`` case: in
    another district than the domicile, drawn from the enterprise's own generator so that every
    night renders the same one."""
    rng = side_rng(e.enterprise_id, "operating_address")
    division = rng.choice([d for d in sorted(pools.STREETS) if d != e.division_code])
    return division, f"{rng.choice(pools.STREETS[division])}{rng.randrange(1, 400)}号"
