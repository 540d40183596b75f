"""The embedded store against Optuna's own one-machine storages, side by side in one run.

For each case (sampler, trials, workers) and each storage, W processes share one study of N trials
of a trivial 2-parameter objective:

* ``tunefleet``       — ``tunefleet run`` on the embedded store (``sqlite:///``, default engine);
* ``tunefleet-stock`` — ``tunefleet run --storage-engine stock`` (Optuna's RDBStorage, cached);
* ``journal``         — stock Optuna, ``JournalStorage(JournalFileBackend(path))``, each process
  ``study.optimize(n_trials=N/W)``;
* ``optuna-sqlite``   — stock Optuna on ``sqlite:///`` (``RDBStorage``), the same way.

Throughput is counted over the trials themselves, from the first trial's start to the last one's
completion as the study records them, so process start-up (imports) counts for no storage. The
per-trial time over the first and the last 10 % of completions shows how the cost grows with the
study. Storages run alternately, ``--repeats`` times; the table gives medians, and each ratio to
the journal is the median of the per-repeat ratios (the machine may be shared). Usage::

    python -m benchmarks.embedded_throughput                    # the issue's cases, 3 repeats
    python -m benchmarks.embedded_throughput --repeats 5 --storages tunefleet journal
    python -m benchmarks.embedded_throughput --dir /dev/shm     # no disk: software cost only

Where the files live matters: ``JournalFileBackend`` calls ``fsync`` on every append (several per
trial), and Optuna's SQLite runs with SQLite's defaults (a rollback journal, ``fsync`` on every
commit), while the embedded store runs in WAL mode with ``synchronous = NORMAL`` (no ``fsync`` on
commit: a process crash loses nothing, a power cut may lose the last commits). On a disk with a
slow ``fsync`` the two Optuna storages are bound by it; on a tmpfs (``--dir /dev/shm``), where
``fsync`` costs nothing, every storage is measured by its software alone.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

STORAGES = ("tunefleet", "tunefleet-stock", "journal", "optuna-sqlite")
#: (sampler, trials, workers): the issue's cases.
CASES = (("random", 1000, 1), ("random", 1000, 4), ("tpe", 600, 2))


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_int("y", -10, 10)
    return x * x + y


def _sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _optuna_worker(kind: str, path: str, n_trials: int, sampler: str, seed: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage: optuna.storages.BaseStorage
    if kind == "journal":
        backend = optuna.storages.journal.JournalFileBackend(path)
        storage = optuna.storages.JournalStorage(backend)
    else:
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 120}}
        )
    study = optuna.load_study(study_name="bench", storage=storage, sampler=_sampler(sampler, seed))
    study.optimize(objective, n_trials=n_trials)


def _storage(kind: str, path: str) -> str | optuna.storages.BaseStorage:
    if kind == "journal":
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    return f"sqlite:///{path}"


@dataclass
class Result:
    trials_per_s: float
    first_ms: float  # time per trial over the first 10 % of completions
    last_ms: float  # ... and over the last 10 %
    wall_s: float  # the whole command, start-up included


def run_one(kind: str, sampler: str, n_trials: int, n_workers: int, directory: str) -> Result:
    path = os.path.join(directory, f"{kind}.{'log' if kind == 'journal' else 'db'}")
    for leftover in Path(directory).glob(f"{kind}.*"):
        leftover.unlink()
    started = time.perf_counter()
    if kind.startswith("tunefleet"):
        command = [
            sys.executable, "-m", "tunefleet", "run", f"{__file__}:objective",
            "--storage", f"sqlite:///{path}", "--study", "bench", "--n-trials", str(n_trials),
            "--workers", str(n_workers), "--sampler", sampler, "--seed", "0",
            "--pruner", "none",
            "--storage-engine", "stock" if kind == "tunefleet-stock" else "auto",
        ]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    else:
        optuna.create_study(study_name="bench", storage=_storage(kind, path))
        shares = [n_trials // n_workers + (i < n_trials % n_workers) for i in range(n_workers)]
        procs = [
            mp.Process(target=_optuna_worker, args=(kind, path, share, sampler, i))
            for i, share in enumerate(shares)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
            assert proc.exitcode == 0, f"{kind} worker failed"
    wall = time.perf_counter() - started
    trials = optuna.load_study(study_name="bench", storage=_storage(kind, path)).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == n_trials, f"{kind}: {len(complete)} of {n_trials} trials complete"
    return _result(complete, wall)


def _result(trials: list[optuna.trial.FrozenTrial], wall: float) -> Result:
    def seconds(a: datetime.datetime | None, b: datetime.datetime | None) -> float:
        assert a is not None and b is not None
        return (b - a).total_seconds()

    begin = min(t.datetime_start for t in trials if t.datetime_start is not None)
    done = sorted(t.datetime_complete for t in trials if t.datetime_complete is not None)
    tenth = max(1, len(done) // 10)
    return Result(
        trials_per_s=len(done) / seconds(begin, done[-1]),
        first_ms=seconds(begin, done[tenth - 1]) * 1000 / tenth,
        last_ms=seconds(done[-1 - tenth], done[-1]) * 1000 / tenth,
        wall_s=wall,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storages", nargs="+", default=list(STORAGES), choices=STORAGES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--case",
        action="append",
        metavar="SAMPLER:TRIALS:WORKERS",
        help="e.g. random:1000:4 (repeatable; default: the issue's three cases)",
    )
    parser.add_argument("--dir", help="where the study files go (default: a temporary directory)")
    args = parser.parse_args()
    cases = [(s, int(n), int(w)) for s, n, w in (c.split(":") for c in args.case or [])] or list(
        CASES
    )
    baseline = "journal" if "journal" in args.storages else args.storages[0]
    print(
        f"optuna {optuna.__version__}, {os.cpu_count()} CPUs, {args.repeats} repeats (medians), "
        f"files in {args.dir or tempfile.gettempdir()}\n"
    )
    print("| sampler | trials | W | storage | trials/s | vs journal | first 10 % ms/trial | "
          "last 10 % ms/trial | last/first | wall s |")  # fmt: skip
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="tunefleet-bench-", dir=args.dir) as directory:
        for sampler, n_trials, n_workers in cases:
            runs: dict[str, list[Result]] = {kind: [] for kind in args.storages}
            for _ in range(args.repeats):
                for kind in args.storages:  # alternately, so that noise hits every storage
                    runs[kind].append(run_one(kind, sampler, n_trials, n_workers, directory))
            for kind in args.storages:
                rs = runs[kind]
                ratio = statistics.median(
                    r.trials_per_s / b.trials_per_s for r, b in zip(rs, runs[baseline], strict=True)
                )
                first = statistics.median(r.first_ms for r in rs)
                last = statistics.median(r.last_ms for r in rs)
                growth = statistics.median(r.last_ms / r.first_ms for r in rs)
                print(
                    f"| {sampler} | {n_trials} | {n_workers} | {kind} | "
                    f"{statistics.median(r.trials_per_s for r in rs):.0f} | {ratio:.2f}x | "
                    f"{first:.2f} | {last:.2f} | {growth:.2f} | "
                    f"{statistics.median(r.wall_s for r in rs):.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
