"""polyglot_catalog.tuning: training pairs, group split, versioned registered folders, a tiny real run."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polyglot_catalog.models import registry
from polyglot_catalog.tuning.output import CARD_FILE, META_FILE, content_hash, save_version
from polyglot_catalog.tuning.pairs import CatalogTexts, link_pairs, load_optional_labels, split_by_group

# Twelve products in three regions; DE texts are plain translations. Product 11's DE text repeats
# product 10's (generic copy shared by two products), as real catalogs do.
PRODUCTS = [
    ("lamp", "Lampe", "lampe"),
    ("red chair", "roter Stuhl", "chaise rouge"),
    ("blue chair", "blauer Stuhl", "chaise bleue"),
    ("oak table", "Eichentisch", "table en chene"),
    ("pine table", "Kieferntisch", "table en pin"),
    ("sofa bed", "Schlafsofa", "canape lit"),
    ("wall shelf", "Wandregal", "etagere murale"),
    ("desk lamp", "Schreibtischlampe", "lampe de bureau"),
    ("rug", "Teppich", "tapis"),
    ("mirror", "Spiegel", "miroir"),
    ("towel white", "Handtuch", "serviette blanche"),
    ("towel grey", "Handtuch", "serviette grise"),
]


def _catalog_frame() -> tuple[pd.DataFrame, dict[tuple[str, str], str]]:
    rows, labels = [], {}
    for i, texts in enumerate(PRODUCTS):
        for region, text in zip(("US", "DE", "FR"), texts, strict=True):
            rows.append({"region": region, "sku": f"{region.lower()}-{i}", "text": text, "gtin": None})
            labels[(region, f"{region.lower()}-{i}")] = f"p{i}"
    return pd.DataFrame(rows), labels


def test_pairs_come_from_every_source_and_merge_into_one_group_per_product():
    df, labels = _catalog_frame()
    df.loc[(df["region"] == "FR") & (df["sku"] == "fr-0"), "gtin"] = "4006381333931"
    df.loc[(df["region"] == "US") & (df["sku"] == "us-0"), "gtin"] = "4006381333931"
    only_labels = {k: v for k, v in labels.items() if k[1] not in ("fr-0", "fr-1")}
    reviewed = {("US", "us-1"): "r1", ("FR", "fr-1"): "r1", ("US", "nope"): "r1"}  # unknown SKU ignored
    pairs = link_pairs(CatalogTexts.from_frame(df), only_labels, reviewed, use_gtin=True)

    got = {(a, b): s for a, b, s in zip(pairs["sku_a"], pairs["sku_b"], pairs["source"], strict=True)}
    assert got[("fr-0", "us-0")] == "gtin"
    assert got[("fr-1", "us-1")] == "reviewed"
    assert got[("de-2", "us-2")] == "labels"
    # product 0: the GTIN link and the label link are one component, so the split keeps it whole
    comp = pairs[pairs["sku_a"].isin(["de-0", "fr-0"]) | pairs["sku_b"].isin(["us-0"])]["component"]
    assert comp.nunique() == 1
    assert (pairs["region_a"] != pairs["region_b"]).all()


def test_pairs_with_identical_texts_are_left_out():
    df = pd.DataFrame(
        {"region": ["US", "DE"], "sku": ["a", "b"], "text": ["same copy", "same copy"], "gtin": [None, None]}
    )
    assert link_pairs(CatalogTexts.from_frame(df), {("US", "a"): "g", ("DE", "b"): "g"}).empty


def test_split_never_puts_a_product_group_on_both_sides_and_is_stable():
    df, labels = _catalog_frame()
    pairs = link_pairs(CatalogTexts.from_frame(df), labels)
    val = split_by_group(pairs["component"], 0.4, seed=1)
    assert 0 < val.sum() < len(pairs)
    assert not set(pairs["component"][val]) & set(pairs["component"][~val])
    shuffled = pairs.sample(frac=1.0, random_state=3)
    again = split_by_group(shuffled["component"], 0.4, seed=1)
    assert dict(zip(shuffled["component"], again, strict=True)) == dict(
        zip(pairs["component"], val, strict=True)
    )
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_group(pairs["component"], 1.0)


def test_labels_like_files_fail_naming_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"reviewed decisions file .*missing.parquet.* does not exist"):
        load_optional_labels(tmp_path / "missing.parquet", "reviewed decisions")
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"region": ["US"], "sku": ["a"]}).to_parquet(bad)
    with pytest.raises(ValueError, match=r"labels file .*bad.parquet.*group_id"):
        load_optional_labels(bad, "labels")


class _FakeModel:
    """Stands in for a SentenceTransformer in save_version: writes a weights file."""

    def __init__(self, weights: bytes) -> None:
        self.weights = weights

    def save(self, folder: str) -> None:
        from pathlib import Path

        Path(folder).mkdir(parents=True)
        (Path(folder) / "model.safetensors").write_bytes(self.weights)


def test_versions_count_up_and_the_hash_covers_weights_not_the_card(tmp_path):
    meta = {"base_model": "multilingual-e5-small", "pairs": {"train": {"by_source": {"labels": 3}}}}
    v1 = save_version(_FakeModel(b"w1"), tmp_path, "shop", meta)
    v2 = save_version(_FakeModel(b"w2"), tmp_path, "shop", meta)
    assert (v1.name, v2.name) == ("v1", "v2")
    m1 = json.loads((v1 / META_FILE).read_text())
    assert m1["model"] == "shop@v1" and m1["content_hash"] == content_hash(v1)
    assert m1["content_hash"] != json.loads((v2 / META_FILE).read_text())["content_hash"]
    (v1 / CARD_FILE).write_text("edited card")
    assert content_hash(v1) == m1["content_hash"]
    assert "| labels | 3 |" in (v2 / CARD_FILE).read_text()
    with pytest.raises(ValueError, match="name"):
        save_version(_FakeModel(b"x"), tmp_path, "bad/name", meta)


def test_registered_names_resolve_to_pinned_versions(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    folders = [save_version(_FakeModel(w), tmp_path / "out", "shop", {}) for w in (b"a", b"b")]
    for version, folder in enumerate(folders, start=1):
        assert registry.register_tuned("shop", version, folder) == f"shop@v{version}"

    latest = registry.resolve_model("shop")
    assert (latest.name, latest.source) == ("shop@v2", str(folders[1].resolve()))
    assert registry.resolve_model("shop@v1").source == str(folders[0].resolve())
    assert registry.resolve_model(str(folders[0])).name == "shop@v1"  # the folder itself
    with pytest.raises(registry.ModelNotAvailableError, match="no version 7"):
        registry.resolve_model("shop@v7")
    assert registry.resolve_model(registry.DEFAULT_MODEL).bundled  # the default is untouched
    # embed, reconcile and match name the vectors alike however the tuned model is spelled
    assert registry.pinned_name("shop") == registry.pinned_name(str(folders[1])) == "shop@v2"
    assert registry.pinned_name(registry.DEFAULT_MODEL) == registry.DEFAULT_MODEL
    with pytest.raises(ValueError, match="taken"):
        registry.register_tuned(registry.DEFAULT_MODEL, 1, folders[0])


# --- a real (tiny) training run -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 2-layer, 32-dim sentence-transformers model over a word vocabulary of the test texts:
    real SentenceTransformerTrainer steps in well under a second each."""
    pytest.importorskip("datasets")
    pytest.importorskip("accelerate")
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = sorted({w for texts in PRODUCTS for t in texts for w in t.split()} | {"query:"})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    base = tmp_path_factory.mktemp("tiny") / "hf"
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(base)
    fast.save_pretrained(base)
    st = SentenceTransformer(
        modules=[
            models.Transformer(str(base), max_seq_length=32),
            models.Pooling(32, "mean"),
            models.Normalize(),
        ],
        prompts={"query": "query: "},
        default_prompt_name="query",
    )
    folder = base.parent / "st"
    st.save(str(folder))
    return folder


def _write_catalog(tmp_path) -> tuple[str, str]:
    df, labels = _catalog_frame()
    src = tmp_path / "catalog.parquet"
    pq.write_table(pa.table({"sku": df["sku"], "region": df["region"], "description": df["text"]}), src)
    lab = tmp_path / "labels.parquet"
    pd.DataFrame(
        [(r, s, g) for (r, s), g in labels.items()], columns=["region", "sku", "group_id"]
    ).to_parquet(lab)
    return str(src), str(lab)


def test_tune_writes_a_registered_model_that_the_encoder_loads(tmp_path, monkeypatch, tiny_model, caplog):
    from polyglot_catalog.encoding import Encoder
    from polyglot_catalog.tuning import TuneConfig, tune_catalog

    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    source, labels = _write_catalog(tmp_path)
    config = TuneConfig(max_steps=4, batch_size=4, eval_steps=2, val_fraction=0.3, device="cpu", seed=2)
    with caplog.at_level(logging.INFO, logger="polyglot_catalog"):
        out = tune_catalog(
            source, tmp_path / "models", labels=labels, model=str(tiny_model), name="shop", config=config
        )

    assert out["model"] == "shop@v1" and out["model_dir"].endswith("shop/v1")
    assert out["pairs"]["train"]["by_source"] == {
        "labels": sum(out["pairs"]["train"]["by_region_pair"].values())
    }
    assert out["pairs"]["validation_pairs"] > 0 and 0 < out["steps"] <= 4
    assert "val_top1" in out["val_before"] and "val_top1" in out["val_after"]
    meta = json.loads((tmp_path / "models" / "shop" / "v1" / META_FILE).read_text())
    assert meta["content_hash"] == out["content_hash"] and meta["base_model"] == str(tiny_model)
    card = (tmp_path / "models" / "shop" / "v1" / CARD_FILE).read_text()
    assert "| DE<->US |" in card and "| FR<->US |" in card
    assert "Training pairs by region pair" in card and "Validation" in card
    progress = [r.getMessage() for r in caplog.records if "tune step" in r.getMessage()]
    assert any("loss" in m and "ETA" in m for m in progress)

    enc = Encoder("shop")  # the registry name; the vectors are then named after the pinned version
    assert enc.model_name == "shop@v1" and enc.prompt == "query: "
    assert enc.max_seq_length == 32  # training's shorter length is not saved into the model
    assert enc.encode(["roter Stuhl"]).shape == (1, 32)


def test_validation_products_are_never_trained_on_or_mined(tmp_path, tiny_model, monkeypatch):
    from sentence_transformers import SentenceTransformer

    from polyglot_catalog.tuning import train as train_mod
    from polyglot_catalog.tuning.tune import training_pool

    df, labels = _catalog_frame()
    catalog = CatalogTexts.from_frame(df)
    pairs = link_pairs(catalog, labels)
    val = split_by_group(pairs["component"], 0.3, seed=2)
    train_pairs, val_pairs = pairs[~val], pairs[val]
    pool = training_pool(catalog, train_pairs)
    negatives = train_mod.mine_hard_negatives(SentenceTransformer(str(tiny_model)), train_pairs, pool)
    val_texts = set(val_pairs["text_a"]) | set(val_pairs["text_b"])
    seen = set(train_pairs["text_a"]) | set(train_pairs["text_b"]) | {n for n in negatives if n}
    assert not (seen & val_texts) - set(pool["text"])  # only texts shared verbatim by a training SKU
    assert set(pool["component"]).isdisjoint(set(val_pairs["component"]))
    for neg, comp, pos in zip(negatives, train_pairs["component"], train_pairs["text_b"], strict=True):
        if neg is not None:
            assert neg != pos and comp not in set(pool.loc[pool["text"] == neg, "component"]) - {None}


def test_the_time_budget_stops_training(tmp_path, tiny_model):
    from sentence_transformers import SentenceTransformer

    from polyglot_catalog.tuning.train import TuneConfig, train
    from polyglot_catalog.tuning.tune import training_pool

    df, labels = _catalog_frame()
    catalog = CatalogTexts.from_frame(df)
    pairs = link_pairs(catalog, labels)
    config = TuneConfig(
        max_steps=50,
        epochs=50,
        batch_size=4,
        max_minutes=1e-4,
        eval_steps=50,
        device="cpu",
        loss="cached-mnrl",
        mini_batch_size=2,
    )
    outcome = train(
        SentenceTransformer(str(tiny_model)),
        pairs,
        pairs.iloc[:0],
        training_pool(catalog, pairs),
        config,
        tmp_path,
    )
    assert outcome.stopped_by == "time budget" and outcome.steps < 50


def test_cli_tune_prints_the_model_folder_and_rejects_a_missing_labels_file(
    tmp_path, monkeypatch, tiny_model, capsys
):
    from polyglot_catalog.cli import main

    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    source, labels = _write_catalog(tmp_path)
    code = main(
        ["tune", "--source", source, "--labels", str(tmp_path / "nope.parquet"), "--out", str(tmp_path)]
    )
    assert code == 1 and "labels file" in capsys.readouterr().err
    code = main(
        [
            "tune",
            "--source",
            source,
            "--labels",
            labels,
            "--out",
            str(tmp_path / "m"),
            "--model",
            str(tiny_model),
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--rerank",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model"] == "catalog-tuned@v1" and (tmp_path / "m" / "catalog-tuned" / "v1").is_dir()
    assert printed["reranker"]["model"] == "catalog-tuned-reranker@v1"
    assert (tmp_path / "m" / "catalog-tuned-reranker" / "v1").is_dir()


# --- the catalog_tune DAG ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tune_dag():
    pytest.importorskip("airflow")
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags" / "catalog_tune.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["catalog_tune"]


def test_tune_dag_trains_then_triggers_the_embed_dag_with_the_tuned_model(tune_dag):
    tune = tune_dag.get_task("tune_encoder")
    trigger = tune_dag.get_task("reembed_with_tuned_model")
    assert trigger.upstream_task_ids == {"tune_encoder"}
    assert trigger.trigger_dag_id == "catalog_embed"
    assert set(trigger.conf) == {"source", "model", "collection", "alias"}
    assert "tune_encoder" in trigger.conf["model"] and "alias" in trigger.conf["alias"]
    assert [o.name for o in tune.outlets] == ["polyglot_tuned_model"]
    assert tune_dag.max_active_runs == 1 and tune_dag.catchup is False and "polyglot-catalog" in tune_dag.tags


def test_tune_dag_names_a_new_collection_the_embed_dag_accepts():
    import re

    from polyglot_catalog.provider.operators import COLLECTION_PATTERN

    pytest.importorskip("airflow")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "catalog_tune_dag", Path(__file__).resolve().parents[1] / "dags" / "catalog_tune.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    name = module.new_collection("catalog", "catalog-tuned@v12")
    assert name == "catalog__catalog-tuned_v12" and re.fullmatch(COLLECTION_PATTERN, name)


def _validate(dag, conf: dict) -> dict:
    """What a trigger does: the scheduler's serialized DAG merges the run conf and validates it."""
    from airflow.serialization.serialized_objects import DagSerialization

    serialized = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    return serialized.params.deep_merge(conf).validate()


@pytest.mark.parametrize(
    "conf",
    [{"name": "a/b"}, {"name": "x@v1"}, {"max_minutes": 0}, {"max_steps": 0}, {"alias": "bad alias"}],
)
def test_tune_dag_params_reject_bad_input(tune_dag, conf):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        _validate(tune_dag, conf)


def test_tune_dag_params_accept_a_real_trigger(tune_dag):
    conf = {
        "source": "/data/*.parquet",
        "labels": None,
        "reviewed": "/data/reviewed.parquet",
        "max_minutes": 2.5,
    }
    assert _validate(tune_dag, conf)["max_minutes"] == 2.5


def test_config_rejects_what_cannot_run():
    from polyglot_catalog.tuning.train import TuneConfig, _resolve_device

    with pytest.raises(ValueError, match=r"fp16.*CUDA"):
        _resolve_device(TuneConfig(device="cpu", precision="fp16"))
    assert _resolve_device(TuneConfig(device="cpu")) == ("cpu", "fp32")  # CPU default: full precision
    for bad in ({"loss": "triplet"}, {"max_steps": 0}, {"max_minutes": 0}, {"precision": "int8"}):
        with pytest.raises(ValueError):
            TuneConfig(**bad)


# --- the cross-encoder re-ranker -------------------------------------------------------------------


def test_reranker_examples_are_positives_and_hard_negatives_of_training_products_only(tiny_model):
    from sentence_transformers import SentenceTransformer

    from polyglot_catalog.tuning.rerank import training_examples, validation_samples
    from polyglot_catalog.tuning.tune import training_pool

    df, labels = _catalog_frame()
    catalog = CatalogTexts.from_frame(df)
    pairs = link_pairs(catalog, labels)
    val = split_by_group(pairs["component"], 0.3, seed=2)
    train_pairs, val_pairs = pairs[~val].reset_index(drop=True), pairs[val].reset_index(drop=True)
    pool = training_pool(catalog, train_pairs)
    encoder = SentenceTransformer(str(tiny_model))
    ex = training_examples(encoder, train_pairs, pool, negatives=2)

    assert ex["label"].sum() == len(train_pairs)  # every training pair once, as a positive
    assert 0 < (ex["label"] == 0).sum() <= 2 * len(train_pairs)
    comp_of = dict(zip(zip(pool["region"], pool["text"], strict=True), pool["component"], strict=True))
    twins = {
        frozenset((a, b)): c
        for a, b, c in zip(
            train_pairs["text_a"], train_pairs["text_b"], train_pairs["component"], strict=True
        )
    }
    val_texts = set(val_pairs["text_a"]) | set(val_pairs["text_b"])
    for a, b in zip(ex.loc[ex["label"] == 0, "text_a"], ex.loc[ex["label"] == 0, "text_b"], strict=True):
        assert b in set(pool["text"]) and frozenset((a, b)) not in twins
        assert b not in val_texts - set(pool["text"])  # never a validation product's own text
        assert a != b and {c for (r, t), c in comp_of.items() if t == b}.isdisjoint(
            {c for k, c in twins.items() if a in k}
        )
    samples = validation_samples(encoder, val_pairs, pool, k=4)
    assert samples and all(s["positive"][0] not in s["negative"] and len(s["negative"]) <= 3 for s in samples)


def test_reranker_trains_and_writes_a_registered_version_that_scores_pairs(tmp_path, monkeypatch, tiny_model):
    from polyglot_catalog.tuning import TuneConfig, tune_catalog
    from polyglot_catalog.tuning.rerank import CachedReranker, RerankConfig, load_cross_encoder, rerank_topk

    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    source, labels = _write_catalog(tmp_path)
    config = TuneConfig(max_steps=2, batch_size=4, eval_steps=2, val_fraction=0.3, device="cpu", seed=2)
    rconfig = RerankConfig(
        max_steps=3, batch_size=4, eval_steps=2, negatives=2, candidates=4, max_length=48, device="cpu"
    )
    tuned = tune_catalog(
        source,
        tmp_path / "models",
        labels=labels,
        model=str(tiny_model),
        name="shop",
        config=config,
        rerank=rconfig,
    )
    out = tuned["reranker"]

    assert tuned["model"] == "shop@v1"
    assert out["model"] == "shop-reranker@v1" and out["model_dir"].endswith("shop-reranker/v1")
    assert 0 < out["steps"] <= 3 and out["examples"] > 0
    assert "val_mrr@4" in out["val_before"] and "val_mrr@4" in out["val_after"]
    folder = tmp_path / "models" / "shop-reranker" / "v1"
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["kind"] == "reranker" and meta["mined_with"] == "shop@v1"  # the tuned encoder mined
    assert meta["base_model"] == str(tiny_model) and "re-ranker" in (folder / CARD_FILE).read_text()
    assert registry.resolve_model("shop-reranker").source == str(folder.resolve())

    model = load_cross_encoder(out["model_dir"], device="cpu")
    calls = []
    predict = model.predict
    model.predict = lambda pairs, **kw: calls.append(len(pairs)) or predict(pairs, **kw)
    scorer = CachedReranker(model)
    first = scorer("US", "DE", ["red chair", "red chair"], ["roter Stuhl", "blauer Stuhl"])
    again = scorer("US", "DE", ["red chair"], ["blauer Stuhl"])
    assert first.shape == (2,) and np.isfinite(first).all() and again[0] == first[1]
    assert calls == [2]  # the repeated pair came from the cache
    ranked = rerank_topk(scorer, ["red chair"], [["blauer Stuhl", "roter Stuhl"]])
    assert sorted(ranked[0]) == ["blauer Stuhl", "roter Stuhl"]
    assert ranked[0][0] == ("roter Stuhl" if first[0] > first[1] else "blauer Stuhl")


def _noisy_catalog(n: int = 40, noise: float = 1.4, seed: int = 0):
    from polyglot_catalog.matching.data import RegionTable

    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 16))
    words = {"DE": "Regal", "FR": "etagere", "US": "shelf"}
    return {
        region: RegionTable(
            region,
            [f"{region.lower()}{i}" for i in range(n)],
            [f"{words[region]} model {i}" for i in range(n)],
            base + noise * rng.normal(size=(n, 16)),
        )
        for region in ("DE", "FR", "US")
    }


def test_match_catalog_uses_a_rerank_score_as_one_more_feature():
    from polyglot_catalog.matching.pipeline import RERANK_TOP, match_catalog

    data = _noisy_catalog()
    seen = []

    def oracle(ra, rb, texts_a, texts_b):  # a perfect re-ranker: the model number decides
        seen.append((ra, rb, len(texts_a)))
        return np.array(
            [float(a.split()[-1] == b.split()[-1]) for a, b in zip(texts_a, texts_b, strict=True)]
        )

    def accuracy(res):  # precision of the accepted pairs, and how many true twins they find
        right = res.matches["sku_a"].str[2:] == res.matches["sku_b"].str[2:]
        return right.mean(), int(right.sum())

    plain = match_catalog(data, k=5, sentences=None)
    reranked = match_catalog(data, k=5, sentences=None, rerank=oracle)
    assert {(ra, rb) for ra, rb, _ in seen} == {("DE", "FR"), ("DE", "US"), ("FR", "US")}
    assert all(n <= 2 * RERANK_TOP * 40 for _, _, n in seen)  # only each product's top candidates
    assert reranked.summary["scorer"]["weights"]["rerank"] > 0
    assert "rerank" not in plain.summary["scorer"]["weights"]
    (p_plain, tp_plain), (p_rerank, tp_rerank) = accuracy(plain), accuracy(reranked)
    assert p_rerank > p_plain and p_rerank > 0.9 and tp_rerank > tp_plain  # better on both counts

    with pytest.raises(ValueError, match=r"rerank for DE<->FR must return \d+ finite scores"):
        match_catalog(data, k=5, sentences=None, rerank=lambda ra, rb, a, b: np.zeros(1))


class _SameVector:
    """An encoder that finds every text equally close: every candidate is a 'hard' one."""

    def encode(self, texts, **kwargs):
        return np.ones((len(texts), 4), dtype=np.float32) / 2


def test_reranker_never_labels_a_text_pair_both_ways():
    from polyglot_catalog.tuning.rerank import candidate_lists
    from polyglot_catalog.tuning.tune import training_pool

    df, labels = _catalog_frame()  # DE "Handtuch" is the text of products 10 and 11
    catalog = CatalogTexts.from_frame(df)
    pairs = link_pairs(catalog, labels).reset_index(drop=True)
    lists = candidate_lists(_SameVector(), pairs, training_pool(catalog, pairs), k=40)
    positives = {frozenset(p) for p in zip(pairs["text_a"], pairs["text_b"], strict=True)}
    grey = (pairs["text_a"] == "Handtuch") & (pairs["text_b"] == "serviette grise")
    assert grey.any() and lists[int(np.flatnonzero(grey)[0])]  # it has negatives, just not this one
    assert "serviette blanche" not in lists[int(np.flatnonzero(grey)[0])]
    for a, negs in zip(pairs["text_a"], lists, strict=True):
        assert not any(frozenset((a, n)) in positives for n in negs)
