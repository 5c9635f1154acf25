"""The match task's scoring and table stages hold less at millions of pairs (#26) and decide exactly
as the whole-array versions did: the self-training seed from per-region-pair parts, the targets per
region pair, the fit's rows picked before stacking, the pairs table taking the blocks' columns."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from polyglot_catalog.matching import pipeline, scoring
from polyglot_catalog.matching.blocks import PairBlock
from polyglot_catalog.matching.data import RegionTable
from polyglot_catalog.matching.exact_sums import ColumnStats
from polyglot_catalog.matching.scoring import (
    FEATURES,
    PairScorer,
    default_seed,
    self_training_targets,
    training_masks,
)


def _z(x: np.ndarray) -> np.ndarray:
    stats = ColumnStats.of_parts([x])
    return (x - stats.mean) / (stats.sd if stats.sd > 1e-12 else 1.0)


def _blocks(seed: int = 0, n: int = 60, k: int = 5) -> list[PairBlock]:
    """Three region pairs of random candidate lists (k per side-a product) and random features."""
    rng = np.random.default_rng(seed)
    out = []
    for ra, rb in itertools.combinations(("DE", "FR", "US"), 2):
        ia = np.repeat(np.arange(n), k)
        ib = rng.integers(0, n, size=len(ia))
        pairs = np.unique(np.stack([ia, ib], axis=1), axis=0)
        feats = pd.DataFrame({c: rng.random(len(pairs)).astype(np.float32) for c in FEATURES})
        feats.loc[rng.random(len(pairs)) < 0.3, "csls"] = 0.5  # ties, which the tie rule decides
        out.append(PairBlock(ra, rb, pairs[:, 0].copy(), pairs[:, 1].copy(), feats, [""] * len(pairs)))
    return out


def test_the_seed_from_parts_is_the_sum_of_whole_column_z_scores_to_the_last_bit() -> None:
    rng = np.random.default_rng(1)
    cols = [rng.normal(size=10_007).astype(np.float32) for _ in range(3)]
    kept = [c.copy() for c in cols]
    whole = np.sum([_z(c.astype(np.float64)) for c in cols], axis=0)
    assert np.array_equal(default_seed(*cols), whole)
    assert np.array_equal(default_seed(*([c[:3000], c[3000:7000], c[7000:]] for c in cols)), whole)
    assert all(np.array_equal(c, k) for c, k in zip(cols, kept, strict=True))  # inputs untouched
    constant = np.ones(50, np.float32)
    assert np.array_equal(
        default_seed(constant, cols[0][:50]), _z(np.ones(50)) + _z(cols[0][:50].astype(float))
    )
    with pytest.raises(ValueError, match="at least one column"):
        default_seed()


def test_targets_per_region_pair_equal_the_targets_of_all_pairs_apart_by_offsets() -> None:
    blocks = _blocks(seed=2)
    seeds = [default_seed(b.feats["csls"].to_numpy(), b.feats["lexical"].to_numpy()) for b in blocks]
    offset, ia_all, ib_all = 0, [], []
    for b in blocks:  # the earlier whole-array form: products of each region pair kept apart
        ia_all.append(b.ia + offset)
        ib_all.append(b.ib + offset)
        offset += int(max(b.ia.max(), b.ib.max())) + 1
    keep, y = self_training_targets(np.concatenate(seeds), np.concatenate(ia_all), np.concatenate(ib_all))
    masks = [training_masks(s, b.ia, b.ib) for b, s in zip(blocks, seeds, strict=True)]
    pos = np.concatenate([m[0] for m in masks])
    neg = np.concatenate([m[1] for m in masks])
    assert np.array_equal(pos | neg, keep)
    assert np.array_equal(pos[keep].astype(int), y)
    assert pos.sum() >= 3 and neg.sum() > pos.sum()


@pytest.mark.parametrize("max_rows", [10_000_000, 200])
def test_the_fit_rows_are_those_the_scorer_would_sample_from_all_masked_rows(
    monkeypatch: pytest.MonkeyPatch, max_rows: int
) -> None:
    monkeypatch.setattr(scoring, "MAX_FIT_ROWS", max_rows)
    monkeypatch.setattr(pipeline, "MAX_FIT_ROWS", max_rows)
    blocks = _blocks(seed=3)
    n = sum(len(b) for b in blocks)
    rng = np.random.default_rng(4)
    mask = rng.random(n) < 0.6
    y = (rng.random(n) < 0.3).astype(np.int8)
    stacked = pd.concat([b.feats for b in blocks], ignore_index=True)[mask]
    before = PairScorer().fit(stacked, y[mask], source="self-training")
    rows, targets = pipeline._fit_rows(blocks, mask, y)
    assert len(rows) == min(max_rows, int(mask.sum()))
    after = PairScorer().fit(rows, targets, source="self-training")
    assert np.array_equal(before.weights, after.weights) and before.bias == after.bias
    assert np.array_equal(before.mean, after.mean)


def test_the_pairs_table_takes_the_blocks_columns_and_is_the_same_table() -> None:
    blocks = _blocks(seed=5, n=30)
    data = {
        r: RegionTable(
            r, [f"{r}-{i:02d}" for i in range(30)], [f"t{i}" for i in range(30)], np.zeros((30, 0))
        )
        for r in ("DE", "FR", "US")
    }
    for b in blocks:
        b.score = b.feats["cosine"].to_numpy(np.float64)
        b.p1 = b.score
        b.explain = [f"e{i % 4}" for i in range(len(b))]
    kept = [(b.feats.copy(), list(b.explain)) for b in blocks]
    whole, pid_a, pid_b = pipeline._pairs_table(blocks, data, 0.5, extra=("p1",))
    assert all(len(b.feats.columns) == len(FEATURES) and b.explain for b in blocks)  # left alone
    taken, pid_a2, pid_b2 = pipeline._pairs_table(blocks, data, 0.5, extra=("p1",), consume=True)
    pd.testing.assert_frame_equal(taken, whole)
    assert np.array_equal(pid_a, pid_a2) and np.array_equal(pid_b, pid_b2)
    assert all(len(b.feats.columns) == 0 and not b.explain for b in blocks)  # handed to the table
    assert all(len(b) == len(f) and len(b.score) == len(f) for b, (f, _) in zip(blocks, kept, strict=True))


def _corroboration_by_merges(blocks: list[PairBlock], targets: list[PairBlock]) -> list[np.ndarray]:
    """The definition, by pandas joins: for each pair, the best path through a third region."""
    edges = {}
    for blk in blocks:
        e = pd.DataFrame({"x": blk.ia, "y": blk.ib, "p": blk.score})
        edges[(blk.ra, blk.rb)], edges[(blk.rb, blk.ra)] = e, e.rename(columns={"x": "y", "y": "x"})
    out = []
    for blk in targets:
        support = np.zeros(len(blk))
        for rc in {"DE", "FR", "US"} - {blk.ra, blk.rb}:
            ac = edges[(blk.ra, rc)].rename(columns={"x": "i", "y": "c", "p": "p1"})
            bc = edges[(blk.rb, rc)].rename(columns={"x": "j", "y": "c", "p": "p2"})
            pairs = pd.DataFrame({"row": np.arange(len(blk)), "i": blk.ia, "j": blk.ib})
            m = pairs.merge(ac, on="i").merge(bc, on=["j", "c"])
            best = pd.Series(np.minimum(m["p1"], m["p2"]).to_numpy()).groupby(m["row"].to_numpy()).max()
            support[best.index] = np.maximum(support[best.index], best.to_numpy())
        out.append(support.astype(np.float32))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corroboration_is_the_best_path_through_a_third_region_whatever_the_chunk(seed: int) -> None:
    rng = np.random.default_rng(seed)
    blocks = []
    for ra, rb in itertools.combinations(("DE", "FR", "US"), 2):
        n = 500  # repeated edges included (drawn with replacement), ties in the scores too
        blocks.append(
            PairBlock(ra, rb, rng.integers(0, 60, n), rng.integers(0, 70, n), score=rng.integers(0, 9, n) / 8)
        )
    want = _corroboration_by_merges(blocks, blocks)
    assert sum(int((w > 0).sum()) for w in want) > 100
    for chunk in (1, 13, 10_000):
        for got, exp in zip(scoring.corroboration(blocks, chunk=chunk), want, strict=True):
            np.testing.assert_array_equal(got, exp)
    new = [PairBlock("DE", "FR", rng.integers(0, 80, 50), rng.integers(0, 80, 50))]  # an incremental run's
    got = scoring.corroboration(blocks, targets=new)
    np.testing.assert_array_equal(got[0], _corroboration_by_merges(blocks, new)[0])
