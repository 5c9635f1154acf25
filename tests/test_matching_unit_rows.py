"""Row normalisation (``data.unit_rows``) gives the same bits in place, in any chunk size, and a
feature task's picked search vectors are centred in place with the chunks' bits."""

from __future__ import annotations

import numpy as np
import pytest

from polyglot_catalog.matching import data
from polyglot_catalog.matching.data import unit_rows


@pytest.mark.parametrize("chunk", [1, 7, 8_192, 65_536])
def test_unit_rows_in_place_and_in_any_chunk_are_the_same_bits(chunk: int, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_011, 24)).astype(np.float32)
    x[::5] /= np.linalg.norm(x[::5], axis=1, keepdims=True)  # some rows already unit: kept as they are
    want = unit_rows(x)
    monkeypatch.setattr(data, "UNIT_CHUNK", chunk)
    assert np.array_equal(unit_rows(x), want)
    y = x.copy()
    assert unit_rows(y, inplace=True) is y and np.array_equal(y, want)
    z = x.astype(np.float64)  # not float32: converted, the caller's array untouched
    assert np.array_equal(unit_rows(z, inplace=True), want) and np.array_equal(z, x.astype(np.float64))
