"""Precision and recall of a run estimated from the reviewed random samples, with Wilson intervals.

Why only the samples: the other strata are chosen for being doubtful, so their error rate says
nothing about the run as a whole. ``sample_match`` is a uniform sample of the accepted pairs,
``sample_rejected`` of the rejected candidate pairs; each decision records the size of the
population it was drawn from (``stratum_size``), so the estimate describes the run the queue was
built from. The rejected candidate pairs are sampled in two strata (a product's best candidate,
``sample_rejected``, where missed twins concentrate; the rest, ``sample_rest``) and combined by
their sizes. Recall counts only twins among the candidate pairs (one the candidate search never
proposed is invisible to it).
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

    Recall ``= TP / (TP + FN)`` with ``TP = N_acc * p_acc`` and ``FN = sum N_s * p_s`` over the
    rejected strata; its interval plugs in the ends of every Wilson interval (conservative)."""
    if decisions is None or "stratum" not in decisions or decisions.empty:
        return None
    k_acc, n_acc, size_acc = _stratum(decisions, "sample_match")
    rejected = [_stratum(decisions, s) for s in ("sample_rejected", "sample_rest")]
    rejected = [(k, n, size) for k, n, size in rejected if n and size]
    if not n_acc:
        return None
    p, lo, hi = wilson(k_acc, n_acc)
    out: dict[str, Any] = {
        "precision": {"value": round(p, 4), "low": round(lo, 4), "high": round(hi, 4), "reviewed": n_acc},
        "recall": None,
    }
    if rejected and size_acc:
        shares = [(size, wilson(k, n)) for k, n, size in rejected]

        def recall(pa: float, end: int) -> float:
            tp = size_acc * pa
            fn = sum(size * w[end] for size, w in shares)
            return tp / (tp + fn) if tp + fn else math.nan

        out["recall"] = {
            "value": round(recall(p, 0), 4),
            "low": round(recall(lo, 2), 4),
            "high": round(recall(hi, 1), 4),
            "reviewed": sum(n for _, n, _ in rejected),
        }
    return out
