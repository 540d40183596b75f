"""Shared fixtures: a real PostgreSQL database per test, an embedded store per test, and a helper
to run the real ``tunefleet`` command in a subprocess.

PostgreSQL comes from ``TUNEFLEET_TEST_POSTGRES`` (an admin URL; default: the local server at
127.0.0.1:5432 as ``postgres``). If nothing answers there, a throwaway server is started from the
PostgreSQL binaries on this machine. If that is impossible too, Postgres tests are skipped — except
when ``CI`` is set, where they fail: a skipped Postgres test in CI is a broken promise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.pgbouncer import PgBouncer, find_pgbouncer
from tests.pgserver import ThrowawayPostgres, find_pg_bin

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DATA = Path(__file__).parent / "data"


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A superuser URL on a live PostgreSQL server (the machine's own, or a throwaway one)."""
    url = os.environ.get("TUNEFLEET_TEST_POSTGRES", DEFAULT_ADMIN_URL)
    if _reachable(url):
        yield url
        return
    if find_pg_bin() is not None:
        server = ThrowawayPostgres().start()
        try:
            yield server.url()
        finally:
            server.close()
        return
    message = (
        f"no PostgreSQL at {url} and no initdb on PATH: start one, or set "
        "TUNEFLEET_TEST_POSTGRES=postgresql://user@host:port/postgres"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _with_database(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for this test alone; dropped afterwards."""
    name = f"tunefleet_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_database(pg_admin_url, name)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


#: Reasons given to :func:`require`: their skips are reported at one place (see below).
_REQUIRED: set[str] = set()


def require(condition: bool, message: str) -> None:
    """Skip when ``condition`` is false — but fail under CI, where nothing may be skipped."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(message)
        _REQUIRED.add(message)
        pytest.skip(message)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A skip for a missing tool is reported at :func:`require`, not at each test's own line:
    ``-ra`` then shows one line per missing tool (``SKIPPED [62] tests/conftest.py: pgbouncer
    not installed: ...``), not one per test pointing into Optuna's installed test suite."""
    outcome = yield
    report = outcome.get_result()
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2]).removeprefix("Skipped: ")
        if reason in _REQUIRED:
            report.longrepr = (__file__, _REQUIRE_LINE, reason)


_REQUIRE_LINE = require.__code__.co_firstlineno


@pytest.fixture(scope="session")
def pgbouncer(pg_admin_url: str) -> Iterator[PgBouncer]:
    """A transaction-mode PgBouncer in front of the test server (like Neon's -pooler)."""
    require(find_pgbouncer() is not None, "pgbouncer not installed: apt-get install pgbouncer")
    bouncer = PgBouncer(pg_admin_url).start()
    yield bouncer
    bouncer.close()


@pytest.fixture
def pgbouncer_url(pg_url: str, pgbouncer: PgBouncer) -> str:
    """The test's own database, reached through PgBouncer in transaction mode."""
    return pgbouncer.url(pg_url.rpartition("/")[2])


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tunefleet.db'}"


@pytest.fixture(params=["embedded", "postgres", "pgbouncer"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs on the embedded store, on PostgreSQL, and on PostgreSQL
    through a transaction-mode PgBouncer."""
    if request.param == "embedded":
        return f"sqlite:///{tmp_path / 'tunefleet.db'}"
    if request.param == "pgbouncer":
        return str(request.getfixturevalue("pgbouncer_url"))
    return str(request.getfixturevalue("pg_url"))


def clean_env() -> dict[str, str]:
    """The environment for a tunefleet subprocess, without storage settings from outside."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TUNEFLEET_STORAGE", "DATABASE_URL", "TUNEFLEET_DEBUG")
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tunefleet(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a fresh interpreter, as a user (or a pod) would."""
    full_env = clean_env()
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tunefleet", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
