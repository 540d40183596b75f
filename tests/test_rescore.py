"""`tunefleet rescore`: the best trial re-evaluated with other seeds (built-ins, user functions)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import optuna
import pytest

from tests.conftest import tunefleet
from tunefleet.cli._rescore import render
from tunefleet.errors import ObjectiveError, StudyError
from tunefleet.objectives import load_objective
from tunefleet.rescore import RescoreResult, rescore
from tunefleet.storage import FleetStorage, open_storage

SEEDED = Path(__file__).parent / "data" / "seeded_objectives.py"


def test_rescore_cli_reproduces_a_builtin_best_then_varies_seed_and_split(
    storage_url: str,
) -> None:
    env = {"TUNEFLEET_STORAGE": storage_url}
    run = tunefleet(
        *("worker", "sklearn-iris", "--n-trials", "4", "--seed", "1"),
        env={**env, "TUNEFLEET_THREADS": "3"},
    )
    assert run.returncode == 0, run.stderr
    result = tunefleet("rescore", "--study", "sklearn-iris", "--repeats", "3", "--json", env=env)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)

    study = optuna.load_study(study_name="sklearn-iris", storage=storage_url)
    assert out["trial"] == study.best_trial.number
    assert out["reported"] == study.best_value
    assert out["reproduced"] == study.best_value  # its own seeds give its own value
    assert out["objective"] == "sklearn-iris"
    assert out["params"] == study.best_params
    assert out["seeds"] == [1, 2, 3]
    assert out["n_threads"] == 3  # the trial's own thread count, not this machine's
    assert len(out["values"]) == 3 and all(0 <= v <= 1 for v in out["values"])
    assert out["mean"] == pytest.approx(statistics.fmean(out["values"]))
    assert out["sd"] == pytest.approx(statistics.stdev(out["values"]))
    assert "repeat 3/3 (seed 3)" in result.stderr  # progress goes to stderr


@pytest.fixture
def storage(sqlite_url: str) -> FleetStorage:
    return open_storage(sqlite_url)


def _study(storage: FleetStorage, objective: str, n_trials: int = 3, **args: float) -> None:
    study = optuna.create_study(study_name="s", storage=storage.optuna, direction="maximize")
    study.optimize(load_objective(objective, args), n_trials=n_trials)


def test_a_user_function_opts_in_with_a_seed_argument(storage: FleetStorage) -> None:
    _study(storage, f"{SEEDED}:seeded", scale=2.0)
    result = rescore(storage, "s", f"{SEEDED}:seeded", {"scale": 2.0}, repeats=4, seed=0)
    best = optuna.load_study(study_name="s", storage=storage.optuna).best_trial
    x = best.params["x"]
    assert result.seeds == [1, 2, 3, 4]
    assert result.values == pytest.approx([2.0 * (x + s / 100) for s in (1, 2, 3, 4)])
    assert result.reproduced == best.value  # the function recorded its seed (0)
    assert result.trial_number == best.number


def test_rescore_seeds_move_with_seed(storage: FleetStorage) -> None:
    _study(storage, f"{SEEDED}:seeded")
    first = rescore(storage, "s", f"{SEEDED}:seeded", repeats=2, seed=0)
    again = rescore(storage, "s", f"{SEEDED}:seeded", repeats=2, seed=0)
    other = rescore(storage, "s", f"{SEEDED}:seeded", repeats=2, seed=1)
    assert first.values == again.values
    assert set(other.seeds).isdisjoint(first.seeds)


@pytest.mark.parametrize(
    ("objective", "error", "fragment"),
    [
        (f"{SEEDED}:unseeded", ObjectiveError, "takes no 'seed' argument"),
        (None, ObjectiveError, "does not record its objective (built-ins do): name it"),
    ],
)
def test_objectives_that_cannot_be_rescored_say_how_to_fix_it(
    storage: FleetStorage, objective: str | None, error: type[Exception], fragment: str
) -> None:
    _study(storage, f"{SEEDED}:unseeded")
    with pytest.raises(error) as info:
        rescore(storage, "s", objective, repeats=2)
    assert fragment in str(info.value)


def test_studies_that_cannot_be_rescored_are_one_line_errors(storage: FleetStorage) -> None:
    with pytest.raises(StudyError, match=r"no study 'nope' .*\(it has no studies\)"):
        rescore(storage, "nope", repeats=2)
    optuna.create_study(study_name="empty", storage=storage.optuna)
    with pytest.raises(StudyError, match=r"no study 'nope' .*studies there: empty"):
        rescore(storage, "nope", repeats=2)
    with pytest.raises(StudyError, match="no completed trial yet"):
        rescore(storage, "empty", f"{SEEDED}:seeded", repeats=2)
    optuna.create_study(study_name="two", storage=storage.optuna, directions=["minimize"] * 2)
    with pytest.raises(StudyError, match="has 2 objectives"):
        rescore(storage, "two", f"{SEEDED}:seeded", repeats=2)
    with pytest.raises(ObjectiveError, match="--repeats 0: must be at least 1"):
        rescore(storage, "empty", repeats=0)


def _result(reported: float, values: list[float], direction: str = "maximize") -> RescoreResult:
    return RescoreResult("s", "o", direction, 3, {"x": 1}, reported, [1, 2, 3], values, reported)


def test_the_verdict_says_whether_the_best_holds_up() -> None:
    lucky = render(_result(0.986, [0.93, 0.92, 0.94]))
    assert "reported    0.9860" in lucky
    assert "rescored    0.9300 ± 0.0100" in lucky
    assert "5.6 sd better than its rescored mean" in lucky
    assert "within 1 sd" in render(_result(0.935, [0.93, 0.92, 0.94]))
    # Minimizing, a reported loss far below the rescores is the lucky one.
    assert _result(0.1, [0.3, 0.2, 0.4], "minimize").gap_in_sd == pytest.approx(2.0)
    assert "does not depend on the seed" in render(_result(0.5, [0.5, 0.5, 0.5]))
