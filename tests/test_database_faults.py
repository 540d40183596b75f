"""The database misbehaves as a serverless Postgres does: connections killed, a restart, TLS."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from optuna.trial import TrialState

from tunefleet.storage import open_storage

from .conftest import DATA, require, tunefleet
from .pgserver import ThrowawayPostgres, find_pg_bin
from .test_fault_tolerance import assert_exact_and_clean, running, spawn, trials, wait_for

OBJ = str(DATA / "objectives.py")


def recorded(path: Path) -> list[tuple[int, float]]:
    """(trial number, value) for every value the objective computed."""
    if not path.exists():
        return []
    return [
        (int(n), float(v)) for n, v, _pid in (ln.split() for ln in path.read_text().splitlines())
    ]


def assert_results_written_once(url: str, study: str, record: Path) -> None:
    """Every value the objective computed is in the database, on its trial, exactly once."""
    complete = {t.number: t.value for t in trials(url, study) if t.state == TrialState.COMPLETE}
    computed = recorded(record)
    numbers = [n for n, _ in computed]
    assert len(numbers) == len(set(numbers)), "a trial was computed twice"
    for number, value in computed:
        assert complete.get(number) == value, (
            f"trial {number}: computed {value}, stored {complete.get(number)}"
        )
    assert set(complete) == set(numbers), "a stored value was never computed"


def test_killed_connections_are_reconnected(pg_url: str, pg_admin_url: str, tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    database = pg_url.rpartition("/")[2]
    fleet = spawn(
        "run",
        f"{OBJ}:sleepy",
        "--study",
        "cut",
        "--storage",
        pg_url,
        "--n-trials",
        "40",
        "--workers",
        "3",
        "--json",
        env={"SLEEP_S": "0.1", "RECORD_FILE": str(record)},
    )
    kills = 0
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        while fleet.poll() is None and kills < 25:
            time.sleep(0.3)
            kills += len(
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                ).fetchall()
            )
    out, err = fleet.communicate(timeout=180)
    assert fleet.returncode == 0, err
    assert kills >= 5, "the test should have killed connections while the fleet ran"
    assert json.loads(out)["budget"]["counted"] == 40
    assert_exact_and_clean(pg_url, "cut", 40)
    assert_results_written_once(pg_url, "cut", record)


@pytest.fixture
def restartable_server() -> Iterator[ThrowawayPostgres]:
    """A server of this test's own: restarting the shared one would disturb other tests."""
    require(find_pg_bin() is not None, "initdb/pg_ctl not found: install PostgreSQL")
    server = ThrowawayPostgres().start()
    yield server
    server.close()


def test_postgres_restart_mid_study(restartable_server: ThrowawayPostgres, tmp_path: Path) -> None:
    url = restartable_server.url()
    record = tmp_path / "record.txt"
    fleet = spawn(
        "run",
        f"{OBJ}:sleepy",
        "--study",
        "restart",
        "--storage",
        url,
        "--n-trials",
        "30",
        "--workers",
        "3",
        "--json",
        env={"SLEEP_S": "0.4", "RECORD_FILE": str(record)},
    )
    wait_for(
        lambda: len(recorded(record)) >= 6 and len(running(url, "restart")) >= 2,
        what="trials in flight",
    )
    restartable_server.stop("fast")
    time.sleep(4)  # results computed now must wait for the database, not be lost
    during = len(recorded(record))
    restartable_server.resume()
    out, err = fleet.communicate(timeout=240)
    assert fleet.returncode == 0, err
    assert "unavailable" in err and "is back" in err
    assert during >= 6
    assert json.loads(out)["budget"]["counted"] == 30
    assert_exact_and_clean(url, "restart", 30)
    assert_results_written_once(url, "restart", record)


@pytest.fixture(scope="module")
def tls_server() -> Iterator[ThrowawayPostgres]:
    require(find_pg_bin() is not None, "initdb/pg_ctl not found: install PostgreSQL")
    require(shutil.which("openssl") is not None, "openssl not installed: apt-get install openssl")
    server = ThrowawayPostgres(password="tls-Secret-9", ssl=True).start()
    yield server
    server.close()


def test_tls_parameters_are_honoured(tls_server: ThrowawayPostgres) -> None:
    url = (
        f"{tls_server.url()}?sslmode=verify-full&sslrootcert={tls_server.ca}"
        "&channel_binding=require"
    )
    storage = open_storage(url)
    with storage.engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).one()
    storage.close()
    assert row[0] is True
    result = tunefleet(
        "run", f"{OBJ}:quadratic", "--storage", url, "--n-trials", "3", "--workers", "1", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["budget"]["counted"] == 3


def test_tls_failure_is_one_clear_line(tls_server: ThrowawayPostgres, tmp_path: Path) -> None:
    wrong_ca = tmp_path / "other-ca.crt"
    wrong_ca.write_text("")  # an empty bundle trusts no certificate
    url = f"{tls_server.url()}?sslmode=verify-full&sslrootcert={wrong_ca}"
    result = tunefleet(
        "run", f"{OBJ}:quadratic", "--storage", url, "--n-trials", "1", "--db-wait", "0"
    )
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "sslmode" in lines[0] or "certificate" in lines[0].lower()
    assert "tls-Secret-9" not in result.stderr


def test_a_wrong_ca_fails_at_once_not_after_db_wait(
    tls_server: ThrowawayPostgres, tmp_path: Path
) -> None:
    wrong_ca = tmp_path / "other-ca.crt"
    wrong_ca.write_text("")
    url = f"{tls_server.url()}?sslmode=verify-full&sslrootcert={wrong_ca}"
    started = time.monotonic()
    result = tunefleet("run", f"{OBJ}:quadratic", "--storage", url, "--n-trials", "1")
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - started < 30  # the default --db-wait is 60 s
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_sslmode_disable_is_honoured_too(tls_server: ThrowawayPostgres) -> None:
    storage = open_storage(f"{tls_server.url()}?sslmode=disable")
    with storage.engine.connect() as conn:
        ssl = conn.exec_driver_sql(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).scalar_one()
    storage.close()
    assert ssl is False


def _peak_connections(pg_url: str, pg_admin_url: str, *args: str) -> int:
    """The most connections to the test's database seen while ``tunefleet *args`` ran."""
    database = pg_url.rpartition("/")[2]
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            while not stop.is_set():
                n = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
                ).fetchone()[0]  # type: ignore[index]
                peak = max(peak, n)
                time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = tunefleet(*args, "--storage", pg_url, env={"SLEEP_S": "0.02"})
    finally:
        stop.set()
        sampler.join()
    assert result.returncode == 0, result.stderr
    print(f"peak connections: {peak}")
    return peak


def test_connection_budget_per_worker(pg_url: str, pg_admin_url: str) -> None:
    """A worker needs few connections: a study of many workers must fit a database's limit."""
    # One worker alone holds at most 2, however often its loop, its background writes and its
    # heartbeat (here every 50 ms) meet.
    alone = ["worker", f"{OBJ}:sleepy", "--study", "alone", "--n-trials", "150"]
    assert 1 <= _peak_connections(pg_url, pg_admin_url, *alone, "--heartbeat-interval", "0.05") <= 2
    # A fleet: 2 per worker, and the parent's 2 for its progress display.
    fleet = ["run", f"{OBJ}:sleepy", "--study", "fleet", "--n-trials", "60", "--workers", "3"]
    assert 1 <= _peak_connections(pg_url, pg_admin_url, *fleet) <= 2 * 3 + 2
