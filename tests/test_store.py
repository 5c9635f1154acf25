"""CatalogStore on a real in-memory Qdrant: lifecycle checks, retried upserts, region-scoped reads."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from fakes import FlakyClient
from qdrant_client import QdrantClient

from polyglot_catalog.ids import point_id
from polyglot_catalog.store import CatalogStore, UpsertError, open_client, vector_name_for

DIM = 8


@pytest.fixture
def client(qdrant_client: QdrantClient) -> QdrantClient:
    """Local mode always; a real server too when QDRANT_URL is set (see conftest)."""
    return qdrant_client


@pytest.fixture
def store(client: QdrantClient) -> CatalogStore:
    store = CatalogStore(client, "catalog_v1", "fake", backoff=0.0)
    store.ensure_collection(DIM)
    return store


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def load(store: CatalogStore, region: str, n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    ids = [point_id(region, f"{region}-{i}") for i in range(n)]
    vectors = unit(np.random.default_rng(seed).standard_normal((n, DIM)))
    payloads = [{"sku": f"{region}-{i}", "region": region, "content_hash": f"h{i}"} for i in range(n)]
    assert store.upsert(ids, vectors, payloads) == n
    return ids, vectors


def test_open_client_wants_exactly_one_target() -> None:
    with pytest.raises(ValueError, match="exactly one of url or path"):
        open_client()
    with pytest.raises(ValueError, match="exactly one of url or path"):
        open_client(url="http://localhost:6333", path="/tmp/x")


def test_open_client_local_path_persists(tmp_path) -> None:
    first = open_client(path=str(tmp_path / "q"))
    CatalogStore(first, "c", "v").ensure_collection(4)
    first.close()
    assert CatalogStore(open_client(path=str(tmp_path / "q")), "c", "v").exists()


def test_vector_name_for_model_names() -> None:
    assert vector_name_for("intfloat/multilingual-e5-small") == "intfloat_multilingual-e5-small"


def test_ensure_collection_is_idempotent(client: QdrantClient) -> None:
    store = CatalogStore(client, "c", "v")
    assert store.ensure_collection(DIM) is True
    assert store.ensure_collection(DIM) is False
    params = client.get_collection("c").config.params.vectors["v"]
    assert (params.size, params.distance.value) == (DIM, "Cosine")


def test_cluster_options_reach_create_collection_and_local_mode_ignores_them(
    client: QdrantClient,
) -> None:
    store = CatalogStore(client, "c", "v")
    with mock.patch.object(client, "create_collection", wraps=client.create_collection) as create:
        created = store.ensure_collection(
            DIM, shard_number=3, replication_factor=2, write_consistency_factor=1
        )
    assert created is True
    kwargs = create.call_args.kwargs
    assert (kwargs["shard_number"], kwargs["replication_factor"], kwargs["write_consistency_factor"]) == (
        3,
        2,
        1,
    )
    # Local mode has one shard and no replicas: the collection exists, the options left no trace.
    assert client.get_collection("c").config.params.shard_number is None
    assert store.ensure_collection(DIM, shard_number=6) is False  # only creation looks at them


def test_default_creation_leaves_cluster_options_to_the_server(client: QdrantClient) -> None:
    with mock.patch.object(client, "create_collection", wraps=client.create_collection) as create:
        CatalogStore(client, "c", "v").ensure_collection(DIM)
    kwargs = create.call_args.kwargs
    assert (
        kwargs["shard_number"] is kwargs["replication_factor"] is kwargs["write_consistency_factor"] is None
    )


def test_other_dimension_is_a_clear_error(store: CatalogStore) -> None:
    with pytest.raises(ValueError, match=r"'catalog_v1'.*expected size 384.*found size 8"):
        store.ensure_collection(384)


def test_other_model_needs_its_own_collection(store: CatalogStore) -> None:
    other = CatalogStore(store.client, "catalog_v1", "other-model")
    with pytest.raises(ValueError, match=r"no vector 'other-model' \(has \['fake'\]\).*switch_alias"):
        other.ensure_collection(DIM)


def test_upsert_and_fetch_hashes(store: CatalogStore) -> None:
    ids, _ = load(store, "DE", 5)
    unknown = point_id("DE", "never-written")
    assert store.fetch_hashes([ids[1], ids[3], unknown]) == {ids[1]: "h1", ids[3]: "h3"}
    assert store.fetch_hashes([]) == {}


def test_upsert_retries_transient_failures(client: QdrantClient) -> None:
    flaky = FlakyClient(client, failures=2)
    store = CatalogStore(flaky, "c", "v", backoff=0.0, max_retries=3)
    store.ensure_collection(DIM)
    load(store, "DE", 3)
    assert flaky.upsert_attempts == 3
    assert store.count() == 3


def test_upsert_gives_up_with_the_failed_ids(client: QdrantClient) -> None:
    flaky = FlakyClient(client, failures=100)
    store = CatalogStore(flaky, "c", "v", backoff=0.0, max_retries=2, upsert_batch_size=2)
    store.ensure_collection(DIM)
    ids = [point_id("DE", s) for s in "abc"]
    with pytest.raises(UpsertError, match="connection reset") as info:
        store.upsert(ids, unit(np.ones((3, DIM))), [{"region": "DE"}] * 3)
    assert info.value.ids == ids[:2]
    assert flaky.upsert_attempts == 3  # first try + 2 retries, then the batch fails the call
    assert store.count() == 0


def test_bad_input_is_not_retried(client: QdrantClient) -> None:
    flaky = FlakyClient(client, failures=1, error=ValueError("wrong vector size"))
    store = CatalogStore(flaky, "c", "v", backoff=0.0)
    store.ensure_collection(DIM)
    with pytest.raises(UpsertError, match="wrong vector size"):
        store.upsert([point_id("DE", "a")], unit(np.ones((1, DIM))), [{}])
    assert flaky.upsert_attempts == 1


def test_scroll_region_pages_payloads_and_vectors(store: CatalogStore) -> None:
    ids, vectors = load(store, "DE", 5)
    load(store, "FR", 3, seed=1)
    store.set_payload([ids[0]], {"status": "stale"})
    pages = list(store.scroll_region("DE", batch_size=2))
    assert [len(p) for p, _ in pages] == [2, 2]  # the stale point is left out
    got = {p["id"]: v for payloads, vecs in pages for p, v in zip(payloads, vecs, strict=True)}
    assert set(got) == set(ids[1:])
    np.testing.assert_allclose(got[ids[2]], vectors[2], atol=1e-6)
    assert all(vecs.dtype == np.float32 and vecs.shape[1] == DIM for _, vecs in pages)
    pages = list(store.scroll_region("DE", with_vectors=False, include_stale=True))
    assert sum(len(p) for p, _ in pages) == 5 and all(v.shape == (len(p), 0) for p, v in pages)


def test_query_region_filters_by_region_and_ranks(store: CatalogStore) -> None:
    _, de = load(store, "DE", 6)
    _, fr = load(store, "FR", 6, seed=1)
    hits = store.query_region(np.vstack([fr[2], fr[4]]), "FR", k=3)
    assert [h[0][0]["sku"] for h in hits] == ["FR-2", "FR-4"]
    assert all(p["region"] == "FR" for row in hits for p, _ in row)
    assert all(row[0][1] == pytest.approx(1.0, abs=1e-5) for row in hits)
    assert all([s for _, s in row] == sorted((s for _, s in row), reverse=True) for row in hits)
    assert store.query_region(de[:1], "US", k=3) == [[]]


def test_stats_regions_and_delete(store: CatalogStore) -> None:
    ids, _ = load(store, "DE", 4)
    load(store, "US", 2, seed=3)
    store.set_payload(ids[:1], {"status": "stale"})
    assert store.regions() == ["DE", "US"]
    assert store.stats() == {"points": 6, "stale": 1, "regions": {"DE": 4, "US": 2}}
    store.delete(ids[:2])
    assert store.stats()["regions"] == {"DE": 2, "US": 2}


def test_switch_alias_repoints_readers(client: QdrantClient) -> None:
    old = CatalogStore(client, "catalog_m1", "v")
    new = CatalogStore(client, "catalog_m2", "v")
    for s, region in ((old, "DE"), (new, "FR")):
        s.ensure_collection(DIM)
        load(s, region, 2)
    reader = CatalogStore(client, "catalog", "v")
    old.switch_alias("catalog")
    assert reader.regions() == ["DE"]
    new.switch_alias("catalog")
    assert reader.regions() == ["FR"]
    old.switch_alias("catalog", "catalog_m1")
    assert reader.regions() == ["DE"]


def test_bulk_load_restores_indexing(store: CatalogStore) -> None:
    before = store.client.get_collection(store.collection).config.hnsw_config.m
    with store.bulk_load():
        load(store, "DE", 2)
    assert store.client.get_collection(store.collection).config.hnsw_config.m == before
