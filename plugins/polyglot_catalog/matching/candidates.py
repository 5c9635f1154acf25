"""Candidate generation: exact blocked top-k (numpy/BLAS) and the Qdrant path, same answer at k.

The exact path never materialises the full similarity matrix: it walks query blocks x corpus
blocks and keeps a running top-k, so peak memory is ``O(block_rows * block_cols + n_queries * k)``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .data import RegionTable

logger = logging.getLogger(__name__)

#: Default block sizes: a 2048 x 8192 float32 block is 64 MiB.
DEFAULT_BLOCK_ROWS = 2048
DEFAULT_BLOCK_COLS = 8192


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
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if block_rows < 1 or block_cols < 1:
        raise ValueError(f"block sizes must be >= 1; got {block_rows}, {block_cols}")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    c = np.ascontiguousarray(corpus, dtype=np.float32)
    n, m = len(q), len(c)
    kk = min(k, m)
    out_idx = np.zeros((n, kk), dtype=np.int64)
    out_sim = np.zeros((n, kk), dtype=np.float32)
    if n == 0 or kk == 0:
        return out_idx, out_sim
    for r0 in range(0, n, block_rows):
        qb = q[r0 : r0 + block_rows]
        best_idx = np.empty((len(qb), 0), dtype=np.int64)
        best_sim = np.empty((len(qb), 0), dtype=np.float32)
        for c0 in range(0, m, block_cols):
            sims = qb @ c[c0 : c0 + block_cols].T
            take = min(kk, sims.shape[1])
            part = (
                np.argpartition(-sims, take - 1, axis=1)[:, :take]
                if take < sims.shape[1]
                else (np.broadcast_to(np.arange(sims.shape[1]), sims.shape).copy())
            )
            cand_sim = np.concatenate([best_sim, np.take_along_axis(sims, part, axis=1)], axis=1)
            cand_idx = np.concatenate([best_idx, part + c0], axis=1)
            # stable: sort by (-sim, index) so equal scores keep the lower corpus index first
            order = np.lexsort((cand_idx, -cand_sim), axis=1)[:, :kk]
            best_sim = np.take_along_axis(cand_sim, order, axis=1)
            best_idx = np.take_along_axis(cand_idx, order, axis=1)
        out_idx[r0 : r0 + len(qb)] = best_idx
        out_sim[r0 : r0 + len(qb)] = best_sim
    return out_idx, out_sim


def qdrant_topk(
    store: Any, queries: np.ndarray, region: str, target: RegionTable, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` via ``store.query_region``, mapped back to row indices of ``target`` by sku.

    Rows Qdrant returns that are not in ``target`` (e.g. stale points filtered out locally) are
    dropped; missing slots get index ``-1`` and score ``-inf``.
    """
    pos = {sku: i for i, sku in enumerate(target.skus)}
    kk = min(k, len(target))
    idx = np.full((len(queries), kk), -1, dtype=np.int64)
    sim = np.full((len(queries), kk), -np.inf, dtype=np.float32)
    if kk == 0 or len(queries) == 0:
        return idx, sim
    hits = store.query_region(np.asarray(queries, dtype=np.float32), region, kk)
    for r, row in enumerate(hits):
        col = 0
        for payload, score in row:
            j = pos.get(str(payload.get("sku")))
            if j is None or col >= kk:
                continue
            idx[r, col], sim[r, col] = j, score
            col += 1
    return idx, sim


def _rerank(q: np.ndarray, c: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-score fetched neighbours with the vectors that define similarity and keep the top ``k``."""
    valid = idx >= 0
    sims = np.where(valid, np.einsum("nd,nkd->nk", q, c[np.where(valid, idx, 0)]), -np.inf).astype(np.float32)
    order = np.lexsort((np.where(valid, idx, np.iinfo(np.int64).max), -sims), axis=1)[:, :k]
    return np.take_along_axis(np.where(valid, idx, -1), order, axis=1), np.take_along_axis(
        sims, order, axis=1
    )


def candidate_pairs(
    a: RegionTable,
    b: RegionTable,
    k: int,
    *,
    store: Any | None = None,
    raw: tuple[np.ndarray, np.ndarray] | None = None,
    oversample: int = 2,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    block_cols: int = DEFAULT_BLOCK_COLS,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Union of top-``k`` in both directions between regions ``a`` and ``b``.

    Returns ``(ia, ib, neigh)``: unique pair row indices, sorted, plus each side's top-``k``
    similarity lists (``neigh["a"]`` is ``(len(a), k)`` sims of a's rows to b) for hubness
    correction. With ``store`` the Qdrant path is used, otherwise the exact blocked path.

    ``a.vectors``/``b.vectors`` define the similarity. When they differ from what the store holds
    (the matcher centres each region's vectors), pass the stored vectors as ``raw``: Qdrant is
    asked for ``oversample * k`` raw neighbours, which are re-ranked by the table vectors.
    """
    if store is not None:
        fetch = k if raw is None else oversample * k
        qa, qb = (a.vectors, b.vectors) if raw is None else raw
        ab_idx, ab_sim = qdrant_topk(store, qa, b.region, b, fetch)
        ba_idx, ba_sim = qdrant_topk(store, qb, a.region, a, fetch)
        if raw is not None:
            ab_idx, ab_sim = _rerank(a.vectors, b.vectors, ab_idx, k)
            ba_idx, ba_sim = _rerank(b.vectors, a.vectors, ba_idx, k)
    else:
        ab_idx, ab_sim = exact_topk(a.vectors, b.vectors, k, block_rows=block_rows, block_cols=block_cols)
        ba_idx, ba_sim = exact_topk(b.vectors, a.vectors, k, block_rows=block_rows, block_cols=block_cols)
    rows_a = np.repeat(np.arange(len(a)), ab_idx.shape[1])
    rows_b = np.repeat(np.arange(len(b)), ba_idx.shape[1])
    ia = np.concatenate([rows_a, ba_idx.ravel()])
    ib = np.concatenate([ab_idx.ravel(), rows_b])
    ok = (ia >= 0) & (ib >= 0)
    key = np.unique(ia[ok] * max(len(b), 1) + ib[ok])
    ia_u, ib_u = key // max(len(b), 1), key % max(len(b), 1)
    logger.debug("%s|%s: %d candidate pairs at k=%d", a.region, b.region, len(key), k)
    return ia_u, ib_u, {"a": ab_sim, "b": ba_sim}
