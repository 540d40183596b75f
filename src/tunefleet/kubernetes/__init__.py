"""A study's fleet as a Kubernetes Job: manifests as plain dicts, and one seam to the cluster.

* :func:`job_manifest` and :func:`secret_manifest` build the objects (see ``_manifests`` for why
  the Job is shaped as it is: work-queue completions, pod failure policy, security, resources);
* :class:`Cluster` is the only door to the API server; :func:`connect` opens a real one through
  lightkube (extra ``kubernetes``), imported only when a command talks to a cluster;
* ``_fleet`` holds what ``apply``, ``status``, ``logs`` and ``delete`` do on a :class:`Cluster`.

Every object carries the labels ``tunefleet.io/study`` (a DNS-safe form of the study name; the
exact name is the annotation ``tunefleet.io/study-name``) and ``tunefleet.io/component``
(``worker`` for the Job and its pods, ``storage`` for the Secret). A Secret that ``apply`` made
is owned by its Job (``ownerReferences``), so deleting the Job or its TTL removes it too.
"""

from __future__ import annotations

from tunefleet.kubernetes._cluster import KINDS, Cluster, ClusterError, connect
from tunefleet.kubernetes._manifests import (
    LABEL_COMPONENT,
    LABEL_STUDY,
    THREADS_ENV,
    artifacts_secret_manifest,
    artifacts_secret_name,
    failure_action,
    job_manifest,
    job_name,
    kube_version_note,
    owner_reference,
    parse_kube_version,
    secret_manifest,
    secret_name,
    study_label,
    study_name,
    to_yaml,
    worker_args,
)
from tunefleet.kubernetes._options import FleetOptions, options_from_config, threads_for

__all__ = [
    "KINDS",
    "LABEL_COMPONENT",
    "LABEL_STUDY",
    "THREADS_ENV",
    "Cluster",
    "ClusterError",
    "FleetOptions",
    "artifacts_secret_manifest",
    "artifacts_secret_name",
    "connect",
    "failure_action",
    "job_manifest",
    "job_name",
    "kube_version_note",
    "options_from_config",
    "owner_reference",
    "parse_kube_version",
    "secret_manifest",
    "secret_name",
    "study_label",
    "study_name",
    "threads_for",
    "to_yaml",
    "worker_args",
]
