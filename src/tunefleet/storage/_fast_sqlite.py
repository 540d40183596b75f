"""The fast engine on the embedded store: :mod:`tunefleet.storage._fast_core`'s design on SQLite.

Each step is one transaction on ``sqlite3`` directly (no ORM), on a connection per thread, in
``BEGIN IMMEDIATE`` transactions as everywhere in the embedded store: a writer waits for the lock,
never fails with "database is locked". The tell also checks that the trial's budget slot is still
this worker's, in the transaction that finishes it, as the ask created it under that slot. The
rows written are exactly those ``RDBStorage`` writes: the file stays a plain Optuna study for stock
Optuna.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from optuna.storages import BaseStorage
from optuna.storages._rdb.models import TrialValueModel
from optuna.trial import FrozenTrial, TrialState

from tunefleet import constants
from tunefleet.storage._clock import stored_to_local, utc_now
from tunefleet.storage._engine import SQLITE_BUSY_TIMEOUT_S
from tunefleet.storage._fast_core import FastStorage, _frozen_trial, _Pending
from tunefleet.storage._retry import Retrier

__all__ = ["FastSqliteStorage"]

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


class FastSqliteStorage(FastStorage):
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
        super().__init__(inner, retrier, flush_interval)
        self._path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []

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

    def _ask(
        self, study_id: int, worker_id: str, sync: dict[str, Any] | None
    ) -> tuple[tuple[int, FrozenTrial] | None, list[FrozenTrial]]:
        token = uuid.uuid4().hex  # a retried ask finds the slot its first attempt took

        def body(
            conn: sqlite3.Connection, retried: bool
        ) -> tuple[tuple[int, FrozenTrial] | None, list[FrozenTrial]]:
            asked = self._take_slot(conn, study_id, worker_id, token, retried)
            return asked, (_read_trials(conn, _SYNC_WHERE, sync) if sync else [])

        return self._transaction(body)

    def _take_slot(
        self, conn: sqlite3.Connection, study_id: int, worker_id: str, token: str, retried: bool
    ) -> tuple[int, FrozenTrial] | None:
        if retried:  # the previous attempt may have committed before it failed
            found = conn.execute(
                "SELECT claim_id, trial_id FROM tunefleet_claims WHERE token = ?", (token,)
            ).fetchone()
            if found is not None:
                return found[0], _read_trials(conn, "trial_id = :id", {"id": found[1]})[0]
        taken = conn.execute(
            "UPDATE tunefleet_studies SET n_claimed = n_claimed + 1 WHERE study_id = ?"
            " AND (n_trials IS NULL OR n_claimed < n_trials)"
            f" AND (deadline IS NULL OR deadline > {_EPOCH_NOW})",
            (study_id,),
        ).rowcount
        if not taken:
            return None
        now = utc_now()
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
            return claim_id, _read_trials(conn, "trial_id = :id", {"id": trial_id})[0]
        return claim_id, FrozenTrial(
            number=number,
            state=TrialState.RUNNING,
            value=None,
            values=None,
            datetime_start=stored_to_local(now),
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={WORKER_ATTR: worker_id},
            intermediate_values={},
            trial_id=trial_id,
        )

    def _finish(
        self,
        trial_id: int,
        worker_id: str,
        pending: _Pending,
        state: TrialState,
        values: Sequence[float] | None,
        now: Any,
    ) -> tuple[bool, bool]:
        stored = [TrialValueModel.value_to_stored_repr(float(v)) for v in values or []]

        def finish(conn: sqlite3.Connection, retried: bool) -> tuple[bool, bool]:
            # Only if the trial is still RUNNING and its slot still this worker's: one taken back
            # from this worker (declared lost while it was unresponsive) must not get values.
            _write_trial(conn, trial_id, pending)
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
                return True, False
            # A retry whose first attempt committed finds its own work done; anything else is a
            # conflict (the trial was failed as lost while this worker was unresponsive).
            return False, retried and _told_already(conn, trial_id, state, values)

        return self._transaction(finish)

    def _write_pending(self, taken: dict[int, _Pending]) -> set[int]:
        def write(conn: sqlite3.Connection, _retried: bool) -> set[int]:
            return {t for t, pending in taken.items() if not _write_trial(conn, t, pending)}

        return self._transaction(write)

    def _read_changed(self, sync: dict[str, Any]) -> list[FrozenTrial]:
        return self._transaction(lambda conn, _r: _read_trials(conn, _SYNC_WHERE, sync), False)

    def _read_distribution(self, study_id: int, name: str) -> str | None:
        def read(conn: sqlite3.Connection, _retried: bool) -> Any:
            return conn.execute(
                "SELECT p.distribution_json FROM trial_params p"
                " JOIN trials t ON t.trial_id = p.trial_id"
                " WHERE t.study_id = ? AND p.param_name = ? LIMIT 1",
                (study_id, name),
            ).fetchone()

        row = self._transaction(read, write=False)
        return None if row is None else str(row[0])

    def close(self) -> None:
        super().close()
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

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


def _told_already(
    conn: sqlite3.Connection, trial_id: int, state: TrialState, values: Sequence[float] | None
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


def _write_trial(conn: sqlite3.Connection, trial_id: int, pending: _Pending) -> bool:
    """Store a running trial's deferred writes; nothing, and False, once it has finished (a late
    write of a trial declared lost is dropped on purpose: its re-run has its own)."""
    if not pending:
        return True
    row = conn.execute("SELECT state FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()
    if row is None or row[0] != TrialState.RUNNING.name:
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


def _read_trials(conn: sqlite3.Connection, where: str, args: dict[str, Any]) -> list[FrozenTrial]:
    """Whole trials (``where`` on the trials table), ordered by number: one query per table, each
    an index lookup by the trials' ids."""
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
            f"SELECT trial_id, {columns} FROM {table} WHERE trial_id IN ({ids}) ORDER BY {order}",
            args,
        ):
            found.setdefault(row[0], []).append(row[1:])
        return found

    params = children("param_name, param_value, distribution_json", "trial_params", "param_id")
    values = children("objective, value, value_type", "trial_values", "objective")
    inters = children(
        "step, intermediate_value, intermediate_value_type", "trial_intermediate_values", "step"
    )
    user = children("key, value_json", "trial_user_attributes", "trial_user_attribute_id")
    system = children("key, value_json", "trial_system_attributes", "trial_system_attribute_id")
    return [
        _frozen_trial(
            trial_id,
            number,
            state,
            _parse(start),
            _parse(complete),
            params.get(trial_id),
            values.get(trial_id),
            inters.get(trial_id),
            user.get(trial_id),
            system.get(trial_id),
        )
        for trial_id, number, state, start, complete in rows
    ]
