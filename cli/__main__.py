"""``python -m cli``: the ``govmdm`` command."""

from cli.main import app

app()
