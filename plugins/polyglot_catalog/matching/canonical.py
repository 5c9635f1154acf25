"""Same catalog, same decisions: the rule that keeps floating-point noise out of every decision.

Float32 matrix products round differently with the block shape, the thread count, the CPU's BLAS
kernels and the row a vector sits in; a collection embedded in other batches differs in the last
bits of its vectors. A decision that compares two scores (top-k, reciprocal best, one-to-one
assignment, threshold, group merge order) must not depend on any of that. The rule
(docs/DETERMINISM.md):

1. **One canonical row order.** Every region's rows are sorted by SKU before matching, so "lower
   row" means "lower SKU" and no decision depends on file order, shuffling or shard split.
2. **One vector per text.** Rows of a region with identical text (duplicate listings, shared care
   texts) take the vector of the lowest SKU among them, so identical listings tie exactly.
3. **Similarities recomputed per pair.** Candidate retrieval (BLAS blocks or HNSW) only proposes
   neighbours, with slack; the similarity that ranks and scores them is recomputed per pair in
   float64 from the stored vectors (exact products, a row-local sum), independent of block, thread
   and candidate path.
4. **Scores on a fixed grid.** Similarities and match probabilities are rounded to :data:`GRID`
   (1e-6); equal values on the grid are ordered by the canonical row order (region, SKU).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..sentences import SentenceVectors

if TYPE_CHECKING:
    from .data import RegionTable

#: Decimal digits of the grid every compared score lives on.
GRID_DIGITS = 6
GRID = 10.0**-GRID_DIGITS
#: Pairs whose similarity is recomputed per step (two float64 gathers of this many rows).
PAIR_CHUNK = 16_384


def snap(x: np.ndarray | float) -> np.ndarray:
    """``x`` in float64 rounded to :data:`GRID`."""
    return np.round(np.asarray(x, dtype=np.float64), GRID_DIGITS)


def canonical_order(skus: list[str]) -> np.ndarray:
    """Row positions sorted by SKU (the canonical row order)."""
    return np.array(sorted(range(len(skus)), key=skus.__getitem__), dtype=np.int64)


def canonical_table(table: RegionTable) -> RegionTable:
    """``table`` with its rows sorted by SKU and identical texts sharing the lowest SKU's vector.

    Rows are only moved: construction normalises them again, which leaves a unit row's bits as they
    are (:func:`.data.unit_rows`), so a sorted and a shuffled input, or a search task reading the
    region in chunks (:mod:`.region_search`), hold the same bits."""
    order = canonical_order(table.skus)
    texts = [table.texts[i] for i in order]
    vectors = table.vectors[order]
    sets = TextSets.of(texts)
    if len(sets.rep) < len(texts):
        vectors = vectors[sets.rep[sets.inverse]]
    return replace(
        table,
        skus=[table.skus[i] for i in order],
        texts=texts,
        vectors=vectors,
        fields={name: [col[i] for i in order] for name, col in table.fields.items()},
        point_ids=None if table.point_ids is None else [table.point_ids[i] for i in order],
    )


def permute_sentences(sv: SentenceVectors, order: np.ndarray) -> SentenceVectors:
    """``sv`` with its products in ``order`` (the same permutation as :func:`canonical_order`)."""
    if np.array_equal(order, np.arange(len(order))):
        return sv
    counts = np.diff(sv.offsets)[order]
    starts = sv.offsets[:-1][order]
    occ = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
    offsets = np.concatenate([[0], np.cumsum(counts)])
    if sv.index is not None:
        return SentenceVectors(offsets, sv.vectors, sv.weights, sv.index[occ], sv.scales)
    return SentenceVectors(
        offsets,
        sv.vectors[occ],
        None if sv.weights is None else sv.weights[occ],
        None,
        None if sv.scales is None else sv.scales[occ],
    )


@dataclass(frozen=True)
class TextSets:
    """The distinct texts of a region: ``rep`` (the first row, i.e. lowest SKU, of each distinct text,
    ascending) and ``inverse`` (per row, the index of its text in ``rep``)."""

    rep: np.ndarray
    inverse: np.ndarray

    @classmethod
    def of(cls, texts: list[str]) -> TextSets:
        codes, _ = pd.factorize(np.asarray(texts, dtype=object))  # codes in order of first row
        codes = codes.astype(np.int64)
        _, rep = np.unique(codes, return_index=True)  # first row of each text, ascending
        return cls(rep=rep.astype(np.int64), inverse=codes)

    def __len__(self) -> int:
        return len(self.rep)

    def shared(self) -> np.ndarray:
        """Per row: does another row have the same text (a duplicate listing)?"""
        return np.bincount(self.inverse, minlength=len(self.rep))[self.inverse] > 1

    def members(self, cap: int) -> tuple[np.ndarray, np.ndarray]:
        """CSR of each text's rows, ascending, at most ``cap`` per text: ``(ptr, rows)``."""
        order = np.argsort(self.inverse, kind="stable")  # rows grouped by text, ascending within
        counts = np.bincount(self.inverse, minlength=len(self.rep))
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(len(order)) - np.repeat(start, counts)
        keep = rank < cap
        kept = np.minimum(counts, cap)
        return np.concatenate([[0], np.cumsum(kept)]).astype(np.int64), order[keep]


def pair_cosine(vec_a: np.ndarray, vec_b: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """``vec_a[ia[i]] . vec_b[ib[i]]`` on the grid, whatever the pair's position.

    Products of two float32 values are exact in float64, and each pair is summed on its own (no
    BLAS kernel whose rounding depends on the row's place in a block), so the same two vectors give
    the same value in any chunk, order, thread count or candidate path.
    """
    ia, ib = np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)
    out = np.empty(len(ia), dtype=np.float64)
    for s in range(0, len(ia), PAIR_CHUNK):
        xa = vec_a[ia[s : s + PAIR_CHUNK]].astype(np.float64)
        xa *= vec_b[ib[s : s + PAIR_CHUNK]]
        out[s : s + PAIR_CHUNK] = xa.sum(axis=1)
    return snap(out)


def canonical_topk(
    queries: np.ndarray, corpus: np.ndarray, idx: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank proposed neighbours ``idx`` (``(n, w)``, ``-1`` = none, repeats allowed) by
    :func:`pair_cosine` and keep the best ``k`` per query: higher similarity first, equal
    similarities by lower corpus row. Returns ``(idx, sim)`` ``(n, k)``, padded with -1 / -inf."""
    n = len(idx)
    out_idx = np.full((n, k), -1, dtype=np.int64)
    out_sim = np.full((n, k), -np.inf, dtype=np.float64)
    rows, cols = np.nonzero(idx >= 0)
    if len(rows) == 0:
        return out_idx, out_sim
    cand = idx[rows, cols]
    key = np.unique(rows.astype(np.int64) * max(len(corpus), 1) + cand)  # one entry per (query, row)
    rows, cand = key // max(len(corpus), 1), key % max(len(corpus), 1)
    sim = pair_cosine(queries, corpus, rows, cand)
    order = np.lexsort((cand, -sim, rows))
    rows, cand, sim = rows[order], cand[order], sim[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    keep = rank < k
    out_idx[rows[keep], rank[keep]] = cand[keep]
    out_sim[rows[keep], rank[keep]] = sim[keep]
    return out_idx, out_sim


def prefer_lower_rows(
    ia: np.ndarray,
    ib: np.ndarray,
    score: np.ndarray,
    accepted: np.ndarray,
    text_a: TextSets,
    text_b: TextSets,
) -> np.ndarray:
    """``accepted`` with each set of identical listings' matches held by its lowest rows (SKUs).

    Rows with identical text have identical candidates and scores, so the one-to-one optimum may
    give any of its partners to any of them; handing the best-scoring partner to the lowest row, the
    next to the next (equal scores in partner row order) keeps every pair's score, hence the total
    weight, and makes the choice a rule of the data rather than of the solver's path (which changes
    with every other edge of the graph, night to night). A set whose rows do not score exactly alike
    (other title, brand or GTIN) is left as the solver chose.
    """
    accepted = np.asarray(accepted, dtype=bool).copy()
    for side in ("a", "b"):
        own, other, sets = (ia, ib, text_a) if side == "a" else (ib, ia, text_b)
        hit = np.flatnonzero(accepted & sets.shared()[own])
        if len(hit) == 0:
            continue
        by_text: dict[int, list[int]] = {}
        for i in hit:
            by_text.setdefault(int(sets.inverse[own[i]]), []).append(int(i))
        width = int(max(own.max(initial=0), other.max(initial=0))) + 1
        # each pair's index by its (own, other) key, sorted: a dict of every pair of the region pair
        # was ~150 B a pair (the score task's peak at 300k x 3, 1.75 GB)
        keys = own.astype(np.int64) * width + other
        by_key = np.argsort(keys, kind="stable")
        keys = keys[by_key]
        ptr, rows = sets.members(len(sets.inverse))
        for text, picks in by_text.items():
            members = rows[ptr[text] : ptr[text + 1]]
            want = members[: len(picks)]
            # the best-scoring partner to the lowest row, and so on (ties in partner row order)
            ranked = np.array(sorted(picks, key=lambda i: (-score[i], int(other[i]))), dtype=np.int64)
            wanted = want.astype(np.int64) * width + other[ranked]
            at = np.searchsorted(keys, wanted, side="right") - 1  # the last pair of a key, as a dict's
            if (at < 0).any() or (keys[np.maximum(at, 0)] != wanted).any():
                continue  # a partner is no candidate of the row: the solver's choice stands
            moved = by_key[at]
            if (score[moved] != score[ranked]).any():
                continue  # the rows do not score exactly alike: the solver's choice stands
            accepted[picks] = False
            accepted[moved] = True
    return accepted


def tied_rivals(ia: np.ndarray, ib: np.ndarray, score: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """Per pair, the pair index of a rival that shares one of its products and has exactly its score
    (-1 when none): an accepted pair with a rival was decided by a tie alone."""
    rival = np.full(len(ia), -1, dtype=np.int64)
    for own in (ia, ib):
        order = np.lexsort((np.arange(len(own)), score, own))
        o, s = own[order], score[order]
        same = (o[1:] == o[:-1]) & (s[1:] == s[:-1])
        nxt, prv = order[1:][same], order[:-1][same]  # neighbours in (product, score) order
        rival[prv] = np.where(rival[prv] < 0, nxt, rival[prv])
        rival[nxt] = np.where(rival[nxt] < 0, prv, rival[nxt])
    rival[~np.asarray(accepted, dtype=bool)] = -1
    return rival
