"""Streaming, validated reads of catalog Parquet files.

Memory is bounded by the batch size, not the catalog: files are scanned with :mod:`pyarrow.dataset`
one record batch at a time, with only the needed columns. A first, cheap pass over the key columns
(``sku``, ``region``, ``description``) finds duplicate (region, sku) keys across the whole run, so the
rule "keep the last occurrence" holds before anything is written, and gives the total row count for
progress/ETA. Bad rows never stop a run: they go to a quarantine list with file, row and reason.

Bad *files* (not Parquet, truncated, corrupt pages, a required column missing or of the wrong type,
deleted after listing) either raise :class:`BadFileError` naming the file (``bad_files="raise"``) or
are set aside in :attr:`CatalogReader.bad_files` while every other file is read (``"skip"``); the
embed stage then fails at its end naming them. Rows the key pass saw from a file that later turned
out bad are dropped with it, so a file is either read whole or not at all as far as keys go.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("sku", "region", "description")
OPTIONAL_COLUMNS = ("language", "title", "brand", "gtin")
#: Ground truth for evaluation, never a catalog: skipped wherever a source is listed (CLI and DAG).
LABELS_FILE_NAME = "labels.parquet"
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
MAX_QUARANTINE_KEPT = 10_000  # rows kept with details; counts by reason are always complete
_GLOB_CHARS = set("*?[")
_POS_BITS = 40  # a key position is file_index << 40 | row: 1e12 rows per file, 8e6 files per run

SourceLike = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


BAD_FILE_OPTIONS = ("raise", "skip")
QUARANTINE_TEXT_CHARS = 1_000  # raw description kept per quarantined row: enough to recognise it
# Key columns may be integers (cast to their decimal string); floats would turn 1e20 into "1e+20".
_KEY_TYPES_MSG = "a string or integer type"
_CONTROL_IN_KEY = r"\p{Cc}"  # NUL, newline, unit separator...: would make two keys share a point id


class BadFileError(ValueError):
    """A whole source file cannot be used; the message starts with the file's path."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class MissingColumnError(BadFileError):
    """A source file lacks a required column; the message names the file and what is there."""


@dataclass(frozen=True)
class QuarantinedRow:
    """One rejected input row and why, with enough location to find it in the file."""

    source: str
    row: int | None  # None: the whole file was rejected
    reason: str
    region: str | None = None
    sku: str | None = None
    description: str | None = None  # raw, cut to QUARANTINE_TEXT_CHARS

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


def catalog_files(source: SourceLike) -> list[str]:
    """:func:`list_sources` without ``labels.parquet`` files (ground truth that often sits beside
    the catalog): the one rule the CLI, the operators and the embed DAG share.

    Raises:
        FileNotFoundError: an entry does not exist or matches no Parquet file.
        ValueError: every file listed is a labels file.
    """
    files = list_sources(source)
    kept = [path for path in files if os.path.basename(path) != LABELS_FILE_NAME]
    if not kept:
        raise ValueError(f"source {source!r} holds only {LABELS_FILE_NAME}; nothing to embed")
    if len(kept) < len(files):
        log.info(
            "not embedding %d %s file(s) (ground truth, not a catalog)",
            len(files) - len(kept),
            LABELS_FILE_NAME,
        )
    return kept


ColumnMapLike = str | Mapping[str, str] | None


def parse_column_map(value: ColumnMapLike) -> dict[str, str]:
    """A column mapping as ``{catalog column: column in the files}``.

    Accepts ``"description=product_text,sku=item_id"`` (CLI, a templated operator field, a trigger
    form) or a mapping; empty means no mapping. A file's own column of a mapped name is ignored.

    Raises:
        ValueError: a malformed item, an empty name, a catalog column given twice, or one file column
            mapped to two catalog columns.
    """
    if value is None or (isinstance(value, str) and value.strip() in ("", "None", "null", "{}")):
        return {}
    if isinstance(value, str):
        pairs = []
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            target, sep, column = item.partition("=")
            if not sep:
                raise ValueError(f"column mapping item {item!r} must look like catalog_column=file_column")
            pairs.append((target.strip(), column.strip()))
    elif isinstance(value, Mapping):
        pairs = [(str(k).strip(), str(v).strip()) for k, v in value.items()]
    else:
        raise ValueError(f"column mapping must be 'a=b,c=d' or a mapping; got {type(value).__name__}")
    mapping: dict[str, str] = {}
    for target, column in pairs:
        if not target or not column:
            raise ValueError(f"column mapping {target}={column} needs a name on both sides")
        if target in mapping:
            raise ValueError(f"column mapping names catalog column {target!r} twice")
        mapping[target] = column
    sources = [c for c in mapping.values()]
    doubled = sorted({c for c in sources if sources.count(c) > 1})
    if doubled:
        raise ValueError(f"column mapping uses file column(s) {doubled} for two catalog columns")
    return {t: c for t, c in mapping.items() if t != c}


def _visible_columns(names: Sequence[str], mapping: Mapping[str, str]) -> list[tuple[str, str]]:
    """(catalog name, file name) of each usable column of a file under ``mapping``."""
    renamed = {column: target for target, column in mapping.items()}
    shadowed = set(mapping) - set(renamed)  # a file's own column of a mapped name: not read
    return [(renamed.get(name, name), name) for name in names if name not in shadowed]


def _readable_error(source: str, error: Exception) -> BadFileError:
    """One wording per way a file can be unusable, so the quarantine reasons group well."""
    if isinstance(error, BadFileError):
        return error
    if isinstance(error, FileNotFoundError):
        return BadFileError(source, "file not found (deleted or moved after it was listed)")
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return BadFileError(source, f"unreadable Parquet file ({type(error).__name__}: {first})")


def _read_batches(dataset: ds.Dataset, source: str, **kwargs: Any) -> Iterator[pa.RecordBatch]:
    """A file's record batches; a failure *reading* them becomes :class:`BadFileError` naming the file.

    Why only around the read: an Arrow error in our own validation code is a bug and must surface as
    one, not be filed as "corrupt file".
    """
    batches = iter(dataset.to_batches(**kwargs))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as e:
            raise _readable_error(source, e) from e
        yield batch


def _string_like(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_null(dtype)


def _binary(dtype: pa.DataType) -> bool:
    return pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype)


def check_schema(source: str, schema: pa.Schema) -> None:
    """Required columns present and usable; raises :class:`BadFileError` naming the file.

    Why a whole-file error and not per-row quarantine: a missing column or an integer description
    is a broken export (every row is affected), and the fix is upstream.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise MissingColumnError(
            source, f"missing required column(s) {missing}; columns present: {schema.names}"
        )
    for name in ("sku", "region"):
        dtype = schema.field(name).type
        base = dtype.value_type if pa.types.is_dictionary(dtype) else dtype
        if not (_string_like(dtype) or _binary(base) or pa.types.is_integer(base)):
            raise BadFileError(source, f"column {name!r} must be {_KEY_TYPES_MSG}; got {dtype}")
    dtype = schema.field("description").type
    base = dtype.value_type if pa.types.is_dictionary(dtype) else dtype
    if not (_string_like(dtype) or _binary(base)):
        raise BadFileError(
            source, f"column 'description' must be a string (or UTF-8 binary) type; got {dtype}"
        )


def open_dataset(source: str, column_map: Mapping[str, str] | None = None) -> ds.Dataset:
    """A pyarrow dataset over one file, checked for the required columns (after ``column_map``) and
    their types.

    Raises:
        BadFileError: missing or unusable column, not Parquet, truncated, or the file is gone.
    """
    fs, path = _split_url(source)
    try:
        dataset = ds.dataset(
            path, format="parquet", filesystem=None if isinstance(fs, LocalFileSystem) else fs
        )
    except (OSError, pa.ArrowException) as e:
        raise _readable_error(source, e) from e
    mapping = column_map or {}
    names = dataset.schema.names
    for target, column in mapping.items():
        if target in REQUIRED_COLUMNS and column not in names:
            raise MissingColumnError(
                source, f"missing column {column!r} (mapped to {target!r}); columns present: {names}"
            )
    visible = _visible_columns(names, mapping)
    check_schema(source, pa.schema([dataset.schema.field(c).with_name(t) for t, c in visible]))
    return dataset


def _decode_utf8(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Binary -> string, invalid UTF-8 -> null; returns (strings, mask of rows that were invalid).

    Per row in Python, which is fine: binary key/description columns are rare and this is the only
    way to keep the valid rows of a column with some bad bytes (a cast fails the whole array).
    """
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    out: list[str | None] = []
    bad = np.zeros(len(values), dtype=bool)
    for i, raw in enumerate(values.to_pylist()):
        if raw is None:
            out.append(None)
            continue
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(None)
            bad[i] = True
    return pa.array(out, pa.string()), bad


def _decode_batch(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, dict[str, np.ndarray]]:
    """Required binary columns decoded as UTF-8, plus per column the rows whose bytes were invalid."""
    invalid: dict[str, np.ndarray] = {}
    for name in REQUIRED_COLUMNS:
        dtype = batch.schema.field(name).type
        base = dtype.value_type if pa.types.is_dictionary(dtype) else dtype
        if _binary(base):
            decoded, bad = _decode_utf8(batch.column(name))
            batch = batch.set_column(batch.schema.get_field_index(name), name, decoded)
            if bad.any():
                invalid[name] = bad
    return batch, invalid


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


def _no_control(values: pa.Array) -> pa.Array:
    return pc.invert(pc.fill_null(pc.match_substring_regex(values, _CONTROL_IN_KEY), False))


def _validate(
    batch: pa.RecordBatch, source: str, allowed_regions: frozenset[str] | None = None
) -> tuple[pa.RecordBatch, pa.Array, pa.Array, list[str | None]]:
    """Decoded batch, trimmed sku/region and the rejection reason per row (None = valid)."""
    batch, bad_utf8 = _decode_batch(batch)
    sku = _key(batch.column("sku"), source, "sku")
    region = _key(batch.column("region"), source, "region")
    n = batch.num_rows
    checks: list[tuple[str, Any]] = [
        (f"invalid UTF-8 in {name}", pa.array(~bad_utf8.get(name, np.zeros(n, dtype=bool))))
        for name in REQUIRED_COLUMNS
    ]
    checks += [
        ("empty sku", _non_empty(sku)),
        ("control character in sku", _no_control(sku)),
        ("empty region", _non_empty(region)),
        ("control character in region", _no_control(region)),
    ]
    if allowed_regions is not None:
        known = pc.fill_null(
            pc.is_in(region, value_set=pa.array(sorted(allowed_regions), pa.string())), False
        )
        checks.append(("unknown region", known))
    checks.append(("empty description", _has_text(batch.column("description"))))
    reasons: list[str | None] = [None] * n
    for reason, ok in reversed(checks):  # first failing check wins
        for i in np.flatnonzero(~ok.to_numpy(zero_copy_only=False)):
            reasons[i] = reason
    return batch, sku, region, reasons


class CatalogReader:
    """Iterate a catalog as validated :class:`SourceBatch` objects.

    Args:
        source (SourceLike): path, directory, glob, URL, or a list of those.
        batch_size (int): rows per record batch (an upper bound). Defaults to 1024.
        columns (Sequence[str] | None): extra columns to carry besides the required ones and
            ``language``; missing ones are ignored. Defaults to None (every column).
        dedupe (bool): drop all but the last occurrence of a (region, sku) in the run, which needs a
            key-only first pass. Defaults to True.
        allowed_regions (Iterable[str] | None): quarantine rows whose region is not one of these
            (exact, case-sensitive match after trimming) as "unknown region". Defaults to None (any).
        bad_files (str): a file that cannot be used: "raise" :class:`BadFileError` at once, or "skip"
            it, record it in :attr:`bad_files` and read the others. Defaults to "raise".
        column_map (str | Mapping | None): catalog column -> column in the files, e.g.
            ``{"description": "product_text"}`` or ``"description=product_text,sku=item_id"``; see
            :func:`parse_column_map`. Batches carry the catalog names. Defaults to None.

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
        allowed_regions: Iterable[str] | None = None,
        bad_files: Literal["raise", "skip"] = "raise",
        column_map: ColumnMapLike = None,
    ) -> None:
        self.column_map = parse_column_map(column_map)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if bad_files not in BAD_FILE_OPTIONS:
            raise ValueError(f"bad_files must be one of {list(BAD_FILE_OPTIONS)}; got {bad_files!r}")
        self.sources = catalog_files(source)
        self.allowed_regions = None if allowed_regions is None else frozenset(allowed_regions)
        self.on_bad_file = bad_files
        self.bad_files: dict[str, str] = {}  # source -> reason, in the order they were found
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
                self._total_rows = sum(self._count_rows(s) for s in self.sources)
        return self._total_rows

    def _count_rows(self, source: str) -> int:
        try:
            return open_dataset(source, self.column_map).count_rows()
        except BadFileError as e:
            self._bad(source, e)
            return 0

    @property
    def readable_sources(self) -> list[str]:
        """Sources not (yet) found bad."""
        return [s for s in self.sources if s not in self.bad_files]

    def _bad(self, source: str, error: Exception) -> None:
        """Raise, or set the file aside with its reason, per ``bad_files``."""
        bad = _readable_error(source, error)
        if self.on_bad_file == "raise":
            raise bad
        if source not in self.bad_files:
            self.bad_files[source] = bad.reason
            self.quarantine.append(QuarantinedRow(source, None, f"bad file: {bad.reason}"))
            log.warning("skipping %s", bad)

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
            try:
                file_parts, rows = self._scan_file_keys(index, source)
            except BadFileError as e:
                self._bad(source, e)  # none of its keys count: a file is in the run whole or not at all
                continue
            parts.extend(file_parts)
            total += rows
        empty = pa.table(
            {
                "region": pa.array([], pa.string()),
                "sku": pa.array([], pa.string()),
                "pos": pa.array([], pa.int64()),
            }
        )
        keys = pa.concat_tables(parts) if parts else empty
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

    def _scan_file_keys(self, index: int, source: str) -> tuple[list[pa.Table], int]:
        dataset, offset, parts = open_dataset(source, self.column_map), 0, []
        for batch in self._batches(dataset, source, list(REQUIRED_COLUMNS), KEY_PASS_BATCH_ROWS):
            _, sku, region, reasons = _validate(batch, source, self.allowed_regions)
            valid = pa.array([r is None for r in reasons], pa.bool_())
            pos = pa.array(np.arange(offset, offset + batch.num_rows) + (index << _POS_BITS))
            parts.append(pa.table({"region": region, "sku": sku, "pos": pos}).filter(valid))
            offset += batch.num_rows
        return parts, offset

    def _where(self, pos: int) -> str:
        return f"{self.sources[pos >> _POS_BITS]} row {pos & ((1 << _POS_BITS) - 1)}"

    def _reject(self, row: QuarantinedRow) -> None:
        self.invalid_by_reason[row.reason.split(";")[0]] += 1
        if len(self.quarantine) < MAX_QUARANTINE_KEPT:
            self.quarantine.append(row)

    def _projection(self, dataset: ds.Dataset) -> list[str] | None:
        """Catalog names of the columns to read (None: all of them)."""
        if self.columns is None:
            return None
        names = {t for t, _ in _visible_columns(dataset.schema.names, self.column_map)}
        wanted = [*REQUIRED_COLUMNS, "language", *self.columns]
        return [c for c in dict.fromkeys(wanted) if c in names]

    def _batches(
        self, dataset: ds.Dataset, source: str, wanted: list[str] | None, batch_size: int
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of the ``wanted`` catalog columns (None: all), under their catalog names."""
        if not self.column_map:
            yield from _read_batches(dataset, source, columns=wanted, batch_size=batch_size)
            return
        visible = dict(_visible_columns(dataset.schema.names, self.column_map))
        targets = list(visible) if wanted is None else [t for t in wanted if t in visible]
        for batch in _read_batches(
            dataset, source, columns=[visible[t] for t in targets], batch_size=batch_size
        ):
            yield batch.rename_columns(targets)

    def __iter__(self) -> Iterator[SourceBatch]:
        if self.dedupe and self._keys is None:
            self._scan_keys()
        for index, source in enumerate(self.sources):
            if source in self.bad_files:
                continue
            try:
                yield from self._iter_file(index, source)
            except BadFileError as e:  # only read errors land here: a consumer's errors stay outside
                self._bad(source, e)

    def _iter_file(self, index: int, source: str) -> Iterator[SourceBatch]:
        dataset = open_dataset(source, self.column_map)
        superseded = self._superseded.get(index, {})
        offset = 0
        for raw in self._batches(dataset, source, self._projection(dataset), self.batch_size):
            batch, sku, region, reasons = _validate(raw, source, self.allowed_regions)
            for row in superseded.keys() & range(offset, offset + batch.num_rows):
                reason = f"duplicate (region, sku); kept {self._where(superseded[row])}"
                reasons[row - offset] = reasons[row - offset] or reason
            batch = batch.set_column(batch.schema.get_field_index("sku"), "sku", sku)
            batch = batch.set_column(batch.schema.get_field_index("region"), "region", region)
            rejected = []
            descriptions = raw.column("description")  # as read: bad bytes stay visible
            for i in (i for i, r in enumerate(reasons) if r is not None):
                rejected.append(
                    QuarantinedRow(
                        source,
                        offset + i,
                        reasons[i],
                        region[i].as_py(),
                        sku[i].as_py(),
                        _raw_text(descriptions[i].as_py()),
                    )
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


def _raw_text(value: Any) -> str | None:
    """A rejected row's description as it came in (cut short), so a person can recognise the row."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value[: QUARANTINE_TEXT_CHARS * 4].decode("utf-8", errors="backslashreplace")[
            :QUARANTINE_TEXT_CHARS
        ]
    return str(value)[:QUARANTINE_TEXT_CHARS]


def iter_batches(
    sources: SourceLike, batch_size: int = 1024, columns: Sequence[str] | None = None
) -> Iterator[SourceBatch]:
    """Validated batches over ``sources``; see :class:`CatalogReader` for the quarantine list."""
    yield from CatalogReader(sources, batch_size, columns)
