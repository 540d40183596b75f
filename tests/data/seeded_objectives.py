"""User objectives that opt in to `tunefleet rescore` (or do not), for the rescore tests."""

from __future__ import annotations

import optuna


def seeded(trial: optuna.Trial, seed: int = 0, scale: float = 1.0) -> float:
    """A score that depends on the seed in a known way: x + seed / 100, times scale."""
    x = trial.suggest_float("x", 0, 1)
    trial.set_user_attr("seed", seed)
    return scale * (x + seed / 100)


def unseeded(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0, 1)
