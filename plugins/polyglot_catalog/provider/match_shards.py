"""Operators that spread a full match's candidate search over mapped tasks (#26).

The search is the n^2 part of a full match. ``MatchShardPlanOperator`` decides whether tonight's
run is full (the same question ``run_match`` asks) and, if so, returns one small dict per shard;
``MatchShardOperator`` is mapped over them (``.expand(shard=plan.output)``), each task searching one
range of one region's texts against another region and writing a Parquet part; the cuts and
feature tasks, mapped the same way, turn the parts into pair features, ``MatchScoreOperator``
fits the scorers on them and scores every pair, and the ``MatchCatalogOperator`` after them joins
the parts (:mod:`polyglot_catalog.matching.feature_parts`) and does the rest. An incremental run
plans no shards, so the tasks after the plan are skipped.

The plan writes each region's search file, and the tasks their parts, to
``$POLYGLOT_DATA_DIR/match_shards/<run id>`` unless ``shard_dir`` says otherwise: a folder every
worker sees (a shared volume on Celery or Kubernetes workers) or object storage by URL
(``s3://aws_default@bucket/prefix``, ``gs://...``: Airflow's ``ObjectStoragePath`` and its
connection; any other fsspec URL as fsspec resolves it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from polyglot_catalog.provider.hooks import PolyglotQdrantHook, data_dir
from polyglot_catalog.provider.operators import (
    DEFAULT_COLLECTION,
    INPUT_ERRORS,
    NOT_RETRIED,
    PolyglotUIColors,
    _as_bool,
    _as_optional_float,
    _as_optional_int,
    _as_optional_str,
    _as_regions,
    model_store,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

SHARDS_DIR_NAME = "match_shards"


def default_shard_dir(run_id: str) -> Path:
    """``$POLYGLOT_DATA_DIR/match_shards/<run id>`` (the run id made a safe folder name)."""
    return data_dir() / SHARDS_DIR_NAME / re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)


def shard_folder(url: str) -> Any:
    """The shard folder ``url`` names, for the library's ``folder`` arguments: an Airflow
    ``ObjectStoragePath`` where Airflow has a filesystem for its scheme (``s3://conn_id@bucket/..``,
    ``gs://``, ``file://``: the connection's credentials apply), else the path or fsspec URL itself."""
    if "://" not in url:
        return url
    from airflow.sdk import ObjectStoragePath

    try:
        path = ObjectStoragePath(url)
        path.fs  # noqa: B018 - resolves the scheme's filesystem now (it raises lazily otherwise)
        return path
    except ValueError:  # "No filesystem registered for scheme ...": plain fsspec resolves it
        return url


def remove_shard_folder(url: str) -> None:
    """Delete a run's shard folder (its search files and parts) once they are spent."""
    from polyglot_catalog.matching.shard_storage import ShardFolder

    ShardFolder.of(shard_folder(url)).remove()


class MatchShardPlanOperator(BaseOperator):
    """
    Plan tonight's full-match candidate search as shards for mapped tasks.

    Returns one dict per shard (``query``, ``other``, ``start``, ``stop``, ``dir``) when the run
    will be full and the catalog needs more than one shard, else an empty list (an incremental run,
    or one shard: the match task searches itself). Also pushes ``shards`` and ``shard_dir`` for the
    match task.

    :param collection, model, regions, threshold, k, calibrate_on_labels, full_rematch: as the
        ``MatchCatalogOperator`` of the same run (they decide whether it is full). (templated)
    :param shards: shards per region pair; ``None`` picks the fewest that fit
        ``memory_budget_mb``. (templated)
    :param memory_budget_mb: memory one search task may use. Defaults to 4096. (templated)
    :param candidates: the search path, as the match task's: ``auto`` (exact up to
        ``EXACT_MAX_PAIRS`` product pairs per region pair, Qdrant beyond), ``exact`` or ``qdrant``
        (the search tasks then query the collection, region-filtered). (templated)
    :param hnsw_ef: HNSW search beam of Qdrant search tasks; ``None``: the library default.
        (templated)
    :param shard_dir: folder or object-storage URL for the search files and parts, seen by every
        worker (``s3://conn_id@bucket/prefix`` takes the connection's credentials). Defaults to
        ``$POLYGLOT_DATA_DIR/match_shards/<run id>``. (templated)
    :param conn_id: Airflow connection for Qdrant. Defaults to ``qdrant_default``.
    """

    template_fields: Sequence[str] = (
        "collection",
        "model",
        "regions",
        "threshold",
        "k",
        "calibrate_on_labels",
        "full_rematch",
        "shards",
        "memory_budget_mb",
        "shard_dir",
        "candidates",
        "hnsw_ef",
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
        calibrate_on_labels: bool | str = False,
        full_rematch: bool | str = False,
        shards: int | str | None = None,
        memory_budget_mb: int | str = 4096,
        shard_dir: str | None = None,
        candidates: str = "auto",
        hnsw_ef: int | str | None = None,
        conn_id: str = PolyglotQdrantHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.candidates = candidates
        self.hnsw_ef = hnsw_ef
        self.collection = collection
        self.model = model
        self.regions = regions
        self.threshold = threshold
        self.k = k
        self.calibrate_on_labels = calibrate_on_labels
        self.full_rematch = full_rematch
        self.shards = shards
        self.memory_budget_mb = memory_budget_mb
        self.shard_dir = shard_dir
        self.conn_id = conn_id

    @cached_property
    def hook(self) -> PolyglotQdrantHook:
        return PolyglotQdrantHook(conn_id=self.conn_id)

    def execute(self, context: Context) -> list[dict[str, Any]]:
        try:
            return self._plan(context)
        except INPUT_ERRORS as e:
            raise AirflowFailException(f"{e}{NOT_RETRIED}") from e
        finally:
            self.hook.close()

    def _plan(self, context: Context) -> list[dict[str, Any]]:
        from polyglot_catalog.matching.pipeline import candidate_path
        from polyglot_catalog.matching.region_search import RegionSearch
        from polyglot_catalog.matching.run import continue_from
        from polyglot_catalog.matching.settings import MatchSettings
        from polyglot_catalog.matching.shards import plan_for_store
        from polyglot_catalog.models.registry import DEFAULT_MODEL
        from polyglot_catalog.review import reviewed_decisions

        ti = context["ti"]
        ti.xcom_push(key="shards", value=None)
        ti.xcom_push(key="shard_dir", value=None)
        collection = str(self.collection)
        store = model_store(self.hook, collection, _as_optional_str(self.model))
        regions = _as_regions(self.regions)
        reason, _ = continue_from(
            store,
            collection=collection,
            model=_as_optional_str(self.model) or DEFAULT_MODEL,
            regions=regions,
            parameters={
                "k": int(self.k),
                "threshold": _as_optional_float(self.threshold, "threshold"),
                "fit_on_labels": _as_bool(self.calibrate_on_labels),
            },
            full_rematch=_as_bool(self.full_rematch),
            reviewed=reviewed_decisions(store.client, collection) is not None,
        )
        if reason is None:
            self.log.info("collection %s continues incrementally: no search shards", collection)
            return []
        shards = _as_optional_int(self.shards, "shards")
        budget = _as_optional_float(self.memory_budget_mb, "memory_budget_mb") or 4096.0
        folder = _as_optional_str(self.shard_dir) or str(default_shard_dir(str(context["run_id"])))
        plan, n = plan_for_store(
            store, regions, shard_folder(folder), k=int(self.k), shards=shards, memory_budget_mb=budget
        )
        if n == 1 and shards is None:
            remove_shard_folder(folder)
            self.log.info("full run (%s): one shard fits %.0f MB, the match task searches", reason, budget)
            return []
        ti.xcom_push(key="shards", value=n)
        ti.xcom_push(key="shard_dir", value=folder)
        settings = MatchSettings(  # validates both (a bad value fails the plan, not every search task)
            candidates=str(self.candidates or "auto"),
            **_beam(_as_optional_int(self.hnsw_ef, "hnsw_ef")),
        )
        planned = sorted({r for x in plan for r in (x.query, x.other)})
        sizes = [RegionSearch.open(shard_folder(folder), r).rows for r in planned]
        search = candidate_path(settings.candidates, True, sizes)
        self.log.info(
            "full run (%s): %d %s search shards (%d per region pair), regions' files and parts in %s",
            reason,
            len(plan),
            search,
            n,
            folder,
        )
        qdrant = (
            {
                "search": "qdrant",
                "hnsw_ef": settings.hnsw_ef,
                "collection": collection,
                "model": _as_optional_str(self.model),
            }
            if search == "qdrant"
            else {}
        )
        return [
            {
                "query": s.query,
                "other": s.other,
                "start": s.start,
                "stop": s.stop,
                "k": int(self.k),
                "dir": folder,
                "regions": planned,
                "shards": n,
                **qdrant,
            }
            for s in plan
        ]


class MatchShardOperator(BaseOperator):
    """
    Search one shard of a full match: texts ``start:stop`` of region ``query`` against region
    ``other`` (canonical re-rank), written as a Parquet part the match task joins.

    Mapped over ``MatchShardPlanOperator``'s output (``.expand(shard=plan.output)``). The task reads
    the two regions' search files the plan wrote: its range whole, the other region a chunk at a
    time, so its memory is bounded by the shard, not the catalog. The exact search needs no Qdrant
    connection; a shard the plan marked ``"search": "qdrant"`` queries the collection it names,
    region-filtered (:mod:`polyglot_catalog.matching.qdrant_shards`). A retried task replaces its
    own part only.

    :param shard: one dict of the plan (``query``, ``other``, ``start``, ``stop``, ``k``, ``dir``;
        ``search``, ``hnsw_ef``, ``collection``, ``model`` for a Qdrant search).
    :param chunk_rows: rows of the other region read at a time. Defaults to 16384. (templated)
    :param conn_id: Airflow connection for Qdrant (a Qdrant search). Defaults to ``qdrant_default``.
    """

    template_fields: Sequence[str] = ("chunk_rows",)
    ui_color = PolyglotUIColors.MATCH.value

    def __init__(
        self,
        *,
        shard: dict[str, Any],
        chunk_rows: int | str = 16_384,
        conn_id: str = PolyglotQdrantHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.shard = shard
        self.chunk_rows = chunk_rows
        self.conn_id = conn_id

    @cached_property
    def hook(self) -> PolyglotQdrantHook:
        return PolyglotQdrantHook(conn_id=self.conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        from polyglot_catalog.matching.settings import MatchSettings
        from polyglot_catalog.matching.shards import map_shard

        t0 = time.perf_counter()
        qdrant = self.shard.get("search") == "qdrant"
        try:
            shard = _shard_of(self.shard)
            settings = MatchSettings(
                k=int(self.shard["k"]), **(_beam(self.shard.get("hnsw_ef")) if qdrant else {})
            )
            folder = shard_folder(str(self.shard["dir"]))
            shards = int(self.shard.get("shards", 1))  # the cuts tasks' ranges its row groups follow
            model = _as_optional_str(self.shard.get("model"))
            store = model_store(self.hook, str(self.shard["collection"]), model) if qdrant else None
            path = map_shard(
                folder, shard, settings, chunk_rows=int(self.chunk_rows), shards=shards, store=store
            )
        except (KeyError, TypeError, FileNotFoundError, *INPUT_ERRORS) as e:
            raise AirflowFailException(f"shard {self.shard!r}: {e}{NOT_RETRIED}") from e
        finally:
            if qdrant:
                self.hook.close()
        seconds = round(time.perf_counter() - t0, 3)
        self.log.info(
            "searched %s (%d texts) in %.1f s: %s", shard.name, shard.stop - shard.start, seconds, path
        )
        return {"part": str(path), "texts": shard.stop - shard.start, "seconds": seconds}


def _beam(hnsw_ef: Any) -> dict[str, Any]:
    """``hnsw_ef`` for :class:`MatchSettings` when given (else its default beam)."""
    return {} if hnsw_ef is None else {"hnsw_ef": int(hnsw_ef)}


def _shard_of(shard: dict[str, Any]) -> Any:
    """The :class:`CandidateShard` one of the plan's dicts names (KeyError/TypeError when malformed)."""
    from polyglot_catalog.matching.shards import CandidateShard

    return CandidateShard(str(shard["query"]), str(shard["other"]), int(shard["start"]), int(shard["stop"]))


def _planned(shard: dict[str, Any]) -> tuple[Any, Any, list[str], list[Any]]:
    """``(shard, folder, regions, plan)`` of one of the plan's dicts, for the tasks after the search:
    the run's plan re-derived from the shard count and the search files (KeyError/TypeError when
    malformed)."""
    from polyglot_catalog.matching.feature_parts import folder_plan

    folder = shard_folder(str(shard["dir"]))
    regions = [str(r) for r in shard["regions"]]
    return _shard_of(shard), folder, regions, folder_plan(folder, regions, int(shard["shards"]))


class MatchShardCutsOperator(BaseOperator):
    """
    Cut one shard's share of its region pair's search parts for the feature tasks: the
    neighbourhood figures of the shard's range of the first region's texts, and for its share of
    the second region's texts the last entry of each one's merged top-``k`` (so a feature task
    knows which of its reverse proposals survive) and their figures.

    Mapped over ``MatchShardPlanOperator``'s output like the search, after every search task of the
    run (a skipped search, i.e. an incremental run, skips it too). It reads every part of its
    region pair for its texts only, so it holds its two ranges, whatever the catalog size; a
    retried task replaces its own file only.

    :param shard: one dict of the plan (``query``, ``other``, ``start``, ``stop``, ``k``, ``dir``,
        ``regions``, ``shards``).
    """

    ui_color = PolyglotUIColors.MATCH.value

    def __init__(self, *, shard: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shard = shard

    def execute(self, context: Context) -> dict[str, Any]:
        from polyglot_catalog.matching.feature_parts import write_shard_cuts

        t0 = time.perf_counter()
        try:
            shard, folder, _, plan = _planned(self.shard)
            path = write_shard_cuts(folder, shard, plan, int(self.shard["k"]))
        except (KeyError, TypeError, FileNotFoundError, *INPUT_ERRORS) as e:
            raise AirflowFailException(f"cuts of shard {self.shard!r}: {e}{NOT_RETRIED}") from e
        seconds = round(time.perf_counter() - t0, 3)
        self.log.info("cuts of %s in %.1f s: %s", shard.name, seconds, path)
        return {"cuts": str(path), "seconds": seconds}


class MatchFeatureShardOperator(BaseOperator):
    """
    Compute the pair features of one shard of a full match: every candidate pair whose first
    product's text is in the shard's range, with its features and explanation, written as a Parquet
    part the match task puts together (it then reads no vectors).

    Mapped over ``MatchShardPlanOperator``'s output like the search, after
    ``MatchShardCutsOperator``. The task reads the regions' rows and search files and the cuts (no
    Qdrant connection), keeping only the rows its pairs touch; a retried task replaces its own part.

    :param shard: one dict of the plan (``query``, ``other``, ``start``, ``stop``, ``k``, ``dir``,
        ``regions``, ``shards``).
    """

    ui_color = PolyglotUIColors.MATCH.value

    def __init__(self, *, shard: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shard = shard

    def execute(self, context: Context) -> dict[str, Any]:
        from polyglot_catalog.matching.feature_parts import map_features
        from polyglot_catalog.matching.settings import MatchSettings

        t0 = time.perf_counter()
        try:
            shard, folder, regions, plan = _planned(self.shard)
            path = map_features(folder, shard, MatchSettings(k=int(self.shard["k"])), regions, plan)
        except (KeyError, TypeError, FileNotFoundError, *INPUT_ERRORS) as e:
            raise AirflowFailException(f"shard {self.shard!r}: {e}{NOT_RETRIED}") from e
        seconds = round(time.perf_counter() - t0, 3)
        self.log.info("features of %s in %.1f s: %s", shard.name, seconds, path)
        return {"part": str(path), "seconds": seconds}


class MatchScoreOperator(BaseOperator):
    """
    Fit the match's scorers on the feature parts, score every pair and decide the one-to-one rule,
    writing scores and decisions beside the parts, so the match task reads them instead of
    fitting and solving over every pair it holds.

    One task after every ``MatchFeatureShardOperator`` of the run (it needs all parts: the seed's
    statistics, the reciprocal-best pairs, the third-region support and the label-free cut span
    them), before the match task. It holds each part's rows and scores (~30 B a pair), each
    product's best pair, the fit's sample and one region pair's solver at a time, not the features
    of every pair. Scores and decisions are the match task's own to the last bit; the match task
    checks they fit its run (the same parts, features, threshold and settings) and otherwise
    computes them itself, saying why in its summary (``scores_from``, ``decisions_from``). A
    retried task writes the same files again.

    :param shards: the plan's shard dicts (``plan.output``); none (an incremental run) skips the task.
    :param threshold: the run's cut (the match task's ``threshold``); ``None``: label-free.
    :param labels: the run's labels, if any: their cut and judges are the match task's, so the task
        scores but does not decide.
    :param calibrate_on_labels: the run fits its scorer on labels, which only the match task reads:
        the task is skipped.
    """

    template_fields: Sequence[str] = ("shards", "threshold", "labels", "calibrate_on_labels")
    ui_color = PolyglotUIColors.MATCH.value

    def __init__(
        self,
        *,
        shards: list[dict[str, Any]] | Any,
        threshold: float | str | None = None,
        labels: str | None = None,
        calibrate_on_labels: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.shards = shards  # a template field: the plan's XCom, resolved when the task runs
        self.threshold = threshold
        self.labels = labels
        self.calibrate_on_labels = calibrate_on_labels

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from polyglot_catalog.matching.part_decisions import decide_parts
        from polyglot_catalog.matching.part_scores import part_features, score_parts
        from polyglot_catalog.matching.settings import MatchSettings

        shards = list(self.shards or [])
        if not shards:
            raise AirflowSkipException("no shards planned (an incremental run): nothing to score")
        if _as_bool(self.calibrate_on_labels):
            raise AirflowSkipException("the scorer is fitted on labels, in the match task")
        t0 = time.perf_counter()
        settings = MatchSettings(threshold=_as_optional_float(self.threshold, "threshold"))
        try:
            _, folder, regions, plan = _planned(shards[0])
            done = score_parts(
                folder, plan, regions, part_features(folder, plan), corroborate=settings.corroborate
            )
            decided = None
            if not _as_optional_str(self.labels):
                cut, method = settings.threshold, settings.method
                decided = decide_parts(folder, plan, regions, threshold=cut, method=method)
        except (KeyError, TypeError, FileNotFoundError, *INPUT_ERRORS) as e:
            raise AirflowFailException(f"scores of the feature parts: {e}{NOT_RETRIED}") from e
        seconds = round(time.perf_counter() - t0, 3)
        scorer = done.scorer2 or done.scorer1
        self.log.info(
            "scored %d pairs in %d parts in %.1f s: %s", done.pairs, done.parts, seconds, scorer.describe()
        )
        out = {"pairs": done.pairs, "parts": done.parts, "seconds": seconds, "fitted_on": scorer.fitted_on}
        if decided is None:
            self.log.info("the run has labels: the match task decides")
        else:
            out |= {"threshold": decided["threshold"], "accepted": decided["accepted"]}
        return out
