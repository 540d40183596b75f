"""tunefleet: distributed hyperparameter tuning on Optuna, PostgreSQL and Kubernetes."""

from importlib.metadata import PackageNotFoundError, version

from tunefleet.config import StudySpec, load_spec
from tunefleet.errors import TunefleetError
from tunefleet.objectives import Objective, load_objective
from tunefleet.storage import FleetStorage, open_storage
from tunefleet.worker import Worker, WorkerResult

try:
    __version__ = version("tunefleet")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

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
