"""One JSON schema for a study: ``run``, ``worker``, ``status``, ``studies`` and ``k8s status``
print the same snapshot of one study, key for key (docs/json-schema.md), also on a study that holds
trials stock Optuna made outside tunefleet's budget."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from .conftest import DATA, clean_env, tunefleet
from .k8s_fake import FakeCluster
from .test_k8s_cluster import _fleet, cluster, run_cli

__all__ = ["cluster"]  # the fixture, used below

OBJECTIVE = f"{DATA / 'objectives.py'}:quadratic"
#: Keys that move with the clock between two reads of an unchanged study (documented as such).
MOVING = {"rate_per_min", "rate_window_s", "heartbeat_age_s"}


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in MOVING}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _shared(snapshots: dict[str, dict[str, Any]]) -> set[str]:
    keys = set.intersection(*(set(s) for s in snapshots.values()))
    return keys


def test_every_command_prints_the_same_snapshot(
    pg_url: str, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    sa_url = pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
    first = tunefleet(
        "worker", OBJECTIVE, "--study", "agree", "--n-trials", "4", "--storage", pg_url
    )
    assert first.returncode == 0, first.stderr
    # Stock Optuna adds two trials of its own: outside the budget, but trials of the study.
    stock = optuna.load_study(study_name="agree", storage=sa_url)
    stock.optimize(lambda t: t.suggest_float("x", -10, 10) ** 2 - 100.0, n_trials=2)

    args = ["--study", "agree", "--storage", pg_url]
    ran = tunefleet("run", OBJECTIVE, *args, "--n-trials", "8", "--workers", "2", "-o", "json")
    assert ran.returncode == 0, ran.stderr
    joined = tunefleet("worker", OBJECTIVE, *args, "--json")
    assert joined.returncode == 0, joined.stderr
    status = tunefleet("status", *args, "-o", "json")
    studies = tunefleet("studies", "--storage", pg_url, "--json")
    assert status.returncode == 0 and studies.returncode == 0, status.stderr + studies.stderr

    _fleet(cluster, pg_url, objective=OBJECTIVE, study="agree", n_trials=8)
    code, out, err = run_cli(capsys, "k8s", "status", "--study", "agree", "-o", "json")
    assert code == 0, err

    snapshots = {
        "run": json.loads(ran.stdout),
        "worker": json.loads(joined.stdout),
        "status": json.loads(status.stdout),
        "studies": json.loads(studies.stdout)[0],
        "k8s status": json.loads(out)["study"],
    }
    shared = _shared(snapshots)
    # Every command prints the whole snapshot; run and worker add one key of their own.
    assert {"schema", "study", "n_trials", "states", "budget", "best", "workers"} <= shared
    assert set(snapshots["run"]) - shared == {"run"}
    assert set(snapshots["worker"]) - shared == {"worker"}
    reference = _stable({k: snapshots["status"][k] for k in shared})
    for command, snapshot in snapshots.items():
        assert _stable({k: snapshot[k] for k in shared}) == reference, command

    # And they say what the database says.
    s = snapshots["status"]
    assert s["schema"] == 1
    assert s["n_trials"] == len(stock.trials) == 10  # every trial, stock ones included
    assert s["budget"] == {"n_trials": 8, "counted": 8, "in_flight": 0, "left": 0}
    assert s["states"]["COMPLETE"] == 10 and s["done"] is True
    best = optuna.load_study(study_name="agree", storage=sa_url).best_trial
    assert s["best"]["number"] == best.number and s["best"]["values"] == [best.value]
    assert s["live_workers"] == 0 and s["eta_s"] == 0.0
    assert snapshots["worker"]["worker"]["n_trials"] == 0  # joined a study already done


def test_a_worker_never_writes_its_budget_back_on_exit(sqlite_url: str, tmp_path: Path) -> None:
    """A worker started with --n-trials 2 while another extends the budget to 4 ends with the
    study's budget at 4: its --json reads the study, and writes nothing."""
    go = tmp_path / "go"
    env = {**clean_env(), "GO_FILE": str(go)}
    held = f"{DATA / 'objectives.py'}:waits_for_file"
    common = ["--study", "grow", "--storage", sqlite_url]

    def worker(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "tunefleet", "worker", held, *common, *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def budget() -> int | None:
        result = tunefleet("status", *common, "--json")
        return json.loads(result.stdout)["budget"]["n_trials"] if result.returncode == 0 else None

    first = worker("--n-trials", "2", "--json")
    second: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 120
        while budget() != 2 and time.monotonic() < deadline:  # the first worker made the study
            time.sleep(0.5)
        second = worker("--n-trials", "4")
        while budget() != 4 and time.monotonic() < deadline:  # the second one extended it
            time.sleep(0.5)
        go.touch()  # both run to the end
        out, err = first.communicate(timeout=120)
        assert second.wait(timeout=120) == 0
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.kill()
    assert first.returncode == 0, err
    assert json.loads(out)["budget"]["n_trials"] == 4
    after = json.loads(tunefleet("status", *common, "--json").stdout)
    assert after["budget"] == {"n_trials": 4, "counted": 4, "in_flight": 0, "left": 0}
