"""Deterministic point ids and content hashes.

Ids are derived from the business key so that a re-run, a retry or a second shard writing the same
(region, sku) lands on the same Qdrant point instead of creating a duplicate. The content hash lets a
re-run skip rows whose embedded text (under the same model and template) has not changed.
"""

from __future__ import annotations

import hashlib
import uuid

# Fixed for the lifetime of the project: changing it would orphan every stored point.
PROJECT_NAMESPACE = uuid.UUID("8a0f4c52-3d6e-4b1f-9c7a-2e5d1b0f6a93")
_SEP = "\x1f"  # ASCII unit separator: cannot occur in cleaned text, so keys cannot collide by concatenation


def point_id(region: str, sku: str) -> str:
    """The Qdrant point id (uuid5 string) of one product in one region.

    Examples:
        ```py
        point_id("DE", "A-1") == point_id("DE", "A-1")  # stable across runs and machines
        ```
    """
    return str(point_uuid(region, sku))


def point_uuid(region: str, sku: str) -> uuid.UUID:
    """:func:`point_id` as a :class:`uuid.UUID` (its 16 ``bytes`` key a sorted id table)."""
    return uuid.uuid5(PROJECT_NAMESPACE, f"{region}{_SEP}{sku}")


def content_hash(model: str, template: str, text: str) -> str:
    """sha256 hex of what decides a vector: the model, the template and the rendered text."""
    return hashlib.sha256(_SEP.join((model, template, text)).encode("utf-8")).hexdigest()
