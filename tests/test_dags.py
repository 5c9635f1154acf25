"""DAG integrity (the Astro template's checks, for Airflow 3.3) plus the trigger form's validation."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
DAG_IDS = ["catalog_embed", "cross_region_match"]


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


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


def test_embed_maps_one_task_per_file_then_one_reduce_updates_the_collection_asset(bag):
    from polyglot_catalog.provider.operators import collection_asset

    dag = bag.dags["catalog_embed"]
    embed = dag.get_task("embed_file")
    assert type(embed).__name__ == "MappedOperator"
    assert set(embed.expand_input.value) == {"source"}  # mapped over the listed files, nothing else
    assert embed.partial_kwargs["vanished"] == "keep"  # a shard cannot tell what vanished
    for name in ("max_invalid", "on_bad_file"):  # the trigger form's input policy reaches each shard
        assert embed.partial_kwargs[name] == f"{{{{ params.{name} }}}}"
    assert "params.allowed_regions" in embed.partial_kwargs["allowed_regions"]
    assert dag.get_task("list_parquet_files").downstream_task_ids == {"embed_file", "reconcile_vanished"}
    reduce = dag.get_task("reconcile_vanished")
    assert type(reduce).__name__ == "ReconcileCatalogOperator"
    assert reduce.upstream_task_ids == {"list_parquet_files", "embed_file"}
    assert reduce.trigger_rule == "all_success"  # never reconcile after a failed shard
    assert reduce.vanished == "{{ params.vanished }}"
    assert reduce.outlets == [collection_asset()]
    assert not embed.outlets  # only the reduce step announces the collection
    assert len(dag.tasks) == 3


def test_match_is_scheduled_on_the_collection_asset(bag):
    from polyglot_catalog.provider.operators import collection_asset

    dag = bag.dags["cross_region_match"]
    assert collection_asset() in dag.timetable.asset_condition.objects
    assert [t.task_id for t in dag.tasks] == [
        "plan_search_shards",
        "search_shard",
        "cut_search_parts",
        "feature_shard",
        "score_parts",
        "match_regions",
    ]


def test_a_full_match_searches_in_mapped_shards_that_the_match_task_joins(bag):
    """plan -> mapped search -> cuts -> mapped features -> score -> match; the match still runs when
    the plan maps nothing (incremental: the score task is skipped with the mapped ones)."""
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    dag = bag.dags["cross_region_match"]
    names = ("plan_search_shards", "search_shard", "cut_search_parts", "feature_shard", "score_parts")
    plan, search, cuts, features, score = (dag.get_task(t) for t in names)
    match = dag.get_task("match_regions")
    assert isinstance(search, MappedOperator) and search.upstream_task_ids == {plan.task_id}
    assert isinstance(cuts, MappedOperator) and cuts.upstream_task_ids == {plan.task_id, search.task_id}
    assert isinstance(features, MappedOperator) and features.upstream_task_ids == {plan.task_id, cuts.task_id}
    # one task over every part (it takes the whole plan), skipped when its upstream is
    assert not isinstance(score, MappedOperator) and score.trigger_rule == "all_success"
    assert score.upstream_task_ids == {plan.task_id, features.task_id}
    assert score.calibrate_on_labels == "{{ params.calibrate_on_labels }}"
    assert (score.threshold, score.labels) == ("{{ params.threshold }}", "{{ params.labels or '' }}")
    assert match.upstream_task_ids == {score.task_id} and match.trigger_rule == "none_failed"
    assert match.shards_from == plan.task_id
    params = dag.params.dump()
    assert params["shards"] is None and params["memory_budget_mb"] == 4096
    assert _validate(dag, {"shards": 3})["shards"] == 3
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="shards"):
        _validate(dag, {"shards": 0})
    # the plan and the match task search the same way: one Param feeds both
    assert (
        params["candidates"] == "auto" and _validate(dag, {"candidates": "qdrant"})["candidates"] == "qdrant"
    )
    assert plan.candidates == match.candidates == "{{ params.candidates }}"
    with pytest.raises(ParamValidationError, match="candidates"):
        _validate(dag, {"candidates": "hnsw"})


def _asset_event(collection: str, minute: int = 0, model: str | None = None):
    from datetime import UTC, datetime

    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult

    from polyglot_catalog.provider.operators import collection_asset

    asset = collection_asset()
    return AssetEventDagRunReferenceResult(
        asset={"name": asset.name, "uri": asset.uri, "extra": {}},
        extra={
            "collection": collection,
            **({"model": model} if model else {}),
            "files": 3,
            "upserted": 9,
            "flagged": 0,
        },
        source_task_id="reconcile_vanished",
        source_dag_id="catalog_embed",
        source_run_id=f"run-{minute}",
        source_map_index=-1,
        source_aliases=[],
        timestamp=datetime(2025, 1, 1, 0, minute, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param([], ("from_param", "param-model"), id="manual-run-uses-the-params"),
        pytest.param([("cat_v2", 0, None)], ("cat_v2", "param-model"), id="event-without-model"),
        pytest.param([("cat_v2", 0, "m2")], ("cat_v2", "m2"), id="asset-run-uses-the-event"),
        pytest.param(
            [("old", 1, "m-old"), ("newest", 5, "m-new"), ("older", 0, "m-older")],
            ("newest", "m-new"),
            id="newest-event-wins",
        ),
    ],
)
def test_match_renders_the_collection_and_model_of_the_triggering_event(bag, events, expected):
    """What the worker does: render the match task with the Task SDK's triggering_asset_events."""
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    dag = bag.dags["cross_region_match"]
    task = dag.get_task("match_regions").prepare_for_execution()
    context = {
        "params": {**dag.params.dump(), "collection": "from_param", "model": "param-model"},
        "triggering_asset_events": TriggeringAssetEventsAccessor.build(
            [_asset_event(*event) for event in events]
        ),
    }
    task.render_template_fields(context)
    assert (task.collection, task.model) == expected


def test_trigger_form_values_render_into_what_the_operators_parse(bag):
    from polyglot_catalog.provider.operators import _as_bool, _as_regions

    embed_dag = bag.dags["catalog_embed"]
    embed = embed_dag.get_task("embed_file")
    params = {**embed_dag.params.dump(), "max_invalid": "5%", "allowed_regions": ["DE", "FR"]}
    rendered = {
        name: embed.render_template(embed.partial_kwargs[name], {"params": params})
        for name in ("max_invalid", "on_bad_file", "allowed_regions")
    }
    assert rendered == {"max_invalid": "5%", "on_bad_file": "fail_at_end", "allowed_regions": "DE,FR"}
    assert _as_regions(rendered["allowed_regions"]) == ["DE", "FR"]
    defaults = embed_dag.params.dump()
    assert (
        _as_regions(embed.render_template(embed.partial_kwargs["allowed_regions"], {"params": defaults}))
        is None
    )

    match_dag = bag.dags["cross_region_match"]
    task = match_dag.get_task("match_regions").prepare_for_execution()
    task.render_template_fields({"params": match_dag.params.dump(), "triggering_asset_events": {}})
    assert _as_bool(task.calibrate_on_labels) is False  # honest metrics unless asked


def test_default_source_is_the_demo_catalog_and_no_labels_unless_given(bag):
    embed = bag.dags["catalog_embed"].params
    assert embed["source"] == str(ROOT / "include" / "demo_catalog" / "*.parquet")
    # the demo's labels would score a user's own collection as all wrong (issue 21)
    assert bag.dags["cross_region_match"].params["labels"] is None
    match_dag = bag.dags["cross_region_match"]
    task = match_dag.get_task("match_regions").prepare_for_execution()
    task.render_template_fields({"params": match_dag.params.dump(), "triggering_asset_events": {}})
    from polyglot_catalog.provider.operators import _as_optional_str

    assert _as_optional_str(task.labels) is None
    gtin = _validate(match_dag, {"labels": "gtin"})
    assert gtin["labels"] == "gtin"


@pytest.mark.parametrize("now", ["2026-12-06T02:00:30", "2026-12-06T02:41:00", "2026-12-06T23:30:00"])
def test_unpausing_embed_starts_no_run_until_its_next_schedule(bag, monkeypatch, now):
    """Unpausing catalog_embed must not start a run for a 02:00 that has already passed, however
    recently (Airflow runs one under 2.4 h old unless the DAG says otherwise)."""
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables import trigger
    from airflow.timetables.base import TimeRestriction

    clock = pendulum.parse(now, tz="UTC")
    monkeypatch.setattr(trigger, "utcnow", lambda: clock)
    # the scheduler's view: the serialized DAG's timetable and time restriction
    dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(bag.dags["catalog_embed"]))
    restriction = TimeRestriction(earliest=dag.start_date, latest=None, catchup=dag.catchup)
    info = dag.timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    assert info is not None and info.run_after == pendulum.parse("2026-12-07T02:00:00", tz="UTC")


def test_match_starts_unpaused_so_no_collection_event_is_missed(bag):
    assert bag.dags["cross_region_match"].is_paused_upon_creation is False


def test_a_source_that_matches_nothing_fails_without_retries(bag, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    task = bag.dags["catalog_embed"].get_task("list_parquet_files")
    with pytest.raises(AirflowFailException, match="matched no Parquet files"):
        task.python_callable(source=str(tmp_path / "*.parquet"))
    (tmp_path / "labels.parquet").write_bytes(b"")
    with pytest.raises(AirflowFailException, match=r"holds only labels\.parquet"):
        task.python_callable(source=str(tmp_path / "*.parquet"))


def _validate(dag, conf: dict) -> dict:
    """What a trigger does: the scheduler's serialized DAG merges the run conf and validates it."""
    from airflow.serialization.serialized_objects import DagSerialization

    serialized = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    return serialized.params.deep_merge(conf).validate()


GOOD = {
    "catalog_embed": {
        "source": "/data/DE.parquet",
        "collection": "cat_v2",
        "full_refresh": True,
        "max_invalid": "5%",
        "on_bad_file": "fail_fast",
        "allowed_regions": ["DE", "FR"],
    },
    "cross_region_match": {
        "regions": ["DE", "FR"],
        "threshold": 0.8,
        "out_name": "nightly-1",
        "labels": None,
        "calibrate_on_labels": True,
    },
}


@pytest.mark.parametrize("value", [None, 0, 100, "100", "5%", "0.5%", "100%"])
def test_max_invalid_accepts_counts_and_percentages(bag, value):
    assert _validate(bag.dags["catalog_embed"], {"max_invalid": value})["max_invalid"] == value


BAD = [
    ("catalog_embed", {"source": ""}),
    ("catalog_embed", {"collection": "bad name!"}),
    ("catalog_embed", {"full_refresh": "yes"}),
    ("catalog_embed", {"vanished": "nuke"}),
    ("catalog_embed", {"model": ""}),
    ("catalog_embed", {"model": "m\nx"}),
    ("catalog_embed", {"max_invalid": -1}),
    ("catalog_embed", {"max_invalid": "lots"}),
    ("catalog_embed", {"max_invalid": "150%"}),
    ("catalog_embed", {"max_invalid": 0.5}),
    ("catalog_embed", {"on_bad_file": "ignore"}),
    ("catalog_embed", {"allowed_regions": "DE,FR"}),
    ("catalog_embed", {"allowed_regions": ["D,E"]}),
    ("cross_region_match", {"calibrate_on_labels": "yes"}),
    ("cross_region_match", {"threshold": 1.7}),
    ("cross_region_match", {"threshold": -0.1}),
    ("cross_region_match", {"threshold": "high"}),
    ("cross_region_match", {"regions": "DE,FR"}),
    ("cross_region_match", {"regions": ["D E"]}),
    ("cross_region_match", {"regions": ["DE", "DE"]}),
    ("cross_region_match", {"out_name": "../etc"}),
    ("cross_region_match", {"out_name": "a/b"}),
    ("cross_region_match", {"collection": ""}),
    ("cross_region_match", {"collection": "bad name!"}),
    ("cross_region_match", {"collection": "x" * 129}),
    ("cross_region_match", {"labels": ""}),
    ("catalog_embed", {"alias": "bad alias"}),
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


@pytest.mark.parametrize(("value", "expected"), [(False, False), (True, True)])
def test_full_rematch_param_reaches_the_match_operator(bag, value, expected):
    from polyglot_catalog.provider.operators import _as_bool

    match_dag = bag.dags["cross_region_match"]
    task = match_dag.get_task("match_regions").prepare_for_execution()
    params = {**match_dag.params.dump(), "full_rematch": value}
    task.render_template_fields({"params": params, "triggering_asset_events": {}})
    assert _as_bool(task.full_rematch) is expected
    assert match_dag.params.dump()["full_rematch"] is False  # nightly runs continue from the state
