"""tunefleet's vocabulary: exit codes, trial attribute names, environment variables, engines.

Readers (``status``, ``trials``, the report, Kubernetes) and writers (the worker, the storage)
import these names from here, so that a name means one thing everywhere and changes in one place.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ARTIFACTS_ATTR",
    "ATTEMPT_ATTR",
    "CLAIM_ATTR",
    "DATA_DIR_ENV",
    "DEBUG_ENV",
    "ENGINES",
    "FAILURE_KIND_ATTR",
    "FAILURE_POLICY_ATTR",
    "FAIL_REASON_ATTR",
    "FLEET_ID_ENV",
    "GIVEN_BACK_ATTR",
    "LOG_FORMAT_ENV",
    "LOSSES_ATTR",
    "LOST_ATTR",
    "READ_DB_WAIT_S",
    "RETRY_OF_ATTR",
    "SAVE_MODELS",
    "STOPPED_ATTR",
    "STORAGE_ENV",
    "STORAGE_ENV_FALLBACK",
    "THREADS_ENV",
    "TRACEBACK_ATTR",
    "WORKER_ATTR",
    "ExitCode",
]


class ExitCode(IntEnum):
    """Exit codes of ``tunefleet`` commands, workers included (documented in the README)."""

    #: The command did what was asked; for a worker: the study is done (budget or deadline).
    OK = 0
    #: An unexpected error (a bug, or a failure tunefleet does not know how to name).
    UNEXPECTED = 1
    #: Bad input: an option, flag, config file or objective the user must fix. Not retried.
    CONFIG = 2
    #: The storage cannot be reached or used (after ``--db-wait``), or holds no such study.
    STORAGE = 3
    #: The Kubernetes cluster refused or cannot be reached.
    CLUSTER = 4
    #: The objective is broken: the study's first trials all failed (or more than
    #: ``--max-failures`` failed), so the fleet stopped; the failed trials' budget was given back.
    #: Not retried: fix the objective and run the same command again.
    OBJECTIVE_BROKEN = 5
    #: Stopped by a signal before the study was done: a supervisor should start a replacement.
    INTERRUPTED = 75
    #: Ctrl-C (SIGINT) on a command that is not a worker.
    SIGINT = 130
    #: SIGTERM on a command that is not a worker.
    SIGTERM = 143


# Trial system attributes tunefleet writes (stock Optuna readers see them as plain attributes).
#: Why a trial failed (the name Optuna 2 used for the same).
FAIL_REASON_ATTR = "fail_reason"
#: The redacted traceback of an objective's exception.
TRACEBACK_ATTR = "tunefleet:traceback"
#: Set on a trial that its worker lost (stopped beating) and that was handed back.
LOST_ATTR = "tunefleet:lost"
#: How many times this parameter set has been run (1 for the first run).
ATTEMPT_ATTR = "tunefleet:attempt"
#: How many runs of this parameter set were lost (their worker died or stopped beating).
LOSSES_ATTR = "tunefleet:losses"
#: On a re-run: the number of the trial it repeats.
RETRY_OF_ATTR = "tunefleet:retry_of"
#: The budget slot (claim id) a trial was created under.
CLAIM_ATTR = "tunefleet:claim"
#: The worker that ran the trial.
WORKER_ATTR = "tunefleet:worker"
#: How a trial failed: ``exception``, ``invalid`` (a bad return value), ``timeout``, ``crash``.
FAILURE_KIND_ATTR = "tunefleet:failure"
#: Set on a failed trial whose budget slot was given back when the fleet stopped on failures.
GIVEN_BACK_ATTR = "tunefleet:given_back"

# Study system attributes tunefleet writes.
#: The failure policy every worker of the study applies: ``{"broken_after", "max_failures"}``.
FAILURE_POLICY_ATTR = "tunefleet:failure_policy"
#: Set when a fleet stopped on failures: ``{"reason", "fleet", "error"}``; cleared by a new run.
STOPPED_ATTR = "tunefleet:stopped"


#: Study system attribute: the study's artifact store and which models it keeps (JSON).
ARTIFACTS_ATTR = "tunefleet:artifacts"
#: ``--save-models``: every trial's model, the best k only, or none.
SAVE_MODELS = ("all", "best", "none")

# Environment variables tunefleet reads.
#: The storage URL (before ``DATABASE_URL``).
STORAGE_ENV = "TUNEFLEET_STORAGE"
#: The storage URL when ``TUNEFLEET_STORAGE`` is unset (Heroku, Neon, Kubernetes convention).
STORAGE_ENV_FALLBACK = "DATABASE_URL"
#: Threads each worker's numerical libraries use.
THREADS_ENV = "TUNEFLEET_THREADS"
#: Where built-in objectives keep downloaded data sets.
DATA_DIR_ENV = "TUNEFLEET_DATA_DIR"
#: ``1`` shows tracebacks, like ``--debug``.
DEBUG_ENV = "TUNEFLEET_DEBUG"
#: ``json`` or ``text``: the worker's log format.
LOG_FORMAT_ENV = "TUNEFLEET_LOG_FORMAT"
#: Names the run (``tunefleet run``, one Kubernetes Job) a worker belongs to: the workers of one
#: run share a stop on a broken objective; a worker of a later run starts afresh.
FLEET_ID_ENV = "TUNEFLEET_FLEET_ID"

#: Storage engines: on PostgreSQL ``auto`` means ``fast``.
ENGINES = ("auto", "fast", "stock")

#: How long a reader (``status``, ``trials``, ...) waits for an unreachable database by default;
#: a worker waits 60 s (``--db-wait``).
READ_DB_WAIT_S = 10.0
