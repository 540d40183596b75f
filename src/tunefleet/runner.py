"""Running the objective: under a guard, in the worker's process or in a child it supervises.

Whatever the objective does — return, raise, call ``sys.exit()``, hang, kill its process — the
worker gets a :class:`TrialOutcome` and stays in charge of the trial. Two runners:

:class:`InProcessRunner` (the default)
    calls the objective in the worker's own process: no overhead, and the trial is a real
    ``optuna.Trial``. An objective that kills the process (``os._exit``, a segfault, the OOM
    killer) takes the worker with it; its trial is then re-run like any lost trial.

:class:`ChildRunner` (with ``--trial-timeout``)
    a pure-Python objective cannot be interrupted from inside its process, so it runs in a child
    process forked once per worker and reused for every trial. The objective's ``setup()`` runs
    in the child, so data is loaded once per child, not per trial. The worker keeps the storage,
    the heartbeat and the Optuna trial; the child gets a stand-in whose ``suggest_*``, ``report``,
    ``should_prune`` and the rest are answered by the worker over a pipe (about 0.1 ms a call).
    A trial past its timeout is stopped by killing the child; a child that dies is reported with
    its exit code or signal. Either way the next trial gets a fresh child (``setup()`` again).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import optuna

from tunefleet._redact import redact
from tunefleet.errors import ObjectiveError
from tunefleet.objectives import Objective, WorkerContext

__all__ = [
    "ChildRunner",
    "InProcessRunner",
    "Interrupted",
    "TrialOutcome",
    "describe_status",
    "guarded_call",
    "user_traceback",
]

#: Frames of these directories are tunefleet's or a library's, not the user's objective.
_TUNEFLEET_DIR = str(Path(__file__).resolve().parent)
_LIBRARY_MARKERS = ("site-packages", "dist-packages", f"{os.sep}lib{os.sep}python")


class Interrupted(BaseException):
    """Raised in the worker's main thread by SIGTERM/SIGINT; a BaseException so objectives
    don't catch it, and the one exception the guard lets through."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class TrialOutcome:
    """How one run of the objective ended.

    ``kind``: ``value`` (``value`` holds what the objective returned), ``pruned``, or a failure:
    ``exception`` (the objective raised, ``sys.exit()`` included), ``timeout``, ``crash`` (its
    process died). Failures carry a one-line ``reason``; exceptions their ``traceback`` (user
    frames first, redacted) and ``where`` (``file:line`` of the user's line that raised).
    """

    kind: str
    value: Any = None
    reason: str = ""
    traceback: str | None = None
    where: str | None = None

    @property
    def failed(self) -> bool:
        return self.kind not in ("value", "pruned")

    @property
    def signature(self) -> str:
        """Tells distinct errors apart: the exception type and the line that raised it."""
        return f"{self.reason.split(':', 1)[0]} at {self.where or '?'}"


def _is_users(filename: str) -> bool:
    path = os.path.abspath(filename)
    return not path.startswith(_TUNEFLEET_DIR) and not any(m in path for m in _LIBRARY_MARKERS)


def user_traceback(exc: BaseException) -> tuple[str, str | None]:
    """The exception's traceback without tunefleet's frames on top, redacted, and where it
    was raised in the user's code (``file:line``, the innermost frame outside libraries)."""
    te = traceback.TracebackException.from_exception(exc)
    start = 0
    while start < len(te.stack) - 1 and not _is_users(te.stack[start].filename):
        start += 1
    te.stack = traceback.StackSummary.from_list(list(te.stack)[start:])
    where = None
    for frame in reversed(te.stack):
        if _is_users(frame.filename):
            where = f"{frame.filename}:{frame.lineno}"
            break
    return redact("".join(te.format())), where


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit: the objective called sys.exit({exc.code!r})"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt raised by the objective"
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def guarded_call(objective: Objective, trial: Any) -> TrialOutcome:
    """Call the objective once; every way it can end becomes an outcome, never an exception
    (``SystemExit``, ``KeyboardInterrupt`` and ``GeneratorExit`` from user code included).

    The worker's own stop signal (:class:`Interrupted`) is not the objective's doing and
    passes through.
    """
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        return TrialOutcome("pruned")
    except Interrupted:
        raise
    except BaseException as exc:
        return _exception_outcome(exc)
    return TrialOutcome("value", value=value)


def _exception_outcome(exc: BaseException) -> TrialOutcome:
    trace, where = user_traceback(exc)
    return TrialOutcome("exception", reason=_failure_reason(exc), traceback=trace, where=where)


def describe_status(status: int) -> str:
    """A ``waitpid`` status in words: ``exited 3``, ``killed by SIGSEGV``."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        hint = " (out of memory?)" if sig == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited {os.WEXITSTATUS(status)}"


class InProcessRunner:
    """Runs the objective in the worker's process (the default: no overhead)."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective

    def setup(self, context: WorkerContext) -> None:
        self.objective.setup(context)

    def run(self, trial: optuna.Trial, timeout: float | None = None) -> TrialOutcome:
        return guarded_call(self.objective, trial)

    def close(self) -> None:
        pass


# --- the supervised child -------------------------------------------------------------------

#: Trial methods the stand-in forwards without asking first whether they are methods.
_METHODS = frozenset(
    {
        "suggest_float",
        "suggest_int",
        "suggest_categorical",
        "suggest_uniform",
        "suggest_loguniform",
        "suggest_discrete_uniform",
        "should_prune",
    }
)
#: Trial methods that return nothing: sent without waiting for the worker (one pipe trip fewer
#: each). An error they raise in the worker is raised by the child's next call that waits, or
#: fails the trial when it ends.
_ONE_WAY = frozenset({"report", "set_user_attr", "set_system_attr"})


class TrialProxy:
    """The trial an objective sees in the child: every call is answered by the worker."""

    def __init__(self, conn: Connection, number: int) -> None:
        self._conn = conn
        self.number = number

    def _ask(self, op: str, name: str, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        self._conn.send((op, name, tuple(args), kwargs or {}))
        status, value = self._conn.recv()
        if status == "raise":
            raise value
        return value

    def _tell(self, name: str, args: Sequence[Any], kwargs: Any) -> None:
        self._conn.send(("tell", name, tuple(args), kwargs))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _ONE_WAY:
            return lambda *a, **k: self._tell(name, a, k)
        if name in _METHODS:
            return lambda *a, **k: self._ask("call", name, a, k)
        status = self._ask("getattr", name)
        if status == "method":
            return lambda *a, **k: self._ask("call", name, a, k)
        return status[1]


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the worker dies, so it never outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _child_main(conn: Connection, objective: Objective, context: WorkerContext) -> None:
    # Ctrl-C in a terminal reaches the whole process group: only the worker acts on it (it
    # stops this child itself). SIGTERM ends the child at once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    try:
        objective.setup(context)
    except BaseException as exc:
        trace, _ = user_traceback(exc)
        conn.send(("setup_failed", _failure_reason(exc), trace))
        return
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        outcome = guarded_call(objective, TrialProxy(conn, message[1]))
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        try:
            conn.send(("done", outcome))
        except Exception as exc:  # the value cannot be pickled
            conn.send(
                (
                    "done",
                    TrialOutcome(
                        "value",
                        value=f"<{type(outcome.value).__name__} that cannot be sent: {exc}>",
                    ),
                )
            )


class ChildRunner:
    """Runs the objective in a child process it can stop: for ``--trial-timeout``."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.context = WorkerContext()
        self.pid: int | None = None
        self.conn: Connection | None = None
        self.n_started = 0

    def setup(self, context: WorkerContext) -> None:
        self.context = context
        self._start()

    def _start(self) -> None:
        parent_conn, child_conn = Pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking a process with threads (the heartbeat): the
            # child never touches what they hold (storage, logging is re-initialised by fork).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: run trials until the worker closes the pipe
            code = 0
            try:
                parent_conn.close()
                _child_main(child_conn, self.objective, self.context)
            except BaseException:
                code = 1
            finally:
                os._exit(code)  # no atexit, no finalizers: the worker's connections are its own
        child_conn.close()
        self.pid, self.conn = pid, parent_conn
        self.n_started += 1
        try:
            message = parent_conn.recv()
        except (EOFError, OSError):
            raise ObjectiveError(
                f"the objective's process died during setup ({self._reap()})"
            ) from None
        if message[0] == "setup_failed":
            self.close()
            raise ObjectiveError(f"the objective's setup failed: {message[1]}\n{message[2]}")

    def _reap(self) -> str:
        """Wait for the (dead or killed) child; its end in words."""
        assert self.pid is not None
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        return describe_status(status)

    def _kill(self) -> str:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            return self._reap()
        return "not running"

    def run(self, trial: optuna.Trial, timeout: float | None = None) -> TrialOutcome:
        if self.pid is None:
            self._start()
        conn = self.conn
        assert conn is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        pending: BaseException | None = None  # raised by a one-way call, not yet reported
        try:
            conn.send(("run", trial.number))
            while True:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not conn.poll(wait):
                    self._kill()
                    return TrialOutcome(
                        "timeout",
                        reason=f"timed out after {timeout:g}s (--trial-timeout): stopped it",
                    )
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    return TrialOutcome(
                        "crash", reason=f"the objective's process died ({self._reap()})"
                    )
                if message[0] == "done":
                    outcome: TrialOutcome = message[1]
                    if pending is not None and not outcome.failed:
                        return _exception_outcome(pending)
                    return outcome
                if message[0] == "tell":
                    answer = _answer(trial, *message)
                    if answer[0] == "raise" and pending is None:
                        pending = answer[1]
                    continue
                answer = _answer(trial, *message)
                if pending is not None:
                    answer, pending = ("raise", pending), None
                conn.send(answer)
        except BaseException:
            self._kill()  # interrupted: the trial is handed back, the child must not go on
            raise

    def close(self) -> None:
        self._kill()


def _answer(trial: optuna.Trial, op: str, name: str, args: Any, kwargs: Any) -> tuple[str, Any]:
    """Do on the real trial what the child's stand-in asked for."""
    try:
        if name.startswith("_") or name == "study":
            raise AttributeError(
                f"trial.{name} is not available to an objective run with --trial-timeout"
            )
        attr = getattr(trial, name)
        if op == "getattr":
            return ("ok", "method" if callable(attr) else ("value", attr))
        return ("ok", attr(*args, **kwargs))  # op: "call" or "tell"
    except Exception as exc:
        try:
            import pickle

            pickle.dumps(exc)
            return ("raise", exc)
        except Exception:
            return ("raise", RuntimeError(f"{type(exc).__name__}: {exc}"))
