"""match_catalog end to end on synthetic vectors, and the CatalogStore loader on local Qdrant."""

from __future__ import annotations

import numpy as np
import pytest

from polyglot_catalog.matching.data import RegionTable
from polyglot_catalog.matching.pipeline import load_catalog, match_catalog
from polyglot_catalog.matching.result import DECISIONS, PAIR_KEY_COLUMNS

NAMES = [
    "KALLAX",
    "POÄNG",
    "BILLY",
    "EKET",
    "MALM",
    "HEMNES",
    "LACK",
    "PAX",
    "IVAR",
    "ALEX",
    "BESTÅ",
    "NORDLI",
]


def _catalog(seed: int = 0, n: int = 48, noise: float = 0.6) -> dict[str, RegionTable]:
    """Three regions of one product list; each region misses a different seventh of the products."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 24))
    words = {"DE": "Regal", "FR": "étagère", "US": "shelf"}
    out = {}
    for r, region in enumerate(["DE", "FR", "US"]):
        keep = [i for i in range(n) if i % 7 != r]
        vec = base[keep] + noise * rng.normal(size=(len(keep), 24))
        texts = [f"{NAMES[i % len(NAMES)]} {words[region]} {40 + i} cm" for i in keep]
        out[region] = RegionTable(region, [f"{region.lower()}{i}" for i in keep], texts, vec)
    return out


def _labels(data: dict[str, RegionTable]) -> dict[tuple[str, str], str]:
    return {(r, s): s[2:] for r, t in data.items() for s in t.skus}


def test_match_catalog_finds_the_twins_without_labels() -> None:
    data = _catalog()
    res = match_catalog(data, k=5)
    assert set(res.pairs["decision"]) <= set(DECISIONS)
    assert (res.pairs["region_a"] < res.pairs["region_b"]).all()
    m = res.matches
    assert not m.duplicated(["region_a", "sku_a", "region_b"]).any()  # one twin per region
    assert not m.duplicated(["region_b", "sku_b", "region_a"]).any()
    assert not res.groups.duplicated(["group_id", "region"]).any()
    correct = (m["sku_a"].str[2:] == m["sku_b"].str[2:]).mean()
    assert correct > 0.95 and len(m) >= 0.9 * 3 * 34  # 34 true pairs per region pair
    assert set(res.summary) >= {"model", "collection", "threshold", "regions", "counts", "timings"}
    assert "metrics" not in res.summary
    assert {
        "explain",
        "ev_numbers",
        "ev_names",
        "conflict_numbers",
        "text_a",
        "text_b",
        *PAIR_KEY_COLUMNS,
    } <= set(res.pairs.columns)


def test_metrics_follow_the_documented_format_when_labels_are_given() -> None:
    data = _catalog(seed=1)
    res = match_catalog(data, k=5, labels=_labels(data), fit_on_labels=False)
    metrics = res.summary["metrics"]
    assert set(metrics) == {"overall", "by_pair", "threshold_sweep", "pr_curve"}
    assert set(metrics["by_pair"]) == {"DE|FR", "DE|US", "FR|US"}
    for m in [metrics["overall"], *metrics["by_pair"].values()]:
        assert set(m) == {"precision", "recall", "f1", "top1", "tp", "fp", "fn"}
    assert metrics["overall"]["f1"] > 0.9 and metrics["overall"]["top1"] > 0.9
    for row in metrics["threshold_sweep"] + metrics["pr_curve"]:
        assert set(row) == {"threshold", "precision", "recall", "f1"}
    # labels only evaluate: the threshold is the label-free one, as without labels
    assert res.summary["labels_used_for"] == "evaluation"
    assert res.summary["threshold_method"] == "prior-shift EM"
    assert res.summary["threshold"] == match_catalog(data, k=5).summary["threshold"]


def test_fit_on_labels_calibrates_the_threshold_to_the_sweep_optimum() -> None:
    data = _catalog(seed=1)
    res = match_catalog(data, k=5, labels=_labels(data), fit_on_labels=True)
    best = max(res.summary["metrics"]["threshold_sweep"], key=lambda r: r["f1"])
    assert res.summary["threshold"] == best["threshold"]
    assert res.summary["threshold_method"].startswith("labels")
    assert res.summary["labels_used_for"] == "fitting and evaluation"


def test_default_threshold_is_derived_from_the_scores_and_keeps_most_twins() -> None:
    data = _catalog(seed=3)
    res = match_catalog(data, k=5)
    assert res.summary["threshold_method"] == "prior-shift EM"
    assert 0.0 < res.summary["threshold"] < 1.0
    assert 0.0 < res.summary["match_share"] <= 1.0
    metrics = match_catalog(data, k=5, labels=_labels(data)).summary["metrics"]["overall"]
    assert metrics["f1"] > 0.9


def test_unmatched_lists_products_without_an_accepted_twin() -> None:
    data = _catalog(seed=2)
    extra = np.random.default_rng(9).normal(size=(1, 24))
    us = data["US"]
    data["US"] = RegionTable(
        "US", [*us.skus, "lonely"], [*us.texts, "GRUNDTAL hook 9 cm"], np.vstack([us.vectors, extra])
    )
    res = match_catalog(data, k=5, threshold=0.99)
    assert "lonely" in set(res.unmatched["sku"])
    row = res.unmatched.set_index("sku").loc["lonely"]
    assert row["region"] == "US" and row["best_region"] in {"DE", "FR"}


def test_bad_arguments_name_the_value_and_options() -> None:
    data = _catalog()
    with pytest.raises(ValueError, match="threshold must be in"):
        match_catalog(data, threshold=1.7)
    with pytest.raises(ValueError, match=r"regions \['JP'\] not in the data"):
        match_catalog(data, regions=["DE", "JP"])
    with pytest.raises(ValueError, match="needs a CatalogStore"):
        match_catalog(data, candidates="qdrant")
    de = data["DE"]
    with pytest.raises(ValueError, match=r"region 'DE': 1 point ids, expected \d+"):
        RegionTable("DE", de.skus, de.texts, de.vectors, point_ids=["only-one"])


def _filled_store(data: dict[str, RegionTable]):
    """A real local-mode Qdrant collection with the documented payload, behind CatalogStore."""
    qdrant_client = pytest.importorskip("qdrant_client")
    store_mod = pytest.importorskip("polyglot_catalog.store")
    from qdrant_client import models

    client = qdrant_client.QdrantClient(":memory:")
    dim = next(iter(data.values())).vectors.shape[1]
    client.create_collection(
        "cat", vectors_config={"e5": models.VectorParams(size=dim, distance=models.Distance.COSINE)}
    )
    points = []
    for region, t in data.items():
        for i, sku in enumerate(t.skus):
            payload = {"sku": sku, "region": region, "language": None, "text": t.texts[i], "status": "active"}
            points.append(
                models.PointStruct(id=len(points), vector={"e5": t.vectors[i].tolist()}, payload=payload)
            )
    client.upsert("cat", points=points)
    return store_mod.CatalogStore(client, "cat", "e5")


def test_loader_and_qdrant_candidates_agree_with_in_memory_run() -> None:
    data = _catalog(seed=3)
    store = _filled_store(data)
    loaded = load_catalog(store)
    assert sorted(loaded) == ["DE", "FR", "US"]
    for region, table in data.items():
        got = dict(zip(loaded[region].skus, loaded[region].vectors, strict=True))
        for sku, vec in zip(table.skus, table.vectors, strict=True):
            np.testing.assert_allclose(got[sku], vec, atol=1e-5)
    assert loaded["DE"].point_ids == [str(p["id"]) for b, _ in store.scroll_region("DE") for p in b]
    key = [*PAIR_KEY_COLUMNS, "decision"]
    asked: list[object] = []
    query_region = store.query_region

    def spy(*args: object, **kwargs: object) -> object:
        asked.append(kwargs.get("fields"))
        return query_region(*args, **kwargs)

    store.query_region = spy  # type: ignore[method-assign]
    # raw vectors: Qdrant's candidates are exactly the blocked path's, so every decision agrees
    via_store = match_catalog(store, k=5, threshold=0.5, center=False, candidates="qdrant")
    assert asked and all(f == [] for f in asked)  # hits map to rows by point id: no payload fetched
    # the in-memory run on the vectors the store holds (Qdrant normalises cosine vectors on insert,
    # so they differ from ``data``'s in the last bits): equal by design, not by a margin
    in_memory = match_catalog(loaded, k=5, threshold=0.5, center=False)
    a = via_store.pairs[key].sort_values(key).reset_index(drop=True)
    b = in_memory.pairs[key].sort_values(key).reset_index(drop=True)
    assert a.equals(b)
    assert via_store.summary["collection"] == "cat"
    # centred (default): Qdrant's oversampled raw neighbours are re-ranked; the matches agree
    m_store = match_catalog(store, k=5, threshold=0.5, candidates="qdrant").matches[PAIR_KEY_COLUMNS]
    m_memory = match_catalog(loaded, k=5, threshold=0.5).matches[PAIR_KEY_COLUMNS]
    assert set(map(tuple, m_store.to_numpy())) == set(map(tuple, m_memory.to_numpy()))


def test_summary_records_what_a_person_needs_to_compare_two_reports() -> None:
    """Model, library versions, every parameter and an input fingerprint that follows the catalog's
    content, not the order its rows arrived in."""
    import json
    from importlib import metadata

    data = _catalog(seed=4)
    us = data["US"]
    x = us.vectors
    data["US"] = RegionTable("US", us.skus, us.texts, x)  # normalised as often as the shuffled copy
    rec = match_catalog(data, k=5, block_rows=64, model="m", model_fingerprint="sha256:abc").summary[
        "reproducibility"
    ]
    json.dumps(rec, allow_nan=False)  # goes into summary.json as it is
    assert rec["model"] == "m" and rec["model_fingerprint"] == "sha256:abc"
    assert rec["libraries"]["numpy"] == metadata.version("numpy")
    assert rec["parameters"]["block_rows"] == 64 and rec["parameters"]["k"] == 5
    assert rec["input"]["points"] == {r: len(t) for r, t in data.items()}

    order = np.random.default_rng(1).permutation(len(us))
    shuffled = dict(data)
    shuffled["US"] = RegionTable("US", [us.skus[i] for i in order], [us.texts[i] for i in order], x[order])
    again = match_catalog(shuffled, k=5, block_rows=64).summary["reproducibility"]["input"]
    assert again == rec["input"]
    edited = dict(data)
    edited["US"] = RegionTable("US", us.skus, [*us.texts[:-1], us.texts[-1] + " (new)"], us.vectors)
    changed = match_catalog(edited, k=5).summary["reproducibility"]["input"]
    assert changed["content_sha256"] != rec["input"]["content_sha256"]
