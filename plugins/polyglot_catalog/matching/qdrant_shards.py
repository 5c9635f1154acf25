"""A search shard answered by Qdrant: the same part the exact search writes, from region-filtered
queries (#26).

Why: the exact search costs ``n^2`` dot products; beyond ``EXACT_MAX_PAIRS`` (~500k products per
region) the match queries Qdrant instead, and until now it did so in the match task, which held
every vector of the catalog (15 GB a region at 10M). A Qdrant shard is a range of one region's
distinct texts queried against the other region, plus the same-numbered range of the other
region's texts queried back (the reverse lists the exact pass gets from the same blocks), so one
shard still serves both directions of its pair, and the cuts, feature and match tasks read its part
as they read an exact one.

The same lists as the single task's Qdrant search (:func:`.candidates.candidate_pairs` with a
store): the same queries (the search file's centred vectors, the bits of the match's tables), the
same hits asked for (:func:`.candidates.qdrant_fetch`), mapped to products by point id (uuid5 of
region and SKU, from the rows file) and to distinct texts, then re-ranked by
:func:`.canonical.pair_cosine` over the searched region's file read a chunk at a time, merged in the
canonical order. A task holds its ranges' vectors, their hits, one chunk, and each region's point
id table (24 B a product: ~240 MB at 10M), whatever the catalog size.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ..ids import point_uuid
from .candidates import distinct_hits, extra_hits, qdrant_fetch, query_rows
from .canonical import canonical_topk
from .feature_parts import cut_range, rows_file
from .region_search import DEFAULT_CHUNK_ROWS, RegionSearch
from .settings import MatchSettings
from .shard_storage import ShardFolder
from .shards import (
    PART_KEY,
    PART_SCHEMA,
    CandidateShard,
    merge_rows,
    pair_shard_count,
    part_key,
    part_name,
    plan_shards,
    side_table,
)
from .sorted_lookup import positions

logger = logging.getLogger(__name__)

#: Side-1 rows per row group of a Qdrant part, sorted by query text: a feature task reads the row
#: groups whose query texts overlap its range (Parquet statistics), not every part whole.
REVERSE_GROUP_ROWS = 65_536


def search_key(settings: MatchSettings) -> str:
    """The part key's ``search`` of a Qdrant shard (:func:`.shards.part_key`): a part searched
    another way, or with another beam, is searched again."""
    return f"qdrant:hnsw_ef={settings.hnsw_ef}"


class PointTexts:
    """A region's products by point id: sorted 16-byte ids and each one's distinct text, from the
    region's rows file (SKUs read a batch at a time). ``extra``: hits a query needs beyond its
    distinct texts (:func:`.candidates.extra_hits`)."""

    def __init__(self, folder: ShardFolder, region: str) -> None:
        ids, texts = [], []
        with folder.open(rows_file(region)) as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=["sku", "text"]):
                skus = batch.column("sku").to_pylist()
                ids.append(np.array([point_uuid(region, s).bytes for s in skus], dtype="S16"))
                texts.append(batch.column("text").to_numpy())
        ids_all = np.concatenate(ids) if ids else np.zeros(0, "S16")
        text = np.concatenate(texts) if texts else np.zeros(0, np.int64)
        order = np.argsort(ids_all, kind="stable")
        self.region = region
        self.ids, self.text = ids_all[order], text[order]
        self.extra = extra_hits(self.text)

    def __len__(self) -> int:
        return len(self.ids)

    def __call__(self, payloads: list[dict[str, Any]]) -> np.ndarray:
        """Row (in :attr:`ids`) of each hit's point, -1 for a point the rows file does not have."""
        want = np.array([_id_bytes(p.get("id")) for p in payloads], dtype="S16")
        at, hit = positions(self.ids, want)
        return np.where(hit, at, -1)


def _id_bytes(pid: Any) -> bytes:
    try:
        return uuid.UUID(str(pid)).bytes
    except ValueError:  # not a uuid: no point polyglot-catalog wrote, dropped as unknown
        return b""


def search(
    store: Any,
    queries: np.ndarray,
    target: RegionSearch,
    points: PointTexts,
    settings: MatchSettings,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """Canonical top-``k`` distinct texts of ``target`` for each query: Qdrant's hits in the target
    region, as distinct texts, re-ranked over ``target``'s search file a chunk at a time.

    Raises:
        ValueError: Qdrant returned hits none of which is a product of the rows file (the
            collection's point ids are not polyglot-catalog's, or the rows file is of another store).
    """
    fetch = qdrant_fetch(settings.k, settings.center, points.extra)  # as the one task: by the setting
    rows, _ = query_rows(
        store, queries, target.region, min(fetch, len(points)), points, hnsw_ef=settings.hnsw_ef
    )
    if len(queries) and len(points) and not (rows >= 0).any():
        raise ValueError(
            f"Qdrant's hits in region {target.region!r} match no product of its rows file: "
            "the collection's point ids are not uuid5 of region and SKU, or the files are of another store"
        )
    proposed = distinct_hits(rows, points.text)
    del rows
    return rerank(queries, target, proposed, settings, chunk_rows)


def rerank(
    queries: np.ndarray,
    target: RegionSearch,
    proposed: np.ndarray,
    settings: MatchSettings,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`.canonical.canonical_topk` of ``proposed`` (distinct texts of ``target``, -1 padded)
    with ``target``'s vectors read a chunk at a time: each chunk's re-rank merged in the canonical
    order (higher similarity, then lower text), so the lists equal one re-rank over the region."""
    k = settings.k
    best_idx = np.full((len(queries), k), -1, dtype=np.int64)
    best_sim = np.full((len(queries), k), -np.inf)
    rows, cols = np.nonzero(proposed >= 0)
    cand = proposed[rows, cols]
    for idx, vectors in target.chunks(chunk_rows, center=settings.center):
        at, hit = positions(idx, cand)
        if not hit.any():
            continue
        local = np.full(proposed.shape, -1, dtype=np.int64)
        local[rows[hit], cols[hit]] = at[hit]
        top, sim = canonical_topk(queries, vectors, local, k)
        top = np.where(top >= 0, idx[np.maximum(top, 0)], -1)
        best_idx, best_sim = merge_rows(best_idx, best_sim, top, sim)
    return best_idx, best_sim


def map_qdrant_shard(
    folder: Any,
    shard: CandidateShard,
    settings: MatchSettings,
    store: Any,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    shards: int = 1,
) -> str:
    """Search one shard through Qdrant and write its part (the exact part's schema and sides).

    ``side`` 0: per text of the shard's range of ``query``, its canonical top-``k`` in ``other``.
    ``side`` 1: per text of ``other`` in the shard's cut range (:func:`.feature_parts.cut_range`),
    its canonical top-``k`` in the whole of ``query`` (the cuts task of that range finds its texts
    in this part alone), sorted by ``query`` text in row groups of
    :data:`REVERSE_GROUP_ROWS`: each feature task reads the proposals into its own range from every
    part of the pair (:func:`.feature_parts.map_features`).
    Needs the regions' search and rows files in ``folder`` (the plan writes both) and the store the
    regions were read from. Returns where the part is (a path or URL)."""
    folder = ShardFolder.of(folder)
    q = RegionSearch.open(folder, shard.query)
    o = RegionSearch.open(folder, shard.other)
    plan = plan_shards({shard.query: q.texts, shard.other: o.texts}, shards)
    if shard not in plan:
        ranges = pair_shard_count(shards, q.texts)
        raise ValueError(
            f"shard {shard.name} is not one of {ranges} ranges of {shard.query}'s {q.texts} texts"
        )
    lo, hi = cut_range(shard, plan, o.texts)  # the cuts task of the same range reads these texts
    schema = PART_SCHEMA.with_metadata(
        {PART_KEY: part_key(shard, settings, q.digest, o.digest, search=search_key(settings))}
    )
    mine = search(
        store,
        q.range(shard.start, shard.stop, center=settings.center),
        o,
        PointTexts(folder, shard.other),
        settings,
        chunk_rows,
    )
    back = search(
        store,
        o.range(lo, hi, center=settings.center),
        q,
        PointTexts(folder, shard.query),
        settings,
        chunk_rows,
    )
    reverse = side_table(1, np.arange(lo, hi), *back, schema)
    reverse = reverse.take(np.argsort(reverse["neighbour"].to_numpy(), kind="stable"))
    with folder.writing(part_name(shard)) as f, pq.ParquetWriter(f, schema) as writer:
        writer.write_table(reverse, row_group_size=REVERSE_GROUP_ROWS)
        writer.write_table(side_table(0, np.arange(shard.start, shard.stop), *mine, schema))
    logger.info("%s: Qdrant search of %d + %d texts", shard.name, shard.stop - shard.start, hi - lo)
    return folder.url(part_name(shard))
