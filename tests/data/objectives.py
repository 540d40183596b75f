"""User objectives for the tests, imported by path as ``tests/data/objectives.py:NAME``."""

from __future__ import annotations

import math
import os
from pathlib import Path

import optuna


def quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_int("y", -5, 5)
    return (x - 2) ** 2 + y**2


def wide(trial: optuna.Trial) -> float:
    """Fourteen parameters of every kind, as the tutorial's XGBoost space has."""
    total = sum(trial.suggest_float(f"f{i}", -1, 1) ** 2 for i in range(10))
    total += trial.suggest_int("i", 0, 10) + trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    total += len(trial.suggest_categorical("c", ["a", "bb", "ccc"]))
    return total + trial.suggest_int("step", 1, 9, step=2)


def scaled(trial: optuna.Trial, scale: float = 1.0, offset: int = 0) -> float:
    x = trial.suggest_float("x", -1, 1)
    return scale * x * x + offset


def record(trial: optuna.Trial) -> float:
    """Appends each value it computes to $RECORD_FILE, so a test can compare with the database."""
    x = trial.suggest_float("x", 0, 1)
    value = x * 3
    with Path(os.environ["RECORD_FILE"]).open("a") as f:
        f.write(f"{trial.number} {value!r}\n")
    return value


def two_objectives(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", 0, 1)
    return x, (1 - x) ** 2


def returns_nan(trial: optuna.Trial) -> float:
    trial.suggest_float("x", 0, 1)
    return math.nan


def returns_none(trial: optuna.Trial) -> None:
    trial.suggest_float("x", 0, 1)


def returns_string(trial: optuna.Trial) -> str:
    trial.suggest_float("x", 0, 1)
    return "0.5"


def fails_on_odd(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0, 1)
    if trial.number % 2:
        raise ValueError(f"odd trial {trial.number}")
    return x


def prunes_at_step_one(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0, 1)
    for step in range(3):
        trial.report(x + step, step)
        if step == 1:
            raise optuna.TrialPruned()
    return x


def no_arguments() -> float:
    return 1.0


def two_required(trial: optuna.Trial, other: int) -> float:
    return float(other)


NOT_A_FUNCTION = 3


def sleepy(trial: optuna.Trial) -> float:
    """Sleeps $SLEEP_S (default 0.3 s); records what it computed in $RECORD_FILE if set."""
    import time

    x = trial.suggest_float("x", 0, 1)
    y = trial.suggest_int("y", 0, 100)
    time.sleep(float(os.environ.get("SLEEP_S", "0.3")))
    value = x * 10 + y
    if "RECORD_FILE" in os.environ:
        with Path(os.environ["RECORD_FILE"]).open("a") as f:
            f.write(f"{trial.number} {value!r} {os.getpid()}\n")
    return value


def stubborn(trial: optuna.Trial) -> float:
    """Swallows the first stop signal, like a long call into C code that cannot be interrupted."""
    import time

    trial.suggest_float("x", 0, 1)
    try:
        time.sleep(60)
    except BaseException:
        time.sleep(60)
    return 0.0


def fails_first_attempt(trial: optuna.Trial) -> float:
    """Fails the first time it sees a parameter value, succeeds when re-run with the same one."""
    x = trial.suggest_float("x", 0, 1)
    marker = Path(os.environ["MARKER_DIR"]) / repr(x)
    if not marker.exists():
        marker.write_text("seen")
        raise RuntimeError(f"first attempt at x={x!r}")
    return x


def always_fails(trial: optuna.Trial) -> float:
    trial.suggest_float("x", 0, 1)
    raise KeyError("never works")


def leaks_the_url(trial: optuna.Trial) -> float:
    """Fails with the storage URL, password and all, in its message."""
    trial.suggest_float("x", 0, 1)
    raise ConnectionError(f"could not use {os.environ['TUNEFLEET_STORAGE']}")


def mixed_kinds(trial: optuna.Trial) -> float:
    """Suggests ``x`` as a float on even trials and as an int on odd ones: Optuna refuses the
    second kind ("Cannot set different distribution kind to the same parameter name")."""
    if trial.number % 2 == 0:
        return trial.suggest_float("x", 0, 1)
    return float(trial.suggest_int("x", 0, 10))


def calls_sys_exit(trial: optuna.Trial) -> float:
    """Like a script's argparse on bad arguments: exits the process, status 2."""
    import sys

    trial.suggest_float("x", 0, 1)
    sys.exit(2)


def raises_keyboard_interrupt(trial: optuna.Trial) -> float:
    trial.suggest_float("x", 0, 1)
    raise KeyboardInterrupt


def slow_fails(trial: optuna.Trial) -> float:
    """Fails after $SLEEP_S (default 0.3 s), as a broken training script does after loading."""
    import time

    trial.suggest_float("x", 0, 1)
    time.sleep(float(os.environ.get("SLEEP_S", "0.3")))
    raise RuntimeError("broken on purpose")


def hangs_on_odd(trial: optuna.Trial) -> float:
    """Odd trials spin forever in pure Python (nothing can interrupt them in-process); even
    trials report, may be pruned, and return."""
    x = trial.suggest_float("x", 0, 1)
    if trial.number % 2:
        while True:
            pass
    trial.report(x, 0)
    if trial.should_prune():
        raise optuna.TrialPruned()
    return x


def exits_process(trial: optuna.Trial) -> float:
    """Kills its own process, as a segfault or the OOM killer would, some training time after
    its suggest (the fast engines write suggests within 0.1 s, not at once)."""
    import time

    trial.suggest_float("x", 0, 1)
    time.sleep(0.5)
    os._exit(7)


_LOADED: list[int] = []


def loads_once(trial: optuna.Trial) -> float:
    """Loads its data on the first call in a process, noting the pid in $RECORD_FILE."""
    if not _LOADED:
        _LOADED.append(os.getpid())
        with Path(os.environ["RECORD_FILE"]).open("a") as f:
            f.write(f"{os.getpid()}\n")
    x = trial.suggest_float("x", 0, 1)
    trial.set_user_attr("pid", os.getpid())
    return x


def waits_for_file(trial: optuna.Trial) -> float:
    """Waits until the file $GO_FILE exists (at most 120 s): a test holds workers mid-trial."""
    import time

    x = trial.suggest_float("x", 0, 1)
    deadline = time.monotonic() + 120
    while not Path(os.environ["GO_FILE"]).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return x
