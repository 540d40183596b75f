"""Create the schema — Optuna's tables with their version records, and tunefleet's tables and
(on PostgreSQL) the fast path's functions — on one
connection, inside the transaction that holds the schema lock.

Everything happens on the lock's own connection: behind a pooler with a small pool, a lock holder
that needed a second connection could wait forever behind processes that hold the others while
they wait for the lock. What is created is exactly what ``RDBStorage`` would create, so stock
Optuna finds a storage it made itself.
"""

from __future__ import annotations

import os

import optuna
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from optuna.storages._rdb import models as optuna_models
from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from tunefleet.storage import _fast_sql as fast_sql
from tunefleet.storage._ledger import metadata as ledger_metadata

__all__ = ["SQLITE_TRIGGERS", "create_schema"]


# Indexes on Optuna's trials table for the queries tunefleet runs on every trial: finding a queued
# re-run (state = 'WAITING'), numbering a new trial, and reading trials by number. Extra
# indexes change nothing for stock Optuna; without them both queries scan the study's trials.
_TRIAL_INDEXES = (
    "CREATE INDEX IF NOT EXISTS tunefleet_ix_trials_study_state ON trials (study_id, state)",
    "CREATE INDEX IF NOT EXISTS tunefleet_ix_trials_study_number ON trials (study_id, number)",
)

# tunefleet's rows of a study go with the study whoever deletes it. On PostgreSQL the foreign keys
# (ON DELETE CASCADE) see to it; SQLite enforces foreign keys only on connections that turn them
# on, and stock Optuna's do not (`optuna delete-study`), which would leave the rows to a later
# study that reuses the id (SQLite does reuse it). A trigger fires on every connection.
SQLITE_TRIGGERS = {
    "tunefleet_study_deleted": """
CREATE TRIGGER IF NOT EXISTS tunefleet_study_deleted AFTER DELETE ON studies
BEGIN
  DELETE FROM tunefleet_claims WHERE study_id = OLD.study_id;
  DELETE FROM tunefleet_workers WHERE study_id = OLD.study_id;
  DELETE FROM tunefleet_studies WHERE study_id = OLD.study_id;
END""",
}

# Rows of studies that no longer exist, which stock deletes left before the trigger existed: the
# next study to get a deleted study's id would inherit its spent budget and its claims. Removed
# once, when the trigger is installed (before it, so an interrupted upgrade does it again).
_SQLITE_ORPHANS = tuple(
    f"DELETE FROM {table} WHERE study_id NOT IN (SELECT study_id FROM studies)"
    for table in ("tunefleet_claims", "tunefleet_workers", "tunefleet_studies")
)


def create_schema(conn: Connection) -> None:
    optuna_models.BaseModel.metadata.create_all(conn)
    ledger_metadata.create_all(conn)
    for ddl in _TRIAL_INDEXES:
        conn.exec_driver_sql(ddl)
    if conn.dialect.name == "postgresql":
        for ddl in fast_sql.FUNCTIONS:
            conn.exec_driver_sql(ddl)
    if conn.dialect.name == "sqlite":
        triggers = set(
            conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'").scalars()
        )
        if "tunefleet_study_deleted" not in triggers:
            for dml in _SQLITE_ORPHANS:
                conn.exec_driver_sql(dml)
        for ddl in SQLITE_TRIGGERS.values():
            conn.exec_driver_sql(ddl)
    version_info = optuna_models.VersionInfoModel.__table__
    if conn.execute(select(version_info.c.version_info_id)).first() is None:
        conn.execute(
            insert(version_info).values(
                version_info_id=1,
                schema_version=optuna_models.SCHEMA_VERSION,
                library_version=optuna.__version__,
            )
        )
    context = MigrationContext.configure(conn)
    if context.get_current_revision() is None:
        script = _optuna_alembic_script()
        head = script.get_current_head()
        assert head is not None
        context.stamp(script, head)


def _optuna_alembic_script() -> ScriptDirectory:
    """Optuna's own migration scripts, as ``RDBStorage`` finds them."""
    directory = os.path.dirname(optuna_models.__file__)
    config = Config(os.path.join(directory, "alembic.ini"))
    config.set_main_option("script_location", os.path.join(directory, "alembic").replace("%", "%%"))
    return ScriptDirectory.from_config(config)
