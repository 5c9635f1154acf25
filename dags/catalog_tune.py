"""
### Catalog tune

Fine-tunes the encoder on product pairs the catalog already links (a labels file, reviewed
decisions, GTINs shared across regions), then moves the catalog over to it without downtime:

1. **tune_encoder** trains with sentence-transformers' own trainer (in-batch negatives plus one
   hard negative per pair mined from the matcher's candidates), validates on product groups it never
   trains on, stops early or at the step / time budget, and writes a versioned model folder
   (`<name>/vN`, content hash, model card) registered as `<name>@vN`. Steps, loss and ETA appear in
   this task's log. It updates the `polyglot_tuned_model` asset with the model name.
2. **reembed_with_tuned_model** triggers **catalog_embed** with the tuned model, a new collection
   (`<alias>__<name>_vN`) and `alias`: its reconcile step points the alias at the new collection only
   once every file is embedded, and its collection asset event schedules **cross_region_match**,
   whose scorer and threshold refit on the new model's features (they are self-trained per run).

* **CPU by default** within `max_minutes` / `max_steps`; a worker with a CUDA GPU trains there in
  bf16 (fp16 where bf16 is unsupported).
* **Reviewed decisions**: a labels-like Parquet (`region, sku, group_id`, one group per accepted
  product) until a review store exists.
* **Model folders** live under `out` (default `$POLYGLOT_CACHE_DIR/models/tuned`): on several
  workers, put it (and `POLYGLOT_CACHE_DIR`) on shared storage so the embed tasks find the model.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Asset, Param, dag, task

from polyglot_catalog.models.registry import DEFAULT_MODEL
from polyglot_catalog.provider.operators import COLLECTION_PATTERN, DEFAULT_COLLECTION, MODEL_PATTERN

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEMO_DIR = PROJECT_DIR / "include" / "demo_catalog"
DEFAULT_SOURCE = str(DEMO_DIR / "*.parquet")
DEMO_LABELS = DEMO_DIR / "labels.parquet"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

MODEL_ASSET = Asset(name="polyglot_tuned_model", uri="file://polyglot-catalog/tuned-model")


def new_collection(alias: str, model: str) -> str:
    """The collection a tuned model is embedded into: the alias plus the pinned model name."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{alias}__{model}")[:128]


@dag(
    dag_id="catalog_tune",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["polyglot-catalog", "tune", "model"],
    default_args={"owner": "polyglot-catalog", "retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "source": Param(
            DEFAULT_SOURCE,
            type="string",
            minLength=1,
            title="Source",
            description="Parquet catalog (file, folder or glob) whose texts the model learns.",
        ),
        "labels": Param(
            str(DEMO_LABELS) if DEMO_LABELS.exists() else None,
            type=["null", "string"],
            title="Labels",
            description="Parquet/CSV with region, sku, group_id; empty: none.",
        ),
        "reviewed": Param(
            None,
            type=["null", "string"],
            title="Reviewed decisions",
            description="Labels-like Parquet of accepted review decisions; empty: none.",
        ),
        "use_gtin": Param(
            True,
            type="boolean",
            title="GTIN links",
            description="Also pair SKUs of different regions that share a GTIN.",
        ),
        "base_model": Param(
            DEFAULT_MODEL,
            type="string",
            pattern=MODEL_PATTERN,
            title="Base model",
            description="Model to start from: registry name, tuned name or folder.",
        ),
        "name": Param(
            "catalog-tuned",
            type="string",
            pattern=NAME_PATTERN,
            title="Tuned model name",
            description="Registry name; each run adds the next version (<name>@vN).",
        ),
        "max_minutes": Param(
            30,
            type="number",
            exclusiveMinimum=0,
            title="Time budget (minutes)",
            description="Training stops after this long (the best checkpoint is kept).",
        ),
        "max_steps": Param(
            300,
            type="integer",
            minimum=1,
            title="Step budget",
            description="Training stops after this many optimiser steps.",
        ),
        "out": Param(
            None,
            type=["null", "string"],
            title="Model folder root",
            description="Where <name>/vN is written; empty: $POLYGLOT_CACHE_DIR/models/tuned.",
        ),
        "alias": Param(
            DEFAULT_COLLECTION,
            type="string",
            pattern=COLLECTION_PATTERN,
            title="Alias",
            description="Alias readers use; switched to the re-embedded collection when complete.",
        ),
    },
)
def catalog_tune() -> None:
    """Tune the encoder, then re-embed the catalog into a new collection behind the alias."""

    @task(outlets=[MODEL_ASSET], retries=0, execution_timeout=timedelta(hours=6))
    def tune_encoder(params: dict[str, Any] | None = None, outlet_events: Any = None) -> dict[str, Any]:
        """Train and register; returns the small summary (never weights) for the next task."""
        from polyglot_catalog.models.registry import cache_dir
        from polyglot_catalog.tuning import TuneConfig, tune_catalog

        assert params is not None
        out = params["out"] or str(cache_dir() / "models" / "tuned")
        config = TuneConfig(max_minutes=float(params["max_minutes"]), max_steps=int(params["max_steps"]))
        summary = tune_catalog(
            params["source"],
            out,
            labels=params["labels"],
            reviewed=params["reviewed"],
            use_gtin=bool(params["use_gtin"]),
            model=params["base_model"],
            name=params["name"],
            config=config,
        )
        summary["collection"] = new_collection(params["alias"], summary["model"])
        if outlet_events is not None:
            outlet_events[MODEL_ASSET].extra = {
                "model": summary["model"],
                "content_hash": summary["content_hash"],
            }
        return summary

    tuned = tune_encoder()

    # [START tune_reembed]
    reembed = TriggerDagRunOperator(
        task_id="reembed_with_tuned_model",
        trigger_dag_id="catalog_embed",
        conf={
            "source": "{{ params.source }}",
            "model": "{{ ti.xcom_pull(task_ids='tune_encoder')['model'] }}",
            "collection": "{{ ti.xcom_pull(task_ids='tune_encoder')['collection'] }}",
            "alias": "{{ params.alias }}",
        },
        wait_for_completion=False,
    )
    # [END tune_reembed]
    tuned >> reembed


catalog_tune()
