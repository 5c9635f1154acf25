"""The mapped full match as Airflow runs it (#26): plan -> search shards -> cuts -> feature shards ->
match task, on a real embedded store filled by the CLI with the fake encoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import FakeEncoder

from polyglot_catalog.cli import main
from polyglot_catalog.matching import inputs
from polyglot_catalog.provider.match_shards import (
    MatchFeatureShardOperator,
    MatchScoreOperator,
    MatchShardCutsOperator,
    MatchShardOperator,
    MatchShardPlanOperator,
)
from polyglot_catalog.provider.operators import MatchCatalogOperator

WORDS = ["oak", "table", "sofa", "grey", "lamp", "shelf", "chair", "desk", "rug", "bed", "white", "black"]


class _TI:
    """The XCom half of a task instance: what one task pushes, the next one pulls."""

    def __init__(self) -> None:
        self.pushed: dict[tuple[str, str], Any] = {}
        self.task_id = "plan"

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[(self.task_id, key)] = value

    def xcom_pull(self, task_ids: str, key: str) -> Any:
        return self.pushed.get((task_ids, key))


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three regions of 24 products each embedded into the default embedded store of the data dir."""
    monkeypatch.setenv("POLYGLOT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("AIRFLOW_CONN_QDRANT_DEFAULT", raising=False)
    for region in ("DE", "FR", "US"):
        texts = [
            f"{WORDS[i % 12]} {WORDS[(i * 5 + 1) % 12]} {WORDS[(i * 7 + 3) % 12]} {i}" for i in range(24)
        ]
        path = tmp_path / "in" / f"{region}.parquet"
        path.parent.mkdir(exist_ok=True)
        skus = [f"{region.lower()}{i:02d}" for i in range(24)]
        pq.write_table(pa.table({"sku": skus, "region": [region] * 24, "description": texts}), path)
    store = ["--collection", "cat", "--qdrant-path", str(tmp_path / "qdrant"), "--model", "fake-model"]
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()):
        assert main(["embed", "--source", str(tmp_path / "in" / "*.parquet"), *store]) == 0
    return tmp_path


def _plan(ti: _TI, **kwargs: Any) -> list[dict[str, Any]]:
    op = MatchShardPlanOperator(task_id="plan", collection="cat", model="fake-model", **kwargs)
    return op.execute(context={"ti": ti, "run_id": "manual__night"})


def _maps(plan: list[dict[str, Any]], score: bool = True) -> None:
    """What the tasks after the plan do: search every shard, cut each shard's share, compute every
    feature part (mapped), then score the parts (one task)."""
    for i, shard in enumerate(plan):  # one operator per map index
        MatchShardOperator(task_id=f"search{i}", shard=shard).execute(context={"run_id": "manual__night"})
    for i, shard in reversed(list(enumerate(plan))):  # cuts tasks need no order among themselves
        done = MatchShardCutsOperator(task_id=f"cuts{i}", shard=shard).execute(context={})
        assert Path(done["cuts"]).name.startswith("cuts-")
    for i, shard in enumerate(plan):
        done = MatchFeatureShardOperator(task_id=f"features{i}", shard=shard).execute(context={})
        assert Path(done["part"]).name.startswith("features-")
    if score:
        done = MatchScoreOperator(task_id="score", shards=plan).execute(context={})
        assert done["parts"] == len(plan) and done["pairs"] > 0 and done["fitted_on"] == "self-training"
        assert done["accepted"] > 0  # and decided the one-to-one rule


def _match(ti: _TI, name: str, **kwargs: Any) -> dict[str, Any]:
    op = MatchCatalogOperator(
        task_id="match", collection="cat", model="fake-model", out_name=name, shards_from="plan", **kwargs
    )
    return op.execute(context={"ti": ti, "run_id": f"manual__{name}"})


def test_a_full_run_is_searched_in_mapped_shards_and_joined_by_the_match_task(catalog: Path) -> None:
    ti = _TI()
    plan = _plan(ti, shards=2)
    assert len(plan) == 3 * 2  # 3 regions: 3 region pairs, 2 shards each
    folder = Path(ti.pushed[("plan", "shard_dir")])
    assert ti.pushed[("plan", "shards")] == 2 and folder == catalog / "match_shards" / "manual__night"
    done = MatchShardOperator(task_id="search0", shard=plan[0]).execute(context={"run_id": "manual__night"})
    assert Path(done["part"]).parent == folder and done["texts"] == plan[0]["stop"] - plan[0]["start"]
    _maps(plan)
    assert len(list(folder.glob("features-*.parquet"))) == 6
    with (
        mock.patch.object(inputs, "load_catalog", wraps=inputs.load_catalog) as load,
        mock.patch.object(inputs, "cached_sentences", wraps=inputs.cached_sentences) as sentences,
    ):
        sharded = _match(ti, "sharded")
    # the reduce reads no vector and no sentence vector: the feature tasks scored the sentences
    assert [c.kwargs["with_vectors"] for c in load.call_args_list] == [False] and not sentences.called
    assert sharded["mode"] == "full"
    summary = json.loads((catalog / "reports" / "sharded" / "summary.json").read_text())
    assert summary["candidates_path"] == "exact (shards)" and "sharded_features" in summary["timings"]
    assert "sentences" in summary["scorer"]["weights"]
    assert summary["scores_from"] == "score task"  # the match task fitted nothing
    assert summary["decisions_from"] == "score task"  # and solved nothing
    assert not folder.exists()  # joined and committed: the parts are removed

    # the same catalog matched in one task (a full re-match) accepts the same pairs
    single = MatchCatalogOperator(
        task_id="m", collection="cat", model="fake-model", out_name="single", full_rematch=True
    ).execute(context={"ti": _TI(), "run_id": "manual__single"})
    assert (single["pairs"], single["matches"]) == (sharded["pairs"], sharded["matches"])

    cols = ["region_a", "sku_a", "region_b", "sku_b", "score", "decision"]
    a = pd.read_parquet(catalog / "reports" / "sharded" / "pairs.parquet")[cols]
    b = pd.read_parquet(catalog / "reports" / "single" / "pairs.parquet")[cols]
    pd.testing.assert_frame_equal(a, b)

    # nothing changed since: tonight's run continues incrementally, so nothing is mapped
    ti2 = _TI()
    assert _plan(ti2, shards=2) == [] and ti2.pushed[("plan", "shards")] is None
    assert _match(ti2, "tonight")["mode"] == "incremental"


def test_a_qdrant_search_in_mapped_shards_gives_the_single_qdrant_tasks_pairs(catalog: Path) -> None:
    """``candidates="qdrant"``: the plan marks its shards so, each search task queries the collection
    (region-filtered) and the match task joins what they wrote into the one-task Qdrant match."""
    ti = _TI()
    plan = _plan(ti, shards=2, candidates="qdrant", hnsw_ef="64")
    assert {(s["search"], s["hnsw_ef"], s["collection"], s["model"]) for s in plan} == {
        ("qdrant", 64, "cat", "fake-model")
    }
    _maps(plan)
    sharded = _match(ti, "sharded", candidates="qdrant", hnsw_ef="64")
    summary = json.loads((catalog / "reports" / "sharded" / "summary.json").read_text())
    assert summary["candidates_path"] == "qdrant (shards)"
    single = MatchCatalogOperator(
        task_id="m",
        collection="cat",
        model="fake-model",
        out_name="single",
        full_rematch=True,
        candidates="qdrant",
        hnsw_ef="64",
    ).execute(context={"ti": _TI(), "run_id": "manual__single"})
    assert (
        json.loads((catalog / "reports" / "single" / "summary.json").read_text())["candidates_path"]
        == "qdrant"
    )
    assert (single["pairs"], single["matches"]) == (sharded["pairs"], sharded["matches"])
    cols = ["region_a", "sku_a", "region_b", "sku_b", "score", "decision"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(catalog / "reports" / "sharded" / "pairs.parquet")[cols],
        pd.read_parquet(catalog / "reports" / "single" / "pairs.parquet")[cols],
    )


def test_an_automatic_shard_count_searches_a_small_catalog_in_the_match_task(catalog: Path) -> None:
    ti = _TI()
    assert _plan(ti, full_rematch=True) == []  # one shard fits 4 GB: no mapped tasks
    assert ti.pushed[("plan", "shards")] is None
    assert not (catalog / "match_shards").exists() or not any((catalog / "match_shards").rglob("*"))
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match=r"below one search task's fixed part.*not retried"):
        _plan(ti, full_rematch=True, memory_budget_mb=0.001)


def test_a_bad_shard_fails_without_retries_naming_it(catalog: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    op = MatchShardOperator(task_id="search", shard={"query": "DE"})
    with pytest.raises(AirflowFailException, match=r"shard \{'query': 'DE'\}.*not retried"):
        op.execute(context={"run_id": "r"})


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_search_files_and_parts_can_live_in_object_storage_by_url(catalog: Path, scheme: str) -> None:
    """``shard_dir`` as a URL: ``file://`` through Airflow's ObjectStoragePath, ``memory://`` (no
    Airflow filesystem for it) through fsspec, as ``s3://``/``gs://`` go one way or the other. The
    mapped tasks find the plan's search files there, the match task joins the parts and removes them."""
    import fsspec

    url = f"memory://polyglot-test/{catalog.name}" if scheme == "memory" else f"file://{catalog}/remote"
    fs, root = fsspec.core.url_to_fs(url)
    ti = _TI()
    plan = _plan(ti, shards=2, shard_dir=url)
    assert len(plan) == 6 and ti.pushed[("plan", "shard_dir")] == url
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)) == sorted(
        f"{kind}-{r}.{ext}"
        for r in ("DE", "FR", "US")
        for kind, ext in (
            ("search", "json"),
            ("search", "parquet"),
            ("rows", "parquet"),
            ("stats", "npz"),
            ("sentences", "parquet"),  # the embed run filled the sentence cache
            ("sentence-stats", "npz"),
        )
    )
    _maps(plan)
    assert len([p for p in fs.ls(root, detail=False) if p.rsplit("/", 1)[-1].startswith("features-")]) == 6
    sharded = _match(ti, "remote")
    summary = json.loads((catalog / "reports" / "remote" / "summary.json").read_text())
    assert summary["candidates_path"] == "exact (shards)"
    single = _match(_TI(), "single", full_rematch=True)
    assert (single["pairs"], single["matches"]) == (sharded["pairs"], sharded["matches"])
    assert not fs.exists(root)  # committed: the search files and parts are spent


def test_a_catalog_changed_after_the_plan_is_matched_whole_by_the_match_task(
    catalog: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An embed run between the plan and the match (a text edited): the feature parts are from the
    old catalog, so the match task reads the products and computes the features itself; its result
    is the one-task match of the new catalog, nothing of the edit lost."""
    ti = _TI()
    plan = _plan(ti, shards=2)
    _maps(plan)
    path = catalog / "in" / "FR.parquet"
    table = pq.read_table(path).to_pandas()
    table.loc[3, "description"] = "a brand new description of product three"
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), path)
    store = ["--collection", "cat", "--qdrant-path", str(catalog / "qdrant"), "--model", "fake-model"]
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()):
        assert main(["embed", "--source", str(catalog / "in" / "*.parquet"), *store]) == 0
    with caplog.at_level("WARNING"):
        sharded = _match(ti, "changed")
    assert "region FR changed since the plan wrote its rows file" in caplog.text
    single = _match(_TI(), "single", full_rematch=True)
    cols = ["region_a", "sku_a", "region_b", "sku_b", "score", "decision"]
    a = pd.read_parquet(catalog / "reports" / "changed" / "pairs.parquet")[cols]
    b = pd.read_parquet(catalog / "reports" / "single" / "pairs.parquet")[cols]
    pd.testing.assert_frame_equal(a, b)
    assert (sharded["pairs"], sharded["matches"]) == (single["pairs"], single["matches"])


def test_the_match_task_scores_itself_when_the_scores_do_not_fit_its_parts(catalog: Path) -> None:
    """No score task (or a feature part written again after it): the match task fits the scorers
    itself, says why, and accepts the pairs it accepts from the score task's scores."""
    ti = _TI()
    plan = _plan(ti, shards=2)
    _maps(plan, score=False)
    unscored = _match(ti, "unscored")
    summary = json.loads((catalog / "reports" / "unscored" / "summary.json").read_text())
    assert summary["scores_from"].startswith("match task (no scores.json in ")

    ti = _TI()
    plan = _plan(ti, shards=2, full_rematch=True)
    _maps(plan)
    folder = Path(ti.pushed[("plan", "shard_dir")])
    part = folder / "features-DE-FR-0000000000-0000000012.parquet"
    pq.write_table(pq.read_table(part), part, compression="zstd")  # the same rows, other bytes
    rewritten = _match(ti, "rewritten", full_rematch=True)
    summary = json.loads((catalog / "reports" / "rewritten" / "summary.json").read_text())
    assert summary["scores_from"] == (
        "match task (feature part DE-FR-0000000000-0000000012 changed since it was scored)"
    )
    assert (rewritten["pairs"], rewritten["matches"]) == (unscored["pairs"], unscored["matches"])


def test_the_score_task_is_skipped_without_shards_or_when_labels_fit_the_scorer() -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    with pytest.raises(AirflowSkipException, match="no shards planned"):
        MatchScoreOperator(task_id="score", shards=[]).execute(context={})
    shard = {"query": "DE", "other": "FR", "start": 0, "stop": 1, "k": 5, "dir": "/nowhere"}
    with pytest.raises(AirflowSkipException, match="fitted on labels"):
        MatchScoreOperator(task_id="score", shards=[shard], calibrate_on_labels="True").execute(context={})


def test_a_score_task_without_its_feature_parts_fails_naming_the_part(catalog: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    ti = _TI()
    plan = _plan(ti, shards=2)
    _maps(plan, score=False)
    folder = Path(ti.pushed[("plan", "shard_dir")])
    (folder / "features-FR-US-0000000012-0000000024.parquet").unlink()
    missing = "feature part of shard FR-US-0000000012-0000000024 is missing"
    with pytest.raises(AirflowFailException, match=missing):
        MatchScoreOperator(task_id="score", shards=plan).execute(context={})


def test_with_labels_the_score_task_scores_and_the_match_task_decides(catalog: Path) -> None:
    labels = catalog / "labels.parquet"
    rows = {"region": ["DE", "FR"], "sku": ["de01", "fr01"], "group_id": ["g1", "g1"]}
    pd.DataFrame(rows).to_parquet(labels)
    ti = _TI()
    plan = _plan(ti, shards=2)
    _maps(plan, score=False)
    done = MatchScoreOperator(task_id="score", shards=plan, labels=str(labels)).execute(context={})
    assert "accepted" not in done and not (Path(ti.pushed[("plan", "shard_dir")]) / "decisions.json").exists()
    _match(ti, "labelled", labels=str(labels))
    summary = json.loads((catalog / "reports" / "labelled" / "summary.json").read_text())
    assert summary["scores_from"] == "score task"
    assert summary["decisions_from"] == "match task (the run has labels)"
