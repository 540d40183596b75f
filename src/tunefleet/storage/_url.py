"""Storage URLs: where they come from, how they are normalised, how they are shown."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import sqlalchemy.exc
from sqlalchemy.engine import URL, make_url

from tunefleet._redact import redact, register_secret
from tunefleet.errors import StorageError

__all__ = [
    "EMBEDDED_FILENAME",
    "STORAGE_ENV_VARS",
    "display_url",
    "parse_storage_url",
    "resolve_storage_url",
]

#: The embedded store's file, created in the working directory when no URL is given.
EMBEDDED_FILENAME = "tunefleet.db"

#: Environment variables read, in order, when ``--storage`` is not given.
STORAGE_ENV_VARS = ("TUNEFLEET_STORAGE", "DATABASE_URL")

# One driver for PostgreSQL: psycopg 3, a dependency of tunefleet. Every spelling of a Postgres URL
# (Neon hands out postgresql://, Heroku postgres://, old code postgresql+psycopg2://) maps to it,
# so a plain URL works without the user knowing which DBAPI SQLAlchemy would have guessed.
_POSTGRES_DRIVERS = {
    "postgres",
    "postgresql",
    "postgresql+psycopg",
    "postgresql+psycopg2",
    "postgres+psycopg",
    "postgres+psycopg2",
}
_EXPECTED = "expected postgresql://user:password@host:5432/dbname or sqlite:///path/to/file.db"


def resolve_storage_url(flag: str | None, environ: Mapping[str, str] | None = None) -> str:
    """Pick the storage URL: ``--storage``, else the environment, else the embedded store."""
    environ = os.environ if environ is None else environ
    if flag:
        return flag
    for name in STORAGE_ENV_VARS:
        value = environ.get(name, "").strip()
        if value:
            return value
    return f"sqlite:///{Path.cwd() / EMBEDDED_FILENAME}"


def parse_storage_url(raw: str) -> URL:
    """Parse and normalise a storage URL; register its password so it is never printed."""
    raw = raw.strip()
    if not raw:
        raise StorageError(f"the storage URL is empty: {_EXPECTED}")
    try:
        url = make_url(raw)
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        shown = display_url(raw)
        raise StorageError(f"malformed storage URL '{shown}': {_EXPECTED}") from exc
    register_secret(url.password)
    query_password = url.query.get("password")
    for value in [query_password] if isinstance(query_password, str) else query_password or ():
        register_secret(value)
    if url.password or query_password:
        # The whole URL is a secret too: tracebacks and driver messages may quote it verbatim.
        register_secret(raw)
    if url.host and "@" in url.host:
        raise StorageError(
            f"the storage URL '{display_url(raw)}' has an '@' in its password: write it "
            "percent-encoded as %40 (postgresql://user:p%40ss@host/db)"
        )

    if url.drivername in _POSTGRES_DRIVERS:
        url = url.set(drivername="postgresql+psycopg")
        if not url.host and "host" not in url.query:
            raise StorageError(f"storage URL '{display_url(url)}' names no host: {_EXPECTED}")
        if not url.database:
            raise StorageError(
                f"storage URL '{display_url(url)}' names no database: add /dbname, "
                "as in postgresql://user:password@host:5432/dbname"
            )
        return url
    if url.drivername in {"sqlite", "sqlite+pysqlite"}:
        if not url.database or url.database == ":memory:":
            raise StorageError(
                "an in-memory SQLite store cannot be shared by workers: "
                "give a file, as in sqlite:///tunefleet.db"
            )
        return url.set(drivername="sqlite")
    raise StorageError(
        f"unsupported storage '{url.drivername}' in '{display_url(url)}': tunefleet stores "
        f"studies in PostgreSQL or in an embedded SQLite file; {_EXPECTED}"
    )


def display_url(url: URL | str) -> str:
    """The URL as it may be shown: password masked, driver name as the user would write it."""
    if isinstance(url, str):
        raw = url
        try:
            url = make_url(raw)
        except (sqlalchemy.exc.ArgumentError, ValueError):
            return redact(raw)
    if url.drivername == "postgresql+psycopg":
        url = url.set(drivername="postgresql")
    # redact() also masks a libpq password=... in the query string, which SQLAlchemy shows.
    return redact(url.render_as_string(hide_password=True))
