"""The embed stage: read -> text -> hash check -> encode -> upsert, incremental and idempotent.

Re-runs are cheap and safe: point ids come from (region, sku), and each point stores the hash of
(model, template, text), so a batch only encodes rows whose hash is new or changed. Nothing is counted
as upserted before Qdrant acknowledged it. SKUs that disappeared from the source are flagged stale (or
deleted, or kept) once the whole source was embedded without error. A sharded run passes
``vanished="keep"`` per shard, then calls :func:`reconcile_vanished` once and :func:`merge_summaries`.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polyglot_catalog.ids import content_hash, point_id
from polyglot_catalog.reading import CatalogReader, SourceBatch, SourceLike
from polyglot_catalog.store import ACTIVE, STALE, CatalogStore
from polyglot_catalog.text import TextTemplate

log = logging.getLogger(__name__)

VANISHED_OPTIONS = ("flag", "keep", "delete")
PROGRESS_LOG_SECONDS = 30.0
QUARANTINE_IN_SUMMARY = 20  # the summary goes to XCom: a sample, not the whole list
PROGRESS_MSG = "embed: %d/%d rows (%.0f%%), %.0f rows/s, ETA %s"


class EncoderLike(Protocol):
    """What the embed stage needs from :class:`polyglot_catalog.encoding.Encoder` (fakes implement it)."""

    dim: int
    model_name: str
    max_seq_length: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...


class ProgressLog:
    """Logs rows done/total, rows/s and ETA at most every ``every`` seconds (and once at the end)."""

    def __init__(
        self, total: int, every: float = PROGRESS_LOG_SECONDS, clock: Callable[[], float] = time.monotonic
    ):
        self.total, self.every, self.clock = total, every, clock
        self.started = self.last = clock()

    def update(self, done: int) -> None:
        now = self.clock()
        if now - self.last < self.every and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else math.inf
        pct = 100.0 * done / self.total if self.total else 100.0
        log.info(PROGRESS_MSG, done, self.total, pct, rate, _format_seconds(eta))


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(dt.timedelta(seconds=round(seconds)))


class _Timer:
    """Accumulates seconds per stage; the summary reports them rounded."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()

    def timed(self, stage: str, call: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return call()
        finally:
            self.seconds[stage] += time.perf_counter() - start

    def iterate(self, stage: str, items: Iterator[Any]) -> Iterator[Any]:
        while True:
            start = time.perf_counter()
            item = next(items, None)
            self.seconds[stage] += time.perf_counter() - start
            if item is None:
                return
            yield item


def json_safe(value: Any) -> Any:
    """Payload-safe value: ISO dates, floats for decimals, None for NaN/inf, base64 for bytes."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _template(template: str | TextTemplate | None, encoder: EncoderLike) -> TextTemplate:
    if isinstance(template, TextTemplate):
        return template
    return TextTemplate(template, max_tokens=encoder.max_seq_length, count_tokens=encoder.count_tokens)


def _encode_unique(encoder: EncoderLike, texts: list[str]) -> tuple[np.ndarray, int]:
    """Encode each distinct text once and fan the vectors back out; returns (vectors, texts encoded)."""
    encoded = pa.array(texts, pa.string()).dictionary_encode()
    unique = encoded.dictionary.to_pylist()
    vectors = np.asarray(encoder.encode(unique), dtype=np.float32)
    if vectors.shape != (len(unique), encoder.dim):
        raise ValueError(f"encoder returned shape {vectors.shape}, expected ({len(unique)}, {encoder.dim})")
    return vectors[encoded.indices.to_numpy()], len(unique)


class _EmbedRun:
    """State of one embed_catalog call; one method per step keeps each step small and testable."""

    def __init__(self, store: CatalogStore, encoder: EncoderLike, template: TextTemplate, full_refresh: bool):
        self.store, self.encoder, self.template, self.full_refresh = store, encoder, template, full_refresh
        self.timer = _Timer()
        self.counts: Counter[str] = Counter()
        self.embedded_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def process(self, part: SourceBatch) -> None:
        self.counts["rows_read"] += part.rows_read
        self.counts["valid"] += part.batch.num_rows
        if part.batch.num_rows == 0:
            return
        batch = part.batch
        rendered = self.timer.timed("text", lambda: self.template.render_with_stats(batch))
        self.counts["truncated"] += rendered.truncated
        spec = self.template.resolve(batch.schema.names)
        model = self.encoder.model_name
        regions, skus = batch.column("region").to_pylist(), batch.column("sku").to_pylist()
        ids = [point_id(r, s) for r, s in zip(regions, skus, strict=True)]
        hashes = [content_hash(model, spec, t) for t in rendered.texts]
        changed, stale = self._diff(ids, hashes)
        if stale:
            self.timer.timed("upsert", lambda: self.store.set_payload(stale, {"status": ACTIVE}))
            self.counts["reactivated"] += len(stale)
        self.counts["skipped_unchanged"] += len(ids) - len(changed)
        if not changed:
            return
        texts = [rendered.texts[i] for i in changed]
        vectors, n_encoded = self.timer.timed("encode", lambda: _encode_unique(self.encoder, texts))
        self.counts["embedded"] += len(changed)
        self.counts["encoded_texts"] += n_encoded
        rows = batch.take(pa.array(changed, pa.int64())).to_pylist()
        payloads = [
            self._payload(row, texts[j], hashes[i], part.source)
            for j, (i, row) in enumerate(zip(changed, rows, strict=True))
        ]
        written = self.timer.timed(
            "upsert", lambda: self.store.upsert([ids[i] for i in changed], vectors, payloads)
        )
        self.counts["upserted"] += written

    def _diff(self, ids: list[str], hashes: list[str]) -> tuple[list[int], list[str]]:
        """Rows needing a new vector, and unchanged points that were flagged stale and are back."""
        if self.full_refresh:
            return list(range(len(ids))), []
        stored = self.timer.timed(
            "lookup", lambda: self.store.fetch_payloads(ids, ["content_hash", "status"])
        )
        changed, stale = [], []
        for i, (pid, digest) in enumerate(zip(ids, hashes, strict=True)):
            old = stored.get(pid)
            if old is None or old.get("content_hash") != digest:
                changed.append(i)
            elif old.get("status") == STALE:
                stale.append(pid)
        return changed, stale

    def _payload(self, row: dict[str, Any], text: str, digest: str, source: str) -> dict[str, Any]:
        payload = {k: json_safe(v) for k, v in row.items()}
        payload.setdefault("language", None)
        payload.update(
            text=text,
            content_hash=digest,
            model=self.encoder.model_name,
            source_file=source,
            status=ACTIVE,
            embedded_at=self.embedded_at,
        )
        return payload


def _flag_or_delete_vanished(
    store: CatalogStore, keys: pa.Table, mode: str, timer: _Timer, counts: Counter[str]
) -> None:
    """Flag or delete the points of the regions in ``keys`` whose SKU is not among them.

    Points already stale are not flagged again, so a re-run (or a second reconcile) counts nothing.
    """
    if mode == "keep":
        return
    for region in sorted(pc.unique(keys["region"]).to_pylist()):
        present = keys.filter(pc.equal(keys["region"], region))["sku"].combine_chunks()
        gone = timer.timed("vanished", lambda r=region, p=present: _vanished_ids(store, r, p, mode))
        if not gone:
            continue
        if mode == "delete":
            timer.timed("vanished", lambda g=gone: store.delete(g))
            counts["deleted"] += len(gone)
        else:
            timer.timed("vanished", lambda g=gone: store.set_payload(g, {"status": STALE}))
            counts["flagged"] += len(gone)
        verb = "deleted" if mode == "delete" else "flagged"
        log.info("%s %d vanished SKUs in region %s", verb, len(gone), region)


def _vanished_ids(store: CatalogStore, region: str, present: pa.Array, mode: str) -> list[str]:
    """Ids of the region's stored points (stale ones too when deleting) whose SKU is not in ``present``."""
    gone: list[str] = []
    pages = store.scroll_region(
        region, with_vectors=False, include_stale=mode == "delete", payload_fields=["sku"]
    )
    for payloads, _ in pages:
        skus = pa.array([p.get("sku") for p in payloads], pa.string())
        missing = pc.invert(pc.fill_null(pc.is_in(skus, value_set=present), True))
        gone.extend(payloads[i]["id"] for i in np.flatnonzero(missing.to_numpy(zero_copy_only=False)))
    return gone


def embed_catalog(
    source: SourceLike,
    store: CatalogStore,
    encoder: EncoderLike,
    *,
    template: str | TextTemplate | None = None,
    batch_size: int = 256,
    full_refresh: bool = False,
    vanished: Literal["flag", "keep", "delete"] = "flag",
    progress: Callable[[int, int], None] | None = None,
    columns: Sequence[str] | None = None,
    quantization: bool = False,
    log_every: float = PROGRESS_LOG_SECONDS,
) -> dict[str, Any]:
    """Embed a Parquet catalog into ``store``, encoding only new or changed rows.

    Args:
        source (SourceLike): file, directory, glob, URL or a list of them.
        store (CatalogStore): target collection; created with the encoder's size when missing.
        encoder (EncoderLike): loaded model (``Encoder`` or a test double).
        template (str | TextTemplate | None): text recipe; see :class:`TextTemplate`. Defaults to
            title + description (description alone when there is no title column).
        batch_size (int): rows per read/encode/upsert step; bounds memory. Defaults to 256.
        full_refresh (bool): re-encode every row, ignoring stored hashes. Defaults to False.
        vanished (str): SKUs stored for a region seen in this run but absent from the source: "flag"
            (payload ``status="stale"``), "keep", or "delete". With sharded runs, pass "keep" per shard.
            Defaults to "flag".
        progress (Callable | None): called with (rows done, rows total) after each batch (CLI bar).
        columns (Sequence[str] | None): carry only these extra columns. Defaults to None (all).
        quantization (bool): int8 scalar quantisation when the collection is created. Defaults to False.
        log_every (float): seconds between progress log lines. Defaults to 30.

    Returns:
        A small JSON-safe summary: rows_read, valid, embedded, encoded_texts, skipped_unchanged,
        reactivated, invalid (+ invalid_by_reason, a quarantine sample), upserted, flagged, deleted,
        truncated, files, regions, seconds per stage, model, collection.

    Raises:
        MissingColumnError: a file lacks sku, region or description.
        UpsertError: a batch could not be written after retries (vanished SKUs are then left alone).
    """
    if vanished not in VANISHED_OPTIONS:
        raise ValueError(f"vanished must be one of {list(VANISHED_OPTIONS)}; got {vanished!r}")
    tpl = _template(template, encoder)
    if columns is not None:
        columns = [*columns, *tpl.fields(["title"])]
    reader = CatalogReader(source, batch_size, columns)
    run = _EmbedRun(store, encoder, tpl, full_refresh)
    created = store.ensure_collection(encoder.dim, quantization=quantization)
    total = run.timer.timed("read", lambda: reader.total_rows)
    log.info("embedding %d rows from %d files into %s", total, len(reader.sources), store.collection)
    meter = ProgressLog(total, every=log_every)
    with store.bulk_load() if created else nullcontext():
        for part in run.timer.iterate("read", iter(reader)):
            run.process(part)
            meter.update(run.counts["rows_read"])
            if progress is not None:
                progress(run.counts["rows_read"], total)
    _flag_or_delete_vanished(store, reader.keys, vanished, run.timer, run.counts)
    return _summary(run, reader, store)


def _summary(run: _EmbedRun, reader: CatalogReader, store: CatalogStore) -> dict[str, Any]:
    counts = run.counts
    return {
        "model": run.encoder.model_name,
        "collection": store.collection,
        "vector_name": store.vector_name,
        "files": len(reader.sources),
        "regions": sorted(pc.unique(reader.keys["region"]).to_pylist()),
        "rows_read": counts["rows_read"],
        "valid": counts["valid"],
        "invalid": reader.invalid,
        "invalid_by_reason": dict(reader.invalid_by_reason),
        "quarantine": [q.to_dict() for q in reader.quarantine[:QUARANTINE_IN_SUMMARY]],
        "embedded": counts["embedded"],
        "encoded_texts": counts["encoded_texts"],
        "skipped_unchanged": counts["skipped_unchanged"],
        "reactivated": counts["reactivated"],
        "upserted": counts["upserted"],
        "flagged": counts["flagged"],
        "deleted": counts["deleted"],
        "truncated": counts["truncated"],
        "seconds": {stage: round(s, 3) for stage, s in sorted(run.timer.seconds.items())},
    }


def reconcile_vanished(
    source: SourceLike, store: CatalogStore, mode: Literal["flag", "keep", "delete"] = "flag"
) -> dict[str, Any]:
    """Flag or delete stored SKUs missing from the whole ``source``: the reduce step of a sharded run.

    Why: each mapped shard sees only its own files, so it must run with ``vanished="keep"``; only a
    step that sees every shard's keys can tell what vanished. This runs the reader's key-only pass
    (``sku``, ``region`` and ``description``, the last to apply the same validity rules as the embed
    stage, so a row that became invalid counts as vanished exactly as in one run over the union) and
    then does what ``embed_catalog(source, vanished=mode)`` does at its end. Run it only after every
    shard succeeded, over the same files the shards embedded.

    Args:
        source (SourceLike): the union of the shards' sources (paths, globs, URLs or a list).
        store (CatalogStore): the collection the shards wrote.
        mode (str): "flag" (payload ``status="stale"``), "delete", or "keep" (no-op). Defaults to "flag".

    Returns:
        JSON-safe counts: mode, files, regions, source_keys (distinct valid (region, sku)), flagged,
        deleted, duplicates_across_files (keys a per-file sharding wrote more than once; a single run
        keeps the last occurrence, shards race), seconds (keys, vanished).
    """
    if mode not in VANISHED_OPTIONS:
        raise ValueError(f"mode must be one of {list(VANISHED_OPTIONS)}; got {mode!r}")
    timer, counts = _Timer(), Counter[str]()
    reader = CatalogReader(source)
    result: dict[str, Any] = {"mode": mode, "files": len(reader.sources), "regions": []}
    if mode != "keep":
        keys = timer.timed("keys", lambda: reader.keys)
        result["regions"] = sorted(pc.unique(keys["region"]).to_pylist())
        result["source_keys"] = keys.num_rows
        result["duplicates_across_files"] = reader.duplicates_across_files
        if reader.duplicates_across_files:
            log.warning(
                "%d (region, sku) keys occur in more than one file: with one task per file the last "
                "shard to finish wins, not the last occurrence; shard by region to avoid this",
                reader.duplicates_across_files,
            )
        if store.exists():
            _flag_or_delete_vanished(store, keys, mode, timer, counts)
    result.update(
        flagged=counts["flagged"],
        deleted=counts["deleted"],
        seconds={stage: round(s, 3) for stage, s in sorted(timer.seconds.items())},
    )
    return result


_SAME_IN_EVERY_SHARD = ("model", "collection", "vector_name")
_SPECIAL = {"regions", "seconds", "invalid_by_reason", "quarantine", *_SAME_IN_EVERY_SHARD}


def merge_summaries(
    summaries: Sequence[dict[str, Any] | None], reconciled: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Add up the summaries of mapped :func:`embed_catalog` shards (and a :func:`reconcile_vanished`).

    Why here and not in the DAG: the summary's shape belongs to the embed stage, so the reduce step
    stays right when a count is added. Every integer count and per-stage seconds are summed, regions
    are unioned, ``invalid_by_reason`` summed, the quarantine sample concatenated and capped. ``None``
    (a skipped shard) is ignored.

    Raises:
        ValueError: shards disagree on model, collection or vector name (they must write one place).
    """
    total: dict[str, Any] = {"shards": 0}
    regions: set[str] = set()
    seconds: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    quarantine: list[dict[str, Any]] = []
    for summary in (s for s in summaries if s is not None):
        total["shards"] += 1
        for key in _SAME_IN_EVERY_SHARD:
            if key in summary and total.setdefault(key, summary[key]) != summary[key]:
                raise ValueError(f"shards disagree on {key}: {total[key]!r} vs {summary[key]!r}")
        for key, value in summary.items():
            if key not in _SPECIAL and isinstance(value, int) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
        regions.update(summary.get("regions", ()))
        seconds.update(summary.get("seconds", {}))
        by_reason.update(summary.get("invalid_by_reason", {}))
        quarantine.extend(summary.get("quarantine", ())[: QUARANTINE_IN_SUMMARY - len(quarantine)])
    if reconciled is not None:
        for key in ("flagged", "deleted"):
            total[key] = total.get(key, 0) + reconciled.get(key, 0)
        total["vanished"] = reconciled.get("mode")
        total["duplicates_across_files"] = reconciled.get("duplicates_across_files", 0)
        regions.update(reconciled.get("regions", ()))
        seconds.update(reconciled.get("seconds", {}))
    total.update(
        regions=sorted(regions),
        invalid_by_reason=dict(by_reason),
        quarantine=quarantine,
        seconds={stage: round(s, 3) for stage, s in sorted(seconds.items())},
    )
    return total
