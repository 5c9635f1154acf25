"""How a match run uses reviewed decisions (``match_catalog(decisions=...)``, docs/REVIEW.md).

- accepted pairs are must-links: added to the candidates when missing, score forced to 1;
- rejected pairs are cannot-links: score forced to 0, so never proposed again;
- both are labels for the scorer (together with the self-training targets, the label-free prior);
- when the threshold is label-free, the reviewed random samples (only they: the other strata are
  chosen for doubt, so their error rate is no guide to the cut) may move it, see
  :func:`reviewed_threshold`.

A decision applies only while both texts are the ones reviewed (``hash_a`` / ``hash_b``; a decision
without hashes, e.g. imported from a labels file, always applies) and both SKUs still exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .estimate import estimate_quality
from .store import DECISIONS, text_hash

if TYPE_CHECKING:
    from polyglot_catalog.matching.blocks import PairBlock

REQUIRED = ("region_a", "sku_a", "region_b", "sku_b", "decision")
#: Why 4 each: fewer reviewed pairs of a class say nothing about where the boundary lies.
MIN_REVIEWED_PER_CLASS = 4
#: Reviewed pairs a new cut must decide better than the label-free one before it replaces it.
MIN_GAIN = 3
#: How far reviewed pairs may move the label-free cut.
MAX_SHIFT = 0.25


def check_decisions(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with canonical pair order, or a ValueError naming the row and what is wrong."""
    missing = [c for c in REQUIRED if c not in frame]
    if missing:
        raise ValueError(f"decisions lack columns {missing}; need {list(REQUIRED)}")
    rows = []
    for n, row in enumerate(frame.to_dict("records")):
        if row["decision"] not in DECISIONS:
            raise ValueError(f"decisions row {n}: decision {row['decision']!r} is not one of {DECISIONS}")
        a = (str(row["region_a"]), str(row["sku_a"]), row.get("hash_a"))
        b = (str(row["region_b"]), str(row["sku_b"]), row.get("hash_b"))
        if a[0] == b[0]:
            raise ValueError(f"decisions row {n}: both products are in region {a[0]!r}")
        a, b = sorted((a, b), key=lambda x: x[:2])
        rows.append((a[0], a[1], b[0], b[1], row["decision"], a[2], b[2]))
    return pd.DataFrame(rows, columns=[*REQUIRED, "hash_a", "hash_b"])


@dataclass
class ReviewedPairs:
    """Active decisions as row indices per region pair: ``{(ra, rb): (ia, ib, y)}``."""

    links: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]
    given: int
    lapsed: int
    unknown: int
    added: dict[tuple[str, str], int] = field(default_factory=dict)
    estimate: dict[str, Any] | None = None
    #: The subset from the random-sample strata (or without a stratum: imported): the only reviewed
    #: pairs not chosen for doubt, so the only ones fit to move the threshold.
    unbiased: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def of(cls, decisions: pd.DataFrame, data: Mapping[str, Any]) -> ReviewedPairs:
        frame = check_decisions(decisions)
        index = {r: {s: i for i, s in enumerate(t.skus)} for r, t in data.items()}
        found: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
        sampled: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
        strata = decisions["stratum"].tolist() if "stratum" in decisions else [None] * len(frame)
        lapsed = unknown = 0
        for (ra, sa, rb, sb, decision, ha, hb), stratum in zip(
            frame.itertuples(index=False, name=None), strata, strict=True
        ):
            i, j = index.get(ra, {}).get(sa), index.get(rb, {}).get(sb)
            if i is None or j is None:
                unknown += 1
                continue
            ha, hb = (None if pd.isna(h) else h for h in (ha, hb))
            if (ha is not None and ha != text_hash(data[ra].texts[i])) or (
                hb is not None and hb != text_hash(data[rb].texts[j])
            ):
                lapsed += 1
                continue
            found.setdefault((ra, rb), []).append((i, j, int(decision == "match")))
            if not isinstance(stratum, str) or stratum.startswith("sample_"):
                sampled.setdefault((ra, rb), []).append((i, j, int(decision == "match")))

        def arrays(rows_of: dict) -> dict:
            return {
                key: tuple(np.array(col, dtype=np.int64) for col in zip(*sorted(rows), strict=True))
                for key, rows in rows_of.items()
            }

        links = arrays(found)
        return cls(
            links=links,  # type: ignore[arg-type]
            given=len(frame),
            lapsed=lapsed,
            unknown=unknown,
            estimate=estimate_quality(decisions),
            unbiased=arrays(sampled),
        )

    def with_must_links(
        self, ra: str, rb: str, ia: np.ndarray, ib: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The candidates plus accepted pairs the candidate search missed (row-sorted)."""
        if (ra, rb) not in self.links:
            return ia, ib
        la, lb, y = self.links[(ra, rb)]
        have = set(zip(ia.tolist(), ib.tolist(), strict=True))
        extra = [
            (i, j)
            for i, j, m in zip(la.tolist(), lb.tolist(), y.tolist(), strict=True)
            if m and (i, j) not in have
        ]
        self.added[(ra, rb)] = len(extra)
        if not extra:
            return ia, ib
        ia = np.concatenate([ia, np.array([e[0] for e in extra], dtype=ia.dtype)])
        ib = np.concatenate([ib, np.array([e[1] for e in extra], dtype=ib.dtype)])
        order = np.lexsort((ib, ia))
        return ia[order], ib[order]

    def threshold(self, blocks: list[PairBlock], prior: float) -> float:
        """:func:`reviewed_threshold` on the random-sample decisions of reciprocal-best pairs only."""
        from polyglot_catalog.matching.blocks import PairBlock
        from polyglot_catalog.matching.scoring import reciprocal_best

        sample = ReviewedPairs(links=self.unbiased, given=0, lapsed=0, unknown=0)
        view = []
        for b in blocks:
            t = sample.targets(b.ra, b.rb, b.ia, b.ib)
            # only the pairs the cut decides: a pair that loses the one-to-one rule is no error of it
            t[~reciprocal_best(b.score, b.ia, b.ib)] = -1
            view.append(PairBlock(b.ra, b.rb, b.ia, b.ib, score=b.score, reviewed=t))
        return reviewed_threshold(view, prior)

    def targets(self, ra: str, rb: str, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
        """Per candidate pair: 1 accepted, 0 rejected, -1 not reviewed."""
        out = np.full(len(ia), -1, dtype=np.int8)
        if (ra, rb) not in self.links or not len(ia):
            return out
        la, lb, y = self.links[(ra, rb)]
        width = int(max(ib.max(initial=0), lb.max(initial=0))) + 1
        key = ia.astype(np.int64) * width + ib
        pos = {k: n for n, k in enumerate(key.tolist())}
        for k, v in zip((la * width + lb).tolist(), y.tolist(), strict=True):
            if k in pos:
                out[pos[k]] = v
        return out

    def force(self, blocks: list[PairBlock]) -> None:
        """Scores of reviewed pairs to 1 (match) / 0 (no match), said in their explain strings."""
        for blk in blocks:
            t = blk.reviewed
            if t is None or not (t >= 0).any():
                continue
            blk.score = np.where(t == 1, 1.0, np.where(t == 0, 0.0, blk.score))
            blk.explain = [
                e if v < 0 else "; ".join(filter(None, ("reviewed: " + ("match" if v else "no match"), e)))
                for e, v in zip(blk.explain, t.tolist(), strict=True)
            ]

    def summary(self, blocks: list[PairBlock]) -> dict[str, Any]:
        """Reviewed counts for ``summary.json`` and the report, with the estimate from the samples."""
        used = [blk.reviewed for blk in blocks if blk.reviewed is not None]
        t = np.concatenate(used) if used else np.zeros(0, dtype=np.int8)
        return {
            "given": self.given,
            "applied_match": int((t == 1).sum()),
            "applied_no_match": int((t == 0).sum()),
            "lapsed": self.lapsed,
            "unknown_sku": self.unknown,
            "must_links_added": int(sum(self.added.values())),
            "estimate": self.estimate,
        }


def reviewed_threshold(blocks: list[PairBlock], prior: float, window: float = MAX_SHIFT) -> float:
    """The cut within ``window`` of the label-free ``prior`` that misclassifies the fewest reviewed
    pairs (scored before forcing), the one nearest ``prior`` among equals; ``prior`` itself with too
    few reviewed pairs per class. The window keeps a few reviewed look-alikes at high scores (the
    runner-up stratum) from dragging the cut far from what the whole distribution says."""
    scores, ys = [], []
    for blk in blocks:
        t = blk.reviewed
        if t is not None and (t >= 0).any():
            scores.append(blk.score[t >= 0])
            ys.append(t[t >= 0])
    if not scores:
        return prior
    s, y = np.concatenate(scores), np.concatenate(ys)
    if (y == 1).sum() < MIN_REVIEWED_PER_CLASS or (y == 0).sum() < MIN_REVIEWED_PER_CLASS:
        return prior
    su = np.unique(s)
    cuts = np.unique(np.concatenate([[prior], (su[:-1] + su[1:]) / 2]))
    cuts = cuts[np.abs(cuts - prior) <= window]
    errors = np.array([((s >= c) != (y == 1)).sum() for c in cuts])
    if errors.min() > int(((s >= prior) != (y == 1)).sum()) - MIN_GAIN:
        return prior  # a cut that fixes one reviewed pair is noise, and it moves every unreviewed one
    best = cuts[errors == errors.min()]
    return float(best[np.argmin(np.abs(best - prior))])


def current_hashes(client: Any, collection: str, decisions: pd.DataFrame) -> pd.DataFrame:
    """``decisions`` with ``hash_a`` / ``hash_b`` of the texts the catalog holds now (None for a SKU
    it lacks), so an imported decision lapses when a text changes later, as a reviewed one does."""
    from polyglot_catalog.ids import point_id

    keys = sorted(
        {(r, s) for r, s in zip(decisions["region_a"], decisions["sku_a"], strict=True)}
        | {(r, s) for r, s in zip(decisions["region_b"], decisions["sku_b"], strict=True)}
    )
    texts: dict[tuple[str, str], str | None] = {}
    for lo in range(0, len(keys), 512):
        chunk = keys[lo : lo + 512]
        found = client.retrieve(
            collection, [point_id(r, s) for r, s in chunk], with_payload=["region", "sku", "text"]
        )
        for point in found:
            p = point.payload or {}
            texts[(str(p.get("region")), str(p.get("sku")))] = p.get("text")
    out = decisions.copy()
    out["hash_a"] = [text_hash(texts.get((r, s))) for r, s in zip(out["region_a"], out["sku_a"], strict=True)]
    out["hash_b"] = [text_hash(texts.get((r, s))) for r, s in zip(out["region_b"], out["sku_b"], strict=True)]
    return out
