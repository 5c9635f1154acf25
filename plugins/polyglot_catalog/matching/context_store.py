"""The match context (.context) kept in Qdrant, next to the match state, for the next incremental run.

Why in Qdrant and not a file: the next run may run on another Celery worker or Kubernetes pod, and
Qdrant is the one store every worker already reaches. The context (a compressed ``.npz``, ~100 bytes
per product plus its scored pairs) is split into base64 chunks of :data:`CHUNK_BYTES`, one small
point each, keyed by collection and run. :func:`.state.commit_match_state` writes a run's chunks
before it marks the run pending, records ``context_run`` in the state record it commits, and then
drops older runs' chunks: a run killed before its commit leaves the previous context and record
intact, and its own chunks are dropped by the next commit.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from qdrant_client import models

from polyglot_catalog.ids import PROJECT_NAMESPACE

from .context import MatchContext

CONTEXT_COLLECTION = "polyglot_match_context"
#: Raw bytes per point (base64 adds a third): well inside a Qdrant server's 32 MB request limit.
CHUNK_BYTES = 4 << 20


def _chunk_id(collection: str, run: str, index: int) -> str:
    return str(uuid.uuid5(PROJECT_NAMESPACE, f"match-context|{collection}|{run}|{index}"))


def _filter(collection: str, run: str | None = None, *, other_runs: bool = False) -> models.Filter:
    must: list[Any] = [models.FieldCondition(key="collection", match=models.MatchValue(value=collection))]
    run_condition = models.FieldCondition(key="run", match=models.MatchValue(value=run)) if run else None
    if run_condition is not None and not other_runs:
        must.append(run_condition)
    return models.Filter(must=must, must_not=[run_condition] if run_condition and other_runs else None)


def write_context(client: Any, collection: str, run: str, context: MatchContext) -> int:
    """Store ``context`` for ``run`` (replacing chunks a killed attempt of the same run left); bytes."""
    from .state import _aux_point, _ensure_aux

    blob = context.to_bytes()
    _ensure_aux(client, CONTEXT_COLLECTION, indexed=("collection", "run"))
    client.delete(CONTEXT_COLLECTION, models.FilterSelector(filter=_filter(collection, run)), wait=True)
    view = memoryview(blob)  # chunks are views of the blob, encoded one at a time: no second copy
    starts = range(0, len(blob), CHUNK_BYTES) or range(1)
    for index, start in enumerate(starts):
        payload = {
            "collection": collection,
            "run": run,
            "chunk": index,
            "chunks": len(starts),
            "data": base64.b64encode(view[start : start + CHUNK_BYTES]).decode("ascii"),
        }
        client.upsert(CONTEXT_COLLECTION, [_aux_point(_chunk_id(collection, run, index), payload)], wait=True)
    return len(blob)


def read_context(client: Any, collection: str, run: str | None) -> MatchContext | None:
    """The context ``run`` stored, or None when it stored none (or it is incomplete)."""
    if not run or not client.collection_exists(CONTEXT_COLLECTION):
        return None
    found = client.retrieve(CONTEXT_COLLECTION, [_chunk_id(collection, run, 0)], with_payload=True)
    if not found:
        return None
    total = int((found[0].payload or {}).get("chunks") or 0)
    ids = [_chunk_id(collection, run, i) for i in range(total)]
    points = {int(p.payload["chunk"]): p.payload["data"] for p in client.retrieve(CONTEXT_COLLECTION, ids)}
    if len(points) != total:
        return None
    return MatchContext.from_bytes(b"".join(base64.b64decode(points[i]) for i in range(total)))


def drop_other_contexts(client: Any, collection: str, keep: str | None) -> None:
    """Delete every stored context of ``collection`` but ``keep``'s (all of them when None)."""
    if not client.collection_exists(CONTEXT_COLLECTION):
        return
    selector = _filter(collection, keep, other_runs=True) if keep else _filter(collection)
    client.delete(CONTEXT_COLLECTION, models.FilterSelector(filter=selector), wait=True)
