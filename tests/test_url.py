from __future__ import annotations

from pathlib import Path

import pytest

from tunefleet._redact import redact
from tunefleet.errors import StorageError
from tunefleet.storage import display_url, parse_storage_url, resolve_storage_url


def test_flag_wins_over_environment() -> None:
    env = {"TUNEFLEET_STORAGE": "postgresql://a@h/x", "DATABASE_URL": "postgresql://b@h/y"}
    assert resolve_storage_url("sqlite:///f.db", env) == "sqlite:///f.db"


def test_tunefleet_storage_wins_over_database_url() -> None:
    env = {"TUNEFLEET_STORAGE": "postgresql://a@h/x", "DATABASE_URL": "postgresql://b@h/y"}
    assert resolve_storage_url(None, env) == "postgresql://a@h/x"


def test_database_url_is_used_when_alone() -> None:
    assert resolve_storage_url(None, {"DATABASE_URL": "postgresql://b@h/y"}) == (
        "postgresql://b@h/y"
    )


def test_embedded_store_in_working_directory_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_storage_url(None, {"DATABASE_URL": "  "}) == (
        f"sqlite:///{tmp_path / 'tunefleet.db'}"
    )


@pytest.mark.parametrize(
    "scheme", ["postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg"]
)
def test_every_postgres_spelling_uses_psycopg3(scheme: str) -> None:
    url = parse_storage_url(f"{scheme}://u:pw@db.example.com:6543/tuning?sslmode=require")
    assert url.drivername == "postgresql+psycopg"
    assert url.query["sslmode"] == "require"
    assert url.port == 6543


def test_display_url_masks_password_and_shows_plain_scheme() -> None:
    url = parse_storage_url("postgresql://me:s3cr3t-pw@db.example.com/tuning")
    shown = display_url(url)
    assert shown == "postgresql://me:***@db.example.com/tuning"


def test_registered_password_is_redacted_anywhere() -> None:
    parse_storage_url("postgresql://me:hunter2-xyz@db.example.com/tuning")
    assert redact("login failed with hunter2-xyz for me") == "login failed with *** for me"
    assert "hunter2" not in redact("postgresql://me:hunter2-xyz@db.example.com/tuning")


def test_password_inside_any_url_is_masked_even_if_never_registered() -> None:
    assert redact("connect postgresql://u:zz@h/db now") == "connect postgresql://u:***@h/db now"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "empty"),
        ("not a url", "malformed storage URL"),
        ("postgresql://u:pw@/db", "names no host"),
        ("postgresql://u:pw@host", "names no database"),
        ("mysql://u:pw@host/db", "unsupported storage 'mysql'"),
        ("sqlite://", "in-memory"),
    ],
)
def test_bad_urls_are_one_line_errors_without_password(raw: str, fragment: str) -> None:
    with pytest.raises(StorageError) as info:
        parse_storage_url(raw)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert ":pw@" not in message
