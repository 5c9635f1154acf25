"""The late map (polyglot_catalog.late_map): fitting, shipping by fingerprint, naming the caches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polyglot_catalog import late_map
from polyglot_catalog.late_map import LateMap, fit_late_map, late_recipe, pseudo_descriptions
from polyglot_catalog.sentences import LATE_SUFFIX, late_suffix, sentence_collection


def test_fit_recovers_an_affine_map_and_rows_land_on_their_targets() -> None:
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(400, 8))
    true_w, true_b = rng.normal(size=(8, 8)), rng.normal(size=8)
    fitted = fit_late_map(rows, rows @ true_w + true_b, ridge=1e-9, source="test")
    assert np.allclose(fitted.weights, true_w, atol=1e-4) and np.allclose(fitted.bias, true_b, atol=1e-4)
    assert fitted.weights.dtype == np.float32 and fitted.meta == {"ridge": 1e-9, "source": "test"}
    assert np.allclose(fitted.apply(rows[:5]), rows[:5] @ true_w + true_b, atol=1e-3)


def test_fit_refuses_what_it_cannot_fit_and_apply_names_a_wrong_width() -> None:
    with pytest.raises(ValueError, match="more sentences than dimensions"):
        fit_late_map(np.ones((4, 8)), np.ones((4, 8)))
    with pytest.raises(ValueError, match="equal 2-D shapes"):
        fit_late_map(np.ones((40, 8)), np.ones((40, 7)))
    m = LateMap(np.eye(4, dtype=np.float32), np.zeros(4, np.float32), {})
    with pytest.raises(ValueError, match="width 4"):
        m.apply(np.ones((2, 5)))


def test_saved_map_loads_the_same_numbers_and_digest(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weights, bias = rng.normal(size=(6, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32)
    m = LateMap(weights, bias, {"ridge": 10.0})
    back = LateMap.load(m.save(tmp_path / "m.npz"))
    assert np.array_equal(back.weights, m.weights) and np.array_equal(back.bias, m.bias)
    assert back.meta == {"ridge": 10.0} and back.digest == m.digest
    other = LateMap(m.weights, m.bias + np.float32(1e-3), {})
    assert other.digest != m.digest  # another fit is another recipe


def test_a_shipped_map_renames_the_late_cache_and_no_map_keeps_the_base_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(late_map, "MAPS_DIR", tmp_path)
    late_map.late_map_for.cache_clear()
    try:
        assert late_map.late_map_for("f00d") is None and late_map.late_map_for(None) is None
        assert late_recipe("top2ctx50", "f00d") == "top2ctx50"
        assert sentence_collection("v", "f00d", late=True).endswith(LATE_SUFFIX)
        m = LateMap(np.eye(3, dtype=np.float32), np.zeros(3, np.float32), {})
        m.save(tmp_path / "beef.npz")
        assert late_map.late_map_for("beef").digest == m.digest
        assert late_suffix("beef") == f"{LATE_SUFFIX}map{m.digest}"
        names = {sentence_collection("v", fp, late=late) for fp in ("beef", "f00d") for late in (True, False)}
        assert len(names) == 4  # mapped, unmapped and separate vectors never share a cache
    finally:
        late_map.late_map_for.cache_clear()


def test_pseudo_descriptions_keep_one_language_each_and_use_every_sentence_once() -> None:
    lines = {"deu": [f"Satz {i}." for i in range(10)], "eng": [f"Line {i}." for i in range(7)]}
    texts = pseudo_descriptions(lines, per_text=4, seed=1)
    assert texts == pseudo_descriptions(lines, per_text=4, seed=1)  # seeded: the same fit every time
    assert len(texts) == 3 + 2
    for t in texts:
        assert ("Satz" in t) != ("Line" in t)
    used = sorted(s for t in texts for s in (p + "." for p in t.rstrip(".").split(". ")))
    assert used == sorted(lines["deu"] + lines["eng"])


def test_late_keys_give_a_shared_sentence_one_key_per_description() -> None:
    from polyglot_catalog.sentences import late_keys

    a = late_keys("Oak table. Wipe with a damp cloth.")
    b = late_keys("Birch shelf. Wipe with a damp cloth.")
    assert len(a) == len(b) == 2 and a[1] != b[1] and a[1].endswith("Wipe with a damp cloth.")
    assert late_keys("Oak table. Wipe with a damp cloth.") == a  # a function of the text alone
    twice = late_keys("Handle with care. Handle with care.")
    assert len(set(twice)) == 2  # two spans of one text, two vectors
