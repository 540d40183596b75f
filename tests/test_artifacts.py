"""Trial artifacts: models in a shared store, the best kept, fetched back and scored.

Real parts only: real worker fleets on the embedded store and PostgreSQL, a real directory, and
for S3 moto's standalone S3 server on loopback, reached by boto3 over HTTP exactly as a real
S3-compatible endpoint is (AWS_ENDPOINT_URL).
"""

from __future__ import annotations

import importlib.util
import io
import json
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from tests.conftest import clean_env, require, tunefleet
from tests.tiny_data import require_module
from tunefleet.artifacts import configure_study, save, study_artifacts, tidy
from tunefleet.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "saving_models.py"
XGB = ("xgboost-breast-cancer", "--objective-arg", "num_boost_round=4", "--seed", "1")


def _optuna_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """moto's standalone S3 server on loopback, with a bucket; the env a worker needs."""
    for module in ("boto3", "moto.server"):
        require(
            importlib.util.find_spec(module) is not None,
            f'{module} is not installed: pip install -e ".[s3,test]"',
        )
    import boto3
    from moto import server as server_module

    port = _free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "tunefleet-test",
        "AWS_SECRET_ACCESS_KEY": "tunefleet-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="models")
    try:
        yield env
    finally:
        server.stop()


def _s3_keys(env: dict[str, str], prefix: str) -> list[str]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    listing = client.list_objects_v2(Bucket="models", Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def _run_xgb(storage: str, artifacts: str, env: dict[str, str] | None = None, n: int = 12) -> None:
    result = tunefleet(
        *("run", *XGB, "--study", "xgb", "--storage", storage, "--n-trials", str(n)),
        *("--workers", "3", "--artifacts", artifacts),
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _validation_accuracy(model_file: Path) -> float:
    import xgboost as xgb
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    _, valid_x, _, valid_y = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    booster = xgb.Booster(model_file=str(model_file))
    return float(np.mean(np.rint(booster.predict(xgb.DMatrix(valid_x))) == valid_y))


def _check_only_the_best_is_kept(
    storage: str, ids: list[str], tmp_path: Path, env: dict[str, str] | None = None
) -> optuna.trial.FrozenTrial:
    study = optuna.load_study(study_name="xgb", storage=_optuna_url(storage))
    best = study.best_trial
    assert len(study.trials) == 12
    # Exactly the best trial's model and metrics, in the store and on the trials.
    assert len(ids) == 2, ids
    numbers = {int(i.split("-")[1], 16) for i in ids}
    assert len(numbers) == 1, ids
    # Of trials tied for the best value the first keeps its model (Optuna's best_trial may name
    # any of them): the kept one has the best value.
    kept = study.trials[numbers.pop()]
    assert kept.values == best.values, (kept.number, best.number)
    with_artifacts = {
        t.number: sorted(m.filename for m in get_all_artifact_meta(t, storage=study._storage))
        for t in study.trials
    }
    assert {n: f for n, f in with_artifacts.items() if f} == {
        kept.number: ["metrics.json", "model.ubj"]
    }
    listed = tunefleet("trials", "--study", "xgb", "--storage", storage, "--format", "json")
    rows = {r["number"]: r["artifacts"] for r in json.loads(listed.stdout)}
    assert rows[kept.number] == ["metrics.json", "model.ubj"]
    assert sum(1 for files in rows.values() if files) == 1

    out = tmp_path / "out"
    fetched = tunefleet(
        *("best", "--study", "xgb", "--storage", storage, "--download", str(out)), env=env
    )
    assert fetched.returncode == 0, fetched.stderr
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.ubj"]
    assert _validation_accuracy(out / "model.ubj") == best.value
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trial"] == kept.number and metrics["value"] == best.value
    assert metrics["params"] == kept.params
    return best


@pytest.mark.slow
def test_fleet_keeps_exactly_the_best_model_in_a_shared_directory(
    storage_url: str, tmp_path: Path
) -> None:
    require_module("xgboost")
    models = tmp_path / "models"
    _run_xgb(storage_url, f"file://{models}")
    ids = [p.name for p in models.iterdir()]
    assert not [i for i in ids if i.startswith(".")]  # no temporary file left
    _check_only_the_best_is_kept(storage_url, ids, tmp_path)

    # The stored model, scored again without re-training, gives the recorded value.
    rescored = tunefleet(
        *("rescore", "--study", "xgb", "--storage", storage_url, "--stored-model", "--json")
    )
    assert rescored.returncode == 0, rescored.stderr
    out = json.loads(rescored.stdout)
    assert out["stored_model_score"] == out["reported"]


@pytest.mark.slow
def test_s3_store_on_a_loopback_server_keeps_exactly_the_best_model(
    s3: dict[str, str], sqlite_url: str, tmp_path: Path
) -> None:
    require_module("xgboost")
    _run_xgb(sqlite_url, "s3://models/runs/xgb", env=s3)
    keys = _s3_keys(s3, "runs/xgb/")
    ids = [k.removeprefix("runs/xgb/") for k in keys]
    _check_only_the_best_is_kept(sqlite_url, ids, tmp_path, env=s3)


def test_unreachable_s3_store_is_one_line_before_any_trial(
    s3: dict[str, str], sqlite_url: str
) -> None:
    dead = {**s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}
    result = tunefleet(
        *("worker", "sklearn-iris", "--study", "s", "--storage", sqlite_url, "--n-trials", "3"),
        *("--artifacts", "s3://models/x"),
        env=dead,
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("error: artifact store s3://models/x is unreachable")
    assert "AWS_ENDPOINT_URL" in result.stderr and result.stderr.count("\n") == 1
    assert s3["AWS_SECRET_ACCESS_KEY"] not in result.stderr
    assert optuna.load_study(study_name="s", storage=sqlite_url).trials == []


def test_unwritable_directory_is_one_line_before_any_trial(sqlite_url: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = tunefleet(
        *("worker", "sklearn-iris", "--study", "s", "--storage", sqlite_url, "--n-trials", "3"),
        *("--artifacts", f"file://{blocker}/models"),
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith(f"error: artifact store file://{blocker}/models is not")
    assert result.stderr.count("\n") == 1
    assert optuna.load_study(study_name="s", storage=sqlite_url).trials == []


def test_bad_artifacts_url_and_settings_are_one_line_errors(sqlite_url: str) -> None:
    for args, words in [
        (("--artifacts", "/tmp/models"), "invalid --artifacts"),
        (("--artifacts", "gs://bucket"), "invalid --artifacts"),
        (("--save-models", "best"), "need a place for the models"),
        (("--artifacts", "file:///tmp/m", "--keep-best", "0"), "invalid --keep-best"),
    ]:
        result = tunefleet(
            *("worker", "sklearn-iris", "--storage", sqlite_url, "--n-trials", "1", *args)
        )
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize(("flags", "kept"), [(("--save-models", "all"), None),
                                             (("--keep-best", "3"), 3)])  # fmt: skip
def test_save_models_all_keeps_every_complete_trial_and_keep_best_k_keeps_k(
    flags: tuple[str, ...], kept: int | None, sqlite_url: str, tmp_path: Path
) -> None:
    require_module("sklearn")
    models = tmp_path / "models"
    result = tunefleet(
        *("run", "sklearn-iris", "--study", "iris", "--storage", sqlite_url, "--n-trials", "8"),
        *("--workers", "2", "--seed", "2", "--pruner", "none", "--artifacts", f"file://{models}"),
        *flags,
    )
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="iris", storage=sqlite_url)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    ranked = sorted(complete, key=lambda t: (-float(t.values[0]), t.number))
    expected = {t.number for t in (ranked if kept is None else ranked[:kept])}
    numbers = {int(p.name.split("-")[1], 16) for p in models.iterdir()}
    assert numbers == expected
    assert len(list(models.iterdir())) == 2 * len(expected)  # model.pkl + metrics.json each
    assert study._storage.get_study_system_attrs(study._study_id)["tunefleet:artifacts"]


def test_tidy_spares_running_trials_and_clears_what_lost_and_dropped_trials_left(
    sqlite_url: str, tmp_path: Path
) -> None:
    """What a worker does after each finished trial, step by step on a real store."""
    storage = optuna.storages.RDBStorage(sqlite_url)
    study = optuna.create_study(study_name="t", storage=storage, direction="maximize")
    store_dir = tmp_path / "store"
    configure_study(study, f"file://{store_dir}")
    opened = study_artifacts(storage, study._study_id)
    assert opened is not None
    store = opened[1]

    running = study.ask()
    save(running, b"in progress", "model.bin")  # saved, not yet told: must survive tidy
    lost = study.ask()
    save(lost, b"half", "model.bin")
    study.tell(lost, state=TrialState.FAIL)  # a lost trial, as the heartbeat reaper marks it
    good = study.ask()
    save(good, b"good", "model.bin")
    study.tell(good, 0.9)
    # An object no trial points at: its writer died between the upload and the attribute.
    tag = store.list("")[0].split("-")[0]
    store.write(f"{tag}-{lost.number:x}-{uuid.uuid4()}", io.BytesIO(b"orphan"))

    forgotten: list[tuple[int, list[str]]] = []
    tidy(study, lambda trial_id, keys: forgotten.append((trial_id, keys)))
    left = {int(i.split("-")[1], 16) for i in store.list("")}
    assert left == {running.number, good.number}
    assert [trial_id for trial_id, _ in forgotten] == [lost._trial_id]

    better = study.ask()
    save(better, b"better", "model.bin")
    study.tell(better, 0.95)
    tidy(study)
    assert {int(i.split("-")[1], 16) for i in store.list("")} == {running.number, better.number}

    # A worker that was declared lost and finishes late: the trial is no longer writable, and
    # the object it just wrote is removed again.
    late = study.ask()
    storage.set_trial_state_values(late._trial_id, TrialState.FAIL)
    with pytest.raises(Exception, match="finished"):
        save(late, b"late", "model.bin")
    assert late.number not in {int(i.split("-")[1], 16) for i in store.list("")}


def test_user_objective_saves_with_the_helper_and_the_best_comes_back(
    sqlite_url: str, tmp_path: Path
) -> None:
    spec = f"{EXAMPLE}:objective"
    result = tunefleet(
        *("run", spec, "--storage", sqlite_url, "--n-trials", "8", "--workers", "2"),
        *("--seed", "4", "--artifacts", f"file://{tmp_path / 'models'}"),
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "best"
    fetched = tunefleet("best", "--storage", sqlite_url, "--download", str(out))
    assert fetched.returncode == 0, fetched.stderr
    weights = np.load(out / "weights.npy")
    study = optuna.load_study(study_name="objective", storage=sqlite_url)
    spec_ = importlib.util.spec_from_file_location("saving_models", EXAMPLE)
    assert spec_ is not None and spec_.loader is not None
    example = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(example)
    _, _, valid_x, valid_y = example.make_data()
    assert float(np.mean((valid_x @ weights - valid_y) ** 2)) == study.best_value
    (kept,) = (tmp_path / "models").iterdir()

    # The HTML report links the best trial's artifact where the store keeps it.
    pytest.importorskip("plotly", reason='needs pip install "tunefleet[report]"')
    html = tmp_path / "report.html"
    written = tunefleet("report", "--storage", sqlite_url, "--out", str(html))
    assert written.returncode == 0, written.stderr
    assert f'href="file://{kept}" download="weights.npy"' in html.read_text()


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    if not selector.select(timeout):
        proc.kill()
        raise AssertionError(f"no URL within {timeout}s; stderr: {proc.communicate()[1]}")
    return proc.stdout.readline().strip()


def test_dashboard_lists_and_serves_the_best_trials_artifact(
    sqlite_url: str, tmp_path: Path
) -> None:
    pytest.importorskip("optuna_dashboard", reason='needs pip install "tunefleet[dashboard]"')
    result = tunefleet(
        *("run", f"{EXAMPLE}:objective", "--storage", sqlite_url, "--n-trials", "4"),
        *("--workers", "1", "--artifacts", f"file://{tmp_path / 'models'}"),
    )
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="objective", storage=sqlite_url)
    best = study.best_trial
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunefleet", "dashboard", "--port", "0", "--study", "objective",
         "--storage", sqlite_url],
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = _first_line(proc, timeout=60).rsplit(" ", 1)[1]
        base = url.split("/dashboard/")[0]
        api = f"{base}/api/studies/{study._study_id}?after=0"
        with urllib.request.urlopen(api, timeout=30) as response:
            detail: dict[str, Any] = json.load(response)
        assert detail.get("artifact_is_available", True)
        trials = {t["number"]: t for t in detail["trials"]}
        (listed,) = trials[best.number]["artifacts"]
        assert listed["filename"] == "weights.npy"
        assert all(not t["artifacts"] for n, t in trials.items() if n != best.number)
        served = f"{base}/artifacts/{study._study_id}/{best._trial_id}/{listed['artifact_id']}"
        with urllib.request.urlopen(served, timeout=30) as response:
            body = response.read()
        assert (tmp_path / "models" / listed["artifact_id"]).read_bytes() == body
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def test_k8s_manifest_takes_s3_credentials_from_a_secret(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    secret_value = "s3-secret-never-shown"
    env_file = tmp_path / ".env"
    env_file.write_text(
        "TUNEFLEET_STORAGE=postgresql://u:dbpw-hidden@db.example.com/optuna\n"
        f"AWS_ACCESS_KEY_ID=AKIATEST\nAWS_SECRET_ACCESS_KEY={secret_value}\n"
        "AWS_ENDPOINT_URL=https://s3.example.com\n"
    )
    args = ("xgboost-breast-cancer", "--study", "xgb", "--n-trials", "30", "--workers", "3",
            "--image", "tunefleet:0.1.0", "--artifacts", "s3://models/xgb")  # fmt: skip
    files = []
    for command, extra in [("render", ()), ("apply", ("--dry-run", "--env-file", str(env_file)))]:
        with pytest.raises(SystemExit) as exited:
            main(["k8s", command, *args, *extra])
        out, err = capsys.readouterr()
        assert exited.value.code == 0, err
        assert secret_value not in out + err and "dbpw-hidden" not in out + err
        path = tmp_path / f"{command}.yaml"
        path.write_text(out)
        files.append(str(path))
        docs = [d for d in yaml.safe_load_all(out) if d]
        job = next(d for d in docs if d["kind"] == "Job")
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][container["args"].index("--artifacts") + 1] == "s3://models/xgb"
        env = {e["name"]: e for e in container["env"]}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "tunefleet-xgb-artifacts", "key": name, "optional": True}
            assert "value" not in env[name]
        if command == "apply":
            secret = next(d for d in docs if d["metadata"]["name"] == "tunefleet-xgb-artifacts")
            assert set(secret["stringData"]) == {
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_ENDPOINT_URL",
            }
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.31.0", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# name -> (model file, how to load it as docs/artifacts.md says)
MODEL_FILES = {
    "sklearn-iris": "model.pkl",
    "xgboost-breast-cancer": "model.ubj",
    "torch-fashion-mnist": "model.pt",
    "keras-mnist": "model.keras",
}


def _load(name: str, path: Path) -> object:
    if name == "sklearn-iris":
        import pickle

        return pickle.loads(path.read_bytes())
    if name == "xgboost-breast-cancer":
        import xgboost as xgb

        return xgb.Booster(model_file=str(path))
    if name == "torch-fashion-mnist":
        import torch

        return torch.load(path, weights_only=False)
    import keras

    return keras.saving.load_model(path)


@pytest.fixture(scope="module")
def image_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_data import write_image_dataset

    root = tmp_path_factory.mktemp("data")
    write_image_dataset(root, "fashion-mnist")
    write_image_dataset(root, "mnist", seed=1)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODEL_FILES))
def test_every_builtin_saves_a_model_that_loads_and_scores_its_trial(
    name: str, image_data: Path, sqlite_url: str, tmp_path: Path
) -> None:
    from tests.test_builtin_objectives import _args

    args = _args(name, image_data)
    flags = [f"--objective-arg={k}={json.dumps(v)}" for k, v in args.items()]
    run = tunefleet(
        *("worker", name, "--storage", sqlite_url, "--study", "b", "--n-trials", "2"),
        *("--seed", "3", "--pruner", "none", "--log-level", "warning", *flags),
        *("--artifacts", f"file://{tmp_path / 'models'}", "--save-models", "all"),
    )
    assert run.returncode == 0, run.stderr
    out = tmp_path / "out"
    fetched = tunefleet("best", "--storage", sqlite_url, "--study", "b", "--download", str(out))
    assert fetched.returncode == 0, fetched.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(["metrics.json", MODEL_FILES[name]])
    assert _load(name, out / MODEL_FILES[name]) is not None
    study = optuna.load_study(study_name="b", storage=sqlite_url)
    assert len(list((tmp_path / "models").iterdir())) == 2 * len(study.trials)  # all: each kept
    rescored = tunefleet(
        *("rescore", "--study", "b", "--storage", sqlite_url, "--stored-model", "--json")
    )
    if name == "sklearn-iris":  # a cross-validation mean: no single model reproduces it
        assert rescored.returncode == 2 and "cannot score a stored model" in rescored.stderr
    else:
        assert rescored.returncode == 0, rescored.stderr
        assert json.loads(rescored.stdout)["stored_model_score"] == study.best_value


LOSING_OBJECTIVE = """
import os, time
import tunefleet.artifacts

def objective(trial):
    x = trial.suggest_float("x", 0, 1)
    tunefleet.artifacts.save(trial, b"model of trial %d" % trial.number, "model.bin")
    if os.environ.get("HANG_AFTER_SAVE"):
        time.sleep(600)  # saved, never told: the test kills this worker here
    return x
"""


@pytest.mark.slow
def test_a_killed_workers_saved_model_is_cleaned_up_after_its_trial_is_rerun(
    sqlite_url: str, tmp_path: Path
) -> None:
    objective = tmp_path / "losing.py"
    objective.write_text(LOSING_OBJECTIVE)
    models = tmp_path / "models"
    common = (
        *("worker", f"{objective}:objective", "--study", "lost", "--storage", sqlite_url),
        *("--n-trials", "4", "--direction", "maximize", "--artifacts", f"file://{models}"),
        *("--heartbeat-interval", "0.2", "--grace-period", "1"),
    )
    doomed = subprocess.Popen(
        [sys.executable, "-m", "tunefleet", *common],
        env={**clean_env(), "HANG_AFTER_SAVE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (models.exists() and any(models.iterdir())):
            assert time.monotonic() < deadline, "the doomed worker never saved its model"
            assert doomed.poll() is None
            time.sleep(0.2)
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)

    result = tunefleet(*common)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="lost", storage=sqlite_url)
    lost = study.trials[0]
    assert lost.state == TrialState.FAIL and "tunefleet:lost" in lost.system_attrs
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    # Only the best trial's model is left: the lost trial's was removed, attribute first.
    (left,) = models.iterdir()
    assert int(left.name.split("-")[1], 16) == study.best_trial.number
    assert left.read_bytes() == b"model of trial %d" % study.best_trial.number
    assert not get_all_artifact_meta(lost, storage=study._storage)


def test_several_objectives_keep_the_pareto_front(sqlite_url: str, tmp_path: Path) -> None:
    study = optuna.create_study(
        study_name="front", storage=sqlite_url, directions=["maximize", "maximize"]
    )
    configure_study(study, f"file://{tmp_path / 'store'}")
    for values in [(1.0, 0.0), (0.0, 1.0), (0.4, 0.4), (0.6, 0.6)]:
        trial = study.ask()
        save(trial, b"m", "model.bin")
        study.tell(trial, values)
        tidy(study)
    opened = study_artifacts(study._storage, study._study_id)
    assert opened is not None
    left = {int(i.split("-")[1], 16) for i in opened[1].list("")}
    assert left == {0, 1, 3}  # (0.4, 0.4) is dominated by (0.6, 0.6)


def test_download_without_a_store_is_a_one_line_error(sqlite_url: str, tmp_path: Path) -> None:
    study = optuna.create_study(study_name="plain", storage=sqlite_url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    result = tunefleet("best", "--storage", sqlite_url, "--download", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "has no artifact store" in result.stderr and result.stderr.count("\n") == 1


def test_of_tied_best_trials_the_first_keeps_its_model_and_is_downloaded(
    sqlite_url: str, tmp_path: Path
) -> None:
    study = optuna.create_study(study_name="tie", storage=sqlite_url, direction="maximize")
    configure_study(study, f"file://{tmp_path / 'store'}")
    for value in (0.5, 0.9, 0.9):
        trial = study.ask()
        save(trial, b"model %d" % trial.number, "model.bin")
        study.tell(trial, value)
        tidy(study)
    assert [p.read_bytes() for p in (tmp_path / "store").iterdir()] == [b"model 1"]
    out = tmp_path / "out"
    result = tunefleet("best", "--storage", sqlite_url, "--download", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "model.bin").read_bytes() == b"model 1"


def test_k8s_apply_creates_the_artifacts_secret_from_the_env_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import base64

    from tests.k8s_fake import FakeCluster
    from tunefleet import kubernetes as k8s

    fake = FakeCluster(namespace="tuning")
    monkeypatch.setattr(k8s, "connect", lambda **_: fake)
    env_file = tmp_path / ".env"
    env_file.write_text(
        "TUNEFLEET_STORAGE=postgresql://u:pw-db@db.example.com/optuna\n"
        "AWS_ACCESS_KEY_ID=AKIATEST\nAWS_SECRET_ACCESS_KEY=never-printed-s3-key\n"
    )
    with pytest.raises(SystemExit) as exited:
        main(
            ["k8s", "apply", "xgboost-breast-cancer", "--study", "xgb", "--n-trials", "30",
             "--workers", "3", "--image", "tunefleet:0.1.0", "--artifacts", "s3://models/xgb",
             "--env-file", str(env_file)]
        )  # fmt: skip
    out, err = capsys.readouterr()
    assert exited.value.code == 0, err
    assert "never-printed-s3-key" not in out + err + json.dumps(fake.sent("apply", "Job"))
    secrets = {s["metadata"]["name"]: s for s in fake.sent("apply", "Secret")}
    data = secrets["tunefleet-xgb-artifacts"]["data"]
    assert base64.b64decode(data["AWS_SECRET_ACCESS_KEY"]).decode() == "never-printed-s3-key"
    assert set(data) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert secrets["tunefleet-xgb-artifacts"]["metadata"]["namespace"] == "tuning"


def test_the_study_spec_file_takes_the_artifact_settings(tmp_path: Path) -> None:
    from tunefleet.config import load_spec
    from tunefleet.errors import ConfigError

    path = tmp_path / "study.toml"
    path.write_text('artifacts = "s3://models/x"\nsave_models = "all"\nkeep_best = 2\n')
    spec = load_spec(path)
    assert (spec.artifacts, spec.save_models, spec.keep_best) == ("s3://models/x", "all", 2)
    path.write_text('save_models = "some"\n')
    with pytest.raises(ConfigError, match=f"invalid 'save_models' in {path}: 'some' is not"):
        load_spec(path)
