"""The sample city's true population and enterprises: the ground truth departments copy from.

Everything is drawn from one ``random.Random`` seeded by the caller, never from today's date,
so the same seed gives the same city on any day.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
from dataclasses import dataclass, field

from etl.sample_city import pools
from fields import divisions, identifiers

CITY_PREFIX = "3501"
# The legal-person reform: credit codes issued from 2015-10-01; older firms also carry a
# 15-digit registration number and a 9-character organization code.
USCC_REFORM = dt.date(2015, 10, 1)
_ORG_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"


@dataclass
class Person:
    """A real person of the sample city (current true values)."""

    person_id: str
    name: str
    sex: str  # 男 / 女
    birth_date: dt.date
    id_number: str
    ethnicity_code: str
    ethnicity: str
    phone: str | None
    landline: str | None
    division_code: str  # where they live (GB/T 2260 county)
    address_detail: str
    employer_id: str | None = None
    status: str = "正常"  # 正常 / 死亡
    twin_of: str | None = None
    namesake_group: str | None = None
    # earlier values, which slower departments may still hold
    previous_address: tuple[str, str] | None = None
    previous_phone: str | None = None
    # the hard cases (etl.sample_city.hard_cases): which one, and what it needs
    hard_case: str | None = None
    guardian_id: str | None = None  # a minor's guardian, whose ID number hospitals file it under
    former_name: str | None = None  # 曾用名, still on older rows
    lunar_birth_date: dt.date | None = None  # the lunar birth date written as a solar date

    @property
    def address(self) -> str:
        """Full address: province + city + district + detail."""
        d = divisions.lookup(self.division_code)
        assert d is not None
        return f"{d.province}{d.prefecture or ''}{d.name}{self.address_detail}"


@dataclass
class Enterprise:
    """A real enterprise (or branch, or individual business) of the sample city."""

    enterprise_id: str
    name: str
    uscc: str
    reg_no: str | None
    org_code: str
    legal_rep_id: str  # person_id
    division_code: str
    address_detail: str
    registered_capital: float  # 万元
    established_date: dt.date
    status: str = "存续"  # 存续 / 在业 / 吊销 / 注销
    parent_id: str | None = None
    trade_name: str = ""
    industry: str = ""
    legal_form: str = ""
    branch_suffix: str = ""
    extras: dict[str, str] = field(default_factory=dict)
    # the hard cases (etl.sample_city.hard_cases): which one
    hard_case: str | None = None

    @property
    def address(self) -> str:
        """Full address."""
        d = divisions.lookup(self.division_code)
        assert d is not None
        return f"{d.province}{d.prefecture or ''}{d.name}{self.address_detail}"


def weighted(rng: random.Random, items: tuple[tuple[str, float], ...]) -> str:
    """One key of ``(key, weight)`` pairs."""
    return rng.choices([k for k, _ in items], weights=[w for _, w in items])[0]


@functools.cache
def _birth_divisions(year: int, local: bool) -> tuple[str, ...]:
    """County codes that existed in ``year``: the city's own, or anywhere in China."""
    prefix = CITY_PREFIX if local else ""
    return tuple(
        d.code
        for d in divisions.all_divisions()
        if d.level == "county"
        and d.code.startswith(prefix)
        and d.valid_in(year)
        and d.name not in ("市辖区", "县", "市区", "郊区")
        and d.code[:2] not in ("71", "81", "82")  # Taiwan, Hong Kong, Macau issue no GB 11643 IDs
    )


class IdRegistry:
    """Issues unique ID numbers; twins get consecutive sequence numbers."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def issue(self, rng: random.Random, division: str, birth: dt.date, sex: str) -> str:
        """A fresh valid 18-digit ID whose order digit's parity matches ``sex``."""
        stem = division + birth.strftime("%Y%m%d")
        for _ in range(1000):
            seq = rng.randrange(0, 500) * 2 + (1 if sex == "男" else 0)
            first17 = f"{stem}{seq:03d}"
            if first17 not in self.used:
                self.used.add(first17)
                return first17 + identifiers.id_check_digit(first17)
        raise RuntimeError(f"no free ID sequence for {stem}")

    def sibling(self, id_number: str, sex: str) -> str:
        """The next free sequence number after a twin's (same division and birth date)."""
        seq = int(id_number[14:17])
        while True:
            seq = seq + 1
            if (seq % 2 == 1) != (sex == "男"):
                continue
            first17 = f"{id_number[:14]}{seq % 1000:03d}"
            if first17 not in self.used:
                self.used.add(first17)
                return first17 + identifiers.id_check_digit(first17)


class CityBuilder:
    """Draws people and enterprises; keeps the registries that make identifiers unique."""

    def __init__(self, rng: random.Random, as_of: dt.date) -> None:
        self.rng = rng
        self.as_of = as_of
        self.ids = IdRegistry()
        self.usccs: set[str] = set()
        self.phones: set[str] = set()
        self.person_seq = 0
        self.enterprise_seq = 0
        self.districts = sorted(pools.STREETS)

    # persons ---------------------------------------------------------------------------
    def given_name(self, sex: str) -> str:
        """One or two given-name characters."""
        chars = pools.GIVEN_MALE if sex == "男" else pools.GIVEN_FEMALE
        n = 1 if self.rng.random() < 0.25 else 2
        return "".join(self.rng.choice(chars) for _ in range(n))

    def mobile(self) -> str:
        """A unique mobile number."""
        while True:
            number = self.rng.choice(pools.MOBILE_PREFIXES) + f"{self.rng.randrange(10**8):08d}"
            if number not in self.phones:
                self.phones.add(number)
                return number

    def landline(self) -> str:
        """A Fuzhou landline (0591 + 8 digits)."""
        return f"0591-{self.rng.randrange(2, 9)}{self.rng.randrange(10**7):07d}"

    def address_detail(self, division: str) -> str:
        """Street, number, estate, building and room."""
        r = self.rng
        street = r.choice(pools.STREETS[division])
        if r.random() < 0.6:
            estate = r.choice(pools.ESTATES)
            room = f"{r.randrange(1, 33)}{r.randrange(1, 9):02d}"
            return f"{street}{r.randrange(1, 400)}号{estate}{r.randrange(1, 30)}座{room}室"
        return f"{street}{r.randrange(1, 400)}号"

    def birth_date(self) -> dt.date:
        """Ages 0–95 at the city's start date, weighted to working age."""
        r = self.rng
        age = min(95, max(0, int(r.triangular(0, 95, 38))))
        return self.as_of - dt.timedelta(days=age * 365 + r.randrange(365))

    def next_person_id(self) -> str:
        """``P0000001``…"""
        self.person_seq += 1
        return f"P{self.person_seq:07d}"

    def person(self, *, born: dt.date | None = None) -> Person:
        """A new person with a unique, valid ID number."""
        r = self.rng
        sex = "男" if r.random() < 0.51 else "女"
        birth = born or self.birth_date()
        local = r.random() < 0.8
        division = r.choice(
            _birth_divisions(birth.year, local) or _birth_divisions(birth.year, False)
        )
        eth_code = weighted(r, tuple((c, w) for c, _, w in pools.ETHNICITIES))
        eth_name = next(n for c, n, _ in pools.ETHNICITIES if c == eth_code)
        age = (self.as_of - birth).days // 365
        home = r.choice(self.districts)
        return Person(
            person_id=self.next_person_id(),
            name=weighted(r, pools.SURNAMES) + self.given_name(sex),
            sex=sex,
            birth_date=birth,
            id_number=self.ids.issue(r, division, birth, sex),
            ethnicity_code=eth_code,
            ethnicity=eth_name,
            phone=self.mobile() if age >= 14 and r.random() < 0.92 else None,
            landline=self.landline() if r.random() < 0.15 else None,
            division_code=home,
            address_detail=self.address_detail(home),
        )

    def twin(self, of: Person) -> Person:
        """A twin: same surname, birth date, ID division and address; a different given name."""
        r = self.rng
        sex = "男" if r.random() < 0.5 else "女"
        surname = of.name[:2] if of.name.startswith("欧阳") else of.name[0]
        given = of.name[len(surname) :]
        if len(given) == 2 and r.random() < 0.6:  # twins often share a generation character
            pick = pools.GIVEN_MALE if sex == "男" else pools.GIVEN_FEMALE
            given = given[0] + r.choice([c for c in pick if c != given[1]])
        else:
            given = self.given_name(sex)
            while given == of.name[len(surname) :]:
                given = self.given_name(sex)
        return Person(
            person_id=self.next_person_id(),
            name=surname + given,
            sex=sex,
            birth_date=of.birth_date,
            id_number=self.ids.sibling(of.id_number, sex),
            ethnicity_code=of.ethnicity_code,
            ethnicity=of.ethnicity,
            phone=self.mobile() if of.phone else None,
            landline=of.landline,
            division_code=of.division_code,
            address_detail=of.address_detail,
            twin_of=of.person_id,
        )

    def namesake(self, name: str, year: int, group: str) -> Person:
        """A person with one of the most common names, born in a shared year."""
        born = dt.date(year, 1, 1) + dt.timedelta(days=self.rng.randrange(365))
        p = self.person(born=born)
        p.name = name
        # the name fixes the sex a registrar would expect; keep ID parity coherent with it
        female = name[-1] in pools.GIVEN_FEMALE
        if (p.sex == "女") != female:
            p.sex = "女" if female else "男"
            division = p.id_number[:6]
            self.ids.used.discard(p.id_number[:17])
            p.id_number = self.ids.issue(self.rng, division, born, p.sex)
        p.namesake_group = group
        return p

    # enterprises -----------------------------------------------------------------------
    def next_enterprise_id(self) -> str:
        """``E000001``…"""
        self.enterprise_seq += 1
        return f"E{self.enterprise_seq:06d}"

    def org8(self, legacy: bool) -> str:
        """The first 8 characters of an organization code: digits before the reform, MA… after."""
        r = self.rng
        if legacy:
            return f"{r.randrange(10**7, 10**8)}"
        return "MA" + "".join(r.choice(_ORG_CHARS) for _ in range(6))

    def enterprise(self, legal_rep: Person, *, parent: Enterprise | None = None) -> Enterprise:
        """A company (or a branch of ``parent``) with a unique, valid credit code."""
        r = self.rng
        established = self.as_of - dt.timedelta(days=r.randrange(1, 36 * 365))
        if parent is not None:
            established = max(established, parent.established_date + dt.timedelta(days=30))
        legacy = established < USCC_REFORM
        division = r.choice(self.districts)
        org_type = "1"
        while True:
            org8 = self.org8(legacy)
            code = identifiers.make_uscc("9", org_type, division, org8)
            if code not in self.usccs:
                self.usccs.add(code)
                break
        reg_no = None
        if legacy:
            first14 = f"{division}{r.randrange(10**7, 10**8)}"
            reg_no = first14 + identifiers.reg_no_check(first14)
        if parent is None:
            trade = "".join(r.sample(pools.TRADE_WORDS, 2))
            industry = r.choice(pools.INDUSTRIES)
            form = r.choice(pools.LEGAL_FORMS)
            style = r.random()
            if style < 0.7:
                name = f"福州{trade}{industry}{form}"
            elif style < 0.9:
                name = f"{trade}（福州）{industry}{form}"
            else:
                name = f"福建{trade}{industry}{form}"
            suffix = ""
        else:
            trade, industry, form = parent.trade_name, parent.industry, parent.legal_form
            district = divisions.lookup(division)
            assert district is not None
            suffix = f"{district.name[:-1]}分公司"
            name = parent.name + suffix
        capital = 0.0 if parent else float(r.choice((10, 50, 100, 200, 300, 500, 1000, 5000)))
        return Enterprise(
            enterprise_id=self.next_enterprise_id(),
            name=name,
            uscc=code,
            reg_no=reg_no,
            org_code=code[8:17],
            legal_rep_id=legal_rep.person_id,
            division_code=division,
            address_detail=self.address_detail(division),
            registered_capital=capital,
            established_date=established,
            status=r.choices(("存续", "在业", "吊销", "注销"), weights=(80, 12, 4, 4))[0],
            parent_id=parent.enterprise_id if parent else None,
            trade_name=trade,
            industry=industry,
            legal_form=form,
            branch_suffix=suffix,
        )


def build_city(
    rng: random.Random, as_of: dt.date, n_persons: int, n_enterprises: int
) -> tuple[CityBuilder, list[Person], list[Enterprise]]:
    """Draw the whole true city: persons with twins and namesakes, enterprises with branches."""
    b = CityBuilder(rng, as_of)
    persons: list[Person] = []
    n_twins = max(1, n_persons // 100)
    n_namesakes = max(2, n_persons // 200)
    n_plain = max(0, n_persons - 2 * n_twins - n_namesakes)
    for _ in range(n_plain):
        persons.append(b.person())
    for _ in range(n_twins):
        first = b.person()
        persons += [first, b.twin(first)]
    for i in range(n_namesakes):
        name = pools.COMMON_NAMES[i % len(pools.COMMON_NAMES)]
        year = 1970 + (i // len(pools.COMMON_NAMES)) % 30
        persons.append(b.namesake(name, year, group=f"{name}-{year}"))
    enterprises: list[Enterprise] = []
    adults = [p for p in persons if (as_of - p.birth_date).days >= 20 * 365]
    n_branches = n_enterprises // 20
    for _ in range(max(1, n_enterprises - n_branches)):
        enterprises.append(b.enterprise(rng.choice(adults)))
    heads = [e for e in enterprises if e.status in ("存续", "在业")]
    for _ in range(n_branches):
        enterprises.append(b.enterprise(rng.choice(adults), parent=rng.choice(heads)))
    working = [e for e in enterprises if e.status in ("存续", "在业")]
    for p in persons:
        age = (as_of - p.birth_date).days // 365
        if 18 <= age <= 62 and rng.random() < 0.7:
            p.employer_id = rng.choice(working).enterprise_id
        if rng.random() < 0.08:  # moved or changed phone: slower departments may lag
            p.previous_address = (rng.choice(b.districts), "")
            p.previous_address = (p.previous_address[0], b.address_detail(p.previous_address[0]))
        if p.phone and rng.random() < 0.06:
            p.previous_phone = b.mobile()
    return b, persons, enterprises
