"""Nothing hangs: a silent connection, signals on a worker blocked on it, a stuck worker under
``run``, and ``run`` itself stopped or killed (issue 11, cases 1 and 3)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState

from .conftest import DATA, clean_env, tunefleet
from .fault_proxy import FaultProxy
from .test_chaos import live_worker_pids
from .test_fault_tolerance import assert_exact_and_clean, trials, wait_for

OBJ = str(DATA / "objectives.py")
CHATTY = str(DATA / "fault_objectives.py") + ":chatty"


def _through(proxy: FaultProxy, pg_url: str) -> str:
    head, _, rest = pg_url.partition("@")
    _hostport, _, database = rest.partition("/")
    return f"{head}@127.0.0.1:{proxy.port}/{database}"


def _popen(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tunefleet", *args],
        env={**clean_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _complete(url: str, study: str) -> int:
    return sum(t.state == TrialState.COMPLETE for t in trials(url, study))


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _failed_by_the_objective(url: str, study: str) -> list[FrozenTrial]:
    """Failed trials other than those handed back (lost, and re-run): e.g. a BrokenPipeError."""
    return [
        t
        for t in trials(url, study)
        if t.state == TrialState.FAIL and "tunefleet:lost" not in t.system_attrs
    ]


def test_a_silent_connection_is_dropped_and_the_worker_carries_on(pg_url: str) -> None:
    """The proxy swallows everything on the connections open now, for ever; new ones work again
    after a moment. Without a client-side bound the worker would wait for ever."""
    with FaultProxy(int(pg_url.rpartition(":")[2].partition("/")[0])) as proxy:
        url = _through(proxy, pg_url)
        worker = _popen(
            "worker",
            f"{OBJ}:sleepy",
            *("--study", "silent", "--storage", url, "--n-trials", "6"),
            *("--heartbeat-interval", "1", "--grace-period", "6"),
            env={"SLEEP_S": "0.5"},
        )
        try:
            wait_for(lambda: _complete(pg_url, "silent") >= 2, what="two trials")
            proxy.blackhole()
            time.sleep(3)
            proxy.heal()
            _out, err = worker.communicate(timeout=120)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert worker.returncode == 0, err
    assert "Traceback" not in err, err
    assert_exact_and_clean(pg_url, "silent", 6)


def test_sigterm_ends_a_worker_blocked_on_a_silent_connection(pg_url: str) -> None:
    with FaultProxy(int(pg_url.rpartition(":")[2].partition("/")[0])) as proxy:
        url = _through(proxy, pg_url)
        worker = _popen(
            "worker",
            f"{OBJ}:sleepy",
            *("--study", "stuck", "--storage", url, "--n-trials", "20"),
            env={"SLEEP_S": "0.3"},
        )
        try:
            wait_for(lambda: _complete(pg_url, "stuck") >= 1, what="a trial")
            proxy.blackhole()
            time.sleep(2)  # the trial in progress ends and its result waits on the dead socket
            started = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            worker.communicate(timeout=30)
            took = time.monotonic() - started
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert worker.returncode == 75, worker.returncode
    assert took < 12, took
    # Its trial is taken over once its heartbeat is old: the study still ends exact and clean.
    rest = tunefleet(
        "worker",
        f"{OBJ}:sleepy",
        *("--study", "stuck", "--storage", pg_url, "--n-trials", "20"),
        *("--heartbeat-interval", "0.5", "--grace-period", "2"),
        env={"SLEEP_S": "0.01"},
    )
    assert rest.returncode == 0, rest.stderr
    assert_exact_and_clean(pg_url, "stuck", 20)


def test_run_stops_a_stuck_worker_once_the_study_is_done(sqlite_url: str) -> None:
    fleet = _popen(
        "run",
        f"{OBJ}:sleepy",
        *("--study", "straggler", "--storage", sqlite_url, "--n-trials", "12", "--workers", "2"),
        *("--heartbeat-interval", "0.5", "--grace-period", "2"),
        env={"SLEEP_S": "0.3"},
    )
    try:
        wait_for(lambda: _complete(sqlite_url, "straggler") >= 2, what="two trials")
        pids = live_worker_pids(sqlite_url)
        os.kill(pids[0], signal.SIGSTOP)  # stuck for ever, as on a dead connection
        _out, err = fleet.communicate(timeout=120)
    finally:
        if fleet.poll() is None:
            fleet.kill()
            fleet.wait()
    assert fleet.returncode == 0, err
    assert "have not exited: stopping them" in err, err
    assert not _alive(pids[0])
    assert_exact_and_clean(sqlite_url, "straggler", 12)


def test_sigterm_on_run_hands_back_and_summarises(sqlite_url: str) -> None:
    study = ("--study", "term", "--storage", sqlite_url, "--n-trials", "24")
    fleet = _popen("run", CHATTY, *study, "--workers", "3", env={"SLEEP_S": "0.5"})
    try:
        wait_for(lambda: _complete(sqlite_url, "term") >= 3, what="three trials")
        pids = live_worker_pids(sqlite_url)
        fleet.send_signal(signal.SIGTERM)
        out, err = fleet.communicate(timeout=60)
    finally:
        if fleet.poll() is None:
            fleet.kill()
            fleet.wait()
    assert fleet.returncode == 143, err
    assert "stopping workers" in err, err
    assert "term" in out  # the summary
    assert not any(_alive(p) for p in pids)
    assert not _failed_by_the_objective(sqlite_url, "term")
    rest = tunefleet("worker", CHATTY, *study, env={"SLEEP_S": "0.01"})
    assert rest.returncode == 0, rest.stderr
    assert_exact_and_clean(sqlite_url, "term", 24)


def test_workers_die_with_a_killed_run_and_fail_nothing(sqlite_url: str) -> None:
    study = ("--study", "orphans", "--storage", sqlite_url, "--n-trials", "30")
    fleet = _popen("run", CHATTY, *study, "--workers", "3", env={"SLEEP_S": "0.5"})
    try:
        wait_for(lambda: _complete(sqlite_url, "orphans") >= 3, what="three trials")
        pids = live_worker_pids(sqlite_url)
        fleet.kill()
        fleet.wait()
        wait_for(lambda: not any(_alive(p) for p in pids), timeout=30, what="workers to exit")
    finally:
        if fleet.poll() is None:
            fleet.kill()
            fleet.wait()
    failed = _failed_by_the_objective(sqlite_url, "orphans")
    assert not failed, [t.system_attrs for t in failed]
    rest = tunefleet("worker", CHATTY, *study, env={"SLEEP_S": "0.01"})
    assert rest.returncode == 0, rest.stderr
    assert_exact_and_clean(sqlite_url, "orphans", 30)


def test_run_ends_at_the_deadline_with_a_stuck_worker_and_leaves_nothing_running(
    sqlite_url: str,
) -> None:
    fleet = _popen(
        "run",
        f"{OBJ}:sleepy",
        *("--study", "deadline", "--storage", sqlite_url, "--timeout", "30", "--workers", "2"),
        env={"SLEEP_S": "3"},
    )
    try:
        wait_for(lambda: bool(running_trials(sqlite_url, "deadline")), what="a running trial")
        pids = live_worker_pids(sqlite_url)
        os.kill(pids[0], signal.SIGSTOP)  # stuck inside its trial, past the deadline
        _out, err = fleet.communicate(timeout=120)
    finally:
        if fleet.poll() is None:
            fleet.kill()
            fleet.wait()
    assert fleet.returncode == 0, err
    assert not _alive(pids[0])
    left = [
        t
        for t in trials(sqlite_url, "deadline")
        if t.state in (TrialState.RUNNING, TrialState.WAITING)
    ]
    assert not left, left


def running_trials(url: str, study: str) -> list[FrozenTrial]:
    return [t for t in trials(url, study) if t.state == TrialState.RUNNING]


def test_an_outage_longer_than_db_wait_ends_run_with_exit_3_and_one_line(pg_url: str) -> None:
    with FaultProxy(int(pg_url.rpartition(":")[2].partition("/")[0])) as proxy:
        url = _through(proxy, pg_url)
        fleet = _popen(
            "run",
            f"{OBJ}:sleepy",
            *("--study", "outage", "--storage", url, "--n-trials", "200", "--workers", "2"),
            *("--db-wait", "3"),
            env={"SLEEP_S": "0.3"},
        )
        try:
            wait_for(lambda: _complete(pg_url, "outage") >= 2, what="two trials")
            proxy.cut()
            _out, err = fleet.communicate(timeout=120)
        finally:
            if fleet.poll() is None:
                fleet.kill()
                fleet.wait()
    assert fleet.returncode == 3, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "--db-wait" in last, err
