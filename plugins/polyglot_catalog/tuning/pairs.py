"""Training pairs for the encoder from links the retailer already owns.

Three sources, each a grouping of ``(region, sku)``: a labels file, reviewed decisions (the review
loop's export; until a review store exists it is a labels-like Parquet ``region, sku, group_id``,
one ``group_id`` per accepted product) and GTINs shared across regions. Links from all sources are
merged into connected components, so a product linked by two sources is one group: the train /
validation split is drawn by component and no product can sit on both sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from polyglot_catalog.matching.evaluate import Labels, load_labels
from polyglot_catalog.matching.evidence import normalise_gtin

SOURCES = ("labels", "reviewed", "gtin")
Key = tuple[str, str]


@dataclass
class CatalogTexts:
    """One text per ``(region, sku)``: the text the embed stage would encode."""

    texts: dict[Key, str]
    gtins: dict[Key, str]

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> CatalogTexts:
        """From a frame with ``region, sku, text`` (and optionally ``gtin``)."""
        missing = {"region", "sku", "text"} - set(df.columns)
        if missing:
            raise ValueError(f"catalog needs columns region, sku, text; missing {sorted(missing)}")
        keys = list(zip(df["region"].astype(str), df["sku"].astype(str), strict=True))
        texts = dict(zip(keys, df["text"].astype(str), strict=True))
        gtins: dict[Key, str] = {}
        if "gtin" in df.columns:
            for key, value in zip(keys, df["gtin"], strict=True):
                if g := normalise_gtin(value):
                    gtins[key] = g
        return cls(texts, gtins)

    def regions(self) -> list[str]:
        return sorted({r for r, _ in self.texts})


def read_catalog(source: str) -> CatalogTexts:
    """Read a Parquet catalog (file, folder or glob) into texts, rendered as the embed stage does.

    The default template and NFC cleanup are the embed stage's, so the model trains on the very
    texts it will later encode. Truncation is left to the model (the trainer cuts at its length).
    """
    from polyglot_catalog.reading import CatalogReader
    from polyglot_catalog.text import TextTemplate

    reader = CatalogReader(source)
    template = TextTemplate()
    frames = []
    for part in reader:
        batch = part.batch
        names = batch.schema.names
        frame = pd.DataFrame(
            {
                "region": batch.column("region").to_pylist(),
                "sku": batch.column("sku").to_pylist(),
                "text": template.render(batch),
                "gtin": batch.column("gtin").to_pylist() if "gtin" in names else None,
            }
        )
        frames.append(frame)
    if not frames:
        raise ValueError(f"catalog source {source!r} has no valid rows")
    return CatalogTexts.from_frame(pd.concat(frames, ignore_index=True))


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Key, Key] = {}

    def find(self, x: Key) -> Key:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: Key, b: Key) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _groups(labels: Labels) -> dict[str, list[Key]]:
    out: dict[str, list[Key]] = {}
    for key, group in labels.items():
        out.setdefault(group, []).append(key)
    return out


def link_pairs(
    catalog: CatalogTexts,
    labels: Labels | None = None,
    reviewed: Labels | None = None,
    use_gtin: bool = True,
) -> pd.DataFrame:
    """Cross-region positive pairs, one row per unordered pair of SKUs present in the catalog.

    Columns: ``region_a, sku_a, region_b, sku_b, text_a, text_b, source`` (the first source that
    links them, in the order labels, reviewed, gtin) and ``component`` (the merged product group,
    the unit of the train/validation split). Pairs whose two texts are identical teach nothing and
    are left out.
    """
    by_source: dict[str, Mapping[Key, str]] = {
        "labels": labels or {},
        "reviewed": reviewed or {},
        "gtin": catalog.gtins if use_gtin else {},
    }
    uf = _UnionFind()
    rows: dict[tuple[Key, Key], str] = {}
    for source in SOURCES:
        for members in _groups(dict(by_source[source])).values():
            present = sorted(k for k in set(members) if k in catalog.texts)
            for a, b in combinations(present, 2):
                if a[0] == b[0]:
                    continue  # same region: not a cross-region twin
                uf.union(a, b)
                rows.setdefault((a, b), source)
    records = [
        (a[0], a[1], b[0], b[1], catalog.texts[a], catalog.texts[b], source, "|".join(uf.find(a)))
        for (a, b), source in rows.items()
        if catalog.texts[a] != catalog.texts[b]
    ]
    columns = ["region_a", "sku_a", "region_b", "sku_b", "text_a", "text_b", "source", "component"]
    return pd.DataFrame(records, columns=columns)


def load_optional_labels(path: str | Path | None, what: str) -> Labels | None:
    """A labels-like file, or None; a missing file is an error naming it (not a silent no-op)."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise ValueError(f"{what} file {str(path)!r} does not exist")
    try:
        return load_labels(path)
    except ValueError as exc:
        raise ValueError(f"{what} file {str(path)!r}: {exc}") from exc


def split_by_group(components: pd.Series, val_fraction: float, seed: int = 0) -> np.ndarray:
    """Mask of rows in the validation split, drawn per component by a stable hash.

    Hashing (not a random draw over the current rows) keeps a product on the same side when the
    catalog grows, so a re-tune never trains on what an earlier card reported as unseen.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")

    def bucket(component: str) -> float:
        digest = hashlib.sha1(f"{seed}:{component}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    return np.array([bucket(c) < val_fraction for c in components], dtype=bool)


def pair_counts(pairs: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Pairs by source and by region pair, for the model card."""
    region_pair = pairs["region_a"] + "<->" + pairs["region_b"]
    return {
        "by_source": {k: int(v) for k, v in pairs["source"].value_counts().sort_index().items()},
        "by_region_pair": {k: int(v) for k, v in region_pair.value_counts().sort_index().items()},
    }
