"""``tunefleet run`` and ``tunefleet worker``, and the study options they share."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from tunefleet._logging import LOG_FORMATS, set_log_context, setup_logging
from tunefleet._redact import redact
from tunefleet.artifacts import study_artifacts
from tunefleet.config import PRUNERS, SAMPLERS, StudySpec, load_spec, parse_objective_args
from tunefleet.constants import SAVE_MODELS
from tunefleet.errors import ConfigError, TunefleetError
from tunefleet.fleet import LocalFleet, describe_exit
from tunefleet.objectives import Objective, load_objective
from tunefleet.objectives._base import cpu_count
from tunefleet.objectives._common import THREADS_ENV
from tunefleet.storage import FleetStorage, open_storage, resolve_storage_url
from tunefleet.study import FleetStudy, default_study_name, open_study, resolve_directions
from tunefleet.summary import summarize
from tunefleet.worker import EXIT_DONE

__all__ = ["build_spec", "run", "study_options", "worker"]

F = TypeVar("F", bound=Callable[..., Any])
LOG_FORMAT_OPTION = click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    envvar="TUNEFLEET_LOG_FORMAT",
    help="Worker log lines as plain text or JSON lines (for log collectors).",
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
        click.option("--study", help="Study name (default: from the objective)."),
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
        click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON."),
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
            "--storage-engine",
            type=click.Choice(["auto", "fast", "stock"]),
            help="On PostgreSQL: tunefleet's fast path or Optuna's RDBStorage as is [auto: fast].",
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
        resolve_storage_url(spec.storage), db_wait=spec.db_wait, engine=spec.storage_engine
    )
    return spec, objective, storage


@click.command()
@study_options
@click.option("--workers", type=int, help="Worker processes [number of CPUs].")
@click.option(
    "--max-restarts",
    type=int,
    help="Restarts of crashed workers, in all, before giving up [3 x workers].",
)
@click.option("-v", "--verbose", is_flag=True, help="Show every worker's per-trial log lines.")
@LOG_FORMAT_OPTION
def run(
    objective: str | None,
    config_path: str | None,
    objective_args: tuple[str, ...],
    directions: tuple[str, ...],
    as_json: bool,
    verbose: bool,
    log_format: str,
    **flags: Any,
) -> int:
    """Run a local fleet of workers on one study and wait until it is done.

    The budget (--n-trials) and the deadline (--timeout) are for the whole study, not per
    worker. Example:

        tunefleet run sklearn-iris --n-trials 100 --workers 3
    """
    from tunefleet.display import FleetProgress, render_summary

    setup_logging(logging.INFO if verbose else logging.WARNING, log_format)
    spec = build_spec(objective, config_path, objective_args, directions, **flags)
    spec, objective_obj, storage = _prepare(spec)
    fleet_study = open_study(storage, spec, objective_obj)
    console = Console(stderr=True)
    out = Console()
    started = time.monotonic()
    n_workers = spec.workers or cpu_count()

    def done(code: int, restarts: int = 0) -> int:
        summary = summarize(fleet_study, wall_s=time.monotonic() - started)
        summary.restarts = restarts
        if as_json:
            out.print_json(json.dumps(summary.to_json()))
        else:
            render_summary(out, summary)
        return code

    if fleet_study.budget.done:
        console.print(f"study {spec.study} is already done: nothing to run")
        return done(0)

    def show(index: int, line: str) -> None:
        if log_format == "json":  # already one JSON object per line, naming its worker
            click.echo(redact(line), err=True)
            return
        console.print(f"[dim]\\[w{index}][/] {escape(redact(line))}", highlight=False)

    env = {"TUNEFLEET_STORAGE": storage.env_url}
    if THREADS_ENV not in os.environ:  # each worker's threads: its share of the CPUs
        env[THREADS_ENV] = str(max(1, cpu_count() // n_workers))
    fleet = LocalFleet(
        n_workers,
        spec.worker_args("info" if verbose else "warning", log_format),
        env=env,
        on_output=show,
    )
    console.print(f"study {spec.study}: {n_workers} workers on {storage.display_url}")
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
    with FleetProgress(console, fleet_study.name, spec.n_trials) as progress:
        fleet.start()
        try:
            while fleet.running() or _restart_crashed(
                fleet, fleet_study, max_restarts, given_up, console
            ):
                progress.update(summarize(fleet_study))
                time.sleep(0.5)
                _restart_crashed(fleet, fleet_study, max_restarts, given_up, console)
            progress.update(summarize(fleet_study))
        except KeyboardInterrupt:
            console.print("stopping workers (their running trials are handed back)...")
            fleet.stop()
            done(130, fleet.restarts)
            return 130
    codes = fleet.wait()
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    study_done = storage.ledger.budget(fleet_study.study_id).done
    code = done(0 if study_done else 1, fleet.restarts)
    if failed and not study_done:
        listing = ", ".join(f"w{i} {describe_exit(c)}" for i, c in failed)
        raise TunefleetError(
            f"the study is not done: {len(failed)} of {n_workers} workers failed ({listing}) "
            f"after {fleet.restarts} restarts: rerun with -v to see their logs"
        )
    return code


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
        if code is None or code == EXIT_DONE or index in given_up:
            continue
        if (
            code == TunefleetError.exit_code
            or fleet_study.storage.ledger.budget(fleet_study.study_id).done
        ):
            given_up.add(index)  # bad input fails again; a done study needs no replacement
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
    show_default=True,
    help="Worker log verbosity.",
)
@LOG_FORMAT_OPTION
def worker(
    objective: str | None,
    config_path: str | None,
    objective_args: tuple[str, ...],
    directions: tuple[str, ...],
    as_json: bool,
    log_level: str,
    log_format: str,
    **flags: Any,
) -> int:
    """Run one worker: join the study (creating it if needed) and run trials until it is done.

    This is what a Kubernetes pod or a process on any other machine runs. It exits 0 only when
    the study is done (budget spent or deadline passed). Example:

        tunefleet worker sklearn-iris --study iris --n-trials 100
    """
    from tunefleet.worker import Worker

    setup_logging(LOG_LEVELS[log_level], log_format)
    spec = build_spec(objective, config_path, objective_args, directions, **flags)
    spec, objective_obj, storage = _prepare(spec)
    started = time.monotonic()
    one = Worker(storage, spec, objective_obj)
    set_log_context(worker=one.worker_id)
    result = one.run()
    if as_json:
        fleet_study = open_study(storage, spec.merged(n_trials=None, timeout=None), objective_obj)
        summary = summarize(fleet_study, wall_s=time.monotonic() - started)
        Console().print_json(json.dumps(summary.to_json()))
    return result.exit_code
