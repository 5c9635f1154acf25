"""The reproducibility record of a match run: what a person needs to tell whether two reports
should agree (same model, same code, same parameters, same input)."""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from .canonical import GRID
from .data import CatalogData

#: Packages whose version can change a decision or a figure.
LIBRARIES = (
    "polyglot-catalog",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "pyarrow",
    "qdrant-client",
    "qdrant-edge-py",
    "sentence-transformers",
    "transformers",
    "torch",
)


def library_versions() -> dict[str, str]:
    """Installed versions of :data:`LIBRARIES` (``"not installed"`` for a missing one) and Python's."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def input_fingerprint(data: CatalogData, vector_digests: Mapping[str, str]) -> dict[str, Any]:
    """Point counts per region and two SHA-256 digests: one of ``region, sku, text`` over the rows in
    canonical order (the catalog's content), and one of the regions' vector digests
    (:func:`.region_search.region_digest` of the rows as read: SKU, text and vector of every row, in
    any order), so a run that never holds the vectors (feature parts) fingerprints them alike."""
    content = hashlib.sha256()
    for region in sorted(data):
        table = data[region]
        for sku, text in zip(table.skus, table.texts, strict=True):
            content.update(f"{region}\x1f{sku}\x1f{text}\x1e".encode())
    vectors = hashlib.sha256("".join(f"{r}\x1f{vector_digests[r]}\x1e" for r in sorted(data)).encode())
    return {
        "points": {r: len(data[r]) for r in sorted(data)},
        "content_sha256": content.hexdigest(),
        "vectors_sha256": vectors.hexdigest(),
    }


def reproducibility_record(
    data: CatalogData,
    parameters: Mapping[str, Any],
    *,
    model: str | None,
    model_fingerprint: str | None,
    collection: str | None,
    vector_digests: Mapping[str, str],
) -> dict[str, Any]:
    """JSON-safe record for ``summary["reproducibility"]``: model and its content fingerprint,
    library versions, every matcher parameter (with the determinism grid), the input's fingerprint."""
    return {
        "model": model,
        "model_fingerprint": model_fingerprint,
        "collection": collection,
        "libraries": library_versions(),
        "parameters": {**{k: _json_safe(v) for k, v in parameters.items()}, "score_grid": GRID},
        "input": input_fingerprint(data, vector_digests),
    }


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return "in-memory mapping"
    return str(value)
