"""The storage seam: one function turns a URL into everything a worker needs from a database.

``open_storage(url)`` returns a :class:`FleetStorage`: an Optuna storage (what samplers and
``optuna.load_study`` use) and the :class:`Ledger` (tunefleet's budget, claims and worker registry).
Nothing outside this package creates engines or touches SQL, so a faster Postgres path can replace
the stock ``RDBStorage`` here without the worker noticing.

Two stores exist:

* PostgreSQL (``postgresql://...``): the shared store for fleets across machines, driven by
  psycopg 3, readable and writable by stock Optuna through the same URL.
* The embedded store (``sqlite:///path``): a single file for one machine, safe for many local
  worker processes, and also readable by stock Optuna.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import optuna
import psycopg
import sqlalchemy.exc
from optuna import Study, Trial
from optuna.storages import BaseStorage, RDBStorage, _CachedStorage
from optuna.trial import TrialState
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.pool import NullPool

from tunefleet import constants
from tunefleet.errors import NoStudiesError, StorageError, TunefleetError
from tunefleet.storage import _fast_sql as fast_sql
from tunefleet.storage._engine import (
    QUERY_TIMEOUT_S,
    configure_engine,
    engine_kwargs,
    sqlite_path,
)
from tunefleet.storage._errors import translate_db_error
from tunefleet.storage._fast import WORKER_ATTR, FastPostgresStorage
from tunefleet.storage._fast_sqlite import FastSqliteStorage
from tunefleet.storage._ledger import (
    CLAIM_ATTR,
    LOCK_IDLE_TIMEOUT_S,
    Budget,
    ClaimCheckedRDBStorage,
    ClaimTakenBack,
    Ledger,
)
from tunefleet.storage._ledger import metadata as ledger_metadata
from tunefleet.storage._retry import Retrier, RetryingStorage, is_transient
from tunefleet.storage._schema import SQLITE_TRIGGERS, create_schema
from tunefleet.storage._url import (
    EMBEDDED_FILENAME,
    STORAGE_ENV_VARS,
    display_url,
    parse_storage_url,
    resolve_storage_url,
)

__all__ = [
    "EMBEDDED_FILENAME",
    "ENGINES",
    "STORAGE_ENV_VARS",
    "WORKER_ATTR",
    "Budget",
    "FleetStorage",
    "Ledger",
    "Retrier",
    "display_url",
    "is_transient",
    "open_storage",
    "parse_storage_url",
    "resolve_storage_url",
]

log = logging.getLogger("tunefleet.storage")

# Any constant works as long as every tunefleet process uses the same one: it names the
# transaction-scoped advisory lock that serialises schema creation ("tunefleet" in ASCII).
_SCHEMA_LOCK_KEY = 0x74756E65666C6565 & 0x7FFFFFFFFFFFFFFF
#: Optuna storages for PostgreSQL: the fast path, Optuna's own, or the default for the URL.
ENGINES = constants.ENGINES
#: How long to wait for an unreachable database, at start and during outages, by default.
DEFAULT_DB_WAIT_S = 60.0
_OPTUNA_TABLES = {"studies", "trials", "version_info", "alembic_version"}


@dataclass
class FleetStorage:
    """An opened store: the Optuna storage plus tunefleet's ledger."""

    url: URL
    optuna: BaseStorage
    ledger: Ledger
    engine: Engine
    retrier: Retrier

    @property
    def display_url(self) -> str:
        """The URL with its password masked, fit for logs and messages."""
        return display_url(self.url)

    @property
    def env_url(self) -> str:
        """The URL with its password, for handing to worker processes through the environment."""
        return self.url.render_as_string(hide_password=False)

    def ask_trial(self, study: Study, worker_id: str) -> tuple[int, Trial] | None:
        """Claim a budget slot and start a trial in it; None when no slot is free.

        Returns the claim's id and the trial, tagged with ``tunefleet:worker``. On the fast path
        this is one round trip; on the stock path, a claim (which also starts a queued re-run),
        then the trial's creation and its link to the claim.
        """
        study_id = study._study_id
        if isinstance(self.optuna, FastPostgresStorage | FastSqliteStorage):
            asked = self.optuna.ask(study_id, worker_id)
            if asked is None:
                return None
            study._thread_local.cached_all_trials = None  # what study.ask() does first
            return asked[0], Trial(study, asked[1])
        taken = self.ledger.claim(study_id, worker_id)
        if taken is None:
            return None
        claim_id, popped = taken
        if popped is not None:
            trial_id = popped
            self.optuna.set_trial_system_attr(trial_id, WORKER_ATTR, worker_id)
            # Optuna's cache learns of a trial when it reads the study (stock Optuna's ask
            # reads the queued trials before it pops one): a parameter set on a trial it has
            # not seen would fail.
            self.optuna.get_all_trials(study_id, deepcopy=False)
        else:
            # Created with its claim's id on it and linked to the claim, in one transaction that
            # first checks the claim is still this worker's (see ClaimCheckedRDBStorage).
            template = optuna.trial.create_trial(
                state=TrialState.RUNNING,
                system_attrs={WORKER_ATTR: worker_id, CLAIM_ATTR: claim_id},
            )
            try:
                trial_id = self.optuna.create_new_trial(study_id, template_trial=template)
            except ClaimTakenBack:
                # This worker was paused past the grace period and its slot given back: the
                # slot is no longer its to fill. Claim afresh.
                log.warning(
                    "budget slot %d was taken back while this worker was unresponsive: "
                    "claiming another",
                    claim_id,
                )
                return self.ask_trial(study, worker_id)
            except BaseException:
                self.ledger.release(claim_id)
                raise
        study._thread_local.cached_all_trials = None  # what study.ask() does first
        return claim_id, Trial(study, trial_id)

    def forget_trial_system_attrs(self, trial_id: int, keys: list[str]) -> None:
        """Delete system attributes of a finished trial (Optuna's API cannot: a finished trial
        is read-only). Used for the ``artifacts:<id>`` attribute of a removed artifact."""
        with self.engine.begin() as conn:
            conn.execute(
                text("DELETE FROM trial_system_attributes WHERE trial_id = :t AND key = :k"),
                [{"t": trial_id, "k": k} for k in keys],
            )

    def close(self) -> None:
        if isinstance(self.optuna, FastPostgresStorage | FastSqliteStorage):
            self.optuna.close()
        self.engine.dispose()


def open_storage(
    raw_url: str,
    db_wait: float = DEFAULT_DB_WAIT_S,
    engine: str = "auto",
    create: bool = True,
    query_timeout: float = QUERY_TIMEOUT_S,
    lock_idle_timeout: float = LOCK_IDLE_TIMEOUT_S,
) -> FleetStorage:
    """Open (and, on first use, initialise) the store at ``raw_url``.

    Safe to call from any number of processes at the same instant on an empty database: schema
    creation is serialised by a lock (see :func:`_schema_lock`). A database that cannot be reached
    yet (a serverless compute waking up, a server restarting) is retried with backoff for up to
    ``db_wait`` seconds; so is every later call through the returned storage.

    ``engine`` picks the Optuna storage: ``fast`` (the default, ``auto``: on PostgreSQL
    :mod:`tunefleet.storage._fast`, on the embedded store :mod:`tunefleet.storage._fast_sqlite`)
    or ``stock`` (Optuna's ``RDBStorage`` behind Optuna's own cache, as
    ``optuna.storages.get_storage`` gives it).

    ``query_timeout`` bounds how long one transaction may wait on PostgreSQL before its
    connection is presumed dead and the call retried on a new one. ``lock_idle_timeout`` bounds
    how long PostgreSQL lets a transaction that holds locks other workers wait for sit idle,
    waiting on a client that may have been stopped, before it ends that client's session.

    ``create=False`` is for readers (``status``, ``trials``, ...): a database that holds no
    studies at all is an error rather than a place to create tables in, so a mistyped URL does
    not leave an empty schema behind.

    Raises:
        StorageError: the URL is malformed, the database cannot be reached or used, or (with
            ``create=False``) it holds no studies.
    """
    url = parse_storage_url(raw_url)
    retrier = Retrier(db_wait, display_url(url))
    try:
        storage = retrier.call(lambda: _open_rdb(url, create, query_timeout, lock_idle_timeout))
    except TunefleetError:
        raise
    except RuntimeError as exc:
        raise translate_db_error(exc, url) from exc
    except (
        sqlalchemy.exc.SQLAlchemyError,
        optuna.exceptions.StorageInternalError,
        psycopg.Error,
        OSError,
    ) as exc:
        error = translate_db_error(exc, url)
        if db_wait > 0 and is_transient(exc):
            error = StorageError(f"{error} (gave up after {db_wait:g}s; --db-wait sets how long)")
        raise error from exc
    if engine not in ENGINES:
        raise StorageError(f"unknown --storage-engine '{engine}': use {', '.join(ENGINES)}")
    optuna_storage: BaseStorage = RetryingStorage(storage, retrier)
    if url.get_backend_name() == "postgresql" and engine in ("auto", "fast"):
        optuna_storage = FastPostgresStorage(optuna_storage, storage.engine, retrier)
    elif engine in ("auto", "fast"):
        optuna_storage = FastSqliteStorage(optuna_storage, sqlite_path(url), retrier)
    else:
        # What optuna.storages.get_storage(url) gives: RDBStorage behind Optuna's own cache of
        # finished trials, so that a sampler's read of the study does not read it all again.
        optuna_storage = RetryingStorage(_CachedStorage(storage), retrier)
    return FleetStorage(
        url=url,
        optuna=optuna_storage,
        ledger=Ledger(storage.engine, retrier, lock_idle_timeout),
        engine=storage.engine,
        retrier=retrier,
    )


def _open_rdb(
    url: URL,
    create: bool = True,
    query_timeout: float = QUERY_TIMEOUT_S,
    lock_idle_timeout: float = LOCK_IDLE_TIMEOUT_S,
) -> RDBStorage:
    names = _schema_names(url)
    if not _schema_ready(url, names):
        if not create and "studies" not in names:
            raise NoStudiesError(
                f"no studies in {display_url(url)}: nothing has run there yet; check --storage "
                "(or TUNEFLEET_STORAGE / DATABASE_URL)"
            )
        with _schema_lock(url) as conn:
            create_schema(conn)
    storage = _rdb_storage(url, create_tables=False, lock_idle_timeout=lock_idle_timeout)
    configure_engine(storage.engine, query_timeout)
    _check_schema_version(storage, url)
    return storage


def _rdb_storage(
    url: URL, create_tables: bool, lock_idle_timeout: float = LOCK_IDLE_TIMEOUT_S
) -> RDBStorage:
    # Optuna's own compatibility check holds a session's transaction open while it reads the
    # schema version on a second connection. Behind a transaction-mode pooler, as many workers
    # starting at once as the pool has server connections each hold one and wait for another,
    # until the pooler gives up (PgBouncer's query_wait_timeout, 120 s). The check is made
    # instead by _check_schema_version, one connection at a time.
    return ClaimCheckedRDBStorage(
        url.render_as_string(hide_password=False),
        engine_kwargs=engine_kwargs(url),
        skip_table_creation=not create_tables,
        skip_compatibility_check=True,
        lock_idle_timeout=lock_idle_timeout,
    )


def _check_schema_version(storage: RDBStorage, url: URL) -> None:
    """What Optuna's compatibility check does, without holding two connections at once."""
    current, head = storage.get_current_version(), storage.get_head_version()
    if current == head:
        return
    if current in storage.get_all_versions():
        fix = "run `optuna storage upgrade --storage URL`, or use a matching tunefleet"
    else:
        fix = "upgrade tunefleet and Optuna (`pip install -U tunefleet optuna`)"
    raise StorageError(
        f"the study tables in {display_url(url)} were made by another Optuna version "
        f"(schema {current}, this Optuna {optuna.__version__} needs {head}): {fix}"
    )


def _schema_names(url: URL) -> set[str]:
    """The tables (and on PostgreSQL the fast path's functions, on SQLite the triggers) the
    database has: catalogue queries, no lock."""
    if url.get_backend_name() == "sqlite" and not os.path.exists(sqlite_path(url)):
        return set()
    engine = create_engine(url, poolclass=NullPool, **_probe_kwargs(url))
    try:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            if url.get_backend_name() == "postgresql":
                names |= set(
                    conn.execute(
                        text("SELECT proname FROM pg_proc WHERE proname = ANY(:names)"),
                        {"names": list(fast_sql.FUNCTION_NAMES)},
                    ).scalars()
                )
            else:
                names |= set(
                    conn.execute(
                        text("SELECT name FROM sqlite_master WHERE type = 'trigger'")
                    ).scalars()
                )
    finally:
        engine.dispose()
    return names


def _schema_ready(url: URL, names: set[str]) -> bool:
    """Whether Optuna's and tunefleet's tables (and on PostgreSQL the fast path's functions, on
    SQLite the triggers) are all among ``names``."""
    wanted = _OPTUNA_TABLES | set(ledger_metadata.tables)
    if url.get_backend_name() == "postgresql":
        wanted |= set(fast_sql.FUNCTION_NAMES)
    else:
        wanted |= set(SQLITE_TRIGGERS)
    return wanted <= names


def _probe_kwargs(url: URL) -> dict[str, object]:
    kwargs = engine_kwargs(url)
    return {"connect_args": kwargs["connect_args"]}


@contextmanager
def _schema_lock(url: URL) -> Iterator[Connection]:
    """A transaction that only one initialising process can be in at a time.

    PostgreSQL: a transaction-scoped advisory lock, which a transaction-mode pooler (PgBouncer,
    Neon's -pooler endpoint) keeps on one server connection for the life of the transaction;
    session advisory locks would leak across pooled clients. SQLite: an exclusive ``flock`` on the
    database file, independent of SQLite's own byte-range locks. The schema is created on the
    connection this yields, inside the locked transaction.
    """
    engine = create_engine(url, poolclass=NullPool, **_probe_kwargs(url))
    try:
        if url.get_backend_name() == "sqlite":
            with open(sqlite_path(url), "a+b") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    with engine.begin() as conn:
                        yield conn
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
            return
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            yield conn
    finally:
        engine.dispose()
