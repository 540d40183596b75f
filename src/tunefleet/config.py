"""The study spec: every setting of a study, from a TOML file and from flags, validated once.

One file describes a study for a local fleet now and for Kubernetes later::

    # study.toml
    objective = "sklearn-iris"
    study = "iris"
    n_trials = 100
    timeout = 3600          # seconds, a deadline for the whole study
    direction = "maximize"  # or directions = ["minimize", "maximize"]
    sampler = "tpe"
    seed = 42
    pruner = "median"
    workers = 3
    # fault tolerance (defaults shown)
    heartbeat_interval = 5  # seconds between a worker's heartbeats
    grace_period = 60       # silence after which a worker is declared lost
    retry_failed = 0        # re-runs of a trial whose objective raised, same parameters
    # when the objective fails (docs/failures.md)
    # max_failures = 20     # stop the fleet after more than 20 failed trials [unlimited]
    # trial_timeout = 600   # seconds: a longer trial is stopped and fails as timed out
    db_wait = 60            # seconds to wait for an unreachable database
    # trial artifacts (docs/artifacts.md): where models go, and which are kept
    artifacts = "file:///shared/models"   # or "s3://bucket/prefix"
    save_models = "best"    # all | best | none
    keep_best = 1

    [objective_args]
    n_folds = 3

    [kubernetes]            # read by `tunefleet k8s` only (docs/kubernetes.md)
    image = "registry.example.com/tunefleet:0.1.0"

Flags override the file. The storage URL may be given here too, but the environment
(``TUNEFLEET_STORAGE``/``DATABASE_URL``) keeps passwords out of files that get committed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunefleet.constants import ENGINES, SAVE_MODELS
from tunefleet.errors import ConfigError

__all__ = ["DIRECTIONS", "PRUNERS", "SAMPLERS", "StudySpec", "load_spec", "parse_objective_args"]

SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc", "nsgaii")
PRUNERS = ("none", "median", "hyperband")
DIRECTIONS = ("minimize", "maximize")
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,511}")
#: The largest budget: a PostgreSQL integer column holds it.
MAX_TRIALS = 2**31 - 1
#: Sampler seeds are 32-bit (NumPy); a worker adds its ordinal, wrapping around (see Worker).
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class StudySpec:
    """Everything that defines a study and how workers run it.

    ``None`` means "not set": the objective's own default, or the study's stored value, applies.
    """

    objective: str | None = None
    study: str | None = None
    storage: str | None = None
    n_trials: int | None = None
    timeout: float | None = None
    directions: tuple[str, ...] = ()
    sampler: str = "tpe"
    seed: int | None = None
    pruner: str = "median"
    workers: int | None = None
    objective_args: Mapping[str, Any] = field(default_factory=dict)
    heartbeat_interval: float = 5.0
    grace_period: float = 60.0
    retry_failed: int = 0
    db_wait: float = 60.0
    max_restarts: int | None = None
    storage_engine: str = "auto"
    max_failures: int | None = None
    trial_timeout: float | None = None
    artifacts: str | None = None
    save_models: str | None = None
    keep_best: int | None = None

    def merged(self, **overrides: Any) -> StudySpec:
        """A copy with every override that is not None (or empty) applied, then validated."""
        values = {k: v for k, v in overrides.items() if v is not None and v != () and v != {}}
        if "objective_args" in values:
            values["objective_args"] = {**self.objective_args, **values["objective_args"]}
        return dataclasses.replace(self, **values).validated()

    def worker_args(self, log_level: str = "info", log_format: str = "text") -> list[str]:
        """The ``tunefleet worker`` arguments that reproduce this spec — for local fleet
        processes and Kubernetes pods alike. The storage URL is not among them: it travels in
        the environment, where ``ps`` cannot show its password."""
        assert self.objective is not None and self.study is not None
        args = [
            self.objective,
            "--study",
            self.study,
            "--sampler",
            self.sampler,
            "--pruner",
            self.pruner,
            "--log-level",
            log_level,
            "--log-format",
            log_format,
        ]
        for direction in self.directions:
            args += ["--direction", direction]
        if self.n_trials is not None:
            args += ["--n-trials", str(self.n_trials)]
        if self.timeout is not None:
            args += ["--timeout", repr(self.timeout)]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        args += [
            "--heartbeat-interval",
            repr(self.heartbeat_interval),
            "--grace-period",
            repr(self.grace_period),
            "--retry-failed",
            str(self.retry_failed),
            "--db-wait",
            repr(self.db_wait),
            "--storage-engine",
            self.storage_engine,
        ]
        if self.max_failures is not None:
            args += ["--max-failures", str(self.max_failures)]
        if self.trial_timeout is not None:
            args += ["--trial-timeout", repr(self.trial_timeout)]
        if self.artifacts is not None:
            args += ["--artifacts", self.artifacts]
        if self.save_models is not None:
            args += ["--save-models", self.save_models]
        if self.keep_best is not None:
            args += ["--keep-best", str(self.keep_best)]
        for key, value in self.objective_args.items():
            args += ["--objective-arg", f"{key}={toml_value(value)}"]
        return args

    def validated(self, source: str = "option") -> StudySpec:
        """Check every value; raise :class:`ConfigError` naming the first bad one."""

        def bad(key: str, why: str) -> ConfigError:
            flag = "--" + key.replace("_", "-")
            where = f"{flag}" if source == "option" else f"'{key}' in {source}"
            return ConfigError(f"invalid {where}: {why}")

        if self.n_trials is not None and not 0 < self.n_trials <= MAX_TRIALS:
            raise bad(
                "n_trials",
                f"must be a positive number of trials, at most {MAX_TRIALS}, got {self.n_trials}",
            )
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise bad("seed", f"must be from 0 to {MAX_SEED} (2**32 - 1), got {self.seed}")
        if self.timeout is not None and not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise bad("timeout", f"must be a positive number of seconds, got {self.timeout}")
        if not (self.heartbeat_interval > 0 and math.isfinite(self.heartbeat_interval)):
            raise bad(
                "heartbeat_interval",
                f"must be a positive number of seconds, got {self.heartbeat_interval}",
            )
        if not self.grace_period >= 2 * self.heartbeat_interval:
            raise bad(
                "grace_period",
                f"must be at least twice the heartbeat interval "
                f"({self.heartbeat_interval:g}s), got {self.grace_period:g}",
            )
        if self.retry_failed < 0:
            raise bad("retry_failed", f"must be 0 or more, got {self.retry_failed}")
        if not (self.db_wait >= 0 and math.isfinite(self.db_wait)):
            raise bad("db_wait", f"must be 0 or more seconds, got {self.db_wait}")
        if self.retry_failed > MAX_TRIALS:
            raise bad("retry_failed", f"must be at most {MAX_TRIALS}, got {self.retry_failed}")
        if self.max_failures is not None and self.max_failures < 0:
            raise bad("max_failures", f"must be 0 or more, got {self.max_failures}")
        if self.trial_timeout is not None and not (
            self.trial_timeout > 0 and math.isfinite(self.trial_timeout)
        ):
            raise bad(
                "trial_timeout", f"must be a positive number of seconds, got {self.trial_timeout}"
            )
        if self.max_restarts is not None and self.max_restarts < 0:
            raise bad("max_restarts", f"must be 0 or more, got {self.max_restarts}")
        if self.storage_engine not in ENGINES:
            raise bad("storage_engine", f"'{self.storage_engine}' is not one of auto, fast, stock")
        if self.save_models is not None and self.save_models not in SAVE_MODELS:
            raise bad("save_models", f"'{self.save_models}' is not one of all, best, none")
        if self.keep_best is not None and self.keep_best < 1:
            raise bad("keep_best", f"must be at least 1, got {self.keep_best}")
        if self.artifacts is not None:
            from tunefleet.artifacts._store import validate_artifacts_url

            try:
                validate_artifacts_url(self.artifacts)
            except ConfigError:
                raise bad(
                    "artifacts",
                    f"'{self.artifacts}': give file:///absolute/dir or s3://bucket/prefix",
                ) from None
        if self.workers is not None and self.workers <= 0:
            raise bad("workers", f"must be at least 1, got {self.workers}")
        for d in self.directions:
            if d not in DIRECTIONS:
                raise bad("direction", f"'{d}' is not one of minimize, maximize")
        if self.sampler not in SAMPLERS:
            raise bad("sampler", f"'{self.sampler}' is not one of {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise bad("pruner", f"'{self.pruner}' is not one of {', '.join(PRUNERS)}")
        if self.study is not None and not _STUDY_NAME.fullmatch(self.study):
            raise bad(
                "study",
                f"{self.study!r} is not a usable study name (letters, digits, "
                "'.', '_' and '-', starting with a letter or digit)",
            )
        return self


# key -> (type check, description) for the TOML file.
_FILE_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "objective": ((str,), 'a string such as "sklearn-iris" or "mymodule:objective"'),
    "study": ((str,), "a string"),
    "storage": ((str,), "a storage URL string"),
    "n_trials": ((int,), "a positive integer"),
    "timeout": ((int, float), "a number of seconds"),
    "direction": ((str, list), '"minimize" or "maximize" (or a list of them)'),
    "directions": ((list,), 'a list of "minimize"/"maximize"'),
    "sampler": ((str,), f"one of {', '.join(SAMPLERS)}"),
    "seed": ((int,), "an integer"),
    "pruner": ((str,), f"one of {', '.join(PRUNERS)}"),
    "workers": ((int,), "a positive integer"),
    "objective_args": ((dict,), "a table of settings, [objective_args]"),
    "heartbeat_interval": ((int, float), "a number of seconds"),
    "grace_period": ((int, float), "a number of seconds"),
    "retry_failed": ((int,), "a number of retries"),
    "db_wait": ((int, float), "a number of seconds"),
    "max_restarts": ((int,), "a number of restarts"),
    "storage_engine": ((str,), "one of auto, fast, stock"),
    "max_failures": ((int,), "a number of failed trials"),
    "trial_timeout": ((int, float), "a number of seconds"),
    "artifacts": ((str,), 'a URL such as "file:///shared/models" or "s3://bucket/prefix"'),
    "save_models": ((str,), "one of all, best, none"),
    "keep_best": ((int,), "a positive number of models"),
    # Read by `tunefleet k8s` (tunefleet.kubernetes), which checks its keys; ignored elsewhere.
    "kubernetes": ((dict,), "a table of Kubernetes settings, [kubernetes]"),
}


def load_spec(path: str | Path) -> StudySpec:
    """Read a TOML study spec; raise :class:`ConfigError` naming the file and the bad key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config file '{path}' not found: check the path") from None
    except OSError as exc:
        raise ConfigError(f"cannot read --config file '{path}': {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"--config file '{path}' is not UTF-8 text (byte {exc.start}): save it as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config file '{path}' is not valid TOML: {exc}") from None
    return spec_from_mapping(data, source=str(path))


def spec_from_mapping(data: Mapping[str, Any], source: str) -> StudySpec:
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _FILE_KEYS:
            close = difflib.get_close_matches(key, _FILE_KEYS, n=1)
            hint = (
                f" (did you mean '{close[0]}'?)"
                if close
                else (f"; known keys: {', '.join(_FILE_KEYS)}")
            )
            raise ConfigError(f"invalid '{key}' in {source}: unknown key{hint}")
        types, description = _FILE_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ConfigError(f"invalid '{key}' in {source}: must be {description}, got {value!r}")
        values[key] = value
    if "direction" in values and "directions" in values:
        raise ConfigError(
            f"invalid 'directions' in {source}: give 'direction' or 'directions', not both"
        )
    directions = values.pop("direction", values.pop("directions", None))
    if directions is not None:
        directions = [directions] if isinstance(directions, str) else directions
        if not directions or not all(isinstance(d, str) for d in directions):
            raise ConfigError(
                f"invalid 'direction' in {source}: must be "
                f"{_FILE_KEYS['direction'][1]}, got {directions!r}"
            )
        values["directions"] = tuple(directions)
    values.pop("kubernetes", None)
    for key in ("timeout", "heartbeat_interval", "grace_period", "db_wait", "trial_timeout"):
        if key in values:
            values[key] = float(values[key])
    return StudySpec(**values).validated(source=source)


def toml_value(value: Any) -> str:
    """``value`` written as a TOML value: what :func:`parse_objective_args` reads back exactly
    (tables, arrays, nan and inf, dates and times), so workers get the parent's types."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_string(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ConfigError(
        f"objective argument {value!r} ({type(value).__name__}) cannot be passed to workers: "
        "use strings, numbers, booleans, dates, arrays or tables"
    )


def _toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def parse_objective_args(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` pairs; values are read as TOML scalars (``3``, ``0.5``, ``true``)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(
                f"invalid --objective-arg '{item}': write KEY=VALUE, as in --objective-arg epochs=3"
            )
        try:
            parsed[key] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed[key] = raw
    return parsed
