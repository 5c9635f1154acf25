"""The full match's candidate search in shards (#26): same pairs and groups as one search, parts a
retried task replaces, a missing part named, shard counts from the catalog and a memory budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polyglot_catalog.matching.canonical import TextSets, canonical_table
from polyglot_catalog.matching.data import RegionTable, centred_tables
from polyglot_catalog.matching.pipeline import match_catalog
from polyglot_catalog.matching.region_search import (
    RegionSearch,
    region_digest,
    table_chunks,
    write_region_search,
)
from polyglot_catalog.matching.settings import MatchSettings
from polyglot_catalog.matching.shards import (
    feature_task_mb,
    join_parts,
    map_shard,
    plan_shards,
    shards_for_budget,
)

COLUMNS = ["region_a", "sku_a", "region_b", "sku_b", "score", "decision", "ambiguous", "explain"]


def _catalog(n: int = 90, seed: int = 4) -> dict[str, RegionTable]:
    """Three regions of noisy copies of ``n`` products, with identical listings (same text, so the
    same vector) far apart in SKU order, so they fall into different shards."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 24))
    out = {}
    for r in ("DE", "FR", "US"):
        texts = [f"{r} product {i} size {i % 7}" for i in range(n)]
        for a, b in ((3, 70), (11, 55), (12, 56)):
            if b < n:
                texts[b] = texts[a]  # a duplicate listing in another shard
        vec = base + 0.4 * rng.normal(size=base.shape)
        out[r] = RegionTable(r, [f"{r}-{i:04d}" for i in range(n)], texts, vec)
    return out


def _parts(folder: Path) -> list[Path]:
    """The search parts (not the search, rows, feature or scores files)."""
    return [
        p
        for p in folder.glob("*.parquet")
        if not p.name.startswith(("search-", "rows-", "features-", "sentences-", "scores-", "decisions-"))
    ]


def _search_files(data: dict[str, RegionTable], folder: Path) -> dict[str, TextSets]:
    """What the plan task writes: each region's search file; returns the canonical text sets."""
    for r, t in data.items():
        write_region_search(r, table_chunks(t), folder)
    return {r: TextSets.of(canonical_table(t).texts) for r, t in data.items()}


def _same(a, b) -> None:
    pd.testing.assert_frame_equal(a.pairs[COLUMNS], b.pairs[COLUMNS])
    pd.testing.assert_frame_equal(a.groups, b.groups)
    pd.testing.assert_frame_equal(a.unmatched, b.unmatched)


@pytest.mark.parametrize("shards", [1, 3, 7])
def test_a_sharded_search_finds_the_same_pairs_and_groups_as_one_search(shards: int, tmp_path: Path) -> None:
    data = _catalog()
    one = match_catalog(data, k=5, sentences=None)
    sharded = match_catalog(data, k=5, sentences=None, shards=shards, shard_dir=tmp_path)
    _same(one, sharded)
    assert sharded.summary["candidates_path"] == "exact (shards)"
    assert sharded.summary["scores_from"] == "score task"  # the pairs' scores came from the parts
    assert sharded.summary["decisions_from"] == "score task"  # and so did their decisions
    assert sharded.summary["reproducibility"]["parameters"]["shards"] == shards
    # one part per shard of each of the 3 region pairs (a part serves both directions)
    assert len(_parts(tmp_path)) == 3 * shards


def test_a_retried_shard_replaces_its_own_part_and_a_missing_one_is_named(tmp_path: Path) -> None:
    data = _catalog(n=30)
    texts = _search_files(data, tmp_path)
    settings = MatchSettings(k=4)
    plan = plan_shards({r: len(s) for r, s in texts.items()}, 2)
    for shard in plan:
        map_shard(tmp_path, shard, settings)
    first = join_parts(tmp_path, data, texts, settings.k, plan)
    map_shard(tmp_path, plan[0], settings)  # the task ran twice
    again = join_parts(tmp_path, data, texts, settings.k, plan)
    for key in first:
        np.testing.assert_array_equal(first[key][0], again[key][0])
        np.testing.assert_array_equal(first[key][1], again[key][1])
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / f"{plan[1].name}.parquet").unlink()
    with pytest.raises(ValueError, match=rf"{plan[1].query}<->{plan[1].other} .* miss text {plan[1].start} "):
        join_parts(tmp_path, data, texts, settings.k, plan)


def test_the_plan_covers_each_direction_once_in_contiguous_ranges() -> None:
    plan = plan_shards({"DE": 10, "FR": 3, "US": 0}, 4)
    by_pair: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for s in plan:
        by_pair.setdefault((s.query, s.other), []).append((s.start, s.stop))
    assert by_pair[("DE", "FR")] == by_pair[("DE", "US")] == [(0, 2), (2, 5), (5, 8), (8, 10)]
    assert by_pair[("FR", "US")] == [(0, 1), (1, 2), (2, 3)]  # no more shards than texts
    assert set(by_pair) == {("DE", "FR"), ("DE", "US"), ("FR", "US")}  # one side of each pair
    with pytest.raises(ValueError, match="shards must be >= 1; got 0"):
        plan_shards({"DE": 1}, 0)


def test_the_shard_count_follows_the_catalog_size_and_the_memory_budget() -> None:
    small = shards_for_budget({"DE": 100_000, "FR": 100_000}, 384, 10, 1024)
    large = shards_for_budget({"DE": 1_000_000, "FR": 100_000}, 384, 10, 1024)
    tight = shards_for_budget({"DE": 1_000_000, "FR": 100_000}, 384, 10, 700)
    assert 1 <= small < large < tight
    assert shards_for_budget({"DE": 50_000, "FR": 50_000, "US": 50_000}, 384, 10, 4096) == 1
    # a feature task reads up to 2k rows of the other region per text of its range, never more
    # than the region has: a small other region caps them, so larger ranges fit
    assert shards_for_budget({"DE": 1_000_000, "FR": 20_000}, 384, 10, 1024) < large
    for texts, budget in (
        ({"DE": 300_000, "FR": 300_000, "US": 300_000}, 4096),
        ({"DE": 10**6, "FR": 10**5}, 1024),
    ):
        n = shards_for_budget(texts, 384, 10, budget)
        assert (
            max(feature_task_mb(-(-t // n), max(texts.values()), 384, 10) for t in texts.values()) <= budget
        )
    # sentence vectors make a feature task's rows heavier: smaller ranges
    big = {"DE": 300_000, "FR": 300_000}
    assert shards_for_budget(big, 384, 10, 2048, sentences=True) > shards_for_budget(big, 384, 10, 2048)
    with pytest.raises(ValueError, match="below one search task's fixed part"):
        shards_for_budget({"DE": 1_000_000, "FR": 1_000_000}, 384, 10, 256)


def test_the_feature_task_model_matches_what_was_measured() -> None:
    """bench/RESULTS.md, 2026-12-06 (50k x 3, 4 shards): feature tasks of 12,500 texts against
    50,000 peaked at 978-1,008 MB; ranges of 7,500 against 30,000 at 813 MB (by hand, same code)."""
    assert 900 <= feature_task_mb(12_500, 50_000, 384, 10) <= 1_100
    assert 750 <= feature_task_mb(7_500, 30_000, 384, 10) <= 900


def test_shards_below_one_and_a_sharded_qdrant_search_without_a_store_are_refused() -> None:
    with pytest.raises(ValueError, match="shards must be >= 1; got 0"):
        match_catalog(_catalog(n=10), shards=0)
    with pytest.raises(ValueError, match="candidates='qdrant' needs a CatalogStore"):
        match_catalog(_catalog(n=10), shards=2, candidates="qdrant")


@pytest.mark.parametrize("candidates", ["auto", "qdrant"])
def test_cli_match_with_shards_reports_the_same_pairs(tmp_path: Path, capsys, candidates: str) -> None:
    from unittest import mock

    from fakes import FakeEncoder
    from test_cli_parity import _catalog as cli_catalog

    from polyglot_catalog.cli import main

    source = cli_catalog(tmp_path / "in")
    store = ["--collection", "cat", "--qdrant-path", str(tmp_path / "q"), "--model", "fake-model"]
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()):
        assert main(["embed", "--source", str(source), *store]) == 0
        capsys.readouterr()
        store += ["--candidates", candidates]
        assert main(["match", *store, "--out", str(tmp_path / "one"), "--full-rematch"]) == 0
        one = json.loads(capsys.readouterr().out)
        parts = tmp_path / "parts"
        args = [
            "--out",
            str(tmp_path / "sharded"),
            "--full-rematch",
            "--shards",
            "2",
            "--shard-dir",
            str(parts),
        ]
        assert main(["match", *store, *args]) == 0
        sharded = json.loads(capsys.readouterr().out)
    assert sharded["pairs"] == one["pairs"] and sharded["matches"] == one["matches"]
    a = pd.read_parquet(Path(one["report_dir"]) / "pairs.parquet")
    b = pd.read_parquet(Path(sharded["report_dir"]) / "pairs.parquet")
    pd.testing.assert_frame_equal(a[COLUMNS[:6]], b[COLUMNS[:6]])
    assert len(_parts(parts)) == 2  # DE<->FR: two shards, each serving both directions
    path = json.loads((Path(sharded["report_dir"]) / "summary.json").read_text())["candidates_path"]
    assert path == ("qdrant (shards)" if candidates == "qdrant" else "exact (shards)")


def test_parts_written_by_other_tasks_are_used_and_stale_ones_searched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reduce searches only what no mapped task left current: here one part is missing and one
    was computed from yesterday's catalog (another text), so exactly those two are searched again."""
    from polyglot_catalog.matching import shards as shards_module

    data = _catalog(n=30)
    settings = MatchSettings(k=4)
    texts = _search_files(data, tmp_path)
    plan = plan_shards({r: len(s) for r, s in texts.items()}, 2)
    for shard in plan:  # what the mapped tasks wrote
        map_shard(tmp_path, shard, settings)
    (tmp_path / f"{plan[0].name}.parquet").unlink()
    yesterday = dict(data)
    old = data[plan[1].query]
    yesterday[plan[1].query] = RegionTable(old.region, old.skus, ["changed", *old.texts[1:]], old.vectors)
    _search_files(yesterday, tmp_path)  # the plan ran on yesterday's catalog
    map_shard(tmp_path, plan[1], settings)

    searched = []
    real = shards_module.map_shard

    def counting(*args, **kwargs):
        searched.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(shards_module, "map_shard", counting)
    got = shards_module.sharded_candidates(data, settings, 2, tmp_path)
    assert searched == [plan[0], plan[1]]
    # the region whose rows changed got a search file of today's rows before the search
    assert RegionSearch.open(tmp_path, plan[1].query).digest == region_digest(data[plan[1].query])
    want = shards_module.sharded_candidates(data, settings, 2, tmp_path / "fresh")
    for key in want:
        np.testing.assert_array_equal(got[key][0], want[key][0])
        np.testing.assert_array_equal(got[key][1], want[key][1])


def test_a_region_streamed_from_the_store_gives_the_single_search_its_vectors_to_the_last_bit(
    tmp_path: Path,
) -> None:
    """Pages in any order and size, vectors as stored (not unit length): the search file holds
    each distinct text once with the vector the in-memory search compares (canonical, centred),
    bit for bit, the same exact mean and the digest of the rows as read."""
    table = _catalog(n=200)["DE"]
    raw = table.vectors * np.random.default_rng(1).uniform(0.5, 2.0, size=(len(table), 1))
    read = RegionTable("DE", table.skus, table.texts, raw)
    prepared, means = centred_tables({"DE": canonical_table(read)})
    sets = TextSets.of(prepared["DE"].texts)
    order = np.random.default_rng(2).permutation(len(table))
    pages = [
        ([table.skus[i] for i in part], [table.texts[i] for i in part], raw[part])
        for part in np.array_split(order, [13, 50, 51, 140])
    ]
    got = write_region_search("DE", pages, tmp_path)
    assert (got.rows, got.texts) == (200, len(sets))
    assert got.digest == region_digest(read)
    np.testing.assert_array_equal(got.mean, means["DE"])
    want = prepared["DE"].vectors[sets.rep]
    assert np.array_equal(got.range(0, len(sets)), want)
    assert np.array_equal(got.range(5, 9), want[5:9])
    seen = np.concatenate([idx for idx, _ in got.chunks(7)])
    assert sorted(seen.tolist()) == list(range(len(sets)))  # every text once, in chunks of 7
    assert not list(tmp_path.glob(".*"))  # no spill left behind


def test_a_shard_streamed_in_small_chunks_writes_the_same_part(tmp_path: Path) -> None:
    data = _catalog(n=60)
    texts = _search_files(data, tmp_path)
    settings = MatchSettings(k=4)
    plan = plan_shards({r: len(s) for r, s in texts.items()}, 2)
    whole = {s.name: pd.read_parquet(map_shard(tmp_path, s, settings)) for s in plan}
    for shard in plan:
        small = pd.read_parquet(map_shard(tmp_path, shard, settings, chunk_rows=7))
        key = ["side", "text", "rank"]
        pd.testing.assert_frame_equal(
            small.sort_values(key, ignore_index=True), whole[shard.name].sort_values(key, ignore_index=True)
        )


def test_a_region_with_a_sku_twice_is_refused_by_name(tmp_path: Path) -> None:
    vec = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="region 'FR': duplicate sku 'FR-2'"):
        write_region_search(
            "FR", [(["FR-1", "FR-2"], ["a", "b"], vec[:2]), (["FR-2"], ["c"], vec[2:])], tmp_path
        )
    with pytest.raises(ValueError, match="region 'FR' has no rows"):
        write_region_search("FR", [], tmp_path)


def test_a_sharded_search_on_object_storage_finds_the_same_pairs(tmp_path: Path) -> None:
    import fsspec

    data = _catalog(n=40)
    url = f"memory://polyglot-test/{tmp_path.name}"
    one = match_catalog(data, k=5, sentences=None)
    sharded = match_catalog(data, k=5, sentences=None, shards=2, shard_dir=url)
    _same(one, sharded)
    names = sorted(p.rsplit("/", 1)[-1] for p in fsspec.filesystem("memory").ls(url, detail=False))
    # 6 search parts, 3 search files + sidecars, 3 rows files + statistics, 6 cuts, 6 feature parts,
    # 6 scores parts and their manifest, 3 region pairs' decisions and theirs
    assert len(names) == 6 + 6 + 6 + 6 + 6 + 6 + 1 + 3 + 1 and not any(n.endswith(".tmp") for n in names)
    assert sum(n.startswith("features-") for n in names) == 6


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_failed_write_leaves_no_file(tmp_path: Path, where: str) -> None:
    from polyglot_catalog.matching.shard_storage import ShardFolder

    folder = ShardFolder.of(tmp_path if where == "local" else f"memory://polyglot-test/{tmp_path.name}")
    with pytest.raises(RuntimeError, match="boom"), folder.writing("part.parquet") as f:
        f.write(b"half a part")
        raise RuntimeError("boom")
    assert not folder.exists("part.parquet") and not folder.exists("part.parquet.tmp")
    folder.write_text("done.json", "{}")
    assert folder.read_text("done.json") == "{}"
    folder.remove()
    assert not folder.fs.exists(folder.root)
