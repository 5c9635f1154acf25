"""The full match's pair features as map tasks (#26): every shard's feature part, put together, is
the single task's candidate blocks to the last bit (pairs, features, explanations, figures and the
statistics an incremental run freezes), whatever the shard count."""

from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from polyglot_catalog.matching.data import RegionTable
from polyglot_catalog.matching.feature_parts import (
    RegionStats,
    blocks_from_parts,
    map_features,
    pair_figures,
    table_pages,
    write_region_rows,
    write_shard_cuts,
)
from polyglot_catalog.matching.inputs import MatchInputs
from polyglot_catalog.matching.pipeline import candidate_blocks, prepare
from polyglot_catalog.matching.region_search import table_chunks, write_region_search
from polyglot_catalog.matching.settings import MatchSettings
from polyglot_catalog.matching.shards import map_shard, plan_shards

WORDS = ["Tisch", "table", "Stuhl", "chair", "Lampe", "lamp", "Eiche", "oak", "Bosch", "Ikea", "rot", "blue"]


def _catalog(n: int = 80, seed: int = 7) -> dict[str, RegionTable]:
    """Three regions of noisy copies of ``n`` products with texts that carry numbers, codes, names
    and GTINs (so every evidence feature fires somewhere), some products sharing a text, and rows
    in no particular SKU order."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 16))
    out = {}
    for r in ("DE", "FR", "US"):
        texts, titles, gtins = [], [], []
        for i in range(n):
            words = " ".join(rng.choice(WORDS, 3))
            texts.append(f"{words} {i % 9 * 10} cm MX-{i % 13:03d} {r.lower()} item {i}")
            titles.append(f"Model {i % 11}" if i % 3 else None)
            gtins.append(f"{4000000000000 + i % 17}" if i % 4 else None)
        for a, b in ((3, 60), (11, 45), (12, 46)):
            if b < n:
                texts[b] = texts[a]  # identical listings, far apart in SKU order
        vec = base + 0.5 * rng.normal(size=base.shape)
        order = rng.permutation(n)
        out[r] = RegionTable(
            r,
            [f"{r}-{i:04d}" for i in order],
            [texts[i] for i in order],
            vec[order],
            {"title": [titles[i] for i in order], "gtin": [gtins[i] for i in order]},
        )
    return out


def _feature_parts(data: dict[str, RegionTable], settings: MatchSettings, shards: int, folder: Path):
    regions = sorted(data)
    for r, t in data.items():
        write_region_search(r, table_chunks(t, rows=23), folder)
        write_region_rows(r, table_pages(t, rows=29), folder)
    texts = {r: len(set(t.texts)) for r, t in data.items()}
    plan = plan_shards(texts, shards)
    for shard in plan:
        map_shard(folder, shard, settings, chunk_rows=17, shards=shards)
    for shard in reversed(plan):  # each cuts task on its own, in any order
        write_shard_cuts(folder, shard, plan, settings.k)
    for shard in plan:
        map_features(folder, shard, settings, regions, plan)
    return plan


@pytest.mark.parametrize("shards", [1, 4])
def test_feature_parts_put_together_are_the_single_tasks_blocks(shards: int, tmp_path: Path) -> None:
    data = _catalog()
    settings = MatchSettings(k=5)
    prep = prepare(MatchInputs(dict(data), None), settings)
    idf = dict(prep.idf)
    one, figures, lex_stats = candidate_blocks(prep, settings)

    plan = _feature_parts(data, settings, shards, tmp_path)
    parts = blocks_from_parts(tmp_path, plan, sorted(data))

    assert [b.key for b in parts] == [b.key for b in one]
    for a, b in zip(one, parts, strict=True):
        np.testing.assert_array_equal(a.ia, b.ia)
        np.testing.assert_array_equal(a.ib, b.ib)
        pd.testing.assert_frame_equal(a.feats, b.feats, check_exact=True)
        assert a.explain == b.explain
    assert sum(len(b) for b in parts) > 0 and any(b.feats["ev_gtin"].max() > 0 for b in parts)
    got = pair_figures(tmp_path, plan, sorted(data))
    assert got.keys() == figures.keys()
    for key, (radius, floor) in figures.items():
        np.testing.assert_array_equal(got[key][0], radius)
        np.testing.assert_array_equal(got[key][1], floor)
    for r, (keys, df) in lex_stats.items():
        stats = RegionStats.open(tmp_path, r)
        np.testing.assert_array_equal(stats.lex_keys, keys)
        np.testing.assert_array_equal(stats.lex_df, df)
        assert stats.rows == len(data[r])
    from polyglot_catalog.matching.feature_parts import run_idf

    assert run_idf(RegionStats.open(tmp_path, r) for r in sorted(data)) == idf


def _column_bytes_freed(build) -> list[int]:
    """Bytes freed by taking each block's first feature column away, the blocks built while traced."""
    tracemalloc.start()
    try:
        blocks = build()
        freed = []
        for b in blocks:
            before = tracemalloc.get_traced_memory()[0]
            del b.feats[b.feats.columns[0]]
            freed.append(before - tracemalloc.get_traced_memory()[0])
        return freed
    finally:
        tracemalloc.stop()


def test_a_feature_column_taken_from_a_block_is_freed_at_once(tmp_path: Path) -> None:
    """The pairs table takes the features a column at a time: each must go as it is taken, not when
    the last one goes (pandas' 2D blocks), or the blocks' and the table's features add up (#26)."""
    data = _catalog(n=300)
    settings = MatchSettings(k=5)
    plan = _feature_parts(data, settings, 2, tmp_path)
    prep = prepare(MatchInputs(dict(data), None), settings)
    for build in (
        lambda: blocks_from_parts(tmp_path, plan, sorted(data)),
        lambda: candidate_blocks(prep, settings)[0],
    ):
        freed = _column_bytes_freed(build)
        assert len(freed) == 3
        assert all(f >= 4 * 5 * 300 * 0.9 for f in freed), freed  # a float32 column of >= k pairs per product


def test_a_missing_feature_part_is_named(tmp_path: Path) -> None:
    data = _catalog(n=30)
    plan = _feature_parts(data, MatchSettings(k=3), 2, tmp_path)
    victim = plan[1]
    (tmp_path / f"features-{victim.name}.parquet").unlink()
    with pytest.raises(ValueError, match=victim.name):
        blocks_from_parts(tmp_path, plan, sorted(data))


def test_cuts_tasks_split_the_other_regions_texts_and_name_a_missing_search_part(tmp_path: Path) -> None:
    from polyglot_catalog.matching.feature_parts import cut_range, pair_shards, read_pair_cuts

    data = _catalog(n=50)
    settings = MatchSettings(k=4)
    plan = _feature_parts(data, settings, 3, tmp_path)
    for ra, rb in {(s.query, s.other) for s in plan}:
        n_b = len(set(data[rb].texts))
        ranges = [cut_range(s, plan, n_b) for s in pair_shards(plan, ra, rb)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n_b  # every text of the pair's second region
        assert all(hi == lo for (_, hi), (lo, _) in itertools.pairwise(ranges))  # once
        cuts = read_pair_cuts(tmp_path, ra, rb, plan)
        assert len(cuts["radius_a"]) == len(set(data[ra].texts)) and len(cuts["kth_idx"]) == n_b
    for shard in plan:  # a cuts task reads its own row groups of a part: each lies in one range
        n_b = len(set(data[shard.other].texts))
        bounds = [cut_range(s, plan, n_b) for s in pair_shards(plan, shard.query, shard.other)]
        meta = pq.ParquetFile(tmp_path / f"{shard.name}.parquet").metadata
        text = meta.schema.to_arrow_schema().get_field_index("text")
        side = meta.schema.to_arrow_schema().get_field_index("side")
        groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
        reverse = [g.column(text).statistics for g in groups if g.column(side).statistics.max == 1]
        assert len(reverse) >= len(bounds)
        assert all(any(lo <= st.min and st.max < hi for lo, hi in bounds) for st in reverse)
    victim = plan[4]
    (tmp_path / f"{victim.name}.parquet").unlink()
    mate = next(s for s in plan if (s.query, s.other) == (victim.query, victim.other) and s != victim)
    with pytest.raises(ValueError, match=f"search part of shard {victim.name} is missing"):
        write_shard_cuts(tmp_path, mate, plan, settings.k)
    (tmp_path / f"cuts-{mate.name}.npz").unlink()
    with pytest.raises(ValueError, match=f"cuts of shard {mate.name} are missing"):
        read_pair_cuts(tmp_path, mate.query, mate.other, plan)


def test_rows_of_a_region_with_a_sku_twice_are_refused(tmp_path: Path) -> None:
    pages = [(["A-1", "A-2"], ["x", "y"], {}), (["A-1"], ["z"], {})]
    with pytest.raises(ValueError, match="duplicate sku 'A-1'"):
        write_region_rows("DE", pages, tmp_path)


def _sentences(data: dict[str, RegionTable], seed: int = 3) -> dict:
    """Two to four sentence vectors per product, following the tables' rows."""
    from polyglot_catalog.sentences import SentenceVectors

    rng = np.random.default_rng(seed)
    out = {}
    for r, t in data.items():
        counts = rng.integers(2, 5, len(t))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        out[r] = SentenceVectors(offsets, rng.normal(size=(offsets[-1], 16)).astype(np.float32))
    return out


def test_a_match_from_feature_parts_is_the_single_tasks_with_the_same_context(tmp_path: Path) -> None:
    """End to end with sentence vectors (scored in the reduce): the same pairs, groups, unmatched
    products, input fingerprint and the context an incremental run continues from."""
    from polyglot_catalog.matching.pipeline import match_catalog

    data = _catalog(n=60)
    one = match_catalog(data, k=5, sentences=_sentences(data))
    parts = match_catalog(data, k=5, sentences=_sentences(data), shards=3, shard_dir=tmp_path)
    cols = ["region_a", "sku_a", "region_b", "sku_b", "score", "decision", "ambiguous", "explain"]
    pd.testing.assert_frame_equal(one.pairs[cols], parts.pairs[cols])
    pd.testing.assert_frame_equal(one.groups, parts.groups)
    pd.testing.assert_frame_equal(one.unmatched, parts.unmatched)
    assert "sentences" in one.summary["scorer"]["weights"] and len(list(tmp_path.glob("features-*"))) == 9
    # the feature tasks scored the sentences (from the regions' sentence files), not the reduce
    assert len(list(tmp_path.glob("sentences-*.parquet"))) == 3
    assert "sentences" in pq.read_table(next(tmp_path.glob("features-*.parquet"))).column_names
    assert one.summary["reproducibility"]["input"] == parts.summary["reproducibility"]["input"]
    a, b = one.context, parts.context
    assert a is not None and b is not None and a.idf == b.idf and a.threshold == b.threshold
    for r in a.regions:
        ta, tb = a.tables[r], b.tables[r]
        for name in ("skus", "text_key", "mean", "lex_keys", "lex_df", "sent_mean", "sent_keys", "sent_df"):
            np.testing.assert_array_equal(getattr(ta, name), getattr(tb, name), err_msg=f"{r} {name}")
        for o in ta.radius:
            np.testing.assert_array_equal(ta.radius[o], tb.radius[o])
            np.testing.assert_array_equal(ta.floor[o], tb.floor[o])


def test_rows_files_name_a_region_whose_listings_changed_since_the_plan(tmp_path: Path) -> None:
    from polyglot_catalog.matching.feature_parts import check_listings

    data = _catalog(n=20)
    for r, t in data.items():
        write_region_rows(r, table_pages(t), tmp_path)
    assert check_listings(tmp_path, data) is None
    fr = data["FR"]
    edited = dict(data, FR=RegionTable("FR", fr.skus, [*fr.texts[:-1], fr.texts[-1] + " v2"], fr.vectors))
    assert check_listings(tmp_path, edited) == "region FR changed since the plan wrote its rows file"
    assert "no rows file of region JP" in check_listings(tmp_path, {**data, "JP": fr})


def test_picked_search_vectors_are_the_chunks_rows_and_a_missing_text_is_named(tmp_path: Path) -> None:
    from polyglot_catalog.matching.region_search import RegionSearch

    data = _catalog(n=40)
    write_region_search("DE", table_chunks(data["DE"], rows=7), tmp_path)
    search = RegionSearch.open(tmp_path, "DE")
    whole = np.zeros((search.texts, search.dim), dtype=np.float32)
    for idx, vec in search.chunks(rows=9):
        whole[idx] = vec
    texts = np.array([0, 5, 6, search.texts - 1])
    np.testing.assert_array_equal(search.pick(texts), whole[texts])  # centred alike, to the bit
    with pytest.raises(ValueError, match=f"lacks text {search.texts}"):
        search.pick(np.array([3, search.texts]))
