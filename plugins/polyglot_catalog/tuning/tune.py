"""The tune stage: catalog + links -> pairs -> group split -> training -> versioned, registered folder."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from polyglot_catalog.models.registry import (
    DEFAULT_MODEL,
    ensure_bundled_model,
    load_sentence_transformer,
    register_tuned,
    resolve_model,
)
from polyglot_catalog.tuning.output import check_name, read_meta, save_version
from polyglot_catalog.tuning.pairs import (
    CatalogTexts,
    link_pairs,
    load_optional_labels,
    pair_counts,
    read_catalog,
    split_by_group,
)
from polyglot_catalog.tuning.rerank import RerankConfig, train_reranker
from polyglot_catalog.tuning.train import TuneConfig, train

log = logging.getLogger(__name__)
DEFAULT_NAME = "catalog-tuned"


def peak_rss_mb() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def training_pool(catalog: CatalogTexts, pairs: pd.DataFrame) -> pd.DataFrame:
    """``region, text, component`` of every SKU in ``pairs``: negatives and distractors come from here."""
    sides = [
        pd.DataFrame(
            {"region": pairs[f"region_{s}"], "sku": pairs[f"sku_{s}"], "component": pairs["component"]}
        )
        for s in ("a", "b")
    ]
    pool = pd.concat(sides, ignore_index=True).drop_duplicates(["region", "sku"])
    pool["text"] = [catalog.texts[(r, s)] for r, s in zip(pool["region"], pool["sku"], strict=True)]
    return pool.reset_index(drop=True)


def tune_pairs(
    pairs: pd.DataFrame,
    catalog: CatalogTexts,
    out: str | Path,
    *,
    model: str = DEFAULT_MODEL,
    name: str = DEFAULT_NAME,
    config: TuneConfig | None = None,
    register: bool = True,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train on ready ``pairs`` (see :func:`.pairs.link_pairs`); write and register the next version.

    Returns a JSON-able summary: ``model`` (the pinned ``name@vN`` that ``model=`` takes),
    ``model_dir``, ``content_hash``, pair counts, validation top-1 before/after, time, peak memory.
    """
    config = config or TuneConfig()
    check_name(name)
    spec = resolve_model(model)
    val = split_by_group(pairs["component"], config.val_fraction, config.seed)
    train_pairs, val_pairs = pairs[~val].reset_index(drop=True), pairs[val].reset_index(drop=True)
    log.info(
        "tune: %d training pairs, %d validation pairs (split by product group)",
        len(train_pairs),
        len(val_pairs),
    )
    pool = training_pool(catalog, train_pairs)
    st_model = load_sentence_transformer(spec, device=config.device)
    with tempfile.TemporaryDirectory(prefix="polyglot-tune-") as work:
        outcome = train(st_model, train_pairs, val_pairs, pool, config, Path(work))
    meta = {
        "base_model": spec.name,
        "pairs": {"train": pair_counts(train_pairs), "validation_pairs": len(val_pairs)},
        "config": config.to_dict(),
        "training": {
            "steps": outcome.steps,
            "seconds": round(outcome.seconds, 1),
            "stopped_by": outcome.stopped_by,
            "device": outcome.device,
            "precision": outcome.precision,
            "peak_rss_mb": peak_rss_mb(),
            "history": outcome.history,
        },
        "val_before": outcome.val_before,
        "val_after": outcome.val_after,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra_meta or {}),
    }
    folder, saved, pinned = _publish(st_model, out, name, meta, register, "tune")
    return {
        "model": pinned,
        "model_dir": str(folder),
        "content_hash": saved["content_hash"],
        "base_model": spec.name,
        "pairs": meta["pairs"],
        "steps": outcome.steps,
        "seconds": meta["training"]["seconds"],
        "stopped_by": outcome.stopped_by,
        "peak_rss_mb": meta["training"]["peak_rss_mb"],
        "val_before": outcome.val_before,
        "val_after": outcome.val_after,
    }


def tune_catalog(
    source: str,
    out: str | Path,
    *,
    labels: str | Path | None = None,
    reviewed: str | Path | None = None,
    use_gtin: bool = True,
    model: str = DEFAULT_MODEL,
    name: str = DEFAULT_NAME,
    config: TuneConfig | None = None,
    rerank: RerankConfig | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` on the links a catalog already has and register the result.

    With ``rerank``, also train the cross-encoder re-ranker (``<name>-reranker``, from ``model``'s
    weights, candidates mined with the tuned encoder) and report it under ``"reranker"``.

    ``labels`` and ``reviewed`` are Parquet/CSV files with ``region, sku, group_id`` (reviewed:
    the review loop's accepted decisions, one group per accepted product); ``use_gtin`` adds SKUs
    sharing a GTIN across regions. At least one of them must link products of the catalog.
    """
    check_name(name)
    label_map = load_optional_labels(labels, "labels")
    reviewed_map = load_optional_labels(reviewed, "reviewed decisions")
    catalog = read_catalog(source)
    pairs = link_pairs(catalog, label_map, reviewed_map, use_gtin=use_gtin)
    if pairs.empty:
        raise ValueError(
            f"no cross-region pairs in {source!r}: give --labels or --reviewed files whose region, sku "
            "match the catalog, or GTINs shared across regions"
        )
    summary = tune_pairs(pairs, catalog, out, model=model, name=name, config=config)
    if rerank is not None:
        config = config or TuneConfig()
        summary["reranker"] = tune_reranker(
            pairs,
            catalog,
            out,
            encoder=summary["model_dir"],
            base=model,
            name=f"{name}-reranker",
            config=rerank,
            val_fraction=config.val_fraction,
            seed=config.seed,
        )
    return summary


def tune_reranker(
    pairs: pd.DataFrame,
    catalog: CatalogTexts,
    out: str | Path,
    *,
    encoder: str,
    base: str = DEFAULT_MODEL,
    name: str = "catalog-reranker",
    config: RerankConfig | None = None,
    val_fraction: float = 0.15,
    seed: int = 0,
    register: bool = True,
) -> dict[str, Any]:
    """Train the cross-encoder re-ranker on ready ``pairs``; write and register its next version.

    ``encoder`` (a model name or folder: the tuned encoder the matcher will use) mines the
    candidates; ``base`` gives the starting weights. The train/validation split is the encoder's
    (same hash of the product group, same ``val_fraction`` and ``seed``), so neither model ever
    trains on the other's validation products.
    """
    config = config or RerankConfig(seed=seed)
    check_name(name)
    val = split_by_group(pairs["component"], val_fraction, seed)
    train_pairs, val_pairs = pairs[~val].reset_index(drop=True), pairs[val].reset_index(drop=True)
    pool = training_pool(catalog, train_pairs)
    enc_spec, base_spec = resolve_model(encoder), resolve_model(base)
    st_encoder = load_sentence_transformer(enc_spec, device=config.device)
    base_dir = str(ensure_bundled_model()) if base_spec.bundled else base_spec.source
    with tempfile.TemporaryDirectory(prefix="polyglot-rerank-") as work:
        model, outcome = train_reranker(
            base_dir, st_encoder, train_pairs, val_pairs, pool, config, Path(work)
        )
    del st_encoder
    meta = {
        "kind": "reranker",
        "base_model": base_spec.name,
        "mined_with": enc_spec.name,
        "pairs": {"train": pair_counts(train_pairs), "validation_pairs": len(val_pairs)},
        "config": config.to_dict(),
        "training": {
            "steps": outcome.steps,
            "examples": outcome.examples,
            "seconds": round(outcome.seconds, 1),
            "device": outcome.device,
            "precision": outcome.precision,
            "peak_rss_mb": peak_rss_mb(),
        },
        "val_before": outcome.val_before,
        "val_after": outcome.val_after,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    folder, saved, pinned = _publish(model, out, name, meta, register, "rerank")
    return {
        "model": pinned,
        "model_dir": str(folder),
        "content_hash": saved["content_hash"],
        "steps": outcome.steps,
        "examples": outcome.examples,
        "seconds": meta["training"]["seconds"],
        "peak_rss_mb": meta["training"]["peak_rss_mb"],
        "val_before": outcome.val_before,
        "val_after": outcome.val_after,
    }


def _publish(
    model: Any, out: str | Path, name: str, meta: dict[str, Any], register: bool, what: str
) -> tuple[Path, dict[str, Any], str]:
    """Save ``model`` as the next version under ``out/name``, register it (unless told not to) and
    log it: ``(folder, saved metadata, pinned name)``; the encoder and the re-ranker share this."""
    folder = save_version(model, Path(out).expanduser(), name, meta)
    saved = read_meta(folder) or {}
    pinned = register_tuned(name, saved["version"], folder) if register else saved["model"]
    log.info("%s: wrote %s (%s), content hash %s", what, folder, pinned, saved["content_hash"][:12])
    return folder, saved, pinned
