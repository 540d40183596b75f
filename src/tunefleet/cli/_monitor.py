"""``tunefleet status``, ``studies``, ``best``, ``trials``, ``report`` and ``dashboard``.

Each reads a storage that workers may be writing right now, from any machine that reaches it,
and changes nothing in it. ``--storage`` resolves as for ``run``; ``--study`` may be left out
when the storage holds a single study.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
import optuna
import sqlalchemy.exc
from rich.console import Console
from rich.live import Live

from tunefleet import monitor
from tunefleet.errors import ConfigError, StorageError, StudyError
from tunefleet.storage import FleetStorage, resolve_storage_url
from tunefleet.storage._errors import translate_db_error

__all__ = ["best", "dashboard", "report", "status", "studies", "trials"]

F = TypeVar("F", bound=Callable[..., Any])


def storage_option(func: F) -> F:
    return click.option(
        "--storage",
        metavar="URL",
        help="postgresql://user:pw@host/db or sqlite:///file.db (default: "
        "$TUNEFLEET_STORAGE, $DATABASE_URL, else ./tunefleet.db).",
    )(func)


def study_option(func: F) -> F:
    return click.option(
        "--study", help="Study name (may be left out when the storage holds only one)."
    )(func)


@contextmanager
def _reading(storage: FleetStorage) -> Iterator[None]:
    """Database errors while reading become one-line storage errors."""
    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        raise translate_db_error(exc, storage.url) from exc


@contextmanager
def _opened(storage_flag: str | None) -> Iterator[FleetStorage]:
    """The storage, open for reading (database errors become one-line errors), then closed."""
    fs = monitor.open_existing_storage(resolve_storage_url(storage_flag))
    try:
        with _reading(fs):
            yield fs
    finally:
        fs.close()


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, default=str))


@click.command()
@storage_option
@study_option
@click.option("--watch", is_flag=True, help="Refresh in place until the study is done.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Refresh interval for --watch.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (a line per refresh with --watch)."
)
def status(
    storage: str | None, study: str | None, watch: bool, interval: float, as_json: bool
) -> int:
    """Show how a study is going: trials by state, budget, rate and ETA, best trial, workers.

    Reads a few grouped counts, so it stays fast on large studies. Example:

        tunefleet status --study iris --watch
    """
    with _opened(storage) as fs:
        ref = monitor.resolve_study(fs, study)
        current = monitor.read_status(fs, ref)
        if as_json:
            _print_json(current.to_json())
        if not watch:
            if not as_json:
                Console().print(monitor.render_status(current))
            return 0
        try:
            if as_json:
                while not _finished(current):
                    time.sleep(interval)
                    current = _refresh(fs, ref, current)[0]
                    _print_json(current.to_json())
                    sys.stdout.flush()
            else:
                _watch(fs, ref, current, interval)
        except KeyboardInterrupt:
            pass
    return 0


def _finished(current: monitor.StudyStatus) -> bool:
    return current.done and current.states.get("RUNNING", 0) == 0


def _refresh(
    fs: FleetStorage, ref: monitor.StudyRef, last: monitor.StudyStatus
) -> tuple[monitor.StudyStatus, str | None]:
    """A new status, or the last one and why it could not be read (the watch goes on)."""
    try:
        with _reading(fs):
            return monitor.read_status(fs, ref), None
    except StorageError as exc:
        return last, str(exc)


def _watch(
    fs: FleetStorage, ref: monitor.StudyRef, current: monitor.StudyStatus, interval: float
) -> None:
    from rich.console import Group
    from rich.text import Text

    console = Console()
    with Live(monitor.render_status(current), console=console, auto_refresh=False) as live:
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def studies(storage: str | None, as_json: bool) -> int:
    """List the studies in a storage with their progress and best value.

    Example:

        tunefleet studies --storage postgresql://user:pw@host/db
    """
    with _opened(storage) as fs:
        rows = monitor.list_studies(fs)
    if as_json:
        _print_json([r.to_json() for r in rows])
    elif not rows:
        Console().print(f"no studies in {fs.display_url}", highlight=False)
    else:
        Console().print(monitor.render_studies(rows, fs.display_url))
    return 0


def artifacts_option(func: F) -> F:
    return click.option(
        "--artifacts",
        metavar="URL",
        help="The study's artifact store as this machine sees it (default: the one stored "
        "with the study by --artifacts).",
    )(func)


@click.command()
@storage_option
@study_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--download",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Fetch the best trial's artifacts (its model, metrics.json) into DIR.",
)
@artifacts_option
def best(
    storage: str | None,
    study: str | None,
    as_json: bool,
    download: Path | None,
    artifacts: str | None,
) -> int:
    """Show the best trial's value and parameters (the Pareto front for several objectives).

    Examples:

        tunefleet best --study iris --json

        tunefleet best --study xgb --download best-model/
    """
    with _opened(storage) as fs:
        ref = monitor.resolve_study(fs, study)
        found = monitor.best_trials(fs, ref)
        if download is not None:
            _download(fs, ref, found, download, artifacts)
    if as_json:
        data: dict[str, Any] = {"study": ref.name, "directions": list(ref.directions)}
        if ref.multi_objective:
            data["best_trials"] = [t.to_json() for t in found]
        else:
            data["best_trial"] = found[0].to_json() if found else None
        _print_json(data)
    else:
        Console().print(monitor.render_best(found, ref.directions))
    return 0


@click.command()
@storage_option
@study_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    metavar="STATE",
    help=f"Only trials in this state (repeatable: {', '.join(monitor.TRIAL_STATES)}).",
)
def trials(storage: str | None, study: str | None, fmt: str, states: tuple[str, ...]) -> int:
    """Print every trial: number, state, values, params, duration, worker, user attributes.

    Example:

        tunefleet trials --study iris --format csv --state complete > trials.csv
    """
    wanted = monitor.parse_states(states)
    with _opened(storage) as fs:
        ref = monitor.resolve_study(fs, study)
        rows = monitor.load_trials(fs, ref, wanted)
    if fmt == "json":
        click.echo(monitor.trials_to_json(rows))
    elif fmt == "csv":
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
    show_default=True,
    help="The HTML file to write.",
)
def report(storage: str | None, study: str | None, out: Path) -> int:
    """Write one self-contained HTML report of a study that opens offline.

    Optimization history, parameter importances, parallel coordinates, slices, intermediate
    values and a timeline of trials per worker. Needs plotly (pip install "tunefleet[report]").
    Example:

        tunefleet report --study iris --out iris.html
    """
    started = time.monotonic()
    with _opened(storage) as fs:
        ref = monitor.resolve_study(fs, study)
        written = monitor.write_report(fs, ref, out)
    size = out.stat().st_size / 1e6
    click.echo(
        f"wrote {out} ({written.n_trials} trials, {size:.1f} MB) "
        f"in {time.monotonic() - started:.1f}s",
        err=True,
    )
    return 0


@click.command()
@storage_option
@study_option
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; the dashboard has no login, so keep it local.",
)
@artifacts_option
def dashboard(
    storage: str | None, study: str | None, port: int, host: str, artifacts: str | None
) -> int:
    """Serve optuna-dashboard on the same storage until Ctrl-C.

    Trials show their artifacts (models) when the study has an artifact store (--artifacts).
    Needs the extra: pip install "tunefleet[dashboard]". Example:

        tunefleet dashboard --study iris --port 8080
    """
    with _opened(storage) as fs:
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
