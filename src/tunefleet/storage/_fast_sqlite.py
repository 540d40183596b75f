"""The fast embedded path: the design of the Postgres fast path (:mod:`tunefleet.storage._fast`)
on SQLite.

Stock ``RDBStorage`` spends ~40 statements through SQLAlchemy's ORM in a dozen transactions on a
trial, each ``BEGIN IMMEDIATE`` taking the file's write lock. Here a worker's trial costs:

1. **ask** — one transaction: take a budget slot, pop a queued re-run or create the trial, link the
   slot to it, tag the worker, and (once the sampler reads the study) read every trial that changed
   since this process last looked;
2. **suggest, k times** — nothing: parameters are kept in memory and written by a background
   thread within ``flush_interval`` (0.1 s), so other workers' samplers see them and a re-run
   after a crash repeats them;
3. **tell** — one transaction: any writes still pending, then the state and values, only if the
   trial is still RUNNING and its budget slot is still this worker's. A slot taken back from a
   worker declared lost is therefore never also completed by it: the slot is checked in the same
   transaction that finishes the trial, as in the one that created it.

Statements go straight to ``sqlite3`` on a connection per thread (no ORM), in ``BEGIN IMMEDIATE``
transactions as everywhere in the embedded store: a writer waits for the lock, never fails with
"database is locked". Reads come from a per-process cache of the study's trials that a sync keeps
current by reading only trials new to this process and those it last saw unfinished.

Everything else is delegated to the stock storage, and the rows written are exactly those
``RDBStorage`` writes: the file stays a plain Optuna study for stock Optuna.
"""

from __future__ import annotations

import datetime
import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Container, Sequence
from typing import Any, TypeVar

import optuna
from optuna.distributions import (
    BaseDistribution,
    check_distribution_compatibility,
    distribution_to_json,
)
from optuna.storages import BaseStorage
from optuna.storages._rdb.models import TrialIntermediateValueModel, TrialValueModel
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from tunefleet import constants
from tunefleet.storage._clock import stored_to_local as _local
from tunefleet.storage._clock import utc_now as _utcnow
from tunefleet.storage._engine import SQLITE_BUSY_TIMEOUT_S
from tunefleet.storage._fast import _copy_trial, _distribution, _Pending, _StudyCache
from tunefleet.storage._retry import Retrier

__all__ = ["FastSqliteStorage"]

log = logging.getLogger("tunefleet.storage")
T = TypeVar("T")

WORKER_ATTR = constants.WORKER_ATTR

_EPOCH_NOW = "((julianday('now') - 2440587.5) * 86400.0)"

# Which trials a sync reads: those new to this process and those it last saw unfinished, in one
# range of the (study_id, number) index. The unfinished numbers come as a JSON array.
_SYNC_WHERE = """study_id = :study_id AND number >= :oldest
  AND (number >= :from_number OR number IN (SELECT value FROM json_each(:unfinished)))"""


def _stamp(moment: datetime.datetime) -> str:
    """A datetime as SQLAlchemy stores it in SQLite, which stock Optuna reads back."""
    return moment.isoformat(sep=" ", timespec="microseconds")


def _parse(stored: str | None) -> datetime.datetime | None:
    return None if stored is None else datetime.datetime.fromisoformat(stored)


class FastSqliteStorage(BaseStorage):
    """An Optuna storage for tunefleet workers on the embedded store; see the module docstring.

    Args:
        inner: the stock storage (a retrying ``RDBStorage``) that everything else is delegated
            to.
        path: the SQLite file.
        retrier: retries transient failures (a lock held past the busy timeout), as for the rest.
        flush_interval: how soon a suggested parameter reaches the database, in seconds.
    """

    def __init__(
        self, inner: BaseStorage, path: str, retrier: Retrier, flush_interval: float = 0.1
    ) -> None:
        self._inner = inner
        self._path = path
        self._retrier = retrier
        self.flush_interval = flush_interval
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.RLock()
        self._studies: dict[int, _StudyCache] = {}
        self._owned: dict[int, FrozenTrial] = {}  # this process's running trials, by trial id
        self._owned_by: dict[int, tuple[int, str]] = {}  # trial id -> (study id, worker id)
        self._finished: dict[int, FrozenTrial] = {}  # finished trials never change: by trial id
        self._pending: dict[int, _Pending] = {}
        # Per study, the distribution each parameter name has (what _CachedStorage keeps): a
        # suggest is checked against it without a query once the name has been seen.
        self._param_distributions: dict[int, dict[str, BaseDistribution]] = {}
        self._flusher: threading.Thread | None = None
        self._closed = threading.Event()
        # Held by a flush and by a tell from taking their snapshot of pending writes to the end of
        # their transaction: a flush never writes what a tell has already written and finished.
        self._write_lock = threading.Lock()

    # -- the database ------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._path,
                timeout=SQLITE_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _transaction(self, body: Callable[[sqlite3.Connection, bool], T], write: bool = True) -> T:
        """Run ``body(conn, retried)`` in one transaction: ``BEGIN IMMEDIATE`` for writes (the
        write lock first, so the transaction waits for it rather than failing half-way), a
        plain ``BEGIN`` for reads (one consistent snapshot, no lock in WAL mode)."""
        retried = False

        def attempt() -> T:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = body(conn, retried)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        def on_retry() -> None:
            nonlocal retried
            retried = True

        return self._retrier.call(attempt, on_retry=on_retry)

    # -- the hot path -------------------------------------------------------------------------

    def ask(self, study_id: int, worker_id: str) -> tuple[int, int] | None:
        """Take a budget slot and a trial (a queued re-run first); return (claim_id, trial_id),
        or None when no slot is free."""
        token = uuid.uuid4().hex
        cache = self._cache(study_id)
        with self._lock:
            sync = cache.sync_args(study_id) if cache.read else None

        def body(
            conn: sqlite3.Connection, retried: bool
        ) -> tuple[tuple[int, FrozenTrial] | None, list[FrozenTrial]]:
            asked = self._ask(conn, study_id, worker_id, token, retried)
            return asked, (self._read_trials(conn, _SYNC_WHERE, sync) if sync else [])

        asked, changed = self._transaction(body)
        if sync is not None:
            self._apply_sync(study_id, changed, fresh=True)
        if asked is None:
            return None
        claim_id, trial = asked
        trial_id = trial._trial_id
        with self._lock:
            self._owned[trial_id] = trial
            self._owned_by[trial_id] = (study_id, worker_id)
            self._pending[trial_id] = _Pending()
        self._ensure_flusher()
        return claim_id, trial_id

    def _ask(
        self, conn: sqlite3.Connection, study_id: int, worker_id: str, token: str, retried: bool
    ) -> tuple[int, FrozenTrial] | None:
        if retried:  # the previous attempt may have committed before it failed
            found = conn.execute(
                "SELECT claim_id, trial_id FROM tunefleet_claims WHERE token = ?", (token,)
            ).fetchone()
            if found is not None:
                return found[0], self._read_trials(conn, "trial_id = :id", {"id": found[1]})[0]
        taken = conn.execute(
            "UPDATE tunefleet_studies SET n_claimed = n_claimed + 1 WHERE study_id = ?"
            " AND (n_trials IS NULL OR n_claimed < n_trials)"
            f" AND (deadline IS NULL OR deadline > {_EPOCH_NOW})",
            (study_id,),
        ).rowcount
        if not taken:
            return None
        now = _utcnow()
        waiting = conn.execute(  # a queued re-run of a lost trial goes first
            "SELECT trial_id FROM trials WHERE study_id = ? AND state = 'WAITING'"
            " ORDER BY number LIMIT 1",
            (study_id,),
        ).fetchone()
        if waiting is not None:
            trial_id: int = waiting[0]
            conn.execute(
                "UPDATE trials SET state = 'RUNNING', datetime_start = ? WHERE trial_id = ?",
                (_stamp(now), trial_id),
            )
        else:
            # Numbered under the write lock, as RDBStorage numbers them: dense and in order.
            number = conn.execute(
                "SELECT coalesce(max(number) + 1, 0) FROM trials WHERE study_id = ?", (study_id,)
            ).fetchone()[0]
            cursor = conn.execute(
                "INSERT INTO trials (number, study_id, state, datetime_start)"
                " VALUES (?, ?, 'RUNNING', ?)",
                (number, study_id, _stamp(now)),
            )
            assert cursor.lastrowid is not None
            trial_id = cursor.lastrowid
        claim_id = conn.execute(
            "INSERT INTO tunefleet_claims"
            " (study_id, worker_id, trial_id, claimed_at, requeue, token)"
            f" VALUES (?, ?, ?, {_EPOCH_NOW}, 0, ?)",
            (study_id, worker_id, trial_id, token),
        ).lastrowid
        assert claim_id is not None
        conn.execute(
            "INSERT INTO trial_system_attributes (trial_id, key, value_json) VALUES (?, ?, ?)"
            " ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json",
            (trial_id, WORKER_ATTR, json.dumps(worker_id)),
        )
        if waiting is not None:  # a re-run has parameters and attributes: read it whole
            return claim_id, self._read_trials(conn, "trial_id = :id", {"id": trial_id})[0]
        return claim_id, FrozenTrial(
            number=number,
            state=TrialState.RUNNING,
            value=None,
            values=None,
            datetime_start=_local(now),
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={WORKER_ATTR: worker_id},
            intermediate_values={},
            trial_id=trial_id,
        )

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        with self._lock:
            owned = self._owned.get(trial_id)
        if owned is None:
            self._write_through()
            self._inner.set_trial_param(trial_id, param_name, param_value_internal, distribution)
            return
        study_id = self._owned_by[trial_id][0]
        self._check_distribution(study_id, param_name, distribution)
        with self._lock:
            owned.params[param_name] = distribution.to_external_repr(param_value_internal)
            owned.distributions[param_name] = distribution
            self._pending[trial_id].params[param_name] = (
                param_value_internal,
                distribution_to_json(distribution),
            )

    def _check_distribution(
        self, study_id: int, param_name: str, distribution: BaseDistribution
    ) -> None:
        """Refuse what RDBStorage refuses: a parameter whose distribution is incompatible with
        the one it has elsewhere in the study (same error). Queried until the name is seen."""
        with self._lock:
            known = self._param_distributions.setdefault(study_id, {}).get(param_name)
        if known is None:

            def read(conn: sqlite3.Connection, _retried: bool) -> Any:
                return conn.execute(
                    "SELECT p.distribution_json FROM trial_params p"
                    " JOIN trials t ON t.trial_id = p.trial_id"
                    " WHERE t.study_id = ? AND p.param_name = ? LIMIT 1",
                    (study_id, param_name),
                ).fetchone()

            row = self._transaction(read, write=False)
            known = distribution if row is None else _distribution(row[0])
        check_distribution_compatibility(known, distribution)
        with self._lock:
            self._param_distributions[study_id].setdefault(param_name, known)

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
                self._pending[trial_id].intermediate[step] = (value, kind.name)
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
            pending = self._pending[trial_id]
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
            done, told = self._finish(trial_id, owned, state, values)
        if not (done or told):
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"Trial#{owned.number} has already finished and can not be updated."
            )
        return True

    def _finish(
        self,
        trial_id: int,
        owned: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> tuple[bool, bool]:
        """Finish an owned trial in one transaction; return (done, told before by a retry)."""
        study_id, worker_id = self._owned_by[trial_id]
        with self._lock:
            pending = self._pending[trial_id].snapshot()
        now = _utcnow()
        stored = [TrialValueModel.value_to_stored_repr(float(v)) for v in values or []]

        def finish(conn: sqlite3.Connection, retried: bool) -> tuple[bool, bool]:
            # Only if the trial is still RUNNING and its slot still this worker's: one taken back
            # from this worker (declared lost while it was unresponsive) must not get values.
            self._write_pending(conn, trial_id, pending)
            done = conn.execute(
                "UPDATE trials SET state = ?, datetime_complete = ?"
                " WHERE trial_id = ? AND state = 'RUNNING' AND EXISTS (SELECT 1 FROM"
                " tunefleet_claims c WHERE c.trial_id = ? AND c.worker_id = ?)",
                (state.name, _stamp(now), trial_id, trial_id, worker_id),
            ).rowcount
            if done:
                conn.executemany(
                    "INSERT INTO trial_values (trial_id, objective, value, value_type)"
                    " VALUES (?, ?, ?, ?)",
                    [(trial_id, i, v, kind.name) for i, (v, kind) in enumerate(stored)],
                )
                return True, True
            # A retry whose first attempt committed finds its own work done; anything else is a
            # conflict (the trial was failed as lost while this worker was unresponsive).
            return False, retried and self._told_already(conn, trial_id, state, values)

        done, told = self._transaction(finish)
        with self._lock:
            self._owned.pop(trial_id, None)
            self._owned_by.pop(trial_id, None)
            self._pending.pop(trial_id, None)
            cache = self._studies[study_id]
            if done:  # what the database now holds, so that reading it back costs nothing
                owned.state = state
                owned.values = [float(v) for v in values] if values is not None else None
                owned.datetime_complete = _local(now)
                self._finished[trial_id] = owned
                if owned.number in cache.trials:
                    cache.put(owned)
            cache.fresh = False
        return done, told

    @staticmethod
    def _told_already(
        conn: sqlite3.Connection,
        trial_id: int,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> bool:
        row = conn.execute("SELECT state FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()
        if row is None or row[0] != state.name:
            return False
        stored = conn.execute(
            "SELECT value, value_type FROM trial_values WHERE trial_id = ? ORDER BY objective",
            (trial_id,),
        ).fetchall()
        read = [
            TrialValueModel.stored_repr_to_value(v, TrialValueModel.TrialValueType[kind])
            for v, kind in stored
        ]
        return values is None or read == [float(v) for v in values]

    @staticmethod
    def _write_pending(conn: sqlite3.Connection, trial_id: int, pending: _Pending) -> bool:
        """Store a running trial's deferred writes; nothing, and False, once it has finished
        (a late write of a trial declared lost is dropped on purpose: its re-run has its own)."""
        if not pending:
            return True
        row = conn.execute("SELECT state FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()
        if row is None or row[0] != TrialState.RUNNING.name:
            log.warning(
                "dropped late writes to trial id %d, which is no longer running (declared lost?)",
                trial_id,
            )
            return False
        conn.executemany(
            "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (trial_id, param_name) DO NOTHING",
            [(trial_id, name, v, d) for name, (v, d) in pending.params.items()],
        )
        conn.executemany(
            "INSERT INTO trial_intermediate_values"
            " (trial_id, step, intermediate_value, intermediate_value_type) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (trial_id, step) DO UPDATE SET"
            " intermediate_value = excluded.intermediate_value,"
            " intermediate_value_type = excluded.intermediate_value_type",
            [(trial_id, step, v, kind) for step, (v, kind) in pending.intermediate.items()],
        )
        for table, attrs in (
            ("trial_user_attributes", pending.user_attrs),
            ("trial_system_attributes", pending.system_attrs),
        ):
            conn.executemany(
                f"INSERT INTO {table} (trial_id, key, value_json) VALUES (?, ?, ?)"
                " ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json",
                [(trial_id, key, value) for key, value in attrs.items()],
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
        while not self._closed.wait(self.flush_interval):
            try:
                self.flush()
            except Exception as exc:  # retried at the next interval, and at tell
                log.debug("background flush failed: %s", exc)

    def flush(self) -> None:
        """Write every pending parameter, intermediate value and attribute now, in one
        transaction."""
        with self._write_lock:
            with self._lock:
                taken = {t: pending.snapshot() for t, pending in self._pending.items() if pending}
            if not taken:
                return

            def write(conn: sqlite3.Connection, _retried: bool) -> None:
                for trial_id, pending in taken.items():
                    self._write_pending(conn, trial_id, pending)

            self._transaction(write)
            with self._lock:
                for trial_id, written in taken.items():
                    left = self._pending.get(trial_id)
                    if left is not None:
                        left.forget(written)

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
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

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
        trials = self._transaction(
            lambda conn, _r: self._read_trials(conn, _SYNC_WHERE, sync), write=False
        )
        self._apply_sync(study_id, trials)
        return cache

    @staticmethod
    def _read_trials(
        conn: sqlite3.Connection, where: str, args: dict[str, Any]
    ) -> list[FrozenTrial]:
        """Whole trials (``where`` on the trials table), ordered by number: one query per table,
        each an index lookup by the trials' ids."""
        args = {**args, "unfinished": json.dumps(args.get("unfinished", []))}
        rows = conn.execute(
            "SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials"
            f" WHERE {where} ORDER BY number",
            args,
        ).fetchall()
        if not rows:
            return []
        ids = f"SELECT trial_id FROM trials WHERE {where}"

        def children(columns: str, table: str, order: str) -> dict[int, list[Any]]:
            found: dict[int, list[Any]] = {}
            for row in conn.execute(
                f"SELECT trial_id, {columns} FROM {table} WHERE trial_id IN ({ids})"
                f" ORDER BY {order}",
                args,
            ):
                found.setdefault(row[0], []).append(row[1:])
            return found

        params = children("param_name, param_value, distribution_json", "trial_params", "param_id")
        values = children("objective, value, value_type", "trial_values", "objective")
        inters = children(
            "step, intermediate_value, intermediate_value_type",
            "trial_intermediate_values",
            "step",
        )
        user = children("key, value_json", "trial_user_attributes", "trial_user_attribute_id")
        system = children("key, value_json", "trial_system_attributes", "trial_system_attribute_id")
        trials = []
        for trial_id, number, state, start, complete in rows:
            distributions = {name: _distribution(d) for name, _v, d in params.get(trial_id, [])}
            trials.append(
                FrozenTrial(
                    number=number,
                    trial_id=trial_id,
                    state=TrialState[state],
                    value=None,
                    values=[
                        TrialValueModel.stored_repr_to_value(
                            v, TrialValueModel.TrialValueType[kind]
                        )
                        for _o, v, kind in values.get(trial_id, [])
                    ]
                    or None,
                    datetime_start=_local(_parse(start)),
                    datetime_complete=_local(_parse(complete)),
                    params={
                        name: distributions[name].to_external_repr(v)
                        for name, v, _d in params.get(trial_id, [])
                    },
                    distributions=distributions,
                    user_attrs={k: json.loads(v) for k, v in user.get(trial_id, [])},
                    system_attrs={k: json.loads(v) for k, v in system.get(trial_id, [])},
                    intermediate_values={
                        step: TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                            v, TrialIntermediateValueModel.TrialIntermediateValueType[kind]
                        )
                        for step, v, kind in inters.get(trial_id, [])
                    },
                )
            )
        return trials

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
            self._param_distributions.pop(study_id, None)
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

    def __getstate__(self) -> dict[str, Any]:
        # What a new process needs; caches, pending writes, connections and threads are this
        # process's.
        self.flush()
        return {
            "inner": self._inner,
            "path": self._path,
            "retrier": self._retrier,
            "flush_interval": self.flush_interval,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        FastSqliteStorage.__init__(
            self, state["inner"], state["path"], state["retrier"], state["flush_interval"]
        )
