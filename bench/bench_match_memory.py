"""Peak memory of a full match by stage, this checkout vs an earlier commit, side by side in one run.

    python bench/bench_match_memory.py [--n 30000] [--before 62a501f] [--no-append]

Each side runs in a fresh process: 3 regions x N synthetic products (bench/_synth.py) are loaded into
an embedded (edge) store on tmpfs, and ``match_catalog(store, candidates="exact")`` reads them back
as the match task does, so the matcher owns the rows it read. A thread samples RSS every 50 ms; each
stage (prepare, candidates and features, scoring, decisions, tables) reports its start, peak and end.
The earlier side runs the same harness on a ``git worktree`` of ``--before``'s plugins. Printed: the
peak per stage for both and their ratio, and the run's peak. No sentence vectors (the store holds
none), so the sentence rows' release does not show.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _common import publish  # noqa: E402

STAGES = ("prepare", "candidate_blocks", "score_blocks", "decide", "result_tables")


def _child(n: int, plugins: str) -> dict:
    """One side: load the store, match, and the RSS of each stage (start, peak, end) in MB."""
    import bench_match_scale as bms

    sys.path.insert(0, plugins)  # after bench_match_scale, which puts this checkout's plugins first
    from polyglot_catalog.matching import pipeline
    from polyglot_catalog.store import CatalogStore, open_client

    tables = bms.build_tables(n)
    client = open_client(
        path=tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None), embedded="edge"
    )
    store = CatalogStore(client, "catalog", "bundled", upsert_batch_size=1024)
    store.ensure_collection(384)
    bms.load_store(store, tables)
    del tables
    peak, stop, stages = [0.0], [False], {}

    def sample() -> None:
        while not stop[0]:
            peak[0] = max(peak[0], bms._rss_mb())
            time.sleep(0.05)

    def wrap(name: str) -> None:
        stage = getattr(pipeline, name)

        def timed(*args, **kwargs):
            peak[0] = start = bms._rss_mb()
            out = stage(*args, **kwargs)
            stages[name] = {"start": start, "peak": peak[0], "end": bms._rss_mb()}
            return out

        setattr(pipeline, name, timed)

    for name in STAGES:
        wrap(name)
    threading.Thread(target=sample, daemon=True).start()
    before = bms._rss_mb()
    t0 = time.perf_counter()
    result = pipeline.match_catalog(store, k=10, candidates="exact")
    stop[0] = True
    return {
        "code": pipeline.__file__,
        "rss_before": before,
        "seconds": time.perf_counter() - t0,
        "candidates": int(sum(c["candidates"] for c in result.summary["counts"].values())),
        "matches": int((result.pairs["decision"] == "match").sum()),
        "stages": stages,
    }


def _side(n: int, plugins: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", plugins, "--n", str(n)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30_000, help="products per region")
    ap.add_argument("--before", default="62a501f", help="the earlier commit to compare with")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.n, args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old), args.before], check=True
        )
        try:
            before = _side(args.n, str(old / "plugins"))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=True)
    now = _side(args.n, str(ROOT / "plugins"))
    rows = ["| stage | peak MB before | peak MB now | now / before |", "| --- | ---: | ---: | ---: |"]
    for name in STAGES:
        b, a = before["stages"][name]["peak"], now["stages"][name]["peak"]
        rows.append(f"| {name} | {b:,.0f} | {a:,.0f} | {a / b:.2f} |")
    pb = max(s["peak"] for s in before["stages"].values())
    pa = max(s["peak"] for s in now["stages"].values())
    rows.append(f"| **run peak** | **{pb:,.0f}** | **{pa:,.0f}** | **{pa / pb:.2f}** |")
    added = (pb - before["rss_before"], pa - now["rss_before"])
    body = "\n".join(
        [
            f"3 regions x {args.n:,} synthetic products in an embedded store, matched as the match task "
            f"reads them (exact path, k=10, no sentence vectors); before = commit {args.before}, now = "
            "this checkout; each side a fresh process, RSS sampled every 50 ms.",
            "",
            *rows,
            "",
            f"RSS before the match (store loaded): {before['rss_before']:,.0f} / "
            f"{now['rss_before']:,.0f} MB; what the match adds above it: {added[0]:,.0f} -> "
            f"{added[1]:,.0f} MB ({added[1] / added[0]:.2f}). Same result: candidates "
            f"{before['candidates']:,} / {now['candidates']:,}, accepted {before['matches']:,} / "
            f"{now['matches']:,}. Match seconds {before['seconds']:.0f} / {now['seconds']:.0f}.",
        ]
    )
    publish(
        "Match task memory by stage, before vs now (bench/bench_match_memory.py)",
        "bench_match_memory.py",
        argv if argv is not None else sys.argv[1:],
        body,
        append=not args.no_append,
    )


if __name__ == "__main__":
    main()
