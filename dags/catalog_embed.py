"""
### Catalog embed

Embeds multilingual product catalogs (Parquet) into a Qdrant collection with a sentence-transformers
model, one mapped task per Parquet file (files sharing a region go together), then sums the
summaries and marks the collection asset as updated, which schedules **cross_region_match**.

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
        "vanished": Param(
            "flag",
            type="string",
            enum=["flag", "keep", "delete"],
            title="Vanished SKUs",
            description="Stored SKUs of an embedded region that are missing from the source: "
            "flag them stale (skipped by matching), keep them, or delete them.",
        ),
    },
)
def catalog_embed() -> None:
    """Embed every Parquet file of the source into the collection."""

    @task
    def list_parquet_shards(source: str) -> list[str | list[str]]:
        """Resolve the source at run time and group files that share a region into one shard.

        Stale-SKU flagging works per region, so every file of a region must be embedded by the same
        task; with one region per file (the usual layout) each shard is a single file.
        """
        from polyglot_catalog.reading import list_sources

        files = [path for path in list_sources(source) if Path(path).name != LABELS_FILE_NAME]
        if not files:
            raise ValueError(f"source {source!r} holds only {LABELS_FILE_NAME}; nothing to embed")
        return group_by_region(files)

    shards = list_parquet_shards(source="{{ params.source }}")

    # [START embed_fan_out]
    summaries = EmbedCatalogOperator.partial(
        task_id="embed_shard",
        collection="{{ params.collection }}",
        model="{{ params.model }}",
        full_refresh="{{ params.full_refresh }}",
        vanished="{{ params.vanished }}",
    ).expand(source=shards)
    # [END embed_fan_out]

    @task(outlets=[COLLECTION_ASSET])
    def summarize(summaries: list[dict[str, Any]], params: Any = None, outlet_events: Any = None) -> dict:
        """Add up the shard summaries and tag the asset event with the collection actually written."""
        total = merge_summaries(summaries)
        total["collection"] = params["collection"] if params else DEFAULT_COLLECTION
        if outlet_events is not None:
            outlet_events[COLLECTION_ASSET].extra = {
                "collection": total["collection"],
                "files": total.get("files", 0),
                "upserted": total.get("upserted", 0),
            }
        return total

    summarize(summaries.output)


def group_by_region(files: list[str]) -> list[str | list[str]]:
    """Connected components of files linked by shared regions; a lone file stays a plain path.

    Reads only the ``region`` column. A file that cannot be read stays alone, so the embed task
    reports the real problem (missing column, bad file) with its own error message.
    """
    from polyglot_catalog.reading import open_dataset

    parent = list(range(len(files)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for index, path in enumerate(files):
        try:
            regions = set(open_dataset(path).to_table(columns=["region"])["region"].to_pylist())
        except Exception:  # reported by the embed task itself
            continue
        for region in regions:
            if region in owner:
                parent[find(index)] = find(owner[region])
            else:
                owner[region] = index
    groups: dict[int, list[str]] = {}
    for index, path in enumerate(files):
        groups.setdefault(find(index), []).append(path)
    return [group[0] if len(group) == 1 else group for group in groups.values()]


def merge_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum counts and per-stage seconds, union regions; samples and nested details stay per shard."""
    total: dict[str, Any] = {"shards": 0, "regions": set(), "seconds": {}}
    for summary in summaries:
        total["shards"] += 1
        for key, value in (summary or {}).items():
            if isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                total[key] = total.get(key, 0) + value
            elif key == "regions":
                total["regions"].update(value)
            elif key == "seconds":
                for stage, seconds in value.items():
                    total["seconds"][stage] = round(total["seconds"].get(stage, 0.0) + seconds, 3)
            elif key in ("model", "vector_name"):
                total[key] = value
    total["regions"] = sorted(total["regions"])
    return total


catalog_embed()
