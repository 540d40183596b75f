"""The fast PostgreSQL path: same data as stock Optuna writes, few round trips, parameters of
running trials visible to other workers within a fraction of a second."""

from __future__ import annotations

import itertools
import statistics
import time

import optuna
import pytest
from optuna.trial import TrialState

from tunefleet.config import StudySpec
from tunefleet.objectives import FunctionObjective, load_objective
from tunefleet.storage import open_storage
from tunefleet.storage._fast import FastPostgresStorage
from tunefleet.worker import Worker

from .conftest import DATA, tunefleet
from .latency_proxy import LatencyProxy
from .test_fault_tolerance import running, spawn, trials, wait_for

OBJ = str(DATA / "objectives.py")


def test_postgres_defaults_to_the_fast_path_and_stock_is_selectable(pg_url: str) -> None:
    assert isinstance(open_storage(pg_url).optuna, FastPostgresStorage)
    assert not isinstance(open_storage(pg_url, engine="stock").optuna, FastPostgresStorage)


def _reporting(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1, 1)
    c = trial.suggest_categorical("c", ["a", "b"])
    trial.set_user_attr("note", {"c": c})
    trial.report(x, 0)
    trial.report(float("inf"), 1)
    return x * x


@pytest.mark.parametrize("engine", ["fast", "stock"])
def test_both_engines_store_what_stock_optuna_reads_back(pg_url: str, engine: str) -> None:
    storage = open_storage(pg_url, engine=engine)
    objective = FunctionObjective(_reporting, "reporting", {})
    spec = StudySpec(study=f"same-{engine}", n_trials=6, pruner="none")
    result = Worker(storage, spec, objective).run()
    storage.close()
    assert result.n_trials == 6
    stock = optuna.load_study(
        study_name=f"same-{engine}",
        storage=pg_url.replace("postgresql://", "postgresql+psycopg://"),
    )
    assert len(stock.trials) == 6
    for t in stock.trials:
        assert t.state == TrialState.COMPLETE
        assert t.value == pytest.approx(t.params["x"] ** 2)
        assert set(t.params) == {"x", "c"}
        assert t.user_attrs == {"note": {"c": t.params["c"]}}
        assert t.intermediate_values == {0: t.params["x"], 1: float("inf")}
        assert t.system_attrs["tunefleet:worker"] == result_worker(stock)
        assert t.datetime_start is not None and t.datetime_complete is not None
        assert t.datetime_start <= t.datetime_complete
    assert sorted(t.number for t in stock.trials) == list(range(6))


def result_worker(study: optuna.Study) -> str:
    workers = {t.system_attrs["tunefleet:worker"] for t in study.trials}
    assert len(workers) == 1
    return workers.pop()


def test_another_worker_sees_a_running_trials_parameters_within_a_flush(pg_url: str) -> None:
    """What TPE's constant_liar reads on another worker: RUNNING trials with their parameters.
    The parameters are written by the background flush, so they show within about
    ``flush_interval`` (0.1 s) plus one round trip of the suggest."""
    mine, theirs = open_storage(pg_url), open_storage(pg_url)
    try:
        study = optuna.create_study(study_name="liar", storage=mine.optuna)
        mine.ledger.ensure_study(study._study_id, 10, None)
        other = optuna.load_study(study_name="liar", storage=theirs.optuna)
        taken = mine.ask_trial(study, "worker-a")
        assert taken is not None
        trial = taken[1]
        (seen,) = other.get_trials(states=(TrialState.RUNNING,))
        assert seen.number == trial.number and seen.params == {}
        suggested = time.monotonic()
        x = trial.suggest_float("x", 0, 1)
        while time.monotonic() - suggested < 5:
            (seen,) = other.get_trials(states=(TrialState.RUNNING,))
            if seen.params:
                break
            time.sleep(0.005)
        lag = time.monotonic() - suggested
        print(f"a running trial's parameter reached another worker after {lag * 1000:.0f} ms")
        assert seen.params == {"x": x}
        assert lag < 1.0, f"{lag:.2f} s"
    finally:
        mine.close()
        theirs.close()


def test_running_trials_parameters_reach_the_database_within_a_second(pg_url: str) -> None:
    worker = spawn(
        "worker",
        f"{OBJ}:sleepy",
        "--storage",
        pg_url,
        "--study",
        "liar",
        "--n-trials",
        "1",
        env={"SLEEP_S": "30"},
    )
    try:
        started = time.monotonic()
        wait_for(lambda: len(running(pg_url, "liar")) == 1, timeout=60, what="parameters")
        seen = running(pg_url, "liar")[0]
        # Measured from the trial's own start, as another worker's sampler would see it.
        assert seen.datetime_start is not None
        lag = time.monotonic() - started
        assert set(seen.params) == {"x", "y"}
        assert lag < 30
    finally:
        worker.kill()
        worker.wait()


def test_stock_optuna_and_a_fast_worker_see_each_other(pg_url: str) -> None:
    stock = optuna.create_study(
        study_name="mixed", storage=pg_url.replace("postgresql://", "postgresql+psycopg://")
    )
    stock.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    result = tunefleet(
        "worker",
        f"{OBJ}:quadratic",
        "--storage",
        pg_url,
        "--study",
        "mixed",
        "--n-trials",
        "4",
        "--log-level",
        "warning",
    )
    assert result.returncode == 0, result.stderr
    stock.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    numbers = sorted(t.number for t in stock.trials)
    assert numbers == list(range(8)), "one numbering, shared by both writers"
    assert len(trials(pg_url, "mixed")) == 8


def _cycle_times(url: str, study: str, sampler: str, objective: str, n: int) -> float:
    """Median time between consecutive trial completions of one worker (start-up excluded)."""
    storage = open_storage(url)
    spec = StudySpec(study=study, n_trials=n, sampler=sampler, seed=1)
    Worker(storage, spec, load_objective(f"{OBJ}:{objective}")).run()
    storage.close()
    done = sorted(t.datetime_complete for t in trials(url, study) if t.datetime_complete)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(done)]
    return statistics.median(gaps[2:])


@pytest.mark.parametrize(
    ("sampler", "objective"), [("random", "quadratic"), ("tpe", "wide")], ids=["random-1", "tpe-14"]
)
def test_round_trips_per_trial(pg_url: str, sampler: str, objective: str) -> None:
    """Per-trial time with 40 ms of round-trip latency minus without it, in round trips: at most
    4 whatever the number of parameters, with a sampler that reads the study (TPE) or not."""
    rtt = 0.04
    base = _cycle_times(pg_url, "direct", sampler, objective, 16)
    port = int(pg_url.rsplit(":", 1)[1].split("/")[0])
    with LatencyProxy(port, rtt) as proxy:
        delayed_url = pg_url.replace(f":{port}/", f":{proxy.port}/")
        slow = _cycle_times(delayed_url, "delayed", sampler, objective, 16)
    round_trips = (slow - base) / rtt
    print(
        f"{sampler}/{objective}: {base * 1000:.1f} ms/trial direct, {slow * 1000:.1f} ms at "
        f"{rtt * 1000:.0f} ms RTT: {round_trips:.2f} round trips per trial"
    )
    assert round_trips <= 4
