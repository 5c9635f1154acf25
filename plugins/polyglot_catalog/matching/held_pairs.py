"""Which candidate pairs the match task holds when the score task decided them (#26), and the rest
streamed from the parts into ``pairs.parquet``.

Why: with the feature parts, their scores and the one-to-one decisions made by map tasks, the match
task still held every candidate pair with its features (~0.17 KB a pair: 4 GB at ~22 M pairs, 520k
products per region at the bench's density). Most candidates score far below the threshold, and
every later stage reads few of them:

- the group rule touches only pairs over the threshold or accepted;
- the unmatched table names each product's best candidate (the rows with its best score);
- the match context keeps the pairs scoring :data:`.context.EDGE_FLOOR` or more in either pass;
- the report's rejected samples are the rejected pairs nearest the threshold.

A pair scoring below the threshold keeps the decision ``below_threshold``, no tie flag and its own
explanation (corroboration is row-local), so it needs nothing but its part's row. The match task
therefore holds the pairs at or above a floor (:func:`pair_floor`: the lowest of the threshold,
``EDGE_FLOOR`` and the :data:`HELD_SAMPLE`-th best score below the threshold), the pairs with
``p1`` at or above ``EDGE_FLOOR`` and each product's best pairs; the report's pairs file, its score
histogram and its counts take the others from the parts (:class:`RestPairs`). Same files as the
match task holding every pair, to the last bit (tests/test_matching_held_pairs.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .context import EDGE_FLOOR
from .shard_storage import ShardFolder
from .shards import CandidateShard

#: Pairs below the threshold held whatever their score: the report shows the rejected pairs nearest
#: the threshold (at most 30), and they must be among the held ones.
HELD_SAMPLE = 64
#: The pairs file's columns of per-product values (each row group has its own dictionary of them).
PRODUCT_COLUMNS = ("sku_a", "sku_b", "text_a", "text_b")
#: Rows of the pairs file written at a time from the parts (~0.1 KB each while written).
WRITE_ROWS = 1 << 20
#: Runs with at most this many candidate pairs hold them all (``MatchResult.pairs`` is then every
#: pair, as on an unsharded run). Measured (bench/RESULTS.md, 2026-12-07 17:45): at 4.1 M pairs
#: holding some saved 3% of the match task's peak for 19% more time (its report reads the parts
#: again); at 12.6 M it saved 27% for 2%.
HOLD_ALL_UP_TO = 5_000_000


def pair_key(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Side-a and side-b rows as one int64 (``a << 32 | b``: rows are under 2^31), ordered as the
    pairs are (side a, then side b)."""
    return (np.asarray(a).astype(np.int64) << 32) | np.asarray(b).astype(np.int64)


def _pair_keys(table: pa.Table) -> np.ndarray:
    """:func:`pair_key` of a table's ``ia`` and ``ib``."""
    return pair_key(table["ia"].to_numpy(), table["ib"].to_numpy())


def _after(score: np.ndarray, key: np.ndarray, pair: tuple[float, int]) -> np.ndarray:
    """Which rows come after ``pair`` (score, pair key) in the pairs table's order: best score
    first, then side a, then side b."""
    return (score < pair[0]) | ((score == pair[0]) & (key > pair[1]))


class _FirstPairs:
    """The :data:`WRITE_ROWS` first pairs of those added (best score, then lowest pair key), kept
    by selection (linear; no sort), and the last of them: where a range of the pairs file ends."""

    def __init__(self) -> None:
        self.score, self.key = np.zeros(0), np.zeros(0, np.int64)

    def add(self, score: np.ndarray, key: np.ndarray) -> None:
        score, key = np.concatenate([self.score, score]), np.concatenate([self.key, key])
        if len(score) > WRITE_ROWS:
            cut = np.partition(-score, WRITE_ROWS - 1)[WRITE_ROWS - 1]  # the WRITE_ROWS-th best score
            clear = np.flatnonzero(-score < cut)
            tied = np.flatnonzero(-score == cut)
            need = WRITE_ROWS - len(clear)
            if len(tied) > need:  # of the tied, the lowest keys (pair keys are distinct)
                tied = tied[np.argpartition(key[tied], need - 1)[:need]]
            keep = np.concatenate([clear, tied])
            score, key = score[keep], key[keep]
        self.score, self.key = score, key

    def end(self) -> tuple[float, int] | None:
        """The last pair kept (its score and key), or None."""
        if not len(self.score):
            return None
        low = self.score.min()
        return float(low), int(self.key[self.score == low].max())


def _shards_of(plan: Sequence[CandidateShard], ra: str, rb: str) -> list[CandidateShard]:
    return [s for s in plan if (s.query, s.other) == (ra, rb)]


def _read(
    folder: ShardFolder, shard: CandidateShard, columns: Sequence[str], scores: Sequence[str]
) -> pa.Table:
    """``columns`` of a shard's feature part with ``scores`` of its scores part (same rows)."""
    from .feature_parts import features_name
    from .part_scores import scores_name

    with folder.open(features_name(shard)) as f:
        # explanations as codes into their few distinct strings, not a string a row
        part = pq.read_table(
            f, columns=list(columns), read_dictionary=["explain"] if "explain" in columns else None
        )
    if scores:
        with folder.open(scores_name(shard)) as f:
            present = pq.ParquetFile(f).schema_arrow.names
            f.seek(0)
            # ``ev_triangle`` only where the run corroborates (3 regions or more)
            scored = pq.read_table(f, columns=[c for c in scores if c in present])
        for name in scored.column_names:
            part = part.append_column(name, scored[name])
    return part


@dataclass
class PairFloor:
    """What the match task holds of the scored parts (:func:`pair_floor`) and what it leaves there."""

    #: Pairs scoring at least this are held; every pair below it is below the threshold.
    floor: float
    #: Per region, each product's best score over all its pairs (-inf: none).
    best: dict[str, np.ndarray]
    #: Candidate pairs per region pair (held or not).
    totals: dict[tuple[str, str], int]
    #: How many pairs are not held, and their lowest and highest score (the report's histogram
    #: axis; their scores are read again from the parts, :meth:`RestPairs.scores`).
    rest: int = 0
    rest_low: float = np.inf
    rest_high: float = -np.inf

    def keep(
        self, ra: str, rb: str, ia: np.ndarray, ib: np.ndarray, score: np.ndarray, p1: np.ndarray
    ) -> np.ndarray:
        """Which of a part's rows the match task holds (module docstring)."""
        keep = (score >= self.floor) | (p1 >= EDGE_FLOOR)
        keep |= score == self.best[ra][ia]
        keep |= score == self.best[rb][ib]
        return keep

    def held(
        self, ra: str, rb: str, ia: np.ndarray, ib: np.ndarray, score: np.ndarray, p1: np.ndarray
    ) -> np.ndarray:
        """:meth:`keep`, counting the others. Their scores are not kept: as distinct values and
        counts they were ~16 B a pair not held (184 MB at 12.56 M pairs), through the report."""
        keep = self.keep(ra, rb, ia, ib, score, p1)
        rest = score[~keep]
        if len(rest):
            self.rest += len(rest)
            self.rest_low = min(self.rest_low, float(rest.min()))
            self.rest_high = max(self.rest_high, float(rest.max()))
        return keep


def candidate_count(folder: Any, plan: Sequence[CandidateShard]) -> int:
    """The candidate pairs of the plan's feature parts, from their footers alone."""
    from .feature_parts import features_name

    folder = ShardFolder.of(folder)
    total = 0
    for shard in plan:
        with folder.open(features_name(shard)) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def pair_floor(
    folder: Any, plan: Sequence[CandidateShard], products: Mapping[str, int], threshold: float
) -> PairFloor:
    """One pass over the parts' ``ia``, ``ib`` and ``score``: each product's best score, the pairs
    per region pair, and the floor (module docstring). ``products``: each region's product count.
    Holds ~8 B a product and one part's columns."""
    folder = ShardFolder.of(folder)
    best = {r: np.full(n, -np.inf) for r, n in products.items()}
    totals: dict[tuple[str, str], int] = {}
    below = np.zeros(0)  # the best HELD_SAMPLE scores under the threshold so far
    for ra, rb in itertools.combinations(sorted(products), 2):
        totals[(ra, rb)] = 0
        for shard in _shards_of(plan, ra, rb):
            part = _read(folder, shard, ("ia", "ib"), ("score",))
            ia, ib = part["ia"].to_numpy(), part["ib"].to_numpy()
            score = part["score"].to_numpy()
            del part
            totals[(ra, rb)] += len(score)
            np.maximum.at(best[ra], ia, score)
            np.maximum.at(best[rb], ib, score)
            under = np.concatenate([below, score[score < threshold]])
            below = np.sort(under)[-HELD_SAMPLE:] if len(under) > HELD_SAMPLE else under
    floor = min(EDGE_FLOOR, threshold, float(below.min())) if len(below) >= HELD_SAMPLE else -np.inf
    return PairFloor(floor=floor, best=best, totals=totals)


@dataclass
class RestPairs:
    """The candidate pairs the match task did not hold, for the report: they stay in the parts of
    ``folder`` and are written from there (:meth:`write`), after the held pairs of their region pair
    that score at least the floor, in the pairs table's order (region pair, best score first, then
    side-a and side-b product)."""

    folder: ShardFolder
    plan: list[CandidateShard]
    floor: PairFloor
    #: Per region, its first product number (the pairs table's ``pid`` offsets).
    offsets: dict[str, int]
    #: Per product number, its code in ``skus`` / ``texts`` (the pairs table's categories).
    sku_codes: np.ndarray
    text_codes: np.ndarray
    skus: pd.Index
    texts: pd.Index
    corroborate: bool
    sentences: bool

    @property
    def count(self) -> int:
        return self.floor.rest

    def scores(self) -> Iterator[np.ndarray]:
        """The scores of the pairs not held, a part at a time (the report's histogram)."""
        for ra, rb in itertools.combinations(sorted(self.offsets), 2):
            for shard in _shards_of(self.plan, ra, rb):
                part = _read(self.folder, shard, ("ia", "ib"), ("score", "p1"))
                score = part["score"].to_numpy()
                keep = self.floor.keep(
                    ra, rb, part["ia"].to_numpy(), part["ib"].to_numpy(), score, part["p1"].to_numpy()
                )
                del part
                yield score[~keep]

    def _features(self) -> list[str]:
        from .evidence import EVIDENCE_COLUMNS

        return ["cosine", "csls", "lexical", *(["sentences"] if self.sentences else []), *EVIDENCE_COLUMNS]

    def _tail(self, ra: str, rb: str, vocab: dict[str, int], d: dict[str, pa.Array]) -> Iterator[pa.Table]:
        """The region pair's pairs under the floor, from its parts, in the table's order (``vocab``:
        the file's explanation codes, ``d`` its dictionaries), a range of :data:`WRITE_ROWS` pairs at
        a time: a range ends at the :data:`WRITE_ROWS`-th pair after the last one written (in the
        order score, side a, side b: one pair, so runs of equal scores split too); one read of the
        parts takes its pairs and finds where the next range ends. Sorting the region pair's keys at
        once held ~22 B a pair under the floor (4.4 GB at 200 M pairs); a range holds its own pairs
        and one part, whatever the catalog size."""
        shards = _shards_of(self.plan, ra, rb)
        columns = ("ia", "ib", *self._features(), "explain")
        first = _FirstPairs()  # where the first range ends: the parts' keys alone
        for shard in shards:
            part = _read(self.folder, shard, ("ia", "ib"), ("score",))
            score, key = part["score"].to_numpy(), _pair_keys(part)
            mine = self._within(score, key, None, None)
            first.add(score[mine], key[mine])
        last, end = None, first.end()
        while end is not None:
            pieces, after = [], _FirstPairs()
            for shard in shards:
                part = _read(self.folder, shard, columns, ("ev_triangle", "score"))
                score, key = part["score"].to_numpy(), _pair_keys(part)
                pieces.append(part.filter(pa.array(self._within(score, key, last, end))))
                mine = self._within(score, key, end, None)
                after.add(score[mine], key[mine])
                del part, score, key
            # one explain dictionary: the takes 4x faster
            table = pa.concat_tables(pieces).unify_dictionaries()
            del pieces
            order = np.lexsort((_pair_keys(table), -table["score"].to_numpy()))
            step = max(1, WRITE_ROWS // 8)  # the range's rows go out in eighths: each a copy or two
            for lo in range(0, len(order), step):
                yield self._rows(ra, rb, table.take(pa.array(order[lo : lo + step])), vocab, d)
            del table, order
            pa.default_memory_pool().release_unused()  # the parts read for this range
            last, end = end, after.end()

    def _within(
        self,
        score: np.ndarray,
        key: np.ndarray,
        last: tuple[float, int] | None,
        end: tuple[float, int] | None,
    ) -> np.ndarray:
        """Which rows are under the floor, after ``last`` and not after ``end`` in the table's order."""
        mine = score < self.floor.floor
        if last is not None:
            mine &= _after(score, key, last)
        if end is not None:
            mine &= ~_after(score, key, end)
        return mine

    def _dictionaries(self, vocab: dict[str, int]) -> dict[str, pa.Array]:
        """The file's dictionaries, made once and shared by every row group's columns."""
        from .result import DECISIONS

        return {
            "region": pa.array(sorted(self.offsets), pa.string()),
            "decision": pa.array(list(DECISIONS), pa.string()),
            "explain": pa.array(list(vocab), pa.string()),
        }

    def _rows(
        self, ra: str, rb: str, table: pa.Table, vocab: dict[str, int], d: dict[str, pa.Array]
    ) -> pa.Table:
        """Rows of the parts as the pairs file's columns (decision ``below_threshold``, no tie; SKUs
        and texts as catalog codes, :class:`_RowGroups`)."""
        from .evidence import EVIDENCE_COLUMNS
        from .result import DECISIONS

        def col(name: str, dtype: Any) -> np.ndarray:
            return table[name].to_numpy().astype(dtype)

        n = len(table)
        pid_a = col("ia", np.int64) + self.offsets[ra]
        pid_b = col("ib", np.int64) + self.offsets[rb]
        regions = sorted(self.offsets)
        triangle = (
            col("ev_triangle", np.float32) if "ev_triangle" in table.column_names else np.zeros(n, np.float32)
        )
        words, codes = final_explanations(table["explain"], triangle, self.corroborate)
        recode = np.array([vocab[w] for w in words], np.int64)
        columns = {
            "region_a": _coded(np.full(n, regions.index(ra)), d["region"], ordered=True),
            "sku_a": pa.array(self.sku_codes[pid_a]),
            "region_b": _coded(np.full(n, regions.index(rb)), d["region"], ordered=True),
            "sku_b": pa.array(self.sku_codes[pid_b]),
            "score": _floats(col("score", np.float64)),
            "cosine": _floats(col("cosine", np.float32)),
            "decision": _coded(np.full(n, DECISIONS.index("below_threshold")), d["decision"]),
            "ambiguous": _floats(np.zeros(n, bool)),
            "csls": _floats(col("csls", np.float32)),
            "lexical": _floats(col("lexical", np.float32)),
            "sentences": _floats(
                col("sentences", np.float32) if self.sentences else np.full(n, np.nan, np.float32)
            ),
            **{c: _floats(col(c, np.float32)) for c in EVIDENCE_COLUMNS},
            "ev_triangle": _floats(triangle),
            "explain": _coded(recode[codes], d["explain"]),
            "text_a": pa.array(self.text_codes[pid_a]),
            "text_b": pa.array(self.text_codes[pid_b]),
        }
        return pa.table(columns)

    def _held_rows(self, frame: pd.DataFrame, vocab: dict[str, int], d: dict[str, pa.Array]) -> pa.Table:
        """Rows of the match task's pairs table as the pairs file's columns (its categoricals' codes
        onto the file's dictionaries ``d``; SKUs and texts as catalog codes, :class:`_RowGroups`)."""
        from .pipeline import PAIR_COLUMNS
        from .result import DECISIONS

        regions = sorted(self.offsets)
        out: dict[str, pa.Array] = {}
        for name in PAIR_COLUMNS:
            column = frame[name]
            if name.startswith(("region_", "sku_", "text_")) or name in ("decision", "explain"):
                cats = (
                    [str(c) for c in column.cat.categories]
                    if not name.startswith(("sku_", "text_"))
                    else None
                )
                codes = column.cat.codes.to_numpy().astype(np.int64)
                if name.startswith("region_"):
                    codes = np.array([regions.index(c) for c in cats], np.int64)[codes]
                    out[name] = _coded(codes, d["region"], ordered=True)
                elif name == "decision":
                    codes = np.array([DECISIONS.index(c) for c in cats], np.int64)[codes]
                    out[name] = _coded(codes, d["decision"])
                elif name == "explain":
                    out[name] = _coded(np.array([vocab[c] for c in cats], np.int64)[codes], d["explain"])
                else:  # the table's SKU and text categories are the catalog's, in this order
                    kind = self.skus if name.startswith("sku_") else self.texts
                    if len(column.cat.categories) != len(kind):
                        raise AssertionError(f"the pairs table's {name} categories are not the catalog's")
                    out[name] = pa.array(codes.astype(np.int32))  # codes: the row group makes its dictionary
            else:
                out[name] = _floats(column.to_numpy())
        return pa.table(out)

    def explanations(self) -> set[str]:
        """Every explanation the pairs under the floor carry (after corroboration)."""
        out: set[str] = set()
        for shard in self.plan:
            part = _read(self.folder, shard, ("explain",), ("ev_triangle", "score"))
            under = part.filter(pc.less(part["score"], self.floor.floor))
            del part
            triangle = (
                under["ev_triangle"].to_numpy()
                if "ev_triangle" in under.column_names
                else np.zeros(len(under))
            )
            words, _ = final_explanations(under["explain"], triangle, self.corroborate)
            out.update(words)
            del under
            pa.default_memory_pool().release_unused()
        return out

    def write(self, path: Any, held: pd.DataFrame) -> None:
        """``pairs.parquet`` at ``path``: ``held`` (the match task's pairs table) at or above the floor
        and every pair under it from the parts, region pair by region pair, in the table's order,
        with the explanation categories the whole table would have (sorted distinct values), in row
        groups of :data:`WRITE_ROWS` rows (:class:`_RowGroups`, as :func:`write_pairs` writes a table
        held whole)."""
        score = held["score"].to_numpy(np.float64)
        said = held["explain"].cat
        words = sorted(set(said.categories[np.unique(said.codes.to_numpy())].tolist()) | self.explanations())
        vocab = {w: i for i, w in enumerate(words)}
        d = self._dictionaries(vocab)

        def frames() -> Iterator[pa.Table]:
            for ra, rb in itertools.combinations(sorted(self.offsets), 2):
                mine = np.flatnonzero(
                    (held["region_a"] == ra).to_numpy()
                    & (held["region_b"] == rb).to_numpy()
                    & (score >= self.floor.floor)
                )
                for lo in range(0, len(mine), WRITE_ROWS):
                    yield self._held_rows(held.iloc[mine[lo : lo + WRITE_ROWS]], vocab, d)
                yield from self._tail(ra, rb, vocab, d)

        catalog = {
            c: (self.skus if c.startswith("sku_") else self.texts).to_numpy(object) for c in PRODUCT_COLUMNS
        }
        with _RowGroups(path, self._held_rows(held.iloc[:0], vocab, d), catalog) as out:
            for frame in frames():
                out.add(frame)


class _RowGroups:
    """A Parquet file written from tables of any size in row groups of :data:`WRITE_ROWS` rows. The
    tables carry :data:`PRODUCT_COLUMNS` as codes into ``catalog`` (per column, the values by code);
    each row group gets a dictionary of its own rows' values, in code order.

    Why: with the catalog's categories as every row group's dictionary (what ``to_parquet`` writes
    for a categorical), each row group repeated every SKU and text of the catalog: 46 of a row
    group's 63 MB at 300k x 3, and a whole catalog's texts in memory to write them."""

    def __init__(self, path: Any, empty: pa.Table, catalog: Mapping[str, np.ndarray]) -> None:
        self.path, self.writer, self.empty, self.catalog = str(path), None, empty, catalog
        self.pending: list[pa.Table] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.rows += len(table)
        while self.rows >= WRITE_ROWS:
            self._flush(WRITE_ROWS)

    def _flush(self, rows: int) -> None:
        whole = pa.concat_tables(self.pending) if len(self.pending) > 1 else self.pending[0]
        table = whole.slice(0, rows)
        self.pending = [whole.slice(rows)] if len(whole) > rows else []
        self.rows = len(whole) - rows
        for name, values in self.catalog.items():
            if name in table.column_names:
                at = table.column_names.index(name)
                table = table.set_column(at, name, _own_dictionary(table[name].to_numpy(), values))
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table, row_group_size=WRITE_ROWS)

    def __enter__(self) -> _RowGroups:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        try:
            if kind is None and self.rows:
                self._flush(self.rows)
            elif kind is None and self.writer is None:  # no pair at all: the file, with its columns
                self.pending, self.rows = [self.empty], 0
                self._flush(0)
        finally:
            if self.writer is not None:
                self.writer.close()


def _index_width(n: int) -> type[np.integer]:
    """The code type pandas gives a categorical of ``n`` categories."""
    return np.int8 if n < 2**7 else np.int16 if n < 2**15 else np.int32 if n < 2**31 else np.int64


def _own_dictionary(codes: np.ndarray, values: np.ndarray) -> pa.DictionaryArray:
    """``codes`` (into ``values``; -1: missing) as a dictionary column of the values they use, in
    code order, indices as wide as a categorical of all ``values`` (one schema for every row group)."""
    codes = np.asarray(codes, np.int64)
    used, index = np.unique(codes, return_inverse=True)
    missing = used < 0
    index = index - int(missing.sum())  # -1 sorts first: the others shift down
    indices = pa.array(
        np.maximum(index, 0).astype(_index_width(len(values))), mask=codes < 0 if missing.any() else None
    )
    return pa.DictionaryArray.from_arrays(indices, pa.array(values[used[~missing]], pa.string()))


def write_pairs(path: Any, frame: pd.DataFrame) -> None:
    """``pairs.parquet`` of a pairs table held whole: the columns ``DataFrame.to_parquet`` would
    write, in row groups of :data:`WRITE_ROWS` rows whose SKU and text dictionaries hold their own
    rows' values (:class:`_RowGroups`: the same file the held pairs and their rest give)."""
    frame = frame.reset_index(drop=True)
    # categoricals (the matcher's tables); a column of plain strings is written as it is
    product = [
        c for c in PRODUCT_COLUMNS if c in frame.columns and isinstance(frame[c].dtype, pd.CategoricalDtype)
    ]
    catalog = {name: frame[name].cat.categories.to_numpy(object) for name in product}
    codes = {name: frame[name].cat.codes.to_numpy().astype(np.int32) for name in product}

    def rows(lo: int, hi: int) -> pa.Table:
        table = pa.Table.from_pandas(frame.iloc[lo:hi].drop(columns=product), preserve_index=False)
        for name in product:
            table = table.add_column(list(frame.columns).index(name), name, pa.array(codes[name][lo:hi]))
        return table

    with _RowGroups(path, rows(0, 0), catalog) as out:
        for lo in range(0, len(frame), WRITE_ROWS):
            out.add(rows(lo, lo + WRITE_ROWS))


def _floats(values: np.ndarray) -> pa.Array:
    """A column as ``DataFrame.to_parquet`` converts it: NaN becomes null."""
    return pa.array(values, from_pandas=True)


def _coded(codes: np.ndarray, dictionary: pa.Array, *, ordered: bool = False) -> pa.DictionaryArray:
    """``codes`` into ``dictionary``, with the index width pandas gives a categorical of that many
    categories (the file's schema is the one ``DataFrame.to_parquet`` wrote)."""
    width = _index_width(len(dictionary))
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(width)), dictionary, ordered=ordered)


def final_explanations(explain: Any, triangle: np.ndarray, corroborate: bool) -> tuple[list[str], np.ndarray]:
    """Rows' explanations as they end in the pairs table (with the third-region support said where
    strong, :func:`.pipeline.corroborated`): the distinct strings and each row's index among them.
    Works on distinct (explanation, support) values, not on a string per row."""
    from .pipeline import corroborated

    said = explain.combine_chunks() if isinstance(explain, pa.ChunkedArray) else explain
    if not pa.types.is_dictionary(said.type):
        said = said.dictionary_encode()
    words = said.dictionary.to_pylist()
    codes = said.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    if not corroborate:
        return words, codes
    triangle = np.asarray(triangle, np.float32)
    weak = np.uint32(0xFFFFFFFF)  # a NaN's bits: never a support of 0.5 or more
    bits = np.where(triangle >= 0.5, triangle.view(np.uint32), weak).astype(np.int64)
    distinct, index = np.unique((codes << 32) | bits, return_inverse=True)
    out = []
    for key in distinct.tolist():
        word, b = words[key >> 32], np.uint32(key & 0xFFFFFFFF)
        out.append(word if b == weak else corroborated([word], [b.view(np.float32)])[0])
    return out, index
