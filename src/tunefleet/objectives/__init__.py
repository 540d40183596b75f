"""Objectives: the built-ins and user functions, behind one small interface."""

from tunefleet.objectives._base import BuiltinObjective, Objective, WorkerContext
from tunefleet.objectives._common import worker_threads
from tunefleet.objectives._loader import BUILTINS, FunctionObjective, load_objective

__all__ = [
    "BUILTINS",
    "BuiltinObjective",
    "FunctionObjective",
    "Objective",
    "WorkerContext",
    "load_objective",
    "worker_threads",
]
