"""Which model's vectors a collection holds: recorded with the collection, checked before writing.

Why: the model's name alone does not say which weights made a vector. Two folders passed under one
``--model`` value, or a folder retrained in place, give vectors from another space (cosine ~0 to the
old ones), and matching would compare them silently. So the collection's metadata records, per named
vector, the model's name and content fingerprint (:func:`.registry.model_fingerprint`), and each
point's content hash includes the fingerprint too.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: Collection metadata key: ``{vector name: {"model": name, "fingerprint": hex}}``.
METADATA_KEY = "polyglot_models"


class ModelMismatchError(ValueError):
    """The collection holds vectors of another model under this model's name; nothing was written."""


def recorded_model(store: Any) -> dict[str, Any] | None:
    """``{"model", "fingerprint"}`` recorded for the store's vector, or None (collection created before
    fingerprints, or missing)."""
    client = getattr(store, "client", None)
    if client is None or not hasattr(client, "get_collection") or not store.exists():
        return None  # a test double without a Qdrant client, or no collection yet
    info = store._call("collection info", client.get_collection, store.collection)
    metadata = getattr(info.config, "metadata", None) or {}
    record = (metadata.get(METADATA_KEY) or {}).get(store.vector_name)
    return record if isinstance(record, dict) else None


def record_model(store: Any, model: str, fingerprint: str, **extra: Any) -> None:
    """Record ``model`` and its fingerprint (and ``extra``, e.g. the sentence-vector kind) for the
    store's vector (merged into the metadata)."""
    info = store._call("collection info", store.client.get_collection, store.collection)
    models = dict((getattr(info.config, "metadata", None) or {}).get(METADATA_KEY) or {})
    models[store.vector_name] = {**(models.get(store.vector_name) or {}), **extra}
    models[store.vector_name].update(model=model, fingerprint=fingerprint)
    store._call(
        "collection metadata update",
        store.client.update_collection,
        store.collection,
        metadata={METADATA_KEY: models},
    )


def check_model(store: Any, model: str, fingerprint: str, *, full_refresh: bool = False) -> str:
    """Refuse a different model under the same name; record the model where nothing is recorded.

    Returns what was found: ``"same"``, ``"recorded"`` (first record) or ``"replaced"`` (full refresh).

    Raises:
        ModelMismatchError: the recorded fingerprint differs and ``full_refresh`` is off.
    """
    found = recorded_model(store)
    if found is not None and found.get("fingerprint") == fingerprint:
        return "same"
    if found is None:
        if store.count() > 0:
            log.warning(
                "collection %s has no model fingerprint (embedded before fingerprints were recorded); "
                "recording %s of %s: every row is re-encoded once, since content hashes now include it",
                store.collection,
                fingerprint,
                model,
            )
        record_model(store, model, fingerprint)
        return "recorded"
    if not full_refresh:
        raise ModelMismatchError(
            f"collection {store.collection!r} holds vectors of model {found.get('model')!r} with "
            f"fingerprint {found.get('fingerprint')}, but model {model!r} now has fingerprint "
            f"{fingerprint}: different weights, tokenizer, pooling or prompt under the same name "
            "(another folder, or one retrained in place). Nothing was written. To move to the new "
            "model, embed it into a new collection and switch the alias to it once complete "
            "(operator/DAG `alias`), or re-embed this collection with full_refresh to replace every "
            "vector in place (readers see a mix until it finishes)."
        )
    log.warning(
        "collection %s: replacing model fingerprint %s with %s (full_refresh re-encodes every row)",
        store.collection,
        found.get("fingerprint"),
        fingerprint,
    )
    record_model(store, model, fingerprint)
    return "replaced"
