"""The embed stage keeps a product's match state (group id, twins, ``match_*``) when it re-embeds it.

Why it matters: the nightly embed rewrites a changed product's whole point; without carrying, the
product would have no group and no twins in Qdrant until the next match run (docs/MATCH_STATE.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes import FakeEncoder
from test_embed import ROWS, snapshot, write_catalog

from polyglot_catalog.embed import embed_catalog
from polyglot_catalog.ids import point_id
from polyglot_catalog.store import CatalogStore

F2, F1, U2 = point_id("FR", "F2"), point_id("FR", "F1"), point_id("US", "U2")
STATE = {
    F2: {"group_id": "g000002", "twins": {"US": {"sku": "U2", "score": 0.91, "run": "run-1"}}},
    U2: {"group_id": "g000002", "twins": {"FR": {"sku": "F2", "score": 0.91, "run": "run-1"}}},
    F1: {"group_id": "g000001", "twins": {"US": {"sku": "U1", "score": 0.88, "run": "run-1"}}},
}


@pytest.fixture
def store(qdrant_client: Any) -> CatalogStore:
    """Both embedded engines (and a server when ``QDRANT_URL`` is set): each reads payloads its own way."""
    return CatalogStore(qdrant_client, "catalog", "fake-model", backoff=0.0)


def _write_state(store: CatalogStore, extra: dict[str, Any] | None = None) -> None:
    """What a match run leaves on the points (``set_payload``, as matching.state applies it)."""
    for pid, state in STATE.items():
        store.client.set_payload(store.collection, {**state, **(extra or {})}, points=[pid], wait=True)


def _edited(rows: list[tuple[str, str, str | None, str]]) -> list[tuple[str, str, str | None, str]]:
    out = list(rows)
    out[4] = ("FR", "F2", "fr", "Canapé 3 places avec housse , gris clair")
    return out


def test_a_reembedded_point_keeps_its_group_and_twins(tmp_path: Path, store: CatalogStore) -> None:
    embed_catalog(write_catalog(tmp_path / "v1" / "c.parquet"), store, FakeEncoder())
    _write_state(store, {"match_hash": "abc123"})
    before = snapshot(store)

    rows = [*_edited(ROWS), ("US", "U9", "en", "Oak desk , 120 cm")]
    summary = embed_catalog(write_catalog(tmp_path / "v2" / "c.parquet", rows), store, FakeEncoder())

    assert summary["embedded"] == 2  # the edited F2 and the new U9
    after = snapshot(store)
    payload, vector = after[F2]
    assert payload["text"] == "Canapé 3 places avec housse , gris clair"
    assert payload["content_hash"] != before[F2][0]["content_hash"] and vector != before[F2][1]
    assert payload["group_id"] == "g000002" and payload["twins"] == STATE[F2]["twins"]
    assert payload["match_hash"] == "abc123"
    # unchanged points are not rewritten at all; a new SKU gets no state
    others = set(before) - {F2}
    assert {pid: after[pid] for pid in others} == {pid: before[pid] for pid in others}
    new = after[point_id("US", "U9")][0]
    assert not {"group_id", "twins", "match_hash"} & set(new)


def test_a_point_without_state_gets_none_when_reembedded(tmp_path: Path, store: CatalogStore) -> None:
    embed_catalog(write_catalog(tmp_path / "v1" / "c.parquet"), store, FakeEncoder())
    embed_catalog(write_catalog(tmp_path / "v2" / "c.parquet", _edited(ROWS)), store, FakeEncoder())

    payload = snapshot(store)[F2][0]
    assert payload["text"].startswith("Canapé 3 places")
    assert "group_id" not in payload and "twins" not in payload


def test_full_refresh_keeps_the_state_of_every_point(tmp_path: Path, store: CatalogStore) -> None:
    source = write_catalog(tmp_path / "c.parquet")
    embed_catalog(source, store, FakeEncoder())
    _write_state(store)

    summary = embed_catalog(source, store, FakeEncoder(), full_refresh=True)

    assert summary["embedded"] == len(ROWS)
    after = snapshot(store)
    assert {pid: {k: after[pid][0].get(k) for k in ("group_id", "twins")} for pid in STATE} == STATE
    assert "group_id" not in after[point_id("DE", "D1")][0]


def test_a_vanished_point_flagged_stale_keeps_its_state_and_so_does_its_return(
    tmp_path: Path, store: CatalogStore
) -> None:
    embed_catalog(write_catalog(tmp_path / "full" / "c.parquet"), store, FakeEncoder())
    _write_state(store)
    without_f2 = [r for r in ROWS if r[1] != "F2"]

    embed_catalog(write_catalog(tmp_path / "less" / "c.parquet", without_f2), store, FakeEncoder())
    stale = snapshot(store)[F2][0]
    assert stale["status"] == "stale" and stale["group_id"] == "g000002"
    assert stale["twins"] == STATE[F2]["twins"]

    # back with a new description: re-embedded, active again, state still there
    embed_catalog(write_catalog(tmp_path / "back" / "c.parquet", _edited(ROWS)), store, FakeEncoder())
    back = snapshot(store)[F2][0]
    assert back["status"] == "active" and back["text"].startswith("Canapé 3 places")
    assert back["group_id"] == "g000002" and back["twins"] == STATE[F2]["twins"]
    assert np.isfinite(snapshot(store)[F2][1]).all()
