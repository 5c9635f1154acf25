"""Embed stage: overhead over raw ``model.encode``, unchanged re-run cost, and memory vs catalog size.

Run: ``.venv/bin/python bench/bench_embed.py`` (needs ../shared/data/ikea; about 6-9 minutes on 2 cores).
Prints and appends a block to bench/RESULTS.md. What each part measures, on the IKEA dev descriptions:

1. Throughput, side by side in one process on the same texts: ``encoder.model.encode(texts,
   prompt="query: ", batch_size=...)`` vs ``embed_catalog`` end to end (key pass, text, token counts,
   hashes, lookups, encode, upserts into a local-mode Qdrant path). Runs alternate; best of each counts.
2. The same catalog embedded again, unchanged, as a fraction of the first run's time.
3. Peak RSS for a 20k- and a 200k-row catalog, each in a fresh subprocess, through the real reading /
   text (with the real tokenizer for truncation) / hash / store code, with an encoder whose ``encode`` is
   cheap but returns real-shaped vectors: encoding 200k rows with the fp32 model on 2 cores takes hours.
   So these figures are the pipeline's memory; the model's own memory is measured separately (RSS of a
   process that loaded the real ``Encoder``). Stores: a sink client (the real ``CatalogStore`` code, the
   client drops points: pipeline alone), and local-mode Qdrant on a path (keeps every point in this
   process's memory, so it grows with the catalog; a server keeps them in its own process).
4. The reader's key pass (distinct (region, sku) for the whole run) for 200k rows, alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import SHARED_DATA, append_results

REGIONS = {"US": ("en", "en"), "DE": ("de", "de"), "FR": ("fr", "fr")}  # region -> (CSV column, language)
MODEL_FOLDER = Path(os.environ.get("POLYGLOT_CACHE_DIR", Path(__file__).resolve().parents[1] / ".cache"))
ROW_GROUP = 10_000
SEED = 7
# qdrant-client's local mode commits every point to SQLite: ~20 ms each on this disk (fsync), which would
# measure the disk, not the pipeline. tmpfs keeps the same code path (a real on-disk SQLite file) without
# the fsync; its file pages are not in the process's RSS.
QDRANT_TMP = "/dev/shm" if Path("/dev/shm").is_dir() else None


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in KiB: VmRSS (now) or VmHWM (peak of this process image)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory() -> dict[str, float]:
    """RSS now, peak RSS (VmHWM) and ``ru_maxrss`` of this process, in MB."""
    return {
        "rss_mb": _status_kb("VmRSS") / 1024,
        "hwm_mb": _status_kb("VmHWM") / 1024,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# -- catalog -----------------------------------------------------------------------------------------


def load_texts() -> pa.Table:
    """(region, language, description) for every non-empty description of the IKEA dev corpus."""
    corpus = pacsv.read_csv(SHARED_DATA / "ikea" / "ikea_products_dev.csv")
    parts = []
    for region, (column, language) in REGIONS.items():
        text = corpus[column]
        keep = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), False)
        text = text.filter(keep)
        n = len(text)
        parts.append(pa.table({"region": [region] * n, "language": [language] * n, "description": text}))
    return pa.concat_tables(parts)


def write_catalog(texts: pa.Table, n_rows: int, folder: Path, *, by_region: bool = True) -> Path:
    """A multi-region catalog of ``n_rows`` rows: one Parquet file per region, or one mixed file.

    Rows cycle through the real descriptions in a seeded order (200k rows reuse each ~20 times, with a
    unique SKU each); within any batch they are distinct, so no batch gets dedupe savings.
    """
    rng = np.random.default_rng(SEED)
    order = rng.permutation(texts.num_rows)
    picked = texts.take(pa.array(np.resize(order, n_rows)))
    numbers = pa.array([f"{i:07d}" for i in range(n_rows)])
    picked = picked.append_column("sku", pc.binary_join_element_wise(picked["region"], numbers, "-"))
    folder.mkdir(parents=True, exist_ok=True)
    if not by_region:
        pq.write_table(picked, folder / "catalog.parquet", row_group_size=ROW_GROUP)
        return folder
    for region in REGIONS:
        part = picked.filter(pc.equal(picked["region"], region))
        pq.write_table(part, folder / f"{region}.parquet", row_group_size=ROW_GROUP)
    return folder


# -- subprocess workers ------------------------------------------------------------------------------


class CheapEncoder:
    """Real-shaped, unit-length random vectors; token counts from the model's real tokenizer."""

    def __init__(self, dim: int = 384, max_seq_length: int = 512, prompt: str = "query: ") -> None:
        from tokenizers import Tokenizer

        self.dim, self.max_seq_length, self.prompt = dim, max_seq_length, prompt
        self.model_name = "multilingual-e5-small"
        self.tokenizer = Tokenizer.from_file(
            str(MODEL_FOLDER / "models" / self.model_name / "tokenizer.json")
        )
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.rng = np.random.default_rng(0)

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.rng.standard_normal((len(texts), self.dim), dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def count_tokens(self, texts: list[str]) -> list[int]:
        from polyglot_catalog.encoding import nfc

        encoded = self.tokenizer.encode_batch([self.prompt + nfc(t) for t in texts], add_special_tokens=True)
        return [len(e.ids) for e in encoded]


class SinkClient:
    """Just enough of QdrantClient for CatalogStore: accepts points and drops them."""

    def __init__(self) -> None:
        self.created = False
        self.hnsw = SimpleNamespace(m=16)

    def collection_exists(self, name: str) -> bool:
        return self.created

    def create_collection(self, *args: Any, **kwargs: Any) -> None:
        self.created = True

    def create_payload_index(self, *args: Any, **kwargs: Any) -> None:
        pass

    def get_collection(self, name: str) -> Any:
        return SimpleNamespace(config=SimpleNamespace(hnsw_config=self.hnsw))

    def update_collection(self, *args: Any, **kwargs: Any) -> None:
        pass

    def upsert(self, *args: Any, **kwargs: Any) -> None:
        pass

    def retrieve(self, *args: Any, **kwargs: Any) -> list:
        return []


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a fresh process; returns figures as a dict (printed as JSON)."""
    from polyglot_catalog.embed import embed_catalog
    from polyglot_catalog.reading import CatalogReader
    from polyglot_catalog.store import CatalogStore, open_client

    if args.worker == "model":
        before = memory()
        from polyglot_catalog.encoding import Encoder

        encoder = Encoder()
        encoder.encode(["query warm-up"] * 8)
        return {"before": before, "after": memory()}
    if args.worker == "keys":
        before = memory()
        pa_before = pa.total_allocated_bytes()
        start = time.perf_counter()
        reader = CatalogReader(args.source)
        keys = reader.keys
        return {
            "before": before,
            "after": memory(),
            "seconds": time.perf_counter() - start,
            "keys": keys.num_rows,
            "keys_table_mb": keys.nbytes / 1e6,
            "arrow_held_mb": (pa.total_allocated_bytes() - pa_before) / 1e6,
        }
    encoder = CheapEncoder()
    location = {"sink": None, "memory": ":memory:", "path": args.qdrant}[args.worker]
    client = SinkClient() if location is None else open_client(path=location)
    store = CatalogStore(client, "bench", "e5")  # type: ignore[arg-type]
    before = memory()
    start = time.perf_counter()
    summary = embed_catalog(args.source, store, encoder, vanished="keep")
    return {
        "before": before,
        "after": memory(),
        "seconds": time.perf_counter() - start,
        "rows": summary["upserted"],
        "stages": summary["seconds"],
    }


def run_worker(kind: str, source: Path | None, qdrant: Path | None = None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", kind]
    if source is not None:
        command += ["--source", str(source)]
    if qdrant is not None:
        command += ["--qdrant", str(qdrant)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- throughput --------------------------------------------------------------------------------------


def throughput(texts: pa.Table, n_texts: int, repeats: int, tmp: Path, qdrant_tmp: Path) -> dict[str, Any]:
    """Raw model.encode vs embed_catalog on the same texts, alternating; best time of each."""
    from polyglot_catalog.embed import embed_catalog
    from polyglot_catalog.encoding import Encoder
    from polyglot_catalog.reading import CatalogReader
    from polyglot_catalog.store import CatalogStore, open_client, vector_name_for
    from polyglot_catalog.text import TextTemplate

    unique = texts.group_by("description").aggregate([("region", "min"), ("language", "min")])
    unique = unique.rename_columns(["description", "region", "language"])
    source = write_catalog(unique, n_texts, tmp / "catalog", by_region=False)
    encoder = Encoder()
    tpl = TextTemplate(None, max_tokens=encoder.max_seq_length, count_tokens=encoder.count_tokens)
    rendered = [t for part in CatalogReader(source) for t in tpl.render(part.batch)]  # what embed encodes
    assert len(rendered) == len(set(rendered)) == n_texts
    encoder.model.encode(rendered[:16], prompt="query: ", batch_size=encoder.batch_size)  # warm-up

    def run_raw() -> None:
        start = time.perf_counter()
        encoder.model.encode(
            rendered, prompt="query: ", batch_size=encoder.batch_size, show_progress_bar=False
        )
        raw.append(time.perf_counter() - start)

    def run_embed() -> None:
        client = open_client(path=str(qdrant_tmp / f"throughput-{len(embed)}"))
        store = CatalogStore(client, "bench", vector_name_for(encoder.model_name))
        start = time.perf_counter()
        summary = embed_catalog(source, store, encoder)
        embed.append(time.perf_counter() - start)
        assert summary["embedded"] == summary["upserted"] == n_texts, summary
        stores.append((store, summary))

    raw: list[float] = []
    embed: list[float] = []
    stores: list[tuple[CatalogStore, dict[str, Any]]] = []
    for i in range(repeats):  # ABBA order, so a drift in machine load does not favour one side
        for step in (run_raw, run_embed) if i % 2 == 0 else (run_embed, run_raw):
            step()
    store, first = stores[-1]
    start = time.perf_counter()
    again = embed_catalog(source, store, encoder)
    rerun = time.perf_counter() - start
    assert again["embedded"] == 0 and again["skipped_unchanged"] == n_texts, again
    return {
        "n": n_texts,
        "batch_size": encoder.batch_size,
        "raw": raw,
        "embed": embed,
        "first_stages": first["seconds"],
        "rerun": rerun,
        "rerun_first": embed[-1],
        "rerun_stages": again["seconds"],
        "truncated": first["truncated"],
    }


# -- #23: one pass per description, precision auto, no model load when nothing changed ---------------


def speed(texts: pa.Table, n_texts: int, repeats: int, tmp: Path, qdrant_tmp: Path) -> dict[str, Any]:
    """Side by side on the same texts, interleaved (the order rotates each repeat, so a drift in the
    shared CPU's load favours no side): raw fp32 ``model.encode`` of the rendered descriptions, and
    ``embed_catalog`` (sentence vectors on) in fp32 and at the default precision, with sentences
    encoded separately (the default) and late-chunked. Models are loaded before timing (loads are
    reported apart), each embed run writes a fresh embedded store. Then a real first run (a fresh
    lazy ``Encoder``, so it loads the model) against an unchanged re-run (another fresh one)."""
    from polyglot_catalog.embed import embed_catalog
    from polyglot_catalog.encoding import Encoder
    from polyglot_catalog.reading import CatalogReader
    from polyglot_catalog.store import CatalogStore, open_client, vector_name_for
    from polyglot_catalog.text import TextTemplate

    unique = texts.group_by("description").aggregate([("region", "min"), ("language", "min")])
    unique = unique.rename_columns(["description", "region", "language"])
    source = write_catalog(unique, n_texts, tmp / "speed", by_region=False)
    loads: dict[str, float] = {}
    encoders: dict[str, Any] = {}
    for name, precision in (("fp32", "fp32"), ("auto", "auto")):
        start = time.perf_counter()
        encoders[name] = Encoder(precision=precision)
        encoders[name].model  # noqa: B018 - load now, outside the timed runs
        loads[name] = time.perf_counter() - start
    fp32 = encoders["fp32"]
    tpl = TextTemplate(None, max_tokens=fp32.max_seq_length, count_tokens=fp32.count_tokens)
    rendered = [t for part in CatalogReader(source) for t in tpl.render(part.batch)]
    assert len(rendered) == len(set(rendered)) == n_texts
    for enc in encoders.values():  # warm-up
        enc.model.encode(rendered[:16], prompt=enc.prompt, batch_size=enc.batch_size)
    times: dict[str, list[float]] = {}
    summaries: dict[str, dict[str, Any]] = {}

    def raw(name: str) -> Any:
        """``model.encode`` alone, fp32 (the baseline) or at the default precision (``auto``: what
        this CPU's bf16 or fp32 units allow, the stage's own ceiling)."""
        enc = encoders[name]

        def run() -> None:
            start = time.perf_counter()
            enc.model.encode(
                rendered,
                prompt=enc.prompt,
                batch_size=enc.batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            times.setdefault(f"raw {name}", []).append(time.perf_counter() - start)

        return run

    def embed(precision: str, sentences: str) -> Any:
        def run() -> None:
            label = f"embed {precision}, sentences {sentences}"
            client = open_client(path=str(qdrant_tmp / f"speed-{len(times.get(label, []))}-{label}"))
            store = CatalogStore(client, "bench", vector_name_for(fp32.model_name))
            start = time.perf_counter()
            summary = embed_catalog(source, store, encoders[precision], sentence_vectors=sentences)
            times.setdefault(label, []).append(time.perf_counter() - start)
            client.close()
            assert summary["embedded"] == summary["upserted"] == n_texts, summary
            summaries[label] = summary

        return run

    steps = [raw("fp32"), raw("auto")] + [embed(p, s) for p in ("fp32", "auto") for s in ("separate", "late")]
    for i in range(repeats):
        for step in steps[i % len(steps) :] + steps[: i % len(steps)]:
            step()
    # a real first run and an unchanged re-run, each with a fresh (lazy) encoder, as two tasks would be
    client = open_client(path=str(qdrant_tmp / "speed-rerun"))
    store = CatalogStore(client, "bench", vector_name_for(fp32.model_name))
    encoders.clear()  # free both models before the first-run measurement
    start = time.perf_counter()
    first = embed_catalog(source, store, Encoder())
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    again = embed_catalog(source, store, Encoder())
    rerun_s = time.perf_counter() - start
    client.close()
    assert again["embedded"] == 0 and not again["model_loaded"], again
    return {
        "n": n_texts,
        "sentences": sum(len(s) for s in [tpl.render(p.batch) for p in CatalogReader(source)]),
        "loads": loads,
        "times": times,
        "precision": first["precision"],
        "precision_reason": first["precision_reason"],
        "first": first_s,
        "rerun": rerun_s,
        "first_stages": first["seconds"],
        "rerun_stages": again["seconds"],
        "written": {k: (v["encoded_sentences"], v["sentences_written"]) for k, v in summaries.items()},
    }


def speed_report(sp: dict[str, Any]) -> str:
    """Markdown for :func:`speed`: median and spread per run kind, and the #23 ratios."""
    med = {k: float(np.median(v)) for k, v in sp["times"].items()}
    raw, raw_auto = med["raw fp32"], med["raw auto"]
    rows = [
        "| run | median s | runs (s) | speed vs raw fp32 encode | speed vs raw encode at its precision |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, values in sp["times"].items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        own = raw if "fp32" in label else raw_auto
        rows.append(
            f"| {label} | {med[label]:.1f} | {runs} | {raw / med[label]:.2f}x | {own / med[label]:.2f}x |"
        )
    ratio = sp["rerun"] / sp["first"]
    lines = [
        f"{sp['n']} distinct IKEA dev descriptions (title-less template, the embed stage's texts), "
        f"embedded store (edge) on tmpfs, sentence vectors on. Default precision here: "
        f"{sp['precision']} ({sp['precision_reason']}). Model loads, outside the timed runs: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in sp["loads"].items())
        + ". The CPU was shared with other engineers' jobs while this ran: runs were interleaved "
        "(the order rotates every repeat) and every run is listed, so the spread shows.",
        "",
        *rows,
        "",
        "`raw auto` is `model.encode` alone at the default precision: what this CPU's bf16 (or fp32) "
        "units allow, so `speed vs raw encode at its precision` is the stage's own overhead.",
        "",
        f"Separate / late sentences (encoded alone, written): {sp['written']}.",
        "",
        f"Unchanged re-run / first run, each with a fresh encoder as two tasks would have: "
        f"{sp['rerun']:.2f} s / {sp['first']:.1f} s = **{ratio:.3f}** (target <= 0.02; the first run "
        f"includes the model load, the re-run loads neither model nor tokenizer). Stages first "
        f"{sp['first_stages']}; re-run {sp['rerun_stages']}.",
    ]
    return "\n".join(lines)


# -- report ------------------------------------------------------------------------------------------


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _growth(m: dict[str, Any]) -> float:
    """Peak RSS of a worker minus its RSS before the run (after imports and tokenizer)."""
    return m["after"]["hwm_mb"] - m["before"]["rss_mb"]


def report(tp: dict[str, Any], mem: dict[str, dict[str, Any]], keys: dict[str, Any], model: dict) -> str:
    n = tp["n"]
    raw_rate, embed_rate = n / min(tp["raw"]), n / min(tp["embed"])
    ratio = embed_rate / raw_rate
    fraction = tp["rerun"] / tp["rerun_first"]
    encode_share = tp["first_stages"].get("encode", 0.0) / tp["rerun_first"]
    raw_runs = ", ".join(f"{t:.1f}" for t in tp["raw"])
    embed_runs = ", ".join(f"{t:.1f}" for t in tp["embed"])
    lines = [
        f"Throughput: {n} distinct IKEA dev descriptions (US/DE/FR) in one 3-region Parquet file, template "
        f"`{{description}}` ({tp['truncated']} truncated); encode batch_size {tp['batch_size']}, embed "
        f"batch_size 256; Qdrant local mode on a path in {QDRANT_TMP or 'the temp dir'}. Raw and embed runs "
        f"alternate in ABBA order (the 2 cores are shared with other work), best of {len(tp['raw'])} each.",
        "",
        "| measure | value | target |",
        "| --- | --- | --- |",
        f"| raw `model.encode` | {raw_rate:.2f} texts/s (runs {raw_runs} s) | |",
        f"| `embed_catalog` end to end | {embed_rate:.2f} rows/s (runs {embed_runs} s) | |",
        f"| **embed / raw throughput** | **{ratio:.3f}** | >= 0.95: {_met(ratio >= 0.95)} |",
        f"| encode stage / embed run time (overhead by stage accounting, same runs) | {encode_share:.3f} | |",
        f"| unchanged re-run | {tp['rerun']:.2f} s vs first run {tp['rerun_first']:.1f} s | |",
        f"| **re-run / first run** | **{fraction:.4f}** | <= 0.05: {_met(fraction <= 0.05)} |",
        "",
        f"Seconds per stage, last first run: `{json.dumps(tp['first_stages'])}`; unchanged re-run: "
        f"`{json.dumps(tp['rerun_stages'])}`.",
        "",
        "Memory, each row a fresh subprocess (MB; `base` = RSS after imports and the tokenizer, before the "
        "run; `peak` = VmHWM; `ru_maxrss` from `getrusage(RUSAGE_SELF)`). These rows use a cheap encoder "
        "(random unit vectors of the real 384-d shape; the real tokenizer counts tokens for truncation), so "
        "they measure the pipeline (reading, text, hashes, lookups, upsert batches), not the model. Stores: "
        "`sink` = the real `CatalogStore` over a client that drops points (the pipeline alone, as with a "
        "Qdrant server); `memory` = local mode `:memory:`; `path` = local mode on a path (tmpfs).",
        "",
        "| run | rows | s | rows/s | base | peak | ru_maxrss | peak - base |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in mem.items():
        lines.append(
            f"| {name} | {m['rows']:,} | {m['seconds']:.0f} | {m['rows'] / m['seconds']:.0f} | "
            f"{m['before']['rss_mb']:.0f} | {m['after']['hwm_mb']:.0f} | {m['after']['maxrss_mb']:.0f} | "
            f"{_growth(m):.0f} |"
        )
    small, large = (k.split()[1] for k in mem if k.startswith("sink"))
    sink_small, sink_large = _growth(mem[f"sink {small}"]), _growth(mem[f"sink {large}"])
    n_small, n_large = mem[f"sink {small}"]["rows"], mem[f"sink {large}"]["rows"]
    flat = sink_large <= 1024 and sink_large - sink_small < 100
    model_rss = model["after"]["rss_mb"]
    lines += [
        "",
        f"Model: RSS {model_rss:.0f} MB after loading the real `Encoder` and one encode "
        f"(+{model_rss - model['before']['rss_mb']:.0f} MB over the bare imports; its tokenizer is part of "
        "that, and is in the workers' `base`).",
        f"Pipeline (sink): +{sink_small:.0f} MB at {n_small:,} rows, "
        f"+{sink_large:.0f} MB at {n_large:,} rows "
        f"({n_large // n_small}x rows: {sink_large - sink_small:+.0f} MB). Estimated peak of a real "
        f"{n_large:,}-row task against a Qdrant server: {model_rss:.0f} + {sink_large:.0f} = "
        f"{model_rss + sink_large:.0f} MB; target independent of rows and <= model + 1024 MB: "
        f"{_met(flat)}. The growth is not proportional to rows: it comes from per-file read buffers (these "
        "catalogs have one file per region, so the larger one has 10x bigger files) and the transient key "
        "pass below (mostly transient; what it keeps is ~20 bytes per distinct key).",
    ]
    for kind in ("memory", "path"):
        key = f"{kind} {small}"
        if key in mem:
            per_point = (_growth(mem[key]) - sink_small) / mem[key]["rows"] * 1e3
            lines.append(
                f"Local mode `{kind}`: +{_growth(mem[key]) - sink_small:.0f} MB over the sink at "
                f"{mem[key]['rows']:,} rows, ~{per_point:.1f} KB per point, "
                f"so ~{per_point * n_large / 1e3:.0f} MB at {n_large:,} (extrapolated)."
            )
    lines += [
        "qdrant-client's local mode keeps every point (vector and payload objects) in the Python process, "
        "`:memory:` and path alike (a path adds a pickled copy in SQLite, committed per point), so with a "
        "local-mode store the store, not the pipeline, dominates RSS and grows with the catalog; "
        "qdrant-client itself warns above 20,000 points. On disk (not tmpfs) the per-point SQLite commit "
        "costs ~20 ms here, which is why the path runs use tmpfs. With a Qdrant server the points live "
        "in the server's process.",
        "",
        f"Key pass alone ({keys['keys']:,} distinct (region, sku) from {n_large:,} rows): "
        f"{keys['seconds']:.1f} s; keys table {keys['keys_table_mb']:.1f} MB "
        f"(~{keys['keys_table_mb'] * 1e6 / max(keys['keys'], 1):.0f} bytes a key); "
        f"Arrow memory still held {keys['arrow_held_mb']:.1f} MB; RSS "
        f"{keys['before']['rss_mb']:.0f} -> {keys['after']['rss_mb']:.0f} MB, peak "
        f"{keys['after']['hwm_mb']:.0f} MB "
        f"(+{keys['after']['hwm_mb'] - keys['before']['rss_mb']:.0f} MB, transient: 65,536-row scan "
        "batches with descriptions, Parquet decode buffers, the group-by, allocator retention; only the "
        "keys table stays). The keys grow with the number of "
        "products, not with text size: ~10 million keys would hold about "
        f"{keys['keys_table_mb'] * 1e7 / max(keys['keys'], 1) / 1e3:.1f} GB.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=160, help="texts for the throughput comparison")
    parser.add_argument("--repeats", type=int, default=2, help="alternating raw/embed runs")
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--no-append", action="store_true", help="print only")
    parser.add_argument(
        "--worker", choices=["model", "keys", "sink", "memory", "path"], help=argparse.SUPPRESS
    )
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--qdrant", help=argparse.SUPPRESS)
    parser.add_argument(
        "--speed", action="store_true", help="only the #23 figures: one pass, precision auto, re-run"
    )
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.speed:
        started = time.perf_counter()
        with (
            tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp_name,
            tempfile.TemporaryDirectory(prefix="bench-qdrant-", dir=QDRANT_TMP) as qdrant_tmp,
        ):
            sp = speed(load_texts(), args.texts, args.repeats, Path(tmp_name), Path(qdrant_tmp))
        body = speed_report(sp) + f"\n\nTotal benchmark time {time.perf_counter() - started:.0f} s."
        print(body)
        if not args.no_append:
            command = f"python bench/bench_embed.py --speed --texts {args.texts} --repeats {args.repeats}"
            append_results("Embed stage: one pass per description, precision auto, re-run", command, body)
        return

    started = time.perf_counter()
    texts = load_texts()
    with (
        tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp_name,
        tempfile.TemporaryDirectory(prefix="bench-qdrant-", dir=QDRANT_TMP) as qdrant_tmp,
    ):
        tmp = Path(tmp_name)
        small, large = f"{args.small // 1000}k", f"{args.large // 1000}k"
        catalogs = {small: write_catalog(texts, args.small, tmp / small)}
        catalogs[large] = write_catalog(texts, args.large, tmp / large)
        # Memory first, while this process is small: workers are fresh interpreters. Local-mode stores
        # run at the small size only (their cost per point is what matters, and 200k points take long).
        runs = [("sink", small), ("sink", large), ("memory", small), ("path", small)]
        mem = {}
        for kind, size in runs:
            mem[f"{kind} {size}"] = run_worker(kind, catalogs[size], Path(qdrant_tmp) / f"{kind}-{size}")
            print(f"{kind} {size}: {json.dumps(mem[f'{kind} {size}'])}", flush=True)
        keys = run_worker("keys", catalogs[large])
        model = run_worker("model", None)
        tp = throughput(texts, args.texts, args.repeats, tmp, Path(qdrant_tmp))
    body = report(tp, mem, keys, model) + f"\n\nTotal benchmark time {time.perf_counter() - started:.0f} s."
    if args.no_append:
        print(body)
    else:
        append_results(
            "Embed stage: throughput vs raw encode, re-run, memory", "python bench/bench_embed.py", body
        )


if __name__ == "__main__":
    main()
