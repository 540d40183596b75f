"""Options every command spells the same way: ``--storage``, ``--study`` (alias
``--study-name``, as Optuna's CLI says), ``--db-wait``, and ``-o/--output`` (as kubectl says; the
older ``--json`` stays as its alias).

Printing goes through :func:`emit`, so ``-o json`` and ``-o yaml`` of one object say the same.
This module imports only click: ``tunefleet --help`` must not load Optuna or SQLAlchemy.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from tunefleet.constants import READ_DB_WAIT_S

__all__ = [
    "artifacts_option",
    "db_wait_option",
    "emit",
    "output_option",
    "storage_option",
    "study_option",
]

F = TypeVar("F", bound=Callable[..., Any])


def storage_option(func: F) -> F:
    return click.option(
        "--storage",
        metavar="URL",
        help="postgresql://user:pw@host/db or sqlite:///file.db (default: "
        "$TUNEFLEET_STORAGE, $DATABASE_URL, else ./tunefleet.db).",
    )(func)


def study_option(func: F) -> F:
    return click.option(
        "--study",
        "--study-name",
        "study",
        metavar="NAME",
        help="Study name (may be left out when the storage holds only one).",
    )(func)


def artifacts_option(func: F) -> F:
    return click.option(
        "--artifacts",
        metavar="URL",
        help="The study's artifact store as this machine sees it (default: the one stored "
        "with the study by --artifacts).",
    )(func)


def db_wait_option(default: float = READ_DB_WAIT_S) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        return click.option(
            "--db-wait",
            type=click.FloatRange(min=0),
            default=default,
            metavar="SECONDS",
            help=f"How long to wait for an unreachable database, then exit 3 [{default:g}].",
        )(func)

    return decorate


def output_option(
    *formats: str, default: str = "table", aliases: tuple[str, ...] = ()
) -> Callable[[F], F]:
    """``-o/--output FORMAT`` (and ``--json`` = ``-o json``); the command gets ``output``."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # A command that drops both options (k8s render/apply reuse run's) gets neither.
            if "output" in kwargs or "as_json" in kwargs:
                as_json = kwargs.pop("as_json", False)
                output = kwargs.pop("output", default)
                kwargs["output"] = "json" if as_json else output
            return func(*args, **kwargs)

        wrapped = click.option("--json", "as_json", is_flag=True, help="Same as -o json.")(wrapper)
        wrapped = click.option(
            "-o",
            "--output",
            *aliases,
            "output",
            type=click.Choice(formats),
            default=default,
            help=f"Output format [{default}].",
        )(wrapped)
        return wrapped  # type: ignore[return-value]

    return decorate


def emit(data: Any, output: str) -> None:
    """``data`` (JSON-able) on stdout as JSON (one line) or YAML."""
    if output == "yaml":
        import yaml

        # "---" starts each document, so --watch's stream of snapshots is valid YAML.
        text = yaml.safe_dump(
            _plain(data), sort_keys=False, allow_unicode=True, explicit_start=True
        )
        click.echo(text, nl=False)
    else:
        click.echo(json.dumps(data, default=str))


def _plain(data: Any) -> Any:
    """What JSON would make of ``data`` (YAML then has no Python-specific tags)."""
    return json.loads(json.dumps(data, default=str))
