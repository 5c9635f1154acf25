"""Late vs separate sentence vectors on small catalogs: the dev catalog cut into disjoint slices.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_sentence_slices.py [--slices 10] [--precision auto]

Why: on the whole dev catalog (3,500 products) the matcher scores level with either kind of sentence
vector (late, from the description's own pass through the shipped map, the embed stage's default,
or each sentence encoded alone), but on the 350-product demo slice late ones were 0.011 F1 below.
One slice cannot tell a small-catalog effect from noise. This cuts the products into ``--slices``
disjoint slices (by a seeded hash of the product id, so a slice is a random sample of products with
all of its listings), matches each slice alone, without labels, with each kind of sentence vector
(the same description vectors), and prints per slice F1 (identical-text hits as ties) and top-1,
and the mean paired difference with a 95% t interval. Embeddings come from bench_matching's cache.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import publish
from bench_matching import (
    DATA,
    PAIRS,
    Embedder,
    build_catalog,
    embed_cached,
    late_cached,
    per_description,
)

from polyglot_catalog.matching.data import RegionTable
from polyglot_catalog.matching.evaluate import evaluate_pairs, judges_for
from polyglot_catalog.matching.pipeline import match_catalog
from polyglot_catalog.sentences import SentenceVectors, split_sentences

# two-sided 95% Student t quantiles by degrees of freedom (scipy is not a dependency)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def slice_of(product: str, slices: int, seed: int) -> int:
    """A product's slice: a seeded hash, so every listing of a product lands in the same slice."""
    digest = hashlib.sha256(f"{seed}:{product}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % slices


def interval(diffs: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t interval of paired differences."""
    n = len(diffs)
    mean = float(diffs.mean())
    if n < 2:
        return mean, math.nan, math.nan
    half = T95.get(n - 1, 1.96) * float(diffs.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="auto", help="the Encoder's precision (default: auto)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("POLYGLOT_BENCH_CACHE", "/tmp/matchdev"))
    )
    ap.add_argument("--no-append", action="store_true", help="print only, do not append to bench/RESULTS.md")
    args = ap.parse_args(argv)

    tables, labels = build_catalog(DATA)
    emb = Embedder("encoder", args.precision)
    texts = {r: t["text"].tolist() for r, t in tables.items()}
    late = {r: late_cached(emb, texts[r], args.cache) for r in tables}
    distinct = sorted({s for ts in texts.values() for text in ts for s in split_sentences(text)})
    lookup = dict(zip(distinct, embed_cached(emb, distinct, args.cache), strict=True))
    # which slice each row belongs to, through the hidden labels (the matcher never sees them)
    part = {
        r: np.array([slice_of(labels[(r, s)], args.slices, args.seed) for s in t["sku"]])
        for r, t in tables.items()
    }
    rows = []
    for k in range(args.slices):
        scores = {}
        for kind in ("late", "separate"):
            data, sentences = {}, {}
            for r, t in tables.items():
                keep = np.flatnonzero(part[r] == k)
                skus = [t["sku"].iloc[i] for i in keep]
                kept_texts = [texts[r][i] for i in keep]
                data[r] = RegionTable(r, skus, kept_texts, late[r][0][keep])
                sentences[r] = (
                    per_description([late[r][1][i] for i in keep])
                    if kind == "late"
                    else SentenceVectors.from_texts(kept_texts, lookup)
                )
            res = match_catalog(data, k=args.k, model=emb.name, sentences=sentences)
            overall = evaluate_pairs(res.pairs, judges_for(data, labels, PAIRS, text_ties=True))["overall"]
            scores[kind] = overall
        products = int(sum((part[r] == k).sum() for r in tables))
        rows.append(
            {
                "slice": k,
                "SKUs": products,
                "late F1": scores["late"]["f1"],
                "separate F1": scores["separate"]["f1"],
                "late top-1": scores["late"]["top1"],
                "separate top-1": scores["separate"]["top1"],
            }
        )
        print(rows[-1], file=sys.stderr)
    table = pd.DataFrame(rows)
    f1 = interval((table["late F1"] - table["separate F1"]).to_numpy(dtype=float))
    top = interval((table["late top-1"] - table["separate top-1"]).to_numpy(dtype=float))
    body = "\n".join(
        [
            f"Engine: {emb.name}; dev catalog cut into {args.slices} disjoint slices of products (seeded "
            f"hash {args.seed} of the product id), each matched alone without labels, k={args.k}; F1 "
            "over all region pairs, identical-text hits as ties; the same description vectors for both "
            "kinds of sentence vector.",
            "",
            table.to_markdown(index=False, floatfmt=("d", "d", ".4f", ".4f", ".4f", ".4f")),
            "",
            f"Late - separate, mean over slices (95% t interval): F1 {f1[0]:+.4f} ({f1[1]:+.4f} to "
            f"{f1[2]:+.4f}); top-1 {top[0]:+.4f} ({top[1]:+.4f} to {top[2]:+.4f}).",
        ]
    )
    publish(
        "Late vs separate sentence vectors on small catalogs (bench/bench_sentence_slices.py)",
        "bench_sentence_slices.py",
        argv if argv is not None else sys.argv[1:],
        body,
        append=not args.no_append,
    )


if __name__ == "__main__":
    main()
