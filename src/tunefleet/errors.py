"""Errors tunefleet raises for problems a user can fix.

Each carries a one-line message that names the problem and the fix; the CLI prints it as is and
exits non-zero (a traceback only with ``--debug``). Errors from dependencies (SQLAlchemy, psycopg,
importlib) are translated into these at the boundary where we know what the user was doing.
"""

from __future__ import annotations

from tunefleet.constants import ExitCode

__all__ = [
    "ConfigError",
    "DownloadError",
    "NoStudiesError",
    "ObjectiveBrokenError",
    "ObjectiveError",
    "StorageError",
    "StudyError",
    "TunefleetError",
]


class TunefleetError(Exception):
    """Base class: a problem with the user's input or environment, with a one-line message."""

    exit_code: int = ExitCode.CONFIG


class ConfigError(TunefleetError):
    """An invalid option, flag or ``--config`` file."""


class StorageError(TunefleetError):
    """The storage URL is malformed, or the database cannot be reached or used."""

    exit_code: int = ExitCode.STORAGE


class NoStudiesError(StorageError):
    """A reader opened a database that holds no studies at all (nothing has run there)."""


class ObjectiveError(TunefleetError):
    """The objective cannot be found, imported or called."""


class ObjectiveBrokenError(TunefleetError):
    """The fleet stopped because the objective keeps failing (see :mod:`tunefleet.failures`)."""

    exit_code: int = ExitCode.OBJECTIVE_BROKEN


class StudyError(TunefleetError):
    """The study exists but does not match what was asked (for example its direction)."""


class DownloadError(ObjectiveError):
    """A data set could not be downloaded (network, mirror): not the user's input, so it exits
    with the storage/network code, like an unreachable database."""

    exit_code: int = ExitCode.STORAGE
