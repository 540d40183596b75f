"""What every built-in shares: its CPU share, its seeds, and what it records on each trial.

Built-ins record on every trial (user attributes, visible in optuna-dashboard): ``seed`` (the
trial's own RNG seed), ``split_seed`` (which train/validation split it scored on), ``device``,
``n_threads``, and ``objective`` / ``objective_args``, so ``tunefleet rescore`` can rebuild the
objective from the study alone.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import optuna

from tunefleet import constants
from tunefleet.errors import ConfigError, ObjectiveError
from tunefleet.objectives._base import BuiltinObjective, cpu_count
from tunefleet.objectives._datasets import data_root, require_dataset

__all__ = [
    "THREADS_ENV",
    "cgroup_cpu_limit",
    "limit_blas_threads",
    "objective_threads",
    "record_trial",
    "require_positive",
    "trial_seed",
    "worker_threads",
]

log = logging.getLogger("tunefleet.objectives")

#: Threads for each worker's numerical libraries; ``tunefleet run`` sets it to its workers' share.
THREADS_ENV = constants.THREADS_ENV

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (
    Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
)


def cgroup_cpu_limit() -> float | None:
    """The container's CPU limit (a pod's ``resources.limits.cpu``), or None when unlimited."""
    try:
        quota, period = _CGROUP_V2.read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(_CGROUP_V1[0].read_text())
        period_us = int(_CGROUP_V1[1].read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def worker_threads() -> int:
    """How many threads one worker's numerical libraries should use: its share of the CPUs.

    ``$TUNEFLEET_THREADS`` if set (``tunefleet run`` sets it to CPUs / workers); otherwise the
    CPUs this process may use, capped by a container's CPU limit (rounded down: a thread more
    than the quota is throttled by the kernel).

    Raises:
        ConfigError: ``$TUNEFLEET_THREADS`` is not a positive integer.
    """
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(
                f"invalid ${THREADS_ENV}={raw!r}: set it to a positive number of threads, "
                "or unset it"
            )
        return int(raw)
    n = cpu_count()
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.floor(limit)))
    return max(1, n)


def objective_threads(objective: BuiltinObjective) -> int:
    """The ``n_threads`` setting if the user gave one (> 0), else the worker's share."""
    requested = int(objective.args.get("n_threads", 0))
    return requested if requested > 0 else max(1, objective.context.n_threads)


def limit_blas_threads(n_threads: int) -> None:
    """Cap NumPy's BLAS/OpenMP pools, which otherwise start one thread per core in every worker."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return
    threadpool_limits(n_threads)


def trial_seed(objective: BuiltinObjective, trial: optuna.Trial) -> int:
    """The trial's RNG seed: the ``seed`` setting when given (rescore), else from study + trial."""
    fixed = int(objective.args.get("seed", -1))
    return fixed if fixed >= 0 else objective.context.trial_seed(trial)


def record_trial(objective: BuiltinObjective, trial: optuna.Trial, **attrs: Any) -> None:
    """Record the objective, its settings and the trial's seeds/device on the trial."""
    trial.set_user_attr("objective", objective.name)
    trial.set_user_attr("objective_args", dict(objective.args))
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def require_positive(objective: BuiltinObjective, *keys: str) -> None:
    """Reject a size setting below 1 (``epochs=0`` would score an untrained model)."""
    for key in keys:
        if objective.args[key] < 1:
            raise ObjectiveError(
                f"invalid --objective-arg {key}={objective.args[key]!r} for '{objective.name}': "
                "must be at least 1"
            )


class ImageObjective(BuiltinObjective):
    """A built-in trained on one of the IDX image data sets (MNIST, FashionMNIST).

    Shares the settings both image objectives have and checks, when the objective is built —
    before any study or trial exists — that its data set is on disk, so a missing one is one
    error, not a failed trial per worker. Subclasses set ``dataset`` and may change defaults.
    """

    dataset: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = {
        "epochs": 10,
        "batch_size": 128,
        "n_train": 128 * 30,
        "n_valid": 128 * 10,
        "split_seed": 0,
        "seed": -1,  # -1: derived from the study seed and the trial number
        "n_threads": 0,  # 0: the worker's share of the CPUs
        "device": "auto",
        "data_dir": "",  # "": $TUNEFLEET_DATA_DIR, else ~/.cache/tunefleet/data
    }

    def __init__(self, **args: Any) -> None:
        super().__init__(**args)
        require_positive(self, "epochs", "batch_size", "n_train", "n_valid")
        self.root = data_root(self.args["data_dir"])
        require_dataset(self.dataset, self.root)

    def draw(self, rng: np.random.Generator, available: int, key: str) -> np.ndarray[Any, Any]:
        """A draw of ``args[key]`` of ``available`` examples from the split's seeded ``rng`` (all
        of them, with a warning, when fewer are there): every trial uses the same ones."""
        wanted = self.args[key]
        if wanted > available:
            log.warning(
                "%s: %s=%d but %s has %d examples there: using all %d",
                self.name,
                key,
                wanted,
                self.dataset,
                available,
                available,
            )
        return rng.permutation(available)[:wanted]
