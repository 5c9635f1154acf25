"""Sentence alignment of candidate pairs: how well each description's sentences find a counterpart.

For a pair (a, b), every sentence of a takes its best cosine among b's sentences (precision) and every
sentence of b its best among a's (recall); the feature is their harmonic mean, as BERTScore does with
tokens. A variant that shares the boilerplate but differs in the one sentence that says what it is
scores lower than the true twin, whose sentences all find their translation. Sentence vectors are
centred per region first, like the text vectors, so the language offset does not count as agreement.
"""

from __future__ import annotations

import numpy as np

from ..sentences import SentenceVectors

#: Pairs per array pass: bounds the two (pairs x sentences x dim) gathers (~75 MB each at 24 x 384).
CHUNK = 2048


def center_sentences(sv: SentenceVectors) -> SentenceVectors:
    """A copy with the region's mean sentence vector removed and rows re-normalised."""
    if len(sv.vectors) < 2:
        return sv
    centred = sv.vectors - sv.vectors.mean(axis=0, keepdims=True)
    centred /= np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    return SentenceVectors(sv.offsets, centred)


def _gather(sv: SentenceVectors, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Padded ``(n, width, dim)`` sentence vectors of ``rows``, their mask, and their counts."""
    counts = sv.counts()[rows]
    width = max(int(counts.max(initial=0)), 1)
    mask = np.arange(width)[None, :] < counts[:, None]
    index = np.where(mask, sv.offsets[rows][:, None] + np.arange(width)[None, :], 0)
    vectors = sv.vectors[index] if len(sv.vectors) else np.zeros((*index.shape, 1), np.float32)
    return vectors, mask, counts


def sentence_alignment(
    a: SentenceVectors, b: SentenceVectors, ia: np.ndarray, ib: np.ndarray, chunk: int = CHUNK
) -> np.ndarray:
    """Alignment F score per pair (``a``'s row ``ia[i]`` with ``b``'s row ``ib[i]``), float32.

    A product without sentences scores 0 with anything.
    """
    ia, ib = np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)
    out = np.zeros(len(ia), dtype=np.float32)
    for start in range(0, len(ia), chunk):
        xa, ma, na = _gather(a, ia[start : start + chunk])
        xb, mb, nb = _gather(b, ib[start : start + chunk])
        sims = np.einsum("nsd,ntd->nst", xa, xb)
        sims = np.where(ma[:, :, None] & mb[:, None, :], sims, -np.inf)
        best_a = np.where(ma, sims.max(axis=2), 0.0).sum(axis=1)  # each a sentence's best in b
        best_b = np.where(mb, sims.max(axis=1), 0.0).sum(axis=1)
        ok = (na > 0) & (nb > 0)
        p = np.where(ok, best_a / np.maximum(na, 1), 0.0)
        r = np.where(ok, best_b / np.maximum(nb, 1), 0.0)
        both = (p > 0) & (r > 0)
        out[start : start + chunk] = np.where(both, 2 * p * r / np.where(both, p + r, 1.0), (p + r) / 2)
    return out
