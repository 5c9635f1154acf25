"""``match_catalog``: candidates -> evidence -> score -> one-to-one -> groups -> metrics.

Takes either a :class:`~polyglot_catalog.store.CatalogStore`-like object or plain in-memory
:class:`~.data.RegionTable` s, so the same code runs from Airflow, the CLI, tests and benchmarks.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..review.apply import ReviewedPairs
from ..sentences import SentenceCache, SentenceVectors, split_sentences
from .alignment import center_sentences, row_idf, sentence_alignment, sentence_idf, sentence_mean
from .assign import AssignMethod
from .candidates import (
    CANDIDATE_SLACK,
    DEFAULT_BLOCK_COLS,
    DEFAULT_BLOCK_ROWS,
    DEFAULT_HNSW_EF,
    MEMBERS_CAP,
    candidate_pairs,
)
from .canonical import (
    TextSets,
    canonical_order,
    canonical_table,
    permute_sentences,
    prefer_lower_rows,
    snap,
    tied_rivals,
)
from .context import (
    MatchContext,
    RegionContext,
    context_edges,
    neighbour_figures,
    scorer_state,
    sentence_frequencies,
    text_keys,
)
from .data import OPTIONAL_FIELDS, CatalogData, RegionTable
from .evaluate import (
    Labels,
    apply_group_rule,
    calibrate_threshold,
    evaluate_pairs,
    judges_for,
    labels_for,
    labels_from_gtin,
    link_pairs,
    load_labels,
    pair_verdicts,
    threshold_sweep,
)
from .evidence import EVIDENCE_COLUMNS, extract, idf_weights
from .lexical import NgramCounts, ngram_counts
from .provenance import reproducibility_record
from .result import DECISIONS, DUPLICATE_COLUMNS, MatchResult
from .scoring import (
    FEATURES,
    MIN_SELF_TRAINING,
    PairScorer,
    corroboration,
    default_seed,
    pair_features,
    prior_shift_threshold,
    self_training_targets,
)

logger = logging.getLogger(__name__)

#: Weight sentences by their IDF within the region in the alignment feature (see .alignment).
IDF_SENTENCES = True
DEFAULT_THRESHOLD = 0.5  # only when the scorer fell back to hand weights (too little data to fit)
#: Lowest label-free cut. The prior-shift cut is ``1 - pi`` for the estimated share ``pi`` of matches
#: among one-to-one pairs; when every linked pair looks alike, ``pi`` runs to 1 and the cut to 0, so
#: every leftover product would be matched. The floor assumes at least 1 in 20 linked pairs is wrong.
THRESHOLD_FLOOR = 0.05
PAIR_COLUMNS = [
    "region_a",
    "sku_a",
    "region_b",
    "sku_b",
    "score",
    "cosine",
    "decision",
    "ambiguous",
    "csls",
    "lexical",
    "sentences",
    *EVIDENCE_COLUMNS,
    "ev_triangle",
    "explain",
    "text_a",
    "text_b",
]
CandidateSource = Literal["auto", "exact", "qdrant"]
#: ``candidates="auto"`` with a store runs the exact path while the largest region pair has at most
#: this many product pairs (500k x 500k). Why: the matcher holds every vector in memory anyway, and
#: on 2 cores the exact blocked top-k costs ~7 ns per pair (68 s per 100k x 100k pair) against
#: ~1.8 ms per in-process HNSW query (2 x 100k queries: ~360 s per pair, and approximate), so the
#: quadratic path stays the faster one up to roughly half a million products per region.
EXACT_MAX_PAIRS = 500_000 * 500_000


def load_catalog(store: Any, regions: Sequence[str] | None = None, *, batch_size: int = 1024) -> CatalogData:
    """Read active points of ``regions`` (default: all) from a ``CatalogStore`` into memory.

    Raises:
        ValueError: when a requested region has no points.
    """
    available = list(store.regions())
    wanted = available if regions is None else list(regions)
    missing = [r for r in wanted if r not in available]
    if missing:
        raise ValueError(
            f"regions {missing} not in collection {getattr(store, 'collection', '?')!r}; "
            f"available: {available}"
        )
    out: CatalogData = {}
    for region in wanted:
        payloads: list[dict[str, Any]] = []
        blocks: list[np.ndarray] = []
        for batch, vecs in store.scroll_region(region, with_vectors=True, batch_size=batch_size):
            payloads.extend(batch)
            blocks.append(vecs)
        if not payloads:
            raise ValueError(f"region {region!r} has no active points")
        fields = {
            name: [p.get(name) for p in payloads]
            for name in (*OPTIONAL_FIELDS, "content_hash")
            if any(p.get(name) for p in payloads)
        }
        out[region] = RegionTable(
            region,
            [p["sku"] for p in payloads],
            [p.get("text") or "" for p in payloads],
            np.concatenate(blocks),
            fields,
            point_ids=[str(p["id"]) for p in payloads],
        )
        logger.info("loaded %d points of region %s", len(payloads), region)
    return out


def region_mean(table: RegionTable) -> np.ndarray | None:
    """The region's mean vector (None for fewer than two products: nothing to centre)."""
    return table.vectors.mean(axis=0) if len(table) > 1 else None


def center_region(table: RegionTable, mean: np.ndarray | None = None) -> RegionTable:
    """A copy of ``table`` with its mean vector (or ``mean``: an incremental run's frozen one)
    subtracted, re-normalised on construction."""
    mean = region_mean(table) if mean is None else mean
    vec = table.vectors - mean[None, :] if mean is not None else table.vectors
    return replace(table, vectors=vec)  # every other column carried over as it is


def _candidate_path(candidates: str, store: Any, data: CatalogData) -> str:
    """The candidate path ``candidates`` means for these tables (see ``EXACT_MAX_PAIRS``)."""
    if candidates != "auto":
        return candidates
    if store is None:
        return "exact"
    sizes = sorted(len(t) for t in data.values())
    largest = sizes[-1] * sizes[-2] if len(sizes) > 1 else 0
    return "exact" if largest <= EXACT_MAX_PAIRS else "qdrant"


def _is_store(obj: Any) -> bool:
    return hasattr(obj, "scroll_region") and hasattr(obj, "query_region")


def _labelled_targets(
    labels: Labels, ra: str, rb: str, sa: np.ndarray, sb: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    ga = np.array([labels.get((ra, s)) for s in sa], dtype=object)
    gb = np.array([labels.get((rb, s)) for s in sb], dtype=object)
    known = np.array([x is not None and y is not None for x, y in zip(ga, gb, strict=True)], dtype=bool)
    return known, known & (ga == gb)


def match_catalog(
    store_or_data: Any,
    *,
    regions: Sequence[str] | None = None,
    k: int = 10,
    threshold: float | None = None,
    labels: str | Path | pd.DataFrame | Mapping[tuple[str, str], Any] | Literal["gtin"] | None = None,
    method: AssignMethod = "hungarian",
    target_precision: float | None = None,
    allow_same_region: bool = False,
    fit_on_labels: bool = False,
    corroborate: bool = True,
    center: bool = True,
    text_ties: bool = False,
    candidates: CandidateSource = "auto",
    hnsw_ef: int | None = DEFAULT_HNSW_EF,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    block_cols: int = DEFAULT_BLOCK_COLS,
    model: str | None = None,
    collection: str | None = None,
    sentences: Mapping[str, SentenceVectors] | Literal["auto"] | None = "auto",
    model_fingerprint: str | None = None,
    rerank: Callable[[str, str, Sequence[str], Sequence[str]], np.ndarray] | None = None,
    decisions: pd.DataFrame | None = None,
) -> MatchResult:
    """Find the same product across regions.

    Args:
        store_or_data (CatalogStore | Mapping[str, RegionTable]): a store (read with
            :func:`load_catalog`) or in-memory tables keyed by region.
        regions (Sequence[str] | None): regions to match. Defaults to all.
        k (int): nearest neighbours per product and direction. Defaults to 10.
        threshold (float | None): accept pairs with probability ``>= threshold``. Defaults to a
            label-free cut from the score distribution (:func:`.scoring.prior_shift_threshold`:
            the Bayes cut once the scorer's even-odds probabilities are re-based on the estimated
            share of matches among one-to-one pairs); with ``fit_on_labels=True`` (or
            ``target_precision``) and labels, the F1-best (or target-precision) cut on them.
        labels: ``region, sku, group_id`` file/DataFrame/dict, or ``"gtin"`` to derive them.
            Reported against (metrics); fit the scorer and threshold only with ``fit_on_labels``.
        method ("hungarian" | "mutual"): one-to-one rule per region pair. Defaults to "hungarian".
        target_precision (float | None): calibrate to this precision instead of max F1.
        allow_same_region (bool): allow two SKUs of one region in a group. Defaults to False.
        fit_on_labels (bool): fit the scorer and calibrate the threshold on labels. False (the
            default) keeps the matcher label-free, so labels only evaluate and the metrics are
            honest (not fitted on the data they score). Defaults to False.
        corroborate (bool): with 3+ regions, add a second scoring pass with the third-region
            evidence ``ev_triangle``. Defaults to True.
        center (bool): subtract each region's mean vector before comparing: removes the
            language offset multilingual embeddings carry, so cosines compare content. With a
            store, Qdrant's raw neighbours (2k) are re-ranked by the centred vectors. Defaults to True.
        text_ties (bool): count a pair whose text is identical to the true twin's as correct.
        candidates ("auto" | "exact" | "qdrant"): candidate path. "auto" runs the exact blocked
            path unless a store is given and the largest region pair exceeds ``EXACT_MAX_PAIRS``
            product pairs, where it queries Qdrant; the summary's ``candidates_path`` says which ran.
        hnsw_ef (int | None): HNSW search beam of the Qdrant path (``None``: the collection's
            default). Defaults to ``DEFAULT_HNSW_EF``.
        block_rows (int), block_cols (int): block sizes of the exact path (memory bound).
        model (str | None), collection (str | None), model_fingerprint (str | None): recorded in
            the summary; with the library versions, every parameter and a fingerprint of the input
            they make ``summary["reproducibility"]``, so two reports can be compared.
        sentences: per-region sentence vectors (:class:`.SentenceVectors`, rows in table order) for
            the ``sentences`` alignment feature. "auto" (the default) reads them from the store's
            sentence cache (:mod:`polyglot_catalog.sentences`) when every product's sentences are
            there; None, or in-memory tables without a mapping, match without it.
        rerank: optional pair scorer ``(region_a, region_b, texts_a, texts_b) -> scores`` (one per
            candidate pair among either product's top ``RERANK_TOP`` by cosine, e.g. a cross-encoder
            re-ranker, :class:`..tuning.rerank.CachedReranker`):
            its score becomes the ``rerank`` feature and joins the self-training seed.
        decisions (pd.DataFrame | None): reviewed pairs ``region_a, sku_a, region_b, sku_b,
            decision`` (``match`` / ``no_match``; optional ``hash_a, hash_b`` so a decision lapses
            when a text changes): must-links and cannot-links, and labels for the scorer and the
            label-free threshold (docs/REVIEW.md). Defaults to None.

    Returns:
        MatchResult: pairs, groups, unmatched and a JSON-safe summary (see :mod:`.result`).

    Raises:
        ValueError: on bad arguments (the message names the value and the options).
    """
    parameters = {
        "regions": regions,
        "k": k,
        "threshold": threshold,
        "labels": None
        if labels is None
        else (labels if isinstance(labels, str) else str(type(labels).__name__)),
        "method": method,
        "target_precision": target_precision,
        "allow_same_region": allow_same_region,
        "fit_on_labels": fit_on_labels,
        "corroborate": corroborate,
        "center": center,
        "text_ties": text_ties,
        "candidates": candidates,
        "hnsw_ef": hnsw_ef,
        "block_rows": block_rows,
        "block_cols": block_cols,
        "sentences": sentences if sentences is None or isinstance(sentences, str) else "in-memory",
        "rerank": rerank is not None,
        "candidate_slack": CANDIDATE_SLACK,
        "members_cap": MEMBERS_CAP,
        "min_self_training": MIN_SELF_TRAINING,
        "threshold_floor": THRESHOLD_FLOOR,
        "decisions": None if decisions is None else len(decisions),
    }
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1]; got {threshold}")
    if candidates not in ("auto", "exact", "qdrant"):
        raise ValueError(f"candidates must be one of ('auto', 'exact', 'qdrant'); got {candidates!r}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    store = store_or_data if _is_store(store_or_data) else None
    if store is not None:
        data = load_catalog(store, regions)
        collection = collection or getattr(store, "collection", None)
    else:
        data = dict(store_or_data)
        if regions is not None:
            missing = [r for r in regions if r not in data]
            if missing:
                raise ValueError(f"regions {missing} not in the data; available: {sorted(data)}")
            data = {r: data[r] for r in regions}
    if candidates == "qdrant" and store is None:
        raise ValueError("candidates='qdrant' needs a CatalogStore; pass one or use candidates='exact'")
    # the canonical row order and one vector per text (see .canonical): no decision below may
    # depend on file order, shard split or last-bit differences between identical listings
    if isinstance(sentences, Mapping):
        sentences = {
            r: permute_sentences(sv, canonical_order(data[r].skus)) if r in data else sv
            for r, sv in sentences.items()
        }
    data = {r: canonical_table(t) for r, t in data.items()}
    text_sets = {r: TextSets.of(t.texts) for r, t in data.items()}
    record = reproducibility_record(
        data, parameters, model=model, model_fingerprint=model_fingerprint, collection=collection
    )
    path = _candidate_path(candidates, store, data)
    query_store = store if path == "qdrant" else None
    region_names = sorted(data)
    sent, sent_stats = _sentence_vectors(sentences, store, data)
    sentences = None  # centred copies made: the caller's rows are freed unless it keeps them
    # the stored (uncentred) vectors serve only the Qdrant path's re-rank; the exact path lets them go
    raw_vectors = {r: t.vectors for r, t in data.items()} if center and query_store is not None else None
    means = {r: region_mean(t) for r, t in data.items()} if center else {}
    keys = {r: text_keys(t.texts) for r, t in data.items()}
    hashes = {r: list(t.fields.get("content_hash") or [None] * len(t)) for r, t in data.items()}
    if center:
        data = {r: center_region(t, means[r]) for r, t in data.items()}
    reviewed = ReviewedPairs.of(decisions, data) if decisions is not None else None
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    evid = {
        r: [
            extract(t.texts[i], title=t.get("title", i), brand=t.get("brand", i), gtin=t.get("gtin", i))
            for i in range(len(t))
        ]
        for r, t in data.items()
    }
    idf = idf_weights(itertools.chain.from_iterable(evid.values()))
    timings["evidence"] = time.perf_counter() - t0

    blocks: list[dict[str, Any]] = []
    t_cand = t_feat = 0.0
    region_pairs = list(itertools.combinations(region_names, 2))
    ngrams: dict[str, NgramCounts] = {}  # each region hashed once, freed after its last pair
    lex_stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    figures: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}  # (region, other) -> radius, floor
    for step, (ra, rb) in enumerate(region_pairs):
        a, b = data[ra], data[rb]
        t1 = time.perf_counter()
        ia, ib, neigh = candidate_pairs(
            a,
            b,
            k,
            store=query_store,
            raw=None if raw_vectors is None else (raw_vectors[ra], raw_vectors[rb]),
            hnsw_ef=hnsw_ef,
            block_rows=block_rows,
            block_cols=block_cols,
        )
        if reviewed is not None:
            ia, ib = reviewed.with_must_links(ra, rb, ia, ib)
        t2 = time.perf_counter()
        figures[(ra, rb)], figures[(rb, ra)] = neighbour_figures(neigh["a"]), neighbour_figures(neigh["b"])
        for r in (ra, rb):
            if r not in ngrams:
                ngrams[r] = ngram_counts(data[r].texts)
                lex_stats[r] = (ngrams[r].keys, ngrams[r].df)
        feats, explain = pair_features(
            a.vectors,
            b.vectors,
            ia,
            ib,
            neigh["a"],
            neigh["b"],
            (ngrams[ra], ngrams[rb]),
            evid[ra],
            evid[rb],
            idf,
        )
        for r in (ra, rb):
            if not any(r in later for later in region_pairs[step + 1 :]):
                del ngrams[r]
        if sent is not None:
            feats["sentences"] = sentence_alignment(sent[ra], sent[rb], ia, ib)
        if rerank is not None:
            feats["rerank"] = _rerank_feature(rerank, ra, rb, a.texts, b.texts, ia, ib, feats["cosine"])
        t_cand += t2 - t1
        t_feat += time.perf_counter() - t2
        blocks.append(
            {
                "ra": ra,
                "rb": rb,
                "ia": ia,
                "ib": ib,
                "feats": feats,
                "explain": explain,
                "sa": np.asarray(a.skus, dtype=object)[ia],
                "sb": np.asarray(b.skus, dtype=object)[ib],
                "reviewed": None if reviewed is None else reviewed.targets(ra, rb, ia, ib),
            }
        )
    timings["candidates"], timings["features"] = t_cand, t_feat
    del evid, raw_vectors  # per-product evidence objects (~2 KB each): free them before scoring

    t0 = time.perf_counter()
    lab: Labels | None = None
    labels_note: str | None = None
    if labels is not None:
        lab = labels_from_gtin(data) if isinstance(labels, str) and labels == "gtin" else load_labels(labels)
        lab, labels_dropped = labels_for(lab, data)
        if not lab:  # e.g. the demo's labels on another collection: no figures rather than wrong ones
            logger.warning("labels name none of the matched SKUs (%d dropped): not scored", labels_dropped)
            labels_note = f"labels name none of the matched SKUs ({labels_dropped} labels); run not scored"
    fit_lab = lab if fit_on_labels else None
    features = (*FEATURES, "sentences") if sent is not None else FEATURES
    if rerank is not None:
        features = (*features, "rerank")
    del sent
    scorer = _fit_and_score(blocks, features, fit_lab, seed=None)
    scorer1, scorer2 = scorer, None
    for blk in blocks:
        blk["p1"] = blk["score"]
    if corroborate and len(region_names) > 2 and blocks:
        # second pass: a pair both of whose products match the same SKU of a third region is
        # corroborated (identity is transitive); refit with that evidence. The seed adds the
        # third-region support to pass one's log-odds (both z-scored, as in pass one): a target
        # that is a function of the old features alone would teach the new one nothing.
        triangles = corroboration(blocks)
        for blk, tri in zip(blocks, triangles, strict=True):
            blk["feats"]["ev_triangle"] = tri
        seed = default_seed(
            np.concatenate([_log_odds(blk["score"]) for blk in blocks]), np.concatenate(triangles)
        )
        bounds = np.cumsum([0, *(len(blk["ia"]) for blk in blocks)])
        scorer = _fit_and_score(
            blocks,
            (*features, "ev_triangle"),
            fit_lab,
            seed=[seed[lo:hi] for lo, hi in itertools.pairwise(bounds)],
        )
        scorer2 = scorer
        for blk in blocks:
            blk["explain"] = [
                (
                    "; ".join(filter(None, (e, f"corroborated via a third region ({t:.2f})")))
                    if t >= 0.5
                    else e
                )
                for e, t in zip(blk["explain"], blk["feats"]["ev_triangle"], strict=True)
            ]
    timings["scoring"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for blk in blocks:
        blk["accepted"] = np.zeros(len(blk["ia"]), dtype=bool)
    judges = judges_for(data, lab, [(b["ra"], b["rb"]) for b in blocks], text_ties=text_ties) if lab else {}
    sweep_rows: list[dict[str, float]] | None = None
    threshold_method = "given"
    match_share: float | None = None
    if lab:
        sweep_rows = threshold_sweep(
            _pairs_table(blocks, data, 1.0)[0], judges, method, allow_same_region=allow_same_region
        )
        if threshold is None and (fit_on_labels or target_precision is not None):
            threshold = calibrate_threshold(sweep_rows, target_precision)
            threshold_method = "labels: " + ("target precision" if target_precision else "F1-best")
    if threshold is None:
        threshold, match_share = _auto_threshold(blocks, scorer, method)
        threshold_method = (
            "prior-shift EM"
            if match_share is not None
            else f"default 0.5 (fewer than {MIN_SELF_TRAINING} reciprocal-best pairs to self-train on)"
        )
    if reviewed is not None:
        if threshold_method == "prior-shift EM":
            threshold = reviewed.threshold(blocks, threshold)
            threshold_method += " + reviewed pairs"
        reviewed.force(blocks)
    for blk in blocks:
        accepted = link_pairs(blk["ia"], blk["ib"], blk["score"], threshold, method)
        ts_a, ts_b = text_sets[blk["ra"]], text_sets[blk["rb"]]
        blk["accepted"] = prefer_lower_rows(blk["ia"], blk["ib"], blk["score"], accepted, ts_a, ts_b)
        _mark_ties(blk, data)
    timings["assign"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pairs, pid_a, pid_b = _pairs_table(blocks, data, threshold, extra=("p1",))
    for blk in blocks:  # the table holds them now; per-block copies would double the peak below
        for key in ("feats", "explain", "sa", "sb"):
            blk.pop(key, None)
    first = (pairs["decision"] == "match").to_numpy()
    accepted, refused, groups = apply_group_rule(
        pairs, first, threshold, method, allow_same_region=allow_same_region
    )
    pairs.loc[accepted & ~first, "decision"] = "match"  # freed products matched again
    pairs.loc[refused, "decision"] = "conflict"
    unmatched = _unmatched(pairs, data, pid_a, pid_b, threshold)
    duplicates = _duplicates(data, text_sets)
    del pid_a, pid_b
    context = MatchContext(
        regions=region_names,
        parameters={k: v for k, v in record.get("parameters", parameters).items()},
        threshold=float(threshold),
        scorer1=scorer_state(scorer1),
        scorer2=scorer_state(scorer2),
        idf=idf,
        tables={
            r: RegionContext(
                skus=np.asarray(data[r].skus, dtype=object),
                text_key=keys[r],
                content_hash=np.asarray(hashes[r], dtype=object),
                mean=means.get(r),
                radius={o: figures[(r, o)][0] for o in region_names if (r, o) in figures},
                floor={o: figures[(r, o)][1] for o in region_names if (r, o) in figures},
                lex_keys=lex_stats.get(r, (np.zeros(0, np.int32), np.zeros(0, np.int32)))[0],
                lex_df=lex_stats.get(r, (np.zeros(0, np.int32), np.zeros(0, np.int32)))[1],
                **sent_stats.get(r, {}),
            )
            for r in region_names
        },
        edges=context_edges(pairs),
        sentences=bool(sent_stats),
    )
    del pairs["p1"]
    timings["groups"] = time.perf_counter() - t0

    summary: dict[str, Any] = {
        "model": model,
        "collection": collection,
        "threshold": round(float(threshold), 4),
        "threshold_method": threshold_method,
        "match_share": round(match_share, 4) if match_share is not None else None,
        "labels_used_for": (
            "fitting and evaluation"
            if fit_on_labels
            else ("threshold and evaluation" if threshold_method.startswith("labels") else "evaluation")
        )
        if lab
        else None,
        "regions": region_names,
        "k": k,
        "candidates_path": path,
        "method": method,
        "scorer": {"fitted_on": scorer.fitted_on, "weights": scorer.describe()},
        "counts": {
            f"{blk['ra']}|{blk['rb']}": {
                "candidates": len(blk["ia"]),
                "matches": int(
                    (
                        (pairs["region_a"] == blk["ra"])
                        & (pairs["region_b"] == blk["rb"])
                        & (pairs["decision"] == "match")
                    ).sum()
                ),
            }
            for blk in blocks
        },
        "timings": {name: round(v, 3) for name, v in timings.items()},
        "counts_duplicates": len(duplicates),
        "reproducibility": record,
        "counts_ambiguous": int(pairs["ambiguous"][pairs["decision"] == "match"].sum()),
    }
    if lab:
        summary["metrics"] = evaluate_pairs(
            pairs,
            judges,
            method=method,
            sweep_rows=sweep_rows,
            threshold=float(threshold),
            allow_same_region=allow_same_region,
        )
        pairs["correct"] = pair_verdicts(pairs, judges)  # right / wrong / <NA> (unlabelled), per pair
    if labels_note:
        summary["labels_note"] = labels_note
    if reviewed is not None:
        summary["review"] = reviewed.summary(blocks)
    return MatchResult(
        pairs=pairs,
        groups=groups,
        unmatched=unmatched,
        summary=summary,
        duplicates=duplicates,
        # an incremental run continues with the same scorer: without a fitted one there is nothing to continue
        context=None if reviewed is not None or rerank is not None or context.scorer1 is None else context,
    )


def _mark_ties(blk: dict[str, Any], data: CatalogData) -> None:
    """Flag accepted pairs that a tie alone decided (``blk["ambiguous"]``) and name the rival."""
    rival = tied_rivals(blk["ia"], blk["ib"], blk["score"], blk["accepted"])
    blk["ambiguous"] = rival >= 0
    if not blk["ambiguous"].any():
        return
    a, b = data[blk["ra"]], data[blk["rb"]]
    explain = list(blk["explain"])
    for i in np.flatnonzero(blk["ambiguous"]):
        j = rival[i]
        other = (
            f"{b.region}/{b.skus[blk['ib'][j]]}"
            if blk["ia"][j] == blk["ia"][i]
            else (f"{a.region}/{a.skus[blk['ia'][j]]}")
        )
        note = f"ambiguous: tie with {other} (same score)"
        explain[i] = f"{note}; {explain[i]}" if explain[i] else note
    blk["explain"] = explain


def _duplicates(data: CatalogData, text_sets: Mapping[str, TextSets]) -> pd.DataFrame:
    """SKUs whose text equals another SKU's in the same region (possible duplicate listings)."""
    rows = []
    for r in sorted(data):
        t, sets = data[r], text_sets[r]
        shared = sets.shared()
        rows += [
            (r, t.skus[sets.rep[sets.inverse[i]]], t.skus[i], t.texts[i]) for i in np.flatnonzero(shared)
        ]
    return pd.DataFrame(rows, columns=DUPLICATE_COLUMNS)


def _auto_threshold(
    blocks: list[dict[str, Any]], scorer: PairScorer, method: AssignMethod
) -> tuple[float, float | None]:
    """Label-free cut over all region pairs: ``(threshold, match_share)``.

    Runs the one-to-one rule with no threshold, then :func:`.prior_shift_threshold` on the scores
    of the pairs it links. A hand-weighted fallback scorer has no even-odds calibration to
    re-base, so it keeps :data:`DEFAULT_THRESHOLD` (``match_share`` None).
    """
    if scorer.fitted_on == "default" or not blocks:
        return DEFAULT_THRESHOLD, None
    linked = [b["score"][link_pairs(b["ia"], b["ib"], b["score"], 0.0, method)] for b in blocks]
    scores = np.concatenate(linked) if linked else np.zeros(0)
    if len(scores) == 0:
        return DEFAULT_THRESHOLD, None
    cut, share = prior_shift_threshold(scores)
    return float(snap(max(cut, THRESHOLD_FLOOR))), float(share)


def _log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


RERANK_TOP = 3  # candidates per product (by cosine) that the rerank callback scores


def _seed_columns(features: Sequence[str]) -> tuple[str, ...]:
    """Features whose z-scores sum to the self-training seed: CSLS, lexical overlap and, when there,
    sentence alignment (the label-free signals that do not need a fitted model)."""
    return ("csls", "lexical", *(c for c in ("sentences", "rerank") if c in features))


def _top_ranked(key: np.ndarray, score: np.ndarray, top: int) -> np.ndarray:
    """Mask of rows among the ``top`` highest ``score`` of their ``key`` (ties: first row wins)."""
    order = np.lexsort((-score, key))
    sorted_key = key[order]
    first = np.searchsorted(sorted_key, sorted_key, side="left")
    mask = np.zeros(len(key), dtype=bool)
    mask[order[np.arange(len(key)) - first < top]] = True
    return mask


def _rerank_feature(
    rerank: Callable[[str, str, Sequence[str], Sequence[str]], np.ndarray],
    ra: str,
    rb: str,
    texts_a: Sequence[str],
    texts_b: Sequence[str],
    ia: np.ndarray,
    ib: np.ndarray,
    cosine: Any,
) -> np.ndarray:
    """The caller's pair score for the candidate pairs among either product's top
    :data:`RERANK_TOP` by cosine (a cross-encoder is too slow for all of them; it decides near-ties);
    the other pairs get the lowest score scored. Checked: one finite number per scored pair."""
    cos = np.asarray(cosine, dtype=np.float64)
    ia, ib = np.asarray(ia), np.asarray(ib)
    keep = _top_ranked(ia, cos, RERANK_TOP) | _top_ranked(ib, cos, RERANK_TOP)
    rows = np.flatnonzero(keep)
    scores = np.asarray(
        rerank(ra, rb, [texts_a[i] for i in ia[rows]], [texts_b[j] for j in ib[rows]]), dtype=np.float64
    )
    if scores.shape != (len(rows),) or not np.isfinite(scores).all():
        raise ValueError(
            f"rerank for {ra}<->{rb} must return {len(rows)} finite scores (one per candidate pair); "
            f"got shape {scores.shape}"
        )
    out = np.full(len(ia), scores.min() if len(scores) else 0.0)
    out[rows] = scores
    return out


def _sentence_vectors(
    sentences: Mapping[str, SentenceVectors] | Literal["auto"] | None, store: Any, data: CatalogData
) -> tuple[dict[str, SentenceVectors] | None, dict[str, dict[str, Any]]]:
    """Centred sentence vectors per region (None when the alignment feature is off), and per region
    the statistics an incremental run freezes (``sent_mean``, ``sent_keys``, ``sent_df``: .context).

    IDF weights of indexed (distinct-row) vectors come from the index itself, so the texts are not
    split again; vectors with one row per occurrence take :func:`.sentence_idf` of the texts as before.
    """
    if sentences is None:
        return None, {}
    if isinstance(sentences, str):
        if sentences != "auto":
            raise ValueError(f"sentences must be a mapping, 'auto' or None; got {sentences!r}")
        if store is None or not hasattr(store, "vector_name"):
            return None, {}
        cache = SentenceCache.for_store(store)  # the cache of the model the store records
        found = {r: cache.vectors_for(t.texts) for r, t in data.items()}
        if any(v is None for v in found.values()):
            return None, {}
        sentences = {r: v for r, v in found.items() if v is not None}
        del found
    missing = [r for r in data if r not in sentences]
    if missing:
        raise ValueError(f"sentences: no sentence vectors for regions {missing}")
    for r, t in data.items():
        if len(sentences[r]) != len(t):
            raise ValueError(
                f"sentences: region {r!r} has {len(sentences[r])} products' sentences, expected {len(t)}"
            )
    pending = dict(sentences)  # popped as centred: uncentred rows we own are freed region by region
    del sentences
    out, stats = {}, {}
    for r in list(pending):
        sv = pending.pop(r)
        if IDF_SENTENCES and sv.weights is None:
            if sv.index is not None:
                sv = SentenceVectors(sv.offsets, sv.vectors, row_idf(sv), sv.index)
            else:
                idf = sentence_idf(data[r].texts)
                if len(idf) == len(sv.vectors):  # rows follow split_sentences (else: caller's own rows)
                    sv = SentenceVectors(sv.offsets, sv.vectors, idf)
        mean = sentence_mean(sv)
        keys, df = sentence_frequencies([split_sentences(t) for t in data[r].texts])
        stats[r] = {"sent_mean": mean, "sent_keys": keys, "sent_df": df}
        out[r] = center_sentences(sv, mean=mean)
    return out, stats


def _fit_and_score(
    blocks: list[dict[str, Any]],
    features: Sequence[str],
    lab: Labels | None,
    seed: list[np.ndarray] | None,
) -> PairScorer:
    """Fit one scorer over all region pairs (on labels when usable, else self-training) and
    store each block's probabilities in ``blk["score"]``."""
    scorer = PairScorer(features=tuple(features))
    if not blocks:
        return scorer

    def rows(mask: np.ndarray) -> pd.DataFrame:
        """Only the fitted rows of every block, stacked (never a copy of all candidate pairs)."""
        parts, start = [], 0
        for blk in blocks:
            n = len(blk["ia"])
            parts.append(blk["feats"][mask[start : start + n]])
            start += n
        return pd.concat(parts, ignore_index=True)

    fitted = False
    if lab:
        known, y = zip(
            *(_labelled_targets(lab, b["ra"], b["rb"], b["sa"], b["sb"]) for b in blocks), strict=True
        )
        known_all, y_all = _with_reviewed(blocks, np.concatenate(known), np.concatenate(y))
        if y_all[known_all].any() and not y_all[known_all].all():
            scorer.fit(rows(known_all), y_all[known_all], source="labels")
            fitted = True
    if not fitted and sum(len(blk["ia"]) for blk in blocks):
        offset = 0
        ia_all, ib_all = [], []
        for blk in blocks:  # keep products of different region pairs apart in the self-training
            ia_all.append(blk["ia"] + offset)
            ib_all.append(blk["ib"] + offset)
            offset += int(max(blk["ia"].max(initial=0), blk["ib"].max(initial=0))) + 1
        if seed is not None:
            seed_score = np.concatenate(seed)
        else:
            seed_score = default_seed(
                *(
                    np.concatenate([blk["feats"][c].to_numpy() for blk in blocks])
                    for c in _seed_columns(features)
                )
            )
        targets = self_training_targets(seed_score, np.concatenate(ia_all), np.concatenate(ib_all))
        if targets is not None:
            keep, y_keep = targets
            y_full = np.zeros(len(keep), dtype=int)
            y_full[keep] = y_keep
            keep, y_full = _with_reviewed(blocks, keep, y_full)
            targets = (keep, y_full[keep])
        if targets is None:
            scorer.default()
        else:
            scorer.fit(rows(targets[0]), targets[1], source="self-training")
    for blk in blocks:
        blk["score"] = scorer.predict(blk["feats"]) if len(blk["feats"]) else np.zeros(0)
    return scorer


def _with_reviewed(
    blocks: list[dict[str, Any]], known: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fit targets with the reviewed pairs added; a reviewer's verdict wins over the label-free
    prior's (self-training) or a labels file's target for the same pair."""
    reviewed = [blk.get("reviewed") for blk in blocks]
    if all(t is None for t in reviewed):
        return known, y
    t = np.concatenate(
        [
            np.full(len(b["ia"]), -1, np.int8) if r is None else r
            for b, r in zip(blocks, reviewed, strict=True)
        ]
    )
    y = np.where(t >= 0, t, y).astype(y.dtype)
    return known | (t >= 0), y


def _pairs_table(
    blocks: list[dict[str, Any]], data: CatalogData, threshold: float, *, extra: Sequence[str] = ()
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """All candidate pairs, region pair by region pair, best score first, with the global product
    numbers (region offset + row) of both sides in the same order.

    Built column by column in its final order (each block sorted on its own, blocks in region
    order) so the table exists once: per-block frames, their concat and a global sort held three
    copies, the memory peak of a 100k-per-region run. The product numbers are what the unmatched
    pass indexes with, instead of looking up millions of SKU strings.

    Columns whose values repeat (regions, SKUs, texts, decision, explain) are categoricals: codes
    into their distinct values. As plain strings pandas copies every value into its string dtype;
    at 100k products per region that copy was the match's memory peak (+0.66 GB).

    ``extra``: per-block float arrays added as columns after :data:`PAIR_COLUMNS` (the pass-one
    probability ``p1`` the match context keeps). A block's ``conflict`` mask, when present, marks
    pairs the group rule refused (an incremental run's kept decisions).
    """
    if not blocks:
        empty = np.zeros(0, dtype=np.int64)
        return pd.DataFrame(columns=[*PAIR_COLUMNS, *extra]), empty, empty
    seq = sorted(range(len(blocks)), key=lambda n: (blocks[n]["ra"], blocks[n]["rb"]))
    orders = {n: np.argsort(-blocks[n]["score"], kind="stable") for n in seq}
    offset = dict(zip(data, np.cumsum([0, *[len(t) for t in data.values()][:-1]]), strict=True))
    pid_a = np.concatenate([blocks[n]["ia"][orders[n]] + offset[blocks[n]["ra"]] for n in seq]).astype(
        np.int64
    )
    pid_b = np.concatenate([blocks[n]["ib"][orders[n]] + offset[blocks[n]["rb"]] for n in seq]).astype(
        np.int64
    )
    sku_a, sku_b = _product_columns(data, pid_a, pid_b, lambda t: t.skus)
    text_a, text_b = _product_columns(data, pid_a, pid_b, lambda t: t.texts)
    regions = sorted(data)

    def column(get: Any, dtype: Any = None) -> np.ndarray:
        return np.concatenate([np.asarray(get(blocks[n]), dtype=dtype)[orders[n]] for n in seq])

    def region(side: str) -> pd.Categorical:
        """Ordered by name, so ``region_a < region_b`` compares as the strings did."""
        codes = column(lambda blk: np.full(len(blk["ia"]), regions.index(blk[side]), dtype=np.int32))
        return pd.Categorical.from_codes(codes, categories=pd.Index(regions, dtype=object), ordered=True)

    def feat(name: str, missing: float = 0.0) -> Any:
        return lambda blk: (
            blk["feats"][name].to_numpy(np.float32)
            if name in blk["feats"]
            else np.full(len(blk["ia"]), missing, dtype=np.float32)
        )

    code = {d: i for i, d in enumerate(DECISIONS)}
    verdict = column(
        lambda blk: np.where(
            blk["accepted"],
            code["match"],
            np.where(
                blk.get("conflict", False),
                code["conflict"],
                np.where(blk["score"] >= threshold, code["not_mutual"], code["below_threshold"]),
            ),
        ).astype(np.int8)
    )
    columns: dict[str, Any] = {
        "region_a": region("ra"),
        "sku_a": sku_a,
        "region_b": region("rb"),
        "sku_b": sku_b,
        "score": column(lambda blk: blk["score"], np.float64),
        "cosine": column(feat("cosine")),
        "decision": pd.Categorical.from_codes(verdict, categories=pd.Index(list(DECISIONS), dtype=object)),
        "ambiguous": column(lambda blk: blk.get("ambiguous", np.zeros(len(blk["ia"]), dtype=bool)), bool),
        "csls": column(feat("csls")),
        "lexical": column(feat("lexical")),
        "sentences": column(feat("sentences", np.nan)),  # NaN: matched without sentence vectors
        **{c: column(feat(c)) for c in EVIDENCE_COLUMNS},
        "ev_triangle": column(feat("ev_triangle")),
        "explain": pd.Categorical(column(lambda blk: blk["explain"], object)),
        "text_a": text_a,
        "text_b": text_b,
        **{name: column(lambda blk, name=name: blk[name], np.float64) for name in extra},
    }
    return pd.DataFrame(columns, columns=[*PAIR_COLUMNS, *extra], copy=False), pid_a, pid_b


def _product_columns(
    data: CatalogData, pid_a: np.ndarray, pid_b: np.ndarray, values: Any
) -> tuple[pd.Categorical, pd.Categorical]:
    """One per-product value (``values(table)``: SKUs, texts) for both sides of every pair, as
    categoricals over the catalog's distinct values.

    Why: a string column holds its own copy of every value, and each product recurs in ~20 pairs;
    at 100k products per region the two text columns alone were ~1 GB of repeated descriptions.
    Codes into the distinct values keep the same values at 4 bytes a pair.
    """
    codes, uniques = pd.factorize(
        np.concatenate([np.asarray(values(t), dtype=object) for t in data.values()])
    )
    categories = pd.Index(uniques, dtype=object)

    def side(pid: np.ndarray) -> pd.Categorical:
        return pd.Categorical.from_codes(codes[pid].astype(np.int32), categories=categories)

    return side(pid_a), side(pid_b)


def _unmatched(
    pairs: pd.DataFrame, data: CatalogData, pid_a: np.ndarray, pid_b: np.ndarray, threshold: float
) -> pd.DataFrame:
    """Products without an accepted twin, with their best candidate anywhere for review.

    Array work on product numbers (``pid_a``/``pid_b``, see :func:`_pairs_table`): one sort of
    the scores, then each side's first row per product. Ties: the earlier row wins, and a product's
    pairs as side a before those as side b.
    """
    cols = ["region", "sku", "text", "best_score", "best_region", "best_sku", "reason"]
    total = sum(len(t) for t in data.values())
    score = pairs["score"].to_numpy(np.float64)
    is_match = (pairs["decision"] == "match").to_numpy()
    matched = np.zeros(total, dtype=bool)
    matched[pid_a[is_match]] = True
    matched[pid_b[is_match]] = True
    best_row = np.full(total, -1, dtype=np.int64)
    best_score = np.full(total, -np.inf)
    from_a = np.zeros(total, dtype=bool)  # the best row has this product as side a
    order = np.argsort(-score, kind="stable")
    for side_is_a, pid in ((True, pid_a), (False, pid_b)):
        uniq, first = np.unique(pid[order], return_index=True)
        rows = order[first]
        better = score[rows] > best_score[uniq]
        best_row[uniq[better]] = rows[better]
        best_score[uniq[better]] = score[rows[better]]
        from_a[uniq[better]] = side_is_a
    del order

    keep = np.flatnonzero(~matched)
    hit = best_row[keep]
    has = hit >= 0
    safe = np.where(has, hit, 0)
    side_a = from_a[keep]
    if len(pairs):
        other_region = np.where(
            side_a, pairs["region_b"].to_numpy(object)[safe], pairs["region_a"].to_numpy(object)[safe]
        )
        other_sku = np.where(
            side_a, pairs["sku_b"].to_numpy(object)[safe], pairs["sku_a"].to_numpy(object)[safe]
        )
    else:
        other_region = other_sku = np.full(len(keep), None, dtype=object)
    regions = list(data)
    region_col = np.concatenate([np.full(len(data[r]), r, dtype=object) for r in regions]) if total else None
    sku_col = np.concatenate([np.asarray(data[r].skus, dtype=object) for r in regions]) if total else None
    text_col = np.concatenate([np.asarray(data[r].texts, dtype=object) for r in regions]) if total else None
    empty = np.zeros(0, dtype=object)
    reason = _unmatched_reasons(pairs, pid_a, pid_b, keep, hit, has, side_a, region_col, sku_col, threshold)
    return pd.DataFrame(
        {
            "region": region_col[keep] if total else empty,
            "sku": sku_col[keep] if total else empty,
            "text": text_col[keep] if total else empty,
            "best_score": np.where(has, best_score[keep] if total else np.nan, np.nan),
            "best_region": np.where(has, other_region, None),
            "best_sku": np.where(has, other_sku, None),
            "reason": reason,
        },
        columns=cols,
    )


def _unmatched_reasons(
    pairs: pd.DataFrame,
    pid_a: np.ndarray,
    pid_b: np.ndarray,
    keep: np.ndarray,
    hit: np.ndarray,
    has: np.ndarray,
    side_a: np.ndarray,
    region_col: np.ndarray | None,
    sku_col: np.ndarray | None,
    threshold: float,
) -> list[str]:
    """Why each unmatched product (``keep``, best pair row ``hit``) has no twin, in words."""
    decision = pairs["decision"].to_numpy(object)
    score = pairs["score"].to_numpy(np.float64)
    match_rows = np.flatnonzero(decision == "match")
    taken: dict[tuple[int, str], int] = {}  # (product, region of the other side) -> accepted row
    reg_a, reg_b = pairs["region_a"].to_numpy(object), pairs["region_b"].to_numpy(object)
    for j in match_rows:
        taken[(int(pid_a[j]), str(reg_b[j]))] = int(j)
        taken[(int(pid_b[j]), str(reg_a[j]))] = int(j)
    out = []
    for n, x in enumerate(keep):
        if not has[n]:
            out.append("no candidate in another region")
            continue
        j = int(hit[n])
        partner = int(pid_b[j] if side_a[n] else pid_a[j])
        where = f"{region_col[partner]}/{sku_col[partner]}"  # type: ignore[index]
        if decision[j] == "conflict":
            out.append(f"its match {where} was dropped: a group may hold one SKU per region")
        elif score[j] < threshold:
            out.append(f"best candidate {where} scores {score[j]:.3f}, below the threshold {threshold:.3f}")
        elif (partner, str(region_col[x])) in taken:  # type: ignore[index]
            t = taken[(partner, str(region_col[x]))]  # type: ignore[index]
            holder = int(pid_a[t] if pid_b[t] == partner else pid_b[t])
            out.append(
                f"twin {where} taken by {region_col[holder]}/{sku_col[holder]} "  # type: ignore[index]
                f"(score {score[t]:.3f} vs {score[j]:.3f})"
            )
        else:
            out.append(f"best candidate {where} went unassigned in the one-to-one optimum")
    return out
