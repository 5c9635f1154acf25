"""The embed stage: read -> text -> hash check -> encode -> upsert, incremental and idempotent.

Re-runs are cheap and safe: point ids come from (region, sku), and each point stores the hash of
(model name and content fingerprint, template and token budget, untruncated text), so a batch only
encodes rows whose hash is new or changed, and the model loads only when some row needs it. Nothing is counted
as upserted before Qdrant acknowledged it. SKUs that disappeared from the source are flagged stale (or
deleted, or kept) once the whole source was embedded without error. A sharded run passes
``vanished="keep"`` per shard, then calls :func:`reconcile_vanished` once and :func:`merge_summaries`.

Bad days (see docs/RELIABILITY.md): input is read and checked (key pass) before the collection is
created, so a broken export leaves nothing behind; rejected rows and files go to a quarantine
Parquet; an unreadable file fails the run at its end, after every good file was embedded; an
unreachable or stalling Qdrant is retried with bounded backoff and then fails with one message
naming the endpoint and how many points were acknowledged. Whenever a run did not see the whole
source cleanly, the vanished pass is skipped, so a bad day never marks products stale.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polyglot_catalog.ids import content_hash, point_id
from polyglot_catalog.matching.state import STATE_FIELDS
from polyglot_catalog.models.identity import check_model, record_model
from polyglot_catalog.quarantine import QuarantineWriter
from polyglot_catalog.reading import (
    CatalogReader,
    ColumnMapLike,
    QuarantinedRow,
    SourceBatch,
    SourceLike,
)
from polyglot_catalog.sentences import SentenceCache, late_keys, split_sentences
from polyglot_catalog.store import (
    ACTIVE,
    STALE,
    CatalogStore,
    UpsertError,
    describe_error,
    is_transient,
)
from polyglot_catalog.text import TextTemplate

log = logging.getLogger(__name__)

VANISHED_OPTIONS = ("flag", "keep", "delete")
SENTENCE_VECTORS = ("auto", "separate", "late")
PROGRESS_LOG_SECONDS = 30.0
QUARANTINE_IN_SUMMARY = 20  # the summary goes to XCom: a sample, not the whole list
SUMMARY_TEXT_CHARS = 120  # of a quarantined description, in that sample
PROGRESS_MSG = "embed: %d/%d rows (%.0f%%), %.0f rows/s, ETA %s"
BAD_FILE_POLICIES = ("fail_at_end", "fail_fast")
# Carried payload strings longer than this are cut: a 1 MB description column would otherwise ride
# along in every upsert request (Qdrant's REST limit is 32 MB per request by default). ``text`` is
# already cut to the model's token budget.
MAX_PAYLOAD_CHARS = 32_768
DUPLICATE_REASON = "duplicate (region, sku)"
#: Payload field naming the sentence cache that holds a point's sentences (see :class:`_EmbedRun`).
SENTENCE_FIELD = "sentence_cache"
_BUDGET = "\x1ftokens="  # joins the template and the token budget in the content hash
#: Payload a re-embedded point keeps from its stored version: the match state (group id, twins) and
#: every ``match_*`` key a match run writes, so a changed description does not erase its group until
#: the next match run (docs/MATCH_STATE.md). Absent fields stay absent.
CARRIED_FIELDS = STATE_FIELDS
CARRIED_PREFIX = "match_"


class StoreUnavailableError(UpsertError):
    """Qdrant failed during the embed stage even after retries; the message names the endpoint.

    A subclass of :class:`UpsertError` so callers that handle failed writes keep working. ``written``
    counts points Qdrant acknowledged in this run before the failure; they are correct and a re-run
    skips them (ids are deterministic and unchanged rows are not re-encoded).
    """

    def __init__(
        self,
        endpoint: str,
        collection: str,
        step: str,
        attempts: int,
        reason: str,
        written: int,
        ids: Sequence[str] = (),
    ) -> None:
        self.endpoint, self.step, self.attempts, self.written = endpoint, step, attempts, written
        super().__init__(collection, ids, reason)
        shown = (
            f" for ids [{', '.join(self.ids[:5])}{', ...' if len(self.ids) > 5 else ''}]" if self.ids else ""
        )
        self.args = (
            f"Qdrant at {endpoint} failed during {step} of collection {collection!r}{shown} after "
            f"{attempts} attempt(s): {reason}. {written} point(s) were acknowledged before the failure; "
            "re-running is safe (idempotent ids, unchanged rows are skipped).",
        )

    def __str__(self) -> str:
        return str(self.args[0])


class EmbedInputError(ValueError):
    """The run finished what it could but its input was not clean; ``summary`` has the counts.

    Raised at the end of the run (after the quarantine file was written), for unreadable files with
    ``on_bad_file="fail_at_end"`` and for more invalid rows than ``max_invalid`` allows.
    """

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


class TooManyInvalidRowsError(EmbedInputError):
    """More rows were rejected than ``max_invalid`` allows."""


def _is_qdrant_error(error: BaseException) -> bool:
    """Transport or server errors (REST, gRPC, sockets), as opposed to our own bugs or bad arguments."""
    from qdrant_client.http.exceptions import ApiException

    if isinstance(error, ApiException | OSError | TimeoutError):
        return True
    try:
        import grpc
        import httpx
    except ImportError:  # pragma: no cover - both ship with qdrant-client
        return False
    return isinstance(error, grpc.RpcError | httpx.HTTPError)


def _chain(cause: BaseException, error: BaseException) -> BaseException | None:
    """What to chain our error to: nothing when the cause holds a server response body.

    Why: ``UnexpectedResponse`` carries the raw body, which a proxy or a misconfigured server may fill
    with the request's headers (the API key among them), and Airflow logs chained tracebacks whole.
    The status line is kept in our message; transport errors (no server content) stay chained.
    """
    from qdrant_client.http.exceptions import UnexpectedResponse

    return None if isinstance(cause, UnexpectedResponse) else error


def describe_endpoint(client: Any) -> str:
    """Where a client points, for error messages: a URL without credentials or query, or a local path.

    Never includes the API key: it is read from the transport's base URI, not the init options. One
    wording for every command and operator: :func:`polyglot_catalog.errors.describe_endpoint`.
    """
    from polyglot_catalog.errors import describe_endpoint as describe

    return describe(client)


def parse_max_invalid(value: int | str | None) -> tuple[float, bool] | None:
    """``max_invalid`` as (limit, is_percentage): 100 -> (100, False), "5%" -> (5.0, True), None -> None.

    Strings come from templated Airflow fields, so "100" is accepted as well as 100.
    """
    if value is None or (isinstance(value, str) and value.strip() in ("", "None", "null")):
        return None
    if isinstance(value, bool):
        raise ValueError(f"max_invalid must be an int >= 0 or a percentage like '5%'; got {value!r}")
    text = str(value).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text)
    if match:
        pct = float(match.group(1))
        if pct > 100:
            raise ValueError(f"max_invalid percentage must be within 0-100%; got {value!r}")
        return pct, True
    if re.fullmatch(r"\d+", text):
        return float(int(text)), False
    raise ValueError(f"max_invalid must be an int >= 0 or a percentage like '5%'; got {value!r}")


def _limit_text(limit: tuple[float, bool]) -> str:
    return f"{limit[0]:g}%" if limit[1] else f"{int(limit[0])}"


def _over_limit(limit: tuple[float, bool] | None, invalid: int, rows: int) -> bool:
    if limit is None:
        return False
    amount, is_pct = limit
    return invalid > (amount / 100.0 * rows if is_pct else amount)


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


class _EmbedRun:
    """State of one embed_catalog call; one method per step keeps each step small and testable."""

    def __init__(
        self,
        store: CatalogStore,
        encoder: EncoderLike,
        template: TextTemplate,
        full_refresh: bool,
        sentences: SentenceCache | None = None,
    ):
        self.store, self.encoder, self.template, self.full_refresh = store, encoder, template, full_refresh
        self.sentences = sentences
        self.fingerprint: str | None = None
        self.model_key = encoder.model_name  # + "@fingerprint" once known (see embed_catalog)
        self.refill_sentences = False  # set when the sentence cache was missing at the start
        self.timer = _Timer()
        self.counts: Counter[str] = Counter()
        self.embedded_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.endpoint = describe_endpoint(store.client)

    def call(self, step: str, stage: str | None, fn: Callable[[], Any]) -> Any:
        """Run one store step; a Qdrant failure becomes one error naming the endpoint and what was written.

        The store already retried transient failures with bounded backoff (every server call, see
        :meth:`CatalogStore._with_retries`), so this only adds context: which step, how many attempts,
        how many points were acknowledged. Errors that are not Qdrant's (a dimension mismatch, a bug)
        pass through unchanged.
        """
        try:
            return fn() if stage is None else self.timer.timed(stage, fn)
        except StoreUnavailableError:
            raise
        except UpsertError as e:  # the store names the batch; its cause is the Qdrant error
            cause = e.__cause__ or e
            raise self._unavailable(step, cause, self._attempts(cause), e.ids) from _chain(cause, e)
        except Exception as e:
            if not _is_qdrant_error(e):
                raise
            raise self._unavailable(step, e, self._attempts(e)) from _chain(e, e)

    def _attempts(self, error: BaseException) -> int:
        """Attempts the store made: all of them for a transient error, one for any other."""
        return self.store.max_retries + 1 if is_transient(error) else 1

    def _unavailable(
        self, step: str, error: BaseException, attempts: int, ids: Sequence[str] = ()
    ) -> StoreUnavailableError:
        return StoreUnavailableError(
            self.endpoint,
            self.store.collection,
            step,
            attempts,
            describe_error(error),
            self.counts["upserted"],
            ids,
        )

    def process(self, part: SourceBatch) -> None:
        """Render, hash and compare first; encode (loading the model on first need) only rows whose
        hash is new, plus rows whose sentences the cache lacks; then write sentences, then points."""
        self.counts["rows_read"] += part.rows_read
        self.counts["valid"] += part.batch.num_rows
        if part.batch.num_rows == 0:
            return
        batch = part.batch
        # The hash covers the untruncated text, the token budget and the model's fingerprint, which
        # decide the truncated text: unchanged rows need no tokenizer and no model.
        full = self.timer.timed("text", lambda: self.template.render_array(batch).to_pylist())
        spec = f"{self.template.resolve(batch.schema.names)}{_BUDGET}{self.template.max_tokens}"
        regions, skus = batch.column("region").to_pylist(), batch.column("sku").to_pylist()
        ids = [point_id(r, s) for r, s in zip(regions, skus, strict=True)]
        hashes = [content_hash(self.model_key, spec, t) for t in full]
        changed, stale, lacking, stored = self._diff(ids, hashes)
        if stale:
            self.call("reactivation", "upsert", lambda: self.store.set_payload(stale, {"status": ACTIVE}))
            self.counts["reactivated"] += len(stale)
        self.counts["skipped_unchanged"] += len(ids) - len(changed)
        todo = sorted({*changed, *lacking}) if self.sentences is not None else changed
        if not todo:
            return
        cut, _ = self.timer.timed("text", lambda: self.template.truncate([full[i] for i in todo]))
        text_of = dict(zip(todo, cut, strict=True))
        self.counts["truncated"] += sum(1 for i in changed if text_of[i] != full[i])
        # late chunking: a row lacking sentences is passed through the model anyway (its sentences
        # come from that pass); else only its sentences the cache lacks are encoded
        late = self.sentences is not None and self.sentences.late
        encode = todo if late else changed
        vectors, n_encoded = self._encode(
            [text_of[i] for i in encode], [] if late else [text_of[i] for i in lacking]
        )
        vector_of = dict(zip(encode, vectors, strict=True))
        if lacking:
            marked = [ids[i] for i in lacking]
            field = {SENTENCE_FIELD: self.sentences.store.collection} if self.sentences else {}
            self.call("sentence mark", "upsert", lambda: self.store.set_payload(marked, field))
        if not changed:
            return
        self.counts["embedded"] += len(changed)
        self.counts["encoded_texts"] += n_encoded
        texts = [text_of[i] for i in changed]
        rows = batch.take(pa.array(changed, pa.int64())).to_pylist()
        kept = self._carried([ids[i] for i in changed if stored is None or ids[i] in stored])
        payloads = [
            # a source column of the same name wins: the row is newer than what the point carried
            {**kept.get(ids[i], {}), **self._payload(row, texts[j], hashes[i], part.source)}
            for j, (i, row) in enumerate(zip(changed, rows, strict=True))
        ]
        out = np.stack([vector_of[i] for i in changed])
        written = self.call(
            "upsert",
            "upsert",
            lambda: self.store.upsert([ids[i] for i in changed], out, payloads),
        )
        self.counts["upserted"] += written

    def _encode(self, texts: list[str], sentences_of: list[str]) -> tuple[np.ndarray, int]:
        """Vectors of ``texts`` (each distinct text encoded once), and their sentences (and those of
        ``sentences_of``) into the cache before the points that use them: late-chunked from the same
        pass when the encoder can (:meth:`.Encoder.encode_with_sentences`), else each sentence the
        cache lacks encoded alone."""
        if not texts and not sentences_of:
            return np.zeros((0, self.encoder.dim), dtype=np.float32), 0
        encoded = pa.array(texts, pa.string()).dictionary_encode()
        unique = encoded.dictionary.to_pylist()
        fan_out = encoded.indices.to_numpy()
        late = self.sentences is not None and self.sentences.late
        if late:
            split = [split_sentences(t) for t in unique]
            vectors, per_text = self.timer.timed(
                "encode", lambda: self.encoder.encode_with_sentences(unique, split)
            )
            self.counts["encoded_sentences"] += getattr(self.encoder, "separately", 0)
            lookup: dict[str, np.ndarray] = {}
            for text, sents, vecs in zip(unique, split, per_text, strict=True):
                lookup.update(zip(late_keys(text, sents), vecs, strict=True))  # per description
            cache = self.sentences
            assert cache is not None
            self.counts["sentences_written"] += self.call(
                "sentence cache", "sentences", lambda: cache.add_vectors(lookup)
            )
        elif unique:
            vectors = self.timer.timed("encode", lambda: self.encoder.encode(unique))
        else:
            vectors = np.zeros((0, self.encoder.dim), dtype=np.float32)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(unique), self.encoder.dim):
            raise ValueError(
                f"encoder returned shape {vectors.shape}, expected ({len(unique)}, {self.encoder.dim})"
            )
        if self.sentences is not None and not late:
            # a sentence equal to a whole text (a one-sentence description) takes that text's vector
            cache, known = self.sentences, dict(zip(unique, vectors, strict=True))
            made = self.call(
                "sentence cache",
                "sentences",
                lambda: cache.add_missing([*unique, *sentences_of], self.encoder, known=known),
            )
            self.counts["encoded_sentences"] += made
        return vectors[fan_out], len(unique)

    def _diff(
        self, ids: list[str], hashes: list[str]
    ) -> tuple[list[int], list[str], list[int], set[str] | None]:
        """Rows needing a new vector, unchanged points that were flagged stale and are back,
        unchanged rows whose sentences this run's cache does not hold (a cache dropped or begun later),
        and the ids already stored (None with ``full_refresh``, which looks nothing up)."""
        if self.full_refresh:
            return list(range(len(ids))), [], [], None
        fields = ["content_hash", "status", SENTENCE_FIELD]
        stored = self.call(
            "lookup of stored hashes", "lookup", lambda: self.store.fetch_payloads(ids, fields)
        )
        cache_name = self.sentences.store.collection if self.sentences is not None else None
        changed, stale, lacking = [], [], []
        for i, (pid, digest) in enumerate(zip(ids, hashes, strict=True)):
            old = stored.get(pid)
            if old is None or old.get("content_hash") != digest:
                changed.append(i)
                continue
            if old.get("status") == STALE:
                stale.append(pid)
            if cache_name is not None and (self.refill_sentences or old.get(SENTENCE_FIELD) != cache_name):
                lacking.append(i)
        return changed, stale, lacking, set(stored)

    def _carried(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The carried payload (:data:`CARRIED_FIELDS`, ``match_*``) of the stored points among ``ids``.

        One retrieve of whole payloads, because Qdrant selects payload keys by name, not by prefix;
        only rows being re-encoded come here, so an unchanged re-run does not pay for it.
        """
        if not ids:
            return {}
        stored = self.call("lookup of match state", "lookup", lambda: self.store._retrieve(ids, True, False))
        out = {}
        for record in stored:
            payload = record.payload or {}
            kept = {k: v for k, v in payload.items() if k in CARRIED_FIELDS or k.startswith(CARRIED_PREFIX)}
            if kept:
                out[str(record.id)] = kept
        return out

    def _clip(self, value: Any) -> Any:
        """Cut an oversized carried string (counted as ``clipped``); see MAX_PAYLOAD_CHARS."""
        if isinstance(value, str) and len(value) > MAX_PAYLOAD_CHARS:
            self.counts["clipped"] += 1
            return value[:MAX_PAYLOAD_CHARS]
        return value

    def _payload(self, row: dict[str, Any], text: str, digest: str, source: str) -> dict[str, Any]:
        payload = {k: self._clip(json_safe(v)) for k, v in row.items()}
        payload.setdefault("language", None)
        payload.update(
            text=text,
            content_hash=digest,
            model=self.encoder.model_name,
            source_file=source,
            status=ACTIVE,
            embedded_at=self.embedded_at,
        )
        if self.fingerprint is not None:
            payload["model_fingerprint"] = self.fingerprint
        if self.sentences is not None:
            payload[SENTENCE_FIELD] = self.sentences.store.collection
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


def late_sentences_for(encoder: Any, sentence_vectors: str) -> bool:
    """Whether a run pools sentence vectors from the descriptions' own pass (``embed_catalog``'s
    ``sentence_vectors``), decided from the model's files without loading it."""
    if sentence_vectors == "separate" or not getattr(encoder, "late_chunking", False):
        return False
    return sentence_vectors == "late" or getattr(encoder, "late_map", None) is not None


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
    quarantine_path: str | os.PathLike[str] | None = None,
    max_invalid: int | str | None = None,
    on_bad_file: Literal["fail_at_end", "fail_fast"] = "fail_at_end",
    allowed_regions: Sequence[str] | None = None,
    collection_options: Mapping[str, Any] | None = None,
    sentences: bool = True,
    column_map: ColumnMapLike = None,
    sentence_vectors: Literal["auto", "separate", "late"] = "auto",
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
            Skipped whenever the run did not read its whole source cleanly (bad file, too many
            invalid rows, store failure). Defaults to "flag".
        progress (Callable | None): called with (rows done, rows total) after each batch (CLI bar).
        columns (Sequence[str] | None): carry only these extra columns. Defaults to None (all).
        quantization (bool): int8 scalar quantisation when the collection is created. Defaults to False.
        log_every (float): seconds between progress log lines. Defaults to 30.
        quarantine_path (str | PathLike | None): local Parquet file that receives every rejected row
            and file (columns ``source_file, row, reason, region, sku, description``); written on
            every run, also one that fails. Defaults to None (only the summary's sample).
        max_invalid (int | str | None): most rejected rows tolerated, as a count (``100``) or a share
            of the rows read (``"5%"``); more fails the run after the quarantine file was written.
            Duplicates are superseded rows, not invalid ones, and do not count. Defaults to None.
        on_bad_file (str): a file that cannot be read (not Parquet, truncated, corrupt, required
            column missing or mistyped, gone): "fail_at_end" embeds every other file and then raises
            :class:`EmbedInputError` naming it; "fail_fast" raises :class:`BadFileError` at once.
            Either way a bad file found before anything was written leaves no collection behind.
            Defaults to "fail_at_end".
        allowed_regions (Sequence[str] | None): quarantine rows of other regions ("unknown region").
            Defaults to None (any non-empty region).
        collection_options (Mapping | None): more keyword arguments for
            :meth:`CatalogStore.ensure_collection` (e.g. ``shard_number``), so a caller with cluster
            options still gets the input checked before the collection is created. Defaults to None.
        sentences (bool): also keep the vectors of each text's sentences in the model's sentence
            cache (:mod:`polyglot_catalog.sentences`), which the matcher aligns pair by pair; only
            sentences the cache lacks are encoded. Defaults to True.
        column_map (str | Mapping | None): catalog column -> column in the files, for catalogs with
            other names (``"description=product_text,sku=item_id"``); see
            :func:`~polyglot_catalog.reading.parse_column_map`. Defaults to None.
        sentence_vectors (str): how sentence vectors are made: "separate" encodes each distinct
            sentence the cache lacks as a text of its own; "late" pools them from the token spans of
            each description's own forward pass (no second encode: the embed stage runs at raw
            ``model.encode`` speed), through the model's late map into the separate vectors' space
            where it ships one (:mod:`polyglot_catalog.late_map`), one vector per sentence of each
            description (:func:`~polyglot_catalog.sentences.late_keys`), for models with mean pooling
            (others fall back to "separate"); "auto" is "late" for a model that ships a late map (the
            bundled one) and "separate" for any other. On the IKEA dev catalog the matcher's top-1 /
            F1 are 0.798 / 0.888 with mapped late sentences and 0.793 / 0.888 with separate ones
            (0.786 / 0.876 unmapped; bench/RESULTS.md). Each kind has its own cache; the collection
            records which one its last run wrote, and the matcher reads that one. Defaults to "auto".

    Returns:
        A small JSON-safe summary: rows_read, valid, embedded, encoded_texts, encoded_sentences,
        skipped_unchanged,
        reactivated, invalid (+ invalid_by_reason, duplicates, a quarantine sample, quarantine_path,
        quarantined), bad_files, upserted, flagged, deleted, vanished_skipped, truncated, clipped,
        files, regions, seconds per stage, model, collection.

    Raises:
        BadFileError: with ``on_bad_file="fail_fast"``, the first unusable file (MissingColumnError
            when a required column is missing).
        EmbedInputError: bad files with ``on_bad_file="fail_at_end"``, raised after the good files were
            embedded; :class:`TooManyInvalidRowsError` when ``max_invalid`` is exceeded. Both carry
            the run's ``summary``.
        StoreUnavailableError: Qdrant failed after retries; the message names the endpoint.
    """
    if vanished not in VANISHED_OPTIONS:
        raise ValueError(f"vanished must be one of {list(VANISHED_OPTIONS)}; got {vanished!r}")
    if sentence_vectors not in SENTENCE_VECTORS:
        raise ValueError(
            f"sentence_vectors must be one of {list(SENTENCE_VECTORS)}; got {sentence_vectors!r}"
        )
    if on_bad_file not in BAD_FILE_POLICIES:
        raise ValueError(f"on_bad_file must be one of {list(BAD_FILE_POLICIES)}; got {on_bad_file!r}")
    limit = parse_max_invalid(max_invalid)
    tpl = _template(template, encoder)
    if columns is not None:
        columns = [*columns, *tpl.fields(["title"])]
    reader = CatalogReader(
        source,
        batch_size,
        columns,
        allowed_regions=allowed_regions,
        bad_files="raise" if on_bad_file == "fail_fast" else "skip",
        column_map=column_map,
    )
    run = _EmbedRun(store, encoder, tpl, full_refresh)
    out = QuarantineWriter(quarantine_path) if quarantine_path is not None else None
    complete = too_many = False
    try:
        # Read and check the input before touching the store: a broken export creates nothing.
        total = run.timer.timed("read", lambda: reader.total_rows)
        if not reader.readable_sources:
            raise EmbedInputError(
                _bad_files_message(reader, "nothing was written"), _summary(run, reader, store, out)
            )
        created = run.call(
            "collection check",
            None,
            lambda: store.ensure_collection(
                encoder.dim, quantization=quantization, **(collection_options or {})
            ),
        )
        # The model's identity (a digest of its files, read without loading it) before any write.
        fingerprint = getattr(encoder, "fingerprint", None)
        if fingerprint is not None:
            run.fingerprint, run.model_key = fingerprint, f"{encoder.model_name}@{fingerprint}"
            run.call(
                "model check",
                None,
                lambda: check_model(store, encoder.model_name, fingerprint, full_refresh=full_refresh),
            )
        if sentences:
            late = late_sentences_for(encoder, sentence_vectors)
            cache = SentenceCache(
                store.client,
                store.vector_name,
                fingerprint,
                late=late,
                max_retries=store.max_retries,
                backoff=store.backoff,
            )
            if fingerprint is not None:  # the matcher reads the cache this run fills
                kind = "late" if late else "separate"
                run.call(
                    "model check",
                    None,
                    lambda: record_model(store, encoder.model_name, fingerprint, sentence_vectors=kind),
                )
            found = run.call("sentence cache check", None, cache.exists)
            run.call(
                "sentence cache check",
                None,
                lambda: cache.ensure(encoder.dim, quantization=quantization, **(collection_options or {})),
            )
            run.sentences, run.refill_sentences = cache, not found and not created
        log.info("embedding %d rows from %d files into %s", total, len(reader.sources), store.collection)
        meter = ProgressLog(total, every=log_every)
        with _bulk_load(store, created):
            for part in run.timer.iterate("read", iter(reader)):
                if out is not None:
                    out.write(part.quarantined)
                run.process(part)
                meter.update(run.counts["rows_read"])
                if progress is not None:
                    progress(run.counts["rows_read"], total)
        invalid = reader.invalid - reader.invalid_by_reason.get(DUPLICATE_REASON, 0)
        too_many = _over_limit(limit, invalid, run.counts["rows_read"])
        skip_reason = "bad files" if reader.bad_files else "too many invalid rows" if too_many else None
        if skip_reason is None:
            run.call(
                "vanished pass",
                None,
                lambda: _flag_or_delete_vanished(store, reader.keys, vanished, run.timer, run.counts),
            )
        elif vanished != "keep":
            run.counts["vanished_skipped"] = 1
            log.warning("not looking for vanished SKUs: this run had %s", skip_reason)
        complete = True
    finally:
        if out is not None:
            out.write(q for q in reader.quarantine if q.row is None)  # whole files; rows went per batch
            out.close(complete=complete)
    summary = _summary(run, reader, store, out)
    if reader.bad_files:
        raise EmbedInputError(_bad_files_message(reader, "every other file was embedded"), summary)
    if too_many:
        assert limit is not None
        raise TooManyInvalidRowsError(
            f"{invalid} of {run.counts['rows_read']} rows were invalid, more than max_invalid="
            f"{_limit_text(limit)}; the valid rows were embedded, vanished SKUs were not flagged; "
            f"by reason: {dict(reader.invalid_by_reason)}; rejected rows: "
            f"{summary['quarantine_path'] or 'pass quarantine_path to keep them all'}",
            summary,
        )
    return summary


def _sample(row: QuarantinedRow) -> dict[str, Any]:
    """A quarantined row for the summary (XCom, task log): the description cut shorter than in the file."""
    item = row.to_dict()
    if item.get("description"):
        item["description"] = item["description"][:SUMMARY_TEXT_CHARS]
    return item


def _bad_files_message(reader: CatalogReader, outcome: str) -> str:
    listed = "; ".join(f"{src}: {why}" for src, why in reader.bad_files.items())
    count = f"{len(reader.bad_files)} of {len(reader.sources)} source file(s)"
    return f"{count} could not be used ({outcome}): {listed}"


def _bulk_load(store: CatalogStore, created: bool) -> Any:
    """Bulk-load mode for a new collection, and to finish one that a killed run left in it.

    Why: ``bulk_load`` turns HNSW indexing off (``m`` and ``payload_m`` 0) and back on in a
    ``finally``, which a SIGKILL skips; the collection would then stay unindexed for good. A run that
    finds indexing off resumes the bulk load, so its ``finally`` restores the graphs. Local mode has no
    HNSW and never reports indexing off.
    """
    if created:
        return store.bulk_load()
    try:
        off = store.indexing_off()
    except Exception as e:  # only an optimisation: a failure here must not fail the run
        log.debug("could not read the HNSW config of %s: %s", store.collection, describe_error(e))
        return nullcontext()
    if off:
        log.warning(
            "collection %s has HNSW indexing off (an interrupted bulk load); resuming", store.collection
        )
        return store.bulk_load()
    return nullcontext()


def _summary(
    run: _EmbedRun, reader: CatalogReader, store: CatalogStore, out: QuarantineWriter | None = None
) -> dict[str, Any]:
    counts = run.counts
    keys = reader._keys  # None when the key pass did not finish
    return {
        "model": run.encoder.model_name,
        "model_fingerprint": run.fingerprint,
        **_precision(run.encoder),
        "collection": store.collection,
        "vector_name": store.vector_name,
        "files": len(reader.sources),
        "regions": sorted(pc.unique(keys["region"]).to_pylist()) if keys is not None else [],
        "rows_read": counts["rows_read"],
        "valid": counts["valid"],
        "invalid": reader.invalid,
        "invalid_by_reason": dict(reader.invalid_by_reason),
        "duplicates": reader.invalid_by_reason.get(DUPLICATE_REASON, 0),
        "quarantine": [_sample(q) for q in reader.quarantine[:QUARANTINE_IN_SUMMARY]],
        "quarantine_path": str(out.path) if out is not None else None,
        "quarantined": out.rows if out is not None else len(reader.quarantine),
        "bad_files": dict(reader.bad_files),
        "embedded": counts["embedded"],
        "encoded_texts": counts["encoded_texts"],
        "encoded_sentences": counts["encoded_sentences"],
        "sentences_written": counts["sentences_written"],
        "skipped_unchanged": counts["skipped_unchanged"],
        "reactivated": counts["reactivated"],
        "upserted": counts["upserted"],
        "flagged": counts["flagged"],
        "deleted": counts["deleted"],
        "vanished_skipped": bool(counts["vanished_skipped"]),
        "truncated": counts["truncated"],
        "clipped": counts["clipped"],
        "seconds": {stage: round(s, 3) for stage, s in sorted(run.timer.seconds.items())},
    }


def _precision(encoder: EncoderLike) -> dict[str, Any]:
    """The precision the model ran in and why; None when it never loaded (nothing needed encoding)."""
    if not getattr(encoder, "loaded", True) or not hasattr(encoder, "precision"):
        return {"model_loaded": bool(getattr(encoder, "loaded", False)), "precision": None}
    return {
        "model_loaded": True,
        "precision": encoder.precision,
        "precision_reason": getattr(encoder, "precision_reason", None),
    }


def reconcile_vanished(
    source: SourceLike,
    store: CatalogStore,
    mode: Literal["flag", "keep", "delete"] = "flag",
    column_map: ColumnMapLike = None,
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
        column_map (str | Mapping | None): the shards' column mapping. Defaults to None.

    Returns:
        JSON-safe counts: mode, files, regions, source_keys (distinct valid (region, sku)), flagged,
        deleted, duplicates_across_files (keys a per-file sharding wrote more than once; a single run
        keeps the last occurrence, shards race), seconds (keys, vanished).
    """
    if mode not in VANISHED_OPTIONS:
        raise ValueError(f"mode must be one of {list(VANISHED_OPTIONS)}; got {mode!r}")
    timer, counts = _Timer(), Counter[str]()
    reader = CatalogReader(source, column_map=column_map)
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


_SAME_IN_EVERY_SHARD = ("model", "model_fingerprint", "collection", "vector_name")
_SPECIAL = {
    "regions",
    "seconds",
    "invalid_by_reason",
    "quarantine",
    "bad_files",
    "quarantine_path",
    "vanished_skipped",
    "model_loaded",
    "precision",
    "precision_reason",
    *_SAME_IN_EVERY_SHARD,
}


def merge_summaries(
    summaries: Sequence[dict[str, Any] | None], reconciled: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Add up the summaries of mapped :func:`embed_catalog` shards (and a :func:`reconcile_vanished`).

    Why here and not in the DAG: the summary's shape belongs to the embed stage, so the reduce step
    stays right when a count is added. Every integer count and per-stage seconds are summed, regions
    are unioned, ``invalid_by_reason`` summed, the quarantine sample concatenated and capped, ``bad_files``
    merged, ``vanished_skipped`` true if any shard skipped it; ``quarantine_path`` is the one path, or a
    list when shards wrote several (give each mapped shard its own path). ``None`` (a skipped shard)
    is ignored.

    Raises:
        ValueError: shards disagree on model, collection or vector name (they must write one place).
    """
    total: dict[str, Any] = {"shards": 0}
    regions: set[str] = set()
    seconds: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    quarantine: list[dict[str, Any]] = []
    bad_files: dict[str, str] = {}
    paths: dict[str, None] = {}
    skipped = False
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
        bad_files.update(summary.get("bad_files") or {})
        if summary.get("quarantine_path"):
            paths.setdefault(summary["quarantine_path"], None)
        skipped = skipped or bool(summary.get("vanished_skipped"))
        total["model_loaded"] = total.get("model_loaded", False) or bool(summary.get("model_loaded"))
        if total.get("precision") is None:  # the first shard that loaded the model says how
            total["precision"] = summary.get("precision")
            if "precision_reason" in summary:
                total["precision_reason"] = summary["precision_reason"]
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
    if total["shards"]:
        total.update(
            bad_files=bad_files,
            vanished_skipped=skipped,
            quarantine_path=None if not paths else next(iter(paths)) if len(paths) == 1 else list(paths),
        )
    return total
