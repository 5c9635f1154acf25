"""Fine-tuning benchmark on the IKEA dev catalog: before/after on products never seen in training.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_tune.py [--max-minutes 4] [--device cuda]

Product-level split (stable hash of ``product_id``): 70% of products give the training links (of
which 15% of product groups are held back again for early stopping), the other 30% are evaluated,
with every product of the catalog (all 3,500) as distractors. Per region pair, before (the bundled
model) and after (the tuned one), on the test products only:

* raw cosine top-1 in both directions (identical-text hits count, as the data README asks);
* end-to-end F1 of ``match_catalog`` with no labels (self-trained scorer and label-free threshold,
  refit on each model's own features): precision over accepted pairs that touch a test product,
  recall over the test products' true pairs;
* Tatoeba deu/fra/spa/jpn/cmn top-1 (both directions) before/after: other languages must not suffer;
* training time, peak RSS (and peak GPU memory), what stopped the run;
* re-ranker headroom: of the tuned model's wrong top-1s, how many have the twin in the top 10 within
  cosine 0.05 of the winner (sibling variants, a cross-encoder's job) vs further away.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import SHARED_DATA, publish

from polyglot_catalog.matching.candidates import exact_topk
from polyglot_catalog.matching.data import RegionTable
from polyglot_catalog.matching.pipeline import match_catalog
from polyglot_catalog.sentences import SentenceVectors, split_sentences
from polyglot_catalog.tuning import CatalogTexts, TuneConfig, link_pairs, tune_pairs

REGIONS = {"US": "en", "DE": "de", "FR": "fr"}
PAIRS = [("DE", "US"), ("FR", "US"), ("DE", "FR")]
LANGS = ("deu", "fra", "spa", "jpn", "cmn")


def split_products(ids: pd.Series, test_share: float, seed: int) -> set[str]:
    """Test products by a stable hash of the product id (the same split on every machine)."""

    def bucket(pid: str) -> float:
        return int.from_bytes(hashlib.sha1(f"{seed}:{pid}".encode()).digest()[:8], "big") / 2**64

    return {pid for pid in ids if bucket(pid) < test_share}


def build(path: Path, limit: int | None) -> tuple[pd.DataFrame, dict[tuple[str, str], str]]:
    """``region, sku, text`` rows with opaque SKUs and the hidden ``(region, sku) -> product_id``."""
    df = pd.read_csv(path, dtype=str)
    if limit:
        df = df.head(limit)
    rows, labels = [], {}
    for region, col in REGIONS.items():
        for pid, text in zip(df["product_id"], df[col], strict=True):
            if isinstance(text, str) and text.strip():
                sku = hashlib.sha1(f"{region}:{pid}".encode()).hexdigest()[:12]
                rows.append((region, sku, text))
                labels[(region, sku)] = pid
    return pd.DataFrame(rows, columns=["region", "sku", "text"]), labels


def embed_all(model: str, device: str | None, texts: list[str]) -> dict[str, np.ndarray]:
    from polyglot_catalog.encoding import Encoder

    enc = Encoder(model, device=device, precision="fp32" if device in (None, "cpu") else None)
    distinct = sorted(set(texts))
    return dict(zip(distinct, enc.encode(distinct), strict=True))


def evaluate(
    catalog: pd.DataFrame, labels: dict, test: set[str], vec: dict[str, np.ndarray], model: str
) -> dict:
    """Top-1 and end-to-end P/R/F1 per region pair on the test products."""
    tables = {r: g.sort_values("sku", ignore_index=True) for r, g in catalog.groupby("region")}
    data = {
        r: RegionTable(r, t["sku"].tolist(), t["text"].tolist(), np.stack([vec[x] for x in t["text"]]))
        for r, t in tables.items()
    }
    sentences = {
        r: SentenceVectors.from_texts(t.texts, {s: vec[s] for x in t.texts for s in split_sentences(x)})
        for r, t in data.items()
    }
    text_of = {(r, s): x for r, t in tables.items() for s, x in zip(t["sku"], t["text"], strict=True)}
    by_pid: dict[str, dict[str, str]] = {}
    for (r, s), pid in labels.items():
        by_pid.setdefault(pid, {})[r] = s
    res = match_catalog(data, model=model, sentences=sentences)
    out: dict = {"threshold": res.summary["threshold"], "scorer": res.summary["scorer"]["fitted_on"]}
    headroom = {"wrong": 0, "twin_in_top10_within_0.05": 0, "twin_in_top10": 0}
    for ra, rb in PAIRS:
        top1 = []
        for qa, qb in ((ra, rb), (rb, ra)):
            a, b = data[qa], data[qb]
            queries = [
                i for i, s in enumerate(a.skus) if labels[(qa, s)] in test and qb in by_pid[labels[(qa, s)]]
            ]
            idx, sim = exact_topk(a.vectors[queries], b.vectors, 10)
            hits = 0
            for row, qi in enumerate(queries):
                twin = by_pid[labels[(qa, a.skus[qi])]][qb]
                twin_text = text_of[(qb, twin)]
                cands = [b.texts[j] for j in idx[row]]
                if cands[0] == twin_text:
                    hits += 1
                    continue
                headroom["wrong"] += 1
                if twin_text in cands:
                    headroom["twin_in_top10"] += 1
                    if sim[row, 0] - sim[row, cands.index(twin_text)] <= 0.05:
                        headroom["twin_in_top10_within_0.05"] += 1
            top1.append(hits / max(1, len(queries)))
        sub = res.pairs[
            (res.pairs["region_a"] == ra) & (res.pairs["region_b"] == rb) & (res.pairs["decision"] == "match")
        ]
        truth = {(by_pid[p][ra], by_pid[p][rb]) for p in test if p in by_pid and {ra, rb} <= set(by_pid[p])}
        test_a = {by_pid[p][ra] for p in test if ra in by_pid.get(p, {})}
        test_b = {by_pid[p][rb] for p in test if rb in by_pid.get(p, {})}
        tp = fp = 0
        found = set()
        for sa, sb in zip(sub["sku_a"], sub["sku_b"], strict=True):
            if sa not in test_a and sb not in test_b:
                continue
            twin_b = by_pid[labels[(ra, sa)]].get(rb)
            ok = (sa, sb) in truth or (
                twin_b is not None and text_of[(rb, twin_b)] == text_of[(rb, sb)] and labels[(ra, sa)] in test
            )
            if ok:
                tp += 1
                found.add(sa)
            else:
                fp += 1
        p = tp / max(1, tp + fp)
        r = min(tp, len(truth)) / max(1, len(truth))
        out[f"{rb}<->{ra}"] = {
            "top1": (top1[1], top1[0]),
            "p": p,
            "r": r,
            "f1": 2 * p * r / max(1e-9, p + r),
            "test_pairs": len(truth),
        }
    out["headroom"] = headroom
    return out


def tatoeba(model: str, device: str | None) -> dict[str, tuple[float, float]]:
    from polyglot_catalog.encoding import Encoder

    enc = Encoder(model, device=device, precision="fp32" if device in (None, "cpu") else None)
    out = {}
    for lang in LANGS:
        folder = SHARED_DATA / "tatoeba"
        xx = (folder / f"tatoeba.{lang}-eng.{lang}").read_text(encoding="utf-8").splitlines()
        en = (folder / f"tatoeba.{lang}-eng.eng").read_text(encoding="utf-8").splitlines()
        a, b = enc.encode(xx), enc.encode(en)
        sims = a @ b.T
        gold = np.arange(len(a))
        out[lang] = (float((sims.argmax(1) == gold).mean()), float((sims.argmax(0) == gold).mean()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "ikea" / "ikea_products_dev.csv")
    ap.add_argument("--model", default="multilingual-e5-small", help="base model (name or folder)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--limit", type=int, default=None, help="first N products only (smoke run)")
    ap.add_argument("--max-minutes", type=float, default=4.0)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval-steps", type=int, default=25)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-only", action="store_true", help="time and memory of training only (no eval)")
    ap.add_argument("--no-tatoeba", action="store_true")
    ap.add_argument("--note", default="", help="one line on the machine (e.g. 'CPU shared with 4 jobs')")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("sentence_transformers", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    catalog, labels = build(args.data, args.limit)
    test = split_products(pd.Series(sorted(set(labels.values()))), 0.30, args.seed)
    train_labels = {k: v for k, v in labels.items() if v not in test}
    texts = CatalogTexts.from_frame(catalog)
    pairs = link_pairs(texts, train_labels)
    config = TuneConfig(
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_steps=args.eval_steps,
        learning_rate=args.lr,
        device=args.device,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("POLYGLOT_CACHE_DIR", tmp)
        t0 = time.perf_counter()
        summary = tune_pairs(
            pairs, texts, Path(tmp) / "models", model=args.model, config=config, register=False
        )
        wall = time.perf_counter() - t0
        gpu_peak = None
        try:
            import torch

            if torch.cuda.is_available():
                gpu_peak = torch.cuda.max_memory_allocated() / 2**30
        except ImportError:
            pass
        lines = [
            f"{args.note}".strip(),
            "",
            f"Products {len(set(labels.values()))} ({len(test)} test, never trained on); training pairs "
            f"{summary['pairs']['train']}, validation pairs {summary['pairs']['validation_pairs']}.",
            f"Training: {summary['steps']} steps of {args.batch_size} pairs (+1 mined hard negative each) in "
            f"{summary['seconds']:.0f} s on {config.device or 'auto'} ({summary['stopped_by']}); "
            f"tune stage wall {wall:.0f} s incl. mining and validation; peak RSS {summary['peak_rss_mb']} MB"
            + (f"; peak GPU memory {gpu_peak:.1f} GiB" if gpu_peak else "")
            + f". Validation top-1 (early-stopping split) {summary['val_before']} -> {summary['val_after']}.",
        ]
        if not args.train_only:
            tuned = summary["model_dir"]
            all_texts = catalog["text"].tolist()
            all_texts += [s for t in all_texts for s in split_sentences(t)]
            results = {}
            for label, model in (("before", args.model), ("after", tuned)):
                t1 = time.perf_counter()
                vec = embed_all(model, args.device, all_texts)
                results[label] = evaluate(catalog, labels, test, vec, model)
                results[label]["embed_s"] = time.perf_counter() - t1
                if not args.no_tatoeba:
                    results[label]["tatoeba"] = tatoeba(model, args.device)
            rows = []
            for ra, rb in PAIRS:
                key = f"{rb}<->{ra}"
                b, a = results["before"][key], results["after"][key]
                rows.append(
                    {
                        "pair (test pairs)": f"{key} ({b['test_pairs']})",
                        "raw top-1 before": f"{b['top1'][0]:.3f} / {b['top1'][1]:.3f}",
                        "raw top-1 after": f"{a['top1'][0]:.3f} / {a['top1'][1]:.3f}",
                        "gain": f"{a['top1'][0] - b['top1'][0]:+.3f} / {a['top1'][1] - b['top1'][1]:+.3f}",
                        "P/R/F1 before": f"{b['p']:.3f} / {b['r']:.3f} / {b['f1']:.3f}",
                        "P/R/F1 after": f"{a['p']:.3f} / {a['r']:.3f} / {a['f1']:.3f}",
                    }
                )
            lines += ["", pd.DataFrame(rows).to_markdown(index=False), ""]
            lines.append(
                "Matcher refit per model (self-trained scorer, label-free threshold): before "
                f"{results['before']['scorer']} @ {results['before']['threshold']:.3f}, after "
                f"{results['after']['scorer']} @ {results['after']['threshold']:.3f}."
            )
            lines.append(
                "Re-ranker headroom (wrong raw top-1s, all directions): before "
                f"{results['before']['headroom']}, "
                f"after {results['after']['headroom']}."
            )
            if not args.no_tatoeba:
                tat = [
                    {
                        "lang": lang,
                        "before xx->en / en->xx": "{:.3f} / {:.3f}".format(
                            *results["before"]["tatoeba"][lang]
                        ),
                        "after": "{:.3f} / {:.3f}".format(*results["after"]["tatoeba"][lang]),
                        "drop": "{:+.3f} / {:+.3f}".format(
                            *tuple(
                                results["after"]["tatoeba"][lang][i] - results["before"]["tatoeba"][lang][i]
                                for i in range(2)
                            )
                        ),
                    }
                    for lang in LANGS
                ]
                lines += ["", pd.DataFrame(tat).to_markdown(index=False)]
            lines.append(
                f"\nEmbedding {len(set(all_texts))} texts + sentences: before "
                f"{results['before']['embed_s']:.0f} s, "
                f"after {results['after']['embed_s']:.0f} s."
            )
    publish(
        "Fine-tuning on catalog pairs (bench/bench_tune.py)",
        "bench_tune.py",
        argv or sys.argv[1:],
        "\n".join(lines),
        append=not args.no_append,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
