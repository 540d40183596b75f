"""What `tunefleet k8s render` produces: valid Kubernetes objects whose settings carry the worker's
contract (exit codes, graceful stop, threads), with the storage URL only behind a Secret."""

from __future__ import annotations

import base64
import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes_validate.utils import latest_version

from tunefleet.cli import main
from tunefleet.cli._study import build_spec, worker
from tunefleet.config import StudySpec, load_spec
from tunefleet.errors import ConfigError
from tunefleet.kubernetes import (
    FleetOptions,
    failure_action,
    job_manifest,
    job_name,
    options_from_config,
    secret_manifest,
    study_label,
    worker_args,
)

PASSWORD = "s3cret-Pa55word"
URL = f"postgresql://tuner:{PASSWORD}@db.example.com:5432/tuning?sslmode=require"


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    for name in ("TUNEFLEET_STORAGE", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The real CLI entry point, in-process; returns exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


STUDY_TOML = """
objective = "sklearn-iris"
study = "iris-k8s"
n_trials = 300
timeout = 3600
direction = "maximize"
sampler = "tpe"
seed = 7
workers = 4
db_wait = 120

[objective_args]
n_folds = 5

[kubernetes]
image = "registry.example.com/tunefleet:0.1.0-cuda"
cpu = "4"
memory = "16Gi"
gpu = 1
namespace = "tuning"
pull_policy = "Always"
node_selector = { "cloud.google.com/gke-accelerator" = "nvidia-l4" }
env = { KERAS_BACKEND = "torch" }
image_pull_secrets = ["regcred"]
"""

RENDERINGS = {
    "minimal": ["sklearn-iris", "--image", "tunefleet:0.1.0", "--workers", "1"],
    "config-file-gpu": ["--config", "{study_toml}"],
    "user-objective-small": [
        "mypackage.tuning:objective",
        "--study",
        "small",
        "--image",
        "ghcr.io/me/tuning@sha256:" + "a" * 64,
        "--workers",
        "12",
        "--cpu",
        "500m",
        "--memory",
        "512Mi",
        "--backoff-limit",
        "0",
        "--ttl",
        "0",
        "--termination-grace",
        "60",
        "--direction",
        "minimize",
        "--direction",
        "maximize",
        "--objective-arg",
        "epochs=3",
        "--env",
        "TUNEFLEET_DATA_DIR=/data",
        "--image-pull-secret",
        "ghcr-token",
    ],
    "awkward-study-name": [
        "sklearn-iris",
        "--study",
        "Iris_Study.v2-" + "x" * 80,
        "--image",
        "tunefleet:0.1.0",
        "--workers",
        "3",
        "--timeout",
        "90.5",
        "--gpu",
        "2",
    ],
}


@pytest.fixture
def study_toml(tmp_path: Path) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(STUDY_TOML)
    return path


def test_every_rendered_manifest_validates_against_kubernetes_1_31_and_the_newest(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    study_toml: Path,
) -> None:
    monkeypatch.setenv("TUNEFLEET_STORAGE", URL)  # apply --dry-run shows the Secret too
    files = []
    for name, args in RENDERINGS.items():
        args = [a.replace("{study_toml}", str(study_toml)) for a in args]
        for command in ("render", "apply"):
            extra = ["--dry-run"] if command == "apply" else []
            code, out, err = run_cli(capsys, "k8s", command, *args, *extra)
            assert code == 0, err
            assert PASSWORD not in out + err
            path = tmp_path / f"{name}-{command}.yaml"
            path.write_text(out)
            files.append(str(path))
    secret = secret_manifest("iris", FleetOptions(namespace="tuning"), URL)
    (tmp_path / "secret.yaml").write_text(yaml.safe_dump(secret))
    files.append(str(tmp_path / "secret.yaml"))

    newest = latest_version()
    assert newest >= "1.31"
    for version in ("1.31.0", newest):
        result = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *files],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        # Each file has a Job; the dry runs and secret.yaml add a Secret: all were checked.
        passed = result.stdout.count("passed for resource")
        assert passed == 2 * len(RENDERINGS) + len(RENDERINGS) + 1, result.stdout


def _without_network(command: list[str]) -> list[str]:
    """``command`` in a network namespace of its own (no network at all) where allowed."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n", *command]
    return command  # not allowed here: the dead proxy in the environment still blocks HTTP


def test_kubernetes_validate_works_offline_and_catches_mistakes(tmp_path: Path) -> None:
    # Its schemas ship inside the package: it validates, and fails a wrong field, with no network.
    good = job_manifest(
        StudySpec(objective="sklearn-iris", workers=2), FleetOptions(image="tunefleet:1")
    )
    bad = copy.deepcopy(good)
    bad["spec"]["template"]["spec"]["containers"][0]["resources"]["limit"] = {"cpu": "1"}
    offline = {"PATH": os.environ["PATH"], "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": ""}
    for manifest, passes in ((good, True), (bad, False)):
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(manifest))
        command = [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.31.0"]
        result = subprocess.run(
            _without_network([*command, str(path)]),
            capture_output=True,
            text=True,
            timeout=60,
            env=offline,
        )
        assert (result.returncode == 0) == passes, result.stdout + result.stderr
    assert "limit" in result.stdout + result.stderr


def _job(spec: StudySpec | None = None, **options: object) -> dict:
    spec = spec or StudySpec(objective="sklearn-iris", study="iris", n_trials=100, workers=3)
    return job_manifest(spec, FleetOptions(image="tunefleet:0.1.0").merged(**options))


def test_the_job_is_a_work_queue_that_completes_only_when_the_study_is_done() -> None:
    spec = _job()["spec"]
    assert spec["parallelism"] == 3
    assert "completions" not in spec  # one success (exit 0 = study done) completes the Job
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # a podFailurePolicy requires it
    assert spec["backoffLimit"] == 9  # 3 x workers, like `run --max-restarts`
    assert spec["ttlSecondsAfterFinished"] == 86_400
    assert "activeDeadlineSeconds" not in spec  # no study timeout, no Job deadline


def test_the_job_deadline_is_the_study_deadline_plus_a_margin() -> None:
    spec = StudySpec(objective="sklearn-iris", timeout=3600.5, workers=1)
    assert _job(spec)["spec"]["activeDeadlineSeconds"] == 3601 + 1800
    assert _job(spec, deadline_margin=60)["spec"]["activeDeadlineSeconds"] == 3661


def test_backoff_limit_follows_max_restarts_then_the_flag() -> None:
    spec = StudySpec(objective="sklearn-iris", workers=4, max_restarts=2)
    assert _job(spec)["spec"]["backoffLimit"] == 2
    assert _job(spec, backoff_limit=7)["spec"]["backoffLimit"] == 7


def _failed_pod(code: int | None, *conditions: str) -> dict:
    status: dict = {
        "phase": "Failed",
        "conditions": [{"type": c, "status": "True"} for c in conditions],
    }
    if code is not None:
        state = {"terminated": {"exitCode": code}}
        status["containerStatuses"] = [{"name": "worker", "state": state}]
    return {"status": status}


@pytest.mark.parametrize(
    ("exit_code", "conditions", "action"),
    [
        (75, (), "Ignore"),  # SIGTERM: kubectl delete pod, the worker handed its trial back
        (143, (), "Ignore"),  # SIGTERM before the worker's handler was installed
        (137, ("DisruptionTarget",), "Ignore"),  # eviction, preemption, drain
        (75, ("DisruptionTarget",), "Ignore"),
        (2, (), "FailJob"),  # bad objective or option: every replacement would fail the same
        (3, (), "FailJob"),  # storage unusable after db_wait
        (1, (), "Count"),  # unexpected crash: counted against backoffLimit, replaced
        (137, (), "Count"),  # OOM-killed
        (None, ("DisruptionTarget",), "Ignore"),  # deleted before its container ran
    ],
)
def test_pod_failure_policy_replaces_disruptions_and_stops_on_bad_input(
    exit_code: int | None, conditions: tuple[str, ...], action: str
) -> None:
    assert failure_action(_job(), _failed_pod(exit_code, *conditions)) == action


def test_pod_failure_policy_rules_are_what_the_api_accepts() -> None:
    rules = _job()["spec"]["podFailurePolicy"]["rules"]
    for rule in rules:
        codes = rule.get("onExitCodes", {}).get("values", [])
        assert codes == sorted(set(codes)) and 0 not in codes  # sorted, unique, never 0
    assert failure_action(_job(), {"status": {"phase": "Running"}}) is None


def test_resources_are_guaranteed_and_threads_follow_the_cpu_limit() -> None:
    container = _job(cpu="2", memory="3Gi", gpu=1)["spec"]["template"]["spec"]["containers"][0]
    resources = container["resources"]
    assert resources["requests"] == {"cpu": "2", "memory": "3Gi"}
    assert resources["limits"] == {"cpu": "2", "memory": "3Gi", "nvidia.com/gpu": 1}
    env = {e["name"]: e for e in container["env"]}
    for name in ("TUNEFLEET_THREADS", "OMP_NUM_THREADS"):
        ref = env[name]["valueFrom"]["resourceFieldRef"]
        assert ref == {"containerName": "worker", "resource": "limits.cpu", "divisor": "1"}


def test_gpu_workers_tolerate_gpu_taints_and_cpu_workers_do_not() -> None:
    assert "tolerations" not in _job()["spec"]["template"]["spec"]
    tolerations = _job(gpu=1)["spec"]["template"]["spec"]["tolerations"]
    assert tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_pods_are_locked_down() -> None:
    pod = _job()["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["terminationGracePeriodSeconds"] == 20
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    # The only writable place is an emptyDir, where HOME (caches) points.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    assert {"name": "HOME", "value": "/tmp"} in container["env"]
    # No command: the image's entrypoint (dumb-init) stays PID 1.
    assert "command" not in container and container["args"][:2] == ["tunefleet", "worker"]


def test_storage_url_only_reaches_pods_from_the_secret() -> None:
    spec = StudySpec(objective="sklearn-iris", storage=URL, workers=2)
    job = job_manifest(spec, FleetOptions(image="tunefleet:1"))
    assert PASSWORD not in json.dumps(job) and "db.example.com" not in json.dumps(job)
    (storage,) = [
        e
        for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
        if e["name"] == "TUNEFLEET_STORAGE"
    ]
    assert storage["valueFrom"]["secretKeyRef"] == {
        "name": "tunefleet-sklearn-iris-storage",
        "key": "TUNEFLEET_STORAGE",
    }
    secret = secret_manifest("sklearn-iris", FleetOptions(), URL)
    assert base64.b64decode(secret["data"]["TUNEFLEET_STORAGE"]).decode() == URL
    assert PASSWORD not in json.dumps(secret)


@pytest.mark.parametrize("name", ["TUNEFLEET_STORAGE", "DATABASE_URL"])
def test_the_storage_url_cannot_be_passed_as_plain_env(name: str) -> None:
    with pytest.raises(ConfigError, match="Secret"):
        FleetOptions(env={name: URL}).validated()


def test_user_env_wins_over_tunefleet_defaults() -> None:
    env = _job(env={"OMP_NUM_THREADS": "1", "EXTRA": "yes"})["spec"]["template"]["spec"][
        "containers"
    ][0]["env"]
    omp = [e for e in env if e["name"] == "OMP_NUM_THREADS"]
    assert omp == [{"name": "OMP_NUM_THREADS", "value": "1"}]
    assert {"name": "EXTRA", "value": "yes"} in env


def test_labels_find_every_object_of_a_study() -> None:
    job = _job()
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["tunefleet.io/study"] == "iris"
        assert labels["tunefleet.io/component"] == "worker"
    secret = secret_manifest("iris", FleetOptions(), URL)
    assert secret["metadata"]["labels"]["tunefleet.io/component"] == "storage"
    assert job["metadata"]["annotations"]["tunefleet.io/study-name"] == "iris"


@pytest.mark.parametrize("study", ["iris", "Iris", "iris_v2", "a.b", "x" * 200, "9lives"])
def test_object_names_are_valid_and_distinct_for_any_study_name(study: str) -> None:
    name = job_name(study)
    assert len(name) <= 63 and len(name + "-storage") <= 63
    assert name == name.lower() and name[-1].isalnum()
    assert all(c.isalnum() or c == "-" for c in name)
    assert study_label(study) != study_label(study.upper()) or study == study.upper()


def test_worker_args_reproduce_the_study_spec() -> None:
    # Every field of StudySpec that a worker reads must survive the trip through the pod's args.
    spec = StudySpec(
        objective="tests/data/objectives.py:scaled",
        study="round-trip",
        n_trials=42,
        timeout=123.25,
        directions=("maximize",),
        sampler="random",
        seed=11,
        pruner="hyperband",
        objective_args={"scale": 2.5, "offset": 3, "label": "a b"},
        heartbeat_interval=2.5,
        grace_period=9.0,
        retry_failed=2,
        db_wait=30.0,
        storage_engine="stock",
    )
    args = worker_args(spec)
    assert args[:2] == ["tunefleet", "worker"]
    context = worker.make_context("worker", args[2:])
    params = dict(context.params)
    parsed = build_spec(
        params.pop("objective"),
        params.pop("config_path"),
        params.pop("objective_args"),
        params.pop("directions"),
        **{
            k: v
            for k, v in params.items()
            if k not in ("as_json", "output", "log_level", "log_format")
        },
    )
    assert parsed == spec
    not_for_workers = {"storage", "workers", "max_restarts"}
    covered = {
        f for f in StudySpec.__dataclass_fields__ if getattr(spec, f) != getattr(StudySpec(), f)
    }
    assert covered | not_for_workers == set(StudySpec.__dataclass_fields__)
    assert shlex.join(args)  # printable as one shell line


def test_a_kubernetes_table_is_read_by_k8s_and_ignored_by_the_study_spec(study_toml: Path) -> None:
    spec = load_spec(study_toml)  # `tunefleet run --config` accepts the same file
    assert spec.study == "iris-k8s" and spec.workers == 4
    options = options_from_config(study_toml)
    assert options.image == "registry.example.com/tunefleet:0.1.0-cuda"
    assert options.gpu == 1 and dict(options.node_selector) == {
        "cloud.google.com/gke-accelerator": "nvidia-l4"
    }
    merged = options.merged(cpu="8", env={"EXTRA": "1"})
    assert merged.cpu == "8" and dict(merged.env) == {"KERAS_BACKEND": "torch", "EXTRA": "1"}


def test_private_registry_secrets_reach_the_pods(
    study_toml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--image-pull-secret", "regcred", "--image-pull-secret", "ghcr-token"]
    code, out, err = run_cli(capsys, "k8s", "render", "--config", str(study_toml), *flags)
    assert code == 0, err
    job = next(doc for doc in yaml.safe_load_all(out) if doc["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    # The file's and the flags' secrets, each once, in the order given.
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "ghcr-token"}]
    code, out, err = run_cli(
        capsys, "k8s", "render", "sklearn-iris", "--image", "i:1", "--workers", "1"
    )
    assert code == 0 and "imagePullSecrets" not in out


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('imgae = "x"', "unknown key (did you mean 'image'?)"),
        ("gpu = true", "must be a number of GPUs"),
        ('memory = "2GB"', "not a memory quantity"),
        ('cpu = "two"', "not a CPU quantity"),
        ('namespace = "Tuning"', "not a namespace name"),
        ("env = { TUNEFLEET_STORAGE = 'x' }", "Secret"),
        ("node_selector = { gpu = 1 }", "every value must be a string"),
        ('image_pull_secrets = "regcred"', "must be a list of Secret names"),
        ("image_pull_secrets = [1]", "every item must be a string"),
        ('image_pull_secrets = ["Reg_Cred"]', "'Reg_Cred' is not a Secret name"),
    ],
)
def test_bad_kubernetes_settings_are_named_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, message: str
) -> None:
    path = tmp_path / "study.toml"
    path.write_text(
        f'objective = "sklearn-iris"\nworkers = 2\n[kubernetes]\nimage = "i:1"\n{table}\n'
    )
    code, out, err = run_cli(capsys, "k8s", "render", "--config", str(path))
    assert code == 2 and out == ""
    assert err.startswith("error: invalid ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sklearn-iris", "--workers", "2"], "no image given: pass --image"),
        (["sklearn-iris", "--image", "i:1"], "no number of workers given"),
        (["sklearn-irsi", "--image", "i:1", "--workers", "2"], "unknown objective 'sklearn-irsi'"),
        (["sklearn-iris", "--image", "i:1", "--workers", "2", "--env", "NOEQUALS"], "KEY=VALUE"),
        (["sklearn-iris", "--image", "i:1", "--workers", "0"], "--workers: must be at least 1"),
        (
            ["sklearn-iris", "--image", "i:1", "--workers", "1", "--image-pull-secret", "A B"],
            "invalid --image-pull-secret: 'A B' is not a Secret name",
        ),
    ],
)
def test_render_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, "k8s", "render", *args)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1


def test_render_prints_yaml_that_names_the_secret_and_no_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEFLEET_STORAGE", URL)
    code, out, _ = run_cli(
        capsys, "k8s", "render", "sklearn-iris", "--image", "i:1", "--workers", "2"
    )
    assert code == 0
    (job,) = list(yaml.safe_load_all(out))
    assert job["kind"] == "Job"
    assert "kubectl create secret generic tunefleet-sklearn-iris-storage" in out
    assert PASSWORD not in out and "db.example.com" not in out


def test_render_needs_no_kubernetes_client(tmp_path: Path) -> None:
    # `render` works where lightkube is not installed: it never imports it.
    code = (
        "import sys; sys.modules['lightkube'] = None\n"
        "from tunefleet.cli import main\n"
        "main(['k8s', 'render', 'sklearn-iris', '--image', 'i:1', '--workers', '1'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "kind: Job" in result.stdout


def test_without_the_extra_cluster_commands_name_it(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['lightkube'] = None\n"
        "from tunefleet.cli import main\n"
        "main(['k8s', 'status'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert 'pip install "tunefleet[kubernetes]"' in result.stderr
