"""Keep secrets out of everything tunefleet prints, logs or stores.

A storage URL's password is registered here as soon as the URL is parsed; :func:`redact` then
replaces it in any text, and :class:`RedactingFilter` does the same for every log record. Masking
the URL alone is not enough: drivers and user code may echo a DSN or password in their own words.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import quote, unquote

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()

# user:password@ in any URL-looking text (postgresql://u:p@h, sqlite has none).
_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@"
)


def register_secret(secret: str | None) -> None:
    """Remember a secret so that :func:`redact` masks it wherever it appears."""
    if not secret or len(secret) < 3:
        # Masking one- or two-character strings would shred ordinary text; the URL pattern
        # below still masks such passwords where they appear inside a URL.
        return
    with _lock:
        _secrets.add(secret)
        _secrets.add(quote(secret, safe=""))
        _secrets.add(unquote(secret))


def redact(text: str) -> str:
    """Return ``text`` with every known secret and every URL password replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message and any exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
