"""Precision and recall of a run estimated from the reviewed random samples, with Wilson intervals.

Why only the samples: the other strata are chosen for being doubtful, so their error rate says
nothing about the run as a whole. ``sample_match`` is a uniform sample of the accepted pairs,
``sample_rejected`` of the rejected candidate pairs; each decision records the size of the
population it was drawn from (``stratum_size``), so the estimate describes the run the queue was
built from. ``sample_rejected`` is drawn from rejected pairs that are a product's best candidate,
so recall counts the twins missed there: a missed twin that was not even its product's best
candidate, or that the candidate search never proposed, is invisible to it (an upper bound).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

#: 95 % two-sided.
Z = 1.959963984540054


def wilson(k: int, n: int, z: float = Z) -> tuple[float, float, float]:
    """``(k / n, low, high)``: the Wilson score interval of a binomial share (NaNs when ``n`` is 0)."""
    if n <= 0:
        return math.nan, math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def _stratum(decisions: pd.DataFrame, name: str) -> tuple[int, int, int]:
    """``(matches, reviewed, population)`` of one sample stratum."""
    rows = decisions[decisions["stratum"] == name]
    sizes = pd.to_numeric(rows.get("stratum_size"), errors="coerce").dropna() if len(rows) else pd.Series()
    return int((rows["decision"] == "match").sum()), len(rows), int(sizes.max()) if len(sizes) else 0


def estimate_quality(decisions: pd.DataFrame) -> dict[str, Any] | None:
    """Estimated precision (and recall, when rejected pairs were sampled too) with 95 % Wilson
    intervals; None when no sampled pair was reviewed.

    Recall ``= TP / (TP + FN)`` with ``TP = N_acc * p_acc`` and ``FN = N_rej * p_rej``; its interval
    plugs in the ends of both Wilson intervals (conservative)."""
    if decisions is None or "stratum" not in decisions or decisions.empty:
        return None
    k_acc, n_acc, size_acc = _stratum(decisions, "sample_match")
    k_rej, n_rej, size_rej = _stratum(decisions, "sample_rejected")
    if not n_acc:
        return None
    p, lo, hi = wilson(k_acc, n_acc)
    out: dict[str, Any] = {
        "precision": {"value": round(p, 4), "low": round(lo, 4), "high": round(hi, 4), "reviewed": n_acc},
        "recall": None,
    }
    if n_rej and size_acc and size_rej:
        q, qlo, qhi = wilson(k_rej, n_rej)

        def recall(pa: float, qr: float) -> float:
            tp, fn = size_acc * pa, size_rej * qr
            return tp / (tp + fn) if tp + fn else math.nan

        out["recall"] = {
            "value": round(recall(p, q), 4),
            "low": round(recall(lo, qhi), 4),
            "high": round(recall(hi, qlo), 4),
            "reviewed": n_rej,
        }
    return out
