"""SQLAlchemy engine settings for both stores, and the hooks that make SQLite multi-process safe."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

__all__ = ["configure_engine", "engine_kwargs"]

#: Seconds to wait for a connection to PostgreSQL before giving up on one attempt.
CONNECT_TIMEOUT_S = 10
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


def configure_engine(engine: Engine) -> None:
    """Install the per-connection hooks the embedded store needs; a no-op for PostgreSQL.

    SQLite with several processes fails with "database is locked" when a deferred transaction that
    has read tries to write while another process writes: SQLite cannot wait there, it must fail.
    Taking the write lock at BEGIN (``BEGIN IMMEDIATE``) turns every such case into a plain wait on
    the busy timeout. WAL lets readers proceed while a writer commits.
    """
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
