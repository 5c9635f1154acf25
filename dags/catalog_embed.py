"""
### Catalog embed

Embeds multilingual product catalogs (Parquet) into a Qdrant collection with a sentence-transformers
model, one mapped task per Parquet file, then sums the per-file summaries and marks the collection
asset as updated, which schedules **cross_region_match**.

* **Input**: Parquet with `sku`, `region`, `description` (optional `language`, `title`, `brand`,
  `gtin`, ...). Files named `labels.parquet` hold ground truth and are never embedded.
* **Store**: the `qdrant_default` connection (server URL + API key, or `extra.path` for local mode);
  without that connection, embedded Qdrant under `$POLYGLOT_DATA_DIR/qdrant`.
* **Trigger form**: backfill one file or one region folder by changing `source`; `full_refresh`
  re-embeds rows whose content did not change.
* **Schedule**: nightly, or as soon as the catalog source asset is updated by an upstream export.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task
from polyglot_catalog.models.registry import DEFAULT_MODEL
from polyglot_catalog.provider.operators import DEFAULT_COLLECTION, EmbedCatalogOperator, collection_asset

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEMO_DIR = PROJECT_DIR / "include" / "demo_catalog"
DEFAULT_SOURCE = str(DEMO_DIR / "*.parquet")
LABELS_FILE_NAME = "labels.parquet"
COLLECTION_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"

SOURCE_ASSET = Asset(name="polyglot_catalog_source", uri=f"file://{DEMO_DIR}")
COLLECTION_ASSET = collection_asset(DEFAULT_COLLECTION)


@dag(
    dag_id="catalog_embed",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC"), assets=SOURCE_ASSET
    ),
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["polyglot-catalog", "embed", "qdrant"],
    default_args={"owner": "polyglot-catalog", "retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "source": Param(
            DEFAULT_SOURCE,
            type="string",
            minLength=1,
            title="Source",
            description="Parquet file, folder or glob (local path or fsspec URL); one task per file.",
        ),
        "collection": Param(
            DEFAULT_COLLECTION,
            type="string",
            pattern=COLLECTION_PATTERN,
            title="Collection",
            description="Qdrant collection to upsert into (letters, digits, '_' and '-').",
        ),
        "model": Param(
            DEFAULT_MODEL,
            type="string",
            minLength=1,
            title="Model",
            description="Model registry name, hub id or local folder; a new model means new vectors.",
        ),
        "full_refresh": Param(
            False,
            type="boolean",
            title="Full refresh",
            description="Re-embed every row, even when its content hash is unchanged.",
        ),
    },
)
def catalog_embed() -> None:
    """Embed every Parquet file of the source into the collection."""

    @task
    def list_parquet_files(source: str) -> list[str]:
        """Resolve the source to files at run time, so the fan-out follows what is on disk now."""
        from polyglot_catalog.reading import list_sources

        files = [path for path in list_sources(source) if Path(path).name != LABELS_FILE_NAME]
        if not files:
            raise ValueError(f"source {source!r} holds only {LABELS_FILE_NAME}; nothing to embed")
        return files

    files = list_parquet_files(source="{{ params.source }}")

    # [START embed_fan_out]
    summaries = EmbedCatalogOperator.partial(
        task_id="embed_file",
        collection="{{ params.collection }}",
        model="{{ params.model }}",
        full_refresh="{{ params.full_refresh }}",
    ).expand(source=files)
    # [END embed_fan_out]

    @task(outlets=[COLLECTION_ASSET])
    def summarize(summaries: list[dict[str, Any]], params: Any = None, outlet_events: Any = None) -> dict:
        """Sum the per-file summaries and tag the asset event with the collection actually written."""
        total: dict[str, Any] = {"files": 0}
        for summary in summaries:
            total["files"] += 1
            for key, value in (summary or {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    total[key] = total.get(key, 0) + value
        total["collection"] = params["collection"] if params else DEFAULT_COLLECTION
        if outlet_events is not None:
            outlet_events[COLLECTION_ASSET].extra = {
                "collection": total["collection"],
                "files": total["files"],
            }
        return total

    summarize(summaries.output)


catalog_embed()
