"""`tunefleet k8s apply|status|logs|delete` against a fake API server at the one seam (Cluster),
and the real lightkube adapter against a fake at the HTTP level: what is sent, what is shown, and
that no request body or printed line carries the storage password."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from tunefleet import kubernetes as k8s
from tunefleet.cli import main
from tunefleet.config import StudySpec
from tunefleet.kubernetes import ClusterError, FleetOptions, job_manifest
from tunefleet.kubernetes._cluster import _LightkubeCluster
from tunefleet.kubernetes._fleet import stream_logs
from tunefleet.objectives import load_objective
from tunefleet.storage import open_storage
from tunefleet.study import open_study

from .conftest import DATA, tunefleet
from .k8s_fake import FakeCluster

PASSWORD = "k8s-Secret-pw42"
URL = f"postgresql://tuner:{PASSWORD}@db.example.com:5432/tuning?sslmode=require"
IMAGE = "registry.example.com/tunefleet:0.1.0"
APPLY = ["k8s", "apply", "sklearn-iris", "--study", "iris", "--n-trials", "50"]
APPLY += ["--image", IMAGE, "--workers", "3"]


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    """A fake namespace that every `tunefleet k8s` command in this process connects to."""
    fake = FakeCluster(namespace="tuning")
    connected: list[dict[str, Any]] = []

    def connect(**kwargs: Any) -> FakeCluster:
        connected.append(kwargs)
        if kwargs.get("namespace"):
            fake._namespace = kwargs["namespace"]
        return fake

    monkeypatch.setattr(k8s, "connect", connect)
    fake.connected = connected  # type: ignore[attr-defined]
    monkeypatch.setenv("COLUMNS", "200")
    for name in ("TUNEFLEET_STORAGE", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return fake


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def _no_password_anywhere(cluster: FakeCluster, *printed: str) -> None:
    """Not in any request (the Secret's data holds it base64-encoded, by design), nor printed."""
    assert PASSWORD not in cluster.wire()
    requests = [b for _, k, _, b in cluster.requests if b and k != "Secret"]
    assert base64.b64encode(PASSWORD.encode()).decode()[:12] not in json.dumps(requests)
    for text in printed:
        assert PASSWORD not in text
        assert base64.b64encode(URL.encode()).decode()[:30] not in text


# --- apply ------------------------------------------------------------------------------------


def test_apply_sends_the_secret_then_the_job_and_says_what_next(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEFLEET_STORAGE", URL)
    code, out, err = run_cli(capsys, *APPLY)
    assert code == 0, err
    applied = [(k, n) for v, k, n, _ in cluster.requests if v == "apply"]
    # The Secret first (the pods need it), then again owned by the Job once it has a uid.
    assert applied == [
        ("Secret", "tunefleet-iris-storage"),
        ("Job", "tunefleet-iris"),
        ("Secret", "tunefleet-iris-storage"),
    ]
    first, owned = cluster.sent("apply", "Secret")
    assert base64.b64decode(first["data"]["TUNEFLEET_STORAGE"]).decode() == URL
    assert "ownerReferences" not in first["metadata"]
    uid = cluster.objects[("Job", "tunefleet-iris")]["metadata"]["uid"]
    assert owned["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "tunefleet-iris", "uid": uid}
    ]
    (job,) = cluster.sent("apply", "Job")
    assert job["metadata"]["namespace"] == "tuning"
    assert job["spec"]["parallelism"] == 3
    assert "job tunefleet-iris created: 3 workers" in out
    assert "tunefleet k8s status --study iris --watch" in out
    assert "postgresql://tuner:***@db.example.com" in out
    _no_password_anywhere(cluster, out, err)


def test_apply_reads_the_url_from_an_env_file(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"# Neon\nexport DATABASE_URL='{URL}'\nOTHER=1\n")
    code, out, err = run_cli(capsys, *APPLY, "--env-file", str(env_file))
    assert code == 0, err
    secret = cluster.sent("apply", "Secret")[-1]
    assert base64.b64decode(secret["data"]["TUNEFLEET_STORAGE"]).decode() == URL
    _no_password_anywhere(cluster, out, err)


def test_apply_dry_run_sends_nothing_and_masks_the_password(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", URL)
    code, out, err = run_cli(capsys, *APPLY, "--dry-run")
    assert code == 0, err
    assert cluster.connected == [] and cluster.requests == []  # type: ignore[attr-defined]
    secret, job = yaml.safe_load_all(out)
    assert secret["stringData"]["TUNEFLEET_STORAGE"].startswith("postgresql://tuner:***@")
    assert job["kind"] == "Job"
    _no_password_anywhere(cluster, out, err)


def test_apply_uses_an_existing_secret_when_no_url_is_given(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.apply(k8s.secret_manifest("iris", FleetOptions(), URL))
    cluster.requests.clear()
    code, out, err = run_cli(capsys, *APPLY)
    assert code == 0, err
    assert [k for v, k, _, _ in cluster.requests if v == "apply"] == ["Job"]
    assert "already in the cluster" in out


def test_apply_without_any_url_or_secret_fails_before_sending_the_job(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, *APPLY)
    assert code == 4 and out == ""
    assert "no storage URL for the pods" in err and "--env-file" in err
    assert err.count("\n") == 1
    assert cluster.sent("apply") == []


def test_apply_refuses_the_embedded_store_and_warns_about_localhost(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEFLEET_STORAGE", "sqlite:///tunefleet.db")
    code, _, err = run_cli(capsys, *APPLY)
    assert code == 3 and "pods cannot share the embedded store" in err
    monkeypatch.setenv("TUNEFLEET_STORAGE", f"postgresql://u:{PASSWORD}@127.0.0.1/db")
    code, _, err = run_cli(capsys, *APPLY)
    assert code == 0
    assert "host.minikube.internal" in err
    _no_password_anywhere(cluster, err)


def test_apply_scales_a_running_job_but_cannot_change_its_pods(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEFLEET_STORAGE", URL)
    assert run_cli(capsys, *APPLY)[0] == 0
    code, out, _ = run_cli(capsys, *[a if a != "3" else "5" for a in APPLY])
    assert code == 0 and "job tunefleet-iris updated: 5 workers" in out
    assert cluster.objects[("Job", "tunefleet-iris")]["spec"]["parallelism"] == 5
    code, out, err = run_cli(capsys, *APPLY, "--cpu", "2")
    assert code == 4
    assert "which a Job cannot change" in err and "tunefleet k8s delete --study iris" in err


def test_apply_refuses_to_reuse_a_finished_job(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEFLEET_STORAGE", URL)
    assert run_cli(capsys, *APPLY)[0] == 0
    _finish(cluster, "Complete")
    cluster.requests.clear()
    code, _, err = run_cli(capsys, *APPLY)
    assert code == 4 and "already ran (Complete)" in err
    assert "tunefleet k8s delete --study iris" in err and "stay in the database" in err
    assert cluster.sent("apply") == []


def test_namespace_and_context_reach_the_connection(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEFLEET_STORAGE", URL)
    code, out, _ = run_cli(
        capsys, *APPLY, "-n", "ml", "--context", "gke-prod", "--kubeconfig", "/tmp/kc"
    )
    assert code == 0
    assert cluster.connected == [  # type: ignore[attr-defined]
        {"kubeconfig": "/tmp/kc", "context": "gke-prod", "namespace": "ml"}
    ]
    assert {b["metadata"]["namespace"] for b in cluster.sent("apply")} == {"ml"}
    assert "tunefleet k8s logs --study iris -n ml --context gke-prod --kubeconfig /tmp/kc" in out


# --- status -----------------------------------------------------------------------------------


def _fleet(cluster: FakeCluster, url: str, **spec: Any) -> dict[str, Any]:
    """A Job and its Secret, as an older `apply` left them (the Secret has no owner)."""
    spec = {"objective": "sklearn-iris", "study": "iris", "workers": 3, **spec}
    job = job_manifest(StudySpec(**spec), FleetOptions(image=IMAGE))
    cluster.apply(k8s.secret_manifest(spec["study"], FleetOptions(), url))
    cluster.apply(job)
    cluster.requests.clear()
    return job


def _finish(cluster: FakeCluster, state: str, message: str = "") -> None:
    job = cluster.objects[("Job", "tunefleet-iris")]
    job["status"] = {
        "succeeded": 1 if state == "Complete" else 0,
        "conditions": [{"type": state, "status": "True", "message": message}],
    }


@pytest.mark.postgres
def test_status_shows_pods_and_the_study_side_by_side(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], pg_url: str
) -> None:
    url = pg_url.replace("postgres@", f"postgres:{PASSWORD}@")  # trust auth ignores it
    objective = f"{DATA / 'objectives.py'}:quadratic"
    result = tunefleet(
        "run", objective, "--study", "iris", "--n-trials", "4", "--workers", "1",
        env={"TUNEFLEET_STORAGE": url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job = _fleet(cluster, url, objective=objective, n_trials=6)
    cluster.objects[("Job", "tunefleet-iris")]["status"] = {"active": 2, "failed": 1}
    cluster.add_pod(job, "tunefleet-iris-aaaaa")
    cluster.add_pod(job, "tunefleet-iris-bbbbb", phase="Failed", exit_code=75)
    cluster.add_pod(job, "tunefleet-iris-ccccc", phase="Failed", exit_code=1)
    cluster.add_pod(job, "tunefleet-iris-ddddd", phase="Pending", waiting="ErrImagePull")

    code, out, err = run_cli(capsys, "k8s", "status", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["job"] == {
        "name": "tunefleet-iris",
        "namespace": "tuning",
        "state": "Running",
        "message": "",
        "active": 2,
        "succeeded": 0,
        "failed": 1,
        "restarts": 1,  # four pods for three workers: one was a replacement
        "backoff_limit": 9,
    }
    pods = {p["name"]: p for p in status["pods"]}
    assert pods["tunefleet-iris-aaaaa"]["phase"] == "Running"
    assert pods["tunefleet-iris-bbbbb"]["exit"] == "75 stopped, replaced"
    assert pods["tunefleet-iris-ccccc"]["exit"] == "1 error, counted"
    assert pods["tunefleet-iris-ddddd"]["phase"] == "Pending (ErrImagePull)"
    # The progress came from the database named in the pods' Secret.
    assert ("get", "Secret", "tunefleet-iris-storage", None) in cluster.requests
    assert status["study"]["n_trials"] == 4 and status["study"]["states"]["COMPLETE"] == 4
    assert status["study"]["budget"]["n_trials"] == 4 and status["study"]["done"] is True
    assert status["note"] is None

    code, out, err = run_cli(capsys, "k8s", "status", "--study", "iris")
    assert code == 0, err
    for text in ("tunefleet-iris-bbbbb", "75 stopped, replaced", "ErrImagePull", "4 of 4 counted"):
        assert text in out
    _no_password_anywhere(cluster, out, err)


def test_status_shows_the_pods_when_the_database_is_out_of_reach(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    _fleet(cluster, f"postgresql://tuner:{PASSWORD}@127.0.0.1:1/tuning")
    job = cluster.objects[("Job", "tunefleet-iris")]
    cluster.add_pod(job, "tunefleet-iris-aaaaa", node="gpu-node-7")
    code, out, err = run_cli(capsys, "k8s", "status")
    assert code == 0, err
    assert "tunefleet-iris-aaaaa" in out and "gpu-node-7" in out and "Running" in out
    assert "the pods above are what the cluster says" in " ".join(out.split())
    _no_password_anywhere(cluster, out, err)


@pytest.mark.postgres
def test_status_falls_back_to_this_machines_url_when_the_pods_url_is_out_of_reach(
    cluster: FakeCluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    pg_url: str,
) -> None:
    # The pods reach the database by an address this machine cannot (here: a closed port).
    _fleet(cluster, f"postgresql://tuner:{PASSWORD}@127.0.0.1:1/tuning")
    storage = open_storage(pg_url)
    objective = load_objective(f"{DATA / 'objectives.py'}:quadratic")
    open_study(storage, StudySpec(study="iris", n_trials=5), objective)
    storage.close()
    monkeypatch.setenv("TUNEFLEET_STORAGE", pg_url)
    code, out, _ = run_cli(capsys, "k8s", "status", "--json")
    assert code == 0
    status = json.loads(out)
    assert status["study"]["budget"]["n_trials"] == 5 and status["study"]["n_trials"] == 0
    assert status["note"] is None


def test_status_ignores_a_local_embedded_store(
    cluster: FakeCluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _fleet(cluster, URL)
    cluster.refuse[("get", "Secret")] = "forbidden (403)"
    monkeypatch.setenv("TUNEFLEET_STORAGE", f"sqlite:///{tmp_path / 'local.db'}")
    code, out, _ = run_cli(capsys, "k8s", "status", "--json")
    assert code == 0 and json.loads(out)["study"] is None
    assert not (tmp_path / "local.db").exists()


def test_status_without_access_to_the_secret_still_shows_the_pods(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    _fleet(cluster, URL)
    cluster.refuse[("get", "Secret")] = "not allowed to get Secret (403)"
    code, out, _ = run_cli(capsys, "k8s", "status", "--json")
    assert code == 0
    status = json.loads(out)
    assert status["study"] is None and "--env-file" in status["note"]


def test_status_explains_why_a_job_failed(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _fleet(cluster, URL)
    message = (
        "Container worker for pod tuning/tunefleet-iris-x failed with exit code 3 "
        "matching FailJob rule at index 2"
    )
    _finish(cluster, "Failed", message)
    cluster.add_pod(job, "tunefleet-iris-x", phase="Failed", exit_code=3)
    code, out, _ = run_cli(capsys, "k8s", "status", "--json")
    assert code == 0
    status = json.loads(out)
    assert status["job"]["state"] == "Failed" and "FailJob" in status["job"]["message"]
    assert status["pods"][0]["exit"] == "3 storage error, failed the job"


def test_status_watch_refreshes_until_the_job_is_done(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fleet(cluster, URL)
    gets = []
    real_get = cluster.get

    def get(kind: str, name: str) -> dict[str, Any] | None:
        if kind == "Job":
            gets.append(name)
            if len(gets) == 3:
                _finish(cluster, "Complete")
        return real_get(kind, name)

    monkeypatch.setattr(cluster, "get", get)
    cluster.refuse[("get", "Secret")] = "forbidden"
    code, out, _ = run_cli(capsys, "k8s", "status", "--watch", "--interval", "0.01")
    assert code == 0
    assert len(gets) == 3 and "Complete" in out


def test_status_needs_a_study_when_the_namespace_has_several_fleets(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    _fleet(cluster, URL)
    _fleet(cluster, URL, study="mnist")
    code, out, err = run_cli(capsys, "k8s", "status")
    assert code == 4 and out == ""
    assert "2 fleets in namespace 'tuning'" in err and "iris, mnist" in err and "--study" in err
    code, _, err = run_cli(capsys, "k8s", "status", "--study", "nope")
    assert code == 4 and "no fleet for study 'nope'" in err


# --- logs -------------------------------------------------------------------------------------


def test_logs_prefix_every_line_with_its_pod(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _fleet(cluster, URL)
    cluster.add_pod(job, "tunefleet-iris-aaaaa")
    cluster.add_pod(job, "tunefleet-iris-bbbbb", phase="Failed", exit_code=75)
    cluster.add_pod(job, "tunefleet-iris-ccccc", phase="Pending", waiting="ContainerCreating")
    cluster.pod_logs = {
        "tunefleet-iris-aaaaa": ["worker joined study iris", "trial 0 finished: value 0.9"],
        "tunefleet-iris-bbbbb": [f"connecting to {URL}"],
    }
    code, out, err = run_cli(capsys, "k8s", "logs", "--study", "iris")
    assert code == 0, err
    assert out.splitlines() == [
        "[tunefleet-iris-aaaaa] worker joined study iris",
        "[tunefleet-iris-aaaaa] trial 0 finished: value 0.9",
        "[tunefleet-iris-bbbbb] connecting to postgresql://tuner:***@db.example.com:5432/tuning?sslmode=require",
    ]
    assert ("logs", "Pod", "tunefleet-iris-ccccc", {"follow": False}) not in cluster.requests
    _no_password_anywhere(cluster, out, err)


def test_following_logs_picks_up_replacement_pods_until_the_job_is_done(
    cluster: FakeCluster,
) -> None:
    job = _fleet(cluster, URL)
    cluster.add_pod(job, "w-1")
    cluster.add_pod(job, "w-2", phase="Pending", waiting="ContainerCreating")
    cluster.pod_logs = {"w-1": ["a", f"oops {URL}"], "w-2": ["b"], "w-3": ["c", "study done"]}
    lists = []

    def timeline(c: FakeCluster) -> None:
        lists.append(1)
        if len(lists) == 2:  # w-1 was deleted and replaced by w-3; w-2 has started
            del c.objects[("Pod", "w-1")]
            c.add_pod(job, "w-2")
            c.add_pod(job, "w-3")
        if len(lists) == 3:
            _finish(c, "Complete")

    cluster.before_list_pods = timeline
    seen: list[tuple[str, str]] = []
    stream_logs(cluster, job, lambda pod, line: seen.append((pod, line)), follow=True, poll_s=0.05)
    assert sorted(seen) == [
        ("w-1", "a"),
        ("w-1", "oops postgresql://tuner:***@db.example.com:5432/tuning?sslmode=require"),
        ("w-2", "b"),
        ("w-3", "c"),
        ("w-3", "study done"),
    ]
    assert [p for p, _ in seen if p == "w-1"] == ["w-1", "w-1"]  # in order, each once
    followed = [n for v, k, n, b in cluster.requests if v == "logs" and b == {"follow": True}]
    assert sorted(followed) == ["w-1", "w-2", "w-3"]


def test_logs_tail_since_and_timestamps_reach_the_api(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _fleet(cluster, URL)
    cluster.add_pod(job, "w-1")
    cluster.pod_logs = {"w-1": ["one", "two", "three"]}
    code, out, err = run_cli(
        capsys, "k8s", "logs", "--study", "iris", "--tail", "2", "--since", "1h30m",
        "--timestamps",
    )  # fmt: skip
    assert code == 0, err
    assert out.splitlines() == [
        "[w-1] 2026-01-01T00:00:00Z two",
        "[w-1] 2026-01-01T00:00:00Z three",
    ]
    asked = {"follow": False, "tail": 2, "since": 5400, "timestamps": True}
    assert ("logs", "Pod", "w-1", asked) in cluster.requests


@pytest.mark.parametrize(
    ("since", "seconds"), [("90", 90), ("45s", 45), ("10m", 600), ("2h", 7200), ("1h5m3s", 3903)]
)
def test_logs_since_takes_kubectls_durations(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], since: str, seconds: int
) -> None:
    job = _fleet(cluster, URL)
    cluster.add_pod(job, "w-1")
    code, _out, err = run_cli(capsys, "k8s", "logs", "--study", "iris", "--since", since)
    assert code == 0, err
    assert ("logs", "Pod", "w-1", {"follow": False, "since": seconds}) in cluster.requests


@pytest.mark.parametrize("since", ["5x", "m", "-3s", "1.5h", ""])
def test_a_bad_since_is_one_line_naming_the_fix(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], since: str
) -> None:
    code, out, err = run_cli(capsys, "k8s", "logs", "--study", "iris", "--since", since)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "is not a duration: write e.g. 30s, 5m, 2h or 1h30m" in err


def test_following_logs_limits_only_the_pods_running_at_the_start(cluster: FakeCluster) -> None:
    job = _fleet(cluster, URL)
    cluster.add_pod(job, "w-1")
    cluster.pod_logs = {"w-1": ["old", "new"], "w-2": ["first", "second"]}
    lists = []

    def timeline(c: FakeCluster) -> None:
        lists.append(1)
        if len(lists) == 2:  # w-2 replaces w-1 while following
            del c.objects[("Pod", "w-1")]
            c.add_pod(job, "w-2")
        if len(lists) == 3:
            _finish(c, "Complete")

    cluster.before_list_pods = timeline
    seen: list[tuple[str, str]] = []
    stream_logs(
        cluster, job, lambda pod, line: seen.append((pod, line)), follow=True, tail=1,
        since=60, poll_s=0.05,
    )  # fmt: skip
    assert sorted(seen) == [("w-1", "new"), ("w-2", "first"), ("w-2", "second")]
    asked = {n: b for v, k, n, b in cluster.requests if v == "logs"}
    assert asked == {"w-1": {"follow": True, "tail": 1, "since": 60}, "w-2": {"follow": True}}


def test_following_logs_ends_when_the_job_is_deleted(cluster: FakeCluster) -> None:
    job = _fleet(cluster, URL)
    cluster.add_pod(job, "w-1", phase="Succeeded", exit_code=0)
    cluster.pod_logs = {"w-1": ["done"]}
    cluster.before_list_pods = lambda c: c.objects.pop(("Job", "tunefleet-iris"), None)
    seen: list[tuple[str, str]] = []
    stream_logs(cluster, job, lambda pod, line: seen.append((pod, line)), follow=True, poll_s=0.05)
    assert seen == [("w-1", "done")]


# --- delete -----------------------------------------------------------------------------------


def test_delete_removes_the_job_and_its_pods_but_keeps_the_secret(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _fleet(cluster, URL)
    cluster.add_pod(job, "tunefleet-iris-aaaaa")
    code, out, err = run_cli(capsys, "k8s", "delete", "--study", "iris")
    assert code == 0, err
    assert [(v, k, n) for v, k, n, _ in cluster.requests if v == "delete"] == [
        ("delete", "Job", "tunefleet-iris")
    ]
    assert [k for k, _ in cluster.objects if k != "Event"] == ["Secret"]  # Events expire
    assert "deleted job/tunefleet-iris" in out and "study iris stays in the database" in out


def test_delete_with_secret_removes_the_secret_too(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    _fleet(cluster, URL)
    code, out, _ = run_cli(capsys, "k8s", "delete", "--with-secret")
    assert code == 0
    assert cluster.objects == {}
    assert "job/tunefleet-iris, secret/tunefleet-iris-storage" in out


def test_the_secret_apply_made_goes_with_its_job(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEFLEET_STORAGE", URL)
    assert run_cli(capsys, *APPLY)[0] == 0
    # A second apply (scaling) sends the Secret with its owner at once: it never loses it.
    assert run_cli(capsys, *APPLY[:-1], "4")[0] == 0
    assert all("ownerReferences" in s["metadata"] for s in cluster.sent("apply", "Secret")[2:])
    # Deleting the Job, as `k8s delete` or the TTL controller does: the garbage collector
    # removes what it owns, the Secret included.
    cluster.delete("Job", "tunefleet-iris")
    assert cluster.objects == {}


def test_delete_with_secret_works_after_the_job_is_gone(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    _fleet(cluster, URL)
    cluster.delete("Job", "tunefleet-iris")  # the TTL controller, or an earlier `k8s delete`
    code, out, err = run_cli(capsys, "k8s", "delete", "--study", "iris", "--with-secret")
    assert code == 0, err
    assert cluster.objects == {}
    assert "deleted secret/tunefleet-iris-storage" in out
    # Nothing left: one line, exit 4.
    code, out, err = run_cli(capsys, "k8s", "delete", "--study", "iris", "--with-secret")
    assert code == 4
    assert err.startswith("error: no fleet and no storage Secret for study 'iris'")
    # Without --with-secret a missing Job is still an error.
    code, _, err = run_cli(capsys, "k8s", "delete", "--study", "iris")
    assert code == 4 and "no fleet for study 'iris'" in err


def test_delete_with_secret_leaves_other_studies_secrets(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    _fleet(cluster, URL)
    cluster.apply(k8s.secret_manifest("Iris", FleetOptions(), URL))  # another study
    cluster.delete("Job", "tunefleet-iris")
    assert run_cli(capsys, "k8s", "delete", "--study", "iris", "--with-secret")[0] == 0
    assert [n for _, n in cluster.objects] == [k8s.secret_name("Iris", FleetOptions())]


def test_apply_reads_the_server_version_and_leaves_out_what_it_does_not_know(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEFLEET_STORAGE", URL)
    cluster.version = "1.20"
    code, _, err = run_cli(capsys, *APPLY)
    assert code == 0, err
    (job,) = cluster.sent("apply", "Job")
    assert "podFailurePolicy" not in job["spec"]
    assert job["spec"]["backoffLimit"] == 2 * 3 * 3  # interruptions count too: twice the default
    assert err.count("warning:") == 1
    assert "Kubernetes 1.20 has no podFailurePolicy" in err and "backoffLimit" in err
    cluster.objects.clear()
    cluster.version = "1.26"
    code, _, err = run_cli(capsys, *APPLY)
    assert code == 0 and "warning" not in err
    assert cluster.sent("apply", "Job")[-1]["spec"]["backoffLimit"] == 9
    assert "podFailurePolicy" in cluster.sent("apply", "Job")[-1]["spec"]


def test_status_watch_says_so_when_the_job_disappears(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _fleet(cluster, URL)
    cluster.add_pod(job, "tunefleet-iris-aaaaa")
    cluster.refuse[("get", "Secret")] = "forbidden"
    gets = []
    real_get = cluster.get

    def get(kind: str, name: str) -> dict[str, Any] | None:
        if kind == "Job":
            gets.append(name)
            if len(gets) == 3:
                cluster.delete("Job", name)
        return real_get(kind, name)

    monkeypatch.setattr(cluster, "get", get)
    code, out, _ = run_cli(capsys, "k8s", "status", "--watch", "--interval", "0.01")
    assert code == 0
    last = out.strip().splitlines()[-1]
    assert "job tunefleet-iris is gone from namespace 'tuning'" in " ".join(out.split())
    assert "stays in the database" in last


def test_status_json_watch_streams_a_line_per_refresh(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fleet(cluster, URL)
    cluster.refuse[("get", "Secret")] = "forbidden"
    gets = []
    real_get = cluster.get

    def get(kind: str, name: str) -> dict[str, Any] | None:
        if kind == "Job":
            gets.append(name)
            if len(gets) == 4:
                _finish(cluster, "Complete")
        return real_get(kind, name)

    monkeypatch.setattr(cluster, "get", get)
    code, out, _ = run_cli(capsys, "k8s", "status", "--json", "--watch", "--interval", "0.01")
    assert code == 0
    frames = [json.loads(line) for line in out.splitlines()]
    states = [f["job"]["state"] for f in frames]
    assert len(states) >= 3 and states[-1] == "Complete" and set(states[:-1]) == {"Running"}
    # ... and a last line when the Job is deleted under the watch.
    cluster.objects.clear()
    _fleet(cluster, URL)
    gets.clear()
    monkeypatch.setattr(
        cluster,
        "get",
        lambda kind, name: (
            None if kind == "Job" and len(gets) > 0 else gets.append(1) or real_get(kind, name)
        ),
    )
    code, out, _ = run_cli(capsys, "k8s", "status", "--json", "--watch", "--interval", "0.01")
    assert code == 0
    frames = [json.loads(line) for line in out.splitlines()]
    assert frames[-1]["job"]["state"] == "Deleted" and "is gone" in frames[-1]["note"]


def test_status_shows_why_a_pod_is_pending_and_counts_replaced_pods(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _fleet(cluster, URL)
    for name in ("tunefleet-iris-aaaaa", "tunefleet-iris-bbbbb", "tunefleet-iris-ccccc"):
        cluster.add_pod(job, name)
    # Two pods were deleted (gone from the list) and replaced; one replacement cannot be placed.
    for name in ("tunefleet-iris-aaaaa", "tunefleet-iris-bbbbb"):
        del cluster.objects[("Pod", name)]
    cluster.add_pod(job, "tunefleet-iris-ddddd")
    pending = cluster.add_pod(job, "tunefleet-iris-eeeee", phase="Pending")
    pending["status"]["containerStatuses"] = []
    pending["spec"]["nodeName"] = None
    pending["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient cpu.",
        }
    ]
    cluster.refuse[("get", "Secret")] = "forbidden"
    code, out, _ = run_cli(capsys, "k8s", "status")
    assert code == 0
    assert "Pending (0/1 nodes are available: 1 Insufficient cpu.)" in out
    assert "2 restarts" in out
    code, out, _ = run_cli(capsys, "k8s", "status", "--json")
    status = json.loads(out)
    assert status["job"]["restarts"] == 2
    assert "Insufficient cpu" in status["pods"][-1]["phase"]
    # Without access to Events, the listed pods still count (none replaced among them).
    cluster.refuse[("list", "Event")] = "forbidden"
    code, out, _ = run_cli(capsys, "k8s", "status", "--json")
    assert json.loads(out)["job"]["restarts"] == 0


# --- the lightkube adapter, against a fake API server at the HTTP level -----------------------


TOKEN = "bearer-token-never-shown"


@pytest.fixture
def kubeconfig(tmp_path: Path) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "minikube",
        "clusters": [{"name": "mk", "cluster": {"server": "https://192.168.49.2:8443"}}],
        "contexts": [
            {"name": "minikube", "context": {"cluster": "mk", "user": "me", "namespace": "tuning"}},
            {"name": "other", "context": {"cluster": "mk", "user": "me"}},
        ],
        "users": [{"name": "me", "user": {"token": TOKEN}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return str(path)


class ApiServer:
    """Answers requests from a table of (method, path) -> (status, body) and records them."""

    def __init__(self, answers: dict[tuple[str, str], tuple[int, Any]]) -> None:
        self.answers = answers
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        status, body = self.answers.get((request.method, request.url.path), (404, None))
        if status == 404 and body is None:
            body = {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404,
                    "message": f"{request.url.path} not found"}  # fmt: skip
        if isinstance(body, bytes):
            return httpx2.Response(status, content=body)
        return httpx2.Response(status, json=body)


def _adapter(kubeconfig: str, server: ApiServer, **kwargs: Any) -> _LightkubeCluster:
    return _LightkubeCluster(
        kubeconfig, kwargs.get("context"), kwargs.get("namespace"), httpx2.MockTransport(server)
    )


def test_adapter_applies_server_side_in_the_context_namespace(kubeconfig: str) -> None:
    job = job_manifest(StudySpec(objective="sklearn-iris", workers=2), FleetOptions(image=IMAGE))
    path = "/apis/batch/v1/namespaces/tuning/jobs/tunefleet-sklearn-iris"
    server = ApiServer({("PATCH", path): (200, {**job, "status": {}})})
    cluster = _adapter(kubeconfig, server)
    assert cluster.namespace == "tuning" and cluster.context == "minikube"
    cluster.apply(job)
    (request,) = server.requests
    assert request.headers["content-type"] == "application/apply-patch+yaml"
    assert dict(request.url.params) == {"fieldManager": "tunefleet", "force": "true"}
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.content)["metadata"]["namespace"] == "tuning"


def test_adapter_reads_the_server_version_and_lists_events_by_field(kubeconfig: str) -> None:
    events = "/api/v1/namespaces/tuning/events"
    server = ApiServer(
        {
            ("GET", "/version"): (200, {"major": "1", "minor": "20", "gitVersion": "v1.20.2"}),
            ("GET", events): (200, {"kind": "EventList", "apiVersion": "v1", "items": []}),
        }
    )
    cluster = _adapter(kubeconfig, server)
    assert cluster.server_version() == (1, 20)
    assert cluster.list("Event", {}, fields={"involvedObject.uid": "u-1"}) == []
    assert server.requests[-1].url.params["fieldSelector"] == "involvedObject.uid=u-1"
    # GKE and EKS say minor "29+": the digits count.
    server.answers[("GET", "/version")] = (200, {"major": "1", "minor": "29+"})
    assert cluster.server_version() == (1, 29)
    server.answers[("GET", "/version")] = (200, {"gitVersion": "nonsense"})
    with pytest.raises(ClusterError, match="sent no Kubernetes version"):
        cluster.server_version()


def test_adapter_gets_lists_deletes_and_streams_logs(kubeconfig: str) -> None:
    base = "/api/v1/namespaces/ml"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w-1"}}
    server = ApiServer(
        {
            ("GET", f"{base}/pods"): (200, {"kind": "PodList", "apiVersion": "v1",
                                            "metadata": {}, "items": [pod]}),
            ("GET", f"{base}/pods/w-1/log"): (200, b"line one\nline two\n"),
            ("DELETE", "/apis/batch/v1/namespaces/ml/jobs/j"): (200, {"kind": "Status"}),
        }
    )  # fmt: skip
    cluster = _adapter(kubeconfig, server, namespace="ml", context="other")
    assert cluster.get("Job", "missing") is None
    assert cluster.delete("Secret", "missing") is False
    assert cluster.list("Pod", {"tunefleet.io/study": "iris"})[0]["metadata"]["name"] == "w-1"
    assert list(cluster.logs("w-1", follow=True)) == ["line one", "line two"]
    assert cluster.delete("Job", "j") is True
    by_path = {r.url.path: r for r in server.requests}
    assert by_path[f"{base}/pods"].url.params["labelSelector"] == "tunefleet.io/study=iris"
    assert dict(by_path[f"{base}/pods/w-1/log"].url.params) == {
        "container": "worker",
        "follow": "true",
        "timestamps": "false",
    }
    assert by_path["/apis/batch/v1/namespaces/ml/jobs/j"].url.params["propagationPolicy"] == (
        "Background"
    )
    assert list(cluster.logs("w-1", tail=5, since=60, timestamps=True)) == ["line one", "line two"]
    assert dict(server.requests[-1].url.params) == {
        "container": "worker",
        "follow": "false",
        "sinceSeconds": "60",
        "tailLines": "5",
        "timestamps": "true",
    }


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (403, 'jobs.batch is forbidden: User "me" cannot create', "not allowed to apply Job"),
        (401, "Unauthorized", "rejected the credentials of context 'minikube'"),
        (404, 'namespaces "tuning" not found', "namespace 'tuning' does not exist"),
        (422, "spec.template: field is immutable", "refused to apply Job"),
    ],
)
def test_adapter_turns_api_errors_into_one_line(
    kubeconfig: str, status: int, message: str, expected: str
) -> None:
    body = {"kind": "Status", "status": "Failure", "code": status, "message": message}
    server = ApiServer({("PATCH", "/apis/batch/v1/namespaces/tuning/jobs/j"): (status, body)})
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {}}
    with pytest.raises(ClusterError) as raised:
        _adapter(kubeconfig, server).apply(job)
    text = str(raised.value)
    assert expected in text and "\n" not in text and TOKEN not in text


def test_adapter_says_when_the_cluster_is_unreachable(kubeconfig: str) -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("[Errno 111] Connection refused", request=request)

    cluster = _LightkubeCluster(kubeconfig, None, None, httpx2.MockTransport(refuse))
    with pytest.raises(
        ClusterError,
        match=r"cannot reach the Kubernetes API at https://192.168.49.2:8443 "
        r"\(context 'minikube'\).*minikube status",
    ):
        cluster.list("Job", {})


@pytest.mark.parametrize(
    ("config", "context", "expected"),
    [
        (None, None, "no kubeconfig"),
        ("{kubeconfig}", "nope", "Context 'nope' not found"),
    ],
)
def test_connect_names_the_kubeconfig_problem(
    kubeconfig: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    config: str | None,
    context: str | None,
    expected: str,
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    path = config.format(kubeconfig=kubeconfig) if config else None
    with pytest.raises(ClusterError, match=expected):
        k8s.connect(kubeconfig=path, context=context)
