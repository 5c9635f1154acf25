"""Store layout for region-filtered search: one HNSW graph per region vs one global graph.

Every search the catalog makes is filtered to one region (``CatalogStore.query_region``), so new
collections get one graph per region and none over the collection (``m=0``, ``payload_m=16``,
``region`` indexed as the tenant field). This loads the same synthetic catalog (3 regions x N, the
vectors of ``bench_match_scale.py``) into both layouts of the embedded engine, side by side in one
run: the region graphs as ``CatalogStore.ensure_collection`` makes them, and the global graph
(Qdrant's defaults, the layout before) created the way earlier versions did. Both are filled with
``bulk_load`` and queried with the matcher's own calls (``query_region`` with its region and stale
filter). Printed: load time (upsert + index), and per HNSW beam the engine recall@k, the matcher's
candidate recall@k and ms per query (``bench_match_scale.qdrant_recall``), with the ratios.

    python bench/bench_store_layout.py [--n 100000] [--ef 100,256] [--k 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from _common import publish
from bench_match_scale import build_tables, load_store, qdrant_recall

LAYOUTS = ("global graph", "region graphs")


def _store(folder: str, layout: str):
    from qdrant_client import models

    from polyglot_catalog.store import INDEXED_FIELDS, CatalogStore, open_client

    client = open_client(path=folder, embedded="edge")
    if layout == "global graph":  # as collections were created before the region graphs
        client.create_collection(
            "catalog",
            vectors_config={"bundled": models.VectorParams(size=384, distance=models.Distance.COSINE)},
        )
        for name in INDEXED_FIELDS:
            client.create_payload_index("catalog", name, models.PayloadSchemaType.KEYWORD)
    store = CatalogStore(client, "catalog", "bundled", upsert_batch_size=1024)
    store.ensure_collection(384)  # creates the region-graph layout; checks the other
    return store


def measure(tables: dict, layout: str, k: int, efs: list[int | None]) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-layout-", dir="/var/tmp") as folder:
        store = _store(folder, layout)
        t0 = time.perf_counter()
        load_store(store, tables)
        load_s = time.perf_counter() - t0
        graphs = store.hnsw_graphs()
        sweep = qdrant_recall(store, k, efs)
        store.client.close()
    return {"layout": layout, "load_s": load_s, "graphs": graphs, "sweep": sweep}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="products per region")
    ap.add_argument("--ef", default="100,256", help="HNSW search beams ('default': the engine's)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args(argv)
    efs = [None if e == "default" else int(e) for e in args.ef.split(",") if e]
    tables = build_tables(args.n)
    results = {layout: measure(tables, layout, args.k, efs) for layout in LAYOUTS}
    g, r = (results[x] for x in LAYOUTS)
    lines = [
        f"3 regions x {args.n:,} products (bench_match_scale.py's synthetic vectors), qdrant-edge store, "
        "both layouts loaded with `bulk_load` and queried with `query_region` (region + stale filter), "
        f"1,000 sampled products per direction and region pair, k={args.k}. HNSW (m, payload_m): "
        f"global graph {g['graphs']}, region graphs {r['graphs']}.",
        "",
        "| hnsw_ef | layout | engine recall@k | candidate recall@k | ms per query | load s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for ef in r["sweep"]:  # qdrant_recall's keys: str(ef), in the order of --ef
        for res in (g, r):
            v = res["sweep"][ef]
            lines.append(
                f"| {ef} | {res['layout']} | {v['engine']:.3f} | {v['candidates']:.3f} | "
                f"{v['ms_per_query']:.2f} | {res['load_s']:.0f} |"
            )
    lines.append("")
    lines.append(
        f"Global graph / region graphs: load {g['load_s'] / r['load_s']:.2f}x; "
        + "; ".join(
            f"ms per query at hnsw_ef {ef} {g['sweep'][ef]['ms_per_query'] / v['ms_per_query']:.2f}x"
            for ef, v in r["sweep"].items()
        )
        + "."
    )
    publish(
        "Store layout: region graphs vs one global graph",
        "bench_store_layout.py",
        argv,
        "\n".join(lines),
        append=not args.no_append,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] if len(sys.argv) > 1 else None))
