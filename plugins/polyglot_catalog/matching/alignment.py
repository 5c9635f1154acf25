"""Sentence alignment of candidate pairs: how well each description's sentences find a counterpart.

For a pair (a, b), every sentence of a takes its best cosine among b's sentences (precision) and every
sentence of b its best among a's (recall); the feature is their harmonic mean, as BERTScore does with
tokens. A variant that shares the boilerplate but differs in the one sentence that says what it is
scores lower than the true twin, whose sentences all find their translation. Sentence vectors are
centred per region first, like the text vectors, so the language offset does not count as agreement.
Each sentence is weighted by its IDF within its region (as BERTScore weights tokens): a care
instruction that hundreds of products repeat says little about which product this is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..sentences import SentenceVectors, split_sentences

#: Pairs per array pass: bounds the two (pairs x sentences x dim) gathers (~75 MB each at 24 x 384).
CHUNK = 2048


def sentence_mean(sv: SentenceVectors, chunk: int = 65_536) -> np.ndarray | None:
    """The region's mean sentence vector over occurrences (None with fewer than two)."""
    if sv.n_occurrences < 2:
        return None
    uses = None if sv.index is None else np.bincount(sv.index, minlength=len(sv.vectors))
    total = np.zeros(sv.vectors.shape[1], dtype=np.float64)
    for start in range(0, len(sv.vectors), chunk):  # float64 sums without a float64 copy of the rows
        part = sv.take(np.arange(start, min(start + chunk, len(sv.vectors)))).astype(np.float64)
        total += part.sum(axis=0) if uses is None else uses[start : start + chunk] @ part
    return (total / sv.n_occurrences).astype(np.float32)


def center_sentences(
    sv: SentenceVectors, chunk: int = 65_536, *, mean: np.ndarray | None = None
) -> SentenceVectors:
    """An int8 copy with the region's mean sentence vector removed and rows re-normalised.

    The mean is over sentence occurrences (a care text on 500 products pulls it 500 times, as with
    one row per occurrence), but it is subtracted from the distinct rows only: the copy has one row
    per row of ``sv.vectors``, and offsets, index and weights are shared.

    Why int8 (one scale per row, symmetric): the copy is the matcher's largest array with long
    descriptions (1.0 GB as float32 at 100k products per region; 0.26 GB as int8). A cosine moves
    by ~2e-3 at most; the dev set's top-1 moved by 0.001 at most (bench/RESULTS.md). float16 halved
    it only, and numpy's float16 -> float32 cast made each gather 4x slower (10.4 vs 2.4 ms per
    2048 pairs); int8 casts at about the speed of a float32 gather.

    ``mean``: subtract this one instead (an incremental run's frozen region mean, see .context).
    """
    mean = sentence_mean(sv, chunk) if mean is None else mean  # given: an incremental run's frozen mean
    if mean is None or not sv.n_occurrences:
        return sv
    quantised = np.empty(sv.vectors.shape, dtype=np.int8)
    scales = np.empty(len(sv.vectors), dtype=np.float32)
    for start in range(0, len(sv.vectors), chunk):  # float32 work one chunk at a time
        part = sv.take(np.arange(start, min(start + chunk, len(sv.vectors)))) - mean
        part /= np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
        scale = np.maximum(np.abs(part).max(axis=1), 1e-12) / 127.0
        quantised[start : start + chunk] = np.rint(part / scale[:, None])
        scales[start : start + chunk] = scale
    return SentenceVectors(sv.offsets, quantised, sv.weights, sv.index, scales)


def sentence_idf(texts: list[str]) -> np.ndarray:
    """Smoothed IDF of every sentence row of ``texts`` (in :func:`.split_sentences` order), from how
    many of the texts contain that exact sentence: ``ln((1 + n) / (1 + df)) + 1``."""
    sentences = [split_sentences(t) for t in texts]
    df: dict[str, int] = {}
    for sents in sentences:
        for s in set(sents):
            df[s] = df.get(s, 0) + 1
    n = len(texts)
    return np.array(
        [np.log((1 + n) / (1 + df[s])) + 1 for sents in sentences for s in sents], dtype=np.float32
    )


def frozen_sentence_weights(
    texts: list[str], sv: SentenceVectors, df_of: Callable[[np.ndarray], np.ndarray], n: int
) -> SentenceVectors:
    """``sv`` (sentences of ``texts`` in :func:`.split_sentences` order) one row per occurrence, each
    weighted by the smoothed IDF of its sentence in the region's frozen document frequencies
    (``df_of(sentence keys)`` over ``n`` products, see .context): an incremental run scores its few
    changed products with the weights the whole region gave them, not the counts among themselves."""
    from .context import text_keys

    occ = text_keys(s for t in texts for s in split_sentences(t))
    if len(occ) != sv.n_occurrences:
        raise ValueError(f"sentence vectors have {sv.n_occurrences} sentences, the texts {len(occ)}")
    weights = np.log((1 + n) / (1 + df_of(occ).astype(np.float64))) + 1
    return SentenceVectors(sv.offsets, sv.occurrence_vectors(), weights.astype(np.float32))


def row_idf(sv: SentenceVectors) -> np.ndarray:
    """The same smoothed IDF per row of ``sv.vectors``, from how many products use that row.

    Equal to :func:`sentence_idf` when each row is one distinct sentence (as
    :meth:`.SentenceVectors.from_texts` builds them), without splitting the texts again.
    """
    n = len(sv)
    product = np.repeat(np.arange(n, dtype=np.int64), sv.counts())
    used = np.unique(product * len(sv.vectors) + sv.rows())  # each (product, row) once
    df = np.bincount(used % max(len(sv.vectors), 1), minlength=len(sv.vectors))
    return (np.log((1 + n) / (1 + df)) + 1).astype(np.float32)


def _gather(sv: SentenceVectors, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Padded ``(n, width, dim)`` sentence vectors of ``rows``, their weights (0 on padding), and
    for int8 vectors their scales (``(n, width)``; the vectors come unscaled, the caller scales the
    far smaller similarity matrix instead)."""
    counts = sv.counts()[rows]
    width = max(int(counts.max(initial=0)), 1)
    mask = np.arange(width)[None, :] < counts[:, None]
    if not sv.n_occurrences:  # nothing to gather; keep the dim so the other side's rows still multiply
        dim = sv.vectors.shape[1] if sv.vectors.ndim == 2 else 1
        return np.zeros((*mask.shape, dim), np.float32), np.zeros(mask.shape, np.float32), None
    index = np.where(mask, sv.offsets[rows][:, None] + np.arange(width)[None, :], 0)
    if sv.index is not None:
        index = sv.index[index]  # occurrence -> distinct row
    vectors = sv.vectors[index].astype(np.float32, copy=False)
    weights = sv.weights[index] if sv.weights is not None else np.ones(index.shape, np.float32)
    return vectors, np.where(mask, weights, 0.0), None if sv.scales is None else sv.scales[index]


def sentence_alignment(
    a: SentenceVectors, b: SentenceVectors, ia: np.ndarray, ib: np.ndarray, chunk: int = CHUNK
) -> np.ndarray:
    """Alignment F score per pair (``a``'s row ``ia[i]`` with ``b``'s row ``ib[i]``), float32.

    A product without sentences scores 0 with anything.
    """
    ia, ib = np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)
    out = np.zeros(len(ia), dtype=np.float32)
    for start in range(0, len(ia), chunk):
        xa, wa, sa = _gather(a, ia[start : start + chunk])
        xb, wb, sb = _gather(b, ib[start : start + chunk])
        ma, mb = wa > 0, wb > 0
        sims = np.matmul(xa, xb.transpose(0, 2, 1))  # batched BLAS: ~3x einsum's loop
        if sa is not None:
            sims *= sa[:, :, None]
        if sb is not None:
            sims *= sb[:, None, :]
        sims = np.where(ma[:, :, None] & mb[:, None, :], sims, -np.inf)
        # each a sentence's best counterpart in b (precision) and each b sentence's in a (recall)
        best_a = (np.where(ma, sims.max(axis=2), 0.0) * wa).sum(axis=1)
        best_b = (np.where(mb, sims.max(axis=1), 0.0) * wb).sum(axis=1)
        sum_a, sum_b = wa.sum(axis=1), wb.sum(axis=1)
        ok = (sum_a > 0) & (sum_b > 0)
        p = np.where(ok, best_a / np.maximum(sum_a, 1e-12), 0.0)
        r = np.where(ok, best_b / np.maximum(sum_b, 1e-12), 0.0)
        both = (p > 0) & (r > 0)
        out[start : start + chunk] = np.where(both, 2 * p * r / np.where(both, p + r, 1.0), (p + r) / 2)
    return out
