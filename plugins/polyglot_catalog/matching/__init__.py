"""Cross-region product matching: candidates, evidence, scoring, one-to-one decisions, groups.

The public surface is re-exported here; the modules behind it stay small and replaceable.
"""

from .data import CatalogData, RegionTable, catalog_from_records
from .evaluate import labels_from_gtin, load_labels
from .pipeline import load_catalog, match_catalog
from .result import MatchResult

__all__ = [
    "CatalogData",
    "MatchResult",
    "RegionTable",
    "catalog_from_records",
    "labels_from_gtin",
    "load_catalog",
    "load_labels",
    "match_catalog",
]
