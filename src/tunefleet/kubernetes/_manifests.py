"""The objects a fleet is made of, as plain dicts: one function per kind (Job, Secret).

Why the Job looks the way it does
---------------------------------
A worker exits 0 only when the *study* is done (budget spent or deadline passed, as every worker
reads it from the database), 75 when a signal stopped it first (its running trial is handed back
and re-queued), 2 on bad input and 3 when the database stays unusable past ``db_wait``. On that
contract the Job is Kubernetes' "work queue" pattern:

* ``parallelism`` = workers and **no** ``completions``. With completions unset, the Job replaces
  every pod that fails and creates no new pod once one pod has *succeeded*; it is complete when
  one pod has succeeded and the rest have ended. The reference tutorial used the same shape, but
  its script exited 0 after its own ``n_trials``, so the first pod to finish stopped all
  replacement. Here exit 0 means "the study is done", which every other worker then sees too, so
  "one success" is exactly "the study is done". (``completions = workers`` would also work, but it
  needs one success per pod and so restarts pods that crashed *after* the study was done.)
* ``restartPolicy: Never`` (``podFailurePolicy`` requires it): a failed worker is replaced by a
  new pod rather than restarted in place, so the Job controller sees every exit code.
* ``podFailurePolicy``, first match wins:

  1. pod condition ``DisruptionTarget`` -> ``Ignore``: eviction, preemption, node drain and taint
     kills are not the worker's fault; the pod is replaced and ``backoffLimit`` is not charged.
  2. exit code 75 or 143 -> ``Ignore``: 75 is the worker's graceful stop on SIGTERM (what
     ``kubectl delete pod`` sends, which sets no DisruptionTarget condition); 143 is SIGTERM
     arriving before the worker installed its handler (while importing). Replaced, not charged.
  3. exit code 2, 3 or 5 -> ``FailJob``: a bad objective, option or storage URL fails identically
     in every replacement, so the Job fails at once with the reason in its condition, instead of
     crash-looping through ``backoffLimit`` with exponential back-off. (3 comes only after the
     worker waited ``db_wait`` for the database: raise ``db_wait`` for long outages.) 5: the
     objective is broken (its first trials all failed, or more than ``max_failures``): every
     pod of the Job stopped, the failed trials' budget was given back; fix it and apply again.
  4. anything else (1: unexpected error; 137: OOM-killed or killed after the grace period) counts
     against ``backoffLimit``, which defaults to 3 x workers like ``tunefleet run --max-restarts``.

  ``podFailurePolicy`` needs Kubernetes 1.26. For an older server (``k8s apply`` reads its
  version; ``k8s render --kube-version``) the Job is rendered without it, since server-side apply
  refuses fields the server does not know: every failed pod then counts against
  ``backoffLimit``, interrupted ones included, so its default doubles (:data:`OLD_SERVER_NOTE`).

* ``activeDeadlineSeconds`` = the study's ``timeout`` + a margin: a backstop, not the study's
  deadline (the workers stop themselves at that, by the database's clock). The margin covers pods
  that start late (image pulls, node scale-up) and trials still running at the deadline, which
  are allowed to finish.
* ``ttlSecondsAfterFinished``: a finished Job and its pods stay a while for ``status`` and
  ``logs``, then are garbage-collected; the study stays in the database.
* ``terminationGracePeriodSeconds`` (20 s by default): SIGTERM makes a worker hand its trial back
  and exit within a second or two; a worker stuck in a long C call is killed after the grace
  period and its trial is taken over by the others after the heartbeat grace period.

Pods run the image's entrypoint (dumb-init, see the Dockerfile) with the worker as ``args``:
as PID 1, Python would ignore SIGTERM until its handler is installed and would not reap the
processes that joblib or data loaders start.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from tunefleet import constants
from tunefleet.config import StudySpec
from tunefleet.constants import FLEET_ID_ENV, ExitCode
from tunefleet.errors import ConfigError
from tunefleet.kubernetes._options import FleetOptions
from tunefleet.objectives._loader import BUILTINS

__all__ = [
    "CONTAINER",
    "EXIT_CONFIG",
    "EXIT_STORAGE",
    "GPU_RESOURCE",
    "LABEL_COMPONENT",
    "LABEL_STUDY",
    "MANAGED_BY",
    "OLD_SERVER_NOTE",
    "POD_FAILURE_POLICY_SINCE",
    "RUN_AS_USER",
    "THREADS_ENV",
    "artifacts_secret_manifest",
    "artifacts_secret_name",
    "failure_action",
    "job_manifest",
    "job_name",
    "kube_version_note",
    "owner_reference",
    "parse_kube_version",
    "secret_manifest",
    "secret_name",
    "study_label",
    "study_name",
    "to_yaml",
    "worker_args",
]

PREFIX = "tunefleet.io/"
LABEL_STUDY = PREFIX + "study"
LABEL_COMPONENT = PREFIX + "component"
ANNOTATION_STUDY = PREFIX + "study-name"
ANNOTATION_OBJECTIVE = PREFIX + "objective"
#: Every object tunefleet creates carries this label; ``status``/``logs``/``delete`` select on it.
MANAGED_BY = {"app.kubernetes.io/name": "tunefleet", "app.kubernetes.io/managed-by": "tunefleet"}

CONTAINER = "worker"
GPU_RESOURCE = "nvidia.com/gpu"
#: The Dockerfile's user; numeric, so the kubelet can check ``runAsNonRoot``.
RUN_AS_USER = 10001
#: Threads for the objective's numerical libraries: the pod's CPU limit (downward API, rounded up).
THREADS_ENV = constants.THREADS_ENV
EXIT_CONFIG = int(ExitCode.CONFIG)
EXIT_STORAGE = int(ExitCode.STORAGE)
EXIT_OBJECTIVE_BROKEN = int(ExitCode.OBJECTIVE_BROKEN)
_EXIT_SIGTERM = int(ExitCode.SIGTERM)
#: The Job controller labels its pods with the Job's uid (Kubernetes 1.27+; on older clusters
#: the variable is empty and each pod is a run of its own).
JOB_UID_FIELD = "metadata.labels['batch.kubernetes.io/controller-uid']"

_MAX_NAME = 63 - len("tunefleet-") - len("-storage")

#: The first Kubernetes release with a Job's ``podFailurePolicy`` (beta, on by default).
POD_FAILURE_POLICY_SINCE = (1, 26)
OLD_SERVER_NOTE = (
    "Kubernetes {version} has no podFailurePolicy (1.26+): the Job is sent without it, so "
    "interrupted pods (deleted, evicted, drained) count toward backoffLimit like crashes, and "
    "bad input no longer fails the Job at once; the default backoffLimit doubles to {limit}"
)


def parse_kube_version(text: str) -> tuple[int, int]:
    """``"1.20"``, ``"v1.20.2"`` or ``"1.29+"`` (GKE's minor) as ``(major, minor)``.

    Raises:
        ConfigError: not a Kubernetes version.
    """
    found = re.match(r"^v?(\d+)\.(\d+)", text.strip())
    if not found:
        raise ConfigError(f"invalid --kube-version: '{text}' is not a version such as 1.29")
    return int(found.group(1)), int(found.group(2))


def kube_version_note(job: Mapping[str, Any], version: tuple[int, int] | None) -> str:
    """The one-time warning for a server older than 1.26, or "" (``job``: from job_manifest)."""
    if version is None or version >= POD_FAILURE_POLICY_SINCE:
        return ""
    limit = job["spec"].get("backoffLimit")
    return OLD_SERVER_NOTE.format(version=f"{version[0]}.{version[1]}", limit=limit)


def study_name(spec: StudySpec) -> str:
    """The study's name: ``study`` from the spec, else derived from the objective as workers do.

    Pods always get ``--study`` explicitly, so every pod and every replacement joins one study.
    """
    if spec.study:
        return spec.study
    assert spec.objective is not None
    objective = spec.objective.strip()
    name = objective if objective in BUILTINS else objective.rpartition(":")[2]
    return re.sub(r"[^A-Za-z0-9._\-]", "-", name).strip("-") or "tunefleet"


def study_label(study: str) -> str:
    """A DNS-1123 form of a study name, for object names and the ``tunefleet.io/study`` label.

    Names that had to change (upper case, ``_`` or ``.``, too long) get a short hash of the real
    name, so ``Iris`` and ``iris`` never share a Job.
    """
    slug = re.sub(r"[^a-z0-9-]+", "-", study.lower()).strip("-")
    if slug == study and len(slug) <= _MAX_NAME:
        return slug
    digest = hashlib.sha256(study.encode()).hexdigest()[:6]
    return f"{slug[: _MAX_NAME - 7].rstrip('-')}-{digest}".lstrip("-")


def job_name(study: str) -> str:
    return f"tunefleet-{study_label(study)}"


def secret_name(study: str, options: FleetOptions) -> str:
    return options.secret or f"tunefleet-{study_label(study)}-storage"


def _labels(study: str, component: str) -> dict[str, str]:
    return {**MANAGED_BY, LABEL_STUDY: study_label(study), LABEL_COMPONENT: component}


def _metadata(name: str, study: str, component: str, namespace: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = _labels(study, component)
    meta["annotations"] = {ANNOTATION_STUDY: study}
    return meta


def worker_args(spec: StudySpec) -> list[str]:
    """``tunefleet worker ...`` reproducing ``spec``; the storage URL travels in the Secret."""
    return ["tunefleet", "worker", *dataclasses.replace(spec, study=study_name(spec)).worker_args()]


def _pod_failure_policy() -> dict[str, Any]:
    # See the module docstring; the exit code values must be sorted.
    return {
        "rules": [
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            {
                "action": "Ignore",
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": sorted({int(ExitCode.INTERRUPTED), _EXIT_SIGTERM}),
                },
            },
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": [EXIT_CONFIG, EXIT_STORAGE, EXIT_OBJECTIVE_BROKEN],
                },
            },
        ]
    }


def _env(options: FleetOptions, secret: str) -> list[dict[str, Any]]:
    # Divisor 1: whole cores, rounded up (a 500m limit gives 1 thread, 1500m gives 2).
    cpu_limit = {
        "resourceFieldRef": {"containerName": CONTAINER, "resource": "limits.cpu", "divisor": "1"}
    }
    ours: list[dict[str, Any]] = [
        # The password reaches the pod only from the Secret, never as plain text in the Job.
        {
            "name": "TUNEFLEET_STORAGE",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": options.secret_key}},
        },
        # Size thread pools to the CPU limit, not to the node's cores: several pods on one node
        # each starting a thread per core ran 7x slower in the reference tutorial.
        {"name": THREADS_ENV, "valueFrom": cpu_limit},
        {"name": "OMP_NUM_THREADS", "valueFrom": copy.deepcopy(cpu_limit)},
        # The root filesystem is read-only: caches (matplotlib, keras, torch) go to the emptyDir.
        {"name": "HOME", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # The pods of one Job are one run: they share a stop on a broken objective, and the pods
        # of a Job applied again after the fix start afresh (tunefleet.failures).
        {"name": FLEET_ID_ENV, "valueFrom": {"fieldRef": {"fieldPath": JOB_UID_FIELD}}},
    ]
    # The user's settings win over ours (but never over the storage URL, see FleetOptions).
    env = [e for e in ours if e["name"] not in options.env]
    env += [{"name": k, "value": v} for k, v in sorted(options.env.items())]
    return env


def _resources(options: FleetOptions) -> dict[str, Any]:
    # requests = limits: Guaranteed QoS, the last class to be evicted under node pressure, and
    # a CPU limit that the thread count above follows.
    amounts: dict[str, Any] = {"cpu": options.cpu, "memory": options.memory}
    limits = dict(amounts)
    if options.gpu:
        limits[GPU_RESOURCE] = options.gpu
    return {"requests": amounts, "limits": limits}


def _pod_spec(spec: StudySpec, options: FleetOptions, secret: str, study: str) -> dict[str, Any]:
    assert options.image is not None
    container: dict[str, Any] = {"name": CONTAINER, "image": options.image}
    if options.pull_policy:
        container["imagePullPolicy"] = options.pull_policy
    container |= {
        "args": worker_args(spec),
        "env": _env(options, secret)
        + _artifact_env(spec.artifacts, artifacts_secret_name(study, options), options),
        "resources": _resources(options),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": options.termination_grace,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
        # Spread workers over nodes when there is room: losing one node then stops fewer.
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {LABEL_STUDY: study_label(study)}},
            }
        ],
    }
    if options.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in options.image_pull_secrets]
    if options.node_selector:
        pod["nodeSelector"] = dict(options.node_selector)
    if options.gpu:
        # GPU node pools are commonly tainted so that only GPU pods land there.
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return pod


def job_manifest(
    spec: StudySpec, options: FleetOptions, kube_version: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The Job that runs ``spec.workers`` workers of the study until it is done.

    ``kube_version`` is the server's ``(major, minor)``: below 1.26 the Job has no
    ``podFailurePolicy`` and a default ``backoffLimit`` twice as large (interruptions count
    too). None: the newest Kubernetes.

    Raises:
        ConfigError: no image, no number of workers, or an objective a pod cannot resolve.
    """
    if not options.image:
        raise ConfigError(
            "no image given: pass --image REPO/IMG:TAG (or image = ... under [kubernetes]); "
            "see docs/kubernetes.md for building it"
        )
    if not spec.workers:
        raise ConfigError(
            "no number of workers given: pass --workers N (or workers = N in the --config file)"
        )
    if not spec.objective:
        raise ConfigError("no objective given: name one, or set objective = ... in --config")
    if ":" not in spec.objective and spec.objective.strip() not in BUILTINS:
        raise ConfigError(
            f"unknown objective '{spec.objective}': use a built-in "
            f"({', '.join(sorted(BUILTINS))}) or package.module:function installed in the image"
        )
    study = study_name(spec)
    secret = secret_name(study, options)
    has_policy = kube_version is None or kube_version >= POD_FAILURE_POLICY_SINCE
    crashes = spec.max_restarts if spec.max_restarts is not None else 3 * spec.workers
    job_spec: dict[str, Any] = {
        "parallelism": spec.workers,
        # Without the policy every interruption is a failed pod too: as many again for those.
        "backoffLimit": (
            options.backoff_limit
            if options.backoff_limit is not None
            else crashes
            if has_policy
            else 2 * crashes
        ),
    }
    if spec.timeout is not None:
        job_spec["activeDeadlineSeconds"] = math.ceil(spec.timeout) + options.deadline_margin
    job_spec["ttlSecondsAfterFinished"] = options.ttl
    if has_policy:
        job_spec["podFailurePolicy"] = _pod_failure_policy()
    template_meta = {"labels": _labels(study, "worker"), "annotations": {ANNOTATION_STUDY: study}}
    job_spec["template"] = {
        "metadata": template_meta,
        "spec": _pod_spec(spec, options, secret, study),
    }
    meta = _metadata(job_name(study), study, "worker", options.namespace)
    meta["annotations"][ANNOTATION_OBJECTIVE] = spec.objective
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


#: What a pod needs for an ``s3://`` artifact store, from the artifacts Secret (each optional:
#: on EKS with IAM roles for service accounts, none is needed).
ARTIFACT_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
)


def artifacts_secret_name(study: str, options: FleetOptions) -> str:
    return f"tunefleet-{study_label(study)}-artifacts"


def _artifact_env(
    artifacts: str | None, secret: str, options: FleetOptions
) -> list[dict[str, Any]]:
    """The S3 credentials, from the artifacts Secret only, never as plain values in the Job
    (a plain ``env`` value the user gave, such as AWS_ENDPOINT_URL, wins)."""
    if not artifacts or not artifacts.startswith("s3://"):
        return []
    return [
        {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": name, "optional": True}},
        }
        for name in ARTIFACT_ENV
        if name not in options.env
    ]


def artifacts_secret_manifest(
    study: str, options: FleetOptions, values: Mapping[str, str]
) -> dict[str, Any]:
    """The Secret holding the artifact store's credentials (the ``ARTIFACT_ENV`` given)."""
    data = {k: base64.b64encode(values[k].encode()).decode() for k in ARTIFACT_ENV if values.get(k)}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(
            artifacts_secret_name(study, options), study, "artifacts", options.namespace
        ),
        "type": "Opaque",
        "data": data,
    }


def secret_manifest(study: str, options: FleetOptions, storage_url: str) -> dict[str, Any]:
    """The Secret holding the storage URL (base64 in ``data``, as the API stores it)."""
    encoded = base64.b64encode(storage_url.encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(secret_name(study, options), study, "storage", options.namespace),
        "type": "Opaque",
        "data": {options.secret_key: encoded},
    }


def owner_reference(job: Mapping[str, Any]) -> dict[str, Any]:
    """An ``ownerReferences`` entry naming a Job the API server returned (it has a ``uid``):
    the garbage collector removes the owned object with the Job, by ``k8s delete`` or its TTL."""
    meta = job["metadata"]
    return {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"]}


def failure_action(job: Mapping[str, Any], pod: Mapping[str, Any]) -> str | None:
    """What the Job's ``podFailurePolicy`` does with a failed pod: ``Ignore``, ``FailJob``,
    ``Count`` (no rule matched), or None when the pod has not failed.

    The same first-match evaluation as the Job controller, so ``status`` can say why a pod was
    replaced and tests can check the policy against real worker exit codes.
    """
    status = pod.get("status", {})
    if status.get("phase") != "Failed":
        return None
    conditions = {(c.get("type"), c.get("status")) for c in status.get("conditions", [])}
    codes = {
        s.get("name"): s["state"]["terminated"].get("exitCode")
        for s in status.get("containerStatuses", [])
        if s.get("state", {}).get("terminated")
    }
    policy = job.get("spec", {}).get("podFailurePolicy", {})
    for rule in policy.get("rules", []):
        for pattern in rule.get("onPodConditions", []):
            if (pattern["type"], pattern.get("status", "True")) in conditions:
                return str(rule["action"])
        match = rule.get("onExitCodes")
        if match:
            wanted = [match["containerName"]] if match.get("containerName") else list(codes)
            for name in wanted:
                code = codes.get(name)
                if code is None or code == 0:
                    continue
                hit = code in match["values"]
                if hit == (match["operator"] == "In"):
                    return str(rule["action"])
    return "Count"


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no ``&id001`` anchors where two fields hold equal objects."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(objects: Sequence[Mapping[str, Any]], header: str = "") -> str:
    """Objects as one YAML stream (what ``kubectl apply -f -`` reads)."""
    docs = [yaml.dump(dict(o), Dumper=_Dumper, sort_keys=False) for o in objects]
    comment = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    return comment + "---\n" + "---\n".join(docs)
