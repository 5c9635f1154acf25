"""The Qdrant search as mapped shards vs the one-task Qdrant match: 3 regions x N products
(bench/_synth.py, 384-d), on the embedded store, side by side.

Every task runs in a fresh subprocess, so each peak RSS (VmHWM) is that task's own, and one after
another (the embedded store is one process's at a time; on a Qdrant server the search tasks run
side by side):

- **load**: the catalog's points into an embedded store (bulk load, HNSW built once), as embed
  leaves them;
- **one task**: ``match_catalog(store, candidates="qdrant")``, as ``match_regions`` runs it without
  shards: every vector read, the queries, features, scores, decisions;
- **plan**: ``plan_for_store`` (each region's search and rows files, streamed from the store);
- **search**: each shard's ``search_shard`` task on the Qdrant path
  (:func:`polyglot_catalog.matching.qdrant_shards.map_qdrant_shard`), then each ``cut_search_parts``
  and ``feature_shard`` task;
- **reduce**: ``match_regions`` after them (``mapped=True``: no vector read).

Printed: whether both accept the same pairs and form the same groups, each kind of task's wall time
and peak RSS, and the sum of the mapped side's tasks against the one task.

    python bench/bench_qdrant_shards.py [--n 20000] [--shards 4] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from _common import publish
from bench_match_scale import _hwm_mb, build_tables, load_store
from bench_match_shards import _accepted, _groups

K = 10


def _store(work: Path):
    from polyglot_catalog.store import CatalogStore, open_client

    return CatalogStore(open_client(path=str(work / "store"), embedded="edge"), "catalog", "bundled")


def _plan(work: Path, shards: int) -> list:
    from polyglot_catalog.matching.feature_parts import folder_plan

    return folder_plan(work / "parts", ["DE", "FR", "US"], shards)


def _child(args: argparse.Namespace) -> None:
    from polyglot_catalog.matching import match_catalog
    from polyglot_catalog.matching.settings import MatchSettings

    work, out = Path(args.work), Path(args.out)
    t0 = time.perf_counter()
    figures: dict = {}
    settings = MatchSettings(k=K)
    if args.child == "load":
        store = _store(work)
        store.ensure_collection(384)
        load_store(store, build_tables(args.n))
        figures["indexed"] = store.client.get_collection("catalog").indexed_vectors_count
        store.client.close()
    elif args.child in ("one", "reduce"):
        store = _store(work)
        mapped = {"shards": args.shards, "shard_dir": str(work / "parts"), "mapped": True}
        result = match_catalog(
            store, k=K, candidates="qdrant", sentences=None, **(mapped if args.child == "reduce" else {})
        )
        store.client.close()
        figures["path"] = result.summary["candidates_path"]
        figures["pairs"] = len(result.pairs)
        figures["timings"] = result.summary["timings"]
        out.with_suffix(".pairs").write_bytes(pickle.dumps((_accepted(result), _groups(result))))
    elif args.child == "plan":
        from polyglot_catalog.matching.shards import plan_for_store

        store = _store(work)
        plan, _ = plan_for_store(store, None, work / "parts", k=K, shards=args.shards)
        store.client.close()
        figures["shards"] = len(plan)
    else:
        from polyglot_catalog.matching.feature_parts import map_features, write_shard_cuts
        from polyglot_catalog.matching.shards import map_shard

        plan = _plan(work, args.shards)
        shard = plan[args.index]
        if args.child == "search":
            store = _store(work)
            map_shard(work / "parts", shard, settings, shards=args.shards, store=store)
            store.client.close()
        elif args.child == "cuts":
            write_shard_cuts(work / "parts", shard, plan, K)
        else:
            map_features(work / "parts", shard, settings, ["DE", "FR", "US"], plan)
    figures["seconds"] = time.perf_counter() - t0
    figures["peak_mb"] = _hwm_mb()
    out.write_text(json.dumps(figures))


def _run(args: argparse.Namespace, work: Path, child: str, index: int = 0) -> dict:
    out = work / f"{child}-{index}.json"
    cmd = [sys.executable, __file__, "--child", child, "--work", str(work), "--out", str(out)]
    cmd += ["--n", str(args.n), "--shards", str(args.shards), "--index", str(index)]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--work")
    p.add_argument("--child")
    p.add_argument("--out")
    p.add_argument("--index", type=int, default=0)
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-qdrant-shards-") as tmp:
        work = Path(args.work or tmp)
        load = _run(args, work, "load")
        one = _run(args, work, "one")
        plan = _run(args, work, "plan")
        kinds = {"search": [], "cuts": [], "features": []}
        for kind, runs in kinds.items():
            runs.extend(_run(args, work, kind, i) for i in range(plan["shards"]))
        reduce = _run(args, work, "reduce")
        one_pairs, one_groups = pickle.loads((work / "one-0.pairs").read_bytes())
        got_pairs, got_groups = pickle.loads((work / "reduce-0.pairs").read_bytes())
        same = one_pairs == got_pairs and one_groups == got_groups  # as sets (frozensets unpickled)
        accepted = len(one_pairs)
    mapped = plan["seconds"] + sum(r["seconds"] for v in kinds.values() for r in v) + reduce["seconds"]
    rows = [
        ("load the store (bulk, HNSW once)", load["seconds"], load["peak_mb"]),
        ('one task (`candidates="qdrant"`)', one["seconds"], one["peak_mb"]),
        ("plan: search and rows files", plan["seconds"], plan["peak_mb"]),
        *(
            (
                f"{len(v)} {kind} tasks",
                f"{min(r['seconds'] for r in v):.1f}-{max(r['seconds'] for r in v):.1f} each",
                max(r["peak_mb"] for r in v),
            )
            for kind, v in kinds.items()
        ),
        ("match task (parts put together; no vector)", reduce["seconds"], reduce["peak_mb"]),
    ]
    lines = ["| task | wall s | peak RSS MB |", "|---|---|---|"]
    for name, s, mb in rows:
        lines.append(f"| {name} | {s if isinstance(s, str) else f'{s:.1f}'} | {mb:,.0f} |")
    body = "\n".join(
        [
            f"3 regions x {args.n:,} products, k={K}, {args.shards} shards per region pair, embedded "
            f"store ({load['indexed']:,} vectors indexed). Paths: one task `{one['path']}`, mapped "
            f"`{reduce['path']}`.",
            "",
            *lines,
            "",
            f"Same accepted pairs and groups: **{same}** ({accepted:,} accepted; {one['pairs']:,} candidate "
            f"pairs vs {reduce['pairs']:,}). Mapped side one task at a time (plan + maps + match) / one "
            f"task: {mapped:.1f} / {one['seconds']:.1f} s = **{mapped / one['seconds']:.2f}**; the one "
            f"task's candidate stage {one['timings'].get('candidates', 0):.1f} s, the search tasks "
            f"{sum(r['seconds'] for r in kinds['search']):.1f} s in all.",
        ]
    )
    publish(
        "Qdrant search as mapped shards vs one task", "bench_qdrant_shards.py", argv, body, not args.no_append
    )


if __name__ == "__main__":
    main(sys.argv[1:])
