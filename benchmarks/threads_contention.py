"""W PyTorch workers on one machine: each with its share of the CPUs vs each with all of them.

The tutorial's workers each start PyTorch with one thread per core, so three workers on two
cores run six busy threads. tunefleet gives each worker CPUs / W threads (``TUNEFLEET_THREADS``).
This runs the same ``tunefleet run torch-fashion-mnist`` both ways, interleaved, on synthetic
data, and compares the median trial time and the wall time.

    python benchmarks/threads_contention.py --workers 3 --trials 6 --epochs 2 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna

from tunefleet.objectives._base import cpu_count


def write_fashion_mnist(root: Path, n_train: int = 8000, n_test: int = 2000) -> None:
    """Synthetic images in the IDX layout the objective reads (a learnable bright row)."""
    rng = np.random.default_rng(0)
    directory = root / "fashion-mnist"
    directory.mkdir(parents=True)
    for part, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 80, (n, 28, 28)).astype(np.uint8)
        x[np.arange(n), y * 2, :] = 255
        for stem, a in ((f"{part}-images-idx3-ubyte", x), (f"{part}-labels-idx1-ubyte", y)):
            header = bytes([0, 0, 8, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape)
            (directory / stem).write_bytes(header + a.tobytes())


def one_run(
    root: Path, study: str, threads: int | None, args: argparse.Namespace
) -> dict[str, float]:
    env = {**os.environ, "TUNEFLEET_DATA_DIR": str(root)}
    env.pop("TUNEFLEET_THREADS", None)
    if threads is not None:
        env["TUNEFLEET_THREADS"] = str(threads)
    storage = f"sqlite:///{root / 'bench.db'}"
    command = [
        sys.executable, "-m", "tunefleet", "run", "torch-fashion-mnist", "--storage", storage,
        "--study", study, "--workers", str(args.workers), "--n-trials", str(args.trials),
        "--seed", "0", "--pruner", "none", "--objective-arg", f"epochs={args.epochs}",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    trials = optuna.load_study(study_name=study, storage=storage).trials
    durations = [t.duration.total_seconds() for t in trials if t.duration is not None]
    return {"wall": wall, "trial": statistics.median(durations)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--trials", type=int, default=6, help="trials per run [6]")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each kind, interleaved")
    args = parser.parse_args()
    cpus = cpu_count()
    kinds = {
        f"share ({max(1, cpus // args.workers)} thread/worker)": None,
        f"all cores ({cpus} threads/worker)": cpus,
    }
    results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="tunefleet-threads-") as tmp:
        root = Path(tmp)
        write_fashion_mnist(root)
        for r in range(args.rounds):
            for i, (kind, threads) in enumerate(kinds.items()):
                print(f"round {r + 1}: {kind} ...", file=sys.stderr)
                results[kind].append(one_run(root, f"s{r}-{i}", threads, args))
    print(f"\n{args.workers} workers on {cpus} CPUs, {args.trials} trials of {args.epochs} epochs")
    medians = {}
    for kind, runs in results.items():
        trial = float(np.median([x["trial"] for x in runs]))
        wall = float(np.median([x["wall"] for x in runs]))
        medians[kind] = trial
        each = ", ".join(f"{x['trial']:.2f}" for x in runs)
        print(f"  {kind:28} median trial {trial:6.2f}s (runs: {each})  median wall {wall:6.1f}s")
    share, oversubscribed = medians.values()
    print(f"  all cores / share, per trial: {oversubscribed / share:.1f}x")


if __name__ == "__main__":
    main()
