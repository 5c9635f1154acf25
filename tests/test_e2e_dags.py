"""End to end: both DAGs with ``dag.test()`` on a slice of the shipped demo sample (every region pair,
products in all three regions and in two), real model, local Qdrant.

Checks what a user would: every input row became a point, the embed run raised the collection
asset event that schedules the match DAG, and the report finds the known cross-region duplicates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_demo_slice

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "include" / "demo_catalog"
COLLECTION = "e2e_catalog"
OUT_NAME = "e2e"
# Label groups of the demo catalog in the slice: listed in all three regions, and in two.
GROUPS_IN_ALL, GROUPS_IN_TWO = 40, 10

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DEMO / "labels.parquet").exists(), reason="demo catalog not built"),
]


def _regions(catalog: Path) -> list[Path]:
    return sorted(p for p in catalog.glob("*.parquet") if p.name != "labels.parquet")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Migrate the throwaway Airflow DB, then run catalog_embed and cross_region_match once."""
    from airflow.dag_processing.dagbag import DagBag

    data_dir = tmp_path_factory.mktemp("e2e-data")
    catalog = data_dir / "catalog"
    write_demo_slice(catalog, GROUPS_IN_ALL, GROUPS_IN_TWO)
    saved = {k: os.environ.get(k) for k in ("POLYGLOT_DATA_DIR", "AIRFLOW_CONN_QDRANT_DEFAULT")}
    os.environ["POLYGLOT_DATA_DIR"] = str(data_dir)
    os.environ.pop("AIRFLOW_CONN_QDRANT_DEFAULT", None)
    try:
        airflow = Path(sys.executable).with_name("airflow")
        subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)
        bag = DagBag(dag_folder=str(ROOT / "dags"))
        assert not bag.import_errors
        embed_run = bag.dags["catalog_embed"].test(
            run_conf={"source": str(catalog / "*.parquet"), "collection": COLLECTION}
        )
        match_run = bag.dags["cross_region_match"].test(
            run_conf={
                "collection": COLLECTION, "labels": str(catalog / "labels.parquet"), "out_name": OUT_NAME
            }
        )  # fmt: skip
        yield {"embed": embed_run, "match": match_run, "data_dir": data_dir, "catalog": catalog}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_both_runs_succeed(runs):
    assert "success" in str(runs["embed"].state)
    assert "success" in str(runs["match"].state)


def test_embed_ran_one_mapped_task_per_file_then_one_reduce(runs):
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    with create_session() as session:
        tis = (
            session.query(TaskInstance)
            .filter(TaskInstance.dag_id == "catalog_embed", TaskInstance.run_id == runs["embed"].run_id)
            .all()
        )
        by_task = {}
        for ti in tis:
            by_task.setdefault(ti.task_id, []).append((ti.map_index, ti.state == TaskInstanceState.SUCCESS))
    assert sorted(by_task["embed_file"]) == [(i, True) for i in range(len(_regions(runs["catalog"])))]
    assert by_task["reconcile_vanished"] == [(-1, True)]


def test_each_mapped_embed_task_wrote_its_own_quarantine_file(runs):
    from polyglot_catalog.provider.operators import quarantine_file

    files = [quarantine_file(runs["embed"].run_id, i) for i in range(len(_regions(runs["catalog"])))]
    assert len(set(files)) == len(files)
    for path in files:
        assert path.is_relative_to(runs["data_dir"] / "quarantine") and path.is_file()
        assert list(pd.read_parquet(path).columns)[:3] == ["source_file", "row", "reason"]


def test_point_counts_equal_the_input(runs):
    from polyglot_catalog.provider.hooks import PolyglotQdrantHook
    from polyglot_catalog.store import CatalogStore, vector_name_for

    expected = {p.stem: len(pd.read_parquet(p)) for p in _regions(runs["catalog"])}
    hook = PolyglotQdrantHook()
    try:
        stats = CatalogStore(hook.conn, COLLECTION, vector_name_for("multilingual-e5-small")).stats()
    finally:
        hook.close()
    assert stats["regions"] == expected
    assert stats["points"] == sum(expected.values())
    assert stats["stale"] == 0


def test_embed_success_raises_the_collection_asset_event(runs):
    """The event (and the queued match run) is what asset-aware scheduling acts on."""
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from polyglot_catalog.provider.operators import collection_asset

    uri = collection_asset().uri
    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.uri == uri, AssetEvent.source_dag_id == "catalog_embed")
            .all()
        )
        assert events, "catalog_embed did not emit the collection asset event"
        rows = sum(len(pd.read_parquet(p)) for p in _regions(runs["catalog"]))
        extra = events[-1].extra
        assert extra == {
            "collection": COLLECTION,
            "model": "multilingual-e5-small",  # the match DAG reads the model from here too
            "files": len(_regions(runs["catalog"])),
            "upserted": rows,
            "flagged": 0,
        }
        assert events[-1].source_task_id == "reconcile_vanished"
        queued = session.query(AssetDagRunQueue).filter(
            AssetDagRunQueue.target_dag_id == "cross_region_match"
        )
        assert queued.count() >= 1


def test_report_finds_known_duplicates_and_accounts_for_every_product(runs):
    report = runs["data_dir"] / "reports" / OUT_NAME
    for name in ("pairs.parquet", "groups.parquet", "unmatched.parquet", "summary.json", "report.html"):
        assert (report / name).is_file(), name

    pairs = pd.read_parquet(report / "pairs.parquet")
    matches = pairs[pairs["decision"] == "match"]
    found = {(r.region_a, r.sku_a, r.region_b, r.sku_b) for r in matches.itertuples()}
    labels = pd.read_parquet(runs["catalog"] / "labels.parquet")
    truth = set()
    for _, group in labels.groupby("group_id"):
        members = sorted(zip(group["region"], group["sku"], strict=True))
        truth.update((a[0], a[1], b[0], b[1]) for a, b in combinations(members, 2) if a[0] != b[0])
    hit = len(found & truth)
    assert hit / len(truth) >= 0.6, f"found {hit} of {len(truth)} labelled cross-region duplicates"
    assert hit / max(len(found), 1) >= 0.8, f"{len(found) - hit} of {len(found)} matches are wrong"

    # Every input product is either in a cross-region group or listed as unmatched.
    placed = pd.concat(
        [
            pd.read_parquet(report / "groups.parquet")[["region", "sku"]],
            pd.read_parquet(report / "unmatched.parquet")[["region", "sku"]],
        ]
    )
    expected = pd.concat([pd.read_parquet(p)[["region", "sku"]] for p in _regions(runs["catalog"])])
    assert set(map(tuple, placed.to_numpy())) == set(map(tuple, expected.to_numpy()))

    summary = json.loads((report / "summary.json").read_text(encoding="utf-8"))
    assert summary["collection"] == COLLECTION
    assert summary["calibrated_on_labels"] is False  # the labels only scored the matches
    assert summary["metrics"]["overall"]["f1"] >= 0.6


# ---------------------------------------------------------------------------------------------
# `make airflow` (issue 21): the four components on loopback, both DAGs unpaused, no run started


def test_make_airflow_starts_on_loopback_with_both_dags_unpaused_and_no_run(tmp_path):
    import socket
    import sqlite3

    sys.path.insert(0, str(ROOT / "scripts"))
    import run_airflow

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert run_airflow.component_command("airflow", "api-server", port)[2:4] == ["--host", "127.0.0.1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "PYTEST_"))}
    env.update(AIRFLOW_HOME=str(tmp_path / "home"), POLYGLOT_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_airflow.py"), "--port", str(port), "--exit-when-ready"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    password = json.loads((tmp_path / "home" / "simple_auth_manager_passwords.json.generated").read_text())
    assert f"Airflow UI: http://127.0.0.1:{port}" in done.stdout
    assert f"login: admin / {password['admin']}" in done.stdout
    with sqlite3.connect(tmp_path / "home" / "airflow.db") as db:
        paused = dict(db.execute("select dag_id, is_paused from dag").fetchall())
        runs = db.execute("select dag_id, run_id from dag_run").fetchall()
    assert paused == {"catalog_embed": 0, "cross_region_match": 0, "catalog_tune": 0}  # tune: no schedule
    assert runs == [], "unpausing must not start a run nobody asked for"
    with socket.socket() as sock:  # every component stopped again
        assert sock.connect_ex(("127.0.0.1", port)) != 0
