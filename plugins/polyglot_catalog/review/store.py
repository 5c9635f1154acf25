"""Reviewed pair decisions, their audit trail and reviewer claims, stored in Qdrant.

Why in Qdrant: the API server (where people review) and every worker (where the next match run
reads the decisions) reach the same store, as they do for the match state (docs/MATCH_STATE.md);
a browser or one worker's disk would lose them. One small collection per catalog collection,
``polyglot_review__<collection>``, holds three kinds of points (docs/REVIEW.md):

- ``decision``: the current decision of a pair (``match`` / ``no_match``), who and when, the stratum
  of the queue it came from, and a hash of each text so it lapses when either text changes;
- ``audit``: one point per change (decide, undo, import), never overwritten: who, when, before/after;
- ``claim``: a reviewer's lease on a pair, so two reviewers never get the same pair at once.

The audit point is written before the decision, so a decision whose write failed still leaves its
trace; two reviewers deciding one pair both stay in the audit, the later one holds.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from qdrant_client import models

from polyglot_catalog.ids import PROJECT_NAMESPACE

REVIEW_PREFIX = "polyglot_review__"
DECISIONS = ("match", "no_match")
DECISION_COLUMNS = [
    "region_a",
    "sku_a",
    "region_b",
    "sku_b",
    "decision",
    "reviewer",
    "decided_at",
    "hash_a",
    "hash_b",
    "stratum",
    "stratum_size",
    "source",
]
AUDIT_COLUMNS = ["region_a", "sku_a", "region_b", "sku_b", "reviewer", "at", "action", "before", "after"]
#: Why 10 minutes: long enough to read two product texts, short enough that a reviewer who closed
#: the tab does not hide pairs for long.
CLAIM_TTL_SECONDS = 600.0
_AUX_VECTOR = models.VectorParams(size=1, distance=models.Distance.DOT)
_SCROLL = 1024
#: The embedded engines live in one process; this serialises claim check-and-write there. On a
#: server the ``update_filter`` of the claim write makes it atomic across processes.
_CLAIM_LOCK = threading.Lock()


def review_collection(collection: str) -> str:
    """Name of the collection holding ``collection``'s review decisions."""
    return f"{REVIEW_PREFIX}{collection}"


def text_hash(text: str | None) -> str | None:
    """Short content hash of a product text: a decision lapses when either text's hash changes."""
    if text is None:
        return None
    return hashlib.sha256(str(text).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Pair:
    """A cross-region pair in canonical order (``(region_a, sku_a) < (region_b, sku_b)``)."""

    region_a: str
    sku_a: str
    region_b: str
    sku_b: str

    @classmethod
    def of(cls, region_a: Any, sku_a: Any, region_b: Any, sku_b: Any) -> Pair:
        a, b = (str(region_a), str(sku_a)), (str(region_b), str(sku_b))
        if a == b:
            raise ValueError(f"a pair needs two products; got {a} twice")
        (ra, sa), (rb, sb) = sorted((a, b))
        return cls(ra, sa, rb, sb)

    @property
    def key(self) -> str:
        return "\x1f".join((self.region_a, self.sku_a, self.region_b, self.sku_b))

    def fields(self) -> dict[str, str]:
        return {
            "region_a": self.region_a,
            "sku_a": self.sku_a,
            "region_b": self.region_b,
            "sku_b": self.sku_b,
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _pid(kind: str, collection: str, pair: Pair, extra: str = "") -> str:
    return str(uuid.uuid5(PROJECT_NAMESPACE, f"review-{kind}\x1f{collection}\x1f{pair.key}\x1f{extra}"))


def _kind(kind: str, **match: str) -> models.Filter:
    must = [models.FieldCondition(key="kind", match=models.MatchValue(value=kind))]
    must += [models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in match.items()]
    return models.Filter(must=must)


class ReviewStore:
    """Decisions, audit and claims of one catalog collection (see the module docstring)."""

    def __init__(self, client: Any, collection: str, *, claim_ttl: float = CLAIM_TTL_SECONDS) -> None:
        self.client = client
        self.collection = collection
        self.name = review_collection(collection)
        self.claim_ttl = claim_ttl

    # -- plumbing -------------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the review collection once; a concurrent creator winning is fine."""
        if self.client.collection_exists(self.name):
            return
        try:
            self.client.create_collection(self.name, vectors_config=_AUX_VECTOR)
        except Exception as e:
            if "already exists" not in str(e) and "409" not in str(e):
                raise

    def _put(self, pid: str, payload: Mapping[str, Any], **kwargs: Any) -> None:
        point = models.PointStruct(id=pid, vector=[1.0], payload=dict(payload))
        self.client.upsert(self.name, [point], wait=True, **kwargs)

    def _get(self, pid: str) -> dict[str, Any] | None:
        found = self.client.retrieve(self.name, [pid], with_payload=True)
        return dict(found[0].payload or {}) if found else None

    def _scroll(self, flt: models.Filter) -> Iterator[dict[str, Any]]:
        if not self.client.collection_exists(self.name):
            return
        offset = None
        while True:
            points, offset = self.client.scroll(
                self.name, scroll_filter=flt, limit=_SCROLL, offset=offset, with_payload=True
            )
            for p in points:
                yield dict(p.payload or {})
            if offset is None:
                return

    # -- decisions ------------------------------------------------------------------------------

    def get(self, pair: Pair) -> dict[str, Any] | None:
        """The pair's current decision payload, or None when undecided."""
        if not self.client.collection_exists(self.name):
            return None
        found = self._get(_pid("decision", self.collection, pair))
        return found if found and found.get("decision") in DECISIONS else None

    def decide(
        self,
        pair: Pair,
        decision: str | None,
        reviewer: str,
        *,
        hash_a: str | None = None,
        hash_b: str | None = None,
        stratum: str | None = None,
        stratum_size: int | None = None,
        source: str = "review",
        action: str = "decide",
    ) -> dict[str, Any] | None:
        """Record ``decision`` (``match`` / ``no_match``, or None to clear) for ``pair``; audited.
        ``stratum`` / ``stratum_size``: the queue stratum it came from and, for a random sample, the
        size of the population drawn from (:mod:`.estimate`).

        Returns the new decision payload (None when cleared). Releases the reviewer's claim."""
        if decision is not None and decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS} or None; got {decision!r}")
        if not reviewer:
            raise ValueError("a decision needs a reviewer")
        self.ensure()
        before = self.get(pair)
        at = _now()
        self._put(
            str(uuid.uuid4()),
            {
                "kind": "audit",
                **pair.fields(),
                "pair": pair.key,
                "reviewer": reviewer,
                "at": at,
                "ts": time.time(),
                "action": action,
                "before": before.get("decision") if before else None,
                "after": decision,
                "before_record": before,
            },
        )
        payload: dict[str, Any] | None = None
        if decision is None:
            self._put(_pid("decision", self.collection, pair), {"kind": "cleared", "pair": pair.key})
        else:
            payload = {
                "kind": "decision",
                **pair.fields(),
                "pair": pair.key,
                "decision": decision,
                "reviewer": reviewer,
                "decided_at": at,
                "hash_a": hash_a,
                "hash_b": hash_b,
                "stratum": stratum,
                "stratum_size": stratum_size,
                "source": source,
            }
            self._put(_pid("decision", self.collection, pair), payload)
        self.release(pair, reviewer)
        return payload

    def undo(self, pair: Pair, reviewer: str) -> dict[str, Any] | None:
        """Put back what the pair's last change replaced (audited as ``undo``); returns it."""
        changes = sorted(self._scroll(_kind("audit", pair=pair.key)), key=lambda r: r.get("ts") or 0)
        if not changes:
            raise ValueError(f"nothing to undo for {pair.key.replace(chr(31), ' ')}")
        previous = changes[-1].get("before_record")
        if previous is None:
            return self.decide(pair, None, reviewer, action="undo")
        return self.decide(
            pair,
            previous["decision"],
            reviewer,
            hash_a=previous.get("hash_a"),
            hash_b=previous.get("hash_b"),
            stratum=previous.get("stratum"),
            stratum_size=previous.get("stratum_size"),
            source=previous.get("source") or "review",
            action="undo",
        )

    def decisions(self) -> pd.DataFrame:
        """Every current decision, one row per pair (columns :data:`DECISION_COLUMNS`)."""
        rows = [{c: r.get(c) for c in DECISION_COLUMNS} for r in self._scroll(_kind("decision"))]
        frame = _nulls_as_none(pd.DataFrame(rows, columns=DECISION_COLUMNS))
        return frame.sort_values(["region_a", "sku_a", "region_b", "sku_b"], ignore_index=True)

    def audit(self, pair: Pair | None = None) -> pd.DataFrame:
        """The audit trail, oldest first (columns :data:`AUDIT_COLUMNS`)."""
        flt = _kind("audit", pair=pair.key) if pair else _kind("audit")
        rows = sorted(self._scroll(flt), key=lambda r: r.get("ts") or 0)
        frame = pd.DataFrame([{c: r.get(c) for c in AUDIT_COLUMNS} for r in rows], columns=AUDIT_COLUMNS)
        return _nulls_as_none(frame)

    def import_decisions(self, frame: pd.DataFrame, reviewer: str, *, source: str = "import") -> int:
        """Record every row of a pair-form frame (``region_a, sku_a, region_b, sku_b, decision``
        and optional ``hash_a, hash_b``); returns how many changed."""
        changed = 0
        for row in frame.itertuples(index=False):
            pair = Pair.of(row.region_a, row.sku_a, row.region_b, row.sku_b)
            flip = (pair.region_a, pair.sku_a) != (str(row.region_a), str(row.sku_a))
            ha, hb = getattr(row, "hash_a", None), getattr(row, "hash_b", None)
            ha, hb = (hb, ha) if flip else (ha, hb)
            current = self.get(pair)
            if current and current.get("decision") == row.decision and current.get("hash_a") == ha:
                continue
            self.decide(pair, row.decision, reviewer, hash_a=ha, hash_b=hb, source=source, action="import")
            changed += 1
        return changed

    # -- claims ---------------------------------------------------------------------------------

    def claim(self, pair: Pair, reviewer: str) -> bool:
        """Lease ``pair`` to ``reviewer`` for ``claim_ttl`` seconds; False when another holds it.

        The write only replaces a claim that expired or is the reviewer's own (``update_filter``,
        atomic on a server); reading it back tells who won."""
        self.ensure()
        pid = _pid("claim", self.collection, pair)
        now = time.time()
        token = str(uuid.uuid4())
        replaceable = models.Filter(
            should=[
                models.FieldCondition(key="expires_at", range=models.Range(lt=now)),
                models.FieldCondition(key="reviewer", match=models.MatchValue(value=reviewer)),
            ]
        )
        payload = {
            "kind": "claim",
            "pair": pair.key,
            "reviewer": reviewer,
            "token": token,
            "expires_at": now + self.claim_ttl,
        }
        with _CLAIM_LOCK:
            held = self._get(pid)
            if held and held.get("reviewer") != reviewer and float(held.get("expires_at") or 0) >= now:
                return False
            self._put(pid, payload, update_filter=replaceable)
            held = self._get(pid)
        return bool(held) and held.get("token") == token

    def release(self, pair: Pair, reviewer: str) -> None:
        """Drop the reviewer's claim on ``pair`` (no-op when another holds it)."""
        pid = _pid("claim", self.collection, pair)
        with _CLAIM_LOCK:
            held = self._get(pid) if self.client.collection_exists(self.name) else None
            if held and held.get("reviewer") == reviewer:
                self._put(pid, {"kind": "released", "pair": pair.key, "reviewer": "", "expires_at": 0.0})

    def skip(self, pair: Pair, reviewer: str) -> None:
        """Put ``pair`` aside for ``reviewer``: their claim stays (others wait for its expiry, this
        reviewer's queue leaves it out), so a skipped pair comes back later, not at once."""
        pid = _pid("claim", self.collection, pair)
        with _CLAIM_LOCK:
            held = self._get(pid) if self.client.collection_exists(self.name) else None
            if held and held.get("reviewer") == reviewer:
                self._put(pid, {**held, "skipped": True})

    def skipped_by(self, reviewer: str) -> set[str]:
        """Keys of pairs ``reviewer`` skipped while their claim lives."""
        now = time.time()
        return {
            r["pair"]
            for r in self._scroll(_kind("claim", reviewer=reviewer))
            if r.get("skipped") and float(r.get("expires_at") or 0) >= now
        }

    def last_decided(self, reviewer: str) -> Pair | None:
        """The pair of ``reviewer``'s latest change (decide, undo, import), for Undo."""
        rows = sorted(self._scroll(_kind("audit", reviewer=reviewer)), key=lambda r: r.get("ts") or 0)
        if not rows:
            return None
        last = rows[-1]
        return Pair(last["region_a"], last["sku_a"], last["region_b"], last["sku_b"])

    def claimed_by_others(self, reviewer: str) -> set[str]:
        """Keys of pairs another reviewer holds a live claim on (the queue skips them)."""
        now = time.time()
        return {
            r["pair"]
            for r in self._scroll(_kind("claim"))
            if r.get("reviewer") != reviewer and float(r.get("expires_at") or 0) >= now
        }


def reviewed_decisions(client: Any, collection: str) -> pd.DataFrame | None:
    """The collection's current decisions for ``match_catalog(decisions=...)``; None when none."""
    frame = ReviewStore(client, collection).decisions()
    return frame if len(frame) else None


def _nulls_as_none(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing fields read as None (the embedded engine drops the nulls it is given)."""
    frame = frame.astype(object)
    return frame.where(frame.notna(), None)


def pairs_of(frame: pd.DataFrame) -> Iterable[Pair]:
    """The canonical pairs of a frame with ``region_a, sku_a, region_b, sku_b``."""
    cols = ["region_a", "sku_a", "region_b", "sku_b"]
    return (Pair.of(*row) for row in frame[cols].itertuples(index=False, name=None))
