"""Check that docker/constraints.txt works on every Python the image may be built on.

For each supported Python (3.11, 3.12): every pin that applies to it (environment markers
evaluated for that Python) must exist as a manylinux x86_64 wheel for it; with ``--resolve``, the
default image's set (tunefleet[sklearn] + dumb-init) must also resolve under the constraints, as
``docker build --build-arg PYTHON_IMAGE=...`` would do it (CI gets that for 3.11 from building the
image on Debian's Python 3.11 in ci/k8s-cluster.sh). Needs PyPI, so it is not part of the
offline test suite: run it after changing the pins.
Usage: python ci/check_constraints.py [--resolve] [3.11 3.12 ...]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "linux_x86_64",
]
# PyPI only, as in `docker build`: not this machine's pip configuration or local indexes.
PIP = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check"]
CERT = Path("/etc/ssl/certs/ca-certificates.crt")
if CERT.exists():
    PIP += ["--cert", str(CERT)]


def pins(python: str) -> dict[str, str]:
    """name -> version of the pins whose markers hold on ``python``."""
    found: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        env = {"python_version": python, "python_full_version": python + ".0"}
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        (spec,) = req.specifier
        if req.name in found:
            raise SystemExit(f"{CONSTRAINTS}: {req.name} pinned twice for Python {python}")
        found[req.name] = spec.version
    return found


def available(name: str, version: str, python: str) -> str | None:
    """None if ``name==version`` has a wheel for ``python``, else what is there."""
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    listed = ""
    for _ in range(3):  # an empty answer may be the network: ask again
        out = subprocess.run(
            [*PIP, "index", "versions", name, "--python-version", python, "--only-binary=:all:",
             *platforms],
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout  # fmt: skip
        listed = next((line for line in out.splitlines() if "Available versions" in line), "")
        if listed:
            break
    versions = [v.strip() for v in listed.partition(":")[2].split(",")]
    return None if version in versions else (versions[0] if versions[0] else "none")


def resolves(python: str) -> str:
    """'' if the default image's packages resolve under the constraints on ``python``."""
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    with tempfile.TemporaryDirectory() as target:
        result = subprocess.run(
            [*PIP, "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
             "--python-version", python, *platforms, "--target", target,
             "-c", str(CONSTRAINTS), f"{ROOT}[sklearn]", "dumb-init==1.2.5.post1"],
            capture_output=True,
            text=True,
            timeout=900,
        )  # fmt: skip
    return "" if result.returncode == 0 else (result.stdout + result.stderr)[-3000:]


def main(args: list[str]) -> int:
    resolve = "--resolve" in args
    pythons = [a for a in args if a != "--resolve"] or ["3.11", "3.12"]
    problems = []
    for python in pythons:
        wanted = pins(python)
        with ThreadPoolExecutor(16) as pool:
            checks = {n: pool.submit(available, n, v, python) for n, v in wanted.items()}
        for name, check in sorted(checks.items()):
            newest = check.result()
            if newest is not None:
                problems.append(
                    f"Python {python}: no wheel of {name}=={wanted[name]} (newest there: "
                    f'{newest}): pin it with a marker, {name}=={newest}; python_version < "..."'
                )
        failure = resolves(python) if resolve else ""
        if failure:
            problems.append(f"Python {python}: tunefleet[sklearn] does not resolve:\n{failure}")
        print(f"constraints on Python {python}: {len(wanted)} pins checked", flush=True)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
