"""Backends and precisions of the bundled model: same vectors as the torch fp32 reference, up to noise."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from polyglot_catalog import encoding
from polyglot_catalog.encoding import Encoder, resolve_precision
from polyglot_catalog.models import onnx_export
from polyglot_catalog.models.registry import bundled_model_dir

PARITY_FILE = Path(__file__).parent / "data" / "parity_sentences.tsv"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    lines = PARITY_FILE.read_text(encoding="utf-8").splitlines()
    return [line.split("\t", 1)[1] for line in lines if line]


@pytest.fixture(scope="module")
def reference(encoder, texts) -> np.ndarray:
    return encoder.encode(texts)


@pytest.mark.slow
def test_onnx_fp32_matches_torch(texts, reference) -> None:
    onnx = Encoder(backend="onnx")
    assert (onnx.dim, onnx.max_seq_length, onnx.prompt) == (384, 512, "query: ")
    cosines = np.sum(onnx.encode(texts) * reference, axis=1)
    assert cosines.min() >= 0.9999


@pytest.mark.slow
def test_onnx_int8_stays_close_to_torch(texts, reference) -> None:
    int8 = Encoder(backend="onnx-int8")
    vectors = int8.encode(texts)
    assert vectors.shape == reference.shape
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(vectors * reference, axis=1)
    assert cosines.mean() >= 0.99 and cosines.min() >= 0.97
    # order is preserved although batches are sorted by length internally: each vector's nearest
    # reference is its own text. (Dynamic int8 quantises activations per batch, so the same text in
    # another batch differs slightly; exact batch invariance holds only for torch and onnx fp32.)
    assert (vectors @ reference.T).argmax(axis=1).tolist() == list(range(len(texts)))


@pytest.mark.slow
def test_export_is_reused_once_complete() -> None:
    folder = bundled_model_dir()
    onnx_export.ensure_onnx(folder)
    assert onnx_export.onnx_ready(folder)
    stamp = (folder / onnx_export.MANIFEST).stat().st_mtime_ns
    onnx_export.ensure_onnx(folder)
    assert (folder / onnx_export.MANIFEST).stat().st_mtime_ns == stamp


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        Encoder(backend="tensorrt")


def test_onnx_backend_needs_a_local_folder() -> None:
    with pytest.raises(ValueError, match="needs a local model folder"):
        Encoder("sentence-transformers/LaBSE", backend="onnx-int8")


# Five product sentences and their translations: line i of every language says the same thing.
TRANSLATED = {
    "en": [
        "The table top is made of solid oak.",
        "Machine washable at 40 degrees, do not bleach.",
        "This backpack has a padded laptop sleeve.",
        "The shelf is 77 cm wide and 147 cm high.",
        "Breathable running shoes with a cushioned sole.",
    ],
    "de": [
        "Die Tischplatte besteht aus massiver Eiche.",
        "Bei 40 Grad maschinenwaschbar, nicht bleichen.",
        "Dieser Rucksack hat ein gepolstertes Laptopfach.",
        "Das Regal ist 77 cm breit und 147 cm hoch.",
        "Atmungsaktive Laufschuhe mit gedämpfter Sohle.",
    ],
    "fr": [
        "Le plateau de la table est en chêne massif.",
        "Lavable en machine à 40 degrés, ne pas javelliser.",
        "Ce sac à dos possède une poche rembourrée pour ordinateur portable.",
        "L'étagère mesure 77 cm de large et 147 cm de haut.",
        "Chaussures de course respirantes avec semelle amortie.",
    ],
    "ja": [
        "天板は無垢のオーク材です。",
        "40度で洗濯機洗いできます。漂白剤は使用しないでください。",
        "このリュックにはクッション付きのノートパソコン収納があります。",
        "棚の幅は77cm、高さは147cmです。",
        "クッション性のあるソールの通気性の良いランニングシューズ。",
    ],
}


@pytest.fixture
def plain_cpu(monkeypatch) -> None:
    """A CPU without native bf16, whatever this machine has."""
    monkeypatch.setattr(encoding, "cpu_bf16", lambda: None)


@pytest.mark.usefixtures("plain_cpu")
@pytest.mark.parametrize(
    ("device", "precision", "backend", "expected"),
    [
        ("cpu", None, "torch", "fp32"),
        (None, None, "torch", "fp32"),
        ("cpu", "auto", "torch", "fp32"),
        ("cuda", None, "torch", "fp16"),
        ("cuda:1", None, "torch", "fp16"),
        ("mps", None, "torch", "fp32"),
        ("cpu", "bf16", "torch", "bf16"),
        ("cuda", "bf16", "torch", "bf16"),
        ("cuda", "fp32", "torch", "fp32"),
        ("cpu", None, "onnx", "fp32"),
        ("cpu", "fp32", "onnx-int8", "fp32"),
    ],
)
def test_resolve_precision(device, precision, backend, expected) -> None:
    assert resolve_precision(device, precision, backend) == expected


@pytest.mark.parametrize(
    ("native", "device", "expected", "why"),
    [
        ("AMX", "cpu", "bf16", "AMX"),
        ("AVX-512 bf16", None, "bf16", "AVX-512 bf16"),
        (None, "cpu", "fp32", "no AMX or AVX-512 bf16"),
        ("AMX", "cuda", "fp16", "CUDA"),
        ("AMX", "mps", "fp32", "mps"),
    ],
)
def test_auto_precision_follows_the_hardware_and_says_why(monkeypatch, native, device, expected, why) -> None:
    monkeypatch.setattr(encoding, "cpu_bf16", lambda: native)
    for asked in ("auto", None):
        precision, reason = encoding.explain_precision(device, asked)
        assert precision == expected
        assert reason.startswith("auto") and why in reason
    assert encoding.explain_precision(device, "fp32") == ("fp32", "asked for")


def test_cpu_bf16_reads_the_cpu_flags_without_torch(monkeypatch, tmp_path) -> None:
    import builtins
    import sys

    real_open = builtins.open
    cpuinfo = tmp_path / "cpuinfo"

    def fake_open(path, *args, **kwargs):
        return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(builtins, "open", fake_open)
    for flags, expected in [
        ("fpu avx512f amx_bf16 amx_tile", "AMX"),
        ("avx512f avx512_bf16", "AVX-512 bf16"),
    ]:
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert encoding.cpu_bf16() == expected
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f\n")
    assert encoding.cpu_bf16() is None


@pytest.mark.parametrize(
    ("device", "precision", "backend", "message"),
    [
        ("cpu", "fp16", "torch", "not for CPU.*use 'bf16'"),
        (None, "fp16", "torch", "not for CPU"),
        ("cpu", "bf16", "onnx", "needs backend='torch'"),
        ("cpu", "fp16", "onnx-int8", "needs backend='torch'"),
        ("cuda", "int8", "torch", r"one of \['auto', 'fp32', 'bf16', 'fp16'\]"),
        ("cpu", "BF16", "torch", "one of"),
    ],
)
def test_resolve_precision_rejects(device, precision, backend, message) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_precision(device, precision, backend)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "cpu", "precision": "fp16"}, "not for CPU"),
        ({"backend": "onnx", "precision": "bf16"}, "needs backend='torch'"),
        ({"threads": 0}, "threads must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"processes": 2, "backend": "onnx"}, "processes needs backend='torch'"),
    ],
)
def test_bad_settings_fail_before_the_model_loads(monkeypatch, kwargs, message) -> None:
    def no_loading(*args, **kw):
        raise AssertionError("the model should not load")

    monkeypatch.setattr(encoding, "load_sentence_transformer", no_loading)
    monkeypatch.setattr(encoding, "_OnnxModel", no_loading)
    with pytest.raises(ValueError, match=message):
        Encoder(**kwargs)


@pytest.mark.parametrize(("device", "batch"), [("cpu", 16), ("cuda", 256), ("cuda:1", 256)])
def test_batch_size_defaults_by_device(monkeypatch, device, batch) -> None:
    """16 on CPU, 256 on CUDA (both measured, see Encoder); an explicit batch size always wins."""
    monkeypatch.setattr(encoding, "load_sentence_transformer", lambda spec, device=None: mock.MagicMock())
    assert Encoder(device=device).batch_size == batch
    assert Encoder(device=device, batch_size=8).batch_size == 8


def _copy_of(encoder: Encoder):
    model = encoder.model  # load the (lazy) session model before the loader is replaced
    return lambda spec, device=None: copy.deepcopy(model)


@pytest.fixture
def reuse_model(monkeypatch, encoder) -> None:
    """Encoders built through the real constructor on a copy of the session model (no 10 s load)."""
    monkeypatch.setattr(encoding, "load_sentence_transformer", _copy_of(encoder))


def test_session_encoder_is_the_fp32_reference(encoder) -> None:
    assert encoder.precision == "fp32"
    assert next(encoder.model.parameters()).dtype == torch.float32


def test_threads_apply_to_torch(reuse_model) -> None:
    before = torch.get_num_threads()
    try:
        lazy = Encoder(threads=1)
        assert not lazy.loaded  # threads apply when the model loads
        lazy.encode(["one"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bf16_vectors(encoder) -> tuple[Encoder, dict[str, np.ndarray]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(encoding, "load_sentence_transformer", _copy_of(encoder))
        bf16 = Encoder(precision="bf16", device="cpu")
        bf16.model  # noqa: B018 - load (a copy of the session model) while the loader is patched
    return bf16, {lang: bf16.encode(texts) for lang, texts in TRANSLATED.items()}


@pytest.mark.slow
def test_bf16_vectors_are_unit_float32_and_close_to_fp32(encoder, bf16_vectors, texts, reference) -> None:
    bf16, _ = bf16_vectors
    assert bf16.precision == "bf16"
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    vectors = bf16.encode(texts)
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert np.sum(vectors * reference, axis=1).min() >= 0.99


@pytest.mark.slow
def test_bf16_keeps_the_nearest_translation(encoder, bf16_vectors) -> None:
    _, bf16 = bf16_vectors
    fp32 = {lang: encoder.encode(texts) for lang, texts in TRANSLATED.items()}
    for lang in ("de", "fr", "ja"):
        nearest = (bf16[lang] @ bf16["en"].T).argmax(axis=1)
        assert nearest.tolist() == (fp32[lang] @ fp32["en"].T).argmax(axis=1).tolist()
        assert nearest.tolist() == list(range(len(TRANSLATED["en"])))


@pytest.mark.slow
def test_pool_matches_one_process_and_stops_on_close(reuse_model, texts, reference) -> None:
    with Encoder(processes=2, threads=1, batch_size=8) as pooled:
        pooled.model  # noqa: B018 - the pool starts with the model
        assert pooled.processes == 2
        pids = [p.pid for p in pooled._pool["processes"]]
        vectors = pooled.encode(texts)
        assert pooled.encode([]).shape == (0, pooled.dim)
    assert pooled.processes == 1
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    assert np.sum(vectors * reference, axis=1).min() >= 0.999
