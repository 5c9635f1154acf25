"""The match's one-to-one decisions from the score task's scores (#26): the label-free cut and each
region pair's accepted pairs, decided beside the scores and read by the match task.

Why: after the scoring left the match task (:mod:`.part_scores`), its one-to-one rule was the next
stage it ran over every candidate pair: the label-free cut links each region pair at no threshold
(the solver's arrays and the LP over all of a region pair's edges: ~+0.95 GB at 12.56 M pairs), then
links again at the cut. The rule reads three compact columns a pair (its two products and its score)
and the regions' identical-listing sets, all of which the score task's folder has, so it runs here,
with :func:`.pipeline.label_free_cut` and :func:`.pipeline.one_to_one`, the match task's own code, on
the pairs in the match task's order: the same cut and the same accepted pairs, bit for bit.

Written: ``decisions-<ra>-<rb>.parquet`` per region pair (``accepted``, ``rival``: the index of a
pair with exactly its score that makes an accepted pair a tie, -1 when none; in the match task's
pair order) and ``decisions.json`` (the cut, how it was chosen, the settings it was decided with and
the scores it was decided on). Runs with labels or reviewed decisions stay in the match task (the
labels' cut and judges, the reviewed must-links).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .assign import AssignMethod
from .blocks import PairBlock
from .context import scorer_from_state
from .feature_parts import features_name, text_sets
from .part_scores import MANIFEST as SCORES_MANIFEST
from .part_scores import read_part_scores
from .scoring import PairScorer
from .shard_storage import ShardFolder
from .shards import CandidateShard

logger = logging.getLogger(__name__)

MANIFEST = "decisions.json"


def decisions_name(ra: str, rb: str) -> str:
    """``decisions-<ra>-<rb>.parquet``: a region pair's ``accepted`` and ``rival``, in pair order."""
    return f"decisions-{ra}-{rb}.parquet"


def _scores_digest(folder: ShardFolder) -> str:
    """Which scores a decision was made on: the score task's manifest, hashed."""
    return hashlib.sha256(folder.read_text(SCORES_MANIFEST).encode()).hexdigest()[:16]


def region_pair_scores(folder: Any, plan: Sequence[CandidateShard], ra: str, rb: str) -> PairBlock:
    """A region pair's rows and final scores from its feature and scores parts, in the match task's
    pair order (by side-a, then side-b product)."""
    folder = ShardFolder.of(folder)
    ia, ib, score = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for shard in plan:
        if (shard.query, shard.other) != (ra, rb):
            continue
        with folder.open(features_name(shard)) as f:
            rows = pq.read_table(f, columns=["ia", "ib"])
        ia.append(rows["ia"].to_numpy())
        ib.append(rows["ib"].to_numpy())
        score.append(read_part_scores(folder, shard)["score"].to_numpy())
    a, b = np.concatenate(ia), np.concatenate(ib)
    order = np.lexsort((b, a))
    return PairBlock(ra, rb, a[order], b[order], score=np.concatenate(score)[order])


def decide_parts(
    folder: Any,
    plan: Sequence[CandidateShard],
    regions: Sequence[str],
    *,
    threshold: float | None = None,
    method: AssignMethod = "hungarian",
) -> dict[str, Any]:
    """Decide the run from the score task's scores in ``folder`` and write the decisions: the cut
    (``threshold``, or label-free) and each region pair's one-to-one rule (``method``). Returns the
    manifest written.

    Raises:
        ValueError: the score task's manifest is missing (it runs first)."""
    from .pipeline import label_free_cut, one_to_one

    folder = ShardFolder.of(folder)
    if not folder.exists(SCORES_MANIFEST):
        raise ValueError(f"no {SCORES_MANIFEST} in {folder}: the score task decides after scoring")
    folder.delete(MANIFEST)  # a run again: no manifest until every region pair has its decisions
    scores = json.loads(folder.read_text(SCORES_MANIFEST))
    scorer = scorer_from_state(scores["scorer2"]) or scorer_from_state(scores["scorer1"]) or PairScorer()
    pairs = list(itertools.combinations(sorted(regions), 2))

    def region_pairs() -> Iterator[PairBlock]:  # one region pair in memory at a time
        return (region_pair_scores(folder, plan, ra, rb) for ra, rb in pairs)

    asked, how, share = threshold, "given", None
    if threshold is None:
        threshold, share, how = label_free_cut(region_pairs(), scorer, method)
    sets = {r: text_sets(folder, r) for r in regions}
    accepted, rows = 0, {}
    for blk in region_pairs():
        ok, rival = one_to_one(blk, sets, threshold, method)
        accepted += int(ok.sum())
        rows[f"{blk.ra}-{blk.rb}"] = len(blk.ia)
        with folder.writing(decisions_name(blk.ra, blk.rb)) as f:
            pq.write_table(pa.table({"accepted": pa.array(ok), "rival": pa.array(rival)}), f)
        del blk, ok, rival
    manifest = {
        "threshold": float(threshold),
        "how": how,
        "match_share": share,
        "settings": {"threshold": None if asked is None else float(asked), "method": method},
        "scores": _scores_digest(folder),
        "pairs": rows,
        "accepted": accepted,
    }
    folder.write_text(MANIFEST, json.dumps(manifest))
    n = sum(manifest["pairs"].values())
    logger.info("decided %d pairs at %.4f (%s): %d accepted", n, threshold, how, accepted)
    return manifest


def read_decisions(
    folder: Any, regions: Sequence[str], threshold: float | None, method: str
) -> dict[str, Any] | str:
    """The score task's decisions for a run with this ``threshold`` setting and ``method``, or why
    they cannot stand for the match task's own (no manifest, other settings, other scores)."""
    folder = ShardFolder.of(folder)
    if not folder.exists(MANIFEST):
        return f"no {MANIFEST} in {folder}"
    manifest = json.loads(folder.read_text(MANIFEST))
    want = {"threshold": None if threshold is None else float(threshold), "method": method}
    if manifest.get("settings") != want:
        return f"the parts were decided with {manifest.get('settings')}, this run asks {want}"
    if not folder.exists(SCORES_MANIFEST) or manifest.get("scores") != _scores_digest(folder):
        return "the parts were decided on other scores"
    if set(manifest["pairs"]) != {f"{ra}-{rb}" for ra, rb in itertools.combinations(sorted(regions), 2)}:
        return "the parts were decided for other regions"
    return manifest


def read_region_pair_decisions(
    folder: Any, ra: str, rb: str, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(accepted, rival)`` of a region pair, in the match task's pair order; with ``rows``
    (ascending positions in that order) those rows only, read a row group at a time."""
    folder = ShardFolder.of(folder)
    if rows is not None:
        accepted, rival, start = [], [], 0
        with folder.open(decisions_name(ra, rb)) as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=["accepted", "rival"]):
                stop = start + batch.num_rows
                mine = rows[np.searchsorted(rows, start) : np.searchsorted(rows, stop)] - start
                accepted.append(batch["accepted"].to_numpy(zero_copy_only=False)[mine])
                rival.append(batch["rival"].to_numpy()[mine].astype(np.int32))
                start = stop
        pa.default_memory_pool().release_unused()
        if not accepted:
            return np.zeros(0, bool), np.zeros(0, np.int32)
        return np.concatenate(accepted), np.concatenate(rival)
    with folder.open(decisions_name(ra, rb)) as f:
        t = pq.read_table(f)
    # copies out of Arrow's pool (which keeps freed buffers from the OS), rivals as int32 (4 B a pair)
    accepted, rival = t["accepted"].to_numpy(zero_copy_only=False), t["rival"].to_numpy().astype(np.int32)
    del t
    pa.default_memory_pool().release_unused()
    return accepted, rival
