"""Qdrant access for the catalog: collection lifecycle, idempotent upserts, region-scoped reads.

One point per (region, sku) with one named vector per model. A model change goes into a new collection
(``switch_alias`` then points the match stage's alias at it once the re-embedding succeeded), so the
collection being read is never half old model, half new. Works the same on a server and in local mode.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60
INDEXED_FIELDS = ("region", "language", "status")
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
    timeout: int = DEFAULT_TIMEOUT,
) -> QdrantClient:
    """A client for a server (``url``) or local mode (``path``; ``":memory:"`` for a throwaway one).

    Raises:
        ValueError: unless exactly one of ``url`` and ``path`` is given.
    """
    if (url is None) == (path is None):
        raise ValueError(f"pass exactly one of url or path; got url={url!r}, path={path!r}")
    if url is not None:
        return QdrantClient(url=url, api_key=api_key, timeout=timeout)
    if path == ":memory:":
        return QdrantClient(location=":memory:")
    return QdrantClient(path=path)


def _match(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _region_filter(region: str | None, include_stale: bool) -> models.Filter | None:
    must = [_match("region", region)] if region is not None else []
    must_not = [] if include_stale else [_match("status", STALE)]
    return models.Filter(must=must, must_not=must_not) if must or must_not else None


def _is_transient(error: Exception) -> bool:
    """Worth retrying: timeouts, connection trouble, 5xx/429. A rejected request (4xx, bad input) is not."""
    if isinstance(error, UnexpectedResponse):
        return error.status_code is None or error.status_code == 429 or error.status_code >= 500
    return not isinstance(error, ValueError | TypeError | KeyError)


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
        max_retries (int): retries per failed upsert batch. Defaults to 3.
        backoff (float): first retry delay in seconds, doubled each retry. Defaults to 0.5.
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

    # -- lifecycle -------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.client.collection_exists(self.collection)

    def ensure_collection(
        self,
        dim: int,
        *,
        quantization: bool = False,
        on_disk: bool = False,
        shard_number: int | None = None,
        replication_factor: int | None = None,
        write_consistency_factor: int | None = None,
    ) -> bool:
        """Create the collection if missing, else check it fits; returns True when it was created.

        The cluster options only matter at creation (Qdrant cannot reshard an existing collection
        this way), so on an existing collection they are ignored rather than checked. Local mode
        ignores them too: it has a single shard and no replicas.

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

        Raises:
            ValueError: the existing collection has another size or distance for this vector, or lacks
                the vector (a new model needs its own collection; see :meth:`switch_alias`).
        """
        if self.exists():
            self._check(dim)
            return False
        quant = (
            models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, always_ram=True)
            )
            if quantization
            else None
        )
        self.client.create_collection(
            self.collection,
            vectors_config={
                self.vector_name: models.VectorParams(
                    size=dim, distance=models.Distance.COSINE, on_disk=on_disk
                )
            },
            quantization_config=quant,
            shard_number=shard_number,
            replication_factor=replication_factor,
            write_consistency_factor=write_consistency_factor,
        )
        with warnings.catch_warnings():  # local mode warns that indexes do nothing there; harmless
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            for name in INDEXED_FIELDS:
                self.client.create_payload_index(self.collection, name, models.PayloadSchemaType.KEYWORD)
        log.info("created collection %s (%s: %d dims, cosine)", self.collection, self.vector_name, dim)
        return True

    def _check(self, dim: int) -> None:
        vectors = self.client.get_collection(self.collection).config.params.vectors
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
        """Defer HNSW index building while loading, restore it after (Qdrant's bulk upload guide).

        A no-op in local mode, which has no HNSW index.
        """
        m = self.client.get_collection(self.collection).config.hnsw_config.m
        self.client.update_collection(self.collection, hnsw_config=models.HnswConfigDiff(m=0))
        try:
            yield
        finally:
            self.client.update_collection(self.collection, hnsw_config=models.HnswConfigDiff(m=m or 16))

    def switch_alias(self, alias: str, collection: str | None = None) -> None:
        """Atomically point ``alias`` at ``collection`` (default: this store's collection)."""
        target = collection or self.collection
        ops: list[models.AliasOperations] = []
        if any(a.alias_name == alias for a in self.client.get_aliases().aliases):
            ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        ops.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=target, alias_name=alias)
            )
        )
        self.client.update_collection_aliases(change_aliases_operations=ops)
        log.info("alias %s -> %s", alias, target)

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
        written = 0
        for part in _chunks(len(ids), self.upsert_batch_size):
            batch = models.Batch(
                ids=list(ids[part]),
                vectors={self.vector_name: np.asarray(vectors[part], dtype=np.float32).tolist()},
                payloads=list(payloads[part]),
            )
            self._with_retries(
                list(ids[part]), lambda b=batch: self.client.upsert(self.collection, b, wait=True)
            )
            written += part.stop - part.start
        return written

    def _with_retries(self, ids: list[str], call: Any) -> None:
        for attempt in range(self.max_retries + 1):
            try:
                call()
                return
            except Exception as e:  # transport errors differ between REST, gRPC and local mode
                if attempt == self.max_retries or not _is_transient(e):
                    raise UpsertError(self.collection, ids, f"{type(e).__name__}: {e}") from e
                delay = self.backoff * 2**attempt
                log.warning(
                    "upsert of %d points failed (%s); retry %d in %.1fs", len(ids), e, attempt + 1, delay
                )
                time.sleep(delay)

    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        """Merge ``payload`` into the given points (e.g. ``{"status": "stale"}``)."""
        for part in _chunks(len(ids), self.upsert_batch_size):
            self.client.set_payload(self.collection, payload=payload, points=list(ids[part]), wait=True)

    def delete(self, ids: Sequence[str]) -> None:
        """Remove the given points."""
        for part in _chunks(len(ids), self.upsert_batch_size):
            self.client.delete(self.collection, points_selector=list(ids[part]), wait=True)

    # -- reads -----------------------------------------------------------------------------------

    def fetch_payloads(self, ids: Sequence[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Selected payload fields of the points that exist, in one retrieve without vectors."""
        if not ids:
            return {}
        records = self.client.retrieve(
            self.collection, list(ids), with_payload=list(fields), with_vectors=False
        )
        return {str(r.id): r.payload or {} for r in records}

    def fetch_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        """``content_hash`` of the points that exist (missing ids are simply absent)."""
        found = self.fetch_payloads(ids, ["content_hash"])
        return {pid: p["content_hash"] for pid, p in found.items() if "content_hash" in p}

    def regions(self) -> list[str]:
        """Distinct regions in the collection, sorted."""
        hits = self.client.facet(self.collection, "region", limit=10_000, exact=True).hits
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
        offset = None
        while True:
            records, offset = self.client.scroll(
                self.collection,
                scroll_filter=_region_filter(region, include_stale),
                limit=batch_size,
                offset=offset,
                with_payload=True if payload_fields is None else list(payload_fields),
                with_vectors=[self.vector_name] if with_vectors else False,
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
    ) -> list[list[tuple[dict[str, Any], float]]]:
        """Top-``k`` neighbours in ``region`` for each query vector: (payload with ``id``, score) lists."""
        query_filter = _region_filter(region, include_stale)
        results: list[list[tuple[dict[str, Any], float]]] = []
        vectors = np.asarray(vectors, dtype=np.float32)
        for part in _chunks(len(vectors), requests_per_call):
            requests = [
                models.QueryRequest(
                    query=v.tolist(), using=self.vector_name, filter=query_filter, limit=k, with_payload=True
                )
                for v in vectors[part]
            ]
            for response in self.client.query_batch_points(self.collection, requests=requests):
                results.append([({**(p.payload or {}), "id": str(p.id)}, p.score) for p in response.points])
        return results

    def count(self, region: str | None = None, *, status: str | None = None) -> int:
        """Exact number of points, optionally within one region and/or status."""
        must = [_match(k, v) for k, v in (("region", region), ("status", status)) if v is not None]
        flt = models.Filter(must=must) if must else None
        return self.client.count(self.collection, count_filter=flt, exact=True).count

    def stats(self) -> dict[str, Any]:
        """JSON-safe counts: ``{"points": n, "stale": s, "regions": {region: n}}``."""
        if not self.exists():
            return {"points": 0, "stale": 0, "regions": {}}
        return {
            "points": self.count(),
            "stale": self.count(status=STALE),
            "regions": {r: self.count(r) for r in self.regions()},
        }
