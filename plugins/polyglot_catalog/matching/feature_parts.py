"""The full match's pair features as map tasks over the search shards (#26), so the reduce holds
pairs, not products.

Why: after the search was sharded (:mod:`.shards`), the reduce still read every product's vector,
hashed every text into n-grams and extracted every product's evidence to compute the pair features:
all of it grows with the catalog (~6 KB a product held), and it put the match task above 4 GB near
300k products per region. The features of a pair depend only on its two products and on
region-wide statistics, so they split like the search did:

1. **Region rows and statistics** (:func:`write_region_rows`, once per region, with the search
   file): the products' texts and evidence fields in a Parquet file, numbered in the canonical
   order (by SKU), and the statistics a pair's features read (each region's n-gram document
   frequencies, its evidence name frequencies). Counts are sums, so streaming them gives the
   single task's numbers exactly.
2. **Cuts** (:func:`write_shard_cuts`, one per search shard, after its region pair's search parts):
   for the shard's range of the first region's texts, their neighbourhood figures (from its own
   part), and for its share of the second region's texts (:func:`cut_range`), the merged top-``k``
   of each as its ``k``-th entry (so a feature task can tell which of its reverse proposals survive
   the merge) and their figures, from every part of the pair read for those texts only. A cuts task
   holds its two ranges, whatever the catalog size.
3. **Feature parts** (:func:`map_features`, one per search shard): the candidate pairs whose
   side-a text is in the shard's range (its own top-``k`` lists and the reverse proposals that
   survive the cut), their products' rows, vectors and evidence read from the region files, and
   :func:`.scoring.pair_features` with the frozen statistics (as an incremental run computes them).
   A task holds its range, the rows its pairs touch and ~40 B per product of both regions (text
   numbering), whatever the catalog size.

The reduce (:func:`blocks_from_parts`) puts the parts together in the single task's pair order:
the same pairs, features and explanations to the last bit (tested), so the same scores and groups.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..sentences import SentenceVectors
from . import held_pairs
from .alignment import sentence_alignment
from .blocks import PairBlock, feature_frame
from .candidates import expand_text_pairs
from .canonical import TextSets
from .context import neighbour_figures
from .data import CatalogData, RegionTable
from .evidence import evidence_from_json, evidence_json, extract, idf_from_counts
from .held_pairs import PairFloor, pair_floor, pair_key
from .lexical import NgramCounts, ngram_counts
from .region_search import RegionSearch, add_digest, distinct_texts, rows_digest, text_hash
from .scoring import pair_features
from .settings import MatchSettings
from .shard_storage import ParquetSink, ShardFolder
from .shards import CandidateShard, cut_bounds, merge_rows, pair_shards, part_name, part_search, plan_shards

#: The product fields evidence reads besides the text (:func:`.evidence.extract`).
EVIDENCE_FIELDS = ("title", "brand", "gtin")
#: Rows per batch when a region's rows are streamed (a few MB of text).
ROW_BATCH = 16_384


def listing_digest(skus: Sequence[str], texts: Sequence[str]) -> int:
    """:func:`.region_search.rows_digest` of SKUs and texts alone: what a reduce that reads no vectors
    checks the rows files against (in any order or chunking; added with ``add_digest``)."""
    return rows_digest(skus, texts, np.zeros((len(skus), 0), dtype=np.float32))


def rows_file(region: str) -> str:
    """``rows-<region>.parquet``: the region's products in canonical order, with their text index."""
    return f"rows-{region}.parquet"


def _stats_file(region: str) -> str:
    return f"stats-{region}.npz"


def cuts_name(shard: CandidateShard) -> str:
    """``cuts-<shard>.npz``: the figures of the shard's side-a range and of its side-b range
    (:func:`cut_range`), with each side-b text's merged ``k``-th entry."""
    return f"cuts-{shard.name}.npz"


def sentences_file(region: str) -> str:
    """``sentences-<region>.parquet``: each product's centred sentence vectors, one row a sentence."""
    return f"sentences-{region}.parquet"


def _sentence_stats_file(region: str) -> str:
    return f"sentence-stats-{region}.npz"


def features_name(shard: CandidateShard) -> str:
    """``features-<shard>.parquet``: the feature part one shard writes."""
    return f"features-{shard.name}.parquet"


@dataclass(frozen=True)
class RegionStats:
    """What a pair's features read of a whole region: its n-gram buckets and their document
    frequencies over ``rows`` products, and its evidence name document frequencies."""

    rows: int
    lex_keys: np.ndarray
    lex_df: np.ndarray
    names: dict[str, int]
    listing: str

    @classmethod
    def open(cls, folder: Any, region: str) -> RegionStats:
        with ShardFolder.of(folder).open(_stats_file(region)) as f:
            z = np.load(f, allow_pickle=False)
            names = json.loads(bytes(z["names"]).decode())
            return cls(int(z["rows"]), z["lex_keys"], z["lex_df"], names, bytes(z["listing"]).decode())


def table_pages(table: RegionTable, rows: int = ROW_BATCH) -> Iterator[tuple[list[str], list[str], dict]]:
    """``table``'s rows in slices for :func:`write_region_rows`."""
    for s in range(0, len(table), rows):
        fields = {f: table.fields[f][s : s + rows] for f in EVIDENCE_FIELDS if f in table.fields}
        yield table.skus[s : s + rows], table.texts[s : s + rows], fields


def store_pages(store: Any, region: str) -> Iterator[tuple[list[str], list[str], dict]]:
    """One region of a store (no vectors) in pages for :func:`write_region_rows`."""
    for payloads, _ in store.scroll_region(
        region, with_vectors=False, payload_fields=["sku", "text", *EVIDENCE_FIELDS]
    ):
        fields = {f: [p.get(f) for p in payloads] for f in EVIDENCE_FIELDS}
        yield [p["sku"] for p in payloads], [p.get("text") or "" for p in payloads], fields


def _field_array(values: Sequence[Any]) -> pa.Array:
    # a field as read (strings; a GTIN may be a number): kept as its text, None where missing
    return pa.array([None if v is None else str(v) for v in values], pa.string())


def write_region_rows(
    region: str, pages: Iterable[tuple[Sequence[str], Sequence[Any], Mapping]], folder: Any
) -> int:
    """Write ``region``'s rows file and statistics from ``pages`` of ``(skus, texts, fields)`` in any
    order (a store's pages, :func:`store_pages`, or a table's, :func:`table_pages`). Rows are
    numbered by SKU (the canonical order) and their texts by their lowest SKU, as
    :class:`.canonical.TextSets` numbers them. Two passes over a local spill: SKUs decide the
    numbering, then rows are written and counted a batch at a time. Returns the row count.

    Raises:
        ValueError: a SKU twice in the region, or no rows.
    """
    folder = ShardFolder.of(folder)
    with tempfile.TemporaryDirectory(prefix=f"polyglot-rows-{region}-") as tmp:
        spill = Path(tmp) / "rows.parquet"
        with ParquetSink(spill) as sink:
            for skus, texts, fields in pages:
                if not len(skus):
                    continue
                bodies = ["" if t is None else str(t) for t in texts]
                cols = {
                    "sku": pa.array([str(s) for s in skus], pa.string()),
                    "key": pa.array([text_hash(t) for t in bodies], pa.binary(16)),
                    "body": pa.array(bodies, pa.string()),
                }
                for name in EVIDENCE_FIELDS:
                    cols[name] = _field_array(fields.get(name) or [None] * len(skus))
                sink.write(pa.table(cols))
        if not sink.rows:
            raise ValueError(f"region {region!r} has no rows")
        keys = pq.read_table(spill, columns=["sku", "key"])
        product, text = _numbering(region, keys)
        del keys
        n = len(product)
        lex_keys, lex_df = np.zeros(0, np.int32), np.zeros(0, np.int64)
        names: Counter[str] = Counter()
        digest = at = 0
        with folder.writing(rows_file(region)) as f, ParquetSink(f) as out:
            for batch in pq.ParquetFile(spill).iter_batches(batch_size=ROW_BATCH):
                here = slice(at, at + batch.num_rows)
                at += batch.num_rows
                part = pa.Table.from_batches([batch])
                bodies = part["body"].to_pylist()
                digest = add_digest(digest, listing_digest(part["sku"].to_pylist(), bodies))
                counts = ngram_counts(bodies)
                lex_keys, lex_df = _add_counts(lex_keys, lex_df, counts.keys, counts.df)
                evidence = _evidence(part)
                for ev in evidence:
                    names.update(ev.names)
                tf = counts.tf  # CSR over the batch's buckets: stored as bucket ids (the region has them all)
                indptr = pa.array(tf.indptr.astype(np.int32))
                out.write(
                    pa.table(
                        {
                            "product": pa.array(product[here]),
                            "text": pa.array(text[here]),
                            "sku": part["sku"],
                            "body": part["body"],
                            "ngram_keys": pa.ListArray.from_arrays(indptr, pa.array(counts.keys[tf.indices])),
                            "ngram_tf": pa.ListArray.from_arrays(indptr, pa.array(tf.data)),
                            "evidence": pa.array([evidence_json(ev) for ev in evidence], pa.string()),
                        }
                    )
                )
    with folder.writing(_stats_file(region)) as f:
        np.savez(
            f,
            rows=np.int64(n),
            listing=np.frombuffer(f"{digest:016x}".encode(), dtype=np.uint8),
            lex_keys=lex_keys.astype(np.int32),
            lex_df=lex_df.astype(np.int32),
            names=np.frombuffer(json.dumps(dict(sorted(names.items()))).encode(), dtype=np.uint8),
        )
    return n


def _numbering(region: str, rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Per spilled row: its product index (rank by SKU) and its text index (texts numbered by their
    lowest SKU's row, as the search file numbers them: :func:`.region_search.distinct_texts`)."""
    text, _, _ = distinct_texts(region, rows)  # also refuses a SKU twice
    order = pc.sort_indices(rows["sku"]).to_numpy()
    product = np.empty(len(order), dtype=np.int64)
    product[order] = np.arange(len(order))
    return product, text


def _add_counts(keys: np.ndarray, df: np.ndarray, more_keys: np.ndarray, more_df: np.ndarray):
    union = np.union1d(keys, more_keys)
    total = np.zeros(len(union), dtype=np.int64)
    total[np.searchsorted(union, keys)] += df
    total[np.searchsorted(union, more_keys)] += more_df
    return union, total


def _evidence(rows: pa.Table) -> list[Any]:
    cols = {name: rows[name].to_pylist() for name in ("body", *EVIDENCE_FIELDS)}
    return [
        extract(cols["body"][i], title=cols["title"][i], brand=cols["brand"][i], gtin=cols["gtin"][i])
        for i in range(rows.num_rows)
    ]


def run_idf(stats: Iterable[RegionStats]) -> dict[str, float]:
    """The evidence name IDF over every product of the regions ``stats`` count (as
    :func:`.evidence.idf_weights` over them all)."""
    stats = list(stats)
    return idf_from_counts(sum(s.rows for s in stats), sum((Counter(s.names) for s in stats), Counter()))


def write_region_sentences(folder: Any, region: str, sv: SentenceVectors, stats: Mapping[str, Any]) -> None:
    """Write ``region``'s centred sentence vectors (int8, products in canonical order, as
    :func:`.sentence_stats.centred_region_sentences` gives them) one row per sentence of a product
    (product, vector, scale, weight), so a feature task reads only its products' sentences, and
    the region's sentence statistics (what the match context keeps)."""
    if sv.vectors.dtype != np.int8 or sv.scales is None:
        raise ValueError(f"region {region!r}: sentence vectors must be the centred int8 copy")
    folder = ShardFolder.of(folder)
    dim = sv.vectors.shape[1]
    product = np.repeat(np.arange(len(sv), dtype=np.int64), sv.counts())
    rows = sv.index if sv.index is not None else np.arange(sv.n_occurrences)
    schema = pa.schema(
        [
            ("product", pa.int64()),
            ("vector", pa.binary(dim)),
            ("scale", pa.float32()),
            ("weight", pa.float32()),
        ]
    )
    with folder.writing(sentences_file(region)) as f, pq.ParquetWriter(f, schema) as w:
        for s in range(0, len(rows), ROW_BATCH * 4):
            r = rows[s : s + ROW_BATCH * 4]
            vec = pa.py_buffer(np.ascontiguousarray(sv.vectors[r]).tobytes())
            weight = sv.weights[r] if sv.weights is not None else np.ones(len(r), np.float32)
            w.write_table(
                pa.table(
                    {
                        "product": product[s : s + len(r)],
                        "vector": pa.FixedSizeBinaryArray.from_buffers(pa.binary(dim), len(r), [None, vec]),
                        "scale": sv.scales[r],
                        "weight": weight,
                    },
                    schema=schema,
                )
            )
    mean = stats.get("sent_mean")
    with folder.writing(_sentence_stats_file(region)) as f:
        np.savez(
            f,
            has_mean=np.bool_(mean is not None),
            sent_mean=np.zeros(0, np.float32) if mean is None else mean,
            sent_keys=stats["sent_keys"],
            sent_df=stats["sent_df"],
        )


def canonical_texts(folder: Any, region: str) -> list[str]:
    """The region's texts in canonical (SKU) order, from its rows file."""
    with ShardFolder.of(folder).open(rows_file(region)) as f:
        t = pq.read_table(f, columns=["product", "body"])
    return t.take(pc.sort_indices(t["product"]))["body"].to_pylist()


def write_store_sentences(store: Any, regions: Sequence[str], folder: Any) -> bool:
    """Each region's sentence file from the store's sentence cache, as the single task would read it
    (:func:`.inputs.cached_sentences`: every product's sentences, or the feature is off for the
    run): one region at a time, texts from its rows file. Returns whether the run has sentences."""
    from ..sentences import SentenceCache
    from .sentence_stats import centred_region_sentences

    folder = ShardFolder.of(folder)
    if not hasattr(store, "vector_name"):
        return False
    cache = SentenceCache.for_store(store)
    for i, region in enumerate(regions):
        texts = canonical_texts(folder, region)
        found = cache.vectors_for(texts)
        if found is None:
            for done in regions[:i]:
                folder.delete(sentences_file(done))
                folder.delete(_sentence_stats_file(done))
            return False
        write_region_sentences(folder, region, *centred_region_sentences(found, texts))
    return True


def sentence_stats(folder: Any, regions: Sequence[str]) -> dict[str, dict[str, Any]] | None:
    """Each region's sentence statistics, or None when the run has no sentence files (no sentence
    vectors for some product: the single task then matches without the feature, as here)."""
    folder = ShardFolder.of(folder)
    if not all(folder.exists(_sentence_stats_file(r)) for r in regions):
        return None
    out = {}
    for r in regions:
        with folder.open(_sentence_stats_file(r)) as f:
            z = np.load(f, allow_pickle=False)
            out[r] = {
                "sent_mean": z["sent_mean"] if bool(z["has_mean"]) else None,
                "sent_keys": z["sent_keys"],
                "sent_df": z["sent_df"],
            }
    return out


def _read_products(
    folder: ShardFolder,
    name: str,
    rows: np.ndarray,
    n: int,
    batch_rows: int,
    columns: list[str] | None = None,
) -> pa.Table:
    """The rows of file ``name`` whose ``product`` is one of ``rows`` (of a region of ``n``
    products), in file order, read ``batch_rows`` at a time: only those rows are kept."""
    want = np.zeros(n, dtype=bool)
    want[rows] = True
    found: list[pa.Table] = []
    with folder.open(name) as f:
        file = pq.ParquetFile(f)
        for batch in file.iter_batches(batch_size=batch_rows, columns=columns):
            mine = want[batch.column("product").to_numpy()]
            if mine.any():
                found.append(pa.Table.from_batches([batch]).filter(pa.array(mine)))
        schema = (
            file.schema_arrow if columns is None else pa.schema([file.schema_arrow.field(c) for c in columns])
        )
    return pa.concat_tables(found) if found else schema.empty_table()


def _product_sentences(folder: ShardFolder, region: str, rows: np.ndarray, n: int) -> SentenceVectors:
    """The centred sentence vectors of products ``rows`` (sorted) of a region of ``n``, one row per
    sentence, read a batch at a time."""
    table = _read_products(folder, sentences_file(region), rows, n, ROW_BATCH * 4)
    dim = table.schema.field("vector").type.byte_width
    counts = np.bincount(np.searchsorted(rows, table["product"].to_numpy()), minlength=len(rows))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    if not table.num_rows:
        return SentenceVectors(
            offsets, np.zeros((0, dim), np.int8), np.zeros(0, np.float32), scales=np.zeros(0)
        )
    vec = table["vector"].combine_chunks()
    vectors = np.frombuffer(vec.buffers()[1], dtype=np.int8, count=len(vec) * dim).reshape(-1, dim)
    return SentenceVectors(
        offsets,
        vectors,
        table["weight"].to_numpy(),
        scales=table["scale"].to_numpy(),
    )


def text_sets(folder: Any, region: str) -> TextSets:
    """The region's :class:`.canonical.TextSets` from its rows file (product and text indices only)."""
    with ShardFolder.of(folder).open(rows_file(region)) as f:
        t = pq.read_table(f, columns=["product", "text"])
    inverse = np.empty(t.num_rows, dtype=np.int64)
    inverse[t["product"].to_numpy()] = t["text"].to_numpy()
    _, rep = np.unique(inverse, return_index=True)
    return TextSets(rep=rep.astype(np.int64), inverse=inverse)


def cut_range(shard: CandidateShard, plan: Sequence[CandidateShard], other_texts: int) -> tuple[int, int]:
    """The second region's texts whose cut ``shard``'s cuts task computes: the i-th of as many
    near-equal ranges as its pair has shards (the i-th shard, by range; :func:`.shards.cut_bounds`,
    which the search tasks' row groups follow)."""
    mine = pair_shards(plan, shard.query, shard.other)
    bounds = cut_bounds(other_texts, len(mine))
    i = mine.index(shard)
    return int(bounds[i]), int(bounds[i + 1])


def write_shard_cuts(folder: Any, shard: CandidateShard, plan: Sequence[CandidateShard], k: int) -> str:
    """Write ``shard``'s cuts (:func:`cuts_name`): per text of its range of ``shard.query``, its
    radius and floor from its own top-``k``; per text of its :func:`cut_range` of ``shard.other``,
    the last entry of its top-``k`` merged over every part of the pair (similarity and query text;
    -inf where it has fewer than ``k``), its radius and floor. Each part is read for those texts
    only (a Parquet filter), so the task holds its two ranges. Returns where the file is.

    Raises:
        ValueError: a search part of the pair is missing (a search task did not run).
    """
    folder = ShardFolder.of(folder)
    lo, hi = cut_range(shard, plan, RegionSearch.open(folder, shard.other).texts)
    b_idx = np.full((hi - lo, k), -1, dtype=np.int64)
    b_sim = np.full((hi - lo, k), -np.inf)
    by_text = [("text", ">=", lo), ("text", "<", hi)]
    for side in _reverse_rows(folder, plan, shard, ["text", "rank", "neighbour", "sim"], by_text):
        idx = np.full((hi - lo, k), -1, dtype=np.int64)
        val = np.full((hi - lo, k), -np.inf)
        t, r = side["text"].to_numpy() - lo, side["rank"].to_numpy().astype(np.int64)
        idx[t, r], val[t, r] = side["neighbour"].to_numpy(), side["sim"].to_numpy()
        b_idx, b_sim = merge_rows(b_idx, b_sim, idx, val)
    a_sim = _read_part(folder, shard, k, reverse=False)[0][1]  # the loop found every part of the pair
    radius_a, floor_a = neighbour_figures(a_sim)
    radius_b, floor_b = neighbour_figures(b_sim)
    full = b_idx[:, -1] >= 0 if k else np.zeros(hi - lo, dtype=bool)
    with folder.writing(cuts_name(shard)) as f:
        np.savez(
            f,
            radius_a=radius_a,
            floor_a=floor_a,
            radius_b=radius_b,
            floor_b=floor_b,
            kth_sim=np.where(full, b_sim[:, -1] if k else -np.inf, -np.inf),
            kth_idx=np.where(full, b_idx[:, -1] if k else -1, np.iinfo(np.int64).max),
        )
    return folder.url(cuts_name(shard))


def read_pair_cuts(folder: Any, ra: str, rb: str, plan: Sequence[CandidateShard]) -> dict[str, np.ndarray]:
    """The cuts of region pair ``ra``-``rb`` put together, per text of each region (``radius_a``,
    ``floor_a``; ``radius_b``, ``floor_b``, ``kth_sim``, ``kth_idx``): ~50 B a text.

    Raises:
        ValueError: a cuts file of the pair is missing (its task did not run).
    """
    folder = ShardFolder.of(folder)
    n_b = RegionSearch.open(folder, rb).texts
    out: dict[str, list[np.ndarray]] = {}
    for shard in pair_shards(plan, ra, rb):
        if not folder.exists(cuts_name(shard)):
            raise ValueError(f"cuts of shard {shard.name} are missing in {folder}")
        with folder.open(cuts_name(shard)) as f:
            z = np.load(f, allow_pickle=False)
            for name in z.files:
                out.setdefault(name, []).append(z[name])
    cuts = {name: np.concatenate(parts) for name, parts in out.items()}
    if (got := len(cuts.get("kth_sim", ()))) != n_b:  # cut by another plan than ``plan``
        raise ValueError(f"cuts of {ra}<->{rb} in {folder} cover {got} of {n_b} texts")
    return cuts


def _read_part(
    folder: ShardFolder, shard: CandidateShard, k: int, *, reverse: bool = True
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]]:
    """A search part as ``((idx, sim)`` of its range's top-``k``, ``((text, rank), neighbour, sim)``
    of the other side's proposals); ``reverse=False``: the range's own lists alone (the reverse
    row groups are skipped, the proposals come back empty)."""
    with folder.open(part_name(shard)) as f:
        part = pq.read_table(f, filters=None if reverse else [("side", "=", 0)])
    side = part["side"].to_numpy()
    t, r = part["text"].to_numpy(), part["rank"].to_numpy().astype(np.int64)
    nb, sim = part["neighbour"].to_numpy(), part["sim"].to_numpy()
    mine = side == 0
    n = shard.stop - shard.start
    idx = np.full((n, k), -1, dtype=np.int64)
    val = np.full((n, k), -np.inf)
    idx[t[mine] - shard.start, r[mine]] = nb[mine]
    val[t[mine] - shard.start, r[mine]] = sim[mine]
    return (idx, val), ((t[~mine], r[~mine]), nb[~mine], sim[~mine])


def _reverse_rows(
    folder: ShardFolder,
    plan: Sequence[CandidateShard],
    shard: CandidateShard,
    columns: list[str],
    where: list[tuple[str, str, int]],
) -> Iterator[pa.Table]:
    """The reverse-list rows (``side`` 1) of every part of ``shard``'s region pair that meet
    ``where``, a part at a time (a Parquet filter: row groups outside it are skipped by statistics).

    Raises:
        ValueError: a search part of the pair is missing (a search task did not run).
    """
    for part in pair_shards(plan, shard.query, shard.other):
        if not folder.exists(part_name(part)):
            raise ValueError(f"search part of shard {part.name} is missing in {folder}")
        with folder.open(part_name(part)) as f:
            yield pq.read_table(f, columns=columns, filters=[("side", "=", 1), *where])


def _reverse_into(
    folder: ShardFolder, shard: CandidateShard, plan: Sequence[CandidateShard]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(other text, query text, sim)`` of every reverse list entry of ``shard``'s pair that falls
    in its range of query texts, read from each Qdrant part of the pair (whose reverse lists are
    whole, sorted by query text: Parquet statistics skip the row groups outside the range)."""
    texts, neighbours, sims = [], [], []
    into = [("neighbour", ">=", shard.start), ("neighbour", "<", shard.stop)]
    for side in _reverse_rows(folder, plan, shard, ["text", "neighbour", "sim"], into):
        texts.append(side["text"].to_numpy())
        neighbours.append(side["neighbour"].to_numpy())
        sims.append(side["sim"].to_numpy())
    return np.concatenate(texts), np.concatenate(neighbours), np.concatenate(sims)


def map_features(
    folder: Any,
    shard: CandidateShard,
    settings: MatchSettings,
    regions: Sequence[str],
    plan: Sequence[CandidateShard],
) -> str:
    """Compute and write the feature part of ``shard``: every candidate pair of its region pair whose
    side-a text is in its range (the single search's pairs, :func:`.candidates.pairs_from_neighbours`,
    restricted to the range), with :data:`.scoring.FEATURES` and the explanations. ``regions``: all
    regions of the run (the evidence IDF is over all of them); ``plan``: the run's shards (whose
    cuts it reads). Returns where the part is."""
    folder = ShardFolder.of(folder)
    ra, rb, k = shard.query, shard.other, settings.k
    whole = part_search(folder, shard) != "exact"  # a Qdrant part: each reverse list whole
    (ab_idx, ab_sim), ((t_b, _), nb_a, sim) = _read_part(folder, shard, k, reverse=not whole)
    if whole:
        t_b, nb_a, sim = _reverse_into(folder, shard, plan)
    cuts = read_pair_cuts(folder, ra, rb, plan)
    # a reverse proposal survives the merge if it ranks at or above its text's merged k-th entry
    kth_sim, kth_idx = cuts["kth_sim"][t_b], cuts["kth_idx"][t_b]
    keep = (nb_a >= 0) & ((sim > kth_sim) | ((sim == kth_sim) & (nb_a <= kth_idx)))
    sa, sb = text_sets(folder, ra), text_sets(folder, rb)
    rows_in = np.repeat(np.arange(shard.start, shard.stop), ab_idx.shape[1])
    ua = np.concatenate([rows_in, nb_a[keep]])
    ub = np.concatenate([ab_idx.ravel(), t_b[keep]])
    ok = ub >= 0
    width = max(len(sb), 1)
    key = np.unique(ua[ok] * width + ub[ok])
    ia, ib = expand_text_pairs(key // width, key % width, sa, sb)
    n_b = max(len(sb.inverse), 1)
    key = np.unique(ia * n_b + ib)
    ia, ib = key // n_b, key % n_b
    rows_a, ia_s = np.unique(ia, return_inverse=True)
    rows_b, ib_s = np.unique(ib, return_inverse=True)
    stats = {r: RegionStats.open(folder, r) for r in regions}
    idf = run_idf(stats.values())
    side_a = _product_rows(folder, ra, rows_a, sa, stats[ra], settings.center)
    side_b = _product_rows(folder, rb, rows_b, sb, stats[rb], settings.center)
    # side a's own top-k lists (its texts are the range's); side b's radius from the cut
    neigh_a = ab_sim[sa.inverse[rows_a] - shard.start]
    feats, explain = pair_features(
        side_a.vectors,
        side_b.vectors,
        ia_s,
        ib_s,
        neigh_a,
        cuts["radius_b"][sb.inverse[rows_b]][:, None],
        (side_a.ngrams, side_b.ngrams),
        side_a.evidence,
        side_b.evidence,
        idf,
    )
    if folder.exists(sentences_file(ra)) and folder.exists(sentences_file(rb)):
        feats["sentences"] = sentence_alignment(
            _product_sentences(folder, ra, rows_a, len(sa.inverse)),
            _product_sentences(folder, rb, rows_b, len(sb.inverse)),
            ia_s,
            ib_s,
        )
    table = pa.Table.from_pandas(feats, preserve_index=False)
    table = table.append_column("ia", pa.array(ia)).append_column("ib", pa.array(ib))
    table = table.append_column("explain", pa.array(explain, pa.string()))
    with folder.writing(features_name(shard)) as f:
        pq.write_table(table, f)
    return folder.url(features_name(shard))


@dataclass
class _Rows:
    ngrams: NgramCounts
    evidence: list[Any]
    vectors: np.ndarray


def _product_rows(
    folder: ShardFolder, region: str, rows: np.ndarray, sets: TextSets, stats: RegionStats, center: bool
) -> _Rows:
    """N-gram counts (against the region's document frequencies), evidence and search vectors of
    products ``rows`` (sorted), read a batch at a time: what the plan computed, not computed again."""
    columns = ["product", "ngram_keys", "ngram_tf", "evidence"]
    table = _read_products(folder, rows_file(region), rows, len(sets.inverse), ROW_BATCH, columns)
    # the rows file is in the order the store gave the rows: each row's place among ``rows``
    order = np.argsort(table["product"].to_numpy(), kind="stable")
    tf = _tf_matrix(table, stats.lex_keys)[order]
    evidence = [evidence_from_json(e) for e in table["evidence"].take(pa.array(order)).to_pylist()]
    del table
    pa.default_memory_pool().release_unused()  # the rows' Arrow buffers, before the vectors
    ngrams = NgramCounts(tf, stats.lex_keys, stats.lex_df, size=stats.rows)
    vectors = _text_vectors(folder, region, sets.inverse[rows], center)
    return _Rows(ngrams, evidence, vectors)


def _tf_matrix(table: pa.Table, lex_keys: np.ndarray) -> Any:
    """The rows' n-gram counts as a CSR matrix over the region's buckets, in the table's row order,
    filled a chunk at a time into its final arrays (int32 columns, float32 counts): a whole-table
    sort, combine and int64 bucket search were ~3 copies of the counts at once, the feature task's
    peak (+1.2 GB reading 100k products)."""
    from scipy.sparse import csr_matrix

    keys, counts = table["ngram_keys"], table["ngram_tf"]
    lengths = pc.list_value_length(keys).to_numpy(zero_copy_only=False)
    indptr = np.zeros(table.num_rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    cols = np.empty(int(indptr[-1]), dtype=np.int32)
    data = np.empty(int(indptr[-1]), dtype=np.float32)
    at = 0
    for key_chunk, count_chunk in zip(keys.chunks, counts.chunks, strict=True):
        flat = key_chunk.flatten().to_numpy()
        cols[at : at + len(flat)] = np.searchsorted(lex_keys, flat)
        data[at : at + len(flat)] = count_chunk.flatten().to_numpy()
        at += len(flat)
    return csr_matrix((data, cols, indptr), shape=(table.num_rows, len(lex_keys)))


def _text_vectors(folder: ShardFolder, region: str, codes: np.ndarray, center: bool) -> np.ndarray:
    """The search vectors (centred as the search centres them) of distinct texts ``codes``."""
    uniq, back = np.unique(codes, return_inverse=True)
    return RegionSearch.open(folder, region).pick(uniq, center=center)[back]


def blocks_from_parts(
    folder: Any,
    plan: Sequence[CandidateShard],
    regions: Sequence[str],
    *,
    scores: bool = False,
    held: PairFloor | None = None,
    positions: list[np.ndarray] | None = None,
) -> list[PairBlock]:
    """Every region pair's :class:`.blocks.PairBlock` (pairs, features, explanations) from ``plan``'s
    feature parts, in the single task's order (by side-a then side-b product). Read a part at a
    time into NumPy columns; each distinct explanation becomes one string object the pairs share
    (as the single task's features give them: ~90% of pairs repeat a few sentences). ``scores``:
    each pair's ``p1`` and ``score`` (and the ``ev_triangle`` feature) from the score task's parts
    too (:mod:`.part_scores`). ``held`` (with ``scores``): only the pairs it holds
    (:meth:`.held_pairs.PairFloor.held`); ``positions`` then receives per block the held rows'
    positions in the whole region pair's order (the score task's decisions come in that order),
    ascending (:func:`_positions`).

    Raises:
        ValueError: a shard's feature part is missing (its task did not run)."""
    from .part_scores import read_part_scores

    folder = ShardFolder.of(folder)
    blocks = []
    for ra, rb in itertools.combinations(sorted(regions), 2):
        ia, ib, codes, cols = [], [], [], {}
        words: dict[str, int] = {}
        for shard in plan:
            if (shard.query, shard.other) != (ra, rb):
                continue
            if not folder.exists(features_name(shard)):
                raise ValueError(f"feature part of shard {shard.name} is missing in {folder}")
            with folder.open(features_name(shard)) as f:
                part = pq.read_table(f, read_dictionary=["explain"])  # codes, not a string a pair
            if scores:
                scored = read_part_scores(folder, shard)
                for name in scored.column_names:
                    part = part.append_column(name, scored[name])
                del scored
            if held is not None:
                a, b = part["ia"].to_numpy(), part["ib"].to_numpy()
                keep = held.held(ra, rb, a, b, part["score"].to_numpy(), part["p1"].to_numpy())
                del a, b
                part = part.filter(pa.array(keep))
            ia.append(part["ia"].to_numpy())
            ib.append(part["ib"].to_numpy())
            for name in part.column_names:
                if name not in ("ia", "ib", "explain"):
                    cols.setdefault(name, []).append(part[name].to_numpy())
            said = part["explain"].combine_chunks()  # one dictionary over the part's row groups
            local = np.array([words.setdefault(w, len(words)) for w in said.dictionary.to_pylist()], np.int64)
            codes.append(local[said.indices.to_numpy()] if len(local) else np.zeros(0, np.int64))
            del part, said
        if not ia or not sum(len(x) for x in ia):
            blocks.append(PairBlock(ra, rb, np.zeros(0, np.int64), np.zeros(0, np.int64), pd.DataFrame(), []))
            if positions is not None and held is not None:
                positions.append(np.zeros(0, np.int64))
            continue
        a, b = np.concatenate(ia), np.concatenate(ib)
        order = np.lexsort((b, a))
        if positions is not None and held is not None:
            positions.append(
                _positions(folder, [s for s in plan if (s.query, s.other) == (ra, rb)], a[order], b[order])
            )
        scored = {name: np.concatenate(cols.pop(name))[order] for name in ("p1", "score") if name in cols}
        feats = feature_frame({name: np.concatenate(parts)[order] for name, parts in cols.items()})
        text = list(words)
        explain = [text[i] for i in np.concatenate(codes)[order]]
        blocks.append(PairBlock(ra, rb, a[order], b[order], feats, explain, **scored))
        del ia, ib, codes, cols
        pa.default_memory_pool().release_unused()  # the parts' Arrow buffers, before the next pair
    return blocks


def pair_figures(
    folder: Any, plan: Sequence[CandidateShard], regions: Sequence[str]
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """Per (region, other region) each product's radius and floor (what the match context keeps),
    from the cuts files."""
    folder = ShardFolder.of(folder)
    sets = {r: text_sets(folder, r) for r in regions}
    out = {}
    for ra, rb in itertools.combinations(sorted(regions), 2):
        z = read_pair_cuts(folder, ra, rb, plan)
        out[(ra, rb)] = (z["radius_a"][sets[ra].inverse], z["floor_a"][sets[ra].inverse])
        out[(rb, ra)] = (z["radius_b"][sets[rb].inverse], z["floor_b"][sets[rb].inverse])
    return out


@dataclass
class ShardedFeatures:
    """What the reduce takes from the map tasks in place of its own search and features: the blocks,
    each product's neighbourhood figures, the statistics an incremental run freezes (n-gram document
    frequencies, evidence IDF), the region means and the regions' vector digests."""

    blocks: list[PairBlock]
    figures: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]
    lex_stats: dict[str, tuple[np.ndarray, np.ndarray]]
    idf: dict[str, float]
    means: dict[str, np.ndarray | None]
    digests: dict[str, str]
    #: Per region ``sent_mean``, ``sent_keys``, ``sent_df`` when the parts carry the sentence feature.
    sentence_stats: dict[str, dict[str, Any]] | None = None
    #: How the parts were searched: ``exact``, or ``qdrant:...`` (:func:`.shards.part_search`).
    search: str = "exact"
    #: The score task's scorers (:mod:`.part_scores`) when the blocks carry its scores; else why not.
    scorers: tuple[Any, Any] | str = "not asked for"
    #: The score task's decisions manifest (:mod:`.part_decisions`) when the blocks carry its
    #: ``accepted`` pairs, with each block's ``rival`` indices in ``rivals``; else why not.
    decided: dict[str, Any] | str = "not asked for"
    rivals: list[np.ndarray] | None = None
    #: What the blocks hold when they hold only the pairs that can matter (:mod:`.held_pairs`).
    floor: PairFloor | None = None
    #: The folder and plan of the parts (where the pairs the blocks do not hold stay).
    parts: tuple[ShardFolder, list[CandidateShard]] | None = None


def _positions(
    folder: ShardFolder, shards: Sequence[CandidateShard], a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Positions in the region pair's whole order (side a, then side b, over every part) of the held
    pairs ``a``, ``b`` (in that order): per part, how many of its pairs come before each. Holds one
    part's keys and the held pairs', not the region pair's (~24 B a pair for its sort)."""
    held = pair_key(a, b)
    before = np.zeros(len(held), np.int64)
    for shard in shards:
        with folder.open(features_name(shard)) as f:
            part = pq.read_table(f, columns=["ia", "ib"])
        keys = np.sort(pair_key(part["ia"].to_numpy(), part["ib"].to_numpy()))
        del part
        before += np.searchsorted(keys, held, side="left")
    return before


def _held_decisions(
    folder: ShardFolder, ra: str, rb: str, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A region pair's decisions for the held rows at ``positions`` (ascending) of its whole order,
    rivals renumbered among them. A rival ties an accepted pair's score, so it is over the threshold
    and held too."""
    from .part_decisions import read_region_pair_decisions

    accepted, rival = read_region_pair_decisions(folder, ra, rb, positions)
    tied = rival >= 0
    number = np.searchsorted(positions, rival[tied])
    found = number < len(positions)
    if not found.all() or not (positions[number] == rival[tied]).all():
        raise AssertionError("a tie rival was not held")
    out = np.full(len(rival), -1, np.int32)
    out[tied] = number
    return accepted, out


def read_features(
    folder: Any,
    plan: Sequence[CandidateShard],
    regions: Sequence[str],
    center: bool,
    corroborate: bool | None = None,
    decide: tuple[float | None, str] | None = None,
    hold: bool = False,
) -> ShardedFeatures:
    """The map tasks' output in ``folder`` for the reduce (:func:`.pipeline.match_tables`); with
    ``corroborate`` (the run's setting), the score task's scores and scorers where they fit the parts
    and that setting (:func:`.part_scores.read_scorers`), and with ``decide`` (the run's threshold
    setting and method) its decisions where they fit those (:func:`.part_decisions.read_decisions`).
    ``hold``: where the decisions fit and the run has more than :data:`.held_pairs.HOLD_ALL_UP_TO`
    candidate pairs, only the pairs :mod:`.held_pairs` holds (``floor`` says which)."""
    from .part_decisions import read_decisions, read_region_pair_decisions
    from .part_scores import part_features, read_scorers

    folder = ShardFolder.of(folder)
    stats = {r: RegionStats.open(folder, r) for r in regions}
    search = {r: RegionSearch.open(folder, r) for r in regions}
    scorers: tuple[Any, Any] | str = "not asked for"
    decided: dict[str, Any] | str = "not asked for"
    if corroborate is not None:
        scorers = read_scorers(folder, plan, part_features(folder, plan), corroborate and len(regions) > 2)
    if decide is not None:
        unscored = "the parts' scores do not fit this run"
        decided = unscored if isinstance(scorers, str) else read_decisions(folder, regions, *decide)
    floor = None
    if (
        hold
        and isinstance(decided, dict)
        and held_pairs.candidate_count(folder, plan) > held_pairs.HOLD_ALL_UP_TO
    ):
        products = {r: s.rows for r, s in stats.items()}
        floor = pair_floor(folder, plan, products, float(decided["threshold"]))
        if floor.floor == -np.inf:  # too few pairs under the threshold to leave any out
            floor = None
    positions: list[np.ndarray] = []
    blocks = blocks_from_parts(
        folder, plan, regions, scores=not isinstance(scorers, str), held=floor, positions=positions
    )
    rivals = None
    if isinstance(decided, dict):
        if floor is not None:
            read = [
                _held_decisions(folder, blk.ra, blk.rb, at) for blk, at in zip(blocks, positions, strict=True)
            ]
        else:
            read = [read_region_pair_decisions(folder, blk.ra, blk.rb) for blk in blocks]
        del positions
        if all(len(accepted) == len(blk) for blk, (accepted, _) in zip(blocks, read, strict=True)):
            for blk, (accepted, _) in zip(blocks, read, strict=True):
                blk.accepted = accepted
            rivals = [rival for _, rival in read]
        else:  # cannot happen with the manifests' checks; a hand-edited folder decides again
            decided = "the decisions' rows are not the parts' pairs"
        del read
    return ShardedFeatures(
        blocks=blocks,
        scorers=scorers,
        decided=decided,
        rivals=rivals,
        floor=floor,
        parts=(folder, list(plan)),
        figures=pair_figures(folder, plan, regions),
        lex_stats={r: (s.lex_keys, s.lex_df) for r, s in stats.items()},
        idf=run_idf(stats.values()),
        means={r: s.mean for r, s in search.items()} if center else {},
        digests={r: s.digest for r, s in search.items()},
        sentence_stats=sentence_stats(folder, regions),
        search=part_search(folder, plan[0]) if plan else "exact",
    )


def folder_plan(folder: Any, regions: Sequence[str], shards: int) -> list[CandidateShard]:
    """The plan the map tasks of ``folder`` run: ``shards`` per region pair over its search files'
    texts (what every task after the search re-derives from the shard count alone)."""
    return plan_shards({r: RegionSearch.open(folder, r).texts for r in regions}, shards)


def read_mapped(
    data: CatalogData,
    *_: Any,
    folder: Any,
    shards: int,
    center: bool,
    corroborate: bool | None = None,
    decide: tuple[float | None, str] | None = None,
    hold: bool = False,
) -> ShardedFeatures:
    """:func:`read_features` of the plan the map tasks ran (:func:`folder_plan`), for ``data``'s
    regions."""
    regions = sorted(data)
    plan = folder_plan(folder, regions, shards)
    return read_features(folder, plan, regions, center, corroborate, decide, hold=hold)


def check_listings(folder: Any, data: CatalogData) -> str | None:
    """Why the rows files in ``folder`` are not from ``data``'s SKUs and texts (the catalog changed
    since the plan), or None when they are."""
    folder = ShardFolder.of(folder)
    for r, t in sorted(data.items()):
        try:
            want = RegionStats.open(folder, r).listing
        except FileNotFoundError:
            return f"no rows file of region {r} in {folder}"
        if want != f"{listing_digest(t.skus, t.texts):016x}":
            return f"region {r} changed since the plan wrote its rows file"
    return None


def sharded_features(
    data: CatalogData,
    sentences: Mapping[str, SentenceVectors] | None = None,
    sentence_stats: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    settings: MatchSettings,
    shards: int,
    folder: Any,
    store: Any | None = None,
    hold: bool = False,
) -> ShardedFeatures:
    """The map tasks and the cuts in one process (``match --shards N``), then :func:`read_features`:
    search every stale shard (:func:`.shards.search_stale`), write each region's rows file and
    statistics (and its centred ``sentences`` with their ``sentence_stats``, products in canonical
    order, when the run has them), each shard's cuts and each shard's feature part. ``data``:
    the tables as read; ``store``: Qdrant answers the search (the tables are the store's)."""
    from .shards import search_stale

    regions = sorted(data)
    texts = {r: len(set(t.texts)) for r, t in data.items()}
    plan = search_stale(data, settings, shards, folder, texts, store=store)
    for r in regions:
        if store is None:  # the Qdrant search wrote them first (its hits map to products through them)
            write_region_rows(r, table_pages(data[r]), folder)
        if sentences is not None and sentence_stats is not None:
            write_region_sentences(folder, r, sentences[r], sentence_stats[r])
    for shard in plan:
        write_shard_cuts(folder, shard, plan, settings.k)
    for shard in plan:
        map_features(folder, shard, settings, regions, plan)
    if not settings.fit_on_labels:  # a fit on labels is the match task's own (labels never leave it)
        from .part_decisions import decide_parts
        from .part_scores import part_features, score_parts

        corroborate = settings.corroborate and len(regions) > 2
        score_parts(folder, plan, regions, part_features(folder, plan), corroborate=corroborate)
        decide_parts(folder, plan, regions, threshold=settings.threshold, method=settings.method)
    decide = (settings.threshold, settings.method)
    return read_features(folder, plan, regions, settings.center, settings.corroborate, decide, hold=hold)
