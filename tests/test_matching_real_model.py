"""One end-to-end check with the real bundled model: obvious translations pair up one-to-one."""

from __future__ import annotations

import pytest

from polyglot_catalog.matching.data import RegionTable
from polyglot_catalog.matching.pipeline import match_catalog

US = [
    'KALLAX shelf unit , white , 30 3/8x57 7/8 " . Use it as a room divider .',
    'Non-stick frying pan , 11 " . Withstands temperatures up to 428°F .',
    "AIRism seamless briefs , soft and breathable , no visible lines .",
    "POÄNG armchair with layer-glued bent birch frame for comfortable resilience .",
    "LED bulb E26 , 600 lumen , globe opal white , dimmable .",
]
DE = [
    "POÄNG Sessel : Gestell aus schichtverleimter , formgebogener Birke für sanftes Schwingen .",
    "LED Leuchtmittel E27 , 600 lm , kugelförmig opalweiß , dimmbar .",
    "KALLAX Regal , weiß , 77x147 cm . Als Raumteiler verwendbar .",
    "Bratpfanne mit Antihaftbeschichtung , 28 cm . Hitzebeständig bis 220°C .",
    "Nahtloser AIRism Slip , weich und atmungsaktiv , zeichnet sich nicht ab .",
]
TRUTH = {("de0", "us3"), ("de1", "us4"), ("de2", "us0"), ("de3", "us1"), ("de4", "us2")}


@pytest.mark.slow
def test_real_encoder_pairs_translations(encoder) -> None:
    data = {
        "DE": RegionTable("DE", [f"de{i}" for i in range(5)], DE, encoder.encode(DE)),
        "US": RegionTable("US", [f"us{i}" for i in range(5)], US, encoder.encode(US)),
    }
    labels = {(r, s): s for s in ("de0", "de1", "de2", "de3", "de4") for r in ("DE",)} | {
        ("US", f"us{j}"): f"de{i}" for i, j in [(0, 3), (1, 4), (2, 0), (3, 1), (4, 2)]
    }
    res = match_catalog(data, k=5, labels=labels, fit_on_labels=False)
    assert set(zip(res.matches["sku_a"], res.matches["sku_b"], strict=True)) == TRUTH
    assert res.summary["metrics"]["overall"]["top1"] == 1.0


LONERS = {
    "DE": "Kaffeemühle mit Kegelmahlwerk aus Edelstahl , 15 Mahlstufen , 150 W .",
    "ES": "Manguera de jardín de 20 m con pistola de riego de 7 funciones .",
    "US": 'Bookcase with 5 adjustable shelves , oak veneer , 31 1/2x79 1/2 " .',
}


@pytest.mark.slow
def test_small_catalog_leaves_products_without_a_twin_unmatched(encoder) -> None:
    """A small catalog gives the label-free cut little to calibrate on: the twins still pair up, and
    a product with no twin anywhere stays unmatched instead of being forced onto another leftover."""
    de, us = [*DE, LONERS["DE"]], [*US, LONERS["US"]]
    data = {
        "DE": RegionTable("DE", [f"de{i}" for i in range(6)], de, encoder.encode(de)),
        "ES": RegionTable("ES", ["es0"], [LONERS["ES"]], encoder.encode([LONERS["ES"]])),
        "US": RegionTable("US", [f"us{i}" for i in range(6)], us, encoder.encode(us)),
    }
    res = match_catalog(data, k=5)
    got = set(zip(res.matches["sku_a"], res.matches["sku_b"], strict=True))
    assert got == TRUTH
    assert set(zip(res.unmatched["region"], res.unmatched["sku"], strict=True)) == {
        ("DE", "de5"),
        ("ES", "es0"),
        ("US", "us5"),
    }
    assert res.summary["threshold"] >= 0.5
    assert res.unmatched["reason"].str.len().gt(0).all()
