"""Qdrant access for the catalog: collection lifecycle, idempotent upserts, region-scoped reads.

One point per (region, sku) with one named vector per model. A model change goes into a new collection
(``switch_alias`` then points the match stage's alias at it once the re-embedding succeeded), so the
collection being read is never half old model, half new. Works the same on a server and in local mode.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Seconds to wait for a server to accept a connection, and for an answer to one request. Short, so a
#: dead or stalling server fails in well under a minute with its retries (4 tries x 10 s at worst);
#: raise the read timeout for very large batches on a busy server.
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_TIMEOUT = DEFAULT_READ_TIMEOUT
MAX_BACKOFF_SECONDS = 30.0  # one wait between retries never exceeds this, whatever max_retries is
INDEXED_FIELDS = ("region", "language", "status")
#: The field every vector search filters on: each of its values gets its own HNSW graph.
TENANT_FIELD = "region"
#: Edges per node of each region's graph (Qdrant's default ``m``).
REGION_GRAPH_M = 16
STALE = "stale"
ACTIVE = "active"


class UpsertError(RuntimeError):
    """A batch still failed after all retries; ``ids`` were not (reliably) written."""

    def __init__(self, collection: str, ids: Sequence[str], reason: str) -> None:
        self.ids = list(ids)
        self.reason = reason
        shown = ", ".join(self.ids[:5]) + (f", ... ({len(self.ids)} ids)" if len(self.ids) > 5 else "")
        super().__init__(f"upsert into {collection!r} failed for ids [{shown}]: {reason}")


def vector_name_for(model: str) -> str:
    """The named-vector key for a model: its name with anything outside [A-Za-z0-9_-] replaced."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", model)


def open_client(
    url: str | None = None,
    path: str | None = None,
    api_key: str | None = None,
    timeout: float = DEFAULT_READ_TIMEOUT,
    embedded: str | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> QdrantClient:
    """A client for a server (``url``) or local mode (``path``; ``":memory:"`` for a throwaway one).

    ``timeout`` is the read timeout of each request and ``connect_timeout`` the time to connect (see
    :func:`set_timeouts`); the API key is registered with :func:`.errors.register_secret`, so no message
    of this process shows it.

    ``embedded`` (or ``$POLYGLOT_EMBEDDED_STORE``) picks the engine behind ``path``: ``edge``
    (qdrant-edge, Qdrant's Rust engine in-process, see :mod:`.edge_store`) or ``local``
    (qdrant-client's local mode); a folder that already holds a store keeps its engine.

    Raises:
        ValueError: unless exactly one of ``url`` and ``path`` is given; an unknown ``embedded``.
    """
    if (url is None) == (path is None):
        raise ValueError(f"pass exactly one of url or path; got url={url!r}, path={path!r}")
    if url is not None:
        from .errors import register_secret

        register_secret(api_key)
        client = QdrantClient(url=url, api_key=api_key, timeout=math.ceil(timeout), check_compatibility=False)
        set_timeouts(client, connect=connect_timeout, read=timeout)
        return client
    from .edge_store import EdgeClient, embedded_backend

    if embedded_backend(path, embedded) == "edge":
        return EdgeClient(None if path == ":memory:" else path)  # type: ignore[return-value]
    if path == ":memory:":
        return QdrantClient(location=":memory:")
    return QdrantClient(path=path)


def check_timeout(value: Any, name: str) -> float:
    """A timeout in seconds: a positive, finite number (strings from templates and extras too)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds; got {value!r}") from None
    if not (0 < number <= 3600):
        raise ValueError(f"{name} must be in (0, 3600] seconds; got {value!r}")
    return number


def set_timeouts(client: Any, *, connect: float, read: float) -> None:
    """Give a server client separate connect and read timeouts.

    Why: ``QdrantClient`` takes one ``timeout`` for both, so a refused or unroutable host waits as
    long as a slow answer. The REST transport is an ``httpx.Client`` whose timeout can be set; gRPC
    calls keep the single (read) timeout. Local and embedded clients have no network: nothing to do.
    """
    import httpx

    connect, read = check_timeout(connect, "connect timeout"), check_timeout(read, "read timeout")
    inner = getattr(client, "_client", None)
    transport = getattr(getattr(getattr(inner, "openapi_client", None), "client", None), "_client", None)
    if isinstance(transport, httpx.Client):
        transport.timeout = httpx.Timeout(read, connect=connect)
    elif inner is not None and hasattr(inner, "rest_uri"):
        log.debug("qdrant-client's transport changed; connect timeout left at the read timeout")


def _match(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _region_filter(region: str | None, include_stale: bool) -> models.Filter | None:
    must = [_match("region", region)] if region is not None else []
    must_not = [] if include_stale else [_match("status", STALE)]
    return models.Filter(must=must, must_not=must_not) if must or must_not else None


_TRANSIENT_GRPC_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED")


def is_transient(error: BaseException) -> bool:
    """Worth retrying: connection trouble, timeouts, 429 and 5xx answers.

    A rejected request (4xx), bad input (ValueError: local mode's "not found", a wrong vector size)
    and our own bugs are not: retrying them only delays the same error.
    """
    if isinstance(error, UnexpectedResponse):
        return error.status_code is None or error.status_code == 429 or error.status_code >= 500
    if isinstance(error, ApiException | OSError | TimeoutError):  # REST transport errors wrap as ApiException
        return True
    try:
        import grpc
        import httpx
    except ImportError:  # pragma: no cover - both ship with qdrant-client
        return False
    if isinstance(error, httpx.TransportError):
        return True
    if isinstance(error, grpc.RpcError):
        code = getattr(error, "code", None)
        return callable(code) and getattr(code(), "name", None) in _TRANSIENT_GRPC_CODES
    return False


def describe_error(error: BaseException) -> str:
    """``Type: first line`` of an error, for messages and logs.

    Why only the first line: a Qdrant error response carries the raw server body, which a proxy may
    fill with the request's headers (the API key among them). Transport errors often have an empty
    message and say what happened in their cause, so that is used when the error itself is blank.
    """
    text = str(error).splitlines()[0] if str(error) else ""
    if not text and error.__cause__ is not None:
        text = str(error.__cause__).splitlines()[0] if str(error.__cause__) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _scrub_body(error: BaseException) -> None:
    """Remove secrets from a server response kept on the error (a proxy may echo the request's
    headers into it), so no traceback of it, wherever it is printed, shows the API key."""
    if isinstance(error, UnexpectedResponse) and isinstance(error.content, bytes | bytearray):
        from .errors import scrub

        error.content = scrub(bytes(error.content).decode("utf-8", "replace")).encode()


def _label(error: BaseException, what: str, attempts: int, collection: str) -> None:
    """Record on the error which call failed after how many attempts, for :func:`.errors.store_failure`
    (the error itself is raised unchanged: callers keep catching the client's own types)."""
    from .errors import ATTEMPTS_ATTR, COLLECTION_ATTR, OPERATION_ATTR

    for name, value in ((OPERATION_ATTR, what), (ATTEMPTS_ATTR, attempts), (COLLECTION_ATTR, collection)):
        try:
            setattr(error, name, value)
        except (AttributeError, TypeError):  # an exception type with __slots__: the message stays generic
            return


def _is_local(client: Any) -> bool:
    """Local mode (a path or ``:memory:``), which has no payload indexes and no HNSW."""
    from qdrant_client.local.qdrant_local import QdrantLocal

    return isinstance(getattr(client, "_client", None), QdrantLocal)


def _index_schema(name: str) -> models.KeywordIndexParams:
    """Keyword index of ``name``: the region is the tenant field (points stored together, one graph
    per region); the others only filter, so no graph is built for their values (``status=active``
    would otherwise get a second graph of the whole collection)."""
    tenant = name == TENANT_FIELD
    return models.KeywordIndexParams(
        type=models.KeywordIndexType.KEYWORD, is_tenant=tenant or None, enable_hnsw=tenant
    )


def _graph_restore(m: int | None, payload_m: int | None) -> models.HnswConfigDiff:
    """The HNSW settings to put back after a bulk load that found ``(m, payload_m)``.

    Both 0 is a bulk load that was killed before its restore: ``payload_m`` None is a collection made
    before region graphs (its loads only set ``m``), which gets its global graph back; 0 is a region
    graph collection, which gets those graphs back."""
    if m or payload_m:
        return models.HnswConfigDiff(m=m or 0, payload_m=payload_m)
    if payload_m is None:
        return models.HnswConfigDiff(m=REGION_GRAPH_M)
    return models.HnswConfigDiff(m=0, payload_m=REGION_GRAPH_M)


def single_region_warning(collection: str, regions: Sequence[str]) -> str | None:
    """A warning when a match run has fewer than two regions to compare (it can only find 0 pairs)."""
    if len(regions) >= 2:
        return None
    return (
        f"collection {collection!r} has {len(regions)} region(s) to match {sorted(regions)}: cross-region "
        "matching needs at least two, so the report will have no pairs (embed the other regions, or "
        "check --regions / the collection name)"
    )


def _rows_by_region(payloads: Sequence[Mapping[str, Any]], collection: str) -> dict[str, list[int]]:
    """Row numbers per payload ``region``, regions sorted (a collection sharded by region routes
    each write to its region's shard key, so a point without one has nowhere to go)."""
    rows: dict[str, list[int]] = {}
    for i, payload in enumerate(payloads):
        region = payload.get("region")
        if not isinstance(region, str) or not region:
            raise ValueError(
                f"point {i} of an upsert into {collection!r} has no region in its payload; "
                "the collection is sharded by region"
            )
        rows.setdefault(region, []).append(i)
    return dict(sorted(rows.items()))


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class CatalogStore:
    """Catalog operations on one collection (or alias) and one named vector.

    Args:
        client (QdrantClient): from :func:`open_client` or the Airflow hook.
        collection (str): collection or alias name.
        vector_name (str): named vector to write/read, see :func:`vector_name_for`.
        upsert_batch_size (int): points per upsert request. Defaults to 256.
        max_retries (int): retries of each server call (every read and write, one upsert batch at a
            time) that failed transiently (see :func:`is_transient`). Defaults to 3.
        backoff (float): first retry delay in seconds, doubled each retry and capped at
            ``MAX_BACKOFF_SECONDS``. Defaults to 0.5.
    """

    def __init__(
        self,
        client: QdrantClient,
        collection: str,
        vector_name: str,
        *,
        upsert_batch_size: int = 256,
        max_retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        self.client = client
        self.collection = collection
        self.vector_name = vector_name
        self.upsert_batch_size = upsert_batch_size
        self.max_retries = max_retries
        self.backoff = backoff
        # the region shard keys of a collection with custom sharding (empty set: none made yet),
        # False when it has none; None until asked (see _region_keys)
        self._keys: set[str] | bool | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the collection (or alias) exists."""
        return self._call("collection check", self.client.collection_exists, self.collection)

    def hnsw_graphs(self) -> tuple[int | None, int | None]:
        """The collection's HNSW ``(m, payload_m)``: the global graph's and the region graphs' edges
        per node (None: unset). New collections have ``(0, 16)``: one graph per region, no global
        graph (see :meth:`ensure_collection`); both are 0 while a bulk load runs or after one was killed."""
        info = self._call("collection info", self.client.get_collection, self.collection)
        config = getattr(info.config, "hnsw_config", None)
        return getattr(config, "m", None), getattr(config, "payload_m", None)

    def indexing_off(self) -> bool:
        """Whether no HNSW graph gets built: a bulk load is running, or one was killed before its end."""
        m, payload_m = self.hnsw_graphs()
        return m == 0 and not (payload_m if payload_m is not None else m)

    def ensure_collection(
        self,
        dim: int,
        *,
        quantization: bool = False,
        on_disk: bool = False,
        shard_number: int | None = None,
        replication_factor: int | None = None,
        write_consistency_factor: int | None = None,
        shard_by_region: bool = False,
    ) -> bool:
        """Create the collection if missing, else check it fits; returns True when it was created.

        Layout: one HNSW graph per region and none over the whole collection (Qdrant's multitenancy
        recipe: ``m=0``, ``payload_m=16``, the ``region`` keyword index marked ``is_tenant``). Every
        search of the catalog is filtered to one region, and at 100k points per region x 3 a
        filtered search on the global graph took 1.36x as long per query at ``hnsw_ef`` 256 for the
        same recall, and loading 1.17x as long (``bench/bench_store_layout.py``, bench/RESULTS.md).
        A search without a region filter scans the collection. Collections created before keep their
        global graph and still work.

        The cluster options only matter at creation (Qdrant cannot reshard an existing collection
        this way), so on an existing collection they are ignored rather than checked. Local mode
        ignores them too: it has a single shard and no replicas. Payload indexes missing from an
        existing collection are created, because a run killed between creating the collection and
        its indexes would otherwise leave region-filtered reads unindexed for good.

        Args:
            dim (int): vector size of the model.
            quantization (bool): int8 scalar quantisation (kept in RAM, originals on disk). Defaults to False.
            on_disk (bool): keep original vectors on disk. Defaults to False.
            shard_number (int | None): shards to split the collection into across cluster nodes.
                Defaults to None (the server's default).
            replication_factor (int | None): copies of each shard, so a node can fail without losing
                data. Defaults to None (the server's default, 1).
            write_consistency_factor (int | None): replicas that must acknowledge a write before it
                counts as done. Defaults to None (the server's default, 1).
            shard_by_region (bool): Qdrant's custom sharding with one shard key per region (each
                created on the region's first write, with ``shard_number`` shards and
                ``replication_factor`` copies): a region's points live on its own shards, so every
                region-filtered search, scroll and count reads only those, and a region can be placed
                or grown on its own nodes. Only a server shards; local mode has one shard and ignores
                it. Defaults to False (the server spreads points over ``shard_number`` shards by id).

        Raises:
            ValueError: the existing collection has another size or distance for this vector, or lacks
                the vector (a new model needs its own collection; see :meth:`switch_alias`).
        """
        if self.exists():
            self._check_existing(dim)
            if shard_by_region and self._region_keys() is None:
                log.warning(
                    "collection %s exists without region shard keys; shard_by_region only shapes new ones",
                    self.collection,
                )
            return False
        if shard_by_region and _is_local(self.client):
            log.info("collection %s: local mode has a single shard; shard_by_region ignored", self.collection)
        quant = (
            models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, always_ram=True)
            )
            if quantization
            else None
        )
        try:
            self._call(
                "create collection",
                self.client.create_collection,
                self.collection,
                vectors_config={
                    self.vector_name: models.VectorParams(
                        size=dim, distance=models.Distance.COSINE, on_disk=on_disk
                    )
                },
                quantization_config=quant,
                hnsw_config=models.HnswConfigDiff(m=0, payload_m=REGION_GRAPH_M),
                shard_number=shard_number,
                replication_factor=replication_factor,
                write_consistency_factor=write_consistency_factor,
                sharding_method=models.ShardingMethod.CUSTOM if shard_by_region else None,
            )
        except Exception:
            # Another writer (a parallel mapped task) created it first, or our own retried request
            # did and only its answer was lost: the collection is there, so check it as found.
            if not self.exists():
                raise
            log.info("collection %s was created concurrently; using it", self.collection)
            self._check_existing(dim)
            return False
        self._ensure_indexes({})
        log.info("created collection %s (%s: %d dims, cosine)", self.collection, self.vector_name, dim)
        return True

    def _check_existing(self, dim: int) -> None:
        """Check an existing collection fits, and add payload indexes a killed creation left out."""
        info = self._call("collection info", self.client.get_collection, self.collection)
        self._check(info.config.params.vectors, dim)
        created = self._ensure_indexes(info.payload_schema or {})
        if created and not _is_local(self.client):  # local mode keeps no indexes: nothing was missing
            log.warning(
                "collection %s lacked payload indexes %s (its creation was interrupted); created them",
                self.collection,
                created,
            )

    def _ensure_indexes(self, present: Mapping[str, Any]) -> list[str]:
        """Create the keyword indexes of ``INDEXED_FIELDS`` missing from ``present``; returns them."""
        missing = [name for name in INDEXED_FIELDS if name not in present]
        with warnings.catch_warnings():  # local mode warns that indexes do nothing there; harmless
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            for name in missing:
                self._call(
                    "payload index creation",
                    self.client.create_payload_index,
                    self.collection,
                    name,
                    _index_schema(name),
                )
        return missing

    def _check(self, vectors: Any, dim: int) -> None:
        named = vectors if isinstance(vectors, dict) else {"": vectors}
        if self.vector_name not in named:
            raise ValueError(
                f"collection {self.collection!r} has no vector {self.vector_name!r} (has {sorted(named)}); "
                "embed this model into a new collection and switch_alias() to it"
            )
        params = named[self.vector_name]
        if params.size != dim or params.distance != models.Distance.COSINE:
            raise ValueError(
                f"collection {self.collection!r} vector {self.vector_name!r}: expected size {dim} and "
                f"distance Cosine, found size {params.size} and distance {params.distance.value}; "
                "use another collection or drop this one"
            )

    @contextmanager
    def bulk_load(self) -> Iterator[None]:
        """Defer HNSW index building while loading (``m`` and ``payload_m`` 0, Qdrant's bulk upload
        guide) and restore the graphs after (see :func:`_graph_restore` for a killed load's leftover).

        A no-op in local mode, which has no HNSW index.
        """
        restore = _graph_restore(*self.hnsw_graphs())
        off = models.HnswConfigDiff(m=0, payload_m=None if restore.payload_m is None else 0)
        self._call("index update", self.client.update_collection, self.collection, hnsw_config=off)
        try:
            yield
        finally:
            self._call("index update", self.client.update_collection, self.collection, hnsw_config=restore)

    def switch_alias(self, alias: str, collection: str | None = None) -> None:
        """Atomically point ``alias`` at ``collection`` (default: this store's collection)."""
        target = collection or self.collection
        ops: list[models.AliasOperations] = []
        if any(a.alias_name == alias for a in self._call("alias lookup", self.client.get_aliases).aliases):
            ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        ops.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=target, alias_name=alias)
            )
        )
        self._call("alias update", self.client.update_collection_aliases, change_aliases_operations=ops)
        log.info("alias %s -> %s", alias, target)

    # -- region shard keys ------------------------------------------------------------------------

    def _region_keys(self) -> set[str] | None:
        """The shard keys made so far when the collection is sharded by region (custom sharding,
        :meth:`ensure_collection`'s ``shard_by_region``), else None. Asked once per store: a
        collection's sharding method never changes."""
        if self._keys is None:
            if not self.exists():
                return None  # not asked again until the collection is there
            info = self._call("collection info", self.client.get_collection, self.collection)
            method = getattr(info.config.params, "sharding_method", None)
            self._keys = method == models.ShardingMethod.CUSTOM and self._listed_keys()
        return self._keys if isinstance(self._keys, set) else None

    def _listed_keys(self) -> set[str]:
        listed = self._call("shard key list", self.client.list_shard_keys, self.collection).shard_keys
        return {str(k.key) for k in listed or ()}

    def _ensure_region_key(self, region: str, keys: set[str]) -> None:
        """Create ``region``'s shard key on its first write. Parallel mapped tasks may race to it:
        a failed creation is fine when the key is there after all."""
        if region in keys:
            return
        try:
            self._call("shard key creation", self.client.create_shard_key, self.collection, region)
        except Exception:
            keys |= self._listed_keys()
            if region not in keys:
                raise
        else:
            log.info("collection %s: created shard key %s", self.collection, region)
        keys.add(region)

    def _selector(self, region: str | None) -> dict[str, Any]:
        """``shard_key_selector`` for calls confined to ``region`` where the collection has region
        shard keys: the server then reads only that region's shards (the region filter stays)."""
        keys = self._region_keys() if region is not None else None
        return {} if keys is None or region not in keys else {"shard_key_selector": region}

    # -- writes ----------------------------------------------------------------------------------

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> int:
        """Write points in batches, retrying each failed batch with backoff; returns points written.

        Raises:
            UpsertError: a batch still failed after ``max_retries`` retries (earlier batches stay written).
        """
        if not (len(ids) == len(vectors) == len(payloads)):
            raise ValueError(
                f"ids, vectors, payloads differ in length: {len(ids)}, {len(vectors)}, {len(payloads)}"
            )
        keys = self._region_keys()
        if keys is None:
            return self._upsert(ids, vectors, payloads, {})
        written = 0
        for region, rows in _rows_by_region(payloads, self.collection).items():
            self._ensure_region_key(region, keys)
            written += self._upsert(
                [ids[i] for i in rows],
                np.asarray(vectors)[rows],
                [payloads[i] for i in rows],
                {"shard_key_selector": region},
            )
        return written

    def _upsert(
        self, ids: Sequence[str], vectors: Any, payloads: Sequence[dict[str, Any]], route: dict[str, Any]
    ) -> int:
        written = 0
        for part in _chunks(len(ids), self.upsert_batch_size):
            batch = models.Batch(
                ids=list(ids[part]),
                vectors={self.vector_name: np.asarray(vectors[part], dtype=np.float32).tolist()},
                payloads=list(payloads[part]),
            )
            self._with_retries(
                "upsert",
                functools.partial(self.client.upsert, self.collection, batch, wait=True, **route),
                ids=list(ids[part]),
            )
            written += part.stop - part.start
        return written

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, a server call, retried like every other (see :meth:`_with_retries`)."""
        return self._with_retries(what, functools.partial(fn, *args, **kwargs))

    def _with_retries(self, what: str, call: Callable[[], T], *, ids: Sequence[str] | None = None) -> T:
        """Run one server call; retry transient failures with doubling, capped backoff.

        Why every call and not just upserts: an outage shows first wherever the run happens to be
        (usually the first lookup), and each call here is idempotent (deterministic ids, set payload,
        delete, reads), so repeating it is safe. After the last attempt, or at once for an error that
        is not transient, the error is raised as it is; an upsert (``ids`` given) raises
        :class:`UpsertError` naming the batch instead. Logs show only the error's first line.
        """
        for attempt in range(self.max_retries + 1):
            try:
                return call()
            except Exception as e:  # transport errors differ between REST, gRPC and local mode
                _scrub_body(e)
                if attempt == self.max_retries or not is_transient(e):
                    _label(e, what, attempt + 1, self.collection)
                    if ids is not None:
                        raise UpsertError(self.collection, ids, describe_error(e)) from e
                    raise
                reason = describe_error(e)
            # Logged outside the except block: a failing log handler prints the exception being
            # handled, and that one may hold a server's response body.
            delay = min(self.backoff * 2**attempt, MAX_BACKOFF_SECONDS)
            log.warning(
                "Qdrant %s on collection %s failed (%s); retry %d/%d in %.1fs",
                what if ids is None else f"{what} of {len(ids)} points",
                self.collection,
                reason,
                attempt + 1,
                self.max_retries,
                delay,
            )
            time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        """Merge ``payload`` into the given points (e.g. ``{"status": "stale"}``)."""
        for part in _chunks(len(ids), self.upsert_batch_size):
            self._call(
                "payload update",
                self.client.set_payload,
                self.collection,
                payload=payload,
                points=list(ids[part]),
                wait=True,
            )

    def delete(self, ids: Sequence[str]) -> None:
        """Remove the given points."""
        for part in _chunks(len(ids), self.upsert_batch_size):
            self._call(
                "delete", self.client.delete, self.collection, points_selector=list(ids[part]), wait=True
            )

    # -- reads -----------------------------------------------------------------------------------

    def _retrieve(self, ids: Sequence[str], with_payload: Any, with_vectors: Any) -> list[Any]:
        """One retrieve of ``ids`` (missing ids are simply absent from the answer)."""
        if not ids:
            return []
        return self._call(
            "retrieve",
            self.client.retrieve,
            self.collection,
            list(ids),
            with_payload=with_payload,
            with_vectors=with_vectors,
        )

    def fetch_payloads(self, ids: Sequence[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Selected payload fields of the points that exist, in one retrieve without vectors."""
        return {str(r.id): r.payload or {} for r in self._retrieve(ids, list(fields), False)}

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` that exist, in one retrieve without payload or vectors."""
        return {str(r.id) for r in self._retrieve(ids, False, False)}

    def fetch_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Float32 vectors of the points that exist (missing ids are simply absent)."""
        return {
            str(r.id): np.asarray(
                r.vector[self.vector_name] if isinstance(r.vector, dict) else r.vector, np.float32
            )
            for r in self._retrieve(ids, False, [self.vector_name])
        }

    def fetch_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        """``content_hash`` of the points that exist (missing ids are simply absent)."""
        found = self.fetch_payloads(ids, ["content_hash"])
        return {pid: p["content_hash"] for pid, p in found.items() if "content_hash" in p}

    def regions(self) -> list[str]:
        """Distinct regions in the collection, sorted."""
        hits = self._call(
            "facet", self.client.facet, self.collection, "region", limit=10_000, exact=True
        ).hits
        return sorted(str(h.value) for h in hits)

    def scroll_region(
        self,
        region: str,
        with_vectors: bool = True,
        batch_size: int = 1024,
        *,
        include_stale: bool = False,
        payload_fields: Sequence[str] | None = None,
    ) -> Iterator[tuple[list[dict[str, Any]], np.ndarray]]:
        """Page through one region: payload dicts (with ``id`` added) and float32 vectors (n, d).

        Stale points are skipped unless ``include_stale``; without vectors the array has shape (n, 0).
        ``payload_fields`` limits the payload to those keys (e.g. ``["sku"]`` for the vanished scan, so
        texts do not cross the network); None returns it all.
        """
        route = self._selector(region)
        offset = None
        while True:
            records, offset = self._call(
                "scroll",
                self.client.scroll,
                self.collection,
                scroll_filter=_region_filter(region, include_stale),
                limit=batch_size,
                offset=offset,
                with_payload=True if payload_fields is None else list(payload_fields),
                with_vectors=[self.vector_name] if with_vectors else False,
                **route,
            )
            if records:
                payloads = [{**(r.payload or {}), "id": str(r.id)} for r in records]
                if with_vectors:
                    vectors = np.asarray([r.vector[self.vector_name] for r in records], dtype=np.float32)
                else:
                    vectors = np.empty((len(records), 0), dtype=np.float32)
                yield payloads, vectors
            if offset is None:
                return

    def query_region(
        self,
        vectors: np.ndarray,
        region: str,
        k: int,
        *,
        include_stale: bool = False,
        requests_per_call: int = 64,
        fields: Sequence[str] | None = None,
        hnsw_ef: int | None = None,
    ) -> list[list[tuple[dict[str, Any], float]]]:
        """Top-``k`` neighbours in ``region`` for each query vector: (payload with ``id``, score) lists.

        ``fields`` limits the payload returned (whole payloads carry every description and dominate
        the cost of a query on a large catalog); an empty ``fields`` returns ids and scores only
        (the matcher maps ids to rows: fetching even ``sku`` cost 10-19% of a search,
        bench_query_hits.py). ``hnsw_ef`` is the HNSW search beam (Qdrant's default is the
        collection's ``ef_construct``, 100): a region filter keeps a third of the graph's nodes, and
        recall@10 at 300k points fell to 0.89 with the default (bench/RESULTS.md)."""
        query_filter = _region_filter(region, include_stale)
        with_payload: bool | list[str] = True if fields is None else (list(fields) or False)
        params = None if hnsw_ef is None else models.SearchParams(hnsw_ef=int(hnsw_ef))
        shard_key = self._selector(region).get("shard_key_selector")
        results: list[list[tuple[dict[str, Any], float]]] = []
        vectors = np.asarray(vectors, dtype=np.float32)
        for part in _chunks(len(vectors), requests_per_call):
            requests = [
                models.QueryRequest(
                    query=v.tolist(),
                    using=self.vector_name,
                    filter=query_filter,
                    limit=k,
                    with_payload=with_payload,
                    params=params,
                    **({} if shard_key is None else {"shard_key": shard_key}),
                )
                for v in vectors[part]
            ]
            if hasattr(self.client, "query_batch_hits"):  # the embedded engine: plain tuples, no models
                hits = self._call("query", self.client.query_batch_hits, self.collection, requests)
                results.extend(
                    [({**payload, "id": pid}, score) for pid, payload, score in row] for row in hits
                )
                continue
            responses = self._call(
                "query", self.client.query_batch_points, self.collection, requests=requests
            )
            for response in responses:
                results.append([({**(p.payload or {}), "id": str(p.id)}, p.score) for p in response.points])
        return results

    def count(self, region: str | None = None, *, status: str | None = None) -> int:
        """Exact number of points, optionally within one region and/or status."""
        must = [_match(k, v) for k, v in (("region", region), ("status", status)) if v is not None]
        flt = models.Filter(must=must) if must else None
        route = self._selector(region)
        count = self._call("count", self.client.count, self.collection, count_filter=flt, exact=True, **route)
        return count.count

    def stats(self) -> dict[str, Any]:
        """JSON-safe counts: ``{"points": n, "stale": s, "regions": {region: n}}``."""
        if not self.exists():
            return {"points": 0, "stale": 0, "regions": {}}
        return {
            "points": self.count(),
            "stale": self.count(status=STALE),
            "regions": {r: self.count(r) for r in self.regions()},
        }
