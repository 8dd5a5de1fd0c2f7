"""How departments damage what they copy: typos, formats, stale values, legacy identifiers."""

from __future__ import annotations

import datetime as dt
import functools
import random
import re

import opencc

from etl.sample_city import pools
from fields import divisions

_FULLWIDTH = str.maketrans("0123456789Xx-", "０１２３４５６７８９ＸＸ－")
EXCEL_EPOCH = dt.date(1899, 12, 30)


@functools.cache
def _s2t() -> opencc.OpenCC:
    return opencc.OpenCC("s2t")


def traditional(text: str) -> str:
    """Simplified → traditional, as a Hong Kong/Taiwan-trained clerk or an old system writes it."""
    return str(_s2t().convert(text))


def fullwidth(text: str) -> str:
    """ASCII digits (and X, hyphen) → full-width forms."""
    return text.translate(_FULLWIDTH)


def name_typo(rng: random.Random, name: str) -> tuple[str, str] | None:
    """Replace one given-name character by a homophone or a look-alike; None if none fits."""
    start = 2 if name.startswith("欧阳") else 1
    positions = list(range(start, len(name)))
    rng.shuffle(positions)
    kinds = ["homophone", "similar_shape"] if rng.random() < 0.7 else ["similar_shape", "homophone"]
    for kind in kinds:
        table = pools.homophones() if kind == "homophone" else pools.shape_twins()
        for i in positions:
            alts = table.get(name[i])
            if alts:
                alt = rng.choice(alts) if isinstance(alts, tuple) else alts
                return name[:i] + alt + name[i + 1 :], kind
    return None


def phone_format(rng: random.Random, mobile: str) -> str:
    """A mobile number as clerks type it: +86, spaces, dashes."""
    style = rng.randrange(6)
    if style == 0:
        return f"+86 {mobile[:3]} {mobile[3:7]} {mobile[7:]}"
    if style == 1:
        return f"{mobile[:3]}-{mobile[3:7]}-{mobile[7:]}"
    if style == 2:
        return f"86-{mobile}"
    if style == 3:
        return f"{mobile[:3]} {mobile[3:7]} {mobile[7:]}"
    return mobile


def wrong_digit(rng: random.Random, id_number: str) -> str:
    """Change one of the 17 body digits (never the birth date), so the check digit fails."""
    i = rng.choice([*range(0, 6), *range(14, 17)])
    d = rng.choice([c for c in "0123456789" if c != id_number[i]])
    return id_number[:i] + d + id_number[i + 1 :]


def excel_serial(day: dt.date) -> str:
    """The number Excel shows for a date cell turned into text."""
    return str((day - EXCEL_EPOCH).days)


def short_address(rng: random.Random, division_code: str, detail: str) -> str:
    """An address without province (and often city, or the 区/县 suffix)."""
    d = divisions.lookup(division_code)
    assert d is not None
    style = rng.randrange(3)
    if style == 0:
        return f"{(d.prefecture or '')[:-1]}{d.name}{detail}"
    if style == 1:
        return f"{d.name}{detail}"
    return f"{d.name[:-1]}{detail}"


def unit_shorthand(division_code: str, detail: str) -> str | None:
    """A clerk's shorthand for a flat: ``融侨锦江28-1606`` for ``…路12号融侨锦江28座1606室``, the
    street and house number dropped, the district kept (None for an address without a flat)."""
    m = re.search(r"号(.+?)(\d+)座(\d+)室$", detail)
    d = divisions.lookup(division_code)
    return f"{d.name}{m[1]}{m[2]}-{m[3]}" if m and d else None


def side_rng(*parts: object) -> random.Random:
    """A generator of its own, seeded by ``parts`` (an entity's ID number, say): dirt added after
    the city's main random stream was fixed leaves every other row as it was."""
    return random.Random(":".join(map(str, parts)))


def long_ago(as_of: dt.date, rng: random.Random) -> dt.datetime:
    """A modification time 3 to 6 years before ``as_of``: a copy nobody updated since."""
    start = dt.datetime.combine(as_of, dt.time()) - dt.timedelta(days=6 * 365)
    return start + dt.timedelta(seconds=rng.randrange(3 * 365 * 86400))


def excel_damage(code: str) -> str | None:
    """An all-digit credit code after Excel kept 15 significant digits; None if it has letters."""
    return code[:15] + "000" if code.isdigit() else None


def enterprise_name_variant(rng: random.Random, name: str, branch_suffix: str) -> tuple[str, str]:
    """The same enterprise as another department writes it: brackets, legal form, city, branch."""
    options = []
    if "（" in name:
        options.append(("halfwidth_brackets", name.replace("（", "(").replace("）", ")")))
    if "有限责任公司" in name:
        options.append(("legal_form_variant", name.replace("有限责任公司", "有限公司")))
    elif "股份有限公司" not in name and "有限公司" in name:
        options.append(("legal_form_variant", name.replace("有限公司", "有限责任公司")))
    if name.startswith("福州"):
        options.append(("city_dropped", name[2:]))
    if branch_suffix:
        head = name[: -len(branch_suffix)]
        options.append(("branch_bracketed", f"{head}（{branch_suffix}）"))
    if not options:
        return name, ""
    kind, variant = rng.choice(options)
    return variant, kind
