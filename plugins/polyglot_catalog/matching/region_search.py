"""What a search shard reads of a region: its distinct texts' vectors in a Parquet file, streamed (#26).

Why a file per region instead of the region in memory: a search task compares a range of one
region's texts with every text of the other region, and holding that other region whole made a
task's memory grow with the catalog (1.27 GB at 100k per region, ~31 GB at 10M). The plan task
writes each region once, in one streaming pass over the store: one row per distinct text (its
lowest SKU's vector, as :func:`.canonical.canonical_table` keeps it, with the text's canonical
index) and a sidecar with the region's exact mean (:func:`.data.fixed_sum`: the same in any order
or chunking) and a digest of its rows. A task then reads its range, and the other region a chunk at
a time: its memory is bounded by the shard and chunk sizes, whatever the catalog size.

The same vectors to the last bit as the single-task search: every step is row-local (normalised
once on reading, less the exact mean, normalised again), so chunking changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .data import RegionTable, fixed_mean, fixed_sum, unit_rows
from .shard_storage import ParquetSink, ShardFolder
from .sorted_lookup import positions

#: Rows per chunk a search task reads of the other region (~25 MB of 384-d vectors).
DEFAULT_CHUNK_ROWS = 16_384
_SEP = b"\x1f"


def search_file(region: str) -> str:
    """``search-<region>.parquet``: the region's distinct texts and their vectors (in the shard folder)."""
    return f"search-{region}.parquet"


def _sidecar(region: str) -> str:
    return f"search-{region}.json"


def rows_digest(skus: Sequence[str], texts: Sequence[str], vectors: np.ndarray) -> int:
    """Sum (mod 2^64) of each row's hash of SKU, text and vector bytes: what the rows are, in any order
    or chunking; added over chunks with :func:`add_digest`."""
    vec = np.ascontiguousarray(vectors, dtype=np.float32)
    total = 0
    for sku, text, row in zip(skus, texts, vec, strict=True):
        h = hashlib.blake2b(sku.encode() + _SEP + text.encode() + _SEP + row.tobytes(), digest_size=8)
        total += int.from_bytes(h.digest(), "little")
    return total % 2**64


def text_hash(text: str) -> bytes:
    """16 bytes that stand for a text when distinct texts are counted (no text held whole)."""
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def add_digest(a: int, b: int) -> int:
    return (a + b) % 2**64


def region_digest(table: RegionTable) -> str:
    """The digest of a table as it was read (vectors normalised once): what :func:`write_region_search`
    records for the same rows streamed from the store, so a part made from either is recognised."""
    return f"{rows_digest(table.skus, table.texts, table.vectors):016x}"


@dataclass(frozen=True)
class RegionSearch:
    """A region's search file: ``rows`` products, ``texts`` distinct texts, the exact ``mean`` (None
    below two rows) and the ``digest`` of the rows it was made from."""

    region: str
    folder: ShardFolder
    rows: int
    texts: int
    dim: int
    digest: str
    mean: np.ndarray | None

    @classmethod
    def open(cls, folder: Any, region: str) -> RegionSearch:
        """The search file of ``region`` in ``folder`` (a path, URL or :class:`.shard_storage.ShardFolder`).

        Raises:
            FileNotFoundError: the plan task did not write it there (or wrote elsewhere).
        """
        folder = ShardFolder.of(folder)
        if not folder.exists(_sidecar(region)):
            raise FileNotFoundError(f"no search file of region {region!r} in {folder} (the plan writes it)")
        meta = json.loads(folder.read_text(_sidecar(region)))
        mean = None if meta["mean"] is None else np.asarray(meta["mean"], dtype=np.float32)
        return cls(
            region,
            folder,
            meta["rows"],
            meta["texts"],
            meta["dim"],
            meta["digest"],
            mean,
        )

    def _centre(self, vectors: np.ndarray, center: bool) -> np.ndarray:
        # as .data.center_region: less the mean, normalised (row-local, so chunks change nothing);
        # in place (``vectors`` is the caller's own copy): the same bits without two more copies
        if not center or self.mean is None:
            return vectors
        vectors -= self.mean[None, :]
        return unit_rows(vectors, inplace=True)

    def chunks(
        self, rows: int = DEFAULT_CHUNK_ROWS, *, center: bool = True
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(text indices, search vectors)`` of each distinct text, ``rows`` at a time (sorted per chunk)."""
        with self.folder.open(search_file(self.region)) as f:
            yield from self._chunks(pq.ParquetFile(f), rows, center)

    def _chunks(
        self, file: pq.ParquetFile, rows: int, center: bool
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in file.iter_batches(batch_size=rows):
            idx = batch.column("text").to_numpy()
            order = np.argsort(idx, kind="stable")  # ascending, so a chunk's ties go to lower texts
            yield idx[order], self._centre(_vectors(batch, self.dim)[order], center)

    def pick(self, texts: np.ndarray, *, center: bool = True) -> np.ndarray:
        """Search vectors of the distinct texts ``texts`` (sorted, unique), in that order: the file read
        a chunk at a time, only the picked rows kept and centred (row-local: the bits of a chunk's).

        Raises:
            ValueError: a text is not in the file (a damaged file)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        found = np.zeros(len(texts), dtype=bool)
        for idx, vec in self.chunks(center=False):
            at, hit = positions(texts, idx)
            out[at[hit]] = vec[hit]
            found[at[hit]] = True
        pa.default_memory_pool().release_unused()  # the row groups' buffers, before the centring
        if not found.all():
            gap = int(texts[np.flatnonzero(~found)[0]])
            raise ValueError(f"{self.folder.url(search_file(self.region))} lacks text {gap} (a damaged file)")
        return self._centre(out, center)

    def range(self, start: int, stop: int, *, center: bool = True) -> np.ndarray:
        """Search vectors of texts ``start:stop`` in canonical order (read in chunks; only the range held)."""
        return self.pick(np.arange(start, stop, dtype=np.int64), center=center)


def _vectors(batch: pa.RecordBatch, dim: int) -> np.ndarray:
    return batch.column("vector").flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


def write_region_search(
    region: str,
    chunks: Iterable[tuple[Sequence[str], Sequence[Any], np.ndarray]],
    folder: Any,
) -> RegionSearch:
    """Write ``region``'s search file from ``chunks`` of ``(skus, texts, vectors)`` in any order (a
    store's pages, or a table's slices, :func:`table_chunks`), holding only SKUs and text hashes whole.
    Vectors are normalised as :class:`.data.RegionTable` does on reading (a no-op on a table's own).

    ``folder``: a path, URL or :class:`.shard_storage.ShardFolder`. Two passes over a local spill of
    the rows (a temporary folder on this machine): the SKUs and text hashes decide each row's distinct
    text (the lowest SKU's row stands for it, as in :func:`.canonical.canonical_table`); then the
    standing rows are written with their text index and summed for the mean.

    Raises:
        ValueError: a SKU twice in the region, or no rows.
    """
    folder = ShardFolder.of(folder)
    spill_dir = tempfile.TemporaryDirectory(prefix=f"polyglot-rows-{region}-")
    spill = Path(spill_dir.name) / "rows.parquet"
    digest, dim = 0, 0
    try:
        with ParquetSink(spill) as sink:
            for skus, texts, vectors in chunks:
                skus = [str(s) for s in skus]
                texts = ["" if t is None else str(t) for t in texts]
                vec = unit_rows(vectors)  # as RegionTable reads them
                if not len(skus):
                    continue
                dim = vec.shape[1]
                digest = add_digest(digest, rows_digest(skus, texts, vec))
                keys = [text_hash(t) for t in texts]
                sink.write(
                    pa.table(
                        {
                            "sku": pa.array(skus, pa.string()),
                            "key": pa.array(keys, pa.binary(16)),
                            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), dim),
                        }
                    )
                )
        if not sink.rows:
            raise ValueError(f"region {region!r} has no rows to search")
        code, counts, standing = distinct_texts(region, pq.read_table(spill, columns=["sku", "key"]))
        total = np.zeros(dim, dtype=np.int64)
        schema = pa.schema([("text", pa.int64()), ("vector", pa.list_(pa.float32(), dim))])
        at = 0
        with folder.writing(search_file(region)) as f, pq.ParquetWriter(f, schema) as w:
            # a chunk of rows at a time: a batch's list column is decoded with ~5x its size in scratch
            spilled = pq.ParquetFile(spill).iter_batches(batch_size=DEFAULT_CHUNK_ROWS, columns=["vector"])
            for batch in spilled:
                rows = np.arange(at, at + batch.num_rows)
                at += batch.num_rows
                keep = standing[rows]
                if not keep.any():
                    continue
                vec = _vectors(batch, dim)[keep]
                texts_here = code[rows[keep]]
                total += fixed_sum(vec, counts[texts_here])
                w.write_table(
                    pa.table(
                        {
                            "text": texts_here,
                            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), dim),
                        },
                        schema=schema,
                    )
                )
        n = len(code)
        mean = fixed_mean(total, n)
        meta = {
            "region": region,
            "rows": n,
            "texts": len(counts),
            "dim": dim,
            "digest": f"{digest:016x}",
            "mean": None if mean is None else [float(x) for x in mean],
        }
        folder.write_text(_sidecar(region), json.dumps(meta))  # last: no sidecar, no search file
    finally:
        spill_dir.cleanup()
    return RegionSearch.open(folder, region)


def distinct_texts(region: str, rows: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per spilled row its distinct-text index (texts numbered by their lowest SKU, ascending, as
    :class:`.canonical.TextSets` numbers them), the rows per text, and which rows stand for a text."""
    order = pc.sort_indices(rows["sku"]).to_numpy()  # UTF-8 byte order = code point order = sorted()
    skus = rows["sku"].take(order)
    same = pc.equal(skus.slice(1), skus.slice(0, len(skus) - 1)) if len(skus) > 1 else None
    if same is not None and pc.any(same).as_py():
        at = int(np.flatnonzero(same.to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"region {region!r}: duplicate sku {skus[at].as_py()!r}")
    keys = np.frombuffer(rows["key"].combine_chunks().buffers()[1], dtype="V16", count=rows.num_rows)[order]
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))  # number texts by first sorted row
    code = np.empty(rows.num_rows, dtype=np.int64)
    code[order] = rank[inverse.ravel()]
    standing = np.zeros(rows.num_rows, dtype=bool)
    standing[order[first]] = True
    return code, np.bincount(code, minlength=len(first)), standing


def table_chunks(
    table: RegionTable, rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
    """``table``'s rows in slices for :func:`write_region_search`."""
    for s in range(0, len(table), rows):
        yield table.skus[s : s + rows], table.texts[s : s + rows], table.vectors[s : s + rows]
