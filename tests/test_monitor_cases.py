"""Monitoring on the studies that break naive code: empty, only failures, multi-objective, a
study made by stock Optuna, 10,000 trials, and the mistakes a user makes on the command line."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import optuna
import psycopg
import pytest

from tests.browser import ARTIFACTS, chromium_or_skip, render_probe, screenshot
from tests.bulk_study import make_bulk_study
from tests.conftest import DATA, tunefleet
from tests.inprocess import run_cli
from tunefleet import monitor
from tunefleet.config import StudySpec
from tunefleet.errors import StudyError
from tunefleet.objectives import load_objective
from tunefleet.storage import open_storage
from tunefleet.study import open_study

OBJECTIVES = DATA / "monitor_objectives.py"


def _sa(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def cli(url: str, *args: str) -> str:
    return run_cli(*args, "--storage", url)


def _check_rendered(page: Path, expected: set[str], artifact: str | None) -> None:
    chromium = chromium_or_skip()
    seen = render_probe(chromium, page)
    assert seen["plotly"] is True and seen["errors"] == [], seen["stderr"][-2000:]
    assert expected <= {f["name"] for f in seen["figures"]}
    for figure in seen["figures"]:
        assert figure["drawn"] and figure["traces"] > 0 and figure["marks"] > 0, figure
        assert figure["width"] > 300 and figure["height"] > 200, figure
    if artifact:
        screenshot(chromium, page, ARTIFACTS / artifact)


def test_empty_study(storage_url: str, tmp_path: Path) -> None:
    storage = open_storage(storage_url)
    objective = load_objective(f"{DATA / 'objectives.py'}:quadratic", {})
    open_study(storage, StudySpec(study="empty", n_trials=20), objective)
    storage.close()

    status = json.loads(cli(storage_url, "status", "--json"))
    assert status["n_trials"] == 0 and status["best"] is None and status["workers"] == []
    assert status["budget"] == {"n_trials": 20, "counted": 0, "in_flight": 0, "left": 20}
    assert status["done"] is False and status["eta_s"] is None and status["rate_per_min"] == 0
    assert "no trial completed yet" in cli(storage_url, "status")
    assert json.loads(cli(storage_url, "best", "--json"))["best"] is None
    assert "no trial completed yet" in cli(storage_url, "best")
    assert json.loads(cli(storage_url, "trials", "--format", "json")) == []
    assert cli(storage_url, "trials", "--format", "csv").startswith("number,state,value,")

    out = tmp_path / "empty.html"
    cli(storage_url, "report", "--out", str(out))
    html = out.read_text()
    assert "no trial has completed yet" in html and "no trial has started yet" in html
    assert "data-figure=" not in html


def test_study_with_only_failures(pg_url: str, tmp_path: Path) -> None:
    run = tunefleet(
        "run", f"{OBJECTIVES}:always_fails", "--study", "doomed", "--n-trials", "2",
        "--workers", "1", "--storage", pg_url,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr

    status = json.loads(cli(pg_url, "status", "--json"))
    # Two trials: a third failure in a row would stop the fleet as broken (test_objective_failures).
    assert {k: v for k, v in status["states"].items() if v} == {"FAIL": 2}
    assert status["best"] is None and status["done"] is True
    assert status["budget"]["counted"] == 2
    (worker,) = status["workers"]
    assert worker["trials"] == {"FAIL": 2}
    assert "no trial completed yet" in cli(pg_url, "best")
    rows = json.loads(cli(pg_url, "trials", "--format", "json"))
    assert [r["fail_reason"] for r in rows] == ["ValueError: this objective always fails"] * 2

    out = tmp_path / "failures.html"
    cli(pg_url, "report", "--out", str(out))
    html = out.read_text()
    assert "no trial has completed yet" in html and "this objective always fails" in html
    _check_rendered(out, {"timeline"}, None)


def test_multi_objective_study_shows_the_pareto_front(pg_url: str, tmp_path: Path) -> None:
    run = tunefleet(
        "run", f"{OBJECTIVES}:two_objectives", "--study", "pareto", "--n-trials", "10",
        "--workers", "2", "--direction", "minimize", "--direction", "minimize",
        "--sampler", "random", "--storage", pg_url,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    study = optuna.load_study(study_name="pareto", storage=_sa(pg_url))
    front = sorted(t.number for t in study.best_trials)

    best = json.loads(cli(pg_url, "best", "--json"))
    assert best["directions"] == ["minimize", "minimize"]
    assert [t["number"] for t in best["pareto_front"]] == front
    by_number = {t.number: t for t in study.trials}
    for row in best["pareto_front"]:
        assert row["values"] == by_number[row["number"]].values
        assert row["params"] == by_number[row["number"]].params
    assert f"Pareto front: {len(front)} trials" in cli(pg_url, "best")

    status = json.loads(cli(pg_url, "status", "--json"))
    assert status["n_pareto"] == len(front)
    assert {t["number"] for t in status["pareto_front"]} <= set(front)
    assert status["best"] is None

    out = tmp_path / "multi.html"
    cli(pg_url, "report", "--out", str(out))
    _check_rendered(out, {"pareto", "history-0", "history-1", "parallel-0", "timeline"}, None)


def test_study_made_by_stock_optuna(sqlite_url: str) -> None:
    """No tunefleet ledger: no budget, no workers, the rate measured on this machine's clock."""
    study = optuna.create_study(study_name="plain", storage=sqlite_url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=5)
    status = json.loads(cli(sqlite_url, "status", "--json"))
    assert status["states"]["COMPLETE"] == 5
    assert status["budget"] == {"n_trials": None, "counted": 5, "in_flight": 0, "left": None}
    assert status["best"]["values"] == [study.best_value]
    assert status["workers"] == [] and status["rate_per_min"] > 0
    (row,) = json.loads(cli(sqlite_url, "studies", "--json"))
    assert (
        row["study"] == "plain"
        and row["budget"]["n_trials"] is None
        and row["budget"]["counted"] == 5
    )


def test_ten_thousand_trials(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bulk = make_bulk_study(pg_url, "big", 10_000, n_workers=8)

    started = time.perf_counter()  # the real process: start-up included
    result = tunefleet("status", "--json", "--storage", pg_url)
    status_s = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert {k: v for k, v in status["states"].items() if v} == bulk.states
    assert status["best"]["values"][0] == pytest.approx(bulk.best_value)
    assert {w["worker_id"]: w["n_trials"] for w in status["workers"]} == bulk.per_worker

    out = tmp_path / "big.html"
    started = time.perf_counter()
    cli(pg_url, "report", "--out", str(out))
    report_s = time.perf_counter() - started
    html = out.read_text()
    assert f"a random sample of 2000 of {bulk.states['COMPLETE']} completed trials" in html
    assert "10000 trials on 8 workers" in html
    assert out.stat().st_size < 20_000_000

    # status must never load the trial list: make that path fail and read the status again.
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("status loaded every trial")

    monkeypatch.setattr(optuna.storages.RDBStorage, "get_all_trials", refuse)
    monkeypatch.setattr(monitor._status, "load_frozen_trials", refuse, raising=False)
    storage = monitor.open_existing_storage(pg_url)
    ref = monitor.resolve_study(storage, "big")
    started = time.perf_counter()
    assert monitor.read_status(storage, ref).n_trials == 10_000
    read_s = time.perf_counter() - started
    storage.close()

    ARTIFACTS.mkdir(exist_ok=True)
    timings = {"status_process_s": status_s, "status_read_s": read_s, "report_s": report_s}
    (ARTIFACTS / "timings-10k.json").write_text(json.dumps(timings, indent=1))
    print(f"10,000 trials: {timings}")


def test_mistakes_are_one_line_errors(tmp_path: Path, sqlite_url: str, pg_url: str) -> None:
    missing = tmp_path / "nowhere.db"
    result = tunefleet("status", "--storage", f"sqlite:///{missing}")
    assert result.returncode == 3 and not missing.exists()
    assert result.stderr.count("\n") == 1 and "no tunefleet store at" in result.stderr

    # A database nothing has run in (a mistyped URL, most likely) is reported, not given tables.
    for command in ("status", "trials", "studies"):
        result = tunefleet(command, "--storage", pg_url)
        assert result.returncode == 3, result.stderr
        assert result.stderr.count("\n") == 1 and "no studies in" in result.stderr
        assert "nothing has run there yet; check --storage" in result.stderr
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchall() == []

    storage = open_storage(sqlite_url)
    with pytest.raises(StudyError, match=r"no studies in .*: start one"):
        monitor.resolve_study(storage, None)
    for name in ("one", "two"):
        optuna.create_study(study_name=name, storage=sqlite_url)
    with pytest.raises(StudyError, match=r"no study 'three' in .* \(studies there: one, two\)"):
        monitor.resolve_study(storage, "three")
    storage.close()

    result = tunefleet("best", "--storage", sqlite_url)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "2 studies in" in result.stderr and "(one, two): pass --study NAME" in result.stderr

    result = tunefleet("trials", "--storage", sqlite_url, "--study", "one", "--state", "done")
    assert result.returncode == 2 and "unknown trial state 'done'" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_names_running_trials_and_their_workers(sqlite_url: str) -> None:
    """A trial in flight shows on its worker's row with how long it has run."""
    storage = open_storage(sqlite_url)
    objective = load_objective(f"{DATA / 'objectives.py'}:quadratic", {})
    fleet_study = open_study(storage, StudySpec(study="live", n_trials=5), objective)
    ledger = storage.ledger
    sid = fleet_study.study_id
    ledger.register_worker(sid, "pod-a-1-abcdef", "pod-a", 1)
    taken = storage.ask_trial(fleet_study.study, "pod-a-1-abcdef")
    assert taken is not None
    _, trial = taken

    ref = monitor.resolve_study(storage, None)
    status = monitor.read_status(storage, ref)
    (row,) = status.workers
    assert row.current_trial == trial.number and row.current_trial_s is not None
    assert status.n_in_flight == 1 and status.budget_left == 4 and not status.done
    assert Counter(status.states)["RUNNING"] == 1
    storage.close()
