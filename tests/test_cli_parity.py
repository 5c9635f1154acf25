"""CLI at parity with the DAG, and it tells what the operator tells (#20 points 4-5, #21 point 6).

Every test runs ``main`` on real Parquet files and a real embedded store, with the fake encoder.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import FakeEncoder

from polyglot_catalog.cli import EXIT_INPUT, EXIT_INTERNAL, main
from polyglot_catalog.quarantine import read_quarantine


def _write(path: Path, **columns: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def _catalog(folder: Path) -> Path:
    """DE and FR files, two products each; DE has an empty description and a duplicate key."""
    _write(
        folder / "DE.parquet",
        sku=["d1", "d2", "d3", "d1"],
        region=["DE"] * 4,
        description=["Tisch aus Eiche", "Sofa grau", "  ", "Tisch aus Eiche, neu"],
    )
    _write(
        folder / "FR.parquet", sku=["f1", "f2"], region=["FR"] * 2, description=["Table en chêne", "Canapé"]
    )
    return folder


def _run(*argv: str) -> int:
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()):
        return main(list(argv))


def _out(capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return json.loads(captured.out) if captured.out.strip() else {}, captured.err


@pytest.fixture
def store_args(tmp_path: Path) -> list[str]:
    return ["--collection", "cat", "--qdrant-path", str(tmp_path / "q"), "--model", "fake-model"]


def test_success_prints_the_counts_and_writes_the_quarantine_file(tmp_path, store_args, capsys):
    source = _catalog(tmp_path / "in")
    quarantine = tmp_path / "rejected.parquet"
    assert _run("embed", "--source", str(source), *store_args, "--quarantine", str(quarantine)) == 0
    summary, err = _out(capsys)
    assert (summary["embedded"], summary["quarantined"], summary["bad_files"]) == (4, 2, {})
    assert f"4 embedded, 0 unchanged, 2 quarantined (in {quarantine})" in err
    table, complete = read_quarantine(quarantine)
    assert complete and sorted(table["reason"].to_pylist())[0].startswith("duplicate")
    assert _run("embed", "--source", str(source), *store_args) == 0
    summary, err = _out(capsys)
    assert summary["skipped_unchanged"] == 4 and "0 embedded, 4 unchanged, 2 quarantined" in err
    assert "pass --quarantine FILE" in err


def test_failure_still_prints_the_counts_the_bad_file_and_the_quarantine_file(tmp_path, store_args, capsys):
    source = _catalog(tmp_path / "in")
    (source / "broken.parquet").write_bytes(b"not parquet at all")
    quarantine = tmp_path / "rejected.parquet"
    code = _run("embed", "--source", str(source), *store_args, "--quarantine", str(quarantine))
    assert code == EXIT_INPUT
    summary, err = _out(capsys)
    assert summary["embedded"] == 4 and summary["quarantined"] == 3
    assert list(summary["bad_files"]) == [str(source / "broken.parquet")]
    lines = err.strip().splitlines()
    assert "4 embedded, 0 unchanged, 3 quarantined" in lines[-2] and "1 bad file(s)" in lines[-2]
    assert "error:" in lines[-1] and "broken.parquet" in lines[-1]
    assert read_quarantine(quarantine)[0].num_rows == 3


def test_vanished_keep_flag_and_delete_when_embedding_a_subset(tmp_path, store_args, capsys):
    source = _catalog(tmp_path / "in")
    assert _run("embed", "--source", str(source), *store_args) == 0
    subset = _write(tmp_path / "subset" / "DE.parquet", sku=["d1"], region=["DE"], description=["Tisch"])
    for mode, expected in (("keep", (4, 0)), ("flag", (4, 1)), ("delete", (3, 0))):
        capsys.readouterr()
        assert _run("embed", "--source", str(subset), *store_args, "--vanished", mode) == 0
        capsys.readouterr()
        assert _run("stats", *store_args[:4]) == 0
        stats, _ = _out(capsys)
        assert (stats["points"], stats["stale"]) == expected, mode


def test_full_refresh_max_invalid_allowed_regions_and_alias(tmp_path, store_args, capsys):
    source = _catalog(tmp_path / "in")
    assert _run("embed", "--source", str(source), *store_args, "--allowed-regions", "DE") == 0
    summary, _ = _out(capsys)
    assert summary["invalid_by_reason"]["unknown region"] == 2 and summary["embedded"] == 2
    assert _run("embed", "--source", str(source), *store_args, "--full-refresh", "--alias", "live") == 0
    summary, _ = _out(capsys)
    assert summary["embedded"] == 4 and summary["skipped_unchanged"] == 0 and summary["alias"] == "live"
    assert _run("stats", "--collection", "live", "--qdrant-path", str(tmp_path / "q")) == 0
    assert _out(capsys)[0]["points"] == 4
    assert _run("embed", "--source", str(source), *store_args, "--max-invalid", "0") == EXIT_INPUT
    _, err = _out(capsys)
    assert "more than max_invalid=0" in err.strip().splitlines()[-1]


def test_bad_options_fail_before_the_store_opens_or_the_model_loads(tmp_path, store_args, capsys):
    source = _catalog(tmp_path / "in")
    base = ["embed", "--source", str(source), *store_args]
    cases = [
        (["--max-invalid", "lots"], "max_invalid"),
        (["--columns", "description"], "catalog_column=file_column"),
        (["--columns", "description=a,sku=a"], "two catalog columns"),
        (["--allowed-regions", "D E"], "region 'D E' is not allowed"),
        (["--alias", "cat"], "must differ"),
        (["--alias", "../x"], "alias"),
    ]
    with mock.patch("polyglot_catalog.encoding.load_sentence_transformer") as load:
        for extra, expected in cases:
            assert main([*base, *extra]) != 0
            err = capsys.readouterr().err
            assert expected in err and "Traceback" not in err, extra
    load.assert_not_called()
    assert not (tmp_path / "q").exists()


def test_column_mapping_reads_a_catalog_with_other_names(tmp_path, store_args, capsys):
    source = _write(
        tmp_path / "in" / "shop.parquet",
        item_id=["a1", "a2"],
        market=["DE", "FR"],
        product_text=["Tisch aus Eiche", "Table en chêne"],
        description=[None, None],  # an unrelated column of the mapped name is ignored
    )
    mapping = "description=product_text, sku=item_id, region=market"
    assert _run("embed", "--source", str(source), *store_args, "--columns", mapping) == 0
    summary, _ = _out(capsys)
    assert (summary["embedded"], summary["regions"], summary["quarantined"]) == (2, ["DE", "FR"], 0)
    code = _run("embed", "--source", str(source), *store_args, "--columns", "description=desc")
    assert code == EXIT_INPUT
    _, err = _out(capsys)
    assert "missing column 'desc' (mapped to 'description')" in err


def test_labels_parquet_in_the_source_is_skipped_by_the_cli_as_by_the_dag(tmp_path, store_args, capsys):
    from polyglot_catalog.reading import catalog_files

    source = _catalog(tmp_path / "in")
    _write(source / "labels.parquet", region=["DE"], sku=["d1"], group_id=["g1"])
    assert [Path(p).name for p in catalog_files(str(source / "*.parquet"))] == ["DE.parquet", "FR.parquet"]
    assert _run("embed", "--source", str(source / "*.parquet"), *store_args) == 0
    summary, _ = _out(capsys)
    assert summary["files"] == 2 and summary["bad_files"] == {}
    assert _run("embed", "--source", str(source / "labels.parquet"), *store_args) == EXIT_INPUT
    assert "holds only labels.parquet" in _out(capsys)[1]
    dag_source = (Path(__file__).resolve().parents[1] / "dags" / "catalog_embed.py").read_text()
    assert "catalog_files(source)" in dag_source  # the DAG's listing task uses the same rule


def test_a_bug_is_one_line_and_the_traceback_only_with_verbose(tmp_path, store_args, capsys):
    source = _catalog(tmp_path / "in")
    with mock.patch("polyglot_catalog.embed.embed_catalog", side_effect=KeyError("oops")):
        assert _run("embed", "--source", str(source), *store_args) == EXIT_INTERNAL
        err = capsys.readouterr().err
        assert "Traceback" not in err and "internal error: KeyError" in err.strip().splitlines()[-1]
        assert _run("-v", "embed", "--source", str(source), *store_args) == EXIT_INTERNAL
        assert "Traceback" in capsys.readouterr().err


def test_single_region_collection_warns_that_it_can_match_nothing(tmp_path, store_args, capsys):
    source = _write(
        tmp_path / "in" / "DE.parquet", sku=["d1", "d2"], region=["DE"] * 2, description=["a", "b"]
    )
    assert _run("embed", "--source", str(source), *store_args) == 0
    capsys.readouterr()
    assert _run("match", *store_args, "--out", str(tmp_path / "report")) == 0
    err = capsys.readouterr().err
    assert "has 1 region(s) to match ['DE']" in err and "needs at least two" in err
    # nothing was fitted, so there is no scorer to continue with: the next run is full again, and says why
    assert _run("match", *store_args, "--out", str(tmp_path / "report2")) == 0
    out, _err = _out(capsys)
    assert out["mode"] == "full" and "fitted no scorer" in out["full_run_reason"]


def test_embed_checks_the_store_before_the_model_loads(tmp_path, store_args, capsys):
    from polyglot_catalog.store import open_client

    source = _catalog(tmp_path / "in")
    holder = open_client(path=str(tmp_path / "q"))  # another process or task holds the folder
    try:
        with mock.patch("polyglot_catalog.encoding.load_sentence_transformer") as load:
            assert main(["embed", "--source", str(source), *store_args]) == EXIT_INPUT
        load.assert_not_called()
        assert "already accessed" in capsys.readouterr().err
    finally:
        holder.close()


def test_a_stalling_server_fails_after_the_read_timeout_naming_endpoint_and_attempts(monkeypatch, capsys):
    monkeypatch.setattr("time.sleep", lambda _s: None)
    with socket.socket() as server:  # accepts connections (backlog) and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        port = server.getsockname()[1]
        argv = ["stats", "--collection", "c", "--qdrant-url", f"http://127.0.0.1:{port}"]
        assert main([*argv, "--read-timeout", "0.3", "--connect-timeout", "0.3"]) == EXIT_INPUT
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"Qdrant at http://127.0.0.1:{port}" in line and "after 4 attempt(s)" in line
    assert "timed out" in line and "collection check" in line


def test_timeouts_reach_the_server_client():
    from polyglot_catalog.store import open_client

    client = open_client(url="http://127.0.0.1:9", timeout=7, connect_timeout=1.5)
    timeout = client._client.openapi_client.client._client.timeout
    assert (timeout.connect, timeout.read) == (1.5, 7)
    with pytest.raises(ValueError, match="connect timeout"):
        open_client(url="http://127.0.0.1:9", connect_timeout=0)
    assert main(["stats", "--collection", "c", "--qdrant-url", "http://h", "--read-timeout", "-1"]) == 2
