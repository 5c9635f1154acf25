"""One-to-one assignment, region-safe groups and metrics on hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest

from polyglot_catalog.matching.assign import assign_one_to_one, mutual_best
from polyglot_catalog.matching.blocks import PairBlock
from polyglot_catalog.matching.evaluate import (
    PairJudge,
    best_threshold,
    link_pairs,
    load_labels,
    prf,
    sweep,
    text_ceiling,
    top1_accuracy,
    truth_pairs,
)
from polyglot_catalog.matching.groups import build_groups
from polyglot_catalog.matching.scoring import corroboration, prior_shift_threshold


def test_hungarian_prefers_the_better_total_over_a_greedy_first_pick() -> None:
    ia, ib = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 1])
    s = np.array([0.9, 0.8, 0.85, 0.1, 0.7])
    got = assign_one_to_one(ia, ib, s, 0.5, "hungarian")
    assert set(zip(ia[got].tolist(), ib[got].tolist(), strict=True)) == {(0, 1), (1, 0)}
    mut = assign_one_to_one(ia, ib, s, 0.5, "mutual")
    assert set(zip(ia[mut].tolist(), ib[mut].tolist(), strict=True)) == {(0, 0)}


@pytest.mark.parametrize("method", ["hungarian", "mutual"])
def test_one_to_one_holds_on_random_candidate_graphs(method: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = 400
        ia, ib, s = rng.integers(0, 60, m), rng.integers(0, 50, m), rng.random(m)
        keep = np.unique(ia * 1000 + ib, return_index=True)[1]
        ia, ib, s = ia[keep], ib[keep], s[keep]
        got = assign_one_to_one(ia, ib, s, 0.3, method)  # type: ignore[arg-type]
        assert len(set(ia[got].tolist())) == got.sum() == len(set(ib[got].tolist()))
        assert (s[got] >= 0.3).all()


def test_hungarian_finishes_on_tied_scores_and_stays_optimal() -> None:
    """Many exact ties (scores rounded to a few values, cut at 0 and at a tied value) used to send
    scipy's LAPJVsp into an endless loop on float weights; the assignment must finish (the
    subprocess timeout is a hang guard, generous by minutes, not a speed check) and stay one-to-one."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import numpy as np
        from polyglot_catalog.matching.assign import assign_one_to_one
        rng = np.random.default_rng(1)
        for trial in range(120):
            n = int(rng.integers(5, 300)); k = int(rng.integers(1, 6))
            ia = np.repeat(np.arange(n), k); ib = rng.integers(0, n, n * k)
            score = rng.choice([0.0, 0.25, 0.5, 0.5, 0.9, 1.0, 1.0], n * k)
            for cut in (0.0, 0.5):
                m = assign_one_to_one(ia, ib, score, cut)
                assert len(set(ia[m])) == m.sum() == len(set(ib[m])), trial
                assert (score[m] >= cut).all()
        print("done")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"


def test_hungarian_total_matches_brute_force_on_small_tied_graphs() -> None:
    import itertools

    rng = np.random.default_rng(7)
    for _ in range(40):
        n = 4
        ia, ib = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        ia, ib = ia.ravel(), ib.ravel()
        score = rng.choice([0.2, 0.5, 0.5, 0.8], n * n)
        mask = assign_one_to_one(ia, ib, score, 0.5)
        margin = np.where(score >= 0.5, score - 0.5, -1.0).reshape(n, n)
        best = max(
            sum(max(margin[a, perm[a]], 0.0) for a in range(n)) for perm in itertools.permutations(range(n))
        )
        assert np.isclose((score[mask] - 0.5).sum(), best)


# 0: every priced-in edge sends the graph to HiGHS; inf: LAPJVsp re-solves until none is left
BOTH_SOLVERS = pytest.mark.parametrize("reprice_share", [0.0, float("inf")], ids=["highs", "lapjvsp"])


@BOTH_SOLVERS
def test_a_pair_outside_every_product_s_best_candidates_is_still_linked_when_it_pays(
    reprice_share: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a0-b2 is third choice at both ends, yet the optimum needs it: a0's better partners and b2's
    better partners are all taken by surer pairs. The first solve leaves both unmatched; the
    pricing step must bring the pair in."""
    from polyglot_catalog.matching import assign
    from polyglot_catalog.matching.assign import max_weight_matching

    monkeypatch.setattr(assign, "REPRICE_SHARE", reprice_share)

    edges = [(1, 0, 100), (2, 1, 100), (3, 3, 1000), (4, 4, 1000), (0, 0, 10), (0, 1, 9), (0, 2, 1)]
    edges += [(3, 2, 50), (4, 2, 40)]
    ia, ib, w = (np.array(col, dtype=float) for col in zip(*edges, strict=True))
    got = max_weight_matching(ia.astype(int), ib.astype(int), w / 1000)
    linked = set(zip(ia[got].astype(int).tolist(), ib[got].astype(int).tolist(), strict=True))
    assert linked == {(1, 0), (2, 1), (3, 3), (4, 4), (0, 2)}


@BOTH_SOLVERS
def test_hungarian_total_equals_a_dense_assignment_on_graphs_full_of_weak_pairs(
    reprice_share: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every candidate passing (the label-free cut's zero-threshold pass), the sparse solve
    must reach the same total as scipy's dense assignment of the whole weight matrix."""
    from scipy.optimize import linear_sum_assignment

    from polyglot_catalog.matching import assign
    from polyglot_catalog.matching.assign import integer_gain, max_weight_matching

    monkeypatch.setattr(assign, "REPRICE_SHARE", reprice_share)

    rng = np.random.default_rng(11)
    for _ in range(60):
        n, m, k = int(rng.integers(5, 80)), int(rng.integers(5, 80)), int(rng.integers(1, 8))
        ia, ib = np.repeat(np.arange(n), k), rng.integers(0, m, n * k)
        keep = np.unique(ia * 1000 + ib, return_index=True)[1]
        ia, ib = ia[keep], ib[keep]
        w = rng.random(len(ia)) ** rng.choice([1, 8])  # many near-zero weights, some strong pairs
        got = max_weight_matching(ia, ib, w)
        assert len(set(ia[got].tolist())) == got.sum() == len(set(ib[got].tolist()))
        q = integer_gain(w)  # the solver's own integer weights
        dense = np.zeros((n, m))
        dense[ia, ib] = q
        rows, cols = linear_sum_assignment(dense, maximize=True)
        assert q[got].sum() == dense[rows, cols].sum()


def test_nothing_above_threshold_means_no_matches() -> None:
    ia, ib, s = np.array([0, 1]), np.array([0, 1]), np.array([0.2, 0.1])
    assert not assign_one_to_one(ia, ib, s, 0.5).any()
    assert mutual_best(ia, ib, s).all()
    with pytest.raises(ValueError, match="method must be one of"):
        assign_one_to_one(ia, ib, s, 0.5, "greedy")  # type: ignore[arg-type]


def test_groups_never_hold_two_skus_of_one_region() -> None:
    edges = [
        ("DE", "d1", "US", "u1", 0.9),
        ("FR", "f1", "US", "u1", 0.8),
        ("DE", "d2", "FR", "f1", 0.7),  # would put d1 and d2 (both DE) in one group: refused
        ("DE", "d3", "US", "u3", 0.6),
    ]
    groups, kept = build_groups(edges)
    assert kept == [True, True, False, True]
    assert not groups.duplicated(["group_id", "region"]).any()
    assert groups.groupby("group_id").size().tolist() == [3, 2]
    _, kept_loose = build_groups(edges, allow_same_region=True)
    assert all(kept_loose)


def test_precision_recall_f1_and_top1_by_hand() -> None:
    labels = load_labels(
        {("DE", "d1"): "A", ("US", "u1"): "A", ("DE", "d2"): "B", ("US", "u2"): "B", ("DE", "d3"): "C"}
    )
    truth = truth_pairs(labels, "DE", ["d1", "d2", "d3"], "US", ["u1", "u2"])
    assert truth == {("d1", "u1"), ("d2", "u2")}
    judge = PairJudge(truth)
    predicted = [("d1", "u1"), ("d3", "u2")]
    tp = sum(judge(a, b) for a, b in predicted)
    assert prf(tp, len(predicted) - tp, len(truth)) == {
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "tp": 1,
        "fp": 1,
        "fn": 1,
    }
    sa, sb = np.array(["d1", "d1", "d2", "d2"]), np.array(["u1", "u2", "u1", "u2"])
    assert top1_accuracy(sa, sb, np.array([0.9, 0.1, 0.8, 0.7]), judge) == (0.5, 1.0)


def test_identical_text_counts_as_a_tie_only_when_asked() -> None:
    truth = {("e1", "g1"), ("e2", "g2")}
    text_a, text_b = {"e1": "blue mug", "e2": "red pan"}, {"g1": "Pflege: 40 °C", "g2": "Pflege: 40 °C"}
    assert not PairJudge(truth)("e1", "g2")
    assert PairJudge(truth, text_a, text_b)("e1", "g2")
    assert text_ceiling(PairJudge(truth, text_a, text_b)) == {
        "true_pairs": 2,
        "ambiguous_pairs": 2,
        "distinguishable": 0.0,
    }
    text_b2 = {"g1": "Pflege: 40 °C, Schonwaschgang", "g2": "Pflege: 40 °C, Schonwaschgang ."}
    assert text_ceiling(PairJudge(truth, text_a, text_b2))["ambiguous_pairs"] == 0
    assert text_ceiling(PairJudge(truth, text_a, text_b2), near=0.9)["ambiguous_pairs"] == 2


def test_threshold_calibration_and_sweep() -> None:
    scores = np.array([0.95, 0.9, 0.8, 0.6, 0.4, 0.2])
    correct = np.array([True, True, True, False, True, False])
    assert best_threshold(scores, correct, 4) == 0.4  # 4 tp, 1 fp: F1 0.889
    assert best_threshold(scores, correct, 4, target_precision=1.0) == 0.8
    rows = sweep(scores, correct, 4, grid=[0.5, 0.85])
    assert rows[0] == {"threshold": 0.5, "precision": 0.75, "recall": 0.75, "f1": 0.75}
    assert rows[1]["precision"] == 1.0 and rows[1]["recall"] == 0.5


def test_labels_file_needs_the_documented_columns(tmp_path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("region,sku,group_id\nDE,1,a\nUS,9,a\n")
    assert load_labels(path) == {("DE", "1"): "a", ("US", "9"): "a"}
    (tmp_path / "bad.csv").write_text("region,sku\nDE,1\n")
    with pytest.raises(ValueError, match="group_id"):
        load_labels(tmp_path / "bad.csv")


def test_log_odds_linking_keeps_one_sure_pair_over_two_middling_ones() -> None:
    # a0-b0 is near certain; the swap a0-b1 + a1-b0 has more summed margin over 0.5 in raw
    # probability (0.70 > 0.50) but less summed log-odds (2 x 1.73 < 6.91)
    ia, ib = np.array([0, 0, 1]), np.array([0, 1, 0])
    s = np.array([0.999, 0.85, 0.85])
    assert link_pairs(ia, ib, s, 0.5).tolist() == [True, False, False]
    assert assign_one_to_one(ia, ib, s, 0.5).tolist() == [False, True, True]


def test_prior_shift_recovers_the_share_of_matches_from_even_odds_scores() -> None:
    # scores from a classifier trained on balanced classes: logit = log-likelihood ratio of two
    # unit-variance Gaussians 3 apart; 80 % of the pairs are matches
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.5, 1, 8000), rng.normal(-1.5, 1, 2000)
    x = np.r_[pos, neg]
    score = 1 / (1 + np.exp(-3 * x))
    cut, share = prior_shift_threshold(score)
    assert abs(share - 0.8) < 0.02
    assert cut == pytest.approx(1 - share)
    assert prior_shift_threshold(np.zeros(0)) == (0.5, 0.5)


def test_corroboration_takes_the_best_third_region_path_whatever_the_chunk() -> None:
    # DE-FR pair (0, 0) is supported through US 0 (min(0.9, 0.8) = 0.8) and US 1 (min(0.3, 0.95))
    rng = np.random.default_rng(3)
    blocks = [
        PairBlock(
            "DE",
            "FR",
            np.array([0, 0, 1]),
            np.array([0, 1, 1]),
            score=np.array([0.5, 0.2, 0.7]),
        ),
        PairBlock(
            "DE",
            "US",
            np.array([0, 0, 1]),
            np.array([0, 1, 2]),
            score=np.array([0.9, 0.3, 0.6]),
        ),
        PairBlock(
            "FR",
            "US",
            np.array([0, 0, 1]),
            np.array([0, 1, 1]),
            score=np.array([0.8, 0.95, 0.4]),
        ),
    ]
    de_fr, de_us, fr_us = corroboration(blocks)
    np.testing.assert_allclose(de_fr, [0.8, 0.3, 0.0])  # (1, 1): DE 1 -> US 2 only, FR 1 -> US 1 only
    np.testing.assert_allclose(de_us, [0.5, 0.5, 0.0])  # DE 0 - US 1: FR 0 (0.5, 0.95) beats FR 1 (0.2, 0.4)
    np.testing.assert_allclose(fr_us, [0.5, 0.3, 0.2])
    big = []
    for ra, rb in (("DE", "FR"), ("DE", "US"), ("FR", "US")):
        n = 300
        big.append(
            PairBlock(
                ra,
                rb,
                rng.integers(0, 40, n),
                rng.integers(0, 40, n),
                score=rng.random(n),
            )
        )
    whole = corroboration(big)
    for chunk in (1, 7, 1000):
        for got, want in zip(corroboration(big, chunk=chunk), whole, strict=True):
            np.testing.assert_array_equal(got, want)


def test_products_freed_by_the_group_rule_are_offered_their_next_twin() -> None:
    """a1's link to c1 is refused (c2 is already in a1's group), so c1 is free again: its next
    candidate a2, free too and over the threshold, becomes its match instead of both staying alone."""
    import pandas as pd

    from polyglot_catalog.matching.evaluate import apply_group_rule, assigned_at

    pairs = pd.DataFrame(
        [
            ("A", "a1", "B", "b1", 0.90),
            ("A", "a1", "C", "c1", 0.90),
            ("A", "a2", "C", "c1", 0.80),
            ("B", "b1", "C", "c2", 0.95),
        ],
        columns=["region_a", "sku_a", "region_b", "sku_b", "score"],
    )
    first = assigned_at(pairs, 0.5)
    assert first.tolist() == [True, True, False, True]  # a2-c1 lost the one-to-one to a1-c1
    accepted, refused, groups = apply_group_rule(pairs, first, 0.5)
    assert refused.tolist() == [False, True, False, False]
    assert accepted.tolist() == [True, False, True, True]
    assert sorted(map(tuple, groups[["region", "sku"]].to_numpy())) == [
        ("A", "a1"),
        ("A", "a2"),
        ("B", "b1"),
        ("C", "c1"),
        ("C", "c2"),
    ]
    assert groups.groupby("group_id").size().sort_values().tolist() == [2, 3]
    below = pairs.assign(score=[0.90, 0.90, 0.40, 0.95])  # the runner-up must still clear the cut
    accepted, _, _ = apply_group_rule(below, assigned_at(below, 0.5), 0.5)
    assert accepted.tolist() == [True, False, False, True]


def test_identical_listings_hold_their_partners_best_score_to_lowest_sku() -> None:
    """Rows 0 and 1 of region a list the same text, so they score alike against every partner; the
    one-to-one optimum may give b0 (0.9) to either. Whatever the solver chose, row 0 keeps b0 and
    row 1 b1 (0.7): the same total weight, decided by the data."""
    from polyglot_catalog.matching.canonical import TextSets, prefer_lower_rows

    ia = np.array([0, 0, 1, 1])
    ib = np.array([0, 1, 0, 1])
    score = np.array([0.9, 0.7, 0.9, 0.7])
    same_text = TextSets.of(["chair", "chair"])
    other = TextSets.of(["Stuhl", "Tisch"])
    for solver_pick in ([False, True, True, False], [True, False, False, True]):
        got = prefer_lower_rows(ia, ib, score, np.array(solver_pick), same_text, other)
        assert got.tolist() == [True, False, False, True]
    # rows that do not score alike (another title or GTIN) keep the solver's choice
    uneven = np.array([0.9, 0.7, 0.8, 0.7])
    kept = prefer_lower_rows(ia, ib, uneven, np.array([False, True, True, False]), same_text, other)
    assert kept.tolist() == [False, True, True, False]
