"""The progress model: where a study stands now, one typed snapshot for every command.

``run`` (its progress line, summary and ``--json``), ``worker --json``, ``status``, ``studies`` and
``k8s status`` all read a :class:`StudyStatus` through the storage's read API
(:mod:`tunefleet.storage.read`) and print its :meth:`~StudyStatus.to_json`: one JSON schema
(``"schema": 1``, every key documented in docs/json-schema.md), so a key means the same thing
whichever command printed it. ``best`` and ``trials`` print trials as the same trial object
(:class:`tunefleet.monitor.TrialRow`).

Nothing here loads the trial list: counts are grouped in the database, the best trial comes from
Optuna's own indexed query, and the Pareto front of a multi-objective study is computed from the
value rows alone. That keeps one read well under a second on 10,000 trials.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState
from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection

from tunefleet.constants import LOST_ATTR, WORKER_ATTR
from tunefleet.errors import StudyError
from tunefleet.monitor import _sql as q
from tunefleet.monitor._pareto import pareto_front
from tunefleet.monitor._trials import TrialRow
from tunefleet.storage import FleetStorage
from tunefleet.storage.read import StudyRef, open_claim_condition, read, study_refs

__all__ = [
    "LIVE_HEARTBEAT_S",
    "RATE_WINDOW_S",
    "SCHEMA_VERSION",
    "StudyStatus",
    "WorkerRow",
    "read_all_statuses",
    "read_status",
    "resolve_study",
]

#: Version of the JSON every command prints for a study (docs/json-schema.md).
SCHEMA_VERSION = 1
#: The trial rate is measured over the last this many seconds (or since the first trial): a
#: recent window, so a rate says how fast the study goes now, not on average since it began.
RATE_WINDOW_S = 60.0
#: A running worker whose last heartbeat is older than this is not counted as live (it may be
#: dead and not yet declared lost); without a live worker there is no ETA.
LIVE_HEARTBEAT_S = 60.0
#: Trials of a Pareto front that a snapshot loads to show their parameters.
PARETO_SHOWN = 10
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


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

    @property
    def live(self) -> bool:
        """Running, with a heartbeat in the last :data:`LIVE_HEARTBEAT_S` seconds."""
        age = self.heartbeat_age_s
        return not self.finished and age is not None and age <= LIVE_HEARTBEAT_S

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
    best: TrialRow | None
    n_pareto: int
    pareto: list[TrialRow] = field(default_factory=list)
    workers: list[WorkerRow] = field(default_factory=list)
    n_requeued: int = 0
    now: float = 0.0

    @property
    def n_trials(self) -> int:
        """Trials of every state, including those stock Optuna made outside the budget."""
        return sum(self.states.values())

    @property
    def budget_left(self) -> int | None:
        return None if self.budget is None else max(0, self.budget - self.n_claimed)

    @property
    def active_workers(self) -> list[WorkerRow]:
        return [w for w in self.workers if not w.finished]

    @property
    def live_workers(self) -> list[WorkerRow]:
        return [w for w in self.workers if w.live]

    @property
    def best_value(self) -> float | None:
        """The best value of a single-objective study (None if infinite or none yet)."""
        if self.best is None or not self.best.values:
            return None
        value = self.best.values[0]
        return value if math.isfinite(value) else None

    def to_json(self) -> dict[str, Any]:
        """The study as schema 1 (docs/json-schema.md): the same keys from every command."""
        return {
            "schema": SCHEMA_VERSION,
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
            "done": self.done,
            "deadline_left_s": _round(self.deadline_left_s),
            "rate_per_min": round(self.rate_per_min, 3),
            "rate_window_s": round(self.rate_window_s, 1),
            "eta_s": _round(self.eta_s),
            "best": self.best.to_json() if self.best else None,
            "n_pareto": self.n_pareto,
            "pareto_front": [t.to_json() for t in self.pareto],
            "requeued": self.n_requeued,
            "live_workers": len(self.live_workers),
            "workers": [w.to_json() for w in self.workers],
        }


def resolve_study(storage: FleetStorage, name: str | None) -> StudyRef:
    """The study called ``name``, or the only study in the storage when ``name`` is None.

    Raises:
        StudyError: no such study, no study at all, or several and no name given.
    """
    refs = study_refs(storage)
    where = storage.display_url
    if name is not None:
        for ref in refs:
            if ref.name == name:
                return ref
        known = ", ".join(r.name for r in refs) or "none"
        raise StudyError(f"no study '{name}' in {where} (studies there: {known}): fix --study")
    if len(refs) == 1:
        return refs[0]
    if not refs:
        raise StudyError(
            f"no studies in {where}: start one (tunefleet run OBJECTIVE), or pass --storage"
        )
    listing = ", ".join(r.name for r in refs)
    raise StudyError(f"{len(refs)} studies in {where} ({listing}): pass --study NAME")


def read_all_statuses(storage: FleetStorage) -> list[StudyStatus]:
    """A snapshot of every study in the storage (what ``studies`` lists)."""
    return [read_status(storage, ref) for ref in study_refs(storage)]


@dataclass(frozen=True)
class _Rows:
    ledger: Any
    now: float
    states: dict[str, int]
    n_open: int
    rate: tuple[float, float]
    workers: list[WorkerRow]
    front_values: dict[int, list[float]]
    n_requeued: int


def read_status(
    storage: FleetStorage, ref: StudyRef, window_s: float = RATE_WINDOW_S
) -> StudyStatus:
    """Read the study's snapshot in one short transaction (plus the best trial's parameters)."""
    sid = ref.study_id

    def query(conn: Connection) -> _Rows:
        ledger = conn.execute(
            select(q.fleet.c.n_trials, q.fleet.c.n_claimed, q.fleet.c.deadline).where(
                q.fleet.c.study_id == sid
            )
        ).first()
        now = float(conn.execute(select(q.epoch_now())).scalar_one())
        return _Rows(
            ledger=ledger,
            now=now,
            states=_state_counts(conn, sid),
            n_open=_open_claims(conn, sid) if ledger is not None else 0,
            rate=_rate(conn, sid, now, window_s, ledger is not None),
            workers=_workers(conn, sid, now),
            front_values=_complete_values(conn, sid) if ref.multi_objective else {},
            n_requeued=_count_attr(conn, sid, LOST_ATTR),
        )

    rows = read(storage, query)
    states, now = rows.states, rows.now
    if rows.ledger is not None:
        budget, n_claimed, deadline = rows.ledger[0], int(rows.ledger[1]), rows.ledger[2]
        n_counted = n_claimed - rows.n_open
    else:  # a study made by stock Optuna: no budget, every finished trial counts
        budget, n_claimed, deadline = None, 0, None
        n_counted = sum(states[s.name] for s in _FINISHED)
    deadline_left = None if deadline is None else max(0.0, deadline - now)
    done = (budget is not None and n_counted >= budget) or deadline_left == 0.0
    rate, window = rows.rate
    live = any(w.live for w in rows.workers)
    eta = _eta(done, live, budget, n_counted, rate, deadline_left)

    best: TrialRow | None = None
    pareto: list[TrialRow] = []
    n_pareto = 0
    if not ref.multi_objective and states["COMPLETE"]:
        best = TrialRow.from_trial(storage.optuna.get_best_trial(sid))
    elif rows.front_values:
        front_values = rows.front_values
        ids = list(front_values)
        front = pareto_front([front_values[i] for i in ids], ref.directions)
        n_pareto = len(front)
        for index in sorted(front, key=lambda i: front_values[ids[i]])[:PARETO_SHOWN]:
            pareto.append(TrialRow.from_trial(storage.optuna.get_trial(ids[index])))

    return StudyStatus(
        study=ref.name,
        storage=storage.display_url,
        directions=ref.directions,
        states=states,
        budget=budget,
        n_counted=n_counted,
        n_in_flight=rows.n_open,
        n_claimed=n_claimed,
        deadline_left_s=deadline_left,
        done=done,
        rate_per_min=rate,
        rate_window_s=window,
        eta_s=eta,
        best=best,
        n_pareto=n_pareto,
        pareto=pareto,
        workers=rows.workers,
        n_requeued=rows.n_requeued,
        now=now,
    )


def _eta(
    done: bool,
    live: bool,
    budget: int | None,
    counted: int,
    rate_per_min: float,
    deadline_left: float | None,
) -> float | None:
    """Seconds until the budget is spent at the current rate, or the deadline if that is sooner;
    None while no worker is alive (nothing is moving the study forward)."""
    if done:
        return 0.0
    if not live:
        return None
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


def _count_attr(conn: Connection, sid: int, key: str) -> int:
    t, a = q.trials, q.system_attrs
    return int(
        conn.execute(
            select(func.count())
            .select_from(a.join(t, t.c.trial_id == a.c.trial_id))
            .where(t.c.study_id == sid, a.c.key == key)
        ).scalar_one()
    )


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
