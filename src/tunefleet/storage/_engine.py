"""SQLAlchemy engine settings for both stores, and the hooks that make SQLite multi-process safe."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

__all__ = ["QUERY_TIMEOUT_S", "configure_engine", "engine_kwargs"]

log = logging.getLogger("tunefleet.storage")

#: Seconds to wait for a connection to PostgreSQL before giving up on one attempt.
CONNECT_TIMEOUT_S = 10
#: The longest a connection may stay checked out (one short transaction) before it is presumed
#: dead and its socket shut: the retrier then runs the call again on a new connection.
QUERY_TIMEOUT_S = 30.0
# TCP keepalives and a send timeout, so that a peer that vanished (a NAT that forgot the
# connection, a partition) is noticed within tens of seconds rather than the kernel's hours.
# They are libpq settings of the client's socket, sent to no server: a transaction-mode pooler
# loses nothing. A URL that sets one keeps its own value.
_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms: unacknowledged data for this long fails the connection
}
#: How long a SQLite writer waits for another process's lock. Trials write briefly, so a long wait
#: is only ever spent behind a queue of other short writers, never on a deadlock.
SQLITE_BUSY_TIMEOUT_S = 120


def engine_kwargs(url: URL) -> dict[str, Any]:
    """Keyword arguments for ``create_engine`` (passed through Optuna's ``RDBStorage``)."""
    if url.get_backend_name() == "postgresql":
        # prepare_threshold=None: no server-side prepared statements, which a transaction-mode
        # pooler (PgBouncer before 1.21, Neon's -pooler endpoint) cannot route back to the
        # server connection that prepared them.
        connect_args: dict[str, Any] = {"application_name": "tunefleet", "prepare_threshold": None}
        if "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        for key, value in _KEEPALIVES.items():
            if key not in url.query:
                connect_args[key] = value
        # At most 2 per worker: its trial loop, background flush and heartbeat each hold one only
        # for a short transaction and never wait for another while holding one, so a third
        # waits a moment instead of opening a connection (measured: no change in trials/s).
        # Serverless computes kill idle connections. Connections are recycled well inside typical
        # idle limits, but not pinged before use: a ping is a round trip on every checkout, and
        # every call already survives a dead connection (the retrier runs it again on a new one).
        return {
            "pool_size": 2,
            "max_overflow": 0,
            "pool_pre_ping": False,
            "pool_recycle": 300,
            "connect_args": connect_args,
        }
    # isolation_level=None stops pysqlite from issuing its own deferred BEGIN; configure_engine
    # issues BEGIN IMMEDIATE instead (see there).
    return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S, "isolation_level": None}}


def configure_engine(engine: Engine, query_timeout: float = QUERY_TIMEOUT_S) -> None:
    """Install the per-connection hooks: the embedded store's locking, PostgreSQL's watchdog.

    PostgreSQL: keepalives cannot tell a dead peer from a middlebox that still acknowledges
    packets but forwards nothing (a stuck proxy or pooler), and a server-side statement timeout
    never fires when the server never sees the query. So a watchdog shuts the socket of any
    connection checked out for longer than ``query_timeout``: the blocked call fails at once with
    a connection error, which the retrier treats like any dropped connection.

    SQLite with several processes fails with "database is locked" when a deferred transaction that
    has read tries to write while another process writes: SQLite cannot wait there, it must fail.
    Taking the write lock at BEGIN (``BEGIN IMMEDIATE``) turns every such case into a plain wait on
    the busy timeout. WAL lets readers proceed while a writer commits.
    """
    if engine.dialect.name == "postgresql":
        _watch(engine, query_timeout)
        return
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    # Connections opened before the hooks existed (Optuna's own start-up checks) lack them.
    engine.dispose()


def sqlite_path(url: URL) -> str:
    """The absolute file path of a SQLite URL."""
    return os.path.abspath(url.database or "")


def _watch(engine: Engine, limit: float) -> None:
    watchdog = _Watchdog(limit)

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        watchdog.arm(dbapi_conn)

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_conn: Any, _record: Any) -> None:
        watchdog.disarm(dbapi_conn)

    @event.listens_for(engine, "close")
    def _on_close(dbapi_conn: Any, _record: Any) -> None:
        watchdog.disarm(dbapi_conn)


class _Watchdog:
    """Shuts the socket of a connection checked out for longer than ``limit`` seconds."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._due: dict[int, tuple[float, Any]] = {}
        self._thread: threading.Thread | None = None

    def arm(self, dbapi_conn: Any) -> None:
        with self._lock:
            self._due[id(dbapi_conn)] = (time.monotonic() + self.limit, dbapi_conn)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tunefleet-db-watchdog", daemon=True
                )
                self._thread.start()

    def disarm(self, dbapi_conn: Any) -> None:
        with self._lock:
            self._due.pop(id(dbapi_conn), None)

    def _run(self) -> None:
        tick = min(1.0, self.limit / 4)
        while True:
            time.sleep(tick)
            now = time.monotonic()
            with self._lock:
                expired = [c for due, c in self._due.values() if due <= now]
                for conn in expired:
                    self._due.pop(id(conn), None)
            for conn in expired:
                log.debug(
                    "no answer from the database for %gs: dropping the connection", self.limit
                )
                _shut(conn)


def _shut(dbapi_conn: Any) -> None:
    """Shut down a psycopg connection's socket: whatever waits on it wakes with an error."""
    try:
        fd = dbapi_conn.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except Exception:  # already closed: nothing waits on it
        pass
