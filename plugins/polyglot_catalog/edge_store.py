"""Embedded store on qdrant-edge: the QdrantClient calls the catalog makes, served by Qdrant's own engine.

Why: qdrant-client's local mode is a brute-force search in Python that keeps every point as Python
objects and, on a path, commits each point to SQLite; it warns above 20,000 points. qdrant-edge
(``qdrant-edge-py``) runs Qdrant's Rust segments in-process: WAL, payload indexes, HNSW, quantisation.
:class:`EdgeClient` implements the subset of the ``QdrantClient`` API that :mod:`polyglot_catalog.store`,
the embed stage and the matcher call (collections, aliases, upsert, retrieve, scroll, count, facet,
query, payload updates, delete), taking and returning ``qdrant_client.models`` objects, so
``CatalogStore`` and everything above it run unchanged. Servers keep using ``QdrantClient``.

Layout of a folder: ``edge/collections/<name>/`` is one edge shard per collection,
``edge/meta/<name>.json`` what the shard does not record in our terms (vector params, HNSW ``m`` for
``bulk_load``), ``edge/aliases.json`` the aliases. A ``.lock`` file held with ``flock`` keeps one client
per folder, with the same "already accessed" error as local mode so the hook's wait loop applies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import qdrant_edge as qe
from qdrant_client import QdrantClient, models
from qdrant_client.http import models as rest

from .names import check_store_name

log = logging.getLogger(__name__)

EDGE_DIR = "edge"
#: Build the HNSW index before a query once this many points are not in an indexed segment.
#: Why 10,000: brute force over n points costs ~n * 80 ns a query here and the matcher sends ~2 queries
#: per stored point, while building costs ~1 ms a point, so indexing pays from roughly 10-20k points.
AUTO_OPTIMIZE_UNINDEXED = 10_000
_DISTANCE = {
    models.Distance.COSINE: qe.Distance.Cosine,
    models.Distance.DOT: qe.Distance.Dot,
    models.Distance.EUCLID: qe.Distance.Euclid,
    models.Distance.MANHATTAN: qe.Distance.Manhattan,
}
_SCHEMA = {
    models.PayloadSchemaType.KEYWORD: qe.PayloadSchemaType.Keyword,
    models.PayloadSchemaType.INTEGER: qe.PayloadSchemaType.Integer,
    models.PayloadSchemaType.FLOAT: qe.PayloadSchemaType.Float,
    models.PayloadSchemaType.BOOL: qe.PayloadSchemaType.Bool,
    models.PayloadSchemaType.TEXT: qe.PayloadSchemaType.Text,
    models.PayloadSchemaType.DATETIME: qe.PayloadSchemaType.Datetime,
    models.PayloadSchemaType.UUID: qe.PayloadSchemaType.Uuid,
    models.PayloadSchemaType.GEO: qe.PayloadSchemaType.Geo,
}


def is_edge_folder(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` holds an edge store (as opposed to a qdrant-client local-mode folder)."""
    return (Path(path) / EDGE_DIR).is_dir()


def _pid(value: Any) -> Any:
    """Ids as the client API shows them: UUIDs as strings, integers as integers."""
    return str(value) if isinstance(value, uuid.UUID) else value


def _edge_id(value: Any) -> Any:
    """Edge takes integers and UUIDs; anything else is bad input (local mode raises ValueError too)."""
    if isinstance(value, int | uuid.UUID):
        return value
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"point id must be an unsigned integer or a UUID; got {value!r}") from None


def _match(match: Any) -> Any:
    if isinstance(match, models.MatchValue):
        return qe.MatchValue(match.value)
    if isinstance(match, models.MatchAny):
        return qe.MatchAny(list(match.any))
    if isinstance(match, models.MatchExcept):
        return qe.MatchExcept(list(match.except_))
    if isinstance(match, models.MatchText):
        return qe.MatchText(match.text)
    raise ValueError(f"edge store: unsupported match {type(match).__name__}")


def _condition(cond: Any) -> Any:
    if isinstance(cond, models.Filter):
        return _filter(cond)
    if isinstance(cond, models.FieldCondition):
        if cond.match is not None:
            return qe.FieldCondition(key=cond.key, match=_match(cond.match))
        if cond.range is not None:
            r = cond.range
            return qe.FieldCondition(
                key=cond.key, range=qe.RangeFloat(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt)
            )
        if cond.is_empty is not None or cond.is_null is not None:
            return qe.FieldCondition(key=cond.key, is_empty=cond.is_empty, is_null=cond.is_null)
        raise ValueError(f"edge store: unsupported field condition on {cond.key!r}")
    if isinstance(cond, models.HasIdCondition):
        return qe.HasIdCondition({_edge_id(i) for i in cond.has_id})
    if isinstance(cond, models.IsEmptyCondition):
        return qe.IsEmptyCondition(cond.is_empty.key)
    if isinstance(cond, models.IsNullCondition):
        return qe.IsNullCondition(cond.is_null.key)
    raise ValueError(f"edge store: unsupported condition {type(cond).__name__}")


def _conditions(value: Any) -> list[Any] | None:
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    return [_condition(c) for c in items]


def _filter(flt: models.Filter | None) -> qe.Filter | None:
    """``qdrant_client`` filter -> edge filter (must/should/must_not of field, id and nested filters)."""
    if flt is None:
        return None
    if flt.min_should is not None:
        raise ValueError("edge store: min_should filters are not supported")
    return qe.Filter(
        must=_conditions(flt.must), should=_conditions(flt.should), must_not=_conditions(flt.must_not)
    )


def _vector_list(vector: Any) -> list[float]:
    """A dense vector as a list; lists pass through as they are (``Batch`` already validated them,
    and converting 384 floats a point one by one cost more than the engine's write)."""
    if hasattr(vector, "tolist"):
        vector = vector.tolist()
    elif isinstance(vector, tuple):
        vector = list(vector)
    if not isinstance(vector, list) or (vector and not isinstance(vector[0], int | float)):
        raise ValueError(f"edge store: only dense vectors are supported; got {type(vector).__name__}")
    return vector


def _builds_graphs(meta: dict[str, Any]) -> bool:
    """Whether a collection's recorded HNSW settings build any graph (``payload_m`` unset means ``m``)."""
    m = meta.get("hnsw_m", 16)
    payload_m = meta.get("payload_m")
    return m > 0 or (payload_m if payload_m is not None else m) > 0


def _hnsw_config(config: models.HnswConfigDiff | None) -> qe.HnswIndexConfig | None:
    """The engine's HNSW settings from the client's (unset values: Qdrant's defaults)."""
    if config is None:
        return None
    return qe.HnswIndexConfig(
        m=16 if config.m is None else config.m,
        ef_construct=config.ef_construct or 100,
        full_scan_threshold=config.full_scan_threshold or 10_000,
        payload_m=config.payload_m,
    )


def _index_params(schema: Any) -> Any:
    """The engine's payload index schema from the client's type name or keyword parameters."""
    if isinstance(schema, models.KeywordIndexParams):
        return qe.KeywordIndexParams(
            is_tenant=schema.is_tenant, on_disk=schema.on_disk, enable_hnsw=schema.enable_hnsw
        )
    found = _SCHEMA.get(schema) if schema is not None else qe.PayloadSchemaType.Keyword
    if found is None:
        raise ValueError(f"edge store: unsupported payload index schema {schema!r}")
    return found


def _record(rec: Any) -> models.Record:
    # model_construct: the engine's output is already valid, and validating 384 floats a point
    # would cost more than the search itself
    return models.Record.model_construct(
        id=_pid(rec.id), payload=rec.payload, vector=rec.vector, shard_key=None, order_value=None
    )


def _scored(p: Any) -> models.ScoredPoint:
    return models.ScoredPoint.model_construct(
        id=_pid(p.id),
        version=p.version,
        score=p.score,
        payload=p.payload,
        vector=p.vector,
        shard_key=None,
        order_value=None,
    )


def _selector_ids(selector: Any) -> tuple[list[Any] | None, qe.Filter | None]:
    """Point selector (id list, ``PointIdsList``, ``FilterSelector`` or ``Filter``) -> (ids, filter)."""
    if isinstance(selector, models.PointIdsList):
        return [_edge_id(i) for i in selector.points], None
    if isinstance(selector, models.FilterSelector):
        return None, _filter(selector.filter)
    if isinstance(selector, models.Filter):
        return None, _filter(selector)
    return [_edge_id(i) for i in selector], None


_WRITE_PROTECTED = (errno.EACCES, errno.EPERM, errno.EROFS)


def _write_protected(location: Path, error: BaseException) -> PermissionError:
    """Why a write-protected folder cannot be opened (checked on a read-only mount: qdrant-edge maps
    its segment files for writing when it loads them, and the folder lock needs a writable file)."""
    return PermissionError(
        f"embedded Qdrant folder {location} is write-protected ({str(error).splitlines()[0]}): the "
        "embedded store (qdrant-edge) opens its lock and segment files for writing even to read, so "
        "stats and match need write access too. Copy the folder somewhere writable (cp -a) and point "
        "--qdrant-path there, or serve it with a Qdrant server"
    )


_DONE = models.UpdateResult.model_construct(operation_id=None, status=models.UpdateStatus.COMPLETED)


class EdgeClient:
    """The ``QdrantClient`` methods the catalog uses, over one qdrant-edge shard per collection.

    Not a ``QdrantClient`` subclass: it serves :data:`SUPPORTED_METHODS` (collections, aliases,
    upsert/upload, retrieve, scroll, count, facet, query, payload updates, delete, optimize, close);
    any other ``QdrantClient`` method raises :class:`UnsupportedCall` (a ``NotImplementedError``)
    naming it. It is a context manager and closes on ``__exit__``.

    Args:
        path (str | None): folder of the store; None gives a throwaway one in a temporary folder
            (the ``":memory:"`` equivalent), removed on :meth:`close`.

    Raises:
        RuntimeError: another client (this process or another) holds the folder; the message says
            "already accessed", like qdrant-client's local mode.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._temporary = path is None
        self.location = Path(tempfile.mkdtemp(prefix="polyglot-edge-")) if path is None else Path(path)
        self._root = self.location / EDGE_DIR
        try:
            self.location.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.location / ".lock", "a+")  # noqa: SIM115 - held for the client's life
        except OSError as e:
            if e.errno not in _WRITE_PROTECTED:
                raise
            raise _write_protected(self.location, e) from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise RuntimeError(
                f"Storage folder {self.location} is already accessed by another instance of Qdrant client."
                " If you require concurrent access, use Qdrant server instead."
            ) from None
        try:
            (self._root / "collections").mkdir(parents=True, exist_ok=True)
            (self._root / "meta").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self._lock.close()
            if e.errno not in _WRITE_PROTECTED:
                raise
            raise _write_protected(self.location, e) from None
        self._shards: dict[str, qe.EdgeShard] = {}
        self._checked: set[str] = set()  # collections whose index state is known good since last write
        self.closed = False

    # -- plumbing --------------------------------------------------------------------------------

    def _alive(self) -> None:
        if self.closed:
            raise RuntimeError("EdgeClient is closed. Please create a new instance.")

    def _aliases(self) -> dict[str, str]:
        file = self._root / "aliases.json"
        return json.loads(file.read_text()) if file.exists() else {}

    def _write_json(self, file: Path, data: Any) -> None:
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, file)  # atomic: a crash leaves the old or the new file, never half of one

    def _resolve(self, name: str) -> str:
        self._alive()
        check_store_name(name)  # '..' or 'a/b' would name a folder outside the collections
        if (self._root / "collections" / name).is_dir():
            return name
        target = self._aliases().get(name)
        if target is not None and (self._root / "collections" / target).is_dir():
            return target
        raise ValueError(f"Collection {name} not found")

    def _meta(self, name: str) -> dict[str, Any]:
        return json.loads((self._root / "meta" / f"{name}.json").read_text())

    def _shard(self, collection_name: str) -> tuple[str, qe.EdgeShard]:
        name = self._resolve(collection_name)
        shard = self._shards.get(name)
        if shard is None:
            try:
                shard = self._shards[name] = qe.EdgeShard.load(str(self._root / "collections" / name))
            except Exception as e:  # the engine raises plain Exception; a read-only folder is not a bug
                if not any(w in str(e) for w in ("Read-only file system", "Permission denied")):
                    raise
                raise _write_protected(self.location, e) from None
        return name, shard

    def _update(self, collection_name: str, op: Any) -> None:
        name, shard = self._shard(collection_name)
        try:
            shard.update(op)
        except Exception as e:  # the engine raises plain Exception; bad input must not look transient
            if any(w in str(e) for w in ("dimension error", "Wrong input", "Bad input", "Bad request")):
                raise ValueError(str(e)) from e
            raise
        self._checked.discard(name)

    def _ready_for_search(self, name: str, shard: qe.EdgeShard) -> None:
        """Build the HNSW index before searching when many points are not indexed yet (edge never
        optimises on its own: its optimizers only run when asked)."""
        if name in self._checked:
            return
        info = shard.info()
        if _builds_graphs(self._meta(name)) and (
            info.points_count - info.indexed_vectors_count >= AUTO_OPTIMIZE_UNINDEXED
        ):
            log.info("building the HNSW index of %s (%d points)", name, info.points_count)
            shard.optimize()
        self._checked.add(name)

    # -- collections -----------------------------------------------------------------------------

    def collection_exists(self, collection_name: str, **_: Any) -> bool:
        try:
            self._resolve(collection_name)
            return True
        except ValueError:
            return False

    def get_collections(self, **_: Any) -> models.CollectionsResponse:
        self._alive()
        names = sorted(p.name for p in (self._root / "collections").iterdir() if p.is_dir())
        return models.CollectionsResponse(collections=[models.CollectionDescription(name=n) for n in names])

    def create_collection(
        self,
        collection_name: str,
        vectors_config: models.VectorParams | dict[str, models.VectorParams],
        *,
        quantization_config: Any = None,
        hnsw_config: models.HnswConfigDiff | None = None,
        **_cluster_options: Any,
    ) -> bool:
        """Create a shard; shard/replication options are ignored (one shard, no replicas, as local mode).

        Raises:
            ValueError: the name exists or is not a safe folder name, or a vector config is unsupported.
        """
        self._alive()
        check_store_name(collection_name)
        if self.collection_exists(collection_name):
            raise ValueError(f"Collection {collection_name} already exists")
        named = vectors_config if isinstance(vectors_config, dict) else {"": vectors_config}
        quant = None
        if isinstance(quantization_config, models.ScalarQuantization):
            sq = quantization_config.scalar
            quant = qe.ScalarQuantizationConfig(
                qe.ScalarType.Int8, quantile=sq.quantile, always_ram=sq.always_ram
            )
        elif quantization_config is not None:
            raise ValueError(f"edge store: unsupported quantization {type(quantization_config).__name__}")
        config = qe.EdgeConfig(
            vectors={
                n: qe.EdgeVectorParams(size=p.size, distance=_DISTANCE[p.distance], on_disk=p.on_disk)
                for n, p in named.items()
            },
            quantization_config=quant,
            hnsw_config=_hnsw_config(hnsw_config),
        )
        meta: dict[str, Any] = {
            "vectors": {n: {"size": p.size, "distance": p.distance.value} for n, p in named.items()},
            "hnsw_m": (hnsw_config.m if hnsw_config is not None and hnsw_config.m is not None else 16),
        }
        if hnsw_config is not None and hnsw_config.payload_m is not None:
            meta["payload_m"] = hnsw_config.payload_m
        if _cluster_options.get("metadata"):
            meta["metadata"] = dict(_cluster_options["metadata"])
        self._write_json(self._root / "meta" / f"{collection_name}.json", meta)
        self._shards[collection_name] = qe.EdgeShard.create(
            str(self._root / "collections" / collection_name), config
        )
        return True

    def delete_collection(self, collection_name: str, **_: Any) -> bool:
        try:
            name = self._resolve(collection_name)
        except ValueError:
            return False
        shard = self._shards.pop(name, None)
        if shard is not None:
            shard.close()
        shutil.rmtree(self._root / "collections" / name)
        (self._root / "meta" / f"{name}.json").unlink(missing_ok=True)
        self._write_json(self._root / "aliases.json", {a: c for a, c in self._aliases().items() if c != name})
        return True

    def get_collection(self, collection_name: str, **_: Any) -> SimpleNamespace:
        """The parts of ``CollectionInfo`` the catalog reads: vector params, HNSW ``m``, counts."""
        name, shard = self._shard(collection_name)
        meta = self._meta(name)
        info = shard.info()
        vectors = {
            n: models.VectorParams(size=v["size"], distance=models.Distance(v["distance"]))
            for n, v in meta["vectors"].items()
        }
        return SimpleNamespace(
            status=models.CollectionStatus.GREEN,
            points_count=info.points_count,
            indexed_vectors_count=info.indexed_vectors_count,
            segments_count=info.segments_count,
            payload_schema={k: None for k in info.payload_schema},
            config=SimpleNamespace(
                params=SimpleNamespace(
                    vectors=vectors[""] if list(vectors) == [""] else vectors,
                    shard_number=None,
                    replication_factor=None,
                    write_consistency_factor=None,
                ),
                hnsw_config=SimpleNamespace(m=meta.get("hnsw_m", 16), payload_m=meta.get("payload_m")),
                metadata=meta.get("metadata"),
            ),
        )

    def update_collection(
        self,
        collection_name: str,
        *,
        hnsw_config: models.HnswConfigDiff | None = None,
        metadata: dict[str, Any] | None = None,
        **_: Any,
    ) -> bool:
        """Records HNSW ``m`` and ``payload_m`` (``bulk_load`` sets 0, then restores them); restoring a
        graph builds the index now, as a server would start indexing when the setting comes back.

        The engine builds the graphs its shard was created with: the recorded values only say
        whether it should build them (edge never indexes on its own)."""
        name, shard = self._shard(collection_name)
        if metadata:  # merged into what is stored, as Qdrant does
            meta = self._meta(name)
            meta["metadata"] = {**(meta.get("metadata") or {}), **metadata}
            self._write_json(self._root / "meta" / f"{name}.json", meta)
        if hnsw_config is not None and (hnsw_config.m is not None or hnsw_config.payload_m is not None):
            meta = self._meta(name)
            if hnsw_config.m is not None:
                meta["hnsw_m"] = hnsw_config.m
            if hnsw_config.payload_m is not None:
                meta["payload_m"] = hnsw_config.payload_m
            self._write_json(self._root / "meta" / f"{name}.json", meta)
            self._checked.discard(name)
            if _builds_graphs(meta):
                shard.optimize()
                self._checked.add(name)
        return True

    def optimize(self, collection_name: str) -> bool:
        """Run the engine's optimizers (HNSW build, merges, vacuum) now; True if anything changed."""
        name, shard = self._shard(collection_name)
        changed = shard.optimize()
        self._checked.add(name)
        return changed

    def get_aliases(self, **_: Any) -> models.CollectionsAliasesResponse:
        self._alive()
        return models.CollectionsAliasesResponse(
            aliases=[
                models.AliasDescription(alias_name=a, collection_name=c)
                for a, c in sorted(self._aliases().items())
            ]
        )

    def update_collection_aliases(self, change_aliases_operations: Sequence[Any], **_: Any) -> bool:
        """Apply alias operations all at once (one atomic file replace)."""
        self._alive()
        aliases = self._aliases()
        for op in change_aliases_operations:
            if isinstance(op, models.CreateAliasOperation):
                target = self._resolve(op.create_alias.collection_name)
                aliases[op.create_alias.alias_name] = target
            elif isinstance(op, models.DeleteAliasOperation):
                aliases.pop(op.delete_alias.alias_name, None)
            elif isinstance(op, models.RenameAliasOperation):
                aliases[op.rename_alias.new_alias_name] = aliases.pop(op.rename_alias.old_alias_name)
            else:
                raise ValueError(f"edge store: unsupported alias operation {type(op).__name__}")
        self._write_json(self._root / "aliases.json", aliases)
        return True

    def create_payload_index(
        self, collection_name: str, field_name: str, field_schema: Any = None, **_: Any
    ) -> models.UpdateResult:
        schema = _index_params(field_schema)
        self._update(collection_name, qe.UpdateOperation.create_field_index(field_name, schema))
        return _DONE

    # -- writes ----------------------------------------------------------------------------------

    def upsert(self, collection_name: str, points: Any, wait: bool = True, **_: Any) -> models.UpdateResult:
        """Write a ``Batch`` or a list of ``PointStruct``; durable through the shard's WAL."""
        name = self._resolve(collection_name)
        sizes = {n: v["size"] for n, v in self._meta(name)["vectors"].items()}
        if isinstance(points, models.Batch):
            vecs = points.vectors
            rows: Iterable[tuple[Any, Any, Any]] = zip(
                points.ids,
                (
                    [{n: v[i] for n, v in vecs.items()} for i in range(len(points.ids))]
                    if isinstance(vecs, dict)
                    else vecs
                ),
                points.payloads or [None] * len(points.ids),
                strict=True,
            )
        else:
            rows = ((p.id, p.vector, p.payload) for p in points)
        out = []
        for pid, vector, payload in rows:
            named = vector if isinstance(vector, dict) else {"": vector}
            vec = {}
            for n, v in named.items():
                if n not in sizes:
                    raise ValueError(f"Wrong input: Not existing vector name error: {n}")
                v = _vector_list(v)
                if len(v) != sizes[n]:
                    raise ValueError(
                        f"Wrong input: Vector dimension error: expected dim: {sizes[n]}, got {len(v)}"
                    )
                vec[n] = v
            out.append(qe.Point(_edge_id(pid), vec, dict(payload) if payload else {}))
        if out:
            self._update(name, qe.UpdateOperation.upsert_points(out))
        return _DONE

    def upload_points(
        self, collection_name: str, points: Iterable[Any], batch_size: int = 64, **_: Any
    ) -> None:
        """``PointStruct`` objects in batches of ``batch_size`` (the client's bulk call, without workers)."""
        batch: list[Any] = []
        for point in points:
            batch.append(point)
            if len(batch) >= batch_size:
                self.upsert(collection_name, batch)
                batch = []
        if batch:
            self.upsert(collection_name, batch)

    def upload_collection(
        self,
        collection_name: str,
        vectors: Any,
        payload: Iterable[dict[str, Any]] | None = None,
        ids: Iterable[Any] | None = None,
        batch_size: int = 64,
        **_: Any,
    ) -> None:
        """Vectors (a list, array, or dict of named lists) with payloads and ids, in batches.

        Raises:
            ValueError: ``ids`` are missing (the client would invent random UUIDs; the catalog never
                wants that, so they are required here).
        """
        if ids is None:
            raise ValueError("edge store: upload_collection needs ids")
        if isinstance(vectors, dict):
            names = list(vectors)
            rows: Iterable[Any] = (
                {n: v for n, v in zip(names, vs, strict=True)} for vs in zip(*vectors.values(), strict=True)
            )
        else:
            rows = vectors
        payloads = payload if payload is not None else iter(lambda: None, 0)
        points = (
            models.PointStruct(
                id=i, vector=_vector_list(v) if not isinstance(v, dict) else v, payload=p or {}
            )
            for i, v, p in zip(ids, rows, payloads, strict=False)  # payloads may be endless Nones
        )
        self.upload_points(collection_name, points, batch_size=batch_size)

    def set_payload(
        self, collection_name: str, payload: dict[str, Any], points: Any, key: str | None = None, **_: Any
    ) -> models.UpdateResult:
        ids, flt = _selector_ids(points)
        op = (
            qe.UpdateOperation.set_payload(ids, payload, key)
            if ids is not None
            else qe.UpdateOperation.set_payload_by_filter(flt, payload, key)
        )
        self._update(collection_name, op)
        return _DONE

    def overwrite_payload(self, collection_name: str, payload: dict[str, Any], points: Any, **_: Any) -> Any:
        ids, flt = _selector_ids(points)
        op = (
            qe.UpdateOperation.overwrite_payload(ids, payload)
            if ids is not None
            else qe.UpdateOperation.overwrite_payload_by_filter(flt, payload)
        )
        self._update(collection_name, op)
        return _DONE

    def batch_update_points(
        self, collection_name: str, update_operations: Sequence[Any], wait: bool = True, **_: Any
    ) -> list[models.UpdateResult]:
        """Several payload writes in one call (the match state's per-point ``group_id``/``twins``).

        Only ``SetPayloadOperation`` is served: it is what the catalog sends; each runs in order."""
        for op in update_operations:
            if not isinstance(op, models.SetPayloadOperation):
                raise ValueError(f"edge store: unsupported batch operation {type(op).__name__}")
            sp = op.set_payload
            selector = sp.points if sp.points is not None else models.FilterSelector(filter=sp.filter)
            self.set_payload(collection_name, sp.payload, selector, key=sp.key)
        return [_DONE for _ in update_operations]

    def delete(self, collection_name: str, points_selector: Any, wait: bool = True, **_: Any) -> Any:
        ids, flt = _selector_ids(points_selector)
        op = (
            qe.UpdateOperation.delete_points(ids)
            if ids is not None
            else qe.UpdateOperation.delete_points_by_filter(flt)
        )
        self._update(collection_name, op)
        return _DONE

    # -- reads -----------------------------------------------------------------------------------

    def retrieve(
        self,
        collection_name: str,
        ids: Sequence[Any],
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool | Sequence[str] = False,
        **_: Any,
    ) -> list[models.Record]:
        _, shard = self._shard(collection_name)
        recs = shard.retrieve(
            [_edge_id(i) for i in ids],
            with_payload=with_payload if isinstance(with_payload, bool) else list(with_payload),
            with_vector=with_vectors if isinstance(with_vectors, bool) else list(with_vectors),
        )
        return [_record(r) for r in recs]

    def scroll(
        self,
        collection_name: str,
        scroll_filter: models.Filter | None = None,
        limit: int = 10,
        offset: Any = None,
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool | Sequence[str] = False,
        **_: Any,
    ) -> tuple[list[models.Record], Any]:
        _, shard = self._shard(collection_name)
        recs, nxt = shard.scroll(
            qe.ScrollRequest(
                offset=None if offset is None else _edge_id(offset),
                limit=limit,
                filter=_filter(scroll_filter),
                with_payload=with_payload if isinstance(with_payload, bool) else list(with_payload),
                with_vector=with_vectors if isinstance(with_vectors, bool) else list(with_vectors),
            )
        )
        return [_record(r) for r in recs], (None if nxt is None else _pid(nxt))

    def count(
        self, collection_name: str, count_filter: models.Filter | None = None, exact: bool = True, **_: Any
    ) -> models.CountResult:
        _, shard = self._shard(collection_name)
        return models.CountResult(
            count=shard.count(qe.CountRequest(exact=exact, filter=_filter(count_filter)))
        )

    def facet(
        self,
        collection_name: str,
        key: str,
        facet_filter: models.Filter | None = None,
        limit: int = 10,
        exact: bool = False,
        **_: Any,
    ) -> models.FacetResponse:
        _, shard = self._shard(collection_name)
        resp = shard.facet(qe.FacetRequest(key=key, limit=limit, exact=exact, filter=_filter(facet_filter)))
        return models.FacetResponse(
            hits=[models.FacetValueHit(value=h.value, count=h.count) for h in resp.hits]
        )

    def _query_request(
        self,
        query: Any,
        using: str | None,
        query_filter: models.Filter | None,
        limit: int,
        with_payload: Any,
        with_vectors: Any,
        score_threshold: float | None,
        search_params: models.SearchParams | None,
        offset: int | None = None,
    ) -> qe.QueryRequest:
        if isinstance(query, models.NearestQuery):
            query = query.nearest
        params = None
        if search_params is not None:
            params = qe.SearchParams(hnsw_ef=search_params.hnsw_ef, exact=bool(search_params.exact))
        return qe.QueryRequest(
            limit=limit,
            offset=offset,
            query=qe.Query.Nearest(_vector_list(query), using=using),
            filter=_filter(query_filter),
            with_payload=with_payload if isinstance(with_payload, bool) else list(with_payload),
            with_vector=with_vectors if isinstance(with_vectors, bool) else list(with_vectors),
            score_threshold=score_threshold,
            params=params,
        )

    def query_points(
        self,
        collection_name: str,
        query: Any,
        using: str | None = None,
        query_filter: models.Filter | None = None,
        search_params: models.SearchParams | None = None,
        limit: int = 10,
        offset: int | None = None,
        with_payload: Any = True,
        with_vectors: Any = False,
        score_threshold: float | None = None,
        **_: Any,
    ) -> rest.QueryResponse:
        """Nearest-neighbour query (dense vectors only)."""
        name, shard = self._shard(collection_name)
        self._ready_for_search(name, shard)
        req = self._query_request(
            query,
            using,
            query_filter,
            limit,
            with_payload,
            with_vectors,
            score_threshold,
            search_params,
            offset,
        )
        return rest.QueryResponse.model_construct(points=[_scored(p) for p in shard.query(req)])

    def query_batch_points(
        self, collection_name: str, requests: Sequence[models.QueryRequest], **_: Any
    ) -> list[rest.QueryResponse]:
        """Several nearest-neighbour queries planned as one batch by the engine."""
        results = self._query_batch(collection_name, requests)
        return [rest.QueryResponse.model_construct(points=[_scored(p) for p in res]) for res in results]

    def query_batch_hits(
        self, collection_name: str, requests: Sequence[models.QueryRequest]
    ) -> list[list[tuple[str, dict[str, Any], float]]]:
        """:meth:`query_batch_points` as ``(id, payload, score)`` tuples, without the client models.

        Why: building a ``ScoredPoint`` per hit cost as much as the search itself (the matcher's
        Qdrant path asks for 20 hits per query, 600k queries at 100k products per region)."""
        return [
            [(str(p.id), p.payload or {}, p.score) for p in res]
            for res in self._query_batch(collection_name, requests)
        ]

    def _query_batch(self, collection_name: str, requests: Sequence[models.QueryRequest]) -> list[Any]:
        name, shard = self._shard(collection_name)
        self._ready_for_search(name, shard)
        batch = [
            self._query_request(
                r.query,
                r.using,
                r.filter,
                r.limit or 10,
                True if r.with_payload is None else r.with_payload,
                False if r.with_vector is None else r.with_vector,
                r.score_threshold,
                r.params,
                r.offset,
            )
            for r in requests
        ]
        return shard.query_batch(qe.QueryBatchRequest(batch))

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self, **_: Any) -> None:
        """Flush and close every shard, release the folder lock; a temporary store is removed."""
        if self.closed:
            return
        self.closed = True
        for shard in self._shards.values():
            try:
                shard.flush()
            finally:
                shard.close()
        self._shards.clear()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
        if self._temporary:
            shutil.rmtree(self.location, ignore_errors=True)

    def __del__(self) -> None:  # a client dropped without close() must not keep the folder locked
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing left to report to
            self.close()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        """A ``QdrantClient`` method this engine lacks: say so by name instead of a bare AttributeError."""
        if not name.startswith("_") and callable(getattr(QdrantClient, name, None)):
            raise UnsupportedCall(
                f"EdgeClient (embedded qdrant-edge store) does not implement QdrantClient.{name}; it "
                f"supports {', '.join(SUPPORTED_METHODS)}. Use a Qdrant server, or a new folder "
                f"with POLYGLOT_EMBEDDED_STORE=local (qdrant-client local mode)"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


class UnsupportedCall(NotImplementedError, AttributeError):
    """A client call the embedded engine lacks; an AttributeError too, so ``hasattr`` stays False."""


#: The QdrantClient calls :class:`EdgeClient` serves (same arguments and ``qdrant_client.models``).
SUPPORTED_METHODS = tuple(
    sorted(n for n, v in vars(EdgeClient).items() if not n.startswith("_") and callable(v))
)


#: Environment switch for the embedded store: ``edge`` (qdrant-edge) or ``local`` (qdrant-client).
EMBEDDED_STORE_ENV = "POLYGLOT_EMBEDDED_STORE"
EMBEDDED_BACKENDS = ("edge", "local")
DEFAULT_EMBEDDED = "edge"


def embedded_backend(path: str | os.PathLike[str], requested: str | None = None) -> str:
    """Which engine opens an embedded ``path``: what the folder already holds wins, so switching the
    default never hides an existing store; a new folder gets ``requested``, else ``$POLYGLOT_EMBEDDED_STORE``,
    else :data:`DEFAULT_EMBEDDED`.

    Raises:
        ValueError: an unknown backend name.
    """
    choice = (requested or os.environ.get(EMBEDDED_STORE_ENV) or DEFAULT_EMBEDDED).strip().lower()
    if choice not in EMBEDDED_BACKENDS:
        raise ValueError(f"embedded store must be one of {EMBEDDED_BACKENDS}; got {choice!r}")
    if str(path) == ":memory:":
        return choice
    folder = Path(path)
    if is_edge_folder(folder):
        return "edge"
    if (folder / "meta.json").exists() or (folder / "collection").is_dir():
        return "local"  # qdrant-client local mode's own files
    return choice
