"""The match's scorers fitted from the feature parts, and every pair's scores written beside its part
(#26): the scoring stage out of the match task, with the match task's result to the last bit.

Why: the match task held every candidate pair's features to fit and apply the scorers (~80 B a pair
of the ~0.2 KB it holds a pair, docs/SCALING.md). Each step of the scoring splits over the parts:

* the self-training seed's column means and deviations are exact sums (:mod:`.exact_sums`), merged
  over parts: the same bits as over one array;
* reciprocal-best pairs come from each product's best pair under the seed (highest seed, ties to the
  lowest other product: the one task's first row in its ``(a, b)`` order), merged over parts;
* the fit's rows are the one task's: its seeded sample of the masked rows is drawn over their global
  order, which per-product counts give a part without the other parts' rows;
* a pair's probability depends on its own features alone (:meth:`.scoring.PairScorer.decision`);
* corroboration's third-region support is a maximum of minima, the same in any order; it reads
  three compact columns of every pair (region pair, rows, pass-one probability).

Held here: every pair's rows (int32), pass-one probability and support (~20 B a pair), per region
pair its products' best pairs, the fit's sample (at most :data:`.scoring.MAX_FIT_ROWS` rows) and,
while corroboration runs, the sorted edge lists of two region pairs: the peak, ~110 B a pair (1,553
MB at 12.56 M pairs, against the match task's ~0.2 KB a pair). The one-to-one decisions follow on
these scores (:mod:`.part_decisions`). Next step: the passes as mapped tasks (each is one function
of a part and the merged sums above), and corroboration as a join per range of products.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..memory import release_freed_memory
from .blocks import PairBlock, feature_frame
from .context import scorer_from_state, scorer_state
from .exact_sums import ColumnStats, ExactSum, squared_deviations
from .feature_parts import features_name, text_sets
from .scoring import (
    FEATURES,
    MAX_FIT_ROWS,
    MIN_SELF_TRAINING,
    PairScorer,
    corroboration,
    log_odds,
    seed_columns,
    z_scored,
)
from .shard_storage import ShardFolder
from .shards import CandidateShard

logger = logging.getLogger(__name__)

#: The second pass's extra feature (third-region support), as the match task names it.
TRIANGLE = "ev_triangle"
#: What :func:`score_parts` fitted and on which parts, written after every scores part: the match
#: task uses the parts' scores only when it finds this file and it fits (:func:`read_scorers`).
MANIFEST = "scores.json"


def scores_name(shard: CandidateShard) -> str:
    """``scores-<shard>.parquet``: ``p1``, ``score`` (and ``ev_triangle``) of a feature part's rows,
    in its order."""
    return f"scores-{shard.name}.parquet"


@dataclass
class _Part:
    """One feature part's rows and the scores computed for them so far: views into its region
    pair's arrays (:class:`_RegionPair`)."""

    shard: CandidateShard
    ia: np.ndarray
    ib: np.ndarray
    p1: np.ndarray | None = None
    triangle: np.ndarray | None = None


@dataclass
class _RegionPair:
    """A region pair's rows (int32: products per region < 2**31) and pass-one probabilities, its
    parts' rows one after another; a part's columns are views, so corroboration reads the region
    pair's columns without a copy."""

    ia: np.ndarray
    ib: np.ndarray
    p1: np.ndarray
    parts: list[_Part]


@dataclass
class PartScores:
    """The scorers the parts were scored with (``scorer2`` None without a second pass), and how many
    pairs and parts were scored."""

    scorer1: PairScorer
    scorer2: PairScorer | None
    pairs: int
    parts: int
    seconds: dict[str, float] = field(default_factory=dict)


class _Parts:
    """The run's feature parts by region pair, in the match task's order of region pairs."""

    def __init__(self, folder: Any, plan: Sequence[CandidateShard], regions: Sequence[str]) -> None:
        self.folder = ShardFolder.of(folder)
        self.products = {r: len(text_sets(self.folder, r).inverse) for r in regions}
        self.pairs: dict[tuple[str, str], _RegionPair] = {}
        for ra, rb in itertools.combinations(sorted(regions), 2):
            shards = [s for s in plan if (s.query, s.other) == (ra, rb)]
            rows = [self.read(s, ["ia", "ib"]) for s in shards]
            ia = np.concatenate([np.zeros(0, np.int32), *(t["ia"].to_numpy().astype(np.int32) for t in rows)])
            ib = np.concatenate([np.zeros(0, np.int32), *(t["ib"].to_numpy().astype(np.int32) for t in rows)])
            bounds = np.cumsum([0, *(t.num_rows for t in rows)])
            del rows
            pair = _RegionPair(ia, ib, np.zeros(len(ia)), [])
            for s, lo, hi in zip(shards, bounds[:-1], bounds[1:], strict=True):
                pair.parts.append(_Part(s, ia[lo:hi], ib[lo:hi], pair.p1[lo:hi]))
            self.pairs[(ra, rb)] = pair
            _check_owned(ra, pair.parts, self.products[ra])

    def all(self) -> list[_Part]:
        return [p for pair in self.pairs.values() for p in pair.parts]

    def read(self, shard: CandidateShard, columns: Sequence[str]) -> pa.Table:
        if not self.folder.exists(features_name(shard)):
            raise ValueError(f"feature part of shard {shard.name} is missing in {self.folder}")
        with self.folder.open(features_name(shard)) as f:
            return pq.read_table(f, columns=list(columns))

    def features(self, part: _Part, features: Sequence[str]) -> pd.DataFrame:
        """The part's ``features`` as the match task's blocks hold them (float32 columns)."""
        own = [f for f in features if f != TRIANGLE]
        t = self.read(part.shard, own)
        cols = {f: t[f].to_numpy() for f in own}
        if TRIANGLE in features:
            cols[TRIANGLE] = part.triangle
        return feature_frame({f: cols[f] for f in features})


def _check_owned(region: str, parts: Sequence[_Part], products: int) -> None:
    """Every side-a product's pairs in one part (the feature parts key pairs by the side-a text's
    shard): the fit's sample order rests on it."""
    owner = np.full(products, -1, np.int64)
    for i, p in enumerate(parts):
        a = np.unique(p.ia)
        if (owner[a] >= 0).any():
            raise ValueError(f"region {region}: a product's pairs are in two feature parts ({p.shard.name})")
        owner[a] = i


def score_parts(
    folder: Any,
    plan: Sequence[CandidateShard],
    regions: Sequence[str],
    features: Sequence[str],
    *,
    corroborate: bool = True,
) -> PartScores:
    """Fit the match task's self-trained scorers on the feature parts of ``plan`` in ``folder`` and
    write each part's scores (:func:`scores_name`). ``features``: the scorer's inputs (the parts'
    columns; ``ev_triangle`` is added for the second pass, run when ``corroborate`` and 3+ regions).
    The scorers, and every pair's ``p1`` and ``score``, are those :func:`.pipeline.score_blocks`
    gives on the same parts put together (tested bit for bit).

    Raises:
        ValueError: a feature part is missing, or a product's pairs are in two parts."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    parts = _Parts(folder, plan, regions)
    parts.folder.delete(MANIFEST)  # a run again: no manifest until every part has its new scores
    columns = seed_columns(features)
    scorer1 = _fit(parts, features, lambda p: [parts.read(p.shard, [c])[c].to_numpy() for c in columns])
    for p in parts.all():
        p.p1[:] = _predict(scorer1, parts.features(p, features))
    seconds["pass_one"] = time.perf_counter() - t0
    scorer2 = None
    second = bool(corroborate and len(regions) > 2)
    if second:
        t0 = time.perf_counter()
        _corroborate(parts)
        features2 = (*features, TRIANGLE)
        scorer2 = _fit(parts, features2, lambda p: [log_odds(p.p1), p.triangle])
        seconds["pass_two"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in parts.all():
        out = {"p1": pa.array(p.p1)}
        if scorer2 is not None:
            out[TRIANGLE] = pa.array(p.triangle)
            out["score"] = pa.array(_predict(scorer2, parts.features(p, (*features, TRIANGLE))))
        else:
            out["score"] = out["p1"]
        with parts.folder.writing(scores_name(p.shard)) as f:
            pq.write_table(pa.table(out), f)
    manifest = {
        "features": list(features),
        "corroborate": second,
        "scorer1": scorer_state(scorer1),
        "scorer2": scorer_state(scorer2),
        "parts": {p.shard.name: _part_id(parts.folder, p.shard, len(p.ia)) for p in parts.all()},
    }
    parts.folder.write_text(MANIFEST, json.dumps(manifest))
    seconds["write"] = time.perf_counter() - t0
    all_parts = parts.all()
    logger.info(
        "scored %d pairs in %d parts (%s)", sum(len(p.ia) for p in all_parts), len(all_parts), seconds
    )
    return PartScores(scorer1, scorer2, sum(len(p.ia) for p in all_parts), len(all_parts), seconds)


def _part_id(folder: ShardFolder, shard: CandidateShard, rows: int) -> dict[str, int]:
    """What the scores of a feature part were computed from: its rows and bytes (a feature task
    run again on the same inputs writes the same bytes)."""
    return {"rows": int(rows), "bytes": int(folder.fs.size(folder.path(features_name(shard))))}


def part_features(folder: Any, plan: Sequence[CandidateShard]) -> tuple[str, ...]:
    """The scorer's inputs the feature parts carry, in the match task's order: :data:`.scoring.FEATURES`
    and ``sentences`` when the run had sentence vectors."""
    folder = ShardFolder.of(folder)
    if not plan:
        return FEATURES
    with folder.open(features_name(plan[0])) as f:
        names = pq.read_schema(f).names
    return (*FEATURES, "sentences") if "sentences" in names else FEATURES


def read_scorers(
    folder: Any, plan: Sequence[CandidateShard], features: Sequence[str], corroborate: bool
) -> tuple[PairScorer, PairScorer | None] | str:
    """The scorers :func:`score_parts` fitted on ``plan``'s feature parts in ``folder``, or why its
    scores cannot stand for the match task's own: no manifest (the score task did not run or did
    not finish), other inputs or settings, or a feature part written again since."""
    folder = ShardFolder.of(folder)
    if not folder.exists(MANIFEST):
        return f"no {MANIFEST} in {folder}"
    manifest = json.loads(folder.read_text(MANIFEST))
    if list(manifest.get("features", [])) != list(features) or manifest.get("corroborate") != corroborate:
        return "the parts were scored with other features or corroboration"
    recorded = manifest.get("parts", {})
    if set(recorded) != {s.name for s in plan}:
        return "the parts were scored for another plan"
    for shard in plan:
        rows = recorded[shard.name]["rows"]
        if recorded[shard.name] != _part_id(folder, shard, rows) or not folder.exists(scores_name(shard)):
            return f"feature part {shard.name} changed since it was scored"
    scorer1 = scorer_from_state(manifest["scorer1"]) or PairScorer(features=tuple(features))
    return scorer1, scorer_from_state(manifest["scorer2"])


def read_part_scores(folder: Any, shard: CandidateShard) -> pa.Table:
    """A part's scores (``p1``, ``score`` and, after a second pass, ``ev_triangle``), in its rows' order."""
    folder = ShardFolder.of(folder)
    with folder.open(scores_name(shard)) as f:
        return pq.read_table(f)


def _fit(parts: _Parts, features: Sequence[str], seed_of: Callable[[_Part], list[np.ndarray]]) -> PairScorer:
    """One scorer over every region pair's parts, self-trained on the seed of ``seed_of``'s columns
    (the one task's :func:`.pipeline._fit_and_score` without labels)."""
    scorer = PairScorer(features=tuple(features))
    every = parts.all()
    if not sum(len(p.ia) for p in every):
        return scorer
    stats = _column_stats(every, seed_of)
    pos, neg = {}, {}
    for (ra, rb), pair in parts.pairs.items():
        pair_parts = pair.parts
        seeds = [_seed(seed_of(p), stats) for p in pair_parts]
        pos_k = _reciprocal_best(pair_parts, seeds, parts.products[ra], parts.products[rb])
        neg_k = _negatives(pair_parts, pos_k, parts.products[ra], parts.products[rb])
        for p, ps, ns in zip(pair_parts, pos_k, neg_k, strict=True):
            pos[p.shard], neg[p.shard] = ps, ns
    n_pos = sum(int(m.sum()) for m in pos.values())
    n_neg = sum(int(m.sum()) for m in neg.values())
    if n_pos < MIN_SELF_TRAINING or n_neg < MIN_SELF_TRAINING:
        return scorer.default()
    feats, y = _fit_rows(parts, features, pos, neg)
    return scorer.fit(feats, y, source="self-training")


def _column_stats(every: Sequence[_Part], seed_of: Callable[[_Part], list[np.ndarray]]) -> list[ColumnStats]:
    """Each seed column's mean and deviation over every part (two passes, exact sums)."""
    totals: list[ExactSum] | None = None
    for p in every:
        cols = seed_of(p)
        totals = totals or [ExactSum() for _ in cols]
        for total, col in zip(totals, cols, strict=True):
            total.add(col)
    assert totals is not None
    means = [t.mean() for t in totals]
    squares = [ExactSum() for _ in totals]
    for p in every:
        cols = seed_of(p)
        squares = [s.merge(squared_deviations(c, m)) for s, c, m in zip(squares, cols, means, strict=True)]
    return [ColumnStats.from_sums(t, s) for t, s in zip(totals, squares, strict=True)]


def _seed(columns: Sequence[np.ndarray], stats: Sequence[ColumnStats]) -> np.ndarray:
    """A part's seed: its columns z-scored by the run's statistics and summed, in the operations of
    :func:`.scoring.default_seed` (so the same bits)."""
    total: np.ndarray | None = None
    for col, st in zip(columns, stats, strict=True):
        x = z_scored(np.array(col, np.float64), st)
        total = x if total is None else total + x
    assert total is not None
    return total


def _best(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(n, -np.inf), np.full(n, np.iinfo(np.int64).max, np.int64)


def _merge_best(
    best: tuple[np.ndarray, np.ndarray], key: np.ndarray, other: np.ndarray, seed: np.ndarray
) -> None:
    """Each ``key``'s best pair so far: highest seed, ties to the lowest ``other``."""
    order = np.lexsort((other, -seed, key))
    k = key[order]
    first = np.ones(len(k), dtype=bool)
    first[1:] = k[1:] != k[:-1]
    k, s, o = k[first], seed[order][first], other[order][first]
    cur_s, cur_o = best[0][k], best[1][k]
    better = (s > cur_s) | ((s == cur_s) & (o < cur_o))
    best[0][k[better]] = s[better]
    best[1][k[better]] = o[better]


def _reciprocal_best(
    parts: Sequence[_Part], seeds: Sequence[np.ndarray], n_a: int, n_b: int
) -> list[np.ndarray]:
    """Per part the mask of pairs that are the best pair of both their products (as
    :func:`.scoring.reciprocal_best` over the region pair's pairs in ``(a, b)`` order)."""
    best_a, best_b = _best(n_a), _best(n_b)
    for p, s in zip(parts, seeds, strict=True):
        _merge_best(best_a, p.ia, p.ib, s)
        _merge_best(best_b, p.ib, p.ia, s)
    return [(best_a[1][p.ia] == p.ib) & (best_b[1][p.ib] == p.ia) for p in parts]


def _negatives(parts: Sequence[_Part], pos: Sequence[np.ndarray], n_a: int, n_b: int) -> list[np.ndarray]:
    """The other candidates of products with a positive pair (:func:`.scoring.training_masks`)."""
    touched_a, touched_b = np.zeros(n_a, bool), np.zeros(n_b, bool)
    for p, m in zip(parts, pos, strict=True):
        touched_a[p.ia[m]] = True
        touched_b[p.ib[m]] = True
    return [~m & (touched_a[p.ia] | touched_b[p.ib]) for p, m in zip(parts, pos, strict=True)]


def _fit_rows(
    parts: _Parts,
    features: Sequence[str],
    pos: Mapping[CandidateShard, np.ndarray],
    neg: Mapping[CandidateShard, np.ndarray],
) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows :func:`.pipeline._fit_rows` picks: the masked pairs in the one task's order (region
    pair, then side-a product, then side-b product), beyond :data:`.scoring.MAX_FIT_ROWS` the same
    seeded sample of them. A row's place in that order is its region pair's offset, its side-a
    product's offset (masked rows of lower products, every part counted) and its place among its
    product's rows (all in its part)."""
    ranks: dict[CandidateShard, np.ndarray] = {}
    offset = 0
    for (ra, _), pair in parts.pairs.items():
        pair_parts = pair.parts
        counts = np.zeros(parts.products[ra], np.int64)
        for p in pair_parts:
            counts += np.bincount(p.ia[pos[p.shard] | neg[p.shard]], minlength=len(counts))
        start = offset + np.cumsum(counts) - counts
        for p in pair_parts:
            rows = np.flatnonzero(pos[p.shard] | neg[p.shard])
            order = np.lexsort((p.ib[rows], p.ia[rows]))
            a = p.ia[rows][order]
            within = np.arange(len(a)) - np.searchsorted(a, a, side="left")
            rank = np.empty(len(rows), np.int64)
            rank[order] = start[a] + within
            ranks[p.shard] = rank
        offset += int(counts.sum())
    chosen = np.arange(offset)
    if offset > MAX_FIT_ROWS:
        chosen = np.sort(np.random.default_rng(0).choice(offset, MAX_FIT_ROWS, replace=False))
    frames, ys, at = [], [], []
    for p in parts.all():
        rows = np.flatnonzero(pos[p.shard] | neg[p.shard])
        keep = np.isin(ranks[p.shard], chosen, assume_unique=True)
        rows, rank = rows[keep], ranks[p.shard][keep]
        frames.append(parts.features(p, features).iloc[rows])
        ys.append(pos[p.shard][rows].astype(np.int8))
        at.append(rank)
    order = np.argsort(np.concatenate(at), kind="stable")
    feats = pd.concat(frames, ignore_index=True).iloc[order].reset_index(drop=True)
    return feats, np.concatenate(ys)[order]


def _corroborate(parts: _Parts) -> None:
    """Each part's third-region support (:func:`.scoring.corroboration`) from every region pair's
    rows and pass-one probabilities (read in place), then the heap it used handed back."""
    blocks = [PairBlock(ra, rb, pair.ia, pair.ib, score=pair.p1) for (ra, rb), pair in parts.pairs.items()]
    for pair, triangle in zip(parts.pairs.values(), corroboration(blocks), strict=True):
        lo = 0
        for p in pair.parts:
            p.triangle = triangle[lo : lo + len(p.ia)]
            lo += len(p.ia)
    release_freed_memory()


def _predict(scorer: PairScorer, feats: pd.DataFrame) -> np.ndarray:
    return scorer.predict(feats) if len(feats) else np.zeros(0)
