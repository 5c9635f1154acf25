"""The match stage's parts (#22 point 7): settings checked once, input read apart from the matcher,
and the per-region-pair record every stage fills."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from polyglot_catalog.matching.blocks import PairBlock, concat_blocks
from polyglot_catalog.matching.data import RegionTable
from polyglot_catalog.matching.inputs import read_inputs
from polyglot_catalog.matching.pipeline import match_catalog, match_tables
from polyglot_catalog.matching.settings import MatchSettings
from polyglot_catalog.sentences import SentenceVectors


def _tables(n: int = 40, seed: int = 0) -> dict[str, RegionTable]:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 16))
    return {
        r: RegionTable(
            r,
            [f"{r}-{i:03d}" for i in range(n)],
            [f"item {i} {r}" for i in range(n)],
            base + 0.3 * rng.normal(size=base.shape),
        )
        for r in ("DE", "FR", "US")
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"k": 0}, "k must be >= 1; got 0"),
        ({"threshold": 1.5}, r"threshold must be in \[0, 1\]; got 1.5"),
        ({"method": "greedy"}, "method must be one of .*'greedy'"),
        ({"candidates": "faiss"}, "candidates must be one of .*'faiss'"),
        ({"block_rows": 0}, "block sizes must be >= 1"),
    ],
)
def test_bad_settings_fail_before_any_work_naming_the_value(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        match_catalog(_tables(), **options)


def test_settings_and_keyword_options_are_one_or_the_other_and_unknown_names_are_refused() -> None:
    with pytest.raises(TypeError, match="not both"):
        match_catalog(_tables(), MatchSettings(k=5), k=3)
    with pytest.raises(TypeError, match=r"unknown match settings \['kk'\]"):
        match_catalog(_tables(), kk=5)


def test_settings_object_and_keywords_decide_alike_and_are_recorded_whole() -> None:
    data = _tables()
    by_keywords = match_catalog(data, k=5, threshold=0.4, sentences=None)
    by_settings = match_catalog(data, MatchSettings(k=5, threshold=0.4), sentences=None)
    cols = ["region_a", "sku_a", "region_b", "sku_b", "score", "decision"]
    pd.testing.assert_frame_equal(by_keywords.pairs[cols], by_settings.pairs[cols])
    recorded = by_settings.summary["reproducibility"]["parameters"]
    for name, value in MatchSettings(k=5, threshold=0.4).as_dict().items():
        assert recorded[name] == value


def test_the_pure_matcher_gives_the_same_result_on_inputs_read_in_any_row_order() -> None:
    data = _tables()
    inputs = read_inputs(data)
    shuffled = {
        r: RegionTable(r, t.skus[::-1], t.texts[::-1], t.vectors[::-1].copy()) for r, t in data.items()
    }
    a = match_tables(inputs, MatchSettings(k=5))
    b = match_tables(read_inputs(shuffled), MatchSettings(k=5))
    cols = ["region_a", "sku_a", "region_b", "sku_b", "score", "decision"]
    pd.testing.assert_frame_equal(a.pairs[cols], b.pairs[cols])


def test_the_matcher_lets_go_of_the_input_rows_and_decides_as_before() -> None:
    """Read from a store, ``inputs`` holds the only reference to the catalog's vectors and sentence
    rows: the matcher must release them once it has its own copies (at 30k x 3 that took the peak
    from 1,861 to 1,655 MB), and the tables it keeps for the report still have every SKU and text."""
    import weakref

    data = _tables()
    sentences = {
        r: SentenceVectors.from_texts(t.texts, {s: v for s, v in zip(t.texts, t.vectors, strict=True)})
        for r, t in data.items()
    }
    kept = match_tables(read_inputs(data, sentences=sentences), MatchSettings(k=5))
    vectors = {r: weakref.ref(t.vectors) for r, t in data.items()}
    rows = {r: weakref.ref(sv.vectors) for r, sv in sentences.items()}
    inputs = read_inputs(data, sentences=sentences)
    del data, sentences
    released = match_tables(inputs, MatchSettings(k=5))
    assert inputs.data == {} and inputs.sentences is None
    assert all(ref() is None for ref in (*vectors.values(), *rows.values()))
    cols = ["region_a", "sku_a", "region_b", "sku_b", "score", "decision", "text_a", "text_b"]
    pd.testing.assert_frame_equal(kept.pairs[cols], released.pairs[cols])
    assert {r: len(s) for r, s in released.context.tables.items()} == {r: 40 for r in ("DE", "FR", "US")}


def test_reading_inputs_names_a_missing_region_and_a_bad_sentence_source() -> None:
    with pytest.raises(
        ValueError, match=r"regions \['JP'\] not in the data; available: \['DE', 'FR', 'US'\]"
    ):
        read_inputs(_tables(), ["DE", "JP"])
    with pytest.raises(ValueError, match="sentences must be a mapping, 'auto' or None; got 'yes'"):
        read_inputs(_tables(), sentences="yes")  # type: ignore[arg-type]
    assert read_inputs(_tables(), sentences="auto").sentences is None  # in-memory tables: no cache
    sv = {"DE": SentenceVectors(np.arange(41), np.ones((40, 16), np.float32))}
    assert read_inputs(_tables(), ["DE"], sentences=sv).sentences == sv


def test_a_block_keeps_its_rows_aligned_through_take_and_concat() -> None:
    kept = PairBlock(
        "DE",
        "FR",
        np.array([0, 1, 2]),
        np.array([2, 1, 0]),
        pd.DataFrame({"cosine": [0.9, 0.5, 0.1]}),
        ["a", "b", "c"],
        p1=np.array([0.9, 0.5, 0.1]),
        score=np.array([0.8, 0.4, 0.2]),
        accepted=np.array([True, False, False]),
        conflict=np.array([False, True, False]),
    )
    new = PairBlock(
        "DE",
        "FR",
        np.array([3]),
        np.array([3]),
        pd.DataFrame({"cosine": [0.7]}),
        ["d"],
        p1=np.array([0.7]),
        score=np.array([0.7]),
    )
    merged = concat_blocks("DE", "FR", [kept, new])
    assert len(merged) == 4 and merged.explain == ["a", "b", "c", "d"]
    assert merged.accepted.tolist() == [True, False, False, False]  # the new pair is undecided
    assert merged.conflict.tolist() == [False, True, False, False]
    assert merged.new.tolist() == [False, False, False, True]
    part = merged.take(np.array([1, 3]))
    assert part.ia.tolist() == [1, 3] and part.ib.tolist() == [1, 3]
    assert part.feats["cosine"].tolist() == [0.5, 0.7] and part.explain == ["b", "d"]
    assert part.score.tolist() == [0.4, 0.7] and part.conflict.tolist() == [True, False]
