"""Where values sit in a sorted key array, or that they are absent.

The matcher keys its rows by sorted arrays (SKUs of a canonical table, n-gram buckets, distinct
texts, edge keys) and looks millions of values up at once with :func:`numpy.searchsorted`; the
clip to the last position and the equality check that tells a hit from an insertion point were
written out at each lookup, each with its own edge cases (empty keys, values past the end).
"""

from __future__ import annotations

import numpy as np


def positions(keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(at, found)``: for each of ``wanted``, its position in the sorted ``keys`` and whether it is
    there (``at`` is a valid index of a non-empty ``keys`` but meaningless where not ``found``)."""
    wanted = np.asarray(wanted, dtype=keys.dtype if keys.dtype == object else None)
    if not len(keys) or not len(wanted):
        return np.zeros(len(wanted), dtype=np.int64), np.zeros(len(wanted), dtype=bool)
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return at, keys[at] == wanted
