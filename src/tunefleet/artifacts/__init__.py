"""Trial artifacts: the trained model of each trial (the best first), in a shared store.

A study's store is set with ``--artifacts URL`` (``file:///dir`` or ``s3://bucket/prefix``) and
stored with the study (a study system attribute), so every worker, local or pod, writes to the
same place, and readers (``best --download``, ``dashboard``) find it. Artifacts are Optuna's
(``optuna.artifacts``): each is an object in the store plus an ``artifacts:<id>`` system
attribute on its trial, so optuna-dashboard and ``optuna.artifacts.get_all_artifact_meta`` list
them.

Nothing half-written: :func:`save` writes the object (all or nothing) before the trial's
attribute, and both before the trial's COMPLETE (the objective returns after saving). After
each finished trial the worker calls :func:`tidy`, which removes the artifacts of trials that
are no longer among the best ``keep_best`` (``--save-models best``), of failed and pruned
trials, and what a lost trial left (objects no trial points at). It only touches finished
trials, and a finished trial that has dropped out of the best never comes back, so workers that
tidy at the same time agree.

Artifact ids are ``<study tag>-<trial number, hex>-<uuid>``: hex and dashes, as the dashboard's
routes require, and a listing of the store finds a study's objects and their trials by prefix.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import mimetypes
import os
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import download_artifact, get_all_artifact_meta
from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX, ArtifactMeta
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tunefleet.artifacts._store import (
    ArtifactNotFound,
    FleetArtifactStore,
    open_artifact_store,
    validate_artifacts_url,
)
from tunefleet.constants import ARTIFACTS_ATTR, SAVE_MODELS
from tunefleet.errors import ConfigError

__all__ = [
    "ARTIFACTS_ATTR_PREFIX",
    "SAVE_MODELS",
    "ArtifactSettings",
    "FleetArtifactStore",
    "artifact_location",
    "artifact_names",
    "configure_study",
    "download_trial",
    "kept_twin",
    "open_artifact_store",
    "save",
    "save_model",
    "saving_models",
    "study_artifacts",
    "tidy",
    "validate_artifacts_url",
]

log = logging.getLogger("tunefleet.artifacts")


@dataclass(frozen=True)
class ArtifactSettings:
    """Where a study's artifacts go and which models are kept."""

    url: str
    save_models: str = "best"
    keep_best: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _settings(raw: Any) -> ArtifactSettings | None:
    if not raw:
        return None
    data = json.loads(raw) if isinstance(raw, str) else raw
    return ArtifactSettings(
        url=str(data["url"]),
        save_models=str(data.get("save_models", "best")),
        keep_best=int(data.get("keep_best", 1)),
    )


_Opened = tuple[ArtifactSettings, FleetArtifactStore] | None
# Optuna storage -> study id -> its settings and store, opened once per process. Weak keys: a
# storage that is gone takes its entries along (an id() could be reused by the next one).
_opened: weakref.WeakKeyDictionary[BaseStorage, dict[int, _Opened]] = weakref.WeakKeyDictionary()


def _cache(storage: BaseStorage) -> dict[int, _Opened]:
    return _opened.setdefault(storage, {})


def configure_study(
    study: optuna.Study,
    url: str | None,
    save_models: str | None = None,
    keep_best: int | None = None,
) -> ArtifactSettings | None:
    """Store the given settings with the study (what is not given keeps its stored value), then
    check that the study's store can be written.

    Raises:
        ConfigError: a bad URL or setting, or ``--save-models`` without a store.
        StorageError: the store cannot be reached or written (one line, before any trial).
    """
    storage, study_id = study._storage, study._study_id
    stored = _settings(storage.get_study_system_attrs(study_id).get(ARTIFACTS_ATTR))
    if url is None and stored is None:
        if save_models not in (None, "none") or keep_best is not None:
            raise ConfigError(
                "--save-models and --keep-best need a place for the models: add --artifacts "
                "file:///dir or --artifacts s3://bucket/prefix"
            )
        _cache(storage)[study_id] = None
        return None
    wanted = ArtifactSettings(
        url=validate_artifacts_url(url or (stored.url if stored else "")),
        save_models=save_models or (stored.save_models if stored else "best"),
        keep_best=keep_best if keep_best is not None else (stored.keep_best if stored else 1),
    )
    if wanted != stored:
        if stored is not None and stored.url != wanted.url:
            # Models already saved stay where they are; only new ones go to the new store.
            log.warning("the study's artifact store changes from %s to %s", stored.url, wanted.url)
        storage.set_study_system_attr(study_id, ARTIFACTS_ATTR, wanted.to_json())
    store = open_artifact_store(wanted.url)
    store.probe()
    _cache(storage)[study_id] = (wanted, store)
    return wanted


def study_artifacts(
    storage: BaseStorage, study_id: int, url: str | None = None
) -> tuple[ArtifactSettings, FleetArtifactStore] | None:
    """The study's artifact settings and store (``url`` overrides the stored one: the same store
    seen from another machine), or None when it has none."""
    cached = _cache(storage)
    if url is None and study_id in cached:
        return cached[study_id]
    settings = _settings(storage.get_study_system_attrs(study_id).get(ARTIFACTS_ATTR))
    if url is not None:
        settings = ArtifactSettings(
            url, *(() if settings is None else (settings.save_models, settings.keep_best))
        )
    found = None if settings is None else (settings, open_artifact_store(settings.url))
    if url is None:
        cached[study_id] = found
    return found


def _study_tag(study_name: str) -> str:
    return hashlib.sha256(study_name.encode()).hexdigest()[:8]


def _trial_number(artifact_id: str) -> int | None:
    parts = artifact_id.split("-")
    try:
        return int(parts[1], 16) if len(parts) > 2 else None
    except ValueError:
        return None


_warned_no_store: set[int] = set()


def _target(trial: Any) -> tuple[ArtifactSettings, FleetArtifactStore] | None:
    if not isinstance(trial, optuna.Trial):
        return None  # a FixedTrial (rescore) or a FrozenTrial: nothing to save into
    return study_artifacts(trial.storage, trial.study._study_id)


def saving_models(trial: Any) -> bool:
    """Whether the trial's models should be saved: the study has a store, and --save-models is
    not none (False for a FixedTrial, as rescore uses)."""
    found = _target(trial)
    return found is not None and found[0].save_models != "none"


def save(
    trial: optuna.Trial, data: str | os.PathLike[str] | bytes, name: str | None = None
) -> str | None:
    """Save a file (a path) or ``bytes`` as an artifact of ``trial``; returns its artifact id.

    Call it in the objective, before returning the value: the artifact is then in the store
    before the trial is COMPLETE. With no store (``--artifacts``) or ``--save-models none``
    nothing is saved and None is returned. ``name`` is the file name readers get back (default:
    the path's). Example::

        def objective(trial):
            model = train(trial.suggest_float("lr", 1e-4, 1e-1, log=True))
            tunefleet.artifacts.save(trial, pickle.dumps(model), "model.pkl")
            return model.score
    """
    found = _target(trial)
    if found is None or found[0].save_models == "none":
        if found is None and isinstance(trial, optuna.Trial):
            study_id = trial.study._study_id
            if study_id not in _warned_no_store:
                _warned_no_store.add(study_id)
                log.warning("the study has no artifact store (--artifacts): nothing is saved")
        return None
    store = found[1]
    if isinstance(data, bytes):
        if not name:
            raise ValueError("tunefleet.artifacts.save: give a name for bytes, as in 'model.pkl'")
        body: Any = io.BytesIO(data)
    else:
        name = name or Path(data).name
        body = open(data, "rb")  # noqa: SIM115 - closed below
    artifact_id = f"{_study_tag(trial.study.study_name)}-{trial.number:x}-{uuid.uuid4()}"
    try:
        store.write(artifact_id, body)
    finally:
        body.close()
    mimetype, encoding = mimetypes.guess_type(name)
    meta = ArtifactMeta(artifact_id, name, mimetype or "application/octet-stream", encoding)
    try:
        trial.storage.set_trial_system_attr(
            trial._trial_id, ARTIFACTS_ATTR_PREFIX + artifact_id, json.dumps(asdict(meta))
        )
    except BaseException:
        # The trial was finished meanwhile (declared lost): leave nothing behind.
        _remove(store, artifact_id)
        raise
    return artifact_id


def save_model(trial: Any, files: Mapping[str, bytes], value: float, **metrics: Any) -> list[str]:
    """What a built-in saves: its model file(s) and ``metrics.json`` (value, params, settings)."""
    if not saving_models(trial):
        return []
    summary = {
        "trial": trial.number,
        "value": value,
        **metrics,
        "params": trial.params,
        "user_attrs": trial.user_attrs,
        "files": sorted(files),
    }
    ids = [save(trial, body, name) for name, body in files.items()]
    ids.append(save(trial, json.dumps(summary, indent=2, default=str).encode(), "metrics.json"))
    return [i for i in ids if i]


def _remove(store: FleetArtifactStore, artifact_id: str) -> None:
    with contextlib.suppress(ArtifactNotFound):
        store.remove(artifact_id)


def _kept(study: optuna.Study, trials: list[FrozenTrial], settings: ArtifactSettings) -> set[int]:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if settings.save_models == "all":
        return {t.number for t in complete}
    if len(study.directions) > 1:
        return {t.number for t in study.best_trials}
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    # A total order (value, then number), so every worker picks the same best k.
    ranked = sorted(complete, key=lambda t: (sign * float(t.values[0]), t.number))
    return {t.number for t in ranked[: settings.keep_best]}


def tidy(study: optuna.Study, forget: Any = None) -> int:
    """Remove the artifacts of finished trials that are not kept; returns how many.

    ``forget(trial_id, keys)`` deletes the trials' ``artifacts:<id>`` attributes first, so no
    trial points at a removed object (``FleetStorage.forget_trial_system_attrs``).
    """
    found = study_artifacts(study._storage, study._study_id)
    if found is None or found[0].save_models == "none":
        return 0
    settings, store = found
    by_number: dict[int, list[str]] = {}
    for artifact_id in store.list(_study_tag(study.study_name) + "-"):
        number = _trial_number(artifact_id)
        if number is not None:
            by_number.setdefault(number, []).append(artifact_id)
    if not by_number:
        return 0
    trials = study.get_trials(deepcopy=False)
    kept = _kept(study, trials, settings)
    finished = {t.number: t for t in trials if t.state.is_finished()}
    removed = 0
    for number, ids in by_number.items():
        trial = finished.get(number)
        if trial is None or number in kept:
            continue  # running (or not yet seen): its artifacts are being written
        keys = [ARTIFACTS_ATTR_PREFIX + i for i in ids]
        if forget is not None and any(k in trial.system_attrs for k in keys):
            forget(trial._trial_id, keys)
        for artifact_id in ids:
            _remove(store, artifact_id)
            removed += 1
    if removed:
        log.info("removed %d artifacts of trials no longer kept", removed)
    return removed


def kept_twin(storage: BaseStorage, study_id: int, best: FrozenTrial) -> FrozenTrial:
    """The trial whose artifacts stand for ``best``: itself, or on a tie (Optuna picks any of
    the trials with the best value) the lowest-numbered one with artifacts, which is the one
    :func:`tidy` keeps."""
    if artifact_names(best):
        return best
    twins = [
        t
        for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values == best.values and artifact_names(t)
    ]
    return min(twins, key=lambda t: t.number) if twins else best


def artifact_location(url: str, artifact_id: str) -> str:
    """Where an artifact lies, as a URL: ``file:///dir/<id>`` or ``s3://bucket/prefix/<id>``."""
    return f"{url.rstrip('/')}/{artifact_id}"


def artifact_names(trial: FrozenTrial) -> list[str]:
    """The file names of a trial's artifacts, from its attributes (no store access)."""
    names = []
    for key, value in trial.system_attrs.items():
        if key.startswith(ARTIFACTS_ATTR_PREFIX) and value:
            meta = json.loads(value) if isinstance(value, str) else value
            if meta:
                names.append(str(meta.get("filename", key[len(ARTIFACTS_ATTR_PREFIX) :])))
    return sorted(names)


def download_trial(
    storage: BaseStorage, trial: FrozenTrial, store: FleetArtifactStore, dest: Path
) -> list[Path]:
    """Fetch every artifact of ``trial`` into ``dest`` under its file name.

    Raises:
        ConfigError: a file of that name is already there.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for meta in get_all_artifact_meta(trial, storage=storage):
        path = dest / Path(meta.filename).name
        try:
            download_artifact(
                artifact_store=store, file_path=str(path), artifact_id=meta.artifact_id
            )
        except FileExistsError:
            raise ConfigError(
                f"{path} already exists: remove it, or give --download another directory"
            ) from None
        written.append(path)
    return written
