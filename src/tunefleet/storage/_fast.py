"""The fast engine on PostgreSQL: two round trips per trial on a worker's critical path.

The design is :mod:`tunefleet.storage._fast_core`'s: an ask, deferred writes, a tell. Here each of
them is one pipelined transaction (psycopg pipeline mode: every statement sent at once, one wait),
and the statements are calls of PL/pgSQL functions (:mod:`tunefleet.storage._fast_sql`), whose
plans the server caches, instead of SQL text that it would plan anew each time. Trial numbers are
assigned under a lock on the study's row (as ``RDBStorage`` does), so they appear in order, without
gaps.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from optuna.storages import BaseStorage
from optuna.storages._rdb.models import TrialValueModel
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Connection, Engine

from tunefleet import constants
from tunefleet.storage import _fast_sql as sql
from tunefleet.storage._clock import utc_now
from tunefleet.storage._fast_core import FastStorage, _frozen_trial, _Pending
from tunefleet.storage._retry import Retrier, holds_outcome

__all__ = ["FastPostgresStorage"]

WORKER_ATTR = constants.WORKER_ATTR


def _hand_back(sa_conn: Connection, conn: psycopg.Connection[Any]) -> None:
    """Return a pipeline's connection to the pool as the pool lent it: out of any transaction a
    failed pipeline left open, and out of autocommit; or discard it if that fails."""
    if conn.closed:
        return
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute(b"ROLLBACK")
        conn.autocommit = False
    except psycopg.Error:
        sa_conn.invalidate()


def _json(value: Any) -> str:
    """Strict JSON for the functions: an infinity or NaN has no JSON spelling, and none can
    reach here (Optuna's stored forms turn them into NULL and a type)."""
    return json.dumps(value, allow_nan=False)


def _writes(pending: _Pending) -> str:
    """A trial's deferred writes as the functions take them (one JSON document)."""
    return _json(
        {
            "params": [[name, *value] for name, value in pending.params.items()],
            "intermediate": [[step, *value] for step, value in pending.intermediate.items()],
            "user": list(pending.user_attrs.items()),
            "system": list(pending.system_attrs.items()),
        }
    )


def _trial(row: Sequence[Any]) -> FrozenTrial:
    return _frozen_trial(*row)


class FastPostgresStorage(FastStorage):
    """An Optuna storage for tunefleet workers on PostgreSQL; see the module docstring.

    Args:
        inner: the stock storage (a retrying ``RDBStorage``) that everything else is delegated to.
        engine: the SQLAlchemy engine of ``inner``, whose psycopg connections run the pipelines.
        retrier: retries transient database failures, as for the stock path.
        flush_interval: how soon a suggested parameter reaches the database, in seconds.
    """

    def __init__(
        self,
        inner: BaseStorage,
        engine: Engine,
        retrier: Retrier,
        flush_interval: float = 0.1,
    ) -> None:
        super().__init__(inner, retrier, flush_interval)
        self._engine = engine

    def _pipeline(
        self,
        statements: Sequence[tuple[str, dict[str, Any]]],
        on_retry: Callable[[], None] | None = None,
    ) -> list[list[Any]]:
        """Run statements in one transaction and one network round trip; return their rows.
        ``on_retry`` is called before each new attempt after a transient failure."""

        def attempt() -> list[list[Any]]:
            with self._engine.connect() as sa_conn:
                conn = sa_conn.connection.driver_connection
                assert conn is not None
                # Everything up to a Sync message is one transaction for the server, and the
                # pipeline sends a single Sync when the block ends: the statements commit or fail
                # together, in one network round trip, with no BEGIN or COMMIT to send (which
                # psycopg's transaction() would add as two more round trips).
                conn.autocommit = True
                try:
                    with conn.pipeline():
                        cursors = [conn.execute(text.encode(), args) for text, args in statements]
                    return [cur.fetchall() if cur.description else [] for cur in cursors]
                finally:
                    _hand_back(sa_conn, conn)

        return self._retrier.call(attempt, on_retry=on_retry)

    def _ask(
        self, study_id: int, worker_id: str, sync: dict[str, Any] | None
    ) -> tuple[tuple[int, FrozenTrial] | None, list[FrozenTrial]]:
        params = {
            "study_id": study_id,
            "worker_id": worker_id,
            "token": uuid.uuid4().hex,  # a retried ask finds the slot its first attempt took
            "now": utc_now(),
            "worker_key": WORKER_ATTR,
            "worker_json": json.dumps(worker_id),
        }
        statements = [(sql.ASK, params)]
        if sync is not None:
            statements.append((sql.SYNC, sync))
        rows = self._pipeline(statements)
        changed = [_trial(row) for row in rows[1]] if sync is not None else []
        if not rows[0]:
            return None, changed
        claim_id, *trial_row = rows[0][0]
        return (claim_id, _trial(trial_row)), changed

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
        finish = {
            "trial_id": trial_id,
            "state": state.name,
            "now": now,
            "values": _json([[i, v, kind.name] for i, (v, kind) in enumerate(stored)]),
            "writes": _writes(pending),
        }
        retried: list[bool] = []
        rows = self._pipeline([(sql.FINISH, finish)], on_retry=lambda: retried.append(True))
        done = bool(rows[0][0][0])
        if done or not retried:
            return done, False
        # Only a retry can find its own work done (the first attempt committed, its answer was
        # lost); a first attempt that finds the trial finished lost it to another worker.
        return False, holds_outcome(self._inner.get_trial(trial_id), state, values)

    def _write_pending(self, taken: dict[int, _Pending]) -> set[int]:
        rows = self._pipeline(
            [(sql.WRITE, {"trial_id": t, "writes": _writes(p)}) for t, p in taken.items()]
        )
        return {trial_id for trial_id, row in zip(taken, rows, strict=True) if not row[0][0]}

    def _read_changed(self, sync: dict[str, Any]) -> list[FrozenTrial]:
        return [_trial(row) for row in self._pipeline([(sql.SYNC, sync)])[0]]

    def _read_distribution(self, study_id: int, name: str) -> str | None:
        rows = self._pipeline([(sql.DISTRIBUTION, {"study_id": study_id, "name": name})])
        return rows[0][0][0] if rows[0] else None

    def __getstate__(self) -> dict[str, Any]:
        # What a new process needs; caches, pending writes and threads are this process's.
        self.flush()
        return {
            "inner": self._inner,
            "retrier": self._retrier,
            "flush_interval": self.flush_interval,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        inner = state["inner"]
        engine = getattr(inner, "inner", inner).engine  # the unpickled RDBStorage's new engine
        FastPostgresStorage.__init__(self, inner, engine, state["retrier"], state["flush_interval"])
