"""The ``govmdm`` command: every pipeline stage from the shell, no scheduler needed.

Each module of this package registers its commands on :data:`cli.common.app`; importing them
here, in the order ``govmdm --help`` lists them, puts the whole command line together.
"""

from __future__ import annotations

import importlib

from cli.common import app

for _module in ("night", "analyst", "master", "quality", "report"):
    importlib.import_module(f"cli.{_module}")

__all__ = ["app"]

if __name__ == "__main__":
    app()
