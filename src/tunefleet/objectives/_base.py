"""What a worker runs for each trial: the :class:`Objective` interface."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import optuna

from tunefleet.errors import ObjectiveError

__all__ = ["BuiltinObjective", "Objective", "WorkerContext"]


@dataclass(frozen=True)
class WorkerContext:
    """What an objective may know about the worker that runs it."""

    seed: int | None = None
    n_threads: int = 1

    def trial_seed(self, trial: optuna.Trial) -> int:
        """A seed for a trial's own randomness: fixed by the study seed and the trial number."""
        base = 0 if self.seed is None else self.seed
        return (base * 1_000_003 + trial.number) % (2**31 - 1)


class Objective(ABC):
    """An objective: set up once per worker process, then called once per trial.

    ``directions`` is the objective's own direction(s), or ``None`` when the user decides (a plain
    function: minimize unless ``--direction`` says otherwise, as in Optuna).
    """

    name: str
    directions: tuple[str, ...] | None = None

    def setup(self, context: WorkerContext) -> None:  # noqa: B027 - optional hook
        """Load data and anything else that is costly, once per worker process."""

    @abstractmethod
    def __call__(self, trial: optuna.Trial) -> float | Sequence[float]:
        """Run one trial and return its value(s); raise ``optuna.TrialPruned`` to prune."""


class BuiltinObjective(Objective):
    """A built-in objective: settings with defaults, data loaded once in :meth:`setup`.

    Subclasses list their settings in ``defaults``; ``--objective-arg`` may change only those.
    """

    defaults: ClassVar[Mapping[str, Any]] = {}
    #: The pip extra that brings this objective's framework, for the "install" message.
    extra: ClassVar[str] = ""

    def __init__(self, **args: Any) -> None:
        unknown = sorted(set(args) - set(self.defaults))
        if unknown:
            accepted = ", ".join(sorted(self.defaults)) or "none"
            raise ObjectiveError(
                f"built-in objective '{self.name}' has no setting '{unknown[0]}': "
                f"its settings are {accepted}"
            )
        self.args: dict[str, Any] = {**self.defaults, **args}
        for key, value in self.args.items():
            default = self.defaults[key]
            if type(default) is float and type(value) is int:
                value = self.args[key] = float(value)
            if type(value) is not type(default):
                raise ObjectiveError(
                    f"invalid --objective-arg {key}={value!r} for '{self.name}': "
                    f"expected a {type(default).__name__} like {default!r}"
                )
        self.context = WorkerContext()

    def setup(self, context: WorkerContext) -> None:
        self.context = context


def cpu_count() -> int:
    """CPUs this process may use (respects affinity masks and container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
