"""When the objective fails: stop a fleet whose objective is broken, and say where it broke.

The policy is stored with the study (study system attribute ``tunefleet:failure_policy``), so
every worker — local process or pod, started with whatever flags — applies the same one:

* *broken*: the study's first ``broken_after`` (3) counted trials all failed by an objective
  exception (or a crash of its process) and none completed or was pruned;
* ``max_failures``: more than N counted failures of any kind (``--max-failures``; default
  unlimited), as Katib's ``maxFailedTrialCount``.

The worker that sees either writes a stop (``tunefleet:stopped``) that every worker of the same
run (``TUNEFLEET_FLEET_ID``: one ``tunefleet run``, one Kubernetes Job; a lone worker is its own
run) reads — after its next failure, or from its heartbeat thread — and exits with
``ExitCode.OBJECTIVE_BROKEN``. The stopping worker gives the failed trials' budget slots back
(they stay FAIL in Optuna, marked ``tunefleet:given_back``), so once the objective is fixed the
same command runs the full budget: a worker of a later run clears the stop and starts afresh.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from tunefleet import constants
from tunefleet.storage import FleetStorage
from tunefleet.storage._failures import counted_failures, give_back_failures

__all__ = [
    "BROKEN_AFTER",
    "FailurePolicy",
    "Stop",
    "TracebackFilter",
    "check_failures",
    "clear_stop",
    "read_stop",
    "store_policy",
]

log = logging.getLogger("tunefleet.failures")

#: A study whose first this-many counted trials all fail by an exception is broken.
BROKEN_AFTER = 3
#: Failure kinds that say the objective itself is broken (a timeout or a bad value is a result).
BROKEN_KINDS = ("exception", "crash")


@dataclass(frozen=True)
class FailurePolicy:
    broken_after: int = BROKEN_AFTER
    max_failures: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"broken_after": self.broken_after, "max_failures": self.max_failures}


@dataclass(frozen=True)
class Stop:
    """A fleet stopped on failures: why, which run stopped, and the first error's details."""

    reason: str
    fleet: str
    stop_id: str
    error: str | None = None


def store_policy(storage: FleetStorage, study_id: int, max_failures: int | None) -> FailurePolicy:
    """The study's policy: ``max_failures`` when given (stored for every worker), else the
    stored one, else the default."""
    attrs = storage.optuna.get_study_system_attrs(study_id)
    stored = attrs.get(constants.FAILURE_POLICY_ATTR) or {}
    policy = FailurePolicy(
        broken_after=int(stored.get("broken_after", BROKEN_AFTER)),
        max_failures=stored.get("max_failures") if max_failures is None else max_failures,
    )
    if stored != policy.to_json():
        storage.optuna.set_study_system_attr(
            study_id, constants.FAILURE_POLICY_ATTR, policy.to_json()
        )
    return policy


def load_policy(storage: FleetStorage, study_id: int) -> FailurePolicy:
    stored = storage.optuna.get_study_system_attrs(study_id).get(constants.FAILURE_POLICY_ATTR)
    if not stored:
        return FailurePolicy()
    return FailurePolicy(int(stored.get("broken_after", BROKEN_AFTER)), stored.get("max_failures"))


def read_stop(storage: FleetStorage, study_id: int) -> Stop | None:
    raw = storage.optuna.get_study_system_attrs(study_id).get(constants.STOPPED_ATTR)
    if not raw:
        return None
    return Stop(raw["reason"], raw["fleet"], raw["id"], raw.get("error"))


def clear_stop(storage: FleetStorage, study_id: int) -> None:
    storage.optuna.set_study_system_attr(study_id, constants.STOPPED_ATTR, None)


def check_failures(
    storage: FleetStorage, study_id: int, policy: FailurePolicy, fleet: str, error: str | None
) -> Stop | None:
    """After a counted failure: the stop, if the study must stop (written here if it is the
    first), with the failed trials' budget given back; None if the fleet goes on."""
    stop = read_stop(storage, study_id)
    if stop is None:
        failed = counted_failures(storage.engine, storage.retrier, study_id)
        n_failed = sum(failed.values())
        n_broken = sum(failed.get(k, 0) for k in BROKEN_KINDS)
        counts = storage.ledger.trial_counts(study_id)
        succeeded = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
        reason = None
        if not succeeded and n_broken >= policy.broken_after:
            reason = f"the objective is broken: its first {n_broken} trials failed, none completed"
        elif policy.max_failures is not None and n_failed > policy.max_failures:
            reason = f"{n_failed} trials failed, more than --max-failures {policy.max_failures}"
        if reason is None:
            return None
        stop = Stop(reason, fleet, uuid.uuid4().hex, error)
        storage.optuna.set_study_system_attr(
            study_id,
            constants.STOPPED_ATTR,
            {"reason": reason, "fleet": fleet, "id": stop.stop_id, "error": error},
        )
    n = give_back_failures(
        storage.engine, storage.retrier, storage.ledger, study_id, f"fleet stopped: {stop.reason}"
    )
    if n:
        log.info("gave back the budget slots of %d failed trials", n)
    return stop


# --- showing each distinct error once in `run`'s output ---------------------------------------

#: The first line of a worker's log record that carries a traceback (see Worker._fail).
TRACEBACK_HEADER = "traceback (once per distinct error)"
_HEADER = re.compile(r"trial \d+: (?P<sig>.+?); " + re.escape(TRACEBACK_HEADER))
_NEW_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


class TracebackFilter:
    """Drops a worker's traceback when another worker already showed the same error.

    Each worker prints the traceback of each distinct error once; ``run`` sees the same error
    from every worker, so it keeps the first and drops the rest. Text records are recognised by
    their header; the lines after it, up to the next record, belong to the traceback.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._skipping: dict[int, bool] = {}

    def keep(self, index: int, line: str) -> bool:
        if line.startswith("error: "):  # every stopped worker says the same
            new = line not in self.seen
            self.seen.add(line)
            return new
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                return True
            signature = record.get("error_at") if record.get("event") == "traceback" else None
            if signature is None:
                return True
            new = signature not in self.seen
            self.seen.add(signature)
            return new
        match = _HEADER.search(line)
        if match:
            signature = match.group("sig")
            self._skipping[index] = signature in self.seen
            self.seen.add(signature)
            return not self._skipping[index]
        if _NEW_RECORD.match(line):
            self._skipping[index] = False
        return not self._skipping.get(index, False)
