"""The deployment users run: PostgreSQL + Redis + CeleryExecutor with one worker, driven over the REST API.

Starts throwaway services on loopback (tests/deployment.py, docs/DEPLOYMENT.md), triggers catalog_embed
on a cut of the demo catalog, lets the asset event schedule cross_region_match, and checks what an operator
would: both runs succeed on the Celery worker, the embed fans out to one task per file, the report
and the match state are written. Then a worker is SIGKILLed in the middle of a match: the scheduler
must notice the silent task, retry it on a new worker, and the retry must leave the same report and
state as an undisturbed run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_demo_slice
from deployment import Deployment, missing_requirements

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "include" / "demo_catalog"
COLLECTION = "deploy_catalog"
EMBED, MATCH, MATCH_TASK = "catalog_embed", "cross_region_match", "match_regions"
RUN_TIMEOUT_S = 240
# Products (label groups) of the demo catalog the deployment embeds: real descriptions in all three
# files, few enough that each file's task embeds in seconds on a 2-core CPU without AVX-512 (the whole
# demo catalog took ~140 s per file there: a test of the deployment, not of the model's speed).
GROUPS_IN_ALL, GROUPS_IN_TWO = 12, 4
# Logged by the match task when it opens the store (hooks.FALLBACK_MSG), before it reads and scores the
# catalog (about 4 s on the demo catalog here) and writes the report and the state.
MATCHING_MARK = "using embedded Qdrant"

_missing = missing_requirements()
pytestmark = [
    pytest.mark.deployment,
    pytest.mark.slow,
    pytest.mark.skipif(_missing is not None, reason=f"Celery deployment test skipped: {_missing}"),
    pytest.mark.skipif(not (DEMO / "labels.parquet").exists(), reason="demo catalog not built"),
]


def _files() -> list[Path]:
    return sorted(p for p in DEMO.glob("*.parquet") if p.name != "labels.parquet")


@pytest.fixture(scope="module")
def deploy():
    with Deployment() as deployment:
        write_demo_slice(deployment.dir / "catalog", GROUPS_IN_ALL, GROUPS_IN_TWO)
        deployment.wait_parsed((EMBED, MATCH))
        deployment.unpause(EMBED)  # paused at creation; the match DAG starts unpaused
        yield deployment


@pytest.fixture(scope="module")
def first(deploy):
    """catalog_embed triggered over the API, then the cross_region_match run its asset event started."""
    embed_id = deploy.trigger(
        EMBED, {"source": str(deploy.dir / "catalog" / "*.parquet"), "collection": COLLECTION}
    )
    embed = deploy.wait_run(EMBED, embed_id, RUN_TIMEOUT_S)
    assert embed["state"] == "success", deploy.failure(f"embed run {embed_id}: {embed['state']}")
    match_id = deploy.wait_for(
        "the asset-triggered match run", lambda: [r["dag_run_id"] for r in deploy.runs(MATCH)], 120
    )[0]
    match = deploy.wait_run(MATCH, match_id, RUN_TIMEOUT_S)
    reports = sorted((deploy.data_dir / "reports").iterdir())
    return {"embed": embed, "match": match, "report": reports[0] if len(reports) == 1 else reports}


def _summary(report: Path) -> dict:
    return json.loads((report / "summary.json").read_text(encoding="utf-8"))


def _grouped_points(deploy: Deployment) -> set[tuple[str, str, str]]:
    """(region, sku, group_id) of every catalog point the match state gave a group."""
    from polyglot_catalog.store import open_client

    client = open_client(path=str(deploy.data_dir / "qdrant"))
    try:
        points, offset = [], None
        while True:
            page, offset = client.scroll(
                COLLECTION, limit=1000, offset=offset, with_payload=True, with_vectors=False
            )
            points += page
            if offset is None:
                break
    finally:
        client.close()
    return {
        (p.payload["region"], p.payload["sku"], p.payload["group_id"])
        for p in points
        if p.payload.get("group_id")
    }


def _report_groups(report: Path) -> set[tuple[str, str, str]]:
    """(region, sku, group_id) of every row of the report's groups.parquet."""
    groups = pd.read_parquet(report / "groups.parquet")
    return set(zip(groups["region"], groups["sku"], groups["group_id"], strict=True))


def _state(deploy: Deployment) -> dict | None:
    from polyglot_catalog.matching.state import read_state
    from polyglot_catalog.store import open_client

    client = open_client(path=str(deploy.data_dir / "qdrant"))
    try:
        return read_state(client, COLLECTION)
    finally:
        client.close()


def test_embed_then_asset_triggered_match_succeed(deploy, first):
    assert first["embed"]["state"] == "success"
    assert first["match"]["state"] == "success", deploy.failure(f"match run: {first['match']['state']}")
    assert first["match"]["run_type"] == "asset_triggered"


def test_embed_ran_as_one_mapped_task_per_file_on_the_celery_worker(deploy, first):
    from airflow.utils.net import get_hostname

    tis = deploy.task_instances(EMBED, first["embed"]["dag_run_id"])
    tis += deploy.task_instances(MATCH, first["match"]["dag_run_id"])
    assert deploy.map_indexes(tis, "embed_file") == list(range(len(_files())))
    # the first match is full but small: one shard fits the memory budget, so the search is not mapped
    for mapped in ("search_shard", "cut_search_parts", "feature_shard", "score_parts"):
        assert deploy.map_indexes(tis, mapped) == [-1]
    worker_log = deploy.services["worker-1"].log.read_text(encoding="utf-8", errors="replace")
    for ti in tis:
        if ti["task_id"] in ("search_shard", "cut_search_parts", "feature_shard", "score_parts"):
            assert ti["state"] == "skipped", ti  # never reached a worker
            continue
        assert ti["state"] == "success", ti
        # CeleryExecutor's default queue, on this machine, and received by the worker process.
        assert ti["queue"] == "default" and ti["hostname"] == get_hostname(), ti
        assert ti["id"] in worker_log, f"{ti['task_id']} {ti['id']} not in the worker's log"


def test_report_and_match_state_are_written(deploy, first):
    report = first["report"]
    assert isinstance(report, Path), f"expected one report folder, found {report}"
    for name in ("pairs.parquet", "groups.parquet", "unmatched.parquet", "summary.json", "report.html"):
        assert (report / name).is_file(), name
    summary = _summary(report)
    assert summary["run_id"] == first["match"]["dag_run_id"]
    assert summary["report"]["rows"]["groups"] > 0

    state = _state(deploy)
    assert state is not None and state["last_run"] == first["match"]["dag_run_id"]
    assert state["pending"] is None and state["committed_at"]
    assert _grouped_points(deploy) == _report_groups(report)


def test_worker_killed_mid_match_is_retried_and_nothing_is_lost(deploy, first):
    before = _summary(first["report"])["report"]["rows"]
    conf = {"collection": COLLECTION, "full_rematch": True, "out_name": "after-kill", "shards": 2}
    run_id = deploy.trigger(MATCH, conf)

    def matching() -> bool:  # the task has opened the store and is matching
        return MATCHING_MARK in deploy.task_log(MATCH, run_id, MATCH_TASK)

    deploy.wait_for("the match task to start matching", matching, 120, interval=0.1)
    deploy.kill("worker-1")  # SIGKILL: the worker, its pool and the task process, no goodbye
    killed_at = time.monotonic()
    deploy.start_worker()

    run = deploy.wait_run(MATCH, run_id, RUN_TIMEOUT_S)
    assert run["state"] == "success", deploy.failure(f"match run after the kill: {run['state']}")
    tries = deploy.tries(MATCH, run_id, MATCH_TASK)
    assert [t["try_number"] for t in tries][-1] >= 2, tries
    assert tries[0]["state"] == "failed", tries  # failed by the heartbeat timeout, not re-run by hand
    assert tries[-1]["state"] == "success"
    killed_log = deploy.task_log(MATCH, run_id, MATCH_TASK, try_number=1)
    assert "wrote report" not in killed_log, "the kill came after the match had finished: not mid-match"
    print(f"retry finished {time.monotonic() - killed_at:.0f} s after the kill")

    report = deploy.data_dir / "reports" / "after-kill"
    summary = _summary(report)
    assert summary["run_id"] == run_id and summary["report"]["rows"] == before
    state = _state(deploy)
    assert state["last_run"] == run_id and state["pending"] is None and state["full_rematch"] is True
    assert _grouped_points(deploy) == _report_groups(report)
    # the full re-match searched and computed its pair features as mapped tasks on the worker
    # (2 shards x 3 region pairs), the match task putting them together
    tis = deploy.task_instances(MATCH, run_id)
    for mapped in ("search_shard", "cut_search_parts", "feature_shard"):
        assert deploy.map_indexes(tis, mapped) == list(range(6))
    for ti in tis:
        if ti["task_id"] in ("search_shard", "cut_search_parts", "feature_shard", "score_parts"):
            assert ti["state"] == "success" and ti["queue"] == "default", ti
    assert summary["candidates_path"] == "exact (shards)"
    assert summary["scores_from"] == "score task"  # the score task's scores, on the worker
    assert summary["decisions_from"] == "score task"  # and its one-to-one decisions


def test_a_qdrant_search_runs_as_mapped_tasks_on_the_worker(deploy, first):
    """``candidates="qdrant"``: the search tasks query the embedded store from the worker's two
    slots (they queue on its folder lock), the match task joins their parts and commits the state."""
    conf = {
        "collection": COLLECTION,
        "full_rematch": True,
        "out_name": "qdrant",
        "shards": 2,
        "candidates": "qdrant",
    }
    run_id = deploy.trigger(MATCH, conf)
    run = deploy.wait_run(MATCH, run_id, RUN_TIMEOUT_S)
    assert run["state"] == "success", deploy.failure(f"qdrant-sharded match run: {run['state']}")
    tis = deploy.task_instances(MATCH, run_id)
    assert deploy.map_indexes(tis, "search_shard") == list(range(6))
    assert all(ti["state"] == "success" for ti in tis if ti["task_id"] == "search_shard"), tis
    report = deploy.data_dir / "reports" / "qdrant"
    summary = _summary(report)
    assert summary["run_id"] == run_id and summary["candidates_path"] == "qdrant (shards)"
    state = _state(deploy)
    assert state["last_run"] == run_id and state["pending"] is None
    assert _grouped_points(deploy) == _report_groups(report)
