"""Open an HTML file in headless Chromium with no network, and read back what it rendered.

Chromium runs with a fresh profile, every background service off, and all traffic sent to a
proxy that does not exist, so a page that needs the network (a CDN script, a web font) fails
to render here instead of quietly fetching it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.conftest import require

__all__ = ["ARTIFACTS", "PROBE", "chromium_or_skip", "render_probe", "screenshot"]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
APT_INSTALL = "apt-get install -y chromium"

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
]

# Appended to a copy of the page: after load, records for every report figure whether plotly
# drew it, its on-screen size and how many marks (traces, canvases) it holds, plus page errors.
PROBE = """
<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message)));
window.addEventListener('load', () => setTimeout(() => {
  const figures = [...document.querySelectorAll('div.figure')].map(f => {
    const gd = f.querySelector('.js-plotly-plot');
    const svg = f.querySelector('svg.main-svg');
    const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    const marks = [...f.querySelectorAll('g.trace, g.barlayer path, canvas')]
      .filter(m => { const r = m.getBoundingClientRect(); return r.width > 0 && r.height > 0; });
    return {name: f.dataset.figure, drawn: !!(gd && gd._fullLayout),
            traces: gd && gd.data ? gd.data.length : 0,
            width: box.width, height: box.height, marks: marks.length};
  });
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({figures, errors: window.__errors,
                                    plotly: typeof Plotly !== 'undefined'});
  document.body.appendChild(out);
}, 1500));
</script>
"""


def chromium_or_skip() -> str:
    """Chromium's path; without it a test fails in CI (which installs it) and skips elsewhere."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    require(False, f"chromium is not installed: {APT_INSTALL}")
    raise AssertionError("unreachable")


def _run(chromium: str, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="tunefleet-chromium-") as profile:
        return subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def render_probe(chromium: str, page: Path, budget_ms: int = 20000) -> dict[str, Any]:
    """Load a copy of ``page`` with :data:`PROBE` appended; return what the probe saw."""
    html = page.read_text(encoding="utf-8")
    probed = page.with_name(page.stem + ".probe.html")
    probed.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = _run(chromium, [f"--virtual-time-budget={budget_ms}", "--dump-dom", probed.as_uri()])
    start = result.stdout.find('<pre id="probe">')
    assert start >= 0, f"the probe never ran; chromium said:\n{result.stderr[-3000:]}"
    end = result.stdout.index("</pre>", start)
    raw = result.stdout[start + len('<pre id="probe">') : end]
    data: dict[str, Any] = json.loads(
        raw.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )
    data["stderr"] = result.stderr
    return data


def screenshot(chromium: str, page: Path, out: Path, height: int = 4200) -> Path:
    """A PNG of ``page`` at 1280 pixels wide."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(
        chromium,
        [
            f"--window-size=1280,{height}",
            "--virtual-time-budget=20000",
            "--hide-scrollbars",
            f"--screenshot={out}",
            page.as_uri(),
        ],
    )
    assert out.exists() and out.stat().st_size > 10_000, f"no screenshot at {out}"
    return out
