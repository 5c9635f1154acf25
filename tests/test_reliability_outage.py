"""Qdrant outages: refused, stalling and rejecting endpoints on loopback, and an outage mid-run.

The promise: bounded retries with backoff, then ONE error naming the endpoint and how many points
Qdrant acknowledged; nothing is counted as written that was not; a re-run (Airflow's task retry)
converges because point ids are deterministic and unchanged rows are skipped.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import FakeEncoder
from qdrant_client import QdrantClient, models

from polyglot_catalog.embed import StoreUnavailableError, describe_endpoint, embed_catalog
from polyglot_catalog.store import REGION_GRAPH_M, CatalogStore, UpsertError, open_client

N_ROWS = 60


def catalog(path: Path, n: int = N_ROWS, suffix: str = "") -> Path:
    pq.write_table(
        pa.table(
            {
                "sku": [f"S{i}" for i in range(n)],
                "region": ["DE"] * n,
                "description": [f"Produkt {i} {suffix}" for i in range(n)],
            }
        ),
        path,
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BlackHole:
    """Accepts TCP connections on loopback and never answers: a Qdrant that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    server = BlackHole()
    yield server
    server.close()


def remote(port: int, api_key: str | None = None) -> QdrantClient:
    # check_compatibility=False: the version probe at construction would add one more timeout
    return QdrantClient(url=f"http://127.0.0.1:{port}", timeout=1, api_key=api_key, check_compatibility=False)


def test_unreachable_endpoint_is_retried_then_one_clear_error(tmp_path: Path, caplog) -> None:
    port = free_port()  # nothing listens there
    store = CatalogStore(remote(port), "catalog", "fake-model", max_retries=2, backoff=0.05)
    with caplog.at_level(logging.WARNING), pytest.raises(StoreUnavailableError) as caught:
        embed_catalog(
            catalog(tmp_path / "c.parquet"), store, FakeEncoder(), quarantine_path=tmp_path / "q.parquet"
        )
    message = str(caught.value)
    assert message.startswith(f"Qdrant at http://127.0.0.1:{port} failed during collection check")
    assert "after 3 attempt(s)" in message and "Connection refused" in message
    assert "0 point(s) were acknowledged" in message and caught.value.written == 0
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert [r.getMessage().split("retry ")[1][:3] for r in retries] == ["1/2", "2/2"]
    assert (tmp_path / "q.parquet").exists()  # the input was read and checked before the store


def test_stalling_endpoint_times_out_with_bounded_backoff(tmp_path: Path, black_hole: BlackHole) -> None:
    store = CatalogStore(remote(black_hole.port), "catalog", "fake-model", max_retries=2, backoff=0.05)
    started = time.monotonic()
    with pytest.raises(
        StoreUnavailableError, match=rf"Qdrant at http://127.0.0.1:{black_hole.port} .*after 3 attempt"
    ):
        embed_catalog(catalog(tmp_path / "c.parquet"), store, FakeEncoder())
    elapsed = time.monotonic() - started
    assert len(black_hole.accepted) >= 3  # really retried over the network
    assert elapsed < 3 * 1 + 0.05 + 0.1 + 3  # 3 timeouts of 1s + backoff + slack: bounded


class _RejectAll(http.server.BaseHTTPRequestHandler):
    def _reply(self) -> None:
        self.send_response(403)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": {"error": "forbidden"}}')

    do_GET = do_PUT = do_POST = do_PATCH = _reply

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass


def test_rejected_request_is_not_retried_and_hides_the_api_key(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RejectAll)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        key = "sk-test-0000-never-print-me"
        store = CatalogStore(
            remote(server.server_address[1], api_key=key), "c", "v", max_retries=3, backoff=5.0
        )
        started = time.monotonic()
        with pytest.raises(
            StoreUnavailableError, match=r"after 1 attempt\(s\): UnexpectedResponse.*403"
        ) as caught:
            embed_catalog(catalog(tmp_path / "c.parquet"), store, FakeEncoder())
        assert time.monotonic() - started < 5.0  # no backoff sleep: 4xx is not transient
        assert key not in str(caught.value) and key not in describe_endpoint(store.client)
    finally:
        server.shutdown()


class OutageAfter:
    """Local-mode Qdrant whose upserts go to ``remote`` (a dead endpoint) after ``ok`` good ones."""

    def __init__(self, local: QdrantClient, dead: QdrantClient, ok: int) -> None:
        self._local, self._dead, self.ok = local, dead, ok
        self._client = dead._client  # what describe_endpoint reads: the endpoint that failed

    def upsert(self, *args: Any, **kwargs: Any) -> Any:
        if self.ok > 0:
            self.ok -= 1
            return self._local.upsert(*args, **kwargs)
        return self._dead.upsert(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._local, name)


def test_outage_mid_run_counts_only_acknowledged_points_and_the_rerun_converges(
    tmp_path: Path, black_hole: BlackHole
) -> None:
    local = open_client(path=":memory:")
    client = OutageAfter(local, remote(black_hole.port), ok=2)
    store = CatalogStore(client, "c", "v", upsert_batch_size=10, max_retries=1, backoff=0.01)
    source = catalog(tmp_path / "c.parquet")
    with pytest.raises(StoreUnavailableError) as caught:
        embed_catalog(source, store, FakeEncoder(), batch_size=10, vanished="flag", sentences=False)
    error = caught.value
    assert error.step == "upsert" and error.attempts == 2 and len(error.ids) == 10
    assert f"http://127.0.0.1:{black_hole.port}" in str(error) and "timed out" in str(error)
    healthy = CatalogStore(local, "c", "v")
    assert error.written == healthy.count() == 20  # exactly the acknowledged batches
    assert healthy.count(status="stale") == 0  # the vanished pass never ran

    again = embed_catalog(
        source, healthy, FakeEncoder(), batch_size=10, sentences=False
    )  # what Airflow's retry does
    assert again["skipped_unchanged"] == 20 and again["embedded"] == N_ROWS - 20
    assert healthy.count() == N_ROWS


def test_store_failure_keeps_the_upsert_error_type(tmp_path: Path, black_hole: BlackHole) -> None:
    """Callers catching UpsertError (the store's error) still catch the embed stage's wrapper."""
    client = OutageAfter(open_client(path=":memory:"), remote(black_hole.port), ok=0)
    store = CatalogStore(client, "c", "v", max_retries=0)
    with pytest.raises(UpsertError):
        embed_catalog(catalog(tmp_path / "c.parquet", n=3), store, FakeEncoder())


def test_rerun_restores_indexing_a_killed_bulk_load_left_off(tmp_path: Path) -> None:
    """The embedded engine (qdrant-edge) records HNSW ``m``/``payload_m`` like a server; a SIGKILL
    inside ``bulk_load()`` leaves both at 0, and the next run must put the region graphs back."""
    client = open_client(path=str(tmp_path / "q"))
    store = CatalogStore(client, "c", "fake-model")
    store.ensure_collection(16)
    graphs = store.hnsw_graphs()
    client.update_collection("c", hnsw_config=models.HnswConfigDiff(m=0, payload_m=0))  # the leftover
    assert store.indexing_off()
    summary = embed_catalog(catalog(tmp_path / "c.parquet"), store, FakeEncoder())
    assert summary["upserted"] == N_ROWS and store.hnsw_graphs() == graphs == (0, REGION_GRAPH_M)
    embed_catalog(catalog(tmp_path / "c.parquet"), store, FakeEncoder())
    assert store.hnsw_graphs() == graphs  # a healthy collection is left alone
    client.close()
