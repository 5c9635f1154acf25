"""One loaded model per task, called the way its registry entry says, on a chosen backend.

Why a wrapper: every caller (embed stage, matcher, benchmarks) must apply the same Unicode NFC, the
same prompt and the same truncation, or vectors from two runs stop being comparable. The backend
(``torch`` through sentence-transformers, or ONNX Runtime fp32 / dynamic int8 for local folders) is
an execution detail: the same texts give the same vectors up to numerical noise.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polyglot_catalog.models.registry import (
    DEFAULT_MODEL,
    ensure_bundled_model,
    load_sentence_transformer,
    resolve_model,
)

BACKENDS = ("torch", "onnx", "onnx-int8")


def nfc(text: str) -> str:
    """Compose decomposed accents: ``e`` + U+0301 and ``é`` must tokenise (and embed) alike."""
    return unicodedata.normalize("NFC", text)


class _OnnxModel:
    """ONNX Runtime session over the exported pooled graph, with length-bucketed batches."""

    def __init__(self, folder: Path, quantized: bool, threads: int | None) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        from polyglot_catalog.models.onnx_export import ONNX_FP32, ONNX_INT8, ensure_onnx

        ensure_onnx(folder)
        options = ort.SessionOptions()
        # ORT's default counts physical cores, which a 2-vCPU VM reports as 1; use what we may run on.
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        name = ONNX_INT8 if quantized else ONNX_FP32
        self.session = ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        st_config = folder / "sentence_bert_config.json"
        self.max_seq_length = 512
        if st_config.is_file():
            import json

            self.max_seq_length = int(json.loads(st_config.read_text())["max_seq_length"])
        self.dim = int(self.session.get_outputs()[0].shape[-1] or 0)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        # Sort by length so each batch pads little, as sentence-transformers does.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out: np.ndarray | None = None
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="np",
            )
            (vectors,) = self.session.run(
                None,
                {
                    "input_ids": enc["input_ids"].astype(np.int64),
                    "attention_mask": enc["attention_mask"].astype(np.int64),
                },
            )
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[idx] = vectors
        assert out is not None
        return out


class Encoder:
    """Encode texts into L2-normalised float32 vectors with one model, loaded once.

    :param model: registry name, hub id or local folder. Defaults to the bundled multilingual-e5-small.
    :param device: ``cpu``, ``cuda``... ``None`` lets sentence-transformers pick (torch backend).
    :param batch_size: texts per forward pass; texts are sorted by length first, so one call with many
        texts pads little.
    :param backend: ``torch`` (reference, sentence-transformers), ``onnx`` (ONNX Runtime fp32) or
        ``onnx-int8`` (dynamic int8 weights; fastest on CPU). ONNX files are exported once, offline,
        next to a local model folder.
    :param threads: intra-op threads for the ONNX session (torch: use ``torch.set_num_threads``).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str | None = None,
        batch_size: int = 32,
        backend: str = "torch",
        threads: int | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}; got {backend!r}")
        self.spec = resolve_model(model)
        self.batch_size = batch_size
        self.backend = backend
        self._onnx: _OnnxModel | None = None
        self.model: Any = None
        if backend == "torch":
            self.model = load_sentence_transformer(self.spec, device=device)
            self.tokenizer = self.model.tokenizer
        else:
            folder = ensure_bundled_model() if self.spec.bundled else Path(self.spec.source)
            if not folder.is_dir():
                raise ValueError(
                    f"backend {backend!r} needs a local model folder; {self.spec.name!r} is a hub id "
                    "(download it to a folder first, or use backend='torch')"
                )
            self._onnx = _OnnxModel(folder, quantized=backend == "onnx-int8", threads=threads)
            self.tokenizer = self._onnx.tokenizer
            self._folder_prompt = _folder_default_prompt(folder)

    @property
    def model_name(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        if self._onnx is not None:
            return self._onnx.dim
        return int(self.model.get_embedding_dimension())

    @property
    def max_seq_length(self) -> int:
        if self._onnx is not None:
            return self._onnx.max_seq_length
        return int(self.model.max_seq_length)

    @property
    def prompt(self) -> str:
        """The text prepended to every input (the registry's, else the folder's default prompt)."""
        if self.spec.prompt is not None:
            return self.spec.prompt
        if self._onnx is not None:
            return self._folder_prompt
        default = self.model.default_prompt_name
        return self.model.prompts.get(default, "") if default else ""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts`` in order, shape ``(len(texts), dim)``, unit length."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        cleaned = [nfc(t) for t in texts]
        if self._onnx is not None:
            # sentence-transformers strips inputs before adding the prompt; do the same.
            return self._onnx.encode([self.prompt + t.strip() for t in cleaned], self.batch_size)
        vectors = self.model.encode(
            cleaned,
            prompt=self.prompt,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text occupies with the prompt and special tokens, before truncation."""
        encoded = self.tokenizer(
            [self.prompt + nfc(t) for t in texts],
            add_special_tokens=True,
            truncation=False,
            return_attention_mask=False,
            verbose=False,  # counting long texts is the point; no "longer than max length" warning
        )
        return [len(ids) for ids in encoded["input_ids"]]


def _folder_default_prompt(folder: Path) -> str:
    """The default prompt a sentence-transformers folder declares, read without loading torch."""
    import json

    config = folder / "config_sentence_transformers.json"
    if not config.is_file():
        return ""
    data = json.loads(config.read_text(encoding="utf-8"))
    name = data.get("default_prompt_name")
    return data.get("prompts", {}).get(name, "") if name else ""
