"""A worker's stdout and stderr: redacted, and never an error for the objective.

A worker's output goes to ``run`` through a pipe, or to a pod's log. When the reader is gone
(``run`` killed, a closed terminal), a write raises ``BrokenPipeError`` inside whatever wrote it,
often the objective's own ``print``: the trial would fail for nothing. Guarded streams instead
point the file descriptor at ``/dev/null`` on the first such error and carry on. They also redact
what the objective prints, as ``run`` does for its workers, so a lone worker leaks no more.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from tunefleet._redact import redact

__all__ = ["guard_output"]


class _GuardedStream:
    """Wraps a text stream: writes are redacted; a broken pipe silences the stream."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        try:
            self._inner.write(redact(text))
        except (BrokenPipeError, ConnectionResetError, ValueError, OSError):
            self._silence()
        return len(text)

    def flush(self) -> None:
        try:
            self._inner.flush()
        except (BrokenPipeError, ConnectionResetError, ValueError, OSError):
            self._silence()

    def _silence(self) -> None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._inner.fileno())
            os.close(devnull)
            self._inner.flush()  # whatever was buffered now goes nowhere, without an error
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def guard_output() -> None:
    """Guard this process's stdout and stderr (idempotent)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _GuardedStream):
            setattr(sys, name, _GuardedStream(stream))
