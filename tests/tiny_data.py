"""Tiny IDX data sets written by the tests themselves: no download, a few hundred images."""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np

_TYPE_CODES = {
    "uint8": 0x08,
    "int8": 0x09,
    "int16": 0x0B,
    "int32": 0x0C,
    "float32": 0x0D,
    "float64": 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    """An array in the IDX format: magic, big-endian dimensions, big-endian data."""
    code = _TYPE_CODES[array.dtype.name]
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> Path:
    data = idx_bytes(array)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def write_image_dataset(
    root: Path, name: str, n_train: int = 400, n_test: int = 150, seed: int = 0
) -> Path:
    """Random 28x28 images with a learnable mark (a bright row at 2 x label); images gzipped,
    labels not, as both occur in the wild."""
    rng = np.random.default_rng(seed)
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 80, (n, 28, 28)).astype(np.uint8)
        images[np.arange(n), labels * 2, :] = 255
        write_idx(directory / f"{part}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{part}-labels-idx1-ubyte", labels)
    return directory


def require_module(name: str) -> None:
    """Skip a test whose framework is missing, except in CI, where every extra is installed."""
    if importlib.util.find_spec(name) is not None:
        return
    from tests.conftest import require

    require(False, f"{name} is not installed: pip install -e '.[all]'")
