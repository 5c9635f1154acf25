"""The full match's candidate stage as map tasks over shards, and the join that feeds the rest (#26).

Why: the candidate search is the part of a full match that grows with n^2 (216 of 336 s at
100k x 3 regions, bench/RESULTS.md). A shard is a range of one region's distinct texts compared
with every distinct text of the other region of a pair, both directions from one pass over the
blocks as the single search does: the range's canonical top-``k`` (which does not depend on which
other texts share the shard) and, for each text of the other region, its best proposals among the
range. The join re-ranks every range's proposals together, so the parts, produced anywhere and in any
order, give exactly what the single-task search gives: the same candidate pairs, hence the same
features, scores, pairs and groups. A part is written once under a name of its own, so a retried
task overwrites its own part and nothing else.

The map reads the regions' search files (:mod:`.region_search`, written once by the plan): its
range whole, the other region in chunks, so a task's memory is bounded by the shard and chunk
sizes, not the catalog. The reduce is the rest of :func:`.pipeline.match_tables`, which takes the
joined candidates in place of its own search.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .candidates import CANDIDATE_SLACK, exact_topk_both, pairs_from_neighbours
from .canonical import TextSets, canonical_order, canonical_topk
from .data import CatalogData
from .region_search import DEFAULT_CHUNK_ROWS, RegionSearch, region_digest, table_chunks, write_region_search
from .settings import MatchSettings
from .shard_storage import ShardFolder

logger = logging.getLogger(__name__)

#: Memory one search task may use when the shard count is automatic (the issue's per-task target).
DEFAULT_MEMORY_BUDGET_MB = 4096
#: Parquet schema metadata key of a part: what it was computed from (:func:`part_key`).
PART_KEY = "polyglot.part"
#: A search task's memory besides its range and chunk: interpreter, numpy, pyarrow (measured ~200 MB).
TASK_BASE_MB = 300
#: One similarity block of the blocked search (2048 x 8192 float32) and its scratch.
BLOCK_MB = 160
#: How far below a text's running ``k``-th best (float64, on the grid) a later chunk's float32 block
#: similarity may lie and still be offered: a float32 dot product of unit vectors is within
#: ``dim * 2**-24`` of the exact one (6e-5 at 1,024 dimensions), the grid rounds by 5e-7.
FLOOR_MARGIN = 1e-3
Candidates = dict[tuple[str, str], tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]


@dataclass(frozen=True)
class CandidateShard:
    """Distinct texts ``start:stop`` of region ``query`` (canonical order), searched in ``other``."""

    query: str
    other: str
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.query}-{self.other}-{self.start:010d}-{self.stop:010d}"


def plan_shards(texts: Mapping[str, int], shards: int) -> list[CandidateShard]:
    """Every region pair's (``query`` < ``other``) query texts in ``shards`` near-equal ranges (fewer
    when the region has fewer texts); ``texts``: distinct texts per region. One shard serves both
    directions of its pair (:func:`map_shard`)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1; got {shards}")
    out = []
    for query, other in itertools.combinations(sorted(texts), 2):
        n = texts[query]
        parts = pair_shard_count(shards, n)
        bounds = np.linspace(0, n, parts + 1).round().astype(int)
        out += [CandidateShard(query, other, int(lo), int(hi)) for lo, hi in itertools.pairwise(bounds)]
    return out


def pair_shard_count(shards: int, query_texts: int) -> int:
    """Shards of a region pair whose first region has ``query_texts`` distinct texts: ``shards``, or
    fewer when the region has fewer texts."""
    return max(1, min(shards, query_texts))


def pair_shards(plan: Sequence[CandidateShard], query: str, other: str) -> list[CandidateShard]:
    """The shards of region pair ``query``-``other`` in ``plan``, by range."""
    return sorted((s for s in plan if (s.query, s.other) == (query, other)), key=lambda s: s.start)


def cut_bounds(other_texts: int, ranges: int) -> np.ndarray:
    """Bounds of ``ranges`` near-equal ranges of the second region's texts: the i-th shard of a
    region pair (by range) cuts texts ``bounds[i]:bounds[i + 1]`` (:mod:`.feature_parts`)."""
    return np.arange(ranges + 1, dtype=np.int64) * other_texts // max(ranges, 1)


def shards_for_budget(
    texts: Mapping[str, int],
    dim: int,
    k: int,
    memory_budget_mb: float,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    *,
    sentences: bool = False,
) -> int:
    """Shards per region pair so that one search task and one feature task fit ``memory_budget_mb``.

    A search task: a fixed part (the interpreter and libraries, one chunk of the other region and
    its similarity blocks) and, per text of its range, the vector and the running proposals (about
    60 B per kept neighbour); the other region is streamed, so its size does not count. A feature
    task (:func:`feature_task_mb`): the rows its pairs touch, up to ``2k`` per text of its range but
    never more than the other region has."""
    largest = max(texts.values(), default=0)
    wide = k + CANDIDATE_SLACK
    fixed = TASK_BASE_MB + chunk_rows * (3 * dim * 4 + 60 * wide) / 2**20 + BLOCK_MB
    per_text = (2 * dim * 4 + 60 * (k + wide)) / 2**20
    room = memory_budget_mb - max(fixed, FEATURE_BASE_MB)
    if room <= 0:
        raise ValueError(
            f"memory_budget_mb={memory_budget_mb} is below one search task's fixed part "
            f"({max(fixed, FEATURE_BASE_MB):.0f} MB)"
        )
    n = max(1, math.ceil(largest * per_text / room))
    pairs = list(itertools.combinations(sorted(texts), 2))

    def fits(n: int) -> bool:
        return all(
            feature_task_mb(math.ceil(texts[q] / n), texts[o], dim, k, sentences=sentences)
            <= memory_budget_mb
            for q, o in pairs
        )

    while not fits(n) and n < largest:
        n = max(n + 1, math.ceil(n * 1.1))
    return n


#: A feature task's memory besides the rows and pairs it holds: interpreter, libraries and one
#: row group of a search file being read (*measured* ~550 MB at 30k x 3 synthetic, 384-d).
FEATURE_BASE_MB = 600
#: Per product row a feature task reads, besides its vector (``2 x dim x 4`` B: the read and the
#: centred copy): its n-gram counts and evidence (*measured* ~2.3 KB with the vectors at 5.3 KB).
FEATURE_ROW_KB = 2.5
#: Per candidate pair a feature task writes: features, ids, explanation, temporaries.
FEATURE_PAIR_KB = 0.25
#: Sentences a product has, for a run with sentence vectors (the dev catalog: ~5; each an int8 row
#: of ``dim`` bytes with its scale and weight, read and gathered: about twice that).
SENTENCES_PER_ROW = 6


def feature_task_mb(
    range_texts: int, other_texts: int, dim: int, k: int, *, sentences: bool = False
) -> float:
    """Memory of a feature task (:mod:`.feature_parts`) over ``range_texts`` texts against a region
    of ``other_texts``: its pairs (about ``2k`` per text: its top-``k`` and the reverse lists) and
    their products' rows (the range's, and the other side's, at most the whole other region), with
    their sentence vectors when the run has them."""
    pairs = 2 * k * range_texts
    rows = range_texts + min(other_texts, pairs)
    sentence_kb = SENTENCES_PER_ROW * 2 * (dim + 8) / 1024 if sentences else 0.0
    row_kb = 2 * dim * 4 / 1024 + FEATURE_ROW_KB + sentence_kb
    return FEATURE_BASE_MB + (rows * row_kb + pairs * FEATURE_PAIR_KB) / 1024


def map_shard(
    folder: Any,
    shard: CandidateShard,
    settings: MatchSettings,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    shards: int = 1,
    store: Any | None = None,
) -> str:
    """Search one shard from the regions' search files in ``folder`` and write its part there.
    With ``store``, Qdrant answers the search (:func:`.qdrant_shards.map_qdrant_shard`: the same
    part's schema, its reverse lists whole); without, the exact blocked search below.

    The range's vectors stay in memory; the other region streams by in chunks, and each chunk's
    block pass serves both directions (as the single search, :func:`.candidates.exact_topk_both`):
    ``side`` 0, per text of the range its canonical top-``k`` in ``other`` (merged over the chunks in
    the canonical order: float64 similarity on the grid, then lower index); ``side`` 1, per text of
    ``other`` its canonical top-``k`` among the range, written chunk by chunk. A chunk offers a text
    of the range only neighbours near or above its running ``k``-th best (``FLOOR_MARGIN``), which
    cannot change the merged list and spares each chunk a cold start. The canonical order
    is the same in every chunk and shard, so the join merges the lists into the top-``k`` one search
    over the whole region finds. Texts and neighbours are distinct-text indices of their regions.
    ``shards``: the run's shards per region pair; a chunk's ``side`` 1 rows are written as one row
    group per cuts task's range of ``other`` (:func:`cut_bounds`), so each cuts task reads its own
    row groups of every part (Parquet statistics), not every part whole.
    Returns where the part is (a path or URL)."""
    if store is not None:
        from .qdrant_shards import map_qdrant_shard

        return map_qdrant_shard(folder, shard, settings, store, chunk_rows=chunk_rows, shards=shards)
    folder = ShardFolder.of(folder)
    q = RegionSearch.open(folder, shard.query)
    o = RegionSearch.open(folder, shard.other)
    vq = q.range(shard.start, shard.stop, center=settings.center)
    wide = settings.k + CANDIDATE_SLACK
    n = len(vq)
    best_idx = np.full((n, settings.k), -1, dtype=np.int64)
    best_sim = np.full((n, settings.k), -np.inf)
    schema = PART_SCHEMA.with_metadata({PART_KEY: part_key(shard, settings, q.digest, o.digest)})
    cuts = cut_bounds(o.texts, pair_shard_count(shards, q.texts))
    with folder.writing(part_name(shard)) as f, pq.ParquetWriter(f, schema) as writer:
        for idx, vo in o.chunks(chunk_rows, center=settings.center):
            ab, _, ba, _ = exact_topk_both(
                vq,
                vo,
                wide,
                block_rows=settings.block_rows,
                block_cols=settings.block_cols,
                floor_a=best_sim[:, -1] - FLOOR_MARGIN,  # -inf until a text has k neighbours
            )
            ab, ab_sim = canonical_topk(vq, vo, ab, settings.k)
            ab = np.where(ab >= 0, idx[np.maximum(ab, 0)], -1)
            best_idx, best_sim = merge_rows(best_idx, best_sim, ab, ab_sim)
            ba, ba_sim = canonical_topk(vo, vq, ba, settings.k)
            side = side_table(1, idx, np.where(ba >= 0, ba + shard.start, -1), ba_sim, schema)
            at = np.searchsorted(idx, cuts) * ba.shape[1]  # ``idx`` ascending: each range's rows
            for lo, hi in itertools.pairwise(at):
                if hi > lo:
                    writer.write_table(side.slice(lo, hi - lo))
        writer.write_table(side_table(0, np.arange(shard.start, shard.stop), best_idx, best_sim, schema))
    return folder.url(part_name(shard))  # written whole or not at all: a retry replaces it


PART_SCHEMA = pa.schema(
    [
        ("side", pa.int8()),
        ("text", pa.int64()),
        ("rank", pa.int16()),
        ("neighbour", pa.int64()),
        ("sim", pa.float64()),
    ]
)


def side_table(code: int, texts: np.ndarray, idx: np.ndarray, sim: np.ndarray, schema: pa.Schema) -> pa.Table:
    """One side of a part: per text of ``texts`` its ``(idx, sim)`` list as ``(text, rank)`` rows."""
    n, width = idx.shape
    return pa.table(
        {
            "side": np.full(n * width, code, dtype=np.int8),
            "text": np.repeat(np.asarray(texts, dtype=np.int64), width),
            "rank": np.tile(np.arange(width, dtype=np.int16), n),
            "neighbour": idx.ravel().astype(np.int64),
            "sim": sim.ravel().astype(np.float64),
        },
        schema=schema,
    )


def merge_rows(
    idx_a: np.ndarray, sim_a: np.ndarray, idx_b: np.ndarray, sim_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Row by row, the best ``k`` of two canonical lists (higher similarity, then lower index)."""
    n, k = idx_a.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), 2 * k)
    return _merge_top(n, k, [rows], [np.hstack([idx_a, idx_b]).ravel()], [np.hstack([sim_a, sim_b]).ravel()])


def part_key(
    shard: CandidateShard,
    settings: MatchSettings,
    query_digest: str,
    other_digest: str,
    *,
    search: str = "exact",
) -> str:
    """What a part was computed from: both regions' rows (their digests), ``k``, centring, the range
    and how it was searched (``search``: ``exact``, or Qdrant and its beam, which adds the key). A part
    with another key (the catalog changed between the map and the reduce, or the search path) is
    searched again."""
    key = {
        "shard": shard.name,
        "k": settings.k,
        "center": settings.center,
        "query": query_digest,
        "other": other_digest,
    }
    if search != "exact":  # exact parts keep the key they had before Qdrant shards
        key["search"] = search
    return json.dumps(key, sort_keys=True)


def part_search(folder: Any, shard: CandidateShard) -> str:
    """How ``shard``'s part in ``folder`` was searched (``exact`` or ``qdrant:...``, :func:`part_key`).
    A Qdrant part's reverse lists are whole (each text of its cut range against the whole query
    region), an exact part's are the range's share (merged by the cuts)."""
    with ShardFolder.of(folder).open(part_name(shard)) as f:
        meta = pq.read_schema(f).metadata or {}
    return str(json.loads(meta.get(PART_KEY.encode(), b"{}")).get("search", "exact"))


def part_name(shard: CandidateShard) -> str:
    """``<query>-<other>-<start>-<stop>.parquet``: the part one shard writes (in the shard folder)."""
    return f"{shard.name}.parquet"


def part_is_current(
    folder: Any,
    shard: CandidateShard,
    settings: MatchSettings,
    digests: Mapping[str, str],
    search: str = "exact",
) -> bool:
    folder = ShardFolder.of(folder)
    if not folder.exists(part_name(shard)):
        return False
    with folder.open(part_name(shard)) as f:
        meta = pq.read_schema(f).metadata or {}
    want = part_key(shard, settings, digests[shard.query], digests[shard.other], search=search)
    return meta.get(PART_KEY.encode()) == want.encode()


def join_parts(
    folder: Any,
    data: CatalogData,
    texts: Mapping[str, TextSets],
    k: int,
    plan: Sequence[CandidateShard],
) -> Candidates:
    """The candidates of every region pair from ``plan``'s parts in ``folder`` (other files there,
    e.g. a run with another shard count, are not read): the ranges' top-``k`` lists put together,
    the other side's per-range top-``k`` lists merged in the canonical order, then joined as
    :func:`.candidates.candidate_pairs` joins them.

    Raises:
        ValueError: a text of some region pair has no part (a shard did not run), naming the first gap.
    """
    folder = ShardFolder.of(folder)
    out: Candidates = {}
    for ra, rb in itertools.combinations(sorted(data), 2):
        sa, sb = texts[ra], texts[rb]
        ab_idx = np.full((len(sa), k), -1, dtype=np.int64)  # as candidate_pairs: k columns, padded
        ab_sim = np.full((len(sa), k), -np.inf)
        seen = np.zeros(len(sa), dtype=bool)
        rows, cols, sims = [], [], []
        for shard in plan:
            if (shard.query, shard.other) != (ra, rb) or not folder.exists(part_name(shard)):
                continue
            with folder.open(part_name(shard)) as f:
                part = pq.read_table(f)
            side = part["side"].to_numpy()
            t, r = part["text"].to_numpy(), part["rank"].to_numpy().astype(np.int64)
            nb = part["neighbour"].to_numpy()
            mine = side == 0
            ab_idx[t[mine], r[mine]] = nb[mine]
            ab_sim[t[mine], r[mine]] = part["sim"].to_numpy()[mine]
            seen[t[mine]] = True
            rows.append(t[~mine])
            cols.append(nb[~mine])
            sims.append(part["sim"].to_numpy()[~mine])
        if len(sa) and not seen.all():
            gap = int(np.flatnonzero(~seen)[0])
            raise ValueError(
                f"candidate parts of {ra}<->{rb} in {folder} miss text {gap} of {len(sa)}: "
                "a shard did not run (or wrote elsewhere)"
            )
        ba_idx, ba_sim = _merge_top(len(sb), k, rows, cols, sims)
        out[(ra, rb)] = pairs_from_neighbours(sa, sb, (ab_idx, ab_sim), (ba_idx, ba_sim))
    return out


def _merge_top(
    n: int, k: int, rows: list[np.ndarray], cols: list[np.ndarray], sims: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per text ``0..n-1``, the best ``k`` of every range's list in the canonical order (higher
    similarity first, equal similarities by lower index), padded with -1 / -inf."""
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    v = np.concatenate(sims) if sims else np.zeros(0)
    keep = c >= 0
    r, c, v = r[keep], c[keep], v[keep]
    order = np.lexsort((c, -v, r))
    r, c, v = r[order], c[order], v[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r, side="left")
    top = rank < k
    idx = np.full((n, k), -1, dtype=np.int64)
    sim = np.full((n, k), -np.inf)
    idx[r[top], rank[top]] = c[top]
    sim[r[top], rank[top]] = v[top]
    return idx, sim


def sharded_candidates(
    data: CatalogData, settings: MatchSettings, shards: int, folder: Any, store: Any | None = None
) -> Candidates:
    """Search every shard whose part in ``folder`` is missing or stale (all of them for ``match
    --shards N``; none when Airflow's mapped tasks wrote them), then join the parts. ``data``: the
    tables as read (not yet canonical); a region whose search file is not from these rows is
    written again first. ``store``: Qdrant answers the search (see :func:`search_stale`)."""
    # the canonical tables' text sets, from the texts alone (no copy of the vectors)
    texts = {r: TextSets.of([t.texts[i] for i in canonical_order(t.skus)]) for r, t in data.items()}
    plan = search_stale(data, settings, shards, folder, {r: len(s) for r, s in texts.items()}, store=store)
    return join_parts(folder, data, texts, settings.k, plan)


def search_stale(
    data: CatalogData,
    settings: MatchSettings,
    shards: int,
    folder: Any,
    texts: Mapping[str, int],
    *,
    store: Any | None = None,
) -> list[CandidateShard]:
    """Plan ``shards`` per region pair over ``texts`` (distinct texts per region) and search every
    shard whose part in ``folder`` is missing or stale, writing a region's search file again first
    where it is not from ``data``'s rows. With ``store`` Qdrant answers (the tables must be the
    store's; each region's rows file is written first: hits map to products through it). Returns
    the plan."""
    plan = plan_shards(texts, shards)
    digests = {r: region_digest(t) for r, t in data.items()}
    folder = ShardFolder.of(folder)
    search = "exact"
    if store is not None:
        from .feature_parts import table_pages, write_region_rows
        from .qdrant_shards import search_key

        search = search_key(settings)
        for region in sorted(data):
            write_region_rows(region, table_pages(data[region]), folder)
    stale = [s for s in plan if not part_is_current(folder, s, settings, digests, search)]
    for region in sorted({r for s in stale for r in (s.query, s.other)}):
        try:
            current = RegionSearch.open(folder, region).digest == digests[region]
        except FileNotFoundError:
            current = False
        if not current:
            write_region_search(region, table_chunks(data[region]), folder)
    for shard in stale:
        map_shard(folder, shard, settings, shards=shards, store=store)
    logger.info("candidate search: %d shards, %d searched here, parts in %s", len(plan), len(stale), folder)
    return plan


def plan_for_store(
    store: Any,
    regions: Sequence[str] | None,
    folder: Any,
    *,
    k: int,
    shards: int | None = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
) -> tuple[list[CandidateShard], int]:
    """Write each region's search file, rows file and statistics into ``folder`` (two streaming
    passes over the store per region, :mod:`.feature_parts`), and its sentence file where the store's
    sentence cache has every product's sentences, and plan the shards: ``shards`` per
    region pair, or the fewest that fit ``memory_budget_mb`` (:func:`shards_for_budget`). Returns
    ``(plan, shards per region pair)``."""
    from .feature_parts import store_pages, write_region_rows, write_store_sentences

    wanted = list(regions) if regions else store.regions()
    found = {}
    for region in wanted:
        pages = (
            ([p["sku"] for p in payloads], [p.get("text") or "" for p in payloads], vectors)
            for payloads, vectors in store.scroll_region(region, with_vectors=True)
        )
        found[region] = write_region_search(region, pages, folder)
        write_region_rows(region, store_pages(store, region), folder)
    with_sentences = write_store_sentences(store, sorted(found), folder)
    texts = {r: f.texts for r, f in found.items()}
    dim = max((f.dim for f in found.values()), default=0)
    n = (
        shards
        if shards is not None
        else shards_for_budget(texts, dim, k, memory_budget_mb, sentences=with_sentences)
    )
    return plan_shards(texts, n), n
