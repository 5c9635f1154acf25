"""The ``lexical`` feature from per-region hashed n-grams equals the TF-IDF cosine a pair-fitted
``TfidfVectorizer`` gives, whatever the chunking, and handles empty and one-sided texts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from polyglot_catalog.matching.lexical import lexical_cosine, ngram_counts

DE = [
    "BILLY Bücherregal, weiß, 80x28x202 cm. Verstellbare Böden.",
    "KALLAX Regal, Hochglanz weiß, 77x147 cm",
    "POÄNG Sessel, Birkenfurnier/Knisa hellbeige",
    "",
    "LACK Beistelltisch, schwarz, 55x55 cm",
    "BILLY Bücherregal, weiß, 80x28x202 cm. Verstellbare Böden.",  # a repeated text
    "Zxqvj",  # an n-gram no other text has
]
FR = [
    "BILLY Bibliothèque, blanc, 80x28x202 cm. Tablettes réglables.",
    "KALLAX Étagère, brillant blanc, 77x147 cm",
    "POÄNG Fauteuil, plaqué bouleau/Knisa beige clair",
    "LACK Table d'appoint, noir, 55x55 cm",
    "",
]


def reference(texts_a: list[str], texts_b: list[str], ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    vec = TfidfVectorizer(
        analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=2, dtype=np.float32
    )
    mat = vec.fit_transform([t.lower() for t in (*texts_a, *texts_b)])
    a, b = mat[: len(texts_a)], mat[len(texts_a) :]
    return np.asarray(a[ia].multiply(b[ib]).sum(axis=1)).ravel()


def all_pairs(na: int, nb: int) -> tuple[np.ndarray, np.ndarray]:
    ia, ib = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
    return ia.ravel(), ib.ravel()


@pytest.mark.parametrize("chunk", [1, 3, 10_000])
def test_equals_a_tfidf_vectorizer_fitted_on_the_pair(chunk: int) -> None:
    ia, ib = all_pairs(len(DE), len(FR))
    got = lexical_cosine(ngram_counts(DE, chunk=chunk), ngram_counts(FR, chunk=chunk), ia, ib, chunk=4)
    np.testing.assert_allclose(got, reference(DE, FR, ia, ib), atol=1e-6)
    assert got.dtype == np.float32


def test_twins_score_above_other_products_and_empty_texts_score_zero() -> None:
    ia, ib = all_pairs(len(DE), len(FR))
    score = lexical_cosine(ngram_counts(DE), ngram_counts(FR), ia, ib).reshape(len(DE), len(FR))
    for de_row, fr_row in [(0, 0), (1, 1), (2, 2), (4, 3)]:  # BILLY, KALLAX, POÄNG, LACK
        assert score[de_row].argmax() == fr_row
    assert not score[3].any() and not score[:, 4].any()  # empty texts
    assert score[0, 0] == pytest.approx(score[5, 0])  # a repeated text scores as its first copy


def test_identical_texts_score_one_and_regions_of_one_text_still_work() -> None:
    same = ngram_counts(["KALLAX Regal 77x147 cm"])
    assert lexical_cosine(same, same, np.array([0]), np.array([0]))[0] == pytest.approx(1.0, abs=1e-6)
    alone = ngram_counts(["Zxqvj"])  # shares nothing with the other side: no n-gram in two texts
    assert lexical_cosine(alone, same, np.array([0]), np.array([0]))[0] == 0.0


def test_empty_regions_and_no_pairs() -> None:
    empty = ngram_counts([])
    some = ngram_counts(FR)
    assert len(empty) == 0
    assert lexical_cosine(empty, some, np.zeros(0, int), np.zeros(0, int)).shape == (0,)
    assert lexical_cosine(some, some, np.zeros(0, int), np.zeros(0, int)).shape == (0,)
