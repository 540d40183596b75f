"""How long monitoring takes on a 10,000-trial study, on PostgreSQL and the embedded store.

Side by side in one run: tunefleet's bulk trial loader against Optuna's ``get_all_trials``, and
the status, studies and report paths. Prints medians of a few repetitions and the ratio.

    python benchmarks/monitor_10k.py [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.bulk_study import make_bulk_study

from tunefleet import monitor

N_TRIALS = 10_000


def _median(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench(url: str, label: str, repeat: int, out_dir: Path) -> None:
    make_bulk_study(url, "big", N_TRIALS)
    storage = monitor.open_existing_storage(url)
    ref = monitor.resolve_study(storage, "big")
    rows = {
        "status (read_status)": _median(lambda: monitor.read_status(storage, ref), repeat),
        "studies (list_studies)": _median(lambda: monitor.list_studies(storage), repeat),
        "trials: tunefleet bulk loader": _median(
            lambda: monitor.load_frozen_trials(storage, ref.study_id), repeat
        ),
        "trials: optuna get_all_trials": _median(
            lambda: storage.optuna.get_all_trials(ref.study_id, deepcopy=False), repeat
        ),
        "report (build + write)": _median(
            lambda: monitor.write_report(storage, ref, out_dir / f"{label}.html"), repeat
        ),
    }
    storage.close()
    print(f"\n{label}: {N_TRIALS} trials, median of {repeat}")
    for name, seconds in rows.items():
        print(f"  {name:32s} {seconds:7.3f} s")
    ratio = rows["trials: optuna get_all_trials"] / rows["trials: tunefleet bulk loader"]
    print(f"  bulk loader is {ratio:.1f}x faster than get_all_trials")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        bench(f"sqlite:///{out / 'bench.db'}", "embedded", args.repeat, out)
        name = f"tunefleet_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            bench(f"{args.admin_url.rpartition('/')[0]}/{name}", "postgres", args.repeat, out)
        finally:
            with psycopg.connect(args.admin_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
