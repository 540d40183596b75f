"""The one seam to a Kubernetes API server: :class:`Cluster`, and its lightkube implementation.

Everything ``tunefleet k8s`` does to a cluster goes through the six methods of
:class:`Cluster`, in the API's own JSON shapes (plain dicts), so the commands can be tested with a
small in-memory fake and the client library stays replaceable. Errors from the client are turned
into one-line :class:`ClusterError` messages here, at the boundary.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from tunefleet._redact import redact
from tunefleet.constants import ExitCode
from tunefleet.errors import ConfigError, TunefleetError

if TYPE_CHECKING:
    import lightkube

__all__ = ["KINDS", "Cluster", "ClusterError", "connect"]

#: The kinds tunefleet reads or writes.
KINDS = ("Job", "Pod", "Secret", "Event")
FIELD_MANAGER = "tunefleet"


class ClusterError(TunefleetError):
    """The Kubernetes API cannot be reached, or it refused a request."""

    exit_code: int = ExitCode.CLUSTER


class Cluster(Protocol):
    """A namespace of a Kubernetes cluster, as tunefleet uses it.

    ``kind`` is one of :data:`KINDS`; every call is made in :attr:`namespace`. Objects go in and
    come out as dicts in the API's JSON form.

    Raises:
        ClusterError: from every method, for anything but "not found", which :meth:`get` and
            :meth:`delete` report as None and False.
    """

    @property
    def namespace(self) -> str: ...

    @property
    def context(self) -> str:
        """The kubeconfig context in use (for messages)."""
        ...

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or update ``obj`` by server-side apply (field manager ``tunefleet``)."""
        ...

    def get(self, kind: str, name: str) -> dict[str, Any] | None: ...

    def list(
        self, kind: str, labels: Mapping[str, str], fields: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Objects whose labels include all of ``labels`` (and whose ``fields`` match: a field
        selector, e.g. ``{"involvedObject.uid": ...}`` for Events)."""
        ...

    def delete(self, kind: str, name: str) -> bool:
        """Delete with background propagation (a Job's pods go with it); False if not found."""
        ...

    def logs(
        self,
        pod: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: int | None = None,
        timestamps: bool = False,
    ) -> Iterator[str]:
        """The worker container's log lines (without newlines); ``follow`` streams until it ends.
        ``tail``: only the last lines; ``since``: only lines of the last seconds; ``timestamps``:
        each line starts with the time the kubelet took it (RFC 3339)."""
        ...

    def server_version(self) -> tuple[int, int]:
        """The API server's ``(major, minor)`` Kubernetes version (``GET /version``)."""
        ...


def connect(
    kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None
) -> Cluster:
    """Open the cluster named by the kubeconfig, as kubectl would.

    ``kubeconfig`` defaults to ``$KUBECONFIG``, else ``~/.kube/config`` (or the in-cluster service
    account); ``context`` to its current context; ``namespace`` to the context's namespace, else
    ``default``.

    Raises:
        ConfigError: the ``kubernetes`` extra is not installed.
        ClusterError: no usable kubeconfig or context.
    """
    return _LightkubeCluster(kubeconfig, context, namespace)


def _import_lightkube() -> Any:
    try:
        import lightkube
    except ImportError:
        raise ConfigError(
            'the Kubernetes client is not installed: pip install "tunefleet[kubernetes]"'
        ) from None
    return lightkube


class _LightkubeCluster:
    def __init__(
        self,
        kubeconfig: str | None,
        context: str | None,
        namespace: str | None,
        transport: Any = None,  # an httpx2 transport: tests put a fake API server here
    ) -> None:
        lk = _import_lightkube()
        import httpx2
        from lightkube.resources.batch_v1 import Job
        from lightkube.resources.core_v1 import Event, Pod, Secret

        self._resources: dict[str, Any] = {"Job": Job, "Pod": Pod, "Secret": Secret, "Event": Event}
        self._api_error: type[lightkube.ApiError] = lk.ApiError
        # ApiError is an httpx2.HTTPStatusError: both are caught as HTTPError, then told apart.
        self._errors: tuple[type[Exception], ...] = (httpx2.HTTPError,)
        try:
            config = lk.KubeConfig.from_file(kubeconfig) if kubeconfig else lk.KubeConfig.from_env()
            single = config.get(context_name=context)
        except (lk.ConfigError, FileNotFoundError, KeyError, ValueError, TypeError) as exc:
            text = str(exc).lower()
            if isinstance(exc, FileNotFoundError) or ("file" in text and "not found" in text):
                raise ClusterError(
                    f"no kubeconfig ({exc}): start a cluster (minikube start writes one), or "
                    "pass --kubeconfig FILE"
                ) from None
            raise ClusterError(
                f"unusable kubeconfig ({exc}): pick a context with --context NAME "
                "(kubectl config get-contexts lists them) or pass --kubeconfig FILE"
            ) from None
        self._namespace = namespace or single.namespace
        self._context = single.context_name
        self._server = single.cluster.server
        try:
            self._client = lk.Client(
                config=single,
                namespace=self._namespace,
                field_manager=FIELD_MANAGER,
                timeout=httpx2.Timeout(15.0),
                transport=transport,
            )
        except (lk.ConfigError, AssertionError, OSError) as exc:
            raise ClusterError(
                f"unusable kubeconfig context '{self._context}' ({exc}): fix its user or "
                "cluster entry, or pick another with --context"
            ) from None

    @property
    def namespace(self) -> str:
        return str(self._namespace)

    @property
    def context(self) -> str:
        return str(self._context)

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        from lightkube.types import PatchType

        body = copy.deepcopy(dict(obj))
        body["metadata"]["namespace"] = self._namespace
        kind, name = body["kind"], body["metadata"]["name"]
        try:
            result = self._client.patch(
                self._resources[kind],
                name,
                body,
                namespace=self._namespace,
                patch_type=PatchType.APPLY,
                field_manager=FIELD_MANAGER,
                force=True,
            )
        except self._errors as exc:
            raise self._error(exc, "apply", kind, name) from None
        return dict(result.to_dict())

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            found = self._client.get(self._resources[kind], name, namespace=self._namespace)
        except self._errors as exc:
            if self._not_found(exc):
                return None
            raise self._error(exc, "get", kind, name) from None
        return dict(found.to_dict())

    def list(
        self, kind: str, labels: Mapping[str, str], fields: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        try:
            found = self._client.list(
                self._resources[kind],
                namespace=self._namespace,
                labels=dict(labels),
                fields=dict(fields) if fields else None,
            )
            return [dict(o.to_dict()) for o in found]
        except self._errors as exc:
            raise self._error(exc, "list", kind + "s", "") from None

    def delete(self, kind: str, name: str) -> bool:
        from lightkube.types import CascadeType

        try:
            self._client.delete(
                self._resources[kind],
                name,
                namespace=self._namespace,
                cascade=CascadeType.BACKGROUND,
            )
        except self._errors as exc:
            if self._not_found(exc):
                return False
            raise self._error(exc, "delete", kind, name) from None
        return True

    def logs(
        self,
        pod: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: int | None = None,
        timestamps: bool = False,
    ) -> Iterator[str]:
        try:
            lines = self._client.log(
                pod,
                namespace=self._namespace,
                container="worker",
                follow=follow,
                tail_lines=tail,
                since=since,
                timestamps=timestamps,
                newlines=False,
            )
            yield from lines
        except self._errors as exc:
            raise self._error(exc, "read the log of", "Pod", pod) from None

    def server_version(self) -> tuple[int, int]:
        from tunefleet.kubernetes._manifests import parse_kube_version

        try:
            # lightkube has no call for /version: its httpx client (base URL, auth) does.
            response = self._client._client._client.get("/version")
            response.raise_for_status()
            info = response.json()
        except self._errors as exc:
            raise self._error(exc, "read the version of", "", "") from None
        except ValueError:
            raise ClusterError(f"the API at {self._server} sent no Kubernetes version") from None
        major = str(info.get("major", "")).rstrip("+")
        minor = str(info.get("minor", "")).rstrip("+")
        if major.isdigit() and minor.isdigit():
            return int(major), int(minor)
        try:
            return parse_kube_version(str(info.get("gitVersion", "")))
        except ConfigError:
            raise ClusterError(f"the API at {self._server} sent no Kubernetes version") from None

    def _not_found(self, exc: BaseException) -> bool:
        return isinstance(exc, self._api_error) and exc.status.code == 404

    def _error(self, exc: BaseException, verb: str, kind: str, name: str) -> ClusterError:
        """One line naming what failed, where, and what to do about it."""
        what = f"{kind} {name}".strip()
        where = f"namespace '{self.namespace}' (context '{self.context}')"
        if isinstance(exc, self._api_error):
            code, message = exc.status.code, redact(str(exc.status.message or exc))
            if code == 401:
                return ClusterError(
                    f"the cluster at {self._server} rejected the credentials of context "
                    f"'{self.context}' (401): log in again, or pick another --context"
                )
            if code == 403:
                return ClusterError(
                    f"not allowed to {verb} {what} in {where}: {message}: "
                    "ask for access, or use another --namespace"
                )
            if code == 404 and "namespaces" in message:
                return ClusterError(
                    f"namespace '{self.namespace}' does not exist: create it "
                    f"(kubectl create namespace {self.namespace}) or pick another --namespace"
                )
            return ClusterError(
                f"the cluster refused to {verb} {what} in {where}: {message} ({code})"
            )
        return ClusterError(
            f"cannot reach the Kubernetes API at {self._server} (context '{self.context}'): "
            f"{redact(str(exc)) or type(exc).__name__}: is the cluster running "
            "(minikube status)? pick another with --context"
        )
