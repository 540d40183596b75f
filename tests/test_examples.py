"""The example objective in examples/ runs as the README says, rescore included."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import tunefleet

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_objective.py"


def test_custom_objective_example_runs_and_rescores(tmp_path: Path) -> None:
    spec = f"{EXAMPLE}:objective"
    env = {"TUNEFLEET_STORAGE": f"sqlite:///{tmp_path / 'study.db'}"}
    run = tunefleet(
        *("worker", spec, "--direction", "maximize", "--n-trials", "4", "--seed", "3"),
        *("--objective-arg", "epochs=5"),
        env=env,
    )
    assert run.returncode == 0, run.stderr
    result = tunefleet(
        *("rescore", spec, "--study", "objective", "--repeats", "2", "--json"),
        *("--objective-arg", "epochs=5"),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["reproduced"] == out["reported"]
    assert len(out["values"]) == 2 and all(0.4 < v <= 1 for v in out["values"])
