"""The embed stage: read -> text -> hash check -> encode -> upsert, incremental and idempotent.

Re-runs are cheap and safe: point ids come from (region, sku), and each point stores the hash of
(model, template, text), so a batch only encodes rows whose hash is new or changed. Nothing is counted
as upserted before Qdrant acknowledged it. SKUs that disappeared from the source are flagged stale (or
deleted, or kept) once the whole source was embedded without error.
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

    def handle_vanished(self, keys: pa.Table, mode: str) -> None:
        """Flag or delete points of the regions seen whose SKU is not in this run's source."""
        if mode == "keep":
            return
        for region in sorted(pc.unique(keys["region"]).to_pylist()):
            present = keys.filter(pc.equal(keys["region"], region))["sku"]
            gone = self.timer.timed("vanished", lambda r=region, p=present: self._vanished_ids(r, p, mode))
            if not gone:
                continue
            if mode == "delete":
                self.timer.timed("vanished", lambda g=gone: self.store.delete(g))
                self.counts["deleted"] += len(gone)
            else:
                self.timer.timed("vanished", lambda g=gone: self.store.set_payload(g, {"status": STALE}))
                self.counts["flagged"] += len(gone)
            log.info(
                "%s %d vanished SKUs in region %s",
                "deleted" if mode == "delete" else "flagged",
                len(gone),
                region,
            )

    def _vanished_ids(self, region: str, present: pa.ChunkedArray, mode: str) -> list[str]:
        gone: list[str] = []
        pages = self.store.scroll_region(region, with_vectors=False, include_stale=mode == "delete")
        for payloads, _ in pages:
            skus = pa.array([p.get("sku") for p in payloads], pa.string())
            missing = pc.invert(pc.fill_null(pc.is_in(skus, value_set=present.combine_chunks()), True))
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
    run.handle_vanished(reader.keys, vanished)
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
