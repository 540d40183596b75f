"""Objectives for the monitoring tests: every trial outcome, deterministically by trial number."""

from __future__ import annotations

import time

import optuna


def mixed(trial: optuna.Trial) -> float:
    """Trial n completes, except: n % 5 == 1 fails, n % 5 == 3 is pruned at step 1."""
    x = trial.suggest_float("x", -5, 5)
    kind = trial.suggest_categorical("kind", ["a", "b"])
    trial.set_user_attr("kind_was", kind)
    time.sleep(0.05)
    if trial.number % 5 == 1:
        raise RuntimeError(f"trial {trial.number} broke on purpose")
    for step in range(3):
        trial.report(x * x + 2 - step, step)
        if step == 1 and trial.number % 5 == 3:
            raise optuna.TrialPruned()
    return x * x + (0.5 if kind == "b" else 0.0)


def always_fails(trial: optuna.Trial) -> float:
    trial.suggest_float("x", 0, 1)
    raise ValueError("this objective always fails")


def two_objectives(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", 0, 1)
    y = trial.suggest_float("y", 0, 1)
    return x + y / 10, (1 - x) ** 2 + y / 10
