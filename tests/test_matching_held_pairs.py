"""The match task holding only the pairs that can matter (#26): on a run from mapped parts, the pairs
below a floor stay in the parts, and the report (pairs file, groups, unmatched, summary, page) and
the match context are the same as when it holds every candidate pair."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_matching_feature_parts import _catalog, _sentences

from polyglot_catalog.matching import held_pairs
from polyglot_catalog.matching.context import EDGE_FLOOR
from polyglot_catalog.matching.pipeline import match_catalog
from polyglot_catalog.matching.shards import CandidateShard
from polyglot_catalog.reports.html import build_context
from polyglot_catalog.reports.writer import write_reports

WHEN = datetime(2026, 12, 7, tzinfo=UTC)


def _page(result) -> dict:
    context = build_context(result, run_id="r", generated_at=WHEN)
    context.pop("timings")
    return context


def _summary(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    summary.pop("timings")
    summary["report"].pop("written_at")
    return summary


@pytest.mark.parametrize(
    ("shards", "sentences", "regions"),
    [(1, False, 3), (3, True, 3), (2, False, 2)],
    ids=["one-part", "sentences", "two-regions-no-corroboration"],
)
def test_holding_the_pairs_over_the_floor_writes_the_same_report(
    shards: int, sentences: bool, regions: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = dict(list(_catalog(n=150).items())[:regions])
    vectors = _sentences(data) if sentences else None
    whole = match_catalog(data, k=5, sentences=vectors, shards=shards, shard_dir=tmp_path / "w")
    assert whole.rest is None  # a small run holds every pair
    monkeypatch.setattr(held_pairs, "HOLD_ALL_UP_TO", 0)
    monkeypatch.setattr(held_pairs, "WRITE_ROWS", 97)  # the pairs file from the parts in many pieces
    held = match_catalog(data, k=5, sentences=vectors, shards=shards, shard_dir=tmp_path / "h")
    rest = held.rest
    assert rest is not None and rest.count > 0 and len(held.pairs) < len(whole.pairs) / 2
    assert held.pair_count == len(whole.pairs)
    assert (whole.pairs["score"] < rest.floor.floor).sum() >= rest.count  # nothing over it is left out
    assert held.summary["counts"] == whole.summary["counts"]

    a, b = write_reports(tmp_path / "ra", whole), write_reports(tmp_path / "rb", held)
    # the same Arrow columns (nulls where pandas wrote NaN, dictionaries, index widths), not only
    # the same frames once read back
    assert pq.read_table(a / "pairs.parquet").equals(pq.read_table(b / "pairs.parquet"))
    for name in ("pairs", "groups", "unmatched", "duplicates"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(a / f"{name}.parquet"), pd.read_parquet(b / f"{name}.parquet")
        )
    said = _summary(b).pop("pairs_held")
    assert said == {"held": len(held.pairs), "in_parts": rest.count, "floor": rest.floor.floor}
    assert _summary(a) == {k: v for k, v in _summary(b).items() if k != "pairs_held"}
    assert _page(whole) == _page(held)
    # the same edges; their explanations' categories are those the table held (values compared)
    pd.testing.assert_frame_equal(whole.context.edges, held.context.edges, check_categorical=False)
    assert len(whole.context.edges) < len(whole.pairs)  # the context keeps some, not all


def test_the_held_pairs_are_the_floor_the_edges_and_each_products_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _catalog(n=150)
    whole = match_catalog(data, k=5, sentences=None, shards=2, shard_dir=tmp_path / "w")
    monkeypatch.setattr(held_pairs, "HOLD_ALL_UP_TO", 0)
    held = match_catalog(data, k=5, sentences=None, shards=2, shard_dir=tmp_path / "h")
    floor = held.rest.floor
    below = whole.pairs["score"] < held.summary["threshold"]
    assert floor.floor <= min(EDGE_FLOOR, held.summary["threshold"])
    assert (whole.pairs["score"][below] >= floor.floor).sum() >= held_pairs.HELD_SAMPLE
    key = ["region_a", "sku_a", "region_b", "sku_b"]
    kept = whole.pairs.merge(held.pairs[key], on=key, how="left", indicator=True)["_merge"] == "both"
    over = (whole.pairs["score"] >= floor.floor).to_numpy()
    assert kept.to_numpy()[over].all()
    best = {}
    for side in ("a", "b"):
        best[side] = whole.pairs.groupby([f"region_{side}", f"sku_{side}"], observed=True)["score"].transform(
            "max"
        )
    at_best = (whole.pairs["score"] == best["a"]) | (whole.pairs["score"] == best["b"])
    rest = ~kept.to_numpy()
    assert not (whole.pairs["decision"][rest] != "below_threshold").any()
    assert not at_best.to_numpy()[rest].any() or _best_elsewhere(whole.pairs, rest)
    left = np.sort(np.concatenate(list(held.rest.scores())))  # what the report's histogram reads
    assert np.array_equal(np.sort(whole.pairs["score"].to_numpy()[rest]), left)
    assert (floor.rest, floor.rest_low, floor.rest_high) == (len(left), left[0], left[-1])


def _best_elsewhere(pairs: pd.DataFrame, rest: np.ndarray) -> bool:
    """A pair left out at its product's best score on one side may only be one whose product has a
    better pair on the other side (its best is over all its pairs, both sides)."""
    ids = pd.concat(
        [
            pairs[["region_a", "sku_a", "score"]]
            .set_axis(["region", "sku", "score"], axis=1)
            .astype({"region": str, "sku": str}),
            pairs[["region_b", "sku_b", "score"]]
            .set_axis(["region", "sku", "score"], axis=1)
            .astype({"region": str, "sku": str}),
        ]
    )
    top = ids.groupby(["region", "sku"])["score"].max()
    left = pairs[rest]
    for side in ("a", "b"):
        at = top.loc[
            list(zip(left[f"region_{side}"].astype(str), left[f"sku_{side}"].astype(str), strict=True))
        ].to_numpy()
        if (left["score"].to_numpy() == at).any():
            return False
    return True


def test_a_held_full_run_commits_the_same_state_and_the_next_run_continues_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through ``run_match`` (the report written inside the state commit): the same report files,
    groups and committed state, and the incremental run after it gives the same groups."""
    from test_matching_incremental import _store_of, catalog

    from polyglot_catalog.ids import point_id
    from polyglot_catalog.matching.run import run_match
    from polyglot_catalog.matching.state import read_state
    from polyglot_catalog.store import open_client

    data = catalog(n=80)
    got = {}
    for name, cap in (("whole", 10**12), ("held", 0)):
        monkeypatch.setattr(held_pairs, "HOLD_ALL_UP_TO", cap)
        client = open_client(path=":memory:")
        store = _store_of(client, data)
        seen = {}

        def report(result, name=name, seen=seen):
            seen.setdefault("rest", result.rest is not None)  # the first (full) run's
            return write_reports(tmp_path / name / result.summary["mode"], result)

        first, folder = run_match(
            store,
            run_id="r1",
            write_report=report,
            collection="cat",
            model="m1",
            shards=3,
            shard_dir=tmp_path / name / "parts",
        )
        state = read_state(client, "cat")
        store.set_payload([point_id("US", "US-4")], {"status": "stale"})
        second, _ = run_match(store, run_id="r2", write_report=report, collection="cat", model="m1")
        assert second.summary["mode"] == "incremental"
        got[name] = (first, folder, state, second, seen["rest"])
        client.close()
    (w1, wf, ws, w2, w_rest), (h1, hf, hs, h2, h_rest) = got["whole"], got["held"]
    assert h1.pair_count == w1.pair_count
    assert h_rest and not w_rest  # the held run's report took the rest from the parts
    for name in ("pairs", "groups", "unmatched"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(wf / f"{name}.parquet"), pd.read_parquet(hf / f"{name}.parquet")
        )
    assert ws is not None and hs is not None and ws.pop("committed_at") and hs.pop("committed_at")
    assert ws == hs
    pd.testing.assert_frame_equal(w2.groups, h2.groups)
    pd.testing.assert_frame_equal(w2.pairs, h2.pairs, check_categorical=False)


def test_the_pairs_under_the_floor_come_out_in_the_tables_order_a_score_range_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The report writes the pairs it did not hold a range of scores at a time (memory bounded by the
    range, not the region pair): whatever the range size, the rows come out best score first, then
    side a, then side b, with runs of equal scores wider than a range and spread over the parts."""

    rng = np.random.default_rng(5)
    shards = [CandidateShard("DE", "FR", lo, lo + 10) for lo in (0, 10, 20)]
    parts = {}
    for shard in shards:
        n = 40
        score = rng.choice([0.05, 0.1, 0.1, 0.2, 0.3, 0.7], n) + np.where(
            rng.random(n) < 0.3, rng.random(n) / 100, 0
        )
        parts[shard] = pa.table(
            {
                "ia": rng.integers(0, 500, n),
                "ib": rng.integers(0, 500, n),
                "score": score,
                "row": np.arange(n),
            }
        )
    monkeypatch.setattr(held_pairs, "_read", lambda folder, shard, columns, scores: parts[shard])
    monkeypatch.setattr(held_pairs.RestPairs, "_features", lambda self: [])
    monkeypatch.setattr(held_pairs.RestPairs, "_rows", lambda self, ra, rb, table, vocab, d: table)
    floor = held_pairs.PairFloor(floor=0.5, best={}, totals={})
    rest = held_pairs.RestPairs(
        folder=None,
        plan=shards,
        floor=floor,
        offsets={"DE": 0, "FR": 500},
        sku_codes=np.zeros(0),
        text_codes=np.zeros(0),
        skus=pd.Index([]),
        texts=pd.Index([]),
        corroborate=False,
        sentences=False,
    )
    every = pa.concat_tables(parts.values())
    every = every.filter(pc.less(every["score"], 0.5)).to_pandas()
    want = every.sort_values(["score", "ia", "ib"], ascending=[False, True, True], kind="stable")
    for size in (1, 7, 25, 1000):
        monkeypatch.setattr(held_pairs, "WRITE_ROWS", size)
        got = pa.concat_tables(list(rest._tail("DE", "FR", {}, {}))).to_pandas()
        assert got[["score", "ia", "ib"]].values.tolist() == want[["score", "ia", "ib"]].values.tolist(), size
    assert (want["score"].value_counts() > 7).any()  # ties wider than a range


def test_the_held_rows_decisions_are_read_by_position_with_their_rivals_renumbered(tmp_path: Path) -> None:
    """The score task's decisions come in the region pair's whole order; the match task reads those
    of the rows it holds, a row group at a time, and numbers each tie rival among the held rows."""
    from polyglot_catalog.matching.feature_parts import _held_decisions
    from polyglot_catalog.matching.part_decisions import decisions_name
    from polyglot_catalog.matching.shard_storage import ShardFolder

    rng = np.random.default_rng(11)
    n = 500
    accepted = rng.random(n) < 0.2
    rival = np.full(n, -1, np.int32)
    tied = rng.choice(np.flatnonzero(accepted), 30, replace=False)
    rival[tied] = rng.choice(np.flatnonzero(~accepted), 30, replace=False)
    held = np.sort(np.unique(np.concatenate([rng.choice(n, 120, replace=False), tied, rival[tied]])))
    folder = ShardFolder.of(tmp_path)
    with folder.writing(decisions_name("DE", "FR")) as f:  # row groups of 37 rows: reads cross them
        pq.write_table(pa.table({"accepted": accepted, "rival": rival}), f, row_group_size=37)

    got_accepted, got_rival = _held_decisions(folder, "DE", "FR", held)

    assert got_accepted.tolist() == accepted[held].tolist()
    number = {int(p): i for i, p in enumerate(held)}
    assert got_rival.tolist() == [number[int(r)] if r >= 0 else -1 for r in rival[held]]
    assert (got_rival >= 0).sum() == 30
    with pytest.raises(AssertionError, match="tie rival was not held"):
        _held_decisions(folder, "DE", "FR", held[~np.isin(held, rival[tied[:1]])])


def test_each_row_group_of_the_pairs_file_carries_only_its_own_skus_and_texts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row group's SKU and text dictionaries hold the values its rows use (not the catalog's every
    SKU and text, repeated per row group); the table reads back with the same values, a missing
    one as missing."""
    monkeypatch.setattr(held_pairs, "WRITE_ROWS", 50)
    rng = np.random.default_rng(2)
    n, catalog = 180, pd.Index([f"s{i:04d}" for i in range(1000)], dtype=object)

    def column(missing: bool = False) -> pd.Categorical:
        codes = rng.integers(0, len(catalog), n)
        if missing:
            codes[7] = -1
        return pd.Categorical.from_codes(codes, categories=catalog)

    frame = pd.DataFrame(
        {
            "region_a": pd.Categorical(["DE"] * n),
            "sku_a": column(),
            "sku_b": column(),
            "score": rng.random(n),
            "text_a": column(missing=True),
            "text_b": column(),
        }
    )
    path = tmp_path / "pairs.parquet"

    held_pairs.write_pairs(path, frame)

    f = pq.ParquetFile(path)
    assert f.metadata.num_row_groups == 4
    for g in range(4):
        group = f.read_row_group(g)
        rows = frame.iloc[g * 50 : (g + 1) * 50]
        for name in held_pairs.PRODUCT_COLUMNS:
            said = group[name].combine_chunks()
            used = sorted(set(rows[name].dropna()))
            assert said.dictionary.to_pylist() == used  # its own values, in the catalog's order
            assert said.type.index_type == pa.int16()  # one schema: as wide as the catalog needs
    back = pd.read_parquet(path)
    for name in frame.columns:
        assert (
            back[name].astype(object).where(back[name].notna(), None).tolist()
            == frame[name].astype(object).where(frame[name].notna(), None).tolist()
        )
    assert back["text_a"].isna().sum() == 1
