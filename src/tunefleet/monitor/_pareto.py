"""The Pareto front of a multi-objective study, from its values alone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pareto_front"]


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates (ties all stay), as Optuna defines it.

    Points are sorted lexicographically (as losses), so a point can only be dominated by one
    before it, and only a point already on the front needs checking: O(n · front size).
    """
    if not points:
        return []
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    losses = np.asarray(points, dtype=float) * sign
    order = np.lexsort(losses.T[::-1])
    front: list[int] = []
    front_losses = np.empty((0, losses.shape[1]))
    for index in order:
        p = losses[index]
        dominated = np.any(np.all(front_losses <= p, axis=1) & np.any(front_losses < p, axis=1))
        if not dominated:
            front.append(int(index))
            front_losses = np.vstack([front_losses, p])
    return sorted(front)
