"""The embed stage end to end on Parquet + in-memory Qdrant, with a deterministic fake encoder."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import FakeEncoder, FlakyClient

from polyglot_catalog.embed import QUARANTINE_IN_SUMMARY, embed_catalog, merge_summaries, reconcile_vanished
from polyglot_catalog.ids import point_id
from polyglot_catalog.store import CatalogStore, UpsertError, open_client, vector_name_for

ROWS = [
    ("DE", "D1", "de", "Regal aus Birke , 80 cm"),
    ("DE", "D2", "de", "Sofa mit Bezug , grau"),
    ("DE", "D3", "de", "Pflegehinweis : waschen bei 40 Grad"),
    ("FR", "F1", "fr", "Étagère en bouleau , 80 cm"),
    ("FR", "F2", "fr", "Canapé avec housse , gris"),
    ("US", "U1", "en", "Birch bookcase , 80 cm"),
    ("US", "U2", "en", "Sofa with cover , gray"),
]


def write_catalog(path: Path, rows: list[tuple[str, str, str | None, str]] = ROWS, **extra: list) -> Path:
    region, sku, language, description = (list(c) for c in zip(*rows, strict=True))
    table = pa.table(
        {"sku": sku, "region": region, "language": language, "description": description, **extra}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


@pytest.fixture
def store() -> CatalogStore:
    return CatalogStore(open_client(path=":memory:"), "catalog", "fake-model", backoff=0.0)


def snapshot(store: CatalogStore) -> dict[str, tuple[dict[str, Any], list[float]]]:
    """Every point with its full payload and vector, to prove a run changed nothing."""
    records, _ = store.client.scroll(store.collection, limit=10_000, with_payload=True, with_vectors=True)
    return {str(r.id): (r.payload, r.vector[store.vector_name]) for r in records}


def test_first_run_writes_one_point_per_row_with_the_documented_payload(
    tmp_path: Path, store: CatalogStore
) -> None:
    source = write_catalog(tmp_path / "cat.parquet", gtin=[f"0{i}" for i in range(len(ROWS))])
    encoder = FakeEncoder()
    summary = embed_catalog(source, store, encoder, batch_size=3)

    assert json.loads(json.dumps(summary)) == summary
    assert summary["rows_read"] == summary["embedded"] == summary["upserted"] == len(ROWS)
    assert summary["skipped_unchanged"] == summary["invalid"] == summary["flagged"] == 0
    assert summary["regions"] == ["DE", "FR", "US"] and summary["files"] == 1
    assert {"read", "text", "encode", "upsert"} <= set(summary["seconds"])
    assert store.stats() == {"points": 7, "stale": 0, "regions": {"DE": 3, "FR": 2, "US": 2}}

    points = snapshot(store)
    payload, vector = points[point_id("FR", "F2")]
    assert payload["sku"] == "F2" and payload["region"] == "FR" and payload["language"] == "fr"
    assert payload["text"] == "Canapé avec housse , gris" and payload["gtin"] == "04"
    assert payload["model"] == "fake-model" and payload["status"] == "active"
    assert payload["source_file"] == str(source) and len(payload["content_hash"]) == 64
    assert payload["embedded_at"].endswith("+00:00")
    np.testing.assert_allclose(vector, encoder.encode([payload["text"]])[0], atol=1e-6)


def test_columns_limits_what_is_carried(tmp_path: Path, store: CatalogStore) -> None:
    n = len(ROWS)
    source = write_catalog(tmp_path / "c.parquet", brand=["IKEA"] * n, gtin=["0"] * n, title=[None] * n)
    embed_catalog(source, store, FakeEncoder(), columns=["brand"])
    payload, _ = snapshot(store)[point_id("DE", "D1")]
    assert payload["brand"] == "IKEA" and "gtin" not in payload
    assert "title" in payload  # read because the default template uses it


def test_second_run_over_unchanged_data_encodes_nothing_and_changes_no_point(
    tmp_path: Path, store: CatalogStore
) -> None:
    source = write_catalog(tmp_path / "cat.parquet")
    embed_catalog(source, store, FakeEncoder(), batch_size=3)
    before = snapshot(store)

    encoder = FakeEncoder()
    summary = embed_catalog(source, store, encoder, batch_size=3)
    assert encoder.encoded == []
    assert summary["skipped_unchanged"] == len(ROWS)
    assert summary["embedded"] == summary["upserted"] == summary["flagged"] == 0
    assert snapshot(store) == before


def test_changing_one_description_reembeds_exactly_that_row(tmp_path: Path, store: CatalogStore) -> None:
    embed_catalog(write_catalog(tmp_path / "v1" / "cat.parquet"), store, FakeEncoder())
    before = snapshot(store)

    rows = list(ROWS)
    rows[4] = ("FR", "F2", "fr", "Canapé 3 places avec housse , gris clair")
    encoder = FakeEncoder()
    summary = embed_catalog(write_catalog(tmp_path / "v2" / "cat.parquet", rows), store, encoder)

    assert encoder.encoded == ["Canapé 3 places avec housse , gris clair"]
    assert summary["embedded"] == summary["upserted"] == 1 and summary["skipped_unchanged"] == 6
    after = snapshot(store)
    changed = {pid for pid in before if before[pid][0]["text"] != after[pid][0]["text"]}
    assert changed == {point_id("FR", "F2")}
    assert before[point_id("FR", "F2")][1] != after[point_id("FR", "F2")][1]


def test_template_change_reembeds_everything(tmp_path: Path, store: CatalogStore) -> None:
    source = write_catalog(tmp_path / "cat.parquet")
    embed_catalog(source, store, FakeEncoder())
    encoder = FakeEncoder()
    summary = embed_catalog(source, store, encoder, template="{description} ({language})")
    assert summary["embedded"] == len(ROWS)
    assert snapshot(store)[point_id("US", "U1")][0]["text"] == "Birch bookcase , 80 cm (en)"


def test_vanished_sku_is_flagged_then_reactivated(tmp_path: Path, store: CatalogStore) -> None:
    embed_catalog(write_catalog(tmp_path / "full" / "c.parquet"), store, FakeEncoder())
    without_d2 = [r for r in ROWS if r[1] != "D2"]
    summary = embed_catalog(write_catalog(tmp_path / "less" / "c.parquet", without_d2), store, FakeEncoder())

    assert summary["flagged"] == 1 and summary["deleted"] == 0
    statuses = {p["sku"]: p["status"] for p, _ in snapshot(store).values()}
    assert statuses.pop("D2") == "stale" and set(statuses.values()) == {"active"}
    assert [p["sku"] for pages, _ in store.scroll_region("DE") for p in pages].count("D2") == 0

    again = embed_catalog(write_catalog(tmp_path / "less" / "c.parquet", without_d2), store, FakeEncoder())
    assert again["flagged"] == 0  # already stale: nothing rewritten

    encoder = FakeEncoder()
    back = embed_catalog(write_catalog(tmp_path / "full" / "c.parquet"), store, encoder)
    assert back["reactivated"] == 1 and encoder.encoded == []
    assert store.stats()["stale"] == 0


def test_vanished_sku_is_deleted_when_asked_and_kept_when_asked(tmp_path: Path, store: CatalogStore) -> None:
    embed_catalog(write_catalog(tmp_path / "full" / "c.parquet"), store, FakeEncoder())
    less = write_catalog(tmp_path / "less" / "c.parquet", [r for r in ROWS if r[1] not in {"D2", "U1"}])

    kept = embed_catalog(less, store, FakeEncoder(), vanished="keep")
    assert kept["flagged"] == kept["deleted"] == 0 and store.stats()["stale"] == 0

    deleted = embed_catalog(less, store, FakeEncoder(), vanished="delete")
    assert deleted["deleted"] == 2
    assert store.stats() == {"points": 5, "stale": 0, "regions": {"DE": 2, "FR": 2, "US": 1}}

    with pytest.raises(ValueError, match=r"vanished must be one of \['flag', 'keep', 'delete'\]; got 'drop'"):
        embed_catalog(less, store, FakeEncoder(), vanished="drop")


def test_vanished_only_looks_at_regions_in_this_run(tmp_path: Path, store: CatalogStore) -> None:
    embed_catalog(write_catalog(tmp_path / "all" / "c.parquet"), store, FakeEncoder())
    only_us = write_catalog(tmp_path / "us" / "c.parquet", [r for r in ROWS if r[0] == "US"])
    summary = embed_catalog(only_us, store, FakeEncoder())
    assert summary["flagged"] == 0 and store.stats()["stale"] == 0


def test_identical_texts_in_a_batch_are_encoded_once(tmp_path: Path, store: CatalogStore) -> None:
    care = "Pflegehinweis : waschen bei 40 Grad"
    rows = [("DE", f"D{i}", "de", care) for i in range(5)] + [("DE", "X", "de", "Regal")]
    encoder = FakeEncoder()
    summary = embed_catalog(write_catalog(tmp_path / "c.parquet", rows), store, encoder)
    assert sorted(encoder.encoded) == sorted([care, "Regal"])
    assert summary["embedded"] == 6 and summary["encoded_texts"] == 2
    vectors = [v for _, v in snapshot(store).values()]
    assert len({tuple(v) for v in vectors}) == 2 and len(vectors) == 6


def test_bad_rows_are_quarantined_not_stored(tmp_path: Path, store: CatalogStore) -> None:
    rows = [
        *ROWS,
        ("DE", "", "de", "no sku"),
        ("FR", "F9", "fr", "   "),
        ("US", "U1", "en", "Birch bookcase v2"),
    ]
    source = write_catalog(tmp_path / "c.parquet", rows)
    summary = embed_catalog(source, store, FakeEncoder())
    assert summary["invalid"] == 3
    assert summary["invalid_by_reason"] == {
        "empty sku": 1,
        "empty description": 1,
        "duplicate (region, sku)": 1,
    }
    where = {(q["source"], q["row"], q["reason"].split(";")[0]) for q in summary["quarantine"]}
    assert where == {
        (str(source), 7, "empty sku"),
        (str(source), 8, "empty description"),
        (str(source), 5, "duplicate (region, sku)"),
    }
    assert store.stats()["points"] == len(ROWS)
    assert snapshot(store)[point_id("US", "U1")][0]["text"] == "Birch bookcase v2"


def test_existing_collection_with_another_dimension_is_a_clear_error(
    tmp_path: Path, store: CatalogStore
) -> None:
    embed_catalog(write_catalog(tmp_path / "c.parquet"), store, FakeEncoder(dim=16))
    with pytest.raises(ValueError, match=r"'catalog'.*expected size 32.*found size 16"):
        embed_catalog(write_catalog(tmp_path / "c.parquet"), store, FakeEncoder(dim=32))


def test_long_texts_are_truncated_and_counted(tmp_path: Path, store: CatalogStore) -> None:
    long = " ".join(["wort"] * 50)
    rows = [("DE", "D1", "de", long), ("DE", "D2", "de", "kurz")]
    encoder = FakeEncoder(max_seq_length=10)
    summary = embed_catalog(write_catalog(tmp_path / "c.parquet", rows), store, encoder)
    assert summary["truncated"] == 1
    stored = snapshot(store)[point_id("DE", "D1")][0]["text"]
    assert encoder.count_tokens([stored])[0] <= 10 and stored in encoder.encoded


def test_failed_upsert_fails_the_run_and_flags_nothing(tmp_path: Path) -> None:
    client = open_client(path=":memory:")
    embed_catalog(
        write_catalog(tmp_path / "a" / "c.parquet"),
        CatalogStore(client, "c", "v"),
        FakeEncoder(),
        sentences=False,
    )
    flaky = CatalogStore(FlakyClient(client, failures=100), "c", "v", backoff=0.0, max_retries=1)
    rows = [r for r in ROWS if r[1] != "D2"] + [("DE", "NEW", "de", "neu")]
    with pytest.raises(UpsertError, match=point_id("DE", "NEW")):
        embed_catalog(
            write_catalog(tmp_path / "b" / "c.parquet", rows), flaky, FakeEncoder(), sentences=False
        )
    assert CatalogStore(client, "c", "v").stats()["stale"] == 0


def test_progress_is_reported_and_logged(tmp_path: Path, store: CatalogStore, caplog) -> None:
    calls: list[tuple[int, int]] = []
    with caplog.at_level(logging.INFO, logger="polyglot_catalog.embed"):
        embed_catalog(
            write_catalog(tmp_path / "c.parquet"),
            store,
            FakeEncoder(),
            batch_size=2,
            progress=lambda done, total: calls.append((done, total)),
            log_every=0.0,
        )
    assert calls == [(2, 7), (4, 7), (6, 7), (7, 7)]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("embed:")]
    assert len(lines) == 4 and lines[-1].startswith("embed: 7/7 rows (100%)") and "ETA" in lines[-1]


def comparable(store: CatalogStore) -> dict[str, tuple[dict[str, Any], list[float]]]:
    """Points without ``embedded_at`` (the one field that depends on when a run happened)."""
    return {
        pid: ({k: v for k, v in p.items() if k != "embedded_at"}, v)
        for pid, (p, v) in snapshot(store).items()
    }


def shard_files(folder: Path, rows: list[tuple[str, str, str | None, str]]) -> list[Path]:
    """Three files with regions spread over them, as a per-file mapped DAG would see them."""
    return [write_catalog(folder / f"part-{i}.parquet", rows[i::3]) for i in range(3)]


def mapped_run(shards: list[Path], store: CatalogStore, mode: str) -> dict[str, Any]:
    """What the DAG does: one embed per shard with vanished="keep", then one reconcile and a reduce."""
    summaries = [embed_catalog(shard, store, FakeEncoder(), vanished="keep") for shard in shards]
    assert all(s["flagged"] == s["deleted"] == 0 for s in summaries)
    return merge_summaries(summaries, reconcile_vanished(shards, store, mode))


@pytest.mark.parametrize("mode", ["flag", "delete"])
def test_mapped_shards_plus_reconcile_equal_one_run_over_the_union(tmp_path: Path, mode: str) -> None:
    one = CatalogStore(open_client(path=":memory:"), "c", "v")
    many = CatalogStore(open_client(path=":memory:"), "c", "v")
    v2 = [r for r in ROWS if r[1] != "D2"] + [
        ("US", "U3", "en", "Oak table , 120 cm"),
        ("DE", "D4", "de", " "),
    ]
    v2 = [("FR", "F1", "fr", "Étagère en bouleau massif , 80 cm") if r[1] == "F1" else r for r in v2]
    v3 = [*ROWS, ("US", "U3", "en", "Oak table , 120 cm")]  # D2 is back, D4 vanished (never valid)
    unmatched = {"embedded_at", "source_file"}
    for version, rows in enumerate((ROWS, v2, v3)):
        shards = shard_files(tmp_path / f"v{version}", rows)
        single = embed_catalog(shards, one, FakeEncoder(), vanished=mode)
        merged = mapped_run(shards, many, mode)

        assert comparable(one) == comparable(many)
        assert one.stats() == many.stats()
        for key in single.keys() - {"seconds", "quarantine"} - unmatched:
            assert merged[key] == single[key], key
        assert merged["shards"] == 3 and merged["files"] == 3 and merged["vanished"] == mode
        assert sorted(q["sku"] for q in merged["quarantine"]) == sorted(
            q["sku"] for q in single["quarantine"]
        )
        if version == 1:  # D2 vanished: flagged (or deleted) exactly once, by the reconcile step
            assert merged[{"flag": "flagged", "delete": "deleted"}[mode]] == 1
            again = reconcile_vanished(shards, many, mode)
            assert again["flagged"] == again["deleted"] == 0
    statuses = {p["sku"]: p["status"] for p, _ in snapshot(many).values()}
    assert set(statuses.values()) == {"active"} and "D2" in statuses  # reactivated or re-added


def test_reconcile_keep_reads_nothing_and_reports_cross_file_duplicates(
    tmp_path: Path, store: CatalogStore
) -> None:
    embed_catalog(write_catalog(tmp_path / "full" / "c.parquet"), store, FakeEncoder())
    a = write_catalog(tmp_path / "less" / "a.parquet", [r for r in ROWS if r[1] != "D2"])
    b = write_catalog(tmp_path / "less" / "b.parquet", [("US", "U1", "en", "Birch bookcase v2")])

    kept = reconcile_vanished([a, b], store, "keep")
    assert kept == {"mode": "keep", "files": 2, "regions": [], "flagged": 0, "deleted": 0, "seconds": {}}
    flagged = reconcile_vanished([a, b], store)
    assert flagged["flagged"] == 1 and flagged["duplicates_across_files"] == 1
    assert flagged["regions"] == ["DE", "FR", "US"] and flagged["source_keys"] == len(ROWS) - 1
    assert store.count(status="stale") == 1
    missing = CatalogStore(open_client(path=":memory:"), "nothing-here", "v")
    assert reconcile_vanished([a], missing)["flagged"] == 0
    with pytest.raises(ValueError, match="mode must be one of"):
        reconcile_vanished([a], store, "drop")  # type: ignore[arg-type]


def test_merge_summaries_sums_counts_seconds_reasons_and_caps_the_sample() -> None:
    def shard(n: int, region: str) -> dict[str, Any]:
        return {
            "model": "m",
            "collection": "c",
            "vector_name": "v",
            "files": 1,
            "regions": [region],
            "rows_read": n,
            "embedded": n - 1,
            "invalid": 15,
            "invalid_by_reason": {"empty sku": 10, "empty description": 5},
            "quarantine": [{"sku": f"{region}{i}"} for i in range(15)],
            "seconds": {"read": 0.5, "encode": 1.25},
        }

    merged = merge_summaries(
        [shard(10, "US"), None, shard(20, "DE")],
        {
            "mode": "flag",
            "flagged": 2,
            "deleted": 0,
            "regions": ["DE", "US"],
            "seconds": {"keys": 0.1, "vanished": 0.2},
        },
    )
    assert merged["shards"] == 2 and merged["files"] == 2
    assert merged["rows_read"] == 30 and merged["embedded"] == 28 and merged["invalid"] == 30
    assert merged["flagged"] == 2 and merged["deleted"] == 0 and merged["vanished"] == "flag"
    assert merged["regions"] == ["DE", "US"] and merged["model"] == "m"
    assert merged["invalid_by_reason"] == {"empty sku": 20, "empty description": 10}
    assert merged["seconds"] == {"encode": 2.5, "keys": 0.1, "read": 1.0, "vanished": 0.2}
    assert len(merged["quarantine"]) == QUARANTINE_IN_SUMMARY and merged["quarantine"][-1] == {"sku": "DE4"}
    assert json.loads(json.dumps(merged)) == merged
    assert merge_summaries([]) == {
        "shards": 0,
        "regions": [],
        "invalid_by_reason": {},
        "quarantine": [],
        "seconds": {},
    }
    with pytest.raises(ValueError, match="shards disagree on model"):
        merge_summaries([shard(1, "US"), {**shard(1, "DE"), "model": "other"}])


@pytest.mark.slow
def test_real_encoder_on_the_demo_sample(tmp_path: Path, encoder) -> None:
    sample = Path(__file__).resolve().parents[1] / "include" / "demo_catalog" / "DE.parquet"
    table = pq.read_table(sample).slice(0, 15)
    long = " ".join(table["description"].to_pylist() * 8)  # well over the model's token budget
    table = pa.concat_tables(
        [table, pa.table({"sku": ["DE-LONG"], "region": ["DE"], "language": ["de"], "description": [long]})]
    )
    pq.write_table(table, tmp_path / "de.parquet")
    store = CatalogStore(open_client(path=":memory:"), "c", vector_name_for(encoder.model_name))
    summary = embed_catalog(tmp_path / "de.parquet", store, encoder, batch_size=8)
    assert summary["embedded"] == 16 and summary["truncated"] == 1
    stored = store.fetch_payloads([point_id("DE", "DE-LONG")], ["text"])[point_id("DE", "DE-LONG")]["text"]
    assert encoder.max_seq_length - 40 < encoder.count_tokens([stored])[0] <= encoder.max_seq_length
    _, vectors = next(store.scroll_region("DE"))
    assert vectors.shape[1] == encoder.dim
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert embed_catalog(tmp_path / "de.parquet", store, encoder)["skipped_unchanged"] == 16


# -- model identity, lazy model load, late-chunked sentences (#20.3, #20.6, #23) ------------------


class FolderEncoder(FakeEncoder):
    """A fake encoder whose identity is a model folder's fingerprint, as the real Encoder's is."""

    def __init__(self, folder: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.folder = folder

    @property
    def fingerprint(self) -> str:
        from polyglot_catalog.models.registry import model_fingerprint

        return model_fingerprint(str(self.folder))


def model_folder(root: Path, weights: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "modules.json").write_text("[]")
    (root / "model.safetensors").write_bytes(weights)
    return root


@pytest.fixture
def any_store(qdrant_client) -> CatalogStore:
    return CatalogStore(qdrant_client, "catalog", "fake-model", backoff=0.0)


def test_a_different_model_under_the_same_name_is_refused(tmp_path: Path, any_store: CatalogStore) -> None:
    source = write_catalog(tmp_path / "c.parquet")
    first = embed_catalog(source, any_store, FolderEncoder(model_folder(tmp_path / "a", b"one")))
    before = snapshot(any_store)
    more = write_catalog(tmp_path / "more.parquet", [*ROWS, ("US", "U9", "en", "Oak table , 120 cm")])
    other = FolderEncoder(model_folder(tmp_path / "b", b"two"))
    with pytest.raises(ValueError, match="fake-model") as refused:
        embed_catalog(more, any_store, other)
    assert "new collection" in str(refused.value) and "full_refresh" in str(refused.value)
    assert other.encoded == [] and snapshot(any_store) == before  # nothing written
    assert first["model_fingerprint"] == snapshot(any_store)[point_id("DE", "D1")][0]["model_fingerprint"]


def test_a_model_retrained_in_place_is_refused_until_full_refresh(
    tmp_path: Path, any_store: CatalogStore
) -> None:
    folder = model_folder(tmp_path / "m", b"weights-one")
    source = write_catalog(tmp_path / "c.parquet")
    embed_catalog(source, any_store, FolderEncoder(folder))
    (folder / "model.safetensors").write_bytes(b"weights-two")  # retrained, same path and name
    with pytest.raises(ValueError, match="different weights"):
        embed_catalog(source, any_store, FolderEncoder(folder))
    again = embed_catalog(source, any_store, FolderEncoder(folder), full_refresh=True)
    assert again["embedded"] == len(ROWS)
    assert embed_catalog(source, any_store, FolderEncoder(folder))["skipped_unchanged"] == len(ROWS)


@pytest.fixture
def session_copy(monkeypatch, encoder):
    """Encoders built through the real constructor load a copy of the session model (no 10 s load)."""
    import copy

    from polyglot_catalog import encoding

    loads: list[str] = []
    model = encoder.model  # the session's (lazy) model, loaded before the loader is replaced

    def load(spec, device=None):
        loads.append(spec.name)
        return copy.deepcopy(model)

    monkeypatch.setattr(encoding, "load_sentence_transformer", load)
    return loads


def test_unchanged_rerun_loads_no_model_and_no_tokenizer(
    tmp_path: Path, store: CatalogStore, session_copy: list[str], caplog
) -> None:
    from polyglot_catalog.encoding import Encoder

    source = write_catalog(tmp_path / "c.parquet")
    store.vector_name = vector_name_for("multilingual-e5-small")
    with caplog.at_level(logging.INFO, logger="polyglot_catalog.encoding"):
        first = embed_catalog(source, store, Encoder(precision="fp32"))
    assert first["model_loaded"] and first["precision"] == "fp32" and first["precision_reason"]
    assert "loaded model multilingual-e5-small (torch, fp32" in caplog.text
    lazy = Encoder()
    again = embed_catalog(source, store, lazy)
    assert again["skipped_unchanged"] == len(ROWS) and again["embedded"] == 0
    assert not again["model_loaded"] and again["precision"] is None
    assert session_copy == ["multilingual-e5-small"]  # loaded once, by the first run only
    assert not lazy.loaded  # hashes cover the untruncated text: no token counting either


def test_embed_stage_takes_sentence_vectors_from_the_description_pass(
    tmp_path: Path, store: CatalogStore, session_copy: list[str]
) -> None:
    from polyglot_catalog.encoding import Encoder
    from polyglot_catalog.sentences import SentenceCache, late_suffix, split_sentences

    rows = [
        ("DE", "D1", "de", "Regal aus Birke. Trägt 20 kg. Mit feuchtem Tuch abwischen."),
        ("US", "U1", "en", "Birch shelf. Holds 20 kg. Wipe with a damp cloth."),
        ("US", "U2", "en", "Oak table. Wipe with a damp cloth."),  # a sentence shared with U1
    ]
    source = write_catalog(tmp_path / "c.parquet", rows)
    store.vector_name = vector_name_for("multilingual-e5-small")
    enc = Encoder(precision="fp32")
    calls: list[list[str]] = []
    real = enc.encode
    enc.encode = lambda texts: calls.append(list(texts)) or real(texts)  # type: ignore[method-assign]
    summary = embed_catalog(source, store, enc, sentence_vectors="late")
    assert calls == [] and summary["encoded_sentences"] == 0  # no second encode of any sentence
    # one vector per sentence of each description: the shared sentence has one per description
    assert summary["sentences_written"] == sum(len(split_sentences(r[3])) for r in rows) == 8
    cache = SentenceCache.for_store(store)
    vectors = cache.vectors_for([r[3] for r in rows])
    assert vectors is not None and vectors.n_occurrences == 8
    assert cache.late and cache.store.collection.endswith(late_suffix(enc.fingerprint))
    # the same catalog in the opposite row order gives every description the same sentence vectors:
    # a shared sentence's vector does not depend on which description came first
    client2 = open_client(path=str(tmp_path / "reversed"))
    other = CatalogStore(client2, "reversed", store.vector_name)
    embed_catalog(write_catalog(tmp_path / "r.parquet", rows[::-1]), other, enc, sentence_vectors="late")
    again = SentenceCache.for_store(other).vectors_for([r[3] for r in rows])
    assert again is not None and np.allclose(
        again.occurrence_vectors(), vectors.occurrence_vectors(), atol=1e-6
    )
    client2.close()
    store.client.delete_collection(cache.store.collection)  # a dropped cache refills on the next run
    refill = embed_catalog(source, store, enc, sentence_vectors="late")
    assert refill["skipped_unchanged"] == 3 and refill["sentences_written"] == 8
    assert SentenceCache.for_store(store).vectors_for([r[3] for r in rows]) is not None
    # back to separately encoded sentences: their own cache, filled for the unchanged rows too
    separate = embed_catalog(source, store, enc, sentence_vectors="separate")
    assert separate["skipped_unchanged"] == 3 and separate["encoded_sentences"] == 7
    assert not SentenceCache.for_store(store).late


def test_default_sentence_vectors_are_late_only_for_a_model_with_a_late_map(
    tmp_path: Path, store: CatalogStore
) -> None:
    from polyglot_catalog.embed import late_sentences_for
    from polyglot_catalog.encoding import Encoder
    from polyglot_catalog.sentences import SentenceCache

    bundled = Encoder(precision="fp32")
    assert late_sentences_for(bundled, "auto") and not bundled.loaded  # read from its files
    assert not late_sentences_for(bundled, "separate") and late_sentences_for(bundled, "late")
    no_map = FakeEncoder()  # no late chunking, no map: "auto" encodes sentences alone
    assert not late_sentences_for(no_map, "auto")
    source = write_catalog(tmp_path / "c.parquet", [("US", "U1", "en", "Oak table. Seats four.")])
    summary = embed_catalog(source, store, no_map)  # the default, "auto"
    assert summary["encoded_sentences"] == 2 and not SentenceCache.for_store(store).late


def test_input_and_store_are_checked_before_the_model_loads(tmp_path: Path, monkeypatch) -> None:
    from polyglot_catalog import encoding
    from polyglot_catalog.embed import EmbedInputError, StoreUnavailableError

    def no_loading(*args, **kwargs):
        raise AssertionError("the model should not load")

    monkeypatch.setattr(encoding, "load_sentence_transformer", no_loading)
    lazy = encoding.Encoder()
    vector = vector_name_for(lazy.model_name)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"sku": ["A"], "region": ["DE"], "desc": ["x"]}), bad)
    local = CatalogStore(open_client(path=":memory:"), "catalog", vector, backoff=0.0)
    with pytest.raises(EmbedInputError, match="description"):
        embed_catalog(bad, local, lazy)
    source = write_catalog(tmp_path / "c.parquet")
    down = CatalogStore(open_client(url="http://127.0.0.1:9", timeout=1), "catalog", vector, max_retries=0)
    with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1:9"):
        embed_catalog(source, down, lazy)
    assert not lazy.loaded


def test_an_unknown_sentence_vector_kind_is_refused_before_anything_runs(
    tmp_path: Path, store: CatalogStore
) -> None:
    with pytest.raises(ValueError, match=r"sentence_vectors must be one of \['auto', 'separate', 'late'\]"):
        embed_catalog(write_catalog(tmp_path / "c.parquet"), store, FakeEncoder(), sentence_vectors="both")
    assert not store.exists()
