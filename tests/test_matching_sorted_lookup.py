"""Sorted-key lookups (SKUs, n-gram buckets, texts, edge keys) tell hits from insertion points."""

from __future__ import annotations

import numpy as np

from polyglot_catalog.matching.sorted_lookup import positions


def test_hits_are_placed_and_values_between_before_or_past_the_keys_are_absent() -> None:
    keys = np.array([3, 7, 9], dtype=np.int64)
    at, found = positions(keys, np.array([9, 3, 8, 0, 12, 7]))
    assert found.tolist() == [True, True, False, False, False, True]
    assert at[found].tolist() == [2, 0, 1]
    assert ((at >= 0) & (at < len(keys))).all()  # always a valid index, even past the end


def test_sku_strings_and_an_empty_region() -> None:
    skus = np.array(["A-1", "B-2", "C-3"], dtype=object)
    at, found = positions(skus, ["B-2", "Z-9", "A-1"])
    assert found.tolist() == [True, False, True] and at[found].tolist() == [1, 0]
    at, found = positions(np.array([], dtype=object), ["A-1"])
    assert found.tolist() == [False] and at.tolist() == [0]
    at, found = positions(skus, [])
    assert len(at) == 0 and len(found) == 0
