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
