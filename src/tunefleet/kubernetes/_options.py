"""Kubernetes settings of a fleet: the ``[kubernetes]`` table of a study spec, and flags.

Everything that defines the *study* stays in :class:`tunefleet.config.StudySpec` (the same file
drives ``tunefleet run``); this is only how its workers run as pods::

    [kubernetes]
    image = "registry.example.com/tunefleet:0.1.0"
    cpu = "2"            # per worker: request = limit (Guaranteed QoS)
    memory = "4Gi"
    gpu = 1              # nvidia.com/gpu per worker
    namespace = "tuning"
    node_selector = { "cloud.google.com/gke-accelerator" = "nvidia-l4" }
    env = { KERAS_BACKEND = "torch" }
    image_pull_secrets = ["regcred"]   # a private registry's docker-registry Secrets
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunefleet.errors import ConfigError

__all__ = [
    "RESERVED_ENV",
    "FleetOptions",
    "cpu_cores",
    "options_from_config",
    "threads_for",
]

#: Variables the pod gets from the Secret only; setting them as plain env would leak the password.
RESERVED_ENV = (
    "TUNEFLEET_STORAGE",
    "DATABASE_URL",
    # The artifact store's S3 credentials (docs/artifacts.md).
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
PULL_POLICIES = ("Always", "IfNotPresent", "Never")

_CPU = re.compile(r"^(?:\d+(?:\.\d{1,3})?|\d+m)$")
_MEMORY = re.compile(r"^\d+(?:\.\d+)?(?:Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


@dataclass(frozen=True)
class FleetOptions:
    """How a study's workers run on Kubernetes. ``None``: Kubernetes' or tunefleet's default."""

    image: str | None = None
    cpu: str = "1"
    memory: str = "2Gi"
    gpu: int = 0
    namespace: str | None = None
    secret: str | None = None  # default: tunefleet-<study>-storage
    secret_key: str = "TUNEFLEET_STORAGE"
    pull_policy: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    backoff_limit: int | None = None  # default: 3 x workers, like `run --max-restarts`
    ttl: int = 86_400
    deadline_margin: int = 1_800
    termination_grace: int = 20

    def merged(self, **overrides: Any) -> FleetOptions:
        """A copy with every override that is not None (or empty) applied, then validated."""
        values = {k: v for k, v in overrides.items() if v is not None and v != {} and v != ()}
        for key in ("node_selector", "env"):
            if key in values:
                values[key] = {**getattr(self, key), **values[key]}
        if "image_pull_secrets" in values:  # the file's and the flags', each once
            names = (*self.image_pull_secrets, *values["image_pull_secrets"])
            values["image_pull_secrets"] = tuple(dict.fromkeys(names))
        return dataclasses.replace(self, **values).validated()

    def validated(self, source: str = "option") -> FleetOptions:
        """Check every value; raise :class:`ConfigError` naming the first bad one."""

        def bad(key: str, why: str) -> ConfigError:
            where = "--" + key.replace("_", "-") if source == "option" else f"'{key}' in {source}"
            return ConfigError(f"invalid {where}: {why}")

        if self.image is not None and (not self.image or any(c.isspace() for c in self.image)):
            raise bad("image", f"{self.image!r} is not an image reference such as repo/img:tag")
        if not _CPU.match(self.cpu) or cpu_cores(self.cpu) <= 0:
            raise bad("cpu", f"'{self.cpu}' is not a CPU quantity such as 1, 2, 0.5 or 500m")
        if not _MEMORY.match(self.memory):
            raise bad("memory", f"'{self.memory}' is not a memory quantity such as 2Gi or 512Mi")
        if self.gpu < 0:
            raise bad("gpu", f"must be 0 or more GPUs per worker, got {self.gpu}")
        if self.namespace is not None and not _DNS_LABEL.match(self.namespace):
            raise bad(
                "namespace", f"'{self.namespace}' is not a namespace name (lowercase, a-z0-9-)"
            )
        if self.secret is not None and not _DNS_SUBDOMAIN.match(self.secret):
            raise bad("secret", f"'{self.secret}' is not a Secret name (lowercase, a-z0-9.-)")
        if not _ENV_NAME.match(self.secret_key):
            raise bad("secret_key", f"'{self.secret_key}' is not a Secret key")
        if self.pull_policy is not None and self.pull_policy not in PULL_POLICIES:
            raise bad(
                "pull_policy", f"'{self.pull_policy}' is not one of {', '.join(PULL_POLICIES)}"
            )
        for name in self.image_pull_secrets:
            if not _DNS_SUBDOMAIN.match(name):
                raise bad(
                    "image_pull_secret" if source == "option" else "image_pull_secrets",
                    f"'{name}' is not a Secret name (lowercase, a-z0-9.-)",
                )
        for key, value in self.node_selector.items():
            if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
                raise bad("node_selector", f"'{key}={value}' is not a node label")
        for key in self.env:
            if key in RESERVED_ENV:
                raise bad(
                    "env",
                    f"{key} is not set as plain text: secrets reach pods only from a Secret "
                    "(tunefleet k8s apply --env-file .env)",
                )
            if not _ENV_NAME.match(key):
                raise bad("env", f"'{key}' is not an environment variable name")
        if self.backoff_limit is not None and self.backoff_limit < 0:
            raise bad("backoff_limit", f"must be 0 or more, got {self.backoff_limit}")
        for key in ("ttl", "deadline_margin"):
            if getattr(self, key) < 0:
                raise bad(key, f"must be 0 or more seconds, got {getattr(self, key)}")
        if not 1 <= self.termination_grace <= 3600:
            raise bad(
                "termination_grace", f"must be 1 to 3600 seconds, got {self.termination_grace}"
            )
        return self


def cpu_cores(quantity: str) -> float:
    """A CPU quantity in cores: ``"500m"`` -> 0.5, ``"2"`` -> 2.0."""
    if quantity.endswith("m"):
        return int(quantity[:-1]) / 1000
    return float(quantity)


def threads_for(quantity: str) -> int:
    """What the downward API hands a pod for ``limits.cpu`` with divisor 1: cores rounded up."""
    return max(1, math.ceil(cpu_cores(quantity)))


# key -> (types, description) for the [kubernetes] table.
_TABLE_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "image": ((str,), "an image reference such as repo/img:tag"),
    "cpu": ((str, int, float), 'a CPU quantity such as "1" or "500m"'),
    "memory": ((str,), 'a memory quantity such as "2Gi"'),
    "gpu": ((int,), "a number of GPUs per worker"),
    "namespace": ((str,), "a namespace name"),
    "secret": ((str,), "a Secret name"),
    "secret_key": ((str,), "a key in the Secret"),
    "pull_policy": ((str,), f"one of {', '.join(PULL_POLICIES)}"),
    "image_pull_secrets": ((list,), 'a list of Secret names such as ["regcred"]'),
    "node_selector": ((dict,), "a table of node labels"),
    "env": ((dict,), "a table of environment variables"),
    "backoff_limit": ((int,), "a number of failed pods"),
    "ttl": ((int,), "a number of seconds"),
    "deadline_margin": ((int,), "a number of seconds"),
    "termination_grace": ((int,), "a number of seconds"),
}


def options_from_config(path: str | Path | None) -> FleetOptions:
    """The ``[kubernetes]`` table of a study spec file (defaults when there is none).

    The file itself was already read and checked by :func:`tunefleet.config.load_spec`.
    """
    if path is None:
        return FleetOptions()
    source = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:  # pragma: no cover - load_spec saw it first
        raise ConfigError(f"cannot read --config file '{source}': {exc}") from None
    table = data.get("kubernetes", {})
    if not isinstance(table, dict):
        raise ConfigError(f"invalid 'kubernetes' in {source}: must be a table, [kubernetes]")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _TABLE_KEYS:
            close = difflib.get_close_matches(key, _TABLE_KEYS, n=1)
            hint = (
                f" (did you mean '{close[0]}'?)"
                if close
                else f"; known keys: {', '.join(_TABLE_KEYS)}"
            )
            raise ConfigError(f"invalid 'kubernetes.{key}' in {source}: unknown key{hint}")
        types, description = _TABLE_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ConfigError(
                f"invalid 'kubernetes.{key}' in {source}: must be {description}, got {value!r}"
            )
        if isinstance(value, dict) and not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(
                f"invalid 'kubernetes.{key}' in {source}: every value must be a string"
            )
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise ConfigError(
                    f"invalid 'kubernetes.{key}' in {source}: every item must be a string"
                )
            value = tuple(value)
        values[key] = str(value) if key == "cpu" else value
    return FleetOptions(**values).validated(source=f"{source} [kubernetes]")
