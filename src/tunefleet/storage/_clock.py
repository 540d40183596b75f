"""The one clock convention for trial timestamps, for every writer and reader of a study.

Optuna's ``RDBStorage`` (5.x and before) stamps ``datetime_start`` and ``datetime_complete`` with
``datetime.now()``: the writing machine's local wall time, naive. Stock Optuna processes cannot be
changed, so tunefleet writes the same (the fast path, the ledger's re-runs) and reads stored values
the same way: as naive local time of the machine that wrote them.

A trial's start and completion are stamped by the worker that runs it, so durations are right
whatever each machine's zone; absolute times from machines in different zones differ by their
offsets, exactly as between two stock Optuna processes. Monitoring places trials on the
database's clock instead (the ledger's ``claimed_at``) and takes only durations from these stamps.
"""

from __future__ import annotations

import datetime

__all__ = ["trial_epoch", "trial_now"]


def trial_now() -> datetime.datetime:
    """Now, as Optuna stamps a trial: naive local wall time."""
    return datetime.datetime.now()


def trial_epoch(value: datetime.datetime | None) -> float | None:
    """A stored trial timestamp (naive local time of its writer) as seconds since the epoch."""
    return None if value is None else value.timestamp()
