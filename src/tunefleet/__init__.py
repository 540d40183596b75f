"""tunefleet: distributed hyperparameter tuning on Optuna, PostgreSQL and Kubernetes.

The public names below are imported on first use, so that ``tunefleet --help`` (which imports
this package) does not load Optuna and SQLAlchemy.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunefleet.config import StudySpec, load_spec
    from tunefleet.errors import TunefleetError
    from tunefleet.objectives import Objective, load_objective
    from tunefleet.storage import FleetStorage, open_storage
    from tunefleet.worker import Worker, WorkerResult

try:
    __version__ = version("tunefleet")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

_MODULE_OF = {
    "FleetStorage": "tunefleet.storage",
    "Objective": "tunefleet.objectives",
    "StudySpec": "tunefleet.config",
    "TunefleetError": "tunefleet.errors",
    "Worker": "tunefleet.worker",
    "WorkerResult": "tunefleet.worker",
    "load_objective": "tunefleet.objectives",
    "load_spec": "tunefleet.config",
    "open_storage": "tunefleet.storage",
}

__all__ = [
    "FleetStorage",
    "Objective",
    "StudySpec",
    "TunefleetError",
    "Worker",
    "WorkerResult",
    "__version__",
    "load_objective",
    "load_spec",
    "open_storage",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'tunefleet' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
