"""Rich renderings of what the monitoring commands read: status, studies, best, trials."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tunefleet.monitor._trials import TrialRow
from tunefleet.summary import StudyStatus, WorkerRow

__all__ = [
    "format_duration",
    "format_trials_table",
    "render_best",
    "render_status",
    "render_studies",
]

#: Rows of the worker table ``status`` shows; the rest are counted in one line.
WORKERS_SHOWN = 20
_STATE_STYLE = {
    "COMPLETE": "green",
    "RUNNING": "cyan",
    "PRUNED": "yellow",
    "FAIL": "red",
    "WAITING": "magenta",
}


def format_duration(seconds: float | None) -> str:
    """``4.2s``, ``42s``, ``3m05s``, ``2h14m``, ``3d4h``; ``-`` for unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 10:
        return f"{max(0.0, seconds):.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h}h"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _params_plain(params: dict[str, Any], limit: int = 6) -> str:
    items = [f"{k}={_num(v) if isinstance(v, float) else v}" for k, v in params.items()]
    more = f", … (+{len(items) - limit})" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _params(params: dict[str, Any], limit: int = 6) -> str:
    """Parameters as rich markup (escaped: names and values are the user's)."""
    return escape(_params_plain(params, limit))


def _states_line(states: dict[str, int]) -> Text:
    text = Text()
    for name in ("COMPLETE", "RUNNING", "PRUNED", "FAIL", "WAITING"):
        count = states.get(name, 0)
        if count or name in ("COMPLETE", "RUNNING"):
            if text:
                text.append(" · ", style="dim")
            text.append(f"{name.lower()} {count}", style=_STATE_STYLE[name] if count else "dim")
    return text


def _best_line(best: TrialRow) -> str:
    value = ", ".join(_num(v) for v in best.values or [])
    return f"[bold]{value}[/] (trial {best.number})  {_params(best.params)}"


def render_status(status: StudyStatus) -> RenderableType:
    """The panel ``tunefleet status`` prints (and ``--watch`` refreshes in place)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("storage", escape(status.storage))
    total = status.budget
    if total:
        share = min(1.0, status.n_counted / total)
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            f"{status.n_counted} of {total} counted ({share:.0%})",
            ProgressBar(total=total, completed=min(status.n_counted, total), width=30),
        )
        grid.add_row("trials", bar)
    else:
        grid.add_row("trials", f"{status.n_counted} counted (no budget)")
    grid.add_row("", _states_line(status.states))
    if total is not None:
        grid.add_row(
            "budget",
            f"{status.n_counted} used · {status.n_in_flight} in flight · {status.budget_left} left",
        )
    if status.deadline_left_s is not None:
        grid.add_row("deadline", f"{format_duration(status.deadline_left_s)} left")
    window = format_duration(status.rate_window_s)
    if status.done:
        eta = "done"
    elif status.eta_s is None and not status.live_workers:
        eta = "- (no live workers)"
    else:
        eta = format_duration(status.eta_s)
    grid.add_row("rate", f"{status.rate_per_min:.1f} trials/min (last {window}) · ETA {eta}")
    if status.best is not None:
        grid.add_row(f"best ({status.directions[0]})", _best_line(status.best))
    elif len(status.directions) > 1 and status.n_pareto:
        grid.add_row("Pareto front", f"{status.n_pareto} trials ({', '.join(status.directions)})")
        for trial in status.pareto[:5]:
            grid.add_row("", _best_line(trial))
    else:
        grid.add_row("best", "[dim]no trial completed yet[/]")

    parts: list[RenderableType] = [grid]
    if status.workers:
        parts += [Text(""), _workers_table(status.workers)]
    title = f"study [bold]{escape(status.study)}[/]"
    running = len(status.active_workers)
    subtitle = (
        "[green]done[/]"
        if status.done
        else f"{running} worker{'' if running == 1 else 's'} running"
    )
    return Panel(Group(*parts), title=title, subtitle=subtitle, expand=False)


def _workers_table(workers: Sequence[WorkerRow]) -> RenderableType:
    """One row per worker; its id starts with the host (the pod name on Kubernetes)."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("worker", no_wrap=True, overflow="ellipsis", max_width=40)
    for name in ("trials", "failed", "now on", "for", "heartbeat"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for w in workers[:WORKERS_SHOWN]:
        failed = w.trials.get("FAIL", 0)
        table.add_row(
            escape(w.worker_id),
            str(w.n_trials),
            f"[red]{failed}[/]" if failed else "0",
            "-" if w.current_trial is None else f"#{w.current_trial}",
            format_duration(w.current_trial_s),
            "-" if w.heartbeat_age_s is None else f"{format_duration(w.heartbeat_age_s)} ago",
            _worker_state(w),
        )
    hidden = len(workers) - WORKERS_SHOWN
    if hidden > 0:
        table.add_row(f"[dim]… and {hidden} more (--json lists all)[/]")
    return table


def _worker_state(worker: WorkerRow) -> str:
    if worker.state == "running":
        return "[cyan]running[/]"
    if worker.state == "lost":
        return "[red]lost[/]"
    return f"[dim]{escape(worker.exit_reason or 'exited')}[/]"


def render_studies(studies: Sequence[StudyStatus], storage: str) -> RenderableType:
    table = Table(title=f"studies in {escape(storage)}", header_style="bold", title_justify="left")
    table.add_column("study")
    table.add_column("direction")
    table.add_column("progress", justify="right")
    table.add_column("states")
    table.add_column("best", justify="right")
    table.add_column("workers", justify="right")
    for s in studies:
        progress = f"{s.n_counted}/{s.budget}" if s.budget is not None else f"{s.n_counted}"
        if s.done:
            progress += " [green]done[/]"
        table.add_row(
            escape(s.study),
            ", ".join(s.directions),
            progress,
            _states_line(s.states),
            _num(s.best_value),
            str(len(s.live_workers)),
        )
    return table


def render_best(best: Sequence[TrialRow], directions: Sequence[str]) -> RenderableType:
    if not best:
        return Text("no trial completed yet", style="dim")
    if len(directions) == 1:
        (trial,) = best
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column("param")
        table.add_column("value")
        for name, value in trial.params.items():
            table.add_row(escape(name), _cell(value))
        value = _num(trial.values[0] if trial.values else None)
        head = Text.from_markup(
            f"best value ({directions[0]}): [bold]{value}[/] (trial {trial.number})"
        )
        return Group(head, table)
    table = Table(
        title=f"Pareto front: {len(best)} trials", header_style="bold", title_justify="left"
    )
    table.add_column("trial", justify="right")
    for i, d in enumerate(directions):
        table.add_column(f"value {i} ({d})", justify="right")
    table.add_column("params")
    for trial in best:
        table.add_row(
            str(trial.number),
            *(_num(v) for v in trial.values or []),
            _params(trial.params, limit=20),
        )
    return table


def format_trials_table(rows: Sequence[TrialRow], n_objectives: int) -> str:
    """Every trial as a plain fixed-width table.

    Plain text rather than a rich table: rich measures every cell of every row, which takes
    20 s for 10,000 trials; this takes milliseconds. Long texts are cut (csv and json have them
    whole).
    """
    param_names = sorted({n for r in rows for n in r.params})
    value_names = ["value"] if n_objectives == 1 else [f"value {i}" for i in range(n_objectives)]
    header = ["trial", "state", *value_names, *param_names, "duration", "worker", "notes"]
    right = {0, *range(2, 2 + n_objectives + len(param_names)), 2 + n_objectives + len(param_names)}
    lines = [header]
    for r in rows:
        values = r.values or []
        notes = _params_plain(r.user_attrs, limit=4) if r.user_attrs else ""
        if r.fail_reason:
            notes = f"{notes}  {r.fail_reason}" if notes else r.fail_reason
        if r.artifacts:  # listed first: the column is cut at 60 characters
            notes = f"artifacts: {', '.join(r.artifacts)}  {notes}".rstrip()
        lines.append(
            [
                str(r.number),
                r.state.lower(),
                *(_num(values[i]) if i < len(values) else "-" for i in range(n_objectives)),
                *(_plain(r.params.get(n)) for n in param_names),
                format_duration(r.duration_s),
                r.worker or "-",
                notes,
            ]
        )
    cut = [[_cut(cell, 60 if i == len(header) - 1 else 40) for i, cell in enumerate(line)]
           for line in lines]  # fmt: skip
    widths = [max(len(line[i]) for line in cut) for i in range(len(header))]
    out = []
    for line in cut:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    return _num(value) if isinstance(value, float) else str(value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return _num(value) if isinstance(value, float) else escape(str(value))
