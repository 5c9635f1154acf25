"""Description vectors pooled from their sentences' vectors vs the model's own, on the IKEA dev set (#23).

The other way round from late chunking: encode each distinct sentence once (the sentence cache's
content addressing, which the matcher's alignment needs anyway) and make the description's vector
from them, so every token goes through the model once. On the whole dev catalog distinct sentences
hold 0.49 of the descriptions' tokens (sentences repeat across products), so this would cost about
half a description pass. The question is what it does to matching: printed per region pair, for
the model's own description vectors and for pooled ones (weights: sentence tokens, or uniform),
the matcher's top-1 both ways and label-free F1 (separate sentence vectors in every run), the
top-1 without sentence alignment, and raw cosine top-1.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_sentence_pooling.py [--limit N]

Embeddings are cached like bench_matching.py's (``--cache``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import publish
from bench_matching import DATA, PAIRS, Embedder, build_catalog, directional_top1, embed_cached, judges_for

from polyglot_catalog.matching.candidates import exact_topk
from polyglot_catalog.matching.data import RegionTable
from polyglot_catalog.matching.evaluate import evaluate_pairs
from polyglot_catalog.matching.pipeline import match_catalog
from polyglot_catalog.sentences import SentenceVectors, split_sentences

#: Tokens every encoded sentence adds besides its own: the prompt and the two special tokens.
OVERHEAD_TOKENS = 3


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="first N products only (quick check)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/matchdev"))
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args(argv)

    tables, labels = build_catalog(DATA, args.limit)
    emb = Embedder("encoder", "auto")
    texts = {r: t["text"].tolist() for r, t in tables.items()}
    own = {r: embed_cached(emb, texts[r], args.cache) for r in tables}
    every = {r: [split_sentences(t, 10**6) for t in texts[r]] for r in tables}  # all, for pooling
    distinct = sorted({s for r in tables for ss in every[r] for s in ss})
    lookup = dict(zip(distinct, embed_cached(emb, distinct, args.cache), strict=True))
    tokens = dict(zip(distinct, emb._enc.count_tokens(distinct), strict=True))
    desc_tokens = sum(min(n, 512) for r in tables for n in emb._enc.count_tokens(texts[r]))
    sent_tokens = sum(tokens.values())

    def pooled(region: str, weight: str) -> np.ndarray:
        out = np.array(own[region], copy=True)
        for i, ss in enumerate(every[region]):
            if ss:
                w = np.array([tokens[s] - OVERHEAD_TOKENS if weight == "tokens" else 1.0 for s in ss])
                out[i] = (w[:, None] * np.stack([lookup[s] for s in ss])).sum(0)
        return _unit(out)

    skus = {r: t["sku"].tolist() for r, t in tables.items()}
    judges = judges_for(
        {r: RegionTable(r, skus[r], texts[r], own[r]) for r in tables}, labels, PAIRS, text_ties=True
    )
    rows = []
    variants = {"model's own": None, "pooled, token weights": "tokens", "pooled, uniform": "uniform"}
    for name, weight in variants.items():
        vecs = own if weight is None else {r: pooled(r, weight) for r in tables}
        data = {r: RegionTable(r, skus[r], texts[r], vecs[r]) for r in tables}
        sent = {r: SentenceVectors.from_texts(t.texts, lookup) for r, t in data.items()}
        t0 = time.perf_counter()
        res = match_catalog(data, k=10, model=emb.name, sentences=sent)
        bare = match_catalog(data, k=10, model=emb.name, sentences=None)
        top, top0 = directional_top1(res.pairs, judges), directional_top1(bare.pairs, judges)
        f1 = evaluate_pairs(res.pairs, judges)["by_pair"]
        for key, judge in judges.items():
            ra, rb = key.split("|")
            idx, _ = exact_topk(vecs[ra], vecs[rb], 1)
            raw = np.mean(
                [
                    judge(skus[ra][i], skus[rb][idx[i, 0]])
                    for i in range(len(idx))
                    if skus[ra][i] in judge.twins_a
                ]
            )
            rows.append(
                f"| {name} | {rb}<->{ra} | {top[key][1]:.3f} / {top[key][0]:.3f} | {f1[key]['f1']:.4f} | "
                f"{top0[key][1]:.3f} / {top0[key][0]:.3f} | {raw:.3f} |"
            )
        print(name, f"{time.perf_counter() - t0:.0f}s", file=sys.stderr)
    body = "\n".join(
        [
            f"IKEA dev catalog{'' if not args.limit else f' (first {args.limit} products)'}, {emb.name}. "
            f"Tokens: descriptions {desc_tokens:,} (cut at 512), distinct sentences {sent_tokens:,} "
            f"(**{sent_tokens / desc_tokens:.2f}** of them). Sentence vectors for alignment: each "
            "distinct sentence encoded on its own, in every row.",
            "",
            "| description vectors | pair | matcher top-1 | F1@auto | top-1, no sentences | raw top-1 a->b |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    publish(
        "Description vectors pooled from sentence vectors vs the model's own",
        Path(__file__).name,
        argv if argv is not None else sys.argv[1:],
        body,
        not args.no_append,
    )


if __name__ == "__main__":
    main()
