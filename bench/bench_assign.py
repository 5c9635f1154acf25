"""One-to-one assignment: the core-and-prices solve vs one LAPJVsp call on the whole candidate graph.

Takes the scored candidate pairs of a real ``match_catalog`` run on ``bench_match_scale.py``'s
synthetic catalog (3 regions x N, exact path) and times ``link_pairs`` on each region pair, side by
side in one process: as shipped (each product's best edge, LP-dual pricing, HiGHS for many priced-in
edges) and with the core widened to every edge, i.e. one LAPJVsp call on the whole graph (the
solver before the change). At threshold 0, the label-free cut's first pass (on this catalog, where
every product has a twin, the cut it finds is about 1e-6, so the final pass is as hard), and at
0.5. ``--drop`` also runs every pair with that share of candidate pairs removed at random: the
Qdrant path's candidates at 300k per region hold about a third fewer of the exact top-k, which
leaves many products without their twin, the case that made the whole-graph solve slow. Both
solvers must reach the same total weight; the table says so per row.

    python bench/bench_assign.py [--n 30000] [--drop 0.3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from _common import publish
from bench_match_scale import build_tables

SOLVERS = ("whole graph", "core + prices")


def region_pairs(pairs: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``"A|B" -> (ia, ib, score)`` of every candidate pair of the run."""
    out = {}
    for (ra, rb), sub in pairs.groupby(["region_a", "region_b"], sort=True, observed=True):
        out[f"{ra}|{rb}"] = (
            pd.factorize(sub["sku_a"])[0],
            pd.factorize(sub["sku_b"])[0],
            sub["score"].to_numpy(np.float64),
        )
    return out


def total(score: np.ndarray, mask: np.ndarray, threshold: float) -> float:
    """The solver's own objective (quantised log-odds margins) of the linked pairs."""
    from polyglot_catalog.matching.assign import hungarian_weight, integer_gain
    from polyglot_catalog.matching.evaluate import link_log_odds

    return float(integer_gain(hungarian_weight(*link_log_odds(score[mask], threshold))).sum())


def time_both(ia: np.ndarray, ib: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Seconds per solver on one region pair, whether HiGHS ran, and whether the totals agree."""
    from polyglot_catalog.matching import assign
    from polyglot_catalog.matching.evaluate import link_pairs

    shipped_core, shipped_highs = assign._best_edges, assign._highs
    highs_calls = []

    def counted_highs(*args):
        highs_calls.append(1)
        return shipped_highs(*args)

    out: dict[str, float] = {}
    masks = {}
    for name in SOLVERS:
        if name == "whole graph":
            assign._best_edges = lambda node, w, n_nodes: np.ones(len(w), dtype=bool)
        else:
            assign._highs = counted_highs
        try:
            t0 = time.perf_counter()
            masks[name] = link_pairs(ia, ib, score, threshold)
            out[name] = time.perf_counter() - t0
        finally:
            assign._best_edges, assign._highs = shipped_core, shipped_highs
    out["highs"] = float(bool(highs_calls))
    out["same"] = float(len({total(score, m, threshold) for m in masks.values()}) == 1)
    out["links"] = float(masks["core + prices"].sum())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30_000, help="products per region")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--drop", type=float, default=0.3, help="share of candidate pairs removed (0: skip)")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args(argv)
    from polyglot_catalog.matching import match_catalog

    result = match_catalog(build_tables(args.n), k=args.k, candidates="exact")
    graphs = region_pairs(result.pairs)
    del result
    rng = np.random.default_rng(0)
    cases = []
    for drop in [0.0] + ([args.drop] if args.drop > 0 else []):
        for name, (ia, ib, score) in graphs.items():
            keep = rng.random(len(score)) >= drop
            for threshold in (0.0, 0.5):
                v = time_both(ia[keep], ib[keep], score[keep], threshold)
                cases.append((drop, name, int(keep.sum()), threshold, v))
    lines = [
        f"3 regions x {args.n:,} products (bench_match_scale.py's synthetic catalog), exact path, "
        f"k={args.k}; the run's own scored candidate pairs per region pair, linked by `link_pairs` with "
        "each solver in turn. Threshold 0 is the label-free cut's first pass.",
        "",
        "| candidates dropped | region pair | pairs | threshold | whole graph s | core + prices s | ratio "
        "| HiGHS used | links | same total |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for drop, name, n_pairs, threshold, v in cases:
        lines.append(
            f"| {drop:.0%} | {name} | {n_pairs:,} | {threshold:g} | {v['whole graph']:.3f} "
            f"| {v['core + prices']:.3f} | {v['whole graph'] / v['core + prices']:.1f}x "
            f"| {'yes' if v['highs'] else 'no'} | {int(v['links']):,} | {'yes' if v['same'] else 'NO'} |"
        )
    publish(
        "One-to-one assignment: core + LP-dual prices vs one LAPJVsp call on the whole graph",
        "bench_assign.py",
        argv,
        "\n".join(lines),
        append=not args.no_append,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] if len(sys.argv) > 1 else None))
