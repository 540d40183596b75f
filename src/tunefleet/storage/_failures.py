"""SQL for the failure policy (:mod:`tunefleet.failures`): counted failures, and giving back
their budget slots when a fleet stops on them.

A *counted* failure is a FAIL trial that holds a budget slot: a claim that is not being
re-queued (a trial re-run by ``--retry-failed`` or lost gave its slot to the re-run).
"""

from __future__ import annotations

import json
from typing import Any

from optuna.storages._rdb import models as optuna_models
from optuna.trial import TrialState
from sqlalchemy import and_, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from tunefleet import constants
from tunefleet.storage._ledger import Ledger, fleet_claims
from tunefleet.storage._retry import Retrier

__all__ = ["counted_failures", "give_back_failures"]

_trials = optuna_models.TrialModel.__table__
_attrs = optuna_models.TrialSystemAttributeModel.__table__


def _counted_failed(study_id: int) -> tuple[Any, Any, Any]:
    kind = _attrs.alias("kind")
    joined = fleet_claims.join(_trials, _trials.c.trial_id == fleet_claims.c.trial_id).outerjoin(
        kind,
        and_(
            kind.c.trial_id == _trials.c.trial_id,
            kind.c.key == constants.FAILURE_KIND_ATTR,
        ),
    )
    where = and_(
        fleet_claims.c.study_id == study_id,
        fleet_claims.c.requeue == 0,
        _trials.c.state == TrialState.FAIL,
    )
    return joined, where, kind


def counted_failures(engine: Engine, retrier: Retrier, study_id: int) -> dict[str, int]:
    """Counted FAIL trials of the study by kind (``exception``, ``timeout``, ...; ``other``
    for failures without a kind, written by older workers or stock Optuna)."""
    joined, where, kind = _counted_failed(study_id)

    def read() -> dict[str, int]:
        with engine.begin() as conn:
            rows = conn.execute(
                select(kind.c.value_json, func.count())
                .select_from(joined)
                .where(where)
                .group_by(kind.c.value_json)
            ).all()
        return {("other" if k is None else json.loads(k)): int(n) for k, n in rows}

    result: dict[str, int] = retrier.call(read)
    return result


def give_back_failures(
    engine: Engine, retrier: Retrier, ledger: Ledger, study_id: int, note: str
) -> int:
    """Give back the slots of every counted failure, marking each trial with ``note``
    (``tunefleet:given_back``). Returns how many were given back. Safe to run concurrently:
    a slot is released once, whoever gets there first."""
    joined, where, _ = _counted_failed(study_id)

    def read() -> list[tuple[int, int]]:
        with engine.begin() as conn:
            rows = conn.execute(
                select(fleet_claims.c.claim_id, _trials.c.trial_id).select_from(joined).where(where)
            ).all()
        return [(int(r[0]), int(r[1])) for r in rows]

    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    given = read()
    for claim_id, trial_id in given:

        def mark(trial_id: int = trial_id) -> None:
            # Optuna refuses attributes on finished trials; this one is tunefleet's own note.
            with engine.begin() as conn:
                conn.execute(
                    dialect.insert(_attrs)
                    .values(
                        trial_id=trial_id,
                        key=constants.GIVEN_BACK_ATTR,
                        value_json=json.dumps(note),
                    )
                    .on_conflict_do_nothing()
                )

        retrier.call(mark)
        ledger.release(claim_id)
    return len(given)
