"""
### Cross-region match

Finds the same product across regions (e.g. DE/FR/US) in the Qdrant collection that **catalog_embed**
filled, and writes one report folder per run: `pairs.parquet`, `groups.parquet`,
`unmatched.parquet`, `summary.json` and a self-contained `report.html`.

* **Schedule**: runs whenever catalog_embed updates the collection asset (asset-aware scheduling)
  and then matches the collection and model named in the newest triggering event; or by hand with
  the trigger form, which matches the `collection` and `model` params.
* **Reports**: under `$POLYGLOT_DATA_DIR/reports/<out_name or run id>`.
* **Match state**: each run writes `group_id` and `twins` onto the catalog points in Qdrant (stable
  group ids) and `changes.parquet` (what changed since the last run) into the report folder; see
  docs/MATCH_STATE.md. Runs are **incremental** by default: only the products that changed since the
  last run are scored, and only the decisions they touch are solved again; the first run, one after a
  change of model, regions or matcher parameters, and one with `full_rematch` are full.
* **Labels**: none by default. A Parquet file with `region, sku, group_id`, or `gtin` to group SKUs
  by GTIN; when set, `summary.json` and the report carry precision, recall and F1 over the SKUs the
  labels name (labels naming none of the collection's SKUs score nothing, and the report says so).
  The labels only score the matches unless `calibrate_on_labels` is on, which also tunes the matcher
  on them and makes those figures optimistic (`calibrated_on_labels` in the summary).
* **Starts unpaused**: so that no collection event of **catalog_embed** is missed while it is paused;
  it runs only on such an event or when triggered.
* **Full runs scale out**: `plan_search_shards` splits a full run's candidate search (the part that
  grows with the catalog squared) into `search_shard` mapped tasks, as many as `shards` says or as
  fit `memory_budget_mb` (exact blocks, or region-filtered Qdrant queries past 500k products per
  region or when `candidates` says so); `cut_search_parts` and `feature_shard` tasks (mapped the
  same way) merge each shard's share of the lists and compute its pair features, `score_parts`
  fits the scorers on the parts, scores every pair and decides the one-to-one rule (the match
  task's own scores and decisions, bit for bit), and `match_regions` puts them together without
  reading any vector, forms the groups and reports. Parts live under
  `$POLYGLOT_DATA_DIR/match_shards/<run id>` (a folder every worker must see). Same pairs and
  groups as one task. Incremental runs plan none. See docs/SCALING.md.
* **Report link**: the `match_regions` task's **Match report** button opens the run's report.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag

from polyglot_catalog.models.registry import DEFAULT_MODEL
from polyglot_catalog.provider.match_shards import (
    MatchFeatureShardOperator,
    MatchScoreOperator,
    MatchShardCutsOperator,
    MatchShardOperator,
    MatchShardPlanOperator,
)
from polyglot_catalog.provider.operators import (
    COLLECTION_PATTERN,
    DEFAULT_COLLECTION,
    MODEL_PATTERN,
    REGION_PATTERN,
    MatchCatalogOperator,
    collection_asset,
    triggered_collection,
    triggered_model,
)

OUT_NAME_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$"


@dag(
    dag_id="cross_region_match",
    schedule=[collection_asset(DEFAULT_COLLECTION)],
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    # Asset events that arrive while a consumer is paused are not queued for it: start active, so the
    # first embed run triggers a match. It only ever runs on such an event or by hand.
    is_paused_upon_creation=False,
    max_active_runs=1,
    user_defined_macros={"triggered_collection": triggered_collection, "triggered_model": triggered_model},
    doc_md=__doc__,
    tags=["polyglot-catalog", "match", "qdrant"],
    default_args={"owner": "polyglot-catalog", "retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "collection": Param(
            DEFAULT_COLLECTION,
            type="string",
            pattern=COLLECTION_PATTERN,
            minLength=1,
            maxLength=128,
            title="Collection",
            description="Qdrant collection to match (filled by catalog_embed); an asset-triggered run "
            "matches the collection named in the triggering event instead.",
        ),
        "model": Param(
            DEFAULT_MODEL,
            type="string",
            pattern=MODEL_PATTERN,
            title="Model",
            description="Model whose vectors were stored (selects the named vector); an "
            "asset-triggered run uses the model named in the triggering event instead.",
        ),
        "regions": Param(
            None,
            type=["null", "array"],
            items={"type": "string", "pattern": REGION_PATTERN},
            uniqueItems=True,
            title="Regions",
            description="Regions to match, one per line (e.g. DE, FR, US); empty means all regions.",
        ),
        "threshold": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=1,
            title="Threshold",
            description="Minimum score in [0, 1] for a match; empty uses the matcher's default.",
        ),
        "labels": Param(
            None,
            type=["null", "string"],
            minLength=1,
            title="Labels",
            description="Optional: a Parquet file with region, sku, group_id to score the matches "
            'against, or "gtin" to group SKUs by their GTIN. Empty: the run is not scored.',
        ),
        "calibrate_on_labels": Param(
            False,
            type="boolean",
            title="Calibrate on labels",
            description="Also fit the scorer and pick the threshold on the labels. The reported "
            "precision and recall are then measured on the data the matcher was tuned on "
            "(optimistic); leave off for honest figures.",
        ),
        "full_rematch": Param(
            False,
            type="boolean",
            title="Full re-match",
            description="Re-match the whole catalog (refit the scorer and threshold on it). Off: continue "
            "incrementally from the last run, scoring only the products that changed; the first run and "
            "one after a model or parameter change are full anyway.",
        ),
        "shards": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Search shards",
            description="A full run's candidate search and pair features as this many mapped tasks "
            "per region pair (each a range of one region's texts against another region); empty picks "
            "the fewest that fit the memory budget. Same pairs and groups as one task.",
        ),
        "candidates": Param(
            "auto",
            type="string",
            enum=["auto", "exact", "qdrant"],
            title="Candidate search",
            description="auto: exact blocked search up to 500k products per region, Qdrant queries "
            "(region-filtered, HNSW) beyond; exact or qdrant forces one. Sharded either way.",
        ),
        "memory_budget_mb": Param(
            4096,
            type="integer",
            minimum=256,
            title="Memory per mapped task (MB)",
            description="Memory one search or feature task may use; sets the shard count when Search "
            "shards is empty.",
        ),
        "out_name": Param(
            "",
            type="string",
            pattern=OUT_NAME_PATTERN,
            title="Report folder name",
            description="Folder under the reports root; empty means the run id.",
        ),
    },
)
def cross_region_match() -> None:
    """Plan the shards of a full run, search them and compute their pair features as mapped tasks,
    score the parts, then match and report."""
    same_run = {
        "collection": "{{ triggered_collection(triggering_asset_events, params.collection) }}",
        "model": "{{ triggered_model(triggering_asset_events, params.model) }}",
    }
    decides = {
        "regions": "{{ (params.regions or []) | join(',') }}",
        "threshold": "{{ params.threshold }}",
        "calibrate_on_labels": "{{ params.calibrate_on_labels }}",
        "full_rematch": "{{ params.full_rematch }}",
        "candidates": "{{ params.candidates }}",
    }
    # [START match_operator]
    plan = MatchShardPlanOperator(
        task_id="plan_search_shards",
        shards="{{ params.shards }}",
        memory_budget_mb="{{ params.memory_budget_mb }}",
        **same_run,
        **decides,
    )
    search = MatchShardOperator.partial(task_id="search_shard").expand(shard=plan.output)
    cuts = MatchShardCutsOperator.partial(task_id="cut_search_parts").expand(shard=plan.output)
    features = MatchFeatureShardOperator.partial(task_id="feature_shard").expand(shard=plan.output)
    score = MatchScoreOperator(
        task_id="score_parts",
        shards=plan.output,
        threshold="{{ params.threshold }}",
        labels="{{ params.labels or '' }}",
        calibrate_on_labels="{{ params.calibrate_on_labels }}",
    )
    match = MatchCatalogOperator(
        task_id="match_regions",
        labels="{{ params.labels or '' }}",
        out_name="{{ params.out_name }}",
        shards_from=plan.task_id,  # its shard count and folder: the mapped tasks wrote the parts
        trigger_rule="none_failed",  # an incremental run plans no shards: the search is skipped
        **same_run,
        **decides,
    )
    # [END match_operator]
    plan >> search >> cuts >> features >> score >> match


cross_region_match()
