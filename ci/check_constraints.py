"""Check, or re-pin, docker/constraints.txt: the exact versions the image installs.

What the image can install is tunefleet with any subset of the extras the Dockerfile's EXTRAS
takes (``IMAGE_EXTRAS``), dumb-init, and the build backend pip fetches to build tunefleet. For
each supported Python (``PYTHONS``) this resolves that set with every extra at once, as uv does it
against PyPI only (no local index or configuration), wheels only (the slim base has no compiler),
for manylinux x86_64 with Debian 12's glibc (2.36, the oldest base the image is built on: CI's;
``python:3.12-slim-trixie`` has 2.41, so whatever installs here installs there). uv needs no
interpreter of the target version: one resolution takes about a second.

The check passes when the set resolves under the constraints and the resolution is exactly the
pins that apply to that Python: no package left unpinned, no pin unused. Any subset of the extras
then resolves too, to the same versions (its dependencies are a part of the full set's).
tests/test_constraints.py runs it in CI on every submission.

Usage:
  python ci/check_constraints.py                  # check (exit 1 and what is wrong if it fails)
  python ci/check_constraints.py --repin [REQ...] # rewrite docker/constraints.txt with the newest
                                                  # releases (within REQ, e.g. torch==2.10.0), check
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"

#: The Pythons the constraints must resolve on, oldest first: Debian 12's (CI builds the image on
#: it) and the default base's (``python:3.12-slim-trixie``).
PYTHONS = ("3.11", "3.12")
#: The extras the Dockerfile's EXTRAS build argument takes.
IMAGE_EXTRAS = ("sklearn", "xgboost", "torch", "keras")
PLATFORM = "x86_64-manylinux_2_36"
PYPI = "https://pypi.org/simple"
#: uv settings kept from the environment: where it caches and how it talks TLS, never where it
#: looks for packages (UV_INDEX, UV_FIND_LINKS, UV_CONSTRAINT, ...), as `docker build` would not.
UV_ENV_KEPT = ("UV_CACHE_DIR", "UV_NATIVE_TLS", "UV_HTTP_TIMEOUT")

HEADER = f"""\
# Exact versions for the image (Dockerfile: PIP_CONSTRAINT), written by
# `python ci/check_constraints.py --repin`; `python ci/check_constraints.py` and, in CI,
# tests/test_constraints.py check them against PyPI. For each of Python {", ".join(PYTHONS)}:
# tunefleet with every extra the image takes ({", ".join(IMAGE_EXTRAS)}), dumb-init and
# the build backend, resolved for manylinux x86_64 (glibc 2.36), wheels only, give exactly the
# pins that apply to that Python. A package whose newest release differs between them gets one
# pin per Python, with an environment marker. torch==X also matches the download.pytorch.org
# builds X+cpu and X+cu128.
"""


class ConstraintsError(Exception):
    """The constraints file, or what it is checked with, is not usable."""


def pins(python: str, path: Path = CONSTRAINTS) -> dict[str, str]:
    """Package name -> pinned version, for the pins whose markers hold on ``python``."""
    env = {"python_version": python, "python_full_version": f"{python}.0"}
    found: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise ConstraintsError(f"{path}:{number}: {exc}") from None
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or req.extras or req.url:
            raise ConstraintsError(f"{path}:{number}: not an exact pin: {line}")
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        if name in found:
            raise ConstraintsError(f"{path}:{number}: {name} pinned twice for Python {python}")
        found[name] = specs[0].version
    return found


def image_requirements() -> list[str]:
    """What the image's pip installs besides tunefleet: dumb-init (as the Dockerfile pins it)
    and tunefleet's build backend (pyproject's build-system)."""
    dumb_init = next(
        (word for word in DOCKERFILE.read_text().split() if word.startswith("dumb-init==")), None
    )
    if dumb_init is None:
        raise ConstraintsError(f"{DOCKERFILE}: no dumb-init==VERSION")
    build = tomllib.loads(PYPROJECT.read_text())["build-system"]["requires"]
    return [dumb_init, *build]


def find_uv() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        raise ConstraintsError("uv is not installed: pip install -e '.[test]'") from None


def pypi_reachable(timeout: float = 10) -> str | None:
    """None if PyPI answers, else why not (one line)."""
    try:
        with urllib.request.urlopen(
            urllib.request.Request(f"{PYPI}/uv/", method="HEAD"), timeout=timeout
        ):
            pass
    except (urllib.error.URLError, OSError) as exc:
        return f"PyPI ({PYPI}) cannot be reached: {getattr(exc, 'reason', exc)}"
    return None


def resolve(python: str, constraints: Path | None = CONSTRAINTS) -> dict[str, str]:
    """Package name -> version: the image's full package set resolved by uv for ``python``,
    under ``constraints`` (None: the newest releases). Raises ConstraintsError if it does not
    resolve, with uv's explanation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_") or k in UV_ENV_KEPT}
    with tempfile.TemporaryDirectory() as tmp:
        extra_in = Path(tmp, "image.in")
        extra_in.write_text("\n".join(image_requirements()) + "\n")
        command = [
            find_uv(), "pip", "compile", "--quiet", "--no-config", "--no-python-downloads",
            "--python", sys.executable, "--python-version", python,
            "--python-platform", PLATFORM, "--only-binary", ":all:", "--default-index", PYPI,
            "--no-header", "--no-annotate", "--output-file", str(Path(tmp, "image.txt")),
            *(["--constraints", str(constraints)] if constraints is not None else []),
            str(PYPROJECT), str(extra_in), *(a for x in IMAGE_EXTRAS for a in ("--extra", x)),
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
            )
        except subprocess.TimeoutExpired:
            raise ConstraintsError(f"Python {python}: uv did not resolve in 120 s") from None
        if result.returncode != 0:
            raise ConstraintsError(
                f"Python {python}: the image's packages do not resolve:\n"
                + (result.stderr or result.stdout).strip()
            )
        resolved: dict[str, str] = {}
        for line in Path(tmp, "image.txt").read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                req = Requirement(line)
                resolved[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    resolved.pop("tunefleet", None)  # the project itself, when uv lists it
    return resolved


def check(python: str, constraints: Path = CONSTRAINTS) -> list[str]:
    """What is wrong with the constraints on ``python``: empty when the image's set resolves
    under them to exactly the pins that apply there."""
    try:
        wanted = pins(python, constraints)
        got = resolve(python, constraints)
    except ConstraintsError as exc:
        return [str(exc)]
    problems = [
        f"Python {python}: {name} is pinned ({wanted[name]}) but the image does not install it"
        for name in sorted(wanted.keys() - got.keys())
    ]
    problems += [
        f"Python {python}: {name}=={got[name]} is installed but not pinned"
        for name in sorted(got.keys() - wanted.keys())
    ]
    problems += [
        f"Python {python}: {name} resolves to {got[name]}, pinned {wanted[name]}"
        for name in sorted(wanted.keys() & got.keys())
        if got[name] != wanted[name]
    ]
    return problems


def merge(resolutions: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Constraint lines from one resolution per Python (oldest Python first): one unmarked pin
    where every Python has the same version, else one pin per run of Pythons that agree, bounded
    by ``python_version`` markers."""
    pythons = list(resolutions)
    names = sorted({name for found in resolutions.values() for name in found})
    lines = []
    for name in names:
        versions = [resolutions[p].get(name) for p in pythons]
        start = 0
        while start < len(pythons):
            end = start
            while end + 1 < len(pythons) and versions[end + 1] == versions[start]:
                end += 1
            version = versions[start]
            if version is not None:
                bounds = []
                if start > 0:
                    bounds.append(f'python_version >= "{pythons[start]}"')
                if end < len(pythons) - 1:
                    bounds.append(f'python_version < "{pythons[end + 1]}"')
                marker = f"; {' and '.join(bounds)}" if bounds else ""
                lines.append(f"{name}=={version}{marker}")
            start = end + 1
    return lines


def repin(holds: Iterable[str] = (), pythons: Iterable[str] = PYTHONS) -> str:
    """The text of a new constraints file: the newest releases that resolve on each Python,
    within ``holds`` (requirements such as ``torch==2.10.0``)."""
    try:
        held = [str(Requirement(hold)) for hold in holds]
    except InvalidRequirement as exc:
        raise ConstraintsError(f"--repin: {exc}") from None
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp, "holds.txt") if held else None
        if constraints is not None:
            constraints.write_text("\n".join(held) + "\n")
        resolutions = {python: resolve(python, constraints) for python in pythons}
    return HEADER + "\n".join(merge(resolutions)) + "\n"


def main(args: list[str]) -> int:
    repinning = args[:1] == ["--repin"]
    if args and not repinning:
        print(__doc__, file=sys.stderr)
        return 2
    unreachable = pypi_reachable()
    if unreachable:
        print(f"error: {unreachable}", file=sys.stderr)
        return 1
    try:
        if repinning:
            CONSTRAINTS.write_text(repin(args[1:]))
            print(f"{CONSTRAINTS.relative_to(ROOT)} rewritten; review: git diff", flush=True)
        problems = []
        for python in PYTHONS:
            found = check(python)
            problems += found
            print(f"Python {python}: {'FAILED' if found else 'ok'}", flush=True)
    except ConstraintsError as exc:
        problems = [str(exc)]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
