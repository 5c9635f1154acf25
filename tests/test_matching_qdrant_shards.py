"""The Qdrant search in shards (#26): region-filtered queries per shard give the single task's Qdrant
candidates, hence its pairs and groups, on the embedded store; a part names how it was searched; a
collection whose point ids are not polyglot-catalog's is refused by region."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_matching_shards import COLUMNS, _catalog

from polyglot_catalog.edge_store import EdgeClient
from polyglot_catalog.ids import point_id
from polyglot_catalog.matching.canonical import TextSets, canonical_table
from polyglot_catalog.matching.data import RegionTable
from polyglot_catalog.matching.feature_parts import table_pages, write_region_rows
from polyglot_catalog.matching.pipeline import match_catalog
from polyglot_catalog.matching.region_search import table_chunks, write_region_search
from polyglot_catalog.matching.settings import MatchSettings
from polyglot_catalog.matching.shards import join_parts, map_shard, part_search, plan_shards
from polyglot_catalog.store import CatalogStore


def _write(store: CatalogStore, data: dict[str, RegionTable], ids: Any = point_id) -> None:
    for r, t in data.items():
        store.upsert(
            [ids(r, s) for s in t.skus],
            t.vectors,
            [{"sku": s, "region": r, "text": x} for s, x in zip(t.skus, t.texts, strict=True)],
        )


def _offset_catalog(n: int = 90) -> dict[str, RegionTable]:
    """:func:`_catalog` with a language offset per region, of another strength per product: Qdrant
    ranks the stored (uncentred) vectors, so its proposals differ from the exact centred search's
    and the two paths give different pairs (the test below tells them apart)."""
    rng = np.random.default_rng(9)
    out = {}
    for r, t in _catalog(n).items():
        shift = 3 * rng.normal(size=t.vectors.shape[1])
        out[r] = RegionTable(r, t.skus, t.texts, t.vectors + rng.uniform(0, 2, size=(len(t), 1)) * shift)
    return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CatalogStore]:
    client = EdgeClient(tmp_path / "edge")
    s = CatalogStore(client, "catalog", "fake", backoff=0.0)
    s.ensure_collection(24)
    yield s
    client.close()


def _same(a, b) -> None:
    pd.testing.assert_frame_equal(a.pairs[COLUMNS], b.pairs[COLUMNS])
    pd.testing.assert_frame_equal(a.groups, b.groups)
    pd.testing.assert_frame_equal(a.unmatched, b.unmatched)


@pytest.mark.parametrize("shards", [1, 3, 7])
def test_qdrant_shards_give_the_single_qdrant_search_its_pairs_and_groups(
    shards: int, store: CatalogStore, tmp_path: Path
) -> None:
    """Features per shard (the mapped path) and the in-process join (the path a run with reviewed
    decisions takes) both reproduce the one-task Qdrant match, duplicate listings across shards too."""
    _write(store, _offset_catalog())
    one = match_catalog(store, k=5, sentences=None, candidates="qdrant", hnsw_ef=64)
    assert one.summary["candidates_path"] == "qdrant"
    exact = match_catalog(
        store, k=5, sentences=None, candidates="exact", shards=shards, shard_dir=tmp_path / "e"
    )
    assert not exact.pairs[COLUMNS].equals(one.pairs[COLUMNS])  # the paths differ on this catalog
    per_shard = match_catalog(
        store, k=5, sentences=None, candidates="qdrant", hnsw_ef=64, shards=shards, shard_dir=tmp_path / "f"
    )
    _same(one, per_shard)
    assert per_shard.summary["candidates_path"] == "qdrant (shards)"
    assert "sharded_features" in per_shard.summary["timings"]
    no_decisions = pd.DataFrame(columns=["region_a", "sku_a", "region_b", "sku_b", "decision"])
    joined = match_catalog(
        store,
        k=5,
        sentences=None,
        candidates="qdrant",
        hnsw_ef=64,
        shards=shards,
        shard_dir=tmp_path / "j",
        decisions=no_decisions,
    )
    assert joined.summary["candidates_path"] == "qdrant (shards)"
    assert "sharded_search" in joined.summary["timings"]
    _same(
        match_catalog(store, k=5, sentences=None, candidates="qdrant", hnsw_ef=64, decisions=no_decisions),
        joined,
    )


def _plan_files(data: dict[str, RegionTable], folder: Path) -> dict[str, TextSets]:
    """What the plan task writes for a Qdrant search: each region's search and rows files."""
    for r, t in data.items():
        write_region_search(r, table_chunks(t), folder)
        write_region_rows(r, table_pages(t), folder)
    return {r: TextSets.of(canonical_table(t).texts) for r, t in data.items()}


def test_a_qdrant_part_says_so_and_equals_itself_in_small_chunks(store: CatalogStore, tmp_path: Path) -> None:
    data = _catalog(n=60)
    _write(store, data)
    texts = _plan_files(data, tmp_path)
    settings = MatchSettings(k=4, hnsw_ef=64)
    plan = plan_shards({r: len(s) for r, s in texts.items()}, 2)
    whole = {s.name: pq.read_table(map_shard(tmp_path, s, settings, shards=2, store=store)) for s in plan}
    assert {part_search(tmp_path, s) for s in plan} == {"qdrant:hnsw_ef=64"}
    for shard in plan:  # the re-rank reads the other region 7 texts at a time: the same lists
        small = pq.read_table(map_shard(tmp_path, shard, settings, shards=2, store=store, chunk_rows=7))
        assert small.equals(whole[shard.name])
    joined = join_parts(tmp_path, data, texts, settings.k, plan)
    for r, s in texts.items():  # every text of each region has its lists, in both directions
        assert all(
            len(np.unique(joined[key][0 if key[0] == r else 1])) == len(s.inverse)
            for key in joined
            if r in key
        )
    with pytest.raises(ValueError, match=f"shard {plan[0].name} is not one of 3 ranges"):
        map_shard(tmp_path, plan[0], settings, shards=3, store=store)  # another plan's shard count
    map_shard(tmp_path, plan[0], settings, shards=2)  # searched exactly: the part says so
    assert part_search(tmp_path, plan[0]) == "exact"


def test_hits_that_map_to_no_product_are_refused_naming_the_region(
    store: CatalogStore, tmp_path: Path
) -> None:
    data = _catalog(n=20)
    _write(store, data, ids=lambda r, s: point_id(r, f"other-{s}"))  # ids that are not uuid5(region, SKU)
    texts = _plan_files(data, tmp_path)
    shard = plan_shards({r: len(s) for r, s in texts.items()}, 1)[0]
    with pytest.raises(ValueError, match=f"region '{shard.other}' match no product of its rows file"):
        map_shard(tmp_path, shard, MatchSettings(k=3), store=store)


def test_a_qdrant_shard_logs_its_progress_and_queries_in_chunks_to_the_same_part(
    store: CatalogStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from polyglot_catalog.matching import candidates

    data = _catalog(n=60)
    _write(store, data)
    texts = _plan_files(data, tmp_path)
    settings = MatchSettings(k=4, hnsw_ef=64)
    shard = plan_shards({r: len(s) for r, s in texts.items()}, 1)[0]
    whole = pq.read_table(map_shard(tmp_path, shard, settings, store=store))
    monkeypatch.setattr(candidates, "QUERY_CHUNK", 16)  # a few queries a call: several chunks
    with caplog.at_level("INFO", logger=candidates.__name__):
        chunked = pq.read_table(map_shard(tmp_path, shard, settings, store=store))
    assert chunked.equals(whole)
    n = len(texts[shard.query])
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Qdrant queries in")]
    assert f"Qdrant queries in {shard.other}: 16 of {n}," in progress[0] and "s left" in progress[0]
    assert len(progress) == 2 * ((n - 1) // 16)  # every chunk after the first, both directions
