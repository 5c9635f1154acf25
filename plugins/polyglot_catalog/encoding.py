"""One loaded model per task, called the way its registry entry says, on a chosen backend.

Why a wrapper: every caller (embed stage, matcher, benchmarks) must apply the same Unicode NFC, the
same prompt and the same truncation, or vectors from two runs stop being comparable. The backend
(``torch`` through sentence-transformers, or ONNX Runtime fp32 / dynamic int8 for local folders) is
an execution detail: the same texts give the same vectors up to numerical noise. So is the torch
precision: bf16 (CPUs with AVX-512 bf16 / AMX) or fp16 (CUDA) weights give the fp32 vectors up to
noise, re-normalised in float32 so stored vectors stay unit length whatever ran the model.
"""

from __future__ import annotations

import math
import os
import unicodedata
import weakref
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
PRECISIONS = ("fp32", "bf16", "fp16")
#: Default texts per forward pass by device (see :class:`Encoder`'s ``batch_size``).
CPU_BATCH = 16
CUDA_BATCH = 256


def resolve_precision(device: str | None, precision: str | None, backend: str = "torch") -> str:
    """The weight precision to run with, checked before a model loads so a typo fails fast.

    ``None`` means fp16 on CUDA (tensor cores, no measurable top-1 loss) and fp32 elsewhere: on CPU fp32
    stays the reference and bf16 is an explicit choice. ``device`` is the torch device the model runs
    on (``None`` counts as CPU); ONNX backends run their own fp32/int8 graphs and take no precision.
    """
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)} or None; got {precision!r}")
    if backend != "torch":
        if precision not in (None, "fp32"):
            raise ValueError(
                f"precision {precision!r} needs backend='torch'; the {backend!r} backend runs its own "
                "exported graph (onnx: fp32, onnx-int8: int8 weights)"
            )
        return "fp32"
    device_type = str(device or "cpu").split(":", 1)[0]
    if precision is None:
        return "fp16" if device_type == "cuda" else "fp32"
    if precision == "fp16" and device_type == "cpu":
        raise ValueError(
            "precision 'fp16' is not for CPU: CPU kernels for half floats are slow or missing; "
            "use 'bf16' (fast on CPUs with AVX-512 bf16 / AMX) or 'fp32'"
        )
    return precision


def _positive(value: int | None, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None; got {value!r}")
    return value


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Float32 and unit length: bf16/fp16 outputs are normalised in low precision (norms off by ~1e-3)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


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
        texts pads little. ``None`` picks by device: 16 on CPU, measured fastest for catalog
        descriptions (bench_throughput.py: 1.2x batch 32 in fp32 and bf16, 1.8x+ batch 64; a batch
        pads to its longest text and attention grows with the square of that); 256 on CUDA, where a
        small batch leaves the GPU idle between launches (bench_gpu.py on an H100: fp16 batch 256
        3.3x batch 16, and fp16's gain over fp32 grows from 1.04x at 16 to 1.59x at 256).
    :param backend: ``torch`` (reference, sentence-transformers), ``onnx`` (ONNX Runtime fp32) or
        ``onnx-int8`` (dynamic int8 weights; fastest on CPU). ONNX files are exported once, offline,
        next to a local model folder.
    :param threads: intra-op threads. ONNX: for this session. torch: ``torch.set_num_threads``, which is
        process-wide (every torch model in the process uses it from then on). With ``processes``: threads
        per worker. ``None`` keeps the library default (torch: one per CPU; ONNX: the CPUs we may run on).
    :param precision: torch weights: ``fp32``, ``bf16`` or ``fp16`` (CUDA only). ``None`` means fp16 on
        CUDA, fp32 elsewhere; see :func:`resolve_precision`. Vectors are float32 whatever the precision.
    :param processes: encode with this many CPU worker processes (sentence-transformers' multi-process
        pool; torch backend). ``None`` or 1: encode in this process. Call :meth:`close` (or use the
        encoder as a context manager) to stop the workers.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str | None = None,
        batch_size: int | None = None,
        backend: str = "torch",
        threads: int | None = None,
        precision: str | None = None,
        processes: int | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}; got {backend!r}")
        _positive(threads, "threads")
        _positive(processes, "processes")
        workers = processes or 1
        if workers > 1 and backend != "torch":
            raise ValueError(f"processes needs backend='torch'; got backend={backend!r}")
        _positive(batch_size, "batch_size")
        self.spec = resolve_model(model)
        self.batch_size = batch_size or CPU_BATCH
        self.backend = backend
        self.threads = threads
        self._onnx: _OnnxModel | None = None
        self._pool: dict[str, Any] | None = None
        self.model: Any = None
        if backend == "torch":
            from sentence_transformers.util import get_device_name

            # Resolved against the device sentence-transformers will pick, before the model loads.
            device_type = str(device or get_device_name()).split(":", 1)[0]
            self.precision = resolve_precision(device_type, precision, backend)
            if batch_size is None and device_type == "cuda":
                self.batch_size = CUDA_BATCH
            if workers > 1 and device_type != "cpu":
                raise ValueError("processes is for CPU encoding; on an accelerator use one process")
            if threads is not None and workers == 1:
                import torch

                torch.set_num_threads(threads)
            self.model = load_sentence_transformer(self.spec, device=device)
            self.tokenizer = self.model.tokenizer
            self._cast(self.precision)
            if workers > 1:
                self._start_pool(workers, threads)
        else:
            self.precision = resolve_precision("cpu", precision, backend)
            folder = ensure_bundled_model() if self.spec.bundled else Path(self.spec.source)
            if not folder.is_dir():
                raise ValueError(
                    f"backend {backend!r} needs a local model folder; {self.spec.name!r} is a hub id "
                    "(download it to a folder first, or use backend='torch')"
                )
            self._onnx = _OnnxModel(folder, quantized=backend == "onnx-int8", threads=threads)
            self.tokenizer = self._onnx.tokenizer
            self._folder_prompt = _folder_default_prompt(folder)

    def _cast(self, precision: str) -> None:
        import torch

        if precision == "bf16":
            self.model.to(torch.bfloat16)
        elif precision == "fp16":
            self.model.half()

    def _start_pool(self, processes: int, threads: int | None) -> None:
        """Spawn CPU workers; each gets ``threads`` (default: our CPUs split evenly) through the
        environment, since a spawned torch reads OMP_NUM_THREADS when it starts."""
        per_worker = threads or max(1, len(os.sched_getaffinity(0)) // processes)
        saved = {key: os.environ.get(key) for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        os.environ.update(dict.fromkeys(saved, str(per_worker)))
        try:
            self._pool = self.model.start_multi_process_pool(["cpu"] * processes)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        # Workers are daemons, but a long-lived process that drops the encoder should not keep them.
        self._finalizer = weakref.finalize(self, type(self.model).stop_multi_process_pool, self._pool)

    @property
    def processes(self) -> int:
        """Worker processes encoding (1: this process)."""
        return len(self._pool["processes"]) if self._pool is not None else 1

    def close(self) -> None:
        """Stop the worker processes, if any; the encoder then encodes in this process."""
        if self._pool is not None:
            self._finalizer()
            self._pool = None

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        if self._pool is not None:
            return self._encode_pool(cleaned)
        if self.precision != "fp32":
            return _unit(self._st_encode(cleaned, normalize=False))
        return np.asarray(self._st_encode(cleaned, normalize=True), dtype=np.float32)

    def _st_encode(self, texts: list[str], *, normalize: bool, **kwargs: Any) -> np.ndarray:
        return self.model.encode(
            texts,
            prompt=self.prompt,
            batch_size=self.batch_size,
            normalize_embeddings=normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
            **kwargs,
        )

    def _encode_pool(self, texts: list[str]) -> np.ndarray:
        """Longest texts first, in chunks of whole batches (at least ~4 per worker): workers take chunks
        as they free up, so the load balances and each chunk pads as little as one process would."""
        order = np.argsort([-len(t) for t in texts], kind="stable")
        per_chunk = math.ceil(len(texts) / (4 * self.processes) / self.batch_size) * self.batch_size
        vectors = self._st_encode(
            [texts[i] for i in order],
            normalize=self.precision == "fp32",
            pool=self._pool,
            chunk_size=max(self.batch_size, per_chunk),
        )
        out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
        out[order] = vectors
        return out if self.precision == "fp32" else _unit(out)

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
