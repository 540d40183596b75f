"""The fast embedded engine: the default on sqlite:/// URLs. Exact budget across real worker
processes, a slot taken back from a lost worker never also completed by it, Optuna's own
refusals, and a file that stays a plain Optuna study for stock Optuna."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
from optuna.storages import _CachedStorage
from optuna.trial import TrialState

from tunefleet.config import StudySpec
from tunefleet.objectives import FunctionObjective, load_objective
from tunefleet.recovery import LOST_ATTR, RETRY_OF_ATTR, requeue_trial
from tunefleet.storage import open_storage
from tunefleet.storage._fast_sqlite import FastSqliteStorage
from tunefleet.storage._retry import RetryingStorage
from tunefleet.study import open_study
from tunefleet.worker import Worker

from .conftest import DATA, tunefleet
from .test_fault_tolerance import assert_exact_and_clean, spawn

OBJ = str(DATA / "objectives.py")


def test_sqlite_defaults_to_the_fast_engine_and_stock_is_cached(sqlite_url: str) -> None:
    for engine in ("auto", "fast"):
        assert isinstance(open_storage(sqlite_url, engine=engine).optuna, FastSqliteStorage)
    stock = open_storage(sqlite_url, engine="stock").optuna
    assert isinstance(stock, RetryingStorage)
    assert isinstance(stock.inner, _CachedStorage)  # what optuna.storages.get_storage gives


def _reporting(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1, 1)
    c = trial.suggest_categorical("c", ["a", "b"])
    n = trial.suggest_int("n", 1, 64, log=True)
    trial.set_user_attr("note", {"c": c})
    trial.report(x, 0)
    trial.report(float("inf"), 1)
    return x * x + n


def test_stock_optuna_reads_and_continues_what_the_fast_engine_wrote(
    sqlite_url: str,
) -> None:
    storage = open_storage(sqlite_url)
    spec = StudySpec(study="plain", n_trials=6, pruner="none", sampler="tpe", seed=1)
    result = Worker(storage, spec, FunctionObjective(_reporting, "reporting", {})).run()
    storage.close()
    assert result.n_trials == 6
    stock = optuna.load_study(study_name="plain", storage=sqlite_url)
    assert [t.number for t in stock.trials] == list(range(6))
    for t in stock.trials:
        assert t.state == TrialState.COMPLETE
        assert t.value == pytest.approx(t.params["x"] ** 2 + t.params["n"])
        assert set(t.params) == {"x", "c", "n"}
        assert t.user_attrs == {"note": {"c": t.params["c"]}}
        assert t.intermediate_values == {0: t.params["x"], 1: float("inf")}
        assert t.datetime_complete is not None and t.datetime_start is not None
        assert t.datetime_complete >= t.datetime_start
    # Stock Optuna writes to the same study, and tunefleet reads its trials back.
    stock.optimize(_reporting, n_trials=2)
    again = open_storage(sqlite_url)
    study = optuna.load_study(study_name="plain", storage=again.optuna)
    assert [t.number for t in study.trials] == list(range(8))
    assert study.best_value == min(t.value for t in stock.trials if t.value is not None)
    again.close()


def test_exact_budget_with_independent_worker_processes(sqlite_url: str) -> None:
    """Four `tunefleet worker` processes started at once on one file: exactly the budget."""
    study = ["--study", "exact", "--storage", sqlite_url, "--n-trials", "60"]
    procs = [spawn("worker", f"{OBJ}:quadratic", *study, "--sampler", "tpe") for _ in range(4)]
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "database is locked" not in err
    all_trials = assert_exact_and_clean(sqlite_url, "exact", 60)
    assert all(t.state == TrialState.COMPLETE for t in all_trials)
    stock = optuna.load_study(study_name="exact", storage=sqlite_url).trials
    assert sorted(t.number for t in stock) == list(range(60))
    assert len({t.system_attrs["tunefleet:worker"] for t in stock}) >= 2
    # A larger budget extends the study; the fleet runs exactly the difference.
    more = tunefleet("run", f"{OBJ}:quadratic", *study[:-1], "75", "--workers", "3")
    assert more.returncode == 0, more.stderr
    assert len(assert_exact_and_clean(sqlite_url, "exact", 75)) == 75


def test_a_slot_taken_back_is_never_also_completed_by_its_lost_worker(sqlite_url: str) -> None:
    slow, other = open_storage(sqlite_url), open_storage(sqlite_url)
    objective = load_objective(f"{OBJ}:quadratic")
    fleet_study = open_study(slow, StudySpec(study="lost", n_trials=2), objective)
    asked = slow.ask_trial(fleet_study.study, "slow-worker")
    assert asked is not None
    claim_id, trial = asked
    x = trial.suggest_float("x", -10, 10)
    assert isinstance(slow.optuna, FastSqliteStorage)
    slow.optuna.flush()  # what the background flush does within 0.1 s
    # Another worker declares it lost (as its heartbeat thread would) and queues a re-run.
    other.ledger.mark_requeue(claim_id)
    rerun_id = requeue_trial(
        other, fleet_study.study_id, claim_id, trial._trial_id, lost_reason="test: lost"
    )
    assert rerun_id is not None
    # The lost worker comes back: its late suggest is dropped, its tell refused, as Optuna does.
    trial.suggest_float("y", -10, 10)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        slow.optuna.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [x * x])
    stored = other.optuna.get_trial(trial._trial_id)
    assert stored.state == TrialState.FAIL and LOST_ATTR in stored.system_attrs
    assert stored.values is None and "y" not in stored.params
    budget = other.ledger.budget(fleet_study.study_id)
    assert (budget.n_claimed, budget.n_open) == (0, 0)  # the slot went back
    # The re-run takes that slot, with the same parameter.
    again = slow.ask_trial(fleet_study.study, "slow-worker")
    assert again is not None
    assert again[1]._trial_id == rerun_id
    assert again[1].suggest_float("x", -10, 10) == x
    assert slow.optuna.get_trial(rerun_id).system_attrs[RETRY_OF_ATTR] == trial.number
    slow.close()
    other.close()


def test_a_parameter_of_another_kind_is_refused_as_optuna_does(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url)
    fleet_study = open_study(
        storage, StudySpec(study="kinds", n_trials=3), load_objective(f"{OBJ}:quadratic")
    )
    first = storage.ask_trial(fleet_study.study, "w")
    assert first is not None
    first[1].suggest_float("x", 0, 1)
    fleet_study.study.tell(first[1], 1.0)
    # Another process, with an empty cache, must refuse it too: it reads the study's kind.
    fresh = open_storage(sqlite_url)
    study = optuna.load_study(study_name="kinds", storage=fresh.optuna)
    second = fresh.ask_trial(study, "w2")
    assert second is not None
    with pytest.raises(ValueError, match="Cannot set different distribution kind"):
        second[1].suggest_int("x", 0, 1)
    stock = optuna.load_study(study_name="kinds", storage=sqlite_url)
    with pytest.raises(ValueError, match="Cannot set different distribution kind"):
        stock.ask().suggest_int("x", 0, 1)
    storage.close()
    fresh.close()


def test_the_engine_survives_pickling(sqlite_url: str, tmp_path: Path) -> None:
    storage = open_storage(sqlite_url)
    study = optuna.create_study(study_name="pickled", storage=storage.optuna)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    copy = pickle.loads(pickle.dumps(storage.optuna))
    assert isinstance(copy, FastSqliteStorage)
    assert len(copy.get_all_trials(study._study_id)) == 2
    copy.close()
    storage.close()
