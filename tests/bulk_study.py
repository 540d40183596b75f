"""Create a large finished study fast, with bulk SQL, for monitoring tests and benchmarks.

A real fleet takes minutes for 10,000 trials; this writes the same rows Optuna and tunefleet
write (trials, params, values, intermediate values, attributes, budget claims, worker registry)
in a few bulk statements, through Optuna's own table definitions.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
import uuid
from dataclasses import dataclass

import optuna
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.storages._rdb import models
from optuna.trial import TrialState
from sqlalchemy import insert, update

from tunefleet.storage import WORKER_ATTR, open_storage
from tunefleet.storage._ledger import fleet_claims, fleet_studies
from tunefleet.worker import FAIL_REASON_ATTR

__all__ = ["BulkStudy", "make_bulk_study"]

_X = FloatDistribution(-10, 10)
_Y = IntDistribution(-5, 5)
_C = CategoricalDistribution(["a", "b", "c"])
_TRIALS = models.TrialModel.__table__
_VALUE_TYPE = models.TrialValueModel.TrialValueType
_IV_TYPE = models.TrialIntermediateValueModel.TrialIntermediateValueType


@dataclass(frozen=True)
class BulkStudy:
    name: str
    n_trials: int
    states: dict[str, int]
    per_worker: dict[str, int]
    best_value: float


def make_bulk_study(
    url: str, name: str, n_trials: int, n_workers: int = 8, seed: int = 0, multi: bool = False
) -> BulkStudy:
    """A finished study of ``n_trials`` trials run by ``n_workers`` registered workers."""
    rng = random.Random(seed)
    storage = open_storage(url)
    directions = ["minimize", "maximize"] if multi else ["minimize"]
    study = optuna.create_study(storage=storage.optuna, study_name=name, directions=directions)
    sid = study._study_id
    storage.ledger.ensure_study(sid, n_trials, None)
    worker_ids = [f"bulk-host-{k}-{1000 + k}-{k:06x}" for k in range(n_workers)]
    for k, wid in enumerate(worker_ids):
        storage.ledger.register_worker(sid, wid, f"bulk-host-{k}", 1000 + k)

    start0 = time.time() - n_trials * 0.25 - 60
    clock = [start0] * n_workers
    trials, extra = [], []
    states: dict[str, int] = {}
    per_worker: dict[str, int] = {}
    best = float("inf")
    for number in range(n_trials):
        k = number % n_workers
        roll = rng.random()
        state = (
            TrialState.COMPLETE
            if roll < 0.8
            else TrialState.PRUNED
            if roll < 0.9
            else TrialState.FAIL
        )
        duration = rng.uniform(0.2, 3.0)
        begin = clock[k] + rng.uniform(0.0, 0.05)
        clock[k] = begin + duration
        x, y, c = rng.uniform(-10, 10), rng.randint(-5, 5), rng.randrange(3)
        trials.append(
            {
                "number": number,
                "study_id": sid,
                "state": state,
                "datetime_start": dt.datetime.fromtimestamp(begin),
                "datetime_complete": dt.datetime.fromtimestamp(begin + duration),
            }
        )
        value = (x - 2) ** 2 + y**2 + c
        if state == TrialState.COMPLETE:
            best = min(best, value)
        extra.append((state, begin, worker_ids[k], x, y, c, value))
        states[state.name] = states.get(state.name, 0) + 1
        per_worker[worker_ids[k]] = per_worker.get(worker_ids[k], 0) + 1

    with storage.engine.begin() as conn:
        ids = (
            conn.execute(
                insert(_TRIALS).returning(_TRIALS.c.trial_id, sort_by_parameter_order=True), trials
            )
            .scalars()
            .all()
        )
        params, values, inter, sysattrs, userattrs, claims = [], [], [], [], [], []
        for trial_id, (state, begin, wid, x, y, c, value) in zip(ids, extra, strict=True):
            for pname, dist, internal in (("x", _X, x), ("y", _Y, float(y)), ("c", _C, float(c))):
                params.append(
                    {
                        "trial_id": trial_id,
                        "param_name": pname,
                        "param_value": internal,
                        "distribution_json": distribution_to_json(dist),
                    }
                )
            sysattrs.append(
                {"trial_id": trial_id, "key": WORKER_ATTR, "value_json": json.dumps(wid)}
            )
            userattrs.append({"trial_id": trial_id, "key": "source", "value_json": '"bulk"'})
            claims.append(
                {
                    "study_id": sid,
                    "worker_id": wid,
                    "trial_id": trial_id,
                    "claimed_at": begin,
                    "requeue": 0,
                    "token": uuid.uuid4().hex,
                }
            )
            if state == TrialState.COMPLETE:
                objs = [value, -abs(x)] if multi else [value]
                for i, v in enumerate(objs):
                    values.append(
                        {
                            "trial_id": trial_id,
                            "objective": i,
                            "value": v,
                            "value_type": _VALUE_TYPE.FINITE,
                        }
                    )
            elif state == TrialState.PRUNED:
                for step in range(3):
                    inter.append(
                        {
                            "trial_id": trial_id,
                            "step": step,
                            "intermediate_value": value + 3 - step,
                            "intermediate_value_type": _IV_TYPE.FINITE,
                        }
                    )
            else:
                sysattrs.append(
                    {
                        "trial_id": trial_id,
                        "key": FAIL_REASON_ATTR,
                        "value_json": json.dumps("ValueError: bulk failure"),
                    }
                )
        conn.execute(insert(models.TrialParamModel.__table__), params)
        if values:
            conn.execute(insert(models.TrialValueModel.__table__), values)
        if inter:
            conn.execute(insert(models.TrialIntermediateValueModel.__table__), inter)
        conn.execute(insert(models.TrialSystemAttributeModel.__table__), sysattrs)
        conn.execute(insert(models.TrialUserAttributeModel.__table__), userattrs)
        conn.execute(insert(fleet_claims), claims)
        conn.execute(
            update(fleet_studies).where(fleet_studies.c.study_id == sid).values(n_claimed=n_trials)
        )
    for wid in worker_ids:
        storage.ledger.worker_finished(wid, "budget")
    storage.close()
    return BulkStudy(name, n_trials, states, per_worker, best)
