"""What the fast engines share: a worker's trial in three steps, whatever the database.

Stock ``RDBStorage`` spends 30-50 statements in 8-12 transactions on a trial. A fast engine
(:mod:`tunefleet.storage._fast` on PostgreSQL, :mod:`tunefleet.storage._fast_sqlite` on the
embedded store) spends:

1. **ask** — one transaction: take a budget slot, pop a queued re-run or create the trial, link
   the slot to it, tag the worker, and (once the sampler reads the study) read every trial that
   changed since this process last looked;
2. **suggest, k times** — nothing on the critical path: parameters, intermediate values and
   attributes are kept in memory and written by a background thread within ``flush_interval``
   (0.1 s), so other workers' samplers (TPE's ``constant_liar``) see them and a re-run after a
   crash repeats them;
3. **tell** — one transaction: any writes still pending, then the state and values, only if the
   trial is still RUNNING (one declared lost meanwhile has been failed and re-queued: it must not
   also get values).

Reads come from a per-process cache of the study's trials. Finished trials never change, so a
sync reads only trials new to this process and those it last saw unfinished: its cost follows
the number of running trials, not the size of the study.

Optuna's contract holds as on ``RDBStorage``: a parameter whose distribution kind differs from
the study's is refused with Optuna's error; a write to a finished trial raises
``UpdateFinishedTrialError``; a tell is taken as already done only when a retry finds its own
first attempt committed; a returned trial shares no mutable object with the cache.

:class:`FastStorage` holds all of that; a backend supplies the transactions (``_ask``,
``_finish``, ``_write_pending``, ``_read_changed``, ``_read_distribution``). Everything else is
delegated to the stock storage, so the tables, and what stock Optuna and its tools see, are
exactly Optuna's.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import threading
import time
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    check_distribution_compatibility,
    distribution_to_json,
    json_to_distribution,
)
from optuna.storages import BaseStorage
from optuna.storages._rdb.models import TrialIntermediateValueModel, TrialValueModel
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from tunefleet.storage._clock import stored_to_local, utc_now
from tunefleet.storage._retry import Retrier

__all__ = ["FastStorage"]

log = logging.getLogger("tunefleet.storage")


@dataclass
class _Pending:
    """Writes to one of this process's running trials that have not reached the database yet,
    by what they write: a later write of the same key replaces an earlier one."""

    params: dict[str, tuple[float, str]] = field(default_factory=dict)
    intermediate: dict[int, tuple[float | None, str]] = field(default_factory=dict)
    user_attrs: dict[str, str] = field(default_factory=dict)
    system_attrs: dict[str, str] = field(default_factory=dict)
    # When the oldest write not yet stored was made (time.monotonic()).
    since: float = 0.0

    def parts(self) -> tuple[dict[Any, Any], ...]:
        return (self.params, self.intermediate, self.user_attrs, self.system_attrs)

    def __bool__(self) -> bool:
        return any(self.parts())

    def snapshot(self) -> _Pending:
        return _Pending(
            dict(self.params),
            dict(self.intermediate),
            dict(self.user_attrs),
            dict(self.system_attrs),
            self.since,
        )

    def touch(self) -> _Pending:
        """Note the time of a write about to be added (if it is the first one waiting)."""
        if not self:
            self.since = time.monotonic()
        return self

    def forget(self, written: _Pending) -> None:
        """Drop what ``written`` has stored, unless it was replaced since."""
        for part, done in zip(self.parts(), written.parts(), strict=True):
            for key, value in done.items():
                if part.get(key) is value:
                    del part[key]


@dataclass
class _StudyCache:
    trials: dict[int, FrozenTrial] = field(default_factory=dict)  # by number
    unfinished: set[int] = field(default_factory=set)  # numbers of cached trials that may change
    next_number: int = 0
    # Set once anything reads the study's trials (TPE does on every trial; RandomSampler never
    # does): from then on each ask brings the changes along.
    read: bool = False
    # Set by an ask that has just read every changed trial: the sampler's read that follows at
    # once is served from memory. Any other read syncs first.
    fresh: bool = False
    # A distribution the study holds for each parameter name this process has seen, to check a
    # new parameter against (as RDBStorage checks against the study's first record).
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)

    def put(self, trial: FrozenTrial) -> None:
        """Only for trials read by a sync (or already in the cache): ``next_number`` promises
        that every trial below it is here."""
        self.trials[trial.number] = trial
        self.saw(trial)
        if trial.state.is_finished():
            self.unfinished.discard(trial.number)
        else:
            self.unfinished.add(trial.number)
        self.next_number = max(self.next_number, trial.number + 1)

    def saw(self, trial: FrozenTrial) -> None:
        for name, distribution in trial.distributions.items():
            self.distributions.setdefault(name, distribution)

    def sync_args(self, study_id: int) -> dict[str, Any]:
        """What a sync reads: trials new to this cache, and those it holds unfinished. Finished
        trials never change, so they are read once."""
        unfinished = sorted(self.unfinished)
        return {
            "study_id": study_id,
            "oldest": unfinished[0] if unfinished else self.next_number,
            "from_number": self.next_number,
            "unfinished": unfinished,
        }


class FastStorage(BaseStorage):
    """The fast engines' common part; see the module docstring.

    Args:
        inner: the stock storage (a retrying ``RDBStorage``) that everything else is delegated
            to.
        retrier: retries transient database failures, as for the stock path.
        flush_interval: how soon a suggested parameter reaches the database, in seconds.
    """

    def __init__(self, inner: BaseStorage, retrier: Retrier, flush_interval: float = 0.1) -> None:
        self._inner = inner
        self._retrier = retrier
        self.flush_interval = flush_interval
        self._lock = threading.RLock()
        self._studies: dict[int, _StudyCache] = {}
        self._owned: dict[int, FrozenTrial] = {}  # this process's running trials, by trial id
        self._owned_by: dict[int, tuple[int, str]] = {}  # trial id -> (study id, worker id)
        self._finished: dict[int, FrozenTrial] = {}  # finished trials never change: by trial id
        self._pending: dict[int, _Pending] = {}
        self._flusher: threading.Thread | None = None
        self._closed = threading.Event()
        # Held by a flush and by a tell from their snapshot of the pending writes to the end of
        # their transaction: a flush never finds a trial that this process has just finished
        # (and takes it for one declared lost), nor writes what a tell has already written.
        self._write_lock = threading.Lock()

    # -- what a backend supplies ---------------------------------------------------------------

    def _ask(
        self, study_id: int, worker_id: str, sync: dict[str, Any] | None
    ) -> tuple[tuple[int, FrozenTrial] | None, list[FrozenTrial]]:
        """One transaction: a slot and its trial as ``(claim_id, trial)``, or None when no slot
        is free; and, with ``sync`` (:meth:`_StudyCache.sync_args`), the trials that changed."""
        raise NotImplementedError

    def _finish(
        self,
        trial_id: int,
        worker_id: str,
        pending: _Pending,
        state: TrialState,
        values: Sequence[float] | None,
        now: Any,
    ) -> tuple[bool, bool]:
        """One transaction: ``pending``, then the state and values if the trial is still
        RUNNING. Returns (done, told before: a retry found its first attempt committed)."""
        raise NotImplementedError

    def _write_pending(self, taken: dict[int, _Pending]) -> set[int]:
        """One transaction storing each running trial's writes; returns the ids of those that
        are no longer running (nothing is written to them)."""
        raise NotImplementedError

    def _read_changed(self, sync: dict[str, Any]) -> list[FrozenTrial]:
        """The trials :meth:`_StudyCache.sync_args` names, whole, ordered by number."""
        raise NotImplementedError

    def _read_distribution(self, study_id: int, name: str) -> str | None:
        """The study's first record of parameter ``name``'s distribution (JSON), if any."""
        raise NotImplementedError

    # -- the hot path -------------------------------------------------------------------------

    def ask(self, study_id: int, worker_id: str) -> tuple[int, int] | None:
        """Take a budget slot and a trial (a queued re-run first); return (claim_id, trial_id),
        or None when no slot is free."""
        cache = self._cache(study_id)
        with self._lock:
            sync = cache.sync_args(study_id) if cache.read else None
        # A sampler that reads the study gets what changed in the same transaction; one that does
        # not (RandomSampler) costs the same at any number of workers.
        asked, changed = self._ask(study_id, worker_id, sync)
        if sync is not None:
            self._apply_sync(study_id, changed, fresh=True)
        if asked is None:
            return None
        claim_id, trial = asked
        trial_id = trial._trial_id
        with self._lock:
            cache.saw(trial)
            self._owned[trial_id] = trial
            self._owned_by[trial_id] = (study_id, worker_id)
            self._pending[trial_id] = _Pending()
        self._ensure_flusher()
        return claim_id, trial_id

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        with self._lock:
            owned_by = self._owned_by.get(trial_id)
        if owned_by is not None:
            cache = self._check_distribution(owned_by[0], param_name, distribution)
            with self._lock:
                owned = self._owned.get(trial_id)
                if owned is not None:
                    owned.params[param_name] = distribution.to_external_repr(param_value_internal)
                    owned.distributions[param_name] = distribution
                    cache.distributions.setdefault(param_name, distribution)
                    self._pending[trial_id].touch().params[param_name] = (
                        param_value_internal,
                        distribution_to_json(distribution),
                    )
                    return
        self._write_through()
        self._inner.set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def _check_distribution(
        self, study_id: int, name: str, distribution: BaseDistribution
    ) -> _StudyCache:
        """Refuse a parameter whose kind differs from the study's (Optuna's ValueError).

        Checked against a distribution this process has seen for the name in the study; the
        first time a name comes up, the study's first record of it is read (one query per name
        and process), as RDBStorage reads it on every parameter.
        """
        cache = self._cache(study_id)
        with self._lock:
            known = cache.distributions.get(name)
        if known is None:
            stored = self._read_distribution(study_id, name)
            if stored is not None:
                known = _distribution(stored)
                with self._lock:
                    cache.distributions.setdefault(name, known)
        if known is not None:
            check_distribution_compatibility(known, distribution)
        return cache

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        with self._lock:
            owned = self._owned.get(trial_id)
            if owned is not None:
                owned.intermediate_values[step] = intermediate_value
                value, kind = TrialIntermediateValueModel.intermediate_value_to_stored_repr(
                    intermediate_value
                )
                self._pending[trial_id].touch().intermediate[step] = (value, kind.name)
                return
        self._write_through()
        self._inner.set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._defer_attr(trial_id, "user", key, value):
            self._write_through()
            self._inner.set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._defer_attr(trial_id, "system", key, value):
            self._write_through()
            self._inner.set_trial_system_attr(trial_id, key, value)

    def _defer_attr(self, trial_id: int, kind: str, key: str, value: Any) -> bool:
        with self._lock:
            owned = self._owned.get(trial_id)
            if owned is None:
                return False
            pending = self._pending[trial_id].touch()
            if kind == "user":
                owned.user_attrs[key] = value
                pending.user_attrs[key] = json.dumps(value)
            else:
                owned.system_attrs[key] = value
                pending.system_attrs[key] = json.dumps(value)
            return True

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        with self._lock:
            owned = self._owned.get(trial_id)
        if owned is None or not state.is_finished():
            self._write_through()
            return self._inner.set_trial_state_values(trial_id, state, values)
        with self._write_lock:
            with self._lock:
                if trial_id not in self._owned:  # a flush found it lost meanwhile
                    owned = None
                else:
                    pending = self._pending[trial_id].snapshot()
                    study_id, worker_id = self._owned_by[trial_id]
            if owned is None:
                return self._inner.set_trial_state_values(trial_id, state, values)
            now = utc_now()
            done, told = self._finish(trial_id, worker_id, pending, state, values, now)
            with self._lock:
                self._owned.pop(trial_id, None)
                self._owned_by.pop(trial_id, None)
                self._pending.pop(trial_id, None)
                cache = self._cache(study_id)
                if done:  # what the database now holds, so that reading it back costs nothing
                    owned.state = state
                    owned.values = [float(v) for v in values] if values is not None else None
                    owned.datetime_complete = stored_to_local(now)
                    self._finished[trial_id] = owned
                    if owned.number in cache.trials:
                        cache.put(owned)
                cache.fresh = False
        if not (done or told):
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"Trial#{owned.number} has already finished and can not be updated."
            )
        return True

    # -- background writes --------------------------------------------------------------------

    def _ensure_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(
                target=self._flush_loop, name="tunefleet-flush", daemon=True
            )
            self._flusher.start()

    def _flush_loop(self) -> None:
        # Writes are stored once they have waited half an interval, checked every half interval:
        # none waits longer than the interval, and a trial shorter than half of it costs no
        # transaction besides its ask and its tell (which stores what is pending).
        while not self._closed.wait(self.flush_interval / 2):
            try:
                self.flush(older_than=self.flush_interval / 2)
            except Exception as exc:  # retried at the next interval, and at tell
                log.debug("background flush failed: %s", exc)

    def flush(self, older_than: float = 0.0) -> None:
        """Write every pending parameter, intermediate value and attribute (of the trials with a
        write waiting at least ``older_than`` seconds), in one transaction."""
        with self._write_lock:
            due = time.monotonic() - older_than
            with self._lock:
                taken = {
                    t: pending.snapshot()
                    for t, pending in self._pending.items()
                    if pending and pending.since <= due
                }
            if not taken:
                return
            gone = self._write_pending(taken)
            with self._lock:
                for trial_id, written in taken.items():
                    left = self._pending.get(trial_id)
                    if left is not None:
                        left.forget(written)
                for trial_id in gone:
                    self._drop_lost(trial_id)

    def _drop_lost(self, trial_id: int) -> None:
        """Forget a running trial that another worker finished (declared lost while this one
        was unresponsive; it is re-run elsewhere): its late writes are dropped, and what this
        process writes to it from now on raises UpdateFinishedTrialError, as Optuna does."""
        owned = self._owned.pop(trial_id, None)
        self._pending.pop(trial_id, None)
        self._owned_by.pop(trial_id, None)
        for cache in self._studies.values():
            cache.fresh = False
        if owned is not None:
            log.warning(
                "trial %d was finished by another worker while this one ran it (declared lost): "
                "its late writes are dropped",
                owned.number,
            )

    def _write_through(self) -> None:
        """Before a delegated call, write what is pending and forget that the cache is fresh."""
        self.flush()
        with self._lock:
            for cache in self._studies.values():
                cache.fresh = False

    def close(self) -> None:
        self._closed.set()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        self.flush()

    # -- cached reads ---------------------------------------------------------------------------

    def _cache(self, study_id: int) -> _StudyCache:
        with self._lock:
            return self._studies.setdefault(study_id, _StudyCache())

    def _apply_sync(self, study_id: int, trials: list[FrozenTrial], fresh: bool = False) -> None:
        cache = self._cache(study_id)
        with self._lock:
            for trial in trials:
                cache.put(trial)
                if trial.state.is_finished():
                    self._finished[trial._trial_id] = trial
            cache.fresh = fresh

    def _sync(self, study_id: int) -> _StudyCache:
        cache = self._cache(study_id)
        with self._lock:
            cache.read = True
            if cache.fresh:
                cache.fresh = False
                return cache
            sync = cache.sync_args(study_id)
        self._apply_sync(study_id, self._read_changed(sync))
        return cache

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        if study_id not in self._studies:
            self._inner.get_study_name_from_id(study_id)  # KeyError for an unknown study
        cache = self._sync(study_id)
        with self._lock:
            trials = [self._owned.get(t._trial_id, t) for t in cache.trials.values()]
        if states is not None:
            trials = [t for t in trials if t.state in states]
        trials.sort(key=lambda t: t.number)
        return [_copy_trial(t) for t in trials] if deepcopy else trials

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            known = self._owned.get(trial_id) or self._finished.get(trial_id)
            if known is not None:
                return _copy_trial(known)
        self._write_through()
        return self._inner.get_trial(trial_id)

    # -- everything else is the stock storage's ------------------------------------------------

    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        return self._inner.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        with self._lock:
            self._studies.pop(study_id, None)
        self._inner.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._inner.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._inner.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._inner.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._inner.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._inner.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._inner.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._inner.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._inner.get_all_studies()

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        self._write_through()
        return self._inner.create_new_trial(study_id, template_trial)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._inner.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        self._write_through()
        return self._inner.get_best_trial(study_id)

    def get_n_trials(
        self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None
    ) -> int:
        self._write_through()
        return self._inner.get_n_trials(study_id, state)

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self._inner.check_trial_is_updatable(trial_id, trial_state)


_IMMUTABLE = (str, int, float, bool, type(None))


def _copy_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, _IMMUTABLE) else copy.deepcopy(v) for k, v in attrs.items()}


def _copy_trial(trial: FrozenTrial) -> FrozenTrial:
    """What ``copy.deepcopy`` gives, at a fraction of its cost (three copies are taken per
    trial): parameter values are plain scalars and a distribution's fields are scalars or a tuple
    of them, so one level of copying suffices; attribute values may be mutable and are copied
    deeply."""
    return FrozenTrial(
        number=trial.number,
        state=trial.state,
        value=None,
        values=None if trial.values is None else list(trial.values),
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        params=dict(trial.params),
        # Distributions are shared between the cache's trials: a copy gets its own.
        distributions={name: copy.copy(d) for name, d in trial.distributions.items()},
        user_attrs=_copy_attrs(trial.user_attrs),
        system_attrs=_copy_attrs(trial.system_attrs),
        intermediate_values=dict(trial.intermediate_values),
        trial_id=trial._trial_id,
    )


@functools.lru_cache(maxsize=1024)
def _distribution(distribution_json: str) -> BaseDistribution:
    """Parsed once per process: every trial of a study repeats the same few distributions."""
    return json_to_distribution(distribution_json)


def _frozen_trial(
    trial_id: int,
    number: int,
    state: str,
    start: Any,
    complete: Any,
    params: Sequence[Sequence[Any]] | None,
    values: Sequence[Sequence[Any]] | None,
    intermediate: Sequence[Sequence[Any]] | None,
    user_attrs: Sequence[Sequence[Any]] | None,
    system_attrs: Sequence[Sequence[Any]] | None,
) -> FrozenTrial:
    """A trial from its stored form, as ``RDBStorage`` reads it: times are the columns' naive
    UTC, ``params`` are ``(name, internal value, distribution JSON)``, ``values`` ``(objective,
    value, type)`` in objective order, ``intermediate`` ``(step, value, type)``, attributes
    ``(key, JSON)``."""
    distributions = {name: _distribution(d) for name, _v, d in params or []}
    return FrozenTrial(
        number=number,
        trial_id=trial_id,
        state=TrialState[state],
        value=None,
        values=[
            TrialValueModel.stored_repr_to_value(v, TrialValueModel.TrialValueType[kind])
            for _o, v, kind in values or []
        ]
        or None,
        datetime_start=stored_to_local(start),
        datetime_complete=stored_to_local(complete),
        params={name: distributions[name].to_external_repr(v) for name, v, _d in params or []},
        distributions=distributions,
        user_attrs={k: json.loads(v) for k, v in user_attrs or []},
        system_attrs={k: json.loads(v) for k, v in system_attrs or []},
        intermediate_values={
            step: TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                v, TrialIntermediateValueModel.TrialIntermediateValueType[kind]
            )
            for step, v, kind in intermediate or []
        },
    )
