"""Incremental vs full match on the same final catalog: 3 regions x N products, one night of churn.

Night 0 is a full ``match_catalog`` on N products per region (bench/_synth.py vectors and texts). The
night's churn, per region: ``--churn`` of N in all, a third each new products (drawn with the
catalog, held back on night 0), edited products (text changed, vector moved by translation-sized
noise) and removed products. Then, each in a fresh subprocess so peak RSS (VmHWM) is its own:

- **incremental**: ``match_incremental`` on the final catalog, continuing night 0's context;
- **full**: ``match_catalog`` on the same final catalog.

Both read in-memory tables (exact path): the store read and the state commit are the same for both
runs and are measured in bench_match_state / bench_match_scale. Printed: wall time of each and their
ratio, peak RSS of each, the share of accepted pairs both runs accept (identical / union), and each
run's precision and twins found against the synthetic ground truth.

    python bench/bench_match_incremental.py [--n 100000] [--churn 0.01] [--no-append]
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from _common import publish
from bench_match_scale import _hwm_mb, _reset_hwm


def catalogs(n: int, churn: float, seed: int = 11) -> tuple[dict, dict]:
    """Night 0's tables and the final ones (SKU ``R-i``: product i of region R)."""
    import _synth

    from polyglot_catalog.matching.data import RegionTable

    per_kind = max(1, round(n * churn / 3))
    total = n + per_kind
    vecs = _synth.synth_vectors(total, seed=seed)
    rng = np.random.default_rng(seed + 7)
    night0, final = {}, {}
    for r in _synth.LANGS:
        texts = _synth.synth_texts(total, r, seed=seed)
        skus = [f"{r}-{i}" for i in range(total)]
        night0[r] = RegionTable(r, skus[:n], texts[:n], vecs[r][:n])
        picked = rng.choice(n, 2 * per_kind, replace=False)
        edited, removed = set(picked[:per_kind].tolist()), set(picked[per_kind:].tolist())
        rows = [i for i in range(total) if i not in removed]
        v = vecs[r].copy()
        t = list(texts)
        for i in edited:
            noise = rng.standard_normal(v.shape[1]).astype(np.float32)
            v[i] = v[i] / np.linalg.norm(v[i]) + 0.25 * noise / np.linalg.norm(noise)
            t[i] = f"{t[i]}, new edition"
        final[r] = RegionTable(r, [skus[i] for i in rows], [t[i] for i in rows], v[rows])
    return night0, final


def _accepted(result) -> list[tuple[str, str, str, str]]:
    m = result.matches
    return sorted(
        zip(
            m["region_a"].astype(str),
            m["sku_a"].astype(str),
            m["region_b"].astype(str),
            m["sku_b"].astype(str),
            strict=True,
        )
    )


def _child(mode: str, n: int, churn: float, work: Path) -> None:
    from polyglot_catalog.matching.context import MatchContext
    from polyglot_catalog.matching.incremental import match_incremental
    from polyglot_catalog.matching.pipeline import match_catalog

    night0, final = catalogs(n, churn)
    if mode == "night0":
        result = match_catalog(night0, k=10)
        (work / "context.npz").write_bytes(result.context.to_bytes())
        return
    del night0
    context = MatchContext.from_bytes((work / "context.npz").read_bytes()) if mode == "incremental" else None
    reset = _reset_hwm()
    t0 = time.perf_counter()
    result = match_incremental(final, context) if mode == "incremental" else match_catalog(final, k=10)
    seconds = time.perf_counter() - t0
    out = {
        "seconds": seconds,
        "peak_mb": _hwm_mb(),
        "peak_is_match_only": reset,
        "timings": result.summary["timings"],
        "incremental": result.summary.get("incremental"),
        "context_mb": len(result.context.to_bytes()) / 2**20 if result.context is not None else None,
        "truth": _truth(final),
    }
    (work / f"{mode}.json").write_text(json.dumps(out))
    (work / f"{mode}.pairs").write_bytes(pickle.dumps(_accepted(result)))


def _truth(tables: dict) -> int:
    """True cross-region pairs: per region pair, the products both regions list."""
    ids = {r: {s.split("-")[1] for s in t.skus} for r, t in tables.items()}
    regions = sorted(ids)
    return sum(len(ids[a] & ids[b]) for i, a in enumerate(regions) for b in regions[i + 1 :])


def _quality(pairs: list[tuple[str, str, str, str]], n_truth: int) -> tuple[float, float]:
    right = sum(a.split("-")[1] == b.split("-")[1] for _, a, _, b in pairs)
    return right / max(len(pairs), 1), right / max(n_truth, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--churn", type=float, default=0.01)
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("--child", choices=["night0", "incremental", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.n, args.churn, Path(args.work))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for mode in ("night0", "incremental", "full"):
            cmd = [sys.executable, __file__, "--child", mode, "--n", str(args.n), "--churn", str(args.churn)]
            subprocess.run([*cmd, "--work", str(work)], check=True)
        inc, full = (json.loads((work / f"{m}.json").read_text()) for m in ("incremental", "full"))
        a, b = (set(pickle.loads((work / f"{m}.pairs").read_bytes())) for m in ("incremental", "full"))
    per_kind = max(1, round(args.n * args.churn / 3))
    truth = full["truth"]
    p_inc, r_inc = _quality(sorted(a), truth)
    p_full, r_full = _quality(sorted(b), truth)
    body = "\n".join(
        [
            f"3 regions x {args.n:,} products; churn {args.churn:.1%} per region "
            f"({per_kind:,} new, {per_kind:,} edited, {per_kind:,} removed); k=10, exact path, "
            "in-memory tables.",
            "",
            "| run | wall s | peak RSS MB | accepted pairs | precision | twins found | stage seconds |",
            "|---|---|---|---|---|---|---|",
            f"| incremental | {inc['seconds']:.1f} | {inc['peak_mb']:.0f} | {len(a):,} | {p_inc:.4f} | "
            f"{r_inc:.4f} | "
            f"`{json.dumps(inc['timings'])}` |",
            f"| full | {full['seconds']:.1f} | {full['peak_mb']:.0f} | {len(b):,} | {p_full:.4f} | "
            f"{r_full:.4f} | "
            f"`{json.dumps(full['timings'])}` |",
            "",
            f"Wall-time ratio incremental / full: **{inc['seconds'] / full['seconds']:.4f}** "
            "(target <= 0.05). "
            f"Peak RSS ratio: {inc['peak_mb'] / full['peak_mb']:.2f}.",
            f"Accepted pairs identical (both / either): **{len(a & b) / max(len(a | b), 1):.4f}** "
            f"(target >= 0.99); only incremental {len(a - b):,}, only full {len(b - a):,}.",
            f"Incremental run: {json.dumps(inc['incremental'])}; match context "
            f"{inc['context_mb']:.1f} MB (compressed, stored in Qdrant).",
            f"Peak RSS counts the match only: {inc['peak_is_match_only'] and full['peak_is_match_only']}.",
        ]
    )
    publish(
        "Incremental vs full match",
        Path(__file__).name,
        argv if argv is not None else sys.argv[1:],
        body,
        not args.no_append,
    )


if __name__ == "__main__":
    main()
