"""Same catalog, same matches: no decision depends on row order, file split, block size, thread
count or candidate path (docs/DETERMINISM.md), on a real catalog with planted duplicate listings.

The second collection is embedded from the same rows shuffled into three files and encoded in other
batches, so its vectors differ from the first's in the last bits, as on another worker.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLE_DIR
from threadpoolctl import threadpool_limits

from polyglot_catalog.embed import embed_catalog
from polyglot_catalog.matching.pipeline import match_catalog
from polyglot_catalog.store import CatalogStore, open_client

PRODUCTS = 20  # label groups listed in all three regions: 60 listings with real twins
DUPLICATES = 5


def _catalog() -> pd.DataFrame:
    """The demo catalog's first products listed in every region, plus duplicate listings (the same
    text under a second SKU) of the first of each region."""
    labels = pq.read_table(SAMPLE_DIR / "labels.parquet").to_pandas()
    sizes = labels.groupby("group_id")["region"].nunique().sort_index()
    skus = set(labels.loc[labels["group_id"].isin(sizes[sizes == 3].index[:PRODUCTS]), "sku"])
    parts = []
    for region in ("DE", "FR", "US"):
        df = pq.read_table(SAMPLE_DIR / f"{region}.parquet").to_pandas()
        df = df[df["sku"].isin(skus)].sort_values("sku")
        dup = df.head(DUPLICATES).assign(sku=lambda d: d["sku"] + "-dup")
        parts += [df, dup]
    return pd.concat(parts, ignore_index=True)


def _embed(tmp, name: str, frames: list[pd.DataFrame], encoder, client, batch_size: int) -> CatalogStore:
    folder = tmp / name
    folder.mkdir()
    for i, frame in enumerate(frames):
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / f"part{i}.parquet")
    store = CatalogStore(client, name, "e5")
    embed_catalog(str(folder), store, encoder, batch_size=batch_size)
    return store


def _content(res) -> tuple[set, set]:
    p = res.pairs
    pairs = set(zip(p["region_a"], p["sku_a"], p["region_b"], p["sku_b"], p["decision"], strict=True))
    groups = {frozenset(zip(g["region"], g["sku"], strict=True)) for _, g in res.groups.groupby("group_id")}
    return pairs, groups


@pytest.fixture(scope="module")
def collections(tmp_path_factory, encoder):
    """The catalog embedded twice: per-region files, and shuffled into 3 files in other batches."""
    tmp = tmp_path_factory.mktemp("determinism")
    catalog = _catalog()
    client = open_client(path=str(tmp / "qdrant"))
    first = _embed(tmp, "ordered", [g for _, g in catalog.groupby("region")], encoder, client, 64)
    shuffled = catalog.sample(frac=1.0, random_state=7).reset_index(drop=True)
    second = _embed(tmp, "shuffled", [shuffled.iloc[i::3] for i in range(3)], encoder, client, 17)
    yield catalog, first, second
    client.close()


@pytest.mark.slow
def test_same_pairs_and_groups_whatever_order_split_block_threads_or_path(collections) -> None:
    catalog, first, second = collections
    base = match_catalog(first, candidates="exact")
    variants = {
        "qdrant candidates": match_catalog(first, candidates="qdrant"),
        "shuffled rows in 3 files, other batches": match_catalog(second, candidates="exact"),
    }
    with threadpool_limits(1):
        variants["small blocks, 1 BLAS thread"] = match_catalog(
            first, candidates="exact", block_rows=7, block_cols=13
        )

    want_pairs, want_groups = _content(base)
    accepted = {p for p in want_pairs if p[4] == "match"}
    assert len(accepted) > 30  # a real matching, with the planted duplicates in play
    dup_skus = {s for s in catalog["sku"] if s.endswith("-dup")}
    assert any(p[1] in dup_skus or p[3] in dup_skus for p in want_pairs)
    for name, res in variants.items():
        pairs, groups = _content(res)
        assert pairs == want_pairs, (name, sorted(pairs ^ want_pairs)[:10])
        assert groups == want_groups, name


@pytest.mark.slow
def test_identical_listing_ties_go_to_the_lower_sku(collections) -> None:
    """Two listings with the same text tie exactly against every partner. Where the one-to-one
    assignment gives a twin to only one of them, it is the lower SKU; the pair says it was a tie and
    names the rival, and both SKUs are reported as possible duplicate listings."""
    catalog, store, _ = collections
    res = match_catalog(store, candidates="exact")
    p = res.pairs.astype({c: str for c in ("region_a", "sku_a", "region_b", "sku_b", "decision")})
    assigned = p[p["decision"].isin(["match", "conflict"])]  # chosen one-to-one (before groups)
    held = {
        (ra, rb, s)
        for ra, rb, s in zip(assigned["region_a"], assigned["region_b"], assigned["sku_a"], strict=True)
    }
    held |= {
        (ra, rb, s)
        for ra, rb, s in zip(assigned["region_a"], assigned["region_b"], assigned["sku_b"], strict=True)
    }
    dup_held = [(ra, rb, s) for ra, rb, s in held if s.endswith("-dup")]
    assert dup_held, "the planted duplicates take part in the matching"
    for ra, rb, s in dup_held:
        assert (ra, rb, s[: -len("-dup")]) in held, (ra, rb, s)
    tied = assigned[assigned["ambiguous"]]
    assert len(tied) and tied["explain"].str.startswith("ambiguous: tie with ").all()
    dups = res.duplicates
    assert set(dups["sku"]) == {s for s in catalog["sku"] if s.endswith("-dup")} | {
        s[: -len("-dup")] for s in catalog["sku"] if s.endswith("-dup")
    }
    assert (dups.groupby(["region", "listing"]).size() == 2).all()
