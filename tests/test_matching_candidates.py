"""Candidate generation: the exact blocked path is exact, bounded, and agrees with Qdrant at k."""

from __future__ import annotations

import numpy as np
import pytest

from polyglot_catalog.matching import candidates as cand
from polyglot_catalog.matching.candidates import candidate_pairs, exact_topk
from polyglot_catalog.matching.data import RegionTable


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_topk_matches_brute_force_for_any_block_size() -> None:
    rng = np.random.default_rng(1)
    q, c = _unit(rng, 57, 16), _unit(rng, 83, 16)
    full = q @ c.T
    want = np.argsort(-full, axis=1, kind="stable")[:, :7]
    for rows, cols in [(1, 1), (5, 9), (57, 83), (1000, 1000)]:
        idx, sim = exact_topk(q, c, 7, block_rows=rows, block_cols=cols)
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_allclose(sim, np.take_along_axis(full, want, axis=1), rtol=1e-5)


def test_exact_topk_clips_k_to_corpus_size() -> None:
    rng = np.random.default_rng(2)
    idx, sim = exact_topk(_unit(rng, 3, 4), _unit(rng, 2, 4), 10)
    assert idx.shape == sim.shape == (3, 2)


def test_blocked_path_never_allocates_a_full_similarity_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory is bounded by the block, not by n x m: record the largest product the path forms."""
    rng = np.random.default_rng(3)
    q, c = _unit(rng, 300, 8), _unit(rng, 500, 8)
    largest = 0
    real_flatnonzero = np.flatnonzero

    def spy(a: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
        nonlocal largest
        largest = max(largest, a.size)
        return real_flatnonzero(a, *args, **kwargs)

    monkeypatch.setattr(cand.np, "flatnonzero", spy)  # every block's similarities pass through it
    exact_topk(q, c, 5, block_rows=32, block_cols=64)
    assert 0 < largest <= 32 * 64


class _FakeStore:
    """Stands in for CatalogStore.query_region on top of a real local Qdrant collection."""

    def __init__(self, tables: dict[str, RegionTable]) -> None:
        from qdrant_client import QdrantClient, models

        self.models = models
        self.client = QdrantClient(":memory:")
        dim = next(iter(tables.values())).vectors.shape[1]
        self.client.create_collection(
            "c", vectors_config={"v": models.VectorParams(size=dim, distance=models.Distance.COSINE)}
        )
        points = []
        for region, t in tables.items():
            for i, sku in enumerate(t.skus):
                points.append(
                    models.PointStruct(
                        id=len(points),
                        vector={"v": t.vectors[i].tolist()},
                        payload={"sku": sku, "region": region, "text": t.texts[i]},
                    )
                )
        self.client.upsert("c", points=points)

    def query_region(
        self,
        vectors: np.ndarray,
        region: str,
        k: int,
        fields: list[str] | None = None,
        hnsw_ef: int | None = None,
    ) -> list[list[tuple[dict, float]]]:
        m = self.models
        self.hnsw_ef = hnsw_ef
        flt = m.Filter(must=[m.FieldCondition(key="region", match=m.MatchValue(value=region))])
        payload = True if fields is None else fields
        reqs = [
            m.QueryRequest(query=v.tolist(), using="v", filter=flt, limit=k, with_payload=payload)
            for v in vectors
        ]
        return [
            [(p.payload, p.score) for p in r.points]
            for r in self.client.query_batch_points("c", requests=reqs)
        ]


def test_exact_and_qdrant_candidates_agree_at_k() -> None:
    pytest.importorskip("qdrant_client")
    rng = np.random.default_rng(4)
    a = RegionTable("DE", [f"d{i}" for i in range(60)], ["x"] * 60, _unit(rng, 60, 12))
    b = RegionTable("US", [f"u{i}" for i in range(45)], ["y"] * 45, _unit(rng, 45, 12))
    store = _FakeStore({"DE": a, "US": b})
    ia1, ib1, n1 = candidate_pairs(a, b, 5)
    ia2, ib2, n2 = candidate_pairs(a, b, 5, store=store, hnsw_ef=77)
    assert store.hnsw_ef == 77  # the search beam reaches every query
    np.testing.assert_array_equal(ia1, ia2)
    np.testing.assert_array_equal(ib1, ib2)
    np.testing.assert_allclose(n1["a"], n2["a"], atol=1e-5)
    np.testing.assert_allclose(n1["b"], n2["b"], atol=1e-5)
    # union of both directions: at least k per product, at most 2k
    assert 60 * 5 <= len(ia1) <= 60 * 5 + 45 * 5


def test_qdrant_path_reranks_raw_neighbours_by_centred_vectors() -> None:
    """With enough oversampling, re-ranked Qdrant neighbours equal the exact centred top-k."""
    pytest.importorskip("qdrant_client")
    from polyglot_catalog.matching.pipeline import center_region

    rng = np.random.default_rng(5)
    shift = rng.normal(size=12)  # a shared "language" offset that centring removes
    a = RegionTable("DE", [f"d{i}" for i in range(40)], ["x"] * 40, _unit(rng, 40, 12) + shift)
    b = RegionTable("US", [f"u{i}" for i in range(30)], ["y"] * 30, _unit(rng, 30, 12) - shift)
    store = _FakeStore({"DE": a, "US": b})
    ca, cb = center_region(a), center_region(b)
    want = candidate_pairs(ca, cb, 4)
    got = candidate_pairs(ca, cb, 4, store=store, raw=(a.vectors, b.vectors), oversample=10)
    np.testing.assert_array_equal(want[0], got[0])
    np.testing.assert_array_equal(want[1], got[1])
    np.testing.assert_allclose(want[2]["a"], got[2]["a"], atol=1e-5)


def test_exact_topk_both_equals_brute_force_both_ways_with_ties() -> None:
    rng = np.random.default_rng(4)
    a, b = _unit(rng, 61, 8), _unit(rng, 45, 8)
    b[7] = b[3]  # exact ties: the lower index must come first
    a[10] = a[2]
    full = a @ b.T
    for rows, cols in [(1, 1), (7, 5), (61, 45), (4096, 4096)]:
        ab_idx, ab_sim, ba_idx, ba_sim = cand.exact_topk_both(a, b, 6, block_rows=rows, block_cols=cols)
        for idx, sim, mat in ((ab_idx, ab_sim, full), (ba_idx, ba_sim, full.T)):
            want = np.lexsort((np.broadcast_to(np.arange(mat.shape[1]), mat.shape), -mat), axis=1)[:, :6]
            np.testing.assert_array_equal(idx, want)
            np.testing.assert_allclose(sim, np.take_along_axis(mat, want, axis=1), rtol=1e-5)
