"""Named points where a crash test kills the running night, to prove that a crash anywhere
leaves the warehouse at last night or tonight and that a rerun finishes the night.

Each stage calls :func:`reached` at the moments that matter (a file written, a transaction
about to commit, the watermarks about to move). When ``GOVMDM_KILL_AT`` names the point, the
process kills itself with SIGKILL there — no cleanup handler, ``finally`` block or atexit hook
runs, exactly like the OOM killer or a lost worker. ``name#n`` kills at the n-th time the point
is reached (e.g. ``extract:table-written#3``, the third table). Unset, a point costs one
dictionary lookup.

>>> reached("publish:committed")  # GOVMDM_KILL_AT unset: nothing happens
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "GOVMDM_KILL_AT"

POINTS = (
    "extract:start",
    "extract:replacing",
    "extract:table-written",
    "extract:keys-written",
    "extract:proposed",
    "extract:recorded",
    "standardize:batch",
    "standardize:closing",
    "standardize:written",
    "standardize:marked",
    "link:start",
    "link:records",
    "link:scored",
    "link:clustered",
    "link:entity-done",
    "link:before-rename",
    "link:swapping",
    "link:renamed",
    "publish:start",
    "publish:inserting",
    "publish:before-commit",
    "publish:committed",
    "publish:watermarks-db",
    "publish:keysets-moving",
    "publish:watermarks-committed",
    "publish:done",
)
"""Every point a stage reaches, in the order a night reaches them."""

_seen: Counter[str] = Counter()


def reached(name: str) -> None:
    """Note that the night reached point ``name``; SIGKILL this process if it is the target."""
    target = os.environ.get(ENV)
    if not target:
        return
    point, _, nth = target.partition("#")
    if point != name:
        return
    _seen[name] += 1
    if _seen[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
