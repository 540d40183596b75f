"""Open a study for a fleet: create or load it, check it matches, and register its budget."""

from __future__ import annotations

import re
from dataclasses import dataclass

import optuna
import sqlalchemy.exc
from optuna.study import StudyDirection

from tunefleet.artifacts import configure_study
from tunefleet.config import StudySpec
from tunefleet.errors import StudyError
from tunefleet.objectives import Objective
from tunefleet.samplers import make_pruner, make_sampler
from tunefleet.storage import Budget, FleetStorage
from tunefleet.storage._errors import translate_db_error

__all__ = ["FleetStudy", "default_study_name", "open_study", "resolve_directions"]


@dataclass
class FleetStudy:
    """An Optuna study with the storage it lives in and its budget at opening."""

    study: optuna.Study
    storage: FleetStorage
    budget: Budget

    @property
    def study_id(self) -> int:
        return self.study._study_id

    @property
    def name(self) -> str:
        return self.study.study_name


def default_study_name(objective: Objective) -> str:
    """A study name derived from the objective (``sklearn-iris``, ``objective``)."""
    return re.sub(r"[^A-Za-z0-9._\-]", "-", objective.name).strip("-") or "tunefleet"


def resolve_directions(spec: StudySpec, objective: Objective) -> tuple[tuple[str, ...], bool]:
    """The directions to create the study with, and whether they were asked for explicitly."""
    if spec.directions:
        return spec.directions, True
    if objective.directions:
        return objective.directions, True
    return ("minimize",), False


def open_study(
    storage: FleetStorage, spec: StudySpec, objective: Objective, sampler_seed: int | None = None
) -> FleetStudy:
    """Create the study (or load it when it exists) and its tunefleet budget row.

    Any number of processes may call this at once: Optuna turns the losing INSERT of a
    concurrent creation into ``DuplicatedStudyError`` and ``load_if_exists`` loads instead.

    Raises:
        StudyError: the study exists with other directions than the ones asked for.
        StorageError: the database failed.
    """
    directions, explicit = resolve_directions(spec, objective)
    name = spec.study or default_study_name(objective)
    try:
        study = optuna.create_study(
            storage=storage.optuna,
            study_name=name,
            directions=[StudyDirection[d.upper()] for d in directions],
            load_if_exists=True,
            sampler=make_sampler(spec.sampler, sampler_seed, len(directions)),
            pruner=make_pruner(spec.pruner),
        )
        existing = tuple(d.name.lower() for d in study.directions)
        if explicit and existing != directions:
            raise StudyError(
                f"study '{name}' exists with direction {', '.join(existing)}, not "
                f"{', '.join(directions)}: drop --direction to join it, or pick another --study"
            )
        budget = storage.ledger.ensure_study(study._study_id, spec.n_trials, spec.timeout)
        # The artifact store travels with the study; an unreachable one stops here, once.
        configure_study(study, spec.artifacts, spec.save_models, spec.keep_best)
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        raise translate_db_error(exc, storage.url) from exc
    return FleetStudy(study=study, storage=storage, budget=budget)
