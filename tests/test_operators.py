"""Operator contracts (STYLE.md): template fields, default connection, one delegating call, small XCom."""

from __future__ import annotations

import inspect
import json
from unittest import mock

import pandas as pd
import pytest

pytest.importorskip("qdrant_client")

from polyglot_catalog.matching.result import MatchResult
from polyglot_catalog.provider.hooks import PolyglotQdrantHook
from polyglot_catalog.provider.operators import (
    EmbedCatalogOperator,
    MatchCatalogOperator,
    ReconcileCatalogOperator,
    collection_asset,
    default_reports_root,
    triggered_collection,
)

OPERATORS = [EmbedCatalogOperator, ReconcileCatalogOperator, MatchCatalogOperator]


def _embed_op(**kwargs) -> EmbedCatalogOperator:
    return EmbedCatalogOperator(task_id="embed", source="/data/DE.parquet", **kwargs)


def _match_op(**kwargs) -> MatchCatalogOperator:
    return MatchCatalogOperator(task_id="match", **kwargs)


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
    assert {"source", "collection", "model", "full_refresh", "shard_number", "replication_factor"} <= set(
        EmbedCatalogOperator.template_fields
    )
    # XComArgs (the file list, the mapped summaries) resolve only in template fields.
    assert {"source", "shard_summaries", "collection", "model", "vanished"} <= set(
        ReconcileCatalogOperator.template_fields
    )
    assert {"collection", "model", "regions", "threshold", "labels", "out_name", "reports_root"} <= set(
        MatchCatalogOperator.template_fields
    )


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


def test_embed_execute_delegates_once_and_closes_the_client():
    op = _embed_op(collection="cat_v2", model="my-model", full_refresh="True", vanished="keep")
    op.hook = _mock_hook()
    summary = {"files": 1, "upserted": 3, "regions": ["DE"], "model": "my-model"}
    with (
        mock.patch("polyglot_catalog.encoding.Encoder") as encoder_cls,
        mock.patch("polyglot_catalog.store.CatalogStore") as store_cls,
        mock.patch("polyglot_catalog.embed.embed_catalog", return_value=summary) as embed,
    ):
        encoder_cls.return_value.model_name = "my-model"
        result = op.execute(context={})
    encoder_cls.assert_called_once_with(device=None, batch_size=32, model="my-model")
    store_cls.assert_called_once_with(op.hook.conn, "cat_v2", "my-model")
    embed.assert_called_once_with(
        "/data/DE.parquet",
        store_cls.return_value,
        encoder_cls.return_value,
        template=None,
        batch_size=256,
        full_refresh=True,
        vanished="keep",
    )
    # No cluster options: embed_catalog creates the collection itself (and uses bulk-load mode).
    store_cls.return_value.ensure_collection.assert_not_called()
    op.hook.close.assert_called_once()
    assert result == summary


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
            {"replication_factor": 2, "shard_number": "None"},
            {},
            {"replication_factor": 2},
            id="argument-only",
        ),
    ],
)
def test_embed_creates_the_collection_with_cluster_options_first(args, extra, expected):
    op = _embed_op(**args)
    op.hook = _mock_hook(extra)
    calls = mock.Mock()
    with (
        mock.patch("polyglot_catalog.encoding.Encoder") as encoder_cls,
        mock.patch("polyglot_catalog.store.CatalogStore") as store_cls,
        mock.patch("polyglot_catalog.embed.embed_catalog", return_value={}) as embed,
    ):
        encoder_cls.return_value.dim = 384
        encoder_cls.return_value.model_name = "m"
        calls.attach_mock(store_cls.return_value.ensure_collection, "ensure_collection")
        calls.attach_mock(embed, "embed_catalog")
        op.execute(context={})
    assert [c[0] for c in calls.mock_calls] == ["ensure_collection", "embed_catalog"]
    store_cls.return_value.ensure_collection.assert_called_once_with(384, **expected)


def test_bad_cluster_option_is_a_clear_error():
    op = _embed_op(shard_number="three")
    op.hook = _mock_hook()
    with pytest.raises(ValueError, match="shard_number must be a positive integer or empty; got 'three'"):
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
        ["/data/DE.parquet", "/data/FR.parquet"], store_cls.return_value, mode="delete"
    )
    merge.assert_called_once_with([{"files": 1, "upserted": 3}, {"files": 1, "upserted": 4}], reconciled)
    op.hook.close.assert_called_once()
    outlet_events.__getitem__.assert_called_once_with(asset)
    assert outlet_events[asset].extra == {"collection": "cat_v2", "files": 2, "upserted": 7, "flagged": 0}
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


def _event(collection, minute: int = 0) -> mock.Mock:
    from datetime import UTC, datetime

    extra = {} if collection is None else {"collection": collection}
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


def test_match_execute_delegates_and_writes_under_the_reports_root(tmp_path):
    op = _match_op(
        regions="DE,US", threshold="0.7", k="5", labels="", reports_root=str(tmp_path), out_name=""
    )
    op.hook = mock.Mock(spec=PolyglotQdrantHook)
    with (
        mock.patch("polyglot_catalog.store.CatalogStore") as store_cls,
        mock.patch("polyglot_catalog.matching.pipeline.match_catalog", return_value=_result()) as match,
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


def test_match_reports_root_defaults_to_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("POLYGLOT_DATA_DIR", str(tmp_path))
    assert default_reports_root() == tmp_path / "reports"


@pytest.mark.parametrize("out_name", ["../escape", "/abs/path"])
def test_match_refuses_report_names_outside_the_root(tmp_path, out_name):
    op = _match_op(reports_root=str(tmp_path), out_name=out_name)
    op.hook = mock.Mock(spec=PolyglotQdrantHook)
    with pytest.raises(ValueError, match="report folder name"):
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
        summary = op.execute(context={})
    assert summary["upserted"] == 2
    json.dumps(summary)
    # The local folder lock was released: a second client can open it and sees the points.
    hook = PolyglotQdrantHook()
    assert hook.conn.count("t").count == 2
    hook.close()
