"""One conformance suite, run over every built-in objective on tiny data the tests write.

Each built-in must: run in a fresh `tunefleet worker` process and return a finite score in range;
report after every epoch and stop when the pruner says so; give the same value for the same seed
(here: in another process); record its seeds, device and settings on the trial.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FixedTrial, TrialState

from tests.conftest import tunefleet
from tests.tiny_data import require_module, write_image_dataset
from tunefleet.errors import ObjectiveError
from tunefleet.objectives import BUILTINS, WorkerContext, load_objective

SEED = 7
TINY_NET = {"epochs": 2, "n_train": 256, "n_valid": 128, "batch_size": 64}

# name -> (framework module, tiny settings, how many reports a full trial makes)
CASES: dict[str, tuple[str, dict[str, Any], int]] = {
    "sklearn-iris": ("sklearn", {}, 3),
    "xgboost-breast-cancer": ("xgboost", {"num_boost_round": 4}, 4),
    "torch-fashion-mnist": ("torch", TINY_NET, 2),
    "keras-mnist": ("keras", TINY_NET, 2),
}


def test_every_builtin_is_in_the_suite() -> None:
    assert set(CASES) == set(BUILTINS)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_image_dataset(root, "fashion-mnist")
    write_image_dataset(root, "mnist", seed=1)
    return root


def _args(name: str, data_dir: Path) -> dict[str, Any]:
    module, args, _ = CASES[name]
    require_module(module)
    # One thread: the same seed gives the same value only with the same thread count.
    args = {**args, "n_threads": 1}
    if name.endswith("mnist"):
        args["data_dir"] = str(data_dir)
    return args


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


@pytest.mark.parametrize("name", sorted(CASES))
def test_fresh_worker_gives_a_score_in_range_that_the_same_seed_repeats(
    name: str, data_dir: Path, tmp_path: Path
) -> None:
    args = _args(name, data_dir)
    # Values as TOML, the way --objective-arg reads them (strings quoted).
    flags = [f"--objective-arg={k}={json.dumps(v)}" for k, v in args.items()]
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = tunefleet(
        *("worker", name, "--storage", storage, "--study", "s", "--n-trials", "1"),
        *("--seed", str(SEED), "--sampler", "random", "--log-level", "warning", *flags),
    )
    assert result.returncode == 0, result.stderr

    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert trial.state == TrialState.COMPLETE, trial.system_attrs.get("fail_reason")
    assert trial.value is not None and math.isfinite(trial.value)
    assert 0.0 <= trial.value <= 1.0
    assert len(trial.intermediate_values) == CASES[name][2]  # a report per epoch/round/fold

    expected_seed = WorkerContext(seed=SEED).trial_seed(FixedTrial({}, number=0))
    attrs = trial.user_attrs
    assert attrs["seed"] == expected_seed
    assert attrs["objective"] == name
    assert attrs["objective_args"]["n_threads"] == 1 and attrs["n_threads"] == 1
    assert attrs["device"].startswith("cpu")  # CI has no GPU
    assert "split_seed" in attrs
    if name == "keras-mnist":
        assert attrs["keras_backend"] == "tensorflow"  # the default

    # Same seed, same value: this process re-runs the worker's trial from its parameters.
    objective = load_objective(name, args)
    objective.setup(WorkerContext(seed=SEED, n_threads=1))
    fixed: Any = FixedTrial(trial.params, number=trial.number)
    assert objective(fixed) == trial.value


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_pruner_that_always_prunes_stops_the_trial_after_its_first_report(
    name: str, data_dir: Path
) -> None:
    objective = load_objective(name, _args(name, data_dir))
    objective.setup(WorkerContext(seed=SEED, n_threads=1))
    study = optuna.create_study(
        direction="maximize", pruner=AlwaysPrune(), sampler=optuna.samplers.RandomSampler(0)
    )
    study.optimize(objective, n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    assert [list(t.intermediate_values) for t in study.trials] == [[0], [0]]


@pytest.mark.parametrize("name", ["torch-fashion-mnist", "keras-mnist"])
def test_objective_seed_setting_changes_the_run_and_split_seed_the_examples(
    name: str, data_dir: Path
) -> None:
    """`seed` and `split_seed` are what `tunefleet rescore` turns: each must change something."""
    args = {**_args(name, data_dir), "epochs": 1}
    params = {
        "n_layers": 1,
        "n_units_l0": 16,
        "dropout_l0": 0.3,
        "optimizer": "Adam",
        "lr": 1e-3,
        "filters": 32,
        "kernel_size": 3,
        "strides": 2,
        "activation": "relu",
        "learning_rate": 1e-3,
    }

    def score(**overrides: int) -> tuple[float, dict[int, float]]:
        objective = load_objective(name, {**args, **overrides})
        objective.setup(WorkerContext(seed=SEED, n_threads=1))
        reports: dict[int, float] = {}
        trial: Any = FixedTrial({k: v for k, v in params.items()}, number=0)
        trial.report = lambda value, step: reports.__setitem__(step, value)
        return objective(trial), reports

    def differs(*variants: dict[str, int]) -> bool:
        # Accuracy on 128 examples is coarse, so two runs may tie; try a few before failing.
        return any(score(**v)[1] != base for v in variants)

    base = score(seed=1, split_seed=0)[1]
    assert differs({"seed": 2, "split_seed": 0}, {"seed": 3, "split_seed": 0})
    assert differs({"seed": 1, "split_seed": 5}, {"seed": 1, "split_seed": 9})


def test_missing_dataset_is_one_error_before_any_study_or_trial(tmp_path: Path) -> None:
    require_module("torch")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    nothing = tmp_path / "nothing"
    result = tunefleet(
        "worker",
        "torch-fashion-mnist",
        "--storage",
        storage,
        "--n-trials",
        "3",
        env={"TUNEFLEET_DATA_DIR": str(nothing)},
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"tunefleet data fetch fashion-mnist --dir {nothing}" in result.stderr
    assert str(nothing / "fashion-mnist") in result.stderr
    assert not (tmp_path / "study.db").exists() or optuna.get_all_study_names(storage) == []


@pytest.mark.parametrize(
    ("name", "dataset"), [("torch-fashion-mnist", "fashion-mnist"), ("keras-mnist", "mnist")]
)
def test_missing_dataset_is_found_when_the_objective_is_built(
    name: str, dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_module(CASES[name][0])
    monkeypatch.setenv("TUNEFLEET_DATA_DIR", str(tmp_path))
    with pytest.raises(ObjectiveError, match=f"tunefleet data fetch {dataset} --dir {tmp_path}"):
        load_objective(name)


@pytest.mark.parametrize(
    ("name", "package"),
    [
        ("xgboost-breast-cancer", "xgboost"),
        ("torch-fashion-mnist", "torch"),
        ("keras-mnist", "keras"),
    ],
)
def test_missing_framework_names_the_extra(
    name: str, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = BUILTINS[name][0]
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    extra = BUILTINS[name][2]
    with pytest.raises(ObjectiveError, match=rf'pip install "tunefleet\[{extra}\]"'):
        load_objective(name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_size_settings_are_checked(name: str, data_dir: Path) -> None:
    args = _args(name, data_dir)
    size = {"sklearn-iris": "n_estimators", "xgboost-breast-cancer": "num_boost_round"}.get(
        name, "epochs"
    )
    with pytest.raises(ObjectiveError, match=f"invalid --objective-arg {size}=0 .*at least 1"):
        load_objective(name, {**args, size: 0})


def test_torch_threads_follow_the_worker_share_unless_set(data_dir: Path) -> None:
    require_module("torch")
    import torch

    args = {k: v for k, v in _args("torch-fashion-mnist", data_dir).items() if k != "n_threads"}
    objective = load_objective("torch-fashion-mnist", args)
    objective.setup(WorkerContext(seed=0, n_threads=2))
    assert torch.get_num_threads() == 2
    objective = load_objective("torch-fashion-mnist", {**args, "n_threads": 1})
    objective.setup(WorkerContext(seed=0, n_threads=2))
    assert torch.get_num_threads() == 1


def test_keras_backend_is_honoured(data_dir: Path, tmp_path: Path) -> None:
    require_module("keras")
    require_module("torch")
    args = _args("keras-mnist", data_dir)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = tunefleet(
        *("worker", "keras-mnist", "--storage", storage, "--n-trials", "1"),
        *(f"--objective-arg={k}={json.dumps(v)}" for k, v in args.items()),
        env={"KERAS_BACKEND": "torch"},
    )
    assert result.returncode == 0, result.stderr
    (trial,) = optuna.load_study(study_name="keras-mnist", storage=storage).trials
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["keras_backend"] == "torch"


@pytest.mark.parametrize("name", ["torch-fashion-mnist", "keras-mnist"])
def test_asking_for_more_examples_than_the_data_has_uses_all_and_says_so(
    name: str, data_dir: Path, tmp_path: Path
) -> None:
    args = {**_args(name, data_dir), "epochs": 1, "n_train": 100_000}
    flags = [f"--objective-arg={k}={json.dumps(v)}" for k, v in args.items()]
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = tunefleet("worker", name, "--storage", storage, "--n-trials", "1", *flags)
    assert result.returncode == 0, result.stderr
    dataset = "fashion-mnist" if name.startswith("torch") else "mnist"
    assert f"n_train=100000 but {dataset} has 400 examples there: using all 400" in result.stderr
    assert "400 train / 128 valid examples" in result.stderr
