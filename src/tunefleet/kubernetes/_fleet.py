"""What ``tunefleet k8s apply|status|logs|delete`` do, on a :class:`Cluster`.

Each function takes the cluster it works on, so the CLI stays a thin wrapper and tests can pass
a fake. Objects are found by their ``tunefleet.io/study`` label, never by guessing names.
"""

from __future__ import annotations

import base64
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunefleet._redact import redact
from tunefleet.errors import (
    ConfigError,
    NoStudiesError,
    StorageError,
    StudyError,
    TunefleetError,
)
from tunefleet.kubernetes._cluster import Cluster, ClusterError
from tunefleet.kubernetes._manifests import (
    ANNOTATION_STUDY,
    LABEL_COMPONENT,
    LABEL_STUDY,
    MANAGED_BY,
    failure_action,
    job_name,
    owner_reference,
    study_label,
)
from tunefleet.storage import STORAGE_ENV_VARS, display_url, parse_storage_url
from tunefleet.storage.read import DEFAULT_READ_WAIT_S, open_reader
from tunefleet.summary import StudyStatus, read_status, resolve_study

__all__ = [
    "PodRow",
    "apply_fleet",
    "delete_fleet",
    "find_job",
    "find_secrets",
    "job_state",
    "pod_rows",
    "pod_storage_url",
    "progress_urls",
    "read_env_file",
    "replaced_pods",
    "storage_from_secret",
    "stream_logs",
    "study_of",
    "study_progress",
    "worker_pods",
]

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


# --- the storage URL the pods get -----------------------------------------------------------


def read_env_file(path: str | Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a ``.env`` file (``export``, quotes and comments allowed)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--env-file '{path}' not found: check the path") from None
    except OSError as exc:
        raise ConfigError(f"cannot read --env-file '{path}': {exc.strerror}") from None
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def pod_storage_url(
    env_file: str | None, spec_storage: str | None, environ: Mapping[str, str] | None = None
) -> tuple[str | None, list[str]]:
    """The storage URL to put in the Secret, and warnings about it.

    From ``--env-file`` (``TUNEFLEET_STORAGE``, else ``DATABASE_URL``), else the spec's
    ``storage``, else the environment; None if none of them has one.

    Raises:
        StorageError: the URL is malformed, or names a store pods cannot share.
    """
    environ = os.environ if environ is None else environ
    url: str | None = None
    if env_file:
        values = read_env_file(env_file)
        url = _first_url(values)
        if url is None:
            raise ConfigError(
                f"--env-file '{env_file}' sets neither {' nor '.join(STORAGE_ENV_VARS)}: add "
                "TUNEFLEET_STORAGE=postgresql://user:password@host/db"
            )
    url = url or spec_storage or _first_url(environ)
    if url is None:
        return None, []
    parsed = parse_storage_url(url)  # registers the password for redaction
    if parsed.get_backend_name() != "postgresql":
        raise StorageError(
            f"pods cannot share the embedded store '{display_url(parsed)}': give them a "
            "PostgreSQL URL that every pod can reach (TUNEFLEET_STORAGE=postgresql://...)"
        )
    warnings = []
    if (parsed.host or "") in _LOCAL_HOSTS:
        warnings.append(
            f"the storage URL names host '{parsed.host}', which inside a pod is the pod itself; "
            "on minikube use host.minikube.internal for a database on this machine"
        )
    return url.strip(), warnings


def storage_from_secret(cluster: Cluster, job: Mapping[str, Any]) -> str | None:
    """The storage URL in the Secret the Job's pods read, or None if it cannot be read."""
    for env in _container(job).get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if env.get("name") == "TUNEFLEET_STORAGE" and ref:
            try:
                secret = cluster.get("Secret", ref["name"])
            except ClusterError:
                return None  # not allowed to read Secrets: fine, the pods are still shown
            data = (secret or {}).get("data", {})
            try:
                return base64.b64decode(data[ref["key"]]).decode()
            except (KeyError, ValueError):
                return None
    return None


def progress_urls(
    cluster: Cluster,
    job: Mapping[str, Any],
    env_file: str | None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Where ``status`` may read the study's progress, best first: the ``--env-file`` alone if
    given, else the pods' own Secret (if readable), then this machine's environment. Only
    PostgreSQL URLs: the pods share nothing else, and opening a SQLite path would create it."""
    environ = os.environ if environ is None else environ
    if env_file:
        candidates = [_first_url(read_env_file(env_file))]
    else:
        candidates = [storage_from_secret(cluster, job), _first_url(environ)]
    urls: list[str] = []
    for url in candidates:
        try:  # parsing also registers the password for redaction
            usable = url is not None and parse_storage_url(url).get_backend_name() == "postgresql"
        except StorageError:
            usable = False
        if usable and url is not None and url not in urls:
            urls.append(url)
    return urls


def _first_url(values: Mapping[str, str]) -> str | None:
    return next((values[k] for k in STORAGE_ENV_VARS if values.get(k, "").strip()), None)


# --- apply ----------------------------------------------------------------------------------


def apply_fleet(cluster: Cluster, job: Mapping[str, Any], secret: Mapping[str, Any] | None) -> str:
    """Create or update the Secret (if given) and the Job; return "created" or "updated".

    A Secret made here is owned by the Job (``ownerReferences``): deleting the Job, or its TTL,
    removes the password with it. It is sent first (the pods need it) and again with the owner
    once the Job has a ``uid``. A Secret the user made (no URL given) is never given an owner.

    Raises:
        ClusterError: the Job already finished, the Secret is missing, or the API refused.
    """
    name = job["metadata"]["name"]
    study = job["metadata"]["annotations"][ANNOTATION_STUDY]
    existing = cluster.get("Job", name)
    if existing is not None:
        state, _ = job_state(existing)
        if state in ("Complete", "Failed"):
            raise ClusterError(
                f"job {name} already ran ({state}) in namespace '{cluster.namespace}': remove it "
                f"with `tunefleet k8s delete --study {study}`, then apply again (the study and "
                "its trials stay in the database)"
            )
    secret_ref = _secret_ref(job)
    if secret is not None:
        cluster.apply(_owned(secret, existing))
    elif secret_ref and cluster.get("Secret", secret_ref) is None:
        raise ClusterError(
            f"no storage URL for the pods: Secret {secret_ref} does not exist in namespace "
            f"'{cluster.namespace}' and none was given: pass --env-file .env, or set "
            "TUNEFLEET_STORAGE"
        )
    try:
        applied = cluster.apply(job)
    except ClusterError as exc:
        if existing is not None and "immutable" in str(exc):
            raise ClusterError(
                f"job {name} is running with other settings, which a Job cannot change: "
                f"`tunefleet k8s delete --study {study}`, then apply again (running trials "
                "are handed back; the study stays)"
            ) from None
        raise
    if secret is not None and existing is None:
        cluster.apply(_owned(secret, applied))
    return "created" if existing is None else "updated"


def _owned(secret: Mapping[str, Any], job: Mapping[str, Any] | None) -> dict[str, Any]:
    body = dict(secret)
    if job is not None and job.get("metadata", {}).get("uid"):
        body["metadata"] = {**secret["metadata"], "ownerReferences": [owner_reference(job)]}
    return body


# --- finding a fleet ------------------------------------------------------------------------


def find_job(cluster: Cluster, study: str | None) -> dict[str, Any]:
    """The Job of ``study``, or the only tunefleet Job in the namespace when no study is named.

    Raises:
        ClusterError: no such Job, or several and no ``--study`` to choose.
    """
    where = f"namespace '{cluster.namespace}' (context '{cluster.context}')"
    if study:
        job = cluster.get("Job", job_name(study))
        if job is None:
            raise ClusterError(
                f"no fleet for study '{study}' in {where}: start one with `tunefleet k8s apply`, "
                "or pick the right --namespace/--context"
            )
        return job
    jobs = cluster.list("Job", MANAGED_BY)
    if not jobs:
        raise ClusterError(
            f"no tunefleet fleet in {where}: start one with `tunefleet k8s apply`, or pick the "
            "right --namespace/--context"
        )
    if len(jobs) > 1:
        names = sorted(
            j["metadata"].get("annotations", {}).get(ANNOTATION_STUDY, "?") for j in jobs
        )
        raise ClusterError(
            f"{len(jobs)} fleets in {where} (studies {', '.join(names)}): pick one with --study"
        )
    return jobs[0]


def find_secrets(cluster: Cluster, study: str) -> list[dict[str, Any]]:
    """The storage Secrets ``apply`` made for ``study``, found by label: they outlive a Job
    deleted by an older tunefleet, and a ``--secret`` name is found without its Job."""
    selector = {**MANAGED_BY, LABEL_STUDY: study_label(study), LABEL_COMPONENT: "storage"}
    return [
        s
        for s in cluster.list("Secret", selector)
        if s["metadata"].get("annotations", {}).get(ANNOTATION_STUDY, study) == study
    ]


def worker_pods(cluster: Cluster, job: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Job's worker pods, oldest first."""
    labels = job["metadata"].get("labels", {})
    selector = {LABEL_STUDY: labels.get(LABEL_STUDY, ""), LABEL_COMPONENT: "worker"}
    pods = cluster.list("Pod", selector)
    return sorted(
        pods, key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"])
    )


# --- status ---------------------------------------------------------------------------------


def job_state(job: Mapping[str, Any]) -> tuple[str, str]:
    """``Complete``, ``Failed``, ``Suspended`` or ``Running``, and the condition's message."""
    status = job.get("status", {})
    conditions = {c["type"]: c for c in status.get("conditions", []) if c.get("status") == "True"}
    for kind in ("Complete", "Failed", "Suspended"):
        if kind in conditions:
            c = conditions[kind]
            return kind, redact(c.get("message") or c.get("reason") or "")
    if "FailureTarget" in conditions:  # the controller is terminating pods before marking it
        c = conditions["FailureTarget"]
        return "Failed", redact(c.get("message") or c.get("reason") or "")
    return "Running", ""


_EXIT_MEANING = {
    0: "study done",
    1: "error",
    2: "bad input",
    3: "storage error",
    75: "stopped",
    137: "killed",
    143: "SIGTERM",
}
_ACTION_MEANING = {"Ignore": "replaced", "Count": "counted", "FailJob": "failed the job"}


@dataclass
class PodRow:
    """One worker pod as ``status`` shows it."""

    name: str
    phase: str
    restarts: int
    node: str
    age_s: float
    exit: str  # "", or what its last exit was and what the Job made of it

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phase": self.phase,
            "restarts": self.restarts,
            "node": self.node,
            "age_s": round(self.age_s),
            "exit": self.exit,
        }


def pod_rows(
    job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], now: datetime | None = None
) -> list[PodRow]:
    now = now or datetime.now(UTC)
    rows = []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status", {})
        phase = status.get("phase", "Pending")
        containers = status.get("containerStatuses", [])
        waiting = next(
            (
                c["state"]["waiting"].get("reason", "")
                for c in containers
                if c.get("state", {}).get("waiting")
            ),
            "",
        )
        unschedulable = next(
            (
                c.get("message") or c.get("reason") or ""
                for c in status.get("conditions", [])
                if c.get("type") == "PodScheduled" and c.get("status") == "False"
            ),
            "",
        )
        if meta.get("deletionTimestamp") and phase not in ("Succeeded", "Failed"):
            phase = "Terminating"
        elif waiting:
            phase = f"{phase} ({waiting})"
        elif unschedulable and phase == "Pending":
            # The scheduler's words, e.g. "0/3 nodes are available: 3 Insufficient cpu."
            phase = f"Pending ({unschedulable.strip()})"
        exit_text = ""
        terminated = next(
            (c["state"]["terminated"] for c in containers if c.get("state", {}).get("terminated")),
            None,
        )
        if terminated is not None:
            code = int(terminated.get("exitCode", 0))
            reason = terminated.get("reason", "")
            meaning = (
                reason if reason not in ("", "Error", "Completed") else _EXIT_MEANING.get(code, "")
            )
            exit_text = f"{code} {meaning}".strip()
            action = failure_action(job, pod)
            if action:
                exit_text += f", {_ACTION_MEANING.get(action, action)}"
        rows.append(
            PodRow(
                name=meta["name"],
                phase=phase,
                restarts=sum(int(c.get("restartCount", 0)) for c in containers),
                node=pod.get("spec", {}).get("nodeName") or "-",
                age_s=_age(meta.get("creationTimestamp"), now),
                exit=exit_text,
            )
        )
    return rows


def replaced_pods(
    cluster: Cluster, job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]
) -> int:
    """How many pods the Job created beyond its ``parallelism``: replacements of pods that were
    deleted, evicted or failed. With ``restartPolicy: Never`` no container restarts in place, so
    this is the fleet's restart count.

    Counted from the Job controller's ``SuccessfulCreate`` events (kept about an hour by the API
    server) together with the pods still listed, so it never counts less than those show.
    """
    created = {p["metadata"]["name"] for p in pods}
    uid = job["metadata"].get("uid")
    if uid:
        try:
            events = cluster.list("Event", {}, fields={"involvedObject.uid": uid})
        except ClusterError:
            events = []  # not allowed to read Events: the listed pods still count
        for event in events:
            message = event.get("message") or ""
            if event.get("reason") == "SuccessfulCreate" and message.startswith("Created pod: "):
                created.add(message.removeprefix("Created pod: ").strip())
    return max(0, len(created) - int(job.get("spec", {}).get("parallelism") or 1))


def study_progress(url: str, study: str, db_wait: float = DEFAULT_READ_WAIT_S) -> StudyStatus:
    """The study's snapshot (the progress model every command prints), read from this machine
    through the storage's read API.

    Raises:
        StorageError: the database cannot be reached from here within ``db_wait`` seconds.
        TunefleetError: the study is not in the database yet.
    """
    parsed = parse_storage_url(url)
    try:
        storage = open_reader(url, db_wait=db_wait)
    except NoStudiesError:
        raise TunefleetError(
            f"study '{study}' is not in {display_url(parsed)} yet: the first worker creates it"
        ) from None
    try:
        try:
            ref = resolve_study(storage, study)
        except StudyError:
            raise TunefleetError(
                f"study '{study}' is not in {storage.display_url} yet: the first worker creates it"
            ) from None
        return read_status(storage, ref)
    finally:
        storage.close()


# --- logs -----------------------------------------------------------------------------------


def _started(pod: Mapping[str, Any]) -> bool:
    if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
        return True
    return any(
        c.get("state", {}).get("running") or c.get("state", {}).get("terminated")
        for c in pod.get("status", {}).get("containerStatuses", [])
    )


def stream_logs(
    cluster: Cluster,
    job: Mapping[str, Any],
    emit: Callable[[str, str], None],
    *,
    follow: bool,
    tail: int | None = None,
    since: int | None = None,
    timestamps: bool = False,
    poll_s: float = 2.0,
) -> None:
    """Pass every log line of every worker pod to ``emit(pod, line)``, redacted.

    With ``follow``, stream all pods at once, pick up pods that appear later (replacements) and
    return when the Job has finished (or is gone) and every stream has ended. ``tail`` and
    ``since`` (seconds) limit what is shown of the pods running at the start; a replacement that
    starts while following is shown whole. ``timestamps`` starts each line with its time.
    """
    name = job["metadata"]["name"]

    def read(pod: str, limited: bool = True) -> Iterator[str]:
        return cluster.logs(
            pod,
            follow=follow,
            tail=tail if limited else None,
            since=since if limited else None,
            timestamps=timestamps,
        )

    if not follow:
        for pod in worker_pods(cluster, job):
            if _started(pod):
                pod_name = pod["metadata"]["name"]
                try:
                    for line in read(pod_name):
                        emit(pod_name, redact(line))
                except ClusterError as exc:  # deleted meanwhile, say: the others still count
                    emit(pod_name, f"(no log: {exc})")
        return

    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    followed: set[str] = set()
    open_streams = 0

    def pump(pod: str, limited: bool) -> None:
        try:
            for line in read(pod, limited):
                lines.put((pod, line))
        except ClusterError as exc:  # e.g. the pod was deleted meanwhile: say so, go on
            lines.put((pod, f"(log stream ended: {exc})"))
        finally:
            lines.put((pod, None))

    first = True
    while True:
        current = cluster.get("Job", name)
        finished = current is None or job_state(current)[0] in ("Complete", "Failed")
        for pod in worker_pods(cluster, current or job):
            pod_name = pod["metadata"]["name"]
            if pod_name not in followed and _started(pod):
                followed.add(pod_name)
                open_streams += 1
                threading.Thread(target=pump, args=(pod_name, first), daemon=True).start()
        first = False
        deadline = time.monotonic() + poll_s
        while True:
            try:
                source, text = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if text is None:
                open_streams -= 1
            else:
                emit(source, redact(text))
        if finished and open_streams == 0:
            return


# --- delete ---------------------------------------------------------------------------------


def delete_fleet(
    cluster: Cluster, job: Mapping[str, Any] | None, with_secret: bool, study: str
) -> list[str]:
    """Delete the Job (its pods follow) and, if asked, its storage Secret; return what was
    deleted. ``job`` may be None (deleted already, or removed by its TTL): the Secrets are then
    found by their labels."""
    deleted = []
    if job is not None:
        name = job["metadata"]["name"]
        if cluster.delete("Job", name):
            deleted.append(f"job/{name}")
    if with_secret:
        names = [s["metadata"]["name"] for s in find_secrets(cluster, study)]
        ref = _secret_ref(job) if job is not None else None
        if ref and ref not in names:  # a Secret the user made and named with --secret
            names.append(ref)
        for secret in names:
            if cluster.delete("Secret", secret):
                deleted.append(f"secret/{secret}")
    return deleted


# --- helpers --------------------------------------------------------------------------------


def _container(job: Mapping[str, Any]) -> dict[str, Any]:
    containers = job.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    return dict(containers[0]) if containers else {}


def _secret_ref(job: Mapping[str, Any]) -> str | None:
    for env in _container(job).get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if env.get("name") == "TUNEFLEET_STORAGE" and ref:
            return str(ref["name"])
    return None


def _age(timestamp: str | None, now: datetime) -> float:
    if not timestamp:
        return 0.0
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, (now - then).total_seconds())


def study_of(job: Mapping[str, Any]) -> str:
    """The exact study name a Job works on."""
    meta = job["metadata"]
    return str(
        meta.get("annotations", {}).get(ANNOTATION_STUDY) or meta.get("labels", {}).get(LABEL_STUDY)
    )
