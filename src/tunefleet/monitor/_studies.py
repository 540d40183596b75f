"""Find the study a monitoring command is about, and list the studies in a storage."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy import func, select

from tunefleet.errors import StorageError, StudyError
from tunefleet.monitor import _sql as q
from tunefleet.storage import FleetStorage, open_storage, parse_storage_url
from tunefleet.storage._engine import sqlite_path

__all__ = ["StudyOverview", "StudyRef", "list_studies", "open_existing_storage", "resolve_study"]


@dataclass(frozen=True)
class StudyRef:
    """A study found in a storage: its id, name and directions."""

    study_id: int
    name: str
    directions: tuple[str, ...]

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1


@dataclass(frozen=True)
class StudyOverview:
    """One line of ``tunefleet studies``."""

    name: str
    directions: tuple[str, ...]
    states: dict[str, int]
    budget: int | None
    n_counted: int
    done: bool
    best_value: float | None
    n_active_workers: int

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.name,
            "directions": list(self.directions),
            "states": self.states,
            "n_trials": sum(self.states.values()),
            "budget": self.budget,
            "counted": self.n_counted,
            "done": self.done,
            "best_value": self.best_value,
            "active_workers": self.n_active_workers,
        }


def open_existing_storage(raw_url: str) -> FleetStorage:
    """Open a storage to read it; an embedded store that does not exist is an error, not created.

    Raises:
        StorageError: the file does not exist, the URL is malformed, or the database failed.
    """
    url = parse_storage_url(raw_url)
    if url.get_backend_name() == "sqlite" and not os.path.exists(sqlite_path(url)):
        raise StorageError(
            f"no tunefleet store at {sqlite_path(url)}: pass --storage (or set "
            "TUNEFLEET_STORAGE), or run this in the directory holding tunefleet.db"
        )
    return open_storage(raw_url, create=False)


def _all_refs(storage: FleetStorage) -> list[StudyRef]:
    with storage.engine.connect() as conn:
        names = conn.execute(
            select(q.studies.c.study_id, q.studies.c.study_name).order_by(q.studies.c.study_id)
        ).all()
        rows = conn.execute(
            select(q.directions_t.c.study_id, q.directions_t.c.direction).order_by(
                q.directions_t.c.study_id, q.directions_t.c.objective
            )
        ).all()
    directions: dict[int, list[str]] = {}
    for study_id, direction in rows:
        directions.setdefault(study_id, []).append(direction.name.lower())
    return [StudyRef(sid, name, tuple(directions.get(sid, ["minimize"]))) for sid, name in names]


def resolve_study(storage: FleetStorage, name: str | None) -> StudyRef:
    """The study called ``name``, or the only study in the storage when ``name`` is None.

    Raises:
        StudyError: no such study, no study at all, or several and no name given.
    """
    refs = _all_refs(storage)
    where = storage.display_url
    if name is not None:
        for ref in refs:
            if ref.name == name:
                return ref
        known = ", ".join(r.name for r in refs) or "none"
        raise StudyError(f"no study '{name}' in {where} (studies there: {known}): fix --study")
    if len(refs) == 1:
        return refs[0]
    if not refs:
        raise StudyError(
            f"no studies in {where}: start one (tunefleet run OBJECTIVE), or pass --storage"
        )
    listing = ", ".join(r.name for r in refs)
    raise StudyError(f"{len(refs)} studies in {where} ({listing}): pass --study NAME")


def list_studies(storage: FleetStorage) -> list[StudyOverview]:
    """Every study in the storage with its progress, in a few grouped queries."""
    refs = _all_refs(storage)
    with storage.engine.connect() as conn:
        counts = conn.execute(
            select(q.trials.c.study_id, q.trials.c.state, func.count()).group_by(
                q.trials.c.study_id, q.trials.c.state
            )
        ).all()
        active: dict[int, int] = {
            sid: int(n)
            for sid, n in conn.execute(
                select(q.workers.c.study_id, func.count())
                .where(q.workers.c.finished_at.is_(None))
                .group_by(q.workers.c.study_id)
            ).all()
        }
        budgeted = {row[0] for row in conn.execute(select(q.fleet.c.study_id)).all()}
    states: dict[int, dict[str, int]] = {}
    for study_id, state, count in counts:
        states.setdefault(study_id, {s.name: 0 for s in TrialState})[state.name] = count
    out = []
    for ref in refs:
        by_state = states.get(ref.study_id, {s.name: 0 for s in TrialState})
        finished = sum(by_state[s] for s in ("COMPLETE", "PRUNED", "FAIL"))
        budget, counted, done = None, finished, False
        if ref.study_id in budgeted:
            b = storage.ledger.budget(ref.study_id)
            budget, counted, done = b.n_trials, b.n_counted, b.done
        out.append(
            StudyOverview(
                name=ref.name,
                directions=ref.directions,
                states=by_state,
                budget=budget,
                n_counted=counted,
                done=done,
                best_value=_best_value(storage, ref, by_state["COMPLETE"]),
                n_active_workers=int(active.get(ref.study_id, 0)),
            )
        )
    return out


def _best_value(storage: FleetStorage, ref: StudyRef, n_complete: int) -> float | None:
    if ref.multi_objective or not n_complete:
        return None
    try:
        value = storage.optuna.get_best_trial(ref.study_id).value
    except (ValueError, optuna.exceptions.OptunaError):
        return None
    return value if value is not None and math.isfinite(value) else None
