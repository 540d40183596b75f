"""Keep secrets out of everything tunefleet prints, logs or stores.

A storage URL's password is registered here as soon as the URL is parsed; :func:`redact` then
replaces it in any text, and :class:`RedactingFilter` does the same for every log record. Masking
the URL alone is not enough: drivers and user code may echo a DSN or password in their own words.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any
from urllib.parse import quote, unquote

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()

# Where a URL's password may sit: after "scheme://user:" up to the authority's last "@" (an
# unencoded "@" in a password is common), or as a libpq "password=" parameter, in a query string
# or a key=value DSN. Found by scanning for the literal markers, so the cost is linear in the
# text's length: a regex that tries a scheme at every letter is quadratic on a long line.
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_AUTHORITY_END = re.compile(r"[\s/?#]")
_PASSWORD_PARAM = re.compile(r"(?i)\bpassword\s*=\s*")
_PARAM_END = re.compile(r"[&\s#]")


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
    if "://" in text:
        text = _mask_userinfo(text)
    if "assword" in text or "ASSWORD" in text:
        text = _mask_password_params(text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _mask_userinfo(text: str) -> str:
    out: list[str] = []
    done = 0  # text[:done] is in out
    start = text.find("://")
    while start != -1:
        scheme = start
        while scheme > 0 and start - scheme < 32 and text[scheme - 1] in _SCHEME_CHARS:
            scheme -= 1
        authority = start + 3
        end_match = _AUTHORITY_END.search(text, authority)
        end = end_match.start() if end_match else len(text)
        if scheme < start and authority >= done:
            at = text.rfind("@", authority, end)
            colon = text.find(":", authority, at) if at != -1 else -1
            if colon != -1:
                out.append(text[done : colon + 1])
                out.append(MASK)
                done = at
        start = text.find("://", max(end, start + 3))
    out.append(text[done:])
    return "".join(out)


def _mask_password_params(text: str) -> str:
    out: list[str] = []
    done = 0
    for match in _PASSWORD_PARAM.finditer(text):
        value = match.end()
        if value < done:
            continue
        quote_char = text[value : value + 1]
        if quote_char in ("'", '"'):
            close = text.find(quote_char, value + 1)
            end = len(text) if close == -1 else close + 1
        else:
            end_match = _PARAM_END.search(text, value)
            end = end_match.start() if end_match else len(text)
        if end > value:
            out.append(text[done:value])
            out.append(MASK)
            done = end
    out.append(text[done:])
    return "".join(out)


def redact_values(value: Any) -> Any:
    """``value`` with :func:`redact` applied to every string in it (dicts, lists, nested)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_values(v) for v in value]
    return value


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
