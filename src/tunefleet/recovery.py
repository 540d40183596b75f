"""Recovery: re-run a trial whose worker died, stopped, or (on request) whose objective failed.

A lost trial is failed with the reason stored on it (system attribute ``tunefleet:lost``, so it
is told apart from an objective's own failure), and a re-run with the same parameters is queued
as an Optuna ``WAITING`` trial (``fixed_params``, as ``study.enqueue_trial`` does) that names the
trial it repeats (``tunefleet:retry_of``). The lost trial's budget slot is given back only after
the re-run is queued, so the study never looks done in between, and the re-run takes that slot:
the exact budget holds.
"""

from __future__ import annotations

import logging

import optuna
from optuna.trial import TrialState

from tunefleet import constants
from tunefleet.storage import FleetStorage
from tunefleet.storage._ledger import RETRY_OF_ATTR

__all__ = ["ATTEMPT_ATTR", "LOST_ATTR", "RETRY_OF_ATTR", "TRACEBACK_ATTR", "requeue_trial"]

log = logging.getLogger("tunefleet.recovery")

#: Why a trial was lost (its worker died or was stopped); absent on an objective's own failures.
LOST_ATTR = constants.LOST_ATTR
#: The formatted traceback of an objective's exception (redacted, truncated).
TRACEBACK_ATTR = constants.TRACEBACK_ATTR
#: Which attempt at these parameters a trial is (1 for the first), for ``--retry-failed``.
ATTEMPT_ATTR = constants.ATTEMPT_ATTR
#: How many runs of these parameters were lost (their worker stopped beating).
LOSSES_ATTR = constants.LOSSES_ATTR
#: Lost runs of one parameter set re-run beyond ``--retry-failed``: a lost worker is usually the
#: machine's fault (a preempted node), not the parameters'.
EXTRA_LOSSES = 2


def requeue_trial(
    storage: FleetStorage,
    study_id: int,
    claim_id: int,
    trial_id: int,
    lost_reason: str | None = None,
    max_losses: int | None = None,
) -> int | None:
    """Queue a re-run of ``trial_id`` and give its slot back; return the re-run's trial id.

    With ``lost_reason``, the trial is first failed as lost, unless it finished meanwhile (its
    worker was alive after all): then it keeps its slot and nothing is queued (returns None).
    Without, the caller has already told the trial's failure (``--retry-failed``).
    The caller must have marked the claim for requeueing (``Ledger.mark_requeue``).

    With ``max_losses``, a trial whose parameters were already lost that many times (their
    objective likely kills its process: ``os._exit``, a segfault, the OOM killer) is failed
    with that reason and keeps its slot, instead of crashing worker after worker.
    """
    optuna_storage = storage.optuna
    trial = optuna_storage.get_trial(trial_id)
    losses = int(trial.system_attrs.get(LOSSES_ATTR, 0)) + (lost_reason is not None)
    if lost_reason is not None and max_losses is not None and losses > max_losses:
        if trial.state == TrialState.RUNNING:
            try:
                optuna_storage.set_trial_system_attr(
                    trial_id,
                    constants.FAIL_REASON_ATTR,
                    f"{lost_reason}, the {losses}th time with these parameters: the objective "
                    "may kill its process (os._exit, a segfault, out of memory); not re-run",
                )
                optuna_storage.set_trial_system_attr(trial_id, constants.FAILURE_KIND_ATTR, "crash")
                optuna_storage.set_trial_state_values(trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
        storage.ledger.keep_claim(claim_id)
        return None
    if lost_reason is not None:
        if trial.state == TrialState.RUNNING:
            try:
                optuna_storage.set_trial_system_attr(trial_id, LOST_ATTR, lost_reason)
                optuna_storage.set_trial_state_values(trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
            trial = optuna_storage.get_trial(trial_id)
        if trial.state != TrialState.FAIL or LOST_ATTR not in trial.system_attrs:
            if trial.state.is_finished() and LOST_ATTR in trial.system_attrs:
                # Its worker finished it between the two writes above: it was not lost after
                # all, and a finished trial keeps no mark saying so.
                storage.forget_trial_system_attrs(trial_id, [LOST_ATTR])
            storage.ledger.keep_claim(claim_id)
            return None
    rerun_id: int | None = None
    # Past the deadline a re-run would never run: it would only stay WAITING for ever.
    if storage.ledger.budget(study_id).deadline_passed:
        storage.ledger.release(claim_id)
        return None
    if trial.number not in storage.ledger.requeued_trial_numbers(study_id):
        attempt = int(trial.system_attrs.get(ATTEMPT_ATTR, 1))
        if lost_reason is None:
            attempt += 1  # a lost trial is not a failed attempt of its parameters
        # A re-run that was itself lost before its last suggest holds only some of the
        # parameters it was given: the rest are still in its own fixed_params.
        fixed = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
        template = optuna.trial.create_trial(
            state=TrialState.WAITING,
            system_attrs={
                "fixed_params": fixed,
                RETRY_OF_ATTR: trial.number,
                ATTEMPT_ATTR: attempt,
                LOSSES_ATTR: losses,
            },
            user_attrs=trial.user_attrs,
        )
        rerun_id = optuna_storage.create_new_trial(study_id, template_trial=template)
    storage.ledger.release(claim_id)
    return rerun_id
