"""What a study looks like now: counts by state, the budget, the best trial — from the database."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState

from tunefleet.recovery import LOST_ATTR
from tunefleet.study import FleetStudy

__all__ = ["StudySummary", "summarize"]


@dataclass
class StudySummary:
    study: str
    storage: str
    budget: int | None
    n_trials: int
    states: dict[str, int]
    best_value: float | None
    best_params: dict[str, Any] | None
    directions: list[str]
    best_trials: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    done: bool = False
    seconds_left: float | None = None
    lost: int = 0
    restarts: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "study": self.study,
            "n_trials": self.n_trials,
            "states": self.states,
            "best_value": self.best_value,
            "best_params": self.best_params,
            "wall_s": round(self.wall_s, 3),
            "budget": self.budget,
            "done": self.done,
            "directions": self.directions,
            "storage": self.storage,
            "lost": self.lost,
            "restarts": self.restarts,
        }
        if len(self.directions) > 1:
            out["best_trials"] = self.best_trials
        return out


def summarize(fleet_study: FleetStudy, wall_s: float = 0.0, with_best: bool = True) -> StudySummary:
    """Read the study's state in a few cheap queries (no full trial list)."""
    storage = fleet_study.storage
    study = fleet_study.study
    ledger_budget = storage.ledger.budget(fleet_study.study_id)
    counts = storage.ledger.trial_counts(fleet_study.study_id)
    lost = storage.ledger.count_trials_with_attr(fleet_study.study_id, LOST_ATTR)
    states = {s.name: counts.get(s.name, 0) for s in TrialState}
    directions = [d.name.lower() for d in study.directions]
    best_value: float | None = None
    best_params: dict[str, Any] | None = None
    best_trials: list[dict[str, Any]] = []
    if with_best and states["COMPLETE"]:
        if len(directions) == 1:
            best = storage.optuna.get_best_trial(fleet_study.study_id)
            assert best.value is not None
            best_value = best.value if math.isfinite(best.value) else None
            best_params = best.params
        else:
            best_trials = [
                {"number": t.number, "values": t.values, "params": t.params}
                for t in study.best_trials
            ]
    return StudySummary(
        study=fleet_study.name,
        storage=storage.display_url,
        budget=ledger_budget.n_trials,
        n_trials=ledger_budget.n_counted,
        states=states,
        best_value=best_value,
        best_params=best_params,
        directions=directions,
        best_trials=best_trials,
        wall_s=wall_s,
        lost=lost,
        done=ledger_budget.done,
        seconds_left=ledger_budget.seconds_left,
    )
