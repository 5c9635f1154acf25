"""Plain in-memory matcher input: one table per region, so matching never depends on a live store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

#: Optional payload fields the evidence layer knows how to use.
OPTIONAL_FIELDS = ("title", "brand", "gtin", "language")


@dataclass
class RegionTable:
    """One region's products: parallel ``skus``/``texts`` lists and an ``(n, d)`` float32 matrix.

    ``fields`` holds optional parallel columns (``title``, ``brand``, ``gtin``, ...; ``None`` where
    missing). Vectors are L2-normalised on construction so dot products are cosines. ``point_ids``
    are the rows' Qdrant point ids when they were read from a store: a search can then map its
    hits back to rows by id and skip fetching payloads.
    """

    region: str
    skus: list[str]
    texts: list[str]
    vectors: np.ndarray
    fields: dict[str, list[Any]] = field(default_factory=dict)
    point_ids: list[str] | None = None

    def __post_init__(self) -> None:
        self.skus = [str(s) for s in self.skus]
        self.texts = ["" if t is None else str(t) for t in self.texts]
        n = len(self.skus)
        if len(self.texts) != n or len(self.vectors) != n:
            raise ValueError(
                f"region {self.region!r}: skus ({n}), texts ({len(self.texts)}) and vectors "
                f"({len(self.vectors)}) must have the same length"
            )
        if len(set(self.skus)) != n:
            raise ValueError(f"region {self.region!r}: duplicate skus")
        for name, col in self.fields.items():
            if len(col) != n:
                raise ValueError(
                    f"region {self.region!r}: field {name!r} has {len(col)} values, expected {n}"
                )
        if self.point_ids is not None and len(self.point_ids) != n:
            raise ValueError(f"region {self.region!r}: {len(self.point_ids)} point ids, expected {n}")
        vec = np.asarray(self.vectors, dtype=np.float32)
        if vec.ndim != 2:
            raise ValueError(f"region {self.region!r}: vectors must be 2-D, got shape {vec.shape}")
        self.vectors = unit_rows(vec)

    def __len__(self) -> int:
        return len(self.skus)

    def without_vectors(self) -> RegionTable:
        """This table with a zero-width vector matrix: what a match keeps once its pair features are
        computed (SKUs, texts, fields), so the region's largest array is freed before scoring."""
        return replace(self, vectors=np.zeros((len(self), 0), dtype=np.float32))

    def get(self, name: str, i: int) -> Any:
        """Optional field value of row ``i`` (``None`` when the column or value is absent)."""
        col = self.fields.get(name)
        return None if col is None else col[i]


CatalogData = dict[str, RegionTable]

#: Fixed-point scale of :func:`fixed_sum` (2^36: a unit vector's values sum exactly for up to 2^27
#: rows in int64; what is rounded away, below 1.5e-11, is far under float32's own resolution).
FIXED_SCALE = 2.0**36
MAX_FIXED_ROWS = 2**27
#: A row this close to unit length counts as normalised (float32 rounding leaves ~1e-7).
UNIT_TOLERANCE = 1e-6
#: Rows normalised per step: their float64 copy and its squares (2 x 25 MB at 384-d) are the
#: transient; the result is row-local, so the same bits for any chunk (65,536 rows were 2 x 200 MB,
#: a feature task's peak).
UNIT_CHUNK = 8_192


def product_offsets(data: CatalogData) -> dict[str, int]:
    """Global product number of each region's first row (regions in ``data`` order): a product's
    number is its region's offset plus its row."""
    return dict(zip(data, np.cumsum([0, *[len(t) for t in data.values()][:-1]]).tolist(), strict=True))


def unit_rows(vectors: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """Each row of a float32 matrix at unit length, row by row (float64 length and division).

    Idempotent to the bit: a row already within ``UNIT_TOLERANCE`` of unit length is kept as it is,
    and a divided row always lands within it, so a table built from another table's vectors, a
    canonical copy or a search task streaming the region in chunks all hold the same bits, however
    often their rows passed through here (a plain ``x / |x|`` can move the last bit each time).
    ``inplace``: a float32 ``vectors`` is normalised where it is (and returned)."""
    vec = np.asarray(vectors, dtype=np.float32)
    # in place: each chunk is read (as float64) before its rows are written
    out = vec if inplace and vec is vectors else vec.copy()
    for s in range(0, len(vec), UNIT_CHUNK):
        part = vec[s : s + UNIT_CHUNK].astype(np.float64)
        norms = np.sqrt((part * part).sum(axis=1))
        move = np.abs(norms - 1.0) > UNIT_TOLERANCE
        if move.all():  # e.g. centred rows: divide in place, no masked copies
            part /= np.maximum(norms, 1e-12)[:, None]
            out[s : s + UNIT_CHUNK] = part
        elif move.any():
            out[s : s + UNIT_CHUNK][move] = part[move] / np.maximum(norms[move], 1e-12)[:, None]
    return out


def fixed_sum(vectors: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The (weighted) column sums of ``vectors`` in int64 fixed point: exact integer sums, so the
    total of a region is the same whatever order or chunks its rows are added in."""
    vec = np.asarray(vectors)
    total = np.zeros(vec.shape[1], dtype=np.int64)
    for s in range(0, len(vec), UNIT_CHUNK):  # in row chunks: no float64 copy of a whole region
        fixed = np.rint(vec[s : s + UNIT_CHUNK].astype(np.float64) * FIXED_SCALE).astype(np.int64)
        if weights is not None:
            fixed *= np.asarray(weights[s : s + UNIT_CHUNK], dtype=np.int64)[:, None]
        total += fixed.sum(axis=0, dtype=np.int64)
    return total


def fixed_mean(total: np.ndarray, rows: int) -> np.ndarray | None:
    """The float32 mean from a :func:`fixed_sum` over ``rows`` rows (None below two: nothing to centre)."""
    if rows < 2:
        return None
    if rows > MAX_FIXED_ROWS:
        raise ValueError(f"{rows} rows in one region: the exact mean holds at most {MAX_FIXED_ROWS}")
    return (total.astype(np.float64) / FIXED_SCALE / rows).astype(np.float32)


def catalog_from_records(
    records: Sequence[Mapping[str, Any]], vectors: np.ndarray, *, regions: Sequence[str] | None = None
) -> CatalogData:
    """Split flat records (``sku``, ``region``, ``text`` + optional fields) and a vector matrix by region."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(records) != len(vectors):
        raise ValueError(f"{len(records)} records but {len(vectors)} vectors")
    by_region: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        by_region.setdefault(str(rec["region"]), []).append(i)
    wanted = sorted(by_region) if regions is None else list(regions)
    missing = [r for r in wanted if r not in by_region]
    if missing:
        raise ValueError(f"regions {missing} not in the data; available: {sorted(by_region)}")
    out: CatalogData = {}
    for region in wanted:
        rows = by_region[region]
        fields = {
            name: [records[i].get(name) for i in rows]
            for name in OPTIONAL_FIELDS
            if any(records[i].get(name) is not None for i in rows)
        }
        out[region] = RegionTable(
            region=region,
            skus=[records[i]["sku"] for i in rows],
            texts=[records[i].get("text") or "" for i in rows],
            vectors=vectors[rows],
            fields=fields,
        )
    return out


def region_mean(table: RegionTable) -> np.ndarray | None:
    """The region's mean vector (None for fewer than two products: nothing to centre), exact to
    2^-36 whatever the row order (:func:`fixed_sum`), as a search task streaming the region sums it."""
    if len(table) < 2:
        return None
    return fixed_mean(fixed_sum(table.vectors), len(table))


def center_region(table: RegionTable, mean: np.ndarray | None = None) -> RegionTable:
    """A copy of ``table`` with its mean vector (or ``mean``: an incremental run's frozen one)
    subtracted, re-normalised on construction."""
    mean = region_mean(table) if mean is None else mean
    vec = table.vectors - mean[None, :] if mean is not None else table.vectors
    return replace(table, vectors=vec)  # every other column carried over as it is


def centred_tables(
    canonical: CatalogData, center: bool = True, *, consume: bool = False
) -> tuple[CatalogData, dict[str, np.ndarray | None]]:
    """The tables every search and score compares: each region less its mean vector (``center``),
    and the means. One function for the full run, an incremental run and a search shard, so the
    vectors they compare are the same to the last bit. ``consume``: take each table out of
    ``canonical`` (a dict the caller owns) once it is centred, so only one region's extra copy
    exists at a time."""
    if not center:
        return dict(canonical), {}
    means: dict[str, np.ndarray | None] = {}
    out: CatalogData = {}
    for r in list(canonical):  # region by region: with ``consume``, one region's extra copy at a time
        table = canonical.pop(r) if consume else canonical[r]
        means[r] = region_mean(table)
        out[r] = center_region(table, means[r])
        del table
    return out, means
