"""Every trial of a study as flat rows (``tunefleet trials``), and the best trials (``best``)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from tunefleet._redact import redact_values
from tunefleet.artifacts import artifact_names
from tunefleet.constants import FAIL_REASON_ATTR, WORKER_ATTR
from tunefleet.errors import ConfigError
from tunefleet.monitor._load import load_frozen_trials
from tunefleet.monitor._pareto import pareto_front
from tunefleet.storage import FleetStorage
from tunefleet.storage.read import StudyRef

__all__ = [
    "TRIAL_STATES",
    "TrialRow",
    "best_trials",
    "load_trials",
    "parse_states",
    "trials_to_csv",
    "trials_to_json",
]

TRIAL_STATES = tuple(s.name.lower() for s in TrialState)


@dataclass(frozen=True)
class TrialRow:
    """One trial, flattened for a table, a CSV file or JSON: the trial object of every command
    (``trials``, ``best``, and a snapshot's ``best`` and ``pareto_front``)."""

    number: int
    state: str
    values: list[float] | None
    params: dict[str, Any]
    duration_s: float | None
    worker: str | None
    user_attrs: dict[str, Any]
    fail_reason: str | None
    datetime_start: str | None
    datetime_complete: str | None
    #: File names of the trial's artifacts (``--artifacts``), e.g. model.ubj, metrics.json.
    artifacts: tuple[str, ...] = ()

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialRow:
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        return cls(
            number=trial.number,
            state=trial.state.name,
            values=list(trial.values) if trial.values is not None else None,
            params=dict(trial.params),
            duration_s=duration,
            worker=trial.system_attrs.get(WORKER_ATTR),
            user_attrs=redact_values(dict(trial.user_attrs)),
            fail_reason=trial.system_attrs.get(FAIL_REASON_ATTR),
            datetime_start=_iso(trial.datetime_start),
            datetime_complete=_iso(trial.datetime_complete),
            artifacts=tuple(artifact_names(trial)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "state": self.state,
            "values": None if self.values is None else [_finite(v) for v in self.values],
            "params": self.params,
            "duration_s": None if self.duration_s is None else round(self.duration_s, 6),
            "worker": self.worker,
            "user_attrs": self.user_attrs,
            "fail_reason": self.fail_reason,
            "datetime_start": self.datetime_start,
            "datetime_complete": self.datetime_complete,
            "artifacts": list(self.artifacts),
        }


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


def _finite(value: float) -> float | None:
    """JSON has no infinities: an infinite value is written as null."""
    return value if math.isfinite(value) else None


def parse_states(names: Iterable[str]) -> tuple[TrialState, ...] | None:
    """``--state complete --state fail`` as Optuna states (None: every state).

    Raises:
        ConfigError: an unknown state name.
    """
    states = []
    for name in names:
        for part in name.split(","):
            key = part.strip().upper()
            if not key:
                continue
            if key not in TrialState.__members__:
                raise ConfigError(
                    f"unknown trial state '{part.strip()}': use one of {', '.join(TRIAL_STATES)}"
                )
            states.append(TrialState[key])
    return tuple(dict.fromkeys(states)) or None


def load_trials(
    storage: FleetStorage, ref: StudyRef, states: Sequence[TrialState] | None = None
) -> list[TrialRow]:
    """The study's trials in number order, optionally only those in ``states``."""
    return [TrialRow.from_trial(t) for t in load_frozen_trials(storage, ref.study_id, states)]


def best_trials(storage: FleetStorage, ref: StudyRef) -> list[TrialRow]:
    """The best trial (single objective), or every trial on the Pareto front; [] if none."""
    if not ref.multi_objective:
        try:
            trial = storage.optuna.get_best_trial(ref.study_id)
        except ValueError:  # no COMPLETE trial
            return []
        return [TrialRow.from_trial(trial)]
    complete = load_frozen_trials(storage, ref.study_id, (TrialState.COMPLETE,))
    front = pareto_front([t.values for t in complete], ref.directions)
    return [TrialRow.from_trial(complete[i]) for i in front]


def trials_to_json(rows: Sequence[TrialRow]) -> str:
    return json.dumps([r.to_json() for r in rows], default=str)


def trials_to_csv(rows: Sequence[TrialRow], n_objectives: int) -> str:
    """One row per trial: fixed columns, then ``params_NAME`` and ``user_attrs_NAME`` columns."""
    value_cols = ["value"] if n_objectives == 1 else [f"values_{i}" for i in range(n_objectives)]
    param_names = sorted({name for r in rows for name in r.params})
    attr_names = sorted({name for r in rows for name in r.user_attrs})
    header = [
        "number",
        "state",
        *value_cols,
        "duration_s",
        "worker",
        "fail_reason",
        "datetime_start",
        "datetime_complete",
        "artifacts",
        *(f"params_{n}" for n in param_names),
        *(f"user_attrs_{n}" for n in attr_names),
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        values = r.values or []
        writer.writerow(
            [
                r.number,
                r.state,
                *(_cell(values[i]) if i < len(values) else "" for i in range(len(value_cols))),
                "" if r.duration_s is None else f"{r.duration_s:.6f}",
                r.worker or "",
                r.fail_reason or "",
                r.datetime_start or "",
                r.datetime_complete or "",
                " ".join(r.artifacts),
                *(_cell(r.params.get(n)) for n in param_names),
                *(_cell(r.user_attrs.get(n)) for n in attr_names),
            ]
        )
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str | int | bool):
        return str(value)
    return json.dumps(value, default=str)
