"""The chaos test: a fleet keeps its promises while workers are killed and stopped, connections
are cut, and the database restarts — with real processes and a real PostgreSQL."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from optuna.trial import TrialState
from sqlalchemy import text

from tunefleet.storage import open_storage

from .conftest import DATA, require
from .pgserver import ThrowawayPostgres, find_pg_bin
from .test_database_faults import recorded
from .test_fault_tolerance import assert_exact_and_clean, spawn, trials

OBJ = str(DATA / "objectives.py")
RECOVERY = ["--heartbeat-interval", "0.2", "--grace-period", "1.5", "--max-restarts", "200"]


def live_worker_pids(url: str) -> list[int]:
    storage = open_storage(url, db_wait=0)
    try:
        with storage.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT pid FROM tunefleet_workers WHERE finished_at IS NULL")
            ).all()
    except Exception:
        return []
    finally:
        storage.close()
    return [r[0] for r in rows]


def signal_one(url: str, sig: signal.Signals, rng: random.Random) -> bool:
    pids = live_worker_pids(url)
    rng.shuffle(pids)
    for pid in pids:
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            continue
    return False


def assert_every_result_accounted_for(url: str, study: str, record: Path) -> None:
    """Each computed value is stored once on its trial, unless its worker was killed before it
    could write it — then that trial is lost and was re-run; every stored value was computed."""
    by_number = {t.number: t for t in trials(url, study)}
    computed = recorded(record)
    numbers = [n for n, _ in computed]
    assert len(numbers) == len(set(numbers)), "a trial was computed twice"
    values = dict(computed)
    for number, value in computed:
        t = by_number[number]
        if t.state == TrialState.COMPLETE:
            assert t.value == value
        else:
            assert "tunefleet:lost" in t.system_attrs, (number, t.state, t.system_attrs)
    for t in by_number.values():
        if t.state == TrialState.COMPLETE:
            assert values.get(t.number) == t.value, f"trial {t.number} was never computed"


@pytest.fixture
def chaos_server() -> Iterator[ThrowawayPostgres]:
    require(find_pg_bin() is not None, "initdb/pg_ctl not found: install PostgreSQL")
    server = ThrowawayPostgres().start()
    yield server
    server.close()


@pytest.mark.parametrize("engine", ["fast", "stock"])
def test_chaos_on_postgres(chaos_server: ThrowawayPostgres, tmp_path: Path, engine: str) -> None:
    """On both PostgreSQL paths: tunefleet's fast one and Optuna's RDBStorage."""
    url, n_trials, rng = chaos_server.url(), 90, random.Random(7)
    record = tmp_path / "record.txt"
    fleet = spawn(
        "run",
        f"{OBJ}:sleepy",
        "--study",
        "chaos",
        "--storage",
        url,
        "--n-trials",
        str(n_trials),
        "--workers",
        "5",
        "--json",
        "--storage-engine",
        engine,
        *RECOVERY,
        env={"SLEEP_S": "0.15", "RECORD_FILE": str(record)},
    )
    counts = {"kill -9": 0, "SIGTERM": 0, "connections cut": 0, "database restarts": 0}
    deadline = time.monotonic() + 150
    step = 0
    time.sleep(3)
    while fleet.poll() is None and time.monotonic() < deadline:
        step += 1
        action = step % 4
        if action == 1 and signal_one(url, signal.SIGKILL, rng):
            counts["kill -9"] += 1
        elif action == 2 and signal_one(url, signal.SIGTERM, rng):
            counts["SIGTERM"] += 1
        elif action == 3:
            try:
                with psycopg.connect(chaos_server.url(), autocommit=True) as admin:
                    counts["connections cut"] += len(
                        admin.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                            "datname = 'postgres' AND pid <> pg_backend_pid() "
                            "AND backend_type = 'client backend'"
                        ).fetchall()
                    )
            except psycopg.OperationalError:
                pass
        elif action == 0 and counts["database restarts"] == 0 and step >= 8:
            chaos_server.stop("fast")
            time.sleep(2)
            chaos_server.resume()
            counts["database restarts"] += 1
        time.sleep(0.6)
    out, err = fleet.communicate(timeout=120)
    print("chaos:", counts)
    assert fleet.returncode == 0, err
    assert counts["kill -9"] >= 2 and counts["SIGTERM"] >= 2 and counts["database restarts"] == 1
    summary = json.loads(out)
    assert summary["budget"]["counted"] == n_trials
    assert summary["run"]["restarts"] >= counts["kill -9"]
    assert_exact_and_clean(url, "chaos", n_trials)
    assert_every_result_accounted_for(url, "chaos", record)


def test_chaos_on_the_embedded_store(tmp_path: Path) -> None:
    url, n_trials, rng = f"sqlite:///{tmp_path / 'tunefleet.db'}", 60, random.Random(11)
    record = tmp_path / "record.txt"
    fleet = spawn(
        "run",
        f"{OBJ}:sleepy",
        "--study",
        "chaos",
        "--storage",
        url,
        "--n-trials",
        str(n_trials),
        "--workers",
        "4",
        "--json",
        *RECOVERY,
        env={"SLEEP_S": "0.15", "RECORD_FILE": str(record)},
    )
    counts = {"kill -9": 0, "SIGTERM": 0}
    deadline = time.monotonic() + 120
    step = 0
    time.sleep(3)
    while fleet.poll() is None and time.monotonic() < deadline:
        step += 1
        sig = signal.SIGKILL if step % 2 else signal.SIGTERM
        if signal_one(url, sig, rng):
            counts["kill -9" if sig == signal.SIGKILL else "SIGTERM"] += 1
        time.sleep(0.7)
    out, err = fleet.communicate(timeout=120)
    print("chaos:", counts)
    assert fleet.returncode == 0, err
    assert counts["kill -9"] >= 2 and counts["SIGTERM"] >= 2
    assert json.loads(out)["budget"]["counted"] == n_trials
    assert_exact_and_clean(url, "chaos", n_trials)
    assert_every_result_accounted_for(url, "chaos", record)
