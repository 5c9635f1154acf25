"""Incremental matching: score only the products that changed since the last run, and re-decide only
the part of the candidate graph they touch (docs/MATCH_STATE.md).

A nightly run continues from the :class:`.context.MatchContext` the last run left: the same scorers,
threshold and catalog statistics (region means, neighbourhood radii, n-gram and sentence document
frequencies, evidence IDF), so a pair scored tonight scores as it would have in that run. Then:

1. **Changes**: a product is new, edited (its text or content hash differs) or removed, against the
   context's products. Everything else is unchanged and keeps its scored pairs.
2. **Candidates** for the changed products only: each one's top-``k`` in every other region (the
   whole region, exact), plus the unchanged products that would now list it among their top-``k``
   (its similarity reaches their stored ``k``-th; the reverse neighbours of the full run).
3. **Scores** of those pairs with the frozen statistics and both frozen scorers (the third-region
   support reads the kept pairs' pass-one probabilities as well).
4. **Decisions**: the one-to-one and group rules run again, with the full run's code, on every
   connected part of the over-threshold graph that holds a changed product or lost a pair; so a
   changed product may displace a weaker match, the displaced product is re-matched in the same
   solve, and a removed product releases its partners. Every other decision is kept as it was.

What a full run would do differently: it refits the scorers and the threshold and recomputes the
statistics on the new catalog, and an unchanged product whose old neighbour was removed would take
its next neighbour as a candidate (here it keeps its remaining ones). Hence a change of model,
parameters or regions forces a full run (:func:`.state.full_run_reason`), and ``bench/`` measures
how far the two drift apart (agreement of accepted pairs).
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..sentences import SentenceCache, SentenceVectors
from .alignment import center_sentences, frozen_sentence_weights, sentence_alignment
from .blocks import PairBlock, concat_blocks, feature_frame
from .candidates import DEFAULT_BLOCK_COLS, DEFAULT_BLOCK_ROWS, candidate_pairs
from .canonical import (
    TextSets,
    canonical_order,
    canonical_table,
    pair_cosine,
    permute_sentences,
)
from .context import (
    MatchContext,
    RegionContext,
    context_edges,
    neighbour_figures,
    scorer_from_state,
    text_keys,
)
from .data import CatalogData, RegionTable, product_offsets
from .evaluate import (
    apply_group_rule,
    evaluate_pairs,
    judges_for,
    pair_verdicts,
    threshold_sweep,
)
from .evidence import EVIDENCE_COLUMNS, extract
from .groups import build_groups
from .inputs import is_store, read_inputs
from .lexical import frozen_counts
from .pipeline import _duplicates, _labels, _pairs_table, _unmatched, center_region, corroborated, link_block
from .provenance import reproducibility_record
from .region_search import region_digest
from .result import MatchResult
from .scoring import corroboration, pair_features
from .sorted_lookup import positions

logger = logging.getLogger(__name__)

#: Feature columns a kept pair carries from the run that scored it (the pairs table's).
FEATURE_COLUMNS = ("cosine", "csls", "lexical", "sentences", *EVIDENCE_COLUMNS, "ev_triangle")
_TIE_NOTE = re.compile(r"^ambiguous: tie with [^;]*\(same score\)(; )?")


class FullRunRequired(RuntimeError):
    """The context cannot be continued from (regions or sentence vectors differ); the message says why."""


@dataclass(frozen=True)
class CatalogChanges:
    """SKUs per region that are new, edited or removed since the context's run."""

    new: dict[str, list[str]]
    edited: dict[str, list[str]]
    removed: dict[str, list[str]]

    def counts(self) -> dict[str, int]:
        return {
            kind: sum(len(v) for v in getattr(self, kind).values()) for kind in ("new", "edited", "removed")
        }

    def __bool__(self) -> bool:
        return any(self.counts().values())


def _compare(table: RegionTable, keys: np.ndarray, ctx: RegionContext) -> tuple[np.ndarray, np.ndarray]:
    """Per current row: its row in the context (-1 when new) and whether it is unchanged."""
    old = ctx.rows_of(table.skus)
    found = old >= 0
    safe = np.where(found, old, 0)
    same = found & (ctx.text_key[safe] == keys) if len(ctx) else found
    hashes = table.fields.get("content_hash")
    if hashes is not None and len(ctx):
        stored = ctx.content_hash[safe]
        same &= np.fromiter(
            (h is None or s is None or h == s for h, s in zip(hashes, stored, strict=True)), bool, len(hashes)
        )
    return old, same


def catalog_changes(data: CatalogData, context: MatchContext) -> CatalogChanges:
    """What changed in canonical tables ``data`` since the run that left ``context``."""
    new, edited, removed = {}, {}, {}
    for r, t in data.items():
        ctx = context.tables[r]
        old, same = _compare(t, text_keys(t.texts), ctx)
        skus = np.asarray(t.skus, dtype=object)
        new[r] = skus[old < 0].tolist()
        edited[r] = skus[(old >= 0) & ~same].tolist()
        present = np.zeros(len(ctx), dtype=bool)
        present[old[old >= 0]] = True
        removed[r] = ctx.skus[~present].tolist()
    return CatalogChanges(new, edited, removed)


def _subset(table: RegionTable, rows: np.ndarray) -> RegionTable:
    return RegionTable(
        region=table.region,
        skus=[table.skus[i] for i in rows],
        texts=[table.texts[i] for i in rows],
        vectors=table.vectors[rows],
        fields={name: [col[i] for i in rows] for name, col in table.fields.items()},
    )


def _carried(values: np.ndarray, old: np.ndarray, same: np.ndarray) -> np.ndarray:
    """A per-product context array on the current rows (NaN for changed products)."""
    out = np.full(len(old), np.nan)
    out[same] = values[old[same]]
    return out


def _take_products(sv: SentenceVectors, rows: np.ndarray) -> SentenceVectors:
    """The sentences of products ``rows``, one row per occurrence."""
    counts = sv.counts()[rows]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    occ = np.concatenate([np.arange(sv.offsets[i], sv.offsets[i + 1]) for i in rows]) if len(rows) else []
    occ = np.asarray(occ, dtype=np.int64)
    return SentenceVectors(
        offsets, sv.take(sv.rows()[occ]) if len(occ) else np.zeros((0, sv.vectors.shape[1]))
    )


class _Sentences:
    """Centred, frozen-weighted sentence vectors of a few products per region (or none at all)."""

    def __init__(
        self,
        mapping: Mapping[str, SentenceVectors] | None,
        cache: SentenceCache | None,
        data: CatalogData,
        context: MatchContext,
    ) -> None:
        self.data, self.context = data, context
        self.mapping = None if mapping is None else dict(mapping)
        self.cache = cache if mapping is None else None

    @property
    def available(self) -> bool:
        return self.mapping is not None or self.cache is not None

    def of(self, region: str, rows: np.ndarray) -> SentenceVectors:
        texts = [self.data[region].texts[i] for i in rows]
        if self.mapping is not None:
            sv = _take_products(self.mapping[region], rows)
        else:
            assert self.cache is not None
            found = self.cache.vectors_for(texts)
            if found is None:
                raise FullRunRequired(
                    f"sentence cache lacks sentences of region {region!r}'s changed products"
                )
            sv = found
        ctx = self.context.tables[region]
        sv = frozen_sentence_weights(texts, sv, ctx.sent_df_of, len(self.data[region]))
        return center_sentences(sv, mean=ctx.sent_mean)


def match_incremental(
    store_or_data: Any,
    context: MatchContext,
    *,
    sentences: Mapping[str, SentenceVectors] | Literal["auto"] | None = "auto",
    labels: Any = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    block_cols: int = DEFAULT_BLOCK_COLS,
    model: str | None = None,
    collection: str | None = None,
    model_fingerprint: str | None = None,
) -> MatchResult:
    """Continue the match ``context`` records on the current catalog (see the module docstring).

    Args:
        store_or_data: a store (read with :func:`.inputs.read_inputs`) or in-memory tables.
        context: what the last run left (:attr:`.MatchResult.context`).
        sentences: as :func:`.pipeline.match_catalog`'s; in-memory vectors follow the tables' rows.
        labels: as :func:`.pipeline.match_catalog`'s, for evaluation only (the scorer is frozen).

    Returns:
        MatchResult over the whole catalog (kept and new pairs), with ``summary["incremental"]`` and
        the context the next run continues from.

    Raises:
        FullRunRequired: the regions differ from the context's, or sentence vectors it was scored
            with are not available.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    store = store_or_data if is_store(store_or_data) else None
    regions = list(context.regions)
    available = sorted(store.regions() if store is not None else dict(store_or_data))
    # a run over all regions (``regions`` None) must see them all again; one over chosen ones, those
    if any(r not in available for r in regions) or (
        context.parameters.get("regions") is None and available != sorted(regions)
    ):
        raise FullRunRequired(f"regions changed from {sorted(regions)} to {available}")
    inputs = read_inputs(store_or_data, regions, sentences if isinstance(sentences, Mapping) else None)
    collection = collection or inputs.collection
    data = inputs.data
    vector_digests = {r: region_digest(data[r]) for r in regions}
    mapping = None
    if inputs.sentences is not None:
        mapping = {
            r: permute_sentences(sv, canonical_order(data[r].skus)) for r, sv in inputs.sentences.items()
        }
    cache = (
        SentenceCache.for_store(store)
        if sentences == "auto" and store is not None and hasattr(store, "vector_name")
        else None
    )
    data = {r: canonical_table(data[r]) for r in regions}
    params = context.parameters
    k = int(params.get("k") or 10)
    method = str(params.get("method") or "hungarian")
    allow_same_region = bool(params.get("allow_same_region"))
    threshold = float(context.threshold)
    text_sets = {r: TextSets.of(t.texts) for r, t in data.items()}
    keys = {r: text_keys(t.texts) for r, t in data.items()}
    compared = {r: _compare(data[r], keys[r], context.tables[r]) for r in regions}
    old_rows = {r: c[0] for r, c in compared.items()}
    same = {r: c[1] for r, c in compared.items()}
    changes = catalog_changes(data, context)
    changed = {r: np.flatnonzero(~same[r]) for r in regions}
    centred = {
        r: center_region(t, context.tables[r].mean) if context.tables[r].mean is not None else t
        for r, t in data.items()
    }
    sent = _Sentences(mapping, cache, data, context) if context.sentences else None
    if sent is not None and not sent.available and any(len(c) for c in changed.values()):
        raise FullRunRequired("the last run scored sentence alignment, and no sentence vectors are given")
    timings["load"] = time.perf_counter() - t0

    # -- candidates of the changed products, and their own neighbourhood figures
    t0 = time.perf_counter()
    radius = {
        r: {o: _carried(context.tables[r].radius[o], old_rows[r], same[r]) for o in regions if o != r}
        for r in regions
    }
    floor = {
        r: {o: _carried(context.tables[r].floor[o], old_rows[r], same[r]) for o in regions if o != r}
        for r in regions
    }
    found: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for ra, rb in itertools.combinations(regions, 2):
        parts_a, parts_b = [], []
        for q, o in ((ra, rb), (rb, ra)):
            rows = changed[q]
            if not len(rows) or not len(data[o]):
                continue
            iq, io, neigh = candidate_pairs(
                _subset(centred[q], rows),
                centred[o],
                k,
                block_rows=block_rows,
                block_cols=block_cols,
                both=False,
            )
            radius[q][o][rows], floor[q][o][rows] = neighbour_figures(neigh["a"])
            rq, ro = _reverse_neighbours(
                centred[q].vectors, rows, centred[o].vectors, floor[o][q], block_cols
            )
            iq, io = np.concatenate([rows[iq], rq]), np.concatenate([io, ro])
            parts_a.append(iq if q == ra else io)
            parts_b.append(io if q == ra else iq)
        if parts_a:
            width = max(len(data[rb]), 1)
            key = np.unique(np.concatenate(parts_a) * width + np.concatenate(parts_b))
            found[(ra, rb)] = (key // width, key % width)
    for r in regions:  # products with no other region to search keep finite figures
        for o in radius[r]:
            radius[r][o] = np.nan_to_num(radius[r][o], nan=0.0)
            floor[r][o] = np.nan_to_num(floor[r][o], nan=-np.inf)
    timings["candidates"] = time.perf_counter() - t0

    # -- features with the frozen statistics
    t0 = time.perf_counter()
    new_blocks = []
    for (ra, rb), (ia, ib) in found.items():
        rows_a, ia_s = np.unique(ia, return_inverse=True)
        rows_b, ib_s = np.unique(ib, return_inverse=True)
        ev = {}
        lex = {}
        for r, rows in ((ra, rows_a), (rb, rows_b)):
            t, ctx = data[r], context.tables[r]
            ev[r] = [
                extract(t.texts[i], title=t.get("title", i), brand=t.get("brand", i), gtin=t.get("gtin", i))
                for i in rows
            ]
            lex[r] = frozen_counts([t.texts[i] for i in rows], ctx.lex_keys, ctx.lex_df, len(t))
        feats, explain = pair_features(
            centred[ra].vectors[rows_a],
            centred[rb].vectors[rows_b],
            ia_s,
            ib_s,
            radius[ra][rb][rows_a][:, None],
            radius[rb][ra][rows_b][:, None],
            (lex[ra], lex[rb]),
            ev[ra],
            ev[rb],
            context.idf,
        )
        if sent is not None:
            feats["sentences"] = sentence_alignment(sent.of(ra, rows_a), sent.of(rb, rows_b), ia_s, ib_s)
        new_blocks.append(PairBlock(ra, rb, ia, ib, feats, explain))
    timings["features"] = time.perf_counter() - t0

    # -- the kept pairs: both products unchanged
    t0 = time.perf_counter()
    kept_blocks, seeds = _kept_pairs(context, data, old_rows, same, threshold)
    for r in regions:
        seeds.append(product_offsets(data)[r] + changed[r])

    # -- scores with the frozen scorers
    scorer1 = scorer_from_state(context.scorer1)
    scorer2 = scorer_from_state(context.scorer2)
    assert scorer1 is not None, "a match context always has its pass-one scorer"
    for blk in new_blocks:
        blk.p1 = scorer1.predict(blk.feats) if len(blk.ia) else np.zeros(0)
        blk.score = blk.p1
    if scorer2 is not None and new_blocks:
        paths = []
        for ra, rb in itertools.combinations(regions, 2):
            own = [b for b in (*kept_blocks, *new_blocks) if b.key == (ra, rb)]
            paths.append(
                PairBlock(
                    ra,
                    rb,
                    np.concatenate([b.ia for b in own]) if own else np.zeros(0, np.int64),
                    np.concatenate([b.ib for b in own]) if own else np.zeros(0, np.int64),
                    score=np.concatenate([b.p1 for b in own]) if own else np.zeros(0),
                )
            )
        for blk, tri in zip(new_blocks, corroboration(paths, targets=new_blocks), strict=True):
            blk.feats["ev_triangle"] = tri
            blk.score = scorer2.predict(blk.feats) if len(blk.ia) else np.zeros(0)
            blk.explain = corroborated(blk.explain, tri)
    timings["scoring"] = time.perf_counter() - t0

    # -- decisions: re-solve the touched parts of the over-threshold graph
    t0 = time.perf_counter()
    blocks = _merge_blocks(regions, kept_blocks, new_blocks)
    affected = _affected(blocks, data, seeds, threshold)
    redecided = _redecide(blocks, affected, data, text_sets, threshold, method, allow_same_region)
    timings["assign"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pairs, pid_a, pid_b = _pairs_table(blocks, data, threshold, extra=("p1",))
    is_match = (pairs["decision"] == "match").to_numpy()
    matched = pairs.loc[is_match, ["region_a", "sku_a", "region_b", "sku_b"]].astype(str)
    edges = list(
        zip(
            *(matched[c].to_numpy() for c in matched.columns),
            pairs["score"].to_numpy()[is_match],
            strict=True,
        )
    )
    groups, _ = build_groups(edges, allow_same_region=allow_same_region)
    unmatched = _unmatched(pairs, data, pid_a, pid_b, threshold)
    duplicates = _duplicates(data, text_sets)
    next_context = MatchContext(
        regions=regions,
        parameters=dict(params),
        threshold=threshold,
        scorer1=context.scorer1,
        scorer2=context.scorer2,
        idf=context.idf,
        tables={
            r: RegionContext(
                skus=np.asarray(data[r].skus, dtype=object),
                text_key=keys[r],
                content_hash=np.asarray(
                    data[r].fields.get("content_hash") or [None] * len(data[r]), dtype=object
                ),
                mean=context.tables[r].mean,
                radius=radius[r],
                floor=floor[r],
                lex_keys=context.tables[r].lex_keys,
                lex_df=context.tables[r].lex_df,
                sent_mean=context.tables[r].sent_mean,
                sent_keys=context.tables[r].sent_keys,
                sent_df=context.tables[r].sent_df,
            )
            for r in regions
        },
        edges=context_edges(pairs),
        sentences=context.sentences,
    )
    del pairs["p1"]
    timings["groups"] = time.perf_counter() - t0

    record = reproducibility_record(
        data,
        params,
        model=model,
        model_fingerprint=model_fingerprint,
        collection=collection,
        vector_digests=vector_digests,
    )
    summary: dict[str, Any] = {
        "model": model,
        "collection": collection,
        "mode": "incremental",
        "threshold": round(threshold, 4),
        "threshold_method": "kept from the last full run",
        "match_share": None,
        "labels_used_for": None,
        "regions": regions,
        "k": k,
        "candidates_path": "exact",
        "method": method,
        "scorer": {"fitted_on": (scorer2 or scorer1).fitted_on, "weights": (scorer2 or scorer1).describe()},
        "counts": {
            f"{blk.ra}|{blk.rb}": {
                "candidates": len(blk.ia),
                "matches": int(blk.accepted.sum()),
            }
            for blk in blocks
        },
        "incremental": {
            **changes.counts(),
            "pairs_scored": int(sum(len(b.ia) for b in new_blocks)),
            "pairs_kept": int(sum(len(b.ia) for b in kept_blocks)),
            "products_redecided": int(affected.sum()),
            "pairs_redecided": int(redecided),
        },
        "timings": {name: round(v, 3) for name, v in timings.items()},
        "counts_duplicates": len(duplicates),
        "reproducibility": record,
        "counts_ambiguous": int(pairs["ambiguous"][pairs["decision"] == "match"].sum()),
    }
    if labels is not None:
        _evaluate(
            summary, pairs, data, labels, method, threshold, allow_same_region, bool(params.get("text_ties"))
        )
    logger.info(
        "incremental match: %s; %d pairs scored, %d products re-decided",
        changes.counts(),
        summary["incremental"]["pairs_scored"],
        summary["incremental"]["products_redecided"],
    )
    return MatchResult(
        pairs=pairs,
        groups=groups,
        unmatched=unmatched,
        summary=summary,
        duplicates=duplicates,
        context=next_context,
    )


def _reverse_neighbours(
    vq: np.ndarray, rows: np.ndarray, vo: np.ndarray, floor_o: np.ndarray, block: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(q, o)`` of changed rows ``rows`` of one region and unchanged products ``o`` of the
    other whose stored ``k``-th similarity ``floor_o[o]`` the changed product reaches: in a full run
    ``o`` would list it among its top-``k``. float32 blocks propose (with a margin far above their
    rounding), :func:`.canonical.pair_cosine` on the grid decides, as the full run's re-rank does."""
    limit = np.where(np.isfinite(floor_o), floor_o, np.inf) - 1e-4
    qv = vq[rows]
    found_q, found_o = [], []
    for c0 in range(0, len(vo), block):
        hit_q, hit_o = np.nonzero(qv @ vo[c0 : c0 + block].T >= limit[None, c0 : c0 + block])
        found_q.append(rows[hit_q])
        found_o.append(hit_o + c0)
    q = np.concatenate(found_q) if found_q else np.zeros(0, np.int64)
    o = np.concatenate(found_o) if found_o else np.zeros(0, np.int64)
    keep = pair_cosine(vq, vo, q, o) >= floor_o[o]
    return q[keep], o[keep]


def _rows(table: RegionTable, skus: np.ndarray) -> np.ndarray:
    """Current row of each SKU in a canonical (SKU-sorted) table, -1 where absent."""
    at, found = positions(np.asarray(table.skus, dtype=object), skus)
    return np.where(found, at, -1).astype(np.int64)


def _rows_of_column(table: RegionTable, column: pd.Series) -> np.ndarray:
    """:func:`_rows` of a SKU column, looked up once per distinct SKU (the pairs' SKU columns are
    categoricals: a million pairs name a few hundred thousand SKUs)."""
    codes, uniques = pd.factorize(
        column.astype(object) if not isinstance(column.dtype, pd.CategoricalDtype) else column
    )
    found = _rows(table, np.asarray(uniques, dtype=object).astype(str).astype(object))
    return np.where(codes >= 0, found[np.maximum(codes, 0)], -1).astype(np.int64)


def _kept_pairs(
    context: MatchContext,
    data: CatalogData,
    old_rows: Mapping[str, np.ndarray],
    same: Mapping[str, np.ndarray],
    threshold: float,
) -> tuple[list[PairBlock], list[np.ndarray]]:
    """The context's pairs whose products are both unchanged, as blocks on the current rows, and
    the product numbers that lost an over-threshold pair (their decisions must be solved again)."""
    edges = context.edges
    offsets = product_offsets(data)
    blocks, seeds = [], []
    ra_col, rb_col = edges["region_a"].astype(str).to_numpy(), edges["region_b"].astype(str).to_numpy()
    for ra, rb in itertools.combinations(context.regions, 2):
        sel = np.flatnonzero((ra_col == ra) & (rb_col == rb))
        part = edges.iloc[sel]
        ia = _rows_of_column(data[ra], part["sku_a"])
        ib = _rows_of_column(data[rb], part["sku_b"])
        ok_a = (ia >= 0) & same[ra][np.maximum(ia, 0)]
        ok_b = (ib >= 0) & same[rb][np.maximum(ib, 0)]
        ok = ok_a & ok_b
        strong_lost = ~ok & (part["score"].to_numpy(np.float64) >= threshold)
        seeds.append(offsets[ra] + ia[strong_lost & ok_a])
        seeds.append(offsets[rb] + ib[strong_lost & ok_b])
        kept = part[ok]
        decision = kept["decision"].astype(str).to_numpy()
        feats = feature_frame(
            {
                c: kept[c].to_numpy(np.float32) if c in kept else np.zeros(len(kept), np.float32)
                for c in FEATURE_COLUMNS
            }
        )
        blocks.append(
            PairBlock(
                ra,
                rb,
                ia[ok],
                ib[ok],
                feats,
                kept["explain"].astype(str).tolist(),
                p1=kept["p1"].to_numpy(np.float64),
                score=kept["score"].to_numpy(np.float64),
                accepted=decision == "match",
                ambiguous=kept["ambiguous"].to_numpy(bool),
                conflict=decision == "conflict",
            )
        )
    return blocks, seeds


def _merge_blocks(
    regions: Sequence[str], kept: Sequence[PairBlock], new: Sequence[PairBlock]
) -> list[PairBlock]:
    """One block per region pair: kept pairs first, then the new ones (undecided, ``new`` True)."""
    out = []
    for ra, rb in itertools.combinations(regions, 2):
        parts = [b for b in (*kept, *new) if b.key == (ra, rb)]
        if parts:
            out.append(concat_blocks(ra, rb, parts))
    return out


def _affected(
    blocks: Sequence[PairBlock], data: CatalogData, seeds: Sequence[np.ndarray], threshold: float
) -> np.ndarray:
    """Per product number: is it in a connected part of the over-threshold graph that a change
    touched (a changed product, or one that lost an over-threshold pair)?"""
    offsets = product_offsets(data)
    total = sum(len(t) for t in data.values())
    src, dst = [], []
    for blk in blocks:
        strong = blk.score >= threshold
        src.append(offsets[blk.ra] + blk.ia[strong])
        dst.append(offsets[blk.rb] + blk.ib[strong])
    s = np.concatenate(src) if src else np.zeros(0, np.int64)
    d = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(s), dtype=np.int8), (s, d)), shape=(total, total)).tocsr()
    _, label = connected_components(graph, directed=False)
    touched = np.zeros(label.max(initial=-1) + 1, dtype=bool)
    seed = np.concatenate(seeds) if seeds else np.zeros(0, np.int64)
    touched[label[seed.astype(np.int64)]] = True
    return touched[label]


def _redecide(
    blocks: list[PairBlock],
    affected: np.ndarray,
    data: CatalogData,
    text_sets: Mapping[str, TextSets],
    threshold: float,
    method: str,
    allow_same_region: bool,
) -> int:
    """Run the one-to-one, tie and group rules again on the affected over-threshold pairs (in place);
    returns how many pairs were decided again."""
    offsets = product_offsets(data)
    chosen: list[np.ndarray] = []
    for blk in blocks:
        rows = np.flatnonzero((blk.score >= threshold) & affected[offsets[blk.ra] + blk.ia])
        chosen.append(rows)
        sub = PairBlock(
            blk.ra,
            blk.rb,
            blk.ia[rows],
            blk.ib[rows],
            explain=[_TIE_NOTE.sub("", blk.explain[i]) for i in rows],
            score=blk.score[rows],
        )
        link_block(sub, data, text_sets, threshold, method)
        accepted, conflict, ambiguous = blk.mask("accepted"), blk.mask("conflict"), blk.mask("ambiguous")
        accepted[rows], conflict[rows], ambiguous[rows] = sub.mask("accepted"), False, sub.mask("ambiguous")
        blk.accepted, blk.conflict, blk.ambiguous = accepted, conflict, ambiguous
        for i, e in zip(rows, sub.explain, strict=True):
            blk.explain[i] = e
    # new pairs below the threshold were never decided: they are neither matches nor conflicts
    for blk in blocks:
        low = blk.mask("new") & (blk.score < threshold)
        blk.accepted, blk.conflict = blk.mask("accepted") & ~low, blk.mask("conflict") & ~low
    table = (
        pd.DataFrame(
            {
                "region_a": np.concatenate(
                    [np.full(len(r), b.ra, dtype=object) for b, r in zip(blocks, chosen, strict=True)]
                ),
                "sku_a": np.concatenate(
                    [
                        np.asarray(data[b.ra].skus, dtype=object)[b.ia[r]]
                        for b, r in zip(blocks, chosen, strict=True)
                    ]
                ),
                "region_b": np.concatenate(
                    [np.full(len(r), b.rb, dtype=object) for b, r in zip(blocks, chosen, strict=True)]
                ),
                "sku_b": np.concatenate(
                    [
                        np.asarray(data[b.rb].skus, dtype=object)[b.ib[r]]
                        for b, r in zip(blocks, chosen, strict=True)
                    ]
                ),
                "score": np.concatenate([b.score[r] for b, r in zip(blocks, chosen, strict=True)]),
            }
        )
        if blocks
        else pd.DataFrame(columns=["region_a", "sku_a", "region_b", "sku_b", "score"])
    )
    first = (
        np.concatenate([b.accepted[r] for b, r in zip(blocks, chosen, strict=True)])
        if blocks
        else np.zeros(0, bool)
    )
    accepted, refused, _ = apply_group_rule(
        table, first, threshold, method, allow_same_region=allow_same_region
    )
    at = 0
    for blk, rows in zip(blocks, chosen, strict=True):
        blk.accepted[rows] = accepted[at : at + len(rows)]
        blk.conflict[rows] = refused[at : at + len(rows)]
        at += len(rows)
    return at


def _evaluate(
    summary: dict[str, Any],
    pairs: pd.DataFrame,
    data: CatalogData,
    labels: Any,
    method: str,
    threshold: float,
    allow_same_region: bool,
    text_ties: bool,
) -> None:
    """Label figures of an incremental run (the labels only evaluate: the scorer is frozen)."""
    lab, note = _labels(labels, data)  # read and checked as a full run reads them
    if not lab:
        summary["labels_note"] = note
        return
    regions = sorted(data)
    judges = judges_for(data, lab, list(itertools.combinations(regions, 2)), text_ties=text_ties)
    sweep = threshold_sweep(pairs, judges, method, allow_same_region=allow_same_region)
    summary["labels_used_for"] = "evaluation"
    summary["metrics"] = evaluate_pairs(
        pairs,
        judges,
        method=method,
        sweep_rows=sweep,
        threshold=threshold,
        allow_same_region=allow_same_region,
    )
    pairs["correct"] = pair_verdicts(pairs, judges)
