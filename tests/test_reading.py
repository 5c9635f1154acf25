"""Streaming reads: source resolution, row bookkeeping, projection, quarantine and duplicate rules."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from polyglot_catalog.reading import CatalogReader, MissingColumnError, iter_batches, list_sources


def write(path: Path, **columns: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=7)
    return path


def catalog(path: Path, n: int, region: str = "DE", start: int = 0) -> Path:
    ids = range(start, start + n)
    return write(
        path,
        sku=[f"S{i}" for i in ids],
        region=[region] * n,
        description=[f"product {i}" for i in ids],
        title=[f"T{i}" for i in ids],
        brand=["b"] * n,
        n=list(ids),
    )


def test_list_sources_accepts_file_dir_glob_and_lists(tmp_path: Path) -> None:
    a = catalog(tmp_path / "x" / "a.parquet", 2)
    b = catalog(tmp_path / "x" / "sub" / "b.parquet", 2)
    (tmp_path / "x" / "notes.txt").write_text("ignored")
    assert list_sources(a) == [str(a)]
    assert list_sources(tmp_path / "x") == [str(a), str(b)]
    assert list_sources(str(tmp_path / "x" / "*.parquet")) == [str(a)]
    assert list_sources([str(b), str(a), str(b)]) == [str(b), str(a)]
    assert list_sources(f"file://{a}") == [str(a)]
    with pytest.raises(FileNotFoundError, match="nope"):
        list_sources(tmp_path / "nope.parquet")
    with pytest.raises(FileNotFoundError, match="matched no Parquet"):
        list_sources(str(tmp_path / "x" / "*.csv"))


def test_batches_know_file_and_row_numbers(tmp_path: Path) -> None:
    path = catalog(tmp_path / "a.parquet", 50)
    reader = CatalogReader(path, batch_size=8)
    parts = list(reader)
    assert reader.total_rows == 50
    assert all(p.batch.num_rows <= 8 and p.source == str(path) for p in parts)
    assert [p.start for p in parts] == sorted(p.start for p in parts)
    for part in parts:
        # row numbers point back at the same rows in the file
        assert part.batch.column("n").to_pylist() == part.rows.tolist()
    assert sum(p.rows_read for p in parts) == 50


def test_projection_reads_required_plus_requested(tmp_path: Path) -> None:
    path = catalog(tmp_path / "a.parquet", 3)
    (part,) = iter_batches(path, columns=["title", "not_there"])
    assert part.batch.schema.names == ["sku", "region", "description", "title"]
    (part,) = iter_batches(path)
    assert part.batch.schema.names == ["sku", "region", "description", "title", "brand", "n"]


def test_bad_rows_are_quarantined_with_file_row_and_reason(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bad.parquet",
        sku=["a", "", "c", None, "e", " f "],
        region=["DE", "DE", " ", "DE", "DE", " DE"],
        description=["ok", "x", "y", "z", " \u00a0\n ", "fine"],
    )
    reader = CatalogReader(path, batch_size=4)
    kept = [
        (r, s)
        for p in reader
        for r, s in zip(p.batch["region"].to_pylist(), p.batch["sku"].to_pylist(), strict=True)
    ]
    assert kept == [("DE", "a"), ("DE", "f")]  # keys are trimmed
    found = {(q.source, q.row, q.reason) for q in reader.quarantine}
    assert found == {
        (str(path), 1, "empty sku"),
        (str(path), 2, "empty region"),
        (str(path), 3, "empty sku"),
        (str(path), 4, "empty description"),
    }
    assert reader.invalid == 4 and reader.invalid_by_reason["empty sku"] == 2


def test_duplicates_keep_the_last_occurrence_across_files(tmp_path: Path) -> None:
    first = write(
        tmp_path / "1.parquet", sku=["a", "b", "a"], region=["DE"] * 3, description=["a1", "b1", "a2"]
    )
    second = write(tmp_path / "2.parquet", sku=["a", "b"], region=["DE", "FR"], description=["a3", "b-fr"])
    reader = CatalogReader(tmp_path, batch_size=2)
    kept = {
        (r, s): d
        for p in reader
        for r, s, d in zip(*(p.batch[c].to_pylist() for c in ("region", "sku", "description")), strict=True)
    }
    assert kept == {("DE", "a"): "a3", ("DE", "b"): "b1", ("FR", "b"): "b-fr"}
    dupes = sorted((q.source, q.row) for q in reader.quarantine)
    assert dupes == [(str(first), 0), (str(first), 2)]
    assert all(f"kept {second} row 0" in q.reason for q in reader.quarantine)
    assert sorted((k["region"], k["sku"]) for k in reader.keys.to_pylist()) == sorted(kept)


def test_an_invalid_last_occurrence_does_not_hide_a_valid_earlier_one(tmp_path: Path) -> None:
    write(tmp_path / "a.parquet", sku=["a", "a"], region=["DE", "DE"], description=["good", "  "])
    reader = CatalogReader(tmp_path)
    kept = [d for p in reader for d in p.batch["description"].to_pylist()]
    assert kept == ["good"]
    assert [q.reason for q in reader.quarantine] == ["empty description"]


def test_missing_required_column_names_the_file(tmp_path: Path) -> None:
    catalog(tmp_path / "good.parquet", 2)
    bad = write(tmp_path / "bad.parquet", sku=["a"], region=["DE"], text=["no description column"])
    with pytest.raises(MissingColumnError, match=rf"{bad}.*\['description'\]"):
        list(CatalogReader(tmp_path))


def test_numeric_skus_are_read_as_strings(tmp_path: Path) -> None:
    path = write(tmp_path / "a.parquet", sku=[101, 102], region=["US", "US"], description=["x", "y"])
    (part,) = iter_batches(path)
    assert part.batch["sku"].to_pylist() == ["101", "102"]


def test_total_rows_without_dedupe_comes_from_metadata(tmp_path: Path) -> None:
    catalog(tmp_path / "a.parquet", 10)
    catalog(tmp_path / "b.parquet", 5, start=10)
    reader = CatalogReader(tmp_path, dedupe=False)
    assert reader.total_rows == 15
    with pytest.raises(RuntimeError):
        _ = reader.keys


def test_shipped_demo_catalog_is_valid_input_with_complete_labels() -> None:
    sample = Path(__file__).resolve().parents[1] / "include" / "demo_catalog"
    reader = CatalogReader(sorted(str(p) for p in sample.glob("[A-Z][A-Z].parquet")), batch_size=128)
    keys = {
        (r, s)
        for p in reader
        for r, s in zip(p.batch["region"].to_pylist(), p.batch["sku"].to_pylist(), strict=True)
    }
    assert reader.quarantine == [] and {r for r, _ in keys} == {"DE", "FR", "US"}
    labels = pq.read_table(sample / "labels.parquet").to_pylist()
    assert {(r["region"], r["sku"]) for r in labels} == keys
    groups: dict[int, set[str]] = {}
    for r in labels:
        groups.setdefault(r["group_id"], set()).add(r["region"])
    assert {frozenset(g) for g in groups.values()} == {
        frozenset(x) for x in ({"US", "DE", "FR"}, {"US", "DE"}, {"US", "FR"})
    }
    # the same product must not be recognisable by its SKU number across regions
    by_group = {(r["group_id"], r["region"]): r["sku"].split("-")[1] for r in labels}
    same_number = sum(by_group[(g, "US")] == by_group.get((g, "DE")) for g in groups)
    assert same_number < 5


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\u200b",
        "\u00a0\u2003",
        "\x00\t\n\x0b\x85",
        "\ufeff\u00ad",
        "a",
        "\u0301",
        " x\u200b",
        "é",
        None,
    ],
)
def test_description_check_agrees_with_clean_text(text: str | None) -> None:
    from polyglot_catalog.reading import _has_text  # private: the rule is what is under test
    from polyglot_catalog.text import clean_text

    values = pa.array([text], pa.string())
    expected = pc.fill_null(pc.greater(pc.utf8_length(clean_text(values)), 0), False)
    assert _has_text(values).to_pylist() == expected.to_pylist()


def test_column_mapping_parses_text_and_mappings_and_refuses_nonsense() -> None:
    from polyglot_catalog.reading import parse_column_map

    assert parse_column_map(" description = product_text , sku=item_id ") == {
        "description": "product_text",
        "sku": "item_id",
    }
    assert parse_column_map({"description": "desc", "sku": "sku"}) == {
        "description": "desc"
    }  # identity dropped
    assert parse_column_map(None) == parse_column_map("") == parse_column_map("None") == {}
    for bad, why in (
        ("description", "catalog_column=file_column"),
        ("description=", "both sides"),
        ("sku=a,sku=b", "twice"),
        ("sku=a,region=a", "two catalog columns"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_column_map(bad)


def test_mapped_columns_are_read_under_catalog_names_and_a_shadowed_column_is_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path / "shop.parquet",
        item_id=["a", "b"],
        market=["DE", "FR"],
        product_text=["Tisch", "Table"],
        description=[1, 2],  # the file's own 'description' (wrong type) is not read under the mapping
        title=["T1", "T2"],
    )
    reader = CatalogReader(path, column_map="description=product_text,sku=item_id,region=market")
    (part,) = list(reader)
    assert part.batch.column("sku").to_pylist() == ["a", "b"]
    assert part.batch.column("region").to_pylist() == ["DE", "FR"]
    assert part.batch.column("description").to_pylist() == ["Tisch", "Table"]
    assert part.batch.column("title").to_pylist() == ["T1", "T2"]
    assert "product_text" not in part.batch.schema.names
    assert reader.keys.num_rows == 2
    projected = CatalogReader(
        path,
        columns=["title"],
        column_map={"description": "product_text", "sku": "item_id", "region": "market"},
    )
    (part,) = list(projected)
    assert sorted(part.batch.schema.names) == ["description", "region", "sku", "title"]


def test_a_missing_mapped_column_names_the_file_and_the_mapping(tmp_path: Path) -> None:
    path = catalog(tmp_path / "c.parquet", 2)
    with pytest.raises(
        MissingColumnError, match=r"c\.parquet: missing column 'desc' \(mapped to 'description'\)"
    ):
        list(CatalogReader(path, column_map={"description": "desc"}))


def test_catalog_files_skip_labels_parquet_and_refuse_a_source_of_only_labels(tmp_path: Path) -> None:
    from polyglot_catalog.reading import catalog_files

    a = catalog(tmp_path / "x" / "DE.parquet", 2)
    labels = write(tmp_path / "x" / "labels.parquet", region=["DE"], sku=["S0"], group_id=["g"])
    assert catalog_files(tmp_path / "x") == [str(a)]
    assert CatalogReader(tmp_path / "x").sources == [str(a)]
    with pytest.raises(ValueError, match=r"holds only labels\.parquet"):
        catalog_files(labels)
