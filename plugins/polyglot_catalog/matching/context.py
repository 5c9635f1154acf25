"""What a match run leaves for the next incremental one: frozen statistics and the scored graph.

An incremental run scores only the pairs of changed products, so every quantity a pair's features
take from the whole catalog must be the one the last full run used, as a fitted vectorizer is reused
rather than refitted: region means (centring), each product's neighbourhood radius and k-th
similarity (CSLS, reverse neighbours), char n-gram document frequencies (lexical), evidence IDF,
sentence means and sentence document frequencies (alignment), both scorers and the threshold. The
run's scored candidate graph is kept too: every pair of its pairs table scoring :data:`EDGE_FLOOR` or
more in either pass, with its features, pass-one probability ``p1``, score and decision (texts are
not kept: they are the products'), so the one-to-one and group rules can be re-solved on the part a
change touches, and the report lists every pair as a full run's does (docs/MATCH_STATE.md).

Serialised as one compressed ``.npz`` with the pairs as Parquet inside (:meth:`MatchContext.to_bytes`);
:mod:`.state` stores it in Qdrant beside the state record, so every worker of a deployment reads the
same one.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xxhash

from .scoring import PairScorer
from .sorted_lookup import positions

#: Candidate pairs scoring at least this in either pass are kept in the graph; lower ones can neither
#: be accepted nor lend a third region support worth counting.
EDGE_FLOOR = 0.01
#: Bumped when the serialised layout changes; another version forces a full run.
CONTEXT_VERSION = 1
#: Pairs-table columns the context does not keep (the products' texts; label verdicts).
EDGE_DROPPED = ("text_a", "text_b", "correct")


def text_keys(texts: Iterable[str]) -> np.ndarray:
    """64-bit content keys of texts (identical text, identical key)."""
    return np.fromiter((xxhash.xxh64_intdigest(t.encode()) for t in texts), dtype=np.uint64)


@dataclass
class RegionContext:
    """One region at the last run: its products (canonical SKU order) and its frozen statistics.

    ``radius[other]``/``floor[other]`` are each product's mean and lowest similarity among its top-k
    in region ``other`` (centred vectors, on the grid): CSLS takes the first, and a changed product
    enters an unchanged one's neighbour list when it scores above the second. ``lex_keys``/``lex_df``
    are the char n-gram buckets and document frequencies of :mod:`.lexical`; ``sent_keys``/``sent_df``
    the sentence keys (:func:`text_keys`) and how many products use each.
    """

    skus: np.ndarray
    text_key: np.ndarray
    content_hash: np.ndarray
    mean: np.ndarray | None
    radius: dict[str, np.ndarray] = field(default_factory=dict)
    floor: dict[str, np.ndarray] = field(default_factory=dict)
    lex_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    lex_df: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    sent_mean: np.ndarray | None = None
    sent_keys: np.ndarray | None = None
    sent_df: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.skus)

    def rows_of(self, skus: Sequence[str]) -> np.ndarray:
        """Row of each SKU (-1 where the region had no such SKU at the last run)."""
        at, found = positions(self.skus, np.asarray(skus, dtype=object))
        return np.where(found, at, -1).astype(np.int64)

    def lex_df_of(self, keys: np.ndarray) -> np.ndarray:
        """Frozen document frequency of n-gram buckets ``keys`` (0 for buckets the region lacked)."""
        return _lookup(self.lex_keys, self.lex_df, keys)

    def sent_df_of(self, keys: np.ndarray) -> np.ndarray:
        return _lookup(self.sent_keys, self.sent_df, keys)


def _lookup(keys: np.ndarray | None, values: np.ndarray | None, wanted: np.ndarray) -> np.ndarray:
    if keys is None or values is None or not len(keys):
        return np.zeros(len(wanted), dtype=np.int64)
    at, found = positions(keys, wanted)
    return np.where(found, values[at], 0).astype(np.int64)


def scorer_state(scorer: PairScorer | None) -> dict[str, Any] | None:
    """A scorer's exact parameters (JSON-safe floats: ``repr`` round-trips float64); None when it was
    never fitted (a catalog with one region, or too few candidates to learn from)."""
    if scorer is None or scorer.weights is None:
        return None
    assert scorer.weights is not None and scorer.mean is not None and scorer.scale is not None
    return {
        "features": list(scorer.features),
        "weights": [float(w) for w in scorer.weights],
        "bias": float(scorer.bias),
        "mean": [float(m) for m in scorer.mean],
        "scale": [float(s) if np.isfinite(s) else None for s in scorer.scale],
        "fitted_on": scorer.fitted_on,
    }


def scorer_from_state(state: dict[str, Any] | None) -> PairScorer | None:
    if state is None:
        return None
    return PairScorer(
        features=tuple(state["features"]),
        weights=np.asarray(state["weights"], dtype=np.float64),
        bias=float(state["bias"]),
        mean=np.asarray(state["mean"], dtype=np.float64),
        scale=np.asarray([np.inf if s is None else s for s in state["scale"]], dtype=np.float64),
        fitted_on=str(state["fitted_on"]),
    )


@dataclass
class MatchContext:
    """Everything an incremental run continues from (see the module docstring).

    ``edges`` is the run's pairs table (:func:`context_edges`): SKUs, score, ``p1``, decision and
    every feature column.
    """

    regions: list[str]
    parameters: dict[str, Any]
    threshold: float
    scorer1: dict[str, Any] | None
    scorer2: dict[str, Any] | None
    idf: dict[str, float]
    tables: dict[str, RegionContext]
    edges: pd.DataFrame
    sentences: bool = False
    version: int = CONTEXT_VERSION

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        header: dict[str, Any] = {
            "version": self.version,
            "regions": self.regions,
            "parameters": self.parameters,
            "threshold": self.threshold,
            "scorer1": self.scorer1,
            "scorer2": self.scorer2,
            "idf": self.idf,
            "sentences": self.sentences,
            "tables": {},
        }
        for r, t in self.tables.items():
            meta = {"others": sorted(t.radius)}
            header["tables"][r] = meta
            arrays[f"{r}/skus"] = np.asarray(t.skus, dtype=str)
            arrays[f"{r}/hash"] = np.asarray([h or "" for h in t.content_hash], dtype=str)
            arrays[f"{r}/text_key"] = t.text_key
            for name in ("mean", "lex_keys", "lex_df", "sent_mean", "sent_keys", "sent_df"):
                value = getattr(t, name)
                if value is not None:
                    arrays[f"{r}/{name}"] = np.asarray(value)
            for other in meta["others"]:
                arrays[f"{r}/radius/{other}"] = t.radius[other]
                arrays[f"{r}/floor/{other}"] = t.floor[other]
        arrays["edges"] = _parquet(self.edges)
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> MatchContext:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            if header.get("version") != CONTEXT_VERSION:
                raise ValueError(f"match context version {header.get('version')!r} is not {CONTEXT_VERSION}")
            tables = {}
            for r, meta in header["tables"].items():

                def get(name: str, r: str = r) -> np.ndarray | None:
                    key = f"{r}/{name}"
                    return z[key] if key in z.files else None

                tables[r] = RegionContext(
                    skus=z[f"{r}/skus"].astype(object),
                    text_key=z[f"{r}/text_key"],
                    content_hash=np.array([h or None for h in z[f"{r}/hash"].tolist()], dtype=object),
                    mean=get("mean"),
                    radius={o: z[f"{r}/radius/{o}"] for o in meta["others"]},
                    floor={o: z[f"{r}/floor/{o}"] for o in meta["others"]},
                    lex_keys=get("lex_keys"),  # type: ignore[arg-type]
                    lex_df=get("lex_df"),  # type: ignore[arg-type]
                    sent_mean=get("sent_mean"),
                    sent_keys=get("sent_keys"),
                    sent_df=get("sent_df"),
                )
            edges = pd.read_parquet(io.BytesIO(z["edges"].tobytes()))
        return cls(
            regions=list(header["regions"]),
            parameters=dict(header["parameters"]),
            threshold=float(header["threshold"]),
            scorer1=header["scorer1"],
            scorer2=header["scorer2"],
            idf={k: float(v) for k, v in header["idf"].items()},
            tables=tables,
            edges=edges,
            sentences=bool(header["sentences"]),
        )


def context_edges(pairs: pd.DataFrame) -> pd.DataFrame:
    """The rows of a pairs table (with its ``p1`` column) the context keeps: those scoring
    :data:`EDGE_FLOOR` or more in either pass, without the text columns."""
    keep = np.maximum(pairs["p1"].to_numpy(np.float64), pairs["score"].to_numpy(np.float64)) >= EDGE_FLOOR
    columns = [c for c in pairs.columns if c not in EDGE_DROPPED]
    return pairs.loc[keep, columns].reset_index(drop=True)


def _parquet(frame: pd.DataFrame) -> np.ndarray:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False, compression="zstd")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def neighbour_figures(neigh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(radius, floor)`` per row of a ``(n, k)`` similarity list (non-finite: missing)."""
    if not neigh.size:
        n = len(neigh)
        return np.zeros(n), np.full(n, -np.inf)
    finite = np.isfinite(neigh)
    count = finite.sum(axis=1)
    radius = np.where(count > 0, np.where(finite, neigh, 0.0).sum(axis=1) / np.maximum(count, 1), 0.0)
    floor = np.where(finite, neigh, np.inf).min(axis=1)
    return radius, np.where(count > 0, floor, -np.inf)


def sentence_frequencies(sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, df)``: sorted sentence keys and how many products use each sentence."""
    keys = (
        np.concatenate([np.unique(text_keys(s)) if len(s) else np.zeros(0, np.uint64) for s in sentences])
        if sentences
        else np.zeros(0, np.uint64)
    )
    uniq, df = np.unique(keys, return_counts=True)
    return uniq, df.astype(np.int32)
