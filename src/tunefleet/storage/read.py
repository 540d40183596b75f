"""The public read API of the storage: how every reader (``status``, ``studies``, ``best``,
``trials``, ``report``, ``k8s status``) reaches the database.

Readers never touch ``FleetStorage.engine`` or a private storage module: they open a store with
:func:`open_reader` (which creates nothing), name a study with :func:`study_refs`, and run their
queries with :func:`read`, which gives them a read-only connection and retries transient failures
for up to ``--db-wait`` seconds, exactly as writers do. A database error becomes one
:class:`~tunefleet.errors.StorageError` line (exit 3).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import optuna
import psycopg
import sqlalchemy.exc
from optuna.storages._rdb import models as _models
from sqlalchemy import select
from sqlalchemy.engine import Connection

from tunefleet.constants import READ_DB_WAIT_S
from tunefleet.errors import StorageError, TunefleetError
from tunefleet.storage import FleetStorage, open_storage, parse_storage_url
from tunefleet.storage._clock import stored_epoch, stored_to_local, utc_now
from tunefleet.storage._engine import sqlite_path
from tunefleet.storage._errors import translate_db_error
from tunefleet.storage._ledger import (
    _open_claim_condition,
    epoch_now,
    fleet_claims,
    fleet_studies,
    fleet_workers,
)
from tunefleet.storage._retry import is_transient

__all__ = [
    "DEFAULT_READ_WAIT_S",
    "StudyRef",
    "claims_table",
    "epoch_now",
    "fleet_table",
    "open_claim_condition",
    "open_reader",
    "read",
    "stored_epoch",
    "stored_to_local",
    "study_refs",
    "utc_now",
    "workers_table",
]

T = TypeVar("T")

#: How long a reader waits for an unreachable database by default (a worker waits 60 s).
DEFAULT_READ_WAIT_S = READ_DB_WAIT_S

#: tunefleet's ledger tables, for readers' queries.
fleet_table = fleet_studies
claims_table = fleet_claims
workers_table = fleet_workers
_DB_ERRORS = (
    sqlalchemy.exc.SQLAlchemyError,
    optuna.exceptions.StorageInternalError,
    psycopg.Error,
    OSError,
)


def open_claim_condition() -> Any:
    """The ledger's rule for a claim that still holds its slot (join claims to trials first)."""
    return _open_claim_condition()


@dataclass(frozen=True)
class StudyRef:
    """A study found in a storage: its id, name and directions."""

    study_id: int
    name: str
    directions: tuple[str, ...]

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1


def open_reader(raw_url: str, db_wait: float = DEFAULT_READ_WAIT_S) -> FleetStorage:
    """Open a storage to read it; creates nothing (an embedded store that does not exist, or a
    database holding no studies, is an error).

    Raises:
        StorageError: the file does not exist, the URL is malformed, the database holds no
            studies, or it could not be reached within ``db_wait`` seconds.
    """
    url = parse_storage_url(raw_url)
    if url.get_backend_name() == "sqlite" and not os.path.exists(sqlite_path(url)):
        raise StorageError(
            f"no tunefleet store at {sqlite_path(url)}: pass --storage (or set "
            "TUNEFLEET_STORAGE), or run this in the directory holding tunefleet.db"
        )
    return open_storage(raw_url, db_wait=db_wait, create=False)


def read(storage: FleetStorage, query: Callable[[Connection], T]) -> T:
    """``query(conn)`` on a fresh connection, retried on transient failures like a writer's
    calls (for up to the storage's ``db_wait``); database errors become a StorageError."""

    def once() -> T:
        with storage.engine.connect() as conn:
            try:
                return query(conn)
            finally:
                conn.rollback()  # a reader changes nothing

    try:
        return storage.retrier.call(once)
    except TunefleetError:
        raise
    except _DB_ERRORS as exc:
        error = translate_db_error(exc, storage.url)
        if is_transient(exc):
            wait = storage.retrier.wait
            error = StorageError(f"{error} (gave up after {wait:g}s; --db-wait sets how long)")
        raise error from exc


def study_refs(storage: FleetStorage) -> list[StudyRef]:
    """Every study in the storage, in creation order."""
    studies = _models.StudyModel.__table__
    directions_t = _models.StudyDirectionModel.__table__

    def query(conn: Connection) -> tuple[list[Any], list[Any]]:
        names = conn.execute(
            select(studies.c.study_id, studies.c.study_name).order_by(studies.c.study_id)
        ).all()
        rows = conn.execute(
            select(directions_t.c.study_id, directions_t.c.direction).order_by(
                directions_t.c.study_id, directions_t.c.objective
            )
        ).all()
        return list(names), list(rows)

    names, rows = read(storage, query)
    directions: dict[int, list[str]] = {}
    for study_id, direction in rows:
        directions.setdefault(study_id, []).append(direction.name.lower())
    return [StudyRef(sid, name, tuple(directions.get(sid, ["minimize"]))) for sid, name in names]
