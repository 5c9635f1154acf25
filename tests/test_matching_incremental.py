"""Incremental matching (docs/MATCH_STATE.md): what a nightly run continues from, what it re-scores and
re-decides, and that it lands where a full run on the same final catalog lands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from polyglot_catalog.ids import point_id
from polyglot_catalog.matching import context_store
from polyglot_catalog.matching.context import MatchContext
from polyglot_catalog.matching.data import RegionTable
from polyglot_catalog.matching.incremental import FullRunRequired, catalog_changes, match_incremental
from polyglot_catalog.matching.pipeline import match_catalog
from polyglot_catalog.matching.run import run_match
from polyglot_catalog.matching.state import read_state
from polyglot_catalog.store import CatalogStore

NAMES = ["KALLAX", "POÄNG", "BILLY", "EKET", "MALM", "HEMNES", "LACK", "PAX", "IVAR", "ALEX", "BESTÅ"]
WORDS = {"DE": "Regal", "FR": "étagère", "US": "shelf", "JP": "棚"}
DIM = 24


def _product(i: int, region: str) -> str:
    return f"{NAMES[i % len(NAMES)]} {WORDS[region]} {40 + i} cm"


def catalog(
    n: int = 120, regions: tuple[str, ...] = ("DE", "FR", "US"), seed: int = 0
) -> dict[str, RegionTable]:
    """Each region lists products 0..n-1 (SKU ``<region>-<i>``) as a noisy copy of one base vector."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, DIM))
    out = {}
    for region in regions:
        vec = base + 0.5 * rng.normal(size=base.shape)
        texts = [_product(i, region) for i in range(n)]
        out[region] = RegionTable(region, [f"{region}-{i}" for i in range(n)], texts, vec)
    return out


def edit(
    data: dict[str, RegionTable],
    region: str,
    *,
    remove: tuple[str, ...] = (),
    add: dict[str, tuple[str, np.ndarray]] | None = None,
    change: dict[str, tuple[str, np.ndarray]] | None = None,
) -> dict[str, RegionTable]:
    """A copy of ``data`` with SKUs of ``region`` removed, added or given new text and vector."""
    t = data[region]
    rows = {s: (t.texts[i], t.vectors[i]) for i, s in enumerate(t.skus) if s not in remove}
    rows.update(change or {})
    rows.update(add or {})
    skus = list(rows)
    out = dict(data)
    out[region] = RegionTable(region, skus, [rows[s][0] for s in skus], np.array([rows[s][1] for s in skus]))
    return out


def accepted(result: Any) -> set[tuple[str, str, str, str]]:
    m = result.matches
    return set(
        zip(
            m["region_a"].astype(str),
            m["sku_a"].astype(str),
            m["region_b"].astype(str),
            m["sku_b"].astype(str),
            strict=True,
        )
    )


def involving(pairs: set[tuple[str, str, str, str]], *skus: str) -> set[tuple[str, str, str, str]]:
    return {p for p in pairs if p[1] in skus or p[3] in skus}


def continued(data: dict[str, RegionTable]) -> MatchContext:
    """Night 0: a full run, its context through the bytes it is stored as."""
    result = match_catalog(data, k=10)
    assert result.context is not None
    return MatchContext.from_bytes(result.context.to_bytes())


def test_an_unchanged_catalog_scores_nothing_and_keeps_every_decision() -> None:
    data = catalog()
    full = match_catalog(data, k=10)
    inc = match_incremental(data, MatchContext.from_bytes(full.context.to_bytes()))
    assert inc.summary["mode"] == "incremental"
    assert inc.summary["incremental"]["pairs_scored"] == 0
    assert inc.summary["incremental"]["products_redecided"] == 0
    assert accepted(inc) == accepted(full)
    assert sorted(map(tuple, inc.groups[["region", "sku"]].to_numpy())) == sorted(
        map(tuple, full.groups[["region", "sku"]].to_numpy())
    )


def test_changes_are_found_by_sku_text_and_content_hash() -> None:
    data = catalog(n=30)
    ctx = continued(data)
    rng = np.random.default_rng(1)
    night = edit(
        data,
        "FR",
        remove=("FR-3",),
        add={"FR-new": (_product(99, "FR"), rng.normal(size=DIM))},
        change={"FR-5": (_product(5, "FR") + " neu", data["FR"].vectors[5])},
    )
    changes = catalog_changes({r: t for r, t in night.items()}, ctx)
    assert changes.new == {"DE": [], "FR": ["FR-new"], "US": []}
    assert changes.edited == {"DE": [], "FR": ["FR-5"], "US": []}
    assert changes.removed == {"DE": [], "FR": ["FR-3"], "US": []}
    # the same text with another content hash (a field the text does not show) is an edit too
    hashed = {
        r: RegionTable(r, t.skus, t.texts, t.vectors, {"content_hash": [f"h{s}" for s in t.skus]})
        for r, t in data.items()
    }
    ctx = continued(hashed)
    t = hashed["US"]
    night = dict(hashed)
    night["US"] = RegionTable(
        "US", t.skus, t.texts, t.vectors, {"content_hash": ["x" if s == "US-7" else f"h{s}" for s in t.skus]}
    )
    assert catalog_changes(night, ctx).edited["US"] == ["US-7"]


def test_a_night_of_churn_lands_where_a_full_run_on_the_final_catalog_lands() -> None:
    data = catalog(n=150)
    ctx = continued(data)
    rng = np.random.default_rng(7)
    night = edit(data, "DE", remove=("DE-3", "DE-40", "DE-77"))
    night = edit(
        night,
        "FR",
        change={
            s: (
                night["FR"].texts[i] + " (nouvelle édition)",
                night["FR"].vectors[i] + 0.3 * rng.normal(size=DIM),
            )
            for i, s in ((5, "FR-5"), (60, "FR-60"))
        },
    )
    base = np.random.default_rng(0).normal(size=(150, DIM))
    night = edit(
        night,
        "US",
        add={
            "US-new-3": (_product(3, "US"), base[3]),
            "US-new-x": ("LACK shelf 999 cm", rng.normal(size=DIM)),
        },
    )
    inc = match_incremental(night, ctx)
    full = match_catalog(night, k=10)
    a, b = accepted(inc), accepted(full)
    assert len(a & b) / len(a | b) >= 0.99
    counts = inc.summary["incremental"]
    assert (counts["new"], counts["edited"], counts["removed"]) == (2, 2, 3)
    assert 0 < counts["pairs_scored"] < len(full.pairs) / 10  # only the changed products were scored
    # the removed SKUs are gone from every table; the new ones were matched
    for table in (inc.pairs, inc.groups):
        skus = (
            set(table["sku_a"].astype(str)) | set(table["sku_b"].astype(str))
            if "sku_a" in table
            else set(table["sku"])
        )
        assert not {"DE-3", "DE-40", "DE-77"} & skus
    assert involving(a, "US-new-3") == involving(b, "US-new-3")


def test_a_better_new_twin_displaces_a_weaker_match_and_the_displaced_sku_is_decided_again() -> None:
    rng = np.random.default_rng(3)
    data = catalog(n=60, regions=("DE", "US"))
    base = np.random.default_rng(0).normal(size=(60, DIM))
    # US-0 is a poor copy of product 0, yet the only twin DE-0 has on night 0
    data = edit(data, "US", change={"US-0": (_product(0, "US"), base[0] + rng.normal(size=DIM))})
    ctx = continued(data)
    assert ("DE", "DE-0", "US", "US-0") in accepted(match_catalog(data, k=10))
    close = data["DE"].vectors[0] + 0.05 * rng.normal(size=DIM)
    night = edit(data, "US", add={"US-0b": (_product(0, "US") + " (2)", close)})
    inc = match_incremental(night, ctx)
    full = match_catalog(night, k=10)
    assert ("DE", "DE-0", "US", "US-0b") in accepted(inc)
    assert not involving(accepted(inc), "US-0")  # displaced, and nothing else wants it
    assert involving(accepted(inc), "DE-0", "US-0", "US-0b") == involving(
        accepted(full), "DE-0", "US-0", "US-0b"
    )
    assert inc.summary["incremental"]["products_redecided"] >= 3  # DE-0, US-0 and US-0b at least


def test_a_removed_sku_releases_its_partner() -> None:
    data = catalog(n=60, regions=("DE", "US"))
    ctx = continued(data)
    assert ("DE", "DE-9", "US", "US-9") in accepted(match_catalog(data, k=10))
    night = edit(data, "US", remove=("US-9",))
    inc = match_incremental(night, ctx)
    full = match_catalog(night, k=10)
    assert not involving(accepted(inc), "US-9")
    assert involving(accepted(inc), "DE-9") == involving(accepted(full), "DE-9")
    if not involving(accepted(inc), "DE-9"):
        assert "DE-9" in set(inc.unmatched["sku"])


def test_other_regions_than_the_context_need_a_full_run() -> None:
    data = catalog(n=30)
    ctx = continued(data)
    with pytest.raises(FullRunRequired, match="regions changed"):
        match_incremental({r: data[r] for r in ("DE", "US")}, ctx)


def test_a_region_new_to_the_catalog_needs_a_full_run_unless_the_run_chose_its_regions() -> None:
    data = catalog(n=30, regions=("DE", "FR", "US", "JP"))
    three = {r: data[r] for r in ("DE", "FR", "US")}
    ctx = continued(three)  # a run over every region the catalog had: JP's products must be matched
    with pytest.raises(FullRunRequired, match=r"regions changed from \['DE', 'FR', 'US'\]"):
        match_incremental(data, ctx)
    chosen = match_catalog(data, regions=["DE", "FR", "US"], k=5, sentences=None).context
    assert chosen is not None
    assert match_incremental(data, chosen).summary["incremental"]["new"] == 0  # JP is not asked for


def test_the_context_round_trips_through_qdrant_in_chunks(qdrant_client: Any, monkeypatch: Any) -> None:
    ctx = continued(catalog(n=40))
    monkeypatch.setattr(context_store, "CHUNK_BYTES", 4096)  # several points
    size = context_store.write_context(qdrant_client, "cat", "run-1", ctx)
    assert size > 3 * 4096
    back = context_store.read_context(qdrant_client, "cat", "run-1")
    assert back is not None
    assert back.threshold == ctx.threshold and back.scorer2 == ctx.scorer2 and back.idf == ctx.idf
    pd.testing.assert_frame_equal(back.edges, ctx.edges, check_categorical=False)
    for r, t in ctx.tables.items():
        assert list(back.tables[r].skus) == list(t.skus)
        np.testing.assert_array_equal(
            back.tables[r].floor["US" if r != "US" else "DE"], t.floor["US" if r != "US" else "DE"]
        )
    context_store.write_context(qdrant_client, "cat", "run-2", ctx)
    context_store.drop_other_contexts(qdrant_client, "cat", keep="run-2")
    assert context_store.read_context(qdrant_client, "cat", "run-1") is None
    assert context_store.read_context(qdrant_client, "cat", "run-2") is not None
    assert context_store.read_context(qdrant_client, "other", "run-2") is None


def _store_of(client: Any, data: dict[str, RegionTable]) -> CatalogStore:
    store = CatalogStore(client, "cat", "fake", backoff=0.0)
    store.ensure_collection(DIM)
    rows = [(r, i) for r in sorted(data) for i in range(len(data[r]))]
    store.upsert(
        [point_id(r, data[r].skus[i]) for r, i in rows],
        np.array([data[r].vectors[i] for r, i in rows], dtype=np.float32),
        [
            {"region": r, "sku": data[r].skus[i], "text": data[r].texts[i], "status": "active"}
            for r, i in rows
        ],
    )
    return store


def _run(store: CatalogStore, run_id: str, tmp_path: Path, **kwargs: Any) -> Any:
    def report(result: Any) -> Path:
        (tmp_path / run_id).mkdir()
        return tmp_path / run_id

    result, _ = run_match(store, run_id=run_id, write_report=report, collection="cat", model="m1", **kwargs)
    return result


def _group_of(result: Any) -> dict[tuple[str, str], str]:
    return {(r, s): g for g, r, s in result.groups[["group_id", "region", "sku"]].itertuples(index=False)}


def test_run_match_continues_incrementally_with_stable_group_ids(qdrant_client: Any, tmp_path: Path) -> None:
    data = catalog(n=40)
    store = _store_of(qdrant_client, data)
    first = _run(store, "run-1", tmp_path)
    assert first.summary["mode"] == "full" and "first run" in first.summary["full_run_reason"]
    assert read_state(qdrant_client, "cat")["context_run"] == "run-1"

    store.set_payload([point_id("US", "US-4")], {"status": "stale"})  # as embed flags a vanished row
    second = _run(store, "run-2", tmp_path)
    assert second.summary["mode"] == "incremental"
    assert second.summary["incremental"]["removed"] == 1
    assert read_state(qdrant_client, "cat")["context_run"] == "run-2"
    assert context_store.read_context(qdrant_client, "cat", "run-1") is None  # the older context is dropped
    before, after = _group_of(first), _group_of(second)
    kept = [m for m in after if m in before and m[1] not in ("DE-4", "FR-4")]
    assert kept and all(after[m] == before[m] for m in kept)  # groups keep their ids elsewhere
    changed = set(second.changes["sku"])
    assert "US-4" in changed and changed <= {"US-4", "DE-4", "FR-4"}

    third = _run(store, "run-3", tmp_path, full_rematch=True)
    assert third.summary["mode"] == "full" and third.summary["full_run_reason"].startswith("requested")


def test_run_match_keeps_only_the_accepted_pairs_once_the_report_has_them(
    qdrant_client: Any, tmp_path: Path
) -> None:
    """The report gets every scored pair; the state commit's apply then runs without the rejected
    ones (#26), and the counts the CLI and XCom give still count every scored pair."""
    store = _store_of(qdrant_client, catalog(n=30))
    seen: dict[str, Any] = {}

    def report(result: Any) -> Path:
        seen["pairs"] = len(result.pairs)
        seen["decisions"] = set(result.pairs["decision"].astype(str))
        return tmp_path

    result, _ = run_match(store, run_id="run-1", write_report=report, collection="cat", model="m1")
    assert len(seen["decisions"]) > 1  # the report saw rejected candidates too
    assert result.pair_count == seen["pairs"] > len(result.pairs) > 0
    assert set(result.pairs["decision"].astype(str)) == {"match"}
    assert len(result.matches) == len(result.pairs)
    assert result.summary["match_state"]["points_written"] == 90  # the commit ran after the release


def test_a_model_change_forces_a_full_run(qdrant_client: Any, tmp_path: Path) -> None:
    store = _store_of(qdrant_client, catalog(n=30))
    _run(store, "run-1", tmp_path)
    result, _ = run_match(
        store, run_id="run-2", write_report=lambda r: tmp_path, collection="cat", model="m2"
    )
    assert result.summary["mode"] == "full"
    assert "model changed" in result.summary["full_run_reason"]


def _with_sentences(data: dict[str, RegionTable]) -> tuple[dict[str, RegionTable], dict[str, Any]]:
    """Two-sentence descriptions (the product line, then a region's care text) and their vectors."""
    from polyglot_catalog.sentences import SentenceVectors, split_sentences

    care = {
        "DE": "Mit feuchtem Tuch abwischen.",
        "FR": "Essuyer avec un chiffon humide.",
        "US": "Wipe clean.",
    }
    rng = np.random.default_rng(5)
    lookup: dict[str, np.ndarray] = {}
    out = {}
    for r, t in data.items():
        texts = [f"{text}. {care[r]}" for text in t.texts]
        for text, vec in zip(texts, t.vectors, strict=True):
            first, second = split_sentences(text)
            lookup[first] = vec
            lookup.setdefault(second, rng.normal(size=DIM))
        out[r] = RegionTable(r, t.skus, texts, t.vectors)
    return out, {
        "lookup": lookup,
        "of": lambda d: {r: SentenceVectors.from_texts(t.texts, lookup) for r, t in d.items()},
    }


def test_sentence_alignment_is_scored_with_the_frozen_region_statistics() -> None:
    data, sent = _with_sentences(catalog(n=80))
    full0 = match_catalog(data, k=10, sentences=sent["of"](data))
    ctx = MatchContext.from_bytes(full0.context.to_bytes())
    assert ctx.sentences and "sentences" in ctx.scorer1["features"]
    unchanged = match_incremental(data, ctx, sentences=sent["of"](data))
    assert accepted(unchanged) == accepted(full0)

    rng = np.random.default_rng(2)
    night = edit(data, "DE", remove=("DE-7",))
    moved = night["FR"].vectors[11] + 0.3 * rng.normal(size=DIM)
    text = "LACK étagère 777 cm. Essuyer avec un chiffon humide."
    sent["lookup"]["LACK étagère 777 cm."] = moved
    night = edit(night, "FR", change={"FR-11": (text, moved)})
    inc = match_incremental(night, ctx, sentences=sent["of"](night))
    full = match_catalog(night, k=10, sentences=sent["of"](night))
    a, b = accepted(inc), accepted(full)
    assert len(a & b) / len(a | b) >= 0.99
    scored = inc.pairs[
        (inc.pairs["sku_b"].astype(str) == "FR-11") | (inc.pairs["sku_a"].astype(str) == "FR-11")
    ]
    assert len(scored) and scored["sentences"].notna().all()  # the changed product got the feature
    with pytest.raises(FullRunRequired, match="no sentence vectors"):
        match_incremental(night, ctx, sentences=None)
