"""Optuna's storage contract on every tunefleet path: parameter kinds checked across the study,
writes to finished trials refused, copies independent of the cache, one clock for stock Optuna and
tunefleet, and stock deletes that leave nothing behind."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from tunefleet.storage import FleetStorage, open_storage
from tunefleet.storage._fast_core import FastStorage

from .conftest import DATA, clean_env, tunefleet

OBJ = DATA / "objectives.py"
KIND_ERROR = "Cannot set different distribution kind to the same parameter name"


@pytest.fixture(params=["embedded", "pg-fast", "pg-stock", "pgbouncer-fast"])
def path_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(URL, engine) for each path a worker can take."""
    if request.param == "embedded":
        return f"sqlite:///{tmp_path / 'tunefleet.db'}", "auto"
    if request.param == "pgbouncer-fast":
        return str(request.getfixturevalue("pgbouncer_url")), "fast"
    return str(request.getfixturevalue("pg_url")), request.param.removeprefix("pg-")


@pytest.fixture
def opened(path_url: tuple[str, str]) -> Iterator[FleetStorage]:
    storage = open_storage(path_url[0], engine=path_url[1])
    yield storage
    storage.close()


def _study(storage: FleetStorage, name: str = "contract") -> optuna.Study:
    study = optuna.create_study(
        study_name=name,
        storage=storage.optuna,
        load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    storage.ledger.ensure_study(study._study_id, None, None)
    return study


def _ask(storage: FleetStorage, study: optuna.Study) -> optuna.Trial:
    taken = storage.ask_trial(study, "w1")
    assert taken is not None
    return taken[1]


def test_mixed_distributions_are_refused_on_every_path(
    opened: FleetStorage, path_url: tuple[str, str]
) -> None:
    study = _study(opened)
    first = _ask(opened, study)
    first.suggest_float("x", 0, 1)
    # Another trial of this process, still running: its kind counts before it is told.
    second = _ask(opened, study)
    with pytest.raises(ValueError, match=KIND_ERROR):
        second.suggest_int("x", 0, 10)
    study.tell(first, 0.5)
    # Another process that has never seen the name reads the study's record of it.
    other = open_storage(path_url[0], engine=path_url[1])
    try:
        other_study = _study(other)
        third = _ask(other, other_study)
        with pytest.raises(ValueError, match=KIND_ERROR):
            third.suggest_categorical("x", ["a", "b"])
        assert third.suggest_float("x", 0, 2) <= 2  # the same kind is fine
        other_study.tell(third, 1.0)
    finally:
        other.close()
    kinds = {type(d).__name__ for t in study.get_trials() for d in t.distributions.values()}
    assert kinds == {"FloatDistribution"}


def test_a_fleet_with_mixed_kinds_fails_the_odd_trials(path_url: tuple[str, str]) -> None:
    url, engine = path_url
    result = tunefleet(
        "run", f"{OBJ}:mixed_kinds", "--storage", url, "--storage-engine", engine,
        "--study", "mixed", "--n-trials", "6", "--workers", "1", "--sampler", "random", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    storage = open_storage(url, engine="stock")
    try:
        trials = optuna.load_study(study_name="mixed", storage=storage.optuna).get_trials()
    finally:
        storage.close()
    for trial in trials:
        if trial.number % 2:
            assert trial.state == TrialState.FAIL
            assert KIND_ERROR in trial.system_attrs["fail_reason"]
        else:
            assert trial.state == TrialState.COMPLETE
    # A stock Optuna process can join the study: it holds one kind of x.
    stock = optuna.load_study(study_name="mixed", storage=_stock_url(url))
    stock.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert stock.trials[-1].state == TrialState.COMPLETE


def test_a_write_to_a_finished_trial_raises(opened: FleetStorage) -> None:
    study = _study(opened)
    trial = _ask(opened, study)
    trial.suggest_float("x", 0, 1)
    study.tell(trial, 1.0)
    storage = opened.optuna
    distribution = FloatDistribution(0, 1)
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_param(trial._trial_id, "y", 0.5, distribution)
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial._trial_id, "k", 1)
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_intermediate_value(trial._trial_id, 1, 0.5)
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [2.0])
    assert storage.get_trial(trial._trial_id).values == [1.0]


@pytest.fixture(params=["embedded", "postgres"])
def fast_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store whose default engine is a fast one."""
    if request.param == "embedded":
        return f"sqlite:///{tmp_path / 'tunefleet.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_a_lost_trials_late_writes_are_dropped_and_logged(
    fast_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The fast engines defer writes; when another worker finished the trial meanwhile (declared
    it lost), they are dropped on purpose, and later writes and the tell raise as Optuna does,
    even a tell of the same state the other worker gave it."""
    worker = open_storage(fast_url)
    assert isinstance(worker.optuna, FastStorage)
    rescuer = open_storage(fast_url, engine="stock")
    try:
        study = _study(worker)
        trial = _ask(worker, study)
        trial.suggest_float("x", 0, 1)
        worker.optuna.flush()
        rescuer.optuna.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        trial.set_user_attr("late", 1)
        with caplog.at_level(logging.WARNING, logger="tunefleet.storage"):
            worker.optuna.flush()
        assert "declared lost" in caplog.text
        with pytest.raises(UpdateFinishedTrialError):
            trial.suggest_float("y", 0, 1)
        with pytest.raises((UpdateFinishedTrialError, ValueError)):
            study.tell(trial, state=TrialState.FAIL)
        stored = rescuer.optuna.get_trial(trial._trial_id)
        assert stored.state == TrialState.FAIL and "late" not in stored.user_attrs
    finally:
        worker.close()
        rescuer.close()


def test_a_flush_racing_a_tell_never_takes_the_trial_for_lost(
    fast_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The background flush writes a running trial's parameters while the worker may be telling
    it: a flush must never find the trial this process has just finished and take it for one
    another worker declared lost (a false warning, and a cache thrown away). A flush every
    millisecond races every tell."""
    storage = open_storage(fast_url)
    assert isinstance(storage.optuna, FastStorage)
    storage.optuna.flush_interval = 0.001
    try:
        study = _study(storage, "race")
        with caplog.at_level(logging.WARNING, logger="tunefleet.storage"):
            for _ in range(300):
                trial = _ask(storage, study)
                x = trial.suggest_float("x", 0, 1)
                trial.set_user_attr("x", x)
                study.tell(trial, x)
        assert "declared lost" not in caplog.text
    finally:
        storage.close()
    stock = optuna.load_study(study_name="race", storage=_stock_url(fast_url))
    assert [t.state for t in stock.trials] == [TrialState.COMPLETE] * 300
    assert all(t.user_attrs == {"x": t.params["x"]} == {"x": t.value} for t in stock.trials)


def test_a_tell_that_finds_its_trial_failed_by_another_is_not_already_told(pg_url: str) -> None:
    worker = open_storage(pg_url)
    rescuer = open_storage(pg_url, engine="stock")
    try:
        study = _study(worker)
        trial = _ask(worker, study)
        rescuer.optuna.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        with pytest.raises(UpdateFinishedTrialError):
            worker.optuna.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    finally:
        worker.close()
        rescuer.close()


def test_copies_share_nothing_with_the_cache(opened: FleetStorage) -> None:
    study = _study(opened)
    trial = _ask(opened, study)
    trial.suggest_categorical("c", ["a", "b"])
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr("list", [1, 2])
    study.tell(trial, 1.0)
    for copy in (opened.optuna.get_trial(trial._trial_id), study.get_trials()[0]):
        copy.distributions["x"].high = 99.0  # type: ignore[attr-defined]
        copy.user_attrs["list"].append(3)
        copy.params["x"] = -1.0
    again = study.get_trials()[0]
    assert again.distributions["x"].high == 1.0  # type: ignore[attr-defined]
    assert again.user_attrs["list"] == [1, 2]
    assert again.params["x"] != -1.0
    assert opened.optuna.get_trial(trial._trial_id).distributions["x"].high == 1.0  # type: ignore[attr-defined]


# -- stock deletes ----------------------------------------------------------------------------


def _stock_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


# The `optuna` command, run from this interpreter (its script may live in another environment).
_OPTUNA_CLI = "import sys, optuna.cli; sys.argv[0] = 'optuna'; sys.exit(optuna.cli.main())"


def _run(url: str, study: str, n: int) -> dict[str, object]:
    result = tunefleet(
        "run", f"{OBJ}:quadratic", "--storage", url, "--study", study, "--n-trials", str(n),
        "--workers", "2", "--sampler", "random", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary: dict[str, object] = json.loads(result.stdout)
    return summary


@pytest.mark.parametrize("backend", ["embedded", "postgres"])
def test_stock_delete_study_then_a_new_study(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'tunefleet.db'}"
        if backend == "embedded"
        else str(request.getfixturevalue("pg_url"))
    )
    assert _run(url, "first", 3)["states"]["COMPLETE"] == 3  # type: ignore[index]
    deleted = subprocess.run(
        [sys.executable, "-c", _OPTUNA_CLI, "delete-study", "--storage", _stock_url(url),
         "--study-name", "first"],
        env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert deleted.returncode == 0, deleted.stderr
    # The same name and another, each with a larger budget: nothing of the deleted study's
    # budget, claims or workers is inherited (SQLite reuses the deleted study's id).
    for name in ("first", "second"):
        summary = _run(url, name, 5)
        assert summary["n_trials"] == 5, summary
        assert summary["states"]["COMPLETE"] == 5, summary  # type: ignore[index]
        assert summary["states"]["RUNNING"] == 0, summary  # type: ignore[index]
    # Optuna's own CLI reads the tunefleet study through the same URL.
    listed = subprocess.run(
        [sys.executable, "-c", _OPTUNA_CLI, "trials", "--storage", _stock_url(url),
         "--study-name", "second", "-f", "json"],
        env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert [row["state"] for row in json.loads(listed.stdout)] == ["COMPLETE"] * 5
    optuna.delete_study(study_name="second", storage=_stock_url(url))
    assert _run(url, "third", 4)["states"]["COMPLETE"] == 4  # type: ignore[index]


_ORPHANS = """
SELECT (SELECT count(*) FROM tunefleet_studies WHERE study_id NOT IN (SELECT study_id FROM studies))
     + (SELECT count(*) FROM tunefleet_claims WHERE study_id NOT IN (SELECT study_id FROM studies))
     + (SELECT count(*) FROM tunefleet_workers WHERE study_id NOT IN (SELECT study_id FROM studies))
"""


def test_rows_a_stock_delete_left_before_the_trigger_are_removed(tmp_path: Path) -> None:
    """An embedded store from before the trigger may hold tunefleet rows of studies stock Optuna
    deleted. SQLite gives the deleted study's id to the next study, which would inherit the
    spent budget: the first tunefleet to open the store removes them as it adds the trigger."""
    db = tmp_path / "tunefleet.db"
    url = f"sqlite:///{db}"
    assert _run(url, "first", 3)["states"]["COMPLETE"] == 3  # type: ignore[index]
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DROP TRIGGER tunefleet_study_deleted")
    optuna.delete_study(study_name="first", storage=url)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute(_ORPHANS).fetchone()[0] > 0, "the stock delete left nothing behind"
    summary = _run(url, "second", 5)
    assert summary["n_trials"] == 5, summary
    assert summary["states"]["COMPLETE"] == 5, summary  # type: ignore[index]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute(_ORPHANS).fetchone()[0] == 0
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall() == [
            ("tunefleet_study_deleted",)
        ]


# -- one clock --------------------------------------------------------------------------------

_STOCK_WORKER = """
import sys, optuna
study = optuna.load_study(study_name=sys.argv[2], storage=sys.argv[1])
study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
"""


def _now_in(zone: str) -> dt.datetime:
    return dt.datetime.now(ZoneInfo(zone)).replace(tzinfo=None)


@pytest.mark.parametrize(
    ("engine", "ours", "stocks"),
    [("fast", "Asia/Tokyo", "America/New_York"), ("stock", "America/New_York", "Asia/Tokyo")],
)
def test_stock_optuna_and_tunefleet_agree_across_time_zones(
    engine: str, ours: str, stocks: str, storage_url: str, tmp_path: Path
) -> None:
    """tunefleet workers in one zone (including a re-run the ledger starts) and a stock Optuna
    process in another, on one study: every trial's times agree with the clock, as read by stock
    Optuna and by `tunefleet trials` in a third zone, and every duration is short."""
    name = "zones"
    before = dt.datetime.now() - dt.timedelta(seconds=2)
    first = tunefleet(
        "run", f"{OBJ}:fails_first_attempt", "--storage", storage_url, "--storage-engine", engine,
        "--study", name, "--n-trials", "3", "--workers", "1", "--sampler", "random",
        "--retry-failed", "1", env={"TZ": ours, "MARKER_DIR": str(tmp_path)},
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    stock = subprocess.run(
        [sys.executable, "-c", _STOCK_WORKER, _stock_url(storage_url), name],
        env={**clean_env(), "TZ": stocks}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert stock.returncode == 0, stock.stderr
    second = tunefleet(
        "worker", f"{OBJ}:quadratic", "--storage", storage_url, "--storage-engine", engine,
        "--study", name, "--n-trials", "5", env={"TZ": ours},
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    after = dt.datetime.now() + dt.timedelta(seconds=2)

    trials = optuna.load_study(study_name=name, storage=_stock_url(storage_url)).get_trials()
    # 5 counted, each first attempt of the first run failed, 2 of stock Optuna
    assert len(trials) >= 8
    assert [t for t in trials if "tunefleet:retry_of" in t.system_attrs], "a re-run was asked"
    for trial in trials:
        assert trial.datetime_start is not None and trial.datetime_complete is not None
        assert before <= trial.datetime_start <= trial.datetime_complete <= after, trial
        assert (trial.datetime_complete - trial.datetime_start).total_seconds() < 120

    reader = "Australia/Adelaide"  # +10:30 / +9:30: an offset no writer had
    listed = tunefleet(
        "trials", "--storage", storage_url, "--study", name, "--format", "json",
        env={"TZ": reader},
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == len(trials)
    low = _now_in(reader) - (dt.datetime.now() - before)
    for row in rows:
        start = dt.datetime.fromisoformat(row["datetime_start"]).replace(tzinfo=None)
        assert low <= start <= _now_in(reader), row
