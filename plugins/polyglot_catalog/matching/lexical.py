"""The ``lexical`` feature: char 3-5-gram TF-IDF cosine of two products' texts.

Names, numbers and cognates survive translation as character n-grams. Each region's texts are
hashed once (:class:`~sklearn.feature_extraction.text.HashingVectorizer`, stateless, in chunks)
into sublinear term frequencies over the region's own n-gram buckets with their document
frequencies; a region pair then takes its IDF from the two regions' document frequencies together.
The values equal those of ``TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5),
sublinear_tf=True, min_df=2)`` fitted on both regions' texts (tested) unless two n-grams share one
of the 2**31 hash buckets (a few pairs in a catalog of millions of n-grams).

Why not that vectorizer per region pair: it analysed every region once for each pair it is in and
built a vocabulary dict of n-gram strings whose transients were the matcher's memory peak with
long descriptions (about 1.5 GB above its 0.5 GB of matrices at 100k products per region).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..memory import release_freed_memory

#: Hash buckets: as many as a 32-bit index allows, so distinct n-grams practically never merge.
#: Only the buckets a region uses are stored (``NgramCounts.keys``), never a vector this long.
N_FEATURES = 2**31 - 1
NGRAM_RANGE = (3, 5)
#: An n-gram must occur in at least this many texts of the pair to count (as ``min_df``).
MIN_DF = 2


@dataclass(frozen=True)
class NgramCounts:
    """One region's hashed char n-grams.

    ``keys`` are the hash buckets the region's texts use (sorted), ``df`` how many texts contain
    each, and ``tf`` a CSR matrix with one row per text and one column per key: ``1 + ln(count)``
    (sublinear tf).
    """

    tf: object
    keys: np.ndarray
    df: np.ndarray
    #: Texts the document frequencies count (default: the rows of ``tf``); see :func:`frozen_counts`.
    size: int | None = None

    def __len__(self) -> int:
        return int(self.tf.shape[0]) if self.size is None else self.size


def ngram_counts(texts: Sequence[str], *, chunk: int = 10_000) -> NgramCounts:
    """Hash ``texts`` (lower-cased, char 3-5-grams within word boundaries) ``chunk`` texts at a time.

    The chunks' buckets are collected as sorted key sets, then each chunk is renumbered onto the
    final keys and written into preallocated arrays, its own memory released as it goes (a global
    ``np.unique`` over all n-gram entries peaked at ~3x the result; see :mod:`..memory`).
    """
    from scipy.sparse import csr_matrix
    from sklearn.feature_extraction.text import HashingVectorizer

    hasher = HashingVectorizer(
        analyzer="char_wb",
        ngram_range=NGRAM_RANGE,
        n_features=N_FEATURES,
        alternate_sign=False,
        norm=None,
        dtype=np.float32,
    )
    texts = list(texts)
    parts = []
    keys = np.zeros(0, dtype=np.int32)
    for start in range(0, len(texts), chunk):
        part = hasher.transform(texts[start : start + chunk])  # duplicates summed, columns sorted
        part.indices = part.indices.astype(np.int32, copy=False)
        keys = np.union1d(keys, part.indices)
        parts.append(part)
    nnz = sum(p.nnz for p in parts)
    # one index dtype for both, or scipy copies the indices to match (int32 while it fits)
    indptr = np.zeros(len(texts) + 1, dtype=np.int32 if nnz < 2**31 else np.int64)
    data = np.empty(nnz, dtype=np.float32)
    local = np.empty(nnz, dtype=np.int32)
    df = np.zeros(len(keys), dtype=np.int64)
    row = at = 0
    while parts:
        part = parts.pop(0)
        n = part.shape[0]
        indptr[row + 1 : row + n + 1] = at + part.indptr[1:]
        np.log(part.data, out=data[at : at + part.nnz])
        local[at : at + part.nnz] = np.searchsorted(keys, part.indices)  # increasing: rows stay sorted
        # one entry per (text, bucket); per chunk, as bincount casts its input to int64
        df += np.bincount(local[at : at + part.nnz], minlength=len(keys))
        row, at = row + n, at + part.nnz
        del part
        release_freed_memory()  # the chunk's pages go back as the result's are written
    data += 1.0  # sublinear tf: 1 + ln(count)
    tf = csr_matrix((data, local, indptr), shape=(len(texts), len(keys)))
    return NgramCounts(tf, keys.astype(np.int32), df.astype(np.int32))


def frozen_counts(texts: Sequence[str], keys: np.ndarray, df: np.ndarray, size: int) -> NgramCounts:
    """``texts`` hashed as :func:`ngram_counts` does, but counted against a region's frozen document
    frequencies (``keys``/``df`` over ``size`` texts, from the run an incremental one continues):
    the IDF of a pair then does not depend on which few texts were re-scored (docs/MATCH_STATE.md).
    A bucket the frozen region lacked counts the new texts that use it.
    """
    from scipy.sparse import csr_matrix

    own = ngram_counts(texts)
    union = np.union1d(keys, own.keys)
    merged = np.zeros(len(union), dtype=np.int64)
    merged[np.searchsorted(union, keys)] = df
    fresh = ~np.isin(own.keys, keys)
    merged[np.searchsorted(union, own.keys[fresh])] = own.df[fresh]
    tf = own.tf  # columns renumbered onto the union (an increasing map: rows stay sorted)
    cols = np.searchsorted(union, own.keys).astype(np.int32)[tf.indices]  # type: ignore[attr-defined]
    renumbered = csr_matrix((tf.data, cols, tf.indptr), shape=(len(texts), len(union)))  # type: ignore[attr-defined]
    return NgramCounts(renumbered, union.astype(np.int32), merged.astype(np.int32), size=size)


def lexical_cosine(
    a: NgramCounts, b: NgramCounts, ia: np.ndarray, ib: np.ndarray, chunk: int = 8192
) -> np.ndarray:
    """TF-IDF cosine of ``a``'s text ``ia[i]`` and ``b``'s text ``ib[i]`` per pair, float32
    (0 where either text has no n-gram that two texts of the pair share). Pairs go ``chunk`` at a
    time: each gathers both sides' rows (~400 n-grams per long description).

    IDF is smoothed over both regions' texts, ``ln((1 + n) / (1 + df)) + 1``, and 0 for n-grams in
    fewer than :data:`MIN_DF` texts (they would only lengthen one text's vector).
    """
    from scipy.sparse import csr_matrix

    union = np.union1d(a.keys, b.keys)
    to_a, to_b = np.searchsorted(union, a.keys), np.searchsorted(union, b.keys)  # increasing maps
    df = np.zeros(len(union), dtype=np.int64)
    df[to_a] += a.df
    df[to_b] += b.df
    n = len(a) + len(b)
    idf2 = np.where(df >= MIN_DF, np.log((1.0 + n) / (1.0 + df)) + 1.0, 0.0) ** 2
    norm_a, norm_b = _row_norms(a.tf, idf2[to_a]), _row_norms(b.tf, idf2[to_b])

    def rows(side: NgramCounts, to_union: np.ndarray, picked: np.ndarray) -> csr_matrix:
        part = side.tf[picked]  # type: ignore[index]
        return csr_matrix((part.data, to_union[part.indices], part.indptr), shape=(len(picked), len(union)))

    ia, ib = np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)
    out = np.zeros(len(ia), dtype=np.float32)
    for start in range(0, len(ia), chunk):
        ra, rb = ia[start : start + chunk], ib[start : start + chunk]
        dots = rows(a, to_a, ra).multiply(rows(b, to_b, rb)) @ idf2
        denom = norm_a[ra] * norm_b[rb]
        out[start : start + chunk] = np.divide(dots, denom, out=np.zeros_like(denom), where=denom > 0)
    return out


def _row_norms(tf: object, idf2: np.ndarray, chunk: int = 20_000) -> np.ndarray:
    """Length of every row's TF-IDF vector (rows in chunks: ``power`` copies what it squares)."""
    n = tf.shape[0]  # type: ignore[attr-defined]
    sq = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        sq[start : start + chunk] = tf[start : start + chunk].power(2) @ idf2  # type: ignore[index]
    return np.sqrt(sq)
