"""`polyglot-catalog review import|export` (docs/REVIEW.md): both file forms, hashes, round trip, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polyglot_catalog.cli import EXIT_INPUT, main
from polyglot_catalog.ids import point_id
from polyglot_catalog.matching.evaluate import load_labels
from polyglot_catalog.review import ReviewStore
from polyglot_catalog.review.store import text_hash
from polyglot_catalog.store import CatalogStore, open_client


@pytest.fixture
def store_args(tmp_path: Path) -> list[str]:
    client = open_client(path=str(tmp_path / "q"))
    store = CatalogStore(client, "cat", "fake")
    store.ensure_collection(4)
    rows = [(r, f"{r.lower()}{i}") for r in ("DE", "US") for i in range(3)]
    vectors = np.eye(4, dtype=np.float32)[[i % 4 for i in range(len(rows))]]
    store.upsert(
        [point_id(r, s) for r, s in rows],
        vectors,
        [{"region": r, "sku": s, "status": "active", "text": f"text of {s}"} for r, s in rows],
    )
    client.close()
    return ["--collection", "cat", "--qdrant-path", str(tmp_path / "q")]


def _decisions(args: list[str]) -> pd.DataFrame:
    client = open_client(path=args[3])
    try:
        return ReviewStore(client, "cat").decisions()
    finally:
        client.close()


def test_pair_form_import_records_hashes_and_exports_as_labels(
    tmp_path: Path, store_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "pairs.csv"
    src.write_text("region_a,sku_a,region_b,sku_b,decision\nUS,us0,DE,de0,match\nDE,de1,US,us2,no_match\n")
    assert main(["review", "import", *store_args, str(src), "--reviewer", "steward"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] == 2
    frame = _decisions(store_args)
    assert frame[["sku_a", "sku_b", "decision", "reviewer"]].values.tolist() == [
        ["de0", "us0", "match", "steward"],
        ["de1", "us2", "no_match", "steward"],
    ]
    assert frame["hash_a"].tolist() == [text_hash("text of de0"), text_hash("text of de1")]
    assert main(["review", "import", *store_args, str(src)]) == 0  # the same file again changes nothing
    assert json.loads(capsys.readouterr().out)["changed"] == 0

    out = tmp_path / "labels.parquet"
    assert main(["review", "export", *store_args, "--out", str(out)]) == 0
    assert load_labels(out) == {("DE", "de0"): "r000001", ("US", "us0"): "r000001"}
    pairs = tmp_path / "pairs.parquet"
    assert main(["review", "export", *store_args, "--out", str(pairs), "--form", "pairs"]) == 0
    assert pd.read_parquet(pairs)["decision"].tolist() == ["match", "no_match"]


def test_group_form_import_links_every_region_pair_of_a_group(tmp_path: Path, store_args: list[str]) -> None:
    src = tmp_path / "groups.parquet"
    pd.DataFrame(
        [("DE", "de0", "g1"), ("US", "us0", "g1"), ("DE", "de1", "g2"), ("US", "us1", None)],
        columns=["region", "sku", "group_id"],
    ).to_parquet(src)
    assert main(["review", "import", *store_args, str(src)]) == 0
    assert _decisions(store_args)[["sku_a", "sku_b", "decision"]].values.tolist() == [["de0", "us0", "match"]]


def test_a_bad_file_names_the_file_and_row(
    tmp_path: Path, store_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("region_a,sku_a,region_b,sku_b,decision\nDE,de0,US,us0,match\nDE,de1,US,us1,maybe\n")
    assert main(["review", "import", *store_args, str(src)]) == EXIT_INPUT
    assert "bad.csv: decisions row 1: decision 'maybe'" in capsys.readouterr().err
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    assert main(["review", "import", *store_args, str(other)]) == EXIT_INPUT
    assert "neither the group form" in capsys.readouterr().err
    assert _decisions(store_args).empty


def test_the_next_cli_match_honours_imported_decisions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from unittest import mock

    import pyarrow as pa
    import pyarrow.parquet as pq
    from fakes import FakeEncoder

    source = tmp_path / "in"
    source.mkdir()
    texts = {
        "DE": ["Tisch aus Eiche", "Sofa grau", "Lampe weiß"],
        "FR": ["Table en chêne", "Canapé gris", "Lampe blanche"],
    }
    for region, rows in texts.items():
        skus = [f"{region.lower()}{i}" for i in range(len(rows))]
        pq.write_table(
            pa.table({"sku": skus, "region": [region] * len(rows), "description": rows}),
            source / f"{region}.parquet",
        )
    args = ["--collection", "cat", "--qdrant-path", str(tmp_path / "q"), "--model", "fake-model"]
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()):
        assert main(["embed", "--source", str(source), *args]) == 0
        decisions = tmp_path / "d.csv"
        decisions.write_text("region_a,sku_a,region_b,sku_b,decision\nDE,de0,FR,fr1,match\n")
        assert main(["review", "import", *args[:4], str(decisions)]) == 0
        assert main(["match", *args, "--out", str(tmp_path / "run2")]) == 0
    capsys.readouterr()
    pairs = pd.read_parquet(tmp_path / "run2" / "pairs.parquet")
    forced = pairs[(pairs["sku_a"] == "de0") & (pairs["sku_b"] == "fr1")]
    assert forced["decision"].tolist() == ["match"] and forced["score"].tolist() == [1.0]
    summary = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert summary["review"]["applied_match"] == 1 and summary["review"]["lapsed"] == 0
