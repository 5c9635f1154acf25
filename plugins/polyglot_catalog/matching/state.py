"""Persistent match state in Qdrant: group ids and twins on the catalog points, one record per collection.

Why in Qdrant: search, pricing and PIM sync read the catalog there, and the state must be shared by
workers on other machines (a server or cluster), not kept on one local disk. What is stored
(docs/MATCH_STATE.md):

- on each catalog point: ``group_id`` (keyword-indexed; null when unmatched) and ``twins``
  (``{region: {"sku", "score", "run"}}``, one entry per other region of its group);
- in :data:`STATE_COLLECTION`: one record per catalog collection (last run, model and fingerprint,
  scorer, threshold, parameters, group-id counter), so a change of model or parameters is detectable
  (:func:`full_run_reason`);
- in :data:`.context_store.CONTEXT_COLLECTION`: the run's match context (frozen statistics, scorers
  and scored pairs) the next incremental run continues from (``context_run`` in the record);
- in :data:`JOURNAL_COLLECTION`: the new payloads of a run being applied. The journal is written
  first, the record marks it pending, the payloads are applied (idempotent ``set_payload``), and the
  record is committed last; a run that finds a pending journal (its writer was killed) re-applies it.
- a lock collection per catalog collection (creating a collection is atomic on a server too), so two
  runs never both write; stale locks (dead process on this host, or past their expiry) are broken.

Callers (CLI, operator) run :func:`commit_match_state` after ``match_catalog``; the matcher itself
stays free of state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from qdrant_client import models

from polyglot_catalog.ids import PROJECT_NAMESPACE, point_id

from .context_store import drop_other_contexts, write_context
from .result import CHANGE_COLUMNS, CHANGE_KINDS, MatchResult, column_strings
from .stable_ids import assign_stable_ids, format_group_id, group_number

log = logging.getLogger(__name__)

STATE_COLLECTION = "polyglot_match_state"
JOURNAL_COLLECTION = "polyglot_match_journal"
LOCK_PREFIX = "polyglot_match_lock__"
#: Bumped when the record's meaning changes; a record of another version forces a full run.
STATE_VERSION = 1
#: Matcher parameters whose change invalidates the stored decisions (block sizes, the candidate
#: path, the HNSW beam and labels do not change decisions: docs/DETERMINISM.md).
DECISION_PARAMETERS = (
    "k",
    "threshold",
    "method",
    "target_precision",
    "allow_same_region",
    "fit_on_labels",
    "corroborate",
    "center",
    "text_ties",
    "sentences",
    "candidate_slack",
    "members_cap",
    "min_self_training",
    "threshold_floor",
    "score_grid",
)
STATE_FIELDS = ("group_id", "twins")
WRITE_BATCH = 256
#: Why 900 s: the holder renews it after every written batch, but not while the report folder is
#: written under the lock (minutes at 300k products per region); a dead holder on this host is
#: detected at once by its pid, so the expiry only delays runs after a crash on another machine.
LOCK_TTL_SECONDS = 900.0
LOCK_TIMEOUT_SECONDS = 600.0
_AUX_VECTOR = models.VectorParams(size=1, distance=models.Distance.DOT)  # the aux points carry no meaning
_HOLDER_ID = 1


class MatchStateLockedError(RuntimeError):
    """Another run holds the collection's match-state lock; the message names it."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def record_id(collection: str) -> str:
    """Point id of a collection's state record."""
    return str(uuid.uuid5(PROJECT_NAMESPACE, f"match-state\x1f{collection}"))


def _journal_id(collection: str, pid: str) -> str:
    return str(uuid.uuid5(PROJECT_NAMESPACE, f"match-journal\x1f{collection}\x1f{pid}"))


def _is_exists_error(error: BaseException) -> bool:
    return "already exists" in str(error) or "409" in str(error)


def _ensure_aux(client: Any, name: str, indexed: Sequence[str] = ()) -> None:
    """Create a small state/journal collection once; a concurrent creator winning is fine."""
    if client.collection_exists(name):
        return
    try:
        client.create_collection(name, vectors_config=_AUX_VECTOR)
    except Exception as e:
        if not _is_exists_error(e):
            raise
        return
    for field in indexed:
        with contextlib.suppress(Exception):  # local mode keeps no indexes and warns
            client.create_payload_index(name, field, models.PayloadSchemaType.KEYWORD)


def _aux_point(pid: str, payload: dict[str, Any]) -> models.PointStruct:
    return models.PointStruct(id=pid, vector=[1.0], payload=payload)


# -- the record -----------------------------------------------------------------------------------


def read_state(client: Any, collection: str) -> dict[str, Any] | None:
    """The collection's state record (committed fields and ``pending``), or None before the first run."""
    if not client.collection_exists(STATE_COLLECTION):
        return None
    found = client.retrieve(STATE_COLLECTION, [record_id(collection)], with_payload=True)
    return dict(found[0].payload or {}) if found else None


def _write_record(client: Any, collection: str, record: Mapping[str, Any]) -> None:
    client.upsert(STATE_COLLECTION, [_aux_point(record_id(collection), dict(record))], wait=True)


def state_record(
    result: MatchResult, run_id: str, next_group: int, *, full_rematch: bool, collection: str
) -> dict[str, Any]:
    """The record a committed run leaves: what a later run must match to continue from it."""
    summary = result.summary or {}
    repro = summary.get("reproducibility") or {}
    return {
        "version": STATE_VERSION,
        "collection": collection,
        "last_run": run_id,
        "committed_at": None,
        "mode": summary.get("mode") or "full",
        "context_run": None,  # set by commit_match_state when it stores the run's match context
        "full_rematch": bool(full_rematch),
        "model": summary.get("model") or repro.get("model"),
        "model_fingerprint": repro.get("model_fingerprint"),
        "regions": list(summary.get("regions") or []),
        "threshold": summary.get("threshold"),
        "threshold_method": summary.get("threshold_method"),
        "scorer": summary.get("scorer"),
        "parameters": dict(repro.get("parameters") or {}),
        "next_group": int(next_group),
        "grouped": None,  # grouped points per region once applied: set when the payloads are journalled
        "pending": None,
    }


def full_run_reason(
    state: Mapping[str, Any] | None,
    *,
    model: str | None,
    model_fingerprint: str | None = None,
    regions: Sequence[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> str | None:
    """Why the next run must be a full one, in words; None when it may continue from ``state``.

    A later incremental run must score with the same scorer and threshold as the run that wrote the
    state, which only holds while the model, its content and the decision parameters are unchanged.
    """
    if state is None:
        return "no match state yet (first run)"
    if state.get("version") != STATE_VERSION:
        return f"match state version {state.get('version')!r} is not {STATE_VERSION}"
    if state.get("pending"):
        return f"run {state['pending'].get('run')!r} was not committed"
    if state.get("model") != model:
        return f"model changed from {state.get('model')!r} to {model!r}"
    old_fp = state.get("model_fingerprint")
    if old_fp and model_fingerprint and old_fp != model_fingerprint:
        return f"model {model!r} changed content (fingerprint {old_fp[:12]} -> {model_fingerprint[:12]})"
    if regions is not None and sorted(regions) != sorted(state.get("regions") or []):
        return f"regions changed from {state.get('regions')} to {sorted(regions)}"
    old = state.get("parameters") or {}
    for name in DECISION_PARAMETERS:
        if parameters is not None and name in parameters and old.get(name) != parameters.get(name):
            return f"matcher parameter {name} changed from {old.get(name)!r} to {parameters.get(name)!r}"
    return None


# -- the lock -------------------------------------------------------------------------------------


def lock_collection(collection: str) -> str:
    """Name of the collection whose existence means "a run is writing this collection's state"."""
    return f"{LOCK_PREFIX}{collection}"


def _holder_alive(holder: Mapping[str, Any], now: float) -> bool:
    if float(holder.get("expires_at") or 0) < now:
        return False
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder.get("pid") or 0), 0)
        except ProcessLookupError:
            return False  # killed on this machine: no need to wait for the expiry
        except (PermissionError, ValueError, OverflowError):
            return True
    return True


@dataclass
class MatchStateLock:
    """Exclusive right to write one collection's match state, held as a lock collection.

    Creating a collection fails when it exists, atomically, on a server or cluster as in the embedded
    store; its one point names the holder (run, host, pid) and when the lock expires. A holder
    refreshes the expiry while it writes (:meth:`refresh`). A waiting run breaks a lock whose holder
    died on this host or whose expiry passed, and otherwise fails after ``timeout`` seconds with a
    message naming the holder.
    """

    client: Any
    collection: str
    run_id: str
    ttl: float = LOCK_TTL_SECONDS
    timeout: float = LOCK_TIMEOUT_SECONDS
    poll: float = 1.0

    @property
    def name(self) -> str:
        return lock_collection(self.collection)

    def _holder(self) -> dict[str, Any] | None:
        try:
            found = self.client.retrieve(self.name, [_HOLDER_ID], with_payload=True)
        except Exception:  # deleted between our check and the read: treat as free on the next try
            return None
        return dict(found[0].payload or {}) if found else None

    def refresh(self) -> None:
        """Write (or renew) the holder point: this run holds the lock for another ``ttl`` seconds."""
        holder = {
            "run": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired_at": _now(),
            "expires_at": time.time() + self.ttl,
        }
        self.client.upsert(self.name, [_aux_point(_HOLDER_ID, holder)], wait=True)

    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout`` seconds for a live holder."""
        deadline = time.monotonic() + self.timeout
        unnamed_since: float | None = None
        while True:
            try:
                self.client.create_collection(self.name, vectors_config=_AUX_VECTOR)
            except Exception as e:
                if not _is_exists_error(e):
                    raise
            else:
                self.refresh()
                return
            holder = self._holder()
            now = time.time()
            if holder is None:  # created but not named yet, or its creator died in between
                unnamed_since = unnamed_since or time.monotonic()
                stale = time.monotonic() - unnamed_since > min(self.ttl, 30.0)
            else:
                unnamed_since = None
                stale = not _holder_alive(holder, now)
            if stale and self._holder() == holder:  # re-read: another waiter may have broken it already
                log.warning("breaking stale match-state lock of %s held by %s", self.collection, holder)
                with contextlib.suppress(Exception):
                    self.client.delete_collection(self.name)
                continue
            if time.monotonic() >= deadline:
                who = (
                    f"run {holder.get('run')!r} (host {holder.get('host')}, pid {holder.get('pid')}, "
                    f"since {holder.get('acquired_at')})"
                    if holder
                    else "a run that is starting"
                )
                raise MatchStateLockedError(
                    f"match state of collection {self.collection!r} is being written by {who}; "
                    f"waited {self.timeout:.0f}s. Retry when it has finished (a dead holder's lock "
                    f"expires {self.ttl:.0f}s after its last write)."
                )
            time.sleep(self.poll)

    def release(self) -> None:
        """Drop the lock if this run still holds it."""
        holder = self._holder()
        if holder is not None and holder.get("run") == self.run_id:
            self.client.delete_collection(self.name)

    def __enter__(self) -> MatchStateLock:
        self.acquire()
        return self

    def __exit__(self, *_: Any) -> None:
        self.release()


# -- previous state, new state, changes -----------------------------------------------------------


@dataclass
class StatePlan:
    """What one run will write: the changes, the record to commit, and what builds the new payloads.

    The payloads are not held: :meth:`updates` reads the catalog a page at a time and yields the
    points whose state changes (a plan holding every point's old state and new payload held ~2 KB a
    product: ~1.7 GB at 300k x 3, #26).
    """

    record: dict[str, Any]
    changes: pd.DataFrame
    twins: _Twins | None
    regions: list[str]

    def updates(self, store: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(point id, new payload)`` of every point of the run's regions (stale too) whose state
        changes; once walked, the record counts the grouped points per region (``grouped``)."""
        twins = self.twins
        if twins is None:
            raise RuntimeError("the plan's payloads were released once journalled")
        grouped = dict.fromkeys(self.regions, 0)
        for page in _state_pages(store, self.regions, [*STATE_FIELDS, "sku"]):
            for m, p in page:
                old = {"group_id": p.get("group_id"), "twins": p["twins"]} if "twins" in p else _NO_STATE
                new = twins.payload(m, old.get("twins") or {}) if m in twins.group_of else _UNGROUPED
                if new is not _UNGROUPED:
                    grouped[m[0]] = grouped.get(m[0], 0) + 1
                if new != old:
                    yield p["id"], new
        self.record["grouped"] = grouped  # what the next run compares with (see _maybe_deleted)


#: The state of a point never matched (shared: one object for every such point of a catalog, never
#: mutated; a first run over millions of points held one empty dict each).
_NO_STATE: dict[str, Any] = {}
#: The payload written to a point in no group (shared and never mutated, as :data:`_NO_STATE`).
_UNGROUPED: dict[str, Any] = {"group_id": None, "twins": {}}


def _state_pages(
    store: Any, regions: Sequence[str], fields: Sequence[str]
) -> Iterator[list[tuple[tuple[str, str], dict[str, Any]]]]:
    """Pages of ``((region, sku), payload with id)`` of every point of ``regions``, stale ones too."""
    for region in regions:
        name = str(region)  # one string for the region's millions of keys, not one per point
        for payloads, _ in store.scroll_region(
            region, with_vectors=False, include_stale=True, payload_fields=["region", *fields]
        ):
            yield [((name if p["region"] == name else str(p["region"]), str(p["sku"])), p) for p in payloads]


def _old_group_ids(store: Any, regions: Sequence[str]) -> dict[tuple[str, str], str]:
    """``(region, sku) -> committed group id`` of every grouped point of ``regions`` (one pass, no twins)."""
    out: dict[tuple[str, str], str] = {}
    shared: dict[str, str] = {}  # one string a group, not one a member
    for page in _state_pages(store, regions, ["sku", "group_id"]):
        for m, p in page:
            gid = p.get("group_id")
            if gid is not None:
                out[m] = shared.setdefault(gid, gid)
    return out


def _grouped_counts(keys: Iterable[tuple[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for region, _ in keys:
        counts[region] = counts.get(region, 0) + 1
    return counts


def _maybe_deleted(
    old_ids: Mapping[tuple[str, str], str], regions: Sequence[str], state: Mapping[str, Any] | None
) -> bool:
    """Whether a grouped point of ``regions`` may have been deleted since the last commit.

    Only a commit gives a point a group id, and embed carries it over a re-embed, so a region with as
    many grouped points as the record counted after the last commit lost none: the pass over every
    grouped point's twins (:func:`_deleted_members`) is skipped (a third of an unchanged re-run's commit).
    """
    if not old_ids:
        return False
    committed = (state or {}).get("grouped") or {}
    now = _grouped_counts(old_ids)
    return any(committed.get(r) != now.get(r, 0) for r in regions)


def _deleted_members(
    store: Any, regions: Sequence[str], old_ids: Mapping[tuple[str, str], str]
) -> dict[tuple[str, str], str]:
    """``(region, sku) -> old group id`` of grouped products whose point was deleted since the last run.

    Why: embed with ``vanished="delete"`` removes a point together with its ``group_id``, so the
    changes would not name the product that left its group. Its group mates that remain still name
    it among their ``twins``: that gives its last committed group. A group whose every member was
    deleted leaves no trace (docs/MATCH_STATE.md, Limits). One pass over the grouped points' twins;
    a twin that is not grouped any more is looked up by its point id (ids are uuid5 of region and
    SKU), so a point that lost its state by a re-embed is not taken for a deleted one.
    """
    named: dict[tuple[str, str], str] = {}
    for page in _state_pages(store, regions, ["sku", "group_id", "twins"]):
        for _, p in page:
            gid = p.get("group_id")
            for region, twin in (p.get("twins") or {}).items() if gid is not None else ():
                key = (str(region), str((twin or {}).get("sku")))
                if key[0] in regions and key not in old_ids:
                    named[key] = gid
    keys = list(named)
    present: set[str] = set()
    for i in range(0, len(keys), WRITE_BATCH):
        ids = [point_id(*key) for key in keys[i : i + WRITE_BATCH]]
        found = store._call("state read", store.client.retrieve, store.collection, ids, with_payload=False)
        present.update(str(r.id) for r in found)
    return {key: gid for key, gid in named.items() if point_id(*key) not in present}


def _edge(m: tuple[str, str], other: tuple[str, str]) -> tuple[str, str, str, str]:
    """The key of the accepted pair of products ``m`` and ``other``, whichever side each was on."""
    (ra, sa), (rb, sb) = (m, other) if m <= other else (other, m)
    return ra, sa, rb, sb


def _pair_scores(result: MatchResult) -> dict[tuple[str, str, str, str], float]:
    """Score of each accepted pair, keyed by :func:`_edge`: one flat entry a pair (a key per direction
    of nested tuples held ~0.9 GB at 900k accepted pairs)."""
    acc = result.matches
    out: dict[tuple[str, str, str, str], float] = {}
    for ra, sa, rb, sb, s in zip(
        *(column_strings(acc[c]) for c in ("region_a", "sku_a", "region_b", "sku_b")),
        acc["score"],
        strict=True,
    ):
        out[_edge((ra, sa), (rb, sb))] = round(float(s), 6)
    return out


@dataclass
class _Twins:
    """Grouped products' new payloads (the stable group id, and per other region the twin's SKU,
    pair score and the run that set them, kept while they stay), built when asked for."""

    group_of: Mapping[tuple[str, str], str]
    members: Mapping[str, list[tuple[str, str]]]
    scores: Mapping[tuple[str, str, str, str], float]
    run_id: str

    def payload(self, m: tuple[str, str], old: Mapping[str, Any]) -> dict[str, Any]:
        """``m``'s new payload; ``old`` its committed twins (each kept with its run while unchanged)."""
        gid = self.group_of[m]
        twins: dict[str, Any] = {}
        for other in self.members[gid]:
            if other[0] == m[0] or other[0] in twins:
                continue
            score = self.scores.get(_edge(m, other))
            kept = old.get(other[0]) or {}
            same = kept.get("sku") == other[1] and kept.get("score") == score
            twins[other[0]] = {
                "sku": other[1],
                "score": score,
                "run": kept.get("run") if same else self.run_id,
            }
        return {"group_id": gid, "twins": twins}


def change_kind(old: str | None, new: str | None, old_ids_kept: set[str]) -> str | None:
    """One product's change between two runs (None: unchanged); see docs/MATCH_STATE.md."""
    if old == new:
        return None
    if old is None:
        return "new_match" if new in old_ids_kept else "new_group"
    if new is None:
        return "broken_match" if old in old_ids_kept else "dissolved"
    return "moved"


def plan_state(
    store: Any, result: MatchResult, run_id: str, state: Mapping[str, Any] | None, *, full_rematch: bool
) -> StatePlan:
    """Stable ids and changes of ``result`` against the committed state (pure but for reads).

    Holds the grouped products' old and new group ids and the accepted pairs' scores, never a point's
    twins: those are read again, a page at a time, when the payloads are written (:meth:`StatePlan.updates`).
    """
    regions = [str(r) for r in (result.summary.get("regions") or sorted(result.groups["region"].unique()))]
    old_ids = _old_group_ids(store, regions)
    if _maybe_deleted(old_ids, regions, state):
        old_ids.update(_deleted_members(store, regions, old_ids))
    groups = result.groups
    members: dict[str, list[tuple[str, str]]] = {}
    for gid, region, sku in zip(groups["group_id"], groups["region"], groups["sku"], strict=True):
        members.setdefault(str(gid), []).append((str(region), str(sku)))
    local_ids = list(members)
    start = int((state or {}).get("next_group") or 1)
    stable, next_group = assign_stable_ids(old_ids, [members[g] for g in local_ids], start)
    relabel = dict(zip(local_ids, stable, strict=True))
    result.groups = groups.assign(group_id=groups["group_id"].astype(str).map(relabel))

    new_ids: dict[tuple[str, str], str] = {}
    group_members: dict[str, list[tuple[str, str]]] = {}
    for local, gid in relabel.items():
        group_members[gid] = group = sorted(members.pop(local))
        for m in group:
            new_ids[m] = gid
    kept_old = set(stable) & set(old_ids.values())
    rows = []
    for m in sorted(set(old_ids) | set(new_ids)):
        kind = change_kind(old_ids.get(m), new_ids.get(m), kept_old)
        if kind is not None:
            rows.append((m[0], m[1], old_ids.get(m), new_ids.get(m), kind))
    changes = pd.DataFrame(rows, columns=CHANGE_COLUMNS, dtype=object)
    collection = str(result.summary.get("collection") or store.collection)
    record = state_record(result, run_id, next_group, full_rematch=full_rematch, collection=collection)
    twins = _Twins(new_ids, group_members, _pair_scores(result), run_id)
    return StatePlan(record=record, changes=changes, twins=twins, regions=regions)


# -- journal, apply, commit -----------------------------------------------------------------------


def _journal_filter(collection: str, run: str | None = None) -> models.Filter:
    must = [models.FieldCondition(key="collection", match=models.MatchValue(value=collection))]
    if run is not None:
        must.append(models.FieldCondition(key="run", match=models.MatchValue(value=run)))
    return models.Filter(must=must)


def _clear_journal(client: Any, collection: str) -> None:
    client.delete(JOURNAL_COLLECTION, models.FilterSelector(filter=_journal_filter(collection)), wait=True)


def _write_journal(
    client: Any,
    collection: str,
    run_id: str,
    updates: Iterable[tuple[str, dict[str, Any]]],
    lock: MatchStateLock,
) -> int:
    """Journal the run's point updates, :data:`WRITE_BATCH` at a time; returns how many.

    Nothing reads them until the record names the run as pending, so a run that fails before that
    leaves entries the next run clears, and the committed state as it was.
    """
    written = 0
    for batch in _batches(updates):
        client.upsert(
            JOURNAL_COLLECTION,
            [
                _aux_point(
                    _journal_id(collection, pid),
                    {"collection": collection, "run": run_id, "point": pid, "payload": payload},
                )
                for pid, payload in batch
            ],
            wait=True,
        )
        written += len(batch)
        lock.refresh()
    return written


def _batches(items: Iterable[tuple[str, Any]]) -> Iterator[list[tuple[str, Any]]]:
    """``items`` in lists of :data:`WRITE_BATCH` (each built as written, not all at once)."""
    batch: list[tuple[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) == WRITE_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _journal_pages(client: Any, collection: str, run: str) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """The journalled ``(point id, payload)`` of ``run``, :data:`WRITE_BATCH` at a time."""
    offset = None
    while True:
        records, offset = client.scroll(
            JOURNAL_COLLECTION,
            scroll_filter=_journal_filter(collection, run),
            limit=WRITE_BATCH,
            offset=offset,
            with_payload=True,
        )
        if records:
            yield [(str(r.payload["point"]), r.payload["payload"]) for r in records]
        if offset is None:
            return


#: Called after each applied batch; tests use it to kill a run mid-way.
ApplyHook = Callable[[int], None]


def _apply(store: Any, collection: str, run: str, lock: MatchStateLock, after_batch: ApplyHook | None) -> int:
    """Write the journalled payloads onto the catalog points a page at a time; idempotent, so a
    recovery repeats it. Returns how many points it wrote."""
    written = 0
    for n, batch in enumerate(_journal_pages(store.client, collection, run)):
        ops = [
            models.SetPayloadOperation(set_payload=models.SetPayload(payload=payload, points=[pid]))
            for pid, payload in batch
        ]
        store._call("match state write", store.client.batch_update_points, store.collection, ops, wait=True)
        written += len(batch)
        lock.refresh()
        if after_batch is not None:
            after_batch(n)
    return written


def _ensure_group_index(store: Any) -> None:
    info = store._call("collection info", store.client.get_collection, store.collection)
    if "group_id" not in (info.payload_schema or {}):
        with contextlib.suppress(Exception):  # local mode keeps no indexes and warns
            store.client.create_payload_index(store.collection, "group_id", models.PayloadSchemaType.KEYWORD)


def _finish(
    store: Any,
    collection: str,
    record: dict[str, Any],
    run: str,
    lock: MatchStateLock,
    after_batch: ApplyHook | None = None,
) -> tuple[dict[str, Any], int]:
    """Apply a journalled run and commit its record (also the recovery of a killed run); returns the
    committed record and how many points were written."""
    written = _apply(store, collection, run, lock, after_batch)
    committed = {**record, "committed_at": _now(), "pending": None}
    _write_record(store.client, collection, committed)
    _clear_journal(store.client, collection)
    return committed, written


def _recover(store: Any, collection: str, state: dict[str, Any], lock: MatchStateLock) -> dict[str, Any]:
    pending = state["pending"]
    log.warning(
        "collection %s: run %s was killed while writing its match state; re-applying its journal",
        collection,
        pending["run"],
    )
    committed, written = _finish(store, collection, pending["record"], pending["run"], lock)
    log.info(
        "collection %s: run %s recovered (%d point updates re-applied)", collection, pending["run"], written
    )
    return committed


def commit_match_state(
    store: Any,
    result: MatchResult,
    run_id: str,
    *,
    full_rematch: bool = True,
    before_apply: Callable[[MatchResult], Any] | None = None,
    lock_timeout: float = LOCK_TIMEOUT_SECONDS,
    lock_ttl: float = LOCK_TTL_SECONDS,
    after_batch: ApplyHook | None = None,
) -> dict[str, Any]:
    """Write one match run's state: stable group ids, twins, changes, the record.

    Under the collection's lock: finish a killed run's journal if one is pending, read the committed
    state, give ``result`` stable group ids (``result.groups`` is relabelled), ``result.changes`` and
    summary counts, journal the changed points' payloads (a page of the catalog at a time), call
    ``before_apply(result)`` (the callers write the report there, so a failed write leaves the state
    as it was and a retry reports the same changes), then mark the journal pending, apply it and
    commit.

    Returns:
        the committed record (JSON-safe).

    Raises:
        MatchStateLockedError: another run kept the lock for ``lock_timeout`` seconds.
    """
    client = store.client
    collection = str(result.summary.get("collection") or store.collection)
    _ensure_aux(client, STATE_COLLECTION)
    _ensure_aux(client, JOURNAL_COLLECTION, indexed=("collection", "run"))
    with MatchStateLock(client, collection, run_id, ttl=lock_ttl, timeout=lock_timeout) as lock:
        state = read_state(client, collection)
        if state and state.get("pending"):
            state = _recover(store, collection, state, lock)
        plan = plan_state(store, result, run_id, state, full_rematch=full_rematch)
        _clear_journal(client, collection)  # a run that failed before its pending mark left entries
        written = _write_journal(client, collection, run_id, plan.updates(store), lock)
        counts = plan.changes["kind"].value_counts()
        result.changes = plan.changes
        result.summary["full_rematch"] = bool(full_rematch)
        result.summary["match_state"] = {
            "run": run_id,
            "mode": plan.record["mode"],
            "previous_run": (state or {}).get("last_run"),
            "full_run_reason": full_run_reason(
                state,
                model=plan.record["model"],
                model_fingerprint=plan.record["model_fingerprint"],
                regions=plan.record["regions"],
                parameters=plan.record["parameters"],
            ),
            "points_written": written,
            "next_group": plan.record["next_group"],
        }
        result.summary["changes"] = {kind: int(counts.get(kind, 0)) for kind in CHANGE_KINDS}
        plan.twins = None  # the payloads are journalled: the apply reads them back a page at a time
        if before_apply is not None:
            try:
                before_apply(result)
            except BaseException:
                _clear_journal(client, collection)
                raise
            lock.refresh()
        _ensure_group_index(store)
        if result.context is not None:  # before the pending mark: a recovered run finds it stored
            write_context(client, collection, run_id, result.context)
            plan.record["context_run"] = run_id
        base = state or {"version": STATE_VERSION, "collection": collection, "last_run": None}
        _write_record(client, collection, {**base, "pending": {"run": run_id, "record": plan.record}})
        committed, _ = _finish(store, collection, plan.record, run_id, lock, after_batch)
        drop_other_contexts(client, collection, keep=committed.get("context_run"))
    log.info(
        "collection %s: match state of run %s committed (%d points written; changes %s)",
        collection,
        run_id,
        written,
        result.summary["changes"],
    )
    return committed


# -- lookup ---------------------------------------------------------------------------------------


def lookup_product(client: Any, collection: str, region: str, sku: str) -> dict[str, Any]:
    """A product's group and its twin in every other region, from the payload (no model load).

    While a killed run's journal is pending, the journalled (newer, complete) entry wins over the
    half-written payload, so every lookup sees one consistent state. Plain dicts (XCom-safe).

    Raises:
        ValueError: no such product in the collection.
    """
    pid = point_id(region, sku)
    found = client.retrieve(collection, [pid], with_payload=["region", "sku", "status", *STATE_FIELDS])
    if not found:
        raise ValueError(f"collection {collection!r} has no product region={region!r} sku={sku!r}")
    payload = dict(found[0].payload or {})
    state = read_state(client, collection) or {}
    pending = state.get("pending")
    if pending:
        journal = client.retrieve(JOURNAL_COLLECTION, [_journal_id(collection, pid)], with_payload=True)
        if journal and journal[0].payload.get("run") == pending.get("run"):
            payload.update(journal[0].payload["payload"])
    twins = payload.get("twins") or {}
    return {
        "collection": collection,
        "region": region,
        "sku": sku,
        "status": payload.get("status"),
        "group_id": payload.get("group_id"),
        "twins": {r: dict(twins[r]) for r in sorted(twins)},
        "state": {
            "last_run": state.get("last_run"),
            "committed_at": state.get("committed_at"),
            "pending_run": pending.get("run") if pending else None,
        },
    }


__all__ = [
    "JOURNAL_COLLECTION",
    "STATE_COLLECTION",
    "MatchStateLock",
    "MatchStateLockedError",
    "commit_match_state",
    "format_group_id",
    "full_run_reason",
    "group_number",
    "lookup_product",
    "read_state",
]
