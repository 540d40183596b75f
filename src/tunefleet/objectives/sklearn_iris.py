"""``sklearn-iris``: an SVC or a random forest on iris (the reference tutorial's search space).

Search space: ``classifier`` SVC | RandomForest; for SVC ``svc_c`` in [1e-10, 1e10] (log); for the
forest ``rf_max_depth`` in [2, 32] (log, int) with 10 trees. Score: mean accuracy over seeded,
stratified 3-fold cross-validation, so the same parameters always give the same score. The mean
so far is reported after each fold, so a pruner can stop a hopeless trial early.
"""

from __future__ import annotations

import pickle
from typing import Any, ClassVar

import numpy as np
import optuna
from sklearn.base import clone
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import SVC

from tunefleet import artifacts
from tunefleet.errors import ObjectiveError
from tunefleet.objectives._base import BuiltinObjective, WorkerContext
from tunefleet.objectives._common import (
    limit_blas_threads,
    objective_threads,
    record_trial,
    require_positive,
    trial_seed,
)

__all__ = ["SklearnIris"]


class SklearnIris(BuiltinObjective):
    name = "sklearn-iris"
    directions = ("maximize",)
    extra = "sklearn"
    defaults: ClassVar[dict[str, Any]] = {
        "n_folds": 3,
        "n_estimators": 10,
        "cv_seed": 0,
        "seed": -1,  # -1: derived from the study seed and the trial number
        "n_threads": 0,  # 0: the worker's share of the CPUs
    }
    #: The setting that picks the data split (``tunefleet rescore`` varies it).
    split_arg: ClassVar[str] = "cv_seed"

    def __init__(self, **args: Any) -> None:
        super().__init__(**args)
        require_positive(self, "n_estimators")
        if self.args["n_folds"] < 2:
            raise ObjectiveError(
                f"invalid --objective-arg n_folds={self.args['n_folds']!r} for '{self.name}': "
                "cross-validation needs at least 2 folds"
            )

    def setup(self, context: WorkerContext) -> None:
        super().setup(context)
        self.n_threads = objective_threads(self)
        limit_blas_threads(self.n_threads)
        # Loaded once per worker process, not once per trial (the tutorial reloads every trial).
        self._x, self._y = load_iris(return_X_y=True)
        folds = StratifiedKFold(
            n_splits=self.args["n_folds"], shuffle=True, random_state=self.args["cv_seed"]
        )
        self._folds = list(folds.split(self._x, self._y))

    def __call__(self, trial: optuna.Trial) -> float:
        seed = trial_seed(self, trial)
        record_trial(
            self,
            trial,
            seed=seed,
            split_seed=self.args["cv_seed"],
            device="cpu",
            n_threads=self.n_threads,
        )
        classifier = trial.suggest_categorical("classifier", ["SVC", "RandomForest"])
        model: Any
        if classifier == "SVC":
            svc_c = trial.suggest_float("svc_c", 1e-10, 1e10, log=True)
            model = SVC(C=svc_c, gamma="auto")
        else:
            max_depth = trial.suggest_int("rf_max_depth", 2, 32, log=True)
            model = RandomForestClassifier(
                max_depth=max_depth,
                n_estimators=self.args["n_estimators"],
                random_state=seed,
                # On 150 rows, parallel trees and folds are slower than serial (measured 1.35-2x
                # for process-parallel folds), so one job; the CPU share goes to other workers.
                n_jobs=1,
            )
        scores: list[float] = []
        for fold, (train, test) in enumerate(self._folds):
            fitted = clone(model).fit(self._x[train], self._y[train])
            scores.append(float(fitted.score(self._x[test], self._y[test])))
            trial.report(float(np.mean(scores)), fold)
            if trial.should_prune():
                raise optuna.TrialPruned()
        accuracy = float(np.mean(scores))
        if artifacts.saving_models(trial):
            # The score is a cross-validation mean; the saved model is the same classifier
            # fitted on every example (pickle.load it with the same scikit-learn version).
            final = clone(model).fit(self._x, self._y)
            artifacts.save_model(
                trial,
                {"model.pkl": pickle.dumps(final)},
                accuracy,
                metric="mean cross-validation accuracy; model.pkl is fitted on all 150 rows",
            )
        return accuracy
