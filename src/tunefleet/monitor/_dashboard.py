"""``tunefleet dashboard``: optuna-dashboard on the same storage, on a local port.

optuna-dashboard reads and writes Optuna's tables only, so it works on a tunefleet storage as
on any other. It is an optional extra; it serves plain HTTP without authentication, hence the
loopback default.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tunefleet.errors import ConfigError
from tunefleet.storage import FleetStorage

__all__ = ["dashboard_url", "is_loopback", "start_dashboard"]

log = logging.getLogger("tunefleet.dashboard")


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    """One thread per connection: browsers hold idle keep-alive and preconnect sockets open,
    which would stall a one-at-a-time server. Daemon threads, so Ctrl-C exits at once."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """Requests go to the debug log, not one stderr line each."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard_url(host: str, port: int, study_id: int | None = None) -> str:
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"
    path = "/dashboard/" if study_id is None else f"/dashboard/studies/{study_id}"
    return f"http://{shown}:{port}{path}"


def start_dashboard(
    storage: FleetStorage, host: str, port: int, artifact_store: Any = None
) -> WSGIServer:
    """Bind optuna-dashboard's WSGI app to ``host:port``; the caller serves and closes it.

    With ``artifact_store`` (the study's ``--artifacts``), trials list and serve their artifacts.

    Raises:
        ConfigError: optuna-dashboard is not installed, or the address cannot be bound.
    """
    try:
        dashboard = importlib.import_module("optuna_dashboard")
    except ImportError as exc:
        raise ConfigError(
            "the dashboard needs optuna-dashboard, which is not installed: "
            'pip install "tunefleet[dashboard]"'
        ) from exc
    app: Callable[..., Any] = dashboard.wsgi(storage.optuna, artifact_store=artifact_store)
    try:
        return make_server(
            host, port, app, server_class=_ThreadedServer, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): pass another --port "
            "(or --host)"
        ) from exc
