"""Each worker's numerical libraries get its share of the CPUs, and the user can override it."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tests.conftest import tunefleet
from tunefleet.errors import ConfigError
from tunefleet.objectives import _common
from tunefleet.objectives._base import cpu_count
from tunefleet.objectives._common import cgroup_cpu_limit, worker_threads


@pytest.fixture
def cgroup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A stand-in for /sys/fs/cgroup/cpu.max (cgroup v2), with v1 absent."""
    path = tmp_path / "cpu.max"
    monkeypatch.setattr(_common, "_CGROUP_V2", path)
    monkeypatch.setattr(_common, "_CGROUP_V1", (tmp_path / "no-quota", tmp_path / "no-period"))
    monkeypatch.delenv("TUNEFLEET_THREADS", raising=False)
    return path


def test_container_cpu_limit_caps_the_threads(cgroup: Path) -> None:
    cgroup.write_text("max 100000\n")
    assert cgroup_cpu_limit() is None
    assert worker_threads() == cpu_count()
    cgroup.write_text("150000 100000\n")  # a pod with limits.cpu: 1500m
    assert cgroup_cpu_limit() == 1.5
    assert worker_threads() == 1  # rounded down: a second thread would be throttled
    cgroup.write_text("50000 100000\n")
    assert worker_threads() == 1


def test_env_overrides_and_is_checked(cgroup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cgroup.write_text("100000 100000\n")
    monkeypatch.setenv("TUNEFLEET_THREADS", "3")
    assert worker_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("TUNEFLEET_THREADS", bad)
        with pytest.raises(ConfigError, match=r"TUNEFLEET_THREADS.*positive number of threads"):
            worker_threads()


def _recorded_threads(storage: str) -> set[int]:
    trials = optuna.load_study(study_name="sklearn-iris", storage=storage).trials
    assert trials
    return {t.user_attrs["n_threads"] for t in trials}


def test_run_gives_each_worker_its_share(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = tunefleet(
        "run", "sklearn-iris", "--storage", storage, "--n-trials", "2", "--workers", "2"
    )
    assert result.returncode == 0, result.stderr
    assert _recorded_threads(storage) == {max(1, cpu_count() // 2)}


def test_worker_takes_threads_from_the_environment(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    env = {"TUNEFLEET_THREADS": "3"}
    result = tunefleet("worker", "sklearn-iris", "--storage", storage, "--n-trials", "1", env=env)
    assert result.returncode == 0, result.stderr
    assert _recorded_threads(storage) == {3}
    bad = tunefleet("worker", "sklearn-iris", "--storage", storage, env={"TUNEFLEET_THREADS": "x"})
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "error: invalid $TUNEFLEET_THREADS='x': set it to a positive number of threads, or unset it"
    )
