"""The storage seam on both stores: race-free first start, Optuna's conformance suite, stock
Optuna reading and writing tunefleet's studies."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator

import optuna
import pytest
from optuna.storages import BaseStorage
from optuna.testing.pytest_storages import StorageTestCase
from optuna.trial import TrialState
from sqlalchemy import create_engine, inspect, text

from tunefleet.config import StudySpec
from tunefleet.errors import StorageError
from tunefleet.objectives import load_objective
from tunefleet.storage import open_storage
from tunefleet.study import open_study

from .conftest import DATA, require, tunefleet
from .pgbouncer import PgBouncer, find_pgbouncer


def _open_and_create(url: str, barrier: mp.synchronize.Barrier, queue: mp.Queue[str]) -> None:
    try:
        barrier.wait(timeout=60)
        storage = open_storage(url)
        objective = load_objective(f"{DATA / 'objectives.py'}:quadratic")
        fleet_study = open_study(storage, StudySpec(study="race", n_trials=5), objective)
        queue.put(f"ok {fleet_study.study_id}")
    except BaseException as exc:  # report everything, including the UniqueViolation we prevent
        queue.put(f"error {type(exc).__name__}: {exc}")


def test_eight_workers_start_at_once_on_an_empty_database(storage_url: str) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(8)
    queue: mp.Queue[str] = ctx.Queue()
    procs = [
        ctx.Process(target=_open_and_create, args=(storage_url, barrier, queue)) for _ in range(8)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(r.startswith("ok") for r in results), results
    assert len({r.split()[1] for r in results}) == 1, "all workers must share one study"
    storage = open_storage(storage_url)
    assert [s.study_name for s in storage.optuna.get_all_studies()] == ["race"]
    names = set(inspect(storage.engine).get_table_names())
    assert {
        "studies",
        "trials",
        "tunefleet_studies",
        "tunefleet_claims",
        "tunefleet_workers",
    } <= names


@pytest.mark.parametrize("engine", ["fast", "stock"])
def test_a_fleet_needs_one_server_connection_at_a_time(
    pg_url: str, pg_admin_url: str, engine: str
) -> None:
    """Nothing tunefleet does holds a transaction open while it waits for a second connection.

    Behind a transaction-mode pooler whose server connections are all taken, such a wait lasts
    until the pooler gives up. With one server connection the first wait would; stock Optuna's
    own schema check (a session open while it reads the version on another connection) did.
    """
    require(find_pgbouncer() is not None, "pgbouncer not installed: apt-get install pgbouncer")
    bouncer = PgBouncer(pg_admin_url, pool_size=1, query_wait_timeout=15).start()
    try:
        url = bouncer.url(pg_url.rpartition("/")[2])
        args = ["run", f"{DATA / 'objectives.py'}:quadratic", "--storage", url, "--json"]
        args += ["--storage-engine", engine]
        result = tunefleet(*args, "--study", "one", "--n-trials", "20", "--workers", "3")
        assert result.returncode == 0, result.stderr
        stock = optuna.load_study(study_name="one", storage=pg_url)
        assert len(stock.get_trials(states=[TrialState.COMPLETE])) == 20
    finally:
        bouncer.close()


def test_tables_from_another_optuna_version_get_a_clear_error(storage_url: str) -> None:
    open_storage(storage_url).close()
    engine = create_engine(storage_url)
    with engine.begin() as conn:  # as `optuna storage upgrade` would find an old schema
        conn.execute(text("UPDATE alembic_version SET version_num = 'v3.0.0.d'"))
    engine.dispose()
    with pytest.raises(StorageError, match=r"optuna storage upgrade --storage URL") as error:
        open_storage(storage_url)
    assert "schema v3.0.0.d" in str(error.value)
    result = tunefleet("worker", f"{DATA / 'objectives.py'}:quadratic", "--storage", storage_url)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "made by another Optuna version" in result.stderr


@pytest.fixture
def storage(storage_url: str) -> Iterator[BaseStorage]:
    fleet_storage = open_storage(storage_url)
    yield fleet_storage.optuna
    fleet_storage.close()


class TestOptunaConformance(StorageTestCase):
    """Optuna's own storage test suite, run against what ``open_storage`` returns."""


def test_stock_optuna_reads_and_writes_a_tunefleet_study(storage_url: str) -> None:
    storage = open_storage(storage_url)
    objective = load_objective(f"{DATA / 'objectives.py'}:quadratic")
    fleet_study = open_study(storage, StudySpec(study="shared", n_trials=3), objective)
    fleet_study.study.optimize(objective, n_trials=2)
    # A plain URL, as a user would type it: SQLAlchemy picks psycopg 3 for postgresql://.
    plain = storage_url.replace("postgresql+psycopg://", "postgresql://")
    stock = optuna.load_study(study_name="shared", storage=plain)
    assert len(stock.trials) == 2
    stock.optimize(lambda t: t.suggest_float("x", -10, 10) ** 2, n_trials=1)
    assert len(fleet_study.study.trials) == 3
    optuna.delete_study(study_name="shared", storage=plain)
    assert optuna.get_all_study_names(storage=plain) == []
