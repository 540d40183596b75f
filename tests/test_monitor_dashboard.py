"""``tunefleet dashboard`` serves optuna-dashboard on the storage; a client reads its study list."""

from __future__ import annotations

import json
import selectors
import signal
import socket
import subprocess
import sys
import urllib.request

import optuna
import pytest

from tests.conftest import clean_env
from tunefleet.monitor import dashboard_url, is_loopback

pytest.importorskip(
    "optuna_dashboard", reason='needs the extra: pip install "tunefleet[dashboard]"'
)


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    if not selector.select(timeout):
        proc.kill()
        raise AssertionError(f"no URL within {timeout}s; stderr: {proc.communicate()[1]}")
    return proc.stdout.readline().strip()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell starts a background job


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_dashboard_serves_the_studies_of_the_storage(pg_url: str, stop: signal.Signals) -> None:
    sa_url = pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
    study = optuna.create_study(study_name="watched", storage=sa_url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    optuna.create_study(study_name="other", storage=sa_url)

    proc = subprocess.Popen(
        [sys.executable, "-m", "tunefleet", "dashboard", "--port", "0", "--study", "watched",
         "--storage", pg_url],
        env={**clean_env(), "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_ignore_sigint,  # stopping must not depend on the inherited SIGINT handler
    )  # fmt: skip
    try:
        line = _first_line(proc, timeout=60)
        assert line.startswith("optuna-dashboard on postgresql://"), line
        url = line.rsplit(" ", 1)[1]
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith(f"/dashboard/studies/{study._study_id}")
        base = url.split("/dashboard/")[0]

        # A browser keeps idle connections open (preconnect, keep-alive): the dashboard must
        # still answer other requests meanwhile.
        host, port = base.removeprefix("http://").split(":")
        with (
            socket.create_connection((host, int(port)), timeout=10),
            urllib.request.urlopen(f"{base}/api/studies", timeout=30) as response,
        ):
            listing = json.load(response)
        names = {s["study_name"] for s in listing["study_summaries"]}
        assert names == {"watched", "other"}
        watched = next(s for s in listing["study_summaries"] if s["study_name"] == "watched")
        assert watched["study_id"] == study._study_id
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
    finally:
        proc.send_signal(stop)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            _, err = proc.communicate(timeout=30)
            message = f"the dashboard did not stop on {stop.name}:\n{err[-5000:]}"
            raise AssertionError(message) from None
    assert code == 0


def test_dashboard_port_in_use_is_a_one_line_error(sqlite_url: str) -> None:
    optuna.create_study(study_name="s", storage=sqlite_url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "tunefleet", "dashboard", "--port", str(port),
             "--storage", sqlite_url],
            env=clean_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
    assert result.stderr.count("\n") == 1


def test_dashboard_url_and_loopback() -> None:
    assert dashboard_url("127.0.0.1", 8080) == "http://127.0.0.1:8080/dashboard/"
    assert dashboard_url("0.0.0.0", 80, 3) == "http://127.0.0.1:80/dashboard/studies/3"
    assert dashboard_url("::1", 8080) == "http://[::1]:8080/dashboard/"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
