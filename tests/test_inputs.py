"""Inputs are checked up front and reach every worker intact; every exit code is as documented
(issue 11, cases 5-9)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tunefleet._redact import redact, register_secret
from tunefleet.config import parse_objective_args, toml_value

from .conftest import DATA, clean_env, tunefleet
from .test_fault_tolerance import trials, wait_for

OBJ = str(DATA / "objectives.py")
FAULTS = str(DATA / "fault_objectives.py")
TYPED = FAULTS + ":typed"
README = Path(__file__).parent.parent / "README.md"


def test_objective_arguments_reach_every_worker_with_their_types(
    sqlite_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "study.toml"
    config.write_text(
        "[objective_args]\n"
        'table = { depth = 3, name = "a \\"b\\"", layers = [1, 2.5] }\n'
        "not_a_number = nan\n"
        "infinite = -inf\n"
        "day = 2024-05-17\n"
        "when = 2024-05-17T10:00:00Z\n"
        'text = "😀 tab\\there"\n',
        encoding="utf-8",
    )
    record = tmp_path / "seen.jsonl"
    result = tunefleet(
        "run",
        TYPED,
        *("--config", str(config), "--storage", sqlite_url, "--n-trials", "4", "--workers", "2"),
        *("--objective-arg", "flag=true"),
        env={"RECORD_FILE": str(record)},
    )
    assert result.returncode == 0, result.stderr
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(seen) == 4
    expected = {
        "table": ["dict", repr({"depth": 3, "name": 'a "b"', "layers": [1, 2.5]})],
        "not_a_number": ["float", "nan"],
        "infinite": ["float", "-inf"],
        "day": ["date", "datetime.date(2024, 5, 17)"],
        "when": ["datetime", "datetime.datetime(2024, 5, 17, 10, 0, tzinfo=datetime.timezone.utc)"],
        "text": ["str", repr("😀 tab\there")],
        "flag": ["bool", "True"],
    }
    for one in seen:
        assert one == expected


def test_the_objective_argument_codec_round_trips() -> None:
    values = {"nested": {"a b": [1, {"c": "d\\e\n"}]}, "big": 2**40, "f": 0.1, "empty": {}}
    back = parse_objective_args([f"{k}={toml_value(v)}" for k, v in values.items()])
    assert back == values


def test_redaction_covers_every_place_a_password_sits() -> None:
    register_secret("pw-in-query-77")
    cases = {
        "postgresql://tuner:P@ssw0rd!@db.example.com:5432/x": "postgresql://tuner:***@db",
        "postgresql://u@h/db?sslmode=require&password=pw-in-query-77": "password=***",
        "host=h user=u password=hunter2x dbname=d": "password=***",
        "POSTGRES://u:secret9@h/db and more": "POSTGRES://u:***@h",
    }
    for text, shown in cases.items():
        clean = redact(text)
        assert shown in clean, clean
        for secret in ("ssw0rd", "pw-in-query-77", "hunter2x", "secret9"):
            assert secret not in clean


def test_redaction_is_linear_on_megabytes() -> None:
    texts = [
        "a" * 4_000_000,
        "a://" * 1_000_000,
        "postgresql://u:" + "@" * 4_000_000,
        "password=" * 400_000,
        "x:" * 2_000_000,
    ]
    for text in texts:
        started = time.perf_counter()
        redact(text)
        # Quadratic took 3 s on 80 KB; linear takes well under a second per megabyte even on a
        # loaded machine. The bound is generous: it only catches a return to quadratic.
        assert time.perf_counter() - started < 20, text[:20]


def test_no_password_anywhere_a_url_with_a_query_password_is_shown(pg_url: str) -> None:
    base, _, database = pg_url.rpartition("/")
    url = f"{base}/{database}?password=Query-Secret-5"
    result = tunefleet(
        "run",
        f"{OBJ}:quadratic",
        "--n-trials",
        "2",
        "--workers",
        "1",
        "--json",
        env={"DATABASE_URL": url, "TUNEFLEET_STORAGE": url},
    )
    assert result.returncode == 0, result.stderr
    assert "Query-Secret-5" not in result.stdout + result.stderr
    status = tunefleet("status", "--json", env={"DATABASE_URL": url})
    assert "Query-Secret-5" not in status.stdout + status.stderr
    studies = tunefleet("studies", env={"DATABASE_URL": url})
    assert "Query-Secret-5" not in studies.stdout + studies.stderr


def test_an_unencoded_at_in_a_password_is_refused_without_showing_it() -> None:
    result = tunefleet(
        "run", f"{OBJ}:quadratic", "--storage", "postgresql://tuner:P@ssw0rd!@127.0.0.1/db"
    )
    assert result.returncode == 3
    assert "%40" in result.stderr
    assert "ssw0rd" not in result.stderr


def test_a_lone_worker_redacts_what_the_objective_prints(sqlite_url: str) -> None:
    result = tunefleet(
        "worker",
        f"{FAULTS}:prints_a_url",
        *("--storage", sqlite_url, "--n-trials", "1"),
        env={"LEAK": "postgresql://me:Printed-Secret-3@h/db"},
    )
    assert "Printed-Secret-3" not in result.stdout + result.stderr


def test_user_attributes_are_redacted_in_trials_json(sqlite_url: str, tmp_path: Path) -> None:
    code = (
        "import optuna\n"
        "def objective(trial):\n"
        "    trial.set_user_attr('dsn', 'postgresql://me:Attr-Secret-8@h/db')\n"
        "    return trial.suggest_float('x', 0, 1)\n"
    )
    (tmp_path / "attrs.py").write_text(code)
    ran = tunefleet(
        "run",
        f"{tmp_path / 'attrs.py'}:objective",
        "--storage",
        sqlite_url,
        "--n-trials",
        "1",
        "--workers",
        "1",
        "--study",
        "attrs",
    )
    assert ran.returncode == 0, ran.stderr
    shown = tunefleet("trials", "--study", "attrs", "--format", "json", "--storage", sqlite_url)
    assert shown.returncode == 0, shown.stderr
    assert "Attr-Secret-8" not in shown.stdout
    assert "me:***@h" in shown.stdout


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exit_code_table(
    tmp_path: Path, sqlite_url: str, pg_url: str
) -> list[tuple[str, list[str], int]]:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('study = "caf\xe9"\n'.encode("latin-1"))
    quick = [f"{OBJ}:quadratic", "--storage", sqlite_url, "--workers", "1"]
    dead = f"postgresql://u@127.0.0.1:{_closed_port()}/db"
    return [
        ("study done", ["run", *quick, "--n-trials", "2"], 0),
        ("worker: study done", ["worker", *quick[:3], "--n-trials", "2"], 0),
        ("bad option value", ["run", *quick, "--n-trials", "0"], 2),
        (
            "top seed, 3 workers",
            ["run", *quick[:3], "--workers", "3", "--n-trials", "6", "--seed", str(2**32 - 1)],
            0,
        ),
        ("negative seed", ["run", *quick, "--n-trials", "2", "--seed", "-1"], 2),
        ("seed above 2**32-1", ["run", *quick, "--n-trials", "2", "--seed", str(2**32)], 2),
        ("n_trials too large", ["run", *quick, "--n-trials", str(10**12)], 2),
        ("n_trials far too large", ["run", *quick, "--n-trials", str(10**20)], 2),
        ("non-UTF-8 config", ["run", *quick, "--config", str(latin1)], 2),
        ("study name with a newline", ["run", *quick, "--n-trials", "1", "--study", "a\n"], 2),
        ("objective not found", ["run", f"{OBJ}:nope", "--storage", sqlite_url], 2),
        (
            "workers kept failing",
            [
                "run",
                f"{FAULTS}:crashes",
                "--storage",
                sqlite_url,
                "--n-trials",
                "2",
                "--workers",
                "1",
                "--max-restarts",
                "0",
            ],
            1,
        ),
        (
            "database unreachable",
            ["run", f"{OBJ}:quadratic", "--storage", dead, "--db-wait", "0"],
            3,
        ),
        (
            "invalid port",
            ["run", f"{OBJ}:quadratic", "--storage", pg_url.replace(":5432/", ":99999/")],
            3,
        ),
        ("bad sslmode", ["run", f"{OBJ}:quadratic", "--storage", pg_url + "?sslmode=bogus"], 3),
    ]


def test_exit_codes_are_as_documented(tmp_path: Path, sqlite_url: str, pg_url: str) -> None:
    """Each scenario's exit code, and the same table in the README. Permanent connection errors
    fail at once (well inside the default --db-wait of 60 s); none prints a traceback."""
    readme = README.read_text()
    for scenario, args, code in _exit_code_table(tmp_path, sqlite_url, pg_url):
        started = time.monotonic()
        result = tunefleet(*args, cwd=tmp_path, timeout=120)
        assert result.returncode == code, (scenario, result.returncode, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (scenario, result.stderr)
        if code in (2, 3):
            lines = result.stderr.strip().splitlines()
            assert lines[-1].startswith("error: "), (scenario, result.stderr)
            assert time.monotonic() - started < 30, scenario
        assert re.search(rf"^\| {code} \|", readme, re.M), f"exit code {code} not in the README"


def test_a_budget_changed_by_another_run_is_announced(sqlite_url: str) -> None:
    study = ("--study", "budget", "--storage", sqlite_url)
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunefleet",
            "run",
            f"{OBJ}:sleepy",
            *study,
            "--n-trials",
            "400",
            "--workers",
            "1",
        ],
        env={**clean_env(), "SLEEP_S": "0.2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Its worker has joined (and set the budget to 400) before the other sets it to 6.
        wait_for(lambda: len(trials(sqlite_url, "budget")) >= 2, what="the first run's trials")
        second = tunefleet(
            "worker", f"{OBJ}:sleepy", *study, "--n-trials", "6", env={"SLEEP_S": "0.01"}
        )
        assert second.returncode == 0, second.stderr
        assert "budget changes from 400 to 6" in second.stderr, second.stderr
        _out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGINT)
            first.wait()
    assert first.returncode == 0, err
    assert "was changed to 6 trials by another run or worker" in err, err
