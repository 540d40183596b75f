"""Is the best trial real? Re-evaluate its parameters with other seeds and splits.

A search keeps the best of many noisy scores, so the best is biased upwards: the tutorial's
XGBoost best (0.986, on an unseeded split) re-scored at a median of 0.934. :func:`rescore` runs
the best trial's parameters again ``repeats`` times, each with another seed and, where the
objective supports it, another train/validation split, and reports mean ± sd beside the best.

The hook an objective opts in with is one setting, ``seed``:

- Built-ins have it: ``seed`` fixes the trial's RNG seed, and their ``split_arg`` setting
  (``split_seed``, or ``cv_seed`` for iris) picks the split; rescore sets both.
- A user function opts in by accepting a ``seed`` keyword argument
  (``def objective(trial, seed=0)``), used for everything random in the trial, the data split
  included. Rescore calls it with the best parameters (through an ``optuna.trial.FixedTrial``)
  and ``seed=1, 2, ...``.
"""

from __future__ import annotations

import inspect
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FixedTrial, FrozenTrial

from tunefleet.errors import ObjectiveError, StudyError
from tunefleet.objectives import (
    BuiltinObjective,
    FunctionObjective,
    Objective,
    WorkerContext,
    load_objective,
)
from tunefleet.objectives._common import worker_threads
from tunefleet.storage import FleetStorage

__all__ = [
    "RescoreResult",
    "StoredModelScore",
    "rescore",
    "rescore_seeds",
    "score_stored_model",
]


@dataclass
class RescoreResult:
    """The best trial, its reported value, and what its parameters score with other seeds."""

    study: str
    objective: str
    direction: str
    trial_number: int
    params: dict[str, Any]
    reported: float
    seeds: list[int]
    values: list[float]
    #: The value with the trial's own recorded seeds (built-ins), or None when unknown.
    reproduced: float | None = None
    objective_args: dict[str, Any] = field(default_factory=dict)
    n_threads: int = 1

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def gap_in_sd(self) -> float | None:
        """How many sd the reported best is better than the rescored mean (None if sd is 0)."""
        gap = self.reported - self.mean
        if self.direction == "minimize":
            gap = -gap
        return gap / self.sd if self.sd > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "objective": self.objective,
            "objective_args": self.objective_args,
            "direction": self.direction,
            "trial": self.trial_number,
            "params": self.params,
            "reported": self.reported,
            "reproduced": self.reproduced,
            "n_threads": self.n_threads,
            "seeds": self.seeds,
            "values": self.values,
            "mean": self.mean,
            "sd": self.sd,
            "min": min(self.values),
            "max": max(self.values),
        }


def rescore_seeds(repeats: int, seed: int = 0) -> list[int]:
    """The seeds of the repeats: 1..K for ``seed`` 0, so a rescore is itself repeatable."""
    return [seed * 100_003 + r + 1 for r in range(repeats)]


def _best_trial(storage: FleetStorage, study_name: str) -> tuple[optuna.Study, FrozenTrial]:
    try:
        study = optuna.load_study(study_name=study_name, storage=storage.optuna)
    except KeyError:
        names = sorted(s.study_name for s in storage.optuna.get_all_studies())
        known = f" (studies there: {', '.join(names)})" if names else " (it has no studies)"
        raise StudyError(
            f"no study '{study_name}' in {storage.display_url}{known}: check --study and --storage"
        ) from None
    if len(study.directions) > 1:
        raise StudyError(
            f"study '{study_name}' has {len(study.directions)} objectives: rescore works on "
            "single-objective studies, whose best trial is one trial"
        )
    try:
        return study, study.best_trial
    except ValueError:
        raise StudyError(
            f"study '{study_name}' has no completed trial yet: nothing to rescore"
        ) from None


def _variant_factory(spec: str, args: Mapping[str, Any]) -> Callable[[int, int | None], Objective]:
    """``make(seed, split_seed)``: the objective with its randomness fixed by those seeds."""
    objective = load_objective(spec, args)
    if isinstance(objective, BuiltinObjective):
        split_arg = getattr(objective, "split_arg", None)
        if "seed" not in objective.defaults:  # pragma: no cover - every built-in has one
            raise ObjectiveError(f"built-in '{spec}' has no seed setting: it cannot be rescored")

        def make_builtin(seed: int, split_seed: int | None) -> Objective:
            overrides: dict[str, Any] = {"seed": seed}
            if split_arg:
                overrides[split_arg] = seed if split_seed is None else split_seed
            return load_objective(spec, {**args, **overrides})

        return make_builtin
    if isinstance(objective, FunctionObjective):
        parameters = inspect.signature(objective.func).parameters
        if "seed" not in parameters:
            raise ObjectiveError(
                f"objective '{spec}' takes no 'seed' argument, so rescore cannot vary its "
                "seeds: add one (def objective(trial, seed=0)) and use it for the model and the "
                "data split"
            )

        def make_function(seed: int, split_seed: int | None) -> Objective:
            return FunctionObjective(objective.func, objective.name, {**args, "seed": seed})

        return make_function
    raise ObjectiveError(f"objective '{spec}' cannot be rescored")  # pragma: no cover


def _evaluate(objective: Objective, trial: FrozenTrial, context: WorkerContext) -> float:
    objective.setup(context)
    # A FixedTrial answers each suggest_* with the best trial's value; report() is a no-op.
    fixed: Any = FixedTrial(trial.params, number=trial.number)
    try:
        value = objective(fixed)
    except optuna.TrialPruned:  # pragma: no cover - a FixedTrial is never pruned
        raise ObjectiveError("the objective pruned a fixed trial: it cannot be rescored") from None
    except (ObjectiveError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise ObjectiveError(
            f"re-evaluating trial #{trial.number} failed: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ObjectiveError(
            f"re-evaluating trial #{trial.number} returned {value!r}, not a number"
        )
    return float(value)


def rescore(
    storage: FleetStorage,
    study_name: str,
    objective: str | None = None,
    objective_args: Mapping[str, Any] | None = None,
    repeats: int = 10,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _line: None,
) -> RescoreResult:
    """Re-evaluate the best trial of ``study_name`` ``repeats`` times with other seeds/splits.

    ``objective`` defaults to the one the best trial recorded (built-ins record their name and
    settings); ``objective_args`` override the recorded settings.

    Raises:
        StudyError: no such study, several objectives, or no completed trial.
        ObjectiveError: the objective is unknown, not recorded, cannot take a seed, or fails.
    """
    if repeats < 1:
        raise ObjectiveError(f"invalid --repeats {repeats}: must be at least 1")
    study, best = _best_trial(storage, study_name)
    spec = objective or best.user_attrs.get("objective")
    if not spec:
        raise ObjectiveError(
            f"study '{study_name}' does not record its objective (built-ins do): name it, as in "
            f"tunefleet rescore path/to/file.py:objective --study {study_name}"
        )
    recorded = (
        best.user_attrs.get("objective_args") if spec == best.user_attrs.get("objective") else None
    )
    args = {**(recorded or {}), **(objective_args or {})}
    args = {k: v for k, v in args.items() if k != "seed"}
    make = _variant_factory(spec, args)
    # The trial's own thread count: float sums, and so scores, can change with it.
    recorded_threads = best.user_attrs.get("n_threads")
    threads = int(recorded_threads) if recorded_threads else worker_threads()
    context = WorkerContext(seed=None, n_threads=threads)
    assert best.value is not None

    reproduced = None
    if "seed" in best.user_attrs:
        split = best.user_attrs.get("split_seed")
        reproduced = _evaluate(make(int(best.user_attrs["seed"]), split), best, context)
        progress(f"reproduced with the trial's own seeds: {reproduced:.6g}")
    seeds = rescore_seeds(repeats, seed)
    values = []
    for i, s in enumerate(seeds, 1):
        values.append(_evaluate(make(s, None), best, context))
        progress(f"repeat {i}/{repeats} (seed {s}): {values[-1]:.6g}")
    return RescoreResult(
        study=study.study_name,
        objective=spec,
        direction=study.direction.name.lower(),
        trial_number=best.number,
        params=dict(best.params),
        reported=float(best.value),
        seeds=seeds,
        values=values,
        reproduced=reproduced,
        objective_args=args,
        n_threads=threads,
    )


@dataclass
class StoredModelScore:
    """The best trial's stored model, scored again on its objective's validation data."""

    study: str
    objective: str
    trial_number: int
    reported: float
    score: float
    files: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "objective": self.objective,
            "trial": self.trial_number,
            "reported": self.reported,
            "stored_model_score": self.score,
            "files": self.files,
        }


def score_stored_model(
    storage: FleetStorage, study_name: str, artifacts_url: str | None = None
) -> StoredModelScore:
    """Load the best trial's stored model (``--artifacts``) and score it, without re-training.

    Raises:
        StudyError: no such study, several objectives, no completed trial, no stored model.
        ObjectiveError: the objective cannot score a stored model.
    """
    from tunefleet.artifacts import kept_twin, study_artifacts

    study, best = _best_trial(storage, study_name)
    best = kept_twin(storage.optuna, study._study_id, best)
    spec = best.user_attrs.get("objective")
    objective = load_objective(spec, best.user_attrs.get("objective_args") or {}) if spec else None
    score_saved = getattr(objective, "score_saved", None)
    if objective is None or score_saved is None:
        raise ObjectiveError(
            f"the best trial's objective ({spec or 'not recorded'}) cannot score a stored model: "
            "xgboost-breast-cancer, torch-fashion-mnist and keras-mnist can"
        )
    opened = study_artifacts(storage.optuna, study._study_id, artifacts_url)
    metas = optuna.artifacts.get_all_artifact_meta(best, storage=storage.optuna)
    if opened is None or not metas:
        raise StudyError(
            f"best trial #{best.number} of '{study_name}' has no stored model: run the study "
            "with --artifacts URL (and --save-models best or all)"
        )
    files = {}
    for meta in metas:
        with opened[1].open_reader(meta.artifact_id) as reader:
            files[meta.filename] = reader.read()
    threads = int(best.user_attrs.get("n_threads") or worker_threads())
    objective.setup(WorkerContext(seed=None, n_threads=threads))
    assert best.value is not None
    return StoredModelScore(
        study=study.study_name,
        objective=str(spec),
        trial_number=best.number,
        reported=float(best.value),
        score=float(score_saved(files)),
        files=sorted(files),
    )
