"""An in-memory stand-in for one namespace of a Kubernetes API server, at tunefleet's seam
(:class:`tunefleet.kubernetes.Cluster`): it stores what is applied, answers gets and lists, and
records every request so tests can assert what was sent.

It keeps only the API rules tunefleet relies on: server-side apply creates or merges, a Job's pod
template cannot change once created, deleting a Job deletes its pods and every object it owns
(``ownerReferences``, the garbage collector), Events are selected by ``involvedObject.uid``.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from tunefleet.kubernetes import ClusterError


class FakeCluster:
    def __init__(
        self, namespace: str = "default", context: str = "fake-context", version: str = "1.31"
    ) -> None:
        self._namespace = namespace
        self.version = version  # what GET /version answers, "major.minor"
        self._uids = itertools.count(1)
        self._context = context
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str, dict[str, Any] | None]] = []
        self.pod_logs: dict[str, list[str]] = {}
        self.refuse: dict[tuple[str, str], str] = {}  # (verb, kind) -> error message
        #: Called before answering each list of Pods (a test's timeline of pods coming and going).
        self.before_list_pods: Callable[[FakeCluster], None] | None = None

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def context(self) -> str:
        return self._context

    # --- the seam -----------------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(dict(obj))
        kind, name = body["kind"], body["metadata"]["name"]
        self._record("apply", kind, name, body)
        stored = self.objects.get((kind, name))
        if stored is not None and kind == "Job":
            if stored["spec"]["template"] != body["spec"]["template"]:
                raise ClusterError(
                    f'the cluster refused to apply Job {name}: Job.batch "{name}" is invalid: '
                    "spec.template: Invalid value: field is immutable (422)"
                )
            stored["spec"].update(body["spec"])
            return copy.deepcopy(stored)
        if stored is not None:  # server-side apply: the object keeps its identity
            body["metadata"]["uid"] = stored["metadata"]["uid"]
        body["metadata"].setdefault("namespace", self._namespace)
        body["metadata"].setdefault("creationTimestamp", "2026-11-01T10:00:00Z")
        body["metadata"].setdefault("uid", f"uid-{next(self._uids)}")
        if kind == "Job":
            body.setdefault("status", {})
        self.objects[(kind, name)] = body
        return copy.deepcopy(body)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        self._record("get", kind, name, None)
        found = self.objects.get((kind, name))
        return copy.deepcopy(found) if found is not None else None

    def list(
        self, kind: str, labels: Mapping[str, str], fields: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        self._record("list", kind, "", {**labels, **(fields or {})})
        if kind == "Pod" and self.before_list_pods is not None:
            self.before_list_pods(self)
        return [
            copy.deepcopy(o)
            for (k, _), o in sorted(self.objects.items())
            if k == kind
            and labels.items() <= o["metadata"].get("labels", {}).items()
            and all(_field(o, path) == value for path, value in (fields or {}).items())
        ]

    def delete(self, kind: str, name: str) -> bool:
        self._record("delete", kind, name, None)
        found = self.objects.pop((kind, name), None)
        if found is not None and kind == "Job":
            study = found["metadata"]["labels"]["tunefleet.io/study"]
            uid = found["metadata"]["uid"]
            for key, obj in list(self.objects.items()):
                labels = obj["metadata"].get("labels", {})
                owners = {o.get("uid") for o in obj["metadata"].get("ownerReferences", [])}
                if (key[0] == "Pod" and labels.get("tunefleet.io/study") == study) or uid in owners:
                    del self.objects[key]
        return found is not None

    def logs(
        self,
        pod: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: int | None = None,
        timestamps: bool = False,
    ) -> Iterator[str]:
        # Recorded as asked; only what differs from the defaults besides ``follow``.
        limits = {"tail": tail, "since": since, "timestamps": timestamps or None}
        self._record(
            "logs", "Pod", pod, {"follow": follow, **{k: v for k, v in limits.items() if v}}
        )
        lines = self.pod_logs.get(pod, [])
        if tail is not None:  # what the API server does with tailLines
            lines = lines[len(lines) - tail :] if tail else []
        for line in lines:
            yield f"2026-01-01T00:00:00Z {line}" if timestamps else line

    def server_version(self) -> tuple[int, int]:
        self._record("get", "Version", "", None)
        major, minor = self.version.split(".")[:2]
        return int(major), int(minor)

    # --- test helpers -------------------------------------------------------------------------

    def _record(self, verb: str, kind: str, name: str, body: dict[str, Any] | None) -> None:
        if (verb, kind) in self.refuse:
            raise ClusterError(self.refuse[(verb, kind)])
        self.requests.append((verb, kind, name, copy.deepcopy(body)))

    def sent(self, verb: str, kind: str | None = None) -> list[dict[str, Any]]:
        """Bodies of the requests with this verb (and kind)."""
        return [
            b or {} for v, k, _, b in self.requests if v == verb and (kind is None or k == kind)
        ]

    def wire(self) -> str:
        """Every request as JSON: what went over the wire, for grepping."""
        return json.dumps(self.requests)

    def add_pod(
        self,
        job: Mapping[str, Any],
        name: str,
        phase: str = "Running",
        exit_code: int | None = None,
        waiting: str | None = None,
        node: str = "node-1",
        conditions: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        """A worker pod of ``job`` as the kubelet would report it."""
        state: dict[str, Any] = {"running": {"startedAt": "2026-11-01T10:00:05Z"}}
        if exit_code is not None:
            reason = "Completed" if exit_code == 0 else "Error"
            state = {"terminated": {"exitCode": exit_code, "reason": reason}}
        elif waiting:
            state = {"waiting": {"reason": waiting}}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self._namespace,
                "labels": dict(job["spec"]["template"]["metadata"]["labels"]),
                "creationTimestamp": "2026-11-01T10:00:00Z",
            },
            "spec": {"nodeName": node if not waiting else None},
            "status": {
                "phase": phase,
                "conditions": conditions or [],
                "containerStatuses": [{"name": "worker", "restartCount": 0, "state": state}],
            },
        }
        self.objects[("Pod", name)] = pod
        self.add_event(job, "SuccessfulCreate", f"Created pod: {name}")
        return pod

    def add_event(self, job: Mapping[str, Any], reason: str, message: str) -> None:
        """An Event about ``job``, as the Job controller records one."""
        name = f"{job['metadata']['name']}.{len(self.objects)}"
        stored = self.objects[("Job", job["metadata"]["name"])]
        self.objects[("Event", name)] = {
            "metadata": {"name": name, "namespace": self._namespace},
            "involvedObject": {"kind": "Job", "uid": stored["metadata"]["uid"]},
            "reason": reason,
            "message": message,
        }


def _field(obj: Mapping[str, Any], path: str) -> Any:
    """The value at a field selector's dotted path, e.g. ``involvedObject.uid``."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value
