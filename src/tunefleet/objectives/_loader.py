"""Turn an OBJECTIVE argument into an :class:`Objective`.

Three spellings: a built-in name (``sklearn-iris``), ``package.module:function`` and
``path/to/file.py:function``. Imports are lazy: a built-in's framework is imported only when that
built-in is asked for, and a missing one is reported with the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna

from tunefleet.errors import ObjectiveError
from tunefleet.objectives._base import BuiltinObjective, Objective

__all__ = ["BUILTINS", "FunctionObjective", "load_objective"]

#: Built-in name -> (module, class, extra, top-level packages of the framework it needs).
BUILTINS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "sklearn-iris": (
        "tunefleet.objectives.sklearn_iris",
        "SklearnIris",
        "sklearn",
        ("sklearn", "scipy", "joblib", "threadpoolctl"),
    ),
    "xgboost-breast-cancer": (
        "tunefleet.objectives.xgboost_breast_cancer",
        "XGBoostBreastCancer",
        "xgboost",
        ("xgboost", "sklearn", "scipy", "joblib", "threadpoolctl"),
    ),
    "torch-fashion-mnist": (
        "tunefleet.objectives.torch_fashion_mnist",
        "TorchFashionMnist",
        "torch",
        ("torch",),
    ),
    "keras-mnist": (
        "tunefleet.objectives.keras_mnist",
        "KerasMnist",
        "keras",
        ("keras", "tensorflow"),
    ),
}


class FunctionObjective(Objective):
    """A user function ``f(trial, **objective_args) -> float | sequence of floats``."""

    def __init__(self, func: Callable[..., Any], name: str, args: Mapping[str, Any]) -> None:
        self.func = func
        self.name = name
        self.args = dict(args)

    def __call__(self, trial: optuna.Trial) -> float | Sequence[float]:
        result: float | Sequence[float] = self.func(trial, **self.args)
        return result


def load_objective(spec: str, args: Mapping[str, Any] | None = None) -> Objective:
    """Resolve ``spec`` into an objective without running it (no data is loaded yet).

    Raises:
        ObjectiveError: unknown built-in, missing module, file or function, wrong signature, or
            a built-in whose framework is not installed.
    """
    args = dict(args or {})
    spec = spec.strip()
    if spec in BUILTINS:
        return _load_builtin(spec, args)
    if ":" not in spec:
        known = ", ".join(sorted(BUILTINS))
        raise ObjectiveError(
            f"unknown objective '{spec}': use a built-in ({known}), "
            "package.module:function, or path/to/file.py:function"
        )
    target, _, func_name = spec.rpartition(":")
    if not target or not func_name.isidentifier():
        raise ObjectiveError(
            f"invalid objective '{spec}': write package.module:function or path/to/file.py:function"
        )
    module = _import_file(target) if _looks_like_path(target) else _import_module(target)
    func = getattr(module, func_name, None)
    if func is None:
        public = [
            n
            for n, v in vars(module).items()
            if callable(v)
            and not n.startswith("_")
            and not isinstance(v, type)
            and getattr(v, "__module__", None) == module.__name__
        ]
        hint = f" (it defines: {', '.join(sorted(public))})" if public else ""
        raise ObjectiveError(
            f"'{target}' has no function '{func_name}'{hint}: fix the name after the colon"
        )
    if not callable(func):
        raise ObjectiveError(f"'{spec}' is not a function: point at a function that takes a trial")
    _check_signature(func, spec, args)
    return FunctionObjective(func, name=func_name, args=args)


def _load_builtin(name: str, args: dict[str, Any]) -> Objective:
    module_name, class_name, extra, packages = BUILTINS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing in packages:
            raise ObjectiveError(
                f"the built-in objective '{name}' needs {missing}, which is not installed: "
                f'pip install "tunefleet[{extra}]"'
            ) from exc
        raise
    cls: type[BuiltinObjective] = getattr(module, class_name)
    return cls(**args)


def _looks_like_path(target: str) -> bool:
    return target.endswith(".py") or os.sep in target or "/" in target


def _import_file(target: str) -> ModuleType:
    path = Path(target).expanduser()
    if not path.is_file():
        raise ObjectiveError(
            f"objective file '{target}' not found: check the path (relative to {Path.cwd()})"
        )
    module_name = f"tunefleet_user_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path.resolve())
    if module_spec is None or module_spec.loader is None:
        raise ObjectiveError(f"cannot import '{target}': is it a Python file?")
    module = importlib.util.module_from_spec(module_spec)
    # The file's own directory comes first on sys.path, as when running `python file.py`, so
    # its sibling modules import.
    sys.path.insert(0, str(path.resolve().parent))
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise ObjectiveError(f"importing '{target}' failed: {type(exc).__name__}: {exc}") from exc
    return module


def _import_module(target: str) -> ModuleType:
    # Like `python -m`, the working directory is importable.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and target.startswith(exc.name):
            raise ObjectiveError(
                f"module '{target}' not found: check the name, install its package, or run from "
                "the directory that holds it"
            ) from exc
        raise ObjectiveError(f"importing '{target}' failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise ObjectiveError(f"importing '{target}' failed: {type(exc).__name__}: {exc}") from exc


def _check_signature(func: Callable[..., Any], spec: str, args: Mapping[str, Any]) -> None:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return  # builtins and C functions: nothing to check before calling
    try:
        signature.bind(object(), **args)
    except TypeError as exc:
        if args:
            raise ObjectiveError(
                f"objective '{spec}' cannot be called as f(trial, {', '.join(args)}=...): {exc}; "
                "it must take the trial first and accept each --objective-arg as a keyword"
            ) from exc
        raise ObjectiveError(
            f"objective '{spec}' has signature {signature}: it must take exactly one argument, "
            "the optuna.Trial, as in def objective(trial): ..."
        ) from exc
