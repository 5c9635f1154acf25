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


def _assert_topk(idx: np.ndarray, q: np.ndarray, c: np.ndarray, k: int, tol: float = 1e-5) -> None:
    """Tie-aware reference: float32 blocks may order similarities closer than ``tol`` either way
    (BLAS rounding depends on the block shape and the CPU), so a proposer is right when each row
    holds k distinct neighbours, best first within ``tol``, none worse than the true k-th by ``tol``."""
    full = q.astype(np.float64) @ c.astype(np.float64).T
    kth = -np.sort(-full, axis=1)[:, k - 1]
    for row, got in enumerate(idx):
        assert len(set(got.tolist())) == k
        sims = full[row, got]
        assert np.all(np.diff(sims) <= tol), (row, sims)
        assert sims.min() >= kth[row] - tol, (row, sims, kth[row])


def test_exact_topk_matches_brute_force_for_any_block_size() -> None:
    rng = np.random.default_rng(1)
    q, c = _unit(rng, 57, 16), _unit(rng, 83, 16)
    full = q @ c.T
    for rows, cols in [(1, 1), (5, 9), (57, 83), (1000, 1000)]:
        idx, sim = exact_topk(q, c, 7, block_rows=rows, block_cols=cols)
        _assert_topk(idx, q, c, 7)
        np.testing.assert_allclose(sim, np.take_along_axis(full, idx, axis=1), atol=1e-6)


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
    a = RegionTable("DE", [f"d{i}" for i in range(60)], [f"x{i}" for i in range(60)], _unit(rng, 60, 12))
    b = RegionTable("US", [f"u{i}" for i in range(45)], [f"y{i}" for i in range(45)], _unit(rng, 45, 12))
    store = _FakeStore({"DE": a, "US": b})
    ia1, ib1, n1 = candidate_pairs(a, b, 5)
    ia2, ib2, n2 = candidate_pairs(a, b, 5, store=store, hnsw_ef=77)
    assert store.hnsw_ef == 77  # the search beam reaches every query
    # both paths re-rank by the same per-pair similarity: equal by design, not within a margin
    np.testing.assert_array_equal(ia1, ia2)
    np.testing.assert_array_equal(ib1, ib2)
    np.testing.assert_array_equal(n1["a"], n2["a"])
    np.testing.assert_array_equal(n1["b"], n2["b"])
    # union of both directions: at least k per product, at most 2k
    assert 60 * 5 <= len(ia1) <= 60 * 5 + 45 * 5


def test_qdrant_path_reranks_raw_neighbours_by_centred_vectors() -> None:
    """With enough oversampling, re-ranked Qdrant neighbours equal the exact centred top-k."""
    pytest.importorskip("qdrant_client")
    from polyglot_catalog.matching.pipeline import center_region

    rng = np.random.default_rng(5)
    shift = rng.normal(size=12)  # a shared "language" offset that centring removes
    a = RegionTable(
        "DE", [f"d{i}" for i in range(40)], [f"x{i}" for i in range(40)], _unit(rng, 40, 12) + shift
    )
    b = RegionTable(
        "US", [f"u{i}" for i in range(30)], [f"y{i}" for i in range(30)], _unit(rng, 30, 12) - shift
    )
    store = _FakeStore({"DE": a, "US": b})
    ca, cb = center_region(a), center_region(b)
    want = candidate_pairs(ca, cb, 4)
    got = candidate_pairs(ca, cb, 4, store=store, raw=(a.vectors, b.vectors), oversample=10)
    np.testing.assert_array_equal(want[0], got[0])
    np.testing.assert_array_equal(want[1], got[1])
    np.testing.assert_array_equal(want[2]["a"], got[2]["a"])


def test_exact_topk_both_equals_brute_force_both_ways_with_ties() -> None:
    """The blocked proposer is right up to BLAS rounding in both directions, duplicated rows too."""
    rng = np.random.default_rng(4)
    a, b = _unit(rng, 61, 8), _unit(rng, 45, 8)
    b[7] = b[3]
    a[10] = a[2]
    for rows, cols in [(1, 1), (7, 5), (61, 45), (4096, 4096)]:
        ab_idx, _, ba_idx, _ = cand.exact_topk_both(a, b, 6, block_rows=rows, block_cols=cols)
        _assert_topk(ab_idx, a, b, 6)
        _assert_topk(ba_idx, b, a, 6)


def test_exact_topk_both_with_a_floor_keeps_exactly_the_neighbours_above_it() -> None:
    """A chunked search passes each query's running k-th best as a floor: the rows must keep what
    lies above it, in the unfloored order, pad the rest with -1 / -inf, and the reverse direction
    must not change (it has no floor)."""
    rng = np.random.default_rng(9)
    a, b = _unit(rng, 50, 8), _unit(rng, 70, 8)
    full_ab, full_sim, full_ba, _ = cand.exact_topk_both(a, b, 6, block_rows=7, block_cols=11)
    floor = full_sim[:, 2].astype(np.float64) - 1e-6  # 3 above the floor on most rows
    floor[:5] = -np.inf  # rows without a floor yet
    ab, sim, ba, _ = cand.exact_topk_both(a, b, 6, block_rows=7, block_cols=11, floor_a=floor)
    np.testing.assert_array_equal(ba, full_ba)
    for row in range(50):
        keep = full_sim[row] > floor[row]
        np.testing.assert_array_equal(ab[row, : keep.sum()], full_ab[row, keep])
        assert (ab[row, keep.sum() :] == -1).all() and np.isneginf(sim[row, keep.sum() :]).all()
    assert (ab[:5] >= 0).all() and (ab[5:, 3:] == -1).all()


def test_candidates_with_identical_listings_are_the_same_for_any_block_size_and_path() -> None:
    """Rows with identical text tie exactly and rank by row (= SKU) order, whatever the block
    shape or candidate path: the decision the issue saw flip with BLAS rounding."""
    pytest.importorskip("qdrant_client")
    rng = np.random.default_rng(6)
    va, vb = _unit(rng, 40, 8), _unit(rng, 30, 8)
    ta, tb = [f"a{i}" for i in range(40)], [f"b{i}" for i in range(30)]
    vb[7] = vb[3] + 1e-7  # the same text embedded in another batch: last-bit different vectors
    tb[7] = tb[3]
    ta[11] = ta[2]
    a = RegionTable("DE", [f"d{i:02d}" for i in range(40)], ta, va)
    b = RegionTable("US", [f"u{i:02d}" for i in range(30)], tb, vb)
    from polyglot_catalog.matching.canonical import canonical_table

    a, b = canonical_table(a), canonical_table(b)
    np.testing.assert_array_equal(b.vectors[7], b.vectors[3])  # one vector per text
    runs = [candidate_pairs(a, b, 4, block_rows=r, block_cols=c) for r, c in [(1, 1), (3, 7), (64, 64)]]
    runs.append(candidate_pairs(a, b, 4, store=_FakeStore({"DE": a, "US": b})))
    for ia, ib, neigh in runs[1:]:
        np.testing.assert_array_equal(ia, runs[0][0])
        np.testing.assert_array_equal(ib, runs[0][1])
        np.testing.assert_array_equal(neigh["a"], runs[0][2]["a"])
    ia, ib, _ = runs[0]
    partners_of_3 = set(ia[ib == 3].tolist())
    assert partners_of_3 == set(ia[ib == 7].tolist()) and partners_of_3  # identical listings: same candidates
