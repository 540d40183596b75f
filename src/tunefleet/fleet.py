"""Where workers run. A fleet starts W workers, reports their exits, and stops them.

:class:`LocalFleet` runs each worker as a local process of ``tunefleet worker`` — the same command
a Kubernetes pod runs — so a study behaves the same on one machine and on a cluster.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping

__all__ = ["Fleet", "LocalFleet", "describe_exit"]

#: How long workers get to hand their trials back after SIGTERM before they are killed; well
#: inside Kubernetes' default 30 s grace period, which the same workers must meet.
STOP_GRACE_S = 20.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the worker gets SIGTERM when ``run`` dies, even by SIGKILL (Linux), and
    so hands its trial back and exits instead of going on as an orphan whose output nobody
    reads. Elsewhere the worker notices its parent is gone by its closed output."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return lambda: None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def describe_exit(code: int) -> str:
    """An exit code in words: ``exited 1``, ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited {code}"


class Fleet(ABC):
    """A set of workers running somewhere."""

    @abstractmethod
    def start(self) -> None:
        """Start every worker."""

    @abstractmethod
    def exit_codes(self) -> list[int | None]:
        """Each worker's exit code, or None while it runs."""

    @abstractmethod
    def restart(self, index: int) -> None:
        """Replace a worker that has exited."""

    @abstractmethod
    def stop(self) -> None:
        """Ask every worker to stop (they hand running trials back), then make sure they did."""

    def running(self) -> bool:
        return any(code is None for code in self.exit_codes())


class LocalFleet(Fleet):
    """W worker processes on this machine.

    ``on_output(index, line)`` receives every line a worker prints, so the caller can show it
    above a progress display. Secrets travel to workers in ``env``, never on the command line,
    where any user of the machine could read them in ``ps``.
    """

    def __init__(
        self,
        n_workers: int,
        worker_args: list[str],
        env: Mapping[str, str],
        on_output: Callable[[int, str], None],
    ) -> None:
        self.n_workers = n_workers
        self.command = [sys.executable, "-m", "tunefleet", "worker", *worker_args]
        self.env = {**os.environ, **env}
        self.on_output = on_output
        self.processes: list[subprocess.Popen[str]] = []
        self.restarts = 0
        self._readers: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self.n_workers):
            self.processes.append(self._spawn(index))

    def restart(self, index: int) -> None:
        """Replace worker ``index``, which has exited, with a new process (like a Job's pod)."""
        self.processes[index] = self._spawn(index)
        self.restarts += 1

    def _spawn(self, index: int) -> subprocess.Popen[str]:
        # A session of its own: Ctrl-C in the terminal reaches only the parent, which then
        # stops the workers in order (SIGTERM, wait, SIGKILL) rather than all at once.
        proc = subprocess.Popen(
            self.command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),
        )
        reader = threading.Thread(target=self._forward, args=(index, proc), daemon=True)
        reader.start()
        self._readers.append(reader)
        return proc

    def _forward(self, index: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            # Our own output may be gone (a closed terminal): keep draining the worker's anyway.
            with contextlib.suppress(Exception):
                self.on_output(index, line.rstrip("\n"))

    def exit_codes(self) -> list[int | None]:
        return [proc.poll() for proc in self.processes]

    def wait(self) -> list[int]:
        codes = [proc.wait() for proc in self.processes]
        for reader in self._readers:
            reader.join(timeout=5)
        return codes

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.send_signal(signal.SIGCONT)  # a stopped worker must see its SIGTERM
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
