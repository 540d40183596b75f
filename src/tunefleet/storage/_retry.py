"""Ride out database outages: retry transient failures with backoff, up to a deadline.

A serverless Postgres routinely suspends its compute (killing connections), takes a few hundred
milliseconds to seconds to wake up, and restarts. A worker must wait and carry on, and a result it
computed during an outage must be written once the database is back — once. Transient means the
connection failed; a query the server rejected (a constraint, a syntax error, a wrong password) is
not retried.

:class:`RetryingStorage` wraps an Optuna storage and retries each call. Calls that may have taken
effect before the connection dropped are made safe to repeat: telling a trial its final state is
accepted when the stored trial already has exactly that state and those values.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Container, Sequence
from typing import Any, TypeVar

import optuna
import psycopg
import sqlalchemy.exc
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

__all__ = ["Retrier", "RetryingStorage", "holds_outcome", "is_transient"]

log = logging.getLogger("tunefleet.storage")
T = TypeVar("T")

# Messages of errors that mean "the connection or server went away", whatever wraps them.
_TRANSIENT_MESSAGES = (
    "terminating connection",
    "server closed the connection",
    "connection refused",
    "could not connect",
    "connection timed out",
    "timeout expired",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "connection is closed",
    "connection already closed",
    "consuming input failed",
    "ssl connection has been closed",
    "could not receive data",
    "could not send data",
    "no connection to the server",
    "connection reset",
    "broken pipe",
    "could not translate host name",
    "cannot connect now",
    "database is locked",
    "sorry, too many clients",
    "server conn crashed",
    "query_wait_timeout",
    "canceling statement due to conflict with recovery",
    "deadlock detected",
)


# Connection failures that waiting cannot fix: the URL or the TLS set-up is wrong. Checked first,
# so that "connection failed: ... certificate verify failed" fails at once instead of after
# --db-wait.
_PERMANENT_MESSAGES = (
    "password authentication failed",
    "does not exist",
    "invalid sslmode",
    "invalid port",
    "invalid integer value",
    "invalid connection option",
    "invalid uri",
    "certificate",
    "server does not support ssl",
    "channel binding required",
    "no pg_hba.conf entry",
    "unsupported startup parameter",
)


def is_permanent(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a connection failure no retry can fix."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        message = str(current).lower()
        if any(m in message for m in _PERMANENT_MESSAGES):
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a connection-level failure worth retrying."""
    if is_permanent(exc):
        return False
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, psycopg.OperationalError | sqlalchemy.exc.OperationalError):
            return True  # permanent failures were ruled out above
        message = str(current).lower()
        if any(m in message for m in _TRANSIENT_MESSAGES):
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


class Retrier:
    """Calls a function until it succeeds, retrying transient failures for up to ``wait`` seconds.

    Shared by every storage call of a process, so one outage produces one warning and one
    "back" message, not one per call.
    """

    def __init__(self, wait: float, describe: str) -> None:
        self.wait = wait
        self.describe = describe
        self._lock = threading.Lock()
        self._outage_since: float | None = None

    def call(self, func: Callable[[], T], on_retry: Callable[[], None] | None = None) -> T:
        deadline = time.monotonic() + self.wait
        delay = 0.0
        while True:
            try:
                result = func()
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() + delay > deadline:
                    raise
                # The first retry is immediate and silent: a pooled connection that the server
                # closed while idle fails once, and the retry gets a fresh one.
                if delay:
                    self._note_outage(exc)
                time.sleep(delay)
                delay = min(max(delay * 2, 0.05), 2.0)
                if on_retry is not None:
                    on_retry()
                continue
            self._note_recovery()
            return result

    def _note_outage(self, exc: BaseException) -> None:
        with self._lock:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                from tunefleet.storage._errors import _root_message

                log.warning(
                    "database %s unavailable (%s); retrying for up to %.0fs",
                    self.describe,
                    _root_message(exc),
                    self.wait,
                )

    def _note_recovery(self) -> None:
        if self._outage_since is None:
            return
        with self._lock:
            if self._outage_since is not None:
                log.warning(
                    "database %s is back after %.1fs",
                    self.describe,
                    time.monotonic() - self._outage_since,
                )
                self._outage_since = None

    def __getstate__(self) -> dict[str, Any]:
        return {"wait": self.wait, "describe": self.describe}

    def __setstate__(self, state: dict[str, Any]) -> None:
        Retrier.__init__(self, state["wait"], state["describe"])


def holds_outcome(trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> bool:
    """Whether a stored trial already has exactly this final state and these values: what a
    retried tell finds when its first attempt committed and only the answer was lost."""
    return trial.state == state and (values is None or trial.values == [float(v) for v in values])


class RetryingStorage(BaseStorage):
    """An Optuna storage that retries transient database failures of the storage it wraps."""

    def __init__(self, inner: BaseStorage, retrier: Retrier) -> None:
        self._inner = inner
        self._retrier = retrier

    @property
    def inner(self) -> BaseStorage:
        return self._inner

    def _call(self, method: Callable[..., T], *args: Any) -> T:
        return self._retrier.call(lambda: method(*args))

    # Writes whose repetition is harmless (upserts, or guarded by a unique key Optuna checks).
    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        return self._call(self._inner.create_new_study, directions, study_name)

    def delete_study(self, study_id: int) -> None:
        return self._call(self._inner.delete_study, study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        return self._call(self._inner.set_study_user_attr, study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        return self._call(self._inner.set_study_system_attr, study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._call(self._inner.get_study_id_from_name, study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._call(self._inner.get_study_name_from_id, study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._call(self._inner.get_study_directions, study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call(self._inner.get_study_user_attrs, study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call(self._inner.get_study_system_attrs, study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._call(
            self._inner.get_all_studies,
        )

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._call(self._inner.create_new_trial, study_id, template_trial)

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        return self._call(
            self._inner.set_trial_param, trial_id, param_name, param_value_internal, distribution
        )

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._call(
            self._inner.get_trial_id_from_study_id_trial_number, study_id, trial_number
        )

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self._call(self._inner.get_trial_number_from_id, trial_id)

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._call(self._inner.get_trial_param, trial_id, param_name)

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        return self._call(
            self._inner.set_trial_intermediate_value, trial_id, step, intermediate_value
        )

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        return self._call(self._inner.set_trial_user_attr, trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        return self._call(self._inner.set_trial_system_attr, trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._call(self._inner.get_trial, trial_id)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._call(self._inner.get_all_trials, study_id, deepcopy, states)

    def get_n_trials(
        self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None
    ) -> int:
        return self._call(self._inner.get_n_trials, study_id, state)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._call(self._inner.get_best_trial, study_id)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        attempts = 0

        def attempt() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return self._inner.set_trial_state_values(trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A retry after a commit whose answer was lost: the write already happened.
                if (
                    attempts > 1
                    and state.is_finished()
                    and holds_outcome(self._inner.get_trial(trial_id), state, values)
                ):
                    return True
                raise

        return self._retrier.call(attempt)

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self._inner.check_trial_is_updatable(trial_id, trial_state)

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self._call(self._inner.get_trial_params, trial_id)

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._call(self._inner.get_trial_user_attrs, trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._call(self._inner.get_trial_system_attrs, trial_id)
