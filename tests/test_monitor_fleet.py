"""status, studies, best, trials and report after a real fleet run, checked against the database.

One fleet (two worker processes, 15 trials that complete, prune and fail) runs once per store;
every command is then compared with what stock Optuna and the ledger tables hold.
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine, text

from tests.browser import ARTIFACTS, chromium_or_skip, render_probe, screenshot
from tests.conftest import DATA, tunefleet
from tests.inprocess import run_cli

pytestmark = pytest.mark.slow

N_TRIALS = 15
OBJECTIVE = f"{DATA / 'monitor_objectives.py'}:mixed"


@dataclass(frozen=True)
class FleetRun:
    url: str
    kind: str
    study: optuna.Study

    def cli(self, *args: str) -> str:
        return run_cli(*args, "--storage", self.url)

    def process(self, *args: str) -> str:
        """The same command in a fresh ``tunefleet`` process, as a user runs it."""
        result = tunefleet(*args, "--storage", self.url, env={"COLUMNS": "200"})
        assert result.returncode == 0, result.stderr
        return result.stdout


def _sa_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FleetRun]:
    if request.param == "embedded":
        url = f"sqlite:///{tmp_path_factory.mktemp('fleet') / 'tunefleet.db'}"
        drop = None
    else:
        admin = str(request.getfixturevalue("pg_admin_url"))
        name = f"tunefleet_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = f"{admin.rpartition('/')[0]}/{name}"
        drop = (admin, name)
    try:
        result = tunefleet(
            "run", OBJECTIVE, "--study", "mixed", "--n-trials", str(N_TRIALS),
            "--workers", "2", "--seed", "3", "--storage", url,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        study = optuna.load_study(study_name="mixed", storage=_sa_url(url))
        yield FleetRun(url, request.param, study)
    finally:
        if drop is not None:
            with psycopg.connect(drop[0], autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(drop[1])
                    )
                )


def _registry(url: str) -> list[dict[str, object]]:
    engine = create_engine(_sa_url(url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM tunefleet_workers")).mappings().all()
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


def test_status_json_matches_the_database(fleet: FleetRun) -> None:
    trials = fleet.study.get_trials()
    status = json.loads(fleet.process("status", "--json"))

    assert status["study"] == "mixed"
    states = Counter(t.state.name for t in trials)
    assert {k: v for k, v in status["states"].items() if v} == dict(states)
    assert states["FAIL"] > 0 and states["PRUNED"] > 0 and states["COMPLETE"] > 0
    assert status["budget"] == {
        "n_trials": N_TRIALS,
        "counted": N_TRIALS,
        "in_flight": 0,
        "left": 0,
    }
    assert status["done"] is True and status["eta_s"] == 0.0
    assert status["rate_per_min"] > 0

    best = fleet.study.best_trial
    assert status["best"]["number"] == best.number and status["best"]["params"] == best.params
    assert status["best"]["values"] == [best.value] and status["best"]["state"] == "COMPLETE"

    per_worker = Counter(t.system_attrs["tunefleet:worker"] for t in trials)
    registry = {r["worker_id"]: r for r in _registry(fleet.url)}
    assert len(status["workers"]) == len(registry) == 2
    for row in status["workers"]:
        assert row["n_trials"] == per_worker[row["worker_id"]]
        by_state = Counter(
            t.state.name for t in trials if t.system_attrs["tunefleet:worker"] == row["worker_id"]
        )
        assert row["trials"] == dict(by_state)
        assert row["host"] == registry[row["worker_id"]]["host"]
        assert row["pid"] == registry[row["worker_id"]]["pid"]
        assert row["state"] == "finished" and row["exit_reason"] == "budget"
        assert row["current_trial"] is None and row["heartbeat_age_s"] >= 0


def test_status_text_shows_the_study_and_its_workers(fleet: FleetRun) -> None:
    out = fleet.process("status")
    assert "study mixed" in out and "done" in out
    assert f"{N_TRIALS} of {N_TRIALS} counted" in out
    for worker in {t.system_attrs["tunefleet:worker"] for t in fleet.study.trials}:
        assert worker in out


def test_status_watch_returns_once_the_study_is_done(fleet: FleetRun) -> None:
    out = fleet.cli("status", "--watch", "--interval", "0.2")
    assert "study mixed" in out and f"{N_TRIALS} of {N_TRIALS} counted" in out


def test_studies_lists_the_study_with_its_progress(fleet: FleetRun) -> None:
    (row,) = json.loads(fleet.cli("studies", "--json"))
    states = Counter(t.state.name for t in fleet.study.trials)
    assert row["study"] == "mixed" and row["directions"] == ["minimize"]
    assert row["budget"]["n_trials"] == N_TRIALS and row["budget"]["counted"] == N_TRIALS
    assert row["done"] is True
    assert {k: v for k, v in row["states"].items() if v} == dict(states)
    assert row["best"]["values"] == [fleet.study.best_value]
    assert row["live_workers"] == 0
    assert "mixed" in fleet.cli("studies")


def test_best_is_the_studys_best_trial(fleet: FleetRun) -> None:
    data = json.loads(fleet.cli("best", "--study", "mixed", "--json"))
    best = fleet.study.best_trial
    assert data["best"]["number"] == best.number and data["best"]["params"] == best.params
    assert data["best"]["values"] == [best.value]
    # best and trials print one trial object
    (same,) = (t for t in json.loads(fleet.cli("trials", "--json")) if t["number"] == best.number)
    assert data["best"] == same
    out = fleet.cli("best")
    assert f"(trial {best.number})" in out and "kind" in out


def test_trials_json_has_every_trial_as_stored(fleet: FleetRun) -> None:
    rows = json.loads(fleet.cli("trials", "--format", "json"))
    trials = fleet.study.get_trials()
    assert [r["number"] for r in rows] == [t.number for t in trials]
    for row, trial in zip(rows, trials, strict=True):
        assert row["state"] == trial.state.name
        assert row["values"] == trial.values
        assert row["params"] == trial.params
        assert row["user_attrs"] == trial.user_attrs == {"kind_was": trial.params["kind"]}
        assert row["worker"] == trial.system_attrs["tunefleet:worker"]
        assert row["fail_reason"] == trial.system_attrs.get("fail_reason")
        assert trial.duration is not None
        assert row["duration_s"] == pytest.approx(trial.duration.total_seconds(), abs=1e-5)
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert failed and all("broke on purpose" in r["fail_reason"] for r in failed)


def test_trials_csv_and_state_filter(fleet: FleetRun) -> None:
    table = list(csv.DictReader(io.StringIO(fleet.cli("trials", "--format", "csv"))))
    assert len(table) == len(fleet.study.trials)
    assert {"number", "state", "value", "worker", "params_x", "params_kind"} <= set(table[0])
    assert "user_attrs_kind_was" in table[0]

    only = json.loads(
        fleet.cli("trials", "--format", "json", "--state", "complete", "--state", "pruned")
    )
    wanted = [t.number for t in fleet.study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert [r["number"] for r in only] == wanted

    out = fleet.cli("trials", "--state", "fail")
    assert "broke on purpose" in out


def test_report_renders_every_plot_offline(fleet: FleetRun, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    fleet.cli("report", "--out", str(out))
    html = out.read_text()
    assert re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=", html, re.I) is None
    for section in ("history", "importances", "parallel", "slice", "intermediate", "timeline"):
        assert f'data-figure="{section}"' in html, section
    assert "Failed trials" in html and "broke on purpose" in html
    if fleet.kind != "postgres":
        return  # the page does not depend on the store: one browser run is enough
    chromium = chromium_or_skip()
    seen = render_probe(chromium, out)
    assert seen["plotly"] is True, seen["stderr"][-2000:]
    assert seen["errors"] == []
    names = {f["name"] for f in seen["figures"]}
    assert {"history", "importances", "parallel", "slice", "intermediate", "timeline"} <= names
    for figure in seen["figures"]:
        assert figure["drawn"], figure
        assert figure["width"] > 300 and figure["height"] > 200, figure
        assert figure["traces"] > 0 and figure["marks"] > 0, figure
    screenshot(chromium, out, ARTIFACTS / "report-fleet.png")
