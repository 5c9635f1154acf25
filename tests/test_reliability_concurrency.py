"""Two runs at once against one local-mode Qdrant folder: the second waits or fails cleanly, never corrupts.

Mechanisms (docs/RELIABILITY.md): both DAGs run with ``max_active_runs=1`` (tests/test_dags.py::
test_dag_header); local mode's folder is an exclusive fcntl lock taken by qdrant-client (portalocker),
and ``PolyglotQdrantHook`` waits for it; report folders use a lock plus an atomic rename
(tests/test_reports.py::test_concurrent_writers_of_one_folder_never_mix_files). On a Qdrant server,
concurrent writers are safe per point: ids are deterministic, so two runs write the same point, never two.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import FakeEncoder

from polyglot_catalog.embed import embed_catalog
from polyglot_catalog.store import CatalogStore, open_client

TESTS = Path(__file__).resolve().parent
N_ROWS = 120

HOLDER = """
import sys, time
sys.path.insert(0, {tests!r})
from fakes import FakeEncoder
from polyglot_catalog.embed import embed_catalog
from polyglot_catalog.store import CatalogStore, open_client

class SlowEncoder(FakeEncoder):
    def encode(self, texts):
        time.sleep(0.1)
        return super().encode(texts)

client = open_client(path={qdrant!r})
print("locked", flush=True)
embed_catalog({source!r}, CatalogStore(client, "catalog", "fake-model"), SlowEncoder(), batch_size=20)
client.close()
print("done", flush=True)
"""


def catalog(path: Path, word: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "sku": [f"S{i}" for i in range(N_ROWS)],
                "region": ["DE"] * N_ROWS,
                "description": [f"Produkt {i} {word}" for i in range(N_ROWS)],
            }
        ),
        path,
    )
    return path


def start_holder(qdrant: Path, source: Path) -> subprocess.Popen[str]:
    code = HOLDER.format(tests=str(TESTS), qdrant=str(qdrant), source=str(source))
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    return child


def test_second_embed_into_the_same_local_folder_fails_cleanly_or_waits_then_wins(tmp_path: Path) -> None:
    from polyglot_catalog.provider.hooks import PolyglotQdrantHook

    qdrant = tmp_path / "qdrant"
    first = start_holder(qdrant, catalog(tmp_path / "a" / "c.parquet", "alt"))
    try:
        # Without waiting: a clear error before anything is touched.
        with pytest.raises(RuntimeError, match=r"already accessed by another instance"):
            open_client(path=str(qdrant))

        # The hook (what the operators use) waits for the lock, then runs on a consistent store.
        hook = PolyglotQdrantHook(local_path=qdrant, lock_timeout=60)
        hook.lock_poll_seconds = 0.1
        started = time.monotonic()
        store = CatalogStore(hook.conn, "catalog", "fake-model")
        waited = time.monotonic() - started
        assert first.wait(timeout=60) == 0  # the first run finished undisturbed
        assert waited > 0.3  # it really waited for the first run's lock
        summary = embed_catalog(
            catalog(tmp_path / "b" / "c.parquet", "neu"), store, FakeEncoder(), batch_size=20
        )
        assert summary["embedded"] == N_ROWS and summary["skipped_unchanged"] == 0
        records, _ = store.client.scroll("catalog", limit=1000, with_payload=True)
        assert len(records) == store.count() == N_ROWS
        assert {r.payload["text"].split()[-1] for r in records} == {"neu"}
        hook.close()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
