"""Per-trial overhead of running the objective in a supervised child (``--trial-timeout``).

Side by side, interleaved: the same small objective (three ``suggest_*``, three
``report``/``should_prune``, one ``set_user_attr``) run by a worker with the objective in its own
process (the default) and in a child process it supervises. Two measures:

* the runner alone, on an in-memory Optuna study: what the pipe adds per trial;
* whole trials through a real worker on the embedded store (claim, ask, tell included).

    python benchmarks/trial_overhead.py --trials 300 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import optuna

from tunefleet.config import StudySpec
from tunefleet.objectives import Objective, WorkerContext
from tunefleet.runner import ChildRunner, InProcessRunner
from tunefleet.storage import open_storage
from tunefleet.worker import Worker


class Small(Objective):
    name = "small"

    def __call__(self, trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10, 10)
        y = trial.suggest_int("y", 0, 10)
        c = trial.suggest_categorical("c", ["a", "b"])
        for step in range(3):
            trial.report(x + step, step)
            trial.should_prune()
        trial.set_user_attr("c", c)
        return (x - 2) ** 2 + y


def runner_ms(child: bool, n: int) -> float:
    """Median milliseconds per trial of ask + run + tell on an in-memory study."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    runner = ChildRunner(Small()) if child else InProcessRunner(Small())
    runner.setup(WorkerContext())
    times = []
    try:
        for _ in range(n):
            trial = study.ask()
            started = time.perf_counter()
            outcome = runner.run(trial, 60.0 if child else None)
            times.append(time.perf_counter() - started)
            study.tell(trial, outcome.value)
    finally:
        runner.close()
    return statistics.median(times) * 1000


def worker_ms(child: bool, n: int) -> float:
    """Wall milliseconds per trial of a real worker on the embedded store."""
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(f"sqlite:///{Path(tmp) / 'bench.db'}")
        spec = StudySpec(
            objective="small",
            study="bench",
            n_trials=n,
            sampler="random",
            trial_timeout=60.0 if child else None,
        )
        started = time.perf_counter()
        Worker(storage, spec, Small()).run()
        elapsed = time.perf_counter() - started
        storage.close()
    return elapsed / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--worker-trials", type=int, default=50, help="trials per whole-worker measure"
    )
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for child in (False, True):
            mode = "child" if child else "in-process"
            results.setdefault(f"runner {mode}", []).append(runner_ms(child, args.trials))
            results.setdefault(f"worker {mode}", []).append(worker_ms(child, args.worker_trials))
    print(f"{'measure':<22} {'ms/trial (median of rounds)':>28}")
    for key, values in results.items():
        print(f"{key:<22} {statistics.median(values):>28.3f}")
    for what in ("runner", "worker"):
        added = statistics.median(results[f"{what} child"]) - statistics.median(
            results[f"{what} in-process"]
        )
        print(f"{what}: the supervised child adds {added:+.3f} ms per trial")


if __name__ == "__main__":
    main()
