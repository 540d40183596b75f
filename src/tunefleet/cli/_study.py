"""``tunefleet run`` and ``tunefleet worker``, and the study options they share."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

import click
import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.markup import escape

from tunefleet import constants
from tunefleet._logging import LOG_FORMATS, set_log_context, setup_logging
from tunefleet._redact import redact
from tunefleet.artifacts import study_artifacts
from tunefleet.cli._options import emit, output_option
from tunefleet.config import PRUNERS, SAMPLERS, StudySpec, load_spec, parse_objective_args
from tunefleet.constants import LOST_ATTR, SAVE_MODELS, ExitCode
from tunefleet.errors import ConfigError, ObjectiveBrokenError, StorageError, TunefleetError
from tunefleet.failures import TracebackFilter, read_stop
from tunefleet.fleet import LocalFleet, describe_exit
from tunefleet.objectives import Objective, load_objective
from tunefleet.objectives._base import cpu_count
from tunefleet.objectives._common import THREADS_ENV
from tunefleet.storage import FleetStorage, open_storage, resolve_storage_url
from tunefleet.storage._engine import QUERY_TIMEOUT_S
from tunefleet.storage._failures import counted_failures
from tunefleet.storage._ledger import LOCK_IDLE_TIMEOUT_S
from tunefleet.study import FleetStudy, default_study_name, open_study, resolve_directions

__all__ = ["build_spec", "run", "study_options", "worker"]

F = TypeVar("F", bound=Callable[..., Any])
#: How long after the study is done ``run`` waits for a worker to exit by itself.
STRAGGLER_GRACE_S = 10.0
LOG_FORMAT_OPTION = click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    envvar="TUNEFLEET_LOG_FORMAT",
    help="Worker log lines as plain text or JSON lines (for log collectors) [text].",
)
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def study_options(func: F) -> F:
    """The options ``run`` and ``worker`` share: everything that defines the study."""
    options = [
        click.argument("objective", required=False),
        click.option(
            "--study",
            "--study-name",
            "study",
            metavar="NAME",
            help="Study name [from the objective].",
        ),
        click.option(
            "--storage",
            metavar="URL",
            help="postgresql://user:pw@host/db or sqlite:///file.db (default: "
            "$TUNEFLEET_STORAGE, $DATABASE_URL, else ./tunefleet.db).",
        ),
        click.option(
            "--n-trials",
            type=int,
            help="Total trials for the whole study, across every worker and restart.",
        ),
        click.option(
            "--timeout",
            type=float,
            metavar="SECONDS",
            help="Deadline for the whole study, counted from its creation.",
        ),
        click.option(
            "--direction",
            "directions",
            multiple=True,
            type=click.Choice(["minimize", "maximize"]),
            help="Repeat for multi-objective (default: the objective's, else minimize).",
        ),
        click.option("--sampler", type=click.Choice(SAMPLERS), help="Optuna sampler [tpe]."),
        click.option("--seed", type=int, help="Sampler and objective seed."),
        click.option("--pruner", type=click.Choice(PRUNERS), help="Optuna pruner [median]."),
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False),
            help="TOML study spec; flags override it.",
        ),
        click.option(
            "--objective-arg",
            "objective_args",
            multiple=True,
            metavar="KEY=VALUE",
            help="Setting passed to the objective (repeatable).",
        ),
        click.option(
            "--heartbeat-interval",
            type=float,
            metavar="SECONDS",
            help="Seconds between a worker's heartbeats [5].",
        ),
        click.option(
            "--grace-period",
            type=float,
            metavar="SECONDS",
            help="Silence after which a worker is declared lost and its trial re-run [60].",
        ),
        click.option(
            "--retry-failed",
            type=int,
            metavar="K",
            help="Re-run a trial whose objective raised up to K times, same parameters [0].",
        ),
        click.option(
            "--max-failures",
            type=int,
            metavar="N",
            help="Stop the fleet once more than N trials failed [unlimited; a study whose "
            "first 3 trials all fail stops anyway].",
        ),
        click.option(
            "--trial-timeout",
            type=float,
            metavar="SECONDS",
            help="Stop a trial that runs longer; it fails as timed out and counts [none].",
        ),
        click.option(
            "--storage-engine",
            type=click.Choice(["auto", "fast", "stock"]),
            help="tunefleet's fast engine or Optuna's RDBStorage (cached) [auto: fast].",
        ),
        click.option(
            "--db-wait",
            type=float,
            metavar="SECONDS",
            help="How long to wait for an unreachable database [60].",
        ),
        click.option(
            "--artifacts",
            metavar="URL",
            help="Where trials' models go, stored with the study: file:///dir (every worker "
            "sees it) or s3://bucket/prefix (AWS_ENDPOINT_URL for S3-compatible servers).",
        ),
        click.option(
            "--save-models",
            type=click.Choice(SAVE_MODELS),
            help="Which trials' models to keep in --artifacts [best: the best --keep-best].",
        ),
        click.option(
            "--keep-best",
            type=int,
            metavar="K",
            help="With --save-models best: how many of the best trials keep their models [1].",
        ),
    ]
    func = output_option("table", "json", "yaml")(func)
    for option in reversed(options):
        func = option(func)
    return func


def build_spec(
    objective: str | None,
    config_path: str | None,
    objective_args: Sequence[str],
    directions: Sequence[str],
    **flags: Any,
) -> StudySpec:
    spec = load_spec(config_path) if config_path else StudySpec()
    spec = spec.merged(
        objective=objective,
        directions=tuple(directions),
        objective_args=parse_objective_args(objective_args),
        **flags,
    )
    if not spec.objective:
        raise ConfigError(
            "no objective given: name one (tunefleet run sklearn-iris) or set "
            'objective = "..." in the --config file'
        )
    return spec


def _prepare(spec: StudySpec) -> tuple[StudySpec, Objective, FleetStorage]:
    """Resolve objective and storage before any worker starts, so errors are reported once."""
    assert spec.objective is not None
    objective = load_objective(spec.objective, spec.objective_args)
    directions, _ = resolve_directions(spec, objective)
    spec = spec.merged(study=spec.study or default_study_name(objective), directions=directions)
    storage = open_storage(
        resolve_storage_url(spec.storage),
        db_wait=spec.db_wait,
        engine=spec.storage_engine,
        query_timeout=query_timeout(spec),
        lock_idle_timeout=lock_idle_timeout(spec),
    )
    return spec, objective, storage


def query_timeout(spec: StudySpec) -> float:
    """How long one database call may hang before its connection is dropped and retried: never
    longer than the grace period, after which the worker's trial is handed to others anyway."""
    return max(5.0, min(QUERY_TIMEOUT_S, spec.grace_period))


def lock_idle_timeout(spec: StudySpec) -> float:
    """How long a stopped worker may keep locks others wait for: at most half the grace period,
    so they are gone before another worker takes its slot back, which would otherwise wait on
    them."""
    return min(LOCK_IDLE_TIMEOUT_S, spec.grace_period / 2)


@click.command()
@study_options
@click.option("--workers", type=int, help="Worker processes [number of CPUs].")
@click.option(
    "--max-restarts",
    type=int,
    help="Restarts of crashed workers, in all, before giving up [3 x workers].",
)
@click.option("-v", "--verbose", is_flag=True, help="Show every worker's per-trial log lines.")
@click.option(
    "--progress-interval",
    type=click.FloatRange(min=0),
    default=10.0,
    metavar="SECONDS",
    help="Without a terminal: a progress line every SECONDS, not a live bar (0: none) [10].",
)
@LOG_FORMAT_OPTION
def run(
    objective: str | None,
    config_path: str | None,
    objective_args: tuple[str, ...],
    directions: tuple[str, ...],
    output: str,
    verbose: bool,
    progress_interval: float,
    log_format: str,
    **flags: Any,
) -> int:
    """Run a local fleet of workers on one study and wait until it is done.

    The budget (--n-trials) and the deadline (--timeout) are for the whole study, not per
    worker. Example:

        tunefleet run sklearn-iris --n-trials 100 --workers 3
    """
    from tunefleet.display import FleetProgress, render_summary
    from tunefleet.storage.read import StudyRef
    from tunefleet.summary import read_status

    setup_logging(logging.INFO if verbose else logging.WARNING, log_format)
    spec = build_spec(objective, config_path, objective_args, directions, **flags)
    spec, objective_obj, storage = _prepare(spec)
    fleet_study = open_study(storage, spec, objective_obj)
    study_directions = tuple(d.name.lower() for d in fleet_study.study.directions)
    ref = StudyRef(fleet_study.study_id, fleet_study.name, study_directions)
    console = Console(stderr=True)
    out = Console(soft_wrap=True)
    started = time.monotonic()
    n_workers = spec.workers or cpu_count()

    def done(code: int, restarts: int = 0) -> int:
        status = read_status(storage, ref)
        wall_s = time.monotonic() - started
        if output == "table":
            render_summary(out, status, wall_s, restarts)
        else:
            run_info = {"wall_s": round(wall_s, 3), "restarts": restarts, "workers": n_workers}
            emit(status.to_json() | {"run": run_info}, output)
        return code

    if fleet_study.budget.done:
        console.print(_already_done(spec, fleet_study), highlight=False, soft_wrap=True)
        if not fleet_study.budget.deadline_passed:
            console.print(_how_to_go_on(fleet_study, spec), highlight=False, soft_wrap=True)
        return done(0)
    tracebacks = TracebackFilter()

    def show(index: int, line: str) -> None:
        if not tracebacks.keep(index, line):
            return  # another worker already showed this error's traceback
        if log_format == "json":  # already one JSON object per line, naming its worker
            click.echo(redact(line), err=True)
            return
        # soft_wrap: a worker's log record stays one line, whatever the width.
        console.print(
            f"[dim]\\[w{index}][/] {escape(redact(line))}", highlight=False, soft_wrap=True
        )

    # The workers of this run share a stop on a broken objective (tunefleet.failures).
    env = {"TUNEFLEET_STORAGE": storage.env_url, constants.FLEET_ID_ENV: uuid.uuid4().hex}
    if THREADS_ENV not in os.environ:  # each worker's threads: its share of the CPUs
        env[THREADS_ENV] = str(max(1, cpu_count() // n_workers))
    fleet = LocalFleet(
        n_workers,
        spec.worker_args("info" if verbose else "warning", log_format),
        env=env,
        on_output=show,
    )
    workers = "worker" if n_workers == 1 else "workers"
    console.print(
        f"study {spec.study}: {n_workers} {workers} on {storage.display_url}",
        highlight=False,
        soft_wrap=True,
    )
    kept = study_artifacts(storage.optuna, fleet_study.study_id)
    if kept is not None:
        which = {
            "best": f"models of the best {kept[0].keep_best} trial(s)",
            "all": "models of every completed trial",
            "none": "no models (--save-models none)",
        }[kept[0].save_models]
        console.print(f"artifacts: {which} in {kept[0].url}", highlight=False)
    max_restarts = spec.max_restarts if spec.max_restarts is not None else 3 * n_workers
    given_up: set[int] = set()
    progress = FleetProgress(console, fleet_study.name, progress_interval)
    with progress, _sigterm_raises():
        fleet.start()
        done_since: float | None = None
        budget_seen = fleet_study.budget.n_trials
        try:
            while fleet.running() or _restart_crashed(
                fleet, fleet_study, max_restarts, given_up, console
            ):
                progress.update(read_status(storage, ref))
                time.sleep(1.0)
                _restart_crashed(fleet, fleet_study, max_restarts, given_up, console)
                done_since = _stop_stragglers(fleet, fleet_study, done_since, spec, console)
                budget_seen = _announce_budget_change(fleet_study, budget_seen, console)
        except (KeyboardInterrupt, _Terminated) as exc:
            progress.stop()  # the summary follows on a clean screen
            signalled = ExitCode.SIGTERM if isinstance(exc, _Terminated) else ExitCode.SIGINT
            console.print("stopping workers (their running trials are handed back)...")
            fleet.stop()
            done(signalled, fleet.restarts)
            return int(signalled)
        except Exception:
            fleet.stop()  # the database gave out (past --db-wait): leave no worker behind
            raise
    codes = fleet.wait()
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    study_done = storage.ledger.budget(fleet_study.study_id).done
    if ExitCode.OBJECTIVE_BROKEN in codes and not study_done:
        done(ExitCode.OBJECTIVE_BROKEN, fleet.restarts)
        raise _broken_error(storage, fleet_study.study_id, fleet_study.name)
    code = done(0 if study_done else 1, fleet.restarts)
    if failed and not study_done and all(c == ExitCode.STORAGE for _, c in failed):
        raise StorageError(
            f"the study is not done: its workers could not reach the database for longer than "
            f"--db-wait ({spec.db_wait:g}s): run again once it is back (finished trials are kept)"
        )
    if failed and not study_done:
        listing = ", ".join(f"w{i} {describe_exit(c)}" for i, c in failed)
        raise WorkersFailed(
            f"the study is not done: {len(failed)} of {n_workers} workers failed ({listing}) "
            f"after {fleet.restarts} restarts: rerun with -v to see their logs"
        )
    return code


class WorkersFailed(TunefleetError):
    """``run`` ended with the study not done because its workers kept failing."""

    exit_code = ExitCode.UNEXPECTED


class _Terminated(Exception):
    """SIGTERM on ``run`` (``timeout``, a CI cancel, ``docker stop``): stop like Ctrl-C."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    def handle(_signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends run at once
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _announce_budget_change(
    fleet_study: FleetStudy, seen: int | None, console: Console
) -> int | None:
    """Say so when another run or worker sets the study's budget (``--n-trials`` is absolute,
    the last one given wins): this run now ends at that budget, not at its own."""
    n_trials = fleet_study.storage.ledger.budget(fleet_study.study_id).n_trials
    if n_trials != seen:
        console.print(
            f"the budget of study {fleet_study.name} was changed to {n_trials} trials by "
            "another run or worker: this run now ends there",
            highlight=False,
        )
    return n_trials


def _stop_stragglers(
    fleet: LocalFleet,
    fleet_study: FleetStudy,
    done_since: float | None,
    spec: StudySpec,
    console: Console,
) -> float | None:
    """Stop workers still alive well after the study is done (stuck on a dead connection, or
    paused): a done worker exits within a poll, so one that has not is not coming back."""
    if not fleet.running() or not fleet_study.storage.ledger.budget(fleet_study.study_id).done:
        return None
    now = time.monotonic()
    if done_since is None:
        return now
    if now - done_since < STRAGGLER_GRACE_S + spec.heartbeat_interval:
        return done_since
    stuck = [i for i, code in enumerate(fleet.exit_codes()) if code is None]
    console.print(
        f"the study is done but {len(stuck)} workers have not exited: stopping them",
        highlight=False,
    )
    fleet.stop()
    _fail_orphaned_trials(fleet_study)
    return done_since


def _fail_orphaned_trials(fleet_study: FleetStudy) -> None:
    """After stopping the last workers of a done study, fail as lost the trials they could not
    hand back (killed while stuck), so none stays RUNNING. The study is done: nothing is
    re-queued, and the slot is given back (the trial does not count)."""
    storage, study_id = fleet_study.storage, fleet_study.study_id
    for claim in storage.ledger.take_stale_claims(study_id, "tunefleet-run", grace=0):
        if claim.trial_id is not None:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                storage.optuna.set_trial_system_attr(
                    claim.trial_id, LOST_ATTR, f"worker {claim.worker_id} stopped by run: stuck"
                )
                storage.optuna.set_trial_state_values(claim.trial_id, TrialState.FAIL)
            if storage.optuna.get_trial(claim.trial_id).state != TrialState.FAIL:
                storage.ledger.keep_claim(claim.claim_id)  # it finished after all
                continue
        storage.ledger.release(claim.claim_id)


def _already_done(spec: StudySpec, fleet_study: FleetStudy) -> str:
    """Why nothing runs; a new --timeout on a study whose deadline passed is explained."""
    budget = fleet_study.budget
    if budget.deadline_passed and spec.timeout is not None:
        return (
            f"study {spec.study} is already done: its deadline passed (--timeout is fixed when "
            f"a study is created, so --timeout {spec.timeout:g} does not extend it): "
            "pick another --study to run again"
        )
    if budget.deadline_passed:
        return f"study {spec.study} is already done: its deadline passed; nothing to run"
    return (
        f"study {spec.study} is already done: {budget.n_counted} of {budget.n_trials} trials "
        "counted; nothing to run (a larger --n-trials runs more)"
    )


def _restart_crashed(
    fleet: LocalFleet,
    fleet_study: FleetStudy,
    max_restarts: int,
    given_up: set[int],
    console: Console,
) -> bool:
    """Restart workers that exited before the study was done (like a Job's restartPolicy),
    at most ``max_restarts`` times in all (like its backoffLimit). Returns whether any was."""
    restarted = False
    for index, code in enumerate(fleet.exit_codes()):
        if code is None or code == ExitCode.OK or index in given_up:
            continue
        if (
            code in (TunefleetError.exit_code, ExitCode.STORAGE, ExitCode.OBJECTIVE_BROKEN)
            or fleet_study.storage.ledger.budget(fleet_study.study_id).done
        ):
            # Bad input fails again, as do a broken objective and a database already waited
            # for (--db-wait); a done study needs no replacement.
            given_up.add(index)
            continue
        if fleet.restarts >= max_restarts:
            console.print(
                f"[w{index}] {describe_exit(code)}; not restarted: "
                f"{max_restarts} restarts used (--max-restarts)",
                highlight=False,
            )
            given_up.add(index)
            continue
        fleet.restart(index)
        restarted = True
        console.print(
            f"[w{index}] {describe_exit(code)}; restarted "
            f"({fleet.restarts} of at most {max_restarts} restarts)",
            highlight=False,
        )
    return restarted


@click.command()
@study_options
@click.option(
    "--log-level",
    type=click.Choice(list(LOG_LEVELS)),
    default="info",
    help="Worker log verbosity [info].",
)
@LOG_FORMAT_OPTION
def worker(
    objective: str | None,
    config_path: str | None,
    objective_args: tuple[str, ...],
    directions: tuple[str, ...],
    output: str,
    log_level: str,
    log_format: str,
    **flags: Any,
) -> int:
    """Run one worker: join the study (creating it if needed) and run trials until it is done.

    This is what a Kubernetes pod or a process on any other machine runs. It exits 0 only when
    the study is done (budget spent or deadline passed). Example:

        tunefleet worker sklearn-iris --study iris --n-trials 100
    """
    from tunefleet._streams import guard_output
    from tunefleet.worker import Worker

    guard_output()  # before logging, whose handler writes to the guarded stderr
    setup_logging(LOG_LEVELS[log_level], log_format)
    spec = build_spec(objective, config_path, objective_args, directions, **flags)
    spec, objective_obj, storage = _prepare(spec)
    started = time.monotonic()
    one = Worker(storage, spec, objective_obj)
    set_log_context(worker=one.worker_id)
    result = one.run()
    if result.reason == "failures" or output != "table":
        # Read, never re-open: opening the study would write this worker's --n-trials back as
        # the budget, shrinking one that another worker extended meanwhile.
        from tunefleet.summary import read_status, resolve_study

        ref = resolve_study(storage, spec.study)
        if result.reason == "failures":
            raise _broken_error(storage, ref.study_id, ref.name)
        status = read_status(storage, ref)
        info = {
            "worker_id": one.worker_id,
            "n_trials": result.n_trials,
            "reason": result.reason,
            "wall_s": round(time.monotonic() - started, 3),
        }
        emit(status.to_json() | {"worker": info}, output)
    return result.exit_code


def _broken_error(storage: FleetStorage, study_id: int, name: str) -> ObjectiveBrokenError:
    """The one-line error for a fleet stopped on failures: why, where, and what to do."""
    stop = read_stop(storage, study_id)
    why = stop.reason if stop else "the objective keeps failing"
    first = f" (first error: {stop.error})" if stop and stop.error else ""
    return ObjectiveBrokenError(
        f"{why}{first}: fix the objective and run the same command again (the failed trials' "
        f"budget was given back); 'tunefleet trial N --study {name}' prints a "
        "trial's traceback"
    )


def _how_to_go_on(fleet_study: FleetStudy, spec: StudySpec) -> str:
    """For a study whose budget is spent: the ways to run more."""
    budget = fleet_study.budget
    if budget.deadline_passed and not budget.budget_spent:
        return f"its deadline has passed: to run more, pick a new --study than {spec.study}"
    storage = fleet_study.storage
    n_failed = sum(counted_failures(storage.engine, storage.retrier, fleet_study.study_id).values())
    more = (budget.n_trials or 0) + 10
    hint = (
        f"to run more, raise the budget (--n-trials {more} runs 10 more trials in this study) "
        f"or start afresh with a new --study"
    )
    if n_failed:
        hint += (
            f"; {n_failed} of its trials failed ('tunefleet trials --state fail' lists them): "
            f"--n-trials {(budget.n_trials or 0) + n_failed} runs as many new ones, and "
            "--retry-failed K re-runs a failing trial's parameters up to K times"
        )
    return hint
