"""Match state in Qdrant (docs/MATCH_STATE.md): payload, record, changes, lock, lookup, crash recovery."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from polyglot_catalog.ids import point_id
from polyglot_catalog.matching.groups import build_groups
from polyglot_catalog.matching.result import CHANGE_COLUMNS, MatchResult
from polyglot_catalog.matching.state import (
    JOURNAL_COLLECTION,
    STATE_COLLECTION,
    MatchStateLock,
    MatchStateLockedError,
    commit_match_state,
    full_run_reason,
    lock_collection,
    lookup_product,
    read_state,
)
from polyglot_catalog.store import CatalogStore, open_client

DIM = 4
SKUS = {r: [f"{r}-{i}" for i in range(6)] for r in ("DE", "FR", "US")}
PARAMETERS = {"k": 10, "threshold": None, "method": "hungarian", "score_grid": 1e-6}


def fill(store: CatalogStore, skus: dict[str, list[str]] = SKUS) -> None:
    store.ensure_collection(DIM)
    rows = [(r, s) for r in sorted(skus) for s in skus[r]]
    vectors = np.random.default_rng(0).standard_normal((len(rows), DIM)).astype(np.float32)
    store.upsert(
        [point_id(r, s) for r, s in rows],
        vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        [{"region": r, "sku": s, "status": "active"} for r, s in rows],
    )


def result_of(edges: list[tuple[str, str, str, str, float]], **summary: Any) -> MatchResult:
    """A match result with these accepted pairs, as the matcher would return it."""
    edges = [(ra, sa, rb, sb, s) if ra < rb else (rb, sb, ra, sa, s) for ra, sa, rb, sb, s in edges]
    groups, kept = build_groups(edges)
    pairs = pd.DataFrame(edges, columns=["region_a", "sku_a", "region_b", "sku_b", "score"])
    pairs["decision"] = ["match" if k else "conflict" for k in kept]
    base = {
        "collection": "cat",
        "model": "m1",
        "regions": ["DE", "FR", "US"],
        "threshold": 0.5,
        "scorer": {"fitted_on": "self", "weights": {"cosine": 1.0}},
        "reproducibility": {"model_fingerprint": "fp1", "parameters": dict(PARAMETERS)},
    }
    return MatchResult(pairs=pairs, groups=groups, unmatched=pd.DataFrame(), summary={**base, **summary})


@pytest.fixture
def store(qdrant_client: Any) -> CatalogStore:
    store = CatalogStore(qdrant_client, "cat", "fake", backoff=0.0)
    fill(store)
    return store


def payload(store: CatalogStore, region: str, sku: str) -> dict[str, Any]:
    return store.client.retrieve("cat", [point_id(region, sku)], with_payload=True)[0].payload


RUN1 = [
    ("US", "US-0", "DE", "DE-0", 0.9),
    ("US", "US-0", "FR", "FR-0", 0.8),
    ("US", "US-1", "DE", "DE-1", 0.7),
]


def test_first_run_writes_group_and_twins_on_every_point_and_a_record(store: CatalogStore) -> None:
    result = result_of(RUN1)
    record = commit_match_state(store, result, "run-1")
    assert payload(store, "US", "US-0")["group_id"] == "g000001"
    assert payload(store, "US", "US-0")["twins"] == {
        "DE": {"sku": "DE-0", "score": 0.9, "run": "run-1"},
        "FR": {"sku": "FR-0", "score": 0.8, "run": "run-1"},
    }
    # FR-0 and DE-0 were linked through US-0 only: the twin is named, its pair score is unknown
    assert payload(store, "FR", "FR-0")["twins"]["DE"] == {"sku": "DE-0", "score": None, "run": "run-1"}
    unmatched = payload(store, "FR", "FR-5")
    assert unmatched.get("group_id") is None and unmatched["twins"] == {}
    assert record["last_run"] == "run-1" and record["next_group"] == 3 and record["pending"] is None
    assert read_state(store.client, "cat")["model_fingerprint"] == "fp1"
    assert list(result.changes.columns) == CHANGE_COLUMNS
    assert set(result.changes["kind"]) == {"new_group"} and len(result.changes) == 5
    assert result.summary["changes"]["new_group"] == 5 and result.summary["full_rematch"] is True
    assert result.summary["match_state"]["full_run_reason"] == "no match state yet (first run)"
    # the group_id filter is what a downstream reader uses
    assert store.client.count("cat", count_filter=_group_filter("g000001")).count == 3


def _group_filter(gid: str) -> Any:
    from qdrant_client import models

    return models.Filter(must=[models.FieldCondition(key="group_id", match=models.MatchValue(value=gid))])


def test_second_run_keeps_ids_and_reports_exactly_what_changed(store: CatalogStore) -> None:
    commit_match_state(store, result_of(RUN1), "run-1")
    run2 = [
        ("US", "US-0", "DE", "DE-0", 0.9),  # kept, FR-0 leaves the group
        ("US", "US-1", "DE", "DE-2", 0.7),  # DE-1 replaced by DE-2 in g000002
        ("US", "US-3", "FR", "FR-3", 0.6),  # a new group
    ]
    result = result_of(run2)
    commit_match_state(store, result, "run-2")
    changes = {(r, s): (o, n, k) for r, s, o, n, k in result.changes.itertuples(index=False)}
    assert changes == {
        ("FR", "FR-0"): ("g000001", None, "broken_match"),
        ("DE", "DE-1"): ("g000002", None, "broken_match"),
        ("DE", "DE-2"): (None, "g000002", "new_match"),
        ("FR", "FR-3"): (None, "g000003", "new_group"),
        ("US", "US-3"): (None, "g000003", "new_group"),
    }
    assert sorted(result.groups["group_id"].unique()) == ["g000001", "g000002", "g000003"]
    left = payload(store, "FR", "FR-0")
    assert left.get("group_id") is None and left["twins"] == {}
    # an unchanged twin keeps the run that decided it
    assert payload(store, "US", "US-0")["twins"] == {"DE": {"sku": "DE-0", "score": 0.9, "run": "run-1"}}
    assert payload(store, "US", "US-1")["twins"]["DE"]["run"] == "run-2"
    assert result.summary["match_state"]["previous_run"] == "run-1"


def test_a_dissolved_group_and_a_move_are_reported(store: CatalogStore) -> None:
    commit_match_state(store, result_of(RUN1), "run-1")
    result = result_of([("US", "US-0", "DE", "DE-0", 0.9), ("US", "US-0", "FR", "FR-0", 0.8),
                        ("US", "US-0", "DE", "DE-1", 0.95)])  # fmt: skip
    commit_match_state(store, result, "run-2")
    kinds = {(r, s): k for r, s, _, _, k in result.changes.itertuples(index=False)}
    # DE-1 moves into g000001 (its stronger pair wins; DE-0 drops out), g000002 is gone
    assert kinds[("DE", "DE-1")] == "moved"
    assert kinds[("US", "US-1")] == "dissolved"
    assert kinds[("DE", "DE-0")] == "broken_match"


def test_a_deleted_point_is_reported_as_leaving_its_group(store: CatalogStore) -> None:
    """embed ``vanished="delete"`` removes a point with its group id; the changes still name it."""
    from qdrant_client import models

    commit_match_state(store, result_of(RUN1), "run-1")
    # the record counts the grouped points, so the next run knows to look for deleted ones
    assert read_state(store.client, "cat")["grouped"] == {"DE": 2, "FR": 1, "US": 2}
    gone = [point_id("FR", "FR-0"), point_id("DE", "DE-1")]
    store.client.delete("cat", models.PointIdsList(points=gone), wait=True)
    result = result_of([("US", "US-0", "DE", "DE-0", 0.9)], regions=["DE", "FR", "US"])
    commit_match_state(store, result, "run-2")
    changes = {(r, s): (o, n, k) for r, s, o, n, k in result.changes.itertuples(index=False)}
    assert changes == {
        ("FR", "FR-0"): ("g000001", None, "broken_match"),  # g000001 goes on as US-0, DE-0
        ("DE", "DE-1"): ("g000002", None, "dissolved"),
        ("US", "US-1"): ("g000002", None, "dissolved"),
    }
    assert result.summary["match_state"]["points_written"] == 3  # the remaining points only
    assert read_state(store.client, "cat")["grouped"] == {"DE": 1, "FR": 0, "US": 1}


def test_a_run_over_some_regions_does_not_take_twins_in_the_others_for_deleted_points(
    store: CatalogStore,
) -> None:
    commit_match_state(store, result_of(RUN1), "run-1")
    partial = result_of([("US", "US-0", "DE", "DE-0", 0.9), ("US", "US-1", "DE", "DE-1", 0.7)])
    partial.summary["regions"] = ["DE", "US"]
    commit_match_state(store, partial, "run-2")
    assert partial.changes.empty  # FR-0, twin of US-0 and DE-0, was not read, not deleted
    assert payload(store, "FR", "FR-0")["group_id"] == "g000001"


def test_an_unchanged_rerun_writes_nothing_and_reports_no_change(store: CatalogStore) -> None:
    commit_match_state(store, result_of(RUN1), "run-1")
    result = result_of(RUN1)
    commit_match_state(store, result, "run-2")
    assert result.changes.empty and result.summary["match_state"]["points_written"] == 0
    assert result.summary["match_state"]["full_run_reason"] is None
    assert lookup_product(store.client, "cat", "US", "US-0")["twins"]["DE"]["run"] == "run-1"


def test_full_run_reason_names_the_change() -> None:
    state = {"version": 1, "model": "m1", "model_fingerprint": "aaa", "regions": ["DE", "US"],
             "parameters": dict(PARAMETERS), "pending": None}  # fmt: skip
    same = {"model": "m1", "model_fingerprint": "aaa", "regions": ["US", "DE"], "parameters": PARAMETERS}
    assert full_run_reason(state, **same) is None
    assert "model changed from 'm1' to 'm2'" in full_run_reason(state, **{**same, "model": "m2"})
    assert "changed content" in full_run_reason(state, **{**same, "model_fingerprint": "bbb"})
    assert "parameter k changed from 10 to 20" in full_run_reason(
        state, **{**same, "parameters": {**PARAMETERS, "k": 20}}
    )
    assert "regions changed" in full_run_reason(state, **{**same, "regions": ["DE"]})
    assert "not committed" in full_run_reason({**state, "pending": {"run": "r9"}}, **same)
    assert full_run_reason(None, **same) == "no match state yet (first run)"


def test_lookup_returns_group_and_twins_as_plain_dicts(store: CatalogStore) -> None:
    commit_match_state(store, result_of(RUN1), "run-1")
    found = lookup_product(store.client, "cat", "DE", "DE-1")
    assert found["group_id"] == "g000002"
    assert found["twins"] == {"US": {"sku": "US-1", "score": 0.7, "run": "run-1"}}
    assert found["state"]["last_run"] == "run-1" and found["state"]["pending_run"] is None
    with pytest.raises(ValueError, match="no product region='DE' sku='nope'"):
        lookup_product(store.client, "cat", "DE", "nope")


def test_a_second_writer_waits_then_fails_naming_the_running_one(store: CatalogStore) -> None:
    held = MatchStateLock(store.client, "cat", "run-A", ttl=60)
    held.acquire()
    with pytest.raises(MatchStateLockedError, match="being written by run 'run-A'"):
        commit_match_state(store, result_of(RUN1), "run-B", lock_timeout=0.5)
    assert read_state(store.client, "cat") is None  # the second run wrote nothing
    held.release()
    commit_match_state(store, result_of(RUN1), "run-B", lock_timeout=0.5)
    assert read_state(store.client, "cat")["last_run"] == "run-B"
    assert not store.client.collection_exists(lock_collection("cat"))


def test_a_live_lock_of_another_machine_is_waited_for_until_it_expires(store: CatalogStore) -> None:
    import time

    from qdrant_client import models

    other = MatchStateLock(store.client, "cat", "run-elsewhere", ttl=60)
    other.acquire()
    holder = {
        "run": "run-elsewhere",
        "host": "worker-7",
        "pid": 1,
        "acquired_at": "t",
        "expires_at": time.time() + 60,
    }
    store.client.upsert(lock_collection("cat"), [models.PointStruct(id=1, vector=[1.0], payload=holder)])
    with pytest.raises(MatchStateLockedError, match=r"run 'run-elsewhere' \(host worker-7"):
        commit_match_state(store, result_of(RUN1), "run-2", lock_timeout=0.3)
    holder["expires_at"] = time.time() - 1
    store.client.upsert(lock_collection("cat"), [models.PointStruct(id=1, vector=[1.0], payload=holder)])
    commit_match_state(store, result_of(RUN1), "run-2", lock_timeout=0.3)
    assert read_state(store.client, "cat")["last_run"] == "run-2"


def test_an_expired_lock_is_broken(store: CatalogStore) -> None:
    stale = MatchStateLock(store.client, "cat", "run-dead", ttl=-1)  # expired as soon as it is written
    stale.acquire()
    commit_match_state(store, result_of(RUN1), "run-2", lock_timeout=5)
    assert read_state(store.client, "cat")["last_run"] == "run-2"


def test_a_failed_report_write_leaves_the_state_as_it_was(store: CatalogStore) -> None:
    commit_match_state(store, result_of(RUN1), "run-1")

    def fail(_: MatchResult) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        commit_match_state(store, result_of(RUN1[:1]), "run-2", before_apply=fail)
    assert read_state(store.client, "cat")["last_run"] == "run-1"
    assert payload(store, "FR", "FR-0")["group_id"] == "g000001"
    assert not store.client.collection_exists(lock_collection("cat"))
    assert store.client.count(JOURNAL_COLLECTION).count == 0  # the journalled updates went with it


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_match_state import RUN1, result_of, fill
    from polyglot_catalog.matching import state
    from polyglot_catalog.store import CatalogStore, open_client

    state.WRITE_BATCH = 2
    store = CatalogStore(open_client(path={path!r}), "cat", "fake")
    if sys.argv[1] == "fill":
        fill(store)
        state.commit_match_state(store, result_of(RUN1), "run-1")
    elif sys.argv[1] == "journal":  # killed once the journal is written, before the record names it
        def die(*_):
            os.kill(os.getpid(), signal.SIGKILL)
        state._write_record = die
        state.commit_match_state(store, result_of([("US", "US-0", "DE", "DE-3", 0.9)]), "run-2")
    else:
        def die(n):
            if n == 1:
                os.kill(os.getpid(), signal.SIGKILL)
        run2 = [("US", "US-0", "DE", "DE-3", 0.9), ("US", "US-4", "FR", "FR-4", 0.8),
                ("US", "US-5", "DE", "DE-5", 0.7)]
        state.commit_match_state(store, result_of(run2), "run-2", after_batch=die)
    store.client.close()
    """
)


def test_a_run_killed_mid_write_leaves_a_consistent_state_and_the_next_run_completes(tmp_path: Path) -> None:
    path = str(tmp_path / "qdrant")
    script = CRASH_SCRIPT.format(tests=str(Path(__file__).parent), path=path)
    env = {**os.environ, "POLYGLOT_EMBEDDED_STORE": "edge"}
    subprocess.run([sys.executable, "-c", script, "fill"], check=True, env=env)
    killed = subprocess.run([sys.executable, "-c", script, "crash"], env=env)
    assert killed.returncode == -9
    client = open_client(path=path)
    try:
        store = CatalogStore(client, "cat", "fake")
        state = read_state(client, "cat")
        assert state["last_run"] == "run-1" and state["pending"]["run"] == "run-2"
        # readers see one state: the journalled run-2 (complete), never half of it
        assert lookup_product(client, "cat", "US", "US-0")["twins"]["DE"]["sku"] == "DE-3"
        assert lookup_product(client, "cat", "DE", "DE-0")["group_id"] is None
        assert lookup_product(client, "cat", "US", "US-5")["group_id"] is not None
        # the next run finds the pending journal, finishes it, then commits its own run
        run3 = [("US", "US-0", "DE", "DE-3", 0.9), ("US", "US-4", "FR", "FR-4", 0.8),
                ("US", "US-5", "DE", "DE-5", 0.7)]  # fmt: skip
        result = result_of(run3)
        # the killed run's lock names a dead pid on this host: broken at once, not waited for
        commit_match_state(store, result, "run-3", lock_timeout=0)
        state = read_state(client, "cat")
        assert state["last_run"] == "run-3" and state["pending"] is None
        assert result.changes.empty  # run-2's changes were applied by the recovery
        assert result.summary["match_state"]["previous_run"] == "run-2"
        assert payload(store, "DE", "DE-0").get("group_id") is None
        assert payload(store, "US", "US-0")["twins"]["DE"] == {"sku": "DE-3", "score": 0.9, "run": "run-2"}
        assert client.count(STATE_COLLECTION).count == 1
    finally:
        client.close()


def test_report_folder_carries_changes_parquet_counts_and_a_section(
    store: CatalogStore, tmp_path: Path
) -> None:
    import json

    from polyglot_catalog.reports import write_reports

    commit_match_state(store, result_of(RUN1), "run-1")
    result = result_of(RUN1[:2])
    folders: list[Path] = []
    commit_match_state(
        store, result, "run-2", before_apply=lambda r: folders.append(write_reports(tmp_path / "r2", r))
    )
    changes = pd.read_parquet(folders[0] / "changes.parquet")
    assert changes.to_dict("records") == [
        {"region": "DE", "sku": "DE-1", "old_group": "g000002", "new_group": None, "kind": "dissolved"},
        {"region": "US", "sku": "US-1", "old_group": "g000002", "new_group": None, "kind": "dissolved"},
    ]
    summary = json.loads((folders[0] / "summary.json").read_text())
    assert summary["changes"]["dissolved"] == 2 and summary["changes"]["new_match"] == 0
    assert summary["match_state"]["previous_run"] == "run-1"
    page = (folders[0] / "report.html").read_text()
    assert "Changes since the last run" in page and "2 products changed group since run" in page
    assert "US-1" in page.split('id="changes"')[1]
    # the report's groups carry the stable ids, as the points do
    assert set(pd.read_parquet(folders[0] / "groups.parquet")["group_id"]) == {"g000001"}


def test_a_report_without_match_state_has_an_empty_typed_changes_file(tmp_path: Path) -> None:
    from polyglot_catalog.reports import write_reports

    folder = write_reports(tmp_path / "r", result_of(RUN1))
    changes = pd.read_parquet(folder / "changes.parquet")
    assert list(changes.columns) == CHANGE_COLUMNS and changes.empty
    assert "wrote no match state" in (folder / "report.html").read_text()


def test_a_run_killed_before_its_journal_is_pending_leaves_the_previous_state(tmp_path: Path) -> None:
    path = str(tmp_path / "qdrant")
    script = CRASH_SCRIPT.format(tests=str(Path(__file__).parent), path=path)
    env = {**os.environ, "POLYGLOT_EMBEDDED_STORE": "edge"}
    subprocess.run([sys.executable, "-c", script, "fill"], check=True, env=env)
    assert subprocess.run([sys.executable, "-c", script, "journal"], env=env).returncode == -9
    client = open_client(path=path)
    try:
        store = CatalogStore(client, "cat", "fake")
        state = read_state(client, "cat")
        assert state["last_run"] == "run-1" and state["pending"] is None
        assert lookup_product(client, "cat", "US", "US-0")["twins"]["DE"]["sku"] == "DE-0"  # run-1's
        result = result_of(RUN1)
        commit_match_state(store, result, "run-3", lock_timeout=0)
        assert result.changes.empty  # nothing of the killed run was applied
        assert read_state(client, "cat")["last_run"] == "run-3"
        assert client.count("polyglot_match_journal").count == 0  # its partial journal was dropped
    finally:
        client.close()


def test_planning_holds_group_ids_not_every_points_state() -> None:
    """The match task plans the state beside the pairs table (900k products at 300k x 3): it holds
    the grouped products' group ids and the accepted pairs' scores, and builds each payload from a
    page of the catalog when it is journalled (#26). Reading every point's committed twins whole
    took ~1.9 KB a product on an unchanged re-run (tracemalloc peak of planning and walking the
    updates); now ~0.9 KB, most of it one page of the scroll at this size."""
    import tracemalloc

    from polyglot_catalog.matching.state import plan_state

    n = 3_000
    client = open_client(path=":memory:", embedded="edge")
    store = CatalogStore(client, "cat", "fake", backoff=0.0)
    fill(store, {r: [f"{r}-{i}" for i in range(n)] for r in ("DE", "FR", "US")})
    edges = [
        (a, f"{a}-{i}", b, f"{b}-{i}", 0.9)
        for i in range(int(0.7 * n))
        for a, b in (("DE", "FR"), ("DE", "US"))
    ]

    def result() -> MatchResult:
        out = result_of(edges)
        for c in ("region_a", "sku_a", "region_b", "sku_b"):
            out.pairs[c] = out.pairs[c].astype("category")  # as the matcher's table holds them
        return out

    try:
        commit_match_state(store, result(), "run-1")
        again = result()
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            plan = plan_state(store, again, "run-2", read_state(client, "cat"), full_rematch=False)
            written = sum(1 for _ in plan.updates(store))
            per_product = (tracemalloc.get_traced_memory()[1] - start) / (3 * n)
        finally:
            tracemalloc.stop()
        assert payload(store, "FR", "FR-5")["twins"] == {
            "DE": {"sku": "DE-5", "score": 0.9, "run": "run-1"},
            "US": {"sku": "US-5", "score": None, "run": "run-1"},
        }
    finally:
        client.close()
    assert written == 0 and plan.changes.empty  # the same groups: nothing to write
    assert per_product < 1_100, f"{per_product:.0f} B a product"
