"""Where a study stands now: what ``tunefleet status`` shows, read in a few grouped queries.

Nothing here loads the trial list: counts are grouped in the database, the best trial comes from
Optuna's own indexed query, and the Pareto front of a multi-objective study is computed from the
value rows alone. That keeps one ``status`` call well under a second on 10,000 trials.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.trial import TrialState
from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection

from tunefleet.monitor import _sql as q
from tunefleet.monitor._studies import StudyRef
from tunefleet.storage import WORKER_ATTR, FleetStorage
from tunefleet.storage._ledger import _open_claim_condition as open_claim_condition

__all__ = ["RATE_WINDOW_S", "BestTrial", "StudyStatus", "WorkerRow", "pareto_front", "read_status"]

#: The trial rate is measured over this many seconds (or since the study's first trial).
RATE_WINDOW_S = 300.0
#: Trials of a Pareto front that ``status`` loads to show their parameters.
PARETO_SHOWN = 10
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class BestTrial:
    number: int
    values: list[float]
    params: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        shown = [v if math.isfinite(v) else None for v in self.values]
        out: dict[str, Any] = {"number": self.number}
        if len(shown) == 1:
            out["value"] = shown[0]
        else:
            out["values"] = shown
        out["params"] = self.params
        return out


@dataclass(frozen=True)
class WorkerRow:
    """One worker of the study: from the registry, and from the trials it ran."""

    worker_id: str
    host: str
    pid: int | None
    started_at: float | None
    heartbeat_age_s: float | None
    finished: bool
    exit_reason: str | None
    trials: dict[str, int]
    current_trial: int | None = None
    current_trial_s: float | None = None

    @property
    def n_trials(self) -> int:
        return sum(self.trials.values())

    @property
    def state(self) -> str:
        """``running``, ``finished``, or ``lost`` (declared dead by another worker after a
        silence longer than the grace period; its trial was re-queued)."""
        if not self.finished:
            return "running"
        return "lost" if self.exit_reason == "lost" else "finished"

    def to_json(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "host": self.host,
            "pid": self.pid,
            "state": self.state,
            "exit_reason": self.exit_reason,
            "n_trials": self.n_trials,
            "trials": self.trials,
            "current_trial": self.current_trial,
            "current_trial_s": _round(self.current_trial_s),
            "heartbeat_age_s": _round(self.heartbeat_age_s),
            "started_at": self.started_at,
        }


@dataclass(frozen=True)
class StudyStatus:
    """A snapshot of one study. Times are seconds; ``now`` is the database's clock."""

    study: str
    storage: str
    directions: tuple[str, ...]
    states: dict[str, int]
    budget: int | None
    n_counted: int
    n_in_flight: int
    n_claimed: int
    deadline_left_s: float | None
    done: bool
    rate_per_min: float
    rate_window_s: float
    eta_s: float | None
    best: BestTrial | None
    n_pareto: int
    pareto: list[BestTrial] = field(default_factory=list)
    workers: list[WorkerRow] = field(default_factory=list)
    now: float = 0.0

    @property
    def n_trials(self) -> int:
        return sum(self.states.values())

    @property
    def budget_left(self) -> int | None:
        return None if self.budget is None else max(0, self.budget - self.n_claimed)

    @property
    def active_workers(self) -> list[WorkerRow]:
        return [w for w in self.workers if not w.finished]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "study": self.study,
            "storage": self.storage,
            "directions": list(self.directions),
            "n_trials": self.n_trials,
            "states": self.states,
            "budget": {
                "n_trials": self.budget,
                "counted": self.n_counted,
                "in_flight": self.n_in_flight,
                "left": self.budget_left,
            },
            "deadline_left_s": _round(self.deadline_left_s),
            "done": self.done,
            "rate_per_min": round(self.rate_per_min, 3),
            "rate_window_s": round(self.rate_window_s, 1),
            "eta_s": _round(self.eta_s),
            "best": self.best.to_json() if self.best else None,
            "workers": [w.to_json() for w in self.workers],
        }
        if len(self.directions) > 1:
            out["n_pareto"] = self.n_pareto
            out["pareto_front"] = [t.to_json() for t in self.pareto]
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def read_status(
    storage: FleetStorage, ref: StudyRef, window_s: float = RATE_WINDOW_S
) -> StudyStatus:
    """Read the study's status in one short transaction (plus the best trial's parameters)."""
    sid = ref.study_id
    with storage.engine.connect() as conn:
        ledger = conn.execute(
            select(q.fleet.c.n_trials, q.fleet.c.n_claimed, q.fleet.c.deadline).where(
                q.fleet.c.study_id == sid
            )
        ).first()
        now = float(conn.execute(select(q.epoch_now())).scalar_one())
        states = _state_counts(conn, sid)
        n_open = _open_claims(conn, sid) if ledger is not None else 0
        rate, window = _rate(conn, sid, now, window_s, ledger is not None)
        workers = _workers(conn, sid, now)
        front_values = _complete_values(conn, sid) if ref.multi_objective else {}

    if ledger is not None:
        budget, n_claimed, deadline = ledger[0], int(ledger[1]), ledger[2]
        n_counted = n_claimed - n_open
    else:  # a study made by stock Optuna: no budget, every finished trial counts
        budget, n_claimed, deadline = None, 0, None
        n_counted = sum(states[s.name] for s in _FINISHED)
    deadline_left = None if deadline is None else max(0.0, deadline - now)
    done = (budget is not None and n_counted >= budget) or deadline_left == 0.0
    eta = _eta(done, budget, n_counted, rate, deadline_left)

    best: BestTrial | None = None
    pareto: list[BestTrial] = []
    n_pareto = 0
    if not ref.multi_objective and states["COMPLETE"]:
        trial = storage.optuna.get_best_trial(sid)
        best = BestTrial(trial.number, list(trial.values or []), trial.params)
    elif front_values:
        ids = list(front_values)
        front = pareto_front([front_values[i] for i in ids], ref.directions)
        n_pareto = len(front)
        for index in sorted(front, key=lambda i: front_values[ids[i]])[:PARETO_SHOWN]:
            trial = storage.optuna.get_trial(ids[index])
            pareto.append(BestTrial(trial.number, list(trial.values or []), trial.params))

    return StudyStatus(
        study=ref.name,
        storage=storage.display_url,
        directions=ref.directions,
        states=states,
        budget=budget,
        n_counted=n_counted,
        n_in_flight=n_open,
        n_claimed=n_claimed,
        deadline_left_s=deadline_left,
        done=done,
        rate_per_min=rate,
        rate_window_s=window,
        eta_s=eta,
        best=best,
        n_pareto=n_pareto,
        pareto=pareto,
        workers=workers,
        now=now,
    )


def _eta(
    done: bool, budget: int | None, counted: int, rate_per_min: float, deadline_left: float | None
) -> float | None:
    """Seconds until the budget is spent at the current rate, or the deadline if that is sooner."""
    if done:
        return 0.0
    eta = None
    if budget is not None and rate_per_min > 0:
        eta = (budget - counted) / rate_per_min * 60.0
    if deadline_left is not None:
        eta = deadline_left if eta is None else min(eta, deadline_left)
    return eta


def _state_counts(conn: Connection, sid: int) -> dict[str, int]:
    rows = conn.execute(
        select(q.trials.c.state, func.count())
        .where(q.trials.c.study_id == sid)
        .group_by(q.trials.c.state)
    ).all()
    counts = {s.name: 0 for s in TrialState}
    for state, count in rows:
        counts[state.name] = int(count)
    return counts


def _open_claims(conn: Connection, sid: int) -> int:
    """Claimed slots whose trial has not finished (the ledger's own rule, shared with it)."""
    return int(
        conn.execute(
            select(func.count())
            .select_from(q.claims.outerjoin(q.trials, q.trials.c.trial_id == q.claims.c.trial_id))
            .where(q.claims.c.study_id == sid, open_claim_condition())
        ).scalar_one()
    )


def _rate(
    conn: Connection, sid: int, now: float, window_s: float, has_ledger: bool
) -> tuple[float, float]:
    """Trials finished per minute over the last ``window_s`` seconds, and the window used.

    With a ledger, a trial's end is ``claimed_at + duration`` on the database's clock (see
    :mod:`tunefleet.monitor._sql`) and only trials holding a budget slot count; a study without
    one (made by stock Optuna) is measured on this machine's clock.
    """
    t, c = q.trials, q.claims
    finished = and_(t.c.study_id == sid, t.c.datetime_complete.is_not(None))
    if has_ledger:
        first = conn.execute(
            select(func.min(c.c.claimed_at)).where(c.c.study_id == sid)
        ).scalar_one()
        if first is None:
            return 0.0, window_s
        window = max(1.0, min(window_s, now - float(first)))
        ended = c.c.claimed_at + q.trial_seconds(t.c.datetime_start, t.c.datetime_complete)
        count = conn.execute(
            select(func.count())
            .select_from(t.join(c, c.c.trial_id == t.c.trial_id))
            .where(finished, ended >= now - window)
        ).scalar_one()
    else:
        window = window_s
        cutoff = q.stored_now() - dt.timedelta(seconds=window)
        count = conn.execute(
            select(func.count()).where(finished, t.c.datetime_complete >= cutoff)
        ).scalar_one()
    return int(count) / window * 60.0, window


def _workers(conn: Connection, sid: int, now: float) -> list[WorkerRow]:
    """Registered workers, with their trials by state and the trial each is running now."""
    t, a, c, w = q.trials, q.system_attrs, q.claims, q.workers
    on_attr = and_(a.c.trial_id == t.c.trial_id, a.c.key == WORKER_ATTR)
    by_state: dict[str, dict[str, int]] = {}
    for raw, state, count in conn.execute(
        select(a.c.value_json, t.c.state, func.count())
        .select_from(t.join(a, on_attr))
        .where(t.c.study_id == sid)
        .group_by(a.c.value_json, t.c.state)
    ).all():
        by_state.setdefault(str(q.decode_json(raw)), {})[state.name] = int(count)
    running: dict[str, tuple[int, float | None]] = {}
    for raw, number, claimed_at, started in conn.execute(
        select(a.c.value_json, t.c.number, c.c.claimed_at, t.c.datetime_start)
        .select_from(t.join(a, on_attr).outerjoin(c, c.c.trial_id == t.c.trial_id))
        .where(t.c.study_id == sid, t.c.state == TrialState.RUNNING)
        .order_by(t.c.number)
    ).all():
        if claimed_at is not None:
            age: float | None = max(0.0, now - float(claimed_at))
        else:
            start = q.to_epoch(started)
            age = None if start is None else max(0.0, dt.datetime.now().timestamp() - start)
        running[str(q.decode_json(raw))] = (int(number), age)

    rows: list[WorkerRow] = []
    seen: set[str] = set()
    for r in conn.execute(select(w).where(w.c.study_id == sid).order_by(w.c.ordinal)).mappings():
        wid = r["worker_id"]
        seen.add(wid)
        current = running.get(wid) if r["finished_at"] is None else None
        rows.append(
            WorkerRow(
                worker_id=wid,
                host=r["host"],
                pid=r["pid"],
                started_at=r["started_at"],
                heartbeat_age_s=max(0.0, now - float(r["heartbeat_at"])),
                finished=r["finished_at"] is not None,
                exit_reason=r["exit_reason"],
                trials=by_state.get(wid, {}),
                current_trial=current[0] if current else None,
                current_trial_s=current[1] if current else None,
            )
        )
    # Trials may name workers the registry does not know (its rows were deleted, or another
    # tool ran them): they still appear, without registry details.
    for wid in sorted(set(by_state) - seen):
        current = running.get(wid)
        rows.append(
            WorkerRow(
                worker_id=wid,
                host=wid.rsplit("-", 2)[0],
                pid=None,
                started_at=None,
                heartbeat_age_s=None,
                finished=current is None,
                exit_reason=None,
                trials=by_state[wid],
                current_trial=current[0] if current else None,
                current_trial_s=current[1] if current else None,
            )
        )
    rows.sort(key=lambda row: row.finished)  # stable: running first, each in join order
    return rows


def _complete_values(conn: Connection, sid: int) -> dict[int, list[float]]:
    """Objective values of every COMPLETE trial, by trial id (one row per objective)."""
    v, t = q.values, q.trials
    out: dict[int, list[float]] = {}
    for trial_id, value, value_type in conn.execute(
        select(v.c.trial_id, v.c.value, v.c.value_type)
        .select_from(v.join(t, t.c.trial_id == v.c.trial_id))
        .where(t.c.study_id == sid, t.c.state == TrialState.COMPLETE)
        .order_by(v.c.trial_id, v.c.objective)
    ).all():
        out.setdefault(trial_id, []).append(q.trial_value(value, value_type))
    return out


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates (ties all stay), as Optuna defines it.

    Points are sorted lexicographically (as losses), so a point can only be dominated by one
    before it, and only a point already on the front needs checking: O(n · front size).
    """
    if not points:
        return []
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    losses = np.asarray(points, dtype=float) * sign
    order = np.lexsort(losses.T[::-1])
    front: list[int] = []
    front_losses = np.empty((0, losses.shape[1]))
    for index in order:
        p = losses[index]
        dominated = np.any(np.all(front_losses <= p, axis=1) & np.any(front_losses < p, axis=1))
        if not dominated:
            front.append(int(index))
            front_losses = np.vstack([front_losses, p])
    return sorted(front)
