"""The pieces under the monitoring commands: trial loading, Pareto front, clocks, formats."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import random
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console
from sqlalchemy import update

from tests.conftest import DATA
from tunefleet import monitor
from tunefleet.config import StudySpec
from tunefleet.errors import ConfigError, StorageError
from tunefleet.monitor import _sql
from tunefleet.monitor._timeline import claim_times, trial_spans
from tunefleet.objectives import load_objective
from tunefleet.storage import open_storage
from tunefleet.study import open_study


def _odd_trials() -> list[optuna.trial.FrozenTrial]:
    """Trials with every value kind Optuna stores specially."""
    dists = {
        "lr": FloatDistribution(1e-5, 1.0, log=True),
        "layers": IntDistribution(1, 8, step=1),
        "act": CategoricalDistribution([None, True, 3, "relu", 0.5]),
    }
    params = [
        {"lr": 1e-3, "layers": 2, "act": None},
        {"lr": 0.5, "layers": 8, "act": True},
        {"lr": 1e-5, "layers": 1, "act": "relu"},
        {"lr": 0.1, "layers": 3, "act": 0.5},
    ]
    return [
        create_trial(params=params[0], distributions=dists, value=math.inf,
                     user_attrs={"nested": {"a": [1, 2]}}, intermediate_values={0: math.nan}),
        create_trial(params=params[1], distributions=dists, value=-math.inf,
                     intermediate_values={0: math.inf, 1: -math.inf, 2: 0.25}),
        create_trial(params=params[2], distributions=dists, state=TrialState.FAIL,
                     system_attrs={"fail_reason": "x"}),
        create_trial(params=params[3], distributions=dists, state=TrialState.PRUNED,
                     intermediate_values={5: 1.5}),
    ]  # fmt: skip


def test_bulk_loading_returns_what_optuna_returns(storage_url: str) -> None:
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="odd", storage=storage.optuna)
    study.add_trials(_odd_trials())
    study.ask()  # one RUNNING trial, no values yet
    ours = monitor.load_frozen_trials(storage, study._study_id)
    theirs = storage.optuna.get_all_trials(study._study_id, deepcopy=False)
    # repr, because NaN != NaN would make equal trials compare unequal
    assert [repr(t) for t in ours] == [repr(t) for t in sorted(theirs, key=lambda t: t.number)]
    assert ours[1:] == sorted(theirs, key=lambda t: t.number)[1:]
    assert [t.number for t in ours] == [0, 1, 2, 3, 4]
    assert math.isnan(ours[0].intermediate_values[0]) and ours[1].values == [-math.inf]
    failed = monitor.load_frozen_trials(storage, study._study_id, [TrialState.FAIL])
    assert [t.number for t in failed] == [2]
    storage.close()


def test_pareto_front_is_optunas(tmp_path: Path) -> None:
    rng = random.Random(7)
    for directions in (["minimize", "minimize"], ["maximize", "minimize", "maximize"]):
        study = optuna.create_study(directions=directions)
        points = [
            [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in directions] for _ in range(300)
        ]
        points += points[:5]  # exact ties stay on the front together, as in Optuna
        for p in points:
            study.add_trial(
                create_trial(values=p, params={}, distributions={}, state=TrialState.COMPLETE)
            )
        expected = sorted(t.number for t in study.best_trials)
        assert monitor.pareto_front(points, directions) == expected
    assert monitor.pareto_front([], ["minimize"]) == []


def test_status_and_timeline_use_the_database_clock(sqlite_url: str) -> None:
    """A worker whose clock is five hours behind still counts in the rate, and its trial sits
    where the database saw it start, not five hours back."""
    storage = open_storage(sqlite_url)
    objective = load_objective(f"{DATA / 'objectives.py'}:quadratic", {})
    fleet_study = open_study(storage, StudySpec(study="skew", n_trials=3), objective)
    sid, ledger = fleet_study.study_id, storage.ledger
    ledger.register_worker(sid, "late-1-aaaaaa", "late", 1)
    taken = storage.ask_trial(fleet_study.study, "late-1-aaaaaa")
    assert taken is not None
    _, trial = taken
    fleet_study.study.tell(trial, 1.0)
    behind = dt.timedelta(hours=5)
    told = storage.optuna.get_trial(trial._trial_id)
    assert told.datetime_start is not None and told.datetime_complete is not None
    with storage.engine.begin() as conn:
        conn.execute(
            update(_sql.trials)
            .where(_sql.trials.c.trial_id == trial._trial_id)
            .values(
                datetime_start=told.datetime_start - behind,
                datetime_complete=told.datetime_complete - behind,
            )
        )

    status = monitor.read_status(storage, monitor.resolve_study(storage, "skew"))
    assert status.rate_per_min > 0 and status.n_counted == 1
    assert status.eta_s is not None and 0 < status.eta_s < 3600

    trials = monitor.load_frozen_trials(storage, sid)
    (span,) = trial_spans(trials, claim_times(storage, sid), status.now)
    assert abs(span.start - status.now) < 60 and span.end >= span.start
    storage.close()


def test_trial_exports_handle_infinities_and_odd_values(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url)
    study = optuna.create_study(study_name="odd", storage=storage.optuna)
    study.add_trials(_odd_trials())
    ref = monitor.resolve_study(storage, "odd")
    rows = monitor.load_trials(storage, ref)
    data = json.loads(monitor.trials_to_json(rows))  # strict JSON: no Infinity
    assert [r["values"] for r in data] == [[None], [None], None, None]
    assert data[0]["user_attrs"] == {"nested": {"a": [1, 2]}}
    assert data[2]["fail_reason"] == "x"
    lines = monitor.trials_to_csv(rows, 1).splitlines()
    assert lines[0].split(",")[:3] == ["number", "state", "value"]
    assert lines[1].startswith("0,COMPLETE,inf,") and lines[2].startswith("1,COMPLETE,-inf,")
    assert "user_attrs_nested" in lines[0] and '"{""a"": [1, 2]}"' in lines[1]
    storage.close()


def test_parse_states() -> None:
    assert monitor.parse_states([]) is None
    assert monitor.parse_states(["complete,FAIL", "complete"]) == (
        TrialState.COMPLETE,
        TrialState.FAIL,
    )
    with pytest.raises(ConfigError, match="unknown trial state 'finished'"):
        monitor.parse_states(["finished"])


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (math.inf, "-"), (0.04, "0.0s"), (4.26, "4.3s"), (42.4, "42s"),
     (185, "3m05s"), (8040, "2h14m"), (3 * 86400 + 4 * 3600, "3d4h")],
)  # fmt: skip
def test_format_duration(seconds: float | None, shown: str) -> None:
    assert monitor.format_duration(seconds) == shown


def test_a_missing_embedded_store_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no tunefleet store at"):
        monitor.open_existing_storage(f"sqlite:///{tmp_path / 'nope.db'}")
    assert not (tmp_path / "nope.db").exists()


def test_missing_extras_and_unwritable_reports_are_config_errors(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(sqlite_url)
    optuna.create_study(study_name="s", storage=storage.optuna).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2
    )
    ref = monitor.resolve_study(storage, "s")
    with pytest.raises(ConfigError, match=r"cannot write the report to .*: pass another --out"):
        monitor.write_report(storage, ref, tmp_path / "missing-dir" / "r.html")

    import importlib
    import importlib.util

    real_find_spec, real_import = importlib.util.find_spec, importlib.import_module
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "plotly" else real_find_spec(n, *a)
    )

    def no_dashboard(name: str, *args: object) -> object:
        if name == "optuna_dashboard":
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_dashboard)
    with pytest.raises(ConfigError, match=r'pip install "tunefleet\[report\]"'):
        monitor.build_report(storage, ref)
    with pytest.raises(ConfigError, match=r'pip install "tunefleet\[dashboard\]"'):
        monitor.start_dashboard(storage, "127.0.0.1", 0)
    storage.close()


def test_a_worker_declared_lost_shows_as_lost(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url)
    objective = load_objective(f"{DATA / 'objectives.py'}:quadratic", {})
    fleet_study = open_study(storage, StudySpec(study="lost", n_trials=3), objective)
    sid, ledger = fleet_study.study_id, storage.ledger
    ledger.register_worker(sid, "gone-1-aaaaaa", "gone", 1)
    ledger.register_worker(sid, "alive-2-bbbbbb", "alive", 2)
    ledger.take_stale_claims(sid, "alive-2-bbbbbb", grace=-1.0)  # everyone else is silent
    ledger.heartbeat("alive-2-bbbbbb")

    status = monitor.read_status(storage, monitor.resolve_study(storage, "lost"))
    states = {w.worker_id: w.to_json()["state"] for w in status.workers}
    assert states == {"gone-1-aaaaaa": "lost", "alive-2-bbbbbb": "running"}
    assert status.workers[0].worker_id == "alive-2-bbbbbb"  # running rows first
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(monitor.render_status(status))
    assert "lost" in console.export_text()
    storage.close()
