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
  cosine 0.05 of the winner (sibling variants, a cross-encoder's job) vs further away;
* with ``--rerank``: the cross-encoder re-ranker trained on the same pairs (negatives mined with the
  tuned encoder), raw top-1 after it re-orders each query's top 3 and F1 with its ``rerank`` feature
  (``--rerank-before``: also over the bundled encoder's candidates). ``--tatoeba-only`` measures
  only the other languages after training (the cheapest check of a learning rate / step budget).
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
from polyglot_catalog.matching.pipeline import RERANK_TOP, match_catalog
from polyglot_catalog.sentences import SentenceVectors, split_sentences
from polyglot_catalog.tuning import CatalogTexts, TuneConfig, link_pairs, tune_pairs
from polyglot_catalog.tuning.rerank import CachedReranker, RerankConfig, load_cross_encoder, rerank_topk
from polyglot_catalog.tuning.tune import tune_reranker

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


def _prf(res, ra: str, rb: str, test: set[str], labels: dict, by_pid: dict, text_of: dict) -> dict:
    """P/R/F1 of the accepted ``ra``-``rb`` pairs that touch a test product (text ties count)."""
    sub = res.pairs[
        (res.pairs["region_a"] == ra) & (res.pairs["region_b"] == rb) & (res.pairs["decision"] == "match")
    ]
    truth = {(by_pid[p][ra], by_pid[p][rb]) for p in test if p in by_pid and {ra, rb} <= set(by_pid[p])}
    test_a = {by_pid[p][ra] for p in test if ra in by_pid.get(p, {})}
    test_b = {by_pid[p][rb] for p in test if rb in by_pid.get(p, {})}
    tp = fp = 0
    for sa, sb in zip(sub["sku_a"], sub["sku_b"], strict=True):
        if sa not in test_a and sb not in test_b:
            continue
        twin_b = by_pid[labels[(ra, sa)]].get(rb)
        ok = (sa, sb) in truth or (
            twin_b is not None and text_of[(rb, twin_b)] == text_of[(rb, sb)] and labels[(ra, sa)] in test
        )
        tp, fp = tp + ok, fp + (not ok)
    p = tp / max(1, tp + fp)
    r = min(tp, len(truth)) / max(1, len(truth))
    return {"p": p, "r": r, "f1": 2 * p * r / max(1e-9, p + r), "test_pairs": len(truth)}


def evaluate(
    catalog: pd.DataFrame,
    labels: dict,
    test: set[str],
    vec: dict[str, np.ndarray],
    model: str,
    reranker=None,
) -> dict:
    """Top-1 and end-to-end P/R/F1 per region pair on the test products; with ``reranker`` (a
    :class:`CachedReranker`) also top-1 after re-ranking the top 10 and F1 with the ``rerank`` feature."""
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
    t0 = time.perf_counter()
    res = match_catalog(data, model=model, sentences=sentences)
    out: dict = {
        "threshold": res.summary["threshold"],
        "scorer": res.summary["scorer"]["fitted_on"],
        "match_s": time.perf_counter() - t0,
    }
    res_rr = None
    if reranker is not None:
        t0 = time.perf_counter()
        res_rr = match_catalog(data, model=model, sentences=sentences, rerank=reranker)
        out["match_rerank_s"] = time.perf_counter() - t0
        out["threshold_rerank"] = res_rr.summary["threshold"]
        out["rerank_weight"] = res_rr.summary["scorer"]["weights"].get("rerank")
    headroom = {"wrong": 0, "twin_in_top10_within_0.05": 0, "twin_in_top10": 0}
    for ra, rb in PAIRS:
        top1, top1_rr = [], []
        for qa, qb in ((ra, rb), (rb, ra)):
            a, b = data[qa], data[qb]
            queries = [
                i for i, s in enumerate(a.skus) if labels[(qa, s)] in test and qb in by_pid[labels[(qa, s)]]
            ]
            idx, sim = exact_topk(a.vectors[queries], b.vectors, 10)
            twins = [text_of[(qb, by_pid[labels[(qa, a.skus[qi])]][qb])] for qi in queries]
            cand_lists = [[b.texts[j] for j in idx[row]] for row in range(len(queries))]
            hits = 0
            for row, (twin_text, cands) in enumerate(zip(twins, cand_lists, strict=True)):
                if cands[0] == twin_text:
                    hits += 1
                    continue
                headroom["wrong"] += 1
                if twin_text in cands:
                    headroom["twin_in_top10"] += 1
                    if sim[row, 0] - sim[row, cands.index(twin_text)] <= 0.05:
                        headroom["twin_in_top10_within_0.05"] += 1
            top1.append(hits / max(1, len(queries)))
            if reranker is not None:
                ranked = rerank_topk(
                    reranker, [a.texts[qi] for qi in queries], [c[:RERANK_TOP] for c in cand_lists]
                )
                rr_hits = sum(r[0] == t for r, t in zip(ranked, twins, strict=True))
                top1_rr.append(rr_hits / max(1, len(queries)))
        key = f"{rb}<->{ra}"
        out[key] = {"top1": (top1[1], top1[0]), **_prf(res, ra, rb, test, labels, by_pid, text_of)}
        if res_rr is not None:
            out[key]["top1_rr"] = (top1_rr[1], top1_rr[0])
            out[key]["rr"] = _prf(res_rr, ra, rb, test, labels, by_pid, text_of)
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


def _fmt2(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.3f} / {pair[1]:.3f}"


def _gain(a: tuple[float, float], b: tuple[float, float]) -> str:
    return f"{a[0] - b[0]:+.3f} / {a[1] - b[1]:+.3f}"


def _prf_cell(m: dict) -> str:
    return f"{m['p']:.3f} / {m['r']:.3f} / {m['f1']:.3f}"


def _tatoeba_table(results: dict) -> str:
    tat = [
        {
            "lang": lang,
            "before xx->en / en->xx": _fmt2(results["before"]["tatoeba"][lang]),
            "after": _fmt2(results["after"]["tatoeba"][lang]),
            "drop": _gain(results["after"]["tatoeba"][lang], results["before"]["tatoeba"][lang]),
        }
        for lang in LANGS
    ]
    return pd.DataFrame(tat).to_markdown(index=False)


def report(results: dict, rerank: bool) -> list[str]:
    """Markdown tables: per region pair before/after (and with the re-ranker), then Tatoeba."""
    rows = []
    for ra, rb in PAIRS:
        key = f"{rb}<->{ra}"
        b, a = results["before"][key], results["after"][key]
        row = {
            "pair (test pairs)": f"{key} ({b['test_pairs']})",
            "raw top-1 before": _fmt2(b["top1"]),
            "raw top-1 after": _fmt2(a["top1"]),
            "gain": _gain(a["top1"], b["top1"]),
        }
        if rerank:
            if "top1_rr" in b:
                row["before + re-ranker"] = _fmt2(b["top1_rr"])
            row["after + re-ranker"] = _fmt2(a["top1_rr"])
            row["gain with re-ranker"] = _gain(a["top1_rr"], b["top1"])
        rows.append(row)
    f1_rows = []
    for ra, rb in PAIRS:
        key = f"{rb}<->{ra}"
        b, a = results["before"][key], results["after"][key]
        row = {"pair": key, "P/R/F1 before": _prf_cell(b), "P/R/F1 after": _prf_cell(a)}
        if rerank:
            if "rr" in b:
                row["before + re-ranker"] = _prf_cell(b["rr"])
            row["after + re-ranker"] = _prf_cell(a["rr"])
        f1_rows.append(row)
    lines = [
        "",
        f"Raw top-1 on unseen products (both directions; re-ranker: the cross-encoder re-orders the "
        f"encoder's top {RERANK_TOP}):",
        "",
        pd.DataFrame(rows).to_markdown(index=False),
        "",
        "End-to-end P / R / F1 of match_catalog on unseen products (re-ranker: its score is the "
        "matcher's `rerank` feature):",
        "",
        pd.DataFrame(f1_rows).to_markdown(index=False),
        "",
    ]
    scorer = {k: (v["scorer"], round(v["threshold"], 3)) for k, v in results.items()}
    lines.append(f"Matcher refit per model (scorer, label-free threshold): {scorer}.")
    if rerank:
        lines.append(
            "With the re-ranker: threshold / rerank weight "
            + ", ".join(
                f"{k} {v['threshold_rerank']:.3f} / {v['rerank_weight']}"
                for k, v in results.items()
                if "threshold_rerank" in v
            )
            + "."
        )
    lines.append(
        "Re-ranker headroom (wrong raw top-1s, all directions): "
        + ", ".join(f"{k} {v['headroom']}" for k, v in results.items())
        + "."
    )
    if all("tatoeba" in v for v in results.values()):
        lines += ["", _tatoeba_table(results)]
    timing = {
        k: {t: round(v[t]) for t in ("embed_s", "match_s", "match_rerank_s") if t in v}
        for k, v in results.items()
    }
    lines.append(f"\nSeconds per model (embedding texts + sentences, matching): {timing}.")
    return lines


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
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--rerank", action="store_true", help="also train and measure the cross-encoder re-ranker"
    )
    ap.add_argument("--rerank-before", action="store_true", help="apply the re-ranker to the base model too")
    ap.add_argument("--rerank-steps", type=int, default=300)
    ap.add_argument("--rerank-minutes", type=float, default=4.0)
    ap.add_argument("--rerank-batch-size", type=int, default=32)
    ap.add_argument("--rerank-lr", type=float, default=3e-5)
    ap.add_argument("--rerank-negatives", type=int, default=3)
    ap.add_argument("--rerank-max-length", type=int, default=256)
    ap.add_argument("--train-only", action="store_true", help="time and memory of training only (no eval)")
    ap.add_argument("--no-tatoeba", action="store_true")
    ap.add_argument("--tatoeba-only", action="store_true", help="after training, only Tatoeba before/after")
    ap.add_argument(
        "--partial", type=Path, default=None, help="write the figures so far here after each phase"
    )
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
    results: dict = {}

    def checkpoint(phase: str) -> None:
        log = logging.getLogger("bench_tune")
        log.info("phase done: %s", phase)
        if args.partial:
            args.partial.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("POLYGLOT_CACHE_DIR", tmp)
        t0 = time.perf_counter()
        summary = tune_pairs(
            pairs, texts, Path(tmp) / "models", model=args.model, config=config, register=False
        )
        wall = time.perf_counter() - t0
        results["tune"] = {**summary, "wall_s": wall}
        checkpoint("tune")
        gpu_peak = _gpu_peak()
        lines = [
            f"{args.note}".strip(),
            "",
            f"Products {len(set(labels.values()))} ({len(test)} test, never trained on); training pairs "
            f"{summary['pairs']['train']}, validation pairs {summary['pairs']['validation_pairs']}.",
            f"Encoder: {summary['steps']} steps of {args.batch_size} pairs (+1 mined hard negative each), "
            f"lr {args.lr:g}, in {summary['seconds']:.0f} s on {config.device or 'auto'} "
            f"({summary['stopped_by']}); tune stage wall {wall:.0f} s incl. mining and validation; peak RSS "
            f"{summary['peak_rss_mb']} MB"
            + (f"; peak GPU memory {gpu_peak:.1f} GiB" if gpu_peak else "")
            + f". Validation top-1 (early-stopping split) {summary['val_before']} -> {summary['val_after']}.",
        ]
        reranker = None
        if args.rerank:
            rconfig = RerankConfig(
                max_steps=args.rerank_steps,
                max_minutes=args.rerank_minutes,
                batch_size=args.rerank_batch_size,
                learning_rate=args.rerank_lr,
                negatives=args.rerank_negatives,
                max_length=args.rerank_max_length,
                eval_steps=max(1, args.rerank_steps // 2),
                device=args.device,
                seed=args.seed,
            )
            t0 = time.perf_counter()
            rsum = tune_reranker(
                pairs,
                texts,
                Path(tmp) / "models",
                encoder=summary["model_dir"],
                base=args.model,
                config=rconfig,
                val_fraction=config.val_fraction,
                seed=args.seed,
                register=False,
            )
            rwall = time.perf_counter() - t0
            results["rerank_train"] = {**rsum, "wall_s": rwall}
            checkpoint("rerank training")
            lines.append(
                f"Re-ranker (cross-encoder from the base model's weights): {rsum['steps']} steps of "
                f"{args.rerank_batch_size} over {rsum['examples']} examples (each training pair + "
                f"{args.rerank_negatives} negatives mined with the tuned encoder), lr {args.rerank_lr:g}, "
                f"max length {args.rerank_max_length}, in {rsum['seconds']:.0f} s; stage wall {rwall:.0f} s; "
                f"validation MRR@10 {rsum['val_before']} -> {rsum['val_after']}."
            )
            reranker = CachedReranker(
                load_cross_encoder(rsum["model_dir"], device=args.device),
                batch_size=256 if (args.device or "").startswith("cuda") else 32,
            )
        if args.tatoeba_only:  # the other languages only: the cheapest check of a training setting
            for label, model in (("after", summary["model_dir"]), ("before", args.model)):
                results[label] = {"tatoeba": tatoeba(model, args.device)}
                checkpoint(f"{label} tatoeba")
            lines += ["", _tatoeba_table(results)]
        elif not args.train_only:
            all_texts = catalog["text"].tolist()
            all_texts += [s for t in all_texts for s in split_sentences(t)]
            order = [("after", summary["model_dir"]), ("before", args.model)]
            for label, model in order:
                t1 = time.perf_counter()
                vec = embed_all(model, args.device, all_texts)
                embed_s = time.perf_counter() - t1
                use_rr = reranker if label == "after" else None
                with _autocast(args.device):
                    results[label] = evaluate(catalog, labels, test, vec, model, reranker=use_rr)
                results[label]["embed_s"] = embed_s
                checkpoint(f"{label} matching")
                if not args.no_tatoeba:
                    results[label]["tatoeba"] = tatoeba(model, args.device)
                    checkpoint(f"{label} tatoeba")
                if label == "before" and reranker is not None and args.rerank_before:
                    # last: the base encoder's candidates re-scored by the re-ranker (which to build?)
                    with _autocast(args.device):
                        extra = evaluate(catalog, labels, test, vec, model, reranker=reranker)
                    for key in (f"{rb}<->{ra}" for ra, rb in PAIRS):
                        results[label][key].update(top1_rr=extra[key]["top1_rr"], rr=extra[key]["rr"])
                    for k in ("threshold_rerank", "rerank_weight", "match_rerank_s"):
                        results[label][k] = extra[k]
                    checkpoint("before + re-ranker")
            evals = {k: results[k] for k in ("before", "after")}
            lines += report(evals, reranker is not None)
    publish(
        "Fine-tuning on catalog pairs (bench/bench_tune.py)",
        "bench_tune.py",
        argv or sys.argv[1:],
        "\n".join(lines),
        append=not args.no_append,
    )
    return 0


def _gpu_peak() -> float | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def _autocast(device: str | None):
    """bf16 autocast for the cross-encoder's scoring on a GPU; a no-op elsewhere."""
    import contextlib

    if not (device or "").startswith("cuda"):
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16)


if __name__ == "__main__":
    raise SystemExit(main())
