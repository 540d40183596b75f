"""``tunefleet trial N``: one trial in full, its failure's reason and traceback included."""

from __future__ import annotations

import json
from typing import Any

import click
import optuna

from tunefleet import constants, monitor
from tunefleet._redact import redact
from tunefleet.cli._monitor import _opened
from tunefleet.cli._options import db_wait_option, output_option, storage_option, study_option
from tunefleet.errors import StudyError

__all__ = ["trial"]

#: Trial system attributes shown by name, in this order (the traceback is printed last).
_SHOWN = {
    constants.FAIL_REASON_ATTR: "failed because",
    constants.FAILURE_KIND_ATTR: "failure kind",
    constants.LOST_ATTR: "lost",
    constants.GIVEN_BACK_ATTR: "budget given back",
    constants.ATTEMPT_ATTR: "attempt",
    constants.RETRY_OF_ATTR: "re-run of trial",
    constants.WORKER_ATTR: "worker",
}


@click.command()
@click.argument("number", type=click.IntRange(min=0))
@storage_option
@study_option
@output_option("table", "json")
@db_wait_option()
def trial(number: int, storage: str | None, study: str | None, output: str, db_wait: float) -> int:
    """Print one trial: state, values, parameters, why it failed and its stored traceback.

    Example:

        tunefleet trial 3 --study iris
    """
    with _opened(storage, db_wait) as fs:
        ref = monitor.resolve_study(fs, study)
        found = [
            t for t in fs.optuna.get_all_trials(ref.study_id, deepcopy=False) if t.number == number
        ]
    if not found:
        raise StudyError(
            f"study '{ref.name}' has no trial {number}: 'tunefleet trials --study {ref.name}' "
            "lists them"
        )
    t = found[0]
    attrs = t.system_attrs
    if output == "json":
        data: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "values": t.values,
            "params": t.params,
            "datetime_start": t.datetime_start,
            "datetime_complete": t.datetime_complete,
            "user_attrs": t.user_attrs,
            "traceback": attrs.get(constants.TRACEBACK_ATTR),
            **{key.split(":")[-1]: attrs[key] for key in _SHOWN if key in attrs},
        }
        click.echo(redact(json.dumps(data, default=str)))
        return 0
    lines = [f"trial {t.number} of study {ref.name}: {t.state.name}"]
    if t.values is not None:
        lines.append(f"  values: {', '.join(f'{v:g}' for v in t.values)}")
    if t.params:
        lines.append("  params: " + ", ".join(f"{k}={v!r}" for k, v in t.params.items()))
    if t.datetime_start and t.datetime_complete:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds()
        lines.append(f"  duration: {seconds:.2f}s")
    for key, label in _SHOWN.items():
        if key in attrs:
            lines.append(f"  {label}: {attrs[key]}")
    for key, value in t.user_attrs.items():
        lines.append(f"  user attr {key}: {value!r}")
    trace = attrs.get(constants.TRACEBACK_ATTR)
    if trace:
        lines += ["", str(trace).rstrip("\n")]
    elif t.state == optuna.trial.TrialState.FAIL:
        lines.append("  (no traceback stored: the objective did not raise)")
    click.echo(redact("\n".join(lines)))
    return 0
