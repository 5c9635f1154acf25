"""Why a product has no twin, in words: the unmatched table a reviewer reads (#12), the same whether
the pairs table's columns are categoricals (the matcher's) or plain strings (a table read back)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from polyglot_catalog.matching import pipeline
from polyglot_catalog.matching.data import RegionTable

SKUS = {"DE": ["d0", "d1", "d2", "d3", "d4"], "FR": ["f0", "f1", "f2"], "US": ["u0", "u1"]}
# (region_a, sku_a, region_b, sku_b, score, decision): one case per reason
ROWS = [
    ("DE", "d0", "FR", "f0", 0.9, "match"),
    ("DE", "d1", "FR", "f0", 0.8, "not_mutual"),  # its twin went to a surer pair
    ("DE", "d2", "US", "u0", 0.85, "conflict"),  # refused by the group rule
    ("DE", "d3", "FR", "f1", 0.3, "below_threshold"),
    ("FR", "f2", "US", "u1", 0.7, "not_mutual"),  # above the cut, yet left out of the optimum
]


def _unmatched(
    skus: dict[str, list[str]], rows: list[tuple], threshold: float, *, categorical: bool = False
) -> pd.DataFrame:
    """``pipeline._unmatched`` of a catalog of these SKUs (regions in this order) and pairs table,
    with the product numbers the matcher gives (region offset + row)."""
    data = {r: RegionTable(r, s, [f"text {x}" for x in s], np.zeros((len(s), 0))) for r, s in skus.items()}
    pairs = pd.DataFrame(rows, columns=["region_a", "sku_a", "region_b", "sku_b", "score", "decision"])
    if categorical:
        pairs = pairs.astype({c: "category" for c in ("region_a", "sku_a", "region_b", "sku_b", "decision")})
    offset = dict(zip(skus, np.cumsum([0, *[len(s) for s in skus.values()]]).tolist(), strict=False))

    def pid(side: str) -> np.ndarray:
        cells = zip(pairs[f"region_{side}"], pairs[f"sku_{side}"], strict=True)
        return np.array([offset[r] + skus[r].index(x) for r, x in cells])

    return pipeline._unmatched(pairs, data, pid("a"), pid("b"), threshold=threshold)


@pytest.mark.parametrize("categorical", [True, False])
def test_each_unmatched_product_says_why(categorical: bool) -> None:
    got = _unmatched(SKUS, ROWS, 0.5, categorical=categorical)

    reasons = dict(zip(got["region"] + "/" + got["sku"], got["reason"], strict=True))
    assert reasons == {
        "DE/d1": "twin FR/f0 taken by DE/d0 (score 0.900 vs 0.800)",
        "DE/d2": "its match US/u0 was dropped: a group may hold one SKU per region",
        "DE/d3": "best candidate FR/f1 scores 0.300, below the threshold 0.500",
        "DE/d4": "no candidate in another region",
        "FR/f1": "best candidate DE/d3 scores 0.300, below the threshold 0.500",
        "FR/f2": "best candidate US/u1 went unassigned in the one-to-one optimum",
        "US/u0": "its match DE/d2 was dropped: a group may hold one SKU per region",
        "US/u1": "best candidate FR/f2 went unassigned in the one-to-one optimum",
    }
    best = got.set_index(got["region"] + "/" + got["sku"])
    assert best.loc["DE/d2", ["best_region", "best_sku", "best_score"]].tolist() == ["US", "u0", 0.85]
    assert pd.isna(best.loc["DE/d4", "best_region"]) and np.isnan(best.loc["DE/d4", "best_score"])


def test_finding_the_best_candidates_holds_arrays_not_the_columns_as_objects() -> None:
    """The match task builds this table beside millions of pairs (12.5 M at 300k x 3): it works on the
    pairs' numbers and converts only the cells it reports (was ~255 B a pair: every region and SKU
    column, then the decisions, as Python objects)."""
    import tracemalloc

    n_prod, k = 20_000, 12
    rng = np.random.default_rng(0)
    data = {
        r: RegionTable(
            r,
            [f"{r}-{i:06d}" for i in range(n_prod)],
            [f"t{i}" for i in range(n_prod)],
            np.zeros((n_prod, 0)),
        )
        for r in ("DE", "FR")
    }
    ia, ib = np.repeat(np.arange(n_prod), k), rng.integers(0, n_prod, n_prod * k)
    score = rng.random(len(ia))
    regions = pd.Index(["DE", "FR"])
    pairs = pd.DataFrame(
        {
            "region_a": pd.Categorical.from_codes(np.zeros(len(ia), int), regions),
            "sku_a": pd.Categorical.from_codes(ia, data["DE"].skus),
            "region_b": pd.Categorical.from_codes(np.ones(len(ia), int), regions),
            "sku_b": pd.Categorical.from_codes(ib, data["FR"].skus),
            "score": score,
            "decision": pd.Categorical(np.where(score > 0.95, "match", "below_threshold")),
        }
    )
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        got = pipeline._unmatched(pairs, data, ia, ib + n_prod, 0.5)
        per_pair = (tracemalloc.get_traced_memory()[1] - start) / len(pairs)
    finally:
        tracemalloc.stop()
    assert len(got) > 0
    assert per_pair < 120, f"{per_pair:.0f} B a pair"


def test_a_tie_for_best_candidate_goes_to_the_earlier_row_and_side_a_first() -> None:
    """Whatever the rows' order of scoring, the reported best candidate among equal scores is fixed."""
    skus = {"DE": ["d0"], "FR": ["f0", "f1"], "US": ["u0", "u1"]}
    rows = [
        ("DE", "d0", "US", "u0", 0.4, "below_threshold"),
        ("FR", "f1", "US", "u1", 0.7, "below_threshold"),  # f1 as side a: wins its tie
        ("DE", "d0", "FR", "f1", 0.7, "below_threshold"),  # f1 as side b, same score
        ("DE", "d0", "FR", "f0", 0.6, "below_threshold"),
        ("DE", "d0", "US", "u1", 0.7, "below_threshold"),  # d0's later tie: loses to row 2
        ("FR", "f0", "US", "u0", float("nan"), "below_threshold"),  # a NaN score never wins
    ]

    got = _unmatched(skus, rows, 0.9)

    best = {
        f"{r}/{s}": f"{br}/{bs}"
        for r, s, br, bs in got[["region", "sku", "best_region", "best_sku"]].to_numpy()
    }
    assert best == {
        "DE/d0": "FR/f1",  # rows 2 and 4 tie at 0.7: the earlier
        "FR/f0": "DE/d0",  # 0.6 beats the NaN row
        "FR/f1": "US/u1",  # row 1 (side a) and row 2 (side b) tie: side a
        "US/u0": "DE/d0",
        "US/u1": "FR/f1",  # rows 1 and 4 tie: the earlier
    }


def test_twin_holders_agree_with_a_lookup_of_every_accepted_link() -> None:
    """Which accepted row took each unmatched product's best candidate: the sorted-key lookup the
    match task uses gives what a plain ``(product, region) -> row`` mapping gives, the later row
    where two accepted rows link one product into the same region."""
    rng = np.random.default_rng(3)
    regions = np.array(["DE", "FR", "JP", "US"], dtype=object)
    n_prod, n_pairs = 60, 400
    region_col = regions[rng.integers(0, len(regions), n_prod)]
    pid_a, pid_b = rng.integers(0, n_prod, n_pairs), rng.integers(0, n_prod, n_pairs)
    pairs = pd.DataFrame(
        {"region_a": pd.Categorical(region_col[pid_a]), "region_b": pd.Categorical(region_col[pid_b])}
    )
    match_rows = np.flatnonzero(rng.random(n_pairs) < 0.3)
    keep = rng.choice(n_prod, 40, replace=False)
    partner = rng.integers(0, n_prod, len(keep))

    got = pipeline._twin_holders(pairs, pid_a, pid_b, match_rows, region_col, partner, keep)

    taken: dict[tuple[int, str], int] = {}
    for j in match_rows:
        taken[(int(pid_a[j]), region_col[pid_b[j]])] = int(j)
        taken[(int(pid_b[j]), region_col[pid_a[j]])] = int(j)
    want = [taken.get((int(p), region_col[x]), -1) for p, x in zip(partner, keep, strict=True)]
    assert got.tolist() == want
    assert (got >= 0).sum() > 5 and (got < 0).sum() > 5  # both kinds of answer exercised
