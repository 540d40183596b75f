"""Translate database errors into one-line messages that name the problem and the fix."""

from __future__ import annotations

import re

from sqlalchemy.engine import URL

from tunefleet._redact import redact
from tunefleet.errors import StorageError
from tunefleet.storage._url import display_url

__all__ = ["translate_db_error"]


def _root_message(exc: BaseException) -> str:
    """The innermost driver message: SQLAlchemy and Optuna wrap the driver's error."""
    seen: set[int] = set()
    inner: BaseException = exc
    while id(inner) not in seen:
        seen.add(id(inner))
        nxt = getattr(inner, "orig", None) or inner.__cause__ or inner.__context__
        if nxt is None:
            break
        inner = nxt
    text = str(inner).strip() or type(inner).__name__
    # Keep the first meaningful line; libpq puts details on later lines.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else text
    return redact(first)


def translate_db_error(exc: BaseException, url: URL) -> StorageError:
    """A :class:`StorageError` for ``exc``, raised while using the storage at ``url``."""
    message = _root_message(exc)
    shown = display_url(url)
    if url.get_backend_name() == "sqlite":
        if "unable to open database file" in message:
            return StorageError(
                f"cannot open the embedded store '{url.database}': check that its directory "
                "exists and is writable, or pass --storage"
            )
        if "file is not a database" in message:
            return StorageError(
                f"'{url.database}' is not a SQLite database: pass another file with --storage"
            )
        return StorageError(f"embedded store '{url.database}' failed: {message}")

    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    lowered = message.lower()
    if "password authentication failed" in lowered:
        return StorageError(
            f"PostgreSQL at {where} rejected the password for user '{url.username}': "
            "fix the user or password in the storage URL"
        )
    if "no password supplied" in lowered or "password is required" in lowered:
        return StorageError(
            f"PostgreSQL at {where} wants a password for user '{url.username}': "
            "add it to the storage URL (postgresql://user:password@host/db)"
        )
    match = re.search(r'database "([^"]+)" does not exist', message)
    if match:
        return StorageError(
            f"database '{match.group(1)}' does not exist on {where}: create it "
            f"(createdb {match.group(1)}) or fix the database name in the storage URL"
        )
    match = re.search(r'role "([^"]+)" does not exist', message)
    if match:
        return StorageError(
            f"user '{match.group(1)}' does not exist on {where}: fix the user in the storage URL"
        )
    unreachable = (
        "connection refused",
        "could not translate host name",
        "timeout expired",
        "no route to host",
        "name or service not known",
        "network is unreachable",
        "could not connect",
        "connection timed out",
        "server closed the connection",
    )
    if any(s in lowered for s in unreachable):
        return StorageError(
            f"cannot reach PostgreSQL at {where} ({message}): check the host and port in the "
            "storage URL and that the server is running"
        )
    if "ssl" in lowered or "certificate" in lowered or "channel binding" in lowered:
        return StorageError(
            f"TLS to PostgreSQL at {where} failed ({message}): check sslmode, sslrootcert and "
            "channel_binding in the storage URL"
        )
    if "permission denied" in lowered:
        return StorageError(
            f"user '{url.username}' may not create or change tunefleet's tables in {shown} "
            f"({message}): grant it CREATE on the schema, or use a user that has it"
        )
    return StorageError(f"storage {shown} failed: {message}")
