"""Evaluation against labels: precision/recall/F1/top-1 per region pair, sweeps and PR curves.

Labels map ``(region, sku) -> group_id`` (from a ``region, sku, group_id`` file or from equal
GTINs). A true pair is two SKUs of different regions in one group. With ``text_ties`` a predicted
pair also counts as correct when the proposed SKU's text is identical to the true twin's: no
text-based matcher can tell such SKUs apart, so the data's ceiling is reported separately.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .data import CatalogData
from .evidence import normalise_gtin

Labels = dict[tuple[str, str], str]
SWEEP_GRID = tuple(round(x, 2) for x in np.arange(0.05, 1.0, 0.05))


def load_labels(source: str | Path | pd.DataFrame | Mapping[tuple[str, str], Any]) -> Labels:
    """Labels from a CSV/Parquet file or DataFrame with ``region, sku, group_id``, or a ready dict.

    Raises:
        ValueError: when a required column is missing.
    """
    if isinstance(source, Mapping):
        return {(str(r), str(s)): str(g) for (r, s), g in source.items()}
    if isinstance(source, (str, Path)):
        path = Path(source)
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
    else:
        df = source
    missing = {"region", "sku", "group_id"} - set(df.columns)
    if missing:
        raise ValueError(f"labels need columns region, sku, group_id; missing {sorted(missing)}")
    return {(str(r), str(s)): str(g) for r, s, g in df[["region", "sku", "group_id"]].itertuples(index=False)}


def labels_from_gtin(data: CatalogData) -> Labels:
    """Group every SKU that carries a valid GTIN by that GTIN (SKUs without one stay unlabelled)."""
    out: Labels = {}
    for region, table in data.items():
        for i, sku in enumerate(table.skus):
            g = normalise_gtin(table.get("gtin", i))
            if g:
                out[(region, sku)] = g
    return out


def truth_pairs(
    labels: Labels, region_a: str, skus_a: Iterable[str], region_b: str, skus_b: Iterable[str]
) -> set[tuple[str, str]]:
    """All ``(sku_a, sku_b)`` present in the data and sharing a group."""
    by_group: dict[str, list[str]] = {}
    for s in skus_b:
        g = labels.get((region_b, s))
        if g is not None:
            by_group.setdefault(g, []).append(s)
    return {
        (a, b) for a in skus_a if (g := labels.get((region_a, a))) is not None for b in by_group.get(g, ())
    }


class PairJudge:
    """Decides whether a proposed pair is correct, optionally accepting identical-text ties."""

    def __init__(
        self,
        truth: set[tuple[str, str]],
        text_a: Mapping[str, str] | None = None,
        text_b: Mapping[str, str] | None = None,
    ) -> None:
        self.truth = truth
        self.text_a = text_a
        self.text_b = text_b
        self.twins_a: dict[str, set[str]] = {}
        self.twins_b: dict[str, set[str]] = {}
        for a, b in truth:
            self.twins_a.setdefault(a, set()).add(b)
            self.twins_b.setdefault(b, set()).add(a)
        tie = text_a is not None and text_b is not None
        self._texts_b = {a: {_norm(text_b[b]) for b in bs} for a, bs in self.twins_a.items()} if tie else {}
        self._texts_a = {b: {_norm(text_a[a]) for a in as_} for b, as_ in self.twins_b.items()} if tie else {}

    def __call__(self, a: str, b: str) -> bool:
        if (a, b) in self.truth:
            return True
        if self.text_a is None or self.text_b is None:
            return False
        return _norm(self.text_b.get(b, "\0")) in self._texts_b.get(a, ()) or _norm(
            self.text_a.get(a, "\0")
        ) in self._texts_a.get(b, ())


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def prf(tp: int, fp: int, n_truth: int) -> dict[str, float | int]:
    """Precision, recall, F1 and the raw counts (tp clipped to the number of true pairs)."""
    tp = min(tp, n_truth)
    fn = n_truth - tp
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / n_truth if n_truth else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "tp": tp, "fp": fp, "fn": fn}


def top1_accuracy(
    sku_a: np.ndarray, sku_b: np.ndarray, score: np.ndarray, judge: PairJudge
) -> tuple[float, float]:
    """Top-1 in both directions: share of products with a true twin whose best candidate is right."""
    df = pd.DataFrame({"a": sku_a, "b": sku_b, "s": score}).sort_values("s", ascending=False, kind="stable")
    best_ab = df.drop_duplicates("a")
    best_ba = df.drop_duplicates("b")
    has_a, has_b = judge.twins_a, judge.twins_b
    hits_ab = sum(judge(a, b) for a, b in zip(best_ab["a"], best_ab["b"], strict=True) if a in has_a)
    hits_ba = sum(judge(a, b) for a, b in zip(best_ba["a"], best_ba["b"], strict=True) if b in has_b)
    return (hits_ab / len(has_a) if has_a else 0.0, hits_ba / len(has_b) if has_b else 0.0)


def curve(scores: np.ndarray, correct: np.ndarray, n_truth: int) -> pd.DataFrame:
    """Precision/recall/F1 at every distinct score cut (accept ``score >= threshold``)."""
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order].astype(int)
    tp = np.cumsum(c)
    n = np.arange(1, len(s) + 1)
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, dtype=bool)
    tp, n, s = tp[last], n[last], s[last]
    p = tp / n
    r = tp / n_truth if n_truth else np.zeros(len(tp))
    f = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    return pd.DataFrame({"threshold": s, "precision": p, "recall": r, "f1": f})


def best_threshold(
    scores: np.ndarray, correct: np.ndarray, n_truth: int, target_precision: float | None = None
) -> float:
    """Cut maximising F1, or the lowest cut whose precision reaches ``target_precision``."""
    cv = curve(np.asarray(scores, float), np.asarray(correct, bool), n_truth)
    if cv.empty:
        return 0.5
    if target_precision is not None:
        ok = cv[cv["precision"] >= target_precision]
        return float(ok["threshold"].min()) if not ok.empty else float(cv["threshold"].max())
    return float(cv.loc[cv["f1"].idxmax(), "threshold"])


def sweep(
    scores: np.ndarray, correct: np.ndarray, n_truth: int, grid: Iterable[float] = SWEEP_GRID
) -> list[dict[str, float]]:
    """Metrics at fixed thresholds (JSON-safe rows ``threshold, precision, recall, f1``)."""
    rows = []
    for t in grid:
        sel = scores >= t
        m = prf(int(correct[sel].sum()), int((~correct[sel]).sum()), n_truth)
        rows.append({"threshold": float(t), **{k: m[k] for k in ("precision", "recall", "f1")}})
    return rows


def pr_curve(
    scores: np.ndarray, correct: np.ndarray, n_truth: int, points: int = 101
) -> list[dict[str, float]]:
    """The PR curve thinned to at most ``points`` rows (JSON-safe)."""
    cv = curve(np.asarray(scores, float), np.asarray(correct, bool), n_truth)
    if len(cv) > points:
        cv = cv.iloc[np.unique(np.linspace(0, len(cv) - 1, points).round().astype(int))]
    return [{k: round(float(v), 4) for k, v in row.items()} for row in cv.to_dict("records")]


def text_ceiling(judge: PairJudge) -> dict[str, int | float]:
    """How many true pairs are indistinguishable by text: the twin's text is shared with another
    SKU of its region (a generic text), so even a perfect text matcher can only guess."""
    amb = 0
    if judge.text_a is None or judge.text_b is None:
        return {"true_pairs": len(judge.truth), "ambiguous_pairs": 0, "max_recall_strict": 1.0}
    count_a = pd.Series([_norm(t) for t in judge.text_a.values()]).value_counts()
    count_b = pd.Series([_norm(t) for t in judge.text_b.values()]).value_counts()
    for a, b in judge.truth:
        if count_a.get(_norm(judge.text_a[a]), 0) > 1 or count_b.get(_norm(judge.text_b[b]), 0) > 1:
            amb += 1
    n = len(judge.truth)
    return {"true_pairs": n, "ambiguous_pairs": amb, "max_recall_strict": round(1 - amb / n, 4) if n else 1.0}
