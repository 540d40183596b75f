"""Watching a study: its status, its best trials, every trial, a report, the dashboard.

Everything here reads a storage that workers are writing, from any machine that can reach it,
through the storage's public read API (:mod:`tunefleet.storage.read`), and never changes a study.
``status`` and ``studies`` read grouped counts with plain SQL, so they stay fast on studies with
tens of thousands of trials.

Names are imported on first use (``monitor.read_status``), so that importing one submodule, or
``tunefleet --help``, does not pull in Optuna, SQLAlchemy and plotting for every other.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunefleet.monitor._dashboard import dashboard_url, is_loopback, start_dashboard
    from tunefleet.monitor._load import load_frozen_trials
    from tunefleet.monitor._render import (
        format_duration,
        format_trials_table,
        render_best,
        render_status,
        render_studies,
    )
    from tunefleet.monitor._report import Report, build_report, write_report
    from tunefleet.monitor._status import (
        RATE_WINDOW_S,
        BestTrial,
        StudyStatus,
        WorkerRow,
        pareto_front,
        read_status,
    )
    from tunefleet.monitor._studies import (
        StudyOverview,
        StudyRef,
        list_studies,
        open_existing_storage,
        resolve_study,
    )
    from tunefleet.monitor._trials import (
        TRIAL_STATES,
        TrialRow,
        best_trials,
        load_trials,
        parse_states,
        trials_to_csv,
        trials_to_json,
    )

_WHERE = {
    "_dashboard": ("dashboard_url", "is_loopback", "start_dashboard"),
    "_load": ("load_frozen_trials",),
    "_render": (
        "format_duration",
        "format_trials_table",
        "render_best",
        "render_status",
        "render_studies",
    ),
    "_report": ("Report", "build_report", "write_report"),
    "_status": (
        "RATE_WINDOW_S",
        "BestTrial",
        "StudyStatus",
        "WorkerRow",
        "pareto_front",
        "read_status",
    ),
    "_studies": (
        "StudyOverview",
        "StudyRef",
        "list_studies",
        "open_existing_storage",
        "resolve_study",
    ),
    "_trials": (
        "TRIAL_STATES",
        "TrialRow",
        "best_trials",
        "load_trials",
        "parse_states",
        "trials_to_csv",
        "trials_to_json",
    ),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = [
    "RATE_WINDOW_S",
    "TRIAL_STATES",
    "BestTrial",
    "Report",
    "StudyOverview",
    "StudyRef",
    "StudyStatus",
    "TrialRow",
    "WorkerRow",
    "best_trials",
    "build_report",
    "dashboard_url",
    "format_duration",
    "format_trials_table",
    "is_loopback",
    "list_studies",
    "load_frozen_trials",
    "load_trials",
    "open_existing_storage",
    "pareto_front",
    "parse_states",
    "read_status",
    "render_best",
    "render_status",
    "render_studies",
    "resolve_study",
    "start_dashboard",
    "trials_to_csv",
    "trials_to_json",
    "write_report",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'tunefleet.monitor' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"tunefleet.monitor.{module}"), name)
    globals()[name] = value
    return value
