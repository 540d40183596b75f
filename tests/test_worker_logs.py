"""Worker log lines: one per trial event, naming the worker, as text or JSON lines; no password."""

from __future__ import annotations

import json
import logging
import re

import optuna

from tests.conftest import DATA, tunefleet
from tunefleet._logging import JsonFormatter, _ContextFilter, set_log_context
from tunefleet._redact import RedactingFilter, register_secret

OBJECTIVE = f"{DATA / 'monitor_objectives.py'}:mixed"
PASSWORD = "hunter2-not-logged"


def _with_password(pg_url: str) -> str:
    # The test server trusts loopback, so any password is accepted and must still never show.
    return pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


def test_json_lines_name_the_worker_and_each_trial_event(pg_url: str) -> None:
    url = _with_password(pg_url)
    result = tunefleet(
        "worker", OBJECTIVE, "--study", "logs", "--n-trials", "5", "--log-format", "json",
        env={"TUNEFLEET_STORAGE": url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert lines, "the worker logged nothing"
    for line in lines:
        assert {"time", "level", "logger", "message", "host", "pid", "worker"} <= set(line)
        assert line["time"].endswith("Z")
    (worker,) = {line["worker"] for line in lines}

    study = optuna.load_study(
        study_name="logs", storage=pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
    )
    assert {t.system_attrs["tunefleet:worker"] for t in study.trials} == {worker}
    messages = [line["message"] for line in lines]
    for trial in study.trials:
        event = {
            "COMPLETE": f"trial {trial.number} finished",
            "PRUNED": f"trial {trial.number} pruned",
            "FAIL": f"trial {trial.number} failed: RuntimeError",
        }[trial.state.name]
        assert sum(m.startswith(event) for m in messages) == 1, (event, messages)
    assert any("joined study logs" in m for m in messages)
    assert [line["level"] for line in lines if "failed" in line["message"]] == ["warning"]


def test_text_lines_carry_the_worker_in_brackets(sqlite_url: str) -> None:
    result = tunefleet(
        "worker", OBJECTIVE, "--study", "text", "--n-trials", "2", "--storage", sqlite_url
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "tunefleet.worker" in line]
    tagged = [
        re.search(r" (INFO|WARNING) tunefleet\.worker \[([^\]]+)\]: ", line) for line in lines
    ]
    assert lines and all(tagged), lines
    assert len({m[2] for m in tagged if m}) == 1


def test_run_passes_json_lines_through_from_its_workers(sqlite_url: str) -> None:
    result = tunefleet(
        "run", OBJECTIVE, "--study", "fleet-logs", "--n-trials", "4", "--workers", "2",
        "--storage", sqlite_url, "-v", "--log-format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert len({r["worker"] for r in records}) == 2
    # One line as each trial starts and one as it ends, each with its event as a JSON key.
    events = [r["event"] for r in records if r["message"].startswith("trial ")]
    assert events.count("started") == 4
    assert sum(e in ("finished", "pruned", "failed") for e in events) == 4
    finished = [r for r in records if r.get("event") == "finished"]
    assert all(isinstance(r["trial"], int) and r["values"] for r in finished)


def test_json_formatter_keeps_extra_fields_and_redacts_them() -> None:
    register_secret("s3cr3t-token")
    record = logging.LogRecord(
        "tunefleet.worker", logging.INFO, __file__, 1, "trial %d finished at %s", (3, "x"), None
    )
    record.trial = 3
    record.url = "postgresql://me:s3cr3t-token@db/x"
    set_log_context(worker="pod-7-1-abc")
    try:
        for f in _ContextFilter(), RedactingFilter():
            f.filter(record)
        line = json.loads(JsonFormatter().format(record))
    finally:
        set_log_context(worker=None)
    assert line["message"] == "trial 3 finished at x" and line["level"] == "info"
    assert line["trial"] == 3 and line["worker"] == "pod-7-1-abc"
    assert "s3cr3t-token" not in json.dumps(line) and line["url"].startswith("postgresql://me:")
