"""``tunefleet status``: the study's snapshot, which is the one progress model of
:mod:`tunefleet.summary` (kept here under the names the monitoring package always used)."""

from __future__ import annotations

from tunefleet.monitor._pareto import pareto_front
from tunefleet.monitor._trials import TrialRow
from tunefleet.summary import RATE_WINDOW_S, StudyStatus, WorkerRow, read_status

__all__ = ["RATE_WINDOW_S", "BestTrial", "StudyStatus", "WorkerRow", "pareto_front", "read_status"]

#: A best trial is a trial like any other: the same object ``trials`` prints.
BestTrial = TrialRow
