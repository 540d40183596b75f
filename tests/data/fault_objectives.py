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


def typed(trial: optuna.Trial, **settings: object) -> float:
    """Records the type and value of every objective argument it got in $RECORD_FILE."""
    import json

    x = trial.suggest_float("x", 0, 1)
    seen = {k: [type(v).__name__, repr(v)] for k, v in sorted(settings.items())}
    with open(os.environ["RECORD_FILE"], "a") as f:
        f.write(json.dumps(seen) + "\n")
    return x


def crashes(trial: optuna.Trial) -> float:
    """Kills its own worker process: a worker that fails, not a trial."""
    os._exit(1)


def prints_a_url(trial: optuna.Trial) -> float:
    """Prints $LEAK (a URL with a password), as careless user code does."""
    print(f"connecting to {os.environ['LEAK']}", flush=True)
    return trial.suggest_float("x", 0, 1)
