"""Real fleets of worker processes: the exact global budget, the global deadline, what workers do
with bad objective results, and joining a finished study."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest

from tunefleet.storage import open_storage

from .conftest import DATA, tunefleet

OBJ = str(DATA / "objectives.py")


def run_json(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> dict[str, object]:
    result = tunefleet("run", *args, "--json", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    summary: dict[str, object] = json.loads(result.stdout)
    return summary


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url).optuna)


@pytest.mark.parametrize(("workers", "n_trials"), [(1, 12), (3, 30), (8, 40)])
def test_exact_global_budget_on_postgres(pg_url: str, workers: int, n_trials: int) -> None:
    summary = run_json(
        f"{OBJ}:quadratic",
        "--storage",
        pg_url,
        "--study",
        "exact",
        "--n-trials",
        str(n_trials),
        "--workers",
        str(workers),
        "--sampler",
        "random",
    )
    assert summary["budget"]["counted"] == n_trials
    study = load(pg_url, "exact")
    assert len(study.trials) == n_trials
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}
    assert sorted(t.number for t in study.trials) == list(range(n_trials))
    workers_used = {t.system_attrs["tunefleet:worker"] for t in study.trials}
    assert 1 <= len(workers_used) <= workers


def test_exact_budget_on_the_embedded_store_without_lock_errors(tmp_path: Path) -> None:
    result = tunefleet(
        "run",
        f"{OBJ}:quadratic",
        "--n-trials",
        "45",
        "--workers",
        "4",
        "--json",
        "-v",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "database is locked" not in result.stderr
    assert (tmp_path / "tunefleet.db").exists()
    study = load(f"sqlite:///{tmp_path / 'tunefleet.db'}", "quadratic")
    assert len(study.trials) == 45
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_json_summary_has_the_documented_keys(sqlite_url: str) -> None:
    summary = run_json(
        f"{OBJ}:quadratic",
        "--storage",
        sqlite_url,
        "--n-trials",
        "6",
        "--workers",
        "2",
        "--study",
        "keys",
    )
    assert {"schema", "study", "n_trials", "states", "budget", "best", "run"} <= set(summary)
    assert summary["study"] == "keys"
    assert summary["states"]["COMPLETE"] == 6  # type: ignore[index]
    study = load(sqlite_url, "keys")
    assert summary["best"]["values"] == [study.best_value]
    assert summary["best"]["params"] == study.best_params


def test_budget_is_shared_by_separate_worker_commands(storage_url: str) -> None:
    args = (
        "worker",
        f"{OBJ}:quadratic",
        "--storage",
        storage_url,
        "--study",
        "shared",
        "--n-trials",
        "10",
        "--log-level",
        "warning",
    )
    first = tunefleet(*args)
    assert first.returncode == 0, first.stderr
    # The budget is the study's: a second worker with the same flags has nothing left to do.
    started = time.monotonic()
    second = tunefleet(*args)
    assert second.returncode == 0, second.stderr
    assert len(load(storage_url, "shared").trials) == 10
    assert time.monotonic() - started < 30
    # A larger --n-trials extends the study to that total.
    third = tunefleet(*args[:-4], "--n-trials", "14")
    assert third.returncode == 0, third.stderr
    assert len(load(storage_url, "shared").trials) == 14


def test_deadline_is_global_and_not_moved_by_later_workers(pg_url: str) -> None:
    objective = f"{OBJ}:quadratic"
    first = tunefleet(
        "worker",
        objective,
        "--storage",
        pg_url,
        "--study",
        "timed",
        "--timeout",
        "3",
        "--n-trials",
        "5",
        "--log-level",
        "warning",
    )
    assert first.returncode == 0, first.stderr
    time.sleep(3.5)
    # The deadline (3 s after creation) has passed: a new worker with a fresh --timeout and a
    # larger budget must not start trials.
    late = tunefleet(
        "worker",
        objective,
        "--storage",
        pg_url,
        "--study",
        "timed",
        "--timeout",
        "3",
        "--n-trials",
        "50",
        "--json",
        "--log-level",
        "warning",
    )
    assert late.returncode == 0, late.stderr
    assert len(load(pg_url, "timed").trials) == 5
    assert json.loads(late.stdout)["done"] is True


@pytest.mark.parametrize(
    ("function", "reason"),
    [
        ("returns_nan", "the objective returned NaN"),
        ("returns_none", "the objective returned None (NoneType), not a number"),
        ("returns_string", "the objective returned '0.5' (str), not a number"),
    ],
)
def test_bad_return_values_fail_the_trial_with_the_reason(
    sqlite_url: str, function: str, reason: str
) -> None:
    summary = run_json(
        f"{OBJ}:{function}",
        "--storage",
        sqlite_url,
        "--n-trials",
        "3",
        "--workers",
        "1",
        "--study",
        function,
    )
    assert summary["states"]["FAIL"] == 3  # type: ignore[index]
    assert summary["best"] is None
    trials = load(sqlite_url, function).trials
    assert [t.system_attrs["fail_reason"] for t in trials] == [reason] * 3


def test_objective_exceptions_fail_trials_and_the_fleet_goes_on(pg_url: str) -> None:
    summary = run_json(
        f"{OBJ}:fails_on_odd",
        "--storage",
        pg_url,
        "--n-trials",
        "10",
        "--workers",
        "2",
        "--study",
        "odd",
    )
    assert summary["budget"]["counted"] == 10
    trials = load(pg_url, "odd").trials
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 5
    assert all(t.system_attrs["fail_reason"] == f"ValueError: odd trial {t.number}" for t in failed)


def test_pruned_trials_count_against_the_budget(sqlite_url: str) -> None:
    summary = run_json(
        f"{OBJ}:prunes_at_step_one",
        "--storage",
        sqlite_url,
        "--n-trials",
        "4",
        "--workers",
        "1",
        "--study",
        "pruned",
    )
    assert summary["states"]["PRUNED"] == 4  # type: ignore[index]
    assert summary["budget"]["counted"] == 4


def test_multi_objective_study(sqlite_url: str) -> None:
    summary = run_json(
        f"{OBJ}:two_objectives",
        "--storage",
        sqlite_url,
        "--n-trials",
        "8",
        "--workers",
        "2",
        "--direction",
        "minimize",
        "--direction",
        "minimize",
        "--study",
        "mo",
    )
    assert summary["states"]["COMPLETE"] == 8  # type: ignore[index]
    study = load(sqlite_url, "mo")
    assert len(study.directions) == 2
    assert {t["number"] for t in summary["pareto_front"]} == {  # type: ignore[attr-defined]
        t.number for t in study.best_trials
    }


def test_builtin_direction_and_default_study_name(tmp_path: Path) -> None:
    summary = run_json(
        "sklearn-iris", "--n-trials", "4", "--workers", "2", "--seed", "1", cwd=tmp_path
    )
    assert summary["study"] == "sklearn-iris"
    assert summary["directions"] == ["maximize"]
    assert 0.0 <= summary["best"]["values"][0] <= 1.0  # type: ignore[operator]


def test_config_file_with_flag_override(tmp_path: Path, sqlite_url: str) -> None:
    (tmp_path / "study.toml").write_text(
        f'objective = "{OBJ}:scaled"\nstudy = "cfg"\nn_trials = 50\nsampler = "random"\n'
        "workers = 2\n[objective_args]\nscale = 2.0\noffset = 100\n"
    )
    summary = run_json(
        "--config", str(tmp_path / "study.toml"), "--n-trials", "5", "--storage", sqlite_url
    )
    assert summary["budget"]["counted"] == 5
    values = [t.value for t in load(sqlite_url, "cfg").trials]
    assert all(v is not None and 100 <= v <= 102 for v in values)


def test_seeded_single_worker_is_repeatable(tmp_path: Path) -> None:
    params = []
    for name in ("a", "b"):
        url = f"sqlite:///{tmp_path / name}.db"
        run_json(
            f"{OBJ}:quadratic",
            "--storage",
            url,
            "--n-trials",
            "6",
            "--workers",
            "1",
            "--seed",
            "11",
            "--study",
            "seeded",
        )
        params.append([t.params for t in load(url, "seeded").trials])
    assert params[0] == params[1]
