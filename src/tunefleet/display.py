"""What a person sees: the live progress bar while a fleet runs and the summary at the end."""

from __future__ import annotations

import time
from collections import deque

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tunefleet.summary import StudySummary

__all__ = ["FleetProgress", "render_summary"]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


class FleetProgress:
    """A progress bar: counted trials against the budget, states, best value, trial rate."""

    def __init__(self, console: Console, study: str, budget: int | None) -> None:
        self.console = console
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[study]}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.fields[budget]}"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=not console.is_terminal,
        )
        self._task = self._progress.add_task(
            "study",
            total=budget,
            study=study,
            budget=budget if budget is not None else "∞",
            detail="starting workers",
        )
        self._history: deque[tuple[float, int]] = deque(maxlen=120)

    def __enter__(self) -> FleetProgress:
        self._progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._progress.stop()

    def update(self, summary: StudySummary) -> None:
        now = time.monotonic()
        self._history.append((now, summary.n_trials))
        # Rate over the last ~30 s: the start-up of the workers would otherwise drag it down.
        recent = [(t, n) for t, n in self._history if now - t <= 30] or [(now, summary.n_trials)]
        (t0, n0), (t1, n1) = recent[0], recent[-1]
        rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        s = summary.states
        detail = (
            f"done {s['COMPLETE']} · running {s['RUNNING']} · pruned {s['PRUNED']} · "
            f"failed {s['FAIL']} · best {_fmt(summary.best_value)} · {rate:.1f} trials/s"
        )
        self._progress.update(
            self._task,
            completed=summary.n_trials,
            detail=detail,
            total=summary.budget,
            budget=summary.budget if summary.budget is not None else "∞",
        )


def render_summary(console: Console, summary: StudySummary) -> None:
    """The end-of-run summary: counts by state, best value and params, wall time."""
    states = ", ".join(f"{k.lower()} {v}" for k, v in summary.states.items() if v)
    budget = "no budget" if summary.budget is None else f"budget {summary.budget}"
    console.print(f"[bold]study[/] {summary.study}  ({summary.storage})")
    console.print(f"trials: {summary.n_trials} counted of {budget}; {states or 'none'}")
    if summary.lost or summary.restarts:
        console.print(
            f"recovered: {summary.lost} trials lost and re-run, {summary.restarts} worker restarts"
        )
    if len(summary.directions) == 1:
        if summary.best_value is not None:
            console.print(f"best value ({summary.directions[0]}): [bold]{summary.best_value:.6g}")
            table = Table(show_header=True, header_style="bold", box=None)
            table.add_column("param")
            table.add_column("value")
            for name, value in (summary.best_params or {}).items():
                table.add_row(name, f"{value:.6g}" if isinstance(value, float) else str(value))
            console.print(table)
        else:
            console.print("best value: none (no trial completed)")
    else:
        console.print(
            f"Pareto front ({', '.join(summary.directions)}): {len(summary.best_trials)} trials"
        )
        for t in summary.best_trials[:10]:
            console.print(f"  trial {t['number']}: values {t['values']} params {t['params']}")
    console.print(f"wall time: {summary.wall_s:.1f}s")
