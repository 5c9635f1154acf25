"""Operator contracts (STYLE.md): template fields, default connection, one delegating call, small XCom."""

from __future__ import annotations

import inspect
import json
from unittest import mock

import pandas as pd
import pytest

pytest.importorskip("qdrant_client")

from airflow.sdk.exceptions import AirflowFailException

from polyglot_catalog.matching.result import MatchResult
from polyglot_catalog.matching.run import calibrated_on_labels
from polyglot_catalog.provider.hooks import PolyglotQdrantHook
from polyglot_catalog.provider.operators import (
    EmbedCatalogOperator,
    MatchCatalogOperator,
    ReconcileCatalogOperator,
    collection_asset,
    default_reports_root,
    quarantine_file,
    triggered_collection,
    triggered_model,
)

OPERATORS = [EmbedCatalogOperator, ReconcileCatalogOperator, MatchCatalogOperator]


@pytest.fixture(autouse=True)
def no_review_decisions():
    """The match tests mock the store; reviewed decisions are read from it (docs/REVIEW.md)."""
    with mock.patch("polyglot_catalog.review.reviewed_decisions", return_value=None) as reviewed:
        yield reviewed


def _embed_op(**kwargs) -> EmbedCatalogOperator:
    return EmbedCatalogOperator(task_id="embed", source="/data/DE.parquet", **kwargs)


def _match_op(**kwargs) -> MatchCatalogOperator:
    return MatchCatalogOperator(task_id="match", **kwargs)


def _commit_only_writes_the_report(store, result, run_id, *, before_apply, **_):
    """Stands in for the match state commit where the store is a mock: the report is still written."""
    before_apply(result)
    return {}


@pytest.fixture(autouse=True)
def _no_match_state():
    with mock.patch(
        "polyglot_catalog.matching.run.commit_match_state", side_effect=_commit_only_writes_the_report
    ) as commit:
        yield commit


def _reconcile_op(**kwargs) -> ReconcileCatalogOperator:
    kwargs.setdefault("source", ["/data/DE.parquet", "/data/FR.parquet"])
    kwargs.setdefault("shard_summaries", [])
    return ReconcileCatalogOperator(task_id="reconcile", **kwargs)


def _mock_hook(options: dict | None = None) -> mock.Mock:
    hook = mock.Mock(spec=PolyglotQdrantHook)
    hook.collection_options.return_value = options or {}
    return hook


@pytest.mark.parametrize("operator", OPERATORS)
def test_template_fields_are_init_arguments(operator):
    params = inspect.signature(operator.__init__).parameters
    assert set(operator.template_fields) <= set(params)
    assert len(set(operator.template_fields)) == len(operator.template_fields)


def test_template_fields_cover_the_trigger_form():
    assert {
        "source",
        "collection",
        "model",
        "full_refresh",
        "shard_number",
        "replication_factor",
        "max_invalid",
        "on_bad_file",
        "allowed_regions",
    } <= set(EmbedCatalogOperator.template_fields)
    # XComArgs (the file list, the mapped summaries) resolve only in template fields.
    assert {"source", "shard_summaries", "collection", "model", "vanished"} <= set(
        ReconcileCatalogOperator.template_fields
    )
    assert {
        "collection",
        "model",
        "regions",
        "threshold",
        "labels",
        "calibrate_on_labels",
        "out_name",
        "reports_root",
    } <= set(MatchCatalogOperator.template_fields)


@pytest.mark.parametrize("operator", OPERATORS)
def test_default_conn_id_matches_the_hook(operator):
    assert inspect.signature(operator.__init__).parameters["conn_id"].default == (
        PolyglotQdrantHook.default_conn_name
    )


@pytest.mark.parametrize("factory", [_embed_op, _reconcile_op, _match_op])
def test_hook_is_cached_and_uses_conn_id(factory):
    op = factory(conn_id="qdrant_other")
    assert isinstance(op.hook, PolyglotQdrantHook)
    assert op.hook is op.hook
    assert op.hook.conn_id == "qdrant_other"


@pytest.mark.parametrize("operator", OPERATORS)
def test_ui_color_and_docs(operator):
    assert operator.ui_color.startswith("#")
    doc = operator.__doc__ or ""
    for name in inspect.signature(operator.__init__).parameters:
        if name != "self":
            assert f":param {name}:" in doc, name


def _ti(map_index: int) -> mock.Mock:
    return mock.Mock(map_index=map_index)


def test_embed_execute_delegates_once_and_closes_the_client(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYGLOT_DATA_DIR", str(tmp_path))
    op = _embed_op(
        collection="cat_v2",
        model="my-model",
        full_refresh="True",
        vanished="keep",
        max_invalid="5%",
        on_bad_file="fail_fast",
        allowed_regions="DE,FR",
        columns="description=product_text, sku=item_id",
    )
    op.hook = _mock_hook()
    summary = {"files": 1, "upserted": 3, "regions": ["DE"], "model": "my-model"}
    run_id = "manual__2025-01-01T00:00:00+00:00"
    with (
        mock.patch("polyglot_catalog.encoding.Encoder") as encoder_cls,
        mock.patch("polyglot_catalog.store.CatalogStore") as store_cls,
        mock.patch("polyglot_catalog.embed.embed_catalog", return_value=summary) as embed,
    ):
        encoder_cls.return_value.model_name = "my-model"
        result = op.execute(context={"run_id": run_id, "ti": _ti(2)})
    encoder_cls.assert_called_once_with(
        device=None, batch_size=None, precision="auto", threads=None, model="my-model"
    )
    store_cls.assert_called_once_with(op.hook.conn, "cat_v2", "my-model")
    embed.assert_called_once_with(
        "/data/DE.parquet",
        store_cls.return_value,
        encoder_cls.return_value,
        template=None,
        batch_size=256,
        full_refresh=True,
        vanished="keep",
        quarantine_path=quarantine_file(run_id, 2),
        max_invalid="5%",
        on_bad_file="fail_fast",
        allowed_regions=["DE", "FR"],
        collection_options={},
        column_map={"description": "product_text", "sku": "item_id"},
    )
    # The operator never creates the collection itself: embed_catalog does, after the input check.
    store_cls.return_value.ensure_collection.assert_not_called()
    op.hook.close.assert_called_once()
    assert result == summary


def test_rendered_defaults_reach_embed_catalog_as_no_limit_and_any_region():
    op = _embed_op(max_invalid="None", on_bad_file="fail_at_end", allowed_regions="")
    op.hook = _mock_hook()
    with (
        mock.patch("polyglot_catalog.encoding.Encoder", return_value=mock.Mock(model_name="m")),
        mock.patch("polyglot_catalog.store.CatalogStore"),
        mock.patch("polyglot_catalog.embed.embed_catalog", return_value={}) as embed,
    ):
        op.execute(context={"run_id": "r1", "ti": _ti(-1)})
    kwargs = embed.call_args.kwargs
    assert (kwargs["max_invalid"], kwargs["on_bad_file"], kwargs["allowed_regions"]) == (
        None,
        "fail_at_end",
        None,
    )
    assert kwargs["quarantine_path"].name == "all.parquet"  # not mapped


def test_quarantine_files_are_one_per_shard_under_a_safe_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYGLOT_DATA_DIR", str(tmp_path))
    run = "scheduled__2025-01-01T02:00:00+00:00"
    paths = {quarantine_file(run, i) for i in range(3)} | {quarantine_file(run, -1), quarantine_file(run)}
    assert len(paths) == 4  # three shards and one "all"
    for path in paths:
        assert path.parent.parent == tmp_path / "quarantine"
        assert ":" not in path.parent.name and "+" not in path.parent.name
        assert path.parent.name.startswith("scheduled__2025-01-01T02_00_00_00_00-")
    # Odd run ids stay one folder inside the root, and distinct ids stay distinct.
    odd = ["../../etc", "a/b", "", "..", "a:b", "a_b", "a+b"]
    folders = [quarantine_file(r, 0).parent for r in odd]
    assert all(f.parent == tmp_path / "quarantine" and f.name not in ("", ".", "..") for f in folders)
    assert len(set(folders)) == len(odd)
    assert quarantine_file("a_b", 0).parent.name == "a_b"  # an already safe id is kept as it is


@pytest.mark.parametrize(
    ("args", "extra", "expected"),
    [
        pytest.param(
            {},
            {"shard_number": 3, "replication_factor": 2},
            {"shard_number": 3, "replication_factor": 2},
            id="from-connection",
        ),
        pytest.param(
            {"shard_number": "6"},
            {"shard_number": 3, "replication_factor": 2},
            {"shard_number": 6, "replication_factor": 2},
            id="rendered-argument-wins",
        ),
        pytest.param(
            {},
            {"shard_number": 2, "shard_by_region": True},
            {"shard_number": 2, "shard_by_region": True},
            id="region-keys-from-connection",
        ),
        pytest.param(
            {"shard_by_region": "False"},
            {"shard_by_region": True},
            {"shard_by_region": False},
            id="rendered-flag-wins",
        ),
        pytest.param(
            {"replication_factor": 2, "shard_number": "None"},
            {},
            {"replication_factor": 2},
            id="argument-only",
        ),
    ],
)
def test_cluster_options_reach_embed_catalog_not_an_early_create(args, extra, expected):
    """Creating the collection first would skip the input check and the bulk-load mode."""
    op = _embed_op(**args)
    op.hook = _mock_hook(extra)
    with (
        mock.patch("polyglot_catalog.encoding.Encoder") as encoder_cls,
        mock.patch("polyglot_catalog.store.CatalogStore") as store_cls,
        mock.patch("polyglot_catalog.embed.embed_catalog", return_value={}) as embed,
    ):
        encoder_cls.return_value.model_name = "m"
        op.execute(context={})
    assert embed.call_args.kwargs["collection_options"] == expected
    store_cls.return_value.ensure_collection.assert_not_called()


def _input_error(kind: str) -> Exception:
    from polyglot_catalog.embed import EmbedInputError, TooManyInvalidRowsError
    from polyglot_catalog.reading import BadFileError

    summary = {"invalid": 9, "quarantine_path": "/q/all.parquet"}
    return {
        "bad-files": lambda: EmbedInputError("1 of 2 source file(s) could not be used", summary),
        "too-many-invalid": lambda: TooManyInvalidRowsError("9 of 10 rows were invalid", summary),
        "fail-fast": lambda: BadFileError("/data/DE.parquet", "not a Parquet file"),
    }[kind]()


@pytest.mark.parametrize("kind", ["bad-files", "too-many-invalid", "fail-fast"])
def test_unclean_input_fails_without_retries(kind):
    op = _embed_op()
    op.hook = _mock_hook()
    error = _input_error(kind)
    with (
        mock.patch("polyglot_catalog.encoding.Encoder", return_value=mock.Mock(model_name="m")),
        mock.patch("polyglot_catalog.store.CatalogStore"),
        mock.patch("polyglot_catalog.embed.embed_catalog", side_effect=error),
        pytest.raises(AirflowFailException, match="not retried") as caught,
    ):
        op.execute(context={})
    assert str(error) in str(caught.value) and caught.value.__cause__ is error
    op.hook.close.assert_called_once()


def test_store_outage_stays_retryable():
    from polyglot_catalog.embed import StoreUnavailableError

    op = _embed_op()
    op.hook = _mock_hook()
    outage = StoreUnavailableError("http://q:6333", "catalog", "upsert", 4, "ConnectError: refused", 10)
    with (
        mock.patch("polyglot_catalog.encoding.Encoder", return_value=mock.Mock(model_name="m")),
        mock.patch("polyglot_catalog.store.CatalogStore"),
        mock.patch("polyglot_catalog.embed.embed_catalog", side_effect=outage),
        pytest.raises(StoreUnavailableError),
    ):
        op.execute(context={})
    op.hook.close.assert_called_once()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"max_invalid": "lots"}, "max_invalid must be an int"),
        ({"max_invalid": "150%"}, "within 0-100%"),
        ({"on_bad_file": "ignore"}, "on_bad_file must be one of"),
    ],
)
def test_bad_input_policy_fails_before_the_model_loads(args, message):
    op = _embed_op(**args)
    op.hook = _mock_hook()
    with (
        mock.patch("polyglot_catalog.encoding.Encoder") as encoder_cls,
        pytest.raises(AirflowFailException, match=message),
    ):
        op.execute(context={})
    encoder_cls.assert_not_called()


def test_bad_cluster_option_is_a_clear_error():
    op = _embed_op(shard_number="three")
    op.hook = _mock_hook()
    with pytest.raises(ValueError, match="shard_number must be a positive integer or empty; got 'three'"):
        op.cluster_options()
    op = _embed_op(shard_by_region="region")
    op.hook = _mock_hook()
    with pytest.raises(ValueError, match="shard_by_region must be true, false or empty; got 'region'"):
        op.cluster_options()


def test_reconcile_runs_once_over_every_file_and_sets_the_asset_event_extra():
    asset = collection_asset()
    op = _reconcile_op(
        collection="cat_v2",
        model="my-model",
        vanished="delete",
        shard_summaries=[{"files": 1, "upserted": 3}, {"files": 1, "upserted": 4}],
        outlets=[asset],
    )
    op.hook = _mock_hook()
    reconciled = {"mode": "delete", "flagged": 0, "deleted": 2}
    merged = {"files": 2, "upserted": 7, "flagged": 0, "deleted": 2}
    outlet_events = mock.MagicMock()
    with (
        mock.patch("polyglot_catalog.store.CatalogStore") as store_cls,
        mock.patch("polyglot_catalog.embed.reconcile_vanished", return_value=reconciled) as reconcile,
        mock.patch("polyglot_catalog.embed.merge_summaries", return_value=merged) as merge,
    ):
        result = op.execute(context={"outlet_events": outlet_events})
    store_cls.assert_called_once_with(op.hook.conn, "cat_v2", "my-model")
    reconcile.assert_called_once_with(
        ["/data/DE.parquet", "/data/FR.parquet"], store_cls.return_value, mode="delete", column_map={}
    )
    merge.assert_called_once_with([{"files": 1, "upserted": 3}, {"files": 1, "upserted": 4}], reconciled)
    op.hook.close.assert_called_once()
    outlet_events.__getitem__.assert_called_once_with(asset)
    assert outlet_events[asset].extra == {
        "collection": "cat_v2",
        "model": "my-model",
        "files": 2,
        "upserted": 7,
        "flagged": 0,
    }
    assert result == merged


def test_reconcile_closes_the_client_when_the_library_fails():
    op = _reconcile_op(vanished="nuke")
    op.hook = _mock_hook()
    with (
        mock.patch("polyglot_catalog.store.CatalogStore"),
        pytest.raises(ValueError, match="mode must be one of"),
    ):
        op.execute(context={})
    op.hook.close.assert_called_once()


def _event(collection, minute: int = 0, model=None) -> mock.Mock:
    from datetime import UTC, datetime

    extra = {} if collection is None else {"collection": collection}
    if model is not None:
        extra["model"] = model
    return mock.Mock(extra=extra, timestamp=datetime(2025, 1, 1, 0, minute, tzinfo=UTC), source_dag_id="d")


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(None, "param", id="no-context-key"),
        pytest.param({}, "param", id="manual-run"),
        pytest.param({collection_asset(): [_event(None)]}, "param", id="event-without-collection"),
        pytest.param({collection_asset("other"): [_event("x")]}, "param", id="another-assets-event"),
        pytest.param({collection_asset(): [_event("a", 2), _event("b", 1)]}, "a", id="newest-wins"),
    ],
)
def test_triggered_collection_picks_the_newest_event_else_the_param(events, expected):
    assert triggered_collection(events, "param") == expected


def test_triggered_collection_refuses_a_bad_name_from_an_event():
    with pytest.raises(ValueError, match=r"names collection '\.\./x'"):
        triggered_collection({collection_asset(): [_event("../x")]}, "param")


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param({}, "param", id="manual-run"),
        pytest.param({collection_asset(): [_event("a")]}, "param", id="event-without-model"),
        pytest.param({collection_asset(): [_event("a", model="m-a")]}, "m-a", id="event-model"),
        pytest.param(
            {collection_asset(): [_event("a", 2, "m-new"), _event("b", 1, "m-old")]},
            "m-new",
            id="same-event-as-the-collection",
        ),
        pytest.param(
            {collection_asset(): [_event(None, 3), _event("a", 2, "m-a")]},
            "m-a",
            id="events-without-collection-are-ignored",
        ),
    ],
)
def test_triggered_model_comes_from_the_event_that_names_the_collection(events, expected):
    assert triggered_model(events, "param") == expected


@pytest.mark.parametrize("model", ["", "m\nINFO fake log line", 42])
def test_triggered_model_refuses_a_bad_name_from_an_event(model):
    with pytest.raises(ValueError, match="names model"):
        triggered_model({collection_asset(): [_event("a", model=model)]}, "param")


@pytest.mark.parametrize(("precision", "expected"), [("bf16", "bf16"), (" fp32 ", "fp32"), ("", None)])
def test_embed_passes_precision_and_threads_to_the_encoder(precision, expected):
    op = _embed_op(device="cpu", precision=precision, threads=1, encode_batch_size=64)
    op.hook = _mock_hook()
    with (
        mock.patch("polyglot_catalog.encoding.Encoder") as encoder_cls,
        mock.patch("polyglot_catalog.store.CatalogStore"),
        mock.patch("polyglot_catalog.embed.embed_catalog", return_value={}),
    ):
        encoder_cls.return_value.model_name = "m"
        op.execute(context={})
    encoder_cls.assert_called_once_with(device="cpu", batch_size=64, precision=expected, threads=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"device": "cpu", "precision": "fp16"}, "not for CPU"), ({"precision": "half"}, "must be one of")],
)
def test_embed_bad_precision_fails_without_retries_before_the_model_loads(kwargs, message):
    op = _embed_op(**kwargs)
    op.hook = _mock_hook()
    with (
        mock.patch("polyglot_catalog.encoding.load_sentence_transformer") as load,
        pytest.raises(AirflowFailException, match=message),
    ):
        op.execute(context={})
    load.assert_not_called()
    op.hook.close.assert_not_called()


def test_embed_closes_the_client_when_the_library_fails():
    op = _embed_op()
    op.hook = _mock_hook()
    with (
        mock.patch("polyglot_catalog.encoding.Encoder") as encoder_cls,
        mock.patch("polyglot_catalog.store.CatalogStore"),
        mock.patch("polyglot_catalog.embed.embed_catalog", side_effect=ValueError("bad file")),
        pytest.raises(ValueError, match="bad file"),
    ):
        encoder_cls.return_value.model_name = "m"
        op.execute(context={})
    op.hook.close.assert_called_once()


def _result() -> MatchResult:
    pairs = pd.DataFrame(
        {
            "region_a": ["DE", "DE"],
            "sku_a": ["d1", "d2"],
            "region_b": ["US", "US"],
            "sku_b": ["u1", "u2"],
            "score": [0.9, 0.4],
            "decision": ["match", "below_threshold"],
        }
    )
    groups = pd.DataFrame({"group_id": [0, 0], "region": ["DE", "US"], "sku": ["d1", "u1"]})
    unmatched = pd.DataFrame({"region": ["DE"], "sku": ["d2"]})
    summary = {
        "model": "m",
        "collection": "catalog",
        "threshold": 0.5,
        "regions": ["DE", "US"],
        "metrics": {"overall": {"precision": 1.0, "recall": 0.5, "f1": 0.667}, "pr_curve": [[0, 1]] * 500},
    }
    return MatchResult(pairs=pairs, groups=groups, unmatched=unmatched, summary=summary)


def test_match_execute_passes_the_collections_reviewed_decisions(tmp_path, no_review_decisions):
    decisions = pd.DataFrame({"region_a": ["DE"], "sku_a": ["d1"], "region_b": ["US"], "sku_b": ["u1"]})
    no_review_decisions.return_value = decisions
    op = _match_op(regions="DE,US", reports_root=str(tmp_path), out_name="")
    op.hook = mock.Mock(spec=PolyglotQdrantHook)
    with (
        mock.patch("polyglot_catalog.store.CatalogStore") as store_cls,
        mock.patch("polyglot_catalog.matching.run.match_catalog", return_value=_result()) as match,
        mock.patch("polyglot_catalog.reports.write_reports", side_effect=lambda d, r, run_id: d),
    ):
        op.execute(context={"run_id": "manual__2025-01-01T00:00:00+00:00"})
    no_review_decisions.assert_called_once_with(store_cls.return_value.client, "catalog")
    assert match.call_args.kwargs["decisions"] is decisions


def test_match_execute_delegates_and_writes_under_the_reports_root(tmp_path):
    op = _match_op(
        regions="DE,US", threshold="0.7", k="5", labels="", reports_root=str(tmp_path), out_name=""
    )
    op.hook = mock.Mock(spec=PolyglotQdrantHook)
    with (
        mock.patch("polyglot_catalog.store.CatalogStore") as store_cls,
        mock.patch("polyglot_catalog.matching.run.match_catalog", return_value=_result()) as match,
        mock.patch("polyglot_catalog.reports.write_reports", side_effect=lambda d, r, run_id: d) as write,
    ):
        summary = op.execute(context={"run_id": "manual__2025-01-01T00:00:00+00:00"})
    store_cls.assert_called_once_with(op.hook.conn, "catalog", "multilingual-e5-small")
    match.assert_called_once_with(
        store_cls.return_value,
        regions=["DE", "US"],
        k=5,
        threshold=0.7,
        labels=None,
        fit_on_labels=False,
        model="multilingual-e5-small",
        collection="catalog",
    )
    out_dir = write.call_args.args[0]
    assert out_dir.parent == tmp_path.resolve()
    assert out_dir.name == "manual__2025-01-01T00:00:00+00:00"
    op.hook.close.assert_called_once()
    # XCom gets headline figures only: the PR curve and the tables stay in the report folder.
    assert summary["matches"] == 1
    assert summary["metrics"] == {"precision": 1.0, "recall": 0.5, "f1": 0.667}
    assert len(json.dumps(summary)) < 1000


@pytest.mark.parametrize(("rendered", "full"), [("False", False), ("True", True), (True, True), ("", False)])
def test_match_commits_the_state_with_the_full_rematch_flag_before_closing(
    tmp_path, _no_match_state, rendered, full
):
    op = _match_op(full_rematch=rendered, reports_root=str(tmp_path))
    op.hook = mock.Mock(spec=PolyglotQdrantHook)
    with (
        mock.patch("polyglot_catalog.store.CatalogStore") as store_cls,
        mock.patch("polyglot_catalog.matching.run.match_catalog", return_value=_result()) as match,
        mock.patch("polyglot_catalog.reports.write_reports", side_effect=lambda d, r, run_id: d) as write,
    ):
        op.hook.close.side_effect = lambda: _no_match_state.assert_called_once()  # state before close
        summary = op.execute(context={"run_id": "r7"})
    args, kwargs = _no_match_state.call_args
    assert args == (store_cls.return_value, match.return_value, "r7")
    assert kwargs["full_rematch"] is full
    assert write.call_args.args[0] == tmp_path.resolve() / "r7"
    assert summary["report_dir"] == str(tmp_path.resolve() / "r7")


@pytest.mark.parametrize(
    ("rendered", "fit"), [("False", False), ("True", True), (True, True), (False, False)]
)
def test_calibrate_on_labels_is_forwarded_and_reported(tmp_path, rendered, fit):
    op = _match_op(labels="/l.parquet", calibrate_on_labels=rendered, reports_root=str(tmp_path))
    op.hook = mock.Mock(spec=PolyglotQdrantHook)
    result = _result()
    result.summary["scorer"] = {"fitted_on": "labels" if fit else "self-training"}
    result.summary["threshold_method"] = "labels: F1-best" if fit else "prior-shift EM"
    with (
        mock.patch("polyglot_catalog.store.CatalogStore"),
        mock.patch("polyglot_catalog.matching.run.match_catalog", return_value=result) as match,
        mock.patch("polyglot_catalog.reports.write_reports", side_effect=lambda d, r, run_id: d) as write,
    ):
        summary = op.execute(context={"run_id": "r1"})
    assert match.call_args.kwargs["fit_on_labels"] is fit
    assert match.call_args.kwargs["labels"] == "/l.parquet"
    assert summary["calibrated_on_labels"] is fit
    assert write.call_args.args[1].summary["calibrated_on_labels"] is fit  # summary.json says it too


@pytest.mark.parametrize(
    ("full", "labels", "threshold", "expected"),
    [
        pytest.param({"scorer": {"fitted_on": "labels"}}, True, True, True, id="scorer-fitted-on-labels"),
        pytest.param(
            {"scorer": {"fitted_on": "self-training"}, "threshold_method": "labels: F1-best"},
            True,
            False,
            True,
            id="threshold-from-labels",
        ),
        pytest.param(
            {"scorer": {"fitted_on": "self-training"}, "threshold_method": "prior-shift EM"},
            True,
            False,
            False,
            id="label-free",
        ),
        pytest.param({"scorer": {"fitted_on": "self-training"}}, True, False, True, id="unrecorded-cut"),
        pytest.param({"scorer": {"fitted_on": "self-training"}}, True, True, False, id="given-threshold"),
        pytest.param({"scorer": {"fitted_on": "labels"}}, False, False, False, id="no-labels"),
    ],
)
def test_calibrated_on_labels(full, labels, threshold, expected):
    assert calibrated_on_labels(full, labels=labels, threshold=threshold) is expected


@pytest.mark.parametrize(
    ("candidates", "hnsw_ef", "forwarded"),
    [
        ("auto", None, {}),
        ("qdrant", "256", {"candidates": "qdrant", "hnsw_ef": 256}),
        ("exact", "", {"candidates": "exact"}),
    ],
)
def test_match_forwards_the_candidate_path_and_search_beam(tmp_path, candidates, hnsw_ef, forwarded):
    op = _match_op(candidates=candidates, hnsw_ef=hnsw_ef, reports_root=str(tmp_path))
    op.hook = mock.Mock(spec=PolyglotQdrantHook)
    with (
        mock.patch("polyglot_catalog.store.CatalogStore"),
        mock.patch("polyglot_catalog.matching.run.match_catalog", return_value=_result()) as match,
        mock.patch("polyglot_catalog.reports.write_reports", side_effect=lambda d, r, run_id: d),
    ):
        op.execute(context={"run_id": "r1"})
    got = {k: v for k, v in match.call_args.kwargs.items() if k in ("candidates", "hnsw_ef")}
    assert got == forwarded


@pytest.mark.parametrize("hnsw_ef", ["wide", "0", "12.5"])
def test_match_rejects_a_bad_search_beam_before_matching(tmp_path, hnsw_ef):
    op = _match_op(hnsw_ef=hnsw_ef, reports_root=str(tmp_path))
    op.hook = mock.Mock(spec=PolyglotQdrantHook)
    with (
        mock.patch("polyglot_catalog.matching.run.match_catalog") as match,
        pytest.raises(AirflowFailException, match=r"hnsw_ef.*not retried"),
    ):
        op.execute(context={"run_id": "r1"})
    match.assert_not_called()


def test_match_reports_root_defaults_to_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("POLYGLOT_DATA_DIR", str(tmp_path))
    assert default_reports_root() == tmp_path / "reports"


@pytest.mark.parametrize("out_name", ["../escape", "/abs/path"])
def test_match_refuses_report_names_outside_the_root(tmp_path, out_name):
    op = _match_op(reports_root=str(tmp_path), out_name=out_name)
    op.hook = mock.Mock(spec=PolyglotQdrantHook)
    with pytest.raises(AirflowFailException, match="report folder name"):
        op.execute(context={"run_id": "r1"})
    op.hook.conn.assert_not_called()


@pytest.mark.parametrize(
    ("rendered", "expected"),
    [("", None), ("None", None), ("DE", ["DE"]), ("DE, FR,", ["DE", "FR"]), (["US", "FR"], ["US", "FR"])],
)
def test_rendered_regions_are_parsed(rendered, expected):
    from polyglot_catalog.provider.operators import _as_regions

    assert _as_regions(rendered if rendered != "None" else None) == expected


def test_bad_threshold_is_a_clear_error():
    from polyglot_catalog.provider.operators import _as_optional_float

    with pytest.raises(ValueError, match="threshold must be a number; got 'high'"):
        _as_optional_float("high", "threshold")


def test_collection_asset_is_stable():
    assert collection_asset("catalog").uri == "qdrant://polyglot-catalog/catalog"
    assert collection_asset("catalog") == collection_asset("catalog")


def test_embed_operator_runs_for_real_in_local_mode(tmp_path, monkeypatch):
    """The operator with the real library and local Qdrant; only the model is a fake (fast)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from fakes import FakeEncoder

    source = tmp_path / "DE.parquet"
    pq.write_table(
        pa.table({"sku": ["a", "b"], "region": ["DE", "DE"], "description": ["Tisch aus Holz", "Stuhl"]}),
        source,
    )
    monkeypatch.setenv("POLYGLOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("AIRFLOW_CONN_QDRANT_DEFAULT", raising=False)
    op = _embed_op(collection="t")
    op.source = str(source)
    with mock.patch("polyglot_catalog.encoding.Encoder", return_value=FakeEncoder()):
        summary = op.execute(context={"run_id": "manual__2025-01-01T00:00:00+00:00", "ti": _ti(0)})
    assert summary["upserted"] == 2
    json.dumps(summary)
    quarantine = quarantine_file("manual__2025-01-01T00:00:00+00:00", 0)
    assert summary["quarantine_path"] == str(quarantine) and quarantine.is_file()
    assert quarantine.is_relative_to(tmp_path / "data" / "quarantine")
    # The local folder lock was released: a second client can open it and sees the points.
    hook = PolyglotQdrantHook()
    assert hook.conn.count("t").count == 2
    hook.close()


def test_reconcile_switches_the_alias_only_after_success(tmp_path):
    """Zero-downtime model change: readers of the alias move to the new collection once it is whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from polyglot_catalog.store import CatalogStore, open_client

    client = open_client(path=":memory:")
    CatalogStore(client, "cat_v1", "old").ensure_collection(4)
    CatalogStore(client, "cat_v1", "old").switch_alias("catalog")
    CatalogStore(client, "cat_v2", "new").ensure_collection(4)
    source = tmp_path / "DE.parquet"
    pq.write_table(pa.table({"sku": ["a"], "region": ["DE"], "description": ["Tisch"]}), source)

    failing = _reconcile_op(
        source=[str(source)], collection="cat_v2", model="new", vanished="nuke", alias="catalog"
    )
    failing.hook = mock.Mock(conn=client)
    with pytest.raises(ValueError, match="mode must be one of"):
        failing.execute(context={})
    assert {a.alias_name: a.collection_name for a in client.get_aliases().aliases} == {"catalog": "cat_v1"}

    asset = collection_asset()
    op = _reconcile_op(
        source=[str(source)], collection="cat_v2", model="new", alias="catalog", outlets=[asset]
    )
    op.hook = mock.Mock(conn=client)
    outlet_events = mock.MagicMock()
    result = op.execute(context={"outlet_events": outlet_events})
    assert {a.alias_name: a.collection_name for a in client.get_aliases().aliases} == {"catalog": "cat_v2"}
    assert result["alias"] == "catalog"
    assert outlet_events[asset].extra["collection"] == "catalog"


# ---------------------------------------------------------------------------------------------
# issue 21: input errors fail at once, the report link, reconcile reads the shards in one slice


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (FileNotFoundError("labels file /l.parquet does not exist"), "does not exist"),
        (ValueError("labels need columns region, sku, group_id; missing ['group_id']"), "missing"),
        (ValueError("regions ['XX'] not in the data; available: ['DE', 'US']"), "not in the data"),
    ],
)
def test_match_input_errors_fail_without_retries(tmp_path, error, message):
    op = _match_op(labels="/l.parquet", reports_root=str(tmp_path))
    op.hook = mock.Mock(spec=PolyglotQdrantHook)
    with (
        mock.patch("polyglot_catalog.store.CatalogStore"),
        mock.patch("polyglot_catalog.matching.run.match_catalog", side_effect=error),
        pytest.raises(AirflowFailException, match=f"{message}.*not retried") as caught,
    ):
        op.execute(context={"run_id": "r1"})
    assert caught.value.__cause__ is error
    op.hook.close.assert_called_once()


def test_match_store_outage_stays_retryable(tmp_path):
    from polyglot_catalog.embed import StoreUnavailableError

    op = _match_op(reports_root=str(tmp_path))
    op.hook = mock.Mock(spec=PolyglotQdrantHook)
    outage = StoreUnavailableError("http://q:6333", "catalog", "scroll", 4, "ConnectError: refused", 10)
    with (
        mock.patch("polyglot_catalog.store.CatalogStore"),
        mock.patch("polyglot_catalog.matching.run.match_catalog", side_effect=outage),
        pytest.raises(StoreUnavailableError),
    ):
        op.execute(context={"run_id": "r1"})
    outage_http = ConnectionError("qdrant unreachable")
    with (
        mock.patch("polyglot_catalog.store.CatalogStore"),
        mock.patch("polyglot_catalog.matching.run.match_catalog", side_effect=outage_http),
        pytest.raises(ConnectionError),
    ):
        op.execute(context={"run_id": "r1"})


def test_a_bad_collection_from_an_event_fails_without_retries():
    op = _match_op(collection="{{ triggered_collection(events, 'catalog') }}")
    context = {
        "events": {collection_asset(): [_event("bad name!")]},
        "triggered_collection": triggered_collection,
    }
    with pytest.raises(AirflowFailException, match=r"names collection 'bad name!'.*not retried"):
        op.render_template_fields(context)


def test_match_task_links_to_the_report_it_wrote(tmp_path, monkeypatch):
    from polyglot_catalog.provider.operators import MatchReportLink, report_link

    op = _match_op(reports_root=str(tmp_path), out_name="")
    op.hook = mock.Mock(spec=PolyglotQdrantHook)
    link = MatchReportLink()
    assert link.get_link(op, ti_key=mock.Mock()) == ""  # nothing written yet (or the run failed)
    with (
        mock.patch("polyglot_catalog.store.CatalogStore"),
        mock.patch("polyglot_catalog.matching.run.match_catalog", return_value=_result()),
        mock.patch("polyglot_catalog.reports.write_reports", side_effect=lambda d, r, run_id: d),
    ):
        op.execute(context={"run_id": "manual__2025-01-01T00:00:00+00:00"})
    assert MatchCatalogOperator.operator_extra_links[0].name == "Match report"
    assert (
        link.get_link(op, ti_key=mock.Mock())
        == "/polyglot/runs/manual__2025-01-01T00%3A00%3A00%2B00%3A00/report.html"
    )
    # behind a reverse proxy that serves Airflow under a sub-path, the link keeps that path
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/tools/airflow/")
    assert report_link("r1") == "/tools/airflow/polyglot/runs/r1/report.html"


class _LazySequence:
    """Like the Task SDK's lazy XCom sequence: iterating it reads past its end (an error log line)."""

    def __init__(self, items):
        self.items = items

    def __iter__(self):
        raise AssertionError("iterated: the SDK would log '[error] XCom not found' at the end")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        return self.items[key]


def test_reconcile_reads_the_shard_summaries_in_one_slice():
    op = _reconcile_op(shard_summaries=_LazySequence([{"files": 1, "upserted": 3}, {"files": 1}]))
    op.hook = _mock_hook()
    with (
        mock.patch("polyglot_catalog.store.CatalogStore"),
        mock.patch("polyglot_catalog.embed.reconcile_vanished", return_value={"flagged": 0}),
        mock.patch("polyglot_catalog.embed.merge_summaries", return_value={}) as merge,
    ):
        op.execute(context={})
    assert merge.call_args.args[0] == [{"files": 1, "upserted": 3}, {"files": 1}]
