"""README.md's examples work as written: every ``govmdm …`` line of its code blocks runs against a
small published demo city, block by block in the README's order, and every command the README
names — with every option it gives — exists and answers ``--help``.

An example that needs what this test cannot provide is in :data:`SKIPPED` with the reason; an
example whose right answer is not exit code 0 on a small city is in :data:`OUTCOMES`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from sample_cities import CityFactory
from typer.testing import CliRunner

from cli.main import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

SKIPPED: dict[str, str] = {
    # the fixes for a damaged master state file: each needs that damage on a night being linked
    "govmdm consolidate --run-id 2026-07-01 --full      # a damaged cache or golden.arrow": (
        "needs a damaged golden.arrow (tested in tests/test_night_safety.py)"
    ),
    "govmdm consolidate --run-id 2026-07-01 --retrain   # a damaged model.json: train again": (
        "needs a damaged model.json (tested in tests/test_night_safety.py)"
    ),
    "govmdm extract --full --run-id 2026-07-01          # a damaged records.arrow: read in full,": (
        "needs a damaged records.arrow (tested in tests/test_night_safety.py)"
    ),
    "govmdm standardize --run-id 2026-07-01             # then standardize": (
        "part of the damaged records.arrow recovery (tested in tests/test_night_safety.py)"
    ),
    "govmdm consolidate --run-id 2026-07-01 --full      # and link every record again": (
        "part of the damaged records.arrow recovery (tested in tests/test_night_safety.py)"
    ),
    'govmdm accept-deletions -d shuiwu --reason "书面确认 2026-07-01 注销清理"': (
        "needs a second night whose mass deletion was held back (tests/test_mass_deletion.py)"
    ),
    "govmdm run --run-id 2026-07-02": "the night after an accepted mass deletion (see above)",
}

# command → (exit code, what its output must say): right answers other than success
OUTCOMES: dict[str, tuple[int, str]] = {
    # the example keys are valid but belong to no one in a 300-person city
    "lookup": (1, "基础库中没有匹配的记录"),
}


@dataclass(frozen=True)
class Block:
    """The ``govmdm`` lines of one code block of README.md, and the line it starts on."""

    line: int
    commands: tuple[str, ...]


def code_blocks(text: str) -> list[Block]:
    """The fenced blocks (at any indent, as in a list item) and the four-space indented blocks,
    with their ``govmdm`` lines; blocks without one are left out."""
    blocks: list[Block] = []
    start, lines, fenced = 0, [], False
    for n, raw in enumerate(text.splitlines(), 1):
        if raw.lstrip().startswith("```"):
            if fenced:
                blocks.append(Block(start, tuple(lines)))
                lines = []
            else:
                start = n + 1
            fenced = not fenced
        elif fenced or raw.startswith("    "):
            if not fenced and not lines:
                start = n
            lines.append(raw.strip())
        elif lines and raw.strip():
            blocks.append(Block(start, tuple(lines)))
            lines = []
    blocks = [
        Block(b.line, tuple(c for c in b.commands if c.startswith("govmdm "))) for b in blocks
    ]
    return [b for b in blocks if b.commands]


BLOCKS = code_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_examples_and_every_skip_is_still_one() -> None:
    lines = {c for b in BLOCKS for c in b.commands}
    assert len(lines) >= 10, lines
    assert not set(SKIPPED) - lines, "skipped examples no longer in README.md"


@pytest.fixture(scope="module")
def demo(make_city: CityFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder like the project's after ``make demo``: ``config/`` and ``var/`` with the small
    city's first night (2026-06-30) published, views installed; its own copy."""
    home = tmp_path_factory.mktemp("demo")
    (home / "config").symlink_to(ROOT / "config", target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        make_city(
            mp,
            persons=300,
            enterprises=60,
            seed=3,
            until="published",
            views=True,
            copy=home / "var",
        )
        mp.chdir(home)
        yield home


def run_example(line: str, home: Path) -> None:
    """Run one README line as the shell would (``# …`` a comment, ``> FILE`` the output)."""
    args = shlex.split(line, comments=True)
    out: Path | None = None
    if ">" in args:
        i = args.index(">")
        out, args = home / args[i + 1], args[:i]
    result = CliRunner().invoke(app, args[1:])
    code, says = OUTCOMES.get(args[1], (0, ""))
    assert result.exit_code == code, f"{line}\n{result.output}"
    assert says in result.output, f"{line}\n{result.output}"
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not crashed and "Traceback" not in result.output, f"{line}\n{result.exception!r}"
    if out is not None:
        out.write_text(result.stdout, encoding="utf-8")
        assert out.stat().st_size > 0, line


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b.line}" for b in BLOCKS])
def test_every_readme_example_runs(block: Block, demo: Path) -> None:
    ran = 0
    for line in block.commands:
        if line in SKIPPED:
            continue
        run_example(line, demo)
        ran += 1
    if not ran:
        pytest.skip("; ".join(sorted({SKIPPED[c] for c in block.commands})))


# --- every command named, with its options -------------------------------------------------------


def named_commands(text: str) -> dict[str, set[str]]:
    """``govmdm …`` in inline code and code blocks: the command words → the options given."""
    prose = re.sub(r"^ *```.*?^ *```", "", text, flags=re.S | re.M)
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose, flags=re.S)]
    spans += [c for b in code_blocks(text) for c in b.commands]
    named: dict[str, set[str]] = {}
    for span in spans:
        if not span.startswith("govmdm"):
            continue
        tokens = shlex.split(span.replace("[", " ").replace("]", " ").replace("|", " "), True)
        words = [t for t in tokens[1:3] if re.fullmatch(r"[a-z][a-z-]+", t)]
        path = " ".join(words[: 2 if words and words[0] in GROUPS else 1])
        opts = {t.split("=")[0] for t in tokens if t.startswith("-")}
        named.setdefault(path, set()).update(opts)
    return named


ROOT_COMMAND: Any = typer.main.get_command(app)  # a group (typer's own click)
GROUPS = {n for n, c in ROOT_COMMAND.commands.items() if hasattr(c, "commands")}
NAMED = named_commands(README.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", sorted(NAMED), ids=lambda p: p or "govmdm")
def test_every_command_the_readme_names_exists_with_its_options(path: str) -> None:
    command = ROOT_COMMAND
    for word in path.split():
        assert hasattr(command, "commands"), f"govmdm {path}: {word} is not a command"
        sub = command.commands.get(word)
        assert sub is not None, f"README.md names `govmdm {path}`: no command {word!r}"
        command = sub
    known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    assert not NAMED[path] - known, f"govmdm {path}: no such option"
    result = CliRunner().invoke(app, [*path.split(), "--help"])
    assert result.exit_code == 0, result.output
