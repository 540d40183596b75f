"""docker/constraints.txt resolves on every Python the image is built on (ci/check_constraints.py).

The resolution tests ask PyPI through uv (a second or two each): without PyPI or uv they are
skipped, except under ``CI``, where they fail. The others are offline.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent


def _load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_constraints", ROOT / "ci" / "check_constraints.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cc = _load_check()


@pytest.fixture(scope="module")
def pypi() -> None:
    """uv is installed and PyPI answers."""
    try:
        cc.find_uv()
    except cc.ConstraintsError as exc:
        require(False, str(exc))
    unreachable = cc.pypi_reachable()
    require(unreachable is None, f"{unreachable}: the image's constraints are not resolved")


@pytest.mark.parametrize("python", cc.PYTHONS)
def test_the_image_resolves_to_exactly_the_pins(python: str, pypi: None) -> None:
    # Every extra at once, so any subset of EXTRAS resolves to the same versions.
    assert cc.check(python) == []


def test_a_missing_pin_and_a_stray_pin_are_reported(pypi: None, tmp_path: Path) -> None:
    python = cc.PYTHONS[0]
    lines = cc.CONSTRAINTS.read_text().splitlines()
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(
        "\n".join(line for line in lines if not line.startswith("rich==")) + "\nboto3==1.40.0\n"
    )
    rich = cc.pins(python)["rich"]
    assert cc.check(python, constraints) == [
        f"Python {python}: boto3 is pinned (1.40.0) but the image does not install it",
        f"Python {python}: rich=={rich} is installed but not pinned",
    ]


def test_a_pin_the_project_excludes_does_not_resolve(pypi: None, tmp_path: Path) -> None:
    text = cc.CONSTRAINTS.read_text()
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(re.sub(r"(?m)^optuna==\S+$", "optuna==4.0.0", text))  # needs >=4.5
    (problem,) = cc.check(cc.PYTHONS[0], constraints)
    assert "do not resolve" in problem and "optuna" in problem


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_each_python_gets_one_exact_pin_per_package(python: str) -> None:
    found = cc.pins(python)  # raises on a package pinned twice, or a pin that is not ==
    assert {"numpy", "optuna", "scikit-learn", "dumb-init", "setuptools"} <= found.keys()


def test_the_file_is_what_repin_writes_for_its_own_pins() -> None:
    # Sorted, one marker per Python where versions differ, and the header that says how.
    pinned = {python: cc.pins(python) for python in cc.PYTHONS}
    assert cc.CONSTRAINTS.read_text() == cc.HEADER + "\n".join(cc.merge(pinned)) + "\n"


def test_merge_pins_a_version_per_python_with_markers(tmp_path: Path) -> None:
    resolutions = {
        "3.11": {"same": "1", "newer": "1", "old-only": "1"},
        "3.12": {"same": "1", "newer": "2", "new-only": "1", "middle": "5"},
        "3.13": {"same": "1", "newer": "2", "new-only": "1"},
    }
    lines = cc.merge(resolutions)
    assert lines == [
        'middle==5; python_version >= "3.12" and python_version < "3.13"',
        'new-only==1; python_version >= "3.12"',
        'newer==1; python_version < "3.12"',
        'newer==2; python_version >= "3.12"',
        'old-only==1; python_version < "3.12"',
        "same==1",
    ]
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("\n".join(lines) + "\n")
    assert {python: cc.pins(python, constraints) for python in resolutions} == resolutions


@pytest.mark.parametrize(
    "line", ["numpy>=2", "numpy ==", "numpy==2.4.6\nnumpy==2.5.5", "numpy[x]==2.4.6"]
)
def test_a_range_a_second_pin_or_a_broken_line_is_rejected(line: str, tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(line + "\n")
    with pytest.raises(cc.ConstraintsError, match="numpy"):
        cc.pins("3.12", constraints)


def test_the_checked_set_is_what_the_image_is_built_from() -> None:
    dockerfile = cc.DOCKERFILE.read_text()
    listed = re.search(r"^# EXTRAS: .*\(([a-z, ]+)\)", dockerfile, re.MULTILINE)
    assert listed and tuple(listed.group(1).split(", ")) == cc.IMAGE_EXTRAS
    pyproject = tomllib.loads(cc.PYPROJECT.read_text())
    assert set(cc.IMAGE_EXTRAS) <= pyproject["project"]["optional-dependencies"].keys()
    dumb_init = re.search(r"dumb-init==\S+", dockerfile)
    assert dumb_init and dumb_init.group(0) in cc.image_requirements()
    assert set(pyproject["build-system"]["requires"]) <= set(cc.image_requirements())
    # The default base and CI's base (ci/k8s-cluster.sh) run Pythons the check covers.
    default = re.search(r"^ARG PYTHON_IMAGE=python:(3\.\d+)-slim-", dockerfile, re.MULTILINE)
    ci_base = re.search(r"^BASE_IMAGE=\S+:(3\.\d+)-", (ROOT / "ci" / "k8s-cluster.sh").read_text(),
                        re.MULTILINE)  # fmt: skip
    assert default and ci_base
    assert {default.group(1), ci_base.group(1)} <= set(cc.PYTHONS)
