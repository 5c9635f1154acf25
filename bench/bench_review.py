"""Review benchmark on the IKEA dev set: F1 of the next run after N reviewed pairs, and the
precision estimated from the reviewed random sample vs the true precision.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_review.py [--limit 1200]

A label-free run (``match_catalog``, no labels) builds the review queue (``build_queue`` in
round-robin order: conflicts, runner-ups, uncertain, samples); a simulated reviewer answers the first
N pairs from the hidden labels (identical-text ties count as matches, as the F1 does); the next run
gets those decisions (``decisions=``) and is scored against the labels. Embeddings are cached as in
``bench_matching.py`` (the same cache files). A dated block is appended to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_matching import DATA, PAIRS, RESULTS, Embedder, build_catalog, late_cached, per_description  # noqa: E402

from polyglot_catalog.matching.data import RegionTable  # noqa: E402
from polyglot_catalog.matching.evaluate import evaluate_pairs, judges_for  # noqa: E402
from polyglot_catalog.matching.pipeline import match_catalog  # noqa: E402
from polyglot_catalog.review.estimate import estimate_quality  # noqa: E402
from polyglot_catalog.review.queue import build_queue, round_robin  # noqa: E402

BUDGETS = (0, 50, 100, 200)


def answer(queue: pd.DataFrame, judges: dict, n: int) -> pd.DataFrame:
    """The first ``n`` queue rows decided as a reviewer who knows the truth would."""
    head = queue.head(n)
    verdict = [
        "match" if judges[f"{ra}|{rb}"](sa, sb) else "no_match"
        for ra, sa, rb, sb in head[["region_a", "sku_a", "region_b", "sku_b"]].itertuples(index=False)
    ]
    cols = ["region_a", "sku_a", "region_b", "sku_b", "hash_a", "hash_b", "stratum", "stratum_size"]
    return head[cols].assign(decision=verdict).reset_index(drop=True)


def oracle_queue(pairs: pd.DataFrame, judges: dict) -> pd.DataFrame:
    """The best a queue could do: only the candidate pairs the run decided wrongly. First missed true
    pairs (highest score first: a must-link there also displaces the wrong link that beat it) whose
    products have no correct link towards each other's region yet (an identical-text tie of a right
    link is no error to fix: forcing it would only unseat the right one), then wrongly accepted pairs
    (highest score first). An upper bound on what N reviews can fix, not a queue a reviewer could be
    given (it needs the truth to build)."""
    key = ["region_a", "sku_a", "region_b", "sku_b"]
    truth = [judges[f"{ra}|{rb}"](sa, sb) for ra, sa, rb, sb in pairs[key].itertuples(index=False)]
    frame = pairs.assign(truth=truth, accepted=pairs["decision"] == "match")
    right = frame[frame["truth"] & frame["accepted"]]

    def ends(f: pd.DataFrame, side: str, other: str) -> list[tuple]:
        """(region, sku, other region) of one end of each pair."""
        return list(zip(f[f"region_{side}"], f[f"sku_{side}"], f[f"region_{other}"], strict=True))

    linked = set(ends(right, "a", "b")) | set(ends(right, "b", "a"))
    open_a = np.array([end not in linked for end in ends(frame, "a", "b")], dtype=bool)
    open_b = np.array([end not in linked for end in ends(frame, "b", "a")], dtype=bool)
    missed = frame[frame["truth"] & ~frame["accepted"] & open_a & open_b]
    wrong = frame[~frame["truth"] & frame["accepted"]]
    queue = pd.concat(
        [
            missed.sort_values("score", ascending=False, kind="stable"),
            wrong.sort_values("score", ascending=False),
        ],
        ignore_index=True,
    )
    return queue.assign(hash_a=None, hash_b=None, stratum="oracle", stratum_size=None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("POLYGLOT_BENCH_CACHE", "/tmp/matchdev"))
    )
    ap.add_argument("--limit", type=int, default=None, help="first N products only (a subset)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--sample", type=int, default=25, help="random sample per side (accepted, rejected)")
    ap.add_argument("--no-sentences", action="store_true", help="match without sentence vectors (faster)")
    ap.add_argument(
        "--queue",
        choices=["review", "oracle"],
        default="review",
        help="review: the Review page's queue (default); oracle: only wrongly decided pairs (upper bound)",
    )
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args(argv)

    tables, labels = build_catalog(args.data, args.limit)
    emb = Embedder("auto", "auto")
    texts = {r: t["text"].tolist() for r, t in tables.items()}
    late = {r: late_cached(emb, texts[r], args.cache) for r in tables}
    data = {r: RegionTable(r, t["sku"].tolist(), texts[r], late[r][0]) for r, t in tables.items()}
    sentences = None
    if not args.no_sentences:
        sentences = {r: per_description(late[r][1]) for r in data}
    judges = judges_for(data, labels, PAIRS, text_ties=True)

    def run(decisions: pd.DataFrame | None) -> tuple[object, dict, float]:
        t0 = time.perf_counter()
        res = match_catalog(data, k=args.k, sentences=sentences, decisions=decisions)
        took = time.perf_counter() - t0
        return res, evaluate_pairs(res.pairs, judges, sweep_rows=[])["overall"], took

    first, base, took0 = run(None)
    if args.queue == "oracle":
        queue = oracle_queue(first.pairs, judges)
    else:
        queue = round_robin(build_queue(first.pairs, first.summary["threshold"], sample=args.sample, seed=0))
    lines = [
        "| reviews | precision | recall | F1 | ΔF1 | threshold | est. precision (95% Wilson) | "
        "est. recall | sampled accepted / rejected reviewed | match s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    true_p = base["precision"]
    for n in BUDGETS:
        decisions = answer(queue, judges, n) if n else None
        res, m, took = (first, base, took0) if not n else run(decisions)
        est = estimate_quality(decisions) if decisions is not None else None
        est_p = est["precision"] if est else None
        est_s = f"{est_p['value']:.3f} ({est_p['low']:.3f}-{est_p['high']:.3f})" if est_p else "-"
        est_r = est["recall"] if est else None
        rec_s = f"{est_r['value']:.3f} ({est_r['low']:.3f}-{est_r['high']:.3f})" if est_r else "-"
        counts = f"{est_p['reviewed'] if est_p else 0} / {est_r['reviewed'] if est_r else 0}"
        lines.append(
            f"| {n} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | "
            f"{m['f1'] - base['f1']:+.4f} | "
            f"{res.summary['threshold']:.3f} | {est_s} | {rec_s} | {counts} | {took:.0f} |"
        )
        print(lines[-1], flush=True)
    strata = queue.head(max(BUDGETS))["stratum"].value_counts().to_dict()
    sizes = ", ".join(f"{r} {len(t)}" for r, t in data.items())
    subset = f" (subset: --limit {args.limit})" if args.limit else ""
    body = "\n".join(
        [
            f"Catalog: {sum(len(t) for t in data.values())} products "
            f"({sizes}){subset}; "
            f"engine {emb.name}; sentences {'off' if args.no_sentences else 'late-chunked'}; k={args.k}.",
            f"Queue: {args.queue}"
            + (
                f" (only the {len(queue)} candidate pairs the first run decided wrongly: missed true pairs "
                "between products without a right link to each other's region, then wrong accepted "
                "pairs, each by score; an upper bound, not a real queue)"
                if args.queue == "oracle"
                else ""
            )
            + f". True precision of the label-free run: {true_p:.4f}. "
            f"Strata of the first {max(BUDGETS)} queue rows: {strata}.",
            "",
            *lines,
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, shared with other engineers "
            "(timings are rough).",
        ]
    )
    print(body)
    if not args.no_append:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        cmd = "bench/bench_review.py" + (f" --limit {args.limit}" if args.limit else "")
        cmd += f" --queue {args.queue}" if args.queue != "review" else ""
        with RESULTS.open("a") as f:
            f.write(f"\n## Review: F1 after N reviewed pairs ({stamp})\n\n`{cmd}`\n\n{body}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
