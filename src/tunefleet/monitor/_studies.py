"""Find the study a monitoring command is about, and list the studies in a storage.

Both go through the storage's public read API (:mod:`tunefleet.storage.read`); a study's line in
``studies`` is its snapshot, the same object ``status`` prints (:mod:`tunefleet.summary`).
"""

from __future__ import annotations

from tunefleet.storage import FleetStorage
from tunefleet.storage.read import DEFAULT_READ_WAIT_S, StudyRef, open_reader
from tunefleet.summary import StudyStatus, read_all_statuses, resolve_study

__all__ = ["StudyOverview", "StudyRef", "list_studies", "open_existing_storage", "resolve_study"]

#: One line of ``tunefleet studies``: the study's snapshot.
StudyOverview = StudyStatus


def open_existing_storage(raw_url: str, db_wait: float = DEFAULT_READ_WAIT_S) -> FleetStorage:
    """Open a storage to read it (see :func:`tunefleet.storage.read.open_reader`)."""
    return open_reader(raw_url, db_wait)


def list_studies(storage: FleetStorage) -> list[StudyStatus]:
    """Every study in the storage with its progress."""
    return read_all_statuses(storage)
