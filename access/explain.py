"""``govmdm explain`` as an analyst may see it: what the analyst views release, and nothing from
a source shared with nobody (不予共享).

>>> mask_explanation(explain(city, "P0000000001"), release_of(city)).attributes[0]["value"]
'****'
"""

from __future__ import annotations

import ast
import re
from dataclasses import replace
from typing import Any

from access.errors import NotShared
from access.release import Release
from fields.masking import (
    mask_text,
    parse_record,
    records_in,
    release_field,
    release_key,
    release_record,
    replace_records,
    scrub,
)

_CONFLICT_NOTE = re.compile(
    r"^conflict: (?P<dept>\S+) says (?P<attr>\S+) = (?P<value>.*), authority (?P<auth>\S+) "
    r"says (?P<auth_value>.*) \((?P<key>[^()]*)\)$"
)
_CLEAR_MEMBER_COLUMNS = ("record", "link_rule", "updated_at")


def mask_explanation(ex: Any, release: Release | None = None) -> Any:
    """A :class:`master_data.explain.Explanation` as an analyst may see it: what the analyst
    views release — personal values suppressed, public ones in clear, keys that are ID or
    mobile numbers suppressed (:mod:`fields.masking`) — and nothing from a source shared with
    nobody (``release``): its member rows, their links, its provenance and its conflicts are
    left out. What is left passes the last gate of analyst output (:func:`fields.masking.scrub`)
    as query, lookup and export do.

    Raises :class:`NotShared` if every member row comes from such a source."""
    release = release or Release()
    members = [
        _member(ex.entity, m)
        for m in ex.members
        if not (m.get("record") and _hidden_record(str(m["record"]), release))
    ]
    if ex.members and not members:
        raise NotShared(
            f"{ex.master_id} is known only from sources that are not shared (不予共享, "
            "config/catalog.yaml); only a privileged user may explain it"
        )
    links = [
        lk | {"left": release_record(lk["left"]), "right": release_record(lk["right"])}
        for lk in ex.links
        if not (_hidden_record(lk["left"], release) or _hidden_record(lk["right"], release))
    ]
    notes = [n for n in (_note(ex.entity, note, release) for note in ex.notes) if n is not None]
    attributes = [_attribute(ex.entity, a, release) for a in ex.attributes]
    return replace(
        ex,
        attributes=[_scrubbed(a) for a in attributes],
        members=[_scrubbed(m) for m in members],
        links=[_scrubbed(lk) for lk in links],
        notes=notes,
    )


def _scrubbed(row: dict[str, Any]) -> dict[str, Any]:
    return {k: scrub(v)[0] for k, v in row.items()}


def _hidden_record(record: str, release: Release) -> bool:
    parts = parse_record(record)
    return parts is not None and parts[:2] in release.hidden


def _attribute(entity: str, a: dict[str, Any], release: Release) -> dict[str, Any]:
    """One golden attribute's row: its value released, its source left out if not shared."""
    shown = a | {
        "value": release_field(entity, str(a["attribute"]), a["value"]),
        "source_key": release_key(a["source_key"]),
        "agree": None if release.hidden else a["agree"],
    }
    dept = a["department"]
    if dept is not None and (
        dept in release.hidden_departments
        or (a.get("source_table") and (dept, a["source_table"]) in release.hidden)
    ):
        shown |= {"department": None, "source_key": None, "updated": None, "rule": None}
    return shown


def _member(entity: str, m: dict[str, Any]) -> dict[str, Any]:
    """One member row with every value as the release shows it, its record ID released."""
    masked = {
        c: (v if c in _CLEAR_MEMBER_COLUMNS else release_field(entity, c, v)) for c, v in m.items()
    }
    if masked.get("record"):
        masked["record"] = release_record(str(masked["record"]))
    return masked


def _note(entity: str, note: str, release: Release) -> str | None:
    """A note as released, or None where it speaks of a source shared with nobody."""
    m = _CONFLICT_NOTE.match(note)
    if m:
        if m["dept"] in release.hidden_departments or m["auth"] in release.hidden_departments:
            return None
        attr = m["attr"]
        value = release_field(entity, attr, _unrepr(m["value"]))
        auth_value = release_field(entity, attr, _unrepr(m["auth_value"]))
        note = (
            f"conflict: {m['dept']} says {attr} = {value!r}, authority {m['auth']} says "
            f"{auth_value!r} ({release_key(m['key'])})"
        )
    elif any(_hidden_record(r, release) for r in records_in(note)):
        return None
    else:
        note = replace_records(note, release_record)
    return mask_text(note)


def _unrepr(text: str) -> str | None:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return None if value is None else str(value)
