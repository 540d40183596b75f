"""Logging set-up for the CLI: one line per event on stderr, secrets redacted.

Two formats: plain text for people (the default) and JSON lines for log collectors
(``--log-format json``). Every record carries the process's identity, set once with
:func:`set_log_context` (a worker sets ``worker=<its id>``), so lines from many pods stay
attributable after a collector merges them. Fields passed with ``extra=`` become JSON keys.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import sys
import threading
import warnings
from typing import Any

import optuna

from tunefleet._redact import RedactingFilter, redact

__all__ = ["LOG_FORMATS", "JsonFormatter", "set_log_context", "setup_logging"]

LOG_FORMATS = ("text", "json")

_context_lock = threading.Lock()
_context: dict[str, Any] = {}

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "worker_tag",
}


def set_log_context(**fields: Any) -> None:
    """Add fields (such as ``worker=...``) to every log record from now on; None removes one."""
    with _context_lock:
        for key, value in fields.items():
            if value is None:
                _context.pop(key, None)
            else:
                _context[key] = value


class _ContextFilter(logging.Filter):
    """Puts the context on each record, and ``worker_tag`` (`` [id]``) for the text format."""

    def filter(self, record: logging.LogRecord) -> bool:
        with _context_lock:
            context = dict(_context)
        for key, value in context.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        worker = getattr(record, "worker", None)
        record.worker_tag = f" [{worker}]" if worker else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, host, pid, and
    every context and ``extra=`` field. Runs after :class:`RedactingFilter`, and redacts the
    extra fields too."""

    def __init__(self) -> None:
        super().__init__()
        self._host = socket.gethostname()

    def format(self, record: logging.LogRecord) -> str:
        created = dt.datetime.fromtimestamp(record.created, dt.UTC)
        out: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "host": self._host,
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=lambda v: redact(str(v)))


def setup_logging(level: int, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s%(worker_tag)s: %(message)s",
                datefmt="%Y-%m-%d %H:%M:%S",
            )
        )
    handler.addFilter(RedactingFilter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("tunefleet").setLevel(level)
    # Optuna logs through our handler (redacted, one format); its per-trial INFO lines would
    # duplicate ours, so only its warnings pass.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.WARNING)
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
