"""Pair features and the combined score: a small logistic model over explainable evidence.

Features are few and each has a reason:

* ``cosine`` - the embedding similarity, the centre of the matcher.
* ``csls`` - cosine minus the mean similarity of both sides to their k nearest neighbours
  (cross-domain similarity local scaling, Lample et al. 2018): removes hubness, the reason raw
  nearest neighbour keeps picking the same generic texts.
* ``lexical`` - character n-gram TF-IDF cosine (:mod:`.lexical`): names, numbers and cognates
  shared across languages.
* evidence from :mod:`.evidence` (quantities, codes, names, GTIN, conflicts).

Without labels the model is fitted by self-training: reciprocal-best pairs under ``csls + lexical``
are taken as positives and the other candidates of the same products as negatives. With labels
it is fitted on them directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .blocks import PairBlock, feature_frame
from .canonical import pair_cosine, snap
from .evidence import EVIDENCE_COLUMNS, TextEvidence
from .exact_sums import ColumnStats
from .fastev import compare_many
from .lexical import NgramCounts, lexical_cosine
from .sorted_lookup import positions

logger = logging.getLogger(__name__)

FEATURES = ("cosine", "csls", "lexical", *EVIDENCE_COLUMNS)
#: Most pairs a scorer is fitted on (a seeded uniform sample beyond it); see :meth:`PairScorer.fit`.
MAX_FIT_ROWS = 1_000_000
#: Fewest reciprocal-best pairs (and negatives) self-training fits on. Why: on a small catalog the
#: reciprocal-best pairs include products that simply have no twin (two leftovers are each other's
#: best), a fit on a handful of them learns that anything goes, and the label-free cut then accepts
#: every leftover (a coffee grinder matched to a garden hose at 0.82). Below this the hand-set
#: weights and their even-odds cut decide.
MIN_SELF_TRAINING = 50
#: Pairs scored per step, bounding the float64 copy of the feature columns.
DECISION_CHUNK = 500_000
#: Pairs joined per step in :func:`corroboration` (each fans out to ~k^2 third-region paths).
CORROBORATION_CHUNK = 100_000


def pair_features(
    vec_a: np.ndarray,
    vec_b: np.ndarray,
    ia: np.ndarray,
    ib: np.ndarray,
    neigh_a: np.ndarray,
    neigh_b: np.ndarray,
    lex: tuple[NgramCounts, NgramCounts],
    ev_a: Sequence[TextEvidence],
    ev_b: Sequence[TextEvidence],
    idf: dict[str, float],
) -> tuple[pd.DataFrame, list[str]]:
    """Feature table (one row per candidate pair, columns :data:`FEATURES`) and explain strings."""
    cos = pair_cosine(vec_a, vec_b, ia, ib)  # float64 on the grid: see .canonical
    r_a = (
        np.nanmean(np.where(np.isfinite(neigh_a), neigh_a, np.nan), axis=1)
        if neigh_a.size
        else np.zeros(len(vec_a))
    )
    r_b = (
        np.nanmean(np.where(np.isfinite(neigh_b), neigh_b, np.nan), axis=1)
        if neigh_b.size
        else np.zeros(len(vec_b))
    )
    csls = snap(cos - 0.5 * (np.nan_to_num(r_a)[ia] + np.nan_to_num(r_b)[ib]))
    lexical = lexical_cosine(lex[0], lex[1], ia, ib)
    # all pairs at once (values equal evidence.compare's; a per-pair loop took minutes at 100k)
    evidence, explain = compare_many(ev_a, ev_b, ia, ib, idf)
    data = {"cosine": cos, "csls": csls, "lexical": lexical, **evidence}
    # float32 throughout: ~15 columns x millions of pairs, and no feature needs more than 7 digits
    return feature_frame({name: np.asarray(col, dtype=np.float32) for name, col in data.items()}), explain


def default_seed(*columns: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """The self-training seed score: the sum of z-scored label-free signals (CSLS, lexical overlap,
    and sentence alignment when the matcher has it).

    A column may come as its parts (one array per region pair), put together here one column at a
    time and z-scored in place: beside the sum at most one float64 column exists (the stacked
    z-scores of every column were the scoring stage's peak at millions of pairs). The values are
    those of ``sum(z(c) for c in columns)`` in column order, to the last bit, with each column's mean
    and standard deviation from exact sums (:class:`.exact_sums.ColumnStats`): the seed of a pair is
    then the same whether its column was one array here or parts in mapped tasks (:mod:`.part_scores`)."""
    total: np.ndarray | None = None
    for c in columns:
        # a fresh float64 array either way (the caller's columns are never written to)
        x = np.concatenate(c).astype(np.float64, copy=False) if isinstance(c, list | tuple) else None
        x = np.array(c, np.float64) if x is None else x
        z_scored(x, ColumnStats.of_parts([x]))
        if total is None:
            total = x
        else:
            total += x
    if total is None:
        raise ValueError("default_seed needs at least one column")
    return total


def z_scored(x: np.ndarray, stats: ColumnStats) -> np.ndarray:
    """``x`` (float64, the caller's own) z-scored in place by ``stats`` (a constant column: centred
    only). The one arithmetic of a seed column, here and in the score task (:mod:`.part_scores`)."""
    x -= stats.mean
    x /= stats.sd if stats.sd > 1e-12 else 1.0
    return x


def seed_columns(features: Sequence[str]) -> tuple[str, ...]:
    """Features whose z-scores sum to the self-training seed: CSLS, lexical overlap and, when there,
    sentence alignment (the label-free signals that do not need a fitted model)."""
    return ("csls", "lexical", *(c for c in ("sentences", "rerank") if c in features))


def log_odds(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` with ``p`` clipped to [1e-6, 1 - 1e-6]: pass one's probabilities as a
    column of the second pass's seed."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def training_masks(seed: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(positives, negatives)`` of one region pair: its reciprocal-best pairs under ``seed``, and
    the other candidates of the same products. Products of different region pairs never meet, so
    each region pair's masks are computed on its own pairs alone."""
    pos = reciprocal_best(seed, ia, ib)
    touched_a = np.unique(ia[pos])
    touched_b = np.unique(ib[pos])
    return pos, ~pos & (np.isin(ia, touched_a) | np.isin(ib, touched_b))


def self_training_targets(
    seed: np.ndarray, ia: np.ndarray, ib: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(rows, y)`` to fit on: reciprocal-best pairs under ``seed`` are positives, the other
    candidates of the same products negatives; ``None`` when either has fewer than
    :data:`MIN_SELF_TRAINING` (too little to fit on: the hand-set :meth:`PairScorer.default` is used)."""
    pos, neg = training_masks(seed, ia, ib)
    if pos.sum() < MIN_SELF_TRAINING or neg.sum() < MIN_SELF_TRAINING:
        return None
    keep = pos | neg
    return keep, pos[keep].astype(int)


def reciprocal_best(score: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Mask of pairs that are the best candidate of both their products (ties: first wins)."""
    mask = np.zeros(len(score), dtype=bool)
    if len(score) == 0:
        return mask
    order = np.lexsort((-score,))  # stable: among equal scores the earlier pair comes first
    _, first_a = np.unique(np.asarray(ia)[order], return_index=True)
    ub, first_b = np.unique(np.asarray(ib)[order], return_index=True)
    best_a, best_b = order[first_a], order[first_b]  # each product's best pair
    best_of_b = best_b[np.searchsorted(ub, np.asarray(ib)[best_a])]
    mask[best_a[best_of_b == best_a]] = True
    return mask


@dataclass
class PairScorer:
    """Logistic model over :data:`FEATURES`; ``predict`` gives a match probability per pair.

    ``weights`` and ``bias`` are kept in feature units so they can be printed and inspected.
    """

    features: tuple[str, ...] = FEATURES
    weights: np.ndarray | None = None
    bias: float = 0.0
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    fitted_on: str = "unfitted"

    def _x(self, feats: pd.DataFrame) -> np.ndarray:
        return feats[list(self.features)].to_numpy(dtype=np.float64)

    def fit(
        self, feats: pd.DataFrame, y: np.ndarray, *, source: str = "labels", c: float = 1.0
    ) -> PairScorer:
        """Fit on 0/1 targets; constant features get weight 0 (nothing to learn from them).

        More than :data:`MAX_FIT_ROWS` rows are subsampled (seeded, uniform): a dozen weights are
        settled long before a million pairs, and the float64 design matrix of every candidate pair
        at 100k products per region would be most of the matcher's memory."""
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        if len(feats) > MAX_FIT_ROWS:
            rows = np.sort(np.random.default_rng(0).choice(len(feats), MAX_FIT_ROWS, replace=False))
            feats, y = feats.iloc[rows], np.asarray(y)[rows]
        x = self._x(feats)
        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0)
        self.scale[self.scale < 1e-9] = np.inf
        y = np.asarray(y, dtype=int)
        if len(np.unique(y)) < 2:
            raise ValueError(
                f"need positive and negative pairs to fit; got only class {np.unique(y).tolist()}"
            )
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=1000)
        with threadpool_limits(1):  # the same weights whatever the BLAS thread count
            model.fit((x - self.mean) / self.scale, y)
        self.weights = model.coef_[0]
        self.bias = float(model.intercept_[0])
        self.fitted_on = source
        logger.info("scorer fitted on %s: %s", source, self.describe())
        return self

    def fit_unsupervised(
        self, feats: pd.DataFrame, ia: np.ndarray, ib: np.ndarray, seed: np.ndarray | None = None
    ) -> PairScorer:
        """Self-training: reciprocal-best pairs under ``seed`` (default ``csls + lexical``, z-scored)
        are positives, the other candidates of the same products negatives."""
        if seed is None:
            seed = default_seed(feats["csls"].to_numpy(), feats["lexical"].to_numpy())
        targets = self_training_targets(seed, ia, ib)
        if targets is None:
            return self.default()
        keep, y = targets
        return self.fit(feats[keep], y, source="self-training")

    def default(self) -> PairScorer:
        """Hand-set fallback (too little data to fit): cosine-centred, evidence as nudges."""
        self.mean = np.zeros(len(self.features))
        self.scale = np.ones(len(self.features))
        w = {
            "cosine": 10.0,
            "csls": 10.0,
            "lexical": 2.0,
            "ev_numbers": 1.0,
            "ev_codes": 2.0,
            "ev_names": 1.0,
            "ev_gtin": 5.0,
            "conflict_numbers": -1.0,
            "conflict_gtin": -5.0,
        }
        self.weights = np.array([w.get(f, 0.0) for f in self.features])
        self.bias = -8.0  # even odds at cosine + csls = 0.8 with no other evidence
        self.fitted_on = "default"
        return self

    def decision(self, feats: pd.DataFrame) -> np.ndarray:
        """Log-odds per pair."""
        if self.weights is None:
            self.default()
        assert self.mean is not None and self.scale is not None and self.weights is not None
        out = np.empty(len(feats), dtype=np.float64)
        for s in range(0, len(feats), DECISION_CHUNK):  # bounded float64 temporaries
            x = self._x(feats.iloc[s : s + DECISION_CHUNK])
            # a row-local sum, not a BLAS product: a row's value must not depend on its place
            out[s : s + DECISION_CHUNK] = (((x - self.mean) / self.scale) * self.weights).sum(axis=1)
        return out + self.bias

    def predict(self, feats: pd.DataFrame) -> np.ndarray:
        """Match probability per pair in [0, 1], on the grid of :mod:`.canonical`."""
        return snap(1.0 / (1.0 + np.exp(-self.decision(feats))))

    def describe(self) -> dict[str, float]:
        """Per-feature weights in standardised units (JSON-safe), for the summary and logs."""
        if self.weights is None:
            return {}
        return {f: round(float(w), 3) for f, w in zip(self.features, self.weights, strict=True)} | {
            "bias": round(self.bias, 3)
        }


def prior_shift_threshold(
    scores: np.ndarray, *, tol: float = 1e-7, max_iter: int = 500
) -> tuple[float, float]:
    """Label-free cut for one-to-one pairs: ``(threshold, match_share)``.

    The scorer is fitted with balanced classes, so its log-odds assume even odds of a match. Among
    pairs the one-to-one rule can accept, matches are far more common than that, and the
    probability must be re-based on their share. That share is estimated by EM on the scores
    alone (Saerens, Latinne & Decaestecker 2002, "Adjusting the outputs of a classifier to new a
    priori probabilities"): ``pi <- mean(sigmoid(logit(s) + logit(pi)))``. A pair is then accepted
    when its re-based probability is >= 0.5, i.e. when ``s >= 1 - pi``: the Bayes cut, with no
    constant fitted to any data set.
    """
    s = np.clip(np.asarray(scores, dtype=np.float64), 1e-12, 1 - 1e-12)
    if len(s) == 0:
        return 0.5, 0.5
    d = np.log(s / (1 - s))
    pi = 0.5
    for _ in range(max_iter):
        new = float(np.mean(1.0 / (1.0 + np.exp(-(d + np.log(pi / (1 - pi)))))))
        new = min(max(new, 1e-6), 1 - 1e-6)
        if abs(new - pi) < tol:
            pi = new
            break
        pi = new
    return 1.0 - pi, pi


def corroboration(
    blocks: Sequence[PairBlock],
    chunk: int = CORROBORATION_CHUNK,
    *,
    targets: Sequence[PairBlock] | None = None,
) -> list[np.ndarray]:
    """Third-region support per candidate pair: ``max_c min(p(a, c), p(b, c))`` over SKUs ``c`` of
    every other region that both ``a`` and ``b`` have as candidates (0 when none).

    ``blocks`` (:class:`.blocks.PairBlock`) carry ``ra, rb, ia, ib, score`` per region pair
    (``ra < rb``); the joins run on the sparse candidate lists only, so cost grows with candidates,
    not with catalog size squared.
    ``targets`` (default: ``blocks``): the pairs to score, against the paths of ``blocks`` (an
    incremental run scores its new pairs only). Pairs are joined ``chunk`` at a time: each pair fans
    out to its product's candidates in the third region, looked up among the other product's
    (sorted keys, NumPy only: pandas merges per chunk re-hashed a whole region pair's edges each
    time, most of the match task's scoring time at 300k per region). Minima and maxima are exact,
    so the result is the same for any chunk and any order of the pairs.
    """
    edges: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for blk in blocks:
        edges[(blk.ra, blk.rb)] = (blk.ia, blk.ib, blk.score)
        edges[(blk.rb, blk.ra)] = (blk.ib, blk.ia, blk.score)
    regions = {r for blk in blocks for r in (blk.ra, blk.rb)}
    out = []
    for blk in blocks if targets is None else targets:
        ra, rb = blk.ra, blk.rb
        support = np.zeros(len(blk.ia))
        for rc in sorted(regions - {ra, rb}):
            if (ra, rc) not in edges or (rb, rc) not in edges:
                continue
            from_a = _Neighbours(*edges[(ra, rc)])
            from_b = _Neighbours(*edges[(rb, rc)])
            for start in range(0, len(blk.ia), max(chunk, 1)):
                a, b = blk.ia[start : start + chunk], blk.ib[start : start + chunk]
                row, c, p1 = from_a.expand(a)
                p2, hit = from_b.lookup(np.asarray(b)[row], c)
                if hit.any():
                    np.maximum.at(support, start + row[hit], np.minimum(p1[hit], p2[hit]))
        out.append(support.astype(np.float32))
    return out


class _Neighbours:
    """One direction of a region pair's candidate edges (``x`` -> ``y`` with ``p``), as sorted keys
    ``x * width + y`` and each key's highest ``p`` (an edge that repeats with a lower ``p`` never
    gives a better path: ``min(p1, p2)`` is largest through its best copy): the ``y`` of given
    ``x``, and ``p`` of given ``(x, y)``. 16 B an edge (the edges sorted whole, with ``x``, ``y``
    and ``p`` in their order beside the keys, were ~48 B: the score task's peak, corroboration)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, p: np.ndarray) -> None:
        y = np.asarray(y)
        self.width = max(int(y.max(initial=-1)) + 1, 1)
        key = np.asarray(x, dtype=np.int64) * self.width + y
        p = np.asarray(p, dtype=np.float64)
        order = np.lexsort((-p, key))  # by key, highest p first
        key = key[order]
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        self.key, self.best = key[first], p[order[first]]

    def expand(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(row, y, p)``: every edge of each ``xs[row]``."""
        xs = np.asarray(xs, dtype=np.int64)
        lo = np.searchsorted(self.key, xs * self.width, side="left")
        counts = np.searchsorted(self.key, (xs + 1) * self.width, side="left") - lo
        row = np.repeat(np.arange(len(xs)), counts)
        pos = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(lo, counts)
        return row, self.key[pos] - xs[row] * self.width, self.best[pos]

    def lookup(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(p, found)`` of edges ``(xs, ys)`` (``p`` meaningless where not found)."""
        if not len(self.key):
            return np.zeros(len(xs)), np.zeros(len(xs), dtype=bool)
        want = np.asarray(xs, dtype=np.int64) * self.width + np.asarray(ys, dtype=np.int64)
        at, found = positions(self.key, want)
        return self.best[at], found & (np.asarray(ys) < self.width)
