"""Test doubles for the encoder and for a Qdrant client that fails on purpose.

``FakeEncoder`` has the real ``Encoder``'s interface and is deterministic: each word is hashed to a
fixed random direction and a text is the normalised sum, so texts sharing words are close. It records
every text it encodes, which is what the incremental tests assert on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np


class FakeEncoder:
    """Deterministic bag-of-words encoder with the ``Encoder`` interface."""

    def __init__(self, dim: int = 16, model_name: str = "fake-model", max_seq_length: int = 512) -> None:
        self.dim = dim
        self.model_name = model_name
        self.max_seq_length = max_seq_length
        self.calls: list[list[str]] = []

    @property
    def encoded(self) -> list[str]:
        """Every text encoded so far, in order."""
        return [t for call in self.calls for t in call]

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.lower().encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            vec = sum((self._word(w) for w in text.split()), np.zeros(self.dim))
            out[i] = vec / (np.linalg.norm(vec) or 1.0)
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """One token per word plus two special tokens, like a real tokenizer's CLS/SEP."""
        return [len(t.split()) + 2 for t in texts]


class FlakyClient:
    """Wraps a QdrantClient; the first ``failures`` upserts raise ``error`` before reaching it."""

    def __init__(self, client: Any, failures: int, error: Exception | None = None) -> None:
        self._client = client
        self.failures = failures
        self.error = error or ConnectionError("connection reset by peer")
        self.upsert_attempts = 0

    def upsert(self, *args: Any, **kwargs: Any) -> Any:
        self.upsert_attempts += 1
        if self.upsert_attempts <= self.failures:
            raise self.error
        return self._client.upsert(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class RegionKeyedServer:
    """A Qdrant server's custom sharding, emulated over a local-mode client (which has one shard and
    refuses shard keys): a collection created with ``sharding_method=CUSTOM`` takes writes only into
    an existing shard key, remembers each point's key, and a scroll, count or query with a shard key
    sees only that key's points, as a server routes them. ``routed`` records (call, key) of every
    call that named a key. Not local mode to the store (no ``_client`` attribute)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.keys: dict[str, set[str]] = {}  # custom-sharded collections -> their shard keys
        self.point_key: dict[str, dict[str, str]] = {}
        self.routed: list[tuple[str, str]] = []

    def create_collection(self, name: str, *, sharding_method: Any = None, **kwargs: Any) -> Any:
        from qdrant_client import models

        if sharding_method == models.ShardingMethod.CUSTOM:
            self.keys[name], self.point_key[name] = set(), {}
        return self.inner.create_collection(name, **kwargs)

    def get_collection(self, name: str) -> Any:
        from qdrant_client import models

        info = self.inner.get_collection(name)
        if name in self.keys:
            info.config.params.sharding_method = models.ShardingMethod.CUSTOM
        return info

    def create_shard_key(self, name: str, shard_key: str, **_: Any) -> bool:
        if name not in self.keys:
            raise ValueError(f"collection {name} is not sharded by key")
        if shard_key in self.keys[name]:
            raise ValueError(f"shard key {shard_key} already exists")
        self.keys[name].add(shard_key)
        return True

    def list_shard_keys(self, name: str, **_: Any) -> Any:
        from qdrant_client import models

        return models.ShardKeysResponse(
            shard_keys=[models.ShardKeyDescription(key=k) for k in sorted(self.keys.get(name, ()))]
        )

    def upsert(self, name: str, points: Any, shard_key_selector: Any = None, **kwargs: Any) -> Any:
        if name in self.keys:
            if shard_key_selector not in self.keys[name]:
                raise ValueError(
                    f"upsert into {name} needs an existing shard key; got {shard_key_selector!r}"
                )
            self.routed.append(("upsert", shard_key_selector))
            for pid in points.ids:
                self.point_key[name][str(pid)] = shard_key_selector
        return self.inner.upsert(name, points, **kwargs)

    def _within(self, name: str, key: Any, flt: Any, call: str) -> Any:
        """``flt`` narrowed to ``key``'s points (``flt`` itself without a key)."""
        from qdrant_client import models

        if key is None:
            return flt
        self.routed.append((call, key))
        ids = [pid for pid, k in self.point_key.get(name, {}).items() if k == key]
        must = [*(flt.must if flt is not None and flt.must else []), models.HasIdCondition(has_id=ids)]
        return models.Filter(must=must, must_not=flt.must_not if flt is not None else None)

    def scroll(
        self, name: str, *, scroll_filter: Any = None, shard_key_selector: Any = None, **kw: Any
    ) -> Any:
        return self.inner.scroll(
            name, scroll_filter=self._within(name, shard_key_selector, scroll_filter, "scroll"), **kw
        )

    def count(self, name: str, *, count_filter: Any = None, shard_key_selector: Any = None, **kw: Any) -> Any:
        return self.inner.count(
            name, count_filter=self._within(name, shard_key_selector, count_filter, "count"), **kw
        )

    def query_batch_points(self, name: str, requests: Any, **kwargs: Any) -> Any:
        routed = [
            r.model_copy(
                update={"filter": self._within(name, r.shard_key, r.filter, "query"), "shard_key": None}
            )
            for r in requests
        ]
        return self.inner.query_batch_points(name, requests=routed, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
