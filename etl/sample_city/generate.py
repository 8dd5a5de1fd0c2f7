"""Generate the sample city into departmental databases, with ground truth kept apart.

``generate_city`` draws night 0; ``next_night`` applies one night of changes (moves, new phones,
births, arrivals, deaths, new and cancelled enterprises, deleted rows) to the same databases and
brings the truth up to date. Both are deterministic per seed and never read today's date.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from etl.sample_city import departments as depts
from etl.sample_city import hard_cases as hard
from etl.sample_city.departments import DEPARTMENTS, Department, Rendered, World
from etl.sample_city.entities import CityBuilder, Enterprise, Person, build_city
from store.layout import sample_source_path

START_DATE = dt.date(2026, 6, 30)  # night 0 of every sample city: fixed, never "today"
CHUNK = 20_000
Progress = Callable[[str, int, int], None]  # (task, advance, total)


@dataclass
class SourceRow:
    """Truth for one source row: which true entity it describes; when it was deleted."""

    department: str
    table: str
    source_key: str
    entity_type: str
    entity_id: str
    created_night: int = 0
    deleted_night: int | None = None


@dataclass
class Truth:
    """Everything the generator knows that the departments' databases do not say."""

    persons: dict[str, Person]
    enterprises: dict[str, Enterprise]
    rows: dict[tuple[str, str], SourceRow] = field(default_factory=dict)  # (dept, key)
    dirt: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)


def _quiet(task: str, advance: int, total: int) -> None:
    pass


# --- database writing ------------------------------------------------------------------------


def sqlite_url(out: Path, code: str) -> str:
    """The embedded default: one SQLite file per department."""
    return f"sqlite:///{sample_source_path(out, code)}"


def target_url(base: str, code: str) -> str:
    """``base`` names a server and a database prefix: department ``code`` gets ``<db>_<code>``."""
    url = make_url(base)
    prefix = url.database or "govmdm_city"
    return url.set(database=f"{prefix}_{code}").render_as_string(hide_password=False)


def server_engine(url: str) -> sa.Engine:
    """An AUTOCOMMIT engine on the server's admin database, for CREATE/DROP DATABASE."""
    u = make_url(url)
    admin_db = "postgres" if u.get_backend_name() == "postgresql" else "information_schema"
    return sa.create_engine(u.set(database=admin_db), isolation_level="AUTOCOMMIT")


def drop_database(url: str) -> None:
    """Drop the database ``url`` names, if it exists (PostgreSQL, MariaDB)."""
    u = make_url(url)
    engine = server_engine(url)
    name = engine.dialect.identifier_preparer.quote(u.database or "")
    force = " WITH (FORCE)" if u.get_backend_name() == "postgresql" else ""
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}{force}"))
    engine.dispose()


def recreate_database(url: str) -> None:
    """Drop and create the database ``url`` names (PostgreSQL, MariaDB); SQLite: delete the file."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        assert u.database is not None
        path = Path(u.database)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        return
    if backend not in ("postgresql", "mysql", "mariadb"):
        raise ValueError(f"--target supports PostgreSQL and MariaDB/MySQL, not {backend!r}")
    drop_database(url)
    engine = server_engine(url)
    name = engine.dialect.identifier_preparer.quote(u.database or "")
    with engine.connect() as conn:
        if backend == "postgresql":
            conn.execute(sa.text(f"CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0"))
        else:
            conn.execute(
                sa.text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            )
    engine.dispose()


def _engine(url: str) -> sa.Engine:
    u = make_url(url)
    if u.get_backend_name() in ("mysql", "mariadb") and "charset" not in u.query:
        u = u.update_query_dict({"charset": "utf8mb4"})
    return sa.create_engine(u)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --- night 0 ---------------------------------------------------------------------------------


def _rendered_rows(
    dept: Department, rng: random.Random, world: World, truth: Truth, progress: Progress
) -> Iterator[dict[str, Any]]:
    """Render every row of ``dept`` in a shuffled entity order, keying rows and keeping truth."""
    entities: list[Any] = list(
        truth.persons.values() if dept.entity == "person" else truth.enterprises.values()
    )
    rng.shuffle(entities)
    keys = depts.key_factory(dept, rng.randrange(10**5, 10**6) * 1000)
    for n, entity in enumerate(entities, 1):
        for r in dept.render(rng, world, entity):
            yield _keep(dept, r, next(keys), truth, night=0)
        if n % 5000 == 0 or n == len(entities):
            progress(dept.code, 5000 if n % 5000 == 0 else n % 5000, len(entities))


def _keep(dept: Department, r: Rendered, key: Any, truth: Truth, night: int) -> dict[str, Any]:
    r.row[dept.key] = key
    skey = str(key)
    truth.rows[(dept.code, skey)] = SourceRow(
        dept.code, dept.table_name, skey, dept.entity, r.entity_id, created_night=night
    )
    if r.dirt:
        truth.dirt[(dept.code, skey)] = list(r.dirt)
    return r.row


def generate_city(
    out: Path,
    *,
    persons: int,
    enterprises: int,
    seed: int,
    targets: Iterable[str] = (),
    progress: Progress = _quiet,
    review_band: bool = False,
    hard_cases: bool = False,
) -> dict[str, Any]:
    """Draw the city and write every department to SQLite under ``out/sources`` and each target.

    ``review_band`` also plants hard cases (:meth:`departments.Weijian._hard_case`): rows whose
    pairs the model scores between ``review`` and ``auto_link``, so the review queue has real
    pairs; the later nights' new rows get them too. Off, the city is drawn exactly as before.
    ``hard_cases`` plants the hard cases of :mod:`etl.sample_city.hard_cases` (minors under a
    guardian's ID number, lunar birth dates, renamed people, same-birth-date namesakes; individual
    businesses taxed under the operator's name, operating addresses in another district); off,
    the city is drawn exactly as before too.

    Returns the manifest also written to ``out/city.json``.
    """
    out.mkdir(parents=True, exist_ok=True)
    targets = list(targets)
    b, plist, elist = build_city(random.Random(seed), START_DATE, persons, enterprises)
    if hard_cases:
        plist += hard.plant(random.Random(f"{seed}:hard"), b, plist)
        hard.plant_enterprises(random.Random(f"{seed}:hard-enterprises"), b, elist, plist)
    truth = Truth({p.person_id: p for p in plist}, {e.enterprise_id: e for e in elist})
    world = World(
        truth.persons, truth.enterprises, START_DATE, review_band=review_band, hard_cases=hard_cases
    )
    counts: dict[str, int] = {}
    for dept in DEPARTMENTS:
        urls = [sqlite_url(out, dept.code)] + [target_url(t, dept.code) for t in targets]
        engines = []
        for url in urls:
            recreate_database(url)
            engine = _engine(url)
            dept.metadata.create_all(engine)
            engines.append(engine)
        rng = random.Random(f"{seed}:{dept.code}")
        n = 0
        for chunk in _chunks(_rendered_rows(dept, rng, world, truth, progress), CHUNK):
            for engine in engines:
                with engine.begin() as conn:
                    conn.execute(dept.table.insert(), chunk)
            n += len(chunk)
        counts[dept.code] = n
        for engine in engines:
            engine.dispose()
    manifest = {
        "seed": seed,
        "night": 0,
        "as_of": START_DATE.isoformat(),
        "persons": persons,
        "enterprises": enterprises,
        "rows": counts,
        "targets": [make_url(t).render_as_string(hide_password=True) for t in targets],
    }
    if review_band:
        manifest["review_band"] = True
    if hard_cases:
        manifest["hard_cases"] = True
    write_truth(out, truth, manifest)
    return manifest


# --- truth files -----------------------------------------------------------------------------


def _person_record(p: Person) -> dict[str, Any]:
    from fields import divisions

    d = divisions.lookup(p.division_code)
    assert d is not None
    return {
        "person_id": p.person_id,
        "name": p.name,
        "id_number": p.id_number,
        "sex": p.sex,
        "birth_date": p.birth_date,
        "ethnicity_code": p.ethnicity_code,
        "ethnicity": p.ethnicity,
        "phone": p.phone,
        "landline": p.landline,
        "province": d.province,
        "city": d.prefecture,
        "district": d.name,
        "division_code": p.division_code,
        "address_detail": p.address_detail,
        "address": p.address,
        "employer_id": p.employer_id,
        "status": p.status,
        "twin_of": p.twin_of,
        "namesake_group": p.namesake_group,
        "previous_division_code": p.previous_address[0] if p.previous_address else None,
        "previous_address_detail": p.previous_address[1] if p.previous_address else None,
        "previous_phone": p.previous_phone,
        "hard_case": p.hard_case,
        "guardian_id": p.guardian_id,
        "former_name": p.former_name,
        "lunar_birth_date": p.lunar_birth_date,
    }


def _enterprise_record(e: Enterprise, persons: dict[str, Person]) -> dict[str, Any]:
    rep = persons[e.legal_rep_id]
    return {
        "enterprise_id": e.enterprise_id,
        "name": e.name,
        "uscc": e.uscc,
        "reg_no": e.reg_no,
        "org_code": e.org_code,
        "legal_rep_person_id": e.legal_rep_id,
        "legal_rep_name": rep.name,
        "legal_rep_id": rep.id_number,
        "division_code": e.division_code,
        "address_detail": e.address_detail,
        "address": e.address,
        "registered_capital": e.registered_capital,
        "established_date": e.established_date,
        "status": e.status,
        "parent_enterprise_id": e.parent_id,
        "trade_name": e.trade_name,
        "industry": e.industry,
        "legal_form": e.legal_form,
        "branch_suffix": e.branch_suffix,
        "hard_case": e.hard_case,
    }


def _write_table(
    records: list[dict[str, Any]], path: Path, schema: pa.Schema | None = None
) -> None:
    table = pa.Table.from_pylist(records, schema=schema)
    pq.write_table(table, path, compression="zstd")


def write_truth(out: Path, truth: Truth, manifest: dict[str, Any]) -> None:
    """Persons, enterprises, source rows and planted dirt as Parquet under ``out/truth``."""
    tdir = out / "truth"
    tdir.mkdir(parents=True, exist_ok=True)
    _write_table([_person_record(p) for p in truth.persons.values()], tdir / "persons.parquet")
    _write_table(
        [_enterprise_record(e, truth.persons) for e in truth.enterprises.values()],
        tdir / "enterprises.parquet",
    )
    rows_schema = pa.schema(
        [
            ("department", pa.string()),
            ("table", pa.string()),
            ("source_key", pa.string()),
            ("entity_type", pa.string()),
            ("entity_id", pa.string()),
            ("created_night", pa.int32()),
            ("deleted_night", pa.int32()),
        ]
    )
    _write_table(
        [dataclasses.asdict(r) for r in truth.rows.values()],
        tdir / "source_rows.parquet",
        rows_schema,
    )
    dirt_schema = pa.schema(
        [
            ("department", pa.string()),
            ("source_key", pa.string()),
            ("column", pa.string()),
            ("kind", pa.string()),
        ]
    )
    dirt_rows = [
        {"department": d, "source_key": k, "column": c, "kind": kind}
        for (d, k), labels in truth.dirt.items()
        for c, kind in labels
    ]
    _write_table(dirt_rows, tdir / "dirt.parquet", dirt_schema)
    (out / "city.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")


# --- the nights after ------------------------------------------------------------------------


def read_truth(out: Path) -> tuple[Truth, dict[str, Any]]:
    """Load the truth files and manifest that ``generate_city``/``next_night`` wrote."""
    tdir = out / "truth"
    if not (out / "city.json").exists():
        raise FileNotFoundError(
            f"{out}/city.json not found: generate the city first (govmdm sample)"
        )
    manifest = json.loads((out / "city.json").read_text())
    persons: dict[str, Person] = {}
    for r in pq.read_table(tdir / "persons.parquet").to_pylist():
        prev = r["previous_division_code"]
        persons[r["person_id"]] = Person(
            person_id=r["person_id"],
            name=r["name"],
            sex=r["sex"],
            birth_date=r["birth_date"],
            id_number=r["id_number"],
            ethnicity_code=r["ethnicity_code"],
            ethnicity=r["ethnicity"],
            phone=r["phone"],
            landline=r["landline"],
            division_code=r["division_code"],
            address_detail=r["address_detail"],
            employer_id=r["employer_id"],
            status=r["status"],
            twin_of=r["twin_of"],
            namesake_group=r["namesake_group"],
            previous_address=(prev, r["previous_address_detail"]) if prev else None,
            previous_phone=r["previous_phone"],
            hard_case=r.get("hard_case"),
            guardian_id=r.get("guardian_id"),
            former_name=r.get("former_name"),
            lunar_birth_date=r.get("lunar_birth_date"),
        )
    enterprises: dict[str, Enterprise] = {}
    for r in pq.read_table(tdir / "enterprises.parquet").to_pylist():
        enterprises[r["enterprise_id"]] = Enterprise(
            enterprise_id=r["enterprise_id"],
            name=r["name"],
            uscc=r["uscc"],
            reg_no=r["reg_no"],
            org_code=r["org_code"],
            legal_rep_id=r["legal_rep_person_id"],
            division_code=r["division_code"],
            address_detail=r["address_detail"],
            registered_capital=r["registered_capital"],
            established_date=r["established_date"],
            status=r["status"],
            parent_id=r["parent_enterprise_id"],
            trade_name=r["trade_name"],
            industry=r["industry"],
            legal_form=r["legal_form"],
            branch_suffix=r["branch_suffix"],
            hard_case=r.get("hard_case"),
        )
    truth = Truth(persons, enterprises)
    for r in pq.read_table(tdir / "source_rows.parquet").to_pylist():
        truth.rows[(r["department"], r["source_key"])] = SourceRow(**r)
    for r in pq.read_table(tdir / "dirt.parquet").to_pylist():
        truth.dirt.setdefault((r["department"], r["source_key"]), []).append(
            (r["column"], r["kind"])
        )
    return truth, manifest


@dataclass
class TableChanges:
    """One night's changes to one departmental table."""

    inserts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (key, new values)
    deletes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inserts) + len(self.updates) + len(self.deletes)


class Night:
    """Draws one night's events and turns them into table changes and truth updates."""

    def __init__(self, truth: Truth, manifest: dict[str, Any]) -> None:
        self.truth = truth
        self.night = int(manifest["night"]) + 1
        self.seed = manifest["seed"]
        self.as_of = START_DATE + dt.timedelta(days=self.night)
        self.rng = random.Random(f"{self.seed}:night:{self.night}")
        self.world = World(
            truth.persons,
            truth.enterprises,
            self.as_of,
            review_band=bool(manifest.get("review_band")),
            hard_cases=bool(manifest.get("hard_cases")),
        )
        self.builder = self._restore_builder()
        self.changes = {d.code: TableChanges() for d in DEPARTMENTS}
        self.events: dict[str, int] = {}
        self.rows_of: dict[str, list[tuple[str, str]]] = {}
        for (code, key), row in truth.rows.items():
            if row.deleted_night is None:
                self.rows_of.setdefault(row.entity_id, []).append((code, key))
        self.keys = {d.code: depts.key_factory(d, self._max_key(d)) for d in DEPARTMENTS}

    def _restore_builder(self) -> CityBuilder:
        b = CityBuilder(self.rng, self.as_of)
        for p in self.truth.persons.values():
            b.ids.used.add(p.id_number[:17])
            b.phones.update(x for x in (p.phone, p.previous_phone) if x)
        b.usccs.update(e.uscc for e in self.truth.enterprises.values())
        b.person_seq = max(int(k[1:]) for k in self.truth.persons)
        b.enterprise_seq = max(int(k[1:]) for k in self.truth.enterprises)
        return b

    def _max_key(self, dept: Department) -> int:
        # the number after the department's prefix: an all-digit prefix (shichang's 3501) is
        # not part of it, or every night's keys would grow by it
        return max(
            depts.key_number(dept, key) for (code, key) in self.truth.rows if code == dept.code
        )

    def stamp(self) -> dt.datetime:
        """A time during this night's working day."""
        start = dt.datetime.combine(self.as_of, dt.time(8))
        return start + dt.timedelta(seconds=self.rng.randrange(12 * 3600))

    def count(self, event: str) -> None:
        """Tally one event for the summary."""
        self.events[event] = self.events.get(event, 0) + 1

    def rows(self, entity_id: str, code: str) -> list[str]:
        """Live source keys of ``entity_id`` in department ``code``."""
        return [k for c, k in self.rows_of.get(entity_id, []) if c == code]

    def update(
        self, code: str, key: str, values: dict[str, Any], fixed: Iterable[str] = ()
    ) -> None:
        """Queue an update and drop the dirt labels of the columns it fixed."""
        dept = depts.by_code(code)
        values[dept.change_column()] = dept.stamp_value(self.stamp())
        self.changes[code].updates.append((key, values))
        fixed = set(fixed)
        labels = [lab for lab in self.truth.dirt.get((code, key), []) if lab[0] not in fixed]
        self.truth.dirt[(code, key)] = labels

    def label(self, code: str, key: str, column: str, kind: str) -> None:
        """Record dirt that the night created without touching the row (a value gone stale)."""
        labels = self.truth.dirt.setdefault((code, key), [])
        if (column, kind) not in labels:
            labels.append((column, kind))

    def insert(self, dept: Department, rendered: list[Rendered]) -> None:
        """Queue new rows, keyed in the department's style, and record their truth."""
        for r in rendered:
            row = _keep(dept, r, next(self.keys[dept.code]), self.truth, night=self.night)
            if dept.change_column() in row:
                row[dept.change_column()] = dept.stamp_value(self.stamp())
            self.changes[dept.code].inserts.append(row)
            self.rows_of.setdefault(r.entity_id, []).append((dept.code, str(row[dept.key])))

    def delete(self, code: str, key: str) -> None:
        """Queue a deletion; the truth keeps the row, marked deleted tonight."""
        self.changes[code].deletes.append(key)
        self.truth.rows[(code, key)].deleted_night = self.night

    def older_than(self, person_ids: list[str], years: int) -> list[str]:
        """The persons among ``person_ids`` older than ``years`` tonight."""
        days = years * 365
        return [
            p for p in person_ids if (self.as_of - self.truth.persons[p].birth_date).days > days
        ]

    def sample(self, items: list[Any], share: float) -> list[Any]:
        """A seeded sample of about ``share`` of ``items`` (at least one where any exist)."""
        k = min(len(items), max(1 if items else 0, round(len(items) * share)))
        return self.rng.sample(items, k)

    def draw(self) -> None:
        """All of tonight's events, in a fixed order (the order the seeded draws are made in)."""
        alive = sorted(p for p, x in self.truth.persons.items() if x.status == "正常")
        self._moves(alive)
        self._new_phones(alive)
        self._deaths(alive)
        self._births(len(alive))
        working = sorted(
            e for e, x in self.truth.enterprises.items() if x.status in ("存续", "在业")
        )
        self._arrivals(len(alive), working)
        self._new_enterprises(alive)
        self._cancellations(working)
        self._capital_increases(working)
        self._assistance_ended()
        self._hospital_visits(alive)

    def _moves(self, alive: list[str]) -> None:
        """Persons who move: a new address at 公安, news that reaches 卫健 late or never."""
        for pid in self.sample(alive, 0.005):
            p = self.truth.persons[pid]
            p.previous_address = (p.division_code, p.address_detail)
            p.division_code = self.rng.choice(self.builder.districts)
            p.address_detail = self.builder.address_detail(p.division_code)
            self.count("person_moved")
            for key in self.rows(pid, "gongan"):
                if ("rkbh", "duplicate_row") not in self.truth.dirt.get(("gongan", key), []):
                    self.update("gongan", key, {"hjdz": p.address})
            for key in self.rows(pid, "weijian"):
                if self.rng.random() < 0.3:
                    self.update("weijian", key, {"HOME_ADDR": p.address}, fixed=["HOME_ADDR"])
                else:
                    self.label("weijian", key, "HOME_ADDR", "stale_value")
            for key in self.rows(pid, "minzheng"):
                self.label("minzheng", key, "居住地址", "stale_value")

    def _new_phones(self, alive: list[str]) -> None:
        """Persons who change their mobile number: 人社 hears of half of them."""
        with_phone = [pid for pid in alive if self.truth.persons[pid].phone]
        for pid in self.sample(with_phone, 0.003):
            p = self.truth.persons[pid]
            p.previous_phone, p.phone = p.phone, self.builder.mobile()
            self.count("phone_changed")
            refresh = self.rng.random() < 0.5
            for key in self.rows(pid, "renshe"):
                if refresh:
                    self.update("renshe", key, {"mobile": p.phone}, fixed=["mobile"])
                else:
                    self.label("renshe", key, "mobile", "stale_value")
            for key in self.rows(pid, "weijian"):
                self.label("weijian", key, "TEL", "stale_value")

    def _deaths(self, alive: list[str]) -> None:
        """Elderly persons who die: 公安 marks them, 民政 deletes their assistance rows."""
        for pid in self.sample(self.older_than(alive, 70), 0.001):
            self.truth.persons[pid].status = "死亡"
            self.count("person_died")
            for key in self.rows(pid, "gongan"):
                self.update("gongan", key, {"hjzt": "20"})
            for key in self.rows(pid, "minzheng"):
                self.delete("minzheng", key)

    def _births(self, population: int) -> None:
        """Newborns, registered at 公安 and seen at a hospital."""
        g, wj = depts.GONGAN, depts.WEIJIAN
        for _ in range(max(1, population // 2000)):
            p = self.builder.person(born=self.as_of - dt.timedelta(days=self.rng.randrange(3)))
            self.truth.persons[p.person_id] = p
            self.count("person_born")
            self.insert(g, [Rendered(g.row(p, p.address, self.stamp()), p.person_id)])
            self.insert(wj, wj.render(self.rng, self.world, p)[:1])

    def _arrivals(self, population: int, working: list[str]) -> None:
        """Adults who come to work here: insured at 人社, half of them registered at 公安."""
        g, rs = depts.GONGAN, depts.RENSHE
        for _ in range(max(1, population // 1000)):
            p = self.builder.person(
                born=self.as_of - dt.timedelta(days=365 * self.rng.randrange(22, 50))
            )
            p.employer_id = self.rng.choice(working)
            self.truth.persons[p.person_id] = p
            self.count("person_arrived")
            self.insert(rs, rs.render(self.rng, self.world, p))
            if self.rng.random() < 0.5:
                self.insert(g, [Rendered(g.row(p, p.address, self.stamp()), p.person_id)])

    def _new_enterprises(self, alive: list[str]) -> None:
        """Enterprises registered tonight at 市场监管, most of them also at 税务."""
        sc, sw = depts.SHICHANG, depts.SHUIWU
        adults = self.older_than(alive, 25)
        for _ in range(max(1, len(self.truth.enterprises) // 300)):
            e = self.builder.enterprise(self.truth.persons[self.rng.choice(adults)])
            e.established_date = self.as_of
            e.status = "存续"
            self.truth.enterprises[e.enterprise_id] = e
            self.count("enterprise_registered")
            self.insert(sc, [Rendered(sc.row(self.world, e, self.stamp()), e.enterprise_id)])
            if self.rng.random() < 0.7:
                self.insert(sw, sw.render(self.rng, self.world, e)[:1])

    def _cancellations(self, working: list[str]) -> None:
        """Enterprises cancelled tonight, at 市场监管 and at 税务."""
        for eid in self.sample(working, 0.001):
            self.truth.enterprises[eid].status = "注销"
            self.count("enterprise_cancelled")
            for key in self.rows(eid, "shichang"):
                self.update("shichang", key, {"djzt": "注销"})
            for key in self.rows(eid, "shuiwu"):
                self.update("shuiwu", key, {"纳税人状态": "注销"})

    def _capital_increases(self, working: list[str]) -> None:
        """Enterprises that double their registered capital."""
        sc = depts.SHICHANG
        for eid in self.sample(working, 0.003):
            e = self.truth.enterprises[eid]
            e.registered_capital = e.registered_capital * 2 or 100.0
            self.count("enterprise_capital_changed")
            for key in self.rows(eid, "shichang"):
                self.update("shichang", key, {"zczb": sc.row(self.world, e, self.stamp())["zczb"]})

    def _assistance_ended(self) -> None:
        """民政 rows deleted: their persons are no longer eligible for assistance."""
        live_mz = sorted(
            k
            for (c, k), r in self.truth.rows.items()
            if c == "minzheng" and r.deleted_night is None
        )
        for key in self.sample(live_mz, 0.01):
            if self.truth.rows[("minzheng", key)].deleted_night is None:
                self.delete("minzheng", key)
                self.count("assistance_ended")

    def _hospital_visits(self, alive: list[str]) -> None:
        """Hospital visits that create new 卫健 records."""
        wj = depts.WEIJIAN
        for pid in self.sample(alive, 0.005):
            self.insert(wj, wj.render(self.rng, self.world, self.truth.persons[pid])[:1])
            self.count("hospital_record_added")


def _typed_key(dept: Department, key: str) -> Any:
    return int(key) if isinstance(dept.table.c[dept.key].type, sa.Integer) else key


def apply_changes(url: str, dept: Department, changes: TableChanges) -> None:
    """Apply one night's inserts, updates and deletes to one department's database."""
    engine = _engine(url)
    table, key_col = dept.table, dept.table.c[dept.key]
    with engine.begin() as conn:
        for chunk in _chunks(changes.inserts, CHUNK):
            conn.execute(table.insert(), chunk)
        for key, values in changes.updates:
            conn.execute(table.update().where(key_col == _typed_key(dept, key)).values(**values))
        for chunk in _chunks(changes.deletes, 1000):
            conn.execute(table.delete().where(key_col.in_([_typed_key(dept, k) for k in chunk])))
    engine.dispose()


def next_night(out: Path, *, targets: Iterable[str] = ()) -> dict[str, Any]:
    """Apply the next night's changes to the city's databases (and targets) and to its truth."""
    truth, manifest = read_truth(out)
    night = Night(truth, manifest)
    night.draw()
    targets = list(targets)
    for dept in DEPARTMENTS:
        changes = night.changes[dept.code]
        for url in [sqlite_url(out, dept.code)] + [target_url(t, dept.code) for t in targets]:
            apply_changes(url, dept, changes)
    live = {d.code: 0 for d in DEPARTMENTS}
    for (code, _k), row in truth.rows.items():
        live[code] += row.deleted_night is None
    manifest.update(
        night=night.night,
        as_of=night.as_of.isoformat(),
        rows=live,
        last_changes={
            code: {"inserted": len(c.inserts), "updated": len(c.updates), "deleted": len(c.deletes)}
            for code, c in night.changes.items()
        },
        last_events=dict(sorted(night.events.items())),
    )
    write_truth(out, truth, manifest)
    return manifest
