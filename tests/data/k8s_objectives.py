"""Objectives for the Kubernetes pod-contract tests (``tests/data/k8s_objectives.py:NAME``)."""

from __future__ import annotations

import os
import time

import optuna


def pod_environment(trial: optuna.Trial) -> float:
    """Records what a pod's environment tells the objective, so a test can read it back."""
    x = trial.suggest_float("x", -1, 1)
    time.sleep(0.3)  # long enough that, as a rule, every pod of the Job gets a trial
    for name in ("TUNEFLEET_THREADS", "OMP_NUM_THREADS", "HOME"):
        trial.set_user_attr(name, os.environ.get(name))
    trial.set_user_attr("storage_in_env", "TUNEFLEET_STORAGE" in os.environ)
    return x * x
