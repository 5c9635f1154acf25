"""The matcher's output, shared by the matching, reporting, CLI and Airflow layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..memory import release_freed_memory

if TYPE_CHECKING:
    from .context import MatchContext

PAIR_KEY_COLUMNS = ["region_a", "sku_a", "region_b", "sku_b"]
DECISIONS = ("match", "below_threshold", "not_mutual", "conflict")
#: Possible duplicate listings: SKUs of one region with identical text (``listing`` = lowest SKU).
DUPLICATE_COLUMNS = ["region", "listing", "sku", "text"]
#: What a run changed against the last committed match state (docs/MATCH_STATE.md).
CHANGE_COLUMNS = ["region", "sku", "old_group", "new_group", "kind"]
CHANGE_KINDS = ("new_match", "broken_match", "moved", "new_group", "dissolved")


def column_strings(column: pd.Series) -> np.ndarray:
    """``column`` as an object array of ``str``. The pairs table's region and SKU columns are
    categoricals: their rows share the categories' strings (8 B a row), where a string copy made one
    object per row (~60 B) for millions of pairs."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        names = np.asarray([str(v) for v in column.cat.categories] + ["nan"], dtype=object)
        return names[column.cat.codes.to_numpy()]  # code -1 (missing): "nan", as astype(str) says
    return column.astype(str).to_numpy(object)


@dataclass
class MatchResult:
    """Everything one match run produced.

    ``pairs`` holds every scored candidate pair (``region_a < region_b``; but see :attr:`rest`) with
    ``score``, ``cosine``,
    ``decision`` (one of :data:`DECISIONS`), evidence columns (``ev_*`` / ``conflict_*`` floats and a
    human ``explain`` string) and ``text_a``/``text_b``. Columns whose values repeat (regions, SKUs,
    ``decision``, ``explain``, texts) are pandas categoricals, regions ordered by name; compare them with
    ``==``/``isin`` as strings, or ``.astype(str)`` for plain strings. ``groups`` has ``group_id, region,
    sku`` for every product placed in a cross-region group; ``unmatched`` has ``region, sku, text,
    best_score, best_region, best_sku, reason`` for products with no accepted twin (``reason``: why, in
    words: no candidate, below the threshold, twin taken by another SKU, group conflict); ``duplicates``
    (:data:`DUPLICATE_COLUMNS`) lists SKUs whose text equals another SKU's in the same region, which
    tie exactly in matching (the lowest SKU holds the match); a pair decided by such a tie alone has
    ``ambiguous`` True and says so in ``explain``. ``summary`` is JSON-safe:
    ``model``, ``collection``, ``threshold``, ``regions``, ``counts`` (per ``"A|B"`` region pair:
    candidates, matches), ``timings`` (seconds per stage) and, when labels were given, ``metrics``:
    ``{"overall": {...}, "by_pair": {"A|B": {...}}, "threshold_sweep": [...], "pr_curve": [...]}`` where
    each metrics dict has ``precision, recall, f1, top1, tp, fp, fn`` and each sweep/curve row has
    ``threshold, precision, recall, f1``.
    """

    pairs: pd.DataFrame
    groups: pd.DataFrame
    unmatched: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    duplicates: pd.DataFrame | None = None  # None: a result from before duplicate detection
    #: :data:`CHANGE_COLUMNS`, filled by :func:`.state.commit_match_state` (empty until then).
    changes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CHANGE_COLUMNS))
    #: What the next incremental run continues from (None when this run's decisions cannot be
    #: continued: reviewed decisions or a re-ranker took part); :mod:`.state` stores it.
    context: MatchContext | None = None
    #: How many candidate pairs the run scored, once :meth:`keep_accepted_pairs` dropped the others.
    scored_pairs: int | None = None
    #: On a run from mapped parts past :data:`.held_pairs.HOLD_ALL_UP_TO` candidate pairs, the pairs
    #: ``pairs`` does not hold (all below the threshold; :mod:`.held_pairs`): the report writes them
    #: from the parts. None: ``pairs`` holds every candidate pair.
    rest: Any = None

    @property
    def matches(self) -> pd.DataFrame:
        """Only the accepted pairs."""
        return self.pairs[self.pairs["decision"] == "match"]

    @property
    def pair_count(self) -> int:
        """How many candidate pairs the run scored (also after :meth:`keep_accepted_pairs`)."""
        if self.scored_pairs is not None:
            return self.scored_pairs
        return len(self.pairs) + (self.rest.count if self.rest is not None else 0)

    def keep_accepted_pairs(self) -> None:
        """Drop the rejected candidate pairs once the report holds every pair on disk.

        Why: the match task writes its report inside the state commit, and the commit's apply then
        ran beside a pairs table it never reads (~0.1 KB a candidate pair: 1.2 GB at 12.5 M, 300k x 3,
        #26). ``pairs`` keeps the accepted ones; :attr:`pair_count` still counts every scored pair.
        """
        total = self.pair_count
        self.pairs = self.matches.reset_index(drop=True)
        self.scored_pairs = total
        self.rest = None
        release_freed_memory()
