"""tunefleet's own bookkeeping, in tables of its own beside Optuna's.

Optuna's tables stay exactly as stock Optuna writes them, so stock Optuna and optuna-dashboard keep
working on the same database. What Optuna has no place for lives here:

``tunefleet_studies``
    one row per study: the global trial budget (``n_trials``), the deadline, and ``n_claimed``, the
    number of budget slots taken.
``tunefleet_claims``
    one row per slot taken: which worker took it and, once asked, which trial it became.
``tunefleet_workers``
    the worker registry: who joined, from where, and when it last said so.

The exact budget rests on one rule: a worker may ask Optuna for a trial only after it has claimed a
slot, and a claim is a single conditional ``UPDATE ... SET n_claimed = n_claimed + 1 WHERE
n_claimed < n_trials``, which the database serialises. A trial whose claim is released (its worker
was interrupted or died) gives its slot back, so a re-run does not consume a second one. The study
is done when every slot is claimed and no claimed trial is still running or waiting, or when its
deadline has passed. Times are the database's clock, so workers with skewed clocks agree.

Workers beat a heartbeat into their registry row. A claim whose worker stopped beating for longer
than the grace period (or finished without closing it) is *stale*: another worker takes it over
(:meth:`Ledger.take_stale_claims`), fails its trial as lost, queues a re-run with the same
parameters and gives the slot back, so the re-run does not consume a second one.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from optuna.storages import RDBStorage
from optuna.storages._rdb import models as optuna_models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import FunctionElement

from tunefleet import constants
from tunefleet.storage._clock import utc_now

__all__ = ["Budget", "ClaimCheckedRDBStorage", "ClaimTakenBack", "Ledger", "StaleClaim", "metadata"]

log = logging.getLogger("tunefleet.storage")
P = ParamSpec("P")
R = TypeVar("R")


def _retried(method: Callable[P, R]) -> Callable[P, R]:
    """Run a ledger method through the ledger's retrier (transient failures are retried)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        self = args[0]
        assert isinstance(self, Ledger)
        if self._retrier is None:
            return method(*args, **kwargs)
        result: R = self._retrier.call(lambda: method(*args, **kwargs))
        return result

    return wrapper


_studies = optuna_models.StudyModel.__table__
_trials = optuna_models.TrialModel.__table__
_trial_system_attrs = optuna_models.TrialSystemAttributeModel.__table__

#: Trial system attribute on a re-run: the number of the trial it repeats.
RETRY_OF_ATTR = constants.RETRY_OF_ATTR
#: Trial system attribute set when a trial is created: the claim (budget slot) it belongs to.
CLAIM_ATTR = constants.CLAIM_ATTR
#: How long a PostgreSQL transaction that holds locks other workers wait for (the study's row, a
#: trial's row) may wait on its client before the server ends the session and so releases them.
#: A stopped client (SIGSTOP, a frozen VM) would otherwise block every other worker until it
#: resumes: its kernel still answers keepalives. A live worker never idles this long inside one
#: of these transactions; should it, the call fails like a dropped connection and is retried.
#: Workers use at most half their grace period (``open_storage(lock_idle_timeout=...)``).
LOCK_IDLE_TIMEOUT_S = 10.0


def _bound_idle_time_sql(seconds: float) -> str:
    # SET LOCAL lasts until the transaction ends: nothing is left on a server connection that a
    # transaction-mode pooler hands to another client next.
    return f"SET LOCAL idle_in_transaction_session_timeout = {max(1, round(seconds * 1000))}"


metadata = MetaData()

fleet_studies = Table(
    "tunefleet_studies",
    metadata,
    Column(
        "study_id", Integer, ForeignKey(_studies.c.study_id, ondelete="CASCADE"), primary_key=True
    ),
    Column("n_trials", Integer, nullable=True),
    Column("deadline", Float, nullable=True),
    Column("n_claimed", Integer, nullable=False, default=0),
    Column("n_workers", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
)

fleet_claims = Table(
    "tunefleet_claims",
    metadata,
    Column("claim_id", Integer, primary_key=True, autoincrement=True),
    Column(
        "study_id",
        Integer,
        ForeignKey(fleet_studies.c.study_id, ondelete="CASCADE"),
        nullable=False,
    ),
    Column("worker_id", String(64), nullable=False),
    Column(
        "trial_id",
        Integer,
        ForeignKey(_trials.c.trial_id, ondelete="CASCADE"),
        nullable=True,
        unique=True,
    ),
    Column("claimed_at", Float, nullable=False),
    # Set while the claim's trial is being failed and re-queued: the slot stays open (the study
    # is not done) until the re-run is queued and the slot is given back.
    Column("requeue", Integer, nullable=False, default=0),
    # Chosen by the worker, so that a claim retried after a lost commit is found, not taken twice.
    Column("token", String(32), nullable=False, unique=True),
    Index("ix_tunefleet_claims_study_id", "study_id"),
    # Claim ids are never reused (SQLite would otherwise hand out a released id again): a trial
    # names its claim (tunefleet:claim), and two trials naming one claim would be confused.
    sqlite_autoincrement=True,
)

fleet_workers = Table(
    "tunefleet_workers",
    metadata,
    Column("worker_id", String(64), primary_key=True),
    Column(
        "study_id",
        Integer,
        ForeignKey(fleet_studies.c.study_id, ondelete="CASCADE"),
        nullable=False,
    ),
    Column("ordinal", Integer, nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("exit_reason", String(64), nullable=True),
    Index("ix_tunefleet_workers_study_id", "study_id"),
)


class epoch_now(FunctionElement[float]):
    """The database server's clock as seconds since the epoch."""

    type = Float()
    inherit_cache = True


@compiles(epoch_now, "postgresql")
def _epoch_now_pg(_element: epoch_now, _compiler: SQLCompiler, **_kw: Any) -> str:
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


@compiles(epoch_now, "sqlite")
def _epoch_now_sqlite(_element: epoch_now, _compiler: SQLCompiler, **_kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


@dataclass(frozen=True)
class Budget:
    """Where a study stands against its budget and deadline, read in one transaction."""

    n_trials: int | None
    n_claimed: int
    n_open: int
    deadline: float | None
    now: float

    @property
    def n_counted(self) -> int:
        """Trials that finished by the objective's hand and count against the budget."""
        return self.n_claimed - self.n_open

    @property
    def deadline_passed(self) -> bool:
        return self.deadline is not None and self.now >= self.deadline

    @property
    def budget_spent(self) -> bool:
        return self.n_trials is not None and self.n_counted >= self.n_trials

    @property
    def done(self) -> bool:
        return self.deadline_passed or self.budget_spent

    @property
    def seconds_left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - self.now)


@dataclass(frozen=True)
class StaleClaim:
    """A claim taken over from a worker that stopped: its slot and the trial it held, if any."""

    claim_id: int
    trial_id: int | None
    worker_id: str


def _open_claim_condition() -> Any:
    """A claim holds its slot open while its trial has not finished by the objective's hand."""
    return or_(
        fleet_claims.c.trial_id.is_(None),
        fleet_claims.c.requeue == 1,
        _trials.c.state.in_([TrialState.RUNNING, TrialState.WAITING]),
    )


class ClaimTakenBack(Exception):
    """The slot a worker was about to create its trial in was taken back (the worker had been
    declared lost): no trial was created, and the worker must claim a new slot."""


class ClaimCheckedRDBStorage(RDBStorage):
    """Optuna's ``RDBStorage``, creating a trial that names its claim (``tunefleet:claim``) only
    while that claim is still its worker's, and linking the two, in the same transaction.

    Without this, a worker paused between taking a slot and creating its trial could be declared
    lost, its slot given back, and then create and complete a trial that no slot accounts for:
    one trial more than the budget. The finish is already checked in one transaction by Optuna
    (only a RUNNING trial can be told), and a taken-back trial is failed before its slot is.

    Creating a trial is safe to repeat after a commit whose answer was lost (Optuna retries it,
    and so does :class:`~tunefleet.storage._retry.RetryingStorage`): a claimed trial is found
    through its claim's link, a re-run (``tunefleet:retry_of``) by the trial it repeats.
    """

    def __init__(
        self, *args: Any, lock_idle_timeout: float = LOCK_IDLE_TIMEOUT_S, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.engine.dialect.name != "postgresql":
            return
        bound = _bound_idle_time_sql(lock_idle_timeout)

        # At the start of each attempt: Optuna retries a failed transaction itself.
        @event.listens_for(self.engine, "begin")
        def _on_begin(conn: Connection) -> None:
            if getattr(_local, "holding_locks", False):
                conn.exec_driver_sql(bound)

    def _create_new_trial(
        self, study_id: int, template_trial: FrozenTrial | None = None
    ) -> FrozenTrial:
        _local.found_trial_id = None
        # Optuna locks the study's row for the whole transaction: every worker's next trial
        # waits for it.
        with _holding_locks():
            frozen = super()._create_new_trial(study_id, template_trial)
        if _local.found_trial_id == frozen._trial_id:
            # Made by an earlier attempt: the template's copy would show the state the trial was
            # made in, and another worker may have started or finished it since. Optuna's cache
            # keeps what this returns.
            return self.get_trial(frozen._trial_id)
        return frozen

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        # Optuna locks the trial's row: a stopped worker telling its trial would hold up the
        # worker that fails it as lost.
        with _holding_locks():
            return super().set_trial_state_values(trial_id, state, values)

    def _get_prepared_new_trial(
        self, study_id: int, template_trial: FrozenTrial | None, session: Session
    ) -> optuna_models.TrialModel:
        attrs = template_trial.system_attrs if template_trial is not None else {}
        retry_of = attrs.get(RETRY_OF_ATTR)
        if retry_of is not None:
            # A re-run queued by an attempt whose commit went through but whose answer was lost
            # (Optuna and the retrier both try again) must not be queued twice: the copy would
            # take a slot meant for a new trial, or be left waiting once the study is done.
            # Recovery queues at most one re-run of a trial, and the study's row is locked
            # here, so a re-run found is that one.
            found = session.execute(
                select(_trial_system_attrs.c.trial_id)
                .join(_trials, _trials.c.trial_id == _trial_system_attrs.c.trial_id)
                .where(
                    _trials.c.study_id == study_id,
                    _trial_system_attrs.c.key == RETRY_OF_ATTR,
                    _trial_system_attrs.c.value_json == json.dumps(retry_of),
                )
                .limit(1)
            ).scalar_one_or_none()
            if found is not None:
                return _made_before(session, found)
        claim_id, worker_id = attrs.get(CLAIM_ATTR), attrs.get(constants.WORKER_ATTR)
        if claim_id is None or worker_id is None:
            return super()._get_prepared_new_trial(study_id, template_trial, session)
        row = session.execute(
            select(fleet_claims.c.trial_id)
            .where(
                fleet_claims.c.claim_id == claim_id,
                fleet_claims.c.worker_id == worker_id,
                fleet_claims.c.requeue == 0,
            )
            .with_for_update()
        ).first()
        if row is None:
            raise ClaimTakenBack(f"claim {claim_id} of worker {worker_id} was taken back")
        if row[0] is not None:  # a retry after a commit whose answer was lost
            return _made_before(session, row[0])
        trial = super()._get_prepared_new_trial(study_id, template_trial, session)
        session.execute(
            update(fleet_claims)
            .where(fleet_claims.c.claim_id == claim_id)
            .values(trial_id=trial.trial_id)
        )
        return trial


# Per thread: the trial an attempt at creating one found made by an earlier attempt, if any, and
# whether the transactions begun now hold locks other workers wait for.
_local = threading.local()


@contextmanager
def _holding_locks() -> Iterator[None]:
    before = getattr(_local, "holding_locks", False)
    _local.holding_locks = True
    try:
        yield
    finally:
        _local.holding_locks = before


def _made_before(session: Session, trial_id: int) -> optuna_models.TrialModel:
    trial = session.get(optuna_models.TrialModel, trial_id)
    assert trial is not None
    _local.found_trial_id = trial_id
    return trial


class Ledger:
    """Reads and writes the tunefleet tables. Every method is one short transaction, retried on
    transient database failures when a retrier is given."""

    def __init__(
        self, engine: Engine, retrier: Any = None, lock_idle_timeout: float = LOCK_IDLE_TIMEOUT_S
    ) -> None:
        self._engine = engine
        self._retrier = retrier
        self._bound_idle_time = (
            _bound_idle_time_sql(lock_idle_timeout) if engine.dialect.name == "postgresql" else None
        )

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction that writes. Each locks rows other workers wait for (the study's row,
        claims, worker rows), so a stopped worker must not keep them: see
        :data:`LOCK_IDLE_TIMEOUT_S`."""
        with self._engine.begin() as conn:
            if self._bound_idle_time is not None:
                conn.exec_driver_sql(self._bound_idle_time)
            yield conn

    def _insert(self, table: Table) -> Any:
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table)

    @_retried
    def ensure_study(self, study_id: int, n_trials: int | None, timeout: float | None) -> Budget:
        """Create the study's row if missing; a given ``n_trials`` becomes the study's budget.

        The deadline is fixed when the row is created (``now + timeout``): a restarted worker with
        the same ``--timeout`` must not move it. ``n_trials`` is absolute, so setting it again
        is idempotent, and a larger value extends a finished study.
        """
        with self._write() as conn:
            row = {
                "study_id": study_id,
                "n_trials": n_trials,
                "n_claimed": 0,
                "n_workers": 0,
                "created_at": epoch_now(),
                "deadline": None if timeout is None else epoch_now() + timeout,
            }
            conn.execute(
                self._insert(fleet_studies)
                .values(**row)
                .on_conflict_do_nothing(index_elements=["study_id"])
            )
            if n_trials is not None:
                before = conn.execute(
                    select(fleet_studies.c.n_trials).where(fleet_studies.c.study_id == study_id)
                ).scalar_one()
                if before is not None and before != n_trials:
                    log.warning(
                        "the study's budget changes from %d to %d trials: every worker of it "
                        "now stops at %d",
                        before,
                        n_trials,
                        n_trials,
                    )
                conn.execute(
                    update(fleet_studies)
                    .where(
                        fleet_studies.c.study_id == study_id,
                        fleet_studies.c.n_trials.is_distinct_from(n_trials),
                    )
                    .values(n_trials=n_trials)
                )
            return self._budget(conn, study_id)

    @_retried
    def budget(self, study_id: int) -> Budget:
        with self._engine.begin() as conn:
            return self._budget(conn, study_id)

    def _budget(self, conn: Connection, study_id: int) -> Budget:
        row = conn.execute(
            select(
                fleet_studies.c.n_trials,
                fleet_studies.c.n_claimed,
                fleet_studies.c.deadline,
                epoch_now(),
            ).where(fleet_studies.c.study_id == study_id)
        ).one()
        n_open = conn.execute(
            select(func.count())
            .select_from(
                fleet_claims.outerjoin(_trials, _trials.c.trial_id == fleet_claims.c.trial_id)
            )
            .where(fleet_claims.c.study_id == study_id, _open_claim_condition())
        ).scalar_one()
        return Budget(n_trials=row[0], n_claimed=row[1], n_open=n_open, deadline=row[2], now=row[3])

    def claim(self, study_id: int, worker_id: str) -> tuple[int, int | None] | None:
        """Take one budget slot; None when no slot is free.

        In the same transaction, the oldest queued (``WAITING``) trial of the study, if any, is
        started (``RUNNING``) and linked to the slot, so a queued re-run cannot be orphaned by a
        crash between taking it and recording who has it. Returns ``(claim_id, trial_id)``, with
        ``trial_id`` None when nothing was queued and the caller must create the trial.
        """
        token = uuid.uuid4().hex
        retried = False

        def attempt() -> tuple[int, int | None] | None:
            with self._write() as conn:
                if retried:
                    # The previous attempt may have committed before its connection dropped.
                    found = conn.execute(
                        select(fleet_claims.c.claim_id, fleet_claims.c.trial_id).where(
                            fleet_claims.c.token == token
                        )
                    ).first()
                    if found is not None:
                        return int(found[0]), found[1]
                taken = conn.execute(
                    update(fleet_studies)
                    .where(
                        fleet_studies.c.study_id == study_id,
                        or_(
                            fleet_studies.c.n_trials.is_(None),
                            fleet_studies.c.n_claimed < fleet_studies.c.n_trials,
                        ),
                        or_(
                            fleet_studies.c.deadline.is_(None),
                            fleet_studies.c.deadline > epoch_now(),
                        ),
                    )
                    .values(n_claimed=fleet_studies.c.n_claimed + 1)
                    .returning(fleet_studies.c.n_claimed)
                ).first()
                if taken is None:
                    return None
                waiting = (
                    select(_trials.c.trial_id)
                    .where(_trials.c.study_id == study_id, _trials.c.state == TrialState.WAITING)
                    .order_by(_trials.c.number)
                    .limit(1)
                )
                if self._engine.dialect.name == "postgresql":
                    waiting = waiting.with_for_update(skip_locked=True)
                trial_id = conn.execute(
                    update(_trials)
                    .where(_trials.c.trial_id == waiting.scalar_subquery())
                    .values(state=TrialState.RUNNING, datetime_start=utc_now())
                    .returning(_trials.c.trial_id)
                ).scalar_one_or_none()
                claim_id: int = conn.execute(
                    insert(fleet_claims)
                    .values(
                        study_id=study_id,
                        worker_id=worker_id,
                        trial_id=trial_id,
                        claimed_at=epoch_now(),
                        requeue=0,
                        token=token,
                    )
                    .returning(fleet_claims.c.claim_id)
                ).scalar_one()
                return claim_id, trial_id

        def on_retry() -> None:
            nonlocal retried
            retried = True

        if self._retrier is None:
            return attempt()
        result: tuple[int, int | None] | None = self._retrier.call(attempt, on_retry=on_retry)
        return result

    @_retried
    def attach(self, claim_id: int, trial_id: int) -> None:
        """Record which trial a claimed slot became."""
        with self._write() as conn:
            conn.execute(
                update(fleet_claims)
                .where(fleet_claims.c.claim_id == claim_id)
                .values(trial_id=trial_id)
            )

    @_retried
    def mark_requeue(self, claim_id: int) -> None:
        """Keep the slot open while its trial is failed and re-queued (see :meth:`release`)."""
        with self._write() as conn:
            conn.execute(
                update(fleet_claims).where(fleet_claims.c.claim_id == claim_id).values(requeue=1)
            )

    @_retried
    def keep_claim(self, claim_id: int) -> None:
        """Undo :meth:`mark_requeue`: the trial finished after all and keeps its slot."""
        with self._write() as conn:
            conn.execute(
                update(fleet_claims).where(fleet_claims.c.claim_id == claim_id).values(requeue=0)
            )

    @_retried
    def release(self, claim_id: int) -> None:
        """Give a slot back: its trial did not finish by the objective's hand and must not count."""
        with self._write() as conn:
            study_id = conn.execute(
                fleet_claims.delete()
                .where(fleet_claims.c.claim_id == claim_id)
                .returning(fleet_claims.c.study_id)
            ).scalar_one_or_none()
            if study_id is not None:
                conn.execute(
                    update(fleet_studies)
                    .where(fleet_studies.c.study_id == study_id)
                    .values(n_claimed=fleet_studies.c.n_claimed - 1)
                )

    @_retried
    def register_worker(self, study_id: int, worker_id: str, host: str, pid: int) -> int:
        """Add a worker to the registry; return its ordinal in the study (0, 1, 2, ...)."""
        with self._write() as conn:
            existing = conn.execute(
                select(fleet_workers.c.ordinal).where(fleet_workers.c.worker_id == worker_id)
            ).scalar_one_or_none()
            if existing is not None:  # a retry after a lost commit
                return int(existing)
            ordinal: int = (
                conn.execute(
                    update(fleet_studies)
                    .where(fleet_studies.c.study_id == study_id)
                    .values(n_workers=fleet_studies.c.n_workers + 1)
                    .returning(fleet_studies.c.n_workers)
                ).scalar_one()
                - 1
            )
            conn.execute(
                insert(fleet_workers).values(
                    worker_id=worker_id,
                    study_id=study_id,
                    ordinal=ordinal,
                    host=host,
                    pid=pid,
                    started_at=epoch_now(),
                    heartbeat_at=epoch_now(),
                )
            )
            return ordinal

    def heartbeat(self, worker_id: str) -> bool:
        """Record that the worker is alive. Returns False if it had been declared lost (it is
        revived: a live worker in a long pause must be able to carry on). Not retried: a missed
        beat is simply tried again at the next interval."""
        with self._write() as conn:
            was_lost = conn.execute(
                update(fleet_workers)
                .where(fleet_workers.c.worker_id == worker_id)
                .values(heartbeat_at=epoch_now(), finished_at=None, exit_reason=None)
                .returning(fleet_workers.c.exit_reason)
            ).scalar_one_or_none()
        return was_lost != "lost"

    @_retried
    def worker_finished(self, worker_id: str, reason: str) -> None:
        with self._write() as conn:
            conn.execute(
                update(fleet_workers)
                .where(fleet_workers.c.worker_id == worker_id)
                .values(finished_at=epoch_now(), heartbeat_at=epoch_now(), exit_reason=reason[:64])
            )

    @_retried
    def take_stale_claims(self, study_id: int, worker_id: str, grace: float) -> list[StaleClaim]:
        """Take over the open claims of workers silent for more than ``grace`` seconds.

        The claims become ``worker_id``'s, with ``requeue`` set, in one transaction: concurrent
        callers each get different claims (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite
        serialises writers), and should this worker die half-way, its own claims go stale in
        turn and are taken over again.
        """
        with self._write() as conn:
            now = conn.execute(select(epoch_now())).scalar_one()
            conn.execute(
                update(fleet_workers)
                .where(
                    fleet_workers.c.study_id == study_id,
                    fleet_workers.c.finished_at.is_(None),
                    fleet_workers.c.heartbeat_at < now - grace,
                )
                .values(finished_at=now, exit_reason="lost")
            )
            query = (
                select(fleet_claims.c.claim_id, fleet_claims.c.trial_id, fleet_claims.c.worker_id)
                .select_from(
                    fleet_claims.join(
                        fleet_workers, fleet_workers.c.worker_id == fleet_claims.c.worker_id
                    ).outerjoin(_trials, _trials.c.trial_id == fleet_claims.c.trial_id)
                )
                .where(
                    fleet_claims.c.study_id == study_id,
                    fleet_claims.c.worker_id != worker_id,
                    or_(
                        fleet_workers.c.finished_at.is_not(None),
                        fleet_workers.c.heartbeat_at < now - grace,
                    ),
                    _open_claim_condition(),
                )
            )
            if self._engine.dialect.name == "postgresql":
                query = query.with_for_update(of=fleet_claims, skip_locked=True)
            stale = [StaleClaim(r[0], r[1], r[2]) for r in conn.execute(query).all()]
            # A worker that died between creating its trial and linking it left the link on
            # the trial (tunefleet:claim): follow it, or the trial would stay RUNNING forever.
            for i, claim in enumerate(stale):
                if claim.trial_id is None:
                    trial_id = conn.execute(
                        select(_trial_system_attrs.c.trial_id)
                        .join(_trials, _trials.c.trial_id == _trial_system_attrs.c.trial_id)
                        .where(
                            _trials.c.study_id == study_id,
                            _trials.c.state == TrialState.RUNNING,
                            _trial_system_attrs.c.key == CLAIM_ATTR,
                            _trial_system_attrs.c.value_json == json.dumps(claim.claim_id),
                        )
                        .order_by(_trials.c.trial_id.desc())
                        .limit(1)
                    ).scalar_one_or_none()
                    if trial_id is not None:
                        stale[i] = StaleClaim(claim.claim_id, trial_id, claim.worker_id)
                        conn.execute(
                            update(fleet_claims)
                            .where(fleet_claims.c.claim_id == claim.claim_id)
                            .values(trial_id=trial_id)
                        )
            for claim in stale:
                conn.execute(
                    update(fleet_claims)
                    .where(fleet_claims.c.claim_id == claim.claim_id)
                    .values(worker_id=worker_id, requeue=1)
                )
            return stale

    @_retried
    def open_claims_of(self, worker_id: str) -> list[int]:
        """Claims a worker holds that have no trial yet (taken, then interrupted)."""
        with self._engine.begin() as conn:
            rows = conn.execute(
                select(fleet_claims.c.claim_id).where(
                    fleet_claims.c.worker_id == worker_id, fleet_claims.c.trial_id.is_(None)
                )
            ).all()
        return [r[0] for r in rows]

    @_retried
    def trial_counts(self, study_id: int) -> dict[str, int]:
        """Number of the study's trials in each Optuna state (states with none are left out)."""
        with self._engine.begin() as conn:
            rows = conn.execute(
                select(_trials.c.state, func.count())
                .where(_trials.c.study_id == study_id)
                .group_by(_trials.c.state)
            ).all()
        return {state.name: count for state, count in rows}

    @_retried
    def count_trials_with_attr(self, study_id: int, key: str) -> int:
        """How many of the study's trials carry the system attribute ``key``."""
        with self._engine.begin() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(
                        _trial_system_attrs.join(
                            _trials, _trials.c.trial_id == _trial_system_attrs.c.trial_id
                        )
                    )
                    .where(_trials.c.study_id == study_id, _trial_system_attrs.c.key == key)
                ).scalar_one()
            )

    @_retried
    def requeued_trial_numbers(self, study_id: int) -> set[int]:
        """Numbers of the trials that already have a re-run queued (``tunefleet:retry_of``)."""
        with self._engine.begin() as conn:
            rows = conn.execute(
                select(_trial_system_attrs.c.value_json)
                .select_from(
                    _trial_system_attrs.join(
                        _trials, _trials.c.trial_id == _trial_system_attrs.c.trial_id
                    )
                )
                .where(
                    _trials.c.study_id == study_id,
                    _trial_system_attrs.c.key == RETRY_OF_ATTR,
                )
            ).all()
        return {int(r[0]) for r in rows}
