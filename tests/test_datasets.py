"""The IDX reader, the data dir, and `tunefleet data fetch|check` on local files only."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tunefleet
from tests.tiny_data import idx_bytes, write_idx, write_image_dataset
from tunefleet.errors import ObjectiveError
from tunefleet.objectives._datasets import (
    DatasetSpec,
    check_dataset,
    data_root,
    fetch_dataset,
    load_images,
    read_idx,
    require_dataset,
)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28),
        np.array([3, 1, 4, 1, 5], dtype=np.uint8),
        np.array([[-70000, 2], [3, 70000]], dtype=np.int32),
        np.array([1.5, -2.25], dtype=np.float64),
        np.array([[0.5], [1e-3]], dtype=np.float32),
    ],
)
@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path: Path, array: np.ndarray, compress: bool) -> None:
    path = write_idx(tmp_path / "x-idx", array, compress=compress)
    read = read_idx(path)
    assert read.shape == array.shape
    assert read.dtype == array.dtype
    np.testing.assert_array_equal(read, array)


def test_gzip_is_recognised_by_content_not_name(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "train-images-idx3-ubyte"  # no .gz, yet gzipped
    path.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"PK\x03\x04 a zip file", "not an IDX file"),
        (b"\0\0\x08\x03\0\0\0\x02", "truncated"),  # 3 dims announced, 1 given
        (idx_bytes(np.zeros((4, 2), np.uint8))[:-3], "truncated (5 of 8 data bytes)"),
        (gzip.compress(idx_bytes(np.zeros(4, np.uint8)))[:-10], "cannot read"),
    ],
)
def test_damaged_files_are_reported_with_the_fix(
    tmp_path: Path, content: bytes, fragment: str
) -> None:
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(ObjectiveError, match="fetch the data again") as info:
        read_idx(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_dataset_loads_from_mixed_gzip_and_plain_files(tmp_path: Path) -> None:
    write_image_dataset(tmp_path, "mnist", n_train=30, n_test=10)
    splits = load_images("mnist", tmp_path)
    assert splits.train_x.shape == (30, 28, 28) and splits.train_x.dtype == np.uint8
    assert splits.test_y.shape == (10,) and splits.test_y.dtype == np.int64
    assert set(splits.train_y.tolist()) <= set(range(10))
    status = check_dataset("mnist", tmp_path)
    assert status.present and status.detail == "30 train / 10 test images, 28x28"


def test_images_and_labels_of_different_lengths_are_rejected(tmp_path: Path) -> None:
    directory = write_image_dataset(tmp_path, "mnist", n_train=30, n_test=10)
    write_idx(directory / "t10k-labels-idx1-ubyte", np.zeros(9, np.uint8))
    with pytest.raises(ObjectiveError, match="do not match"):
        load_images("mnist", tmp_path)


def test_missing_dataset_names_the_directory_and_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(ObjectiveError) as info:
        require_dataset("fashion-mnist", tmp_path)
    message = str(info.value)
    assert f"is not in {tmp_path / 'fashion-mnist'}" in message
    assert f"tunefleet data fetch fashion-mnist --dir {tmp_path}" in message
    directory = write_image_dataset(tmp_path, "fashion-mnist", n_train=5, n_test=5)
    (directory / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ObjectiveError, match=r"lacks t10k-labels-idx1-ubyte\[\.gz\]"):
        require_dataset("fashion-mnist", tmp_path)


def test_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TUNEFLEET_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root() == tmp_path / "cache" / "tunefleet" / "data"
    monkeypatch.setenv("TUNEFLEET_DATA_DIR", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "flag") == tmp_path / "flag"


# -- fetch: the real code path, with file:// mirrors -----------------------------------------------


def _mirror(tmp_path: Path, files: dict[str, bytes]) -> tuple[str, DatasetSpec]:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, content in files.items():
        (mirror / name).write_bytes(content)
    spec = DatasetSpec(
        name="tiny",
        title="tiny",
        files={name: hashlib.md5(content).hexdigest() for name, content in files.items()},
        mirrors=("file:///nonexistent-mirror/", mirror.as_uri() + "/"),
    )
    return mirror.as_uri(), spec


def test_fetch_verifies_checksums_and_falls_back_to_the_next_mirror(tmp_path: Path) -> None:
    files = {"a.gz": gzip.compress(b"first"), "b.gz": gzip.compress(b"second")}
    _, spec = _mirror(tmp_path, files)
    lines: list[str] = []
    directory = fetch_dataset("tiny", tmp_path / "data", spec=spec, progress=lines.append)
    assert directory == tmp_path / "data" / "tiny"
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == files
    assert all("checksum ok" in line for line in lines)

    # A second fetch keeps the good files and downloads nothing, even with no mirror at all.
    offline = DatasetSpec("tiny", "tiny", spec.files, mirrors=("file:///nonexistent-mirror/",))
    lines.clear()
    fetch_dataset("tiny", tmp_path / "data", spec=offline, progress=lines.append)
    assert lines == ["a.gz: present, checksum ok", "b.gz: present, checksum ok"]


def test_fetch_with_a_wrong_checksum_leaves_nothing_behind(tmp_path: Path) -> None:
    _, spec = _mirror(tmp_path, {"a.gz": b"tampered"})
    spec = DatasetSpec("tiny", "tiny", {"a.gz": "0" * 32}, spec.mirrors)
    with pytest.raises(ObjectiveError) as info:
        fetch_dataset("tiny", tmp_path / "data", spec=spec)
    message = str(info.value)
    assert "could not fetch a.gz" in message
    assert f"checksum {hashlib.md5(b'tampered').hexdigest()}, expected {'0' * 32}" in message
    assert "No such file" in message  # the first mirror's reason is kept too
    assert not (tmp_path / "data").exists()  # the directories it made are gone again


def test_cli_fetch_rejects_files_that_are_not_the_published_ones(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    write_image_dataset(tmp_path, "mirror", n_train=5, n_test=5)  # right names, wrong bytes
    result = tunefleet(
        "data", "fetch", "mnist", "--dir", str(tmp_path / "data"), "--mirror", mirror.as_uri()
    )
    assert result.returncode == 3, result.stderr  # a download problem, not bad input
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not fetch train-images")
    assert "expected f68b3c2dcbeaaa9fbdd348bbdeb94873" in lines[0]
    assert not (tmp_path / "data").exists()


def test_cli_fetch_offline_leaves_nothing_and_exits_with_the_network_code(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()  # the user's --dir exists and stays; what fetch made goes
    result = tunefleet(
        "data", "fetch", "mnist", "--dir", str(tmp_path / "data"),
        "--mirror", "http://127.0.0.1:1/",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1 and "check the network" in result.stderr
    assert list((tmp_path / "data").iterdir()) == []


def test_cli_check_reports_present_and_missing(tmp_path: Path) -> None:
    write_image_dataset(tmp_path, "mnist", n_train=20, n_test=10)
    result = tunefleet("data", "check", "--dir", str(tmp_path))
    assert result.returncode == 1
    assert f"mnist: ok, 20 train / 10 test images, 28x28 in {tmp_path / 'mnist'}" in result.stdout
    assert "tunefleet data fetch fashion-mnist" in result.stdout
    only_mnist = tunefleet("data", "check", "mnist", env={"TUNEFLEET_DATA_DIR": str(tmp_path)})
    assert only_mnist.returncode == 0, only_mnist.stdout + only_mnist.stderr
