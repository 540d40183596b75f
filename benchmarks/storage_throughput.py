"""Storage throughput: stock Optuna vs tunefleet on the same PostgreSQL, side by side.

Runs a trivial objective with W worker processes on a study of N trials, for each storage:

* ``optuna``          — stock Optuna: ``study.optimize(n_trials=N/W)`` in each process, a bare
  ``RDBStorage`` (what ``optuna.create_study(storage=URL)`` gives);
* ``optuna-cached``   — the same through ``optuna.storages.get_storage(URL)``: ``RDBStorage``
  behind Optuna's cache of finished trials;
* ``optuna-redis``    — stock Optuna on its Redis journal (``JournalRedisBackend``) against the
  Redis at ``$TUNEFLEET_BENCH_REDIS`` (default ``redis://127.0.0.1:6379/0``), each run under a key
  prefix of its own;
* ``tunefleet-stock`` — tunefleet workers on Optuna's RDBStorage (``--storage-engine stock``);
* ``tunefleet-fast``  — tunefleet workers on the fast path (the default on PostgreSQL).

With ``--repeats R`` the engines take turns, R rounds of one run each, so that a machine that
gets busier or quieter over time affects them alike; the table shows each one's median.

It starts a throwaway PostgreSQL (``pg_stat_statements`` loaded) from the binaries on this machine,
so statements and server time per trial are counted by the server itself. ``--rtt-ms`` puts a
delaying proxy between the workers and the server. Usage::

    python -m benchmarks.storage_throughput                       # the default matrix
    python -m benchmarks.storage_throughput --trials 2000 --workers 1 2 4 8 16 \\
        --samplers random tpe --params 2 14 --rtt-ms 0 2

Prints a Markdown table: trials/s (median of --repeats) and the ratio to stock Optuna in the same
configuration; per trial, the statements the workers sent (``pg_stat_statements``, top level),
commits, and CPU time of the worker processes (client) and of the server (every PostgreSQL
process and the Redis server, from ``/proc``); the peak number of connections per worker; and the
fleet's time per trial over the study's first and last 100 trials (how the cost grows with the
study's size). Redis sends no SQL and the latency proxy is PostgreSQL's: ``optuna-redis`` shows
"-" for statements, commits and connections, and is left out with ``--rtt-ms`` above 0.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import psycopg
from tests.latency_proxy import LatencyProxy
from tests.pgserver import ThrowawayPostgres

ENGINES = ("optuna", "optuna-cached", "optuna-redis", "tunefleet-stock", "tunefleet-fast")
REDIS_URL = os.environ.get("TUNEFLEET_BENCH_REDIS", "redis://127.0.0.1:6379/0")


def objective_2(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_int("y", -10, 10)
    return x * x + y


def objective_14(trial: optuna.Trial) -> float:
    total = 0.0
    for i in range(10):
        total += trial.suggest_float(f"f{i}", -1, 1) ** 2
    total += trial.suggest_int("i0", 0, 10) + trial.suggest_int("i1", 0, 10)
    total += len(trial.suggest_categorical("c0", ["a", "bb", "ccc"]))
    total += trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    return total


def _sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _worker(
    engine: str,
    url: str,
    study: str,
    n_trials: int,
    n_workers: int,
    index: int,
    sampler: str,
    params: int,
    barrier: mp.synchronize.Barrier,
    cpu: Any,
) -> None:
    """One worker process; adds the CPU seconds it spent after the start line to ``cpu``."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    func = objective_2 if params == 2 else objective_14
    if engine.startswith("optuna"):
        loaded = optuna.load_study(
            study_name=study, storage=_stock_storage(engine, url), sampler=_sampler(sampler, index)
        )
        barrier.wait()
        started = time.process_time()
        share = n_trials // n_workers + (1 if index < n_trials % n_workers else 0)
        loaded.optimize(func, n_trials=share)
        with cpu.get_lock():
            cpu.value += time.process_time() - started
        return
    from tunefleet.config import StudySpec
    from tunefleet.objectives import FunctionObjective
    from tunefleet.storage import open_storage
    from tunefleet.worker import Worker

    fleet_storage = open_storage(url, engine=engine.removeprefix("tunefleet-"))
    spec = StudySpec(study=study, n_trials=n_trials, sampler=sampler, seed=index, pruner="none")
    worker = Worker(fleet_storage, spec, FunctionObjective(func, "bench", {}))
    barrier.wait()
    started = time.process_time()
    worker.run()
    fleet_storage.close()
    with cpu.get_lock():
        cpu.value += time.process_time() - started


def _stock_storage(engine: str, url: str) -> optuna.storages.BaseStorage:
    """Stock Optuna's storage for ``engine``; ``url`` is the database's, or for Redis
    ``REDIS_URL#prefix``."""
    if engine == "optuna-cached":
        return optuna.storages.get_storage(url)
    if engine == "optuna-redis":
        from optuna.storages.journal import JournalRedisBackend

        redis_url, _, prefix = url.partition("#")
        return optuna.storages.JournalStorage(JournalRedisBackend(redis_url, prefix=prefix))
    return optuna.storages.RDBStorage(url)


@dataclass
class Result:
    trials_per_s: float
    statements: float
    commits: float
    client_cpu_ms: float
    server_cpu_ms: float
    peak_connections: int
    first_ms: float  # fleet-wide time per trial over the study's first 100 trials
    last_ms: float  # ... and over its last 100: the growth of the per-trial cost with its size


def _growth(url: str, redis_study: str | None = None) -> tuple[float, float]:
    """Time per completed trial over the first and the last 100 completions of the study."""
    if redis_study is not None:
        trials = optuna.load_study(
            study_name="bench", storage=_stock_storage("optuna-redis", redis_study)
        ).trials
        done = sorted(t.datetime_complete for t in trials if t.datetime_complete is not None)
    else:
        with psycopg.connect(url) as conn:
            done = [
                row[0]
                for row in conn.execute(
                    "SELECT datetime_complete FROM trials WHERE datetime_complete IS NOT NULL "
                    "ORDER BY datetime_complete"
                )
            ]
    window = min(100, len(done) // 2 - 1)
    if window < 1:
        return float("nan"), float("nan")

    def per_trial(a: int, b: int) -> float:
        return (done[b] - done[a]).total_seconds() * 1000 / (b - a)

    return per_trial(0, window), per_trial(len(done) - 1 - window, len(done) - 1)


def _stats(admin: psycopg.Connection, database: str) -> tuple[float, float]:
    """Statements the clients sent (top level: not those run inside a function) and commits."""
    calls = admin.execute(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
        "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s AND s.toplevel",
        (database,),
    ).fetchone()[0]  # type: ignore[index]
    commits = admin.execute(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (database,)
    ).fetchone()[0]  # type: ignore[index]
    return float(calls), float(commits)


_TICK = os.sysconf("SC_CLK_TCK")


def _server_cpu_s(server: ThrowawayPostgres) -> float:
    """CPU seconds used by the server so far: the postmaster, its live children, and the
    children it has reaped (backends of connections that closed)."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])

    def times(pid: int, reaped: bool) -> tuple[int, float]:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        if reaped:
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
        return int(fields[1]), ticks / _TICK  # ppid, seconds

    total = times(postmaster, reaped=True)[1]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(postmaster):
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid, seconds = times(int(entry.name), reaped=False)
                if ppid == postmaster:
                    total += seconds
    return total


def _redis_cpu_s() -> float:
    """CPU seconds used so far by the Redis servers on this machine (0 if none is visible)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                name, fields = (entry / "stat").read_text().rsplit(")", 1)
                if name.endswith("(redis-server"):
                    rest = fields.split()
                    total += (int(rest[11]) + int(rest[12])) / _TICK
    return total


def run_one(
    server: ThrowawayPostgres,
    engine: str,
    n_trials: int,
    n_workers: int,
    sampler: str,
    params: int,
    rtt_ms: float,
    tag: str,
) -> Result:
    database = f"bench_{tag}"
    admin_url = server.url()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {database}")
    url = server.url(database)
    # Create the schema and the study before timing, as every engine would find them.
    from tunefleet.storage import open_storage

    storage = open_storage(url, engine="stock")
    study_id = storage.optuna.create_new_study([optuna.study.StudyDirection.MINIMIZE], "bench")
    storage.ledger.ensure_study(study_id, n_trials, None)
    storage.close()
    redis_study = (
        f"{REDIS_URL}#tunefleet-bench-{os.getpid()}-{tag}:" if engine == "optuna-redis" else None
    )
    if redis_study is not None:
        optuna.create_study(study_name="bench", storage=_stock_storage(engine, redis_study))

    with (
        _maybe_proxy(server.port, rtt_ms) as port,
        psycopg.connect(admin_url, autocommit=True) as admin,
    ):
        worker_url = url.replace(f":{server.port}/", f":{port}/")
        # The set-up's connections are gone before the count of peak connections starts.
        while admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchone()[0]:  # type: ignore[index]
            time.sleep(0.05)
        admin.execute("SELECT pg_stat_statements_reset()")
        time.sleep(0.6)  # pg_stat_database is refreshed about every 500 ms
        calls0, commits0 = _stats(admin, database)
        server0 = _server_cpu_s(server) + _redis_cpu_s()
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(n_workers + 1)
        # Worker CPU is counted from the start line: start-up (imports) is not per-trial work.
        cpu = ctx.Value("d", 0.0)
        procs = [
            ctx.Process(
                target=_worker,
                args=(
                    engine,
                    redis_study or worker_url,
                    "bench",
                    n_trials,
                    n_workers,
                    i,
                    sampler,
                    params,
                    barrier,
                    cpu,
                ),
            )
            for i in range(n_workers)
        ]
        for p in procs:
            p.start()
        peak = _Peak(admin_url, database)
        barrier.wait(timeout=300)
        started = time.perf_counter()
        for p in procs:
            p.join()
        wall = time.perf_counter() - started
        server1 = _server_cpu_s(server) + _redis_cpu_s()
        peak.stop()
        time.sleep(0.6)
        calls1, commits1 = _stats(admin, database)
    first_ms, last_ms = _growth(url, redis_study)
    if redis_study is not None:
        _drop_redis_keys(redis_study.partition("#")[2])
    return Result(
        n_trials / wall,
        (calls1 - calls0) / n_trials,
        (commits1 - commits0) / n_trials,
        cpu.value * 1000 / n_trials,
        (server1 - server0) * 1000 / n_trials,
        peak.value,
        first_ms,
        last_ms,
    )


def _drop_redis_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


@contextlib.contextmanager
def _maybe_proxy(port: int, rtt_ms: float) -> Iterator[int]:
    if rtt_ms <= 0:
        yield port
        return
    with LatencyProxy(port, rtt_ms / 1000) as proxy:
        yield proxy.port


class _Peak:
    """Samples the database's connection count while the workers run."""

    def __init__(self, admin_url: str, database: str) -> None:
        self.value = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(admin_url, database))
        self._thread.start()

    def _run(self, admin_url: str, database: str) -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            while not self._stop.wait(0.05):
                n = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
                ).fetchone()[0]  # type: ignore[index]
                self.value = max(self.value, int(n))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--samplers", nargs="+", default=["random", "tpe"])
    parser.add_argument("--params", type=int, nargs="+", default=[2, 14], choices=[2, 14])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--rtt-ms", type=float, nargs="+", default=[0.0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    server = ThrowawayPostgres(
        settings={
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "all",
        }
    ).start()
    try:
        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        print(
            "| RTT | sampler | params | W | storage | trials/s | vs stock | statements/trial | "
            "commits/trial | client CPU ms/trial | server CPU ms/trial | peak conns/worker | "
            "ms/trial, first 100 | ms/trial, last 100 |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        tag = 0
        for rtt in args.rtt_ms:
            for sampler in args.samplers:
                for params in args.params:
                    for workers in args.workers:
                        engines = [e for e in args.engines if not (e == "optuna-redis" and rtt > 0)]
                        runs: dict[str, list[Result]] = {e: [] for e in engines}
                        for _ in range(args.repeats):
                            for engine in engines:  # in turns: see the module docstring
                                tag += 1
                                runs[engine].append(
                                    run_one(
                                        server,
                                        engine,
                                        args.trials,
                                        workers,
                                        sampler,
                                        params,
                                        rtt,
                                        str(tag),
                                    )
                                )
                        rates = {
                            e: statistics.median(r.trials_per_s for r in runs[e]) for e in engines
                        }
                        baseline = rates.get("optuna")
                        for engine in engines:
                            rate = rates[engine]
                            best = sorted(runs[engine], key=lambda r: r.trials_per_s)[
                                len(runs[engine]) // 2
                            ]
                            ratio = f"{rate / baseline:.1f}x" if baseline else "-"
                            on_pg = engine != "optuna-redis"  # Redis sends no SQL
                            print(
                                f"| {rtt:g} ms | {sampler} | {params} | {workers} | {engine} | "
                                f"{rate:.1f} | {ratio} | "
                                f"{f'{best.statements:.1f}' if on_pg else '-'} | "
                                f"{f'{best.commits:.1f}' if on_pg else '-'} | "
                                f"{best.client_cpu_ms:.2f} | {best.server_cpu_ms:.2f} | "
                                f"{f'{best.peak_connections / workers:.1f}' if on_pg else '-'} | "
                                f"{best.first_ms:.2f} | {best.last_ms:.2f} |",
                                flush=True,
                            )
    finally:
        server.close()


if __name__ == "__main__":
    main()
