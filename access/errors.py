"""What analysts' access refuses or cannot do, each error saying what to do instead."""

from __future__ import annotations


class AccessError(Exception):
    """Something an analyst asked for that cannot be done, with what to do instead."""


class AccessDenied(AccessError):
    """The caller may not do this (``--privileged`` without being a privileged user)."""


class NotShared(AccessDenied):
    """The entity is known only from sources shared with nobody (不予共享)."""


class QueryRefused(AccessError):
    """A statement that is not a single read of what the caller's role may read."""


class AccessSetupError(AccessError):
    """The warehouse lacks the views or roles: ``govmdm views install`` (or a DBA) is needed."""


class PseudonymKeyMissing(AccessError):
    """``GOVMDM_PSEUDONYM_KEY`` is unset or too short."""


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (its type's name if it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
