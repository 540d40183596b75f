"""On a GPU machine: do the PyTorch and Keras built-ins run on the GPU, and say so on the trial?

Runs one trial of ``torch-fashion-mnist`` and one of ``keras-mnist`` through the real CLI
(``tunefleet worker``, an embedded store in a temporary directory) on tiny synthetic data, then
prints the device each trial recorded next to what the framework itself sees. Needs only what
the objectives need; frameworks that are not installed are skipped. Exit code 1 if a framework
sees a GPU but its trial ran elsewhere.

    python benchmarks/gpu_check.py
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import optuna

CHECKS = {  # objective -> (framework module, dataset, a one-liner printing what it sees)
    "torch-fashion-mnist": (
        "torch",
        "fashion-mnist",
        "import torch; print(torch.cuda.is_available() and torch.cuda.get_device_name(0))",
    ),
    "keras-mnist": (
        "keras",
        "mnist",
        "import keras, os; b = keras.backend.backend(); print(b, "
        "__import__('tensorflow').config.list_physical_devices('GPU') if b == 'tensorflow' "
        "else '')",
    ),
}


def write_tiny(root: Path, dataset: str) -> None:
    rng = np.random.default_rng(0)
    directory = root / dataset
    directory.mkdir(parents=True)
    for part, n in (("train", 512), ("t10k", 256)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 255, (n, 28, 28)).astype(np.uint8)
        for stem, a in ((f"{part}-images-idx3-ubyte", x), (f"{part}-labels-idx1-ubyte", y)):
            header = bytes([0, 0, 8, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape)
            (directory / f"{stem}.gz").write_bytes(gzip.compress(header + a.tobytes()))


def main() -> int:
    failed = False
    with tempfile.TemporaryDirectory(prefix="tunefleet-gpu-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "TUNEFLEET_DATA_DIR": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
        for objective, (module, dataset, probe) in CHECKS.items():
            if importlib.util.find_spec(module) is None:
                print(f"{objective}: {module} not installed, skipped")
                continue
            write_tiny(root, dataset)
            sees = subprocess.run(
                [sys.executable, "-c", probe], env=env, capture_output=True, text=True
            ).stdout.strip()
            storage = f"sqlite:///{root / (objective + '.db')}"
            run = subprocess.run(
                [sys.executable, "-m", "tunefleet", "worker", objective, "--storage", storage,
                 "--n-trials", "1", "--seed", "0", "--objective-arg", "epochs=2"],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
            if run.returncode != 0:
                print(f"{objective}: worker exited {run.returncode}\n{run.stderr}")
                failed = True
                continue
            (trial,) = optuna.load_study(study_name=objective, storage=storage).trials
            attrs = trial.user_attrs
            print(
                f"{objective}: trial {trial.state.name} value={trial.value} "
                f"device={attrs.get('device')} ({attrs.get('device_name')}); "
                f"{module} sees: {sees}"
            )
            on_gpu = str(attrs.get("device", "")).startswith(("cuda", "gpu"))
            gpu_seen = sees not in ("", "False") and not sees.endswith("[]")
            if gpu_seen and not on_gpu:
                print(f"{objective}: a GPU is visible but the trial ran on {attrs.get('device')}")
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
