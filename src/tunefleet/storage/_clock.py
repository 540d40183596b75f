"""The one clock convention for trial timestamps, for every writer and reader of a study.

Optuna 5's ``RDBStorage`` stores ``datetime_start`` and ``datetime_complete`` as naive **UTC** in
the columns (its ORM model converts: ``datetime.now()`` in, naive local time out in each
``FrozenTrial``). tunefleet keeps to it: what writes the columns directly (the fast path's
functions, the ledger's re-runs) writes naive UTC; what builds a ``FrozenTrial`` from the columns
converts to naive local time, as ``RDBStorage`` does; readers that take the columns as they are
(monitoring) read them as UTC. Stored times then agree whatever each machine's time zone.
"""

from __future__ import annotations

import datetime

__all__ = ["stored_epoch", "stored_to_local", "utc_now"]


def utc_now() -> datetime.datetime:
    """Now, as a trial time column holds it: naive UTC."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def stored_to_local(value: datetime.datetime | None) -> datetime.datetime | None:
    """A stored trial time (naive UTC) as ``RDBStorage`` returns it: naive local time."""
    if value is None:
        return None
    return value.replace(tzinfo=datetime.UTC).astimezone().replace(tzinfo=None)


def stored_epoch(value: datetime.datetime | None) -> float | None:
    """A stored trial time (naive UTC) as seconds since the epoch."""
    return None if value is None else value.replace(tzinfo=datetime.UTC).timestamp()
