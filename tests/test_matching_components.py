"""Decisions by connected component: the group rule gives the same answer in any batches, and a
conflict in one part of the catalog never changes a decision in another."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from polyglot_catalog.matching.components import component_batches, pair_components
from polyglot_catalog.matching.evaluate import apply_group_rule, assigned_at


def _pairs(rows: list[tuple[str, str, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["region_a", "sku_a", "region_b", "sku_b", "score"])


def _random_pairs(seed: int, n: int = 40, per_product: int = 3) -> pd.DataFrame:
    """Three regions, each product with a few candidates per other region and random scores: many
    components, triangles that disagree (group-rule refusals) and freed runners-up."""
    rng = np.random.default_rng(seed)
    rows = []
    for ra, rb in itertools.combinations(["DE", "FR", "US"], 2):
        for i in range(n):
            for j in rng.choice(n, size=per_product, replace=False):
                rows.append((ra, f"s{i:03d}", rb, f"s{j:03d}", float(np.round(rng.uniform(0.2, 1.0), 3))))
    return _pairs(rows).drop_duplicates(["region_a", "sku_a", "region_b", "sku_b"], ignore_index=True)


def test_components_join_products_through_shared_products_only() -> None:
    """The same SKU string in two regions is two products; labels follow each component's first pair."""
    p = _pairs(
        [
            ("DE", "x", "US", "y", 0.9),  # 0
            ("FR", "x", "US", "z", 0.9),  # 1: FR x is not DE x
            ("DE", "x", "FR", "w", 0.9),  # 0 via DE x
            ("FR", "x", "DE", "q", 0.9),  # 1 via FR x
            ("DE", "k", "US", "m", 0.9),  # 2
        ]
    )
    labels = pair_components(p["region_a"], p["sku_a"], p["region_b"], p["sku_b"])
    np.testing.assert_array_equal(labels, [0, 1, 0, 1, 2])


def test_batches_hold_whole_components_within_the_limit() -> None:
    labels = np.array([0, 1, 0, 2, 2, 2, 3, 1, 4, 4])
    batches = list(component_batches(labels, max_pairs=3))
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(len(labels)))
    for b in batches:
        assert np.all(np.diff(b) > 0)
        comps = set(labels[b].tolist())
        assert all(set(np.flatnonzero(labels == c).tolist()) <= set(b.tolist()) for c in comps)
        assert len(b) <= 3 or len(comps) == 1
    assert [sorted(set(labels[b].tolist())) for b in batches] == [[0], [1], [2], [3, 4]]


@pytest.mark.parametrize("method", ["hungarian", "mutual"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_group_rule_is_the_same_in_any_batches(method: str, seed: int) -> None:
    pairs = _random_pairs(seed)
    first = assigned_at(pairs, 0.5, method)
    whole = apply_group_rule(pairs, first, 0.5, method)
    assert whole[1].any(), "the data must exercise refusals"
    for batch in (1, 7, 50):
        got = apply_group_rule(pairs, first, 0.5, method, batch_pairs=batch)
        np.testing.assert_array_equal(got[0], whole[0])
        np.testing.assert_array_equal(got[1], whole[1])
        pd.testing.assert_frame_equal(got[2], whole[2])


@pytest.mark.parametrize("seed", [1, 2])
def test_group_rule_on_the_matchers_categorical_columns_decides_as_on_strings(seed: int) -> None:
    """The matcher's pairs table holds regions and SKUs as categoricals (shared strings, unused
    categories included); the rule reads them without a string copy per row and decides alike."""
    pairs = _random_pairs(seed)
    first = assigned_at(pairs, 0.5, "hungarian")
    plain = apply_group_rule(pairs, first, 0.5, "hungarian")
    coded = pairs.astype({c: "category" for c in ("region_a", "sku_a", "region_b", "sku_b")})
    coded["sku_b"] = coded["sku_b"].cat.add_categories(["never-used"])
    got = apply_group_rule(coded, first, 0.5, "hungarian")
    assert plain[1].any()
    np.testing.assert_array_equal(got[0], plain[0])
    np.testing.assert_array_equal(got[1], plain[1])
    pd.testing.assert_frame_equal(got[2], plain[2])


def test_a_conflict_elsewhere_does_not_reopen_an_unrelated_component() -> None:
    """With the mutual rule, US b2 is free and A2-b2 clears the threshold but is nobody's mutual
    best: it stays unmatched whether or not a refusal happens in an unrelated triangle."""
    quiet = [
        ("DE", "a1", "US", "b1", 0.9),
        ("DE", "a2", "US", "b1", 0.8),
        ("DE", "a2", "US", "b2", 0.7),
    ]
    conflict = [  # DE c1 - FR e1 - US g1 - DE c2: the weakest link is refused
        ("DE", "c1", "FR", "e1", 0.95),
        ("FR", "e1", "US", "g1", 0.9),
        ("DE", "c2", "US", "g1", 0.85),
    ]
    alone = _pairs(quiet)
    both = _pairs(quiet + conflict)
    res_alone = apply_group_rule(alone, assigned_at(alone, 0.5, "mutual"), 0.5, "mutual")
    res_both = apply_group_rule(both, assigned_at(both, 0.5, "mutual"), 0.5, "mutual")
    assert res_both[1][3:].any()  # the triangle did refuse a link
    np.testing.assert_array_equal(res_both[0][:3], res_alone[0])
    assert res_alone[0].tolist() == [True, False, False]


@pytest.mark.parametrize("allow_same_region", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_groups_found_at_once_where_no_region_repeats_equal_merging_every_edge_in_order(
    seed: int, allow_same_region: bool
) -> None:
    """The group rule merges the edges of a component with two SKUs of one region strongest first
    and takes the others' whole: the groups and the refused edges are those of merging every edge
    strongest first (the rule's definition), with ties, repeated edges and same-region edges."""
    from polyglot_catalog.matching.groups import _merge_strongest_first, group_components

    rng = np.random.default_rng(seed)
    regions = np.array(["DE", "FR", "JP", "US"], dtype=object)
    edges = []
    for n in range(300):  # small components mostly; the first 60 edges crowd 12 SKUs: clashes
        ra, rb = rng.choice(regions, 2, replace=rng.random() < 0.05)  # a few same-region edges
        skus = 12 if n < 60 else 400
        a, b = f"s{rng.integers(0, skus)}", f"s{rng.integers(0, skus)}"
        edges.append((ra, a, rb, b, float(rng.integers(0, 6) / 5)))
    edges += edges[:10] + edges[100:110]  # repeated edges

    got = group_components(edges, allow_same_region=allow_same_region)

    want_comps, want_kept = _merge_strongest_first(edges, allow_same_region)
    assert sorted(got[0]) == sorted(want_comps)
    assert got[1] == want_kept
    assert allow_same_region or not all(want_kept)  # conflicts exercised
    assert sum(len(c) == 2 for c in want_comps) > 20  # and many small groups beside them
