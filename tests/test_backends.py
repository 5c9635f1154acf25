"""ONNX Runtime backends of the bundled model: same vectors as the torch reference, exported once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polyglot_catalog.encoding import Encoder
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
