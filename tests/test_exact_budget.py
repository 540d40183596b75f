"""The exact budget holds by construction on the stock engine: a slot taken back from a worker
declared lost can never also be filled by that worker (issue 11, case 4)."""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.engine import Connection

from tunefleet.recovery import RETRY_OF_ATTR, requeue_trial
from tunefleet.storage import FleetStorage, open_storage

from .conftest import DATA, clean_env
from .test_chaos import live_worker_pids
from .test_fault_tolerance import assert_exact_and_clean, trials, wait_for

OBJ = str(DATA / "objectives.py")
FAST_RECOVERY = ["--heartbeat-interval", "0.2", "--grace-period", "1"]

# A real worker process that stops itself (SIGSTOP) right after taking its first budget slot,
# before it creates the trial: the window in which it can be declared lost.
PAUSE_AFTER_CLAIM = """
import os, signal, sys
from tunefleet.storage._ledger import Ledger
original = Ledger.claim
paused = []
def claim(self, *args, **kwargs):
    taken = original(self, *args, **kwargs)
    if taken is not None and not paused:
        paused.append(taken)
        os.kill(os.getpid(), signal.SIGSTOP)
    return taken
Ledger.claim = claim
from tunefleet.cli import main
main(sys.argv[1:])
"""

# A real worker process that stops itself (SIGSTOP) inside Optuna's trial-creating transaction,
# with the study's row locked (FOR UPDATE): the lock every other worker's next trial waits for.
STOP_IN_CREATE = """
import os, signal, sys
from tunefleet.storage._ledger import CLAIM_ATTR, ClaimCheckedRDBStorage
original = ClaimCheckedRDBStorage._get_prepared_new_trial
stopped = []
def prepared(self, study_id, template_trial, session):
    trial = original(self, study_id, template_trial, session)
    if not stopped and template_trial is not None and CLAIM_ATTR in template_trial.system_attrs:
        stopped.append(trial)
        os.kill(os.getpid(), signal.SIGSTOP)
    return trial
ClaimCheckedRDBStorage._get_prepared_new_trial = prepared
from tunefleet.cli import main
main(sys.argv[1:])
"""


def _stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] == "T"


def _no_parameter_set_twice(url: str, study: str) -> None:
    done = [t for t in trials(url, study) if t.state == TrialState.COMPLETE]
    keys = [tuple(sorted(t.params.items())) for t in done]
    assert len(keys) == len(set(keys)), "a parameter set was completed twice"


def _exactly_n_complete_and_nothing_open(url: str, study: str, n: int) -> None:
    """The budget's promise as stock Optuna sees it. (A trial a reaper had begun to mark lost
    may still have been completed by its live worker: it is COMPLETE and keeps its slot, so it
    is counted, although it carries the lost attribute.)"""
    all_trials = trials(url, study)
    assert sum(t.state == TrialState.COMPLETE for t in all_trials) == n
    assert not [t for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.number for t in all_trials}) == len(all_trials)


@pytest.fixture(params=["embedded", "postgres"])
def stock_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "embedded":
        return f"sqlite:///{tmp_path / 'tunefleet.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_a_slot_taken_back_is_never_filled_by_the_paused_worker(stock_url: str) -> None:
    study = ["--study", "window", "--storage", stock_url, "--n-trials", "3"]
    args = [f"{OBJ}:sleepy", *study, "--storage-engine", "stock", *FAST_RECOVERY]
    env = {**clean_env(), "SLEEP_S": "0.05"}
    paused = subprocess.Popen(
        [sys.executable, "-c", PAUSE_AFTER_CLAIM, "worker", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: _stopped(paused.pid), timeout=60, what="the worker to stop itself")
        # Another worker declares it lost, takes its slot back and fills the whole budget.
        other = subprocess.run(
            [sys.executable, "-m", "tunefleet", "worker", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert other.returncode == 0, other.stderr
        os.kill(paused.pid, signal.SIGCONT)
        out, _ = paused.communicate(timeout=60)
    finally:
        if paused.poll() is None:
            paused.kill()
            paused.wait()
    assert paused.returncode == 0, out
    assert "was taken back while this worker was unresponsive" in out, out
    assert_exact_and_clean(stock_url, "window", 3)
    _no_parameter_set_twice(stock_url, "window")


@pytest.mark.parametrize("path", ["postgres", "pgbouncer"])
def test_a_worker_stopped_holding_the_study_lock_does_not_stop_the_others(
    path: str, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL ends the stopped worker's session once it has been idle inside the transaction
    for LOCK_IDLE_TIMEOUT_S, releasing the study's row: the others finish the study meanwhile.
    Resumed, the worker finds its connection gone and its slot taken back, and exits cleanly."""
    url = str(request.getfixturevalue("pgbouncer_url" if path == "pgbouncer" else "pg_url"))
    n = 6
    study = ["--study", "frozen", "--storage", url, "--n-trials", str(n)]
    args = [f"{OBJ}:sleepy", *study, "--storage-engine", "stock", *FAST_RECOVERY]
    env = {**clean_env(), "SLEEP_S": "0.05"}
    paused = subprocess.Popen(
        [sys.executable, "-c", STOP_IN_CREATE, "worker", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: _stopped(paused.pid), timeout=60, what="the worker to stop itself")
        started = time.monotonic()
        others = subprocess.run(
            [sys.executable, "-m", "tunefleet", "run", *args, "--workers", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        took = time.monotonic() - started
        assert others.returncode == 0, others.stderr[-3000:]
        assert _stopped(paused.pid), "the stopped worker was resumed before the others finished"
        os.kill(paused.pid, signal.SIGCONT)
        out, _ = paused.communicate(timeout=60)
    finally:
        if paused.poll() is None:
            os.kill(paused.pid, signal.SIGCONT)
            paused.kill()
            paused.wait()
    print(f"the others finished in {took:.1f}s")
    assert paused.returncode == 0, out
    assert "Traceback" not in out, out
    assert "was taken back while this worker was unresponsive" in out, out
    _exactly_n_complete_and_nothing_open(url, "frozen", n)
    _no_parameter_set_twice(url, "frozen")


def test_claim_ids_are_never_reused_on_the_embedded_store(tmp_path: Path) -> None:
    from sqlalchemy import text

    from tunefleet.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'ids.db'}")
    try:
        with storage.engine.connect() as conn:
            ddl = conn.execute(
                text("SELECT sql FROM sqlite_master WHERE name = 'tunefleet_claims'")
            ).scalar_one()
    finally:
        storage.close()
    assert "AUTOINCREMENT" in ddl


def _lose_the_answer_to_one_rerun_commit(storage: FleetStorage) -> list[str]:
    """The first COMMIT that queues a re-run reaches the database, and then its connection fails
    as a cut one does, before the answer reaches the client. Returns what was lost."""
    lost: list[str] = []

    @event.listens_for(storage.engine, "after_cursor_execute")
    def _note(conn: Connection, _cursor: object, statement: str, parameters: object,
              _context: object, _executemany: bool) -> None:  # fmt: skip
        if statement.startswith("INSERT INTO trial_system_attributes") and RETRY_OF_ATTR in str(
            parameters
        ):
            conn.info["queues_a_rerun"] = True

    @event.listens_for(storage.engine, "rollback")
    def _forget(conn: Connection) -> None:
        conn.info.pop("queues_a_rerun", None)

    @event.listens_for(storage.engine, "commit")
    def _commit(conn: Connection) -> None:
        if conn.info.pop("queues_a_rerun", False) and not lost:
            conn.connection.dbapi_connection.commit()  # type: ignore[union-attr]
            lost.append("the answer to a re-run's COMMIT")
            raise sqlalchemy.exc.OperationalError(
                "COMMIT", None, Exception("server closed the connection unexpectedly")
            )

    return lost


@pytest.mark.parametrize("engine", ["stock", "auto"])
def test_a_rerun_whose_commit_answer_was_lost_is_queued_once(stock_url: str, engine: str) -> None:
    """Optuna retries a trial's creation when its commit fails, and so does the retrier: a
    re-run whose commit went through but whose answer was lost must not be queued twice (the
    copy would run its parameters again, or be left waiting once the study is done)."""
    storage = open_storage(stock_url, engine=engine)
    try:
        study = optuna.create_study(
            study_name="lost-answer",
            storage=storage.optuna,
            sampler=optuna.samplers.RandomSampler(seed=0),
        )
        storage.ledger.ensure_study(study._study_id, 2, None)
        taken = storage.ask_trial(study, "w1")
        assert taken is not None
        claim_id, trial = taken
        trial.suggest_float("x", 0, 1)
        storage.ledger.mark_requeue(claim_id)
        lost = _lose_the_answer_to_one_rerun_commit(storage)
        rerun_id = requeue_trial(
            storage, study._study_id, claim_id, trial._trial_id, lost_reason="its worker died"
        )
        assert lost, "no commit's answer was lost: the test tests nothing"
        budget = storage.ledger.budget(study._study_id)
    finally:
        storage.close()
    reruns = [t for t in trials(stock_url, "lost-answer") if RETRY_OF_ATTR in t.system_attrs]
    assert len(reruns) == 1, f"{len(reruns)} re-runs of trial {trial.number} were queued"
    assert (reruns[0]._trial_id, reruns[0].state) == (rerun_id, TrialState.WAITING)
    assert reruns[0].system_attrs[RETRY_OF_ATTR] == trial.number
    assert budget.n_claimed == 0


def _resume(resume_at: dict[int, float], now: float) -> None:
    """SIGCONT the stopped workers due by ``now``."""
    for pid, due in list(resume_at.items()):
        if due <= now:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            del resume_at[pid]


@pytest.mark.timeout(600)  # 16 workers on a small, shared machine
@pytest.mark.parametrize("engine", ["stock", "auto"])
def test_sixteen_workers_killed_and_stopped_keep_the_budget_exact(
    stock_url: str, engine: str
) -> None:
    """16 workers, 6 of them killed (-9) and 3 stopped (SIGSTOP) for 3 to 12 s with a short
    grace period, on every engine the store has: exactly N counted, nothing left running, no
    parameter set completed twice."""
    n = 60
    args = [
        "run",
        f"{OBJ}:sleepy",
        "--study",
        "crowd",
        "--storage",
        stock_url,
        "--n-trials",
        str(n),
        "--workers",
        "16",
        "--storage-engine",
        engine,
        "--heartbeat-interval",
        "0.5",
        "--grace-period",
        "2",
        "--max-restarts",
        "100",
        "--sampler",
        "random",
    ]
    env = {**clean_env(), "SLEEP_S": "0.2"}
    fleet = subprocess.Popen(
        [sys.executable, "-m", "tunefleet", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rng = random.Random(11)
    resume_at: dict[int, float] = {}  # stopped workers, and when to resume each
    try:
        deadline = time.monotonic() + 40
        signalled = 0
        time.sleep(4)
        while fleet.poll() is None and time.monotonic() < deadline and signalled < 9:
            _resume(resume_at, time.monotonic())
            pids = [p for p in live_worker_pids(stock_url) if p not in resume_at]
            if pids:
                pid = rng.choice(pids)
                # Every third is stopped past the grace period and so past its lock idle bound
                # (half that): a lock it held is released, its slot taken back; then resumed.
                stop = signalled % 3 == 2
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP if stop else signal.SIGKILL)
                    if stop:
                        resume_at[pid] = time.monotonic() + rng.uniform(3, 12)
                    signalled += 1
            time.sleep(1.0)
        while resume_at:
            _resume(resume_at, time.monotonic())
            time.sleep(0.2)
        _out, err = fleet.communicate(timeout=480)
    finally:
        _resume(resume_at, math.inf)
        if fleet.poll() is None:
            fleet.kill()
            fleet.wait()
    assert fleet.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    _exactly_n_complete_and_nothing_open(stock_url, "crowd", n)
    _no_parameter_set_twice(stock_url, "crowd")
