"""Artifact stores from a URL: ``file:///dir`` or ``s3://bucket/prefix``, built on Optuna's.

Both are Optuna artifact stores (``open_reader``, ``write``, ``remove``), so optuna-dashboard and
``optuna.artifacts.download_artifact`` use them as they are, plus two things a fleet needs:

- ``list(start)``: the artifact ids beginning with ``start``, to sweep what a lost trial left;
- ``probe()``: a write and a remove, so a worker with an unreachable store says so at start.

Writes are all-or-nothing: the file store writes a hidden temporary file and renames it (a
rename is atomic on POSIX file systems, NFS included); an S3 PUT is atomic by itself (an
interrupted multipart upload never becomes an object).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from tunefleet.errors import ConfigError, StorageError

__all__ = ["FleetArtifactStore", "open_artifact_store", "validate_artifacts_url"]

#: Temporary files older than this are left-overs of a killed writer, removed by the sweep.
_STALE_TMP_S = 3600.0


class FleetArtifactStore(Protocol):
    url: str

    def open_reader(self, artifact_id: str) -> BinaryIO: ...
    def write(self, artifact_id: str, content_body: BinaryIO) -> None: ...
    def remove(self, artifact_id: str) -> None: ...
    def list(self, start: str) -> list[str]: ...
    def probe(self) -> None: ...


class FileArtifactStore(FileSystemArtifactStore):
    """A directory every worker sees (local disk, NFS, a Kubernetes volume)."""

    def __init__(self, url: str, base_path: Path) -> None:
        super().__init__(base_path)
        self.url = url
        self.base = base_path

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        target = self._get_filepath(artifact_id)
        # A hidden name no reader lists, renamed into place once whole ("x": never shared).
        tmp = self.base / f".{artifact_id}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "xb") as f:
                shutil.copyfileobj(content_body, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list(self, start: str) -> list[str]:
        now = time.time()
        found = []
        for entry in os.scandir(self.base):
            if entry.name.startswith("."):
                # A temporary file of a writer that was killed mid-write: nothing points at it.
                if entry.name.endswith(".tmp") and now - _mtime(entry) > _STALE_TMP_S:
                    Path(entry.path).unlink(missing_ok=True)
                continue
            if entry.name.startswith(start):
                found.append(entry.name)
        return found

    def probe(self) -> None:
        try:
            self.base.mkdir(parents=True, exist_ok=True)
            probe = self.base / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StorageError(
                f"artifact store {self.url} is not writable ({exc.strerror or exc}): create the "
                "directory, or give --artifacts a directory every worker can write"
            ) from None


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat().st_mtime
    except OSError:
        return time.time()


class S3ArtifactStore(Boto3ArtifactStore):
    """A bucket (and a key prefix) on AWS S3 or any S3-compatible server (``AWS_ENDPOINT_URL``)."""

    def __init__(self, url: str, bucket: str, prefix: str, client: Any) -> None:
        # avoid_buf_copy: a file is read once into the PUT; Optuna's buffer copy is for streams
        # boto3 might close, which ours are not.
        super().__init__(bucket, client=client, avoid_buf_copy=False)
        self.url = url
        self.prefix = prefix

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return super().open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        super().write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        super().remove(self.prefix + artifact_id)

    def list(self, start: str) -> list[str]:
        found = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + start):
            found += [obj["Key"][len(self.prefix) :] for obj in page.get("Contents", [])]
        return found

    def probe(self) -> None:
        key = f"{self.prefix}.probe-{uuid.uuid4().hex}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"ok")
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            endpoint = os.environ.get("AWS_ENDPOINT_URL", "AWS")
            raise StorageError(
                f"artifact store {self.url} is unreachable on {endpoint} "
                f"({type(exc).__name__}: {_first_line(exc)}): check the bucket, "
                "AWS_ENDPOINT_URL and the AWS credentials (AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY)"
            ) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def validate_artifacts_url(url: str) -> str:
    """The URL as given, if tunefleet can store artifacts there.

    Raises:
        ConfigError: neither ``file:///absolute/dir`` nor ``s3://bucket[/prefix]``.
    """
    parsed = urlparse(url)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost") and parsed.path:
        return url
    if parsed.scheme == "s3" and parsed.netloc:
        return url
    raise ConfigError(
        f"invalid --artifacts '{url}': give file:///absolute/dir (a directory every worker "
        "sees) or s3://bucket/prefix"
    )


def open_artifact_store(url: str) -> FleetArtifactStore:
    """The store for ``url`` (nothing is written: :meth:`probe` checks it can be).

    Raises:
        ConfigError: a bad URL, or boto3 missing for ``s3://``.
    """
    validate_artifacts_url(url)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileArtifactStore(url, Path(unquote(parsed.path)))
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError(
            f'--artifacts {url} needs boto3, which is not installed: pip install "tunefleet[s3]"'
        ) from None
    prefix = parsed.path.strip("/")
    client = boto3.client(
        "s3",
        # boto3 reads AWS_ENDPOINT_URL itself since 1.28; passing it keeps older ones right.
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
        config=Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 5}),
    )
    return S3ArtifactStore(url, parsed.netloc, f"{prefix}/" if prefix else "", client)


__all__ += ["ArtifactNotFound"]
