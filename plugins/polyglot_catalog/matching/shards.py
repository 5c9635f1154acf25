"""The full match's candidate stage as map tasks over shards, and the join that feeds the rest (#26).

Why: the candidate search is the part of a full match that grows with n^2 (216 of 336 s at
100k x 3 regions, bench/RESULTS.md). A shard is a range of one region's distinct texts compared
with every distinct text of the other region of a pair, both directions from one pass over the
blocks as the single search does: the range's canonical top-``k`` (which does not depend on which
other texts share the shard) and, for each text of the other region, its best proposals among the
range. The join re-ranks every range's proposals together, so the parts, produced anywhere and in any
order, give exactly what the single-task search gives: the same candidate pairs, hence the same
features, scores, pairs and groups. A part is written once under a name of its own, so a retried
task overwrites its own part and nothing else.

The map reads what the prepared (canonical, centred) tables hold; the reduce is the rest of
:func:`.pipeline.match_tables`, which takes the joined candidates in place of its own search.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .candidates import CANDIDATE_SLACK, exact_topk_both, pairs_from_neighbours
from .canonical import TextSets, canonical_table, canonical_topk
from .data import CatalogData, centred_tables
from .provenance import input_fingerprint
from .settings import MatchSettings

logger = logging.getLogger(__name__)

#: Memory one search task may use when the shard count is automatic (the issue's per-task target).
DEFAULT_MEMORY_BUDGET_MB = 4096
#: Parquet schema metadata key of a part: what it was computed from (:func:`part_key`).
PART_KEY = "polyglot.part"
Candidates = dict[tuple[str, str], tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]


@dataclass(frozen=True)
class CandidateShard:
    """Distinct texts ``start:stop`` of region ``query`` (canonical order), searched in ``other``."""

    query: str
    other: str
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.query}-{self.other}-{self.start:010d}-{self.stop:010d}"


def plan_shards(texts: Mapping[str, int], shards: int) -> list[CandidateShard]:
    """Every region pair's (``query`` < ``other``) query texts in ``shards`` near-equal ranges (fewer
    when the region has fewer texts); ``texts``: distinct texts per region. One shard serves both
    directions of its pair (:func:`map_shard`)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1; got {shards}")
    out = []
    for query, other in itertools.combinations(sorted(texts), 2):
        n = texts[query]
        parts = max(1, min(shards, n))
        bounds = np.linspace(0, n, parts + 1).round().astype(int)
        out += [CandidateShard(query, other, int(lo), int(hi)) for lo, hi in itertools.pairwise(bounds)]
    return out


def shards_for_budget(texts: Mapping[str, int], dim: int, k: int, memory_budget_mb: float) -> int:
    """Shards per region pair so that one map task's query block and results fit
    ``memory_budget_mb`` next to the other region's vectors: query vectors (4 B a value), the
    proposals and the re-rank (about 40 B per proposed neighbour)."""
    largest = max(texts.values(), default=0)
    other = sorted(texts.values())[-2] if len(texts) > 1 else 0
    fixed = other * dim * 4 / 2**20
    per_text = (dim * 4 + 40 * (k + CANDIDATE_SLACK)) / 2**20
    room = memory_budget_mb - fixed
    if room <= 0:
        raise ValueError(
            f"memory_budget_mb={memory_budget_mb} does not hold the other region's vectors "
            f"({fixed:.0f} MB); give more memory or search through Qdrant"
        )
    return max(1, math.ceil(largest * per_text / room))


def map_shard(
    data: CatalogData, shard: CandidateShard, settings: MatchSettings, texts: Mapping[str, TextSets]
) -> pa.Table:
    """One shard's answer for both directions, from one pass over its similarity blocks (as the
    single search, :func:`.candidates.exact_topk_both`): ``side`` 0, per text of the range its
    canonical top-``k`` in ``other``; ``side`` 1, per text of ``other`` its canonical top-``k``
    among the range. The canonical order (float64 similarity on the grid, then lower index) is
    the same in every shard, so the join merges the ranges' side-1 lists into the top-``k`` one
    search over the whole region finds. Texts and neighbours are distinct-text indices of their
    regions (-1: none)."""
    q, o = data[shard.query], data[shard.other]
    sq, so = texts[shard.query], texts[shard.other]
    vq, vo = q.vectors[sq.rep[shard.start : shard.stop]], o.vectors[so.rep]
    wide = settings.k + CANDIDATE_SLACK
    ab, _, ba, _ = exact_topk_both(
        vq, vo, wide, block_rows=settings.block_rows, block_cols=settings.block_cols
    )
    ab, ab_sim = canonical_topk(vq, vo, ab, settings.k)
    ba, ba_sim = canonical_topk(vo, vq, ba, settings.k)
    ba = np.where(ba >= 0, ba + shard.start, -1)

    def side(code: int, first: int, idx: np.ndarray, sim: np.ndarray) -> dict[str, np.ndarray]:
        n, width = idx.shape
        return {
            "side": np.full(n * width, code, dtype=np.int8),
            "text": np.repeat(np.arange(first, first + n, dtype=np.int64), width),
            "rank": np.tile(np.arange(width, dtype=np.int16), n),
            "neighbour": idx.ravel().astype(np.int64),
            "sim": sim.ravel().astype(np.float64),
        }

    parts = [side(0, shard.start, ab, ab_sim), side(1, 0, ba, ba_sim)]
    table = pa.table({c: np.concatenate([p[c] for p in parts]) for c in parts[0]})
    return table.replace_schema_metadata({PART_KEY: part_key(data, shard, settings.k)})


def part_key(data: CatalogData, shard: CandidateShard, k: int) -> str:
    """What a part was computed from: both regions' content and search vectors, ``k`` and the range.
    A part with another key (the catalog changed between the map and the reduce) is searched again."""
    fp = input_fingerprint({r: data[r] for r in (shard.query, shard.other)})
    return json.dumps(
        {"shard": shard.name, "k": k, "content": fp["content_sha256"], "vectors": fp["vectors_sha256"]},
        sort_keys=True,
    )


def part_is_current(path: Path, data: CatalogData, shard: CandidateShard, k: int) -> bool:
    if not path.is_file():
        return False
    meta = pq.read_schema(path).metadata or {}
    return meta.get(PART_KEY.encode()) == part_key(data, shard, k).encode()


def write_part(table: pa.Table, folder: str | Path, shard: CandidateShard) -> Path:
    """Write a shard's part as ``<folder>/<query>-<other>-<start>-<stop>.parquet`` (a retried task
    replaces its own file: written to a temporary name, then renamed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{shard.name}.parquet"
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def join_parts(
    folder: str | Path,
    data: CatalogData,
    texts: Mapping[str, TextSets],
    k: int,
    plan: Sequence[CandidateShard],
) -> Candidates:
    """The candidates of every region pair from ``plan``'s parts in ``folder`` (other files there,
    e.g. a run with another shard count, are not read): the ranges' top-``k`` lists put together,
    the other side's per-range top-``k`` lists merged in the canonical order, then joined as
    :func:`.candidates.candidate_pairs` joins them.

    Raises:
        ValueError: a text of some region pair has no part (a shard did not run), naming the first gap.
    """
    folder = Path(folder)
    out: Candidates = {}
    for ra, rb in itertools.combinations(sorted(data), 2):
        sa, sb = texts[ra], texts[rb]
        ab_idx = np.full((len(sa), k), -1, dtype=np.int64)  # as candidate_pairs: k columns, padded
        ab_sim = np.full((len(sa), k), -np.inf)
        seen = np.zeros(len(sa), dtype=bool)
        rows, cols, sims = [], [], []
        for shard in plan:
            path = folder / f"{shard.name}.parquet"
            if (shard.query, shard.other) != (ra, rb) or not path.is_file():
                continue
            part = pq.read_table(path)
            side = part["side"].to_numpy()
            t, r = part["text"].to_numpy(), part["rank"].to_numpy().astype(np.int64)
            nb = part["neighbour"].to_numpy()
            mine = side == 0
            ab_idx[t[mine], r[mine]] = nb[mine]
            ab_sim[t[mine], r[mine]] = part["sim"].to_numpy()[mine]
            seen[t[mine]] = True
            rows.append(t[~mine])
            cols.append(nb[~mine])
            sims.append(part["sim"].to_numpy()[~mine])
        if len(sa) and not seen.all():
            gap = int(np.flatnonzero(~seen)[0])
            raise ValueError(
                f"candidate parts of {ra}<->{rb} in {folder} miss text {gap} of {len(sa)}: "
                "a shard did not run (or wrote elsewhere)"
            )
        ba_idx, ba_sim = _merge_top(len(sb), k, rows, cols, sims)
        out[(ra, rb)] = pairs_from_neighbours(sa, sb, (ab_idx, ab_sim), (ba_idx, ba_sim))
    return out


def _merge_top(
    n: int, k: int, rows: list[np.ndarray], cols: list[np.ndarray], sims: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per text ``0..n-1``, the best ``k`` of every range's list in the canonical order (higher
    similarity first, equal similarities by lower index), padded with -1 / -inf."""
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    v = np.concatenate(sims) if sims else np.zeros(0)
    keep = c >= 0
    r, c, v = r[keep], c[keep], v[keep]
    order = np.lexsort((c, -v, r))
    r, c, v = r[order], c[order], v[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r, side="left")
    top = rank < k
    idx = np.full((n, k), -1, dtype=np.int64)
    sim = np.full((n, k), -np.inf)
    idx[r[top], rank[top]] = c[top]
    sim[r[top], rank[top]] = v[top]
    return idx, sim


def search_tables(data: CatalogData, settings: MatchSettings) -> CatalogData:
    """The vectors a shard searches: canonical, centred tables of the regions in ``data`` (as
    :func:`.pipeline.prepare` makes them; a region's own rows decide its order and mean, so a task
    that loads only the two regions it searches sees the same vectors)."""
    return centred_tables({r: canonical_table(t) for r, t in data.items()}, settings.center)[0]


def sharded_candidates(
    data: CatalogData, settings: MatchSettings, shards: int, folder: str | Path
) -> Candidates:
    """Search every shard whose part in ``folder`` is missing or stale (all of them for ``match
    --shards N``; none when Airflow's mapped tasks wrote them), then join the parts."""
    texts = {r: TextSets.of(t.texts) for r, t in data.items()}
    plan = plan_shards({r: len(s) for r, s in texts.items()}, shards)
    searched = 0
    for shard in plan:
        if not part_is_current(Path(folder) / f"{shard.name}.parquet", data, shard, settings.k):
            write_part(map_shard(data, shard, settings, texts), folder, shard)
            searched += 1
    logger.info("candidate search: %d shards, %d searched here, parts in %s", len(plan), searched, folder)
    return join_parts(folder, data, texts, settings.k, plan)


def plan_for_store(
    store: Any,
    regions: Sequence[str] | None,
    *,
    k: int,
    shards: int | None = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
) -> tuple[list[CandidateShard], int]:
    """The shard plan of a stored catalog (texts read without vectors) and the shard count: ``shards``,
    or the fewest that fit ``memory_budget_mb`` (:func:`shards_for_budget`)."""
    wanted = list(regions) if regions else store.regions()
    texts: dict[str, int] = {}
    dim = 0
    for region in wanted:
        distinct: set[str] = set()
        for payloads, _ in store.scroll_region(region, with_vectors=False, payload_fields=["text"]):
            distinct.update(p.get("text") or "" for p in payloads)
        texts[region] = len(distinct)
    if wanted:
        for _, vecs in store.scroll_region(wanted[0], with_vectors=True, batch_size=1):
            dim = vecs.shape[1]
            break
    n = shards if shards is not None else shards_for_budget(texts, dim, k, memory_budget_mb)
    return plan_shards(texts, n), n
