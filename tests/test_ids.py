"""Point ids must be stable across runs and distinct per (region, sku); hashes must see every input."""

from __future__ import annotations

import uuid

from polyglot_catalog.ids import content_hash, point_id


def test_point_id_is_a_stable_uuid5() -> None:
    pid = point_id("DE", "DE-000123")
    assert pid == point_id("DE", "DE-000123")
    assert uuid.UUID(pid).version == 5


def test_point_id_separates_region_and_sku() -> None:
    ids = {point_id("DE", "1"), point_id("FR", "1"), point_id("DE", "2"), point_id("D", "E1")}
    assert len(ids) == 4
    # plain concatenation would collide here
    assert point_id("AB", "C") != point_id("A", "BC")


def test_content_hash_changes_with_model_template_and_text() -> None:
    base = content_hash("m", "{description}", "chair")
    assert len(base) == 64 and int(base, 16) >= 0
    assert base == content_hash("m", "{description}", "chair")
    variants = {
        content_hash("other", "{description}", "chair"),
        content_hash("m", "{title}. {description}", "chair"),
        content_hash("m", "{description}", "chairs"),
        content_hash("m", "{description}c", "hair"),
    }
    assert base not in variants and len(variants) == 4
