"""``torch-fashion-mnist``: a small MLP on Fashion-MNIST (the reference tutorial's search space).

Search space: ``n_layers`` 1..3; per layer ``n_units_l{i}`` 4..128 and ``dropout_l{i}`` 0.2..0.5;
``optimizer`` Adam | RMSprop | SGD; ``lr`` 1e-5..1e-1 (log). Each epoch trains on ``n_train``
examples (128 x 30, as the tutorial meant: its code trained on all 60,000) and reports
validation accuracy on ``n_valid`` examples (128 x 10), so pruners can stop it. Score: the last
epoch's validation accuracy (maximize).

Data is read once per worker from the IDX files (``tunefleet data fetch fashion-mnist``) and
moved to the device once; the training and validation examples are a seeded draw
(``split_seed``), the same for every trial. The trial's seed drives initialisation, dropout and
shuffling. A GPU is used when present (``device=auto``).
"""

from __future__ import annotations

import io
import logging
from typing import Any, ClassVar

import numpy as np
import optuna
import torch
from torch import nn

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

__all__ = ["TorchFashionMnist", "select_device"]

log = logging.getLogger("tunefleet.objectives")


def select_device(requested: str) -> Any:
    """``auto``: the first CUDA GPU, else Apple's MPS, else the CPU; otherwise as given."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _device_name(device: Any) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return str(device.type)


class TorchFashionMnist(ImageObjective):
    name = "torch-fashion-mnist"
    directions = ("maximize",)
    extra = "torch"
    dataset = "fashion-mnist"
    #: The setting that picks the data split (``tunefleet rescore`` varies it).
    split_arg: ClassVar[str] = "split_seed"
    defaults: ClassVar[dict[str, Any]] = {**ImageObjective.defaults}

    def setup(self, context: WorkerContext) -> None:
        super().setup(context)
        self.n_threads = objective_threads(self)
        torch.set_num_threads(self.n_threads)
        limit_blas_threads(self.n_threads)
        self.device = select_device(self.args["device"])
        splits = load_images(self.dataset, self.root)
        # A fixed, seeded draw of examples: every trial trains and scores on the same ones.
        rng = np.random.default_rng(self.args["split_seed"])
        train = self.draw(rng, len(splits.train_x), "n_train")
        valid = self.draw(rng, len(splits.test_x), "n_valid")

        def tensor(images: np.ndarray[Any, Any]) -> torch.Tensor:
            flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
            return torch.from_numpy(flat).to(self.device)

        self.train_x = tensor(splits.train_x[train])
        self.train_y = torch.from_numpy(splits.train_y[train]).to(self.device)
        self.valid_x = tensor(splits.test_x[valid])
        self.valid_y = torch.from_numpy(splits.test_y[valid]).to(self.device)
        log.info(
            "%s: %d train / %d valid examples on %s, %d threads",
            self.name,
            len(self.train_x),
            len(self.valid_x),
            self.device,
            self.n_threads,
        )

    def _model(self, trial: optuna.Trial) -> nn.Sequential:
        layers: list[nn.Module] = []
        in_features = self.train_x.shape[1]
        for i in range(trial.suggest_int("n_layers", 1, 3)):
            out_features = trial.suggest_int(f"n_units_l{i}", 4, 128)
            dropout = trial.suggest_float(f"dropout_l{i}", 0.2, 0.5)
            layers += [nn.Linear(in_features, out_features), nn.ReLU(), nn.Dropout(dropout)]
            in_features = out_features
        layers += [nn.Linear(in_features, 10), nn.LogSoftmax(dim=1)]
        return nn.Sequential(*layers)

    def __call__(self, trial: optuna.Trial) -> float:
        seed = trial_seed(self, trial)
        record_trial(
            self,
            trial,
            seed=seed,
            split_seed=self.args["split_seed"],
            device=str(self.device),
            device_name=_device_name(self.device),
            n_threads=self.n_threads,
        )
        torch.manual_seed(seed)  # initialisation and dropout (CUDA generators included)
        shuffle = torch.Generator(device="cpu").manual_seed(seed)
        model = self._model(trial).to(self.device)
        optimizer_name = trial.suggest_categorical("optimizer", ["Adam", "RMSprop", "SGD"])
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        optimizer = getattr(torch.optim, optimizer_name)(model.parameters(), lr=lr)
        batch = self.args["batch_size"]
        accuracy = 0.0
        for epoch in range(self.args["epochs"]):
            model.train()
            order = torch.randperm(len(self.train_x), generator=shuffle).to(self.device)
            for start in range(0, len(order), batch):
                idx = order[start : start + batch]
                optimizer.zero_grad()
                loss = nn.functional.nll_loss(model(self.train_x[idx]), self.train_y[idx])
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                predicted = model(self.valid_x).argmax(dim=1)
                accuracy = float((predicted == self.valid_y).float().mean().item())
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        if artifacts.saving_models(trial):
            # The whole module: torch.load("model.pt", weights_only=False) gives it back.
            buffer = io.BytesIO()
            torch.save(model.to("cpu"), buffer)
            artifacts.save_model(
                trial, {"model.pt": buffer.getvalue()}, accuracy, metric="accuracy"
            )
        return accuracy

    def score_saved(self, files: dict[str, bytes]) -> float:
        """Score a stored model (``tunefleet rescore --stored-model``) without re-training."""
        model = torch.load(io.BytesIO(files["model.pt"]), weights_only=False).to(self.device)
        model.eval()
        with torch.no_grad():
            predicted = model(self.valid_x).argmax(dim=1)
        return float((predicted == self.valid_y).float().mean().item())
