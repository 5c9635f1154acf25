"""One place that turns store and client errors into messages a user can act on, without secrets.

Why one place: every command, operator and hook used to word Qdrant failures on its own, and only
some of them cleaned out the API key that a server (or a proxy) echoes back in an error body. Here:

* :func:`scrub` removes secrets from any text: values registered with :func:`register_secret` (the
  API key, a connection password), credentials in URLs (``https://user:pass@host``), and values of
  header- or parameter-like keys (``api-key: ...``, ``Authorization: Bearer ...``, ``?token=...``).
* :func:`store_failure` words a failed store call: the endpoint, the operation, the attempts made and
  the error's first line (a response body never gets past its status line), scrubbed.
* :class:`ScrubbingFilter` applies :func:`scrub` to log records (message, arguments, tracebacks).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

#: Attributes the store sets on an error it gives up on (see ``CatalogStore._with_retries``).
OPERATION_ATTR = "polyglot_operation"
ATTEMPTS_ATTR = "polyglot_attempts"
COLLECTION_ATTR = "polyglot_collection"
MASK = "***"

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
_MIN_SECRET_CHARS = 4  # shorter values would mask ordinary words
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s:@]*(?::[^/\s@]*)?@")
_KEYED = re.compile(
    r"(?P<key>\b(?:api[-_]?key|x-api-key|authorization|proxy-authorization|password|passwd|secret|"
    r"access[-_]?token|refresh[-_]?token|token|cookie|set-cookie)\b['\"]?\s*[:=]\s*['\"]?)"
    r"(?P<value>(?:bearer\s+|basic\s+)?[^\s'\",;&}]+)",
    re.IGNORECASE,
)


def register_secret(value: str | None) -> None:
    """Remember a secret so :func:`scrub` removes it wherever it shows up in this process."""
    if value and len(value) >= _MIN_SECRET_CHARS:
        with _LOCK:
            _SECRETS.add(value)


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` without registered or given secrets, URL credentials and values of secret-named keys."""
    known = {s for s in (*_SECRETS, *secrets) if s and len(s) >= _MIN_SECRET_CHARS}
    for secret in sorted(known, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _KEYED.sub(lambda m: f"{m['key']}{MASK}", text)


def first_line(error: BaseException) -> str:
    """``Type: first line`` of an error; a blank transport error says what happened in its cause.

    Why the first line only: a Qdrant error response carries the raw server body, which a proxy may
    fill with the request's headers.
    """
    text = str(error).splitlines()[0] if str(error).strip() else ""
    if not text and error.__cause__ is not None and str(error.__cause__).strip():
        text = str(error.__cause__).splitlines()[0]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class StoreError(RuntimeError):
    """A store call failed; the message (from :func:`store_failure`) names endpoint and operation.

    Raised without its cause chained, because the cause may hold a server's response body.
    """


def is_store_error(error: BaseException) -> bool:
    """A failed store call: one the store gave up on, or a client/transport error (REST, gRPC).

    A bare ``OSError`` counts only when the store labelled it: a missing labels file or a full disk
    while writing a report is not a Qdrant failure.
    """
    from qdrant_client.http.exceptions import ApiException

    if isinstance(error, ApiException | TimeoutError | StoreError) or hasattr(error, OPERATION_ATTR):
        return True
    try:
        import grpc
        import httpx
    except ImportError:  # pragma: no cover - both ship with qdrant-client
        return False
    return isinstance(error, grpc.RpcError | httpx.HTTPError)


def store_failure(error: BaseException, endpoint: str, operation: str | None = None) -> str:
    """One message for a failed store call: endpoint, operation, attempts, first line; scrubbed.

    The operation and attempts come from the store when it retried the call; ``operation`` names
    the caller's step when the store did not (opening the client, a direct client call).
    """
    op = getattr(error, OPERATION_ATTR, None) or operation or "a store call"
    attempts = getattr(error, ATTEMPTS_ATTR, 1)
    collection = getattr(error, COLLECTION_ATTR, None)
    where = f" of collection {collection!r}" if collection else ""
    hint = _hint(error)
    return scrub(
        f"Qdrant at {endpoint} failed during {op}{where} after {attempts} attempt(s): "
        f"{first_line(error)}{hint}"
    )


def _hint(error: BaseException) -> str:
    text = str(error).lower()
    status = getattr(error, "status_code", None)
    if status in (401, 403):
        return " (check the API key: $QDRANT_API_KEY or the connection's password)"
    if "connection refused" in text or "name or service not known" in text:
        return " (is the server running, and are the host and port right?)"
    if "timed out" in text or isinstance(error, TimeoutError):
        return " (the server did not answer in time: raise the read/connect timeout or check the server)"
    return ""


def describe_endpoint(client: Any) -> str:
    """Where a client points: a URL without credentials or query, or a local folder. Never the key."""
    inner = getattr(client, "_client", None)
    uri = getattr(inner, "rest_uri", None)
    if isinstance(uri, str):
        return scrub(uri.split("?")[0])
    location = getattr(inner, "location", None) or getattr(client, "location", None)
    if location is not None:
        location = str(location)
        if location == ":memory:":
            return "in-memory local mode"
        engine = "qdrant-edge" if type(client).__name__ == "EdgeClient" else "local mode"
        return f"embedded Qdrant ({engine}) at {location}"
    return type(client).__name__


class ScrubbingFilter(logging.Filter):
    """A logging filter that removes secrets from each record before any handler formats it."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message, self.secrets)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info), self.secrets)
            record.exc_info = None
        return True
