"""CLI: stable subcommands, one-line errors with non-zero exits, stats JSON from a real local store."""

from __future__ import annotations

import json
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import FakeEncoder

from polyglot_catalog.cli import EXIT_INPUT, EXIT_USAGE, main


def _one_line_error(capsys) -> str:
    """The reason is one line, last on stderr (progress log lines may precede it), with no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert error_lines == [err.splitlines()[-1]], err
    assert error_lines[0].startswith("polyglot-catalog")
    return error_lines[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "COMMAND"),
        (["frobnicate"], "invalid choice"),
        (["embed", "--collection", "c", "--qdrant-path", "/tmp/q"], "--source"),
        (["embed", "--source", "x", "--collection", "c"], "--qdrant-path --qdrant-url"),
        (
            ["embed", "--source", "x", "--collection", "c", "--qdrant-path", "q", "--precision", "half"],
            "bf16",
        ),
        (["embed", "--source", "x", "--collection", "c", "--qdrant-path", "q", "--threads", "0"], "positive"),
        (["stats", "--collection", "c", "--qdrant-path", "q", "--qdrant-url", "http://h"], "not allowed"),
        (["match", "--collection", "c", "--qdrant-path", "q"], "--out"),
        (["match", "--collection", "c", "--qdrant-path", "q", "--out", "o", "--threshold", "1.7"], "[0, 1]"),
        (["match", "--collection", "c", "--qdrant-path", "q", "--out", "o", "--threshold", "hi"], "number"),
        (["match", "--collection", "c", "--qdrant-path", "q", "--out", "o", "--regions", ","], "regions"),
        (
            ["match", "--collection", "c", "--qdrant-path", "q", "--out", "o", "--candidates", "hnsw"],
            "choice",
        ),
        (["match", "--collection", "c", "--qdrant-path", "q", "--out", "o", "--hnsw-ef", "0"], "positive"),
    ],
)
def test_bad_arguments_exit_non_zero_with_one_line(capsys, argv, expected):
    assert main(argv) == EXIT_USAGE
    assert expected in _one_line_error(capsys)


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("embed", "match", "lookup", "stats", "build-model"):
        assert command in out


def test_missing_source_is_one_line(capsys, tmp_path):
    argv = ["embed", "--source", str(tmp_path / "none*.parquet"), "--collection", "c"]
    assert main([*argv, "--qdrant-path", str(tmp_path / "q")]) == EXIT_INPUT
    assert "matched no Parquet files" in _one_line_error(capsys)


def test_bad_parquet_is_one_line(capsys, tmp_path):
    bad = tmp_path / "DE.parquet"
    pq.write_table(pa.table({"sku": ["a"], "region": ["DE"]}), bad)  # no description column
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()):
        code = main(
            ["embed", "--source", str(bad), "--collection", "c", "--qdrant-path", str(tmp_path / "q")]
        )
    assert code == EXIT_INPUT
    assert "description" in _one_line_error(capsys)


def _catalog(tmp_path) -> str:
    source = tmp_path / "catalog.parquet"
    pq.write_table(pa.table({"sku": ["d1"], "region": ["DE"], "description": ["Tisch aus Eiche"]}), source)
    return str(source)


def _embed_argv(tmp_path) -> list[str]:
    return [
        "embed",
        "--source",
        _catalog(tmp_path),
        "--collection",
        "c",
        "--qdrant-path",
        str(tmp_path / "q"),
    ]


def test_embed_passes_precision_and_threads_to_the_encoder(capsys, tmp_path):
    argv = _embed_argv(tmp_path)
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()) as encoder_cls:
        assert main([*argv, "--precision", "bf16", "--threads", "1"]) == 0
        assert main(argv) == 0
    assert encoder_cls.call_args_list == [
        mock.call(precision="bf16", threads=1),
        mock.call(precision="auto", threads=None),
    ]


def test_fp16_on_cpu_is_one_line_before_the_model_loads(capsys, tmp_path):
    argv = _embed_argv(tmp_path)
    with (
        mock.patch("torch.cuda.is_available", return_value=False),
        mock.patch("polyglot_catalog.encoding.load_sentence_transformer") as load,
    ):
        assert main([*argv, "--precision", "fp16"]) == EXIT_INPUT
    load.assert_not_called()
    assert "use 'bf16'" in _one_line_error(capsys)


def test_stats_on_missing_store_or_collection_is_one_line(capsys, tmp_path):
    assert main(["stats", "--collection", "c", "--qdrant-path", str(tmp_path / "nope")]) == EXIT_INPUT
    assert "no Qdrant data" in _one_line_error(capsys)
    (tmp_path / "q").mkdir()
    assert main(["stats", "--collection", "c", "--qdrant-path", str(tmp_path / "q")]) == EXIT_INPUT
    assert "collection 'c' does not exist" in _one_line_error(capsys)


def test_match_with_missing_labels_is_one_line(capsys, tmp_path):
    argv = ["match", "--collection", "c", "--qdrant-path", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*argv, "--labels", str(tmp_path / "labels.parquet")]) == EXIT_INPUT
    assert "labels file" in _one_line_error(capsys)


def test_unreachable_server_is_one_line(capsys):
    assert main(["stats", "--collection", "c", "--qdrant-url", "http://127.0.0.1:9"]) == EXIT_INPUT
    _one_line_error(capsys)


def test_match_passes_the_candidate_path_and_search_beam(capsys, tmp_path):
    argv = ["match", "--collection", "c", "--qdrant-path", str(tmp_path / "q"), "--out", str(tmp_path / "o")]
    with (
        mock.patch("polyglot_catalog.cli._client"),
        mock.patch("polyglot_catalog.cli._store"),
        mock.patch("polyglot_catalog.cli._reviewed", return_value=None),
        mock.patch("polyglot_catalog.matching.run.read_state", return_value=None),  # first run: full
        mock.patch("polyglot_catalog.matching.run.match_catalog") as match,
        mock.patch("polyglot_catalog.reports.write_reports", return_value=tmp_path / "o"),
        mock.patch(
            "polyglot_catalog.matching.run.commit_match_state",
            side_effect=lambda store, result, run_id, before_apply, **_: before_apply(result),
        ),
    ):
        match.return_value.summary = {}
        assert main([*argv, "--candidates", "qdrant", "--hnsw-ef", "256"]) == 0
        assert main(argv) == 0
    first, second = (c.kwargs for c in match.call_args_list)
    assert (first["candidates"], first["hnsw_ef"]) == ("qdrant", 256)
    assert second["candidates"] == "auto" and "hnsw_ef" not in second  # the library default stands


def test_embed_then_stats_prints_points_per_region(capsys, tmp_path):
    source = tmp_path / "catalog.parquet"
    pq.write_table(
        pa.table(
            {
                "sku": ["d1", "d2", "u1"],
                "region": ["DE", "DE", "US"],
                "description": ["Tisch aus Eiche", "Stuhl", "Oak table"],
            }
        ),
        source,
    )
    store = ["--collection", "cat", "--qdrant-path", str(tmp_path / "q")]
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()):
        assert main(["embed", "--source", str(source), *store, "--model", "fake-model"]) == 0
    embed_summary = json.loads(capsys.readouterr().out)
    assert embed_summary["upserted"] == 3

    # stats reads the default model's vector name; the count does not depend on it.
    assert main(["stats", *store]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["points"] == 3
    assert stats["regions"] == {"DE": 2, "US": 1}


class _Terminal:
    """A stderr stand-in that says it is a terminal, so the live bar is drawn."""

    def __init__(self) -> None:
        self.chunks: list[str] = []

    def write(self, text: str) -> int:
        self.chunks.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_embed_shows_a_live_bar_only_on_a_terminal(capsys, monkeypatch, tmp_path, tty):
    source = tmp_path / "catalog.parquet"
    rows = [f"s{i}" for i in range(40)]
    pq.write_table(pa.table({"sku": rows, "region": ["DE"] * 40, "description": rows}), source)
    terminal = _Terminal()
    if tty:
        monkeypatch.setattr("sys.stderr", terminal)
    argv = ["embed", "--source", str(source), "--collection", "c", "--qdrant-path", str(tmp_path / "q")]
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()):
        assert main([*argv, "--model", "fake-model"]) == 0
    drawn = "".join(terminal.chunks)
    bar = "40/40 ["  # tqdm's "done/total [elapsed<eta, rate]"; the plain log line has no bracket
    if tty:
        assert bar in drawn and "rows/s" in drawn
    else:
        assert bar not in capsys.readouterr().err


WORDS = ["oak", "table", "chair", "lamp", "steel", "glass", "sofa", "desk", "shelf", "rug", "mirror", "clock"]


def _twin_catalog(path, regions=("DE", "US"), n=12, drop=()):
    """Identical texts in every region (the fake encoder gives them one vector), so twins are clear."""
    rows = [
        (f"{r}-{i}", r, f"{WORDS[i]} {WORDS[(i * 7 + 3) % len(WORDS)]} model {i} size {i * 10}")
        for r in regions
        for i in range(n)
        if (r, i) not in drop
    ]
    sku, region, text = zip(*rows, strict=True)
    pq.write_table(pa.table({"sku": list(sku), "region": list(region), "description": list(text)}), path)


def test_match_writes_state_and_lookup_reads_it_without_a_model(capsys, tmp_path):
    source = tmp_path / "catalog.parquet"
    _twin_catalog(source)
    store = ["--collection", "cat", "--qdrant-path", str(tmp_path / "q")]
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()):
        assert main(["embed", "--source", str(source), *store, "--model", "fake-model"]) == 0
    capsys.readouterr()
    match = ["match", *store, "--model", "fake-model", "--threshold", "0.5"]
    assert main([*match, "--out", str(tmp_path / "r1"), "--run-id", "night-1", "--full-rematch"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["run_id"] == "night-1" and first["changes"]["new_group"] == first["matches"] * 2
    summary = json.loads((tmp_path / "r1" / "summary.json").read_text())
    assert summary["full_rematch"] is True and summary["run_id"] == "night-1"

    with mock.patch("polyglot_catalog.encoding.Encoder", side_effect=AssertionError("no model load")):
        assert main(["lookup", *store, "--region", "US", "--sku", "US-3"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["group_id"] is not None
    assert found["twins"]["DE"]["sku"] == "DE-3" and found["twins"]["DE"]["run"] == "night-1"

    # night 2: DE-3 is delisted; only its group changes, and the other groups keep their ids
    _twin_catalog(source, drop={("DE", 3)})
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()):
        assert main(["embed", "--source", str(source), *store, "--model", "fake-model"]) == 0
    capsys.readouterr()
    assert main([*match, "--out", str(tmp_path / "r2"), "--run-id", "night-2"]) == 0
    second = json.loads(capsys.readouterr().out)
    changes = pq.read_table(tmp_path / "r2" / "changes.parquet").to_pylist()
    assert {(c["region"], c["sku"], c["kind"]) for c in changes} == {
        ("DE", "DE-3", "dissolved"),
        ("US", "US-3", "dissolved"),
    }
    assert second["changes"]["dissolved"] == 2
    groups1 = pq.read_table(tmp_path / "r1" / "groups.parquet").to_pandas()
    groups2 = pq.read_table(tmp_path / "r2" / "groups.parquet").to_pandas()
    kept = groups1[groups1["sku"] != "US-3"].merge(groups2, on=["region", "sku"], suffixes=("_1", "_2"))
    assert len(kept) == len(groups2) and (kept["group_id_1"] == kept["group_id_2"]).all()
    assert main(["lookup", *store, "--region", "US", "--sku", "US-3"]) == 0
    assert json.loads(capsys.readouterr().out)["group_id"] is None


def test_lookup_of_an_unknown_product_is_one_line(capsys, tmp_path):
    source = tmp_path / "catalog.parquet"
    _twin_catalog(source, n=2)
    store = ["--collection", "cat", "--qdrant-path", str(tmp_path / "q")]
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()):
        assert main(["embed", "--source", str(source), *store, "--model", "fake-model"]) == 0
    capsys.readouterr()
    assert main(["lookup", *store, "--region", "US", "--sku", "nope"]) == EXIT_INPUT
    assert "no product region='US' sku='nope'" in _one_line_error(capsys)
    assert main(["lookup", "--collection", "other", "--qdrant-path", str(tmp_path / "q"), "--region", "US",
                 "--sku", "x"]) == EXIT_INPUT  # fmt: skip
    assert "collection 'other' does not exist" in _one_line_error(capsys)
