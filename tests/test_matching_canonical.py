"""Identical listings' matches held by their lowest rows (``canonical.prefer_lower_rows``), whatever
order the pairs come in: the match's decisions must not depend on how the solver or the parts
ordered them."""

from __future__ import annotations

import numpy as np
import pytest

from polyglot_catalog.matching.canonical import TextSets, prefer_lower_rows


def _by_dict(ia, ib, score, accepted, text_a: TextSets, text_b: TextSets) -> np.ndarray:
    """The rule as first written: a dict from each pair's (own, other) rows to its index."""
    accepted = np.asarray(accepted, dtype=bool).copy()
    for own, other, sets in ((ia, ib, text_a), (ib, ia, text_b)):
        hit = np.flatnonzero(accepted & sets.shared()[own])
        by_text: dict[int, list[int]] = {}
        for i in hit:
            by_text.setdefault(int(sets.inverse[own[i]]), []).append(int(i))
        lookup = {(int(o), int(t)): i for i, (o, t) in enumerate(zip(own, other, strict=True))}
        ptr, rows = sets.members(len(sets.inverse))
        for text, picks in by_text.items():
            want = rows[ptr[text] : ptr[text + 1]][: len(picks)]
            ranked = sorted(picks, key=lambda i: (-score[i], int(other[i])))
            moved = [lookup.get((int(m), int(other[i]))) for m, i in zip(want, ranked, strict=True)]
            if any(j is None or score[j] != score[i] for j, i in zip(moved, ranked, strict=True)):
                continue
            accepted[picks] = False
            accepted[moved] = True
    return accepted


@pytest.mark.parametrize("seed", range(6))
def test_lowest_rows_hold_the_matches_of_identical_listings_in_any_pair_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_a, n_b = 40, 36
    words_a, words_b = rng.integers(0, 9, n_a), rng.integers(0, 8, n_b)  # many identical listings
    text_a, text_b = TextSets.of([f"a{w}" for w in words_a]), TextSets.of([f"b{w}" for w in words_b])
    ia, ib = np.meshgrid(np.arange(n_a), np.arange(n_b), indexing="ij")
    ia, ib = ia.ravel(), ib.ravel()
    keep = rng.random(len(ia)) < 0.7  # not every row a candidate of every other
    ia, ib = ia[keep], ib[keep]
    score = ((words_a[ia] * 7 + words_b[ib] * 3) % 11) / 10  # identical texts score alike...
    odd = rng.random(len(ia)) < 0.05
    score[odd] += 0.01  # ...but for a few pairs (other title or GTIN)
    order = rng.permutation(len(ia))  # pairs in no particular order
    ia, ib, score = ia[order], ib[order], score[order]
    accepted = np.zeros(len(ia), bool)
    used_a, used_b = set(), set()
    for i in rng.permutation(len(ia)):  # some one-to-one choice, as a solver might make
        if ia[i] not in used_a and ib[i] not in used_b and rng.random() < 0.5:
            accepted[i] = True
            used_a.add(ia[i])
            used_b.add(ib[i])

    got = prefer_lower_rows(ia, ib, score, accepted, text_a, text_b)

    want = _by_dict(ia, ib, score, accepted, text_a, text_b)
    assert got.tolist() == want.tolist()
    assert (want != accepted).sum() > 0  # the rule moved some matches
