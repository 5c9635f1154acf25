"""Embedded stores on our workload: qdrant-client local mode (``:memory:``, path) vs qdrant-edge.

Each engine runs in a fresh subprocess (peak RSS is per process) through the project's own
``CatalogStore``: ``ensure_collection`` + ``upsert`` of N points (384-d vectors from the model's
statistics, see ``_synth``; payloads shaped like the embed stage's), then region-filtered top-10
queries, one at a time and batched as the matcher sends them, checked against exact numpy top-10.

    python bench/bench_store.py [--n 20000] [--queries 300] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from _common import append_results

ENGINES = ("local-memory", "local-path", "edge")


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(engine: str, n: int, queries: int, folder: str) -> dict[str, float]:
    """One engine, one process: load, index, query, recall; returns the figures."""
    import _synth

    from polyglot_catalog.ids import point_id
    from polyglot_catalog.store import CatalogStore, open_client

    per_region = n // 3
    vecs = _synth.synth_vectors(per_region, seed=7)
    rows = []
    for region in _synth.LANGS:
        texts = _synth.synth_texts(per_region, region, seed=7)
        rows += [(region, f"{region}-{i}", texts[i], vecs[region][i]) for i in range(per_region)]
    ids = [point_id(r, s) for r, s, _, _ in rows]
    payloads = [_synth.payload(r, s, t) for r, s, t, _ in rows]
    matrix = np.stack([v for *_, v in rows])
    base_rss = _vm_hwm_mb()

    path = ":memory:" if engine == "local-memory" else folder
    client = open_client(path=path, embedded="edge" if engine == "edge" else "local")
    store = CatalogStore(client, "catalog", "bundled")
    t0 = time.perf_counter()
    store.ensure_collection(matrix.shape[1])
    store.upsert(ids, matrix, payloads)
    upsert_s = time.perf_counter() - t0
    index_s = 0.0
    if engine == "edge":
        t0 = time.perf_counter()
        client.optimize("catalog")
        index_s = time.perf_counter() - t0

    rng = np.random.default_rng(1)
    q_rows = rng.choice(per_region, queries, replace=False)
    q = vecs["US"][q_rows]  # US products asked for their DE neighbours, as the matcher does
    store.query_region(q[:2], "DE", k=10)  # warm-up
    t0 = time.perf_counter()
    single = [store.query_region(q[i : i + 1], "DE", k=10)[0] for i in range(len(q))]
    single_ms = (time.perf_counter() - t0) * 1000 / len(q)
    t0 = time.perf_counter()
    batched = store.query_region(q, "DE", k=10, requests_per_call=64)
    batch_ms = (time.perf_counter() - t0) * 1000 / len(q)

    de = vecs["DE"]
    exact = np.argsort(-(q @ de.T), axis=1, kind="stable")[:, :10]
    recall = np.mean(
        [
            len({int(p["sku"].split("-")[1]) for p, _ in got} & set(exact[i].tolist())) / 10
            for i, got in enumerate(batched)
        ]
    )
    same = all(
        [p["id"] for p, _ in a] == [p["id"] for p, _ in b] for a, b in zip(single, batched, strict=True)
    )
    client.close()
    peak = _vm_hwm_mb()
    return {
        "upsert_s": upsert_s,
        "index_s": index_s,
        "single_ms": single_ms,
        "batch_ms": batch_ms,
        "recall10": float(recall),
        "single_equals_batch": same,
        "base_mb": base_rss,
        "peak_mb": peak,
        "disk_mb": _du_mb(folder) if path != ":memory:" else 0.0,
    }


def _du_mb(folder: str) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="points in all (a third per region)")
    ap.add_argument("--queries", type=int, default=300, help="queries for qdrant-edge")
    ap.add_argument(
        "--local-queries", type=int, default=40, help="queries for local mode (~1 s each here at 20k points)"
    )
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--worker", choices=ENGINES)
    ap.add_argument("--folder")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.queries, args.folder)))
        return 0

    disk = Path(tempfile.mkdtemp(prefix="bench-store-", dir=os.environ.get("BENCH_DISK", "/var/tmp")))
    results: dict[str, dict[str, float]] = {}
    try:
        for engine in args.engines.split(","):
            folder = disk / engine
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                engine,
                "--n",
                str(args.n),
                "--queries",
                str(args.queries if engine == "edge" else args.local_queries),
            ]
            out = subprocess.run([*cmd, "--folder", str(folder)], capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{engine} worker failed")
            results[engine] = json.loads(out.stdout.strip().splitlines()[-1])
            print(engine, results[engine], flush=True)
    finally:
        shutil.rmtree(disk, ignore_errors=True)

    fs = subprocess.run(["df", "-T", str(disk.parent)], capture_output=True, text=True).stdout.splitlines()[
        -1
    ]
    lines = [
        f"{args.n:,} points (a third each in DE/FR/US), 384-d vectors from the bundled model's embedding "
        "statistics (bench/_synth.py), payloads shaped like the embed stage's (sku, region, language, text, "
        "content_hash, model, source_file, status, embedded_at, title); through `CatalogStore` "
        "(upsert batches of 256, keyword indexes on region/language/status). "
        f"Disk folders on `{fs.split()[1]}` "
        f"({disk.parent}). {args.queries} (edge) / {args.local_queries} (local mode) US vectors query DE "
        "(filter region=DE, not stale), top-10; "
        "recall@10 against exact numpy top-10 of the same vectors. "
        "Each engine in a fresh process; RSS in MB (VmHWM).",
        "",
        "| engine | upsert s | points/s | index build s | query ms (one per call) | query ms (batched 64) "
        "| recall@10 | base RSS | peak RSS | peak - base | disk MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for engine, r in results.items():
        lines.append(
            f"| {engine} | {r['upsert_s']:.2f} | {args.n / r['upsert_s']:,.0f} | {r['index_s']:.1f} | "
            f"{r['single_ms']:.2f} | {r['batch_ms']:.2f} | {r['recall10']:.3f} | {r['base_mb']:.0f} | "
            f"{r['peak_mb']:.0f} | {r['peak_mb'] - r['base_mb']:.0f} | {r['disk_mb']:.0f} |"
        )
    if "edge" in results:
        e = results["edge"]
        for other in ("local-memory", "local-path"):
            if other in results:
                o = results[other]
                lines.append(
                    f"\n{other} / edge time ratios (> 1: edge is faster): upsert "
                    f"{o['upsert_s'] / e['upsert_s']:.2f}, upsert + index build "
                    f"{o['upsert_s'] / (e['upsert_s'] + e['index_s']):.2f}, query one per call "
                    f"{o['single_ms'] / e['single_ms']:.0f}, "
                    f"batched query {o['batch_ms'] / e['batch_ms']:.0f}; RSS growth "
                    f"{o['peak_mb'] - o['base_mb']:.0f} MB vs {e['peak_mb'] - e['base_mb']:.0f} MB."
                )
    body = "\n".join(lines)
    print(body)
    if not args.no_append:
        append_results(
            "Embedded store: qdrant-client local mode vs qdrant-edge", "python bench/bench_store.py", body
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
