"""Nothing is lost when workers die, are stopped, or pause, or when the objective fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from tunefleet.recovery import requeue_trial
from tunefleet.storage import open_storage

from .conftest import DATA, clean_env, tunefleet

OBJ = str(DATA / "objectives.py")
FAST_RECOVERY = ("--heartbeat-interval", "0.2", "--grace-period", "1")


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = clean_env()
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "tunefleet", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def trials(url: str, study: str) -> list[FrozenTrial]:
    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=study, storage=storage.optuna).trials
    finally:
        storage.close()


def wait_for(condition: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (KeyError, ValueError):  # the study does not exist yet
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def running(url: str, study: str) -> list[FrozenTrial]:
    """Trials running with their parameters suggested (so the objective itself is running)."""
    return [t for t in trials(url, study) if t.state == TrialState.RUNNING and t.params]


def assert_exact_and_clean(url: str, study: str, n_trials: int) -> list[FrozenTrial]:
    """Exactly n counted trials, nothing RUNNING or WAITING, every lost trial re-run once with
    the same parameters, trial numbers unique."""
    all_trials = trials(url, study)
    lost = [t for t in all_trials if "tunefleet:lost" in t.system_attrs]
    reruns = {
        t.system_attrs["tunefleet:retry_of"]: t
        for t in all_trials
        if "tunefleet:retry_of" in t.system_attrs
    }
    counted = [t for t in all_trials if t not in lost]
    assert len(counted) == n_trials, [(t.number, t.state) for t in all_trials]
    assert not [t for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for t in lost:
        assert t.state == TrialState.FAIL
        assert t.number in reruns, f"lost trial {t.number} was not re-run"
        # A trial killed between two suggests holds only the first: the re-run repeats every
        # parameter the lost trial got (a later one is sampled afresh, as it never was before).
        # A re-run lost in turn hands them on: the first re-run that finished has them all.
        rerun = reruns[t.number]
        while "tunefleet:lost" in rerun.system_attrs:
            assert rerun.number in reruns, f"lost re-run {rerun.number} was not re-run"
            rerun = reruns[rerun.number]
        assert {k: rerun.params.get(k) for k in t.params} == t.params
        assert reruns[t.number].number > t.number
    assert len({t.number for t in all_trials}) == len(all_trials)
    return all_trials


def test_killed_worker_is_recovered_by_an_idle_worker(storage_url: str) -> None:
    _kill_and_recover(storage_url)


def test_killed_worker_is_recovered_on_the_stock_postgres_path(pg_url: str) -> None:
    _kill_and_recover(pg_url, "--storage-engine", "stock")


def _kill_and_recover(storage_url: str, *options: str) -> None:
    study = [
        "--study",
        "kill9",
        "--storage",
        storage_url,
        "--n-trials",
        "3",
        *options,
        *FAST_RECOVERY,
    ]
    doomed = spawn("worker", f"{OBJ}:sleepy", *study, env={"SLEEP_S": "60"})
    seen: list[FrozenTrial] = []
    # Kill it inside its sleep, once both parameters are stored: the re-run must repeat them all.
    wait_for(
        lambda: (
            bool(seen.extend(t for t in running(storage_url, "kill9") if "y" in t.params))
            or bool(seen)
        ),
        what="a running trial with both parameters",
    )
    doomed.kill()
    doomed.wait()
    victim = seen[0]
    # The survivor runs its own trials, then sits idle until the dead worker's trial is
    # declared lost: detection does not wait for a new trial to start.
    survivor = tunefleet("worker", f"{OBJ}:sleepy", *study, env={"SLEEP_S": "0.05"})
    assert survivor.returncode == 0, survivor.stderr
    all_trials = assert_exact_and_clean(storage_url, "kill9", 3)
    lost = next(t for t in all_trials if t.number == victim.number)
    assert "no heartbeat for more than 1s" in lost.system_attrs.get("tunefleet:lost", ""), (
        lost,
        survivor.stderr,
    )
    rerun = next(t for t in all_trials if t.system_attrs.get("tunefleet:retry_of") == lost.number)
    assert rerun.state == TrialState.COMPLETE
    assert rerun.params == victim.params


def test_sigterm_hands_the_trial_back_at_once(pg_url: str) -> None:
    study = ["--study", "term", "--storage", pg_url, "--n-trials", "2"]
    worker = spawn("worker", f"{OBJ}:sleepy", *study, env={"SLEEP_S": "60"})
    wait_for(lambda: len(running(pg_url, "term")) == 1, what="a running trial")
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 75  # stopped before the study was done
    assert time.monotonic() - started < 10
    # Handed back immediately, not left to the (default 60 s) grace period.
    all_trials = trials(pg_url, "term")
    assert [t.state for t in all_trials] == [TrialState.FAIL, TrialState.WAITING]
    assert "was stopped (SIGTERM)" in all_trials[0].system_attrs["tunefleet:lost"]
    finisher = tunefleet("worker", f"{OBJ}:sleepy", *study, env={"SLEEP_S": "0.05"})
    assert finisher.returncode == 0, finisher.stderr
    assert_exact_and_clean(pg_url, "term", 2)


def test_second_signal_stops_at_once(sqlite_url: str) -> None:
    worker = spawn("worker", f"{OBJ}:stubborn", "--storage", sqlite_url, "--n-trials", "1")
    wait_for(lambda: len(running(sqlite_url, "stubborn")) == 1, what="a running trial")
    worker.send_signal(signal.SIGTERM)
    time.sleep(1)
    assert worker.poll() is None, "the objective swallowed the first signal"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == -signal.SIGTERM


def test_paused_worker_declared_lost_carries_on_without_corrupting(pg_url: str) -> None:
    study = ["--study", "pause", "--storage", pg_url, "--n-trials", "6", *FAST_RECOVERY]
    slow = spawn("worker", f"{OBJ}:sleepy", *study, env={"SLEEP_S": "2.5"})
    wait_for(lambda: len(running(pg_url, "pause")) == 1, what="a running trial")
    os.kill(slow.pid, signal.SIGSTOP)  # a long GC pause, as far as anyone can tell
    fast = spawn("worker", f"{OBJ}:sleepy", *study, env={"SLEEP_S": "0.3"})
    wait_for(
        lambda: any("tunefleet:lost" in t.system_attrs for t in trials(pg_url, "pause")),
        what="the paused worker's trial to be declared lost",
    )
    os.kill(slow.pid, signal.SIGCONT)
    assert fast.wait(timeout=120) == 0, fast.stderr.read() if fast.stderr else ""
    _, slow_err = slow.communicate(timeout=120)
    assert slow.returncode == 0, slow_err
    assert "Traceback" not in slow_err
    assert_exact_and_clean(pg_url, "pause", 6)


# A real worker whose first taking over of stopped workers' trials blocks for 4 s, as behind a
# stopped worker's lock: longer than the grace period.
SLOW_REAPER = """
import sys, time
from tunefleet.storage._ledger import Ledger
original = Ledger.take_stale_claims
calls = []
def take_stale_claims(self, *args, **kwargs):
    if not calls:
        calls.append(1)
        time.sleep(4)
    return original(self, *args, **kwargs)
Ledger.take_stale_claims = take_stale_claims
from tunefleet.cli import main
main(sys.argv[1:])
"""


def test_a_worker_blocked_while_reaping_keeps_beating(pg_url: str) -> None:
    """Taking over a stopped worker's trials can wait on the database's locks; it happens in a
    thread of its own, so the worker's heartbeat goes on and no other worker declares it lost
    (when both shared a thread, a reaper stuck for longer than the grace period was)."""
    study = ["--study", "reaper", "--storage", pg_url, "--n-trials", "60", *FAST_RECOVERY]
    env = {**clean_env(), "SLEEP_S": "0.2"}
    blocked = subprocess.Popen(
        [sys.executable, "-c", SLOW_REAPER, "worker", f"{OBJ}:sleepy", *study],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    other = spawn("worker", f"{OBJ}:sleepy", *study, env={"SLEEP_S": "0.2"})
    _, blocked_err = blocked.communicate(timeout=120)
    _, other_err = other.communicate(timeout=120)
    assert blocked.returncode == 0 and other.returncode == 0, blocked_err + other_err
    assert "declared lost" not in blocked_err + other_err
    final = assert_exact_and_clean(pg_url, "reaper", 60)
    assert not [t for t in final if "tunefleet:lost" in t.system_attrs]
    workers = {t.system_attrs["tunefleet:worker"] for t in final}
    assert len(workers) == 2, "both workers ran trials throughout"


def test_local_fleet_restarts_a_killed_worker(pg_url: str, tmp_path: Path) -> None:
    args = [
        "run",
        f"{OBJ}:sleepy",
        "--study",
        "restart",
        "--storage",
        pg_url,
        "--n-trials",
        "16",
        "--workers",
        "2",
        "--json",
        *FAST_RECOVERY,
    ]
    fleet = spawn(*args, env={"SLEEP_S": "0.3"})
    busy: list[FrozenTrial] = []
    wait_for(lambda: len(busy.extend(running(pg_url, "restart")) or busy) > 0, what="a busy worker")
    victim = busy[0].system_attrs["tunefleet:worker"]
    pid = int(victim.split("-")[-2])
    os.kill(pid, signal.SIGKILL)
    out, err = fleet.communicate(timeout=180)
    assert fleet.returncode == 0, err
    summary = json.loads(out)
    assert summary["run"]["restarts"] == 1
    assert summary["requeued"] == 1
    assert summary["budget"]["counted"] == 16
    assert "killed by SIGKILL; restarted" in err
    assert_exact_and_clean(pg_url, "restart", 16)


def test_failed_trials_keep_their_traceback(sqlite_url: str) -> None:
    result = tunefleet(
        "run",
        f"{OBJ}:always_fails",
        "--storage",
        sqlite_url,
        "--n-trials",
        "2",
        "--workers",
        "1",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    for t in trials(sqlite_url, "always_fails"):
        assert t.system_attrs["fail_reason"] == "KeyError: 'never works'"
        trace = t.system_attrs["tunefleet:traceback"]
        assert trace.startswith("Traceback") and 'raise KeyError("never works")' in trace
        assert "tunefleet:lost" not in t.system_attrs


def test_a_worker_that_only_fails_while_others_complete_says_so(sqlite_url: str) -> None:
    study = ["--storage", sqlite_url, "--study", "machine"]
    good = tunefleet("worker", f"{OBJ}:quadratic", *study, "--n-trials", "2")
    assert good.returncode == 0, good.stderr
    bad = tunefleet("worker", f"{OBJ}:always_fails", *study, "--n-trials", "8")
    assert bad.returncode == 0, bad.stderr
    assert bad.stderr.count("in a row") == 1, bad.stderr  # at 5 failures, not again at 6
    assert "failed its last 5 trials in a row while other trials complete" in bad.stderr
    # Failing from the first trial on is the objective's fault, not this machine's: no warning,
    # the fleet stops as broken (tests/test_objective_failures.py).
    alone = ["--storage", sqlite_url, "--study", "broken", "--n-trials", "6"]
    broken = tunefleet("worker", f"{OBJ}:always_fails", *alone)
    assert broken.returncode == 5, broken.stderr
    assert broken.stderr.count("failed") >= 3 and "in a row" not in broken.stderr


def test_retry_failed_reruns_with_the_same_params(storage_url: str, tmp_path: Path) -> None:
    result = tunefleet(
        "run",
        f"{OBJ}:fails_first_attempt",
        "--storage",
        storage_url,
        "--n-trials",
        "4",
        "--workers",
        "2",
        "--retry-failed",
        "1",
        "--json",
        env={"MARKER_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    all_trials = trials(storage_url, "fails_first_attempt")
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE]
    failed = [t for t in all_trials if t.state == TrialState.FAIL]
    assert len(complete) == 4 and len(failed) == 4
    by_number = {t.number: t for t in all_trials}
    for t in complete:
        first = by_number[t.system_attrs["tunefleet:retry_of"]]
        assert first.params == t.params
        assert first.system_attrs["fail_reason"].startswith("RuntimeError: first attempt")
    assert json.loads(result.stdout)["budget"]["counted"] == 4


def test_retries_are_bounded(sqlite_url: str) -> None:
    result = tunefleet(
        "run",
        f"{OBJ}:always_fails",
        "--storage",
        sqlite_url,
        "--n-trials",
        "2",
        "--workers",
        "1",
        "--retry-failed",
        "2",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    all_trials = trials(sqlite_url, "always_fails")
    assert len(all_trials) == 6  # each of 2 parameter sets tried 1 + 2 times
    assert json.loads(result.stdout)["budget"]["counted"] == 2
    attempts = sorted(t.system_attrs.get("tunefleet:attempt", 1) for t in all_trials)
    assert attempts == [1, 1, 2, 2, 3, 3]


def test_no_password_in_anything_stored_on_trials(pg_url: str) -> None:
    """An objective that puts the storage URL in its exception: the stored reason and traceback
    are masked, like every log line."""
    secret = "Tr1al-Attr-Secret"
    url = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@", 1)
    result = tunefleet(
        "run",
        f"{OBJ}:leaks_the_url",
        "--storage",
        url,
        "--n-trials",
        "2",
        "--workers",
        "1",
        "--json",
        "-v",
    )
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    stored = trials(pg_url, "leaks_the_url")
    assert len(stored) == 2
    for t in stored:
        text = json.dumps([t.system_attrs, t.user_attrs, t.params])
        assert "fail_reason" in t.system_attrs and "tunefleet:traceback" in t.system_attrs
        assert secret not in text
        assert "***" in t.system_attrs["fail_reason"]


@pytest.mark.parametrize("flag", ["--grace-period", "--heartbeat-interval"])
def test_recovery_settings_are_validated(flag: str) -> None:
    result = tunefleet("worker", f"{OBJ}:quadratic", flag, "0.01" if "grace" in flag else "-1")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: invalid {flag}")


def test_a_lost_rerun_hands_on_every_parameter_it_was_given(storage_url: str) -> None:
    """A re-run killed after its first suggest holds one of the two parameters it was given;
    its own re-run must get both, not sample the second afresh."""
    storage = open_storage(storage_url)
    try:
        study = optuna.create_study(study_name="chain", storage=storage.optuna)
        storage.ledger.ensure_study(study._study_id, 5, None)
        study.enqueue_trial({"x": 0.25, "y": 7})
        taken = storage.ask_trial(study, "worker-a")
        assert taken is not None
        claim_id, trial = taken
        assert trial.suggest_float("x", 0, 1) == 0.25  # killed here, before suggesting y
        storage.ledger.mark_requeue(claim_id)
        rerun_id = requeue_trial(
            storage, study._study_id, claim_id, trial._trial_id, lost_reason="killed"
        )
        assert rerun_id is not None
        rerun = storage.optuna.get_trial(rerun_id)
        assert rerun.state == TrialState.WAITING
        assert rerun.system_attrs["fixed_params"] == {"x": 0.25, "y": 7}
        assert rerun.system_attrs["tunefleet:retry_of"] == trial.number
    finally:
        storage.close()
