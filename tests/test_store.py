"""CatalogStore on a real in-memory Qdrant: lifecycle checks, retried server calls, region-scoped reads."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any
from unittest import mock

import httpx
import numpy as np
import pytest
from fakes import FlakyClient
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from polyglot_catalog.ids import point_id
from polyglot_catalog.store import (
    INDEXED_FIELDS,
    MAX_BACKOFF_SECONDS,
    REGION_GRAPH_M,
    CatalogStore,
    UpsertError,
    is_transient,
    open_client,
    vector_name_for,
)

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
    lean = store.query_region(fr[2:3], "FR", k=2, fields=["sku"])
    assert [set(p) for p, _ in lean[0]] == [{"sku", "id"}] * 2 and lean[0][0][0]["sku"] == "FR-2"
    wide = store.query_region(np.vstack([fr[2], fr[4]]), "FR", k=3, hnsw_ef=128)  # a wider beam
    assert [[p["sku"] for p, _ in row] for row in wide] == [[p["sku"] for p, _ in row] for row in hits]


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
    before = store.hnsw_graphs()
    with store.bulk_load():
        load(store, "DE", 2)
    assert store.hnsw_graphs() == before and not store.indexing_off()


# -- retries on every server call, and what they show --------------------------------------------

SERVER_BODY = "Authorization: api-key sk-never-print-me"


def server_error(status: int) -> UnexpectedResponse:
    """A Qdrant error response whose raw body echoes a header, as a misconfigured proxy might."""
    return UnexpectedResponse(
        status_code=status,
        reason_phrase="Service Unavailable" if status == 503 else "Error",
        content=f'{{"status": "error"}}\n{SERVER_BODY}'.encode(),
        headers=httpx.Headers(),
    )


class FailFirst:
    """Wraps a client: the first call of each method in ``methods`` raises ``error`` before reaching it."""

    def __init__(self, client: QdrantClient, methods: set[str], error: Exception | None = None) -> None:
        self._inner = client
        self.pending = set(methods)
        self.error = error or ConnectionError("connection reset by peer")
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if name in self.pending:
                self.pending.discard(name)
                raise self.error
            return attr(*args, **kwargs)

        return call


def _ids(region: str, n: int) -> list[str]:
    return [point_id(region, f"{region}-{i}") for i in range(n)]


def _bulk(s: CatalogStore) -> bool:
    with s.bulk_load():
        pass
    return s.indexing_off()


def _alias(s: CatalogStore) -> list[str]:
    s.switch_alias("catalog_alias")
    return CatalogStore(s.client, "catalog_alias", "fake").regions()


# client method -> (store operation that calls it, what the operation returns on the loaded store)
OPERATIONS: dict[str, tuple[Callable[[CatalogStore], Any], Any]] = {
    "collection_exists": (lambda s: s.exists(), True),
    "get_collection": (lambda s: s.indexing_off(), False),
    "create_collection": (lambda s: CatalogStore(s.client, "fresh", "fake").ensure_collection(DIM), True),
    "create_payload_index": (lambda s: CatalogStore(s.client, "fresh", "fake").ensure_collection(DIM), True),
    "retrieve": (
        lambda s: s.fetch_hashes(_ids("DE", 2)),
        dict(zip(_ids("DE", 2), ["h0", "h1"], strict=True)),
    ),
    "set_payload": (
        lambda s: (s.set_payload(_ids("DE", 1), {"status": "stale"}), s.count(status="stale"))[1],
        1,
    ),
    "delete": (lambda s: (s.delete(_ids("DE", 1)), s.count())[1], 3),
    "scroll": (
        lambda s: sorted(p["sku"] for page, _ in s.scroll_region("DE") for p in page),
        ["DE-0", "DE-1"],
    ),
    "count": (lambda s: s.count("DE"), 2),
    "facet": (lambda s: s.regions(), ["DE", "FR"]),
    "query_batch_points": (
        lambda s: [p["region"] for row in s.query_region(unit(np.ones((1, DIM))), "FR", k=5) for p, _ in row],
        ["FR", "FR"],
    ),
    "upsert": (lambda s: s.upsert(_ids("US", 1), unit(np.ones((1, DIM))), [{"region": "US"}]), 1),
    "update_collection": (_bulk, False),
    "get_aliases": (_alias, ["DE", "FR"]),
    "update_collection_aliases": (_alias, ["DE", "FR"]),
}


@pytest.mark.parametrize("method", sorted(OPERATIONS))
def test_every_server_call_is_retried(store: CatalogStore, method: str) -> None:
    load(store, "DE", 2)
    load(store, "FR", 2, seed=1)
    operation, expected = OPERATIONS[method]
    if method == "query_batch_points" and hasattr(store.client, "query_batch_hits"):
        method = "query_batch_hits"  # the embedded engine's model-free form of the same call
    flaky = FailFirst(store.client, {method})
    assert operation(CatalogStore(flaky, store.collection, "fake", backoff=0.0)) == expected
    assert not flaky.pending, f"{method} was never called"
    assert flaky.calls[method] >= 2  # the failed call, then its retry


def test_rejected_read_is_not_retried(client: QdrantClient) -> None:
    flaky = FailFirst(client, set())
    with pytest.raises((ValueError, UnexpectedResponse)):  # local mode / server: no such collection
        CatalogStore(flaky, "missing", "v", backoff=0.0).count()
    assert flaky.calls["count"] == 1


def test_a_call_that_keeps_failing_raises_its_own_error_after_bounded_backoff() -> None:
    class Down:
        calls = 0

        def collection_exists(self, name: str) -> bool:
            Down.calls += 1
            raise ConnectionError("connection refused")

    store = CatalogStore(Down(), "c", "v", max_retries=8, backoff=10.0)  # type: ignore[arg-type]
    with mock.patch("polyglot_catalog.store.time.sleep") as sleep, pytest.raises(ConnectionError):
        store.exists()
    assert Down.calls == 9
    delays = [c.args[0] for c in sleep.call_args_list]
    assert delays[:2] == [10.0, 20.0] and max(delays) == MAX_BACKOFF_SECONDS


def test_errors_show_only_the_first_line_of_a_server_response(client: QdrantClient, caplog) -> None:
    flaky = FlakyClient(client, failures=100, error=server_error(503))
    store = CatalogStore(flaky, "c", "v", backoff=0.0, max_retries=1)
    store.ensure_collection(DIM)
    with caplog.at_level(logging.WARNING), pytest.raises(UpsertError) as caught:
        store.upsert([point_id("DE", "a")], unit(np.ones((1, DIM))), [{}])
    assert caught.value.reason == "UnexpectedResponse: Unexpected Response: 503 (Service Unavailable)"
    assert SERVER_BODY not in str(caught.value)
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 1 and "503 (Service Unavailable)" in retries[0]
    assert SERVER_BODY not in caplog.text


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (server_error(503), True),
        (server_error(429), True),
        (server_error(404), False),
        (server_error(403), False),
        (ResponseHandlingException(httpx.ConnectError("refused")), True),
        (httpx.ReadTimeout("slow"), True),
        (ConnectionError("reset"), True),
        (TimeoutError(), True),
        (ValueError("Collection c not found"), False),  # local mode's "not found"
        (RuntimeError("a bug"), False),
        (AttributeError("a bug"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_is_transient(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


# -- collection lifecycle on bad days ------------------------------------------------------------


def _server(client: QdrantClient) -> bool:
    """Whether the engine keeps payload indexes and HNSW settings (a server or qdrant-edge), unlike
    qdrant-client's local mode."""
    from qdrant_client.local.qdrant_local import QdrantLocal

    inner = getattr(client, "_client", None)
    return inner is None or not isinstance(inner, QdrantLocal)


def test_ensure_collection_adds_the_indexes_a_killed_creation_left_out(client: QdrantClient) -> None:
    from qdrant_client import models

    # What a kill between create_collection and create_payload_index leaves behind.
    client.create_collection(
        "c", vectors_config={"v": models.VectorParams(size=DIM, distance=models.Distance.COSINE)}
    )
    store = CatalogStore(client, "c", "v")
    with mock.patch.object(client, "create_payload_index", wraps=client.create_payload_index) as index:
        assert store.ensure_collection(DIM) is False
    assert [c.args[1] for c in index.call_args_list] == list(INDEXED_FIELDS)
    if _server(client):  # qdrant-client's local mode keeps no payload indexes to look at
        assert set(INDEXED_FIELDS) <= set(client.get_collection("c").payload_schema)
        with mock.patch.object(client, "create_payload_index") as again:
            store.ensure_collection(DIM)
        again.assert_not_called()  # a healthy collection is left alone


@pytest.mark.parametrize(
    "error",
    [server_error(409), ConnectionError("answer lost")],
    ids=["another-writer-created-it", "our-retried-create-did"],
)
def test_collection_created_meanwhile_is_used_not_an_error(client: QdrantClient, error: Exception) -> None:
    class CreatedMeanwhile(FailFirst):
        def __getattr__(self, name: str) -> Any:
            if name == "create_collection" and self.pending:
                real = self._inner.create_collection

                def create(*args: Any, **kwargs: Any) -> Any:
                    self.pending.clear()
                    real(*args, **kwargs)  # it reaches Qdrant ...
                    raise error  # ... and the answer is an error

                return create
            return super().__getattr__(name)

    flaky = CreatedMeanwhile(client, {"create_collection"})
    store = CatalogStore(flaky, "c", "v", backoff=0.0)
    assert store.ensure_collection(DIM) is False  # not ours: no bulk-load mode
    assert store.exists() and store.count() == 0
    with pytest.raises(ValueError, match="expected size 4"):
        CatalogStore(flaky, "c", "v").ensure_collection(4)


def test_new_collections_get_one_graph_per_region_and_bulk_load_pauses_it(store: CatalogStore) -> None:
    """Every catalog search is filtered to one region, so a new collection builds one HNSW graph per
    region (``payload_m``) and none over the whole collection (``m=0``)."""
    config = store.client.get_collection(store.collection).config.hnsw_config
    assert store.hnsw_graphs() == (config.m, config.payload_m)
    if not _server(store.client):  # qdrant-client's local mode has no HNSW and ignores the setting
        assert store.hnsw_graphs() == (16, None)
        with store.bulk_load():
            assert not store.indexing_off()
        return
    assert store.hnsw_graphs() == (0, REGION_GRAPH_M)
    with store.bulk_load():
        assert store.indexing_off() and store.hnsw_graphs() == (0, 0)
    assert store.hnsw_graphs() == (0, REGION_GRAPH_M) and not store.indexing_off()


def test_collections_made_before_region_graphs_keep_their_global_graph(client: QdrantClient) -> None:
    """A collection created with only ``m`` (before region graphs): a bulk load pauses and restores
    ``m`` and leaves ``payload_m`` alone, also when it finishes a killed load's leftover ``m=0``."""
    from qdrant_client import models

    if not _server(client):
        pytest.skip("local mode keeps no HNSW settings")
    client.create_collection(
        "legacy", vectors_config={"fake": models.VectorParams(size=DIM, distance=models.Distance.COSINE)}
    )
    store = CatalogStore(client, "legacy", "fake", backoff=0.0)
    m, payload_m = store.hnsw_graphs()
    assert m == 16
    with store.bulk_load():
        assert store.indexing_off() and store.hnsw_graphs() == (0, payload_m)
    assert store.hnsw_graphs() == (16, payload_m)
    client.update_collection("legacy", hnsw_config=models.HnswConfigDiff(m=0))  # a killed load
    if payload_m is None:  # edge records it as unset; a server reports its own default
        assert store.indexing_off()
        with store.bulk_load():
            pass
        assert store.hnsw_graphs() == (16, None)
