"""``keras-mnist``: a one-layer convolutional network on MNIST (the reference tutorial's space).

Search space: ``filters`` 32 | 64, ``kernel_size`` 3 | 5, ``strides`` 1 | 2, ``activation``
relu | linear, and RMSprop's ``learning_rate`` 1e-5..1e-1 (log). Trains on ``n_train`` (3,000)
examples and reports validation accuracy on ``n_valid`` (1,000) after every epoch, so pruners
can stop it. Score: the last epoch's validation accuracy (maximize).

Keras 3 on TensorFlow by default; ``KERAS_BACKEND=torch`` or ``jax`` (or ``~/.keras/keras.json``)
picks another backend, which must then be installed. Data is read once per worker from the IDX
files (``tunefleet data fetch mnist``); the examples are a seeded draw (``split_seed``). A GPU
is used when the backend sees one (``device=auto``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

# Before TensorFlow loads: its C++ start-up chatter would fill every worker's log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import optuna

from tunefleet import artifacts
from tunefleet.objectives._base import WorkerContext
from tunefleet.objectives._common import (
    ImageObjective,
    limit_blas_threads,
    objective_threads,
    record_trial,
    trial_seed,
)
from tunefleet.objectives._datasets import load_images

__all__ = ["KerasMnist"]

log = logging.getLogger("tunefleet.objectives")


def _configure_backend(n_threads: int) -> int:
    """Size the backend's thread pools; return the intra-op threads it will really use."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(n_threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, n_threads))
        except RuntimeError:  # already initialised in this process (a second setup)
            pass
        # Same seed -> same weights and the same score, on CPU and GPU alike.
        tf.config.experimental.enable_op_determinism()
        return int(tf.config.threading.get_intra_op_parallelism_threads() or n_threads)
    if backend == "torch":
        import torch

        torch.set_num_threads(n_threads)
        return n_threads
    return n_threads  # jax sizes its pools at start-up (XLA_FLAGS), numpy has no pool


def _select_device(requested: str) -> tuple[str, str]:
    """The device to run on, as ``keras.device`` names it, and a readable name to record."""
    if requested != "auto":
        return requested, requested
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return "gpu:0", str(details.get("device_name", "gpu:0"))
        return "cpu:0", "cpu"
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return "cuda:0", str(torch.cuda.get_device_name(0))
        return "cpu", "cpu"
    if backend == "jax":
        import jax

        first = jax.devices()[0]
        return f"{first.platform}:{first.id}", str(first.device_kind)
    return "cpu", "cpu"


class _ReportEachEpoch(keras.callbacks.Callback):  # type: ignore[misc]
    """Reports validation accuracy after each epoch; stops training when the pruner says so."""

    def __init__(self, trial: optuna.Trial) -> None:
        super().__init__()
        self.trial = trial
        self.accuracy = 0.0
        self.pruned = False

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.accuracy = float((logs or {})["val_accuracy"])
        self.trial.report(self.accuracy, epoch)
        if self.trial.should_prune():
            self.pruned = True
            self.model.stop_training = True


class KerasMnist(ImageObjective):
    name = "keras-mnist"
    directions = ("maximize",)
    extra = "keras"
    dataset = "mnist"
    #: The setting that picks the data split (``tunefleet rescore`` varies it).
    split_arg: ClassVar[str] = "split_seed"
    defaults: ClassVar[dict[str, Any]] = {
        **ImageObjective.defaults,
        "n_train": 3000,
        "n_valid": 1000,
    }

    def setup(self, context: WorkerContext) -> None:
        super().setup(context)
        self.n_threads = _configure_backend(objective_threads(self))
        limit_blas_threads(self.n_threads)
        self.device, self.device_name = _select_device(self.args["device"])
        splits = load_images(self.dataset, self.root)
        rng = np.random.default_rng(self.args["split_seed"])
        train = self.draw(rng, len(splits.train_x), "n_train")
        valid = self.draw(rng, len(splits.test_x), "n_valid")
        self.train_x = splits.train_x[train, :, :, None].astype(np.float32) / 255.0
        self.train_y = splits.train_y[train]
        self.valid_x = splits.test_x[valid, :, :, None].astype(np.float32) / 255.0
        self.valid_y = splits.test_y[valid]
        log.info(
            "%s: %d train / %d valid examples, keras %s on %s, %d threads",
            self.name,
            len(self.train_x),
            len(self.valid_x),
            keras.backend.backend(),
            self.device,
            self.n_threads,
        )

    def __call__(self, trial: optuna.Trial) -> float:
        seed = trial_seed(self, trial)
        record_trial(
            self,
            trial,
            seed=seed,
            split_seed=self.args["split_seed"],
            device=self.device,
            device_name=self.device_name,
            n_threads=self.n_threads,
            keras_backend=keras.backend.backend(),
        )
        keras.backend.clear_session()  # drop the previous trial's graph and weights
        keras.utils.set_random_seed(seed)  # initialisation and shuffling
        layers = keras.layers
        with keras.device(self.device):
            model = keras.Sequential(
                [
                    keras.Input(shape=self.train_x.shape[1:]),
                    layers.Conv2D(
                        filters=trial.suggest_categorical("filters", [32, 64]),
                        kernel_size=trial.suggest_categorical("kernel_size", [3, 5]),
                        strides=trial.suggest_categorical("strides", [1, 2]),
                        activation=trial.suggest_categorical("activation", ["relu", "linear"]),
                    ),
                    layers.Flatten(),
                    layers.Dense(10, activation="softmax"),
                ]
            )
            learning_rate = trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
            model.compile(
                loss="sparse_categorical_crossentropy",
                optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate),
                metrics=["accuracy"],
            )
            report = _ReportEachEpoch(trial)
            model.fit(
                self.train_x,
                self.train_y,
                validation_data=(self.valid_x, self.valid_y),
                batch_size=self.args["batch_size"],
                epochs=self.args["epochs"],
                shuffle=True,
                verbose=0,
                callbacks=[report],
            )
        if report.pruned:
            raise optuna.TrialPruned()
        if artifacts.saving_models(trial):
            # Keras' own format: keras.saving.load_model("model.keras") gives it back.
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.keras"
                model.save(path)
                artifacts.save_model(
                    trial, {"model.keras": path.read_bytes()}, report.accuracy, metric="accuracy"
                )
        return report.accuracy

    def score_saved(self, files: dict[str, bytes]) -> float:
        """Score a stored model (``tunefleet rescore --stored-model``) without re-training."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.keras"
            path.write_bytes(files["model.keras"])
            model = keras.saving.load_model(path)
        predicted = np.argmax(model.predict(self.valid_x, verbose=0), axis=1)
        return float(np.mean(predicted == self.valid_y))
