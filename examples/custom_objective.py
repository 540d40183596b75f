"""Write your own objective: a runnable example (NumPy only).

A logistic regression trained by gradient descent on a synthetic data set, tuned for learning
rate and L2 penalty. It shows the four habits that make an objective behave well in a fleet:

1. Settings as keyword arguments with defaults: ``--objective-arg epochs=50`` sets one.
2. Expensive set-up (here: making the data) once per worker process, not once per trial.
3. A report per epoch and ``trial.should_prune()``, so ``--pruner median`` can stop bad trials.
4. A ``seed`` argument used for everything random, the train/validation split included. It makes
   the study repeatable, and it is the hook ``tunefleet rescore`` uses to re-evaluate the best
   trial with other seeds.

Run it:

    tunefleet run examples/custom_objective.py:objective --direction maximize --n-trials 40
    tunefleet rescore examples/custom_objective.py:objective --study objective --repeats 10
"""

from __future__ import annotations

import functools

import numpy as np
import optuna


@functools.lru_cache(maxsize=1)
def make_data(n: int = 2000, d: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """The data set, built once per process (a real objective would read files here)."""
    rng = np.random.default_rng(12345)
    x = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    y = (x @ w + rng.normal(scale=2.0, size=n) > 0).astype(float)
    return x, y


def objective(trial: optuna.Trial, epochs: int = 30, n_train: int = 400, seed: int = 0) -> float:
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    l2 = trial.suggest_float("l2", 1e-6, 1.0, log=True)
    trial.set_user_attr("seed", seed)  # lets `tunefleet rescore` reproduce this very trial

    x, y = make_data()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))  # the split depends on the seed too
    train, valid = order[:n_train], order[n_train:]
    w = rng.normal(scale=0.01, size=x.shape[1])

    accuracy = 0.0
    for epoch in range(epochs):
        p = 1 / (1 + np.exp(-x[train] @ w))
        w -= lr * (x[train].T @ (p - y[train]) / len(train) + l2 * w)
        accuracy = float(np.mean((x[valid] @ w > 0) == y[valid]))
        trial.report(accuracy, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return accuracy
