"""Optuna samplers and pruners by the names the CLI and study spec use."""

from __future__ import annotations

import importlib.util

import optuna

from tunefleet.errors import ConfigError

__all__ = ["make_pruner", "make_sampler"]


def make_sampler(name: str, seed: int | None, n_objectives: int) -> optuna.samplers.BaseSampler:
    """Optuna's sampler called ``name``, seeded with ``seed``."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        if n_objectives > 1:
            raise ConfigError(
                "--sampler cmaes optimises one objective: use nsgaii or tpe for "
                "several --direction values"
            )
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        if importlib.util.find_spec("torch") is None:
            raise ConfigError(
                "--sampler gp needs PyTorch, which is not installed: "
                "pip install torch (or pick another --sampler)"
            )
        return optuna.samplers.GPSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if name == "nsgaii":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ConfigError(f"unknown --sampler '{name}'")  # validated earlier; kept for safety


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """Optuna's pruner called ``name`` (``none`` never prunes)."""
    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown --pruner '{name}'")
