"""One worker: claim a budget slot, ask Optuna for a trial, run the objective, tell the result.

This is what ``tunefleet worker`` runs, what each process of a local fleet runs, and what each
Kubernetes pod runs. A worker exits when the study is done (budget spent or deadline passed).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import time
import traceback
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

import optuna
from optuna.trial import TrialState

from tunefleet._redact import redact
from tunefleet.config import StudySpec
from tunefleet.objectives import Objective, WorkerContext
from tunefleet.samplers import make_sampler
from tunefleet.storage import FleetStorage
from tunefleet.study import FleetStudy, open_study

__all__ = ["EXIT_DONE", "EXIT_INTERRUPTED", "Worker", "WorkerResult"]

log = logging.getLogger("tunefleet.worker")

#: The study is done: budget spent or deadline passed. The only exit code that means "finished".
EXIT_DONE = 0
#: Stopped by a signal before the study was done: a supervisor should start a replacement.
EXIT_INTERRUPTED = 75

#: Trial system attribute holding why a trial failed (the name Optuna 2 used for the same).
FAIL_REASON_ATTR = "fail_reason"
#: Trial system attribute naming the worker that ran the trial.
WORKER_ATTR = "tunefleet:worker"

_POLL_MIN_S, _POLL_MAX_S = 0.2, 2.0


class Interrupted(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT; a BaseException so objectives don't catch it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class WorkerResult:
    """Why a worker stopped, and what it did."""

    reason: str  # "budget", "deadline", "interrupted"
    n_trials: int
    study: str

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.reason == "interrupted" else EXIT_DONE


def new_worker_id() -> str:
    """Host (the pod name on Kubernetes), pid and a random suffix: unique across restarts."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs trials of one study until it is done."""

    def __init__(self, storage: FleetStorage, spec: StudySpec, objective: Objective) -> None:
        self.storage = storage
        self.spec = spec
        self.objective = objective
        self.worker_id = new_worker_id()
        self.n_trials = 0
        self._stop = _StopSignals()

    def run(self) -> WorkerResult:
        fleet_study = open_study(self.storage, self.spec, self.objective)
        name = fleet_study.name
        if fleet_study.budget.done:
            reason = self._done_reason(fleet_study)
            log.info("study %s is already done (%s): nothing to do", name, reason)
            return WorkerResult(reason, 0, name)

        ledger = self.storage.ledger
        ordinal = ledger.register_worker(
            fleet_study.study_id, self.worker_id, socket.gethostname(), os.getpid()
        )
        # Every worker gets its own sampler seed, so seeded parallel workers do not propose the
        # same parameters; with one worker, --seed alone makes the study repeatable.
        seed = None if self.spec.seed is None else self.spec.seed + ordinal
        n_objectives = len(fleet_study.study.directions)
        fleet_study.study.sampler = make_sampler(self.spec.sampler, seed, n_objectives)
        self.objective.setup(WorkerContext(seed=self.spec.seed))
        log.info("worker %s joined study %s on %s", self.worker_id, name, self.storage.display_url)

        reason = "interrupted"
        try:
            with self._stop:
                reason = self._loop(fleet_study)
        except Interrupted as exc:
            log.warning("worker %s stopping on %s", self.worker_id, exc)
        finally:
            ledger.worker_finished(self.worker_id, reason)
            log.info(
                "worker %s stopped (%s) after %d trials", self.worker_id, reason, self.n_trials
            )
        return WorkerResult(reason, self.n_trials, name)

    def _loop(self, fleet_study: FleetStudy) -> str:
        ledger = self.storage.ledger
        poll = _POLL_MIN_S
        while True:
            self._stop.check()
            claim_id = ledger.claim(fleet_study.study_id, self.worker_id)
            if claim_id is None:
                # Every slot is taken; wait for the study to finish, or for a slot to come back.
                budget = ledger.budget(fleet_study.study_id)
                if budget.done:
                    return self._done_reason(fleet_study)
                time.sleep(poll)
                poll = min(poll * 2, _POLL_MAX_S)
                continue
            poll = _POLL_MIN_S
            self._run_one(fleet_study.study, claim_id)

    def _done_reason(self, fleet_study: FleetStudy) -> str:
        budget = self.storage.ledger.budget(fleet_study.study_id)
        return "deadline" if budget.deadline_passed and not budget.budget_spent else "budget"

    def _run_one(self, study: optuna.Study, claim_id: int) -> None:
        ledger = self.storage.ledger
        try:
            trial = study.ask()
        except BaseException:
            ledger.release(claim_id)
            raise
        ledger.attach(claim_id, trial._trial_id)
        self.n_trials += 1
        started = time.perf_counter()
        study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, self.worker_id)
        try:
            with self._stop.interruptible():
                value = self.objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            log.info(
                "trial %d pruned at step %s (%.2fs)",
                trial.number,
                study._storage.get_trial(trial._trial_id).last_step,
                time.perf_counter() - started,
            )
            return
        except Interrupted:
            # Not the objective's doing: the slot goes back so that the trial does not count.
            self._fail(study, trial, "interrupted: the worker was stopped before the trial ended")
            ledger.release(claim_id)
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self._fail(study, trial, reason, details=traceback.format_exc())
            return
        problem = _invalid_value(value, len(study.directions))
        if problem is not None:
            self._fail(study, trial, problem)
            return
        values = [float(v) for v in _as_list(value)]
        study.tell(trial, values)
        log.info(
            "trial %d finished: value %s, params %s (%.2fs)",
            trial.number,
            values[0] if len(values) == 1 else values,
            trial.params,
            time.perf_counter() - started,
        )

    def _fail(
        self, study: optuna.Study, trial: optuna.Trial, reason: str, details: str | None = None
    ) -> None:
        reason = redact(reason)[:2000]
        study._storage.set_trial_system_attr(trial._trial_id, FAIL_REASON_ATTR, reason)
        study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d failed: %s", trial.number, reason)
        if details:
            log.debug("trial %d traceback:\n%s", trial.number, redact(details))


def _invalid_value(value: Any, n_objectives: int) -> str | None:
    """Why an objective's return value cannot be told to the study, or None if it can."""
    values = _as_list(value)
    if len(values) != n_objectives:
        return (
            f"the objective returned {len(values)} values but the study has "
            f"{n_objectives} objective(s)"
        )
    for v in values:
        if isinstance(v, bool) or (not isinstance(v, int | float) and not hasattr(v, "__float__")):
            return f"the objective returned {v!r} ({type(v).__name__}), not a number"
        try:
            f = float(v)
        except (TypeError, ValueError):
            return f"the objective returned {v!r}, which is not a number"
        if math.isnan(f):
            return "the objective returned NaN"
    return None


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str | bytes):
        return [value]
    if isinstance(value, Sequence):
        return list(value)
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0:  # numpy arrays
        return list(value.tolist())
    return [value]


class _StopSignals:
    """SIGTERM/SIGINT handling: stop between trials, interrupt an objective, die on the second.

    Outside the objective a signal only sets a flag that the loop checks before claiming the next
    slot, so a signal never lands inside a database transaction. Inside the objective it raises
    :class:`Interrupted`, so the trial is handed back at once instead of running to its end.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._in_objective = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        for s in (signal.SIGTERM, signal.SIGINT):
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        if self._in_objective:
            raise Interrupted(signum)

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        self.check()
        self._in_objective = True
        try:
            yield
        finally:
            self._in_objective = False
