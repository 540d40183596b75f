"""Save your objective's model as an artifact of its trial (NumPy and the standard library).

A ridge regression fitted in closed form on a synthetic data set, tuned for its penalty. After
fitting, the objective saves the weights with ``tunefleet.artifacts.save`` — before returning
its value, so the model is in the store before the trial is COMPLETE. With ``--save-models
best`` (the default) only the best trial's model stays.

Run it:

    tunefleet run examples/saving_models.py:objective --n-trials 20 --workers 2 \\
        --artifacts file:///tmp/ridge-models
    tunefleet best --study objective --download best-model/
    python -c "import numpy as np; print(np.load('best-model/weights.npy'))"
"""

from __future__ import annotations

import functools
import io

import numpy as np
import optuna

import tunefleet.artifacts


@functools.lru_cache(maxsize=1)
def make_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 10))
    y = x @ rng.normal(size=10) + rng.normal(scale=2.0, size=400)
    return x[:300], y[:300], x[300:], y[300:]


def objective(trial: optuna.Trial) -> float:
    """Validation mean squared error of a ridge regression (minimize)."""
    train_x, train_y, valid_x, valid_y = make_data()
    penalty = trial.suggest_float("penalty", 1e-3, 1e3, log=True)
    eye = np.eye(train_x.shape[1])
    weights = np.linalg.solve(train_x.T @ train_x + penalty * eye, train_x.T @ train_y)
    mse = float(np.mean((valid_x @ weights - valid_y) ** 2))

    buffer = io.BytesIO()
    np.save(buffer, weights)
    tunefleet.artifacts.save(trial, buffer.getvalue(), "weights.npy")  # bytes need a name
    return mse
