"""Hostile and broken input: each case ends in a clear error or a quarantine, never in lost valid rows.

Every test runs the real embed stage on Parquet files and an in-memory Qdrant with the fake encoder,
and reads the quarantine file back: the promise is about what a data engineer can find afterwards.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import FakeEncoder

from polyglot_catalog import reading
from polyglot_catalog.embed import (
    EmbedInputError,
    TooManyInvalidRowsError,
    embed_catalog,
    parse_max_invalid,
)
from polyglot_catalog.ids import point_id
from polyglot_catalog.quarantine import QUARANTINE_SCHEMA, read_quarantine
from polyglot_catalog.reading import BadFileError, CatalogReader, MissingColumnError
from polyglot_catalog.store import CatalogStore, open_client

GOOD = {"sku": ["A1", "A2", "A3"], "region": ["DE"] * 3, "description": ["Tisch", "Stuhl", "Lampe"]}


def write(path: Path, table: pa.Table | dict[str, list[Any]], **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table if isinstance(table, pa.Table) else pa.table(table), path, **kwargs)
    return path


@pytest.fixture
def store() -> CatalogStore:
    return CatalogStore(open_client(path=":memory:"), "catalog", "fake-model", backoff=0.0)


def texts(store: CatalogStore) -> dict[tuple[str, str], str]:
    if not store.exists():
        return {}
    records, _ = store.client.scroll(store.collection, limit=10_000, with_payload=True)
    return {(r.payload["region"], r.payload["sku"]): r.payload["text"] for r in records}


def quarantine_rows(path: Path) -> list[dict[str, Any]]:
    table, complete = read_quarantine(path)
    assert table.schema.equals(QUARANTINE_SCHEMA, check_metadata=False)
    assert complete
    return table.to_pylist()


def run(tmp_path: Path, store: CatalogStore, source: Any, **kwargs: Any) -> dict[str, Any]:
    summary = embed_catalog(source, store, FakeEncoder(), quarantine_path=tmp_path / "q.parquet", **kwargs)
    assert json.loads(json.dumps(summary)) == summary
    return summary


def test_missing_required_column_fails_before_creating_the_collection(
    tmp_path: Path, store: CatalogStore
) -> None:
    bad = write(tmp_path / "in" / "bad.parquet", {"sku": ["a"], "region": ["DE"], "text": ["x"]})
    with pytest.raises(MissingColumnError, match=rf"{bad}: missing required column\(s\) \['description'\]"):
        embed_catalog(bad, store, FakeEncoder(), on_bad_file="fail_fast")
    with pytest.raises(EmbedInputError, match=rf"1 of 1 source file.*nothing was written.*{bad}"):
        run(tmp_path, store, bad)
    assert not store.exists()  # no empty collection left behind
    (row,) = quarantine_rows(tmp_path / "q.parquet")
    assert row["source_file"] == str(bad) and row["row"] is None
    assert row["reason"].startswith("bad file: missing required column(s) ['description']")


def test_bad_file_among_good_ones_embeds_the_good_then_fails_naming_it(
    tmp_path: Path, store: CatalogStore
) -> None:
    good = write(tmp_path / "in" / "a.parquet", GOOD)
    bad = write(tmp_path / "in" / "b.parquet", {"sku": ["x"], "region": ["DE"], "description": [7]})
    with pytest.raises(
        EmbedInputError,
        match=rf"1 of 2 source file.*every other file was embedded.*{bad}: "
        r"column 'description' must be a string",
    ) as caught:
        run(tmp_path, store, tmp_path / "in", vanished="flag")
    summary = caught.value.summary
    assert summary["upserted"] == 3 and list(summary["bad_files"]) == [str(bad)]
    assert summary["vanished_skipped"] is True and summary["flagged"] == 0
    assert sorted(texts(store)) == [("DE", "A1"), ("DE", "A2"), ("DE", "A3")]
    assert [r["source_file"] for r in quarantine_rows(tmp_path / "q.parquet")] == [str(bad)]
    assert str(good) not in caught.value.args[0]


def test_fail_fast_stops_at_the_first_bad_file(tmp_path: Path, store: CatalogStore) -> None:
    write(tmp_path / "in" / "a.parquet", GOOD)
    bad = tmp_path / "in" / "b.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(BadFileError, match=rf"{bad}: unreadable Parquet file"):
        embed_catalog(tmp_path / "in", store, FakeEncoder(), on_bad_file="fail_fast")
    assert not store.exists()


@pytest.mark.parametrize("damage", ["junk", "truncated", "empty"])
def test_corrupt_or_truncated_parquet_is_named_and_the_rest_embedded(
    tmp_path: Path, store: CatalogStore, damage: str
) -> None:
    write(tmp_path / "in" / "a.parquet", GOOD)
    other = write(tmp_path / "src.parquet", {**GOOD, "sku": ["B1", "B2", "B3"]})
    data = other.read_bytes()
    bad = tmp_path / "in" / "b.parquet"
    bad.write_bytes({"junk": b"\x00garbage" * 50, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(EmbedInputError, match=rf"{bad}: unreadable Parquet file"):
        run(tmp_path, store, tmp_path / "in")
    assert len(texts(store)) == 3


def corrupt_a_data_page(path: Path, column: str, row_group: int) -> None:
    """Overwrite bytes inside one column chunk; the footer and the other columns stay readable."""
    meta = pq.ParquetFile(path)
    chunk = meta.metadata.row_group(row_group).column(meta.schema_arrow.get_field_index(column))
    start = chunk.data_page_offset + 64  # past the page header, inside the values
    length = min(2000, chunk.total_compressed_size - 128)
    data = bytearray(path.read_bytes())
    data[start : start + length] = random.Random(0).randbytes(length)
    path.write_bytes(bytes(data))


def test_file_corrupt_mid_way_keeps_rows_read_before_and_the_other_files(
    tmp_path: Path, store: CatalogStore
) -> None:
    n = 4000
    words = [f"wort{i} " * 8 for i in range(n)]
    big = write(
        tmp_path / "in" / "a.parquet",
        {"sku": [f"S{i}" for i in range(n)], "region": ["DE"] * n, "description": words, "title": words},
        row_group_size=1000,
        use_dictionary=False,
    )
    corrupt_a_data_page(big, "title", 2)  # the key pass (sku, region, description) still reads it
    write(tmp_path / "in" / "b.parquet", {**GOOD, "region": ["FR"] * 3})
    with pytest.raises(EmbedInputError, match=rf"{big}: unreadable Parquet file") as caught:
        run(tmp_path, store, tmp_path / "in", batch_size=500)
    stored = texts(store)
    assert {k for k in stored if k[0] == "FR"} == {("FR", "A1"), ("FR", "A2"), ("FR", "A3")}
    # Batches read before the damaged row group were embedded (how many depends on read-ahead);
    # what the summary counts is exactly what is stored.
    de = sum(1 for k in stored if k[0] == "DE")
    assert de < n and caught.value.summary["upserted"] == de + 3
    assert caught.value.summary["vanished_skipped"] is True


def test_file_that_vanishes_after_listing_is_named(
    tmp_path: Path, store: CatalogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "in" / "a.parquet", GOOD)
    gone = write(tmp_path / "in" / "b.parquet", {**GOOD, "region": ["US"] * 3})
    real_list_sources = reading.list_sources

    def list_then_delete(source: Any) -> list[str]:
        listed = real_list_sources(source)
        gone.unlink()  # an upstream job moves the file away right after the glob was expanded
        return listed

    monkeypatch.setattr(reading, "list_sources", list_then_delete)
    with pytest.raises(
        EmbedInputError, match=rf"{gone}: file not found \(deleted or moved after it was listed\)"
    ):
        run(tmp_path, store, str(tmp_path / "in" / "*.parquet"))
    assert len(texts(store)) == 3


def test_file_that_vanishes_between_key_pass_and_read(tmp_path: Path) -> None:
    a = write(tmp_path / "a.parquet", GOOD)
    b = write(tmp_path / "b.parquet", {**GOOD, "region": ["US"] * 3})
    reader = CatalogReader(tmp_path, bad_files="skip")
    assert reader.total_rows == 6  # key pass saw both
    b.unlink()
    kept = [k for part in reader for k in part.batch["sku"].to_pylist()]
    assert kept == GOOD["sku"] and list(reader.bad_files) == [str(b)] and str(a) not in reader.bad_files


def test_row_level_problems_are_quarantined_with_reason_and_raw_text(
    tmp_path: Path, store: CatalogStore
) -> None:
    megabyte = "Holz " * 210_000  # ~1 MB
    rows = [
        ("DE", "OK1", "Tisch aus Eiche"),
        ("DE", "NULL", None),
        ("DE", "EMPTY", ""),
        ("DE", "SPACES", " \t\u00a0\u2003\n "),
        ("DE", "CTRL", "\x00\x07\x1b"),
        ("DE", "CTRL-OK", "Stuhl\x00mit\tLehne\r\n"),
        ("", "NOREGION", "Lampe"),
        ("XX", "UNKNOWN", "Lampe"),
        ("DE", "A\x1fB", "Regal"),
        ("DE", "LONG", megabyte),
        ("DE", "OK1", "Tisch aus Eiche, geölt"),  # duplicate: the last occurrence wins
    ]
    region, sku, description = (list(c) for c in zip(*rows, strict=True))
    src = write(tmp_path / "in.parquet", {"sku": sku, "region": region, "description": description})
    summary = run(tmp_path, store, src, allowed_regions=["DE", "FR", "US"], batch_size=4)

    assert texts(store) == {
        ("DE", "OK1"): "Tisch aus Eiche, geölt",
        ("DE", "CTRL-OK"): "Stuhl mit Lehne",
        ("DE", "LONG"): texts(store)[("DE", "LONG")],
    }
    assert len(texts(store)[("DE", "LONG")].split()) <= FakeEncoder().max_seq_length - 2
    assert summary["truncated"] == 1 and summary["clipped"] == 1  # the raw 1 MB column is cut in the payload
    by_sku = {r["sku"]: r for r in quarantine_rows(tmp_path / "q.parquet")}
    assert {s: r["reason"].split(";")[0] for s, r in by_sku.items()} == {
        "NULL": "empty description",
        "EMPTY": "empty description",
        "SPACES": "empty description",
        "CTRL": "empty description",
        "NOREGION": "empty region",
        "UNKNOWN": "unknown region",
        "A\x1fB": "control character in sku",
        "OK1": "duplicate (region, sku)",
    }
    assert by_sku["OK1"]["row"] == 0 and f"kept {src} row 10" in by_sku["OK1"]["reason"]
    assert by_sku["CTRL"]["description"] == "\x00\x07\x1b" and by_sku["NULL"]["description"] is None
    assert all(r["source_file"] == str(src) for r in by_sku.values())
    assert summary["invalid"] == 8 and summary["duplicates"] == 1 and summary["quarantined"] == 8
    assert summary["invalid_by_reason"]["empty description"] == 4


def test_invalid_utf8_in_a_binary_column_rejects_only_those_rows(tmp_path: Path, store: CatalogStore) -> None:
    table = pa.table(
        {
            "sku": pa.array([b"B1", b"B2", b"B\xff3"], pa.binary()),
            "region": ["DE"] * 3,
            "description": pa.array(["Würfel".encode(), b"caf\xe9 latin-1", b"ok"], pa.binary()),
        }
    )
    src = write(tmp_path / "bin.parquet", table)
    summary = run(tmp_path, store, src)
    assert texts(store) == {("DE", "B1"): "Würfel"}
    reasons = {r["row"]: (r["reason"], r["description"]) for r in quarantine_rows(tmp_path / "q.parquet")}
    assert reasons == {
        1: ("invalid UTF-8 in description", "caf\\xe9 latin-1"),
        2: ("invalid UTF-8 in sku", "ok"),
    }
    assert summary["invalid_by_reason"] == {"invalid UTF-8 in description": 1, "invalid UTF-8 in sku": 1}


def test_column_types(tmp_path: Path, store: CatalogStore) -> None:
    ints = write(
        tmp_path / "int.parquet", {"sku": [101, 102], "region": ["US", "US"], "description": ["x", "y"]}
    )
    assert run(tmp_path, store, ints)["upserted"] == 2 and ("US", "101") in texts(store)
    floats = write(tmp_path / "f.parquet", {"sku": [1.5], "region": ["US"], "description": ["x"]})
    with pytest.raises(BadFileError, match=r"column 'sku' must be a string or integer type; got double"):
        embed_catalog(floats, store, FakeEncoder(), on_bad_file="fail_fast")
    lists = write(tmp_path / "l.parquet", {"sku": ["a"], "region": ["US"], "description": [["x"]]})
    with pytest.raises(BadFileError, match=r"'description' must be a string .*; got list<element: string>"):
        embed_catalog(lists, store, FakeEncoder(), on_bad_file="fail_fast")


def test_schemas_that_differ_between_files_of_one_glob(tmp_path: Path, store: CatalogStore) -> None:
    write(tmp_path / "in" / "a.parquet", {**GOOD, "brand": ["X", "Y", "Z"]})
    large = pa.table(
        {
            "sku": pa.array(["B1"], pa.large_string()),
            "region": pa.array(["FR"]).dictionary_encode(),
            "description": pa.array(["Chaise"], pa.large_string()),
            "gtin": [4006381333931],
        }
    )
    write(tmp_path / "in" / "b.parquet", large)
    write(tmp_path / "in" / "c.parquet", pa.table({k: pa.array([], pa.string()) for k in GOOD}))  # zero rows
    summary = run(tmp_path, store, str(tmp_path / "in" / "*.parquet"))
    assert summary["upserted"] == 4 and summary["files"] == 3 and summary["bad_files"] == {}
    records, _ = store.client.scroll(store.collection, limit=10, with_payload=True)
    by_sku = {r.payload["sku"]: r.payload for r in records}
    assert by_sku["A1"]["brand"] == "X" and "gtin" not in by_sku["A1"]
    assert by_sku["B1"]["gtin"] == 4006381333931 and by_sku["B1"]["region"] == "FR"


def test_zero_row_file_alone_is_an_empty_run_not_an_error(tmp_path: Path, store: CatalogStore) -> None:
    empty = write(tmp_path / "e.parquet", pa.table({k: pa.array([], pa.string()) for k in GOOD}))
    summary = run(tmp_path, store, empty)
    assert summary["rows_read"] == summary["upserted"] == summary["invalid"] == 0
    assert quarantine_rows(tmp_path / "q.parquet") == []


def test_pandas_style_all_null_columns_are_rows_to_reject_not_a_crash(
    tmp_path: Path, store: CatalogStore
) -> None:
    nulls = write(
        tmp_path / "n.parquet",
        pa.table({"sku": pa.nulls(2), "region": pa.nulls(2), "description": pa.nulls(2)}),
    )
    summary = run(tmp_path, store, nulls)
    assert summary["invalid_by_reason"] == {"empty sku": 2}


@pytest.mark.parametrize(
    ("limit", "fails"), [(None, False), (2, False), (1, True), ("40%", False), ("30%", True), ("2", False)]
)
def test_max_invalid_fails_after_writing_the_quarantine_file(
    tmp_path: Path, store: CatalogStore, limit: Any, fails: bool
) -> None:
    # 5 rows: 2 invalid, 1 duplicate (not counted), 2 valid keys
    src = write(
        tmp_path / "in.parquet",
        {"sku": ["a", "b", "c", "", "a"], "region": ["DE"] * 5, "description": ["x", "y", " ", "z", "x2"]},
    )
    store.ensure_collection(16)
    store.upsert([point_id("DE", "gone")], [[1.0] + [0.0] * 15], [{"sku": "gone", "region": "DE"}])
    if fails:
        with pytest.raises(
            TooManyInvalidRowsError,
            match=rf"2 of 5 rows were invalid, more than max_invalid={limit}.*q\.parquet",
        ) as caught:
            run(tmp_path, store, src, max_invalid=limit)
        summary = caught.value.summary
        assert summary["vanished_skipped"] and store.count(status="stale") == 0
    else:
        summary = run(tmp_path, store, src, max_invalid=limit)
        assert store.count(status="stale") == 1  # "gone" flagged: a clean enough run
    assert summary["upserted"] == 2 and len(quarantine_rows(tmp_path / "q.parquet")) == 3


@pytest.mark.parametrize("bad", ["-1", "5 percent", "150%", True, 1.5])
def test_max_invalid_rejects_nonsense(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_invalid"):
        parse_max_invalid(bad)


def test_quarantine_file_is_rewritten_on_every_run_and_never_half_written(
    tmp_path: Path, store: CatalogStore
) -> None:
    src = write(tmp_path / "in.parquet", {"sku": ["a", ""], "region": ["DE"] * 2, "description": ["x", "y"]})
    run(tmp_path, store, src)
    assert len(quarantine_rows(tmp_path / "q.parquet")) == 1
    run(tmp_path, store, write(tmp_path / "in.parquet", GOOD))
    assert quarantine_rows(tmp_path / "q.parquet") == []  # not the previous run's rows
    (tmp_path / ".q.parquet.tmp-999999999").write_bytes(b"left by a killed run")
    run(tmp_path, store, src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "q.parquet"]


def test_cluster_options_reach_creation_and_bad_input_still_creates_nothing(
    tmp_path: Path, store: CatalogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    real = store.ensure_collection

    def spy(dim: int, **kwargs: Any) -> bool:
        calls.append(kwargs)
        return real(dim, **kwargs)

    monkeypatch.setattr(store, "ensure_collection", spy)
    bad = write(tmp_path / "bad.parquet", {"sku": ["a"], "region": ["DE"]})
    with pytest.raises(EmbedInputError):
        run(tmp_path, store, bad, collection_options={"shard_number": 2})
    assert calls == [] and not store.exists()
    run(tmp_path, store, write(tmp_path / "good.parquet", GOOD), collection_options={"shard_number": 2})
    assert calls == [{"quantization": False, "shard_number": 2}]


@pytest.mark.slow
def test_one_megabyte_description_with_the_real_model_is_cut_to_its_token_budget(
    tmp_path: Path, encoder: Any
) -> None:
    from polyglot_catalog.store import vector_name_for

    megabyte = "Massivholz-Esstisch aus geölter Eiche, 180 cm, ausziehbar. " * 17_500  # ~1 MB
    src = write(tmp_path / "big.parquet", {**GOOD, "description": ["Tisch", megabyte, "Lampe"]})
    store = CatalogStore(open_client(path=":memory:"), "c", vector_name_for(encoder.model_name))
    summary = embed_catalog(src, store, encoder, quarantine_path=tmp_path / "q.parquet")
    assert summary["upserted"] == 3 and summary["truncated"] == 1 and summary["clipped"] == 1
    text = store.fetch_payloads([point_id("DE", "A2")], ["text"])[point_id("DE", "A2")]["text"]
    assert encoder.max_seq_length - 40 < encoder.count_tokens([text])[0] <= encoder.max_seq_length
