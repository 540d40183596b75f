"""Optuna's own storage, study and trial tests, run on tunefleet's storages.

The tests come from the sdist of the installed Optuna on the package registry (never copied into
this repository), fetched once into a cache directory (``$TUNEFLEET_OPTUNA_SDIST_CACHE``, default
``~/.cache/tunefleet/optuna-sdist``; CI pre-fetches it). Offline without a cached copy they are
skipped locally and fail under CI. Each storage mode runs in a pytest subprocess with the plugin
tests/optuna_suite/tunefleet_optuna_suite.py, which supplies the storages and the list of
expected failures; a mode passes when that run passes.

Which files run on which mode: Optuna's storage contract (test_storages.py) on every mode; the
study and trial tests, which exercise the same storage calls through ``Study`` and ``Trial``, on
the paths workers take (the embedded store; the Postgres fast path, ask-routed), to keep CI's time
in bounds. ``TUNEFLEET_OPTUNA_SUITE=full`` runs every file on every mode.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import optuna
import pytest

from tests.conftest import require

# One mode's run takes minutes (hundreds of tests, a fresh database each).
pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(3300)]

SUITE_DIR = Path(__file__).parent / "optuna_suite"
STORAGE_TESTS = ["tests/storages_tests/test_storages.py"]
STUDY_TESTS = [
    "tests/study_tests/test_study.py",
    "tests/study_tests/test_optimize.py",
    "tests/study_tests/test_dataframe.py",
    "tests/trial_tests",
]
ALL_MODES = [
    "tunefleet_embedded",
    "tunefleet_embedded_ask",
    "tunefleet_pg_fast",
    "tunefleet_pg_fast_ask",
    "tunefleet_pg_stock",
    "tunefleet_pg_stock_ask",
    "tunefleet_pgbouncer",
    "tunefleet_pgbouncer_ask",
]
# The paths workers take: the embedded store, and Postgres' fast path through its own ask.
STUDY_MODES = {"tunefleet_embedded", "tunefleet_pg_fast_ask"}


def sdist_cache() -> Path:
    default = Path.home() / ".cache" / "tunefleet" / "optuna-sdist"
    return Path(os.environ.get("TUNEFLEET_OPTUNA_SDIST_CACHE", default))


def optuna_sources(version: str = optuna.__version__) -> Path | None:
    """The unpacked sdist of Optuna ``version`` (its tests/ included), fetched on first use;
    None when it is not cached and the registry cannot be reached."""
    cache = sdist_cache()
    unpacked = cache / f"optuna-{version}"
    if (unpacked / "tests" / "storages_tests").is_dir():
        return unpacked
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"optuna-{version}.tar.gz"
    if not archive.exists():
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
             f"optuna=={version}", "-d", str(cache)],
            capture_output=True,
            text=True,
            timeout=600,
        )  # fmt: skip
        if fetched.returncode != 0 or not archive.exists():
            return None
    staging = Path(tempfile.mkdtemp(dir=cache))
    with tarfile.open(archive) as tar:
        tar.extractall(staging, filter="data")
    with contextlib.suppress(OSError):  # another run unpacked it meanwhile
        (staging / f"optuna-{version}").rename(unpacked)
    shutil.rmtree(staging, ignore_errors=True)
    return unpacked


def _files_for(mode: str) -> list[str]:
    if os.environ.get("TUNEFLEET_OPTUNA_SUITE") == "full" or mode in STUDY_MODES:
        return STORAGE_TESTS + STUDY_TESTS
    return STORAGE_TESTS


def _run_suite(sources: Path, files: list[str], env: dict[str, str]) -> None:
    path = os.pathsep.join(p for p in (str(SUITE_DIR), env.get("PYTHONPATH")) if p)
    outside = ("TUNEFLEET_STORAGE", "DATABASE_URL", "TEST_DB_URL")
    full_env = {k: v for k, v in os.environ.items() if k not in outside}
    full_env.update(env, PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *files, "-p", "tunefleet_optuna_suite",
         "-p", "no:cacheprovider", "-q", "-rfEX", "--color=no", "-o", "timeout=600"],
        cwd=sources,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=3000,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    print(output[-6000:])
    assert proc.returncode == 0, output[-12000:]


@pytest.fixture(scope="module")
def sources() -> Path:
    found = optuna_sources()
    require(
        found is not None,
        f"Optuna {optuna.__version__}'s sdist is not cached in {sdist_cache()} and the package "
        "registry cannot be reached: run `pip download --no-binary :all: --no-deps "
        f"optuna=={optuna.__version__} -d {sdist_cache()}` once online",
    )
    assert found is not None
    return found


@pytest.mark.parametrize("mode", ALL_MODES)
def test_optuna_suite(
    mode: str, sources: Path, pg_admin_url: str, request: pytest.FixtureRequest
) -> None:
    env = {"TUNEFLEET_SUITE_PG_ADMIN": pg_admin_url, "TUNEFLEET_SUITE_MODES": mode}
    if "pgbouncer" in mode:
        bouncer = request.getfixturevalue("pgbouncer")
        env["TUNEFLEET_SUITE_PGBOUNCER"] = bouncer.url("")
    _run_suite(sources, _files_for(mode), env)


def test_optuna_with_server_suite(sources: Path, pg_url: str) -> None:
    """test_with_server.py (several processes on one database) on the Postgres fast path."""
    _run_suite(sources, ["tests/storages_tests/test_with_server.py"], {"TEST_DB_URL": pg_url})
