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
        norms = np.linalg.norm(vec, axis=1, keepdims=True)
        self.vectors = vec / np.maximum(norms, 1e-12)

    def __len__(self) -> int:
        return len(self.skus)

    def get(self, name: str, i: int) -> Any:
        """Optional field value of row ``i`` (``None`` when the column or value is absent)."""
        col = self.fields.get(name)
        return None if col is None else col[i]


CatalogData = dict[str, RegionTable]


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
    """The region's mean vector (None for fewer than two products: nothing to centre)."""
    return table.vectors.mean(axis=0) if len(table) > 1 else None


def center_region(table: RegionTable, mean: np.ndarray | None = None) -> RegionTable:
    """A copy of ``table`` with its mean vector (or ``mean``: an incremental run's frozen one)
    subtracted, re-normalised on construction."""
    mean = region_mean(table) if mean is None else mean
    vec = table.vectors - mean[None, :] if mean is not None else table.vectors
    return replace(table, vectors=vec)  # every other column carried over as it is


def centred_tables(
    canonical: CatalogData, center: bool = True
) -> tuple[CatalogData, dict[str, np.ndarray | None]]:
    """The tables every search and score compares: each region less its mean vector (``center``),
    and the means. One function for the full run, an incremental run and a search shard, so the
    vectors they compare are the same to the last bit."""
    if not center:
        return dict(canonical), {}
    means = {r: region_mean(t) for r, t in canonical.items()}
    return {r: center_region(t, means[r]) for r, t in canonical.items()}, means
