"""``tunefleet status``, ``studies``, ``best``, ``trials``, ``report`` and ``dashboard``.

Each reads a storage that workers may be writing right now, from any machine that reaches it,
and changes nothing in it. ``--storage`` resolves as for ``run``; ``--study`` may be left out
when the storage holds a single study.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from tunefleet.cli._options import (
    artifacts_option,
    db_wait_option,
    emit,
    output_option,
    storage_option,
    study_option,
)
from tunefleet.errors import ConfigError, StorageError, StudyError

if TYPE_CHECKING:
    from tunefleet import monitor
    from tunefleet.storage import FleetStorage

# Optuna, SQLAlchemy and rich are imported by the commands that run, not to build the CLI:
# `tunefleet --help` stays quick.

__all__ = ["best", "dashboard", "report", "status", "studies", "trials"]


def quiet_retries() -> None:
    """A reader says nothing while it retries: it succeeds, or fails with one line (exit 3)."""
    logging.getLogger("tunefleet.storage").setLevel(logging.ERROR)


@contextmanager
def _opened(storage_flag: str | None, db_wait: float) -> Iterator[FleetStorage]:
    """The storage, open for reading through its read API (which retries for up to
    ``db_wait`` seconds and turns database errors into one line, exit 3), then closed."""
    from tunefleet.storage import resolve_storage_url
    from tunefleet.storage.read import open_reader

    quiet_retries()
    fs = open_reader(resolve_storage_url(storage_flag), db_wait)
    try:
        yield fs
    finally:
        fs.close()


@click.command()
@storage_option
@study_option
@click.option("--watch", "-w", is_flag=True, help="Refresh until the study is done.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=2.0,
    metavar="SECONDS",
    help="Refresh interval for --watch [2].",
)
@output_option("table", "json", "yaml")
@db_wait_option()
def status(
    storage: str | None,
    study: str | None,
    watch: bool,
    interval: float,
    output: str,
    db_wait: float,
) -> int:
    """Show how a study is going: trials by state, budget, rate and ETA, best trial, workers.

    Reads a few grouped counts, so it stays fast on large studies. With -o json, --watch prints
    one JSON object per refresh (docs/json-schema.md). Example:

        tunefleet status --study iris --watch
    """
    from tunefleet import monitor

    with _opened(storage, db_wait) as fs:
        ref = monitor.resolve_study(fs, study)
        current = monitor.read_status(fs, ref)
        if output != "table":
            emit(current.to_json(), output)
        if not watch:
            if output == "table":
                _console().print(monitor.render_status(current))
            return 0
        try:
            if output != "table":
                while not _finished(current):
                    time.sleep(interval)
                    current = _refresh(fs, ref, current)[0]
                    emit(current.to_json(), output)
                    sys.stdout.flush()
            else:
                _watch(fs, ref, current, interval)
        except KeyboardInterrupt:
            pass
    return 0


def _console() -> Any:
    from rich.console import Console

    return Console()


def _finished(current: monitor.StudyStatus) -> bool:
    return current.done and current.states.get("RUNNING", 0) == 0


def _refresh(
    fs: FleetStorage, ref: monitor.StudyRef, last: monitor.StudyStatus
) -> tuple[monitor.StudyStatus, str | None]:
    """A new status, or the last one and why it could not be read (the watch goes on)."""
    from tunefleet import monitor

    try:
        return monitor.read_status(fs, ref), None
    except StorageError as exc:
        return last, str(exc)


def _watch(
    fs: FleetStorage, ref: monitor.StudyRef, current: monitor.StudyStatus, interval: float
) -> None:
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from tunefleet import monitor

    with Live(monitor.render_status(current), console=_console(), auto_refresh=False) as live:
        last_frame = _finished(current)
        while not last_frame:
            # Once the study is done, one more frame shows the workers that were exiting.
            last_frame = _finished(current)
            time.sleep(interval)
            current, problem = _refresh(fs, ref, current)
            view = monitor.render_status(current)
            if problem:
                view = Group(view, Text(f"{problem} (retrying)", style="red"))
            live.update(view, refresh=True)


def _dashboard_store(fs: FleetStorage, study_id: int | None, url: str | None) -> Any:
    """The artifact store the dashboard serves: ``--artifacts``, else the study's, else the one
    store all the storage's studies share (the dashboard takes one store); None if none."""
    from tunefleet.artifacts import open_artifact_store, study_artifacts

    if url is not None:
        return open_artifact_store(url)
    ids = [study_id] if study_id is not None else [s._study_id for s in fs.optuna.get_all_studies()]
    found = {}
    for sid in ids:
        opened = study_artifacts(fs.optuna, sid)
        if opened is not None:
            found[opened[0].url] = opened[1]
    if len(found) > 1:
        from rich.console import Console

        Console(stderr=True).print(
            "[yellow]warning:[/] the studies here use different artifact stores: pass --study "
            "to see one study's artifacts",
            highlight=False,
        )
        return None
    return next(iter(found.values()), None)


def _download(
    fs: FleetStorage,
    ref: monitor.StudyRef,
    found: list[monitor.BestTrial],
    dest: Path,
    url: str | None,
) -> None:
    """Fetch the best trials' artifacts: into ``dest``, or ``dest/trial-N`` for a front."""
    from tunefleet.artifacts import download_trial, kept_twin, study_artifacts

    opened = study_artifacts(fs.optuna, ref.study_id, url)
    if opened is None:
        raise ConfigError(
            f"study '{ref.name}' has no artifact store: run it with --artifacts URL, or give "
            "--artifacts here"
        )
    if not found:
        raise StudyError(f"study '{ref.name}' has no completed trial yet: nothing to download")
    from rich.console import Console

    err = Console(stderr=True)
    for best_trial in found:
        trial_id = fs.optuna.get_trial_id_from_study_id_trial_number(
            ref.study_id, best_trial.number
        )
        frozen = kept_twin(fs.optuna, ref.study_id, fs.optuna.get_trial(trial_id))
        where = dest if len(found) == 1 else dest / f"trial-{frozen.number}"
        written = download_trial(fs.optuna, frozen, opened[1], where)
        if not written:
            raise StudyError(
                f"best trial #{frozen.number} of '{ref.name}' has no artifacts (was it run "
                "with --save-models none, or before --artifacts was set?)"
            )
        names = ", ".join(p.name for p in written)
        err.print(f"trial #{frozen.number}: {names} -> {where}", highlight=False)


@click.command()
@storage_option
@output_option("table", "json", "yaml", "csv")
@db_wait_option()
def studies(storage: str | None, output: str, db_wait: float) -> int:
    """List the studies in a storage with their progress and best value.

    -o json prints a list of the same objects as status -o json. Example:

        tunefleet studies --storage postgresql://user:pw@host/db
    """
    from tunefleet import monitor

    with _opened(storage, db_wait) as fs:
        rows = monitor.list_studies(fs)
    if output in ("json", "yaml"):
        emit([r.to_json() for r in rows], output)
    elif output == "csv":
        click.echo(_studies_csv(rows), nl=False)
    elif not rows:
        _console().print(f"no studies in {fs.display_url}", highlight=False)
    else:
        _console().print(monitor.render_studies(rows, fs.display_url))
    return 0


def _studies_csv(rows: list[monitor.StudyStatus]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["study", "directions", "n_trials", "counted", "budget", "in_flight", "done"]
    writer.writerow([*header, "best_value", "live_workers", "rate_per_min"])
    for r in rows:
        best = "" if r.best_value is None else repr(r.best_value)
        budget = "" if r.budget is None else r.budget
        writer.writerow(
            [r.study, " ".join(r.directions), r.n_trials, r.n_counted, budget, r.n_in_flight,
             str(r.done).lower(), best, len(r.live_workers), round(r.rate_per_min, 3)]
        )  # fmt: skip
    return buffer.getvalue()


@click.command()
@storage_option
@study_option
@output_option("table", "json", "yaml")
@click.option(
    "--download",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Fetch the best trial's artifacts (its model, metrics.json) into DIR.",
)
@artifacts_option
@db_wait_option()
def best(
    storage: str | None,
    study: str | None,
    output: str,
    download: Path | None,
    artifacts: str | None,
    db_wait: float,
) -> int:
    """Show the best trial's value and parameters (the Pareto front for several objectives).

    Trials are the same objects as in trials -o json. Examples:

        tunefleet best --study iris -o json

        tunefleet best --study xgb --download best-model/
    """
    from tunefleet import monitor
    from tunefleet.summary import SCHEMA_VERSION

    with _opened(storage, db_wait) as fs:
        ref = monitor.resolve_study(fs, study)
        found = monitor.best_trials(fs, ref)
        if download is not None:
            _download(fs, ref, found, download, artifacts)
    if output == "table":
        _console().print(monitor.render_best(found, ref.directions))
        return 0
    data: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "study": ref.name,
        "directions": list(ref.directions),
        "best": None if ref.multi_objective or not found else found[0].to_json(),
        "pareto_front": [t.to_json() for t in found] if ref.multi_objective else [],
    }
    emit(data, output)
    return 0


@click.command()
@storage_option
@study_option
@output_option("table", "csv", "json", "yaml", aliases=("--format",))
@click.option(
    "--state",
    "states",
    multiple=True,
    metavar="STATE",
    help="Only trials in this state (repeatable: waiting, running, complete, pruned, fail).",
)
@db_wait_option()
def trials(
    storage: str | None, study: str | None, output: str, states: tuple[str, ...], db_wait: float
) -> int:
    """Print every trial: number, state, values, params, duration, worker, user attributes.

    Example:

        tunefleet trials --study iris -o csv --state complete > trials.csv
    """
    from tunefleet import monitor

    wanted = monitor.parse_states(states)
    with _opened(storage, db_wait) as fs:
        ref = monitor.resolve_study(fs, study)
        rows = monitor.load_trials(fs, ref, wanted)
    if output == "json":
        click.echo(monitor.trials_to_json(rows))
    elif output == "yaml":
        emit([r.to_json() for r in rows], output)
    elif output == "csv":
        click.echo(monitor.trials_to_csv(rows, len(ref.directions)), nl=False)
    else:
        click.echo(monitor.format_trials_table(rows, len(ref.directions)), nl=False)
    return 0


@click.command()
@storage_option
@study_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    help="The HTML file to write [report.html].",
)
@db_wait_option()
def report(storage: str | None, study: str | None, out: Path, db_wait: float) -> int:
    """Write one self-contained HTML report of a study that opens offline.

    Optimization history, parameter importances, parallel coordinates, slices, intermediate
    values and a timeline of trials per worker. Needs plotly (pip install "tunefleet[report]").
    Example:

        tunefleet report --study iris --out iris.html
    """
    from tunefleet import monitor

    started = time.monotonic()
    with _opened(storage, db_wait) as fs:
        ref = monitor.resolve_study(fs, study)
        written = monitor.write_report(fs, ref, out)
    size = out.stat().st_size / 1e6
    click.echo(
        f"wrote {out} ({written.n_trials} trials, {size:.1f} MB) "
        f"in {time.monotonic() - started:.1f}s",
        err=True,
    )
    return 0


def _stop_on_signals() -> None:
    """SIGTERM and SIGINT both stop a server: SIGINT may be ignored when the process was started
    in the background (a shell gives such jobs SIGINT ignored), SIGTERM is what supervisors send."""

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


@click.command()
@storage_option
@study_option
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    help="Port to listen on (0: any free port) [8080].",
)
@click.option(
    "--host",
    default="127.0.0.1",
    help="Address to listen on; the dashboard has no login, so keep it local [127.0.0.1].",
)
@artifacts_option
@db_wait_option()
def dashboard(
    storage: str | None,
    study: str | None,
    port: int,
    host: str,
    artifacts: str | None,
    db_wait: float,
) -> int:
    """Serve optuna-dashboard on the same storage until Ctrl-C or SIGTERM.

    Trials show their artifacts (models) when the study has an artifact store (--artifacts).
    Needs the extra: pip install "tunefleet[dashboard]". Example:

        tunefleet dashboard --study iris --port 8080
    """
    from rich.console import Console

    from tunefleet import monitor

    _stop_on_signals()
    with _opened(storage, db_wait) as fs:
        study_id = None if study is None else monitor.resolve_study(fs, study).study_id
        server = monitor.start_dashboard(fs, host, port, _dashboard_store(fs, study_id, artifacts))
        bound = int(server.server_address[1])
        if not monitor.is_loopback(host):
            Console(stderr=True).print(
                f"[yellow]warning:[/] the dashboard listens on {host} without a login: anyone "
                "who reaches this port can read and change the studies",
                highlight=False,
            )
        url = monitor.dashboard_url(host, bound, study_id)
        click.echo(f"optuna-dashboard on {fs.display_url}: {url}")
        sys.stdout.flush()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0
