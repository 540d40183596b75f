"""Load a study's trials in six bulk queries: what Optuna's ``get_all_trials`` returns, faster.

Optuna's ``RDBStorage.get_all_trials`` builds ORM objects for every row and parses each
parameter's distribution JSON twice; on 10,000 trials that is about 4 s. Reading the same rows
with plain SQL and parsing each distinct distribution once returns equal ``FrozenTrial`` objects
(a test compares the two) in a fraction of that, which keeps ``trials`` and ``report`` quick.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Select, Table, select
from sqlalchemy.engine import Connection

from tunefleet.monitor import _sql as q
from tunefleet.storage import FleetStorage
from tunefleet.storage.read import read

__all__ = ["load_frozen_trials"]

_params = models.TrialParamModel.__table__
_inter = models.TrialIntermediateValueModel.__table__
_user = models.TrialUserAttributeModel.__table__
_Value = models.TrialValueModel
_Inter = models.TrialIntermediateValueModel


@lru_cache(maxsize=1024)
def _distribution(raw: str) -> BaseDistribution:
    return json_to_distribution(raw)


def load_frozen_trials(
    storage: FleetStorage, study_id: int, states: Sequence[TrialState] | None = None
) -> list[FrozenTrial]:
    """Every trial of the study (or those in ``states``), ordered by number."""
    t = q.trials
    where = [t.c.study_id == study_id]
    if states:
        where.append(t.c.state.in_(list(states)))

    def children(table: Table, *columns: Any) -> Select[Any]:
        return (
            select(table.c.trial_id, *columns)
            .select_from(table.join(t, t.c.trial_id == table.c.trial_id))
            .where(*where)
        )

    def query(conn: Connection) -> tuple[Any, ...]:
        rows = conn.execute(
            select(
                t.c.trial_id,
                t.c.number,
                t.c.state,
                t.c.datetime_start,
                t.c.datetime_complete,
            ).where(*where)
        ).all()
        params = _group(
            conn,
            children(
                _params, _params.c.param_name, _params.c.param_value, _params.c.distribution_json
            ).order_by(_params.c.param_id),
        )
        values = _group(
            conn,
            children(q.values, q.values.c.objective, q.values.c.value, q.values.c.value_type),
        )
        inter = _group(
            conn,
            children(
                _inter,
                _inter.c.step,
                _inter.c.intermediate_value,
                _inter.c.intermediate_value_type,
            ),
        )
        user = _group(conn, children(_user, _user.c.key, _user.c.value_json))
        system = _group(
            conn, children(q.system_attrs, q.system_attrs.c.key, q.system_attrs.c.value_json)
        )
        return rows, params, values, inter, user, system

    rows, params, values, inter, user, system = read(storage, query)

    trials = []
    for trial_id, number, state, start, complete in rows:
        dists = {name: _distribution(raw) for name, _v, raw in params.get(trial_id, ())}
        trial_values: list[float] | None = None
        if trial_id in values:
            trial_values = [0.0] * len(values[trial_id])
            for objective, value, value_type in values[trial_id]:
                trial_values[objective] = _Value.stored_repr_to_value(value, value_type)
        trials.append(
            FrozenTrial(
                number=number,
                state=state,
                value=None,
                values=trial_values,
                datetime_start=q.to_local(start),
                datetime_complete=q.to_local(complete),
                params={
                    name: dists[name].to_external_repr(v)
                    for name, v, _raw in params.get(trial_id, ())
                },
                distributions=dists,
                user_attrs={k: json.loads(v) for k, v in user.get(trial_id, ())},
                system_attrs={k: json.loads(v) for k, v in system.get(trial_id, ())},
                intermediate_values={
                    step: _Inter.stored_repr_to_intermediate_value(v, kind)
                    for step, v, kind in inter.get(trial_id, ())
                },
                trial_id=trial_id,
            )
        )
    trials.sort(key=lambda trial: trial.number)
    return trials


def _group(conn: Connection, query: Select[Any]) -> dict[int, list[tuple[Any, ...]]]:
    """Rows of a child table by trial id (the rest of each row as a tuple)."""
    out: dict[int, list[tuple[Any, ...]]] = {}
    for row in conn.execute(query):
        out.setdefault(row[0], []).append(tuple(row[1:]))
    return out
