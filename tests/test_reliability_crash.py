"""Crash safety of the embed stage: SIGKILL a real run midway, re-run, and get exactly the right points.

The run happens in a child process over a local-mode Qdrant folder (qdrant-client persists each point
as its own SQLite transaction in ``<path>/collection/<name>/storage.sqlite``; the collection's
config is ``meta.json``, replaced atomically). A SIGKILL therefore keeps every point committed before
it, each complete (payload and vector are pickled together), and the folder lock (``.lock``, an
fcntl lock) dies with the process. What the kill loses is at most the batch in flight, which the
re-run writes because its ids are missing or their content hash differs.

The match stage's counterpart (a killed report writer) is tests/test_reports.py::
test_killed_writer_leaves_only_a_hidden_temp_folder_that_the_next_run_removes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from fakes import FakeEncoder

from polyglot_catalog.embed import embed_catalog
from polyglot_catalog.store import CatalogStore, open_client

TESTS = Path(__file__).resolve().parent
N_ROWS, BATCH = 300, 20
KILL_AFTER_ROWS = 100

CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from fakes import FakeEncoder
from polyglot_catalog.embed import embed_catalog
from polyglot_catalog.store import CatalogStore, open_client

class SlowEncoder(FakeEncoder):
    def encode(self, texts):
        time.sleep(0.1)  # a real model takes time per batch; gives the parent a window to kill in
        return super().encode(texts)

def progress(done, total):
    print(done, flush=True)

store = CatalogStore(open_client(path={qdrant!r}), "catalog", "fake-model")
embed_catalog({source!r}, store, SlowEncoder(), batch_size={batch}, progress=progress,
              quarantine_path={quarantine!r})
print("finished", flush=True)
"""


def catalog(path: Path, version: str) -> Path:
    """v1 and v2 differ in the first 10 rows (embedded before the kill) and the last 10 (after)."""
    changed = set(range(10)) | set(range(N_ROWS - 10, N_ROWS)) if version == "v2" else set()
    descriptions = [f"Produkt {i} {'neu' if i in changed else 'alt'}" for i in range(N_ROWS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {"sku": [f"S{i}" for i in range(N_ROWS)], "region": ["DE"] * N_ROWS, "description": descriptions}
        ),
        path,
    )
    return path


def run_and_kill(tmp_path: Path, source: Path, qdrant: Path) -> int:
    """Start the embed run in a child, SIGKILL it once it reported KILL_AFTER_ROWS; rows reported."""
    code = CHILD.format(
        tests=str(TESTS),
        qdrant=str(qdrant),
        source=str(source),
        batch=BATCH,
        quarantine=str(tmp_path / "q.parquet"),
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    done = 0
    deadline = time.monotonic() + 60
    try:
        assert child.stdout is not None
        for line in child.stdout:
            assert line.strip() != "finished", "the run ended before it could be killed"
            done = int(line)
            if done >= KILL_AFTER_ROWS or time.monotonic() > deadline:
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return done


def points(store: CatalogStore) -> dict[str, dict]:
    records, _ = store.client.scroll(store.collection, limit=10_000, with_payload=True, with_vectors=True)
    return {r.payload["sku"]: {**r.payload, "_dims": len(r.vector[store.vector_name])} for r in records}


def test_sigkilled_embed_run_then_rerun_converges_to_one_point_per_key_with_latest_content(
    tmp_path: Path,
) -> None:
    qdrant = tmp_path / "qdrant"
    reported = run_and_kill(tmp_path, catalog(tmp_path / "v1" / "c.parquet", "v1"), qdrant)

    # What survived the kill: every committed point, each complete; the lock died with the process.
    store = CatalogStore(open_client(path=str(qdrant)), "catalog", "fake-model")
    survived = points(store)
    assert reported <= len(survived) < N_ROWS
    assert all(
        p["_dims"] == 16 and p["status"] == "active" and len(p["content_hash"]) == 64
        for p in survived.values()
    )
    assert not (tmp_path / "q.parquet").exists()  # a killed run publishes no quarantine file
    assert list(tmp_path.glob(".q.parquet.tmp-*"))  # only its hidden temp file

    v2 = catalog(tmp_path / "v2" / "c.parquet", "v2")
    summary = embed_catalog(
        v2, store, FakeEncoder(), batch_size=BATCH, quarantine_path=tmp_path / "q.parquet"
    )

    final = points(store)
    assert len(final) == store.count() == N_ROWS  # exactly one point per (region, sku)
    expected = {f"S{i}": d for i, d in enumerate(pq.read_table(v2)["description"].to_pylist())}
    assert {sku: p["text"] for sku, p in final.items()} == expected  # the latest content
    still_good = sum(1 for sku, p in survived.items() if p["text"] == expected[sku])
    assert summary["skipped_unchanged"] == still_good  # survivors were not re-encoded
    assert summary["embedded"] == summary["upserted"] == N_ROWS - still_good  # what was redone
    assert summary["flagged"] == 0 and not summary["vanished_skipped"]
    assert not list(tmp_path.glob(".q.parquet.tmp-*")) and (tmp_path / "q.parquet").exists()
    store.client.close()
