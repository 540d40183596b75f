"""A broken or hung objective is loud: the fleet stops early, says where, and times out hung trials.

Every test runs real worker processes against a real store.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tunefleet.constants import ExitCode
from tunefleet.failures import TracebackFilter
from tunefleet.objectives import Objective, WorkerContext
from tunefleet.runner import ChildRunner
from tunefleet.storage import open_storage

from .conftest import DATA, tunefleet
from .test_fault_tolerance import running, spawn, trials, wait_for

OBJ = str(DATA / "objectives.py")
FAST_RECOVERY = ("--heartbeat-interval", "0.2", "--grace-period", "1")

BROKEN = """import optuna


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    loss = (x - 2) ** 2
    return los
"""


def states(url: str, study: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in trials(url, study):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def n_claimed(url: str, study: str) -> int:
    storage = open_storage(url)
    try:
        study_id = storage.optuna.get_study_id_from_name(study)
        return storage.ledger.budget(study_id).n_counted
    finally:
        storage.close()


@pytest.fixture(params=["embedded", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "embedded":
        return f"sqlite:///{tmp_path / 'tunefleet.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_a_typo_stops_the_fleet_and_the_fix_completes_the_budget(url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(BROKEN)
    command = ("run", f"{bad}:objective", "--storage", url, "--n-trials", "10", "--workers", "2")
    started = time.monotonic()
    broken = tunefleet(*command)
    assert broken.returncode == ExitCode.OBJECTIVE_BROKEN, broken.stderr
    assert time.monotonic() - started < 120
    err = broken.stderr
    assert f"{bad}:7" in err and "the objective is broken" in err
    assert "NameError: name 'los' is not defined" in err
    # The traceback once, whatever the number of workers and failed trials.
    assert err.count("Traceback (most recent call last)") == 1, err
    assert "return los" in err
    assert "fix the objective and run the same command again" in err
    failed = states(url, "objective")
    assert set(failed) == {"FAIL"} and 3 <= failed["FAIL"] <= 5, failed
    assert n_claimed(url, "objective") == 0  # the failed trials' budget was given back
    shown = tunefleet("trial", "0", "--storage", url)
    assert shown.returncode == 0, shown.stderr
    assert "Traceback" in shown.stdout and "return los" in shown.stdout
    assert "NameError" in tunefleet("trials", "--state", "fail", "--storage", url).stdout

    bad.write_text(BROKEN.replace("return los", "return loss"))
    fixed = tunefleet(*command, "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["budget"]["counted"] == 10
    after = states(url, "objective")
    assert after["COMPLETE"] == 10 and "RUNNING" not in after and "WAITING" not in after
    again = tunefleet(*command)
    assert again.returncode == 0 and "already done" in again.stderr
    assert "--n-trials 20" in again.stderr  # how to go on


@pytest.mark.parametrize(
    ("function", "reason"),
    [
        ("calls_sys_exit", "SystemExit: the objective called sys.exit(2)"),
        ("raises_keyboard_interrupt", "KeyboardInterrupt raised by the objective"),
    ],
)
def test_sys_exit_in_the_objective_fails_the_trial_not_the_worker(
    sqlite_url: str, function: str, reason: str
) -> None:
    result = tunefleet(
        "worker", f"{OBJ}:{function}", "--storage", sqlite_url, "--n-trials", "2", "--study", "s"
    )
    assert result.returncode == 0, result.stderr  # the study is done: 2 trials, both failed
    done = trials(sqlite_url, "s")
    assert [t.state for t in done] == [TrialState.FAIL] * 2
    assert all(t.system_attrs["fail_reason"] == reason for t in done)


def test_workers_in_separate_processes_see_the_same_stop(pg_url: str) -> None:
    # Three pods of one Job: separate processes sharing the run's id, as the manifest sets it.
    args = ("worker", f"{OBJ}:slow_fails", "--storage", pg_url, "--study", "s", *FAST_RECOVERY)
    env = {"TUNEFLEET_FLEET_ID": "job-1", "SLEEP_S": "0.5"}
    workers = [spawn(*args, "--n-trials", "50", env=env) for _ in range(3)]
    codes = [w.wait(timeout=180) for w in workers]
    errs = [w.communicate()[1] for w in workers]
    assert codes == [ExitCode.OBJECTIVE_BROKEN] * 3, errs
    assert all("the objective is broken" in e for e in errs)
    counts = states(pg_url, "s")
    assert set(counts) == {"FAIL"} and counts["FAIL"] <= 6, counts
    assert n_claimed(pg_url, "s") == 0


def test_max_failures_is_stored_with_the_study(sqlite_url: str) -> None:
    study = ("--storage", sqlite_url, "--study", "odd", "--n-trials", "30")
    first = tunefleet("worker", f"{OBJ}:fails_on_odd", *study, "--max-failures", "2")
    assert first.returncode == ExitCode.OBJECTIVE_BROKEN, first.stderr
    assert "more than --max-failures 2" in first.stderr
    done = trials(sqlite_url, "odd")
    assert len([t for t in done if t.state == TrialState.FAIL]) == 3
    # A worker started without the flag applies the study's policy all the same.
    second = tunefleet("worker", f"{OBJ}:fails_on_odd", *study)
    assert second.returncode == ExitCode.OBJECTIVE_BROKEN, second.stderr
    assert len([t for t in trials(sqlite_url, "odd") if t.state == TrialState.FAIL]) == 6


def test_hung_trials_time_out_and_the_budget_is_exact(url: str) -> None:
    result = tunefleet(
        "run",
        f"{OBJ}:hangs_on_odd",
        "--storage",
        url,
        "--study",
        "hang",
        "--n-trials",
        "6",
        "--workers",
        "2",
        "--trial-timeout",
        "1.5",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n_trials"] == 6
    done = trials(url, "hang")
    assert len(done) == 6 and not [t for t in done if not t.state.is_finished()]
    timed_out = [t for t in done if t.state == TrialState.FAIL]
    assert sorted(t.number for t in timed_out) == [1, 3, 5]
    assert all(t.system_attrs["fail_reason"].startswith("timed out after 1.5s") for t in timed_out)
    assert all(t.system_attrs["tunefleet:failure"] == "timeout" for t in timed_out)


def test_a_supervised_objective_keeps_its_data_and_its_pruning(
    sqlite_url: str, tmp_path: Path
) -> None:
    record = tmp_path / "loads.txt"
    timeout = ("--trial-timeout", "60")
    result = tunefleet(
        "worker",
        f"{OBJ}:loads_once",
        "--storage",
        sqlite_url,
        "--study",
        "once",
        "--n-trials",
        "5",
        *timeout,
        env={"RECORD_FILE": str(record)},
    )
    assert result.returncode == 0, result.stderr
    assert len(record.read_text().split()) == 1  # loaded once for five trials
    done = trials(sqlite_url, "once")
    assert [t.state for t in done] == [TrialState.COMPLETE] * 5
    assert len({t.user_attrs["pid"] for t in done}) == 1  # user attributes reach the trial
    pruned = tunefleet(
        "worker",
        f"{OBJ}:prunes_at_step_one",
        "--storage",
        sqlite_url,
        "--study",
        "pruned",
        "--n-trials",
        "3",
        *timeout,
    )
    assert pruned.returncode == 0, pruned.stderr
    done = trials(sqlite_url, "pruned")
    assert [t.state for t in done] == [TrialState.PRUNED] * 3
    assert all(t.intermediate_values == {0: t.params["x"], 1: t.params["x"] + 1} for t in done)


def test_a_supervised_objective_that_kills_its_process_fails_with_the_exit_code(
    sqlite_url: str,
) -> None:
    result = tunefleet(
        "worker",
        f"{OBJ}:exits_process",
        "--storage",
        sqlite_url,
        "--study",
        "dies",
        "--n-trials",
        "2",
        "--retry-failed",
        "1",
        "--trial-timeout",
        "60",
    )
    assert result.returncode == 0, result.stderr
    done = trials(sqlite_url, "dies")
    assert len(done) == 4  # 2 parameter sets, each tried twice
    assert all(t.state == TrialState.FAIL for t in done)
    assert all(
        t.system_attrs["fail_reason"] == "the objective's process died (exited 7)" for t in done
    )


def test_an_objective_that_kills_its_worker_is_not_rerun_for_ever(sqlite_url: str) -> None:
    result = tunefleet(
        "run",
        f"{OBJ}:exits_process",
        "--storage",
        sqlite_url,
        "--study",
        "dies",
        "--n-trials",
        "1",
        "--workers",
        "1",
        "--max-restarts",
        "10",
        *FAST_RECOVERY,
    )
    assert result.returncode == 0, result.stderr
    done = trials(sqlite_url, "dies")
    lost = [t for t in done if "tunefleet:lost" in t.system_attrs]
    final = [t for t in done if "tunefleet:lost" not in t.system_attrs]
    # Run three times in all (re-run --retry-failed + 2 times), then failed with the reason.
    assert len(lost) == 2 and len(final) == 1, [t.system_attrs for t in done]
    assert final[0].state == TrialState.FAIL
    assert "may kill its process" in final[0].system_attrs["fail_reason"]
    assert {t.params["x"] for t in done} == {final[0].params["x"]}


def test_sigterm_hands_a_supervised_trial_back(sqlite_url: str) -> None:
    worker = spawn(
        "worker",
        f"{OBJ}:sleepy",
        "--storage",
        sqlite_url,
        "--study",
        "term",
        "--n-trials",
        "3",
        "--trial-timeout",
        "120",
        env={"SLEEP_S": "60"},
    )
    wait_for(lambda: bool(running(sqlite_url, "term")), what="a running trial")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == ExitCode.INTERRUPTED, worker.communicate()[1]
    done = trials(sqlite_url, "term")
    assert done[0].state == TrialState.FAIL and "tunefleet:lost" in done[0].system_attrs
    assert done[1].state == TrialState.WAITING  # the re-run, same parameters
    assert done[1].system_attrs["fixed_params"] == done[0].params


def test_run_shows_each_distinct_traceback_once() -> None:
    header = (
        "2026-01-01 00:00:00 WARNING tunefleet.worker [w]: trial {n}: "
        "NameError at bad.py:7; traceback (once per distinct error):"
    )
    body = ["Traceback (most recent call last):", '  File "bad.py", line 7', "NameError: x"]
    f = TracebackFilter()
    first = [header.format(n=0), *body, "2026-01-01 00:00:01 WARNING next record"]
    assert [line for line in first if f.keep(0, line)] == first
    second = [header.format(n=1), *body, "2026-01-01 00:00:02 WARNING other"]
    assert [line for line in second if f.keep(1, line)] == [second[-1]]
    record = {"event": "traceback", "error_at": "NameError at bad.py:7", "message": "..."}
    assert not f.keep(2, json.dumps(record))
    assert f.keep(2, json.dumps({**record, "error_at": "KeyError at bad.py:9"}))


def test_failure_options_are_validated() -> None:
    for flag, value in (("--max-failures", "-1"), ("--trial-timeout", "0")):
        result = tunefleet("worker", f"{OBJ}:quadratic", flag, value)
        assert result.returncode == ExitCode.CONFIG
        assert result.stderr.startswith(f"error: invalid {flag}")


def test_failure_options_in_the_spec_file(tmp_path: Path) -> None:
    from tunefleet.config import load_spec

    spec_file = tmp_path / "study.toml"
    spec_file.write_text('objective = "x"\nmax_failures = 4\ntrial_timeout = 30\n')
    spec = load_spec(spec_file)
    assert spec.max_failures == 4 and spec.trial_timeout == 30.0
    args = spec.merged(study="s").worker_args()
    assert args[args.index("--max-failures") + 1] == "4"
    assert args[args.index("--trial-timeout") + 1] == "30.0"


class _Reports(Objective):
    name = "reports"

    def __call__(self, trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        trial.report(x, 0)  # one way: multi-objective studies refuse it in the worker
        trial.set_user_attr("seen", x)
        return x


def test_the_child_stand_in_reports_errors_of_one_way_calls() -> None:
    runner = ChildRunner(_Reports())
    runner.setup(WorkerContext())
    try:
        single = optuna.create_study()
        trial = single.ask()
        outcome = runner.run(trial, 60)
        assert outcome.kind == "value" and outcome.value == trial.params["x"]
        assert single._storage.get_trial(trial._trial_id).intermediate_values == {0: outcome.value}
        assert trial.user_attrs == {"seen": outcome.value}
        multi = optuna.create_study(directions=["minimize", "minimize"])
        outcome = runner.run(multi.ask(), 60)
        assert outcome.kind == "exception" and outcome.reason.startswith("NotImplementedError")
        assert runner.n_started == 1  # the same child ran both trials
    finally:
        runner.close()
