"""Thin Airflow operators over the core library: embed a catalog, match it across regions.

Each ``execute()`` resolves its templated arguments, makes one library call and returns a small
JSON-safe summary: vectors and result tables stay in Qdrant and in the report folder, never in XCom.
Heavy imports (pyarrow, sentence-transformers, qdrant-client) happen inside ``execute()`` so DAG
parsing stays cheap.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator, BaseOperatorLink
from airflow.sdk.exceptions import AirflowFailException

# Collection and region names: one pattern everywhere (CLI, store, forms), re-exported for the DAGs.
from polyglot_catalog.names import COLLECTION_PATTERN as COLLECTION_PATTERN
from polyglot_catalog.names import REGION_PATTERN as REGION_PATTERN
from polyglot_catalog.provider.hooks import PolyglotQdrantHook, data_dir, optional_bool, optional_positive_int

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.sdk import Context

log = logging.getLogger(__name__)

DEFAULT_COLLECTION = "catalog"
#: Where the API server mounts the report view (``polyglot_catalog.provider.views.URL_PREFIX``).
REPORT_VIEW_PREFIX = "/polyglot"
#: Errors of the input or of the arguments: the retry would read the same input, so it would fail the
#: same way (docs/RELIABILITY.md). Store and network errors are none of these and stay retried.
INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)
NOT_RETRIED = " (not retried: the input stays the same)"
REPORTS_DIR_NAME = "reports"
QUARANTINE_DIR_NAME = "quarantine"
# Model names (registry name, hub id or local folder): printable, one line; also checked in event extras.
MODEL_PATTERN = r"^[^\x00-\x1f\x7f]{1,512}$"


class PolyglotUIColors(StrEnum):
    """Task colours in the Airflow UI, one per operator kind."""

    EMBED = "#cfe3ff"
    RECONCILE = "#d9ecff"
    MATCH = "#e2d4ff"


def collection_asset(collection: str = DEFAULT_COLLECTION) -> Asset:
    """The Airflow Asset standing for one Qdrant collection; the embed DAG updates it, match consumes it."""
    return Asset(name=f"qdrant_collection_{collection}", uri=f"qdrant://polyglot-catalog/{collection}")


def _named_events(events: Mapping[Any, Sequence[Any]] | None, asset: Asset | None) -> list[Any]:
    """The events of ``asset`` whose extra names a collection; none for a manual run."""
    return [
        event
        for event in ((events or {}).get(asset or collection_asset()) or ())
        if (getattr(event, "extra", None) or {}).get("collection")
    ]


def _newest(named: list[Any]) -> Any | None:
    return max(named, key=lambda event: event.timestamp) if named else None


def triggered_collection(
    events: Mapping[Any, Sequence[Any]] | None, fallback: str, asset: Asset | None = None
) -> str:
    """The collection named in the newest triggering event of ``asset``, else ``fallback``.

    Why: the embed DAG's one collection asset stands for every collection it writes and names the one
    actually written in the event extra, so an asset-triggered match must read it from there; a
    manual run has no events and uses the trigger form's value. Used in templates as
    ``{{ triggered_collection(triggering_asset_events, params.collection) }}``. Older events of the
    same run naming other collections are logged, not matched (trigger those by hand).

    :param events: ``triggering_asset_events`` from the task context (asset -> events).
    :param fallback: the collection when no event names one (manual runs).
    :param asset: the asset whose events count. Defaults to ``collection_asset()``.
    :raises ValueError: the event names something that is not a collection name.
    """
    named = _named_events(events, asset)
    newest = _newest(named)
    if newest is None:
        return fallback
    collection = newest.extra["collection"]
    if not isinstance(collection, str) or not re.fullmatch(COLLECTION_PATTERN, collection):
        raise ValueError(
            f"asset event from {newest.source_dag_id!r} names collection {collection!r}; "
            f"expected {COLLECTION_PATTERN}"
        )
    skipped = sorted({str(event.extra["collection"]) for event in named} - {collection})
    if skipped:
        log.warning("matching %r, the newest event's collection; not matching %s", collection, skipped)
    return collection


def triggered_model(
    events: Mapping[Any, Sequence[Any]] | None, fallback: str, asset: Asset | None = None
) -> str:
    """The model named in the event :func:`triggered_collection` picks, else ``fallback``.

    Why: the collection's vectors are named after the model that wrote them, so matching it with the
    trigger form's default model would look for a vector the collection lacks. Both values come
    from the same (newest) event. Events without a model (written before it was recorded) and
    manual runs use ``fallback``. Used in templates as
    ``{{ triggered_model(triggering_asset_events, params.model) }}``.

    :param events: ``triggering_asset_events`` from the task context (asset -> events).
    :param fallback: the model when the event names none (manual runs).
    :param asset: the asset whose events count. Defaults to ``collection_asset()``.
    :raises ValueError: the event names something that is not a model name.
    """
    newest = _newest(_named_events(events, asset))
    model = None if newest is None else newest.extra.get("model")
    if model is None:
        return fallback
    if not isinstance(model, str) or not re.fullmatch(MODEL_PATTERN, model):
        raise ValueError(
            f"asset event from {newest.source_dag_id!r} names model {model!r}; expected one printable line"
        )
    return model


def model_store(hook: PolyglotQdrantHook, collection: str, model: str | None) -> Any:
    """The collection's store for ``model``'s named vector (``None``: the default model), pinned as
    the embed stage stored it; every task that reads a collection opens it so."""
    from polyglot_catalog.models.registry import DEFAULT_MODEL, pinned_name
    from polyglot_catalog.store import CatalogStore, vector_name_for

    return CatalogStore(hook.conn, collection, vector_name_for(pinned_name(model or DEFAULT_MODEL)))


def default_reports_root() -> Path:
    """``$POLYGLOT_DATA_DIR/reports``: one sub-folder per run."""
    return data_dir() / REPORTS_DIR_NAME


def _path_part(text: str) -> str:
    """``text`` as one safe path segment; a short hash keeps distinct inputs apart once changed.

    Run ids hold ':' and '+' (``manual__2025-01-01T00:00:00+00:00``) and custom ones anything,
    '/' and '..' included.
    """
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:100]
    if safe and safe == text:
        return safe
    return f"{safe or 'run'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def quarantine_file(run_id: str, map_index: int | None = None) -> Path:
    """``$POLYGLOT_DATA_DIR/quarantine/<run id>/<map index or 'all'>.parquet``: one file per shard.

    Why one per mapped task: shards run in parallel, and each rewrites its quarantine file whole.
    """
    shard = str(map_index) if map_index is not None and map_index >= 0 else "all"
    return data_dir() / QUARANTINE_DIR_NAME / _path_part(run_id) / f"{shard}.parquet"


# Templated values arrive as strings unless the DAG renders native objects; accept both forms.
def _as_regions(value: Any) -> list[str] | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    else:
        items = [str(part).strip() for part in value]
    regions = [item for item in items if item]
    return regions or None


def _as_optional_float(value: Any, name: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() in ("", "None", "null")):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {value!r}") from None


def _as_optional_int(value: Any, name: str) -> int | None:
    number = _as_optional_float(value, name)
    if number is not None and (number != int(number) or number < 1):
        raise ValueError(f"{name} must be a positive whole number; got {value!r}")
    return None if number is None else int(number)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _as_source(value: Any) -> str | list[str]:
    if isinstance(value, str | Path):
        return str(value)
    return [str(item) for item in value]


def _as_optional_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return None if text in ("", "None", "null") else text


@contextmanager
def _store_errors_worded(endpoint: str) -> Iterator[None]:
    """Re-raise a failed store call as one message naming the endpoint and the operation, without the
    client's error chained (its response body may echo the API key); still retried by Airflow."""
    from polyglot_catalog.errors import StoreError, is_store_error, store_failure

    try:
        yield
    except Exception as e:
        if isinstance(e, StoreError) or not is_store_error(e):
            raise
        raise StoreError(store_failure(e, endpoint)) from None


class EmbedCatalogOperator(BaseOperator):
    """
    Embed one Parquet source (file, folder or glob) into a Qdrant collection.

    Reads the rows, renders one text per product, skips rows whose content hash is unchanged, encodes
    the rest with the model (loaded once per task) and upserts them with deterministic point ids. Map it
    per file with ``EmbedCatalogOperator.partial(...).expand(source=...)`` and ``vanished="keep"``, then
    reduce with :class:`ReconcileCatalogOperator`. With cluster options (arguments or connection
    extra) a missing collection is created with them, after the input was checked.

    Rejected rows and files go to ``$POLYGLOT_DATA_DIR/quarantine/<run id>/<map index>.parquet``
    (``all.parquet`` when not mapped). Unclean input (bad files, more invalid rows than
    ``max_invalid``) fails the task without retries, since a retry reads the same input; a Qdrant
    outage fails it with retries.

    :param source: Parquet file, folder or glob, or a list of them (one shard). (templated)
    :param collection: Qdrant collection name. Defaults to ``catalog``. (templated)
    :param model: model name from the model registry; ``None`` means the library's default
        model. Defaults to None. (templated)
    :param template: text template for the embedded text; ``None`` means title + description.
        Defaults to None. (templated)
    :param full_refresh: re-embed every row even when its content hash is unchanged.
        Defaults to False. (templated)
    :param vanished: stored SKUs of a region seen in ``source`` but missing from it: ``flag`` (mark
        stale), ``keep`` or ``delete``. Only correct when ``source`` holds every file of its regions;
        the embed DAG maps over such shards. Defaults to ``flag``. (templated)
    :param batch_size: rows per read/upsert batch. Defaults to 256.
    :param encode_batch_size: texts per model forward pass; ``None`` lets the encoder pick by device
        (16 on CPU, 256 on CUDA, both measured; see :class:`~polyglot_catalog.encoding.Encoder`).
        Defaults to None.
    :param device: torch device for the model; ``None`` lets the library choose. Defaults to None.
    :param precision: model weights: ``auto``, ``fp32``, ``bf16`` (about 2.7x faster on CPUs with
        AVX-512 bf16 / AMX, same top-1) or ``fp16`` (CUDA only); ``auto`` (or ``None``) means fp16 on
        CUDA, bf16 on CPUs with AMX / AVX-512 bf16, fp32 elsewhere; the choice and why are in the task
        log and the summary. Vectors are stored as unit-length float32 either way. A bad value fails
        without retries. Defaults to ``auto``. (templated)
    :param threads: torch intra-op threads for this task's process (``torch.set_num_threads``);
        ``None`` keeps torch's default, one per CPU. Defaults to None.
    :param shard_number: shards of the collection when this task creates it on a Qdrant cluster;
        ``None`` takes the connection extra ``shard_number``, else the server default. Ignored when
        the collection exists and in local mode. Defaults to None. (templated)
    :param replication_factor: copies of each shard when this task creates the collection; ``None``
        takes the connection extra ``replication_factor``, else the server default. Defaults to None.
        (templated)
    :param shard_by_region: when this task creates the collection on a Qdrant server, one shard key
        per region (custom sharding; ``shard_number`` and ``replication_factor`` then apply to each
        region's key), so region-filtered searches read only that region's shards; ``None`` takes
        the connection extra ``shard_by_region``, else False. Defaults to None. (templated)
    :param max_invalid: most rejected rows tolerated, a count (``100``) or a share of the rows read
        (``"5%"``); more fails the task after the valid rows were embedded. ``None`` means no limit.
        Defaults to None. (templated)
    :param on_bad_file: an unreadable file: ``fail_at_end`` embeds every other file, then fails;
        ``fail_fast`` fails at once. Defaults to ``fail_at_end``. (templated)
    :param allowed_regions: regions to accept, a list or a comma-separated string; rows of others are
        quarantined as "unknown region". ``None`` accepts any region. Defaults to None. (templated)
    :param columns: column mapping for catalogs with other column names, catalog column -> column in
        the files: a dict or ``"description=product_text,sku=item_id"``. A bad mapping fails before
        the model loads, without retries. ``None`` means no mapping. Defaults to None. (templated)
    :param conn_id: Airflow connection for Qdrant; when the default ``qdrant_default`` is not
        defined the hook uses the embedded store; any other undefined id is an error.
        Defaults to ``qdrant_default``.
    :param kwargs: passed to ``BaseOperator``.
    """

    template_fields: Sequence[str] = (
        "source",
        "collection",
        "model",
        "template",
        "full_refresh",
        "vanished",
        "precision",
        "shard_number",
        "replication_factor",
        "shard_by_region",
        "max_invalid",
        "on_bad_file",
        "allowed_regions",
        "columns",
    )
    ui_color = PolyglotUIColors.EMBED.value

    def __init__(
        self,
        *,
        source: str | list[str],
        collection: str = DEFAULT_COLLECTION,
        model: str | None = None,
        template: str | None = None,
        full_refresh: bool | str = False,
        vanished: str = "flag",
        batch_size: int = 256,
        encode_batch_size: int | None = None,
        device: str | None = None,
        precision: str | None = "auto",
        threads: int | None = None,
        shard_number: int | str | None = None,
        replication_factor: int | str | None = None,
        shard_by_region: bool | str | None = None,
        max_invalid: int | str | None = None,
        on_bad_file: str = "fail_at_end",
        allowed_regions: list[str] | str | None = None,
        columns: dict[str, str] | str | None = None,
        conn_id: str = PolyglotQdrantHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.columns = columns
        self.source = source
        self.collection = collection
        self.model = model
        self.template = template
        self.full_refresh = full_refresh
        self.vanished = vanished
        self.batch_size = batch_size
        self.encode_batch_size = encode_batch_size
        self.device = device
        self.precision = precision
        self.threads = threads
        self.shard_number = shard_number
        self.replication_factor = replication_factor
        self.shard_by_region = shard_by_region
        self.max_invalid = max_invalid
        self.on_bad_file = on_bad_file
        self.allowed_regions = allowed_regions
        self.conn_id = conn_id

    @cached_property
    def hook(self) -> PolyglotQdrantHook:
        """The Qdrant hook (server, local or embedded mode)."""
        return PolyglotQdrantHook(conn_id=self.conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        from polyglot_catalog.embed import EmbedInputError, embed_catalog
        from polyglot_catalog.encoding import Encoder
        from polyglot_catalog.models.identity import ModelMismatchError
        from polyglot_catalog.reading import BadFileError, parse_column_map
        from polyglot_catalog.store import CatalogStore, vector_name_for

        max_invalid, on_bad_file = self.input_policy()  # before the model loads: fail fast on typos
        try:
            column_map = parse_column_map(self.columns)
        except ValueError as e:
            raise AirflowFailException(f"columns: {e} (not retried: a configuration error)") from e
        ti = context.get("ti")
        quarantine = quarantine_file(str(context.get("run_id") or ""), getattr(ti, "map_index", None))
        model = _as_optional_str(self.model)
        try:
            encoder = Encoder(
                device=self.device,
                batch_size=self.encode_batch_size,
                precision=_as_optional_str(self.precision),
                threads=self.threads,
                **({"model": model} if model else {}),
            )
        except ValueError as e:  # a bad precision / backend / threads value: the retry would be the same
            raise AirflowFailException(f"{e} (not retried: a configuration error)") from e
        cluster = self.cluster_options()
        store = CatalogStore(self.hook.conn, str(self.collection), vector_name_for(encoder.model_name))
        try:
            summary = embed_catalog(
                _as_source(self.source),
                store,
                encoder,
                template=_as_optional_str(self.template),
                batch_size=self.batch_size,
                full_refresh=_as_bool(self.full_refresh),
                vanished=str(self.vanished),
                quarantine_path=quarantine,
                max_invalid=max_invalid,
                on_bad_file=on_bad_file,
                allowed_regions=_as_regions(self.allowed_regions),
                collection_options=cluster,
                column_map=column_map,
            )
        except (EmbedInputError, BadFileError) as e:
            # A corrupt file or too many bad rows is still there on the retry: fail for good. Store
            # outages (StoreUnavailableError) propagate as they are and are retried.
            if isinstance(e, EmbedInputError):
                self.log.error("Embed summary of %s before failing: %s", self.source, e.summary)
            raise AirflowFailException(f"{e} (not retried: the input stays the same)") from e
        except ModelMismatchError as e:  # another model under this name: a retry meets the same one
            raise AirflowFailException(str(e)) from e
        finally:
            self.hook.close()  # local mode: release the folder lock for the next mapped task
        self.log.info("Embedded %s into collection %r: %s", self.source, self.collection, summary)
        return summary

    def input_policy(self) -> tuple[int | str | None, str]:
        """Rendered ``max_invalid`` and ``on_bad_file``, checked; a bad value fails without retries."""
        from polyglot_catalog.embed import BAD_FILE_POLICIES, parse_max_invalid

        max_invalid = self.max_invalid
        if isinstance(max_invalid, str):
            max_invalid = _as_optional_str(max_invalid)
        on_bad_file = str(self.on_bad_file).strip()
        try:
            parse_max_invalid(max_invalid)
        except ValueError as e:
            raise AirflowFailException(str(e)) from e
        if on_bad_file not in BAD_FILE_POLICIES:
            raise AirflowFailException(
                f"on_bad_file must be one of {list(BAD_FILE_POLICIES)}; got {self.on_bad_file!r}"
            )
        return max_invalid, on_bad_file

    def cluster_options(self) -> dict[str, Any]:
        """Cluster options for a new collection: this task's arguments win over the connection extra."""
        explicit = {"shard_number": self.shard_number, "replication_factor": self.replication_factor}
        parsed: dict[str, Any] = {key: optional_positive_int(value, key) for key, value in explicit.items()}
        parsed["shard_by_region"] = optional_bool(self.shard_by_region, "shard_by_region")
        return {**self.hook.collection_options(), **{k: v for k, v in parsed.items() if v is not None}}


class ReconcileCatalogOperator(BaseOperator):
    """
    Reduce step of a mapped embed: flag or delete vanished SKUs once, then add up the shard summaries.

    Each mapped ``EmbedCatalogOperator`` sees only its own file, so it runs with ``vanished="keep"``;
    only this task sees every file and can tell which stored SKUs vanished from the whole source. Put
    the collection asset in ``outlets``: every outlet asset's event carries ``collection``, ``model``,
    ``files``, ``upserted`` and ``flagged`` in its extra; the match DAG reads the collection and the
    model from it. Runs after every shard succeeded (the default trigger rule), so a failed shard
    never flags SKUs it did not get to.

    :param source: every file the shards embedded, e.g. the list the DAG expanded over. (templated)
    :param shard_summaries: the mapped embed tasks' summaries, e.g. ``embed.output``. (templated)
    :param collection: Qdrant collection the shards wrote. Defaults to ``catalog``. (templated)
    :param model: model the shards used (names the store's vector); ``None`` means the library's
        default model. Defaults to None. (templated)
    :param vanished: stored SKUs of a source region missing from the source: ``flag`` (mark stale),
        ``keep`` or ``delete``. Defaults to ``flag``. (templated)
    :param alias: point this Qdrant alias at ``collection`` once every shard succeeded and the
        vanished SKUs are reconciled, and name the alias in the asset event, so matching reads the
        alias. This is the zero-downtime model change: embed the new model into a new collection,
        and readers move over only when it is complete. Empty or ``None`` switches nothing.
        Defaults to None. (templated)
    :param columns: the shards' column mapping (see :class:`EmbedCatalogOperator`). Defaults to None.
        (templated)
    :param conn_id: Airflow connection for Qdrant; when the default ``qdrant_default`` is not
        defined the hook uses the embedded store; any other undefined id is an error.
        Defaults to ``qdrant_default``.
    :param kwargs: passed to ``BaseOperator``.
    """

    template_fields: Sequence[str] = (
        "source",
        "shard_summaries",
        "collection",
        "model",
        "vanished",
        "alias",
        "columns",
    )
    ui_color = PolyglotUIColors.RECONCILE.value

    def __init__(
        self,
        *,
        source: str | list[str],
        shard_summaries: Sequence[dict[str, Any] | None],
        collection: str = DEFAULT_COLLECTION,
        model: str | None = None,
        vanished: str = "flag",
        alias: str | None = None,
        columns: dict[str, str] | str | None = None,
        conn_id: str = PolyglotQdrantHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.columns = columns
        self.source = source
        self.shard_summaries = shard_summaries
        self.collection = collection
        self.model = model
        self.vanished = vanished
        self.alias = alias
        self.conn_id = conn_id

    @cached_property
    def hook(self) -> PolyglotQdrantHook:
        """The Qdrant hook (server, local or embedded mode)."""
        return PolyglotQdrantHook(conn_id=self.conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        from polyglot_catalog.embed import merge_summaries, reconcile_vanished
        from polyglot_catalog.models.registry import DEFAULT_MODEL

        model = _as_optional_str(self.model) or DEFAULT_MODEL
        alias = _as_optional_str(self.alias)
        from polyglot_catalog.errors import describe_endpoint
        from polyglot_catalog.reading import parse_column_map

        store = model_store(self.hook, str(self.collection), model)
        try:
            with _store_errors_worded(describe_endpoint(store.client)):
                reconciled = reconcile_vanished(
                    _as_source(self.source),
                    store,
                    mode=str(self.vanished),
                    column_map=parse_column_map(self.columns),
                )
                if alias:
                    store.switch_alias(alias)
        finally:
            self.hook.close()  # local mode: release the folder lock
        total = merge_summaries(shard_list(self.shard_summaries), reconciled)
        if alias:
            total["alias"] = alias
        extra = {
            "collection": alias or str(self.collection),
            "model": model,
            "files": total.get("files", 0),
            "upserted": total.get("upserted", 0),
            "flagged": total.get("flagged", 0),
        }
        outlet_events = context.get("outlet_events")
        for outlet in self.outlets:
            if isinstance(outlet, Asset) and outlet_events is not None:
                outlet_events[outlet].extra = extra
        self.log.info("Reconciled collection %r: %s", self.collection, total)
        return total


def shard_list(summaries: Sequence[Any] | None) -> list[Any]:
    """The mapped tasks' summaries as a list, read with one slice.

    Why: iterating the lazy XCom sequence Airflow hands a reduce task reads item after item until one
    is missing, and the Task SDK logs that expected miss as ``[error] XCom not found``; a slice asks
    for all items at once.
    """
    if not summaries:
        return []
    return list(summaries[:])


def report_link(report_name: str | None) -> str:
    """The report view's URL of one report folder, under the API server's base path (no host, so
    the UI's own origin and login apply); ``""`` when there is no report."""
    if not report_name:
        return ""
    from urllib.parse import quote, urlsplit

    from airflow.configuration import conf

    base = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    return f"{base}{REPORT_VIEW_PREFIX}/runs/{quote(report_name, safe='')}/report.html"


class MatchReportLink(BaseOperatorLink):
    """The "Match report" button on a match task: opens the report this task instance wrote.

    Airflow 3 computes the link on the worker when the task ends and stores it with the task
    instance; a failed run wrote no report and gets no link.
    """

    name = "Match report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return report_link(getattr(operator, "report_name", None))


class MatchCatalogOperator(BaseOperator):
    """
    Match products across regions in a Qdrant collection and write the report folder.

    Reports go to ``reports_root/out_name`` (checked by ``safe_report_dir``); the task returns the
    folder and headline figures only, and its "Match report" extra link opens the report in the
    Airflow UI. Bad arguments or labels fail without retries; a Qdrant outage is retried.

    :param collection: Qdrant collection name. Defaults to ``catalog``. (templated)
    :param model: model whose vectors are matched (selects the named vector); ``None`` means the
        library's default model. Defaults to None. (templated)
    :param regions: regions to match, a list or a comma-separated string; ``None`` means all regions
        in the collection. Defaults to None. (templated)
    :param threshold: minimum score for a match; ``None`` means the library default. Defaults to None.
        (templated)
    :param k: neighbours fetched per product and region. Defaults to 10. (templated)
    :param labels: Parquet file with ``region, sku, group_id`` ground truth, or ``"gtin"`` to group
        SKUs by their GTIN; when given, the summary carries precision, recall and F1 over the SKUs
        the labels name (labels naming none of the collection's SKUs score nothing). ``None``: no
        scoring. Defaults to None. (templated)
    :param calibrate_on_labels: also fit the scorer and pick the threshold on ``labels``. The
        metrics are then measured on the data the matcher was tuned on, so they are optimistic;
        the summary says so (``calibrated_on_labels``). Keep False to report honest figures.
        Defaults to False. (templated)
    :param candidates: candidate path: ``auto`` (exact blocked top-k up to 500k products per
        region, Qdrant queries above), ``exact`` or ``qdrant``. Defaults to ``auto``. (templated)
    :param hnsw_ef: HNSW search beam of Qdrant candidate queries; ``None`` means the library
        default. Defaults to None. (templated)
    :param reports_root: folder holding one report folder per run. Defaults to
        ``$POLYGLOT_DATA_DIR/reports``. (templated)
    :param out_name: report folder name under ``reports_root``; empty means the run id.
        Defaults to None. (templated)
    :param full_rematch: re-match the whole catalog. False (the default) continues incrementally from
        the collection's match state: only changed products are scored and only the decisions they
        touch are solved again; the first run, or one after a change of model, regions or matcher
        parameters, is full anyway (the summary's ``full_run_reason`` says why). (templated)
    :param shards: a full run's exact candidate search and pair features in this many shards per
        region pair, from the Parquet parts in ``shard_dir`` that ``MatchShardOperator`` and
        ``MatchFeatureShardOperator`` tasks wrote (without ``shards_from``, this task runs them
        itself, reusing current search parts); ``None``: one search in this task. Same pairs and
        groups either way. (templated)
    :param shard_dir: folder or object-storage URL of the shards' parts (as
        ``MatchShardPlanOperator``'s). Defaults to a temporary folder. (templated)
    :param shards_from: task id of a ``MatchShardPlanOperator`` whose ``shards`` and ``shard_dir``
        XComs set the two above (its mapped search and feature tasks wrote the parts, so this task
        reads no vectors: it puts the pairs' features together, scores and decides); the parts
        folder is removed once the run is committed. Defaults to None.
    :param conn_id: Airflow connection for Qdrant; when it does not exist the hook uses embedded
        local mode. Defaults to ``qdrant_default``.
    :param kwargs: passed to ``BaseOperator``.
    """

    template_fields: Sequence[str] = (
        "collection",
        "model",
        "regions",
        "threshold",
        "k",
        "labels",
        "calibrate_on_labels",
        "candidates",
        "hnsw_ef",
        "reports_root",
        "out_name",
        "full_rematch",
        "shards",
        "shard_dir",
    )
    ui_color = PolyglotUIColors.MATCH.value
    operator_extra_links = (MatchReportLink(),)

    def __init__(
        self,
        *,
        collection: str = DEFAULT_COLLECTION,
        model: str | None = None,
        regions: list[str] | str | None = None,
        threshold: float | str | None = None,
        k: int | str = 10,
        labels: str | None = None,
        calibrate_on_labels: bool | str = False,
        candidates: str = "auto",
        hnsw_ef: int | str | None = None,
        reports_root: str | None = None,
        out_name: str | None = None,
        full_rematch: bool | str = False,
        shards: int | str | None = None,
        shard_dir: str | None = None,
        shards_from: str | None = None,
        conn_id: str = PolyglotQdrantHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.full_rematch = full_rematch
        self.shards = shards
        self.shard_dir = shard_dir
        self.shards_from = shards_from
        self.collection = collection
        self.model = model
        self.regions = regions
        self.threshold = threshold
        self.k = k
        self.labels = labels
        self.calibrate_on_labels = calibrate_on_labels
        self.candidates = candidates
        self.hnsw_ef = hnsw_ef
        self.reports_root = reports_root
        self.out_name = out_name
        self.conn_id = conn_id
        self.report_name: str | None = None  # set by execute(); read by MatchReportLink

    @cached_property
    def hook(self) -> PolyglotQdrantHook:
        """The Qdrant hook (server, local or embedded mode)."""
        return PolyglotQdrantHook(conn_id=self.conn_id)

    def render_template_fields(self, context: Context, jinja_env: Any = None) -> None:
        """Render as usual; an asset event naming an invalid collection or model fails for good."""
        try:
            super().render_template_fields(context, jinja_env)
        except ValueError as e:
            raise AirflowFailException(f"{e}{NOT_RETRIED}") from e

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            return self._match(context)
        except INPUT_ERRORS as e:
            # Bad arguments, a labels file that is missing or malformed, regions not in the
            # collection: the retry would fail the same way. Store outages raise other errors.
            raise AirflowFailException(f"{e}{NOT_RETRIED}") from e

    def _match(self, context: Context) -> dict[str, Any]:
        from polyglot_catalog.matching.run import run_match
        from polyglot_catalog.models.registry import DEFAULT_MODEL
        from polyglot_catalog.reports import safe_report_dir, write_reports

        run_id = str(context["run_id"])
        root = _as_optional_str(self.reports_root) or str(default_reports_root())
        out_dir = safe_report_dir(root, _as_optional_str(self.out_name) or run_id)
        model = _as_optional_str(self.model) or DEFAULT_MODEL
        threshold = _as_optional_float(self.threshold, "threshold")
        labels = _as_optional_str(self.labels)
        calibrate = _as_bool(self.calibrate_on_labels)
        extra: dict[str, Any] = {}  # only what the user set, so library defaults stay in one place
        if str(self.candidates or "auto") != "auto":
            extra["candidates"] = str(self.candidates)
        hnsw_ef = _as_optional_int(self.hnsw_ef, "hnsw_ef")
        if hnsw_ef is not None:
            extra["hnsw_ef"] = hnsw_ef
        shards, shard_dir = _as_optional_int(self.shards, "shards"), _as_optional_str(self.shard_dir)
        if self.shards_from:
            ti = context["ti"]
            shards = ti.xcom_pull(task_ids=self.shards_from, key="shards") or shards
            shard_dir = ti.xcom_pull(task_ids=self.shards_from, key="shard_dir") or shard_dir
        if shards is not None:
            from polyglot_catalog.provider.match_shards import shard_folder

            extra["shards"] = int(shards)
            extra["shard_dir"] = shard_folder(shard_dir) if shard_dir else None
            extra["mapped"] = bool(self.shards_from)  # the DAG's mapped tasks wrote the feature parts
        from polyglot_catalog.errors import describe_endpoint
        from polyglot_catalog.review import reviewed_decisions
        from polyglot_catalog.store import single_region_warning

        store = model_store(self.hook, str(self.collection), model)
        regions = _as_regions(self.regions)
        try:
            with _store_errors_worded(describe_endpoint(store.client)):
                warning = single_region_warning(str(self.collection), regions or store.regions())
                if warning:
                    self.log.warning(warning)
                decisions = reviewed_decisions(store.client, str(self.collection))  # docs/REVIEW.md
                if decisions is not None:
                    extra["decisions"] = decisions
                # the report is written under the state lock, before the state: a failed write
                # changes nothing
                result, report_dir = run_match(
                    store,
                    run_id=run_id,
                    write_report=lambda r: write_reports(out_dir, r, run_id=run_id),
                    collection=str(self.collection),
                    model=model,
                    regions=regions,
                    k=int(self.k),
                    threshold=threshold,
                    labels=labels,
                    fit_on_labels=calibrate,
                    full_rematch=_as_bool(self.full_rematch),
                    **extra,
                )
        finally:
            self.hook.close()
        if self.shards_from and shard_dir and result.summary.get("mode") == "full":
            from polyglot_catalog.provider.match_shards import remove_shard_folder

            remove_shard_folder(shard_dir)  # joined and committed: the parts are spent
        self.report_name = Path(report_dir).name
        summary = match_summary(result.summary, result, report_dir)
        self.log.info("Wrote match report to %s: %s", report_dir, summary)
        return summary


def match_summary(full: dict[str, Any], result: Any, report_dir: Path | str) -> dict[str, Any]:
    """Headline figures for XCom: the full summary (sweeps, curves) stays in ``summary.json``."""
    metrics = (full.get("metrics") or {}).get("overall")
    return {
        "report_dir": str(report_dir),
        "collection": full.get("collection"),
        "model": full.get("model"),
        "threshold": full.get("threshold"),
        "threshold_method": full.get("threshold_method"),
        "calibrated_on_labels": bool(full.get("calibrated_on_labels")),
        "regions": full.get("regions"),
        "pairs": result.pair_count,
        "matches": len(result.matches),
        "unmatched": len(result.unmatched),
        "metrics": metrics,
        "full_rematch": bool(full.get("full_rematch")),
        "mode": full.get("mode"),
        "full_run_reason": full.get("full_run_reason"),
        "changes": full.get("changes"),
    }
