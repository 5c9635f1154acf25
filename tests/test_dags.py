"""DAG integrity (the Astro template's checks, for Airflow 3.3) plus the trigger form's validation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
DAG_IDS = ["catalog_embed", "cross_region_match"]


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def _dag_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_dag_{name}", ROOT / "dags" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_no_import_errors(bag, path):
    errors = {Path(k).name: v for k, v in bag.import_errors.items()}
    assert path.name not in errors, errors.get(path.name)


def test_expected_dags_are_there(bag):
    assert set(DAG_IDS) <= set(bag.dags)


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_dag_header(bag, dag_id):
    dag = bag.dags[dag_id]
    assert dag.tags and "polyglot-catalog" in dag.tags
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.doc_md and dag.doc_md.strip().startswith("###")
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id


def test_embed_fans_out_per_shard_and_updates_the_collection_asset(bag):
    from polyglot_catalog.provider.operators import collection_asset

    dag = bag.dags["catalog_embed"]
    embed = dag.get_task("embed_shard")
    assert type(embed).__name__ == "MappedOperator"
    assert dag.get_task("list_parquet_shards").downstream_task_ids == {"embed_shard"}
    summarize = dag.get_task("summarize")
    assert "embed_shard" in summarize.upstream_task_ids
    assert collection_asset() in summarize.outlets


def test_match_is_scheduled_on_the_collection_asset(bag):
    from polyglot_catalog.provider.operators import collection_asset

    dag = bag.dags["cross_region_match"]
    assert collection_asset() in dag.timetable.asset_condition.objects
    assert [t.task_id for t in dag.tasks] == ["match_regions"]


def test_default_source_is_the_demo_catalog_and_labels_default_when_present(bag):
    embed = bag.dags["catalog_embed"].params
    assert embed["source"] == str(ROOT / "include" / "demo_catalog" / "*.parquet")
    labels = ROOT / "include" / "demo_catalog" / "labels.parquet"
    match = bag.dags["cross_region_match"].params
    assert match["labels"] == (str(labels) if labels.exists() else None)


def _validate(dag, conf: dict) -> dict:
    """What a trigger does: the scheduler's serialized DAG merges the run conf and validates it."""
    from airflow.serialization.serialized_objects import DagSerialization

    serialized = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    return serialized.params.deep_merge(conf).validate()


GOOD = {
    "catalog_embed": {"source": "/data/DE.parquet", "collection": "cat_v2", "full_refresh": True},
    "cross_region_match": {
        "regions": ["DE", "FR"],
        "threshold": 0.8,
        "out_name": "nightly-1",
        "labels": None,
    },
}
BAD = [
    ("catalog_embed", {"source": ""}),
    ("catalog_embed", {"collection": "bad name!"}),
    ("catalog_embed", {"full_refresh": "yes"}),
    ("catalog_embed", {"vanished": "nuke"}),
    ("catalog_embed", {"model": ""}),
    ("cross_region_match", {"threshold": 1.7}),
    ("cross_region_match", {"threshold": -0.1}),
    ("cross_region_match", {"threshold": "high"}),
    ("cross_region_match", {"regions": "DE,FR"}),
    ("cross_region_match", {"regions": ["D E"]}),
    ("cross_region_match", {"regions": ["DE", "DE"]}),
    ("cross_region_match", {"out_name": "../etc"}),
    ("cross_region_match", {"out_name": "a/b"}),
    ("cross_region_match", {"collection": ""}),
]


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_params_accept_good_input(bag, dag_id):
    resolved = _validate(bag.dags[dag_id], GOOD[dag_id])
    for key, value in GOOD[dag_id].items():
        assert resolved[key] == value


@pytest.mark.parametrize(("dag_id", "conf"), BAD, ids=[f"{d}-{next(iter(c))}" for d, c in BAD])
def test_params_reject_bad_input(bag, dag_id, conf):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        _validate(bag.dags[dag_id], conf)


def test_params_are_described(bag):
    for dag_id in DAG_IDS:
        for name, param in bag.dags[dag_id].params.items():
            assert param.description, f"{dag_id}.{name}"


def _write(path: Path, regions: list[str]) -> str:
    skus = [f"s{i}" for i in range(len(regions))]
    pq.write_table(pa.table({"sku": skus, "region": regions, "description": ["x"] * len(regions)}), path)
    return str(path)


def test_shards_keep_every_file_of_a_region_together(tmp_path):
    group_by_region = _dag_module("catalog_embed").group_by_region
    de1 = _write(tmp_path / "de1.parquet", ["DE"])
    de2 = _write(tmp_path / "de2.parquet", ["DE", "AT"])
    at = _write(tmp_path / "at.parquet", ["AT"])
    us = _write(tmp_path / "us.parquet", ["US"])
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    shards = group_by_region([de1, de2, at, us, str(broken)])
    assert sorted(map(str, shards)) == sorted(map(str, [[de1, de2, at], us, str(broken)]))


def test_merge_summaries_adds_counts_and_unions_regions():
    merge = _dag_module("catalog_embed").merge_summaries
    total = merge(
        [
            {
                "files": 1,
                "upserted": 3,
                "regions": ["DE"],
                "seconds": {"encode": 1.0},
                "model": "m",
                "x": True,
            },
            {"files": 2, "upserted": 4, "regions": ["FR", "DE"], "seconds": {"encode": 0.5}, "model": "m"},
        ]
    )
    assert total["shards"] == 2
    assert total["files"] == 3
    assert total["upserted"] == 7
    assert total["regions"] == ["DE", "FR"]
    assert total["seconds"] == {"encode": 1.5}
    assert "x" not in total


def test_core_never_imports_airflow():
    package = ROOT / "plugins" / "polyglot_catalog"
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "provider" not in path.parts
        and any(
            line.lstrip().startswith(("import airflow", "from airflow"))
            for line in path.read_text(encoding="utf-8").splitlines()
        )
    ]
    assert offenders == []
