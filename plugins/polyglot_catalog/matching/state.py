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
    """What one run will write: new payloads per point id and the record to commit."""

    payloads: Mapping[str, dict[str, Any]]
    record: dict[str, Any]
    changes: pd.DataFrame


#: The state of a point never matched (shared: one object for every such point of a catalog, never
#: mutated; a first run over millions of points held one empty dict each).
_NO_STATE: dict[str, Any] = {}
#: The payload written to a point in no group (shared and never mutated, as :data:`_NO_STATE`).
_UNGROUPED: dict[str, Any] = {"group_id": None, "twins": {}}


def _previous(store: Any, regions: Sequence[str]) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
    """``(region, sku) -> (point id, {"group_id", "twins"})`` of every point of ``regions``, stale too."""
    out: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for region in regions:
        name = str(region)  # one string for the region's millions of keys, not one per point
        for payloads, _ in store.scroll_region(
            region, with_vectors=False, include_stale=True, payload_fields=["region", "sku", *STATE_FIELDS]
        ):
            for p in payloads:
                # a point without ``twins`` (never matched, or re-embedded since) gets the fields written;
                # a missing group_id reads as null (the embedded engine drops nulls that set_payload writes)
                state = {"group_id": p.get("group_id"), "twins": p["twins"]} if "twins" in p else _NO_STATE
                key = (name if p["region"] == name else str(p["region"]), str(p["sku"]))
                out[key] = (p["id"], state)
    return out


def _deleted_members(
    previous: Mapping[tuple[str, str], tuple[str, dict[str, Any]]], regions: Sequence[str]
) -> dict[tuple[str, str], str]:
    """``(region, sku) -> old group id`` of grouped products whose point was deleted since the last run.

    Why: embed with ``vanished="delete"`` removes a point together with its ``group_id``, so the
    changes would not name the product that left its group. Its group mates that remain still name
    it among their ``twins``: that gives its last committed group. A group whose every member was
    deleted leaves no trace (docs/MATCH_STATE.md, Limits).
    """
    out: dict[tuple[str, str], str] = {}
    for _, state in previous.values():
        gid = state.get("group_id")
        for region, twin in (state.get("twins") or {}).items() if gid is not None else ():
            key = (str(region), str((twin or {}).get("sku")))
            if key[0] in regions and key not in previous:
                out[key] = gid
    return out


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
    """A grouped product's new payload (its stable group id, and per other region its twin's SKU,
    pair score and the run that set them, kept while they stay), built when asked for."""

    group_of: Mapping[tuple[str, str], str]
    members: Mapping[str, list[tuple[str, str]]]
    scores: Mapping[tuple[str, str, str, str], float]
    old_twins: Mapping[tuple[str, str], Mapping[str, Any]]
    run_id: str

    def payload(self, m: tuple[str, str]) -> dict[str, Any]:
        gid = self.group_of[m]
        old = self.old_twins.get(m) or {}
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


class _Payloads(Mapping[str, dict[str, Any]]):
    """The payloads a run writes, point id -> payload, each built when read (for the journal, then
    again for the points): held as dicts they were ~0.9 KB a grouped product, 0.8 GB at 900k."""

    def __init__(self, twins: _Twins, changed: Mapping[str, tuple[str, str] | None]) -> None:
        self._twins, self._changed = twins, changed

    def __getitem__(self, pid: str) -> dict[str, Any]:
        m = self._changed[pid]
        return _UNGROUPED if m is None else self._twins.payload(m)

    def __iter__(self) -> Iterator[str]:
        return iter(self._changed)

    def __len__(self) -> int:
        return len(self._changed)


def _batches(payloads: Mapping[str, dict[str, Any]], order: Iterable[str]) -> Iterator[list[tuple[str, Any]]]:
    """``(point id, payload)`` of ``order``'s points, :data:`WRITE_BATCH` at a time (payloads built
    per batch, not all at once)."""
    batch: list[tuple[str, Any]] = []
    for pid in order:
        batch.append((pid, payloads[pid]))
        if len(batch) == WRITE_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


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
    """Stable ids, twins and changes of ``result`` against the committed state (pure but for reads)."""
    regions = [str(r) for r in (result.summary.get("regions") or sorted(result.groups["region"].unique()))]
    previous = _previous(store, regions)
    old_ids = {k: v[1]["group_id"] for k, v in previous.items() if v[1].get("group_id") is not None}
    old_ids.update(_deleted_members(previous, regions))
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
        group_members[gid] = group = sorted(members[local])
        for m in group:
            new_ids[m] = gid
    twins = _Twins(
        new_ids,
        group_members,
        _pair_scores(result),
        {m: old["twins"] for m, (_, old) in previous.items() if m in new_ids and old.get("twins")},
        run_id,
    )
    changed: dict[str, tuple[str, str] | None] = {}  # point id -> its product when grouped
    for m, (pid, old) in previous.items():
        grouped = m in new_ids
        if (twins.payload(m) if grouped else _UNGROUPED) != old:
            changed[pid] = m if grouped else None
    payloads = _Payloads(twins, changed)
    kept_old = set(stable) & set(old_ids.values())
    rows = []
    for m in sorted(set(old_ids) | set(new_ids)):
        kind = change_kind(old_ids.get(m), new_ids.get(m), kept_old)
        if kind is not None:
            rows.append((m[0], m[1], old_ids.get(m), new_ids.get(m), kind))
    changes = pd.DataFrame(rows, columns=CHANGE_COLUMNS, dtype=object)
    collection = str(result.summary.get("collection") or store.collection)
    record = state_record(result, run_id, next_group, full_rematch=full_rematch, collection=collection)
    return StatePlan(payloads=payloads, record=record, changes=changes)


# -- journal, apply, commit -----------------------------------------------------------------------


def _journal_filter(collection: str, run: str | None = None) -> models.Filter:
    must = [models.FieldCondition(key="collection", match=models.MatchValue(value=collection))]
    if run is not None:
        must.append(models.FieldCondition(key="run", match=models.MatchValue(value=run)))
    return models.Filter(must=must)


def _clear_journal(client: Any, collection: str) -> None:
    client.delete(JOURNAL_COLLECTION, models.FilterSelector(filter=_journal_filter(collection)), wait=True)


def _write_journal(client: Any, collection: str, run_id: str, payloads: Mapping[str, dict[str, Any]]) -> None:
    for batch in _batches(payloads, payloads):
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


def _read_journal(client: Any, collection: str, run: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    offset = None
    while True:
        records, offset = client.scroll(
            JOURNAL_COLLECTION,
            scroll_filter=_journal_filter(collection, run),
            limit=1024,
            offset=offset,
            with_payload=True,
        )
        for r in records:
            out[str(r.payload["point"])] = r.payload["payload"]
        if offset is None:
            return out


#: Called after each applied batch; tests use it to kill a run mid-way.
ApplyHook = Callable[[int], None]


def _apply(
    store: Any, payloads: Mapping[str, dict[str, Any]], lock: MatchStateLock, after_batch: ApplyHook | None
) -> None:
    """Write the payloads onto the catalog points, in batches; idempotent, so a recovery repeats it."""
    for n, batch in enumerate(_batches(payloads, sorted(payloads))):
        ops = [
            models.SetPayloadOperation(set_payload=models.SetPayload(payload=payload, points=[pid]))
            for pid, payload in batch
        ]
        store._call("match state write", store.client.batch_update_points, store.collection, ops, wait=True)
        lock.refresh()
        if after_batch is not None:
            after_batch(n)


def _ensure_group_index(store: Any) -> None:
    info = store._call("collection info", store.client.get_collection, store.collection)
    if "group_id" not in (info.payload_schema or {}):
        with contextlib.suppress(Exception):  # local mode keeps no indexes and warns
            store.client.create_payload_index(store.collection, "group_id", models.PayloadSchemaType.KEYWORD)


def _finish(
    store: Any,
    collection: str,
    record: dict[str, Any],
    payloads: Mapping[str, dict[str, Any]],
    lock: MatchStateLock,
    after_batch: ApplyHook | None = None,
) -> dict[str, Any]:
    """Apply a journalled run and commit its record (also the recovery of a killed run)."""
    _apply(store, payloads, lock, after_batch)
    committed = {**record, "committed_at": _now(), "pending": None}
    _write_record(store.client, collection, committed)
    _clear_journal(store.client, collection)
    return committed


def _recover(store: Any, collection: str, state: dict[str, Any], lock: MatchStateLock) -> dict[str, Any]:
    pending = state["pending"]
    payloads = _read_journal(store.client, collection, pending["run"])
    log.warning(
        "collection %s: run %s was killed while writing its match state; re-applying its %d point updates",
        collection,
        pending["run"],
        len(payloads),
    )
    return _finish(store, collection, pending["record"], payloads, lock)


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
    summary counts, call ``before_apply(result)`` (the callers write the report there, so a failed
    write leaves the state as it was and a retry reports the same changes), then journal, apply and
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
            "points_written": len(plan.payloads),
            "next_group": plan.record["next_group"],
        }
        result.summary["changes"] = {kind: int(counts.get(kind, 0)) for kind in CHANGE_KINDS}
        if before_apply is not None:
            before_apply(result)
            lock.refresh()
        _ensure_group_index(store)
        if result.context is not None:  # before the pending mark: a recovered run finds it stored
            write_context(client, collection, run_id, result.context)
            plan.record["context_run"] = run_id
        _clear_journal(client, collection)
        _write_journal(client, collection, run_id, plan.payloads)
        base = state or {"version": STATE_VERSION, "collection": collection, "last_run": None}
        _write_record(client, collection, {**base, "pending": {"run": run_id, "record": plan.record}})
        committed = _finish(store, collection, plan.record, plan.payloads, lock, after_batch)
        drop_other_contexts(client, collection, keep=committed.get("context_run"))
    log.info(
        "collection %s: match state of run %s committed (%d points written; changes %s)",
        collection,
        run_id,
        len(plan.payloads),
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
