"""Connected components of the pairs a decision can touch, and batches of whole components.

Why: the one-to-one refill and the group rule only ever look at pairs over the threshold (or already
accepted), and two such pairs interact only through a shared product, directly or along a chain. So
the catalog splits into components that are decided apart: in batches whose size is bounded by the
largest component instead of the catalog (entity-resolution tools fail at scale exactly here:
Splink #785, Zingg #1339, dedupe #756), and with the guarantee that a conflict in one part of the
catalog never changes a decision in another.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

logger = logging.getLogger(__name__)

#: Pairs decided together at most, unless one component alone is larger (it then goes alone).
BATCH_PAIRS = 250_000


def pair_components(
    region_a: Sequence[object],
    sku_a: Sequence[object],
    region_b: Sequence[object],
    sku_b: Sequence[object],
) -> np.ndarray:
    """Per pair, the label of its connected component (products are ``(region, sku)`` nodes; a SKU
    string in two regions is two products). Labels are ``0..c-1`` in order of each component's
    first pair, so they do not depend on anything but the pairs and their order."""
    n = len(sku_a)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    regions, _ = pd.factorize(np.concatenate([np.asarray(region_a, object), np.asarray(region_b, object)]))
    skus, sku_values = pd.factorize(np.concatenate([np.asarray(sku_a, object), np.asarray(sku_b, object)]))
    nodes, node_values = pd.factorize(regions.astype(np.int64) * (len(sku_values) + 1) + skus)
    graph = coo_array((np.ones(n, dtype=np.int8), (nodes[:n], nodes[n:])), shape=(len(node_values),) * 2)
    _, node_label = connected_components(graph, directed=False)
    label, _ = pd.factorize(node_label[nodes[:n]])  # renumbered by first pair
    return label.astype(np.int64)


def component_batches(labels: np.ndarray, max_pairs: int = BATCH_PAIRS) -> Iterator[np.ndarray]:
    """Positions of the pairs of whole components, ascending, ``max_pairs`` or fewer per batch (a
    larger component alone); components in label order. The batches change no decision, only how
    many pairs are held at once."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels)
    if sizes.max() > max_pairs:
        logger.warning(
            "one component holds %d pairs (batch limit %d): it is decided alone, in one piece",
            int(sizes.max()),
            max_pairs,
        )
    ends = np.cumsum(sizes)
    start = 0
    while start < len(sizes):
        # the longest run of components from ``start`` within max_pairs (at least one)
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + max_pairs, side="right")))
        yield np.sort(order[base : ends[stop - 1]])
        start = stop
