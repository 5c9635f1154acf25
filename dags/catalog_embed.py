"""
### Catalog embed

Embeds multilingual product catalogs (Parquet) into a Qdrant collection with a sentence-transformers
model, one mapped task per Parquet file (parallel on Celery or Kubernetes workers). One final task
then flags (or deletes) SKUs that vanished from the whole source, sums the file summaries and marks
the collection asset as updated, naming the collection in the event, which schedules
**cross_region_match**.

* **Input**: Parquet with `sku`, `region`, `description` (optional `language`, `title`, `brand`,
  `gtin`, ...); other column names are mapped with `columns` (`description=product_text,...`).
  Files named `labels.parquet` hold ground truth and are never embedded (the CLI skips them too).
* **Store**: the `qdrant_default` connection (server URL + API key, or `extra.path` for local mode);
  without that connection, embedded Qdrant under `$POLYGLOT_DATA_DIR/qdrant`.
* **Trigger form**: backfill one file or one region folder by changing `source`; `full_refresh`
  re-embeds rows whose content did not change; `max_invalid`, `on_bad_file` and `allowed_regions`
  set how strict the input check is.
* **Bad input**: rejected rows and files land in `$POLYGLOT_DATA_DIR/quarantine/<run id>/<map
  index>.parquet`, one file per task. A bad file or too many invalid rows fails the task without
  retries (the input would not change); a Qdrant outage is retried.
* **Schedule**: nightly at 02:00 UTC, or as soon as the catalog source asset is updated by an upstream
  export. Unpausing it starts no run of its own; the first one is the next 02:00 (or trigger it).
* **Wrong source**: a path or glob that matches no Parquet file fails at once, without retries.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from polyglot_catalog.models.registry import DEFAULT_MODEL
from polyglot_catalog.provider.operators import (
    COLLECTION_PATTERN,
    DEFAULT_COLLECTION,
    MODEL_PATTERN,
    REGION_PATTERN,
    EmbedCatalogOperator,
    ReconcileCatalogOperator,
    collection_asset,
)

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEMO_DIR = PROJECT_DIR / "include" / "demo_catalog"
DEFAULT_SOURCE = str(DEMO_DIR / "*.parquet")
# catalog_column=file_column pairs, comma-separated (empty: no mapping); parse_column_map checks the rest.
COLUMNS_PATTERN = r"^\s*([^=,\s]+\s*=\s*[^=,]+?\s*(,\s*[^=,\s]+\s*=\s*[^=,]+?\s*)*)?$"
# As a string: a count ("100", what a text field sends) or a percentage within 0-100% ("5%", "0.5%").
MAX_INVALID_TEXT_PATTERN = r"^(\d+|(100(\.0+)?|\d{1,2}(\.\d+)?)%)$"

SOURCE_ASSET = Asset(name="polyglot_catalog_source", uri=f"file://{DEMO_DIR}")
COLLECTION_ASSET = collection_asset(DEFAULT_COLLECTION)


@dag(
    dag_id="catalog_embed",
    # No start_date and a zero run_immediately: unpausing the DAG waits for the next 02:00 UTC instead
    # of starting a run for the last one (with a past start_date, catchup=False still runs that).
    # Not run_immediately=False: Airflow treats False like None, which still runs the last 02:00 when
    # it is under a tenth of the period (2.4 h) old; a timedelta is the window itself, here none.
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC", run_immediately=timedelta(0)),
        assets=SOURCE_ASSET,
    ),
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
            minLength=1,
            maxLength=128,
            title="Collection",
            description="Qdrant collection to upsert into (letters, digits, '_' and '-').",
        ),
        "model": Param(
            DEFAULT_MODEL,
            type="string",
            pattern=MODEL_PATTERN,
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
        "alias": Param(
            None,
            type=["null", "string"],
            pattern=COLLECTION_PATTERN,
            title="Alias to switch",
            description="After every file is embedded, point this alias at the collection (and match "
            "through it): embed a new model into a new collection, and readers move over only once "
            "it is complete. Empty: no alias.",
        ),
        "max_invalid": Param(
            None,
            type=["null", "integer", "string"],
            minimum=0,
            pattern=MAX_INVALID_TEXT_PATTERN,
            title="Most invalid rows",
            description="Rejected rows a file may have before its task fails: a count (100) or a share "
            'of the rows read ("5%"); empty means no limit. The valid rows are embedded either way.',
        ),
        "on_bad_file": Param(
            "fail_at_end",
            type="string",
            enum=["fail_at_end", "fail_fast"],
            title="On a bad file",
            description="An unreadable file (not Parquet, corrupt, columns missing): fail_at_end "
            "embeds the rest of the task's input first, fail_fast stops at once. Both fail the task "
            "without retries.",
        ),
        "columns": Param(
            "",
            type="string",
            pattern=COLUMNS_PATTERN,
            title="Column mapping",
            description="For catalogs with other column names: catalog column=column in the files, "
            "comma-separated, e.g. description=product_text,sku=item_id. Empty: the names are "
            "sku, region, description.",
        ),
        "allowed_regions": Param(
            None,
            type=["null", "array"],
            items={"type": "string", "pattern": REGION_PATTERN},
            uniqueItems=True,
            title="Allowed regions",
            description="Regions to accept, one per line (exact, case-sensitive); rows of any other "
            "region are quarantined. Empty accepts every region.",
        ),
    },
)
def catalog_embed() -> None:
    """Embed every Parquet file of the source into the collection, then reconcile vanished SKUs once."""

    @task
    def list_parquet_files(source: str) -> list[str]:
        """Resolve the source at run time into the files to embed; ``labels.parquet`` is ground truth
        (the same rule as the CLI: ``reading.catalog_files``)."""
        from airflow.sdk.exceptions import AirflowFailException

        from polyglot_catalog.reading import catalog_files

        try:
            return catalog_files(source)
        except (FileNotFoundError, ValueError) as e:  # a wrong path or glob: a retry finds the same
            raise AirflowFailException(f"{e} (not retried: the input stays the same)") from e

    files = list_parquet_files(source="{{ params.source }}")

    # [START embed_fan_out]
    # One task per file; a shard sees only its own file, so vanished SKUs wait for the reduce step.
    shards = EmbedCatalogOperator.partial(
        task_id="embed_file",
        collection="{{ params.collection }}",
        model="{{ params.model }}",
        full_refresh="{{ params.full_refresh }}",
        vanished="keep",
        max_invalid="{{ params.max_invalid }}",
        on_bad_file="{{ params.on_bad_file }}",
        allowed_regions="{{ (params.allowed_regions or []) | join(',') }}",
        columns="{{ params.columns or '' }}",
    ).expand(source=files)

    ReconcileCatalogOperator(
        task_id="reconcile_vanished",
        source=files,
        shard_summaries=shards.output,
        collection="{{ params.collection }}",
        model="{{ params.model }}",
        vanished="{{ params.vanished }}",
        alias="{{ params.alias or '' }}",
        columns="{{ params.columns or '' }}",
        outlets=[COLLECTION_ASSET],
    )
    # [END embed_fan_out]


catalog_embed()
