"""One loaded model per task, called the way its registry entry says, on a chosen backend.

Why a wrapper: every caller (embed stage, matcher, benchmarks) must apply the same Unicode NFC, the
same prompt and the same truncation, or vectors from two runs stop being comparable. The backend
(``torch`` through sentence-transformers, or ONNX Runtime fp32 / dynamic int8 for local folders) is
an execution detail: the same texts give the same vectors up to numerical noise. So is the torch
precision: bf16 (CPUs with AVX-512 bf16 / AMX) or fp16 (CUDA) weights give the fp32 vectors up to
noise, re-normalised in float32 so stored vectors stay unit length whatever ran the model.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import unicodedata
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polyglot_catalog.late_map import LateMap, late_map_for
from polyglot_catalog.models.registry import (
    DEFAULT_MODEL,
    ModelNotAvailableError,
    ensure_bundled_model,
    load_sentence_transformer,
    model_fingerprint,
    model_folder,
    resolve_model,
)

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Default texts per forward pass by device (see :class:`Encoder`'s ``batch_size``).
CPU_BATCH = 16
#: Late chunking's recipe (see :meth:`Encoder.encode_with_sentences`). Why not the last layer's plain
#: span means: in one pass over the description every token attends to all of it, so the last layer's
#: spans all lean towards the description's own vector and tell its sentences apart poorly. Two
#: layers below the top the tokens are less mixed, and taking half the description's mean token off
#: each span removes most of what they still share. On the dev catalog's first 1,000 products x 3
#: (fp32), matcher top-1 / label-free F1: last layer, whole mean off 0.866 / 0.939; layer 10 of 12,
#: half off 0.874 / 0.949; sentences encoded alone 0.881 / 0.950; whole dev catalog 0.783 / 0.873,
#: 0.786 / 0.876 and 0.793 / 0.888 (bench/RESULTS.md, "Late chunking: which layer"). The model's
#: late map (:mod:`.late_map`) then brings these rows into the separate sentences' space.
LATE_LAYER_FROM_TOP = 2
LATE_CONTEXT_WEIGHT = 0.5
#: The recipe's name, which names the sentence cache its vectors fill (``sentences.LATE_SUFFIX``):
#: vectors of another recipe are another kind and never share a cache with these.
LATE_RECIPE = f"top{LATE_LAYER_FROM_TOP}ctx{round(LATE_CONTEXT_WEIGHT * 100)}"
CUDA_BATCH = 256


def cpu_bf16() -> str | None:
    """Why bf16 is fast on this CPU ("AMX", "AVX-512 bf16"), or None when it has neither.

    Read from torch's cpuinfo when torch is loaded, else from /proc/cpuinfo (Linux), so asking costs
    no torch import. Without native bf16 instructions torch emulates it and bf16 is slower than fp32.
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "cpu") and hasattr(torch.cpu, "_is_amx_tile_supported"):
        if torch.cpu._is_amx_tile_supported():
            return "AMX"
        return "AVX-512 bf16" if torch.cpu._is_avx512_bf16_supported() else None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
    except OSError:
        return None
    if "amx_bf16" in flags:
        return "AMX"
    return "AVX-512 bf16" if "avx512_bf16" in flags else None


def explain_precision(device: str | None, precision: str | None, backend: str = "torch") -> tuple[str, str]:
    """The weight precision to run with and why, checked before a model loads so a typo fails fast.

    ``auto`` (and ``None``) picks the fastest precision that keeps the vectors: fp16 on CUDA (tensor
    cores), bf16 on CPUs with AMX or AVX-512 bf16 (bundled model: 2.7x fp32 with AMX, 1.6-1.8x with
    AVX-512 bf16 alone, min cosine to the fp32 vector 0.998, same top-1: bench/RESULTS.md), fp32
    elsewhere (emulated bf16 is slower than fp32). ``device`` is the torch device the model runs on
    (``None`` counts as CPU); ONNX backends run their own fp32/int8 graphs and take no precision.
    """
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)} or None; got {precision!r}")
    if backend != "torch":
        if precision not in (None, "auto", "fp32"):
            raise ValueError(
                f"precision {precision!r} needs backend='torch'; the {backend!r} backend runs its own "
                "exported graph (onnx: fp32, onnx-int8: int8 weights)"
            )
        return "fp32", f"the {backend} backend runs its own graph"
    device_type = str(device or "cpu").split(":", 1)[0]
    if precision in (None, "auto"):
        if device_type == "cuda":
            return "fp16", "auto: CUDA device (tensor cores)"
        if device_type == "cpu":
            native = cpu_bf16()
            if native:
                return "bf16", f"auto: the CPU has {native} (native bf16 matrix maths)"
            return "fp32", "auto: the CPU has no AMX or AVX-512 bf16 (bf16 would be emulated, slower)"
        return "fp32", f"auto: {device_type} device"
    if precision == "fp16" and device_type == "cpu":
        raise ValueError(
            "precision 'fp16' is not for CPU: CPU kernels for half floats are slow or missing; "
            "use 'bf16' (fast on CPUs with AVX-512 bf16 / AMX) or 'fp32'"
        )
    return precision, "asked for"


def resolve_precision(device: str | None, precision: str | None, backend: str = "torch") -> str:
    """The weight precision to run with (see :func:`explain_precision` for the rule)."""
    return explain_precision(device, precision, backend)[0]


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
    """Encode texts into L2-normalised float32 vectors with one model, loaded once, and only when needed.

    Why lazy: an unchanged re-run encodes nothing, and loading the model (10-15 s) was most of its
    time. Name, size, token budget, prompt, tokenizer and fingerprint are read from the model's folder
    without loading the weights; the first :meth:`encode` loads them, once for the encoder's life.

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
    :param precision: torch weights: ``auto`` (the default), ``fp32``, ``bf16`` or ``fp16`` (CUDA only).
        ``auto`` (or ``None``) means fp16 on CUDA, bf16 on CPUs with AMX / AVX-512 bf16, fp32 elsewhere;
        see :func:`explain_precision`. Vectors are float32 and unit length whatever the precision.
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
        precision: str | None = "auto",
        processes: int | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}; got {backend!r}")
        _positive(threads, "threads")
        _positive(processes, "processes")
        self._workers = processes or 1
        if self._workers > 1 and backend != "torch":
            raise ValueError(f"processes needs backend='torch'; got backend={backend!r}")
        _positive(batch_size, "batch_size")
        # Checked now against the device asked for (CPU when unset), again at load against the real one.
        explain_precision(device, precision, backend)
        if self._workers > 1 and device is not None and not str(device).startswith("cpu"):
            raise ValueError("processes is for CPU encoding; on an accelerator use one process")
        self.spec = resolve_model(model)
        if backend != "torch" and not self.spec.bundled and not Path(self.spec.source).is_dir():
            raise ValueError(
                f"backend {backend!r} needs a local model folder; {self.spec.name!r} is a hub id "
                "(download it to a folder first, or use backend='torch')"
            )
        self.backend = backend
        self.threads = threads
        self._device = device
        self._precision_asked = precision
        self._batch_size = batch_size
        self._onnx: _OnnxModel | None = None
        self._pool: dict[str, Any] | None = None
        self._model: Any = None
        self._fingerprint: str | None = None
        self._precision: tuple[str, str] | None = None
        if device is not None or backend != "torch":
            self._precision = explain_precision(device, precision, backend)

    # -- what is known without loading the model ---------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (the first :meth:`encode` loads them)."""
        return self._model is not None or self._onnx is not None

    @property
    def device_type(self) -> str:
        """``cpu``, ``cuda``...: the device asked for, else the one sentence-transformers picks."""
        if self._device is not None:
            return str(self._device).split(":", 1)[0]
        if self.backend != "torch":
            return "cpu"
        from sentence_transformers.util import get_device_name

        return str(get_device_name()).split(":", 1)[0]

    @property
    def precision(self) -> str:
        """The weight precision the model runs (or will run) in."""
        return self._explained()[0]

    @property
    def precision_reason(self) -> str:
        """Why that precision: ``auto`` and what the hardware has, or "asked for"."""
        return self._explained()[1]

    def _explained(self) -> tuple[str, str]:
        if self._precision is None:
            self._precision = explain_precision(self.device_type, self._precision_asked, self.backend)
        return self._precision

    @property
    def batch_size(self) -> int:
        if self._batch_size is not None:
            return self._batch_size
        return CUDA_BATCH if self.backend == "torch" and self.device_type == "cuda" else CPU_BATCH

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._batch_size = _positive(value, "batch_size")

    @property
    def model_name(self) -> str:
        return self.spec.name

    def _folder(self) -> Path | None:
        return model_folder(self.spec)

    @property
    def fingerprint(self) -> str:
        """Digest of the model's files and prompt (:func:`.models.registry.model_fingerprint`): what
        tells two models under one name apart. A hub model not downloaded yet is loaded first."""
        if self._fingerprint is None:
            try:
                self._fingerprint = model_fingerprint(self.spec)
            except ModelNotAvailableError:
                self._load()
                self._fingerprint = model_fingerprint(self.spec)
        return self._fingerprint

    @property
    def dim(self) -> int:
        if self._onnx is not None:
            return self._onnx.dim
        if self._model is None:
            folder = self._folder()
            dim = _folder_dim(folder) if folder is not None else None
            if dim is not None:
                return dim
        return int(self.model.get_embedding_dimension())

    @property
    def max_seq_length(self) -> int:
        if self._onnx is not None:
            return self._onnx.max_seq_length
        if self._model is None:
            folder = self._folder()
            found = _folder_max_seq_length(folder) if folder is not None else None
            if found is not None:
                return min(found, self.spec.max_seq_length or found)
        return int(self.model.max_seq_length)

    @property
    def prompt(self) -> str:
        """The text prepended to every input (the registry's, else the folder's default prompt)."""
        if self.spec.prompt is not None:
            return self.spec.prompt
        if self._model is not None:
            default = self._model.default_prompt_name
            return self._model.prompts.get(default, "") if default else ""
        folder = self._folder()
        if folder is None:  # a hub model not downloaded yet: its folder comes with the load
            self._load()
            return self.prompt
        return _folder_default_prompt(folder)

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer. Loads the model: tokens are counted only for texts about to be
        encoded (unchanged rows are skipped on their hash first), so loading the tokenizer alone
        would only parse it twice."""
        if self._onnx is not None:
            return self._onnx.tokenizer
        return self.model.tokenizer

    # -- loading -----------------------------------------------------------------------------------

    @property
    def model(self) -> Any:
        """The sentence-transformers model (torch backend), loaded on first use."""
        if self.backend != "torch":
            raise AttributeError(f"the {self.backend!r} backend has no sentence-transformers model")
        self._load()
        return self._model

    def _load(self) -> None:
        if self.loaded:
            return
        started = time.perf_counter()
        if self.backend == "torch":
            precision, why = self._explained()
            if self._workers > 1 and self.device_type != "cpu":
                raise ValueError("processes is for CPU encoding; on an accelerator use one process")
            if self.threads is not None and self._workers == 1:
                import torch

                torch.set_num_threads(self.threads)
            with _quiet_loading():
                self._model = load_sentence_transformer(self.spec, device=self._device)
            self._cast(precision)
            if self._workers > 1:
                self._start_pool(self._workers, self.threads)
        else:
            folder = ensure_bundled_model() if self.spec.bundled else Path(self.spec.source)
            if not folder.is_dir():
                raise ValueError(
                    f"backend {self.backend!r} needs a local model folder; {self.spec.name!r} is a hub "
                    "id (download it to a folder first, or use backend='torch')"
                )
            self._onnx = _OnnxModel(folder, quantized=self.backend == "onnx-int8", threads=self.threads)
            precision, why = self._explained()
        log.info(
            "loaded model %s (%s, %s: %s) in %.1f s",
            self.spec.name,
            self.backend,
            precision,
            why,
            time.perf_counter() - started,
        )

    def _cast(self, precision: str) -> None:
        import torch

        if precision == "bf16":
            self._model.to(torch.bfloat16)
        elif precision == "fp16":
            self._model.half()

    def _start_pool(self, processes: int, threads: int | None) -> None:
        """Spawn CPU workers; each gets ``threads`` (default: our CPUs split evenly) through the
        environment, since a spawned torch reads OMP_NUM_THREADS when it starts."""
        per_worker = threads or max(1, len(os.sched_getaffinity(0)) // processes)
        saved = {key: os.environ.get(key) for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        os.environ.update(dict.fromkeys(saved, str(per_worker)))
        try:
            self._pool = self._model.start_multi_process_pool(["cpu"] * processes)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        # Workers are daemons, but a long-lived process that drops the encoder should not keep them.
        self._finalizer = weakref.finalize(self, type(self._model).stop_multi_process_pool, self._pool)

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

    # -- encoding ----------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts`` in order, shape ``(len(texts), dim)``, unit length."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._load()
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
        return self._model.encode(
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

    @property
    def late_chunking(self) -> bool:
        """Whether :meth:`encode_with_sentences` pools sentences from the text's own forward pass: torch
        backend, one process, and a model whose pooling is a plain mean over tokens (e5, MiniLM...);
        otherwise (CLS pooling as in LaBSE, ONNX graphs that output pooled vectors) sentences are
        encoded as texts of their own."""
        if self.backend != "torch" or self._workers > 1:
            return False
        folder = self._folder()
        if self._model is None and folder is not None:
            return _folder_pooling(folder) == ("mean", True)
        pooling = _pooling_module(self.model)
        return pooling is not None and pooling.pooling_mode in ("mean", ("mean",)) and pooling.include_prompt

    def encode_with_sentences(
        self, texts: Sequence[str], sentences: Sequence[Sequence[str]]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Vectors of ``texts`` and of each text's ``sentences`` (substrings of it, in order), from one
        forward pass per text (late chunking).

        A sentence's vector is the mean of its token span's hidden states ``LATE_LAYER_FROM_TOP``
        layers below the model's last, in the pass over the whole text, less ``LATE_CONTEXT_WEIGHT``
        times the text's mean token at that layer (the context every span shares), then, where the
        model ships one, through its fixed linear map into the space of sentences encoded alone
        (:mod:`.late_map`), normalised: no second encode. Every sentence, a text's only one included,
        is made this way, so all sentence vectors of one cache share one space.
        Rule for text beyond the model's max length (the embed stage cuts texts to it first, so only
        direct callers meet it): the text's vector is that of its first ``max_seq_length`` tokens, as
        :meth:`encode` gives, and a sentence whose span the window does not reach, or that cannot be
        located in the text, gets a pass of its own with the same recipe (counted in ``separately``);
        nothing is dropped. Models without mean pooling encode every sentence separately (see
        :attr:`late_chunking`).

        Returns:
            ``(vectors, per_text)``: ``vectors[i]`` is text i's (same as ``encode``, up to noise), and
            ``per_text[i]`` has one unit float32 row per sentence of ``sentences[i]``.
        """
        if len(texts) != len(sentences):
            raise ValueError(f"{len(texts)} texts but {len(sentences)} sentence lists")
        if not self.late_chunking:
            return self.encode(texts), self._separately(sentences)
        vectors, per_text, own = self.late_rows(texts, sentences)
        found = self.late_map
        if found is not None:  # rows encoded as texts of their own are in the target space already
            per_text = [
                np.where(alone[:, None], rows, found.apply(rows)) if len(rows) else rows
                for rows, alone in zip(per_text, own, strict=True)
            ]
        return vectors, [_unit(v) if len(v) else v for v in per_text]

    @property
    def late_map(self) -> LateMap | None:
        """The shipped map from this model's late rows to its own sentence vectors (:mod:`.late_map`),
        None for a model without one (its late rows are used as they are)."""
        return late_map_for(self.fingerprint) if self.late_chunking else None

    def late_rows(
        self, texts: Sequence[str], sentences: Sequence[Sequence[str]]
    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """The texts' unit vectors and their sentences' late rows before any map or normalisation
        (what :mod:`.late_map` is fitted on), with a mask per text of the rows that are a sentence
        encoded as a text of its own (no token of its own pass: not met in practice)."""
        vectors, per_text, missing = self._late_pass(texts, sentences)
        own = [np.zeros(len(s), dtype=bool) for s in sentences]
        self.separately = len(missing)
        if missing:
            alone = [sentences[i][j] for i, j in missing]
            _, rows, still = self._late_pass(alone, [[t] for t in alone])
            made = self.encode([alone[k] for k, _ in still]) if still else None
            for k, (i, j) in enumerate(missing):
                per_text[i][j] = rows[k][0]
            for row, (k, _) in enumerate(still):
                i, j = missing[k]
                per_text[i][j] = made[row]
                own[i][j] = True
        return _unit(vectors), per_text, own

    def _late_pass(
        self, texts: Sequence[str], sentences: Sequence[Sequence[str]]
    ) -> tuple[np.ndarray, list[np.ndarray], list[tuple[int, int]]]:
        """One forward pass per text: its pooled vector, its sentences' late-chunked rows (not yet
        normalised) and the ``(text, sentence)`` positions no token of the pass covers."""
        self._load()
        import torch

        dim = self.dim
        vectors = np.zeros((len(texts), dim), dtype=np.float32)
        per_text = [np.zeros((len(s), dim), dtype=np.float32) for s in sentences]
        missing: list[tuple[int, int]] = []
        prompt = self.prompt
        full = [prompt + nfc(t).strip() for t in texts]
        order = np.argsort([-len(t) for t in full], kind="stable")
        device = self._model.device
        transformer = self._model[0].model
        depth = int(getattr(transformer.config, "num_hidden_layers", LATE_LAYER_FROM_TOP + 1))
        layer = max(1, depth - LATE_LAYER_FROM_TOP)  # index into the hidden states (0 = embeddings)
        transformer.config.output_hidden_states = True  # this pass only: encode() need not keep them
        try:
            for start in range(0, len(full), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [full[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_seq_length,
                    return_offsets_mapping=True,
                    return_tensors="pt",
                )
                offsets = enc.pop("offset_mapping").numpy()
                features = {k: v.to(device) for k, v in enc.items()}
                with torch.inference_mode():
                    out = self._model(features)
                tokens = out["all_layer_embeddings"][layer].float().cpu().numpy()
                vectors[idx] = out["sentence_embedding"].float().cpu().numpy()
                mask = enc["attention_mask"].numpy().astype(bool)
                # the description's mean token: what every span of it shares through attention
                weights = mask & (offsets[:, :, 1] > offsets[:, :, 0])
                context = (tokens * weights[..., None]).sum(axis=1) / np.maximum(weights.sum(axis=1), 1)[
                    :, None
                ]
                context *= LATE_CONTEXT_WEIGHT
                for row, i in enumerate(idx):
                    spans = _sentence_spans(full[i], [nfc(s).strip() for s in sentences[i]], len(prompt))
                    starts, ends = offsets[row, :, 0], offsets[row, :, 1]
                    real = mask[row] & (ends > starts)  # special and padding tokens have empty offsets
                    for j, span in enumerate(spans):
                        take = real & (starts < span[1]) & (ends > span[0]) if span else None
                        if take is None or not take.any():
                            missing.append((int(i), j))
                            continue
                        per_text[i][j] = tokens[row, take].mean(axis=0) - context[row]
        finally:
            transformer.config.output_hidden_states = False
        return vectors, per_text, missing

    separately: int = 0  # sentences the last encode_with_sentences call had to encode on their own

    def _separately(self, sentences: Sequence[Sequence[str]]) -> list[np.ndarray]:
        flat = [s for sents in sentences for s in sents]
        made = self.encode(flat) if flat else np.zeros((0, self.dim), dtype=np.float32)
        self.separately = len(flat)
        out, at = [], 0
        for sents in sentences:
            out.append(made[at : at + len(sents)])
            at += len(sents)
        return out

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


def _sentence_spans(full: str, sentences: list[str], skip: int) -> list[tuple[int, int] | None]:
    """Character span of each sentence in ``full`` (searched in order from ``skip``), None if absent."""
    spans: list[tuple[int, int] | None] = []
    cursor = skip
    for s in sentences:
        at = full.find(s, cursor) if s else -1
        if at < 0:
            at = full.find(s, skip) if s else -1  # out of order (a caller's own split): any place
        if at < 0:
            spans.append(None)
            continue
        spans.append((at, at + len(s)))
        cursor = max(cursor, at + len(s))
    return spans


def _pooling_module(model: Any) -> Any:
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    return next((m for m in model if isinstance(m, Pooling)), None)


def _read_json(path: Path) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _modules(folder: Path) -> list[dict[str, Any]]:
    import json

    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return modules if isinstance(modules, list) else []


def _folder_pooling(folder: Path) -> tuple[str, bool] | None:
    """(pooling mode, include_prompt) from a sentence-transformers folder's Pooling config."""
    for module in _modules(folder):
        if str(module.get("type", "")).endswith("Pooling"):
            config = _read_json(folder / module.get("path", "") / "config.json") or {}
            modes = config.get("pooling_mode")
            if modes is None:
                modes = [
                    k.removeprefix("pooling_mode_")
                    for k, v in config.items()
                    if k.startswith("pooling_mode_") and v
                ]
                modes = [
                    {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}.get(m, m) for m in modes
                ]
            if isinstance(modes, str):
                modes = [modes]
            mode = modes[0] if len(modes) == 1 else "+".join(modes)
            return mode, bool(config.get("include_prompt", True))
    return None


def _folder_dim(folder: Path) -> int | None:
    """Output size from the folder's module configs (last Dense, else Pooling); None when unsure."""
    dim = None
    for module in _modules(folder):
        kind = str(module.get("type", ""))
        config = _read_json(folder / module.get("path", "") / "config.json") or {}
        if kind.endswith("Pooling"):
            pooling = _folder_pooling(folder)
            width = config.get("word_embedding_dimension", config.get("embedding_dimension"))
            if pooling is None or not isinstance(width, int):
                return None
            dim = width * len(pooling[0].split("+"))
        elif kind.endswith("Dense"):
            out = config.get("out_features")
            if not isinstance(out, int):
                return None
            dim = out
        elif not kind.endswith(("Transformer", "Normalize")):
            return None  # a module whose output size we cannot read: ask the loaded model
    return dim


def _folder_max_seq_length(folder: Path) -> int | None:
    config = _read_json(folder / "sentence_bert_config.json") or {}
    value = config.get("max_seq_length")
    return value if isinstance(value, int) and value > 0 else None


def _no_prompt_notice(record: logging.LogRecord) -> bool:
    """Drop sentence-transformers' "Default prompt name is set" warning: we pass the prompt ourselves."""
    return "Default prompt name is set" not in record.getMessage()


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading weights" progress bar while the model loads: in a task log it is noise, written to
    stderr (which Airflow logs at error level) once per refresh."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hub_was_off = hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    st_log = logging.getLogger("sentence_transformers")
    st_log.addFilter(_no_prompt_notice)
    try:
        yield
    finally:
        st_log.removeFilter(_no_prompt_notice)
        if bar_was_on:
            hf_logging.enable_progress_bar()
        if not hub_was_off:
            hub_utils.enable_progress_bars()


def _folder_default_prompt(folder: Path) -> str:
    """The default prompt a sentence-transformers folder declares, read without loading torch."""
    import json

    config = folder / "config_sentence_transformers.json"
    if not config.is_file():
        return ""
    data = json.loads(config.read_text(encoding="utf-8"))
    name = data.get("default_prompt_name")
    return data.get("prompts", {}).get(name, "") if name else ""
