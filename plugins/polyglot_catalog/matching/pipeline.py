"""``match_catalog``: read -> prepare -> candidates and features -> scores -> decisions -> tables.

Each stage is a function over :class:`.blocks.PairBlock` records (one per region pair) and the
run's :class:`.settings.MatchSettings`; :func:`match_tables` wires them on tables in memory, and
:func:`match_catalog` first reads them (:mod:`.inputs`: a store, its sentence cache, or in-memory
:class:`~.data.RegionTable` s), so the same code runs from Airflow, the CLI, tests and benchmarks.
The incremental run (:mod:`.incremental`) shares the decision and table stages.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..memory import release_freed_memory
from ..review.apply import ReviewedPairs
from ..sentences import SentenceVectors
from .alignment import sentence_alignment
from .assign import AssignMethod
from .blocks import PairBlock
from .candidates import CANDIDATE_SLACK, MEMBERS_CAP, candidate_pairs
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
    text_keys,
)
from .data import CatalogData, RegionTable, center_region, centred_tables, product_offsets, region_mean
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
from .feature_parts import ShardedFeatures, check_listings, read_mapped, sharded_features
from .held_pairs import PairFloor, RestPairs
from .inputs import MatchInputs, SentenceSource, is_store, load_catalog, read_inputs
from .lexical import NgramCounts, ngram_counts
from .provenance import reproducibility_record
from .region_search import region_digest
from .result import DECISIONS, DUPLICATE_COLUMNS, MatchResult
from .scoring import (
    FEATURES,
    MAX_FIT_ROWS,
    MIN_SELF_TRAINING,
    PairScorer,
    corroboration,
    default_seed,
    log_odds,
    pair_features,
    prior_shift_threshold,
    seed_columns,
    training_masks,
)
from .sentence_stats import centred_region_sentences
from .settings import CandidateSource, MatchSettings
from .shards import sharded_candidates

__all__ = [
    "CandidateSource",
    "MatchSettings",
    "center_region",
    "load_catalog",
    "match_catalog",
    "match_tables",
    "region_mean",
]

logger = logging.getLogger(__name__)

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
#: ``candidates="auto"`` with a store runs the exact path while the largest region pair has at most
#: this many product pairs (500k x 500k). Why: the matcher holds every vector in memory anyway, and
#: on 2 cores the exact blocked top-k costs ~7 ns per pair (68 s per 100k x 100k pair) against
#: ~1.8 ms per in-process HNSW query (2 x 100k queries: ~360 s per pair, and approximate), so the
#: quadratic path stays the faster one up to roughly half a million products per region.
EXACT_MAX_PAIRS = 500_000 * 500_000


def _candidate_path(candidates: str, store: Any, data: CatalogData) -> str:
    """The candidate path ``candidates`` means for these tables (see ``EXACT_MAX_PAIRS``)."""
    return candidate_path(candidates, store is not None, [len(t) for t in data.values()])


def candidate_path(candidates: str, with_store: bool, sizes: Sequence[int]) -> str:
    """``exact`` or ``qdrant``: what ``candidates`` means for regions of ``sizes`` products (``auto``:
    Qdrant when there is a store and the largest region pair exceeds ``EXACT_MAX_PAIRS``). The match
    task and the shard plan (which knows the sizes from its search files) ask the same question."""
    if candidates != "auto":
        return candidates
    if not with_store:
        return "exact"
    ordered = sorted(sizes)
    largest = ordered[-1] * ordered[-2] if len(ordered) > 1 else 0
    return "exact" if largest <= EXACT_MAX_PAIRS else "qdrant"


def _skus(table: RegionTable) -> np.ndarray:
    return np.asarray(table.skus, dtype=object)


def _labelled_targets(
    labels: Labels, ra: str, rb: str, sa: np.ndarray, sb: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    ga = np.array([labels.get((ra, s)) for s in sa], dtype=object)
    gb = np.array([labels.get((rb, s)) for s in sb], dtype=object)
    known = np.array([x is not None and y is not None for x, y in zip(ga, gb, strict=True)], dtype=bool)
    return known, known & (ga == gb)


@dataclass
class Prepared:
    """The canonical, centred tables of one run and the per-region figures every later stage reads
    (built once by :func:`prepare`)."""

    data: CatalogData
    text_sets: dict[str, TextSets]
    keys: dict[str, np.ndarray]
    hashes: dict[str, list[Any]]
    means: dict[str, np.ndarray | None]
    sentences: dict[str, SentenceVectors] | None
    sentence_stats: dict[str, dict[str, Any]]
    raw_vectors: dict[str, np.ndarray] | None
    evidence: dict[str, list[Any]]
    idf: dict[str, float]
    regions: list[str] = field(default_factory=list)
    evidence_seconds: float = 0.0


@dataclass
class Decision:
    """The cut and how it was chosen; with labels, the judges and the threshold sweep."""

    threshold: float | None
    method: str
    match_share: float | None = None
    judges: dict[Any, Any] = field(default_factory=dict)
    sweep_rows: list[dict[str, float]] | None = None


def match_catalog(
    store_or_data: Any,
    settings: MatchSettings | None = None,
    *,
    regions: Sequence[str] | None = None,
    labels: str | Path | pd.DataFrame | Mapping[tuple[str, str], Any] | Literal["gtin"] | None = None,
    sentences: SentenceSource = "auto",
    decisions: pd.DataFrame | None = None,
    rerank: Callable[[str, str, Sequence[str], Sequence[str]], np.ndarray] | None = None,
    model: str | None = None,
    collection: str | None = None,
    model_fingerprint: str | None = None,
    shards: int | None = None,
    shard_dir: str | Path | None = None,
    mapped: bool = False,
    **options: Any,
) -> MatchResult:
    """Find the same product across regions: read the input (:func:`.inputs.read_inputs`), then
    :func:`match_tables`.

    Args:
        store_or_data (CatalogStore | Mapping[str, RegionTable]): a store (read with
            :func:`.inputs.load_catalog`) or in-memory tables keyed by region.
        settings (MatchSettings | None): how to decide; or pass its fields as keyword ``options``
            (``k``, ``threshold``, ``method``, ``target_precision``, ``allow_same_region``,
            ``fit_on_labels``, ``corroborate``, ``center``, ``text_ties``, ``candidates``,
            ``hnsw_ef``, ``block_rows``, ``block_cols``; see :class:`.settings.MatchSettings`).
            The cut: pairs with probability ``>= threshold``; None is a label-free cut from the
            score distribution (:func:`.scoring.prior_shift_threshold`: the Bayes cut once the
            scorer's even-odds probabilities are re-based on the estimated share of matches among
            one-to-one pairs); with ``fit_on_labels`` (or ``target_precision``) and labels, the
            F1-best (or target-precision) cut on them. ``candidates="auto"`` runs the exact
            blocked path unless a store is given and the largest region pair exceeds
            ``EXACT_MAX_PAIRS`` product pairs, where it queries Qdrant (``candidates_path`` in the
            summary says which ran). ``center`` subtracts each region's mean vector (the language
            offset of multilingual embeddings), also from Qdrant's raw neighbours (2k) re-ranked.
        regions (Sequence[str] | None): regions to match. Defaults to all.
        labels: ``region, sku, group_id`` file/DataFrame/dict, or ``"gtin"`` to derive them.
            Reported against (metrics); they fit the scorer and threshold only with ``fit_on_labels``.
        sentences: per-region sentence vectors (:class:`.SentenceVectors`, rows in table order) for
            the ``sentences`` alignment feature. "auto" (the default) reads them from the store's
            sentence cache (:mod:`polyglot_catalog.sentences`) when every product's sentences are
            there; None, or in-memory tables without a mapping, match without it.
        decisions (pd.DataFrame | None): reviewed pairs ``region_a, sku_a, region_b, sku_b,
            decision`` (``match`` / ``no_match``; optional ``hash_a, hash_b`` so a decision lapses
            when a text changes): must-links and cannot-links, and labels for the scorer and the
            label-free threshold (docs/REVIEW.md).
        rerank: optional pair scorer ``(region_a, region_b, texts_a, texts_b) -> scores`` (one per
            candidate pair among either product's top ``RERANK_TOP`` by cosine, e.g. a cross-encoder
            re-ranker, :class:`..tuning.rerank.CachedReranker`): its score becomes the ``rerank``
            feature and joins the self-training seed.
        model (str | None), collection (str | None), model_fingerprint (str | None): recorded in
            the summary; with the library versions, every setting and a fingerprint of the input
            they make ``summary["reproducibility"]``, so two reports can be compared.
        shards (int | None): run the candidate search as this many shards per ordered region
            pair (:mod:`.shards`; on the Qdrant path, region-filtered queries per shard,
            :mod:`.qdrant_shards`), their parts written under ``shard_dir`` (default: a temporary
            folder) and joined; the same pairs and groups as one search. None: one search. With
            neither reviewed ``decisions`` nor ``rerank``, the pair features are computed per shard
            too (:mod:`.feature_parts`), and this task only puts them together.
        mapped (bool): with ``shards``, the map tasks (Airflow's mapped tasks) already wrote the
            search, rows and feature files into ``shard_dir``: the store's vectors are not read
            (the reduce holds pairs, not products). Should the catalog have changed since the plan
            (its SKUs and texts differ from the rows files), or the run need the products
            (``decisions``, ``rerank``), this task reads them and computes what it needs itself.

    Returns:
        MatchResult: pairs, groups, unmatched and a JSON-safe summary (see :mod:`.result`).

    Raises:
        ValueError: on bad arguments (the message names the value and the options).
    """
    settings = MatchSettings.of(settings, options)
    if settings.candidates == "qdrant" and not is_store(store_or_data):
        raise ValueError("candidates='qdrant' needs a CatalogStore; pass one or use candidates='exact'")
    if shards is not None and shards < 1:
        raise ValueError(f"shards must be >= 1; got {shards}")
    parameters = _parameters(settings, regions, labels, sentences, rerank, decisions)
    t0 = time.perf_counter()
    per_shard = shards is not None and decisions is None and rerank is None
    inputs, search, features = None, None, None
    if mapped and per_shard and shard_dir is not None and is_store(store_or_data):
        # neither vectors nor sentence vectors: the feature parts carry what is computed from them
        light = read_inputs(store_or_data, regions, None, with_vectors=False)
        why = check_listings(shard_dir, light.data)
        if why is None:
            inputs = light
            features = functools.partial(
                read_mapped,
                folder=shard_dir,
                shards=shards,
                center=settings.center,
                corroborate=settings.corroborate,
                decide=(settings.threshold, settings.method),
                hold=labels is None,
            )
        else:
            logger.warning("%s: the match task computes the pair features itself", why)
    with contextlib.ExitStack() as stack:
        if shards is not None:
            parameters["shards"] = shards
        if inputs is None:
            inputs = read_inputs(store_or_data, regions, sentences)
            if shards is not None:
                folder = shard_dir or stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="polyglot-shards-")
                )
                path = _candidate_path(settings.candidates, inputs.store, inputs.data)
                plan = {
                    "settings": settings,
                    "shards": shards,
                    "folder": folder,
                    "store": inputs.store if path == "qdrant" else None,
                }
                if per_shard:
                    # the pairs not held are read from the parts when the report is written, so
                    # never from a temporary folder, gone when this function returns
                    hold = labels is None and shard_dir is not None
                    features = functools.partial(sharded_features, **plan, hold=hold)
                else:  # must-links and the re-ranker need the products: features in this task
                    search = functools.partial(sharded_candidates, **plan)
        return match_tables(
            inputs,
            settings,
            labels=labels,
            decisions=decisions,
            rerank=rerank,
            model=model,
            collection=collection or inputs.collection,
            model_fingerprint=model_fingerprint,
            parameters=parameters,
            read_seconds=time.perf_counter() - t0,
            search=search,
            features=features,
        )


def _parameters(
    settings: MatchSettings,
    regions: Sequence[str] | None,
    labels: Any,
    sentences: Any,
    rerank: Any,
    decisions: pd.DataFrame | None,
) -> dict[str, Any]:
    """Every setting and input choice of a run, for its reproducibility record and match state."""
    return {
        "regions": regions,
        **settings.as_dict(),
        "labels": None if labels is None else (labels if isinstance(labels, str) else type(labels).__name__),
        "sentences": sentences if sentences is None or isinstance(sentences, str) else "in-memory",
        "rerank": rerank is not None,
        "candidate_slack": CANDIDATE_SLACK,
        "members_cap": MEMBERS_CAP,
        "min_self_training": MIN_SELF_TRAINING,
        "threshold_floor": THRESHOLD_FLOOR,
        "decisions": None if decisions is None else len(decisions),
    }


def match_tables(
    inputs: MatchInputs,
    settings: MatchSettings,
    *,
    labels: Any = None,
    decisions: pd.DataFrame | None = None,
    rerank: Callable[[str, str, Sequence[str], Sequence[str]], np.ndarray] | None = None,
    model: str | None = None,
    collection: str | None = None,
    model_fingerprint: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    read_seconds: float = 0.0,
    search: Callable[[CatalogData], Mapping[tuple[str, str], Any]] | None = None,
    features: Callable[..., ShardedFeatures] | None = None,
) -> MatchResult:
    """The matcher proper, on tables in memory: prepare -> candidates and features -> scores ->
    decisions -> tables; each stage a function below, over :class:`.blocks.PairBlock` records.
    Arguments as :func:`match_catalog`'s; ``parameters`` are recorded (default: the settings).
    ``search``: the candidates of every region pair from the tables as read (it makes them canonical
    and centred itself), in place of the in-process search (:func:`.shards.sharded_candidates`: the
    same answer from shards). ``features``: the candidate pairs with their features, the statistics
    and the means, from the tables as read (:mod:`.feature_parts`: the same answer from map tasks),
    in place of both the search and the features; the tables may then lack vectors. ``inputs`` is
    consumed: its tables and sentence vectors are released once the matcher's canonical copies are
    made (the caller's own references stay valid)."""
    parameters = dict(parameters or _parameters(settings, None, labels, inputs.sentences, rerank, decisions))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    path = _candidate_path(settings.candidates, inputs.store, inputs.data)
    with_vectors = all(t.vectors.shape[1] for t in inputs.data.values())
    digests = {r: region_digest(t) for r, t in inputs.data.items()} if with_vectors else {}
    prep = prepare(
        inputs,
        settings,
        keep_raw=path == "qdrant" and search is None and features is None,
        release=search is None and features is None,
        features_given=features is not None,
    )
    reviewed = ReviewedPairs.of(decisions, prep.data) if decisions is not None else None
    timings["load"] = read_seconds + time.perf_counter() - t0 - prep.evidence_seconds
    timings["evidence"] = prep.evidence_seconds

    found, scored, decided = None, None, None
    floor: PairFloor | None = None  # set when the blocks hold only the pairs that can matter
    parts = None
    if search is not None:
        t0 = time.perf_counter()
        found = search(inputs.data)
        timings["sharded_search"] = time.perf_counter() - t0
        path = f"{path} (shards)"  # match_catalog gave the search the store on the Qdrant path
    if features is not None:
        t0 = time.perf_counter()
        sharded = features(inputs.data, prep.sentences, prep.sentence_stats)
        inputs.data = {}
        timings["sharded_features"] = time.perf_counter() - t0
        path = f"{sharded.search.split(':')[0]} (shards)"
        blocks, figures, lex_stats = sharded.blocks, sharded.figures, sharded.lex_stats
        floor, parts = sharded.floor, sharded.parts
        scored = sharded.scorers
        decided = (sharded.decided, sharded.rivals)
        prep.means, prep.idf, digests = sharded.means, sharded.idf, digests or sharded.digests
        prep.sentence_stats = dict(sharded.sentence_stats or {})  # the parts carry the feature
        prep.sentences = None
        del sharded  # its rivals (8 B a pair) go once the ties are marked, not at the end of the run
    else:
        inputs.data = {}  # canonical, centred copies made and the shards searched: the input rows can go
        blocks, figures, lex_stats = candidate_blocks(
            prep,
            settings,
            store=inputs.store if path == "qdrant" else None,
            reviewed=reviewed,
            rerank=rerank,
            timings=timings,
            found=found,
        )
    # glibc keeps freed pair-sized buffers in its heap (see ..memory): each stage hands its
    # transients back before the next, or RSS holds them all (~0.85 GB at 12.5 M pairs)
    release_freed_memory()
    record = reproducibility_record(
        prep.data,
        parameters,
        model=model,
        model_fingerprint=model_fingerprint,
        collection=collection,
        vector_digests=digests,
    )
    prep.raw_vectors = None
    # the pair features hold all that later stages read of the vectors: free every region's matrix
    prep.data = {r: t.without_vectors() for r, t in prep.data.items()}
    lab, labels_note = _labels(labels, prep.data)

    t0 = time.perf_counter()
    features = (*FEATURES, "sentences") if prep.sentence_stats else FEATURES
    if rerank is not None:
        features = (*features, "rerank")
    prep.sentences = None
    fit_lab = lab if settings.fit_on_labels else None
    scores_from = _scores_from(scored, features, fit_lab)
    if isinstance(scored, tuple) and scores_from == "score task":
        scorer1, scorer2 = scored  # the blocks carry the score task's p1, score and ev_triangle
        if scorer2 is not None:
            for blk in blocks:
                blk.explain = corroborated(blk.explain, blk.feats["ev_triangle"])
    else:
        scorer1, scorer2 = score_blocks(blocks, prep, features, fit_lab, settings)
    scorer = scorer2 or scorer1
    timings["scoring"] = time.perf_counter() - t0
    release_freed_memory()

    t0 = time.perf_counter()
    decisions_from = _decisions_from(decided, scores_from, lab)
    if floor is not None and decisions_from != "score task":  # the blocks lack the pairs under the floor
        raise RuntimeError(f"the blocks hold only the pairs over a floor, but {decisions_from} decides")
    if decisions_from == "score task":
        assert decided is not None
        manifest, rivals = decided
        decision = Decision(manifest["threshold"], manifest["how"], match_share=manifest["match_share"])
        for blk, rival in zip(blocks, rivals, strict=True):  # the blocks carry its accepted pairs
            mark_ties(blk, prep.data, rival)
        del rival, rivals
    else:
        decision = decide(blocks, prep, settings, lab, scorer, reviewed)
    decided = None
    timings["assign"] = time.perf_counter() - t0
    release_freed_memory()

    t0 = time.perf_counter()
    candidates = dict(floor.totals) if floor is not None else {blk.key: len(blk) for blk in blocks}
    review = reviewed.summary(blocks) if reviewed is not None else None
    pairs, groups, unmatched, duplicates = result_tables(blocks, prep, settings, decision.threshold)
    rest = None
    if floor is not None and parts is not None:
        rest = rest_pairs(
            prep.data, floor, parts, corroborate=scorer2 is not None, sentences=bool(prep.sentence_stats)
        )
    context = MatchContext(
        regions=prep.regions,
        parameters=dict(record.get("parameters", parameters)),
        threshold=float(decision.threshold),
        scorer1=scorer_state(scorer1),
        scorer2=scorer_state(scorer2),
        idf=prep.idf,
        tables={r: _region_context(prep, r, figures, lex_stats) for r in prep.regions},
        edges=context_edges(pairs),
        sentences=bool(prep.sentence_stats),
    )
    del pairs["p1"]
    timings["groups"] = time.perf_counter() - t0
    release_freed_memory()  # before the caller writes the report

    summary = _summary(
        candidates,
        pairs,
        prep,
        settings,
        decision,
        scorer,
        record,
        timings,
        path,
        duplicates,
        model,
        collection,
    )
    if lab:
        summary["labels_used_for"] = (
            "fitting and evaluation"
            if settings.fit_on_labels
            else ("threshold and evaluation" if decision.method.startswith("labels") else "evaluation")
        )
        summary["metrics"] = evaluate_pairs(
            pairs,
            decision.judges,
            method=settings.method,
            sweep_rows=decision.sweep_rows,
            threshold=float(decision.threshold),
            allow_same_region=settings.allow_same_region,
        )
        pairs["correct"] = pair_verdicts(pairs, decision.judges)  # right / wrong / <NA> (unlabelled)
    if scored is not None:
        summary["scores_from"] = scores_from
        summary["decisions_from"] = decisions_from
    if labels_note:
        summary["labels_note"] = labels_note
    if review is not None:
        summary["review"] = review
    if rest is not None:  # how much of the run the match task held (the rest stayed in the parts)
        summary["pairs_held"] = {"held": len(pairs), "in_parts": rest.count, "floor": float(rest.floor.floor)}
    # an incremental run continues with the same scorer: without a fitted one there is nothing to
    # continue; reviewed decisions and a re-ranker are applied by full runs only
    continuable = reviewed is None and rerank is None and context.scorer1 is not None
    return MatchResult(
        pairs=pairs,
        groups=groups,
        unmatched=unmatched,
        summary=summary,
        duplicates=duplicates,
        context=context if continuable else None,
        rest=rest,
    )


def prepare(
    inputs: MatchInputs,
    settings: MatchSettings,
    *,
    keep_raw: bool = False,
    release: bool = False,
    features_given: bool = False,
) -> Prepared:
    """Canonical tables (see .canonical: no decision below may depend on file order, shard split or
    last-bit differences between identical listings), centred, with their text keys, hashes,
    centred sentence vectors and per-product evidence. ``keep_raw``: keep the stored (uncentred)
    vectors for the Qdrant path's re-rank. ``release``: nothing needs ``inputs.data`` afterwards, so
    each region's input rows go as soon as its canonical copy exists (copies are made region by
    region: at no time do the input, canonical and centred vectors of every region coexist).
    ``features_given``: the pair features come from feature parts (:mod:`.feature_parts`), which
    hold the evidence, statistics and means: none are computed here (the tables may lack vectors)."""
    data = inputs.data
    sentences = inputs.sentences
    inputs.sentences = None  # the centred copies below replace them: the float32 rows can go
    if sentences is not None:
        sentences = {
            r: permute_sentences(sv, canonical_order(data[r].skus))
            for r, sv in sentences.items()
            if r in data
        }
    if release:
        data, inputs.data = dict(data), {}
    if features_given:  # nothing here reads the vectors: sort the rows without them
        data = {r: t.without_vectors() for r, t in data.items()}
    data = {r: canonical_table(data.pop(r) if release else data[r]) for r in list(data)}
    sent, sent_stats = _centred_sentences(sentences, data)
    del sentences  # centred copies made: the caller's rows are freed unless it keeps them
    raw = {r: t.vectors for r, t in data.items()} if settings.center and keep_raw else None
    keys = {r: text_keys(t.texts) for r, t in data.items()}
    hashes = {r: list(t.fields.get("content_hash") or [None] * len(t)) for r, t in data.items()}
    means: dict[str, np.ndarray | None] = {}
    if not features_given:
        data, means = centred_tables(data, settings.center, consume=True)  # ``data`` is ours
    t0 = time.perf_counter()
    evid = (
        {}
        if features_given
        else {
            r: [
                extract(t.texts[i], title=t.get("title", i), brand=t.get("brand", i), gtin=t.get("gtin", i))
                for i in range(len(t))
            ]
            for r, t in data.items()
        }
    )
    idf = idf_weights(itertools.chain.from_iterable(evid.values())) if evid else {}
    prep = Prepared(
        data=data,
        text_sets={r: TextSets.of(t.texts) for r, t in data.items()},
        keys=keys,
        hashes=hashes,
        means=means,
        sentences=sent,
        sentence_stats=sent_stats,
        raw_vectors=raw,
        evidence=evid,
        idf=idf,
        regions=sorted(data),
    )
    prep.evidence_seconds = time.perf_counter() - t0
    return prep


def candidate_blocks(
    prep: Prepared,
    settings: MatchSettings,
    *,
    store: Any = None,
    reviewed: ReviewedPairs | None = None,
    rerank: Callable[[str, str, Sequence[str], Sequence[str]], np.ndarray] | None = None,
    timings: dict[str, float] | None = None,
    found: Mapping[tuple[str, str], Any] | None = None,
) -> tuple[list[PairBlock], dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """Per region pair: candidates (exact blocks, or Qdrant queries with ``store``) and their
    features. Also returns each product's neighbourhood figures per other region (radius, k-th
    similarity) and each region's n-gram document frequencies (what an incremental run freezes).
    ``found``: candidates already searched per region pair (``(ia, ib, neigh)``, as
    :func:`.candidates.candidate_pairs` returns them), e.g. joined from shards."""
    data = prep.data
    blocks: list[PairBlock] = []
    t_cand = t_feat = 0.0
    region_pairs = list(itertools.combinations(prep.regions, 2))
    ngrams: dict[str, NgramCounts] = {}  # each region hashed once, freed after its last pair
    lex_stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    figures: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}  # (region, other) -> radius, floor
    raw = prep.raw_vectors
    for step, (ra, rb) in enumerate(region_pairs):
        a, b = data[ra], data[rb]
        t1 = time.perf_counter()
        if found is not None:
            ia, ib, neigh = found[(ra, rb)]
        else:
            ia, ib, neigh = candidate_pairs(
                a,
                b,
                settings.k,
                store=store,
                raw=None if raw is None else (raw[ra], raw[rb]),
                hnsw_ef=settings.hnsw_ef,
                block_rows=settings.block_rows,
                block_cols=settings.block_cols,
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
            prep.evidence[ra],
            prep.evidence[rb],
            prep.idf,
        )
        for r in (ra, rb):
            if not any(r in later for later in region_pairs[step + 1 :]):
                del ngrams[r]
        if prep.sentences is not None:
            feats["sentences"] = sentence_alignment(prep.sentences[ra], prep.sentences[rb], ia, ib)
        if rerank is not None:
            feats["rerank"] = _rerank_feature(rerank, ra, rb, a.texts, b.texts, ia, ib, feats["cosine"])
        t_cand += t2 - t1
        t_feat += time.perf_counter() - t2
        blocks.append(
            PairBlock(
                ra,
                rb,
                ia,
                ib,
                feats,
                explain,
                reviewed=None if reviewed is None else reviewed.targets(ra, rb, ia, ib),
            )
        )
    if timings is not None:
        timings["candidates"], timings["features"] = t_cand, t_feat
    prep.evidence = {}  # per-product evidence objects (~2 KB each): freed before scoring
    return blocks, figures, lex_stats


def score_blocks(
    blocks: list[PairBlock],
    prep: Prepared,
    features: Sequence[str],
    fit_lab: Labels | None,
    settings: MatchSettings,
) -> tuple[PairScorer, PairScorer | None]:
    """Fit and apply the scorer (``p1``, ``score``); with 3+ regions and ``corroborate``, a second
    pass with the third-region evidence. Returns both scorers (the second None when not run)."""
    scorer1 = _fit_and_score(blocks, prep.data, features, fit_lab, seed=None)
    for blk in blocks:
        blk.p1 = blk.score
    if not (settings.corroborate and len(prep.regions) > 2 and blocks):
        return scorer1, None
    # second pass: a pair both of whose products match the same SKU of a third region is
    # corroborated (identity is transitive); refit with that evidence. The seed adds the
    # third-region support to pass one's log-odds (both z-scored, as in pass one): a target
    # that is a function of the old features alone would teach the new one nothing.
    triangles = corroboration(blocks)
    for blk, tri in zip(blocks, triangles, strict=True):
        blk.feats["ev_triangle"] = tri
    seed = default_seed([log_odds(blk.score) for blk in blocks], triangles)
    bounds = np.cumsum([0, *(len(blk) for blk in blocks)])
    scorer2 = _fit_and_score(
        blocks,
        prep.data,
        (*features, "ev_triangle"),
        fit_lab,
        seed=[seed[lo:hi] for lo, hi in itertools.pairwise(bounds)],
    )
    for blk in blocks:
        blk.explain = corroborated(blk.explain, blk.feats["ev_triangle"])
    return scorer1, scorer2


def _scores_from(scored: Any, features: Sequence[str], fit_lab: Labels | None) -> str:
    """Who scores the pairs: on a run from feature parts, ``score task`` when its scorers
    (:mod:`.part_scores`) fit this run, else ``match task`` and why (logged)."""
    if scored is None:
        return "match task"
    if isinstance(scored, tuple):
        if fit_lab:
            why = "the scorer is fitted on labels, in the match task"
        elif tuple(scored[0].features) != tuple(features):
            why = f"the score task's features {list(scored[0].features)} are not this run's {list(features)}"
        else:
            return "score task"
    else:
        why = str(scored)
    logger.info("the match task scores the pairs itself: %s", why)
    return f"match task ({why})"


def _decisions_from(decided: Any, scores_from: str, lab: Labels | None) -> str:
    """Who decides the pairs: on a run from feature parts, ``score task`` when its decisions
    (:mod:`.part_decisions`) were made on this run's scores with its settings and the run has no
    labels (their cut, judges and sweep are the match task's), else ``match task`` and why."""
    if decided is None:
        return "match task"
    manifest, _ = decided
    if scores_from != "score task":
        why = "the scores are the match task's own"
    elif lab:
        why = "the run has labels"
    elif isinstance(manifest, str):
        why = manifest
    else:
        return "score task"
    logger.info("the match task decides the pairs itself: %s", why)
    return f"match task ({why})"


def corroborated(explain: Sequence[str], triangle: Any) -> list[str]:
    """``explain`` with the third-region support said where it is strong (>= 0.5)."""
    return [
        "; ".join(filter(None, (e, f"corroborated via a third region ({t:.2f})"))) if t >= 0.5 else e
        for e, t in zip(explain, triangle, strict=True)
    ]


def decide(
    blocks: list[PairBlock],
    prep: Prepared,
    settings: MatchSettings,
    lab: Labels | None,
    scorer: PairScorer,
    reviewed: ReviewedPairs | None,
) -> Decision:
    """The cut (given, from labels, or label-free), then the one-to-one rule per region pair with
    ties given to the lowest SKUs (``accepted``, ``ambiguous``); the group rule runs on the table."""
    method = settings.method
    judges = judges_for(prep.data, lab, [b.key for b in blocks], text_ties=settings.text_ties) if lab else {}
    decision = Decision(threshold=settings.threshold, method="given", judges=judges)
    if lab:
        for blk in blocks:
            blk.accepted = np.zeros(len(blk), dtype=bool)
        decision.sweep_rows = threshold_sweep(
            _pairs_table(blocks, prep.data, 1.0)[0],
            judges,
            method,
            allow_same_region=settings.allow_same_region,
        )
        if settings.threshold is None and (settings.fit_on_labels or settings.target_precision is not None):
            decision.threshold = calibrate_threshold(decision.sweep_rows, settings.target_precision)
            decision.method = "labels: " + ("target precision" if settings.target_precision else "F1-best")
    if decision.threshold is None:
        decision.threshold, decision.match_share, decision.method = label_free_cut(blocks, scorer, method)
    if reviewed is not None:
        if decision.method == "prior-shift EM":
            decision.threshold = reviewed.threshold(blocks, decision.threshold)
            decision.method += " + reviewed pairs"
        reviewed.force(blocks)
    for blk in blocks:
        link_block(blk, prep.data, prep.text_sets, decision.threshold, method)
    return decision


def label_free_cut(
    blocks: Iterable[PairBlock], scorer: PairScorer, method: AssignMethod
) -> tuple[float, float | None, str]:
    """``(threshold, match_share, how)`` without labels: the prior-shift cut of a fitted scorer, the
    default of a hand-set one (:func:`_auto_threshold`)."""
    threshold, share = _auto_threshold(blocks, scorer, method)
    how = (
        "prior-shift EM"
        if share is not None
        else f"default 0.5 (fewer than {MIN_SELF_TRAINING} reciprocal-best pairs to self-train on)"
    )
    return threshold, share, how


def one_to_one(
    blk: PairBlock, text_sets: Mapping[str, TextSets], threshold: float, method: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(accepted, rival)`` of ``blk``: the one-to-one rule, ties given to the lowest SKUs, and per
    accepted pair the index of a rival with exactly its score (-1: none; it was decided by a tie)."""
    accepted = link_pairs(blk.ia, blk.ib, blk.score, threshold, method)
    ts_a, ts_b = text_sets[blk.ra], text_sets[blk.rb]
    accepted = prefer_lower_rows(blk.ia, blk.ib, blk.score, accepted, ts_a, ts_b)
    return accepted, tied_rivals(blk.ia, blk.ib, blk.score, accepted)


def link_block(
    blk: PairBlock, data: CatalogData, text_sets: Mapping[str, TextSets], threshold: float, method: str
) -> None:
    """The one-to-one rule on ``blk`` (``accepted``), ties given to the lowest SKUs and flagged
    (``ambiguous``, named in ``explain``). The full and the incremental run both decide with it."""
    blk.accepted, rival = one_to_one(blk, text_sets, threshold, method)
    mark_ties(blk, data, rival)


def result_tables(
    blocks: list[PairBlock], prep: Prepared, settings: MatchSettings, threshold: float
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The pairs table (with ``p1`` for the context), after the group rule; groups, unmatched
    products and same-region duplicate listings. ``blocks`` is consumed (emptied): the table holds
    all that the later stages read, and the blocks' rows, scores and decisions (~35 B a pair) would
    otherwise stay beside it through the group rule, the unmatched pass and the report."""
    # the table takes each feature column from the blocks as it stacks it: per-block copies would
    # double the peak
    pairs, pid_a, pid_b = _pairs_table(blocks, prep.data, threshold, extra=("p1",), consume=True)
    blocks.clear()
    release_freed_memory()
    first = (pairs["decision"] == "match").to_numpy()
    accepted, refused, groups = apply_group_rule(
        pairs, first, threshold, settings.method, allow_same_region=settings.allow_same_region
    )
    pairs.loc[accepted & ~first, "decision"] = "match"  # freed products matched again
    pairs.loc[refused, "decision"] = "conflict"
    del first, accepted, refused
    release_freed_memory()  # the group rule's pair-sized transients, before the unmatched pass's
    unmatched = _unmatched(pairs, prep.data, pid_a, pid_b, threshold)
    duplicates = _duplicates(prep.data, prep.text_sets)
    return pairs, groups, unmatched, duplicates


def _labels(labels: Any, data: CatalogData) -> tuple[Labels | None, str | None]:
    """The labels that name products of ``data`` (None without labels), and a note when none does."""
    if labels is None:
        return None, None
    lab = labels_from_gtin(data) if isinstance(labels, str) and labels == "gtin" else load_labels(labels)
    lab, dropped = labels_for(lab, data)
    if not lab:  # e.g. the demo's labels on another collection: no figures rather than wrong ones
        logger.warning("labels name none of the matched SKUs (%d dropped): not scored", dropped)
        return lab, f"labels name none of the matched SKUs ({dropped} labels); run not scored"
    return lab, None


def _region_context(
    prep: Prepared,
    r: str,
    figures: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    lex_stats: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> RegionContext:
    empty = (np.zeros(0, np.int32), np.zeros(0, np.int32))
    return RegionContext(
        skus=np.asarray(prep.data[r].skus, dtype=object),
        text_key=prep.keys[r],
        content_hash=np.asarray(prep.hashes[r], dtype=object),
        mean=prep.means.get(r),
        radius={o: figures[(r, o)][0] for o in prep.regions if (r, o) in figures},
        floor={o: figures[(r, o)][1] for o in prep.regions if (r, o) in figures},
        lex_keys=lex_stats.get(r, empty)[0],
        lex_df=lex_stats.get(r, empty)[1],
        **prep.sentence_stats.get(r, {}),
    )


def _summary(
    candidates: Mapping[tuple[str, str], int],
    pairs: pd.DataFrame,
    prep: Prepared,
    settings: MatchSettings,
    decision: Decision,
    scorer: PairScorer,
    record: dict[str, Any],
    timings: dict[str, float],
    path: str,
    duplicates: pd.DataFrame,
    model: str | None,
    collection: str | None,
) -> dict[str, Any]:
    is_match = pairs["decision"] == "match"
    return {
        "model": model,
        "collection": collection,
        "threshold": round(float(decision.threshold), 4),
        "threshold_method": decision.method,
        "match_share": round(decision.match_share, 4) if decision.match_share is not None else None,
        "labels_used_for": None,
        "regions": prep.regions,
        "k": settings.k,
        "candidates_path": path,
        "method": settings.method,
        "scorer": {"fitted_on": scorer.fitted_on, "weights": scorer.describe()},
        "counts": {
            f"{ra}|{rb}": {
                "candidates": n,
                "matches": int(((pairs["region_a"] == ra) & (pairs["region_b"] == rb) & is_match).sum()),
            }
            for (ra, rb), n in candidates.items()
        },
        "timings": {name: round(v, 3) for name, v in timings.items()},
        "counts_duplicates": len(duplicates),
        "reproducibility": record,
        "counts_ambiguous": int(pairs["ambiguous"][is_match].sum()),
    }


def mark_ties(blk: PairBlock, data: CatalogData, rival: np.ndarray) -> None:
    """Flag accepted pairs that a tie alone decided (``blk.ambiguous``: ``rival`` >= 0, from
    :func:`one_to_one`) and name the rival in their explanation."""
    blk.ambiguous = rival >= 0
    if not blk.ambiguous.any():
        return
    a, b = data[blk.ra], data[blk.rb]
    explain = list(blk.explain)
    for i in np.flatnonzero(blk.ambiguous):
        j = rival[i]
        other = (
            f"{b.region}/{b.skus[blk.ib[j]]}" if blk.ia[j] == blk.ia[i] else f"{a.region}/{a.skus[blk.ia[j]]}"
        )
        note = f"ambiguous: tie with {other} (same score)"
        explain[i] = f"{note}; {explain[i]}" if explain[i] else note
    blk.explain = explain


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
    blocks: Iterable[PairBlock], scorer: PairScorer, method: AssignMethod
) -> tuple[float, float | None]:
    """Label-free cut over all region pairs: ``(threshold, match_share)``.

    Runs the one-to-one rule with no threshold, then :func:`.prior_shift_threshold` on the scores
    of the pairs it links. A hand-weighted fallback scorer has no even-odds calibration to
    re-base, so it keeps :data:`DEFAULT_THRESHOLD` (``match_share`` None). ``blocks`` may be read
    one at a time (a generator): only each one's linked scores are kept.
    """
    if scorer.fitted_on == "default":
        return DEFAULT_THRESHOLD, None
    linked = [b.score[link_pairs(b.ia, b.ib, b.score, 0.0, method)] for b in blocks]
    scores = np.concatenate(linked) if linked else np.zeros(0)
    if len(scores) == 0:
        return DEFAULT_THRESHOLD, None
    cut, share = prior_shift_threshold(scores)
    return float(snap(max(cut, THRESHOLD_FLOOR))), float(share)


RERANK_TOP = 3  # candidates per product (by cosine) that the rerank callback scores


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


def _centred_sentences(
    sentences: Mapping[str, SentenceVectors] | None, data: CatalogData
) -> tuple[dict[str, SentenceVectors] | None, dict[str, dict[str, Any]]]:
    """Centred sentence vectors per region (None when the alignment feature is off), and per region
    the statistics an incremental run freezes (``sent_mean``, ``sent_keys``, ``sent_df``: .context).

    IDF weights of indexed (distinct-row) vectors come from the index itself, so the texts are not
    split again; vectors with one row per occurrence take :func:`.sentence_idf` of the texts as before.
    """
    if sentences is None:
        return None, {}
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
        out[r], stats[r] = centred_region_sentences(pending.pop(r), data[r].texts)
    return out, stats


def _fit_and_score(
    blocks: list[PairBlock],
    data: CatalogData,
    features: Sequence[str],
    lab: Labels | None,
    seed: list[np.ndarray] | None,
) -> PairScorer:
    """Fit one scorer over all region pairs (on labels when usable, else self-training) and
    store each block's probabilities in ``blk.score``."""
    scorer = PairScorer(features=tuple(features))
    if not blocks:
        return scorer

    fitted = False
    if lab:
        known, y = zip(
            *(
                _labelled_targets(lab, b.ra, b.rb, _skus(data[b.ra])[b.ia], _skus(data[b.rb])[b.ib])
                for b in blocks
            ),
            strict=True,
        )
        known_all, y_all = _with_reviewed(blocks, np.concatenate(known), np.concatenate(y))
        if y_all[known_all].any() and not y_all[known_all].all():
            scorer.fit(*_fit_rows(blocks, known_all, y_all), source="labels")
            fitted = True
    if not fitted and sum(len(blk) for blk in blocks):
        if seed is None:  # one z-scored column at a time over every region pair (see default_seed)
            columns = ([blk.feats[c].to_numpy() for blk in blocks] for c in seed_columns(features))
            bounds = np.cumsum([0, *(len(blk) for blk in blocks)])
            seed = list(np.split(default_seed(*columns), bounds[1:-1]))
        # products of different region pairs never meet: each pair's masks on its own pairs
        masks = [training_masks(s, blk.ia, blk.ib) for blk, s in zip(blocks, seed, strict=True)]
        seed = None  # the seed's views (and so its array) go with it
        pos = np.concatenate([m[0] for m in masks])
        neg = np.concatenate([m[1] for m in masks])
        del masks
        if pos.sum() < MIN_SELF_TRAINING or neg.sum() < MIN_SELF_TRAINING:
            scorer.default()
        else:
            keep, y = _with_reviewed(blocks, pos | neg, pos.astype(np.int8))
            del pos, neg
            scorer.fit(*_fit_rows(blocks, keep, y), source="self-training")
    for blk in blocks:
        blk.score = scorer.predict(blk.feats) if len(blk.feats) else np.zeros(0)
    return scorer


def _fit_rows(blocks: list[PairBlock], mask: np.ndarray, y: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows a scorer is fitted on: the ``mask``ed pairs of every block and their targets, as
    :meth:`.scoring.PairScorer.fit` would subsample them (beyond :data:`.scoring.MAX_FIT_ROWS`, the
    same seeded rows), picked before they are stacked: the masked rows of every pair (most
    candidates) stacked whole were a copy of the features the fit then threw nine tenths of away."""
    picked = np.flatnonzero(mask)
    y = np.asarray(y)[picked]
    if len(picked) > MAX_FIT_ROWS:
        rows = np.sort(np.random.default_rng(0).choice(len(picked), MAX_FIT_ROWS, replace=False))
        picked, y = picked[rows], y[rows]
    bounds = np.cumsum([0, *(len(blk) for blk in blocks)])
    parts = [
        blk.feats.iloc[picked[(picked >= lo) & (picked < hi)] - lo]
        for blk, lo, hi in zip(blocks, bounds[:-1], bounds[1:], strict=True)
    ]
    return pd.concat(parts, ignore_index=True), y


def _with_reviewed(
    blocks: list[PairBlock], known: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fit targets with the reviewed pairs added; a reviewer's verdict wins over the label-free
    prior's (self-training) or a labels file's target for the same pair."""
    reviewed = [blk.reviewed for blk in blocks]
    if all(t is None for t in reviewed):
        return known, y
    t = np.concatenate(
        [np.full(len(b), -1, np.int8) if r is None else r for b, r in zip(blocks, reviewed, strict=True)]
    )
    y = np.where(t >= 0, t, y).astype(y.dtype)
    return known | (t >= 0), y


def _pairs_table(
    blocks: list[PairBlock],
    data: CatalogData,
    threshold: float,
    *,
    extra: Sequence[str] = (),
    consume: bool = False,
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

    ``extra``: per-block float arrays (:class:`.blocks.PairBlock` attributes) added as columns after
    :data:`PAIR_COLUMNS` (the pass-one probability ``p1`` the match context keeps). A block's
    ``conflict`` mask, when set, marks pairs the group rule refused (an incremental run's kept
    decisions).

    ``consume``: each block's feature column and explanations are dropped as soon as the table holds
    them, so the blocks' ~50 B a pair and the table's ~110 B do not add up at the match's peak (the
    blocks keep their rows, scores and decisions).
    """
    if not blocks:
        empty = np.zeros(0, dtype=np.int64)
        return pd.DataFrame(columns=[*PAIR_COLUMNS, *extra]), empty, empty
    seq = sorted(range(len(blocks)), key=lambda n: blocks[n].key)
    # int32 orders and product numbers where they fit (4 B a pair each, held through the table and
    # the unmatched pass; int64 and a copy were ~0.2 GB more at 12.56 M pairs)
    index = np.int32 if max(len(b) for b in blocks) < 2**31 else np.int64
    orders = {n: np.argsort(-blocks[n].score, kind="stable").astype(index) for n in seq}
    offset = product_offsets(data)
    pid = np.int32 if sum(len(t) for t in data.values()) < 2**31 else np.int64
    pid_a = np.concatenate([(blocks[n].ia[orders[n]] + offset[blocks[n].ra]).astype(pid) for n in seq])
    pid_b = np.concatenate([(blocks[n].ib[orders[n]] + offset[blocks[n].rb]).astype(pid) for n in seq])
    sku_a, sku_b = _product_columns(data, pid_a, pid_b, lambda t: t.skus)
    text_a, text_b = _product_columns(data, pid_a, pid_b, lambda t: t.texts)
    regions = sorted(data)

    def column(get: Any, dtype: Any = None) -> np.ndarray:
        return np.concatenate([np.asarray(get(blocks[n]), dtype=dtype)[orders[n]] for n in seq])

    def region(side: str) -> pd.Categorical:
        """Ordered by name, so ``region_a < region_b`` compares as the strings did."""
        codes = column(lambda blk: np.full(len(blk), regions.index(getattr(blk, side)), dtype=np.int32))
        return pd.Categorical.from_codes(codes, categories=pd.Index(regions, dtype=object), ordered=True)

    def feat(name: str, missing: float = 0.0) -> np.ndarray:
        out = column(
            lambda blk: (
                blk.feats[name].to_numpy(np.float32)
                if name in blk.feats
                else np.full(len(blk), missing, dtype=np.float32)
            )
        )
        if consume:
            for blk in blocks:
                if name in blk.feats:
                    del blk.feats[name]
        return out

    def explained() -> pd.Categorical:
        out = _shared_strings([blocks[n].explain for n in seq], [orders[n] for n in seq])
        if consume:
            for blk in blocks:
                blk.explain = []
        return out

    code = {d: i for i, d in enumerate(DECISIONS)}
    verdict = column(
        lambda blk: np.where(
            blk.mask("accepted"),
            code["match"],
            np.where(
                blk.mask("conflict"),
                code["conflict"],
                np.where(blk.score >= threshold, code["not_mutual"], code["below_threshold"]),
            ),
        ).astype(np.int8)
    )
    columns: dict[str, Any] = {
        "region_a": region("ra"),
        "sku_a": sku_a,
        "region_b": region("rb"),
        "sku_b": sku_b,
        "score": column(lambda blk: blk.score, np.float64),
        "cosine": feat("cosine"),
        "decision": pd.Categorical.from_codes(verdict, categories=pd.Index(list(DECISIONS), dtype=object)),
        "ambiguous": column(lambda blk: blk.mask("ambiguous"), bool),
        "csls": feat("csls"),
        "lexical": feat("lexical"),
        "sentences": feat("sentences", np.nan),  # NaN: matched without sentence vectors
        **{c: feat(c) for c in EVIDENCE_COLUMNS},
        "ev_triangle": feat("ev_triangle"),
        "explain": explained(),
        "text_a": text_a,
        "text_b": text_b,
        **{name: column(lambda blk, name=name: getattr(blk, name), np.float64) for name in extra},
    }
    return pd.DataFrame(columns, columns=[*PAIR_COLUMNS, *extra], copy=False), pid_a, pid_b


def _shared_strings(parts: Sequence[Sequence[str]], orders: Sequence[np.ndarray]) -> pd.Categorical:
    """``parts`` (lists of strings, most of them repeats of a few), each taken in its ``orders``, as
    one categorical, categories sorted as ``pd.Categorical`` sorts them. Why not
    ``pd.Categorical(values)``: pandas sizes its hash table for every value, not for the distinct
    ones (~0.5 GB at 12 M pairs, the match task's peak at 300k per region); a dict of the distinct
    strings costs a few KB, and int32 codes made a part at a time (not a list of every pair's
    string in table order, ~8 B a pair more, with int64 codes twice) keep the pairs table's peak
    down (-0.1 GB at 12.56 M pairs)."""
    vocab: dict[str, int] = {}
    codes = [
        np.fromiter((vocab.setdefault(e, len(vocab)) for e in part), np.int32, len(part))[order]
        for part, order in zip(parts, orders, strict=True)
    ]
    words = np.array(list(vocab), dtype=object)
    by_word = np.argsort(words, kind="stable")
    rank = np.empty(len(by_word), dtype=np.int32)
    rank[by_word] = np.arange(len(by_word), dtype=np.int32)
    flat = np.concatenate(codes) if codes else np.zeros(0, np.int32)
    del codes
    return pd.Categorical.from_codes(rank[flat], categories=pd.Index(words[by_word], dtype=object))


def product_codes(data: CatalogData, values: Any) -> tuple[np.ndarray, pd.Index]:
    """Per product number (region offset + row), the code of its ``values(table)`` among the
    catalog's distinct values, and those values (the pairs table's categories)."""
    codes, uniques = pd.factorize(
        np.concatenate([np.asarray(values(t), dtype=object) for t in data.values()])
    )
    return codes.astype(np.int32), pd.Index(uniques, dtype=object)


def rest_pairs(
    data: CatalogData, floor: PairFloor, parts: tuple[Any, list[Any]], *, corroborate: bool, sentences: bool
) -> RestPairs:
    """The pairs the blocks did not hold, for the report (:class:`.held_pairs.RestPairs`)."""
    sku_codes, skus = product_codes(data, lambda t: t.skus)
    text_codes, texts = product_codes(data, lambda t: t.texts)
    return RestPairs(
        folder=parts[0],
        plan=parts[1],
        floor=floor,
        offsets=product_offsets(data),
        sku_codes=sku_codes,
        text_codes=text_codes,
        skus=skus,
        texts=texts,
        corroborate=corroborate,
        sentences=sentences,
    )


def _product_columns(
    data: CatalogData, pid_a: np.ndarray, pid_b: np.ndarray, values: Any
) -> tuple[pd.Categorical, pd.Categorical]:
    """One per-product value (``values(table)``: SKUs, texts) for both sides of every pair, as
    categoricals over the catalog's distinct values.

    Why: a string column holds its own copy of every value, and each product recurs in ~20 pairs;
    at 100k products per region the two text columns alone were ~1 GB of repeated descriptions.
    Codes into the distinct values keep the same values at 4 bytes a pair.
    """
    codes, categories = product_codes(data, values)

    def side(pid: np.ndarray) -> pd.Categorical:
        return pd.Categorical.from_codes(codes[pid], categories=categories)

    return side(pid_a), side(pid_b)


def _unmatched(
    pairs: pd.DataFrame, data: CatalogData, pid_a: np.ndarray, pid_b: np.ndarray, threshold: float
) -> pd.DataFrame:
    """Products without an accepted twin, with their best candidate anywhere for review.

    Array work on product numbers (``pid_a``/``pid_b``, see :func:`_pairs_table`): each side's best
    score per product, then its first row with that score (no sort of the millions of scores: that
    took 5 s and ~40 B a pair at 12.5 M). Ties: the earlier row wins, and a product's pairs as side a
    before those as side b.
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
    for side_is_a, pid in ((True, pid_a), (False, pid_b)):
        top = np.full(total, -np.inf)
        np.fmax.at(top, pid, score)  # fmax: a NaN score never wins
        rows = _rows_at_top(score, top, pid)  # the rows holding their product's best, ascending
        uniq, first = np.unique(pid[rows], return_index=True)
        rows = rows[first]  # the earliest of them
        better = score[rows] > best_score[uniq]
        best_row[uniq[better]] = rows[better]
        best_score[uniq[better]] = score[rows[better]]
        from_a[uniq[better]] = side_is_a

    keep = np.flatnonzero(~matched)
    hit = best_row[keep]
    has = hit >= 0
    safe = np.where(has, hit, 0)
    side_a = from_a[keep]
    if len(pairs):  # the best rows' cells alone as objects: whole columns were 100 MB a column at 12.5 M

        def at_best(col: str) -> np.ndarray:
            return pairs[col].take(safe).to_numpy(object)

        other_region = np.where(side_a, at_best("region_b"), at_best("region_a"))
        other_sku = np.where(side_a, at_best("sku_b"), at_best("sku_a"))
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


def _rows_at_top(score: np.ndarray, top: np.ndarray, pid: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Rows whose ``score`` equals their product's ``top``, ascending; compared ``chunk`` rows at a
    time (a whole-column ``top[pid]`` and its mask were ~9 B a pair at the match task's peak)."""
    found = [
        start + np.flatnonzero(score[start : start + chunk] == top[pid[start : start + chunk]])
        for start in range(0, len(score), chunk)
    ]
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _twin_holders(
    pairs: pd.DataFrame,
    pid_a: np.ndarray,
    pid_b: np.ndarray,
    match_rows: np.ndarray,
    region_col: np.ndarray | None,
    partner: np.ndarray,
    keep: np.ndarray,
) -> np.ndarray:
    """Per unmatched product ``keep[n]``, the accepted row that links its best candidate
    ``partner[n]`` to a product of ``keep[n]``'s region (the later row where two do), or -1.

    Keys ``product x (regions + 1) + region code`` sorted once and searched: a dict of ``(product,
    region)`` tuples held ~200 B an accepted pair, the match task's peak at 300k x 3 (900k pairs).
    """
    if not len(keep) or not len(match_rows) or region_col is None:
        return np.full(len(keep), -1, dtype=np.int64)
    names = pd.Index(pd.unique(region_col))
    width = len(names) + 1  # code 0: a region the catalog lacks

    def codes(side: str) -> np.ndarray:
        return names.get_indexer(pairs[side].take(match_rows).to_numpy(object)).astype(np.int64) + 1

    keys = np.empty(2 * len(match_rows), dtype=np.int64)
    keys[0::2] = pid_a[match_rows].astype(np.int64) * width + codes("region_b")
    keys[1::2] = pid_b[match_rows].astype(np.int64) * width + codes("region_a")
    rows = np.repeat(match_rows.astype(np.int64), 2)
    order = np.argsort(keys, kind="stable")
    keys, rows = keys[order], rows[order]
    last = np.r_[keys[1:] != keys[:-1], True]  # of equal keys the later row, as a dict's overwrite
    keys, rows = keys[last], rows[last]
    wanted = partner.astype(np.int64) * width + names.get_indexer(region_col[keep]).astype(np.int64) + 1
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[at] == wanted, rows[at], -1)


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
    """Why each unmatched product (``keep``, best pair row ``hit``) has no twin, in words. Only the
    accepted rows' and the best rows' cells become Python objects, not the table's columns."""
    score = pairs["score"].to_numpy(np.float64)
    match_rows = np.flatnonzero((pairs["decision"] == "match").to_numpy())
    conflict = np.zeros(len(keep), dtype=bool)
    if len(pairs):
        conflict = (pairs["decision"].take(np.where(has, hit, 0)) == "conflict").to_numpy() & has
    safe = np.where(has, hit, 0)
    partner = np.where(side_a, pid_b[safe], pid_a[safe]) if len(pairs) else hit  # the best candidate
    holder_row = _twin_holders(pairs, pid_a, pid_b, match_rows, region_col, partner, keep)
    out = []
    for n in range(len(keep)):
        if not has[n]:
            out.append("no candidate in another region")
            continue
        j = int(hit[n])
        p = int(partner[n])
        where = f"{region_col[p]}/{sku_col[p]}"  # type: ignore[index]
        if conflict[n]:
            out.append(f"its match {where} was dropped: a group may hold one SKU per region")
        elif score[j] < threshold:
            out.append(f"best candidate {where} scores {score[j]:.3f}, below the threshold {threshold:.3f}")
        elif holder_row[n] >= 0:
            t = int(holder_row[n])
            holder = int(pid_a[t] if pid_b[t] == p else pid_b[t])
            out.append(
                f"twin {where} taken by {region_col[holder]}/{sku_col[holder]} "  # type: ignore[index]
                f"(score {score[t]:.3f} vs {score[j]:.3f})"
            )
        else:
            out.append(f"best candidate {where} went unassigned in the one-to-one optimum")
    return out
