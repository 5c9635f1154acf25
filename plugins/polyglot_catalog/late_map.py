"""A fixed linear map that brings late-chunked sentence rows into the space of sentences encoded alone.

Why: a sentence pooled from its description's own forward pass (late chunking, one pass per
description) is cheap, but its tokens have attended to the whole description, so its vector lies in
another space than the same sentence encoded as a text of its own (mean cosine 0.24 on the dev
catalog), and the matcher's sentence alignment is worse with it. An affine map fitted by ridge
regression from late rows to the model's own vectors of the same sentences closes most of that gap
(bench/RESULTS.md, "Late chunking with a fixed linear map").

Why fitted once per model and shipped: a map fitted on each catalog would change a cached sentence's
vector whenever it is refitted, and the result would depend on which products a run saw first. The
map is fitted on generic multilingual text (Tatoeba sentences, grouped into pseudo-descriptions of a
few sentences of one language) and the product descriptions the repository ships (the demo catalog),
with no match label, by ``scripts/fit_late_map.py``, and ships with the package as
``late_maps/<model fingerprint>.npz``: it belongs to exactly the model files it was fitted on. A model
without a shipped map keeps the unmapped rows; its cache name says so (:func:`late_recipe`).

No torch import: the matcher names sentence caches with :func:`late_recipe` without loading a model.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAPS_DIR = Path(__file__).resolve().parent / "late_maps"
#: Ridge penalty of the shipped fit. The matcher's figures on the dev catalog hardly move between 0.1
#: and 3 (top-1 within 0.001, F1 within 0.001) and fall at 100 (bench/RESULTS.md).
RIDGE = 3.0
#: Sentences per pseudo-description: product descriptions on the dev catalog have 3-5.
SENTENCES_PER_TEXT = 4


@dataclass(frozen=True)
class LateMap:
    """``rows @ weights + bias`` (float32), for rows of one model's late recipe."""

    weights: np.ndarray  # (dim, dim)
    bias: np.ndarray  # (dim,)
    meta: Mapping[str, Any]

    @property
    def digest(self) -> str:
        """Short digest of the map's numbers: names the caches its vectors fill."""
        h = hashlib.sha256(np.ascontiguousarray(self.weights, np.float32).tobytes())
        h.update(np.ascontiguousarray(self.bias, np.float32).tobytes())
        return h.hexdigest()[:8]

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """Mapped rows, not normalised (the caller normalises, as for unmapped rows)."""
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.weights.shape[0]:
            width = self.weights.shape[0]
            raise ValueError(f"late map expects rows of width {width}; got shape {rows.shape}")
        # float64, then float32: the product's last bits barely depend on the BLAS kernel or the
        # number of rows, and the result is rounded to float32 as every stored vector is
        out = rows.astype(np.float64) @ self.weights.astype(np.float64) + self.bias.astype(np.float64)
        return out.astype(np.float32)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            weights=np.asarray(self.weights, np.float32),
            bias=np.asarray(self.bias, np.float32),
            meta=np.array(json.dumps(dict(self.meta), sort_keys=True)),
        )
        return path

    @classmethod
    def load(cls, path: Path) -> LateMap:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["weights"], z["bias"], json.loads(str(z["meta"])))


def map_path(fingerprint: str) -> Path:
    return MAPS_DIR / f"{fingerprint}.npz"


@functools.lru_cache(maxsize=8)
def late_map_for(fingerprint: str | None) -> LateMap | None:
    """The shipped map of the model with this fingerprint, or None (no map: rows stay unmapped)."""
    if not fingerprint:
        return None
    path = map_path(fingerprint)
    return LateMap.load(path) if path.is_file() else None


def late_recipe(base: str, fingerprint: str | None) -> str:
    """The full recipe name of a model's late rows: ``base`` plus the shipped map's digest, if any.
    Names the sentence cache, so mapped and unmapped rows (or two fits) never share one."""
    found = late_map_for(fingerprint)
    return f"{base}map{found.digest}" if found is not None else base


def fit_late_map(rows: np.ndarray, targets: np.ndarray, ridge: float = RIDGE, **meta: Any) -> LateMap:
    """Ridge regression in float64 (weights and bias penalised alike: one solve on rows with a
    constant column) from late ``rows`` to ``targets``, the same sentences' own unit vectors."""
    rows = np.asarray(rows, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if rows.ndim != 2 or rows.shape != targets.shape:
        raise ValueError(f"rows {rows.shape} and targets {targets.shape} must be equal 2-D shapes")
    if len(rows) <= rows.shape[1]:
        raise ValueError(f"need more sentences than dimensions to fit a map; got {len(rows)}")
    x = np.c_[rows, np.ones(len(rows))]
    w = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ targets)
    return LateMap(w[:-1].astype(np.float32), w[-1].astype(np.float32), {"ridge": ridge, **meta})


def pseudo_descriptions(
    lines: Mapping[str, Sequence[str]], per_text: int = SENTENCES_PER_TEXT, seed: int = 0
) -> list[str]:
    """Sentences of each language shuffled (seeded) and joined ``per_text`` at a time: descriptions
    of a few sentences, each in one language, as a catalog's are."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for language in sorted(lines):
        pool = [s.strip() for s in lines[language] if s.strip()]
        order = rng.permutation(len(pool))
        out += [" ".join(pool[i] for i in order[s : s + per_text]) for s in range(0, len(pool), per_text)]
    return out
