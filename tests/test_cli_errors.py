"""Every mistake a user can make: one line naming the problem and the fix, a non-zero exit code,
no traceback (unless --debug), and never the password."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import DATA, require, tunefleet
from .pgserver import ThrowawayPostgres, find_pg_bin

OBJ = str(DATA / "objectives.py")
PASSWORD = "Sup3r-Secret-pw"


@pytest.fixture(scope="module")
def password_server() -> Iterator[ThrowawayPostgres]:
    """A server that checks passwords: the shared one trusts every loopback connection."""
    require(
        find_pg_bin() is not None,
        "initdb/pg_ctl not found: apt-get install postgresql (the server binaries)",
    )
    server = ThrowawayPostgres(password=PASSWORD).start()
    yield server
    server.close()


def assert_one_line_error(result: object, fragment: str, code: int | None = None) -> str:
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert result.returncode != 0, stderr  # type: ignore[attr-defined]
    if code is not None:
        assert result.returncode == code, stderr  # type: ignore[attr-defined]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in stderr
    assert PASSWORD not in stderr + result.stdout  # type: ignore[attr-defined]
    return lines[0]


def test_unreachable_host(tmp_path: Path) -> None:
    url = f"postgresql://me:{PASSWORD}@127.0.0.1:1/tuning"
    result = tunefleet(
        "run", "sklearn-iris", "--storage", url, "--n-trials", "1", "--db-wait", "0", cwd=tmp_path
    )
    line = assert_one_line_error(result, "cannot reach PostgreSQL at 127.0.0.1:1", code=3)
    assert "check the host and port" in line


def test_unreachable_host_from_database_url(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"postgresql://me:{PASSWORD}@127.0.0.1:1/tuning"}
    result = tunefleet(
        "worker", "sklearn-iris", "--n-trials", "1", "--db-wait", "0", cwd=tmp_path, env=env
    )
    assert_one_line_error(result, "cannot reach PostgreSQL", code=3)


def test_unreachable_at_start_is_retried_until_db_wait(tmp_path: Path) -> None:
    url = f"postgresql://me:{PASSWORD}@127.0.0.1:1/tuning"
    started = time.monotonic()
    result = tunefleet("worker", "sklearn-iris", "--storage", url, "--db-wait", "2", cwd=tmp_path)
    assert time.monotonic() - started >= 2
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert "unavailable" in lines[0] and "retrying for up to 2s" in lines[0]
    assert lines[-1].startswith("error: cannot reach PostgreSQL at 127.0.0.1:1")
    assert "gave up after 2s" in lines[-1]
    assert PASSWORD not in result.stderr


def test_wrong_password(password_server: ThrowawayPostgres, tmp_path: Path) -> None:
    url = password_server.url(password=PASSWORD + "-wrong")
    result = tunefleet("run", "sklearn-iris", "--storage", url, "--n-trials", "1", cwd=tmp_path)
    line = assert_one_line_error(result, "rejected the password for user 'postgres'", code=3)
    assert PASSWORD + "-wrong" not in line


def test_right_password_works_and_is_never_printed(
    password_server: ThrowawayPostgres, tmp_path: Path
) -> None:
    url = password_server.url()
    result = tunefleet(
        "run",
        f"{OBJ}:fails_on_odd",
        "--storage",
        url,
        "--n-trials",
        "4",
        "--workers",
        "2",
        "--json",
        "-v",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert "postgres:***@127.0.0.1" in result.stdout


def test_unknown_database(pg_admin_url: str, tmp_path: Path) -> None:
    url = pg_admin_url.rpartition("/")[0] + "/no_such_db_for_tunefleet"
    result = tunefleet("run", "sklearn-iris", "--storage", url, "--n-trials", "1", cwd=tmp_path)
    assert_one_line_error(result, "database 'no_such_db_for_tunefleet' does not exist", code=3)


def test_malformed_url(tmp_path: Path) -> None:
    result = tunefleet(
        "run", "sklearn-iris", "--storage", f"postgresql://me:{PASSWORD}@h:port/d", cwd=tmp_path
    )
    assert_one_line_error(result, "malformed storage URL", code=3)


@pytest.mark.parametrize(
    ("objective", "fragment"),
    [
        ("sklearn-irsi", "unknown objective 'sklearn-irsi'"),
        ("nonexistent_pkg_q.mod:f", "module 'nonexistent_pkg_q.mod' not found"),
        ("nothere.py:f", "objective file 'nothere.py' not found"),
        (f"{OBJ}:missing", "has no function 'missing'"),
        (f"{OBJ}:no_arguments", "must take exactly one argument"),
    ],
)
def test_objective_problems(tmp_path: Path, objective: str, fragment: str) -> None:
    result = tunefleet("run", objective, "--n-trials", "1", cwd=tmp_path)
    assert_one_line_error(result, fragment, code=2)
    assert not (tmp_path / "tunefleet.db").exists(), "no study is created for a bad objective"


def test_study_with_another_direction(pg_url: str, tmp_path: Path) -> None:
    ok = tunefleet(
        "worker",
        f"{OBJ}:quadratic",
        "--storage",
        pg_url,
        "--study",
        "dir",
        "--n-trials",
        "1",
        "--direction",
        "minimize",
    )
    assert ok.returncode == 0, ok.stderr
    result = tunefleet(
        "run",
        f"{OBJ}:quadratic",
        "--storage",
        pg_url,
        "--study",
        "dir",
        "--n-trials",
        "2",
        "--direction",
        "maximize",
    )
    line = assert_one_line_error(result, "study 'dir' exists with direction minimize", code=2)
    assert "drop --direction" in line


@pytest.mark.parametrize("value", ["0", "-3"])
def test_non_positive_n_trials(tmp_path: Path, value: str) -> None:
    result = tunefleet("run", "sklearn-iris", "--n-trials", value, cwd=tmp_path)
    assert_one_line_error(result, "invalid --n-trials: must be a positive number", code=2)


def test_invalid_config_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "study.toml").write_text('objective = "sklearn-iris"\nn_trails = 3\n')
    result = tunefleet("run", "--config", "study.toml", cwd=tmp_path)
    assert_one_line_error(
        result, "invalid 'n_trails' in study.toml: unknown key (did you mean 'n_trials'?)", code=2
    )


def test_no_objective(tmp_path: Path) -> None:
    result = tunefleet("run", "--n-trials", "3", cwd=tmp_path)
    assert_one_line_error(result, "no objective given", code=2)


def test_usage_errors_are_one_line_too(tmp_path: Path) -> None:
    result = tunefleet("run", "sklearn-iris", "--sampler", "grid", cwd=tmp_path)
    line = assert_one_line_error(result, "'grid' is not one of", code=2)
    assert "tunefleet run --help" in line


def test_debug_shows_the_traceback_but_still_no_password(tmp_path: Path) -> None:
    url = f"postgresql://me:{PASSWORD}@127.0.0.1:1/tuning"
    result = tunefleet(
        "--debug", "run", "sklearn-iris", "--storage", url, "--db-wait", "0", cwd=tmp_path
    )
    assert result.returncode == 3
    assert "Traceback" in result.stderr
    assert PASSWORD not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot reach PostgreSQL")
