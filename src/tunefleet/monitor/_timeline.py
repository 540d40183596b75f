"""The report's timeline: every trial as a bar on its worker's row, and how busy the fleet was.

Trials are placed on the database's clock where the ledger knows when their budget slot was
claimed (see :mod:`tunefleet.monitor._sql`), so workers on machines with skewed clocks or other
time zones line up; trials without a claim fall back to their own timestamps.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import select

from tunefleet.constants import WORKER_ATTR
from tunefleet.monitor import _sql as q
from tunefleet.storage import FleetStorage
from tunefleet.storage.read import read

__all__ = ["Span", "claim_times", "fleet_busy_share", "timeline_figure", "trial_spans"]

_COLORS = {
    "COMPLETE": "#2e7d32",
    "PRUNED": "#f9a825",
    "FAIL": "#c62828",
    "RUNNING": "#0277bd",
    "WAITING": "#8e24aa",
}
UNKNOWN_WORKER = "(no worker recorded)"


@dataclass(frozen=True)
class Span:
    """One trial on the timeline: seconds since the epoch on one clock for the whole study."""

    number: int
    worker: str
    state: str
    start: float
    end: float
    value: str


def claim_times(storage: FleetStorage, study_id: int) -> dict[int, float]:
    """When each trial's budget slot was claimed (database clock), by trial id."""
    rows = read(
        storage,
        lambda conn: conn.execute(
            select(q.claims.c.trial_id, q.claims.c.claimed_at).where(
                q.claims.c.study_id == study_id, q.claims.c.trial_id.is_not(None)
            )
        ).all(),
    )
    return {int(trial_id): float(at) for trial_id, at in rows}


def trial_spans(
    trials: Sequence[FrozenTrial], claims: Mapping[int, float], now: float
) -> list[Span]:
    """Start and end of every started trial; a running trial ends ``now``."""
    local_now = dt.datetime.now()
    spans = []
    for t in trials:
        if t.datetime_start is None:
            continue
        finished = t.datetime_complete or local_now
        duration = max(0.0, (finished - t.datetime_start).total_seconds())
        start = claims.get(t._trial_id, t.datetime_start.timestamp())
        end = now if t.state == TrialState.RUNNING and t._trial_id in claims else start + duration
        value = "" if t.values is None else ", ".join(f"{v:.6g}" for v in t.values)
        worker = str(t.system_attrs.get(WORKER_ATTR) or UNKNOWN_WORKER)
        spans.append(Span(t.number, worker, t.state.name, start, max(start, end), value))
    return spans


def fleet_busy_share(spans: Sequence[Span]) -> float | None:
    """Share of each worker's time between its first trial's start and last trial's end spent in
    trials, over all workers: 1.0 means no worker ever waited between trials."""
    by_worker: dict[str, list[Span]] = {}
    for s in spans:
        by_worker.setdefault(s.worker, []).append(s)
    busy = sum(s.end - s.start for s in spans)
    window = sum(
        max(s.end for s in rows) - min(s.start for s in rows) for rows in by_worker.values()
    )
    return None if window <= 0 else min(1.0, busy / window)


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch).isoformat(timespec="milliseconds")


def timeline_figure(spans: Sequence[Span]) -> Any:
    """A plotly figure: trials as bars on one row per worker, and trials running over time."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    first_start: dict[str, float] = {}
    for s in spans:
        first_start[s.worker] = min(first_start.get(s.worker, s.start), s.start)
    rows = sorted(first_start, key=lambda w: first_start[w])
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, row_heights=[0.75, 0.25], vertical_spacing=0.06
    )
    for state, color in _COLORS.items():
        mine = [s for s in spans if s.state == state]
        if not mine:
            continue
        fig.add_trace(
            go.Bar(
                name=state.lower(),
                orientation="h",
                y=[s.worker for s in mine],
                base=[_iso(s.start) for s in mine],
                x=[round((s.end - s.start) * 1000.0, 3) for s in mine],
                marker={"color": color, "line": {"width": 0}},
                customdata=[[s.number, s.value, round(s.end - s.start, 3)] for s in mine],
                hovertemplate=(
                    "trial %{customdata[0]} (" + state.lower() + ")<br>%{y}<br>"
                    "%{customdata[2]}s<br>value %{customdata[1]}<extra></extra>"
                ),
            ),
            row=1,
            col=1,
        )
    times, running = _running_over_time(spans)
    fig.add_trace(
        go.Scatter(
            name="trials running",
            x=[_iso(t) for t in times],
            y=running,
            mode="lines",
            line={"shape": "hv", "color": "#455a64"},
            fill="tozeroy",
            showlegend=False,
            hovertemplate="%{y} trials running<extra></extra>",
        ),
        row=2,
        col=1,
    )
    fig.update_yaxes(
        categoryorder="array",
        categoryarray=list(reversed(rows)),
        title_text="worker",
        row=1,
        col=1,
    )
    fig.update_yaxes(title_text="running", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(type="date", row=1, col=1)
    fig.update_xaxes(type="date", title_text="time", row=2, col=1)
    fig.update_layout(
        barmode="overlay",
        bargap=0.25,
        height=max(360, min(1600, 140 + 28 * len(rows) + 140)),
        template="plotly_white",
        legend={"orientation": "h", "y": 1.06, "x": 0},
        margin={"l": 20, "r": 20, "t": 40, "b": 40},
    )
    return fig


def _running_over_time(spans: Sequence[Span]) -> tuple[list[float], list[int]]:
    """A step function: how many trials were running from each event time on."""
    events = sorted([(s.start, 1) for s in spans] + [(s.end, -1) for s in spans])
    times: list[float] = []
    counts: list[int] = []
    running = 0
    for time, delta in events:
        running += delta
        if times and times[-1] == time:
            counts[-1] = running
        else:
            times.append(time)
            counts.append(running)
    return times, counts
