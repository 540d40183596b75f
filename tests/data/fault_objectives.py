"""Objectives for the fault tests of issue 11."""

from __future__ import annotations

import os
import time

import optuna


def chatty(trial: optuna.Trial) -> float:
    """Prints a lot on every trial (a closed stdout must not fail it), then sleeps $SLEEP_S."""
    x = trial.suggest_float("x", 0, 1)
    for i in range(50):
        print(f"trial {trial.number} step {i}: x={x}", flush=True)
    time.sleep(float(os.environ.get("SLEEP_S", "0.3")))
    return x
