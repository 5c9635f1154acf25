"""Sentence vectors: splitting, the content-addressed cache in Qdrant, the embed stage filling it, the
alignment feature, and match_catalog using it (from a mapping or from the store's cache)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import FakeEncoder

from polyglot_catalog.embed import embed_catalog
from polyglot_catalog.matching.alignment import center_sentences, row_idf, sentence_alignment, sentence_idf
from polyglot_catalog.matching.data import RegionTable
from polyglot_catalog.matching.pipeline import match_catalog
from polyglot_catalog.sentences import (
    MAX_SENTENCES,
    SentenceCache,
    SentenceVectors,
    sentence_collection,
    sentence_id,
    split_sentences,
)
from polyglot_catalog.store import CatalogStore, open_client, vector_name_for

# --------------------------------------------------------------------------------------------------
# split_sentences


def test_split_at_western_punctuation_followed_by_whitespace() -> None:
    text = "Birch shelf unit. Wipe clean with a damp cloth! Needs assembly? Yes;  two people\nrequired"
    assert split_sentences(text) == [
        "Birch shelf unit.",
        "Wipe clean with a damp cloth!",
        "Needs assembly?",
        "Yes;",
        "two people\nrequired",
    ]


def test_punctuation_without_following_whitespace_does_not_split() -> None:
    assert split_sentences("Shelf 80.5 cm, model v1.2;white") == ["Shelf 80.5 cm, model v1.2;white"]


def test_split_at_cjk_full_stops_without_space() -> None:
    assert split_sentences("白い本棚です。湿った布で拭いてください！組み立てが必要ですか？はい、二人で") == [
        "白い本棚です。",
        "湿った布で拭いてください！",
        "組み立てが必要ですか？",
        "はい、二人で",
    ]


def test_fragments_shorter_than_three_chars_are_dropped() -> None:
    assert split_sentences("Birch shelf unit. A. ok Oak table. xy") == ["Birch shelf unit.", "ok Oak table."]
    assert split_sentences("Birch shelf. A. B.") == ["Birch shelf."]


def test_text_without_a_boundary_is_one_sentence() -> None:
    assert split_sentences("  Birch shelf unit, 80 cm, white  ") == ["Birch shelf unit, 80 cm, white"]
    # nothing long enough after splitting: the whole (stripped) text is the one sentence
    assert split_sentences(" A. B ") == ["A. B"]


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_or_blank_text_has_no_sentences(text: str) -> None:
    assert split_sentences(text) == []


def test_sentences_are_capped_keeping_the_first_ones() -> None:
    text = " ".join(f"Sentence number {i}." for i in range(MAX_SENTENCES + 6))
    got = split_sentences(text)
    assert got == [f"Sentence number {i}." for i in range(MAX_SENTENCES)]
    assert split_sentences(text, max_sentences=2) == ["Sentence number 0.", "Sentence number 1."]


# --------------------------------------------------------------------------------------------------
# sentence_id, SentenceVectors


def test_sentence_id_is_a_stable_uuid_that_depends_on_model_and_sentence() -> None:
    sid = sentence_id("fake-model", "Wipe clean with a damp cloth.")
    assert sid == sentence_id("fake-model", "Wipe clean with a damp cloth.")
    assert str(uuid.UUID(sid)) == sid
    assert sid != sentence_id("other-model", "Wipe clean with a damp cloth.")
    assert sid != sentence_id("fake-model", "Wipe clean with a dry cloth.")
    assert sentence_collection("fake-model") != sentence_collection("other-model")


@pytest.mark.parametrize(
    ("offsets", "rows"),
    [
        ([1, 2], 2),  # does not start at 0
        ([0, 2, 1], 1),  # decreasing
        ([0, 1], 2),  # does not end at the number of vectors
        ([0, 3], 2),  # ends past them
        ([], 0),  # empty
    ],
)
def test_sentence_vectors_reject_inconsistent_offsets(offsets: list[int], rows: int) -> None:
    with pytest.raises(ValueError, match="offsets"):
        SentenceVectors(np.array(offsets), np.ones((rows, 4)))


def test_sentence_vectors_counts_and_length() -> None:
    sv = SentenceVectors(np.array([0, 2, 2, 5]), np.ones((5, 4)))
    assert len(sv) == 3
    assert sv.counts().tolist() == [2, 0, 3]
    assert sv.vectors.dtype == np.float32


def test_from_texts_maps_each_texts_sentences_in_order() -> None:
    texts = ["Birch shelf. Wipe clean please.", "Oak table", "", "Wipe clean please. Oak table"]
    lookup = {
        "Birch shelf.": np.array([1, 0, 0], np.float32),
        "Wipe clean please.": np.array([0, 1, 0], np.float32),
        "Oak table": np.array([0, 0, 1], np.float32),
    }
    sv = SentenceVectors.from_texts(texts, lookup)
    assert len(sv) == 4
    assert sv.counts().tolist() == [2, 1, 0, 2]
    assert sv.n_occurrences == 5
    expected = ["Birch shelf.", "Wipe clean please.", "Oak table", "Wipe clean please.", "Oak table"]
    np.testing.assert_array_equal(sv.occurrence_vectors(), np.stack([lookup[s] for s in expected]))
    # each distinct sentence stored once, in order of first use; occurrences index them
    np.testing.assert_array_equal(sv.vectors, np.stack([lookup[s] for s in expected[:3]]))
    assert sv.index is not None and sv.index.dtype == np.int32
    assert sv.index.tolist() == [0, 1, 2, 1, 2]


def test_from_sentences_takes_already_split_texts() -> None:
    lookup = {"a b c.": np.ones(2, np.float32), "d e f.": np.zeros(2, np.float32)}
    sv = SentenceVectors.from_sentences([["a b c.", "d e f."], [], ["d e f."]], lookup)
    assert sv.counts().tolist() == [2, 0, 1]
    assert sv.index is not None and sv.index.tolist() == [0, 1, 1] and len(sv.vectors) == 2


def test_identity_index_is_the_default() -> None:
    sv = SentenceVectors(np.array([0, 2, 3]), np.arange(9, dtype=np.float32).reshape(3, 3))
    assert sv.index is None and sv.n_occurrences == 3
    assert sv.rows().tolist() == [0, 1, 2]
    assert sv.occurrence_vectors() is sv.vectors


@pytest.mark.parametrize(
    ("offsets", "index", "match"),
    [
        ([0, 1, 3], [0, 1], "offsets"),  # offsets end past the index
        ([0, 2], [0, 2], "index must point"),  # row 2 of 2 rows
        ([0, 2], [0, -1], "index must point"),
        ([0, 2], [[0, 1]], "1-D integer"),
        ([0, 2], [0.0, 1.0], "1-D integer"),
    ],
)
def test_sentence_vectors_reject_an_inconsistent_index(offsets: list[int], index: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SentenceVectors(np.array(offsets), np.ones((2, 4)), index=np.array(index))


def test_from_texts_names_a_sentence_without_vector() -> None:
    lookup = {"Birch shelf.": np.ones(3, np.float32)}
    with pytest.raises(KeyError, match="Needs two people"):
        SentenceVectors.from_texts(["Birch shelf. Needs two people."], lookup)


# --------------------------------------------------------------------------------------------------
# SentenceCache on both embedded engines (and a server when QDRANT_URL is set)

SHARED_TEXTS = [
    "Birch shelf unit. Wipe clean with a damp cloth.",
    "Oak dining table. Wipe clean with a damp cloth.",
    "Birch shelf unit. Assembly required.",
]
SHARED_SENTENCES = [
    "Birch shelf unit.",
    "Wipe clean with a damp cloth.",
    "Oak dining table.",
    "Assembly required.",
]


@pytest.fixture
def cache(qdrant_client: Any) -> SentenceCache:
    cache = SentenceCache(qdrant_client, "fake-model", backoff=0.0)
    cache.ensure(16)
    return cache


def test_add_missing_encodes_each_distinct_sentence_once(cache: SentenceCache) -> None:
    encoder = FakeEncoder()
    assert cache.add_missing(SHARED_TEXTS, encoder) == len(SHARED_SENTENCES)
    assert sorted(encoder.encoded) == sorted(SHARED_SENTENCES)

    again = FakeEncoder()
    assert cache.add_missing([*SHARED_TEXTS, SHARED_TEXTS[0]], again) == 0
    assert again.encoded == []


def test_add_missing_batches_share_what_earlier_batches_stored(cache: SentenceCache) -> None:
    encoder = FakeEncoder()
    assert cache.add_missing(SHARED_TEXTS, encoder, batch_size=1) == len(SHARED_SENTENCES)
    assert sorted(encoder.encoded) == sorted(SHARED_SENTENCES)
    assert set(cache.lookup(SHARED_SENTENCES)) == set(SHARED_SENTENCES)


def test_add_missing_uses_known_vectors_instead_of_encoding(cache: SentenceCache) -> None:
    own = np.zeros(16, np.float32)
    own[3] = 1.0  # nothing FakeEncoder would produce for these words
    encoder = FakeEncoder()
    n = cache.add_missing(
        ["Glass table lamp", "Bulb not included. Glass table lamp"], encoder, known={"Glass table lamp": own}
    )
    assert n == 1
    assert encoder.encoded == ["Bulb not included."]
    found = cache.lookup(["Glass table lamp", "Bulb not included."])
    np.testing.assert_allclose(found["Glass table lamp"], own, atol=1e-6)
    np.testing.assert_allclose(
        found["Bulb not included."], FakeEncoder().encode(["Bulb not included."])[0], atol=1e-6
    )


def test_lookup_returns_the_stored_vectors_and_omits_missing_ones(cache: SentenceCache) -> None:
    cache.add_missing(SHARED_TEXTS, FakeEncoder())
    found = cache.lookup([*SHARED_SENTENCES, "Never stored."])
    assert set(found) == set(SHARED_SENTENCES)
    expected = FakeEncoder().encode(SHARED_SENTENCES)
    for sentence, vec in zip(SHARED_SENTENCES, expected, strict=True):
        assert found[sentence].dtype == np.float32
        np.testing.assert_allclose(found[sentence], vec, atol=1e-5)


def test_vectors_for_is_none_without_a_cache_collection(qdrant_client: Any) -> None:
    cache = SentenceCache(qdrant_client, "fake-model", backoff=0.0)
    assert not cache.exists()
    assert cache.vectors_for(SHARED_TEXTS) is None


def test_vectors_for_is_none_and_warns_when_a_sentence_is_missing(
    cache: SentenceCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache.add_missing(SHARED_TEXTS, FakeEncoder())
    with caplog.at_level(logging.WARNING, logger="polyglot_catalog.sentences"):
        assert cache.vectors_for([*SHARED_TEXTS, "Oak dining table. Not in the cache yet."]) is None
    assert any(r.levelno == logging.WARNING and "lacks 1 of" in r.getMessage() for r in caplog.records), (
        caplog.text
    )


def test_vectors_for_aligns_with_the_texts(cache: SentenceCache) -> None:
    cache.add_missing(SHARED_TEXTS, FakeEncoder())
    texts = [SHARED_TEXTS[2], "Wipe clean with a damp cloth.", SHARED_TEXTS[0]]
    sv = cache.vectors_for(texts)
    assert sv is not None
    assert len(sv) == 3 and sv.counts().tolist() == [2, 1, 2]
    order = [
        "Birch shelf unit.",
        "Assembly required.",
        "Wipe clean with a damp cloth.",
        "Birch shelf unit.",
        "Wipe clean with a damp cloth.",
    ]
    np.testing.assert_allclose(sv.occurrence_vectors(), FakeEncoder().encode(order), atol=1e-5)
    assert len(sv.vectors) == 3  # distinct sentences once


# --------------------------------------------------------------------------------------------------
# embed_catalog fills the cache

ROWS = [
    ("DE", "D1", "Regal aus Birke, 80 cm. Mit einem feuchten Tuch abwischen."),
    ("DE", "D2", "Sofa mit Bezug, grau. Mit einem feuchten Tuch abwischen. Montage erforderlich."),
    ("DE", "D3", "Tischleuchte aus Glas"),
    ("US", "U1", "Birch shelf, 80 cm. Wipe clean with a damp cloth."),
    ("US", "U2", "Sofa with cover, gray. Wipe clean with a damp cloth. Assembly required."),
    ("US", "U3", "Glass table lamp"),
]
ONE_SENTENCE = {"Tischleuchte aus Glas", "Glass table lamp"}


def _write(path: Path, rows: list[tuple[str, str, str]] = ROWS) -> Path:
    region, sku, description = (list(c) for c in zip(*rows, strict=True))
    pq.write_table(pa.table({"sku": sku, "region": region, "description": description}), path)
    return path


def _all_sentences(rows: list[tuple[str, str, str]] = ROWS) -> set[str]:
    return {s for _, _, text in rows for s in split_sentences(text)}


@pytest.fixture
def store() -> CatalogStore:
    return CatalogStore(open_client(path=":memory:"), "catalog", "fake-model", backoff=0.0)


def _cache_of(store: CatalogStore) -> SentenceCache:
    return SentenceCache(store.client, store.vector_name)


def test_first_run_fills_the_cache_with_every_sentence(tmp_path: Path, store: CatalogStore) -> None:
    encoder = FakeEncoder()
    summary = embed_catalog(_write(tmp_path / "c.parquet"), store, encoder, batch_size=2)
    wanted = _all_sentences()
    # one-sentence texts reuse their text vector: only the other sentences are encoded as sentences
    assert summary["encoded_sentences"] == len(wanted - ONE_SENTENCE) > 0
    assert summary["encoded_texts"] == len(ROWS)
    assert set(_cache_of(store).lookup(wanted)) == wanted
    # each string encoded exactly once: the texts, then the sentences the cache lacked
    assert sorted(encoder.encoded) == sorted({t for _, _, t in ROWS} | (wanted - ONE_SENTENCE))


def test_one_sentence_description_is_encoded_once_and_cached_with_its_text_vector(
    tmp_path: Path, store: CatalogStore
) -> None:
    encoder = FakeEncoder()
    embed_catalog(_write(tmp_path / "c.parquet"), store, encoder)
    assert encoder.encoded.count("Glass table lamp") == 1
    assert encoder.encoded.count("Tischleuchte aus Glas") == 1
    text_vectors = {
        p["text"]: v
        for batch, vecs in store.scroll_region("US", with_vectors=True)
        for p, v in zip(batch, vecs, strict=True)
    }
    cached = _cache_of(store).lookup(["Glass table lamp"])
    np.testing.assert_allclose(cached["Glass table lamp"], text_vectors["Glass table lamp"], atol=1e-6)


def test_unchanged_rerun_encodes_nothing(tmp_path: Path, store: CatalogStore) -> None:
    source = _write(tmp_path / "c.parquet")
    embed_catalog(source, store, FakeEncoder(), batch_size=2)
    encoder = FakeEncoder()
    summary = embed_catalog(source, store, encoder, batch_size=2)
    assert encoder.encoded == []
    assert summary["encoded_sentences"] == summary["encoded_texts"] == summary["embedded"] == 0


def test_cache_started_after_the_catalog_fills_itself_without_reencoding_texts(
    tmp_path: Path, store: CatalogStore
) -> None:
    source = _write(tmp_path / "c.parquet")
    first = embed_catalog(source, store, FakeEncoder(), sentences=False)
    assert first["encoded_sentences"] == 0
    assert not _cache_of(store).exists()

    encoder = FakeEncoder()
    summary = embed_catalog(source, store, encoder, batch_size=4)
    wanted = _all_sentences()
    # exactly the distinct sentences, each once; a multi-sentence catalog text is never re-encoded
    # (a one-sentence text is its own sentence, so its string is among them)
    assert sorted(encoder.encoded) == sorted(wanted)
    assert summary["encoded_texts"] == summary["embedded"] == 0
    assert summary["encoded_sentences"] == len(wanted)
    assert set(_cache_of(store).lookup(wanted)) == wanted


def test_dropped_cache_is_refilled_by_the_next_run(tmp_path: Path, store: CatalogStore) -> None:
    source = _write(tmp_path / "c.parquet")
    embed_catalog(source, store, FakeEncoder())
    store.client.delete_collection(sentence_collection(store.vector_name))
    encoder = FakeEncoder()
    summary = embed_catalog(source, store, encoder)
    assert sorted(encoder.encoded) == sorted(_all_sentences())
    assert summary["encoded_texts"] == 0


# --------------------------------------------------------------------------------------------------
# sentence_alignment


def _unit(rng: np.random.Generator, n: int, dim: int = 32) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ragged(parts: list[np.ndarray], dim: int = 32) -> SentenceVectors:
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
    vectors = np.concatenate(parts) if parts else np.zeros((0, dim))
    return SentenceVectors(offsets, vectors)


def test_identical_sentence_sets_align_perfectly() -> None:
    rng = np.random.default_rng(0)
    s = _unit(rng, 3)
    a = _ragged([s])
    b = _ragged([s[::-1]])  # order does not matter
    np.testing.assert_allclose(sentence_alignment(a, b, [0], [0]), [1.0], atol=1e-5)


def test_twin_beats_a_variant_sharing_the_boilerplate() -> None:
    rng = np.random.default_rng(1)
    care, what, size, other = _unit(rng, 4)
    product = _ragged([np.stack([care, what, size])])
    noisy = _unit(rng, 3) * 0.15
    twin_rows = np.stack([care, what, size]) + noisy
    twin_rows /= np.linalg.norm(twin_rows, axis=1, keepdims=True)
    variant_rows = np.stack([care, other, size])  # same care and size sentence, says something else
    regions = _ragged([twin_rows, variant_rows])
    twin, variant = sentence_alignment(product, regions, [0, 0], [0, 1])
    assert twin > variant
    assert twin > 0.9 and variant < 0.9


def test_a_product_without_sentences_scores_zero() -> None:
    rng = np.random.default_rng(2)
    a = _ragged([_unit(rng, 2), np.zeros((0, 32))])
    b = _ragged([np.zeros((0, 32)), _unit(rng, 3)])
    got = sentence_alignment(a, b, [0, 1, 1, 0], [0, 1, 0, 1])
    assert got[0] == 0.0 and got[1] == 0.0 and got[2] == 0.0
    assert got[3] != 0.0
    assert sentence_alignment(
        _ragged([np.zeros((0, 32))]), _ragged([np.zeros((0, 32))]), [0], [0]
    ).tolist() == [0.0]


def test_alignment_does_not_depend_on_the_chunk_size() -> None:
    rng = np.random.default_rng(3)
    a = _ragged([_unit(rng, int(n)) for n in rng.integers(0, 6, size=12)])
    b = _ragged([_unit(rng, int(n)) for n in rng.integers(0, 6, size=9)])
    ia, ib = rng.integers(0, 12, size=40), rng.integers(0, 9, size=40)
    whole = sentence_alignment(a, b, ia, ib)
    assert whole.dtype == np.float32 and whole.shape == (40,)
    np.testing.assert_allclose(sentence_alignment(a, b, ia, ib, chunk=1), whole, atol=1e-6)
    np.testing.assert_allclose(sentence_alignment(a, b, ia, ib, chunk=7), whole, atol=1e-6)


def test_center_sentences_keeps_rows_unit_length_and_offsets() -> None:
    rng = np.random.default_rng(4)
    shifted = _unit(rng, 7) + 2.0  # a shared offset, like a language direction
    sv = SentenceVectors(np.array([0, 3, 3, 7]), shifted / np.linalg.norm(shifted, axis=1, keepdims=True))
    centred = center_sentences(sv)
    rows = centred.occurrence_vectors()
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=5e-3)
    np.testing.assert_array_equal(centred.offsets, sv.offsets)
    assert np.linalg.norm(rows.mean(axis=0)) < np.linalg.norm(sv.vectors.mean(axis=0))


def test_centred_copy_is_int8_and_scores_as_float32_centring_does() -> None:
    rng = np.random.default_rng(8)
    raw = [_unit(rng, n, 384) + 0.3 for n in (60, 50)]
    raw = [r / np.linalg.norm(r, axis=1, keepdims=True) for r in raw]
    svs = [SentenceVectors(np.linspace(0, len(r), 11).astype(int), r) for r in raw]
    centred = [center_sentences(sv) for sv in svs]
    for c, sv in zip(centred, svs, strict=True):  # a quarter of the float32 rows, plus a scale each
        assert c.vectors.dtype == np.int8 and c.vectors.nbytes * 4 == sv.vectors.nbytes
        np.testing.assert_allclose(np.linalg.norm(c.occurrence_vectors(), axis=1), 1.0, atol=5e-3)
    reference = []
    for r, sv in zip(raw, svs, strict=True):  # float32 centring, as before the int8 copy
        c = r - r.mean(axis=0)
        reference.append(SentenceVectors(sv.offsets, c / np.linalg.norm(c, axis=1, keepdims=True)))
    ia, ib = np.repeat(np.arange(10), 10), np.tile(np.arange(10), 10)
    np.testing.assert_allclose(
        sentence_alignment(*centred, ia, ib), sentence_alignment(*reference, ia, ib), atol=3e-3
    )


def test_int8_vectors_need_their_scales() -> None:
    with pytest.raises(ValueError, match="one scale per row"):
        SentenceVectors(np.array([0, 1]), np.zeros((1, 4), dtype=np.int8))
    with pytest.raises(ValueError, match="int8 vectors only"):
        SentenceVectors(np.array([0, 1]), np.zeros((1, 4), dtype=np.float32), scales=np.ones(1))


def _both_forms(seed: int, n_products: int, n_distinct: int, dim: int = 32) -> tuple[SentenceVectors, ...]:
    """The same sentences twice: distinct rows + index, and one (duplicated) row per occurrence."""
    rng = np.random.default_rng(seed)
    shifted = _unit(rng, n_distinct, dim) + 0.5  # a shared offset for centring to remove
    distinct = shifted / np.linalg.norm(shifted, axis=1, keepdims=True)
    counts = rng.integers(0, 7, size=n_products)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    # boilerplate: a few rows used often, the rest rarely
    index = np.where(rng.random(offsets[-1]) < 0.5, rng.integers(0, 3, offsets[-1]), 0)
    index = np.where(index == 0, rng.integers(0, n_distinct, offsets[-1]), index)
    weights = rng.uniform(0.5, 3.0, n_distinct).astype(np.float32)
    return (
        SentenceVectors(offsets, distinct, weights, index),
        SentenceVectors(offsets, distinct[index], weights[index]),
    )


def test_distinct_rows_with_an_index_give_the_same_features_as_one_row_per_occurrence() -> None:
    a_idx, a_occ = _both_forms(5, 40, 25)
    b_idx, b_occ = _both_forms(6, 30, 20)
    assert len(a_idx.vectors) < len(a_occ.vectors)
    ca_idx, ca_occ = center_sentences(a_idx), center_sentences(a_occ)
    # centred per occurrence alike: the mean counts every occurrence, not every distinct row
    np.testing.assert_allclose(ca_idx.occurrence_vectors(), ca_occ.occurrence_vectors(), atol=1e-6)
    assert len(ca_idx.vectors) == len(a_idx.vectors) and ca_idx.index is a_idx.index
    cb_idx, cb_occ = center_sentences(b_idx), center_sentences(b_occ)
    rng = np.random.default_rng(7)
    ia, ib = rng.integers(0, 40, size=200), rng.integers(0, 30, size=200)
    for chunk in (1, 13, 2048):
        np.testing.assert_allclose(
            sentence_alignment(ca_idx, cb_idx, ia, ib, chunk=chunk),
            sentence_alignment(ca_occ, cb_occ, ia, ib, chunk=chunk),
            atol=1e-6,
        )
    np.testing.assert_allclose(
        sentence_alignment(a_idx, b_idx, ia, ib), sentence_alignment(a_occ, b_occ, ia, ib), atol=1e-6
    )


def test_row_idf_equals_sentence_idf_of_the_texts() -> None:
    texts = ["Wipe clean. Red chair.", "Wipe clean. Blue chair. Wipe clean.", "", "Green lamp. Red chair."]
    lookup = {s: np.ones(3, np.float32) for t in texts for s in split_sentences(t)}
    sv = SentenceVectors.from_texts(texts, lookup)
    np.testing.assert_allclose(row_idf(sv)[sv.rows()], sentence_idf(texts), rtol=1e-6)


def test_indexed_vectors_without_sentences_align_to_zero() -> None:
    empty = SentenceVectors(np.zeros(3, np.int64), np.zeros((0, 4)), index=np.zeros(0, np.int64))
    other = SentenceVectors.from_texts(["Oak table."], {"Oak table.": np.ones(4, np.float32)})
    assert sentence_alignment(empty, other, [0, 1], [0, 0]).tolist() == [0.0, 0.0]
    assert center_sentences(empty) is empty


# --------------------------------------------------------------------------------------------------
# match_catalog with sentence alignment

NAMES = ["KALLAX", "POÄNG", "BILLY", "EKET", "MALM", "HEMNES", "LACK", "PAX", "IVAR", "ALEX"]
WORDS = {
    "DE": ("Regal", "Mit einem feuchten Tuch abwischen."),
    "US": ("shelf", "Wipe clean with a damp cloth."),
}


def _texts(region: str, n: int = 10) -> list[str]:
    noun, care = WORDS[region]
    return [f"{NAMES[i]} {noun} {40 + 10 * i} cm. {care}" for i in range(n)]


def _tables(encoder: FakeEncoder) -> dict[str, RegionTable]:
    return {
        r: RegionTable(r, [f"{r.lower()}{i}" for i in range(10)], _texts(r), encoder.encode(_texts(r)))
        for r in WORDS
    }


def _sentence_map(data: dict[str, RegionTable], encoder: FakeEncoder) -> dict[str, SentenceVectors]:
    distinct = sorted({s for t in data.values() for text in t.texts for s in split_sentences(text)})
    lookup = dict(zip(distinct, encoder.encode(distinct), strict=True))
    return {r: SentenceVectors.from_texts(t.texts, lookup) for r, t in data.items()}


def test_match_catalog_uses_a_sentence_mapping() -> None:
    encoder = FakeEncoder()
    data = _tables(encoder)
    res = match_catalog(data, k=3, sentences=_sentence_map(data, encoder))
    assert len(res.pairs) > 0
    assert np.isfinite(res.pairs["sentences"].to_numpy(np.float64)).all()
    assert "sentences" in res.summary["scorer"]["weights"]


def test_match_catalog_without_sentences_leaves_the_column_nan() -> None:
    data = _tables(FakeEncoder())
    res = match_catalog(data, k=3, sentences=None)
    assert len(res.pairs) > 0
    assert res.pairs["sentences"].isna().all()
    assert "sentences" not in res.summary["scorer"]["weights"]
    # in-memory tables have no cache to read: "auto" is the same as None
    auto = match_catalog(data, k=3)
    assert auto.pairs["sentences"].isna().all()


def test_match_catalog_gives_the_same_sentence_feature_for_distinct_rows_and_per_occurrence_rows() -> None:
    encoder = FakeEncoder()
    data = _tables(encoder)
    distinct = _sentence_map(data, encoder)
    per_occurrence = {r: SentenceVectors(sv.offsets, sv.occurrence_vectors()) for r, sv in distinct.items()}
    assert all(len(distinct[r].vectors) < len(per_occurrence[r].vectors) for r in data)
    got = match_catalog(data, k=3, sentences=distinct).pairs
    want = match_catalog(data, k=3, sentences=per_occurrence).pairs
    key = ["sku_a", "sku_b"]
    got, want = got.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True)
    assert got[key].equals(want[key])
    np.testing.assert_allclose(got["sentences"].to_numpy(float), want["sentences"].to_numpy(float), atol=1e-6)


def test_sentence_mapping_missing_a_region_is_rejected() -> None:
    encoder = FakeEncoder()
    data = _tables(encoder)
    mapping = _sentence_map(data, encoder)
    del mapping["US"]
    with pytest.raises(ValueError, match="US"):
        match_catalog(data, k=3, sentences=mapping)


def test_sentence_mapping_of_the_wrong_length_is_rejected() -> None:
    encoder = FakeEncoder()
    data = _tables(encoder)
    mapping = _sentence_map(data, encoder)
    de = mapping["DE"]
    assert de.index is not None
    mapping["DE"] = SentenceVectors(
        de.offsets[:-1], de.vectors, index=de.index[: de.offsets[-2]]
    )  # one short
    with pytest.raises(ValueError, match="'DE'"):
        match_catalog(data, k=3, sentences=mapping)


def test_match_catalog_reads_the_stores_sentence_cache(tmp_path: Path) -> None:
    rows = [(r, f"{r.lower()}{i}", text) for r in WORDS for i, text in enumerate(_texts(r))]
    store = CatalogStore(open_client(path=":memory:"), "catalog", vector_name_for("fake-model"), backoff=0.0)
    embed_catalog(_write(tmp_path / "c.parquet", rows), store, FakeEncoder())

    with_cache = match_catalog(store, k=3)
    assert "sentences" in with_cache.summary["scorer"]["weights"]
    assert np.isfinite(with_cache.pairs["sentences"].to_numpy(np.float64)).all()

    store.client.delete_collection(sentence_collection(store.vector_name))
    without = match_catalog(store, k=3)
    assert without.pairs["sentences"].isna().all()
    assert "sentences" not in without.summary["scorer"]["weights"]


def test_match_catalog_skips_an_incomplete_sentence_cache(tmp_path: Path) -> None:
    rows = [(r, f"{r.lower()}{i}", text) for r in WORDS for i, text in enumerate(_texts(r))]
    store = CatalogStore(open_client(path=":memory:"), "catalog", "fake-model", backoff=0.0)
    embed_catalog(_write(tmp_path / "c.parquet", rows), store, FakeEncoder(), sentences=False)
    cache = _cache_of(store)
    cache.ensure(FakeEncoder().dim)
    cache.add_missing(_texts("DE"), FakeEncoder())  # US sentences missing
    res = match_catalog(store, k=3)
    assert res.pairs["sentences"].isna().all()
    assert "sentences" not in res.summary["scorer"]["weights"]


# --------------------------------------------------------------------------------------------------
# the real model

EN_JACKET = (
    "Hooded rain jacket made of waterproof recycled polyester with taped seams. "
    "The adjustable hood folds away into the collar. "
    "Machine wash at 30 degrees and do not tumble dry."
)
DE_TWIN = (
    "Regenjacke mit Kapuze aus wasserdichtem recyceltem Polyester mit verschweißten Nähten. "
    "Die verstellbare Kapuze lässt sich im Kragen verstauen. "
    "Bei 30 Grad in der Maschine waschen und nicht im Trockner trocknen."
)
DE_VARIANT = (
    "Regenjacke mit Kapuze aus wasserdichtem recyceltem Polyester mit verschweißten Nähten. "
    "Zwei Brusttaschen mit Reißverschluss bieten Platz für ein Smartphone. "
    "Bei 30 Grad in der Maschine waschen und nicht im Trockner trocknen."
)


@pytest.mark.slow
def test_real_model_twin_aligns_better_than_a_variant(encoder: Any) -> None:
    texts = [EN_JACKET, DE_TWIN, DE_VARIANT]
    assert [len(split_sentences(t)) for t in texts] == [3, 3, 3]
    client = open_client(path=":memory:")
    try:
        cache = SentenceCache(client, vector_name_for(encoder.model_name))
        cache.ensure(encoder.dim)
        assert cache.add_missing(texts, encoder) == 7  # two German sentences are shared
        en = cache.vectors_for([EN_JACKET])
        de = cache.vectors_for([DE_TWIN, DE_VARIANT])
    finally:
        client.close()
    assert en is not None and de is not None
    twin, variant = sentence_alignment(en, de, [0, 0], [0, 1])
    assert twin > variant


def test_sentence_idf_weighs_boilerplate_down_and_alignment_follows_it() -> None:
    from polyglot_catalog.matching.alignment import sentence_alignment, sentence_idf

    texts = ["Wipe clean. Red chair.", "Wipe clean. Blue chair.", "Wipe clean. Green lamp."]
    idf = sentence_idf(texts)
    assert idf.shape == (6,)
    assert idf[0] == idf[2] == idf[4] < idf[1]  # "Wipe clean." is in every text
    # product a shares only the boilerplate with b; with IDF weights that agreement counts for less
    vec = {"Wipe clean.": [1.0, 0.0, 0.0], "Red chair.": [0.0, 1.0, 0.0], "Green lamp.": [0.0, 0.0, 1.0]}
    a = SentenceVectors.from_texts([texts[0]], {k: np.asarray(v, np.float32) for k, v in vec.items()})
    b = SentenceVectors.from_texts([texts[2]], {k: np.asarray(v, np.float32) for k, v in vec.items()})
    plain = sentence_alignment(a, b, np.array([0]), np.array([0]))[0]
    weighted = sentence_alignment(
        SentenceVectors(a.offsets, a.vectors, idf[:2]),
        SentenceVectors(b.offsets, b.vectors, idf[4:]),
        np.array([0]),
        np.array([0]),
    )[0]
    assert plain == pytest.approx(0.5)
    assert weighted < plain


def test_sentence_weights_must_match_the_rows() -> None:
    with pytest.raises(ValueError, match="one value per sentence"):
        SentenceVectors(np.array([0, 2]), np.zeros((2, 3)), np.ones(3))


def test_each_model_and_kind_of_sentence_vector_has_its_own_cache() -> None:
    from polyglot_catalog.sentences import sentence_collection

    legacy = sentence_collection("m")
    assert legacy == "polyglot_sentences__m"  # caches from before fingerprints keep their name
    names = {legacy, sentence_collection("m", "aa11"), sentence_collection("m", "bb22")}
    names |= {sentence_collection("m", "aa11", late=True)}
    assert len(names) == 4
