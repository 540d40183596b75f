"""Per-trial time of each built-in objective against the reference tutorial's own code.

Both sides run in this one process, on the same synthetic data, with the same parameters, trials
interleaved (tutorial, ours, tutorial, ...) so machine noise hits both alike. The tutorial's
objectives are re-implemented here for measurement only (its code is not part of tunefleet):
they load the data inside every trial, as it does, from where it expects it: scikit-learn's
bundled sets; ``<cwd>/FashionMNIST/raw/`` (torchvision's layout, read without torchvision, which
does not install beside a CPU build of torch); ``$KERAS_HOME/datasets/mnist.npz``. It never
downloads: the image files are synthetic (random pixels, full size: 60,000 + 10,000 images).

Run (about two minutes with these sizes on 2 busy cores)::

    python benchmarks/objectives_vs_tutorial.py --trials 3 --epochs 1

``--epochs`` replaces the 10 epochs of both network objectives, for a shorter run; the ratio is
per trial at equal epochs (tutorial / tunefleet: above 1, tunefleet is faster). iris and XGBoost
trials take milliseconds, so they run ``--quick-trials`` (20) per side. Frameworks that are not
installed are skipped.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna

BATCHSIZE = 128
N_TRAIN, N_TEST = 60_000, 10_000


# -- synthetic data where each side looks for it ---------------------------------------------------


def _images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 80, (n, 28, 28)).astype(np.uint8)
    images[np.arange(n), labels * 2, :] = 255  # something to learn
    return images, labels


def _idx(array: np.ndarray) -> bytes:
    dims = b"".join(struct.pack(">I", d) for d in array.shape)
    return bytes([0, 0, 0x08, array.ndim]) + dims + array.tobytes()


def make_data(root: Path) -> None:
    rng = np.random.default_rng(0)
    parts = {"train": _images(N_TRAIN, rng), "t10k": _images(N_TEST, rng)}
    # tunefleet: $TUNEFLEET_DATA_DIR/<dataset>/, gzipped as published.
    # tutorial/torchvision: <cwd>/FashionMNIST/raw/, the files as torchvision leaves them.
    for directory, compress in (
        (root / "data" / "fashion-mnist", True),
        (root / "data" / "mnist", True),
        (root / "FashionMNIST" / "raw", False),
    ):
        directory.mkdir(parents=True)
        for part, (x, y) in parts.items():
            for stem, array in ((f"{part}-images-idx3-ubyte", x), (f"{part}-labels-idx1-ubyte", y)):
                data = _idx(array)
                if compress:
                    (directory / f"{stem}.gz").write_bytes(gzip.compress(data, compresslevel=1))
                else:
                    (directory / stem).write_bytes(data)
    # tutorial/keras: $KERAS_HOME/datasets/mnist.npz.
    (root / "keras" / "datasets").mkdir(parents=True)
    np.savez(
        root / "keras" / "datasets" / "mnist.npz",
        x_train=parts["train"][0],
        y_train=parts["train"][1],
        x_test=parts["t10k"][0],
        y_test=parts["t10k"][1],
    )


# -- the tutorial's objectives, re-implemented for measurement ------------------------------------


def tutorial_sklearn(trial: Any) -> float:
    import sklearn.datasets
    import sklearn.ensemble
    import sklearn.model_selection
    import sklearn.svm

    x, y = sklearn.datasets.load_iris(return_X_y=True)
    if trial.suggest_categorical("classifier", ["SVC", "RandomForest"]) == "SVC":
        model: Any = sklearn.svm.SVC(C=trial.suggest_float("svc_c", 1e-10, 1e10, log=True))
    else:
        depth = trial.suggest_int("rf_max_depth", 2, 32, log=True)
        model = sklearn.ensemble.RandomForestClassifier(max_depth=depth, n_estimators=10)
    return float(sklearn.model_selection.cross_val_score(model, x, y, n_jobs=-1, cv=3).mean())


def tutorial_xgboost(trial: Any) -> float:
    import sklearn.datasets
    import xgboost as xgb
    from sklearn.model_selection import train_test_split

    data, target = sklearn.datasets.load_breast_cancer(return_X_y=True)
    train_x, valid_x, train_y, valid_y = train_test_split(data, target, test_size=0.25)
    dtrain = xgb.DMatrix(train_x, label=train_y)
    dvalid = xgb.DMatrix(valid_x, label=valid_y)
    booster = trial.suggest_categorical("booster", ["gbtree", "gblinear", "dart"])
    param: dict[str, Any] = {
        "verbosity": 0,
        "objective": "binary:logistic",
        "tree_method": "exact",
        "booster": booster,
        "lambda": trial.suggest_float("lambda", 1e-8, 1.0, log=True),
        "alpha": trial.suggest_float("alpha", 1e-8, 1.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.2, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.2, 1.0),
    }
    if booster in ("gbtree", "dart"):
        param["max_depth"] = trial.suggest_int("max_depth", 3, 9, step=2)
        param["min_child_weight"] = trial.suggest_int("min_child_weight", 2, 10)
        param["eta"] = trial.suggest_float("eta", 1e-8, 1.0, log=True)
        param["gamma"] = trial.suggest_float("gamma", 1e-8, 1.0, log=True)
        policies = ["depthwise", "lossguide"]
        param["grow_policy"] = trial.suggest_categorical("grow_policy", policies)
    if booster == "dart":
        param["sample_type"] = trial.suggest_categorical("sample_type", ["uniform", "weighted"])
        param["normalize_type"] = trial.suggest_categorical("normalize_type", ["tree", "forest"])
        param["rate_drop"] = trial.suggest_float("rate_drop", 1e-8, 1.0, log=True)
        param["skip_drop"] = trial.suggest_float("skip_drop", 1e-8, 1.0, log=True)
    model = xgb.train(param, dtrain)
    return float(np.mean(np.rint(model.predict(dvalid)) == valid_y))


def tutorial_torch(trial: Any, epochs: int) -> float:
    import torch
    import torch.nn.functional as F
    from torch import nn

    n_valid = BATCHSIZE * 10
    layers: list[Any] = []
    in_features = 28 * 28
    for i in range(trial.suggest_int("n_layers", 1, 3)):
        out_features = trial.suggest_int(f"n_units_l{i}", 4, 128)
        layers += [nn.Linear(in_features, out_features), nn.ReLU()]
        layers.append(nn.Dropout(trial.suggest_float(f"dropout_l{i}", 0.2, 0.5)))
        in_features = out_features
    model = nn.Sequential(*layers, nn.Linear(in_features, 10), nn.LogSoftmax(dim=1))
    optimizer_name = trial.suggest_categorical("optimizer", ["Adam", "RMSprop", "SGD"])
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    optimizer = getattr(torch.optim, optimizer_name)(model.parameters(), lr=lr)

    # get_mnist(): torchvision's FashionMNIST reads the raw files at every construction, and
    # ToTensor() converts one image at a time (through PIL there; a cheaper path here).
    class Images(torch.utils.data.Dataset):  # type: ignore[misc]
        def __init__(self, part: str) -> None:
            raw = Path.cwd() / "FashionMNIST" / "raw"
            self.x = np.frombuffer((raw / f"{part}-images-idx3-ubyte").read_bytes()[16:], np.uint8)
            self.x = self.x.reshape(-1, 28, 28)
            self.y = np.frombuffer((raw / f"{part}-labels-idx1-ubyte").read_bytes()[8:], np.uint8)

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> tuple[Any, int]:
            return torch.from_numpy(self.x[i].copy()).float().div(255).unsqueeze(0), int(self.y[i])

    loader = torch.utils.data.DataLoader
    train_loader = loader(Images("train"), batch_size=BATCHSIZE, shuffle=True)
    valid_loader = loader(Images("t10k"), batch_size=BATCHSIZE, shuffle=True)
    accuracy = 0.0
    for epoch in range(epochs):
        model.train()
        for data, target in train_loader:  # every batch: the tutorial ignores N_TRAIN_EXAMPLES
            optimizer.zero_grad()
            F.nll_loss(model(data.view(data.size(0), -1)), target).backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for batch_idx, (data, target) in enumerate(valid_loader):
                if batch_idx * BATCHSIZE >= n_valid:
                    break
                pred = model(data.view(data.size(0), -1)).argmax(dim=1, keepdim=True)
                correct += int(pred.eq(target.view_as(pred)).sum().item())
        accuracy = correct / min(len(valid_loader.dataset), n_valid)
        trial.report(accuracy, epoch)
    return accuracy


def tutorial_keras(trial: Any, epochs: int) -> float:
    import keras

    keras.backend.clear_session()
    # Not in the tutorial: tunefleet's keras-mnist turns on TensorFlow's op determinism for the
    # whole process, which refuses unseeded random ops. Seeding costs nothing measurable.
    keras.utils.set_random_seed(trial.number)
    # mnist.load_data() reads $KERAS_HOME/datasets/mnist.npz in every trial (and would download
    # it if absent; its hash check would reject synthetic data, so the file is read directly).
    with np.load(Path(os.environ["KERAS_HOME"]) / "datasets" / "mnist.npz") as f:
        x_train, y_train, x_valid, y_valid = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    x_train = x_train.reshape(-1, 28, 28, 1)[:3000].astype("float32") / 255
    x_valid = x_valid.reshape(-1, 28, 28, 1)[:1000].astype("float32") / 255
    y_train, y_valid = y_train[:3000], y_valid[:1000]
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(
                filters=trial.suggest_categorical("filters", [32, 64]),
                kernel_size=trial.suggest_categorical("kernel_size", [3, 5]),
                strides=trial.suggest_categorical("strides", [1, 2]),
                activation=trial.suggest_categorical("activation", ["relu", "linear"]),
            ),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    learning_rate = trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate),
        metrics=["accuracy"],
    )
    model.fit(
        x_train,
        y_train,
        validation_data=(x_valid, y_valid),
        shuffle=True,
        batch_size=BATCHSIZE,
        epochs=epochs,
        verbose=False,
    )
    return float(model.evaluate(x_valid, y_valid, verbose=0)[1])


# -- the measurement -------------------------------------------------------------------------------


def measure(
    name: str, tutorial: Callable[[Any], float], args: dict[str, Any], trials: int
) -> dict[str, Any]:
    from tunefleet.objectives import WorkerContext, load_objective
    from tunefleet.objectives._common import worker_threads

    started = time.perf_counter()
    ours = load_objective(name, args)
    ours.setup(WorkerContext(seed=0, n_threads=worker_threads()))
    setup_s = time.perf_counter() - started
    sides: dict[str, Callable[[Any], float]] = {"tutorial": tutorial, "tunefleet": ours}
    times: dict[str, list[float]] = {"tutorial": [], "tunefleet": []}
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(0),
        pruner=optuna.pruners.NopPruner(),  # every trial runs to its end on both sides
    )
    for i in range(trials):
        # Both sides share one search space: whichever runs first draws the parameters from
        # the sampler, the other gets them fixed. The first side alternates, so warm-up and
        # machine noise fall on both.
        trial = study.ask()
        first, second = ("tutorial", "tunefleet") if i % 2 == 0 else ("tunefleet", "tutorial")
        started = time.perf_counter()
        value = sides[first](trial)
        times[first].append(time.perf_counter() - started)
        fixed = optuna.trial.FixedTrial(trial.params, number=trial.number)
        started = time.perf_counter()
        sides[second](fixed)
        times[second].append(time.perf_counter() - started)
        study.tell(trial, value)
    return {"name": name, "setup_s": setup_s, **times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3, help="network trials per side [3]")
    parser.add_argument(
        "--quick-trials", type=int, default=20, help="iris and XGBoost trials per side [20]"
    )
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the networks [10]")
    parser.add_argument("--only", action="append", help="benchmark only this built-in")
    options = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    with tempfile.TemporaryDirectory(prefix="tunefleet-bench-") as tmp:
        root = Path(tmp)
        networks = {"torch-fashion-mnist", "keras-mnist"}
        if not options.only or networks & set(options.only):
            print("writing synthetic data ...", file=sys.stderr)
            make_data(root)
        os.environ["TUNEFLEET_DATA_DIR"] = str(root / "data")
        os.environ["KERAS_HOME"] = str(root / "keras")
        os.chdir(root)  # the tutorial's DIR = os.getcwd()
        epochs = options.epochs
        quick, slow = options.quick_trials, options.trials
        cases: list[tuple[str, str, Callable[[Any], float], dict[str, Any], int]] = [
            ("sklearn-iris", "sklearn", tutorial_sklearn, {}, quick),
            ("xgboost-breast-cancer", "xgboost", tutorial_xgboost, {}, quick),
            (
                "torch-fashion-mnist",
                "torch",
                lambda t: tutorial_torch(t, epochs),
                {"epochs": epochs},
                slow,
            ),
            (
                "keras-mnist",
                "keras",
                lambda t: tutorial_keras(t, epochs),
                {"epochs": epochs},
                slow,
            ),
        ]
        rows = []
        for name, module, tutorial, args, trials in cases:
            if options.only and name not in options.only:
                continue
            if importlib.util.find_spec(module) is None:
                print(f"{name}: {module} not installed, skipped", file=sys.stderr)
                continue
            print(f"{name} ...", file=sys.stderr)
            rows.append(measure(name, tutorial, args, trials))

    print(f"\nseconds per trial, median of each side; epochs={epochs} for the networks")
    header = f"{'objective':24} {'trials':>6} {'tutorial':>9} {'tunefleet':>10} {'ratio':>7}"
    print(header + f" {'tunefleet set-up, once':>24}")
    for row in rows:
        tut, ours = statistics.median(row["tutorial"]), statistics.median(row["tunefleet"])
        print(
            f"{row['name']:24} {len(row['tutorial']):6} {tut:9.3f} {ours:10.3f} {tut / ours:6.1f}x"
            f" {row['setup_s']:23.2f}s"
        )
    print("\nper trial (tutorial | tunefleet):")
    for row in rows:
        pairs = ", ".join(
            f"{a:.2f}|{b:.2f}"
            for a, b in list(zip(row["tutorial"], row["tunefleet"], strict=True))[:8]
        )
        print(f"  {row['name']:24} {pairs}")


if __name__ == "__main__":
    main()
