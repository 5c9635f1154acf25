"""Qdrant-path candidate queries: hits mapped to rows by point id (no payload) vs by the sku payload.

The matcher's Qdrant path asks the store for each product's 2k neighbours in the other region
(``candidates.qdrant_topk``). Tables read from a store carry their point ids, so the hits map to
rows by id and the search fetches no payload; tables without ids fall back to fetching ``sku``.
This loads the synthetic catalog of ``bench_match_scale.py`` (3 regions x N) into the embedded
engine once and times both mappings side by side in one run, on the same sampled queries,
alternating which goes first, per HNSW beam. It also checks both return the same neighbours.

    python bench/bench_query_hits.py [--n 30000] [--queries 1000] [--ef 100,256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from _common import publish
from bench_match_scale import build_tables, load_store

MAPPINGS = ("sku payload", "point id")


def measure(store, queries: int, efs: list[int], repeats: int, k: int) -> dict[int, dict[str, float]]:
    """ms per query of each mapping per beam (best of ``repeats``), after checking they agree."""
    from polyglot_catalog.matching.candidates import qdrant_topk
    from polyglot_catalog.matching.pipeline import load_catalog

    data = load_catalog(store)
    no_ids = {r: replace(t, point_ids=None) for r, t in data.items()}
    tables = {"point id": data, "sku payload": no_ids}
    rng = np.random.default_rng(0)
    cases = [
        (a, b, rng.choice(len(data[a]), min(queries, len(data[a])), replace=False))
        for a in sorted(data)
        for b in sorted(data)
        if a != b
    ]
    out: dict[int, dict[str, float]] = {}
    for ef in efs:
        best = dict.fromkeys(MAPPINGS, float("inf"))
        got: dict[str, list[np.ndarray]] = {}
        for rep in range(repeats):
            for name in MAPPINGS if rep % 2 == 0 else MAPPINGS[::-1]:
                t0 = time.perf_counter()
                idx = [
                    qdrant_topk(store, data[a].vectors[rows], b, tables[name][b], k, hnsw_ef=ef)[0]
                    for a, b, rows in cases
                ]
                best[name] = min(best[name], time.perf_counter() - t0)
                got[name] = idx
        same = all(np.array_equal(x, y) for x, y in zip(*got.values(), strict=True))
        n = sum(len(rows) for _, _, rows in cases)
        out[ef] = {name: 1000 * best[name] / n for name in MAPPINGS} | {"same": float(same)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30_000, help="products per region")
    ap.add_argument("--queries", type=int, default=1000, help="sampled products per direction")
    ap.add_argument("--ef", default="100,256", help="HNSW search beams")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=20, help="neighbours per query (the matcher asks for 2 x 10)")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args(argv)
    from polyglot_catalog.store import CatalogStore, open_client

    tables = build_tables(args.n)
    with tempfile.TemporaryDirectory(prefix="bench-hits-", dir="/var/tmp") as folder:
        store = CatalogStore(open_client(path=folder, embedded="edge"), "catalog", "bundled")
        store.ensure_collection(384)
        load_store(store, tables)
        del tables
        res = measure(store, args.queries, [int(e) for e in args.ef.split(",") if e], args.repeats, args.k)
        store.client.close()
    lines = [
        f"3 regions x {args.n:,} products (bench_match_scale.py's synthetic vectors), qdrant-edge store "
        f"loaded with `bulk_load`; {args.queries:,} sampled products per direction and region pair, "
        f"{args.k} neighbours each through `candidates.qdrant_topk`; "
        f"best of {args.repeats} alternating runs.",
        "",
        "| hnsw_ef | ms per query, sku payload | ms per query, point id | ratio | same neighbours |",
        "| --- | --- | --- | --- | --- |",
    ]
    for ef, v in res.items():
        lines.append(
            f"| {ef} | {v['sku payload']:.2f} | {v['point id']:.2f} | "
            f"{v['sku payload'] / v['point id']:.2f}x | {'yes' if v['same'] else 'NO'} |"
        )
    publish(
        "Qdrant-path queries: hits by point id vs by sku payload",
        "bench_query_hits.py",
        argv,
        "\n".join(lines),
        append=not args.no_append,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] if len(sys.argv) > 1 else None))
