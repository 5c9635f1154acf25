"""Thin Airflow operators over the core library: embed a catalog, match it across regions.

Each ``execute()`` resolves its templated arguments, makes one library call and returns a small
JSON-safe summary: vectors and result tables stay in Qdrant and in the report folder, never in XCom.
Heavy imports (pyarrow, sentence-transformers, qdrant-client) happen inside ``execute()`` so DAG
parsing stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator

from polyglot_catalog.provider.hooks import PolyglotQdrantHook, data_dir

if TYPE_CHECKING:
    from airflow.sdk import Context

DEFAULT_COLLECTION = "catalog"
REPORTS_DIR_NAME = "reports"


class PolyglotUIColors(StrEnum):
    """Task colours in the Airflow UI, one per operator kind."""

    EMBED = "#cfe3ff"
    MATCH = "#e2d4ff"


def collection_asset(collection: str = DEFAULT_COLLECTION) -> Asset:
    """The Airflow Asset standing for one Qdrant collection; the embed DAG updates it, match consumes it."""
    return Asset(name=f"qdrant_collection_{collection}", uri=f"qdrant://polyglot-catalog/{collection}")


def default_reports_root() -> Path:
    """``$POLYGLOT_DATA_DIR/reports``: one sub-folder per run."""
    return data_dir() / REPORTS_DIR_NAME


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


class EmbedCatalogOperator(BaseOperator):
    """
    Embed one Parquet source (file, folder or glob) into a Qdrant collection.

    Reads the rows, renders one text per product, skips rows whose content hash is unchanged, encodes
    the rest with the model (loaded once per task) and upserts them with deterministic point ids. Map it
    per file with ``EmbedCatalogOperator.partial(...).expand(source=...)``.

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
    :param encode_batch_size: texts per model forward pass. Defaults to 32.
    :param device: torch device for the model; ``None`` lets the library choose. Defaults to None.
    :param conn_id: Airflow connection for Qdrant; when it does not exist the hook uses embedded
        local mode. Defaults to ``qdrant_default``.
    :param kwargs: passed to ``BaseOperator``.
    """

    template_fields: Sequence[str] = ("source", "collection", "model", "template", "full_refresh", "vanished")
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
        encode_batch_size: int = 32,
        device: str | None = None,
        conn_id: str = PolyglotQdrantHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.collection = collection
        self.model = model
        self.template = template
        self.full_refresh = full_refresh
        self.vanished = vanished
        self.batch_size = batch_size
        self.encode_batch_size = encode_batch_size
        self.device = device
        self.conn_id = conn_id

    @cached_property
    def hook(self) -> PolyglotQdrantHook:
        """The Qdrant hook (server, local or embedded mode)."""
        return PolyglotQdrantHook(conn_id=self.conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        from polyglot_catalog.embed import embed_catalog
        from polyglot_catalog.encoding import Encoder
        from polyglot_catalog.store import CatalogStore, vector_name_for

        model = _as_optional_str(self.model)
        encoder = Encoder(
            device=self.device, batch_size=self.encode_batch_size, **({"model": model} if model else {})
        )
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
            )
        finally:
            self.hook.close()  # local mode: release the folder lock for the next mapped task
        self.log.info("Embedded %s into collection %r: %s", self.source, self.collection, summary)
        return summary


class MatchCatalogOperator(BaseOperator):
    """
    Match products across regions in a Qdrant collection and write the report folder.

    Reports go to ``reports_root/out_name`` (checked by ``safe_report_dir``); the task returns the
    folder and headline figures only.

    :param collection: Qdrant collection name. Defaults to ``catalog``. (templated)
    :param model: model whose vectors are matched (selects the named vector); ``None`` means the
        library's default model. Defaults to None. (templated)
    :param regions: regions to match, a list or a comma-separated string; ``None`` means all regions
        in the collection. Defaults to None. (templated)
    :param threshold: minimum score for a match; ``None`` means the library default. Defaults to None.
        (templated)
    :param k: neighbours fetched per product and region. Defaults to 10. (templated)
    :param labels: Parquet file with ``region, sku, group_id`` ground truth; when given the summary
        carries precision, recall and F1. Defaults to None. (templated)
    :param reports_root: folder holding one report folder per run. Defaults to
        ``$POLYGLOT_DATA_DIR/reports``. (templated)
    :param out_name: report folder name under ``reports_root``; empty means the run id.
        Defaults to None. (templated)
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
        "reports_root",
        "out_name",
    )
    ui_color = PolyglotUIColors.MATCH.value

    def __init__(
        self,
        *,
        collection: str = DEFAULT_COLLECTION,
        model: str | None = None,
        regions: list[str] | str | None = None,
        threshold: float | str | None = None,
        k: int | str = 10,
        labels: str | None = None,
        reports_root: str | None = None,
        out_name: str | None = None,
        conn_id: str = PolyglotQdrantHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.collection = collection
        self.model = model
        self.regions = regions
        self.threshold = threshold
        self.k = k
        self.labels = labels
        self.reports_root = reports_root
        self.out_name = out_name
        self.conn_id = conn_id

    @cached_property
    def hook(self) -> PolyglotQdrantHook:
        """The Qdrant hook (server, local or embedded mode)."""
        return PolyglotQdrantHook(conn_id=self.conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        from polyglot_catalog.matching.pipeline import match_catalog
        from polyglot_catalog.models.registry import DEFAULT_MODEL
        from polyglot_catalog.reports import safe_report_dir, write_reports
        from polyglot_catalog.store import CatalogStore, vector_name_for

        run_id = str(context["run_id"])
        root = _as_optional_str(self.reports_root) or str(default_reports_root())
        out_dir = safe_report_dir(root, _as_optional_str(self.out_name) or run_id)
        model = _as_optional_str(self.model) or DEFAULT_MODEL
        store = CatalogStore(self.hook.conn, str(self.collection), vector_name_for(model))
        try:
            result = match_catalog(
                store,
                regions=_as_regions(self.regions),
                k=int(self.k),
                threshold=_as_optional_float(self.threshold, "threshold"),
                labels=_as_optional_str(self.labels),
                model=model,
                collection=str(self.collection),
            )
        finally:
            self.hook.close()
        report_dir = write_reports(out_dir, result, run_id=run_id)
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
        "regions": full.get("regions"),
        "pairs": len(result.pairs),
        "matches": len(result.matches),
        "unmatched": len(result.unmatched),
        "metrics": metrics,
    }
