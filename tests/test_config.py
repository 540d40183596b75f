from __future__ import annotations

from pathlib import Path

import pytest

from tunefleet.config import StudySpec, load_spec, parse_objective_args
from tunefleet.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_full_spec_is_read(tmp_path: Path) -> None:
    spec = load_spec(
        write(
            tmp_path,
            """
objective = "sklearn-iris"
study = "iris"
n_trials = 100
timeout = 60
direction = "maximize"
sampler = "random"
seed = 7
pruner = "none"
workers = 3
[objective_args]
n_folds = 5
""",
        )
    )
    assert spec == StudySpec(
        objective="sklearn-iris",
        study="iris",
        n_trials=100,
        timeout=60.0,
        directions=("maximize",),
        sampler="random",
        seed=7,
        pruner="none",
        workers=3,
        objective_args={"n_folds": 5},
    )


def test_directions_list_for_multi_objective(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, 'directions = ["minimize", "maximize"]\n'))
    assert spec.directions == ("minimize", "maximize")


def test_flags_override_file_and_merge_objective_args(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "n_trials = 10\nseed = 1\n[objective_args]\na = 1\nb = 2\n"))
    merged = spec.merged(n_trials=20, seed=None, objective_args={"b": 3})
    assert merged.n_trials == 20
    assert merged.seed == 1
    assert merged.objective_args == {"a": 1, "b": 3}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("n_trial = 10\n", "invalid 'n_trial' in"),
        ("n_trial = 10\n", "did you mean 'n_trials'"),
        ('n_trials = "10"\n', "'n_trials' in"),
        ("n_trials = 0\n", "must be a positive number of trials"),
        ("n_trials = true\n", "'n_trials'"),
        ('sampler = "grid"\n', "'grid' is not one of"),
        ('direction = "up"\n', "'up' is not one of minimize, maximize"),
        ("timeout = -5\n", "'timeout' in"),
        ("workers = 0\n", "must be at least 1"),
        ("n_trials = \n", "not valid TOML"),
        ('study = "has space"\n', "not a usable study name"),
    ],
)
def test_invalid_file_names_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_spec(write(tmp_path, text))
    assert fragment in str(info.value)
    assert "study.toml" in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "nope.toml")


def test_flag_values_are_validated_with_the_flag_name() -> None:
    with pytest.raises(ConfigError, match=r"invalid --n-trials: must be a positive"):
        StudySpec().merged(n_trials=-3)


def test_objective_args_are_read_as_toml_scalars() -> None:
    assert parse_objective_args(["epochs=3", "lr=0.5", "fast=true", "name=abc", 'q="x y"']) == {
        "epochs": 3,
        "lr": 0.5,
        "fast": True,
        "name": "abc",
        "q": "x y",
    }


@pytest.mark.parametrize("item", ["epochs", "=3", "two words=1"])
def test_malformed_objective_arg(item: str) -> None:
    with pytest.raises(ConfigError, match="write KEY=VALUE"):
        parse_objective_args([item])
