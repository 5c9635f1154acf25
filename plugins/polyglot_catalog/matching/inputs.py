"""What a match run reads before it decides anything: the catalog's tables and sentence vectors.

Why apart from the matcher: the matcher (:func:`.pipeline.match_tables`) is a pure function of
in-memory tables; where they come from (a Qdrant collection, the sentence cache, a test's arrays,
a shard's Parquet part) is the caller's business. A store is read here once, and the Qdrant
candidate path gets the store as its query backend.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..sentences import SentenceCache, SentenceVectors
from .canonical import canonical_order, permute_sentences
from .data import OPTIONAL_FIELDS, CatalogData, RegionTable

logger = logging.getLogger(__name__)

SentenceSource = Mapping[str, SentenceVectors] | Literal["auto"] | None


@dataclass
class MatchInputs:
    """One run's input: tables per region (any row order), their sentence vectors (same rows; None:
    match without the sentence feature), the store (Qdrant candidate path, None for in-memory
    tables) and the collection it names."""

    data: CatalogData
    sentences: dict[str, SentenceVectors] | None = None
    store: Any = None
    collection: str | None = None


def is_store(obj: Any) -> bool:
    return hasattr(obj, "scroll_region") and hasattr(obj, "query_region")


def load_catalog(
    store: Any, regions: Sequence[str] | None = None, *, batch_size: int = 1024, with_vectors: bool = True
) -> CatalogData:
    """Read active points of ``regions`` (default: all) from a ``CatalogStore`` into memory;
    ``with_vectors=False`` leaves them in the store (zero-width vector matrices).

    Raises:
        ValueError: when a requested region has no points.
    """
    available = list(store.regions())
    wanted = available if regions is None else list(regions)
    missing = [r for r in wanted if r not in available]
    if missing:
        raise ValueError(
            f"regions {missing} not in collection {getattr(store, 'collection', '?')!r}; "
            f"available: {available}"
        )
    out: CatalogData = {}
    for region in wanted:
        payloads: list[dict[str, Any]] = []
        blocks: list[np.ndarray] = []
        for batch, vecs in store.scroll_region(region, with_vectors=with_vectors, batch_size=batch_size):
            payloads.extend(batch)
            blocks.append(vecs)
        if not payloads:
            raise ValueError(f"region {region!r} has no active points")
        fields = {
            name: [p.get(name) for p in payloads]
            for name in (*OPTIONAL_FIELDS, "content_hash")
            if any(p.get(name) for p in payloads)
        }
        out[region] = RegionTable(
            region,
            [p["sku"] for p in payloads],
            [p.get("text") or "" for p in payloads],
            np.concatenate(blocks),
            fields,
            point_ids=[str(p["id"]) for p in payloads],
        )
        logger.info("loaded %d points of region %s", len(payloads), region)
    return out


def cached_sentences(store: Any, data: CatalogData) -> dict[str, SentenceVectors] | None:
    """Sentence vectors of every product from the store's sentence cache (rows as ``data``'s), or None
    when the store has no cache or it misses a product's sentences.

    The cache is asked in the canonical (SKU) order, so its distinct rows come in the same order
    whatever order the store returned the points in (their mean is summed in that order).
    """
    if not hasattr(store, "vector_name"):
        return None
    cache = SentenceCache.for_store(store)  # the cache of the model the store records
    out = {}
    for r, t in data.items():
        order = canonical_order(t.skus)
        found = cache.vectors_for([t.texts[i] for i in order])
        if found is None:
            return None
        out[r] = permute_sentences(found, np.argsort(order, kind="stable"))
    return out


def read_inputs(
    store_or_data: Any,
    regions: Sequence[str] | None = None,
    sentences: SentenceSource = "auto",
    *,
    with_vectors: bool = True,
) -> MatchInputs:
    """The tables (from a store or in-memory ``{region: RegionTable}``) of ``regions`` (default: all)
    and their sentence vectors: a mapping as given, ``"auto"`` from a store's sentence cache (none
    for in-memory tables), None for none. ``with_vectors=False``: a store's vectors stay in it.

    Raises:
        ValueError: a region is missing, or ``sentences`` is not a mapping, "auto" or None.
    """
    if sentences is not None and not isinstance(sentences, Mapping) and sentences != "auto":
        raise ValueError(f"sentences must be a mapping, 'auto' or None; got {sentences!r}")
    if is_store(store_or_data):
        store = store_or_data
        data = load_catalog(store, regions, with_vectors=with_vectors)
        found = cached_sentences(store, data) if sentences == "auto" else None
        return MatchInputs(
            data,
            dict(sentences) if isinstance(sentences, Mapping) else found,
            store,
            getattr(store, "collection", None),
        )
    data = dict(store_or_data)
    if regions is not None:
        missing = [r for r in regions if r not in data]
        if missing:
            raise ValueError(f"regions {missing} not in the data; available: {sorted(data)}")
        data = {r: data[r] for r in regions}
    return MatchInputs(data, dict(sentences) if isinstance(sentences, Mapping) else None)
