"""The ``tunefleet`` command line. Commands are thin: parse, call the library, print, exit.

Every problem a user can fix is printed as one line, ``error: <problem>: <fix>``, with a
non-zero exit code; a traceback only with ``--debug`` (or ``TUNEFLEET_DEBUG=1``). Each group of
commands lives in a module of its own and is registered here.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Sequence

import click
import optuna
import psycopg
import sqlalchemy.exc

from tunefleet._redact import redact
from tunefleet.cli._data import data
from tunefleet.cli._k8s import k8s
from tunefleet.cli._monitor import best, dashboard, report, status, studies, trials
from tunefleet.cli._rescore import rescore
from tunefleet.cli._study import run, worker
from tunefleet.cli._trial import trial
from tunefleet.constants import ExitCode
from tunefleet.errors import TunefleetError
from tunefleet.storage._errors import _root_message

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


cli.add_command(run)
cli.add_command(worker)
cli.add_command(k8s)
cli.add_command(status)
cli.add_command(studies)
cli.add_command(best)
cli.add_command(trials)
cli.add_command(trial)
cli.add_command(report)
cli.add_command(dashboard)
cli.add_command(data)
cli.add_command(rescore)


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
    except DATABASE_ERRORS as exc:
        # An outage that outlasted --db-wait mid-command (at start, open_storage says more).
        if debug:
            _traceback()
        _error(
            f"the database failed: {_root_message(exc)}: gave up after --db-wait; run the "
            "command again once the database is back (finished trials are kept)"
        )
        code = ExitCode.STORAGE
    except Exception as exc:
        if debug:
            _traceback()
        _error(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


DATABASE_ERRORS = (
    sqlalchemy.exc.SQLAlchemyError,
    psycopg.Error,
    optuna.exceptions.StorageInternalError,
)


def _error(message: str) -> None:
    click.echo(f"error: {redact(message)}", err=True)


def _traceback() -> None:
    click.echo(redact(traceback.format_exc()), err=True)
