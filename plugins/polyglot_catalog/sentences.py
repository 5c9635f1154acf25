"""Sentence vectors: a content-addressed cache in Qdrant, written by the embed stage, read by the matcher.

Why: one vector per long description is dominated by what many products share (care instructions,
warranty text), so two variants of a series look alike while the sentence that tells them apart ("also
a pot lid holder" vs "also a towel holder") barely moves it. Sentence vectors let the matcher align
descriptions sentence by sentence (:mod:`.matching.alignment`); on the IKEA dev set that alone lifted
top-1 by 0.07-0.10 over CSLS (bench/RESULTS.md).

Why a separate, content-addressed collection per model: a sentence's vector depends only on the model
and the sentence, and catalogs repeat sentences heavily (9,698 dev descriptions hold 20,394 distinct
sentences), so each distinct sentence is encoded and stored once, whatever product, region, collection
or alias uses it. Point id = uuid5(vector name, sentence), so writes are idempotent like the catalog's own.
Sentences that no product uses any more stay (a cache; dropping the collection is always safe, and the
next embed run or ``build_sentence_cache`` fills it again).
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .encoding import LATE_RECIPE
from .ids import PROJECT_NAMESPACE
from .late_map import late_recipe
from .store import CatalogStore

logger = logging.getLogger(__name__)

#: Collection name prefix; the rest is the model's vector name (see :func:`.store.vector_name_for`).
SENTENCE_COLLECTION_PREFIX = "polyglot_sentences__"
#: Sentences kept per text: the first ones (the model truncates a long text at the same end anyway).
MAX_SENTENCES = 24
#: Fragments shorter than this (stray punctuation, "ca.") are not sentences.
MIN_CHARS = 3
# A sentence ends at . ! ? ; (then whitespace) or at CJK full stops (no space follows those).
_BOUNDARY = re.compile(r"(?<=[.!?;])\s+|(?<=[。！？；])")
_SEP = "\x1f"


class _Encoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def split_sentences(text: str, max_sentences: int = MAX_SENTENCES) -> list[str]:
    """The sentences of ``text`` (at most ``max_sentences``); the whole text when nothing splits."""
    parts = [p.strip() for p in _BOUNDARY.split(text or "")]
    parts = [p for p in parts if len(p) >= MIN_CHARS]
    if not parts:
        stripped = (text or "").strip()
        return [stripped] if stripped else []
    return parts[:max_sentences]


def sentence_id(vector_name: str, sentence: str) -> str:
    """Point id of one sentence under one model's vector name (uuid5: stable across runs and machines)."""
    return str(uuid.uuid5(PROJECT_NAMESPACE, f"sentence{_SEP}{vector_name}{_SEP}{sentence}"))


#: Suffix of late-chunked caches, named by the recipe that makes their vectors (``encoding.LATE_RECIPE``):
#: another recipe's vectors are another kind, so they fill a cache of their own instead of mixing with
#: these (the first recipe, last layer with the whole mean off, wrote ``__late``). A model that ships a
#: late map (:mod:`.late_map`) adds the map's digest: :func:`late_suffix`.
def late_suffix(fingerprint: str | None) -> str:
    """The late cache suffix of the model with this fingerprint: the recipe and its map, if any."""
    return f"__late_bytext_{late_recipe(LATE_RECIPE, fingerprint)}"


LATE_SUFFIX = late_suffix(None)  # a model without a map (or without a fingerprint)


def late_keys(text: str, sentences: Sequence[str] | None = None) -> list[str]:
    """Cache keys of ``text``'s sentences in a late cache: the sentence within its text.

    Why not the sentence alone, as for separate vectors: a late vector is pooled from one
    description's pass, so a sentence shared by several descriptions has a vector per description.
    Keyed by sentence alone, the cache would keep whichever description brought it first, and a
    decision would depend on row order, file split and history (measured: reversing that order moved
    the dev catalog's F1 by 0.0016). Keyed by text, a vector is a function of its text alone.
    """
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]
    sentences = split_sentences(text) if sentences is None else sentences
    return [f"{digest}{_SEP}{j}{_SEP}{s}" for j, s in enumerate(sentences)]


def sentence_collection(vector_name: str, fingerprint: str | None = None, late: bool = False) -> str:
    """The cache collection for one model: its vector name and, when known, its content fingerprint
    (two models under one name never share sentence vectors), with :func:`late_suffix` for late-chunked
    vectors (another kind of vector than a sentence encoded alone). Without a fingerprint: the name
    used before fingerprints were recorded."""
    suffix = f"__{fingerprint}" if fingerprint else ""
    return f"{SENTENCE_COLLECTION_PREFIX}{vector_name}{suffix}{late_suffix(fingerprint) if late else ''}"


@dataclass
class SentenceVectors:
    """Ragged sentence vectors of one region's products: sentence occurrences
    ``offsets[i]:offsets[i + 1]`` are product ``i``'s sentences, and occurrence ``j`` is row
    ``index[j]`` of ``vectors`` (unit length; float32, or int8 with one float32 scale per row in
    ``scales``, as the matcher stores its centred copy: a quarter of the memory).

    Why an index: catalogs repeat sentences heavily (care text, warranty), so :meth:`from_texts`
    stores each distinct sentence of the region once and one int32 per occurrence, instead of one
    384-d row per occurrence (768 MB per 100k-product region at ~5 sentences each). ``index=None``
    means one row per occurrence (row ``j`` is occurrence ``j``). ``weights`` are per row of
    ``vectors`` (so equal rows weigh the same wherever they occur).
    """

    offsets: np.ndarray
    vectors: np.ndarray
    weights: np.ndarray | None = None  # per row of ``vectors``; None = all equal
    index: np.ndarray | None = None  # per occurrence -> row of ``vectors``; None = identity
    scales: np.ndarray | None = None  # int8 ``vectors`` only: row i is ``vectors[i] * scales[i]``

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        vectors = np.asarray(self.vectors)
        if vectors.dtype == np.int8:
            if self.scales is None or np.shape(self.scales) != (len(vectors),):
                raise ValueError(f"int8 vectors need one scale per row ({len(vectors)})")
            self.scales = np.asarray(self.scales, dtype=np.float32)
        elif self.scales is not None:
            raise ValueError("scales go with int8 vectors only")
        self.vectors = vectors if vectors.dtype == np.int8 else vectors.astype(np.float32, copy=False)
        if self.weights is not None:
            self.weights = np.asarray(self.weights, dtype=np.float32)
            if self.weights.shape != (len(self.vectors),):
                raise ValueError(f"weights must have one value per sentence ({len(self.vectors)})")
        if self.index is not None:
            index = np.asarray(self.index)
            if index.ndim != 1 or (len(index) and not np.issubdtype(index.dtype, np.integer)):
                raise ValueError("index must be a 1-D integer array")
            if len(index) and (index.min() < 0 or index.max() >= len(self.vectors)):
                raise ValueError(f"index must point at rows of vectors (0..{len(self.vectors) - 1})")
            self.index = index.astype(np.int32 if len(self.vectors) < 2**31 else np.int64, copy=False)
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0:
            raise ValueError("offsets must be 1-D and start at 0")
        occurrences = len(self.vectors) if self.index is None else len(self.index)
        if np.any(np.diff(self.offsets) < 0) or self.offsets[-1] != occurrences:
            what = "vectors" if self.index is None else "index entries"
            raise ValueError(
                f"offsets must be non-decreasing and end at the number of {what} ({occurrences})"
            )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        """Sentences per product."""
        return np.diff(self.offsets)

    @property
    def n_occurrences(self) -> int:
        """Sentence occurrences over all products (rows of the per-occurrence view)."""
        return int(self.offsets[-1])

    def rows(self) -> np.ndarray:
        """Row of ``vectors`` for every sentence occurrence (the identity when ``index`` is None)."""
        return self.index if self.index is not None else np.arange(len(self.vectors), dtype=np.int64)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Float32 rows of ``vectors`` at ``rows`` (any shape), dequantised when stored as int8."""
        if self.scales is None:
            return self.vectors[rows]
        return self.vectors[rows].astype(np.float32) * self.scales[rows][..., None]

    def occurrence_vectors(self) -> np.ndarray:
        """One row per occurrence, float32 (a copy when indexed or int8: for tests and small data)."""
        if self.index is None and self.scales is None:
            return self.vectors
        return self.take(self.rows())

    @classmethod
    def from_rows(cls, per_product: Sequence[Any], dim: int) -> SentenceVectors:
        """One row per sentence occurrence, each product's rows in order (late vectors: one per
        sentence of each description; the matcher weights them by their sentences' texts)."""
        offsets = np.zeros(len(per_product) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(rows) for rows in per_product])
        parts = [np.asarray(rows, np.float32).reshape(len(rows), dim) for rows in per_product]
        return cls(offsets, np.concatenate(parts) if parts else np.zeros((0, dim), np.float32))

    @classmethod
    def from_texts(cls, texts: Sequence[str], lookup: Mapping[str, Any]) -> SentenceVectors:
        """Assemble from each text's sentences and a ``sentence -> vector`` map (see :meth:`from_sentences`).

        Raises:
            KeyError: a sentence has no vector (names the first one missing).
        """
        return cls.from_sentences([split_sentences(t) for t in texts], lookup)

    @classmethod
    def from_sentences(cls, sentences: Sequence[Sequence[str]], lookup: Mapping[str, Any]) -> SentenceVectors:
        """Assemble from already split texts: each distinct sentence once (in order of first use),
        each occurrence an index into them, so callers that split anyway need not split again.

        Raises:
            KeyError: a sentence has no vector (names the first one missing).
        """
        offsets = np.zeros(len(sentences) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(s) for s in sentences])
        row_of: dict[str, int] = {}
        index = np.fromiter(
            (row_of.setdefault(s, len(row_of)) for sents in sentences for s in sents),
            dtype=np.int64,
            count=int(offsets[-1]),
        )
        dim = len(next(iter(lookup.values()))) if lookup else 0
        vectors = np.zeros((len(row_of), dim), dtype=np.float32)
        for s, row in row_of.items():
            if s not in lookup:
                raise KeyError(f"no vector for sentence {s[:80]!r}")
            vectors[row] = lookup[s]
        return cls(offsets, vectors, index=index)


class SentenceCache:
    """The sentence-vector collection of one model, on the catalog's client.

    Args:
        client: the same client as the catalog store (server, edge or local mode).
        vector_name (str): the model's vector name (the catalog store's ``vector_name``).
        fingerprint (str | None): the model's content fingerprint (see
            :func:`.models.registry.model_fingerprint`); None for a cache from before fingerprints.
        store_options: passed to the :class:`.CatalogStore` of the cache (retries, batch size).
    """

    def __init__(
        self,
        client: Any,
        vector_name: str,
        fingerprint: str | None = None,
        *,
        late: bool = False,
        **store_options: Any,
    ) -> None:
        self.vector_name = vector_name
        self.fingerprint = fingerprint
        self.late = late
        self.store = CatalogStore(
            client, sentence_collection(vector_name, fingerprint, late), vector_name, **store_options
        )

    @classmethod
    def for_store(cls, store: CatalogStore, **store_options: Any) -> SentenceCache:
        """The cache the last embed run of ``store`` wrote: its model's fingerprint and sentence kind,
        as recorded with the collection (the pre-fingerprint cache when nothing is recorded)."""
        from .models.identity import recorded_model

        record = recorded_model(store) or {}
        late = record.get("sentence_vectors") == "late"
        return cls(store.client, store.vector_name, record.get("fingerprint"), late=late, **store_options)

    def add_vectors(self, lookup: Mapping[str, np.ndarray], batch_size: int = 256) -> int:
        """Store the ``key -> vector`` pairs the cache lacks (vectors made by the caller: in a late
        cache keyed by :func:`late_keys`, one per sentence of each description); returns how many
        were written. A key the cache holds keeps its vector."""
        written = 0
        for part, ids, todo in self._absent(list(lookup), batch_size):
            vectors = np.stack([np.asarray(lookup[part[i]], np.float32) for i in todo])
            self.store.upsert([ids[i] for i in todo], vectors, [{"sentence": part[i]} for i in todo])
            written += len(todo)
        return written

    def _absent(
        self, distinct: list[str], batch_size: int
    ) -> Iterator[tuple[list[str], list[str], list[int]]]:
        """Per batch of ``distinct`` sentences holding some the cache lacks: ``(part, ids, todo)``,
        ``todo`` the positions in ``part`` of the missing ones."""
        for start in range(0, len(distinct), batch_size):
            part = distinct[start : start + batch_size]
            ids = [sentence_id(self.vector_name, s) for s in part]
            present = self.store.existing_ids(ids)
            todo = [i for i, pid in enumerate(ids) if pid not in present]
            if todo:
                yield part, ids, todo

    def ensure(self, dim: int, **options: Any) -> None:
        """Create the collection on first use (same size, distance and options as the catalog's,
        but never sharded by region: a sentence is shared by every region that uses it)."""
        options.pop("shard_by_region", None)
        self.store.ensure_collection(dim, **options)

    def exists(self) -> bool:
        return self.store.exists()

    def add_missing(
        self,
        texts: Iterable[str],
        encoder: _Encoder,
        *,
        known: Mapping[str, np.ndarray] | None = None,
        batch_size: int = 256,
    ) -> int:
        """Store the sentences of ``texts`` the cache lacks; returns how many were encoded.

        ``known`` maps texts to vectors already made (the embed stage's batch): a sentence equal to
        one of them (a one-sentence description) takes that vector instead of a second encode.
        """
        known = known or {}
        distinct = list(dict.fromkeys(s for t in texts for s in split_sentences(t)))
        encoded = 0
        for part, ids, todo in self._absent(distinct, batch_size):
            fresh = [i for i in todo if part[i] not in known]
            made: dict[int, np.ndarray] = {}
            if fresh:
                made = dict(
                    zip(fresh, np.asarray(encoder.encode([part[i] for i in fresh]), np.float32), strict=True)
                )
                encoded += len(fresh)
            vectors = np.stack(
                [made[i] if i in made else np.asarray(known[part[i]], np.float32) for i in todo]
            )
            self.store.upsert([ids[i] for i in todo], vectors, [{"sentence": part[i]} for i in todo])
        return encoded

    def lookup(self, sentences: Iterable[str], batch_size: int = 1024) -> dict[str, np.ndarray]:
        """``sentence -> vector`` for the sentences the cache holds (missing ones are absent)."""
        distinct = list(dict.fromkeys(sentences))
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(distinct), batch_size):
            part = distinct[start : start + batch_size]
            by_id = {sentence_id(self.vector_name, s): s for s in part}
            for pid, vec in self.store.fetch_vectors(list(by_id)).items():
                out[by_id[pid]] = vec
        return out

    def vectors_for(self, texts: Sequence[str]) -> SentenceVectors | None:
        """Sentence vectors of every text, or None (logged) when the cache misses any sentence."""
        if not self.exists():
            logger.info("no sentence cache %s: sentence alignment is off", self.store.collection)
            return None
        sentences = [late_keys(t) if self.late else split_sentences(t) for t in texts]
        wanted = list(dict.fromkeys(s for sents in sentences for s in sents))
        lookup = self.lookup(wanted)
        missing = len(wanted) - len(lookup)
        if missing:
            logger.warning(
                "sentence cache %s lacks %d of %d sentences (embedded before sentence vectors existed?); "
                "sentence alignment is off until the next embed run fills it",
                self.store.collection,
                missing,
                len(wanted),
            )
            return None
        if self.late:  # one row per occurrence: weights come from the sentences' texts (.matching)
            dim = len(next(iter(lookup.values()))) if lookup else 0
            return SentenceVectors.from_rows([[lookup[k] for k in keys] for keys in sentences], dim)
        return SentenceVectors.from_sentences(sentences, lookup)
