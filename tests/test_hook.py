"""PolyglotQdrantHook: server, local and embedded-fallback modes, lock handling, no leaked secrets."""

from __future__ import annotations

import json
import threading
import time
from unittest import mock

import pytest

pytest.importorskip("qdrant_client")

from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException

from polyglot_catalog.provider import hooks
from polyglot_catalog.provider.hooks import PolyglotQdrantHook

SECRET = "s3cr3t-api-key"
CONN_ENV = "AIRFLOW_CONN_QDRANT_DEFAULT"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Own data dir, no qdrant_default, and a fresh "said once" memory for every test."""
    monkeypatch.setenv("POLYGLOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv(CONN_ENV, raising=False)
    monkeypatch.setattr(hooks, "_ANNOUNCED", set())


def _set_conn(monkeypatch, **fields) -> None:
    monkeypatch.setenv(CONN_ENV, json.dumps({"conn_type": "qdrant", **fields}))


def _logged_text(log: mock.Mock) -> str:
    return " ".join(str(arg) for call in log.mock_calls for arg in call.args)


def test_default_conn_id_is_the_providers():
    assert PolyglotQdrantHook().conn_id == "qdrant_default" == PolyglotQdrantHook.default_conn_name
    assert PolyglotQdrantHook.conn_type == "qdrant"


def test_missing_connection_falls_back_to_embedded_local_mode_said_once(tmp_path):
    with mock.patch.object(PolyglotQdrantHook, "log", new_callable=mock.PropertyMock) as log_prop:
        log = log_prop.return_value
        first = PolyglotQdrantHook()
        assert first.conn.get_collections().collections == []
        assert first.mode == "embedded"
        first.close()
        second = PolyglotQdrantHook()
        second.conn.get_collections()
        second.close()
    assert (tmp_path / "data" / "qdrant").is_dir()
    fallback_lines = [c for c in log.info.mock_calls if c.args and c.args[0] == hooks.FALLBACK_MSG]
    assert len(fallback_lines) == 1
    assert str(tmp_path / "data" / "qdrant") in _logged_text(log)


def test_explicit_local_path_wins_over_data_dir(tmp_path):
    hook = PolyglotQdrantHook(local_path=tmp_path / "elsewhere")
    hook.conn.get_collections()
    hook.close()
    assert (tmp_path / "elsewhere").is_dir()
    assert not (tmp_path / "data" / "qdrant").exists()


@pytest.mark.parametrize("kind", ["path", "location"])
def test_extra_path_or_location_selects_the_embedded_engine(monkeypatch, tmp_path, kind):
    from polyglot_catalog.edge_store import EdgeClient

    extra = {"path": str(tmp_path / "q")} if kind == "path" else {"location": ":memory:"}
    _set_conn(monkeypatch, extra=extra, password=SECRET)
    hook = PolyglotQdrantHook()
    client = hook.get_conn()
    try:
        assert isinstance(client, EdgeClient)  # qdrant-edge is the embedded default
        if kind == "path":
            assert client.location == tmp_path / "q"
        assert hook.mode == "local"
    finally:
        client.close()


def test_a_folder_written_by_qdrant_client_local_mode_stays_on_it(monkeypatch, tmp_path):
    """Flipping the embedded default must not hide a store an older version wrote."""
    from qdrant_client import QdrantClient, models

    old = QdrantClient(path=str(tmp_path / "q"))
    old.create_collection("c", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    old.close()
    _set_conn(monkeypatch, extra={"path": str(tmp_path / "q")}, password=SECRET)
    client = PolyglotQdrantHook().get_conn()
    try:
        assert isinstance(client, QdrantClient)
        assert client.collection_exists("c")
    finally:
        client.close()


def test_server_connection_builds_the_providers_client_without_logging_the_key(monkeypatch):
    _set_conn(monkeypatch, host="qdrant", port=6333, password=SECRET, extra={"prefer_gprc": True})
    with (
        mock.patch("airflow.providers.qdrant.hooks.qdrant.QdrantClient") as client_cls,
        mock.patch.object(PolyglotQdrantHook, "log", new_callable=mock.PropertyMock) as log_prop,
    ):
        hook = PolyglotQdrantHook()
        hook.get_conn()
    kwargs = client_cls.call_args.kwargs
    assert kwargs["host"] == "qdrant"
    assert kwargs["port"] == 6333
    assert kwargs["api_key"] == SECRET
    assert kwargs["prefer_grpc"] is True
    assert hook.mode == "server"
    assert SECRET not in _logged_text(log_prop.return_value)


def test_test_connection_ok_in_memory(monkeypatch):
    _set_conn(monkeypatch, extra={"location": ":memory:"})
    ok, message = PolyglotQdrantHook().test_connection()
    assert ok
    assert "local mode" in message


def test_test_connection_failure_is_a_message_without_the_key(monkeypatch):
    _set_conn(monkeypatch, host="qdrant", password=SECRET)
    failing = mock.Mock(spec=QdrantClient)
    failing.get_collections.side_effect = ResponseHandlingException(OSError(f"refused, key={SECRET}"))
    hook = PolyglotQdrantHook()
    with mock.patch.object(PolyglotQdrantHook, "get_conn", return_value=failing):
        ok, message = hook.test_connection()
    assert not ok
    assert "refused" in message
    assert SECRET not in message


def test_close_releases_the_local_folder_for_the_next_hook(tmp_path):
    first = PolyglotQdrantHook(local_path=tmp_path / "q", lock_timeout=0)
    first.conn.get_collections()
    first.close()
    second = PolyglotQdrantHook(local_path=tmp_path / "q", lock_timeout=0)
    second.conn.get_collections()
    second.close()


def test_locked_folder_fails_after_timeout_and_waits_when_released(tmp_path):
    holder = QdrantClient(path=str(tmp_path / "q"))
    impatient = PolyglotQdrantHook(local_path=tmp_path / "q", lock_timeout=0)
    with pytest.raises(RuntimeError, match="already accessed"):
        impatient.get_conn()

    patient = PolyglotQdrantHook(local_path=tmp_path / "q", lock_timeout=10)
    patient.lock_poll_seconds = 0.05
    release = threading.Timer(0.3, holder.close)
    release.start()
    started = time.monotonic()
    patient.conn.get_collections()
    patient.close()
    release.join()
    assert time.monotonic() - started < 5


def test_cluster_options_come_from_the_connection_extra(monkeypatch):
    extra = {"grpc_port": 6334, "shard_number": 3, "replication_factor": "2"}
    _set_conn(monkeypatch, host="qdrant-node-1", port=6333, extra=extra)
    hook = PolyglotQdrantHook()
    assert hook.collection_options() == {"shard_number": 3, "replication_factor": 2}
    with mock.patch("airflow.providers.qdrant.hooks.qdrant.QdrantClient") as client_cls:
        hook.get_conn()  # the provider's client ignores the collection-shape keys
    assert "shard_number" not in client_cls.call_args.kwargs


def test_region_shard_keys_come_from_the_connection_extra(monkeypatch):
    _set_conn(monkeypatch, host="qdrant", extra={"shard_number": 2, "shard_by_region": "yes"})
    assert PolyglotQdrantHook().collection_options() == {"shard_number": 2, "shard_by_region": True}
    _set_conn(monkeypatch, host="qdrant", extra={"shard_by_region": None})
    assert PolyglotQdrantHook().collection_options() == {}
    _set_conn(monkeypatch, host="qdrant", extra={"shard_by_region": "sometimes"})
    with pytest.raises(
        ValueError, match=r"qdrant_default extra shard_by_region must be true, false or empty"
    ):
        PolyglotQdrantHook().collection_options()


def test_cluster_options_absent_mean_server_defaults(monkeypatch):
    assert PolyglotQdrantHook().collection_options() == {}  # no connection at all
    _set_conn(monkeypatch, host="qdrant", extra={"replication_factor": None})
    assert PolyglotQdrantHook().collection_options() == {}


@pytest.mark.parametrize("value", [0, -1, "two", True])
def test_bad_cluster_option_names_the_connection_and_the_value(monkeypatch, value):
    _set_conn(monkeypatch, host="qdrant", extra={"shard_number": value})
    with pytest.raises(
        ValueError, match=rf"qdrant_default extra shard_number must be a positive integer.*{value!r}"
    ):
        PolyglotQdrantHook().collection_options()


def test_a_named_connection_that_does_not_exist_is_an_error_not_the_embedded_store(tmp_path):
    from airflow.sdk.exceptions import AirflowNotFoundException

    hook = PolyglotQdrantHook(conn_id="qdrant_prod_typo")
    with pytest.raises(AirflowNotFoundException, match="'qdrant_prod_typo' is not defined"):
        hook.get_conn()
    assert hook.mode is None
    assert not (tmp_path / "data" / "qdrant").exists()  # no folder nobody reads was created


def test_no_connection_at_all_uses_the_embedded_store_and_names_its_engine(tmp_path):
    with (
        mock.patch.object(PolyglotQdrantHook, "log", new_callable=mock.PropertyMock) as log_prop,
        PolyglotQdrantHook() as hook,
    ):
        hook.conn.get_collections()
    said = _logged_text(log_prop.return_value)
    assert "No Qdrant connection configured" in said and "qdrant-edge" in said
    assert "local mode" not in said  # the edge engine is not qdrant-client's local mode


def test_the_hook_is_a_context_manager_that_releases_the_folder(tmp_path):
    with PolyglotQdrantHook(local_path=tmp_path / "q", lock_timeout=0) as first:
        first.conn.get_collections()
    assert "conn" not in first.__dict__
    with PolyglotQdrantHook(local_path=tmp_path / "q", lock_timeout=0) as second:  # not blocked
        second.conn.get_collections()


def test_timeouts_come_from_the_connection_extra_with_short_defaults(monkeypatch):
    from polyglot_catalog.store import DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT

    _set_conn(monkeypatch, host="127.0.0.1", port=9)
    hook = PolyglotQdrantHook()
    assert hook.timeouts() == (DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT) and DEFAULT_READ_TIMEOUT <= 10
    _set_conn(monkeypatch, host="127.0.0.1", port=9, extra={"connect_timeout": 2, "read_timeout": "30"})
    client = PolyglotQdrantHook().get_conn()
    timeout = client._client.openapi_client.client._client.timeout
    assert (timeout.connect, timeout.read) == (2, 30)
    _set_conn(monkeypatch, host="127.0.0.1", port=9, extra={"timeout": "soon"})
    with pytest.raises(ValueError, match="qdrant_default extra connect_timeout"):
        PolyglotQdrantHook().get_conn()


def test_embedded_client_states_its_subset_of_the_client_api(tmp_path):
    from polyglot_catalog.edge_store import SUPPORTED_METHODS, EdgeClient, UnsupportedCall

    with PolyglotQdrantHook(local_path=tmp_path / "q") as hook:
        client = hook.conn
        assert isinstance(client, EdgeClient)
        assert {"upsert", "upload_points", "upload_collection", "query_points", "scroll"} <= set(
            SUPPORTED_METHODS
        )
        with pytest.raises(UnsupportedCall, match=r"does not implement QdrantClient\.create_snapshot"):
            client.create_snapshot("c")
        assert not hasattr(client, "create_snapshot")  # still an AttributeError for feature checks


def test_a_second_hook_on_a_folder_this_process_holds_fails_at_once_instead_of_waiting(tmp_path):
    first = PolyglotQdrantHook(local_path=tmp_path / "q", lock_timeout=600)
    first.conn.get_collections()
    second = PolyglotQdrantHook(local_path=tmp_path / "q", lock_timeout=600)
    with (
        mock.patch.object(time, "sleep", side_effect=AssertionError("must not wait")),
        pytest.raises(RuntimeError, match="held by another hook in this process"),
    ):
        second.get_conn()
    first.close()
    with second:
        second.conn.get_collections()  # free once the first was closed


def test_lookup_returns_the_match_state_as_xcom_safe_dicts():
    import numpy as np
    import pandas as pd

    from polyglot_catalog.ids import point_id
    from polyglot_catalog.matching.result import MatchResult
    from polyglot_catalog.matching.state import commit_match_state
    from polyglot_catalog.store import CatalogStore

    hook = PolyglotQdrantHook()
    store = CatalogStore(hook.conn, "cat", "v")
    store.ensure_collection(2)
    rows = [("DE", "d1"), ("US", "u1"), ("US", "u2")]
    store.upsert(
        [point_id(r, s) for r, s in rows],
        np.eye(2, dtype=np.float32)[[0, 0, 1]],
        [{"region": r, "sku": s, "status": "active"} for r, s in rows],
    )
    pairs = pd.DataFrame(
        [("DE", "d1", "US", "u1", 0.93, "match")],
        columns=["region_a", "sku_a", "region_b", "sku_b", "score", "decision"],
    )
    groups = pd.DataFrame(
        [("g000001", "DE", "d1"), ("g000001", "US", "u1")], columns=["group_id", "region", "sku"]
    )
    result = MatchResult(pairs, groups, pd.DataFrame(), {"collection": "cat", "regions": ["DE", "US"]})
    commit_match_state(store, result, "run-1")
    found = hook.lookup("cat", "US", "u1")
    hook.close()
    assert json.loads(json.dumps(found)) == found
    assert found["group_id"] == "g000001"
    assert found["twins"] == {"DE": {"sku": "d1", "score": 0.93, "run": "run-1"}}
    again = PolyglotQdrantHook()  # another task: the state is read from the store, not the process
    try:
        assert again.lookup("cat", "US", "u2")["group_id"] is None
    finally:
        again.close()
