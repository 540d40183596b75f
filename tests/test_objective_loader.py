from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tunefleet.errors import ObjectiveError
from tunefleet.objectives import FunctionObjective, WorkerContext, load_objective
from tunefleet.objectives.sklearn_iris import SklearnIris

OBJECTIVES = Path(__file__).parent / "data" / "objectives.py"


def test_builtin_by_name() -> None:
    objective = load_objective("sklearn-iris")
    assert isinstance(objective, SklearnIris)
    assert objective.directions == ("maximize",)


def test_builtin_settings_are_checked() -> None:
    with pytest.raises(ObjectiveError, match="has no setting 'epochs'"):
        load_objective("sklearn-iris", {"epochs": 3})
    with pytest.raises(ObjectiveError, match="expected a int"):
        load_objective("sklearn-iris", {"n_folds": "five"})


def test_file_function_is_loaded_and_called_with_args() -> None:
    objective = load_objective(f"{OBJECTIVES}:scaled", {"scale": 2.0, "offset": 1})
    assert isinstance(objective, FunctionObjective)
    assert objective.directions is None
    trial = optuna.create_study().ask({"x": optuna.distributions.FloatDistribution(-1, 1)})
    assert objective(trial) == pytest.approx(2.0 * trial.params["x"] ** 2 + 1)


def test_module_function_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(OBJECTIVES.parent)
    objective = load_objective("objectives:quadratic")
    assert objective.name == "quadratic"


@pytest.mark.parametrize(
    ("spec", "args", "fragment"),
    [
        ("sklearn-irs", {}, "unknown objective 'sklearn-irs'"),
        ("no_such_module_xyz:f", {}, "module 'no_such_module_xyz' not found"),
        ("missing/file.py:f", {}, "objective file 'missing/file.py' not found"),
        (f"{OBJECTIVES}:nope", {}, "has no function 'nope'"),
        (f"{OBJECTIVES}:NOT_A_FUNCTION", {}, "is not a function"),
        (f"{OBJECTIVES}:no_arguments", {}, "must take exactly one argument"),
        (f"{OBJECTIVES}:two_required", {}, "must take exactly one argument"),
        (f"{OBJECTIVES}:quadratic", {"epochs": 3}, "cannot be called as f(trial, epochs=...)"),
        (
            f"{OBJECTIVES.parent / 'broken_import.py'}:objective",
            {},
            "No module named 'a_module_that_does_not_exist'",
        ),
        ("tests.data.objectives:", {}, "invalid objective"),
    ],
)
def test_objective_errors_name_the_problem(
    spec: str, args: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ObjectiveError) as info:
        load_objective(spec, args)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_function_lists_what_the_file_defines() -> None:
    with pytest.raises(ObjectiveError, match=r"it defines: .*quadratic"):
        load_objective(f"{OBJECTIVES}:quadratc")


def test_iris_scores_are_deterministic_and_in_range() -> None:
    objective = load_objective("sklearn-iris")
    objective.setup(WorkerContext(seed=3))
    params = {"classifier": "RandomForest", "rf_max_depth": 4}
    values = [objective(optuna.trial.FixedTrial(params)) for _ in range(2)]  # type: ignore[arg-type]
    assert values[0] == values[1]
    assert 0.8 <= values[0] <= 1.0
