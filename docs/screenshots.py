"""Regenerate the README's screenshots: ``status --watch`` mid-run, and the top of a report.

Runs a real three-worker fleet of the built-in sklearn-iris objective on a throwaway embedded
store, renders ``status`` with rich's SVG export while the fleet is working, then writes a
report when it is done; headless Chromium turns both into PNGs under docs/images/.

    python docs/screenshots.py      # needs: pip install -e ".[sklearn,report]", chromium
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from tunefleet import monitor

IMAGES = Path(__file__).resolve().parent / "images"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--proxy-server=127.0.0.1:9",
]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        sys.exit("chromium is not installed: apt-get install -y chromium")
    return path


def _shoot(page: Path, out: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "--virtual-time-budget=15000",
             f"--screenshot={out}", page.as_uri()],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip
    print(f"wrote {out}")


def _status_png(url: str, work: Path) -> None:
    storage = monitor.open_existing_storage(url)
    ref = monitor.resolve_study(storage, "iris")
    console = Console(record=True, width=100, file=open(work / "status.txt", "w"))  # noqa: SIM115
    console.print(monitor.render_status(monitor.read_status(storage, ref)))
    svg = console.export_svg(title="tunefleet status --study iris --watch")
    storage.close()
    view = re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg)
    assert view is not None
    width, height = (int(float(v)) + 1 for v in view.groups())
    page = work / "status.html"
    page.write_text(f"<html><body style='margin:0;background:#fff'>{svg}</body></html>")
    _shoot(page, IMAGES / "status-watch.png", width, height)


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tunefleet-docs-") as tmp:
        work = Path(tmp)
        os.chdir(work)  # so the screenshots show sqlite:///tunefleet.db, not a temporary path
        url = "sqlite:///tunefleet.db"
        fleet = subprocess.Popen(
            [sys.executable, "-m", "tunefleet", "run", "sklearn-iris", "--study", "iris",
             "--n-trials", "150", "--workers", "3", "--seed", "1", "--storage", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                storage = monitor.open_existing_storage(url)
                ref = monitor.resolve_study(storage, "iris")
                counted = monitor.read_status(storage, ref).n_counted
                storage.close()
            except Exception:  # the store or the study does not exist yet
                continue
            if counted >= 60:
                break
        _status_png(url, work)
        fleet.wait(timeout=600)
        storage = monitor.open_existing_storage(url)
        report = work / "report.html"
        monitor.write_report(storage, monitor.resolve_study(storage, "iris"), report)
        storage.close()
        _shoot(report, IMAGES / "report.png", 1280, 1500)


if __name__ == "__main__":
    main()
