"""The project's own promises: lint and type checks pass, the public API is pinned, every command
has help text and is documented."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

import tunefleet
from tunefleet.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the CLI loads its commands lazily
        command = group.get_command(ctx, name)
        assert command is not None, name
        path = f"{prefix}{name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, path + " "))
    return found


def test_public_api_is_pinned() -> None:
    assert sorted(tunefleet.__all__) == sorted(
        [
            "FleetStorage",
            "Objective",
            "StudySpec",
            "TunefleetError",
            "Worker",
            "WorkerResult",
            "__version__",
            "load_objective",
            "load_spec",
            "open_storage",
        ]
    )


@pytest.mark.parametrize(("path", "command"), _commands(cli))
def test_every_command_has_help_and_docs(path: str, command: click.Command) -> None:
    assert command.help and len(command.help.strip()) > 20, f"'{path}' needs a help text"
    docs = (ROOT / "README.md").read_text() + "".join(
        p.read_text() for p in (ROOT / "docs").glob("*.md")
    )
    assert f"tunefleet {path}" in docs, f"'tunefleet {path}' is not documented"


@pytest.mark.parametrize(
    "check",
    [
        ["ruff", "check", "src", "tests", "benchmarks"],
        ["ruff", "format", "--check", "src", "tests", "benchmarks"],
        ["mypy"],
    ],
)
def test_code_quality(check: list[str]) -> None:
    tool = shutil.which(check[0], path=str(Path(sys.executable).parent)) or shutil.which(check[0])
    assert tool, f"{check[0]} is not installed: pip install -e '.[test]'"
    result = subprocess.run(
        [tool, *check[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
