"""Matching at scale: 3 regions x N products, exact blocked path vs the Qdrant (edge) path.

Vectors follow the bundled model's embedding statistics with one noisy twin per product and region
(bench/_synth.py says exactly how); texts are synthetic product lines with sizes, colours and codes.
Each (path, size) runs in a fresh subprocess, so peak RSS (VmHWM) is that run's own. Timed: the
whole ``match_catalog`` call (candidates + evidence + scoring + one-to-one assignment + groups), with
its per-stage timings; for the Qdrant path the store load (upsert + HNSW build) is timed apart.
Recall of the Qdrant path, per HNSW search beam (``--ef``): for 1,000 sampled products per direction
and region pair, its candidate top-k (Qdrant's 2k neighbours of the centred query, re-ranked by the
centred vectors, exactly as the matcher does) against the exact top-k of the same centred vectors,
with the wall time per query. ``--qdrant-sweep-only`` loads and sweeps without the full match (for
sizes where the full Qdrant-path match would take hours here). ``--sentences`` gives every product a
multi-sentence description (bench/_synth.py ``synth_descriptions``) and the exact path the
sentence-alignment feature (``SentenceVectors.from_texts`` per region, passed to ``match_catalog``);
the Qdrant path gets the same texts but no sentence vectors (its store has no sentence cache).

    python bench/bench_match_scale.py [--sizes 10000,100000] [--qdrant-sizes 10000] [--k 10]
        [--ef default,128,256] [--hnsw-ef N] [--qdrant-sweep-only] [--sentences]
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

from _common import publish

TARGET_S = 600
TARGET_MB = 4096


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_hwm() -> bool:
    """Start VmHWM again from the current RSS (Linux ``clear_refs`` 5), so a peak is the match's own
    and not the data generation's; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def build_tables(n: int) -> dict:
    import _synth

    from polyglot_catalog.matching.data import RegionTable

    vecs = _synth.synth_vectors(n, seed=11)
    return {
        r: RegionTable(r, [f"{r}-{i}" for i in range(n)], _synth.synth_texts(n, r, seed=11), vecs[r])
        for r in _synth.LANGS
    }


def build_sentences(tables: dict) -> tuple[dict, dict]:
    """Swap each table's one-line texts for multi-sentence descriptions and build the sentence
    vectors the way a caller would (``sentence -> vector`` lookup, ``SentenceVectors.from_texts``),
    one region at a time so only one region's lookup is alive. Returns the vectors and their sizes."""
    import _synth

    from polyglot_catalog.matching.data import RegionTable
    from polyglot_catalog.sentences import SentenceVectors

    t0, rss0 = time.perf_counter(), _rss_mb()
    sentences, occurrences, distinct, nbytes = {}, 0, 0, 0
    for r, t in list(tables.items()):
        texts, lookup = _synth.synth_descriptions(len(t), r, t.vectors, seed=11)
        sv = SentenceVectors.from_texts(texts, lookup)
        del lookup
        tables[r] = RegionTable(r, t.skus, texts, t.vectors)
        sentences[r] = sv
        occurrences += sv.n_occurrences
        distinct += len(sv.vectors)
        nbytes += sv.vectors.nbytes + (sv.index.nbytes if sv.index is not None else 0)
    dim = next(iter(sentences.values())).vectors.shape[1]
    info = {
        "occurrences": occurrences,
        "distinct": distinct,
        "mb": nbytes / 2**20,
        "mb_per_occurrence_rows": occurrences * dim * 4 / 2**20,
        "build_s": time.perf_counter() - t0,
        "rss_delta_mb": _rss_mb() - rss0,
    }
    return sentences, info


def _accuracy(result) -> dict[str, float]:
    """Against the known twins: share of products matched to their twin, and precision of matches."""
    pairs = result.pairs
    m = pairs[pairs["decision"] == "match"]
    correct = (m["sku_a"].str.split("-").str[1] == m["sku_b"].str.split("-").str[1]).to_numpy()
    n_pairs = sum(c["candidates"] for c in result.summary["counts"].values())
    return {
        "matches": len(m),
        "precision": float(correct.mean()) if len(m) else 0.0,
        "correct": int(correct.sum()),
        "candidates": int(n_pairs),
    }


def load_store(store, tables: dict) -> None:
    """Upsert every region's products, as the embed stage does: in bulk-load mode, so the HNSW
    index is built once at the end."""
    from polyglot_catalog.ids import point_id

    with store.bulk_load():
        for r, t in tables.items():
            store.upsert(
                [point_id(r, s) for s in t.skus],
                t.vectors,
                [
                    {"sku": s, "region": r, "text": x, "status": "active"}
                    for s, x in zip(t.skus, t.texts, strict=True)
                ],
            )


def worker(
    path: str,
    n: int,
    k: int,
    folder: str,
    efs: list[int | None],
    hnsw_ef: int | None,
    full: bool,
    sentences: bool = False,
) -> dict:
    from polyglot_catalog.matching import match_catalog

    tables = build_tables(n)
    out: dict = {"path": path, "n": n, "k": k}
    sent = None
    if sentences:
        sent, out["sentences"] = build_sentences(tables)
        if path != "exact":
            sent = None  # same texts, no sentence vectors (see the module doc)
    store = None
    if path == "qdrant":
        from polyglot_catalog.store import CatalogStore, open_client

        client = open_client(path=folder, embedded="edge")
        store = CatalogStore(client, "catalog", "bundled", upsert_batch_size=1024)
        t0 = time.perf_counter()
        store.ensure_collection(384)
        load_store(store, tables)
        out["store_load_s"] = time.perf_counter() - t0
        out["indexed"] = client.get_collection("catalog").indexed_vectors_count
        out["rss_after_load_mb"] = _rss_mb()
        out["sweep"] = qdrant_recall(store, k, efs)
    out["rss_before_mb"] = _rss_mb()
    out["peak_setup_mb"] = _hwm_mb()  # data generation (and store load, sweep) before the match
    out["peak_reset"] = _reset_hwm()
    if full:
        t0 = time.perf_counter()
        beam = {} if hnsw_ef is None else {"hnsw_ef": hnsw_ef}  # None: the library's default
        # popped as the argument is passed, so the matcher holds the only reference (as with the
        # store's sentence cache) and can free the uncentred rows once it has centred them
        holder = [sent]
        del sent
        result = match_catalog(
            store if store is not None else tables, k=k, candidates=path, sentences=holder.pop(), **beam
        )
        out["match_s"] = time.perf_counter() - t0
        out["timings"] = result.summary["timings"]
        out.update(_accuracy(result))
    out["peak_mb"] = _hwm_mb()
    if store is not None:
        store.client.close()
    return out


def qdrant_recall(store, k: int, efs: list[int | None], sample: int = 1000) -> dict[str, dict[str, float]]:
    """Recall at k on sampled queries (see the module doc), per HNSW search beam ``ef`` (``None``:
    the engine's default): ``engine`` = Qdrant's top-k of the stored (raw) vectors vs exact top-k of
    the same vectors (the HNSW approximation alone); ``candidates`` = the matcher's Qdrant
    candidates (2k neighbours of the centred query among the stored vectors, re-ranked by the
    centred vectors) vs the exact top-k of the centred vectors (what the exact path would give);
    ``ms_per_query`` = wall time of the matcher's 2k queries over their number."""
    from polyglot_catalog.matching.candidates import _rerank, exact_topk, qdrant_topk
    from polyglot_catalog.matching.pipeline import center_region, load_catalog

    data = load_catalog(store)
    cent = {r: center_region(t) for r, t in data.items()}
    rng = np.random.default_rng(0)
    regions = sorted(data)
    cases = []
    for a in regions:
        for b in regions:
            if a != b:
                rows = rng.choice(len(data[a]), min(sample, len(data[a])), replace=False)
                want, _ = exact_topk(cent[a].vectors[rows], cent[b].vectors, k)
                raw_want, _ = exact_topk(data[a].vectors[rows], data[b].vectors, k)
                cases.append((a, b, rows, want, raw_want))
    sweep = {}
    for ef in efs:
        hits = {"engine": 0, "candidates": 0}
        total = 0
        query_s = 0.0
        for a, b, rows, want, raw_want in cases:
            idx, _ = qdrant_topk(store, data[a].vectors[rows], b, data[b], k, hnsw_ef=ef)
            t0 = time.perf_counter()
            fetched, _ = qdrant_topk(store, cent[a].vectors[rows], b, data[b], 2 * k, hnsw_ef=ef)
            query_s += time.perf_counter() - t0
            got, _ = _rerank(cent[a].vectors[rows], cent[b].vectors, fetched, k)
            for g, w, r, rw in zip(got, want, idx, raw_want, strict=True):
                hits["candidates"] += len(set(g.tolist()) & set(w.tolist()))
                hits["engine"] += len(set(r.tolist()) & set(rw.tolist()))
                total += len(w)
        n_queries = sum(len(c[2]) for c in cases)
        sweep[str(ef)] = {
            **{name: h / total for name, h in hits.items()},
            "ms_per_query": 1000 * query_s / n_queries,
        }
    return sweep


def run(path: str, n: int, k: int, timeout: int, extra: list[str]) -> dict:
    folder = tempfile.mkdtemp(prefix="bench-match-", dir=os.environ.get("BENCH_DISK", "/var/tmp"))
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        path,
        "--n",
        str(n),
        "--k",
        str(k),
        "--folder",
        folder,
        *extra,
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"path": path, "n": n, "error": f"stopped after {timeout} s"}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if out.returncode != 0:
        return {"path": path, "n": n, "error": out.stderr.strip().splitlines()[-1][:300]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sentences_text(results: list[dict]) -> str:
    """What ``--sentences`` adds, with the counts of distinct sentence rows vs occurrences per run."""
    text = (
        "With `--sentences`: each product's text is a multi-sentence description: the line above "
        "as first sentence (its vector: the product's vector), then 2-5 more (bench/_synth.py "
        "`synth_descriptions`): one, or for 30% two, product-specific sentences naming a coined word, "
        "each an own content draw from the same fitted content covariance translated per region with "
        "the fitted translation noise (like the product vectors, without families), and the rest "
        "boilerplate drawn uniformly from a pool of 200 shared sentences per region (one content draw "
        "each, translated the same way). No digits, units or codes in the added sentences, so the "
        "evidence features see what they saw before. The exact path gets `sentences={region: "
        "SentenceVectors.from_texts(texts, lookup)}` (each distinct sentence of a region stored once "
        "plus an int32 index per occurrence; the matcher centres a copy of the distinct rows); the "
        "Qdrant path keeps `sentences=None` (same texts, no sentence cache in its store). "
        "Sentence data generation is inside the peak RSS."
    )
    for r in results:
        s = r.get("sentences")
        if s:
            text += (
                f" {r['path']} at {r['n']:,}: {s['occurrences']:,} sentence occurrences, "
                f"{s['distinct']:,} distinct rows ({s['mb']:.0f} MB as distinct rows + index vs "
                f"{s['mb_per_occurrence_rows']:.0f} MB one row per occurrence), built in "
                f"{s['build_s']:.0f} s (RSS +{s['rss_delta_mb']:.0f} MB)."
            )
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="products per region, exact path")
    ap.add_argument("--qdrant-sizes", default="10000", help="products per region, Qdrant (edge) path")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run before it is stopped")
    ap.add_argument("--worker", choices=("exact", "qdrant"))
    ap.add_argument("--n", type=int)
    ap.add_argument("--folder")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument(
        "--ef",
        default="default,128,256",
        help="HNSW search beams to sweep on the Qdrant path ('default': the engine's)",
    )
    ap.add_argument(
        "--hnsw-ef", type=int, help="search beam of the full Qdrant-path match (default: the library's)"
    )
    ap.add_argument(
        "--qdrant-sweep-only", action="store_true", help="Qdrant path: load and sweep, skip the full match"
    )
    ap.add_argument(
        "--sentences",
        action="store_true",
        help="multi-sentence descriptions; the exact path also gets the sentence-alignment feature",
    )
    args = ap.parse_args(argv)
    efs = [None if e == "default" else int(e) for e in args.ef.split(",") if e]
    if args.worker:
        full = not (args.worker == "qdrant" and args.qdrant_sweep_only)
        print(
            json.dumps(
                worker(args.worker, args.n, args.k, args.folder, efs, args.hnsw_ef, full, args.sentences)
            )
        )
        return 0
    extra = ["--ef", args.ef] + (["--hnsw-ef", str(args.hnsw_ef)] if args.hnsw_ef else [])
    extra += ["--qdrant-sweep-only"] if args.qdrant_sweep_only else []
    extra += ["--sentences"] if args.sentences else []

    runs = [("exact", int(s)) for s in args.sizes.split(",") if s] + [
        ("qdrant", int(s)) for s in args.qdrant_sizes.split(",") if s
    ]
    results = []
    for path, n in runs:
        r = run(path, n, args.k, args.timeout, extra)
        print(json.dumps(r), flush=True)
        results.append(r)

    lines = [
        "Synthetic catalogs, 3 regions (DE, FR, US) x N products, one twin per product in each other region. "
        "Vectors: 384-d, drawn from the bundled model's embedding statistics fitted on 300 real IKEA "
        "products embedded in en/de/fr with the real Encoder (per-language mean, content covariance, "
        "translation-noise covariance; families of ~4 near-duplicate variants; bench/_synth.py). Texts: "
        "synthetic `NAME category WxH cm|in, colour[, article code]` lines (US in inches), so every "
        f"evidence feature runs. k={args.k}, method hungarian, label-free (self-training), "
        "defaults otherwise. "
        "Each row a fresh process: time of the whole `match_catalog` call and peak RSS (VmHWM) of the "
        "match, counted from a reset just before the call (Linux `clear_refs`: the input tables already "
        "in memory count, the data generation's temporaries do not; they are the setup peak column). "
        "Blocks before 2026-11-26 14:30 UTC had no reset: their peak was the whole process's. "
        "Qdrant path: qdrant-edge store "
        "(`POLYGLOT_EMBEDDED_STORE=edge`), loaded with `bulk_load` (HNSW built at its end), load time apart.",
        *(["", _sentences_text(results)] if args.sentences else []),
        "",
        "| path | N per region | match s | peak RSS MB | setup peak MB | candidates | matches | precision "
        "| twins found | store load s | stage seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['path']} | {r['n']:,} | {r['error']} | | | | | | | | |")
        elif "match_s" not in r:
            lines.append(
                f"| {r['path']} | {r['n']:,} | not run (sweep only) | | {r['peak_setup_mb']:.0f} | | | | | "
                f"{r.get('store_load_s', 0):.0f} | |"
            )
        else:
            found = r["correct"] / (3 * r["n"])
            lines.append(
                f"| {r['path']} | {r['n']:,} | {r['match_s']:.0f} | {r['peak_mb']:.0f} | "
                f"{r['peak_setup_mb']:.0f} | "
                f"{r['candidates']:,} | {r['matches']:,} | {r['precision']:.3f} | {found:.3f} | "
                f"{r.get('store_load_s', 0):.0f} | `{json.dumps(r['timings'])}` |"
            )
    sweeps = [r for r in results if r.get("sweep")]
    if sweeps:
        lines += [
            "",
            "Qdrant path per HNSW search beam `hnsw_ef` (`None`: the engine's default, `ef_construct` = "
            "100), on 1,000 sampled products per direction and region pair: engine recall@k (raw query, "
            "raw vectors, vs exact), candidate recall@k (the matcher's 2k centred query re-ranked, vs the "
            "exact path's top-k), wall ms per 2k query, and the candidate stage that rate gives for the "
            "matcher's 6 x N queries.",
            "",
            "| N per region | hnsw_ef | engine recall@k | candidate recall@k | ms per query "
            "| candidate stage s (6N queries) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in sweeps:
            for ef, v in r["sweep"].items():
                lines.append(
                    f"| {r['n']:,} | {ef} | {v['engine']:.3f} | {v['candidates']:.3f} | "
                    f"{v['ms_per_query']:.2f} | {v['ms_per_query'] * 6 * r['n'] / 1000:.0f} |"
                )
    for r in results:
        if r.get("n") == 100_000 and r.get("path") == "exact" and "error" not in r:
            ok_t, ok_m = r["match_s"] <= TARGET_S, r["peak_mb"] <= TARGET_MB
            lines.append(
                f"\nTarget (100k per region x 3 matched in <= {TARGET_S} s with RSS <= {TARGET_MB} MB), "
                f"exact path: {r['match_s']:.0f} s ({'met' if ok_t else 'missed'}), {r['peak_mb']:.0f} MB "
                f"({'met' if ok_m else 'missed'})."
            )
    ex = {r["n"]: r for r in results if r.get("path") == "exact" and "match_s" in r}
    for r in results:
        if r.get("path") == "qdrant" and "match_s" in r and r["n"] in ex:
            e = ex[r["n"]]
            lines.append(
                f"\nQdrant path / exact path at {r['n']:,}: match time {r['match_s'] / e['match_s']:.2f}x "
                f"(+ {r['store_load_s']:.0f} s store load), peak RSS {r['peak_mb'] / e['peak_mb']:.2f}x."
            )
    publish(
        "Matching at scale: exact blocked path vs Qdrant (edge) path",
        "bench_match_scale.py",
        argv,
        "\n".join(lines),
        append=not args.no_append,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] if len(sys.argv) > 1 else None))
