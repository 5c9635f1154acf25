"""The qdrant-edge embedded store behind ``CatalogStore``: the same store behaviours as local mode.

The bodies of tests/test_store.py are imported and run here against :class:`EdgeClient` (pytest
resolves their ``client``/``store`` fixtures in this module), so both engines answer to one set of
assertions; the tests below add what only a folder-backed engine has (reopen, lock, engine choice).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_store import (  # noqa: F401 - imported tests run again here, against the edge engine
    DIM,
    load,
    test_bad_input_is_not_retried,
    test_bulk_load_restores_indexing,
    test_cluster_options_reach_create_collection_and_local_mode_ignores_them,
    test_collections_made_before_region_graphs_keep_their_global_graph,
    test_default_creation_leaves_cluster_options_to_the_server,
    test_ensure_collection_is_idempotent,
    test_new_collections_get_one_graph_per_region_and_bulk_load_pauses_it,
    test_other_dimension_is_a_clear_error,
    test_other_model_needs_its_own_collection,
    test_query_region_filters_by_region_and_ranks,
    test_scroll_region_pages_payloads_and_vectors,
    test_stats_regions_and_delete,
    test_switch_alias_repoints_readers,
    test_upsert_and_fetch_hashes,
    test_upsert_gives_up_with_the_failed_ids,
    test_upsert_retries_transient_failures,
    unit,
)

from polyglot_catalog import edge_store
from polyglot_catalog.edge_store import EdgeClient, embedded_backend
from polyglot_catalog.ids import point_id
from polyglot_catalog.store import CatalogStore, UpsertError, open_client


@pytest.fixture
def client(tmp_path: Path) -> Iterator[EdgeClient]:
    c = EdgeClient(tmp_path / "edge")
    yield c
    c.close()


@pytest.fixture
def store(client: EdgeClient) -> CatalogStore:
    s = CatalogStore(client, "catalog_v1", "fake", backoff=0.0)
    s.ensure_collection(DIM)
    return s


def test_persists_across_reopen_with_stale_marks_and_deletes(tmp_path: Path) -> None:
    first = EdgeClient(tmp_path / "q")
    s = CatalogStore(first, "c", "v")
    s.ensure_collection(DIM)
    ids, vectors = load(s, "DE", 4)
    s.set_payload(ids[:1], {"status": "stale"})
    s.delete(ids[1:2])
    first.close()
    again = CatalogStore(EdgeClient(tmp_path / "q"), "c", "v")
    assert again.exists() and again.ensure_collection(DIM) is False
    assert again.stats() == {"points": 3, "stale": 1, "regions": {"DE": 3}}
    assert again.fetch_hashes(ids) == {ids[0]: "h0", ids[2]: "h2", ids[3]: "h3"}
    hits = again.query_region(vectors[3:4], "DE", k=1)
    assert hits[0][0][0]["sku"] == "DE-3" and hits[0][0][1] == pytest.approx(1.0, abs=1e-5)
    again.client.close()


def test_one_client_per_folder_with_local_modes_message(tmp_path: Path) -> None:
    holder = EdgeClient(tmp_path / "q")
    with pytest.raises(RuntimeError, match="already accessed by another instance"):
        EdgeClient(tmp_path / "q")
    holder.close()
    EdgeClient(tmp_path / "q").close()  # released on close


def test_wrong_vector_size_is_bad_input_not_retried(store: CatalogStore) -> None:
    bad = CatalogStore(store.client, store.collection, store.vector_name, backoff=0.0)
    with pytest.raises(UpsertError, match="dimension"):
        bad.upsert([point_id("DE", "x")], unit(np.ones((1, DIM + 1))), [{"region": "DE"}])
    with pytest.raises(ValueError, match="UUID"):
        store.client.retrieve(store.collection, ["nope"])


def test_filtered_query_skips_stale_and_builds_the_index_when_large(
    client: EdgeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge_store, "AUTO_OPTIMIZE_UNINDEXED", 50)
    s = CatalogStore(client, "c", "v")
    s.ensure_collection(DIM)
    ids, de = load(s, "DE", 300)
    load(s, "FR", 300, seed=1)
    s.set_payload(ids[:1], {"status": "stale"})
    hits = s.query_region(de[:3], "DE", k=5)
    assert [row[0][0]["sku"] for row in hits[1:]] == ["DE-1", "DE-2"]
    assert all(p["sku"] != "DE-0" and p["region"] == "DE" for row in hits for p, _ in row)
    info = client.get_collection("c")
    assert info.points_count == 600


def test_engine_choice_new_folder_env_and_existing_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(edge_store.EMBEDDED_STORE_ENV, raising=False)
    assert embedded_backend(tmp_path / "new", "edge") == "edge"
    monkeypatch.setenv(edge_store.EMBEDDED_STORE_ENV, "edge")
    client = open_client(path=str(tmp_path / "e"))
    assert isinstance(client, EdgeClient)
    CatalogStore(client, "c", "v").ensure_collection(DIM)
    client.close()
    memory = open_client(path=":memory:")
    assert isinstance(memory, EdgeClient)
    memory.close()
    assert not Path(memory.location).exists()  # the throwaway folder is gone
    monkeypatch.setenv(edge_store.EMBEDDED_STORE_ENV, "local")
    assert embedded_backend(tmp_path / "e") == "edge"  # an edge folder stays edge
    local = open_client(path=str(tmp_path / "l"))
    CatalogStore(local, "c", "v").ensure_collection(DIM)
    local.close()
    monkeypatch.setenv(edge_store.EMBEDDED_STORE_ENV, "edge")
    assert embedded_backend(tmp_path / "l") == "local"  # a local-mode folder stays local
    with pytest.raises(ValueError, match="one of"):
        embedded_backend(tmp_path / "x", "sqlite")


def test_matcher_qdrant_path_on_edge_finds_the_twins(
    client: EdgeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polyglot_catalog.matching import match_catalog, pipeline

    rng = np.random.default_rng(3)
    base = unit(rng.standard_normal((40, DIM)))
    s = CatalogStore(client, "c", "v")
    s.ensure_collection(DIM)
    for region, noise in (("DE", 0.05), ("FR", 0.05)):
        vecs = unit(base + noise * rng.standard_normal(base.shape))
        s.upsert(
            [point_id(region, f"P{i}") for i in range(40)],
            vecs,
            [{"sku": f"P{i}", "region": region, "text": f"item {i}"} for i in range(40)],
        )
    # "auto" on a small catalog runs the exact path; above EXACT_MAX_PAIRS it queries the store
    monkeypatch.setattr(pipeline, "EXACT_MAX_PAIRS", 40 * 40)
    small = match_catalog(s, k=3)
    monkeypatch.setattr(pipeline, "EXACT_MAX_PAIRS", 40 * 40 - 1)
    large = match_catalog(s, k=3)
    forced = match_catalog(s, k=3, candidates="qdrant", hnsw_ef=64)
    paths = [r.summary["candidates_path"] for r in (small, large, forced)]
    assert paths == ["exact", "qdrant", "qdrant"]
    for result in (small, large, forced):
        matched = result.pairs[result.pairs["decision"] == "match"]
        assert len(matched) >= 36 and (matched["sku_a"] == matched["sku_b"]).all()


def test_bulk_upload_calls_and_unsupported_calls_named(tmp_path: Path) -> None:
    from qdrant_client import models

    from polyglot_catalog.edge_store import SUPPORTED_METHODS, UnsupportedCall

    with EdgeClient(tmp_path / "e") as client:
        client.create_collection("c", {"v": models.VectorParams(size=2, distance=models.Distance.COSINE)})
        client.upload_collection(
            "c", {"v": [[1.0, 0.0], [0.0, 1.0]]}, payload=[{"a": 1}, {"a": 2}], ids=[1, 2]
        )
        client.upload_points(
            "c", [models.PointStruct(id=3, vector={"v": [1.0, 1.0]}, payload={"a": 3})], batch_size=1
        )
        assert client.count("c").count == 3
        assert client.retrieve("c", [2])[0].payload == {"a": 2}
        with pytest.raises(ValueError, match="needs ids"):
            client.upload_collection("c", {"v": [[1.0, 0.0]]})
        with pytest.raises(UnsupportedCall, match="recover_snapshot"):
            client.recover_snapshot("c", "file:///x")
        assert "upload_collection" in SUPPORTED_METHODS and "recover_snapshot" not in SUPPORTED_METHODS
    assert client.closed
