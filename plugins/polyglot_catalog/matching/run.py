"""One match run as the CLI and the Airflow operator both run it: full or incremental, then the report
and the match state under the collection's lock (docs/MATCH_STATE.md).

Why one function: the two callers used to build their own ``match_catalog`` call and summary, and
drifted (the CLI's summary lacked ``calibrated_on_labels``). They now differ only in how they name
the run and where the report goes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .context_store import read_context
from .incremental import FullRunRequired, match_incremental
from .pipeline import match_catalog
from .result import MatchResult
from .state import commit_match_state, full_run_reason, read_state

logger = logging.getLogger(__name__)


def calibrated_on_labels(full: dict[str, Any], *, labels: bool, threshold: bool) -> bool:
    """Whether the labels that produced the metrics also fitted the scorer or picked the threshold.

    Why: metrics measured on the data the matcher was tuned on are optimistic, and a reader of the
    report must be able to tell. Uses what the matcher records (``scorer.fitted_on``,
    ``threshold_method``); a matcher that does not record how it chose the threshold calibrated it
    on the labels whenever they came without a threshold.
    """
    if not labels:
        return False
    scorer_fitted = (full.get("scorer") or {}).get("fitted_on") == "labels"
    method = full.get("threshold_method")
    threshold_fitted = str(method).startswith("labels") if method is not None else not threshold
    return scorer_fitted or threshold_fitted


def incremental_blocker(
    state: dict[str, Any] | None,
    *,
    model: str | None,
    regions: Sequence[str] | None,
    parameters: dict[str, Any],
    reviewed: bool,
) -> str | None:
    """Why this run cannot continue from ``state`` incrementally (None: it can)."""
    reason = full_run_reason(state, model=model, regions=regions, parameters=parameters)
    if reason is not None:
        return reason
    assert state is not None
    if reviewed:
        return "reviewed decisions are applied by a full run"
    if not state.get("context_run"):
        return (
            "the last run left no match context (it applied reviewed decisions or a re-ranker, "
            "or fitted no scorer)"
        )
    return None


def continue_from(
    store: Any,
    *,
    collection: str,
    model: str | None,
    regions: Sequence[str] | None,
    parameters: dict[str, Any],
    full_rematch: bool,
    reviewed: bool,
) -> tuple[str | None, Any]:
    """Whether the next run of ``collection`` is full: ``(reason, None)``, or ``(None, context)`` to
    continue from. The run and the shard plan of a mapped full run (:mod:`.shards`) both ask here."""
    if full_rematch:
        return "requested (full re-match)", None
    state = read_state(store.client, collection)
    reason = incremental_blocker(
        state, model=model, regions=regions, parameters=parameters, reviewed=reviewed
    )
    if reason is not None:
        return reason, None
    context_run = (state or {}).get("context_run")
    context = read_context(store.client, collection, context_run)
    if context is None:
        return f"the match context of run {context_run!r} is missing or incomplete", None
    return None, context


def run_match(
    store: Any,
    *,
    run_id: str,
    write_report: Callable[[MatchResult], Path],
    collection: str,
    model: str,
    regions: Sequence[str] | None = None,
    k: int = 10,
    threshold: float | None = None,
    labels: str | None = None,
    fit_on_labels: bool = False,
    full_rematch: bool = False,
    decisions: Any = None,
    **matcher: Any,
) -> tuple[MatchResult, Path]:
    """Match ``store``'s catalog, write the report (``write_report(result)``, under the state lock)
    and commit the match state; returns the result and the report folder.

    Incremental unless ``full_rematch`` or :func:`incremental_blocker` says why not; the summary's
    ``mode`` says which ran and ``full_run_reason`` why a full one did. ``matcher``: further
    :func:`.pipeline.match_catalog` arguments (``candidates``, ``hnsw_ef``, ``shards``, ``shard_dir``) of a
    full run.
    """
    result: MatchResult | None = None
    reason, context = continue_from(
        store,
        collection=collection,
        model=model,
        regions=regions,
        parameters={"k": k, "threshold": threshold, "fit_on_labels": fit_on_labels},
        full_rematch=full_rematch,
        reviewed=decisions is not None,
    )
    if context is not None:
        try:
            result = match_incremental(store, context, labels=labels, model=model, collection=collection)
            result.summary["full_run_reason"] = None  # summary.json, XCom and state say alike
        except FullRunRequired as e:
            reason = str(e)
    if result is None:
        logger.info("collection %s: full match (%s)", collection, reason)
        result = match_catalog(
            store,
            regions=regions,
            k=k,
            threshold=threshold,
            labels=labels,
            fit_on_labels=fit_on_labels,
            model=model,
            collection=collection,
            **({} if decisions is None else {"decisions": decisions}),
            **matcher,
        )
        result.summary["mode"] = "full"
        result.summary["full_run_reason"] = reason
    result.summary["calibrated_on_labels"] = calibrated_on_labels(
        result.summary, labels=labels is not None, threshold=threshold is not None
    )
    written: list[Path] = []

    def report(r: MatchResult) -> None:
        written.append(write_report(r))
        r.keep_accepted_pairs()  # on disk now; the commit's apply need not run beside them

    commit_match_state(store, result, run_id, full_rematch=full_rematch, before_apply=report)
    return result, written[0]
