"""The tables monitoring reads, and the few SQL expressions it needs on both stores.

Monitoring reads Optuna's tables and tunefleet's ledger with plain SQL, a handful of grouped
queries, so that ``status`` stays fast on a study with tens of thousands of trials where loading
every trial through Optuna would take seconds.

Clocks: the ``datetime_start``/``datetime_complete`` columns hold naive UTC, for stock Optuna 5 and
tunefleet alike (:mod:`tunefleet.storage._clock`): read them with :func:`to_epoch`,
:func:`to_local` and compare them with :func:`stored_now`. The ledger uses the database's clock.
A trial's claim is taken just before the trial is created, so ``claimed_at`` is its start on the
database's clock, and ``claimed_at + (datetime_complete - datetime_start)`` its end: durations are
taken from one worker's clock, so skewed worker clocks cancel out.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from optuna.storages._rdb import models as optuna_models
from sqlalchemy import Float
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import FunctionElement

from tunefleet.storage.read import claims_table as fleet_claims
from tunefleet.storage.read import epoch_now, stored_epoch, stored_to_local, utc_now
from tunefleet.storage.read import fleet_table as fleet_studies
from tunefleet.storage.read import workers_table as fleet_workers

__all__ = [
    "claims",
    "decode_json",
    "directions_t",
    "epoch_now",
    "fleet",
    "stored_now",
    "studies",
    "system_attrs",
    "to_epoch",
    "to_local",
    "trial_seconds",
    "trial_value",
    "trials",
    "values",
    "workers",
]

studies = optuna_models.StudyModel.__table__
directions_t = optuna_models.StudyDirectionModel.__table__
trials = optuna_models.TrialModel.__table__
values = optuna_models.TrialValueModel.__table__
system_attrs = optuna_models.TrialSystemAttributeModel.__table__
fleet = fleet_studies
claims = fleet_claims
workers = fleet_workers

_TrialValueType = optuna_models.TrialValueModel.TrialValueType


class trial_seconds(FunctionElement[float]):
    """``end - start`` in seconds, for two timestamp columns."""

    type = Float()
    inherit_cache = True


@compiles(trial_seconds, "postgresql")
def _trial_seconds_pg(element: trial_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = list(element.clauses)
    return (
        f"CAST(EXTRACT(EPOCH FROM ({compiler.process(end, **kw)} - "
        f"{compiler.process(start, **kw)})) AS DOUBLE PRECISION)"
    )


@compiles(trial_seconds, "sqlite")
def _trial_seconds_sqlite(element: trial_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = list(element.clauses)
    return (
        f"((julianday({compiler.process(end, **kw)}) - "
        f"julianday({compiler.process(start, **kw)})) * 86400.0)"
    )


def to_epoch(value: dt.datetime | None) -> float | None:
    """A trial time column's value (naive UTC) as seconds since the epoch."""
    return stored_epoch(value)


def to_local(value: dt.datetime | None) -> dt.datetime | None:
    """A trial time column's value as a ``FrozenTrial`` holds it (naive local time)."""
    return stored_to_local(value)


def stored_now() -> dt.datetime:
    """Now, comparable with the trial time columns."""
    return utc_now()


def decode_json(raw: str | None) -> Any:
    """A ``value_json`` column's value; text that is not JSON is returned as it is."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def trial_value(value: float | None, value_type: Any) -> float:
    """One objective value as Optuna stores it (infinities have no ``value``)."""
    if value_type == _TrialValueType.INF_POS:
        return math.inf
    if value_type == _TrialValueType.INF_NEG:
        return -math.inf
    return float(value) if value is not None else math.nan
