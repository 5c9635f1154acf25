"""Vectorised pair evidence equals the per-pair reference ``compare`` (values and explain strings)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from polyglot_catalog.matching import fastev
from polyglot_catalog.matching.evidence import EVIDENCE_COLUMNS, compare, extract, idf_weights

TEXTS_A = [
    "KALLAX Regal 77x147 cm, weiß, 802.758.87",
    "KALLAX Regal 77x77 cm, weiß",
    "POÄNG Sessel 68x82x100 cm Birke",
    "LED-Lampe 9 W 806 lm 2700 K, E27",
    "Kühlschrank 230 V, 150 l, 45 kg, -18 °C",
    "AIRism Slip, 95% Baumwolle 5% Elasthan",
    "Gartentisch 60x120 cm, 2 m Kabel, 12 mm",
    "",
    "EKTORP Sofa 3er, Bezug Hallarp grau, 218x88x88 cm, 60 kg, 120 l, 40 W, 3 V, 15 mAh, 20 %",
]
TEXTS_B = [
    'KALLAX shelf unit 30 3/8x57 7/8", white, 802.758.87',
    'KALLAX shelf 30 3/8x30 3/8", white',
    'POÄNG armchair 26 3/4x32 1/4x39 3/8" birch',
    "LED bulb 9 W 806 lm 2700 K, E27",
    "fridge 230 V, 40 gal, 99 lb, 0 °F",
    "AIRism briefs, 95% cotton 5% elastane",
    'garden table 23 5/8x47 1/4", 6 ft cable, 1/2"',
    'EKTORP sofa, Hallarp grey, 86x35x35", 132 lb, 31 gal, 40 W, 3 V, 15 mAh, 20 %',
    "no evidence at all",
]
GTINS_A = [None, "00012345678905", None, "4006381333931", None, None, None, None, "123"]
GTINS_B = [None, "12345678905", "5012345678900", "4006381333932", None, None, None, None, None]


def _check(ev_a, ev_b, ia, ib, idf) -> None:
    got, explain = fastev.compare_many(ev_a, ev_b, ia, ib, idf)
    for p, (i, j) in enumerate(zip(ia.tolist(), ib.tolist(), strict=True)):
        want = compare(ev_a[i], ev_b[j], idf)
        for col in EVIDENCE_COLUMNS:
            assert got[col][p] == pytest.approx(getattr(want, col), abs=1e-6), (col, i, j)
        assert explain[p] == want.explain, (i, j)


def test_every_pair_of_hand_written_products_equals_compare() -> None:
    ev_a = [extract(t, gtin=g) for t, g in zip(TEXTS_A, GTINS_A, strict=True)]
    ev_b = [
        extract(t, gtin=g, brand="IKEA" if k % 2 else None)
        for k, (t, g) in enumerate(zip(TEXTS_B, GTINS_B, strict=True))
    ]
    idf = idf_weights([*ev_a, *ev_b])
    pairs = np.array(list(itertools.product(range(len(ev_a)), range(len(ev_b)))))
    _check(ev_a, ev_b, pairs[:, 0], pairs[:, 1], idf)


def test_random_quantities_codes_and_the_many_quantities_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastev, "MAX_QUANTITIES", 3)  # route some products through the fallback
    monkeypatch.setattr(fastev, "CHUNK", 97)  # several chunks
    rng = np.random.default_rng(0)
    units = ["cm", "mm", "kg", "g", "W", "l", "%", "°C", '"']
    names = ["KALLAX", "BILLY", "MALM", "HEMNES"]

    def text() -> str:
        parts = [names[rng.integers(4)]]
        for _ in range(rng.integers(0, 6)):
            parts.append(f"{rng.integers(1, 60)} {units[rng.integers(len(units))]}")
        if rng.random() < 0.5:
            parts.append(f"AB-{rng.integers(10, 14)}")
        return " ".join(parts)

    ev_a = [extract(text()) for _ in range(60)]
    ev_b = [extract(text()) for _ in range(50)]
    idf = idf_weights([*ev_a, *ev_b])
    ia, ib = rng.integers(0, 60, 700), rng.integers(0, 50, 700)
    _check(ev_a, ev_b, ia, ib, idf)


def test_no_pairs_and_no_evidence() -> None:
    got, explain = fastev.compare_many([extract("")], [extract("")], np.zeros(0, int), np.zeros(0, int), {})
    assert explain == [] and all(len(v) == 0 for v in got.values())
    got, explain = fastev.compare_many([extract("")], [extract("x")], np.zeros(1, int), np.zeros(1, int), {})
    assert explain == [""] and all(v[0] == 0 for v in got.values())


def _reciprocal_best_reference(score: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    order = np.lexsort((-score,))
    best_a: dict[int, int] = {}
    best_b: dict[int, int] = {}
    for p in order.tolist():
        best_a.setdefault(int(ia[p]), p)
        best_b.setdefault(int(ib[p]), p)
    mask = np.zeros(len(score), dtype=bool)
    for p in best_a.values():
        if best_b.get(int(ib[p])) == p:
            mask[p] = True
    return mask


def test_vectorised_reciprocal_best_equals_the_loop_with_ties() -> None:
    from polyglot_catalog.matching.scoring import reciprocal_best

    rng = np.random.default_rng(5)
    for _ in range(20):
        n = int(rng.integers(0, 300))
        ia, ib = rng.integers(0, 40, n), rng.integers(0, 30, n)
        score = rng.integers(0, 8, n).astype(float)  # many ties
        np.testing.assert_array_equal(
            reciprocal_best(score, ia, ib), _reciprocal_best_reference(score, ia, ib)
        )


def _mutual_best_reference(ia: np.ndarray, ib: np.ndarray, score: np.ndarray) -> np.ndarray:
    mask = np.zeros(len(score), dtype=bool)
    order = np.lexsort((np.arange(len(score)), -score))
    best_a: dict[int, int] = {}
    best_b: dict[int, int] = {}
    for p in order.tolist():
        best_a.setdefault(int(ia[p]), p)
        best_b.setdefault(int(ib[p]), p)
    for p in best_a.values():
        if best_b[int(ib[p])] == p:
            mask[p] = True
    return mask


def test_vectorised_mutual_best_equals_the_loop_with_ties() -> None:
    from polyglot_catalog.matching.assign import mutual_best

    rng = np.random.default_rng(6)
    for _ in range(20):
        n = int(rng.integers(0, 300))
        ia, ib = rng.integers(0, 40, n), rng.integers(0, 30, n)
        score = rng.integers(0, 8, n).astype(float)
        np.testing.assert_array_equal(mutual_best(ia, ib, score), _mutual_best_reference(ia, ib, score))
