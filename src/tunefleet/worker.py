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
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

import optuna
from optuna.trial import TrialState

from tunefleet import artifacts, constants
from tunefleet._redact import redact
from tunefleet.config import StudySpec
from tunefleet.constants import ExitCode
from tunefleet.failures import (
    TRACEBACK_HEADER,
    FailurePolicy,
    Stop,
    check_failures,
    clear_stop,
    read_stop,
    store_policy,
)
from tunefleet.objectives import Objective, WorkerContext
from tunefleet.objectives._common import worker_threads
from tunefleet.recovery import ATTEMPT_ATTR, EXTRA_LOSSES, TRACEBACK_ATTR, requeue_trial
from tunefleet.runner import ChildRunner, InProcessRunner, Interrupted, TrialOutcome
from tunefleet.samplers import make_sampler
from tunefleet.storage import FleetStorage
from tunefleet.study import FleetStudy, open_study

__all__ = ["EXIT_DONE", "EXIT_INTERRUPTED", "Interrupted", "Worker", "WorkerResult"]

log = logging.getLogger("tunefleet.worker")

#: The study is done: budget spent or deadline passed. The only exit code that means "finished".
EXIT_DONE = ExitCode.OK
#: Stopped by a signal before the study was done: a supervisor should start a replacement.
EXIT_INTERRUPTED = ExitCode.INTERRUPTED

#: Trial system attribute holding why a trial failed (the name Optuna 2 used for the same).
FAIL_REASON_ATTR = constants.FAIL_REASON_ATTR

_POLL_MIN_S, _POLL_MAX_S = 0.2, 2.0
#: After SIGTERM/SIGINT, how long a worker may take to hand its trial back before it exits
#: anyway: a call blocked on a dead database must not keep a pod (or ``run``) waiting. A trial it
#: could not hand back is taken over by another worker after the grace period.
STOP_DEADLINE_S = 5.0


@dataclass(frozen=True)
class WorkerResult:
    """Why a worker stopped, and what it did."""

    reason: str  # "budget", "deadline", "interrupted", "failures"
    n_trials: int
    study: str
    stop: Stop | None = None  # why the fleet stopped, when reason is "failures"

    @property
    def exit_code(self) -> int:
        if self.reason == "failures":
            return ExitCode.OBJECTIVE_BROKEN
        return EXIT_INTERRUPTED if self.reason == "interrupted" else EXIT_DONE


def new_worker_id() -> str:
    """Host (the pod name on Kubernetes), pid and a random suffix: unique across restarts."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs trials of one study until it is done.

    Besides the trial loop, a background thread beats the worker's heartbeat into the registry,
    and another takes over the trials of workers that stopped beating (see
    :mod:`tunefleet.recovery`).
    """

    def __init__(self, storage: FleetStorage, spec: StudySpec, objective: Objective) -> None:
        self.storage = storage
        self.spec = spec
        self.objective = objective
        self.worker_id = new_worker_id()
        self.n_trials = 0
        self._stop = _StopSignals()
        self._failed_in_a_row = 0
        # The workers of one run share a stop on failures; a lone worker is a run of its own.
        self.fleet_id = os.environ.get(constants.FLEET_ID_ENV) or self.worker_id
        self.policy = FailurePolicy()
        #: Set (by the heartbeat thread or after a failure) when the fleet stops on failures.
        self.stopped: Stop | None = None
        self._errors_shown: set[str] = set()
        self._seen_success = False  # a trial of the study completed: it cannot be broken
        self.runner: InProcessRunner | ChildRunner = (
            InProcessRunner(objective) if spec.trial_timeout is None else ChildRunner(objective)
        )

    def run(self) -> WorkerResult:
        # The objective's numerical libraries get this worker's share of the CPUs, not all of
        # them: W workers each starting one thread per core run several times slower.
        n_threads = worker_threads()
        fleet_study = open_study(self.storage, self.spec, self.objective)
        name = fleet_study.name
        if fleet_study.budget.done:
            reason = self._done_reason(fleet_study)
            log.info("study %s is already done (%s): nothing to do", name, reason)
            return WorkerResult(reason, 0, name)
        study_id = fleet_study.study_id
        self.policy = store_policy(self.storage, study_id, self.spec.max_failures)
        previous = read_stop(self.storage, study_id)
        if previous is not None:
            if previous.fleet == self.fleet_id:  # this run stopped before this worker joined
                log.error("study %s stopped: %s", name, previous.reason)
                return WorkerResult("failures", 0, name, previous)
            log.info("study %s had stopped (%s): trying again", name, previous.reason)
            clear_stop(self.storage, study_id)

        ledger = self.storage.ledger
        ordinal = ledger.register_worker(
            fleet_study.study_id, self.worker_id, socket.gethostname(), os.getpid()
        )
        # Every worker gets its own sampler seed, so seeded parallel workers do not propose the
        # same parameters; with one worker, --seed alone makes the study repeatable.
        seed = None if self.spec.seed is None else (self.spec.seed + ordinal) % 2**32
        n_objectives = len(fleet_study.study.directions)
        fleet_study.study.sampler = make_sampler(self.spec.sampler, seed, n_objectives)
        heartbeat = _Heartbeat(self, fleet_study.study_id)
        heartbeat.start()
        reason = "interrupted"
        try:
            with self._stop:
                self.runner.setup(WorkerContext(seed=self.spec.seed, n_threads=n_threads))
                log.info(
                    "worker %s joined study %s on %s",
                    self.worker_id,
                    name,
                    self.storage.display_url,
                )
                reason = self._loop(fleet_study)
        except Interrupted as exc:
            log.warning("worker %s stopping on %s", self.worker_id, exc)
        finally:
            self.runner.close()
            heartbeat.stop()
            for claim_id in ledger.open_claims_of(self.worker_id):
                ledger.release(claim_id)
            ledger.worker_finished(self.worker_id, reason)
            log.info(
                "worker %s stopped (%s) after %d trials", self.worker_id, reason, self.n_trials
            )
        return WorkerResult(reason, self.n_trials, name, self.stopped)

    def _loop(self, fleet_study: FleetStudy) -> str:
        ledger = self.storage.ledger
        poll = _POLL_MIN_S
        while True:
            self._stop.check()
            if self.stopped is not None:
                log.error("the fleet stopped: %s", self.stopped.reason)
                return "failures"
            taken = self.storage.ask_trial(fleet_study.study, self.worker_id)
            if taken is None:
                # Every slot is taken; wait for the study to finish, or for a slot to come back
                # (a lost trial re-queued by the heartbeat thread of this or another worker).
                budget = ledger.budget(fleet_study.study_id)
                if budget.done:
                    return self._done_reason(fleet_study)
                time.sleep(poll)
                poll = min(poll * 2, _POLL_MAX_S)
                continue
            poll = _POLL_MIN_S
            try:
                self._run_one(fleet_study, *taken)
            except optuna.exceptions.UpdateFinishedTrialError as exc:
                # The trial was declared lost while this worker was unresponsive (a long pause)
                # and already runs again elsewhere: drop this attempt, do not crash.
                log.warning(
                    "dropping a trial that was re-queued while this worker was unresponsive: %s",
                    exc,
                )

    def _done_reason(self, fleet_study: FleetStudy) -> str:
        budget = self.storage.ledger.budget(fleet_study.study_id)
        return "deadline" if budget.deadline_passed and not budget.budget_spent else "budget"

    def _run_one(self, fleet_study: FleetStudy, claim_id: int, trial: optuna.Trial) -> None:
        study, ledger = fleet_study.study, self.storage.ledger
        self.n_trials += 1
        started = time.perf_counter()
        log.info(
            "trial %d started", trial.number, extra={"event": "started", "trial": trial.number}
        )
        try:
            with self._stop.interruptible():
                outcome = self.runner.run(trial, self.spec.trial_timeout)
        except Interrupted as exc:
            # Not the objective's doing: hand the trial back at once, re-queued with the same
            # parameters, rather than leave it to the grace period.
            ledger.mark_requeue(claim_id)
            requeue_trial(
                self.storage,
                fleet_study.study_id,
                claim_id,
                trial._trial_id,
                lost_reason=f"worker {self.worker_id} was stopped ({exc})",
            )
            log.warning(
                "trial %d handed back: re-queued with the same parameters",
                trial.number,
                extra={"event": "lost", "trial": trial.number},
            )
            raise
        if outcome.kind == "pruned":
            self._tell(study, trial, state=TrialState.PRUNED)
            step = study._storage.get_trial(trial._trial_id).last_step
            log.info(
                "trial %d pruned at step %s (%.2fs)",
                trial.number,
                step,
                time.perf_counter() - started,
                extra={"event": "pruned", "trial": trial.number, "step": step},
            )
            self._failed_in_a_row = 0
            self._seen_success = True
            return
        if outcome.failed:
            self._fail(fleet_study, claim_id, trial, outcome)
            return
        value = outcome.value
        problem = _invalid_value(value, len(study.directions))
        if problem is not None:
            self._fail(fleet_study, claim_id, trial, TrialOutcome("invalid", reason=problem))
            return
        values = [float(v) for v in _as_list(value)]
        self._tell(study, trial, values=values)
        self._failed_in_a_row = 0
        self._seen_success = True
        elapsed = time.perf_counter() - started
        log.info(
            "trial %d finished: value %s, params %s (%.2fs)",
            trial.number,
            values[0] if len(values) == 1 else values,
            trial.params,
            elapsed,
            extra={
                "event": "finished",
                "trial": trial.number,
                "values": values,
                "params": trial.params,
                "duration_s": round(elapsed, 3),
            },
        )

    def _tell(self, study: optuna.Study, trial: optuna.Trial, **kwargs: Any) -> None:
        try:
            study.tell(trial, **kwargs)
        except ValueError as exc:
            if "Cannot tell a" not in str(exc):
                raise
            # Optuna's words for a trial no longer RUNNING: it was declared lost meanwhile.
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"trial {trial.number} was already finished by another worker; its result "
                f"{kwargs.get('values')} is dropped"
            ) from exc
        self._tidy_artifacts(study)

    def _tidy_artifacts(self, study: optuna.Study) -> None:
        """Remove the models of trials no longer kept (--save-models); never fails a trial."""
        try:
            artifacts.tidy(study, self.storage.forget_trial_system_attrs)
        except Exception as exc:  # the next finished trial tidies again
            log.warning("could not tidy the artifact store: %s", redact(str(exc)))

    def _fail(
        self, fleet_study: FleetStudy, claim_id: int, trial: optuna.Trial, outcome: TrialOutcome
    ) -> None:
        study, ledger = fleet_study.study, self.storage.ledger
        reason = redact(outcome.reason)[:2000]
        storage = study._storage
        storage.set_trial_system_attr(trial._trial_id, FAIL_REASON_ATTR, reason)
        storage.set_trial_system_attr(trial._trial_id, constants.FAILURE_KIND_ATTR, outcome.kind)
        if outcome.traceback:
            storage.set_trial_system_attr(
                trial._trial_id, TRACEBACK_ATTR, redact(outcome.traceback)[-8000:]
            )
        attempt = int(storage.get_trial_system_attrs(trial._trial_id).get(ATTEMPT_ATTR, 1))
        # A timeout is a result (its slot counts); an exception or a crash may be retried.
        retry = outcome.kind in ("exception", "crash") and attempt <= self.spec.retry_failed
        if retry:
            ledger.mark_requeue(claim_id)  # before the FAIL, so the study never looks done
        self._tell(study, trial, state=TrialState.FAIL)
        where = f" (at {outcome.where})" if outcome.where else ""
        if retry:
            requeue_trial(self.storage, fleet_study.study_id, claim_id, trial._trial_id)
            log.warning(
                "trial %d failed: %s%s; re-running it with the same parameters (retry %d of %d)",
                trial.number,
                reason,
                where,
                attempt,
                self.spec.retry_failed,
                extra={
                    "event": "failed",
                    "trial": trial.number,
                    "reason": reason,
                    "retry": attempt,
                },
            )
        else:
            log.warning(
                "trial %d failed: %s%s",
                trial.number,
                reason,
                where,
                extra={"event": "failed", "trial": trial.number, "reason": reason},
            )
        self._show_traceback(trial.number, outcome)
        self._failed_in_a_row += 1
        if self._failed_in_a_row in (5, 20, 100):
            counts = self.storage.ledger.trial_counts(fleet_study.study_id)
            if counts.get("COMPLETE", 0):
                log.warning(
                    "worker %s failed its last %d trials in a row while other trials complete: "
                    "check this machine (memory, GPU, files, packages)",
                    self.worker_id,
                    self._failed_in_a_row,
                )
        # Once a trial completed, only --max-failures can stop the fleet: skip the queries.
        if not retry and not (self._seen_success and self.policy.max_failures is None):
            error = f"{reason}, at {outcome.where}" if outcome.where else reason
            stop = check_failures(
                self.storage, fleet_study.study_id, self.policy, self.fleet_id, error
            )
            if stop is not None:
                self.stopped = stop

    def _show_traceback(self, number: int, outcome: TrialOutcome) -> None:
        """The traceback of each distinct error once (per worker; ``run`` drops repeats)."""
        if not outcome.traceback:
            return
        signature = outcome.signature
        if signature in self._errors_shown:
            log.debug("trial %d traceback:\n%s", number, outcome.traceback)
            return
        self._errors_shown.add(signature)
        log.warning(
            "trial %d: %s; %s:\n%s",
            number,
            signature,
            TRACEBACK_HEADER,
            outcome.traceback.rstrip("\n"),
            extra={"event": "traceback", "trial": number, "error_at": signature},
        )


class _Heartbeat(threading.Thread):
    """Beats the worker's heartbeat, and, in a thread of its own, takes over the trials of
    workers that stopped beating.

    Taking over waits on the database's locks (a stopped worker's row, up to the lock bound of
    :mod:`tunefleet.storage._ledger`), so it never runs in the thread that beats: however long it
    waits, this worker keeps beating and is not declared lost in turn.

    Reaping waits until this worker has itself been able to reach the database for a full grace
    period: after an outage every worker's last beat is old, and without the wait the first
    worker back would declare all the others lost before they had a chance to beat.
    """

    def __init__(self, worker: Worker, study_id: int) -> None:
        super().__init__(name="tunefleet-heartbeat", daemon=True)
        self.worker = worker
        self.study_id = study_id
        self._stopped = threading.Event()
        self._healthy_since: float | None = None
        self._reaper = threading.Thread(
            target=self._reap_loop, name="tunefleet-reaper", daemon=True
        )

    def start(self) -> None:
        super().start()
        self._reaper.start()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=10)
        self._reaper.join(timeout=10)

    def run(self) -> None:
        spec = self.worker.spec
        while not self._stopped.wait(spec.heartbeat_interval):
            try:
                self._beat()
            except Exception as exc:  # the next beat tries again; the main loop reports outages
                self._healthy_since = None
                log.debug("heartbeat failed: %s", redact(str(exc)))

    def _beat(self) -> None:
        worker = self.worker
        ledger = worker.storage.ledger
        if worker.stopped is None:  # another worker stopped the fleet on failures
            worker.stopped = read_stop(worker.storage, self.study_id)
        if not ledger.heartbeat(worker.worker_id):
            log.warning(
                "worker %s had been declared lost (no heartbeat for more than %gs); its "
                "running trial was re-queued",
                worker.worker_id,
                worker.spec.grace_period,
            )
        if self._healthy_since is None:
            self._healthy_since = time.monotonic()

    def _reap_loop(self) -> None:
        spec = self.worker.spec
        while not self._stopped.wait(spec.heartbeat_interval):
            healthy_since = self._healthy_since
            if healthy_since is None or time.monotonic() - healthy_since < spec.grace_period:
                continue
            try:
                self._reap()
            except Exception as exc:  # tried again at the next interval
                log.debug("taking over stopped workers' trials failed: %s", redact(str(exc)))

    def _reap(self) -> None:
        worker = self.worker
        ledger = worker.storage.ledger
        for claim in ledger.take_stale_claims(
            self.study_id, worker.worker_id, worker.spec.grace_period
        ):
            if claim.trial_id is None:
                ledger.release(claim.claim_id)
                continue
            reason = (
                f"worker {claim.worker_id} stopped (no heartbeat for more than "
                f"{worker.spec.grace_period:g}s)"
            )
            rerun = requeue_trial(
                worker.storage,
                self.study_id,
                claim.claim_id,
                claim.trial_id,
                lost_reason=reason,
                max_losses=worker.spec.retry_failed + EXTRA_LOSSES,
            )
            if rerun is not None:
                log.warning(
                    "trial (id %d) lost with %s: re-queued with the same parameters",
                    claim.trial_id,
                    claim.worker_id,
                    extra={
                        "event": "lost",
                        "trial_id": claim.trial_id,
                        "lost_worker": claim.worker_id,
                    },
                )


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


def _exit_after(seconds: float, signum: int) -> None:
    time.sleep(seconds)
    log.warning(
        "worker still busy %gs after %s (a database call that does not answer?): exiting; "
        "its running trial is re-run by another worker after the grace period",
        seconds,
        signal.Signals(signum).name,
    )
    os._exit(EXIT_INTERRUPTED)


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
        threading.Thread(
            target=_exit_after, args=(STOP_DEADLINE_S, signum), name="tunefleet-stop", daemon=True
        ).start()
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
