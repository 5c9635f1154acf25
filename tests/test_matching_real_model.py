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
