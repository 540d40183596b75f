"""A pytest plugin that runs Optuna's own tests on tunefleet's storages.

Loaded into a pytest run over the test files of Optuna's sdist (``-p tunefleet_optuna_suite``; see
tests/test_optuna_suite.py, which fetches them). It replaces ``STORAGE_MODES`` and
``StorageSupplier`` of ``optuna.testing.storages`` before Optuna's test modules import them, so
every test parametrised by storage runs on storages from ``tunefleet.storage.open_storage``:

* ``tunefleet_embedded`` — the embedded SQLite store;
* ``tunefleet_pg_fast``, ``tunefleet_pg_stock`` — PostgreSQL, fast path and stock engine;
* ``tunefleet_pgbouncer`` — PostgreSQL (fast path) through a transaction-mode PgBouncer;
* ``..._ask`` — the same, with every trial Optuna would create (``create_new_trial`` without a
  template, what ``study.ask()`` calls) created by ``FleetStorage.ask_trial`` instead: the budget
  claim and the trial in tunefleet's own ask, the path workers use.

Each supplier gets a fresh database (PostgreSQL: a new database, dropped afterwards; embedded: a
new file). Tests that exercise no storage (in-memory only) are deselected. ``EXPECTED_FAILURES``
lists, with reasons, the tests that fail for reasons that are not incompatibilities; they are
strict expected failures, so one that starts passing must come off the list.

Environment: ``TUNEFLEET_SUITE_PG_ADMIN`` (a superuser URL), ``TUNEFLEET_SUITE_PGBOUNCER`` (the
PgBouncer's URL without a database name), ``TUNEFLEET_SUITE_MODES`` (comma-separated modes).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
import optuna.testing.storages as optuna_storages
import psycopg
import pytest
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial
from psycopg import sql
from sqlalchemy.engine import Engine

from tunefleet.storage import FleetStorage, Ledger, open_storage

WORKER_ID = "optuna-suite"


@dataclass(frozen=True)
class Mode:
    backend: str  # embedded, postgres, pgbouncer
    engine: str  # auto, fast, stock
    ask: bool = False


MODES = {
    "tunefleet_embedded": Mode("embedded", "auto"),
    "tunefleet_pg_fast": Mode("postgres", "fast"),
    "tunefleet_pg_stock": Mode("postgres", "stock"),
    "tunefleet_pgbouncer": Mode("pgbouncer", "fast"),
    "tunefleet_embedded_ask": Mode("embedded", "auto", ask=True),
    "tunefleet_pg_fast_ask": Mode("postgres", "fast", ask=True),
    "tunefleet_pg_stock_ask": Mode("postgres", "stock", ask=True),
    "tunefleet_pgbouncer_ask": Mode("pgbouncer", "fast", ask=True),
}

_TAGGED = (
    "a trial made by tunefleet's ask carries tunefleet's system attribute tunefleet:worker; the "
    "test asserts the exact set of system attributes (or dataframe columns)"
)
_REUSED_ID = (
    "SQLite reuses a deleted study's id, as RDBStorage does: Optuna exempts RDBStorage from this "
    "assertion by type"
)
_DEEPCOPY = (
    "the fast path copies trials with a cheaper equivalent of copy.deepcopy (its copies share "
    "nothing mutable: tests/test_storage_contract.py); the test counts copy.deepcopy calls"
)
#: Tests that fail for reasons that are not incompatibilities: (test name, storage modes, reason),
#: the names and modes as shell-style patterns.
EXPECTED_FAILURES: list[tuple[str, str, str]] = [
    ("test_create_new_trial", "*_ask", _TAGGED),
    ("test_set_trial_system_attr", "*_ask", _TAGGED),
    ("test_lazy_trial_system_attrs", "*_ask", _TAGGED),
    ("test_trials_dataframe*", "*_ask", _TAGGED),
    ("test_get_trials", "tunefleet_embedded*", _DEEPCOPY),
    ("test_get_trials", "tunefleet_pg_fast*", _DEEPCOPY),
    ("test_get_trials", "tunefleet_pgbouncer*", _DEEPCOPY),
    ("test_create_new_study_unique_id", "tunefleet_embedded*", _REUSED_ID),
]


def _selected_modes() -> list[str]:
    raw = os.environ.get("TUNEFLEET_SUITE_MODES", "")
    modes = [m.strip() for m in raw.split(",") if m.strip()] or list(MODES)
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown TUNEFLEET_SUITE_MODES {sorted(unknown)}: use {list(MODES)}")
    return modes


# -- fresh stores --------------------------------------------------------------------------------


# Each store is a copy of one made by open_storage at the first use: creating the schema anew
# for each of hundreds of tests would be most of the suite's time.
_templates: dict[str, str] = {}
_ROOT = tempfile.mkdtemp(prefix="tunefleet-optuna-suite-")


def _template(backend: str) -> str:
    """The template store (a file, or a database name) for ``backend``, made once."""
    kind = "embedded" if backend == "embedded" else "postgres"
    if kind not in _templates:
        if kind == "embedded":
            path = os.path.join(_ROOT, "template.db")
            open_storage(f"sqlite:///{path}", db_wait=30).close()
            _templates[kind] = path
        else:
            admin = os.environ["TUNEFLEET_SUITE_PG_ADMIN"]
            name = f"tunefleet_suite_tpl_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            _templates[kind] = name
            open_storage(admin.rpartition("/")[0] + "/" + name, db_wait=30).close()
    return _templates[kind]


def pytest_sessionfinish(session: pytest.Session) -> None:
    name = _templates.get("postgres")
    if name is not None:
        with psycopg.connect(os.environ["TUNEFLEET_SUITE_PG_ADMIN"], autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    shutil.rmtree(_ROOT, ignore_errors=True)


@contextmanager
def fresh_url(backend: str) -> Iterator[str]:
    """A URL to a new store of ``backend`` with tunefleet's schema and no studies; removed
    afterwards."""
    template = _template(backend)
    if backend == "embedded":
        root = tempfile.mkdtemp(dir=_ROOT)
        try:
            shutil.copyfile(template, os.path.join(root, "tunefleet.db"))
            yield f"sqlite:///{root}/tunefleet.db"
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    admin = os.environ["TUNEFLEET_SUITE_PG_ADMIN"]
    name = f"tunefleet_suite_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    try:
        if backend == "pgbouncer":
            yield os.environ["TUNEFLEET_SUITE_PGBOUNCER"].rstrip("/") + "/" + name
        else:
            yield admin.rpartition("/")[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# -- the ask-routed storages -------------------------------------------------------------------


def _engine_of(storage: Any) -> Engine:
    for _ in range(4):
        for attr in ("_engine", "engine"):
            engine = getattr(storage, attr, None)
            if isinstance(engine, Engine):
                return engine
        storage = getattr(storage, "_inner", None) or getattr(storage, "_backend", None)
    raise TypeError("no SQLAlchemy engine under this storage")


class _AskRouted:
    """Trials without a template are created by ``FleetStorage.ask_trial``, as a worker's are;
    templated ones (``study.add_trial``, ``enqueue_trial``) as before."""

    __slots__ = ()

    def _tf_fleet(self) -> tuple[FleetStorage, dict[int, optuna.Study]]:
        state = self.__dict__.get("_tf_state")
        if state is None:
            storage: Any = self
            engine = _engine_of(storage)
            retrier = storage._retrier
            fleet = FleetStorage(
                url=engine.url,
                optuna=storage,
                ledger=Ledger(engine, retrier),
                engine=engine,
                retrier=retrier,
            )
            state = self.__dict__["_tf_state"] = (fleet, {})
        return state  # type: ignore[no-any-return]

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        base: Any = super()
        if template_trial is not None:
            return int(base.create_new_trial(study_id, template_trial))
        fleet, studies = self._tf_fleet()
        study = studies.get(study_id)
        if study is None:
            name = base.get_study_name_from_id(study_id)  # KeyError for an unknown study
            fleet.ledger.ensure_study(study_id, None, None)
            study = optuna.Study(
                study_name=name, storage=self, sampler=optuna.samplers.RandomSampler()
            )
            studies[study_id] = study
        asked = fleet.ask_trial(study, WORKER_ID)
        assert asked is not None, "no budget slot on an unlimited study"
        return int(asked[1]._trial_id)

    def delete_study(self, study_id: int) -> None:
        self._tf_fleet()[1].pop(study_id, None)
        base: Any = super()
        base.delete_study(study_id)

    def __getstate__(self) -> dict[str, Any]:
        base: Any = super()
        state = dict(base.__getstate__() or {})
        state.pop("_tf_state", None)
        return state


def route_asks(storage: BaseStorage) -> BaseStorage:
    """Turn ``storage`` into its ask-routed variant (a subclass, so ``pickle`` finds it here)."""
    base = type(storage)
    name = f"AskRouted{base.__name__}"
    routed = globals().get(name)
    if routed is None:
        routed = type(name, (_AskRouted, base), {"__module__": __name__})
        globals()[name] = routed
    twin: BaseStorage = routed.__new__(routed)
    twin.__dict__.update(storage.__dict__)
    return twin


# -- Optuna's StorageSupplier, extended --------------------------------------------------------


class TunefleetStorageSupplier(optuna_storages.StorageSupplier):
    """Optuna's supplier, plus tunefleet's storages (see ``MODES``)."""

    def __enter__(self) -> Any:
        mode = MODES.get(self.storage_specifier)
        if mode is None:
            return super().__enter__()
        if self.extra_args:
            pytest.skip(f"tunefleet storages take no {sorted(self.extra_args)}")
        self._tf_url = fresh_url(mode.backend)
        url = self._tf_url.__enter__()
        self._tf_storage: FleetStorage | None = open_storage(url, db_wait=30, engine=mode.engine)
        storage = self._tf_storage.optuna
        if mode.ask:
            storage = route_asks(storage)
        self.storage = storage
        return storage

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        fleet = getattr(self, "_tf_storage", None)
        if fleet is None:
            super().__exit__(exc_type, exc_val, exc_tb)
            return
        # A test may leave the store unusable; the database goes anyway.
        with contextlib.suppress(Exception):
            fleet.close()
        self._tf_storage = None
        self._tf_url.__exit__(exc_type, exc_val, exc_tb)


@contextmanager
def _with_server_storage() -> Iterator[BaseStorage]:
    """test_with_server.py's ``get_storage``, on tunefleet's fast path (``TEST_DB_URL``)."""
    fleet = open_storage(os.environ["TEST_DB_URL"], db_wait=30)
    try:
        yield fleet.optuna
    finally:
        fleet.close()


# Before Optuna's test modules import them: they do `from optuna.testing.storages import ...`.
optuna_storages.STORAGE_MODES[:] = _selected_modes()
optuna_storages.StorageSupplier = TunefleetStorageSupplier  # type: ignore[misc]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = set(MODES)
    keep: list[tuple[pytest.Item, str | None]] = []
    drop = []
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__.endswith("test_with_server"):
            module.get_storage = _with_server_storage
            keep.append((item, None))
            continue
        callspec = getattr(item, "callspec", None)
        values = callspec.params.values() if callspec else []
        modes = [v for v in values if isinstance(v, str) and v in ours]
        # A test on two storages (copy_study) runs on pairs of one mode, not the cross product.
        if modes and len(set(modes)) == 1:
            keep.append((item, modes[0]))
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = [item for item, _mode in keep]
    for item, mode in keep:
        name = getattr(item, "originalname", item.name)
        for name_pattern, mode_pattern, reason in EXPECTED_FAILURES:
            if (
                mode is not None
                and fnmatch.fnmatchcase(name, name_pattern)
                and fnmatch.fnmatchcase(mode, mode_pattern)
            ):
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
                break
