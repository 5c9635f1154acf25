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

import numpy as np

from ..sentences import SentenceVectors, split_sentences

#: Pairs per array pass: bounds the two (pairs x sentences x dim) gathers (~75 MB each at 24 x 384).
CHUNK = 2048


def center_sentences(sv: SentenceVectors) -> SentenceVectors:
    """A copy with the region's mean sentence vector removed and rows re-normalised."""
    if len(sv.vectors) < 2:
        return sv
    centred = sv.vectors - sv.vectors.mean(axis=0, keepdims=True)
    centred /= np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    return SentenceVectors(sv.offsets, centred, sv.weights)


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


def _gather(sv: SentenceVectors, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Padded ``(n, width, dim)`` sentence vectors of ``rows`` and their weights (0 on padding)."""
    counts = sv.counts()[rows]
    width = max(int(counts.max(initial=0)), 1)
    mask = np.arange(width)[None, :] < counts[:, None]
    index = np.where(mask, sv.offsets[rows][:, None] + np.arange(width)[None, :], 0)
    vectors = sv.vectors[index] if len(sv.vectors) else np.zeros((*index.shape, 1), np.float32)
    weights = (
        sv.weights[index] if sv.weights is not None and len(sv.vectors) else np.ones(index.shape, np.float32)
    )
    return vectors, np.where(mask, weights, 0.0)


def sentence_alignment(
    a: SentenceVectors, b: SentenceVectors, ia: np.ndarray, ib: np.ndarray, chunk: int = CHUNK
) -> np.ndarray:
    """Alignment F score per pair (``a``'s row ``ia[i]`` with ``b``'s row ``ib[i]``), float32.

    A product without sentences scores 0 with anything.
    """
    ia, ib = np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)
    out = np.zeros(len(ia), dtype=np.float32)
    for start in range(0, len(ia), chunk):
        xa, wa = _gather(a, ia[start : start + chunk])
        xb, wb = _gather(b, ib[start : start + chunk])
        ma, mb = wa > 0, wb > 0
        sims = np.einsum("nsd,ntd->nst", xa, xb)
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
