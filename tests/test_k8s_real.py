"""`tunefleet k8s` on a real Kubernetes cluster: the image built from this repository's
Dockerfile runs as a Job, pods are deleted and evicted mid-run, the study still ends exact.

Needs a cluster and a PostgreSQL its pods reach; ``ci/k8s-cluster.sh up`` makes both on this
machine (a single-node Kubernetes 1.20 from Debian's packages), and CI runs this file against it.
Any other cluster works too (kind, minikube, a cloud one), see docs/kubernetes.md:

* ``TUNEFLEET_TEST_KUBECONFIG``: its kubeconfig (the current context is used);
* ``TUNEFLEET_TEST_K8S_IMAGE``: the tunefleet image, already on the nodes (pull policy Never);
* ``TUNEFLEET_TEST_K8S_STORAGE``: a PostgreSQL URL the pods reach, and
  ``TUNEFLEET_TEST_K8S_LOCAL_STORAGE`` the same database as reached from here (default: the same);
* ``TUNEFLEET_TEST_K8S_NAMESPACE`` (default: the context's), ``TUNEFLEET_TEST_K8S_CPU`` (each
  worker's CPU, default 500m: three workers must fit at once).

Skipped without them, except under ``CI``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tunefleet import kubernetes as k8s
from tunefleet.constants import WORKER_ATTR
from tunefleet.kubernetes._cluster import _LightkubeCluster
from tunefleet.kubernetes._fleet import job_state

from .conftest import clean_env, require
from .test_fault_tolerance import assert_exact_and_clean

KUBECONFIG = os.environ.get("TUNEFLEET_TEST_KUBECONFIG", "")
IMAGE = os.environ.get("TUNEFLEET_TEST_K8S_IMAGE", "")
STORAGE = os.environ.get("TUNEFLEET_TEST_K8S_STORAGE", "")
LOCAL_STORAGE = os.environ.get("TUNEFLEET_TEST_K8S_LOCAL_STORAGE", "") or STORAGE
NAMESPACE = os.environ.get("TUNEFLEET_TEST_K8S_NAMESPACE", "")
CPU = os.environ.get("TUNEFLEET_TEST_K8S_CPU", "500m")

N_TRIALS = 60
WORKERS = 3
# Random forests of 1000 trees take seconds on half a core, so a pod is mostly inside a trial
# when it is stopped (an SVC trial, the other half, takes milliseconds), and the study lasts long
# enough (a minute or two) for both interruptions and their replacements.
OBJECTIVE = ["sklearn-iris", "--objective-arg", "n_estimators=1000"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def cluster() -> _LightkubeCluster:
    require(
        bool(KUBECONFIG and IMAGE and STORAGE),
        "no cluster for the real-cluster test: set TUNEFLEET_TEST_KUBECONFIG, "
        "TUNEFLEET_TEST_K8S_IMAGE and TUNEFLEET_TEST_K8S_STORAGE (ci/k8s-cluster.sh up; "
        "eval $(ci/k8s-cluster.sh env))",
    )
    return _LightkubeCluster(KUBECONFIG, None, NAMESPACE or None)


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`tunefleet ARGS` in a fresh interpreter, pointed at the test's cluster."""
    env = clean_env()
    env["COLUMNS"] = "200"
    where = ["--kubeconfig", KUBECONFIG] + (["-n", NAMESPACE] if NAMESPACE else [])
    return subprocess.run(
        [sys.executable, "-m", "tunefleet", *args[:2], *where, *args[2:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def background(*args: str, out: Path) -> subprocess.Popen[bytes]:
    env = clean_env()
    env["COLUMNS"] = "200"
    where = ["--kubeconfig", KUBECONFIG] + (["-n", NAMESPACE] if NAMESPACE else [])
    with out.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "tunefleet", *args[:2], *where, *args[2:]],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def wait_until(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def trials(study: str) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(LOCAL_STORAGE)
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []
    finally:
        storage.engine.dispose()


def running_pods(cluster: _LightkubeCluster, study: str) -> list[str]:
    labels = {k8s.LABEL_STUDY: k8s.study_label(study), k8s.LABEL_COMPONENT: "worker"}
    return sorted(
        p["metadata"]["name"]
        for p in cluster.list("Pod", labels)
        if p.get("status", {}).get("phase") == "Running"
        and not p["metadata"].get("deletionTimestamp")
    )


def all_pods(cluster: _LightkubeCluster, study: str) -> list[str]:
    labels = {k8s.LABEL_STUDY: k8s.study_label(study), k8s.LABEL_COMPONENT: "worker"}
    return [p["metadata"]["name"] for p in cluster.list("Pod", labels)]


def in_trial(study: str, pod: str) -> bool:
    """The pod's worker is running a trial (its parameters are suggested)."""
    return any(
        t.state == TrialState.RUNNING
        and t.params
        and str(t.system_attrs.get(WORKER_ATTR, "")).startswith(pod)
        for t in trials(study)
    )


def evict(cluster: _LightkubeCluster, pod: str) -> None:
    """The Eviction API, as `kubectl drain` uses it (policy/v1 from 1.22, v1beta1 before)."""
    http = cluster._client._client._client
    path = f"/api/v1/namespaces/{cluster.namespace}/pods/{pod}/eviction"
    for version in ("policy/v1", "policy/v1beta1"):
        body = {"apiVersion": version, "kind": "Eviction", "metadata": {"name": pod}}
        response = http.post(path, json=body)
        if response.status_code < 300:
            return
    pytest.fail(f"eviction of {pod} refused: {response.status_code} {response.text}")


def leftovers(cluster: _LightkubeCluster, study: str) -> list[str]:
    label = {k8s.LABEL_STUDY: k8s.study_label(study)}
    return [
        f"{kind}/{o['metadata']['name']}"
        for kind in ("Job", "Pod", "Secret")
        for o in cluster.list(kind, label)
    ]


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / ".env"
    path.write_text(f"TUNEFLEET_STORAGE={STORAGE}\n")
    return path


@pytest.fixture
def study(cluster: _LightkubeCluster) -> Iterator[str]:
    name = f"real-{uuid.uuid4().hex[:6]}"
    yield name
    # Whatever happened, nothing of this study stays in the cluster.
    for kind in ("Job", "Secret"):
        for obj in cluster.list(kind, {k8s.LABEL_STUDY: k8s.study_label(name)}):
            cluster.delete(kind, obj["metadata"]["name"])


def test_a_fleet_survives_deleted_and_evicted_pods_and_cleans_up_after_itself(
    cluster: _LightkubeCluster, study: str, env_file: Path, tmp_path: Path
) -> None:
    version = cluster.server_version()
    apply_args = [
        "k8s", "apply", *OBJECTIVE, "--study", study, "--n-trials", str(N_TRIALS),
        "--workers", str(WORKERS), "--image", IMAGE, "--pull-policy", "Never",
        "--cpu", CPU, "--memory", "768Mi", "--termination-grace", "20",
        "--ttl", "60", "--env-file", str(env_file),
    ]  # fmt: skip
    applied = cli(*apply_args)
    assert applied.returncode == 0, applied.stderr
    assert f"job {k8s.job_name(study)} created: {WORKERS} workers" in applied.stdout
    # The server's version decides what was sent: a 1.20 server refuses podFailurePolicy.
    job = cluster.get("Job", k8s.job_name(study))
    assert job is not None
    if version < (1, 26):
        assert "has no podFailurePolicy" in applied.stderr
        assert "podFailurePolicy" not in job["spec"]
    else:
        assert job["spec"]["podFailurePolicy"]["rules"]
    # The Secret with the password belongs to the Job: its deletion or TTL removes it.
    secret = cluster.get("Secret", f"{k8s.job_name(study)}-storage")
    assert secret is not None
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("Job", job["metadata"]["uid"])

    follow = background("k8s", "logs", "--study", study, "--follow", out=tmp_path / "follow.log")
    local_log = tmp_path / "local-worker.log"
    local = None
    try:
        pods = wait_until(
            f"{WORKERS} running pods",
            lambda: (p := running_pods(cluster, study)) and len(p) == WORKERS and p,
            timeout=240,
        )
        status = cli("k8s", "status", "--study", study)
        assert status.returncode == 0, status.stderr
        assert "Running" in status.stdout and pods[0] in status.stdout

        # kubectl delete pod: SIGTERM, the trial is handed back, exit 75, a replacement.
        deleted, evicted = pods[0], pods[1]
        wait_until(f"{deleted} inside a trial", lambda: in_trial(study, deleted), 180, 0.5)
        assert cluster.delete("Pod", deleted)
        # The Eviction API (a node drain): the same for the worker.
        wait_until(f"{evicted} inside a trial", lambda: in_trial(study, evicted), 180, 0.5)
        evict(cluster, evicted)

        # A local worker joins the same study, as from another machine (while trials remain).
        env = clean_env()
        with local_log.open("wb") as sink:
            local = subprocess.Popen(
                [sys.executable, "-m", "tunefleet", "worker", *OBJECTIVE, "--study", study,
                 "--storage", LOCAL_STORAGE],
                env=env, stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip

        # The Job controller replaces both (after its back-off: 10-20 s).
        wait_until(
            "two replacement pods",
            lambda: len(set(all_pods(cluster, study)) - set(pods)) >= 2,
            timeout=240,
        )
        frame = json.loads(cli("k8s", "status", "--study", study, "--json").stdout)
        assert frame["job"]["restarts"] >= 2, frame

        wait_until(
            "the Job to complete",
            lambda: k8s_state(cluster, study) in ("Complete", "Failed"),
            timeout=600,
            every=3,
        )
        # Read before the TTL (60 s) removes the Job.
        status = cli("k8s", "status", "--study", study)
        assert "Complete" in status.stdout, status.stdout + status.stderr
        assert f"{N_TRIALS} of {N_TRIALS} counted" in status.stdout, status.stdout
        # The API server's tailLines and timestamps: one line per pod, with the kubelet's time.
        tail = cli("k8s", "logs", "--study", study, "--tail", "1", "--timestamps")
        assert tail.returncode == 0, tail.stderr
        lines = tail.stdout.splitlines()
        pods_shown = [line.split("]", 1)[0] for line in lines]
        assert lines and len(pods_shown) == len(set(pods_shown)), tail.stdout
        assert all(re.match(r"\[\S+\] \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", x) for x in lines), lines
        assert follow.wait(timeout=120) == 0
        assert local.wait(timeout=120) == 0, local_log.read_text()
    finally:
        for proc in (follow, local):
            if proc is not None and proc.poll() is None:
                proc.kill()  # after a failure: the failure is what counts
                proc.wait(timeout=60)

    # Exactly N counted trials, nothing RUNNING or WAITING, handed-back trials re-run with the
    # same parameters; the pods' trials and the local worker's all in it.
    final = assert_exact_and_clean(LOCAL_STORAGE, study, N_TRIALS)
    lost = [t for t in final if "tunefleet:lost" in t.system_attrs]
    assert lost, "no trial was handed back by the deleted or evicted pod"
    workers = {str(t.system_attrs.get(WORKER_ATTR, "")) for t in final}
    assert any(w.startswith(k8s.job_name(study)) for w in workers), workers
    assert "joined study" in local_log.read_text(), local_log.read_text()

    logs = (tmp_path / "follow.log").read_text()
    assert "handed back: re-queued with the same parameters" in logs
    assert f"[{deleted}]" in logs and f"[{evicted}]" in logs

    # The TTL controller removes the finished Job, its pods and (owned) its Secret.
    wait_until("the TTL clean-up", lambda: not leftovers(cluster, study), timeout=240, every=3)
    # Applied again after that: the study is done already, so the new Job completes at once.
    again = cli(*apply_args)
    assert again.returncode == 0, again.stderr
    assert "created" in again.stdout
    wait_until(
        "the re-applied Job to complete",
        lambda: k8s_state(cluster, study) == "Complete",
        timeout=300,
        every=2,
    )
    # ... and ran nothing more: the same trials, still exact.
    assert len(assert_exact_and_clean(LOCAL_STORAGE, study, N_TRIALS)) == len(final)
    deleted_all = cli("k8s", "delete", "--study", study, "--with-secret")
    assert deleted_all.returncode == 0, deleted_all.stderr
    assert f"job/{k8s.job_name(study)}" in deleted_all.stdout
    wait_until("nothing left", lambda: not leftovers(cluster, study), timeout=120, every=2)


def k8s_state(cluster: _LightkubeCluster, study: str) -> str:
    job = cluster.get("Job", k8s.job_name(study))
    return "Gone" if job is None else job_state(job)[0]


def test_an_unschedulable_fleet_says_why_and_watch_ends_when_it_is_deleted(
    cluster: _LightkubeCluster, study: str, env_file: Path, tmp_path: Path
) -> None:
    applied = cli(
        "k8s", "apply", *OBJECTIVE, "--study", study, "--n-trials", "5", "--workers", "1",
        "--image", IMAGE, "--pull-policy", "Never", "--cpu", "512", "--env-file", str(env_file),
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr

    def pending_reason() -> str:
        out = cli("k8s", "status", "--study", study).stdout
        return out if "Insufficient cpu" in out else ""

    shown = wait_until("the scheduler's reason", pending_reason, timeout=120, every=2)
    assert "Pending (0/" in " ".join(shown.split())
    watch = background("k8s", "status", "--study", study, "--watch", "--interval", "1",
                       out=tmp_path / "watch.log")  # fmt: skip
    stream = background("k8s", "status", "--study", study, "--json", "--watch", "--interval", "1",
                        out=tmp_path / "stream.log")  # fmt: skip
    try:
        wait_until(
            "two JSON frames",
            lambda: len((tmp_path / "stream.log").read_text().splitlines()) >= 2,
            timeout=60,
        )
        # An older tunefleet's Secret (no owner) stays after the Job; --with-secret finds it.
        cluster.apply(k8s.secret_manifest(study, k8s.FleetOptions(), STORAGE))
        gone = cli("k8s", "delete", "--study", study)
        assert gone.returncode == 0, gone.stderr
        assert watch.wait(timeout=60) == 0
        assert stream.wait(timeout=60) == 0
    finally:
        for proc in (watch, stream):
            if proc.poll() is None:
                proc.kill()
    last = " ".join((tmp_path / "watch.log").read_text().split())
    assert f"job {k8s.job_name(study)} is gone" in last
    frames = [json.loads(line) for line in (tmp_path / "stream.log").read_text().splitlines()]
    assert frames[0]["job"]["state"] == "Running" and frames[-1]["job"]["state"] == "Deleted"
    # The Job is gone; the Secret is found by its labels.
    assert cluster.get("Secret", f"{k8s.job_name(study)}-storage") is not None
    cleaned = cli("k8s", "delete", "--study", study, "--with-secret")
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"secret/{k8s.job_name(study)}-storage" in cleaned.stdout
    wait_until("nothing left", lambda: not leftovers(cluster, study), timeout=120, every=2)
