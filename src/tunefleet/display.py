"""What a person sees while a fleet runs, and the summary at the end.

On a terminal, one live line: the study, a bar, counted/budget, running, failed, best, rate,
elapsed. As the terminal narrows, parts are dropped (pruned, rate, best, failed, running, the bar,
then the study's name is shortened); the count and the elapsed time go last, so a 60-column
terminal still shows them. Without a terminal (output to a file, a CI log) there is no bar: a plain
line every ``interval`` seconds says the same. Both read the study's snapshot
(:class:`tunefleet.summary.StudyStatus`), the progress model every command shares.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tunefleet.summary import StudyStatus

__all__ = ["FleetProgress", "plain_line", "progress_line", "render_summary"]

#: Seconds between plain progress lines when there is no terminal.
PLAIN_INTERVAL_S = 10.0
#: At most this much of a study's name appears in the live line.
NAME_SHOWN = 24
_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _count(status: StudyStatus) -> str:
    budget = "∞" if status.budget is None else str(status.budget)
    return f"{status.n_counted}/{budget}"


def _best(status: StudyStatus) -> str:
    if len(status.directions) > 1:
        return f"front {status.n_pareto}"
    return f"best {_fmt(status.best_value)}"


def plain_line(status: StudyStatus, elapsed: float) -> str:
    """The progress line written without a terminal: everything, no bar, never cut."""
    s = status.states
    return (
        f"{status.study}: {_count(status)} counted · running {s['RUNNING']} · "
        f"pruned {s['PRUNED']} · failed {s['FAIL']} · {_best(status)} · "
        f"{status.rate_per_min:.1f} trials/min · {_elapsed(elapsed)}"
    )


def progress_line(status: StudyStatus, elapsed: float, width: int, frame: int = 0) -> Text:
    """The live line, fitted to ``width`` columns by dropping the least important parts first."""
    s = status.states
    spinner = _SPINNER[frame % len(_SPINNER)]
    count, clock = _count(status), _elapsed(elapsed)
    # Optional parts, most important first: the last ones are dropped first.
    extras = [
        f"running {s['RUNNING']}",
        f"failed {s['FAIL']}",
        _best(status),
        f"{status.rate_per_min:.1f}/min",
        f"pruned {s['PRUNED']}",
    ]
    # The name was printed in full when the run started; here it yields to the figures.
    name = status.study if len(status.study) <= NAME_SHOWN else status.study[: NAME_SHOWN - 1] + "…"
    # First keep a bar (at least 10 wide) while dropping extras down to running and failed;
    # then drop the bar and the rest; then shorten the name. Count and elapsed always stay.
    attempts = [(keep, True) for keep in range(len(extras), 1, -1)]
    attempts += [(keep, False) for keep in range(len(extras), -1, -1)]
    for keep, with_bar in attempts:
        fixed = f"{spinner}  {count} " + "".join(f"· {e} " for e in extras[:keep]) + f"· {clock}"
        room = width - len(fixed)
        if with_bar:
            bar_w = min(30, room - len(name) - 1)
            if bar_w >= 10:
                return _styled(spinner, name, bar_w, status, count, extras[:keep], clock)
        elif len(name) <= room:
            return _styled(spinner, name, 0, status, count, extras[:keep], clock)
    room = width - len(f"{spinner}  {count} · {clock}")
    if room >= 2:
        return _styled(spinner, name[: room - 1] + "…", 0, status, count, [], clock)
    return Text(f"{count} {clock}")


def _styled(
    spinner: str,
    name: str,
    bar_w: int,
    status: StudyStatus,
    count: str,
    extras: list[str],
    clock: str,
) -> Text:
    text = Text()
    text.append(f"{spinner} ", style="green")
    text.append(name, style="bold")
    text.append(" ")
    if bar_w:
        share = 0.0
        if status.budget:
            share = min(1.0, status.n_counted / status.budget)
        done = round(share * bar_w)
        text.append("━" * done, style="magenta")
        text.append("━" * (bar_w - done), style="grey23")
        text.append(" ")
    text.append(count, style="bold")
    for extra in extras:
        text.append(" · ", style="dim")
        failed = extra.startswith("failed") and status.states["FAIL"] > 0
        text.append(extra, style="red" if failed else "")
    text.append(" · ", style="dim")
    text.append(clock, style="yellow")
    return text


class _Line:
    """A renderable that lays the line out for the console's width at each refresh."""

    def __init__(self, progress: FleetProgress) -> None:
        self.progress = progress

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        p = self.progress
        p.frame += 1
        if p.status is None:
            yield Text(f"{p.study}: starting workers", style="dim")
            return
        yield progress_line(p.status, time.monotonic() - p.started, options.max_width, p.frame)


class FleetProgress:
    """The live line on a terminal; a plain line every ``interval`` seconds otherwise.

    The live line is transient: when the run ends or is interrupted, it is cleared before the
    summary is printed, so no stale bar is left on the screen.
    """

    def __init__(self, console: Console, study: str, interval: float = PLAIN_INTERVAL_S) -> None:
        self.console = console
        self.study = study
        self.interval = interval
        self.status: StudyStatus | None = None
        self.started = time.monotonic()
        self.frame = 0
        self._last_plain = self.started
        self._live: Live | None = None
        if console.is_terminal:
            self._live = Live(_Line(self), console=console, refresh_per_second=4, transient=True)

    def __enter__(self) -> FleetProgress:
        self.started = time.monotonic()
        self._last_plain = self.started
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Clear the live line (idempotent): call before printing the summary."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, status: StudyStatus) -> None:
        self.status = status
        if self._live is not None or not self.interval:
            return
        now = time.monotonic()
        if now - self._last_plain >= self.interval:
            self._last_plain = now
            self.console.print(plain_line(status, now - self.started), soft_wrap=True)


def render_summary(
    console: Console, status: StudyStatus, wall_s: float, restarts: int = 0, **_: Any
) -> None:
    """The end-of-run summary: counts by state, best value and params, wall time."""
    states = ", ".join(f"{k.lower()} {v}" for k, v in status.states.items() if v)
    budget = "no budget" if status.budget is None else f"budget {status.budget}"
    console.print(f"[bold]study[/] {escape(status.study)}  ({escape(status.storage)})")
    console.print(f"trials: {status.n_counted} counted of {budget}; {states or 'none'}")
    if status.n_requeued or restarts:
        trials = "trial" if status.n_requeued == 1 else "trials"
        workers = "restart" if restarts == 1 else "restarts"
        console.print(
            f"recovered: {status.n_requeued} {trials} re-queued with the same parameters, "
            f"{restarts} worker {workers}"
        )
    if len(status.directions) == 1:
        if status.best is not None:
            console.print(
                f"best value ({status.directions[0]}): [bold]{_fmt(status.best_value)}[/] "
                f"(trial {status.best.number})"
            )
            table = Table(show_header=True, header_style="bold", box=None)
            table.add_column("param")
            table.add_column("value")
            for name, value in status.best.params.items():
                shown = f"{value:.6g}" if isinstance(value, float) else str(value)
                table.add_row(escape(name), escape(shown))
            console.print(table)
        else:
            console.print("best value: none (no trial completed)")
    else:
        console.print(f"Pareto front ({', '.join(status.directions)}): {status.n_pareto} trials")
        for t in status.pareto:
            console.print(
                f"  trial {t.number}: values {t.values} params {escape(str(t.params))}",
                highlight=False,
            )
    console.print(f"wall time: {wall_s:.1f}s")
