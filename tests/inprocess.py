"""Run a read-only tunefleet command in this process: the same click command as the real CLI,
without the second or so each fresh interpreter spends importing Optuna."""

from __future__ import annotations

from click.testing import CliRunner

from tunefleet.cli import cli

__all__ = ["run_cli"]


def run_cli(*args: str) -> str:
    """The command's stdout; it must succeed (error paths are tested through the real process)."""
    result = CliRunner().invoke(cli, list(args), env={"COLUMNS": "200"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout
