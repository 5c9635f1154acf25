"""The record every match stage reads and fills: one region pair's candidate pairs.

Why a typed record: the stages (candidates -> features -> scores -> decisions -> pairs table) used
to pass an untyped dict with ten string keys between them, so what a stage could rely on was only
written in the code that filled it. A :class:`PairBlock` names each column, which stage sets it,
and its shape (one value per candidate pair). The full run, the incremental run and a shard of
either build the same records, so the decision and report code is shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


def _no_rows(dtype: type = np.int64) -> np.ndarray:
    return np.zeros(0, dtype=dtype)


def feature_frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """A :attr:`PairBlock.feats` table holding each column in its own array, as given (no copy).

    pandas would otherwise stack same-dtype columns into one 2D block, whose memory stays allocated
    until its last column is deleted: the pairs table, which takes the features a column at a time
    (``consume``), then held the blocks' features and its own at once (+0.6 GB at 12.5 M pairs).
    The caller hands the arrays over: it must not write into them afterwards.
    """
    return pd.DataFrame(columns, copy=False)


@dataclass(eq=False)
class PairBlock:
    """Candidate pairs of region ``ra`` (side a) and ``rb`` (side b, ``ra < rb``), one row per pair.

    Attributes:
        ra, rb: the two regions.
        ia, ib: rows of each pair's products in their region's canonical table (set by the
            candidate stage).
        feats: one column per pair feature (:data:`.scoring.FEATURES`, then ``sentences``,
            ``rerank``, ``ev_triangle`` where the run has them); ``explain``: the evidence in words
            (feature stage).
        reviewed: a reviewer's verdict per pair (1 match, 0 no match, -1 none), or None.
        p1, score: pass-one and final probabilities (scoring stage; equal without a second pass).
        accepted, ambiguous, conflict: the decisions (one-to-one pick, decided by a tie alone,
            refused by the group rule); None until the decision stage runs.
        new: an incremental run's mask of pairs scored tonight (kept pairs: False); None in a full run.
    """

    ra: str
    rb: str
    ia: np.ndarray = field(default_factory=_no_rows)
    ib: np.ndarray = field(default_factory=_no_rows)
    feats: pd.DataFrame = field(default_factory=pd.DataFrame)
    explain: list[str] = field(default_factory=list)
    reviewed: np.ndarray | None = None
    p1: np.ndarray = field(default_factory=lambda: _no_rows(np.float64))
    score: np.ndarray = field(default_factory=lambda: _no_rows(np.float64))
    accepted: np.ndarray | None = None
    ambiguous: np.ndarray | None = None
    conflict: np.ndarray | None = None
    new: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ia)

    @property
    def key(self) -> tuple[str, str]:
        return self.ra, self.rb

    def decided(self) -> bool:
        return self.accepted is not None

    def mask(self, name: str) -> np.ndarray:
        """A decision mask (``accepted``, ``ambiguous``, ``conflict``, ``new``), all False when unset."""
        value = getattr(self, name)
        return np.zeros(len(self), dtype=bool) if value is None else np.asarray(value, dtype=bool)

    def take(self, rows: np.ndarray) -> PairBlock:
        """The pairs ``rows`` only (features and decisions included)."""

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows]

        return PairBlock(
            self.ra,
            self.rb,
            self.ia[rows],
            self.ib[rows],
            self.feats.iloc[rows].reset_index(drop=True) if len(self.feats.columns) else self.feats,
            [self.explain[i] for i in rows] if self.explain else [],
            pick(self.reviewed),
            self.p1[rows] if len(self.p1) else self.p1,
            self.score[rows] if len(self.score) else self.score,
            pick(self.accepted),
            pick(self.ambiguous),
            pick(self.conflict),
            pick(self.new),
        )


def concat_blocks(ra: str, rb: str, parts: Sequence[PairBlock]) -> PairBlock:
    """One block of ``parts`` (all of region pair ``ra, rb``) in their order; a part that has no
    decisions yet counts as new and undecided (``accepted``/``conflict``/``ambiguous`` False)."""
    return PairBlock(
        ra,
        rb,
        np.concatenate([b.ia for b in parts]).astype(np.int64),
        np.concatenate([b.ib for b in parts]).astype(np.int64),
        pd.concat([b.feats for b in parts], ignore_index=True),
        [e for b in parts for e in b.explain],
        None,
        np.concatenate([b.p1 for b in parts]),
        np.concatenate([b.score for b in parts]),
        np.concatenate([b.mask("accepted") for b in parts]),
        np.concatenate([b.mask("ambiguous") for b in parts]),
        np.concatenate([b.mask("conflict") for b in parts]),
        np.concatenate([np.full(len(b), not b.decided()) for b in parts]),
    )
