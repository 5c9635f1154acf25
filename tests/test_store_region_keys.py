"""A collection sharded by region (#26: a Qdrant cluster with one shard key per region): every point
is written into its region's key, region reads and searches name that key, and the match on the
Qdrant path gives the same pairs as on an unsharded collection. On a server (``QDRANT_URL``) the
real custom sharding; elsewhere a double of its routing (:class:`fakes.RegionKeyedServer`) and the
embedded engines, which have one shard and ignore the option."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fakes import FakeEncoder, RegionKeyedServer
from qdrant_client import QdrantClient, models
from test_matching_qdrant_shards import _offset_catalog, _same, _write

from polyglot_catalog.embed import embed_catalog
from polyglot_catalog.ids import point_id
from polyglot_catalog.matching.pipeline import match_catalog
from polyglot_catalog.store import CatalogStore, open_client

DIM = 8
REGIONS = ("DE", "FR", "US")


def _points(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
    """``n`` points, regions interleaved in one batch (as an embed batch mixes them)."""
    regions = [REGIONS[i % 3] for i in range(n)]
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    payloads = [{"sku": f"s{i}", "region": r} for i, r in enumerate(regions)]
    return [point_id(r, f"s{i}") for i, r in enumerate(regions)], vectors, payloads


@pytest.fixture
def server() -> RegionKeyedServer:
    return RegionKeyedServer(QdrantClient(":memory:"))


def test_points_land_in_their_regions_shard_key_and_region_reads_name_it(server: RegionKeyedServer) -> None:
    store = CatalogStore(server, "catalog", "v", upsert_batch_size=4)
    assert store.ensure_collection(DIM, shard_by_region=True, shard_number=2)
    assert server.keys == {"catalog": set()}  # keys come with each region's first write
    ids, vectors, payloads = _points(30)
    assert store.upsert(ids, vectors, payloads) == 30
    assert server.keys["catalog"] == set(REGIONS)
    assert server.point_key["catalog"] == {pid: p["region"] for pid, p in zip(ids, payloads, strict=True)}

    server.routed.clear()
    assert {r: store.count(r) for r in REGIONS} == {"DE": 10, "FR": 10, "US": 10}
    pages = list(store.scroll_region("FR", batch_size=4))
    assert {p["region"] for page, _ in pages for p in page} == {"FR"}
    assert sum(len(page) for page, _ in pages) == 10
    hits = store.query_region(vectors[:5], "US", k=3, fields=["region"])
    assert all(payload["region"] == "US" for row in hits for payload, _ in row)
    assert {("count", r) for r in REGIONS} | {("scroll", "FR"), ("query", "US")} == set(server.routed)
    assert store.stats()["regions"] == {"DE": 10, "FR": 10, "US": 10}  # whole-collection reads: every key


def test_a_point_without_a_region_is_refused_by_row_before_anything_is_written(
    server: RegionKeyedServer,
) -> None:
    store = CatalogStore(server, "catalog", "v")
    store.ensure_collection(DIM, shard_by_region=True)
    ids, vectors, payloads = _points(4)
    payloads[2] = {"sku": "s2"}
    with pytest.raises(ValueError, match=r"point 2 of an upsert into 'catalog' has no region"):
        store.upsert(ids, vectors, payloads)
    assert store.count() == 0 and server.keys["catalog"] == set()


def test_a_key_another_task_made_meanwhile_is_used(server: RegionKeyedServer) -> None:
    """Mapped embed tasks write the same collection: the second to reach a region finds its key made."""
    first, second = (CatalogStore(server, "catalog", "v") for _ in range(2))
    first.ensure_collection(DIM, shard_by_region=True)
    assert second.count("DE") == 0  # second has looked: no keys yet
    ids, vectors, payloads = _points(6)
    first.upsert(ids[:3], vectors[:3], payloads[:3])
    second.upsert(ids[3:], vectors[3:], payloads[3:])  # its creation of DE, FR, US fails: they exist
    assert server.keys["catalog"] == set(REGIONS)
    assert [server.point_key["catalog"][pid] for pid in ids] == [p["region"] for p in payloads]
    assert {r: second.count(r) for r in REGIONS} == {"DE": 2, "FR": 2, "US": 2}


def test_a_collection_without_region_keys_is_written_and_read_as_before(
    server: RegionKeyedServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = CatalogStore(server, "catalog", "v")
    store.ensure_collection(DIM)
    ids, vectors, payloads = _points(6)
    store.upsert(ids, vectors, payloads)
    assert store.count("DE") == 2 and list(store.scroll_region("FR"))
    assert server.keys == {} and server.routed == []
    with caplog.at_level(logging.WARNING, logger="polyglot_catalog.store"):
        assert CatalogStore(server, "catalog", "v").ensure_collection(DIM, shard_by_region=True) is False
    assert "without region shard keys" in caplog.text  # Qdrant cannot reshard it: said, not hidden


def test_shard_by_region_on_embedded_engines_and_a_server(qdrant_client: QdrantClient) -> None:
    """The embedded engines have one shard: the option creates a plain collection that works; a
    server (``QDRANT_URL``) creates one shard key per region and answers region reads from it."""
    store = CatalogStore(qdrant_client, "catalog_keyed", "v")
    assert store.ensure_collection(DIM, shard_by_region=True)
    ids, vectors, payloads = _points(12)
    assert store.upsert(ids, vectors, payloads) == 12
    assert {r: store.count(r) for r in REGIONS} == {"DE": 4, "FR": 4, "US": 4}
    hits = store.query_region(vectors[:2], "DE", k=4, fields=["region"])
    assert [len(row) for row in hits] == [4, 4] and {p["region"] for row in hits for p, _ in row} == {"DE"}
    method = getattr(qdrant_client.get_collection("catalog_keyed").config.params, "sharding_method", None)
    if method == models.ShardingMethod.CUSTOM:  # the server
        keys = qdrant_client.list_shard_keys("catalog_keyed").shard_keys
        assert sorted(str(k.key) for k in keys) == list(REGIONS)
    else:
        assert store._region_keys() is None


def test_the_qdrant_match_over_region_keys_gives_the_unsharded_collections_pairs(
    server: RegionKeyedServer, tmp_path: Path
) -> None:
    """Routing only narrows where the server looks: one task and mapped shards find the same
    candidates, pairs and groups as on a plain collection."""
    plain = CatalogStore(QdrantClient(":memory:"), "catalog", "fake")
    keyed = CatalogStore(server, "catalog", "fake")
    plain.ensure_collection(24)
    keyed.ensure_collection(24, shard_by_region=True)
    data = _offset_catalog(60)
    _write(plain, data)
    _write(keyed, data)
    qdrant = {"k": 5, "sentences": None, "candidates": "qdrant"}
    for store in (plain, keyed):  # qdrant-client local mode changes the last bits of the vectors it
        match_catalog(store, **qdrant)  # returns after its first searches
    server.routed.clear()
    base = match_catalog(plain, **qdrant, hnsw_ef=64)
    for shards in (None, 3):
        _same(base, match_catalog(keyed, **qdrant, hnsw_ef=64, shards=shards, shard_dir=tmp_path / "s"))
    queried = {key for call, key in server.routed if call == "query"}
    assert queried == set(data) and {key for call, key in server.routed if call == "scroll"} == set(data)


def test_embed_shards_the_catalog_by_region_and_never_the_sentence_cache(
    server: RegionKeyedServer, tmp_path: Path
) -> None:
    source = tmp_path / "catalog.parquet"
    pd.DataFrame(
        {
            "sku": ["a", "b", "c"],
            "region": ["DE", "FR", "DE"],
            "description": ["Ein Tisch.", "Une table.", "Stuhl."],
        }
    ).to_parquet(source)
    store = CatalogStore(server, "catalog", "fake-model")
    summary = embed_catalog(str(source), store, FakeEncoder(), collection_options={"shard_by_region": True})
    assert summary["upserted"] == 3
    assert server.keys["catalog"] == {"DE", "FR"}
    sentence_collections = [c.name for c in server.get_collections().collections if c.name != "catalog"]
    assert sentence_collections and not set(sentence_collections) & set(server.keys)


def test_open_client_local_mode_is_not_taken_for_a_server() -> None:
    """The routing double is a server to the store; real local mode stays local (no keys asked)."""
    local = open_client(path=":memory:", embedded="local")
    store = CatalogStore(local, "c", "v")
    store.ensure_collection(DIM, shard_by_region=True)
    assert store._region_keys() is None
    local.close()
