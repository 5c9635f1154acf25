"""Qdrant hook that adds embedded local mode to the official provider's ``QdrantHook``.

``QdrantHook`` 1.6.1 only builds server clients (it never passes ``path``/``location``), and it fails
when ``qdrant_default`` does not exist. This subclass keeps the provider's connection type and form,
and adds two things: ``extra.path`` / ``extra.location`` select local mode, and a missing connection
falls back to an embedded store under ``$POLYGLOT_DATA_DIR/qdrant`` so the demo and single-machine
installs need no Qdrant server.
"""

from __future__ import annotations

import os
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.qdrant.hooks.qdrant import QdrantHook
from airflow.sdk.exceptions import AirflowNotFoundException

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

DATA_DIR_ENV = "POLYGLOT_DATA_DIR"
FALLBACK_MSG = "Connection %r is not defined: using embedded Qdrant (local mode) at %s"
LOCAL_MODE_MSG = "Connection %r selects Qdrant local mode at %s"
SERVER_MODE_MSG = "Connection %r selects a Qdrant server"
LOCK_WAIT_MSG = "Embedded Qdrant at %s is held by another task; waiting up to %.0fs for it"
# Connection extra keys that shape new collections on a Qdrant cluster.
CLUSTER_EXTRAS = ("shard_number", "replication_factor")

# Paths whose fallback was already announced in this process: "said once in the log".
_ANNOUNCED: set[str] = set()


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
    4. no such connection -> local mode at ``local_path`` (default ``$POLYGLOT_DATA_DIR/qdrant``),
       logged once per process.

    Local mode holds a file lock, so one client per folder and process: call :meth:`close` when done.
    A locked folder is waited for (up to ``lock_timeout`` seconds) so mapped tasks on one machine queue
    instead of failing.

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
        try:
            return self.get_connection(self.conn_id)
        except AirflowNotFoundException:
            return None

    def get_conn(self) -> QdrantClient:
        """Build the client for the resolved mode (see the class docstring)."""
        connection = self._connection_or_none()
        if connection is None:
            path = Path(self.local_path) if self.local_path else default_local_path()
            if str(path) not in _ANNOUNCED:
                _ANNOUNCED.add(str(path))
                self.log.info(FALLBACK_MSG, self.conn_id, path)
            self.mode = "embedded"
            return self._open_local(path=str(path))

        extra = connection.extra_dejson
        if extra.get("location") or extra.get("path"):
            target = extra.get("location") or extra.get("path")
            self.log.info(LOCAL_MODE_MSG, self.conn_id, target)
            self.mode = "local"
            if extra.get("location"):
                return self._open_local(location=str(extra["location"]))
            return self._open_local(path=str(extra["path"]))

        # Server mode: the provider's client. Only the conn id is logged, never URL or API key.
        self.log.info(SERVER_MODE_MSG, self.conn_id)
        self.mode = "server"
        return super().get_conn()

    def collection_options(self) -> dict[str, int]:
        """``shard_number`` / ``replication_factor`` for new collections, from the connection extra.

        The cluster's shape is a deployment fact like its URL, so it lives in the connection (the
        docker-compose cluster profile sets it in ``AIRFLOW_CONN_QDRANT_DEFAULT``) rather than in every
        DAG. Keys that are absent are left out, so the server's defaults apply; no connection gives
        ``{}``. Local mode ignores the options anyway.

        :raises ValueError: an option is not a positive integer.
        """
        connection = self._connection_or_none()
        extra = connection.extra_dejson if connection is not None else {}
        options = {
            key: optional_positive_int(extra.get(key), f"{self.conn_id} extra {key}")
            for key in CLUSTER_EXTRAS
        }
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
        if client is not None:
            client.close()

    def lookup(self, collection: str, region: str, sku: str) -> dict[str, Any]:
        """A product's group and its twin in every other region, from the match state in the payload
        (no model load); plain dicts, so a task can return it as XCom. See docs/MATCH_STATE.md.
        Call :meth:`close` when done, as after any use of an embedded store.

        :raises ValueError: no such product in the collection.
        """
        from polyglot_catalog.matching.state import lookup_product

        return lookup_product(self.conn, collection, region, sku)

    def _redact(self, message: str) -> str:
        """Remove the connection's API key from a message (client errors may echo request details)."""
        connection = self._connection_or_none()
        secret = getattr(connection, "password", None) if connection is not None else None
        return message.replace(secret, "***") if secret else message

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
