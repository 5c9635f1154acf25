"""The scoring stage from the feature parts (#26): exact, mergeable column statistics, and scorers
fitted part by part that are the match task's own to the last bit (weights, every pair's
probabilities, the third-region support), whatever the shard count or the fit's sample size."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_matching_feature_parts import _catalog, _feature_parts

from polyglot_catalog.matching import part_scores, pipeline
from polyglot_catalog.matching.exact_sums import ColumnStats, ExactSum
from polyglot_catalog.matching.feature_parts import blocks_from_parts, features_name
from polyglot_catalog.matching.inputs import MatchInputs
from polyglot_catalog.matching.part_scores import TRIANGLE, score_parts, scores_name
from polyglot_catalog.matching.pipeline import prepare, score_blocks
from polyglot_catalog.matching.scoring import FEATURES
from polyglot_catalog.matching.settings import MatchSettings


def _exact(values: np.ndarray) -> Fraction:
    return sum((Fraction(float(v)) for v in values), Fraction(0))


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(0).normal(size=5_001),
        np.random.default_rng(1).normal(size=300) * 1e300,  # sums far past float64's range
        np.array([1e308, 1e308, -1e308, 5e-324, -0.0]),  # subnormals, signed zero
        np.random.default_rng(2).random(777).astype(np.float32),
    ],
)
def test_an_exact_sum_is_the_rational_sum_and_merges_across_any_split(values: np.ndarray) -> None:
    whole = ExactSum.of(values)
    assert Fraction(whole.total, 1 << 1127) == _exact(values)
    assert whole.mean() == float(_exact(values) / len(values))
    merged = ExactSum()
    for part in reversed(np.array_split(np.random.default_rng(3).permutation(values), 7)):
        merged = merged.merge(ExactSum.of(part))
    assert (merged.total, merged.count) == (whole.total, whole.count)


def test_column_stats_are_numpys_to_rounding_and_the_same_bits_for_any_split() -> None:
    x = np.random.default_rng(4).normal(3.0, 2.0, size=100_003).astype(np.float32)
    one = ColumnStats.of_parts([x])
    assert one.mean == pytest.approx(float(np.mean(x.astype(np.float64))), rel=1e-15)
    assert one.sd == pytest.approx(float(np.std(x.astype(np.float64))), rel=1e-15)
    for cuts in ([10, 50_000], [99_999], list(range(1_000, 100_000, 7_919))):
        assert ColumnStats.of_parts(np.split(x, cuts)) == one
    assert ColumnStats.of_parts([np.ones(10)]) == ColumnStats(1.0, 0.0)
    with pytest.raises(ValueError, match="1 of 3 values are NaN or infinite"):
        ExactSum.of(np.array([1.0, np.nan, 2.0]))


def _one_task(data, folder: Path, plan, features) -> tuple[list, tuple]:
    """The match task's scoring on the same parts put together: its blocks and scorers."""
    settings = MatchSettings(k=5)
    prep = prepare(MatchInputs(dict(data), None), settings)
    blocks = blocks_from_parts(folder, plan, sorted(data))
    return blocks, score_blocks(blocks, prep, features, None, settings)


def _part_columns(folder: Path, plan, ra: str, rb: str, name: str) -> np.ndarray:
    """A scores column of region pair ``ra``-``rb`` in the match task's pair order."""
    shards = [s for s in plan if (s.query, s.other) == (ra, rb)]
    ids = [pq.read_table(folder / features_name(s), columns=["ia", "ib"]) for s in shards]
    ia = np.concatenate([t["ia"].to_numpy() for t in ids])
    ib = np.concatenate([t["ib"].to_numpy() for t in ids])
    col = np.concatenate([pq.read_table(folder / scores_name(s))[name].to_numpy() for s in shards])
    return col[np.lexsort((ib, ia))]


def _same_scorer(a, b) -> None:
    assert a.fitted_on == b.fitted_on and a.features == b.features
    for name in ("weights", "mean", "scale"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.bias == b.bias


@pytest.mark.parametrize(("shards", "max_rows"), [(1, None), (3, None), (4, 150)])
def test_scores_from_parts_are_the_match_tasks_to_the_last_bit(
    shards: int, max_rows: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if max_rows is not None:  # the fit's seeded sample of the masked rows
        monkeypatch.setattr(pipeline, "MAX_FIT_ROWS", max_rows)
        monkeypatch.setattr(part_scores, "MAX_FIT_ROWS", max_rows)
    data = _catalog(n=120)
    plan = _feature_parts(data, MatchSettings(k=5), shards, tmp_path)
    blocks, (scorer1, scorer2) = _one_task(data, tmp_path, plan, FEATURES)

    got = score_parts(tmp_path, plan, sorted(data), FEATURES)

    assert scorer1.fitted_on == "self-training" and scorer2 is not None
    _same_scorer(got.scorer1, scorer1)
    _same_scorer(got.scorer2, scorer2)
    assert got.pairs == sum(len(b) for b in blocks) and got.parts == len(plan)
    for blk in blocks:
        np.testing.assert_array_equal(_part_columns(tmp_path, plan, blk.ra, blk.rb, "p1"), blk.p1)
        np.testing.assert_array_equal(_part_columns(tmp_path, plan, blk.ra, blk.rb, "score"), blk.score)
        triangle = _part_columns(tmp_path, plan, blk.ra, blk.rb, TRIANGLE)
        np.testing.assert_array_equal(triangle, blk.feats[TRIANGLE].to_numpy())
    assert any((b.feats[TRIANGLE] > 0).any() for b in blocks)  # the second pass had support to use


def test_without_corroboration_the_score_is_pass_ones(tmp_path: Path) -> None:
    data = _catalog(n=120)
    plan = _feature_parts(data, MatchSettings(k=5), 2, tmp_path)
    settings = MatchSettings(k=5, corroborate=False)
    prep = prepare(MatchInputs(dict(data), None), settings)
    blocks = blocks_from_parts(tmp_path, plan, sorted(data))
    scorer1, scorer2 = score_blocks(blocks, prep, FEATURES, None, settings)

    got = score_parts(tmp_path, plan, sorted(data), FEATURES, corroborate=False)

    assert scorer2 is None and got.scorer2 is None
    _same_scorer(got.scorer1, scorer1)
    for blk in blocks:
        score = _part_columns(tmp_path, plan, blk.ra, blk.rb, "score")
        np.testing.assert_array_equal(score, blk.score)
        np.testing.assert_array_equal(_part_columns(tmp_path, plan, blk.ra, blk.rb, "p1"), score)
    assert TRIANGLE not in pq.read_table(tmp_path / scores_name(plan[0])).column_names


def test_a_missing_feature_part_is_named(tmp_path: Path) -> None:
    data = _catalog(n=40)
    plan = _feature_parts(data, MatchSettings(k=5), 2, tmp_path)
    (tmp_path / features_name(plan[1])).unlink()
    with pytest.raises(ValueError, match=f"feature part of shard {plan[1].name} is missing"):
        score_parts(tmp_path, plan, sorted(data), FEATURES)
    assert not any(tmp_path.glob("scores-*"))  # nothing written before every part was found


def test_too_few_reciprocal_best_pairs_fall_back_to_the_hand_set_scorer(tmp_path: Path) -> None:
    data = _catalog(n=12)  # a dozen products a region: fewer positives than self-training needs
    plan = _feature_parts(data, MatchSettings(k=5), 2, tmp_path)
    blocks, (scorer1, _) = _one_task(data, tmp_path, plan, FEATURES)
    got = score_parts(tmp_path, plan, sorted(data), FEATURES)
    assert scorer1.fitted_on == got.scorer1.fitted_on == "default"
    for blk, (ra, rb) in zip(blocks, itertools.combinations(sorted(data), 2), strict=True):
        np.testing.assert_array_equal(_part_columns(tmp_path, plan, ra, rb, "p1"), blk.p1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reciprocal_best_from_parts_breaks_ties_as_the_one_task_does(seed: int) -> None:
    """Seeds from four values (ties everywhere): the parts' masks are the one task's mask over the
    region pair's pairs in ``(a, b)`` order, for parts that split the side-a products any way."""
    from polyglot_catalog.matching.scoring import training_masks

    rng = np.random.default_rng(seed)
    key = np.unique(rng.integers(0, 40 * 30, size=600))
    ia, ib = key // 30, key % 30
    score = rng.integers(0, 4, size=len(ia)).astype(np.float64)
    pos, neg = training_masks(score, ia, ib)

    owner = rng.integers(0, 3, size=40)  # each side-a product's part
    parts = [part_scores._Part(None, ia[owner[ia] == i], ib[owner[ia] == i]) for i in range(3)]
    seeds = [score[owner[ia] == i] for i in range(3)]
    got_pos = part_scores._reciprocal_best(parts, seeds, 40, 30)
    got_neg = part_scores._negatives(parts, got_pos, 40, 30)
    for i in range(3):
        np.testing.assert_array_equal(got_pos[i], pos[owner[ia] == i])
        np.testing.assert_array_equal(got_neg[i], neg[owner[ia] == i])
    assert pos.sum() >= 5
