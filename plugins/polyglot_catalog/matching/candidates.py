"""Candidate generation: exact blocked top-k (numpy/BLAS) and the Qdrant path, same answer at k.

The exact path never materialises the full similarity matrix: it walks query blocks x corpus
blocks and keeps a running top-k, so peak memory is ``O(block_rows * block_cols + n_queries * k)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .canonical import TextSets, canonical_topk

if TYPE_CHECKING:
    from .data import RegionTable

logger = logging.getLogger(__name__)

#: Default block sizes: a 2048 x 8192 float32 block is 64 MiB.
DEFAULT_BLOCK_ROWS = 2048
DEFAULT_BLOCK_COLS = 8192
#: Columns of a block whose k-th best seeds a query's threshold on its first block.
SEED_COLS = 2048
#: HNSW search beam of the Qdrant path. Under the region filter at 100k points per region, Qdrant's
#: default (``ef_construct``, 100) found 0.890 of the true top-10, 256 finds 0.960 for 2.5x the query
#: time, 512 0.983 for 4x (bench_match_scale.py --ef; bench/RESULTS.md). The region graphs of new
#: collections give the same recall per beam, 1.2-1.4x faster (bench_store_layout.py).
DEFAULT_HNSW_EF: int | None = 256
#: Queries sent to the store per call of the Qdrant path: its hits are Python dicts with id and sku
#: strings, ~8 KB a query at 20 hits (tracemalloc), so a region's 300k queries at once would hold
#: ~2.3 GB of them; 4,096 hold ~33 MB.
QUERY_CHUNK = 4096
#: Neighbours the exact path proposes beyond ``k`` before the per-pair re-rank picks the top ``k``:
#: room for block/thread rounding to reorder near-equal similarities without losing one.
CANDIDATE_SLACK = 5
#: Rows of one text that get its candidate pairs (lowest SKUs first). Bounds the pairs a text
#: shared by hundreds of listings (a generic care text) can produce; the others stay unmatched
#: and are reported as duplicate listings.
MEMBERS_CAP = 20
#: How many times ``k`` the Qdrant path fetches for centred queries (see :func:`qdrant_fetch`).
QDRANT_OVERSAMPLE = 2


class _RunningTopK:
    """Best ``k`` (sim, index) per row so far, sorted best first (ties: lower index first).

    ``floor``: per row, a similarity only entries above which can matter (held as ``k`` placeholder
    entries, index -1, at the floor: only a strictly higher similarity is offered, so they rank
    below every real entry and mark where a row has fewer than ``k`` above its floor)."""

    def __init__(self, n: int, k: int, floor: np.ndarray | None = None) -> None:
        self.k = k
        self.sim = np.full((n, k), -np.inf, dtype=np.float32)
        if floor is not None:
            self.sim[:] = _float32_below(floor)[:, None]
        self.idx = np.full((n, k), -1, dtype=np.int64)

    def push(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        """Merge candidate triples into the rows they name (rows may repeat)."""
        if len(rows) == 0:
            return
        touched = np.unique(rows)
        all_rows = np.concatenate([np.repeat(touched, self.k), rows])
        all_sim = np.concatenate([self.sim[touched].ravel(), vals.astype(np.float32, copy=False)])
        all_idx = np.concatenate([self.idx[touched].ravel(), cols])
        order = np.lexsort((all_idx, -all_sim, all_rows))
        r = all_rows[order]
        rank = np.arange(len(r)) - np.searchsorted(r, r, side="left")
        keep = rank < self.k
        self.sim[r[keep], rank[keep]] = all_sim[order][keep]
        self.idx[r[keep], rank[keep]] = all_idx[order][keep]


def _float32_below(x: np.ndarray) -> np.ndarray:
    """``x`` in float32, rounded down (a floor must not rise in the cast)."""
    x = np.asarray(x, dtype=np.float64)
    f = x.astype(np.float32)
    return np.where(f > x, np.nextafter(f, np.float32(-np.inf)), f)


def _offer(top: _RunningTopK, sims: np.ndarray, row0: int, col0: int, *, by_column: bool = False) -> None:
    """Offer one similarity block (rows ``row0..``, columns ``col0..``) to a running top-k whose
    queries are the block's rows (or, ``by_column``, its columns: the reverse direction, read
    without transposing the block, which would make every access strided).

    Why not argpartition every block: after the first block each query knows its current k-th
    best, and only the few entries above it can enter; a comparison plus ``nonzero`` costs a
    fraction of a partial sort. Queries with fewer than ``k`` so far (the first block) take a
    partial sort. Candidates arrive in increasing index order, so a strict ``>`` keeps the lower
    index on ties.
    """
    q0, c0 = (col0, row0) if by_column else (row0, col0)
    n_q, n_c = (sims.shape[1], sims.shape[0]) if by_column else sims.shape
    thr = top.sim[q0 : q0 + n_q, -1].copy()
    cold = ~np.isfinite(thr)
    if cold.any():
        # seed the threshold with the k-th best of a slice of the block (a small partial sort),
        # then take everything at or above it: the k seed entries and the few that beat them
        take = min(top.k, n_c)
        width = min(n_c, max(SEED_COLS, 4 * take))
        # a column's seed is copied into a row first: a partial sort along strided columns costs
        # ~2x the copy (the by_column pass cold-starts on every first row block)
        seed = np.ascontiguousarray(sims[:width, cold].T) if by_column else sims[cold, :width]
        thr[cold] = np.partition(seed, width - take, axis=1)[:, width - take]
        thr[cold] = np.nextafter(thr[cold], -np.inf)  # ">" below then keeps the seed's k-th itself
    mask = sims > (thr[None, :] if by_column else thr[:, None])
    r, c = np.divmod(np.flatnonzero(mask), sims.shape[1])  # 1-D nonzero: ~10x faster than 2-D
    if by_column:
        top.push(c + q0, r + c0, sims[r, c])
    else:
        top.push(r + q0, c + c0, sims[r, c])


def _check_args(k: int, block_rows: int, block_cols: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if block_rows < 1 or block_cols < 1:
        raise ValueError(f"block sizes must be >= 1; got {block_rows}, {block_cols}")


def exact_topk(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    *,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    block_cols: int = DEFAULT_BLOCK_COLS,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner-product neighbours of each query row in ``corpus``, in blocks.

    Args:
        queries (np.ndarray): ``(n, d)`` float32, normalised for cosine.
        corpus (np.ndarray): ``(m, d)`` float32.
        k (int): neighbours per query (clipped to ``m``).
        block_rows (int): query rows per block. Defaults to 2048.
        block_cols (int): corpus rows per block. Defaults to 8192.

    Returns:
        ``(indices, scores)``, both ``(n, min(k, m))``, best first; ties broken by lower index.
    """
    _check_args(k, block_rows, block_cols)
    idx, sim, _, _ = _blocked(queries, corpus, k, block_rows, block_cols, both=False)
    return idx, sim


def exact_topk_both(
    a: np.ndarray,
    b: np.ndarray,
    k: int,
    *,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    block_cols: int = DEFAULT_BLOCK_COLS,
    floor_a: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` of ``a`` in ``b`` and of ``b`` in ``a`` from one pass: each ``a @ b.T`` block serves
    both directions (its rows and its columns), halving the matrix products of two
    :func:`exact_topk` calls. Returns ``(ab_idx, ab_sim, ba_idx, ba_sim)``.

    ``floor_a``: per row of ``a``, keep only neighbours whose similarity is above it (the rest of
    its row padded with -1): a search over ``b`` in chunks passes the running ``k``-th best (less a
    margin for rounding), so each later chunk offers only what could still enter the list instead
    of warming up a fresh top-``k``."""
    _check_args(k, block_rows, block_cols)
    return _blocked(a, b, k, block_rows, block_cols, both=True, floor=floor_a)


def _blocked(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    block_rows: int,
    block_cols: int,
    *,
    both: bool,
    floor: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    q = np.ascontiguousarray(queries, dtype=np.float32)
    c = np.ascontiguousarray(corpus, dtype=np.float32)
    n, m = len(q), len(c)
    top_q = _RunningTopK(n, min(k, m), floor)
    top_c = _RunningTopK(m if both else 0, min(k, n))
    if n and m:
        # one block buffer for the whole pass: a fresh 64 MB product per block costs the kernel a
        # page fault per 4 KB each time (a third of a search task's time went to system time)
        buf = np.empty((min(block_rows, n), min(block_cols, m)), dtype=np.float32)
        for r0 in range(0, n, block_rows):
            qb = q[r0 : r0 + block_rows]
            for c0 in range(0, m, block_cols):
                cb = c[c0 : c0 + block_cols]
                full = len(qb) == buf.shape[0] and len(cb) == buf.shape[1]
                sims = np.matmul(qb, cb.T, out=buf) if full else qb @ cb.T
                _offer(top_q, sims, r0, c0)
                if both:
                    _offer(top_c, sims, r0, c0, by_column=True)
    if floor is not None:
        top_q.sim[top_q.idx < 0] = -np.inf  # placeholders at the floor are no neighbours
    return top_q.idx, top_q.sim, top_c.idx, top_c.sim


def qdrant_topk(
    store: Any,
    queries: np.ndarray,
    region: str,
    target: RegionTable,
    k: int,
    *,
    hnsw_ef: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` via ``store.query_region``, mapped back to row indices of ``target``.
    ``hnsw_ef`` is the search beam (``None``: the collection's default).

    Hits map to rows by point id when ``target`` was read from the store (``point_ids``), so no
    payload is fetched; otherwise by the ``sku`` payload. Rows Qdrant returns that are not in
    ``target`` (e.g. stale points filtered out locally) are dropped; missing slots get index ``-1``
    and score ``-inf``.
    """
    by_id = target.point_ids is not None
    pos = {key: i for i, key in enumerate(target.point_ids if by_id else target.skus)}
    key_field = "id" if by_id else "sku"
    return query_rows(
        store,
        queries,
        region,
        min(k, len(target)),
        lambda payloads: [pos.get(str(p.get(key_field)), -1) for p in payloads],
        fields=[] if by_id else ["sku"],
        hnsw_ef=hnsw_ef,
    )


def query_rows(
    store: Any,
    queries: np.ndarray,
    region: str,
    k: int,
    rows_of: Callable[[list[dict[str, Any]]], Sequence[int] | np.ndarray],
    *,
    fields: Sequence[str] = (),
    hnsw_ef: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` hits per query in ``region`` that ``rows_of`` knows, in Qdrant's order:
    ``rows_of`` maps a chunk's hit payloads (with ``id`` and ``fields``) to row indices, ``-1`` for
    a point it does not know (dropped). Returns ``(idx, sim)`` ``(n, k)``, padded with -1 / -inf.
    Queries go :data:`QUERY_CHUNK` at a time, so only one chunk's hits are alive; each chunk logs
    its progress and the time left (a region's queries take minutes to hours)."""
    idx = np.full((len(queries), k), -1, dtype=np.int64)
    sim = np.full((len(queries), k), -np.inf, dtype=np.float32)
    if k == 0 or len(queries) == 0:
        return idx, sim
    queries = np.asarray(queries, dtype=np.float32)
    t0 = time.perf_counter()
    for start in range(0, len(queries), QUERY_CHUNK):
        if start:
            spent = time.perf_counter() - t0
            logger.info(
                "Qdrant queries in %s: %d of %d, %.0f s, about %.0f s left",
                region,
                start,
                len(queries),
                spent,
                spent * (len(queries) - start) / start,
            )
        hits = store.query_region(
            queries[start : start + QUERY_CHUNK], region, k, fields=list(fields), hnsw_ef=hnsw_ef
        )
        found = np.asarray(rows_of([p for row in hits for p, _ in row]), dtype=np.int64)
        at = 0
        for r, row in enumerate(hits, start):
            col = 0
            for _, score in row:
                j = found[at]
                at += 1
                if j < 0 or col >= k:
                    continue
                idx[r, col], sim[r, col] = j, score
                col += 1
    return idx, sim


def qdrant_fetch(k: int, centred: bool, extra: int, oversample: int = QDRANT_OVERSAMPLE) -> int:
    """Hits the Qdrant path asks per query for a canonical top-``k``: :data:`CANDIDATE_SLACK` beyond
    ``k`` (``oversample`` times ``k`` when the queries are centred: Qdrant ranks by the stored,
    uncentred vectors, see :func:`candidate_pairs`), and ``extra`` for a text's other rows."""
    return (oversample if centred else 1) * k + CANDIDATE_SLACK + extra


def candidate_pairs(
    a: RegionTable,
    b: RegionTable,
    k: int,
    *,
    store: Any | None = None,
    raw: tuple[np.ndarray, np.ndarray] | None = None,
    hnsw_ef: int | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    block_cols: int = DEFAULT_BLOCK_COLS,
    both: bool = True,
    oversample: int = QDRANT_OVERSAMPLE,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Union of top-``k`` in both directions between regions ``a`` and ``b`` (with ``both=False``,
    only ``a``'s top-``k`` in ``b``: an incremental run's changed products, whose reverse neighbours
    it finds from the stored ``k``-th similarities instead).

    Returns ``(ia, ib, neigh)``: unique pair row indices, sorted, plus each side's top-``k``
    similarity lists (``neigh["a"]`` is ``(len(a), k)`` sims of a's rows to b, on the grid) for
    hubness correction. With ``store`` the Qdrant path is used, otherwise the exact blocked path.

    Both paths follow the rule of :mod:`.canonical`: neighbours are searched among the distinct
    texts of each side (rows with identical text share one vector), proposed with slack
    (:data:`CANDIDATE_SLACK` more than ``k``; the Qdrant path ``oversample * k`` and the slack), re-ranked by
    :func:`.canonical.pair_cosine` with ties to the lower row, and each distinct text's pairs are
    then handed to its rows (at most :data:`MEMBERS_CAP` rows of one text, lowest SKUs first). So
    the same neighbours come out whatever the block size, thread count, row order or path, as long
    as the search proposed them.

    ``a.vectors``/``b.vectors`` define the similarity. ``raw`` (the stored vectors when the table's
    differ, e.g. centred) only marks that the Qdrant path must oversample; ``hnsw_ef`` is passed to
    every Qdrant query (see :meth:`CatalogStore.query_region`).

    Why the query is the centred vector, not the raw one: with stored ``b`` and a centred query
    ``qa = (a - mu_a) / |a - mu_a|``, ``qa . b = qa . (b - mu_b) + qa . mu_b``; the last term is the
    same for every ``b``, so Qdrant ranks by the centred dot product and only the norm of ``b - mu_b``
    differs from the centred cosine. Raw queries rank by the language offset as well, and their
    neighbourhood missed ~30% of the exact centred top-k at 10k per region.
    """
    sa, sb = TextSets.of(a.texts), TextSets.of(b.texts)
    va, vb = a.vectors[sa.rep], b.vectors[sb.rep]
    if store is not None:
        centred = raw is not None
        fetch_b, fetch_a = (qdrant_fetch(k, centred, extra_hits(s.inverse), oversample) for s in (sb, sa))
        ab_hits, _ = qdrant_topk(store, va, b.region, b, fetch_b, hnsw_ef=hnsw_ef)
        ba_hits, _ = qdrant_topk(store, vb, a.region, a, fetch_a, hnsw_ef=hnsw_ef)
        ab_idx, ba_idx = distinct_hits(ab_hits, sb.inverse), distinct_hits(ba_hits, sa.inverse)
    elif both:
        ab_idx, _, ba_idx, _ = exact_topk_both(
            va, vb, k + CANDIDATE_SLACK, block_rows=block_rows, block_cols=block_cols
        )
    else:
        ab_idx, _ = exact_topk(va, vb, k + CANDIDATE_SLACK, block_rows=block_rows, block_cols=block_cols)
        ba_idx = np.zeros((len(sb), 0), dtype=np.int64)
    ab_idx, ab_sim = canonical_topk(va, vb, ab_idx, k)
    ba_idx, ba_sim = canonical_topk(vb, va, ba_idx, k) if both else (ba_idx, np.zeros((len(sb), 0)))
    ia, ib, neigh = pairs_from_neighbours(sa, sb, (ab_idx, ab_sim), (ba_idx, ba_sim))
    logger.debug("%s|%s: %d candidate pairs at k=%d", a.region, b.region, len(ia), k)
    return ia, ib, neigh


def pairs_from_neighbours(
    sa: TextSets,
    sb: TextSets,
    ab: tuple[np.ndarray, np.ndarray],
    ba: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Candidate row pairs from both directions' distinct-text neighbours (``(idx, sim)`` per text,
    ``ba`` may have no columns): their union, each text pair handed to the texts' rows, with each
    row's top-``k`` similarities (``neigh``)."""
    (ab_idx, ab_sim), (ba_idx, ba_sim) = ab, ba
    ua = np.concatenate([np.repeat(np.arange(len(sa)), ab_idx.shape[1]), ba_idx.ravel()])
    ub = np.concatenate([ab_idx.ravel(), np.repeat(np.arange(len(sb)), ba_idx.shape[1])])
    ok = (ua >= 0) & (ub >= 0)
    key = np.unique(ua[ok] * max(len(sb), 1) + ub[ok])
    ia, ib = expand_text_pairs(key // max(len(sb), 1), key % max(len(sb), 1), sa, sb)
    n_b = len(sb.inverse)
    key = np.unique(ia * max(n_b, 1) + ib)
    return key // max(n_b, 1), key % max(n_b, 1), {"a": ab_sim[sa.inverse], "b": ba_sim[sb.inverse]}


def extra_hits(inverse: np.ndarray) -> int:
    """Hits a query needs beyond its distinct texts: a text's other rows come back as well
    (``inverse``: per row, its distinct text)."""
    return min(int(np.bincount(inverse).max(initial=1)) - 1, MEMBERS_CAP) if len(inverse) else 0


def distinct_hits(idx: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Row hits ``(n, w)`` mapped to distinct-text indices (``inverse``: per row, its text), repeats
    removed, ``-1`` padded; each query's texts ascending (the re-rank orders them)."""
    out = np.full(idx.shape, -1, dtype=np.int64)
    rows, cols = np.nonzero(idx >= 0)
    if len(rows) == 0:
        return out
    width = max(int(inverse.max(initial=-1)) + 1, 1)
    key = np.unique(rows.astype(np.int64) * width + inverse[idx[rows, cols]])
    r, u = key // width, key % width
    rank = np.arange(len(r)) - np.searchsorted(r, r, side="left")
    out[r, rank] = u
    return out


def expand_text_pairs(
    pu: np.ndarray, pv: np.ndarray, sa: TextSets, sb: TextSets
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct-text pairs ``(pu, pv)`` as row pairs: every row of one text with every row of the other."""
    ptr_a, rows_a = sa.members(MEMBERS_CAP)
    ptr_b, rows_b = sb.members(MEMBERS_CAP)
    na, nb = np.diff(ptr_a)[pu], np.diff(ptr_b)[pv]
    total = na * nb
    which = np.repeat(np.arange(len(pu)), total)
    within = np.arange(int(total.sum())) - np.repeat(np.cumsum(total) - total, total)
    ia = rows_a[ptr_a[pu][which] + within // nb[which]]
    ib = rows_b[ptr_b[pv][which] + within % nb[which]]
    return ia, ib
