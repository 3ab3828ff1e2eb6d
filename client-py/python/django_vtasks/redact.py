"""Secrets never appear in errors or logs: the one place that masks them.

A broker URL may carry a password (``valkey://user:s3cret@host:6379/0``, a Postgres DSN
``postgres://app:s3cret@db/app`` or ``password=s3cret`` in a key/value DSN). Every message vtasks
builds from a URL or a DSN goes through :func:`redact_url`, and text that may quote one (an error
of a client library) through :func:`redact`.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

# scheme://[user][:password]@host...: the password part of any URL-like string in a text
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)(?P<pw>[^\s@/]+)(?=@)")
# password=... in a libpq key/value DSN or a URL query string
_KV_PASSWORD = re.compile(
    r"(?P<head>\b(?:password|passwd|pass)\s*=\s*)(?P<pw>'[^']*'|[^\s&]+)", re.IGNORECASE
)


def redact_url(url: str | None) -> str:
    """``url`` with its password (userinfo or ``password=`` query/DSN field) replaced by ***."""
    if not url:
        return ""
    url = str(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    if parts.scheme and parts.password is not None:
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        url = urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
    return _KV_PASSWORD.sub(lambda m: m["head"] + MASK, url)


def redact(text: object, *secrets: str | None) -> str:
    """``text`` (str() of it: an exception, say) with URL passwords, ``password=`` fields and
    each given secret masked."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, str(text))
    text = _KV_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    for secret in secrets:
        if secret and len(secret) >= 3:  # a 1-2 character "secret" would mask half the text
            text = text.replace(secret, MASK)
    return text
