"""Cost of writing the match state (docs/MATCH_STATE.md) on the embedded edge store.

N products per region x 3 regions (tiny vectors: the state never reads them), 70% of them in
3-region groups. Times ``commit_match_state`` for a first run (every point written), an unchanged
re-run (nothing written) and a run with 1% churn (twins swapped between groups), then 1,000 lookups.
The matcher is not run: its result is built directly, so only the state's own cost is measured.

    python bench/bench_match_state.py [--n 20000] [--no-append]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from _common import publish

from polyglot_catalog.ids import point_id
from polyglot_catalog.matching.groups import build_groups
from polyglot_catalog.matching.result import MatchResult
from polyglot_catalog.matching.state import commit_match_state, lookup_product
from polyglot_catalog.store import CatalogStore, open_client

REGIONS = ("DE", "FR", "US")


def _result(n: int, swap: np.ndarray | None = None) -> MatchResult:
    """Groups i = (DE-i, FR-i, US-i) for i < 0.7 n; ``swap`` pairs exchange their FR twins."""
    linked = int(0.7 * n)
    fr = np.arange(linked)
    if swap is not None:
        fr[swap[0::2]], fr[swap[1::2]] = fr[swap[1::2]], fr[swap[0::2]]
    edges = [("DE", f"DE-{i}", "US", f"US-{i}", 0.9) for i in range(linked)]
    edges += [("DE", f"DE-{i}", "FR", f"FR-{fr[i]}", 0.8) for i in range(linked)]
    groups, kept = build_groups(edges)
    pairs = pd.DataFrame(edges, columns=["region_a", "sku_a", "region_b", "sku_b", "score"])
    pairs["decision"] = ["match" if k else "conflict" for k in kept]
    summary = {"collection": "bench", "model": "m", "regions": list(REGIONS), "threshold": 0.5}
    return MatchResult(pairs=pairs, groups=groups, unmatched=pd.DataFrame(), summary=summary)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="products per region")
    parser.add_argument("--no-append", action="store_true", help="print only; do not append RESULTS.md")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-state-"))
    try:
        client = open_client(path=str(folder))
        store = CatalogStore(client, "bench", "v")
        store.ensure_collection(4)
        for region in REGIONS:
            skus = [f"{region}-{i}" for i in range(args.n)]
            store.upsert(
                [point_id(region, s) for s in skus],
                np.tile(np.eye(4, dtype=np.float32)[:1], (args.n, 1)),
                [{"region": region, "sku": s, "status": "active"} for s in skus],
            )
        rows = []
        churn = np.random.default_rng(0).permutation(int(0.7 * args.n))[: (3 * args.n // 100) // 2 * 2]
        for label, result in (
            ("first run", _result(args.n)),
            ("unchanged re-run", _result(args.n)),
            ("1% churn", _result(args.n, churn)),
        ):
            t0 = time.perf_counter()
            commit_match_state(store, result, f"run-{len(rows) + 1}")
            rows.append(
                (
                    label,
                    time.perf_counter() - t0,
                    result.summary["match_state"]["points_written"],
                    len(result.changes),
                )
            )
        t0 = time.perf_counter()
        for i in range(1000):
            lookup_product(client, "bench", "US", f"US-{i}")
        per_lookup_ms = (time.perf_counter() - t0) / 1000 * 1e3
        client.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = [
        f"{args.n:,} products per region x 3 regions, {int(0.7 * args.n):,} groups of 3; edge store; the CPU "
        "was shared with other engineers' jobs (2 cores), so times are indicative.",
        "",
        "| run | commit (s) | points written | rows in changes.parquet |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {label} | {sec:.2f} | {written:,} | {changes:,} |" for label, sec, written, changes in rows),
        "",
        f"Lookup (`lookup_product`, payload only, no model): {per_lookup_ms:.2f} ms per product.",
    ]
    publish("Match state: commit and lookup cost (edge store)", "bench_match_state.py", argv or sys.argv[1:],
            "\n".join(lines), append=not args.no_append)  # fmt: skip


if __name__ == "__main__":
    main()
