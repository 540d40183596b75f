"""Image data sets on local disk: where they live, a NumPy IDX reader, and a checked download.

FashionMNIST and MNIST are read from their standard IDX files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-...``, each gzipped or not) in ``<data dir>/<dataset>/``.
The data dir is ``$TUNEFLEET_DATA_DIR``, else ``$XDG_CACHE_HOME/tunefleet/data`` (by default
``~/.cache/tunefleet/data``). Trials never download: ``tunefleet data fetch`` does, once, with
checksums, for an image built with the data inside or a volume that workers mount.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tunefleet import constants
from tunefleet.errors import DownloadError, ObjectiveError

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DatasetSpec",
    "DatasetStatus",
    "ImageSplits",
    "check_dataset",
    "data_root",
    "fetch_dataset",
    "load_images",
    "read_idx",
    "require_dataset",
]

DATA_DIR_ENV = constants.DATA_DIR_ENV

# IDX type codes (the third byte of the magic number) -> big-endian NumPy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_PARTS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_TEST_PARTS = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class DatasetSpec:
    """A data set: its four IDX files (gzipped, as published) with their MD5s, and mirrors.

    MD5 because that is what the publishers (and torchvision) list for these files; it guards
    against truncated or wrong downloads, not against tampering.
    """

    name: str
    title: str
    files: Mapping[str, str]  # file name -> md5 of the published .gz
    mirrors: tuple[str, ...]


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST (Zalando Research, MIT license)",
        files={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
    ),
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST (Yann LeCun and Corinna Cortes, CC BY-SA 3.0)",
        files={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
    ),
}


def data_root(directory: str | os.PathLike[str] | None = None) -> Path:
    """The data dir: ``directory`` if given, else ``$TUNEFLEET_DATA_DIR``, else the user cache."""
    if directory:
        return Path(directory).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(cache) / "tunefleet" / "data"


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(DATASETS)
        raise ObjectiveError(f"unknown dataset '{name}': use one of {known}") from None


# -- reading -------------------------------------------------------------------------------------


def _open(path: Path) -> io.BufferedIOBase:
    with path.open("rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.GzipFile(path, "rb")
    return path.open("rb")


def read_idx(path: str | os.PathLike[str]) -> npt.NDArray[np.generic]:
    """Read one IDX file (gzipped or not) into an array of its own shape and type.

    Raises:
        ObjectiveError: the file is missing, not IDX, or shorter than its header says.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            header = f.read(4)
            if len(header) != 4 or header[:2] != b"\0\0" or header[2] not in _IDX_DTYPES:
                raise ObjectiveError(
                    f"'{path}' is not an IDX file (bad magic number): delete it and fetch the "
                    "data again"
                )
            ndim = header[3]
            dims = tuple(int(d) for d in np.frombuffer(f.read(4 * ndim), dtype=">u4"))
            if len(dims) != ndim:
                raise ObjectiveError(f"'{path}' is truncated: delete it and fetch the data again")
            dtype = np.dtype(_IDX_DTYPES[header[2]])
            count = int(np.prod(dims, dtype=np.int64))
            data = f.read(count * dtype.itemsize)
    except FileNotFoundError:
        raise ObjectiveError(f"'{path}' not found") from None
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ObjectiveError(
            f"cannot read '{path}' ({exc}): delete it and fetch the data again"
        ) from None
    if len(data) != count * dtype.itemsize:
        raise ObjectiveError(
            f"'{path}' is truncated ({len(data)} of {count * dtype.itemsize} data bytes): "
            "delete it and fetch the data again"
        )
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _missing_message(name: str, directory: Path, missing: list[str]) -> str:
    if len(missing) == len(_PARTS) + len(_TEST_PARTS):
        problem = f"dataset '{name}' is not in {directory}"
    else:
        problem = f"dataset '{name}' in {directory} lacks {', '.join(m + '[.gz]' for m in missing)}"
    return (
        f"{problem}: run 'tunefleet data fetch {name} --dir {directory.parent}', or set "
        f"${DATA_DIR_ENV} (or --objective-arg data_dir=...) to the directory that holds it"
    )


def require_dataset(name: str, root: Path) -> Path:
    """The dataset's directory, after checking that its four files are there (cheap: no reads).

    Raises:
        ObjectiveError: a file is missing; the message names the directory and the fetch command.
    """
    directory = root / name
    missing = [stem for stem in (*_PARTS, *_TEST_PARTS) if _find(directory, stem) is None]
    if missing:
        raise ObjectiveError(_missing_message(name, directory, missing))
    return directory


@dataclass(frozen=True)
class ImageSplits:
    """A data set's train and test images (uint8, N x H x W) and labels (int64)."""

    train_x: npt.NDArray[np.uint8]
    train_y: npt.NDArray[np.int64]
    test_x: npt.NDArray[np.uint8]
    test_y: npt.NDArray[np.int64]


@functools.lru_cache(maxsize=4)
def _load(directory: Path, mtimes: tuple[float, ...]) -> ImageSplits:
    arrays = []
    for stem in (*_PARTS, *_TEST_PARTS):
        path = _find(directory, stem)
        assert path is not None  # require_dataset checked
        arrays.append(read_idx(path))
    train_x, train_y, test_x, test_y = arrays
    for x, y, part in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ObjectiveError(
                f"{directory}: {part} images {x.shape} and labels {y.shape} do not match: "
                "fetch the data again"
            )
    return ImageSplits(
        train_x.astype(np.uint8, copy=False),
        train_y.astype(np.int64),
        test_x.astype(np.uint8, copy=False),
        test_y.astype(np.int64),
    )


def load_images(name: str, root: Path) -> ImageSplits:
    """Read a data set's four files; cached per process (rescore and tests read it once)."""
    directory = require_dataset(name, root)
    paths = [_find(directory, stem) for stem in (*_PARTS, *_TEST_PARTS)]
    return _load(directory.resolve(), tuple(p.stat().st_mtime for p in paths if p is not None))


# -- checking and fetching -----------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetStatus:
    """What ``tunefleet data check`` reports for one data set."""

    name: str
    directory: Path
    present: bool
    detail: str  # "60000 train / 10000 test images, 28x28", or what is wrong


def check_dataset(name: str, root: Path) -> DatasetStatus:
    """Whether a data set is present and readable (headers and sizes, not checksums)."""
    directory = root / name
    try:
        splits = load_images(name, root)
    except ObjectiveError as exc:
        return DatasetStatus(name, directory, False, str(exc))
    h, w = splits.train_x.shape[1:]
    detail = f"{len(splits.train_x)} train / {len(splits.test_x)} test images, {h}x{w}"
    return DatasetStatus(name, directory, True, detail)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, target: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def fetch_dataset(
    name: str,
    root: Path,
    mirrors: tuple[str, ...] | None = None,
    spec: DatasetSpec | None = None,
    timeout: float = 60.0,
    progress: Callable[[str], None] = lambda _line: None,
) -> Path:
    """Download a data set's files into ``root/name``, verifying each MD5; return the directory.

    Files already there with the right checksum are kept. Each file is written under a
    temporary name and renamed only once its checksum matches, so a failed or interrupted
    download never leaves a file the objectives would read. ``mirrors`` (base URLs, ``file://``
    included) replaces the built-in list, for a mirror inside a closed network.

    A failed fetch leaves nothing behind: directories it created are removed again if empty.

    Raises:
        ObjectiveError: unknown data set, or the directory cannot be created.
        DownloadError: no mirror gave a file with the right checksum (exit 3, like a network
            failure).
    """
    spec = spec or _spec(name)
    bases = mirrors or spec.mirrors
    directory = root / spec.name
    created = [p for p in (directory, *directory.parents) if not p.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ObjectiveError(
            f"cannot create {directory}: {exc.strerror}: pick another --dir"
        ) from None
    try:
        _fetch_files(spec, directory, bases, timeout, progress)
    except DownloadError:
        for made in created:  # deepest first; stops at the first one holding something
            try:
                made.rmdir()
            except OSError:
                break
        raise
    return directory


def _fetch_files(
    spec: DatasetSpec,
    directory: Path,
    bases: tuple[str, ...],
    timeout: float,
    progress: Callable[[str], None],
) -> None:
    for filename, expected in spec.files.items():
        target = directory / filename
        if target.is_file() and _md5(target) == expected:
            progress(f"{filename}: present, checksum ok")
            continue
        problems = []
        for base in bases:
            url = base.rstrip("/") + "/" + filename
            fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{filename}.", suffix=".part")
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                _download(url, tmp, timeout)
                actual = _md5(tmp)
                if actual != expected:
                    problems.append(f"{url}: checksum {actual}, expected {expected}")
                    continue
                tmp.replace(target)
                progress(f"{filename}: downloaded from {url}, checksum ok")
                break
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                problems.append(f"{url}: {reason}")
            finally:
                tmp.unlink(missing_ok=True)
        else:
            raise DownloadError(
                f"could not fetch {filename} for '{spec.name}' ({'; '.join(problems)}): check "
                "the network, or copy the files into "
                f"{directory} yourself (or give --mirror URL)"
            )
