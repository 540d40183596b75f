"""The ``tunefleet`` command line. Commands are thin: parse, call the library, print, exit.

Every problem a user can fix is printed as one line, ``error: <problem>: <fix>``, with a
non-zero exit code; a traceback only with ``--debug`` (or ``TUNEFLEET_DEBUG=1``). Each group of
commands lives in a module of its own and is registered here.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

import click

from tunefleet._redact import redact
from tunefleet.constants import ExitCode
from tunefleet.errors import TunefleetError

__all__ = ["cli", "main"]

#: Each command: the module that defines it, and its one-line help for ``tunefleet --help``.
#: A command's module is imported only when that command runs (or its own --help is asked), so
#: ``tunefleet --help`` loads neither Optuna nor SQLAlchemy and answers well under a second.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("_study", "Run a local fleet of workers on one study until it is done."),
    "worker": ("_study", "Run one worker: join the study and run trials until it is done."),
    "k8s": ("_k8s", "A study's fleet as a Kubernetes Job: render, apply, status, logs."),
    "status": ("_monitor", "Show how a study is going: trials, budget, rate and ETA, workers."),
    "studies": ("_monitor", "List the studies in a storage with their progress and best value."),
    "best": ("_monitor", "Show the best trial's value and parameters (or the Pareto front)."),
    "trials": ("_monitor", "Every trial: number, state, values, params, duration, worker."),
    "report": ("_monitor", "One self-contained HTML report of a study (opens offline)."),
    "dashboard": ("_monitor", "Serve optuna-dashboard on the same storage until stopped."),
    "data": ("_data", "Fetch and check the data sets of the built-in objectives."),
    "trial": ("_trial", "One trial in full: state, values, params, why it failed, its traceback."),
    "rescore": ("_rescore", "Re-evaluate a study's best trial with other seeds."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use (see :data:`COMMANDS`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module = importlib.import_module(f"tunefleet.cli.{COMMANDS[cmd_name][0]}")
        command = getattr(module, cmd_name)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, short) for name, (_module, short) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tunefleet")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(debug: bool) -> None:
    """Distributed hyperparameter tuning: a fleet of workers tunes one Optuna study.

    \b
    Examples:
      tunefleet run sklearn-iris --n-trials 100 --workers 3
      DATABASE_URL=postgresql://u:pw@host/db tunefleet run sklearn-iris --study iris --n-trials 100
      tunefleet worker sklearn-iris --study iris --n-trials 100
    """


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI and turn every error into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("TUNEFLEET_DEBUG", "") not in ("", "0")
    # --debug is accepted anywhere on the line, not only before the command.
    args = (["--debug"] if "--debug" in args else []) + [a for a in args if a != "--debug"]
    if not debug:
        # SQLAlchemy's pool logs a traceback for every dead connection it resets or closes;
        # the retrier already says, once, that the database is unavailable and when it is back.
        logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
    try:
        code = cli.main(args=args, prog_name="tunefleet", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        _error("aborted")
        code = 130
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "tunefleet"
        message = exc.format_message().replace("\n", " ")
        _error(f"{message} (see '{command} --help')")
        code = exc.exit_code
    except click.ClickException as exc:
        _error(exc.format_message())
        code = exc.exit_code
    except TunefleetError as exc:
        if debug:
            _traceback()
        _error(str(exc))
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        if debug:
            _traceback()
        if _is_database_error(exc):
            # An outage that outlasted --db-wait mid-command (at start, open_storage says more).
            from tunefleet.storage._errors import _root_message

            _error(
                f"the database failed: {_root_message(exc)}: gave up after --db-wait; run the "
                "command again once the database is back (finished trials are kept)"
            )
            code = ExitCode.STORAGE
        else:
            _error(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
            code = 1
    sys.exit(code if isinstance(code, int) else 0)


def _is_database_error(exc: BaseException) -> bool:
    # Looked up in sys.modules, not imported: an error of these types means its module is loaded,
    # and importing them here would cost every `tunefleet --help` a second.
    for module, name in (
        ("sqlalchemy.exc", "SQLAlchemyError"),
        ("psycopg", "Error"),
        ("optuna.exceptions", "StorageInternalError"),
    ):
        kind = getattr(sys.modules.get(module), name, None)
        if isinstance(kind, type) and isinstance(exc, kind):
            return True
    return False


def _error(message: str) -> None:
    click.echo(f"error: {redact(message)}", err=True)


def _traceback() -> None:
    click.echo(redact(traceback.format_exc()), err=True)
