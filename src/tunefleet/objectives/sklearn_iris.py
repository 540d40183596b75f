"""``sklearn-iris``: an SVC or a random forest on iris (the reference tutorial's search space).

Search space: ``classifier`` SVC | RandomForest; for SVC ``svc_c`` in [1e-10, 1e10] (log); for the
forest ``rf_max_depth`` in [2, 32] (log, int) with 10 trees. Score: mean accuracy over seeded,
stratified 3-fold cross-validation, so the same parameters always give the same score.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import optuna
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.svm import SVC

from tunefleet.objectives._base import BuiltinObjective, WorkerContext

__all__ = ["SklearnIris"]


class SklearnIris(BuiltinObjective):
    name = "sklearn-iris"
    directions = ("maximize",)
    extra = "sklearn"
    defaults: ClassVar[dict[str, Any]] = {"n_folds": 3, "n_estimators": 10, "cv_seed": 0}

    def setup(self, context: WorkerContext) -> None:
        super().setup(context)
        # Loaded once per worker process, not once per trial (the tutorial reloads every trial).
        self._x, self._y = load_iris(return_X_y=True)
        self._folds = StratifiedKFold(
            n_splits=self.args["n_folds"], shuffle=True, random_state=self.args["cv_seed"]
        )

    def __call__(self, trial: optuna.Trial) -> float:
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
                random_state=self.context.trial_seed(trial),
                n_jobs=1,
            )
        # n_jobs=1: on 150 rows, process-parallel CV is slower than serial (measured 1.35-2x).
        scores = cross_val_score(model, self._x, self._y, cv=self._folds, n_jobs=1)
        return float(np.mean(scores))
