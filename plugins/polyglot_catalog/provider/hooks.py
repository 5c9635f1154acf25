"""Qdrant hook that adds embedded local mode to the official provider's ``QdrantHook``.

``QdrantHook`` 1.6.1 only builds server clients (it never passes ``path``/``location``), and it fails
when ``qdrant_default`` does not exist. This subclass keeps the provider's connection type and form,
and adds: ``extra.path`` / ``extra.location`` select local mode; when no Qdrant connection is
configured at all (``qdrant_default`` absent, a fresh machine) an embedded store under
``$POLYGLOT_DATA_DIR/qdrant`` is used and said once, so the demo and single-machine installs need no
server. A *named* connection that does not exist is an error (``AirflowNotFoundException``), as in
the provider: a typo in ``conn_id`` must never send rows to a disk nobody reads. Server clients get
short connect/read timeouts (extra ``connect_timeout`` / ``read_timeout``, or ``timeout`` for both).
"""

from __future__ import annotations

import os
import time
import weakref
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.qdrant.hooks.qdrant import QdrantHook
from airflow.sdk.exceptions import AirflowNotFoundException

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

DATA_DIR_ENV = "POLYGLOT_DATA_DIR"
FALLBACK_MSG = "No Qdrant connection configured (%r is not defined): using embedded Qdrant (%s) at %s"
LOCAL_MODE_MSG = "Connection %r selects embedded Qdrant (%s) at %s"
NOT_FOUND_MSG = (
    "Qdrant connection {conn_id!r} is not defined. Define it (Admin > Connections, or "
    "AIRFLOW_CONN_{env}), fix the name, or leave conn_id at {default!r} to use the embedded store "
    "when no connection is configured"
)
SERVER_MODE_MSG = "Connection %r selects a Qdrant server"
LOCK_WAIT_MSG = "Embedded Qdrant at %s is held by another task; waiting up to %.0fs for it"
# Connection extra keys that shape new collections on a Qdrant cluster (numbers; and a flag).
CLUSTER_EXTRAS = ("shard_number", "replication_factor")
SHARD_BY_REGION = "shard_by_region"

# Paths whose fallback was already announced in this process: "said once in the log".
_ANNOUNCED: set[str] = set()
# Embedded folders a hook of this process holds open: waiting on one of them would only time out.
# Weak: a hook dropped without close() lets its client go (and close) with it.
_HELD: weakref.WeakValueDictionary[str, PolyglotQdrantHook] = weakref.WeakValueDictionary()
HELD_MSG = (
    "embedded Qdrant at {path} is held by another hook in this process ({holder!r}), which was not "
    "closed: use `with PolyglotQdrantHook(...) as hook:` or call hook.close() when done"
)


def data_dir() -> Path:
    """Data root (embedded Qdrant, reports): ``$POLYGLOT_DATA_DIR``, else ``$AIRFLOW_HOME/polyglot_data``.

    Anchored on an environment variable rather than the working directory, because Airflow workers
    and ``dag.test()`` do not share a predictable cwd.
    """
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    airflow_home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return Path(airflow_home).expanduser() / "polyglot_data"


def optional_positive_int(value: Any, name: str) -> int | None:
    """``None`` for an empty value, else a positive int; templated and JSON values arrive as strings too."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "None", "null")):
        return None
    try:
        number = int(str(value).strip()) if not isinstance(value, bool) else 0
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{name} must be a positive integer or empty; got {value!r}")
    return number


def optional_bool(value: Any, name: str) -> bool | None:
    """``None`` for an empty value, else a flag; templated and JSON values arrive as strings too.
    Anything but a clear yes or no is an error: a misspelt flag must not shape a collection."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "none", "null"):
        return None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true, false or empty; got {value!r}")


def _engine(backend: str) -> str:
    """How the banner names an embedded engine (``edge`` is Qdrant's own engine in-process)."""
    return "qdrant-edge" if backend == "edge" else "qdrant-client local mode"


def default_local_path() -> Path:
    """Where the embedded store lives when no connection is configured."""
    return data_dir() / "qdrant"


class PolyglotQdrantHook(QdrantHook):
    """
    ``QdrantHook`` with local mode and an embedded fallback.

    Resolution order for :meth:`get_conn`:

    1. connection ``conn_id`` with ``extra.location`` (e.g. ``":memory:"``) -> ``QdrantClient(location=...)``;
    2. connection with ``extra.path`` -> ``QdrantClient(path=...)`` (local mode on disk);
    3. any other connection -> the provider's server client (host/port/url, API key from ``password``);
    4. ``qdrant_default`` not defined (no connection configured) -> the embedded store at
       ``local_path`` (default ``$POLYGLOT_DATA_DIR/qdrant``), logged once per process;
    5. any other connection id that is not defined -> ``AirflowNotFoundException``.

    ``conn`` is a ``QdrantClient`` in server mode and for a qdrant-client local folder; the embedded
    qdrant-edge engine gives an :class:`~polyglot_catalog.edge_store.EdgeClient`, which serves the
    subset of the client API listed in ``EdgeClient.SUPPORTED_METHODS`` (other calls raise
    ``NotImplementedError`` naming the method).

    Local mode holds a file lock, so one client per folder and process: use the hook as a context
    manager (``with PolyglotQdrantHook() as hook:``) or call :meth:`close` when done. A locked folder
    is waited for (up to ``lock_timeout`` seconds) so mapped tasks on one machine queue instead of
    failing.

    :param conn_id: Airflow connection id. Defaults to ``qdrant_default``.
    :param local_path: folder for the embedded fallback. Defaults to ``$POLYGLOT_DATA_DIR/qdrant``.
    :param lock_timeout: seconds to wait for a locked local folder. Defaults to 600.
    :param kwargs: passed to ``QdrantHook``.
    """

    hook_name = "Qdrant (polyglot-catalog)"
    lock_poll_seconds = 2.0

    def __init__(
        self,
        conn_id: str = QdrantHook.default_conn_name,
        *,
        local_path: str | os.PathLike[str] | None = None,
        lock_timeout: float = 600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(conn_id=conn_id, **kwargs)
        self.local_path = local_path
        self.lock_timeout = lock_timeout
        self.mode: str | None = None  # "server", "local" or "embedded" once get_conn() ran

    def _connection_or_none(self) -> Any | None:
        """The connection; None only for the default id (no connection configured at all).

        :raises AirflowNotFoundException: a named connection (not ``qdrant_default``) is not defined.
        """
        try:
            connection = self.get_connection(self.conn_id)
        except AirflowNotFoundException:
            if self.conn_id != self.default_conn_name:
                raise AirflowNotFoundException(
                    NOT_FOUND_MSG.format(
                        conn_id=self.conn_id, env=self.conn_id.upper(), default=self.default_conn_name
                    )
                ) from None
            return None
        from polyglot_catalog.errors import register_secret

        register_secret(getattr(connection, "password", None))  # scrubbed from every message we build
        return connection

    def get_conn(self) -> QdrantClient:
        """Build the client for the resolved mode (see the class docstring)."""
        from polyglot_catalog.edge_store import embedded_backend

        connection = self._connection_or_none()
        if connection is None:
            path = Path(self.local_path) if self.local_path else default_local_path()
            if str(path) not in _ANNOUNCED:
                _ANNOUNCED.add(str(path))
                self.log.info(FALLBACK_MSG, self.conn_id, _engine(embedded_backend(path)), path)
            self.mode = "embedded"
            return self._open_local(path=str(path))

        extra = connection.extra_dejson
        if extra.get("location") or extra.get("path"):
            target = str(extra.get("location") or extra.get("path"))
            self.log.info(LOCAL_MODE_MSG, self.conn_id, _engine(embedded_backend(target)), target)
            self.mode = "local"
            if extra.get("location"):
                return self._open_local(location=str(extra["location"]))
            return self._open_local(path=str(extra["path"]))

        # Server mode: the provider's client. Only the conn id is logged, never URL or API key.
        self.log.info(SERVER_MODE_MSG, self.conn_id)
        self.mode = "server"
        connect, read = self.timeouts(extra)
        client = super().get_conn()
        from polyglot_catalog.store import set_timeouts

        set_timeouts(client, connect=connect, read=read)
        return client

    def timeouts(self, extra: dict[str, Any] | None = None) -> tuple[float, float]:
        """(connect, read) seconds from the connection extra: ``connect_timeout`` and ``read_timeout``,
        or ``timeout`` for both; short defaults (store.DEFAULT_CONNECT_TIMEOUT / DEFAULT_READ_TIMEOUT).

        :raises ValueError: a timeout that is not a positive number of seconds.
        """
        from polyglot_catalog.store import DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT, check_timeout

        if extra is None:
            connection = self._connection_or_none()
            extra = connection.extra_dejson if connection is not None else {}
        both = extra.get("timeout")
        connect = extra.get("connect_timeout", both if both is not None else DEFAULT_CONNECT_TIMEOUT)
        read = extra.get("read_timeout", both if both is not None else DEFAULT_READ_TIMEOUT)
        return (
            check_timeout(connect, f"{self.conn_id} extra connect_timeout"),
            check_timeout(read, f"{self.conn_id} extra read_timeout"),
        )

    def collection_options(self) -> dict[str, Any]:
        """``shard_number`` / ``replication_factor`` / ``shard_by_region`` for new collections, from
        the connection extra.

        The cluster's shape is a deployment fact like its URL, so it lives in the connection (the
        docker-compose cluster profile sets it in ``AIRFLOW_CONN_QDRANT_DEFAULT``) rather than in every
        DAG. Keys that are absent are left out, so the server's defaults apply; no connection gives
        ``{}``. Local mode ignores the options anyway.

        :raises ValueError: an option is not a positive integer.
        """
        connection = self._connection_or_none()
        extra = connection.extra_dejson if connection is not None else {}
        options: dict[str, Any] = {
            key: optional_positive_int(extra.get(key), f"{self.conn_id} extra {key}")
            for key in CLUSTER_EXTRAS
        }
        flag = extra.get(SHARD_BY_REGION)
        options[SHARD_BY_REGION] = optional_bool(flag, f"{self.conn_id} extra {SHARD_BY_REGION}")
        return {key: value for key, value in options.items() if value is not None}

    def _open_local(self, *, path: str | None = None, location: str | None = None) -> QdrantClient:
        """Open the embedded store (:func:`.open_client`: qdrant-edge by default, or the engine the
        folder already holds), waiting while another client in this machine holds the folder."""
        from qdrant_client import QdrantClient

        from polyglot_catalog.store import open_client

        if location == ":memory:":
            return open_client(path=location)
        if location is not None:
            return QdrantClient(location=location)
        assert path is not None
        Path(path).mkdir(parents=True, exist_ok=True)
        key = str(Path(path).resolve())
        holder = _HELD.get(key)
        if holder is not None and holder is not self and "conn" in holder.__dict__:
            raise RuntimeError(HELD_MSG.format(path=path, holder=holder.conn_id))
        client = self._wait_for_folder(path)
        _HELD[key] = self
        self._held = key
        return client

    def _wait_for_folder(self, path: str) -> QdrantClient:
        """Open ``path``, waiting while another process holds it (up to ``lock_timeout``)."""
        from polyglot_catalog.store import open_client

        deadline = time.monotonic() + self.lock_timeout
        announced = False
        while True:
            try:
                return open_client(path=path)
            except RuntimeError as e:
                if "already accessed" not in str(e) or time.monotonic() >= deadline:
                    raise
                if not announced:
                    self.log.info(LOCK_WAIT_MSG, path, self.lock_timeout)
                    announced = True
                time.sleep(self.lock_poll_seconds)

    @cached_property
    def conn(self) -> QdrantClient:
        """The client, built once per hook."""
        return self.get_conn()

    def close(self) -> None:
        """Close the client if one was built; releases the local-mode folder lock for the next task."""
        client = self.__dict__.pop("conn", None)
        held = getattr(self, "_held", None)
        if held is not None and _HELD.get(held) is self:
            del _HELD[held]
        if client is not None:
            client.close()

    def __enter__(self) -> PolyglotQdrantHook:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def lookup(self, collection: str, region: str, sku: str) -> dict[str, Any]:
        """A product's group and its twin in every other region, from the match state in the payload
        (no model load); plain dicts, so a task can return it as XCom. See docs/MATCH_STATE.md.
        Call :meth:`close` when done, as after any use of an embedded store.

        :raises ValueError: no such product in the collection.
        """
        from polyglot_catalog.matching.state import lookup_product

        return lookup_product(self.conn, collection, region, sku)

    def _redact(self, message: str) -> str:
        """Remove secrets from a message (client errors may echo request headers)."""
        from polyglot_catalog.errors import scrub

        try:
            connection = self._connection_or_none()
        except AirflowNotFoundException:
            connection = None
        return scrub(message, [getattr(connection, "password", None)])

    def test_connection(self) -> tuple[bool, str]:
        """Check the store with one cheap call (``get_collections``); the message never holds secrets."""
        # ApiException covers UnexpectedResponse and ResponseHandlingException (connection refused),
        # which the provider's verify_connection lets escape.
        from grpc import RpcError
        from qdrant_client.http.exceptions import ApiException

        try:
            collections = self.conn.get_collections().collections
        except (ApiException, RpcError, ValueError, RuntimeError, OSError) as e:
            reason = self._redact(str(e).splitlines()[0] if str(e) else type(e).__name__)
            return False, f"Qdrant ({self.mode or 'unresolved'} mode) is not reachable: {reason}"
        finally:
            if self.mode in ("local", "embedded"):
                self.close()
        return True, f"Connection established ({self.mode} mode, {len(collections)} collections)"
