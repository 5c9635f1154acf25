"""Evaluation against labels: precision/recall/F1/top-1 per region pair, sweeps and PR curves.

Labels map ``(region, sku) -> group_id`` (from a ``region, sku, group_id`` file or from equal
GTINs). A true pair is two SKUs of different regions in one group. With ``text_ties`` a predicted
pair also counts as correct when the proposed SKU's text is identical to the true twin's: no
text-based matcher can tell such SKUs apart, so the data's ceiling is reported separately.

Only what the labels speak about is scored: a pair is counted (right or wrong) when both of its
SKUs carry a label, and labels of SKUs the collection does not hold are dropped
(:func:`labels_for`). The threshold sweep decides each threshold the way the run does (one-to-one
assignment, then the group rule), and its row at the run's own threshold is the run's decisions, so
the sweep, the PR curve and the headline figures of one report agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .data import CatalogData
from .evidence import normalise_gtin
from .result import column_strings

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


def labels_for(labels: Labels, data: CatalogData) -> tuple[Labels, int]:
    """The labels of SKUs ``data`` holds, and how many labels were dropped for naming other SKUs.

    Why: a labels file of another catalog (the demo's, say) shares no SKU with the user's collection;
    scored against it every accepted pair would count as wrong. Callers treat an empty result as
    "no labels" and say so instead of printing figures.
    """
    present = {(region, sku) for region, table in data.items() for sku in table.skus}
    kept = {key: group for key, group in labels.items() if key in present}
    return kept, len(labels) - len(kept)


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
        *,
        labelled_a: set[str] | None = None,
        labelled_b: set[str] | None = None,
    ) -> None:
        self.truth = truth
        # SKUs with a label on each side; None = every SKU counts as labelled (the truth is complete).
        self.labelled_a = labelled_a
        self.labelled_b = labelled_b
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

    def scored(self, a: str, b: str) -> bool:
        """Whether the labels can judge the pair: both SKUs carry a label."""
        return (self.labelled_a is None or a in self.labelled_a) and (
            self.labelled_b is None or b in self.labelled_b
        )


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


def _has_twin_text(texts: list[str], near: float | None, chunk: int = 512) -> np.ndarray:
    """Per text: does another text of the same region equal it (``near=None``) or reach char
    3-5-gram TF-IDF cosine ``>= near`` (a near-duplicate: same copy, one word changed)?"""
    normed = [_norm(t) for t in texts]
    counts = pd.Series(normed).value_counts()
    exact = np.array([counts[t] > 1 for t in normed], dtype=bool)
    if near is None or len(texts) < 2:
        return exact
    from sklearn.feature_extraction.text import TfidfVectorizer

    x = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True).fit_transform(normed)
    out = exact.copy()
    for s in range(0, x.shape[0], chunk):
        sims = (x[s : s + chunk] @ x.T).toarray()
        sims[np.arange(sims.shape[0]), np.arange(s, s + sims.shape[0])] = 0.0
        out[s : s + chunk] |= sims.max(axis=1) >= near
    return out


def text_ceiling(judge: PairJudge, near: float | None = None) -> dict[str, int | float]:
    """How many true pairs text alone cannot settle: one side's text is shared verbatim (or, with
    ``near``, near-verbatim) by another SKU of its region, so a text matcher can only guess there.

    Returns ``true_pairs``, ``ambiguous_pairs`` and ``distinguishable`` (their complement's share).
    """
    n = len(judge.truth)
    if judge.text_a is None or judge.text_b is None:
        return {"true_pairs": n, "ambiguous_pairs": 0, "distinguishable": 1.0}
    flags = {}
    for side, texts in (("a", judge.text_a), ("b", judge.text_b)):
        skus = list(texts)
        flags[side] = dict(zip(skus, _has_twin_text([texts[s] for s in skus], near), strict=True))
    amb = int(sum(bool(flags["a"][a] or flags["b"][b]) for a, b in judge.truth))
    return {"true_pairs": n, "ambiguous_pairs": amb, "distinguishable": round(1 - amb / n, 4) if n else 1.0}


def judges_for(
    data: CatalogData, labels: Labels, region_pairs: Iterable[tuple[str, str]], *, text_ties: bool = False
) -> dict[str, PairJudge]:
    """One :class:`PairJudge` per ``"A|B"`` region pair, built from labels (and texts for ties)."""
    out: dict[str, PairJudge] = {}
    for ra, rb in region_pairs:
        a, b = data[ra], data[rb]
        truth = truth_pairs(labels, ra, a.skus, rb, b.skus)
        known = {
            "labelled_a": {s for s in a.skus if (ra, s) in labels},
            "labelled_b": {s for s in b.skus if (rb, s) in labels},
        }
        if text_ties:
            texts = (dict(zip(a.skus, a.texts, strict=True)), dict(zip(b.skus, b.texts, strict=True)))
            out[f"{ra}|{rb}"] = PairJudge(truth, *texts, **known)
        else:
            out[f"{ra}|{rb}"] = PairJudge(truth, **known)
    return out


def _codes(values: pd.Series) -> np.ndarray:
    return pd.factorize(values)[0]


def link_pairs(
    ia: np.ndarray, ib: np.ndarray, score: np.ndarray, threshold: float, method: str = "hungarian"
) -> np.ndarray:
    """One-to-one links among pairs with ``score >= threshold``, solved on log-odds.

    The scores are match probabilities; the one-to-one rule maximises the summed weight, so with
    ``score - threshold`` weights two middling pairs outweigh one sure pair (probabilities
    saturate near 1). Summing ``logit(score) - logit(threshold)`` instead is the maximum-likelihood
    assignment of a Fellegi-Sunter model (log-likelihood ratios add). ``mutual`` only ranks, so
    the monotone transform leaves it unchanged.
    """
    from .assign import assign_one_to_one

    s, t = link_log_odds(score, threshold)
    mask = assign_one_to_one(ia, ib, s, t, method)  # type: ignore[arg-type]
    return mask & (np.asarray(score, dtype=np.float64) >= threshold)


def link_log_odds(score: np.ndarray, threshold: float) -> tuple[np.ndarray, float]:
    """Scores and threshold on the log-odds scale :func:`link_pairs` solves on (clipped at 1e-12)."""
    eps = 1e-12
    s = np.clip(np.asarray(score, dtype=np.float64), eps, 1 - eps)
    t = min(max(float(threshold), eps), 1 - eps)
    return np.log(s / (1 - s)), float(np.log(t / (1 - t)))


def assigned_at(pairs: pd.DataFrame, threshold: float, method: str = "hungarian") -> np.ndarray:
    """Mask of ``pairs`` rows the one-to-one rule accepts at ``threshold``, per region pair."""
    mask = np.zeros(len(pairs), dtype=bool)
    for _, idx in pairs.groupby(["region_a", "region_b"], sort=False).indices.items():
        sub = pairs.iloc[idx]
        mask[idx] = link_pairs(
            _codes(sub["sku_a"]), _codes(sub["sku_b"]), sub["score"].to_numpy(float), threshold, method
        )
    return mask


def decided_at(
    pairs: pd.DataFrame, threshold: float, method: str = "hungarian", *, allow_same_region: bool = False
) -> np.ndarray:
    """Mask of ``pairs`` rows the run would accept at ``threshold``: the one-to-one rule per region
    pair, then the group rule with freed products offered again (:func:`apply_group_rule`).

    Why both: the run's ``decision`` column goes through both steps, so a sweep that stopped after the
    first would count links the run refused, and its F1 could differ from the run's at the same cut.
    """
    accepted, _, _ = apply_group_rule(
        pairs, assigned_at(pairs, threshold, method), threshold, method, allow_same_region=allow_same_region
    )
    return accepted


#: Rounds of offering products freed by the group rule to the one-to-one rule again.
REFILL_ROUNDS = 3


def apply_group_rule(
    pairs: pd.DataFrame,
    accepted: np.ndarray,
    threshold: float,
    method: str = "hungarian",
    *,
    allow_same_region: bool = False,
    batch_pairs: int | None = None,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """``(accepted, refused, groups)`` after the group rule: a link that would put two SKUs of one
    region in a group is refused (strongest links first), and the products a refusal freed are
    offered to the one-to-one rule again, among the pairs over the threshold whose two products are
    both free in that region pair (up to :data:`REFILL_ROUNDS` rounds; a refused pair is never
    offered again).

    Why: without the second offer a product whose link was refused stays unmatched even when its
    runner-up twin is free and clears the threshold (about 1 in 100 true pairs on the dev catalog).
    ``groups`` is :func:`.groups.build_groups`' table of the final accepted links.

    The rule only touches pairs over the threshold or accepted, and runs on each connected
    component of them apart (:mod:`.components`), ``batch_pairs`` pairs at most at a time (default
    :data:`.components.BATCH_PAIRS`): a refusal reopens only its own component, so no decision
    depends on another part of the catalog or on the batches.
    """
    from .components import BATCH_PAIRS, component_batches, pair_components
    from .groups import groups_table

    accepted = np.asarray(accepted, dtype=bool).copy()
    refused = np.zeros(len(pairs), dtype=bool)
    if not len(pairs):
        return accepted, refused, groups_table([])
    score = pairs["score"].to_numpy(np.float64)
    live = np.flatnonzero(accepted | (score >= threshold))  # the only pairs the rule can touch
    cols = [column_strings(pairs[c].take(live)) for c in ("region_a", "sku_a", "region_b", "sku_b")]
    labels = pair_components(*cols)
    comps: list[Any] = []
    for batch in component_batches(labels, batch_pairs or BATCH_PAIRS):
        rows = live[batch]
        acc, ref, found = _group_rule(
            [c[batch] for c in cols],
            score[rows],
            accepted[rows],
            labels[batch],
            threshold,
            method,
            allow_same_region,
        )
        accepted[rows], refused[rows] = acc, ref
        comps += found
    return accepted, refused, groups_table(comps)


def _group_rule(
    cols: list[np.ndarray],
    score: np.ndarray,
    accepted: np.ndarray,
    component: np.ndarray,
    threshold: float,
    method: str,
    allow_same_region: bool,
) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """:func:`apply_group_rule` on whole components: ``cols`` region/SKU columns, ``component``
    each pair's component label. Returns the masks and the groups' sorted members."""
    from .groups import edge_groups

    accepted = accepted.copy()
    refused = np.zeros(len(score), dtype=bool)
    blocks = pd.DataFrame({"a": cols[0], "b": cols[2]}).groupby(["a", "b"], sort=False).indices
    block_codes = [(pd.factorize(cols[1][r])[0], pd.factorize(cols[3][r])[0]) for r in blocks.values()]
    comps: list[Any] = []
    for round_no in range(REFILL_ROUNDS + 1):
        idx = np.flatnonzero(accepted)
        comps, kept = edge_groups([c[idx] for c in cols], score[idx], allow_same_region=allow_same_region)
        lost = idx[~np.asarray(kept, dtype=bool)]
        accepted[lost] = False
        refused[lost] = True
        if not len(lost) or round_no == REFILL_ROUNDS:
            break
        reopened = np.isin(component, component[lost])  # the components a refusal freed products in
        added = False
        for rows, (code_a, code_b) in zip(blocks.values(), block_codes, strict=True):
            held_a = np.zeros(code_a.max(initial=-1) + 1, dtype=bool)
            held_b = np.zeros(code_b.max(initial=-1) + 1, dtype=bool)
            held_a[code_a[accepted[rows]]] = True
            held_b[code_b[accepted[rows]]] = True
            free = (score[rows] >= threshold) & ~accepted[rows] & ~refused[rows] & reopened[rows]
            free &= ~held_a[code_a] & ~held_b[code_b]
            if not free.any():
                continue
            offer = rows[free]
            take = link_pairs(code_a[free], code_b[free], score[offer], threshold, method)
            accepted[offer[take]] = True
            added = added or bool(take.any())
        if not added:
            break
    return accepted, refused, comps  # the last round's groups: every loop exit follows a build


def _per_pair(pairs: pd.DataFrame, judges: Mapping[str, PairJudge], ask: str) -> np.ndarray:
    """Per row of ``pairs``, the region pair's judge asked ``ask`` (False where no judge)."""
    out = np.zeros(len(pairs), dtype=bool)
    for (ra, rb), idx in pairs.groupby(["region_a", "region_b"], sort=False, observed=True).indices.items():
        judge = judges.get(f"{ra}|{rb}")
        if judge is None:
            continue
        sub = pairs.iloc[idx]
        call = judge if ask == "correct" else judge.scored
        out[idx] = [call(x, y) for x, y in zip(sub["sku_a"], sub["sku_b"], strict=True)]
    return out


def correct_mask(pairs: pd.DataFrame, judges: Mapping[str, PairJudge]) -> np.ndarray:
    """Per row of ``pairs``: is it a true pair (per its region pair's judge)?"""
    return _per_pair(pairs, judges, "correct")


def scored_mask(pairs: pd.DataFrame, judges: Mapping[str, PairJudge]) -> np.ndarray:
    """Per row of ``pairs``: can the labels judge it (both SKUs labelled, region pair judged)?"""
    return _per_pair(pairs, judges, "scored")


def pair_verdicts(pairs: pd.DataFrame, judges: Mapping[str, PairJudge]) -> pd.Series:
    """Per row: True (right), False (wrong) or <NA> (the labels cannot judge it), for the report."""
    correct = correct_mask(pairs, judges)
    scored = scored_mask(pairs, judges)
    out = pd.Series(pd.array(correct, dtype="boolean"), index=pairs.index)
    out[~scored] = pd.NA
    return out


def _metrics_row(
    threshold: float, accepted: np.ndarray, correct: np.ndarray, n_truth: int
) -> dict[str, float]:
    m = prf(int(correct[accepted].sum()), int((~correct[accepted]).sum()), n_truth)
    return {"threshold": float(threshold), **{key: m[key] for key in ("precision", "recall", "f1")}}


def threshold_sweep(
    pairs: pd.DataFrame,
    judges: Mapping[str, PairJudge],
    method: str = "hungarian",
    grid: Iterable[float] = SWEEP_GRID,
    *,
    allow_same_region: bool = False,
) -> list[dict[str, float]]:
    """Overall metrics at each grid threshold, deciding each one as the run does (:func:`decided_at`).

    Only pairs the labels can judge count (:meth:`PairJudge.scored`).
    """
    correct = correct_mask(pairs, judges)
    scored = scored_mask(pairs, judges)
    n_truth = sum(len(j.truth) for j in judges.values())
    return [
        _metrics_row(
            t, decided_at(pairs, t, method, allow_same_region=allow_same_region) & scored, correct, n_truth
        )
        for t in grid
    ]


def calibrate_threshold(rows: list[dict[str, float]], target_precision: float | None = None) -> float:
    """From sweep rows: the F1-best threshold, or the lowest one reaching ``target_precision``."""
    if target_precision is not None:
        ok = [r for r in rows if r["precision"] >= target_precision]
        return min(r["threshold"] for r in ok) if ok else max(r["threshold"] for r in rows)
    return max(rows, key=lambda r: (r["f1"], -r["threshold"]))["threshold"]


def evaluate_pairs(
    pairs: pd.DataFrame,
    judges: Mapping[str, PairJudge],
    *,
    method: str = "hungarian",
    sweep_rows: list[dict[str, float]] | None = None,
    threshold: float | None = None,
    allow_same_region: bool = False,
) -> dict[str, Any]:
    """The ``metrics`` block of the summary for a scored ``pairs`` table (see :mod:`.result`).

    Accepted pairs are rows with ``decision == "match"``; only pairs the labels can judge count.
    Top-1 ranks every candidate by ``score`` in both directions. With ``threshold`` (the run's), the
    sweep gets a row at exactly that threshold computed from the run's own decisions, so the sweep,
    the PR curve (the sweep's rows by threshold) and ``overall`` show one set of figures.
    """
    correct = correct_mask(pairs, judges)
    scored = scored_mask(pairs, judges)
    accepted = (pairs["decision"] == "match").to_numpy() & scored
    by_pair: dict[str, dict[str, Any]] = {}
    tot = {"tp": 0, "fp": 0, "truth": 0, "hits": 0.0, "n": 0}
    for key, judge in judges.items():
        ra, rb = key.split("|")
        sel = ((pairs["region_a"] == ra) & (pairs["region_b"] == rb)).to_numpy()
        acc = sel & accepted
        m: dict[str, Any] = prf(int(correct[acc].sum()), int((~correct[acc]).sum()), len(judge.truth))
        sub = pairs[sel]
        t_ab, t_ba = top1_accuracy(
            sub["sku_a"].to_numpy(), sub["sku_b"].to_numpy(), sub["score"].to_numpy(), judge
        )
        n_ab, n_ba = len(judge.twins_a), len(judge.twins_b)
        m["top1"] = round((t_ab * n_ab + t_ba * n_ba) / max(n_ab + n_ba, 1), 4)
        by_pair[key] = m
        tot["tp"] += m["tp"]
        tot["fp"] += m["fp"]
        tot["truth"] += len(judge.truth)
        tot["hits"] += t_ab * n_ab + t_ba * n_ba
        tot["n"] += n_ab + n_ba
    overall: dict[str, Any] = prf(int(tot["tp"]), int(tot["fp"]), int(tot["truth"]))
    overall["top1"] = round(tot["hits"] / tot["n"], 4) if tot["n"] else 0.0
    if sweep_rows is None:
        sweep_rows = threshold_sweep(pairs, judges, method, allow_same_region=allow_same_region)
    rows = list(sweep_rows)
    if threshold is not None:
        # rounded as summary["threshold"] is, so the report finds the run's row by equality
        run_row = {
            "threshold": round(float(threshold), 4),
            **{k: overall[k] for k in ("precision", "recall", "f1")},
        }
        rows = [r for r in rows if not math.isclose(r["threshold"], run_row["threshold"], abs_tol=1e-9)]
        rows.append(run_row)
    rows.sort(key=lambda r: r["threshold"])
    return {
        "overall": overall,
        "by_pair": by_pair,
        "threshold_sweep": rows,
        "pr_curve": [dict(r) for r in rows],
    }
