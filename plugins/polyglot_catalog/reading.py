"""Streaming, validated reads of catalog Parquet files.

Memory is bounded by the batch size, not the catalog: files are scanned with :mod:`pyarrow.dataset`
one record batch at a time, with only the needed columns. A first, cheap pass over the key columns
(``sku``, ``region``, ``description``) finds duplicate (region, sku) keys across the whole run, so the
rule "keep the last occurrence" holds before anything is written, and gives the total row count for
progress/ETA. Bad rows never stop a run: they go to a quarantine list with file, row and reason.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("sku", "region", "description")
OPTIONAL_COLUMNS = ("language", "title", "brand", "gtin")
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
MAX_QUARANTINE_KEPT = 10_000  # rows kept with details; counts by reason are always complete
_GLOB_CHARS = set("*?[")
_POS_BITS = 40  # a key position is file_index << 40 | row: 1e12 rows per file, 8e6 files per run

SourceLike = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


class MissingColumnError(ValueError):
    """A source file lacks a required column; the message names the file and what is there."""


@dataclass(frozen=True)
class QuarantinedRow:
    """One rejected input row and why, with enough location to find it in the file."""

    source: str
    row: int
    reason: str
    region: str | None = None
    sku: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SourceBatch:
    """Valid rows of one record batch plus where they came from.

    ``batch`` has ``sku`` and ``region`` as trimmed strings; ``rows`` holds each kept row's 0-based
    row number in ``source``; ``start``/``rows_read`` describe the slice of the file that was read,
    invalid rows included.
    """

    source: str
    batch: pa.RecordBatch
    rows: np.ndarray
    start: int
    rows_read: int
    quarantined: list[QuarantinedRow] = field(default_factory=list)


def _split_url(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(path)


def _display(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Local files as plain absolute paths, remote ones as URLs that can be opened again."""
    return os.path.abspath(path) if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _expand(item: str) -> list[str]:
    fs, path = _split_url(item)
    if _GLOB_CHARS & set(path):
        found = sorted(p for p in fs.glob(path) if fs.isfile(p))
    elif fs.isdir(path):
        found = sorted(p for p in fs.find(path) if p.lower().endswith(PARQUET_SUFFIXES))
    elif fs.exists(path):
        found = [path]
    else:
        raise FileNotFoundError(f"catalog source {item!r} does not exist")
    if not found:
        raise FileNotFoundError(f"catalog source {item!r} matched no Parquet files")
    return [_display(fs, p) for p in found]


def list_sources(source: SourceLike) -> list[str]:
    """Resolve a path, directory, glob, URL, or a list of those to a sorted, de-duplicated file list.

    Raises:
        FileNotFoundError: when an entry does not exist or matches no Parquet file.
    """
    items = [source] if isinstance(source, str | os.PathLike) else list(source)
    if not items:
        raise ValueError("no catalog source given")
    seen: dict[str, None] = {}
    for item in items:
        for path in _expand(os.fspath(item)):
            seen.setdefault(path, None)
    return list(seen)


def open_dataset(source: str) -> ds.Dataset:
    """A pyarrow dataset over one file, checked for the required columns."""
    fs, path = _split_url(source)
    dataset = ds.dataset(path, format="parquet", filesystem=None if isinstance(fs, LocalFileSystem) else fs)
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.schema.names]
    if missing:
        raise MissingColumnError(
            f"{source}: missing required column(s) {missing}; columns present: {dataset.schema.names}"
        )
    return dataset


def _key(values: pa.Array, source: str, name: str) -> pa.Array:
    try:
        values = pc.cast(values, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise TypeError(f"{source}: column {name!r} must be a string, got {values.type}") from e
    return pc.utf8_trim_whitespace(values)


# A character that survives clean_text: not whitespace/separator, control or format. Testing for one
# directly gives the same answer as cleaning and measuring, without four full copies of the column.
_VISIBLE = r"[^\s\p{Z}\p{Cc}\p{Cf}]"
KEY_PASS_BATCH_ROWS = 65_536


def _has_text(values: pa.Array) -> pa.Array:
    """True where :func:`polyglot_catalog.text.clean_text` would leave a non-empty string."""
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        values = pc.cast(values, pa.string())
    return pc.fill_null(pc.match_substring_regex(values, _VISIBLE), False)


def _non_empty(values: pa.Array) -> pa.Array:
    return pc.fill_null(pc.greater(pc.utf8_length(values), 0), False)


def _validate(batch: pa.RecordBatch, source: str) -> tuple[pa.Array, pa.Array, list[str | None]]:
    """Trimmed sku/region and the rejection reason per row (None = valid)."""
    sku = _key(batch.column("sku"), source, "sku")
    region = _key(batch.column("region"), source, "region")
    checks = (
        ("empty sku", _non_empty(sku)),
        ("empty region", _non_empty(region)),
        ("empty description", _has_text(batch.column("description"))),
    )
    reasons: list[str | None] = [None] * batch.num_rows
    for reason, ok in reversed(checks):  # first failing check wins
        for i in np.flatnonzero(~ok.to_numpy(zero_copy_only=False)):
            reasons[i] = reason
    return sku, region, reasons


class CatalogReader:
    """Iterate a catalog as validated :class:`SourceBatch` objects.

    Args:
        source (SourceLike): path, directory, glob, URL, or a list of those.
        batch_size (int): rows per record batch (an upper bound). Defaults to 1024.
        columns (Sequence[str] | None): extra columns to carry besides the required ones and
            ``language``; missing ones are ignored. Defaults to None (every column).
        dedupe (bool): drop all but the last occurrence of a (region, sku) in the run, which needs a
            key-only first pass. Defaults to True.

    Examples:
        ```py
        reader = CatalogReader("s3://bucket/catalog/*.parquet", batch_size=512, columns=["title"])
        for part in reader:
            handle(part.batch)
        reader.quarantine  # rejected rows with file, row and reason
        ```
    """

    def __init__(
        self,
        source: SourceLike,
        batch_size: int = 1024,
        columns: Sequence[str] | None = None,
        *,
        dedupe: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.sources = list_sources(source)
        self.batch_size = batch_size
        self.columns = None if columns is None else list(columns)
        self.dedupe = dedupe
        self.quarantine: list[QuarantinedRow] = []
        self.invalid_by_reason: Counter[str] = Counter()
        self._total_rows: int | None = None
        self._keys: pa.Table | None = None
        self._superseded: dict[int, dict[int, int]] = {}

    @property
    def total_rows(self) -> int:
        """Rows in all sources (from Parquet metadata, or the key pass when deduplicating)."""
        if self._total_rows is None:
            if self.dedupe:
                self._scan_keys()
            else:
                self._total_rows = sum(open_dataset(s).count_rows() for s in self.sources)
        return self._total_rows

    @property
    def keys(self) -> pa.Table:
        """Distinct (region, sku) of the rows this run keeps (needs ``dedupe=True``)."""
        if not self.dedupe:
            raise RuntimeError("keys are only collected with dedupe=True")
        if self._keys is None:
            self._scan_keys()
        return self._keys

    @property
    def duplicates_across_files(self) -> int:
        """Rows superseded by an occurrence of their key in another file (needs ``dedupe=True``).

        One run keeps the last occurrence; shards of one file each would both write theirs.
        """
        if self._keys is None:
            self._scan_keys()
        return sum(
            1
            for index, rows in self._superseded.items()
            for winner in rows.values()
            if winner >> _POS_BITS != index
        )

    @property
    def invalid(self) -> int:
        return sum(self.invalid_by_reason.values())

    def _scan_keys(self) -> None:
        """Key-only pass: total rows and, per duplicated key, which occurrence survives."""
        parts, total = [], 0
        for index, source in enumerate(self.sources):
            dataset, offset = open_dataset(source), 0
            for batch in dataset.to_batches(columns=list(REQUIRED_COLUMNS), batch_size=KEY_PASS_BATCH_ROWS):
                sku, region, reasons = _validate(batch, source)
                valid = pa.array([r is None for r in reasons])
                pos = pa.array(np.arange(offset, offset + batch.num_rows) + (index << _POS_BITS))
                parts.append(pa.table({"region": region, "sku": sku, "pos": pos}).filter(valid))
                offset += batch.num_rows
            total += offset
        keys = pa.concat_tables(parts) if parts else pa.table({"region": [], "sku": [], "pos": []})
        grouped = keys.group_by(["region", "sku"]).aggregate([("pos", "max"), ("pos", "count")])
        dupes = grouped.filter(pc.greater(grouped["pos_count"], 1))
        if dupes.num_rows:
            losers = keys.join(dupes, keys=["region", "sku"]).filter(
                pc.not_equal(pc.field("pos"), pc.field("pos_max"))
            )
            for pos, winner in zip(losers["pos"].to_pylist(), losers["pos_max"].to_pylist(), strict=True):
                self._superseded.setdefault(pos >> _POS_BITS, {})[pos & ((1 << _POS_BITS) - 1)] = winner
        self._total_rows = total
        self._keys = grouped.select(["region", "sku"])

    def _where(self, pos: int) -> str:
        return f"{self.sources[pos >> _POS_BITS]} row {pos & ((1 << _POS_BITS) - 1)}"

    def _reject(self, row: QuarantinedRow) -> None:
        self.invalid_by_reason[row.reason.split(";")[0]] += 1
        if len(self.quarantine) < MAX_QUARANTINE_KEPT:
            self.quarantine.append(row)

    def _projection(self, dataset: ds.Dataset) -> list[str] | None:
        if self.columns is None:
            return None
        names = dataset.schema.names
        wanted = [*REQUIRED_COLUMNS, "language", *self.columns]
        return [c for c in dict.fromkeys(wanted) if c in names]

    def __iter__(self) -> Iterator[SourceBatch]:
        if self.dedupe and self._keys is None:
            self._scan_keys()
        for index, source in enumerate(self.sources):
            yield from self._iter_file(index, source)

    def _iter_file(self, index: int, source: str) -> Iterator[SourceBatch]:
        dataset = open_dataset(source)
        superseded = self._superseded.get(index, {})
        offset = 0
        for batch in dataset.to_batches(columns=self._projection(dataset), batch_size=self.batch_size):
            sku, region, reasons = _validate(batch, source)
            for row in superseded.keys() & range(offset, offset + batch.num_rows):
                reason = f"duplicate (region, sku); kept {self._where(superseded[row])}"
                reasons[row - offset] = reasons[row - offset] or reason
            batch = batch.set_column(batch.schema.get_field_index("sku"), "sku", sku)
            batch = batch.set_column(batch.schema.get_field_index("region"), "region", region)
            rejected = []
            for i in (i for i, r in enumerate(reasons) if r is not None):
                rejected.append(
                    QuarantinedRow(source, offset + i, reasons[i], region[i].as_py(), sku[i].as_py())
                )
                self._reject(rejected[-1])
            keep = np.array([r is None for r in reasons], dtype=bool)
            yield SourceBatch(
                source=source,
                batch=batch.filter(pa.array(keep)),
                rows=np.flatnonzero(keep) + offset,
                start=offset,
                rows_read=batch.num_rows,
                quarantined=rejected,
            )
            offset += batch.num_rows


def iter_batches(
    sources: SourceLike, batch_size: int = 1024, columns: Sequence[str] | None = None
) -> Iterator[SourceBatch]:
    """Validated batches over ``sources``; see :class:`CatalogReader` for the quarantine list."""
    yield from CatalogReader(sources, batch_size, columns)
